//! drove's coordinator.
//!
//! It accepts jobs, plans each into stages ([`planning`]), feeds the sans-I/O scheduler
//! of `drove-core` with events and performs the commands it returns ([`state`]), keeps
//! one gRPC stream open to every worker ([`service`]), and serves HTTP ([`http`]).
//!
//! Architecture invariant: the coordinator never touches rows. Data moves from worker
//! to worker and from worker to client; the coordinator only handles plans, block
//! locations and status.

pub mod auth;
pub mod durable;
pub mod history;
pub mod http;
mod https;
pub mod metrics;
pub mod planning;
pub mod replica;
pub mod rest;
pub mod service;
pub mod state;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

pub use drove_core::scheduler::{CoalesceConfig, SpeculationConfig};
pub use planning::JobLimits;
pub use state::Coordinator;

/// Errors of the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is wrong; the message says how to fix it.
    #[error("{0}")]
    User(String),
    /// A job or worker that does not exist.
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Exec(#[from] drove_exec::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// A replicated coordinator that does not lead; `leader` is the leader's gRPC
    /// address, empty while none is known.
    #[error("{}", not_leader_message(leader))]
    NotLeader { leader: String },
    /// The request's credential is missing, unknown or revoked.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Denied(String),
}

impl From<drove_core::access::Refusal> for Error {
    fn from(refusal: drove_core::access::Refusal) -> Self {
        match refusal {
            drove_core::access::Refusal::Unauthenticated(m) => Error::Unauthenticated(m),
            drove_core::access::Refusal::Denied(m) => Error::Denied(m),
        }
    }
}

fn not_leader_message(leader: &str) -> String {
    if leader.is_empty() {
        "this coordinator is not the leader and no leader is known yet (an election is under way); try again, or name every coordinator in --coordinator".into()
    } else {
        format!("this coordinator is not the leader; the leader is at {leader}")
    }
}

/// Result type of the coordinator.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        Error::Exec(drove_exec::Error::DataFusion(e))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::User(m) => tonic::Status::invalid_argument(m.clone()),
            Error::NotFound(m) => tonic::Status::not_found(m.clone()),
            Error::Unauthenticated(m) => tonic::Status::unauthenticated(m.clone()),
            Error::Denied(m) => tonic::Status::permission_denied(m.clone()),
            Error::Exec(inner) if inner.kind() == drove_core::scheduler::ErrorKind::User => {
                tonic::Status::invalid_argument(e.to_string())
            }
            Error::NotLeader { leader } => {
                let mut status = tonic::Status::unavailable(e.to_string());
                if let Ok(value) = leader.parse()
                    && !leader.is_empty()
                {
                    status
                        .metadata_mut()
                        .insert(drove_proto::LEADER_HEADER, value);
                }
                status
            }
            _ => tonic::Status::internal(e.to_string()),
        }
    }
}

/// The deepest queue of tasks a worker slot may hold.
pub const TASK_QUEUE_PER_SLOT_MAX: u32 = 16;

/// The coordinator's settings.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// How often workers heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A worker silent for this long is declared lost.
    pub heartbeat_timeout_ms: u64,
    /// Attempts per task before the job fails.
    pub task_attempt_max: u32,
    /// A running attempt that does no work for this long is retried elsewhere.
    pub task_progress_timeout_ms: u64,
    /// Tasks each worker slot holds queued behind the one it runs.
    pub task_queue_per_slot: u32,
    /// How long a scan of drove fs files waits for a slot where its data is.
    pub locality_wait_ms: u64,
    /// Ended jobs kept for inspection.
    pub job_history_max: usize,
    /// Copies of under-replicated drove fs chunks under way at once, at most
    /// (`--fs-copies-max`).
    pub fs_copies_max: usize,
    /// A succeeded job's result blocks are freed after this long if no client released them.
    pub result_ttl_ms: u64,
    /// A running job that no client has watched for this long is cancelled, unless it
    /// was submitted detached. Meant to outlast a coordinator restart or failover, for
    /// the day clients reconnect their watches.
    pub client_lease_ms: u64,
    /// Partitions per stage; `None` means the cluster's total slots at submission.
    pub target_partitions: Option<usize>,
    /// Messages queued towards one worker before it is considered stuck.
    pub worker_queue_max: usize,
    /// Running jobs fail once no worker has been registered for this long.
    pub no_worker_grace_ms: u64,
    /// When slow tasks get a speculative twin; `None` turns speculation off.
    pub speculation: Option<SpeculationConfig>,
    /// How small partitions of a stage's input run together in one task (adaptive
    /// coalescing); `None` turns it off.
    pub coalesce: Option<CoalesceConfig>,
    /// What one job may take; a larger job is refused at submission.
    pub job_limits: JobLimits,
    /// Where the metadata (job history, spent ids) is kept across restarts; `None`
    /// keeps it in memory only.
    pub data_dir: Option<std::path::PathBuf>,
    /// With `--node-id` and `--peers`: this coordinator is one of several that keep
    /// the metadata with Raft, in `data_dir`.
    pub peers: Option<replica::Peers>,
    /// A coordinator that takes over running jobs (elected, or restarted on its data
    /// directory) launches nothing for this long, while its workers come back and
    /// report the task outputs they kept: tasks whose output is reported do not run
    /// again.
    pub held_outputs_wait_ms: u64,
    /// The cluster identity (`--tls-dir`): with it, gRPC and HTTP are served, and
    /// other coordinators reached, over mutual TLS; only nodes of the cluster may
    /// run worker sessions or Raft.
    pub tls: Option<Arc<drove_exec::tls::ClusterTls>>,
    /// Serve on a non-loopback address without TLS (`--insecure`).
    pub insecure: bool,
    /// The directories jobs may read and write (`--allow-path`); `None`: wherever
    /// the coordinator and workers can.
    pub allowed_paths: Option<drove_exec::confine::AllowedPaths>,
    /// Where each named tenant's jobs may read and write (`--tenant-path`), in
    /// place of `allowed_paths` for that tenant.
    pub tenant_paths: std::collections::BTreeMap<String, drove_exec::confine::AllowedPaths>,
    /// Tenants' weights and quotas (`--tenant`); others get the defaults.
    pub tenants: std::collections::BTreeMap<String, drove_core::scheduler::TenantPolicy>,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval_ms: 1000,
            heartbeat_timeout_ms: 10_000,
            task_attempt_max: 4,
            task_progress_timeout_ms: 5 * 60 * 1000,
            task_queue_per_slot: 1,
            locality_wait_ms: drove_core::scheduler::SchedulerConfig::default().locality_wait_ms,
            job_history_max: 100,
            fs_copies_max: 4,
            result_ttl_ms: 10 * 60 * 1000,
            client_lease_ms: 60_000,
            target_partitions: None,
            worker_queue_max: 4096,
            no_worker_grace_ms: 60_000,
            speculation: Some(SpeculationConfig::default()),
            coalesce: Some(CoalesceConfig::default()),
            job_limits: JobLimits::default(),
            data_dir: None,
            peers: None,
            held_outputs_wait_ms: 1_500,
            tls: None,
            insecure: false,
            allowed_paths: None,
            tenant_paths: Default::default(),
            tenants: Default::default(),
        }
    }
}

impl CoordinatorConfig {
    /// Refuses settings that cannot work, naming the flag to fix.
    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_interval_ms == 0 {
            return Err(Error::User(
                "--heartbeat-interval-ms must be at least 1".into(),
            ));
        }
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms {
            return Err(Error::User(format!(
                "--heartbeat-timeout-ms ({}) must be longer than --heartbeat-interval-ms ({}), or every worker is lost between two heartbeats",
                self.heartbeat_timeout_ms, self.heartbeat_interval_ms
            )));
        }
        if self.task_progress_timeout_ms <= self.heartbeat_timeout_ms {
            return Err(Error::User(format!(
                "--task-progress-timeout-secs ({} ms) must be longer than --heartbeat-timeout-ms ({}), since progress arrives with heartbeats",
                self.task_progress_timeout_ms, self.heartbeat_timeout_ms
            )));
        }
        if self.client_lease_ms == 0 {
            return Err(Error::User(
                "--client-lease-secs must be at least 1, or every job is cancelled before its client can watch it".into(),
            ));
        }
        if self.task_queue_per_slot > TASK_QUEUE_PER_SLOT_MAX {
            return Err(Error::User(format!(
                "--task-queue-per-slot is {}, the most is {TASK_QUEUE_PER_SLOT_MAX}: a deep queue only holds tasks another worker could run",
                self.task_queue_per_slot
            )));
        }
        if self.peers.is_some() && self.data_dir.is_none() {
            return Err(Error::User(
                "--peers needs --data-dir: each replicated coordinator keeps its log on disk"
                    .into(),
            ));
        }
        if self.task_attempt_max == 0 {
            return Err(Error::User("--task-attempts must be at least 1".into()));
        }
        if self.job_limits.stage_partitions_max == 0 || self.job_limits.job_tasks_max == 0 {
            return Err(Error::User(
                "--stage-partitions-max and --job-tasks-max must be at least 1".into(),
            ));
        }
        if let Some(s) = &self.speculation {
            if !(s.multiplier >= 1.0 && s.multiplier.is_finite()) {
                return Err(Error::User(format!(
                    "--speculation-multiplier must be 1 or more, not {}",
                    s.multiplier
                )));
            }
            if !(s.quantile > 0.0 && s.quantile <= 1.0) {
                return Err(Error::User(format!(
                    "--speculation-quantile must be in (0, 1], not {}",
                    s.quantile
                )));
            }
        }
        Ok(())
    }
}

/// The answer to a gRPC call whose handler panicked: an `INTERNAL` status that says so.
fn grpc_panic(panic: Box<dyn std::any::Any + Send>) -> axum::http::Response<tonic::body::Body> {
    tonic::Status::internal(format!(
        "internal error: {}",
        drove_core::panic_message(panic.as_ref())
    ))
    .into_http()
}

/// A running coordinator.
pub struct CoordinatorHandle {
    /// Where the gRPC service listens.
    pub addr: SocketAddr,
    /// Where HTTP listens, if it does.
    pub http_addr: Option<SocketAddr>,
    pub coordinator: Coordinator,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl CoordinatorHandle {
    /// Stops serving and waits until the servers have stopped.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Starts a coordinator: gRPC on `addr`, HTTP on `http` if given.
pub async fn start(
    config: CoordinatorConfig,
    addr: SocketAddr,
    http: Option<SocketAddr>,
) -> Result<CoordinatorHandle> {
    config.validate()?;
    let exposed = |what: &str, ip| {
        drove_exec::tls::check_exposure(what, ip, config.tls.as_deref(), config.insecure)
            .map_err(Error::User)
    };
    exposed("the coordinator's gRPC service", addr.ip())?;
    if let Some(http) = http {
        exposed("the coordinator's HTTP service", http.ip())?;
    }
    if !config.tenant_paths.is_empty() && config.allowed_paths.is_none() {
        tracing::warn!(
            "--tenant-path confines only the tenants it names; the others read and write wherever the coordinator and workers can. Add --allow-path for them"
        );
    }
    let listener = bind(addr).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let (coordinator, raft) = match (&config.peers, &config.data_dir) {
        (Some(peers), Some(dir)) => {
            let replica = replica::Replica::start(
                peers.clone(),
                dir,
                config.job_history_max,
                config.tls.clone(),
            )
            .await?;
            let coordinator = Coordinator::replicated(config.clone(), replica.clone())?;
            let raft = replica::server(replica.raft().clone());
            tasks.push(tokio::spawn(replica::follow(
                replica,
                coordinator.clone(),
                shutdown_rx.clone(),
            )));
            (coordinator, Some(raft))
        }
        _ => (Coordinator::new(config.clone())?, None),
    };

    let service = service::server(coordinator.clone());
    let builder = drove_exec::tls::server_builder(config.tls.as_deref()).map_err(Error::User)?;
    let mut rx = shutdown_rx.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = builder
            // A panic in a handler is a bug; it fails that call, not the server.
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(grpc_panic))
            .add_service(service)
            .add_optional_service(raft)
            .serve_with_incoming_shutdown(drove_exec::net::incoming(listener), stop)
            .await
        {
            tracing::error!("coordinator gRPC server stopped: {e}");
        }
    }));

    let http_addr = match http {
        Some(http) => {
            let listener = bind(http).await?;
            let http_addr = listener
                .local_addr()
                .map_err(|source| Error::Bind { addr: http, source })?;
            let router = http::router(coordinator.clone());
            let tls = match &config.tls {
                Some(tls) => Some(tls.rustls_server().map_err(Error::User)?),
                None => None,
            };
            let mut rx = shutdown_rx.clone();
            tasks.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = rx.wait_for(|s| *s).await;
                };
                let served = match tls {
                    None => {
                        let listener =
                            listener.tap_io(|tcp| drove_exec::net::configure_accepted(tcp));
                        axum::serve(listener, router)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                    Some(tls) => {
                        let router = router.into_make_service_with_connect_info::<http::Peer>();
                        axum::serve(https::Listener::new(listener, tls), router)
                            .with_graceful_shutdown(stop)
                            .await
                    }
                };
                if let Err(e) = served {
                    tracing::error!("coordinator HTTP server stopped: {e}");
                }
            }));
            Some(http_addr)
        }
        None => None,
    };

    // The clock: heartbeat timeouts and result expiry.
    let ticker = coordinator.clone();
    let mut rx = shutdown_rx;
    let tick = Duration::from_millis((config.heartbeat_interval_ms / 2).max(50));
    tasks.push(tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = rx.wait_for(|s| *s) => break,
            }
            ticker.tick().await;
        }
    }));

    info!(%addr, ?http_addr, "coordinator listening");
    Ok(CoordinatorHandle {
        addr,
        http_addr,
        coordinator,
        shutdown,
        tasks,
    })
}
