//! An embedded cluster: a coordinator and N workers in this process, each on its own
//! loopback port, talking real gRPC and Flight to each other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use drove_coordinator::{CoordinatorConfig, CoordinatorHandle};
use drove_worker::{WorkerConfig, WorkerHandle};

use crate::{Error, Result};

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct LocalClusterConfig {
    pub workers: usize,
    /// Slots per worker.
    pub slots: u32,
    /// The IP every node binds to.
    pub bind_ip: IpAddr,
    /// The coordinator's gRPC port; 0 picks a free one.
    pub coordinator_port: u16,
    /// Where the coordinator serves HTTP, if at all.
    pub http: Option<SocketAddr>,
    pub coordinator: CoordinatorConfig,
    /// Fault injection: worker `i` delays each task by `task_delay_ms[i]` (missing: 0).
    pub task_delay_ms: Vec<u64>,
    /// Each worker's memory budget; `None`: half the machine's memory, shared out.
    pub memory_bytes: Option<u64>,
    /// Where the workers make their spill directories; `None`: the default.
    pub work_dir: Option<PathBuf>,
    pub spill_codec: drove_exec::blocks::SpillCodec,
    /// Where the nodes keep what outlives them: the coordinator's metadata in
    /// `DIR/coordinator`, worker i's identity in `DIR/worker-i` (from 1); `None`: in
    /// memory only.
    pub data_dir: Option<PathBuf>,
}

impl Default for LocalClusterConfig {
    fn default() -> Self {
        Self {
            workers: 3,
            slots: 2,
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            coordinator_port: 0,
            http: None,
            coordinator: CoordinatorConfig::default(),
            task_delay_ms: Vec::new(),
            memory_bytes: None,
            work_dir: None,
            spill_codec: Default::default(),
            data_dir: None,
        }
    }
}

/// A coordinator and its workers, running in this process.
///
/// ```no_run
/// # async fn demo() -> drove_client::Result<()> {
/// use drove_client::{LocalCluster, LocalClusterConfig};
/// let cluster = LocalCluster::start(LocalClusterConfig { workers: 2, ..Default::default() }).await?;
/// println!("coordinator at {}", cluster.coordinator_addr());
/// cluster.shutdown().await;
/// # Ok(())
/// # }
/// ```
pub struct LocalCluster {
    coordinator: CoordinatorHandle,
    workers: Vec<Option<WorkerHandle>>,
    config: LocalClusterConfig,
}

/// How long [`LocalCluster::start`] waits for its workers to register.
const REGISTRATION_WAIT: Duration = Duration::from_secs(20);

impl LocalCluster {
    /// Starts the coordinator and the workers, and waits until every worker has registered.
    pub async fn start(config: LocalClusterConfig) -> Result<Self> {
        if config.workers == 0 {
            return Err(Error::Config(
                "an embedded cluster needs at least one worker (--workers 1 or more)".into(),
            ));
        }
        let mut coordinator_config = config.coordinator.clone();
        if let Some(dir) = &config.data_dir {
            coordinator_config.data_dir = Some(dir.join("coordinator"));
        }
        let coordinator = drove_coordinator::start(
            coordinator_config,
            SocketAddr::new(config.bind_ip, config.coordinator_port),
            config.http,
        )
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
        let mut cluster = Self {
            coordinator,
            workers: Vec::with_capacity(config.workers),
            config,
        };
        for _ in 0..cluster.config.workers {
            cluster.start_worker().await?;
        }
        cluster.wait_for_workers(cluster.config.workers).await?;
        Ok(cluster)
    }

    async fn start_worker(&mut self) -> Result<()> {
        let index = self.workers.len();
        let worker = drove_worker::start(WorkerConfig {
            coordinator: self.coordinator.addr.to_string(),
            bind: SocketAddr::new(self.config.bind_ip, 0),
            slots: self.config.slots,
            registration_timeout_ms: REGISTRATION_WAIT.as_millis() as u64,
            task_delay_ms: self.config.task_delay_ms.get(index).copied().unwrap_or(0),
            memory_bytes: self
                .config
                .memory_bytes
                .unwrap_or_else(|| drove_worker::default_memory_bytes(self.config.workers)),
            work_dir: self
                .config
                .work_dir
                .clone()
                .unwrap_or_else(drove_worker::default_work_dir),
            spill_codec: self.config.spill_codec,
            data_dir: self
                .config
                .data_dir
                .as_ref()
                .map(|d| d.join(format!("worker-{}", index + 1))),
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
        self.workers.push(Some(worker));
        Ok(())
    }

    async fn wait_for_workers(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + REGISTRATION_WAIT;
        while self.coordinator.coordinator.workers().await.len() < n {
            if Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "the embedded cluster's {n} workers did not all register within {REGISTRATION_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Starts one more worker (its index is the next one) and waits until it registered.
    pub async fn add_worker(&mut self) -> Result<()> {
        self.start_worker().await?;
        self.wait_for_workers(self.worker_addrs().len()).await
    }

    /// The coordinator's gRPC address.
    pub fn coordinator_addr(&self) -> SocketAddr {
        self.coordinator.addr
    }

    /// The coordinator's HTTP address, if it serves HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.coordinator.http_addr
    }

    /// The Flight addresses of the workers still running.
    pub fn worker_addrs(&self) -> Vec<SocketAddr> {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.flight_addr)
            .collect()
    }

    /// The blocks each running worker holds right now.
    pub fn blocks_held(&self) -> Vec<usize> {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.store.len())
            .collect()
    }

    /// Each running worker's own spill directory.
    pub fn work_dirs(&self) -> Vec<PathBuf> {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.work_dir.clone())
            .collect()
    }

    /// Each running worker's block store figures.
    pub fn block_stats(&self) -> Vec<drove_exec::blocks::StoreStats> {
        self.workers
            .iter()
            .flatten()
            .map(|w| w.store.stats())
            .collect()
    }

    /// Stops worker `index` abruptly, as if its machine died.
    pub fn kill_worker(&mut self, index: usize) {
        if let Some(w) = self.workers.get_mut(index).and_then(Option::take) {
            w.kill();
        }
    }

    /// Fault injection: worker `index` loses every block it holds but stays up, as if
    /// its memory were wiped. Readers of those blocks get fetch failures.
    pub fn lose_blocks(&self, index: usize) -> u64 {
        self.workers
            .get(index)
            .and_then(Option::as_ref)
            .map_or(0, |w| w.store.release_all())
    }

    /// Asks worker `index` to leave gracefully and waits until it has; false if it
    /// was not running or did not leave cleanly.
    pub async fn drain_worker(&mut self, index: usize) -> bool {
        match self.workers.get_mut(index).and_then(Option::take) {
            Some(w) => {
                w.drain();
                w.wait().await.is_ok()
            }
            None => false,
        }
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for w in self.workers.into_iter().flatten() {
            w.shutdown().await;
        }
        self.coordinator.shutdown().await;
    }
}
