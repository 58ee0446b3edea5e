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
    /// Coordinators: 1, or 3 or 5 that replicate the metadata with Raft (each keeps
    /// its log in `DATA_DIR/coordinator-N`, or in a temporary directory removed with
    /// the cluster).
    pub coordinators: usize,
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
            coordinators: 1,
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
    coordinators: Vec<CoordinatorHandle>,
    /// Where replicated coordinators keep their logs without a data directory.
    _scratch: Option<tempfile::TempDir>,
    workers: Vec<Option<WorkerHandle>>,
    config: LocalClusterConfig,
}

/// The most coordinators an embedded cluster runs.
const COORDINATORS_MAX: usize = 7;

/// Starts the coordinators: one, or several that replicate the metadata (each with the
/// others as its peers, on free ports but the first).
async fn start_coordinators(
    config: &LocalClusterConfig,
) -> Result<(Vec<CoordinatorHandle>, Option<tempfile::TempDir>)> {
    let n = config.coordinators;
    if n.is_multiple_of(2) || n > COORDINATORS_MAX {
        return Err(Error::Config(format!(
            "--coordinators is {n}; run 1, or 3 or 5 (Raft needs a majority: 2 coordinators survive no loss), at most {COORDINATORS_MAX}"
        )));
    }
    let first = SocketAddr::new(config.bind_ip, config.coordinator_port);
    let start = |c: CoordinatorConfig, addr: SocketAddr, http: Option<SocketAddr>| async move {
        drove_coordinator::start(c, addr, http)
            .await
            .map_err(|e| Error::Config(e.to_string()))
    };
    if n == 1 {
        let mut c = config.coordinator.clone();
        if let Some(dir) = &config.data_dir {
            c.data_dir = Some(dir.join("coordinator"));
        }
        return Ok((vec![start(c, first, config.http).await?], None));
    }
    let (root, scratch) = match &config.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let scratch = tempfile::Builder::new()
                .prefix("drove-local-")
                .tempdir()
                .map_err(|e| Error::Config(format!("cannot make a temporary directory: {e}")))?;
            (scratch.path().to_path_buf(), Some(scratch))
        }
    };
    let mut addrs = vec![first];
    for _ in 1..n {
        // A port bound and released: free now, and taken again at once below.
        let free = std::net::TcpListener::bind(SocketAddr::new(config.bind_ip, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::Config(format!("cannot find a free port: {e}")))?;
        addrs.push(free);
    }
    if first.port() == 0 {
        addrs[0] = std::net::TcpListener::bind(first)
            .and_then(|l| l.local_addr())
            .map_err(|e| Error::Config(format!("cannot find a free port: {e}")))?;
    }
    let nodes: std::collections::BTreeMap<u64, String> = (addrs.iter().enumerate())
        .map(|(i, a)| (i as u64 + 1, a.to_string()))
        .collect();
    let mut handles = Vec::with_capacity(n);
    for (i, addr) in addrs.iter().enumerate() {
        let mut c = config.coordinator.clone();
        c.data_dir = Some(root.join(format!("coordinator-{}", i + 1)));
        c.peers = Some(drove_coordinator::replica::Peers {
            node_id: i as u64 + 1,
            nodes: nodes.clone(),
        });
        let http = if i == 0 { config.http } else { None };
        handles.push(start(c, *addr, http).await?);
    }
    Ok((handles, scratch))
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
        let (coordinators, scratch) = start_coordinators(&config).await?;
        let mut cluster = Self {
            coordinators,
            _scratch: scratch,
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
            coordinator: self.coordinator_addrs(),
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
            tls: self.config.coordinator.tls.clone(),
            insecure: self.config.coordinator.insecure,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
        self.workers.push(Some(worker));
        Ok(())
    }

    async fn wait_for_workers(&self, n: usize) -> Result<()> {
        let deadline = Instant::now() + REGISTRATION_WAIT;
        while self.registered().await < n {
            if Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "the embedded cluster's {n} workers did not all register within {REGISTRATION_WAIT:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// The workers registered with the leader.
    async fn registered(&self) -> usize {
        let mut most = 0;
        for c in &self.coordinators {
            most = most.max(c.coordinator.workers().await.len());
        }
        most
    }

    /// Starts one more worker (its index is the next one) and waits until it registered.
    pub async fn add_worker(&mut self) -> Result<()> {
        self.start_worker().await?;
        self.wait_for_workers(self.worker_addrs().len()).await
    }

    /// The coordinator's gRPC address.
    pub fn coordinator_addr(&self) -> SocketAddr {
        self.coordinators[0].addr
    }

    /// The cluster identity its nodes use, if it runs with TLS; a client in this
    /// process may use it too.
    pub fn tls(&self) -> Option<&std::sync::Arc<drove_exec::tls::ClusterTls>> {
        self.config.coordinator.tls.as_ref()
    }

    /// Every coordinator's gRPC address, comma-separated, as `--coordinator` takes them.
    pub fn coordinator_addrs(&self) -> String {
        (self.coordinators.iter())
            .map(|c| c.addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The coordinator's HTTP address, if it serves HTTP.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.coordinators[0].http_addr
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
        for c in self.coordinators {
            c.shutdown().await;
        }
    }
}
