//! An embedded cluster: a coordinator and N workers in this process, each on its own
//! loopback port, talking real gRPC and Flight to each other.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
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
        let coordinator = drove_coordinator::start(
            config.coordinator.clone(),
            SocketAddr::new(config.bind_ip, config.coordinator_port),
            config.http,
        )
        .await
        .map_err(|e| Error::Config(e.to_string()))?;
        let mut workers = Vec::with_capacity(config.workers);
        for _ in 0..config.workers {
            let worker = drove_worker::start(WorkerConfig {
                coordinator: coordinator.addr.to_string(),
                bind: SocketAddr::new(config.bind_ip, 0),
                advertise: None,
                slots: config.slots,
                registration_timeout_ms: REGISTRATION_WAIT.as_millis() as u64,
            })
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
            workers.push(Some(worker));
        }
        let cluster = Self {
            coordinator,
            workers,
        };
        let deadline = Instant::now() + REGISTRATION_WAIT;
        while cluster
            .coordinator
            .coordinator
            .cluster_status()
            .workers
            .len()
            < config.workers
        {
            if Instant::now() > deadline {
                return Err(Error::Config(format!(
                    "the embedded cluster's {} workers did not all register within {REGISTRATION_WAIT:?}",
                    config.workers
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(cluster)
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

    /// Stops worker `index` abruptly, as if its machine died.
    pub async fn kill_worker(&mut self, index: usize) {
        if let Some(w) = self.workers.get_mut(index).and_then(Option::take) {
            w.shutdown().await;
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
