//! drove's worker.
//!
//! A worker serves its block store over Arrow Flight ([`flight`]), registers with the
//! coordinator over one long-lived gRPC stream, runs the tasks the coordinator sends
//! and reports their outcome in heartbeats. If the stream breaks it registers again,
//! as a new worker, until the registration timeout runs out.
//!
//! A worker asked to drain ([`WorkerHandle::drain`], SIGTERM in `drove worker`) tells
//! the coordinator, which sends it no new tasks and says when nothing it runs or holds
//! is needed any more; then the worker leaves. It leaves anyway after the drain timeout.

pub mod chunks;
pub mod flight;
pub mod node;

pub mod workdir;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use datafusion::execution::FunctionRegistry;
use datafusion::execution::TaskContext;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::ScalarUDF;
use drove_exec::blocks::{BlockKey, BlockStore, SpillCodec, StoreConfig};
use drove_exec::leader::Coordinators;
use drove_exec::planner::OutputMode;
use drove_exec::shuffle::{FlightPool, MapOutputRef, ShuffleEnv, StageOutputs};
use drove_exec::stage_plan::StagePlan;
use drove_exec::tls::ClusterTls;
use drove_exec::{net, session, task};
use drove_proto as pb;
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{Instrument, debug, info, info_span, warn};

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "could not register with the coordinator at {addr} within {timeout_ms} ms: {last_error}; check that `drove coordinator` runs there and that --coordinator names it"
    )]
    Registration {
        addr: String,
        timeout_ms: u64,
        last_error: String,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{0}")]
    NotACoordinator(String),
}

/// Result type of the worker.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The coordinator's gRPC address, HOST:PORT.
    pub coordinator: String,
    /// Where the Flight service listens.
    pub bind: SocketAddr,
    /// The Flight address other nodes should use, if not the bound one.
    pub advertise: Option<String>,
    /// Tasks run at once.
    pub slots: u32,
    /// How long to keep trying to register before giving up.
    pub registration_timeout_ms: u64,
    /// How long a draining worker waits for the coordinator's leave before leaving anyway.
    pub drain_timeout_ms: u64,
    /// Fault injection for tests and demonstrations of speculation: every task waits
    /// this long before it starts. 0 in normal use.
    pub task_delay_ms: u64,
    /// The memory budget of the whole process. An eighth of it, up to 64 MiB, is left
    /// for what is not counted (code, connections' buffers, memory the allocator keeps
    /// after it was freed); of the rest, half holds the blocks the worker keeps, half
    /// its running tasks' operators (divided equally between its slots). What does not
    /// fit spills to disk.
    pub memory_bytes: u64,
    /// Under this directory the worker keeps its own directory for spilled blocks and
    /// operator spill files, removed when it stops; left-overs of workers that died are
    /// removed when another worker starts here.
    pub work_dir: PathBuf,
    pub spill_codec: SpillCodec,
    /// Where the worker keeps what outlives it (its node id, and its drove fs chunks);
    /// `None` gives it no lasting identity and no chunks.
    pub data_dir: Option<PathBuf>,
    /// The cluster identity (`--tls-dir`): with it, Flight is served, and coordinators
    /// and other workers are reached, over mutual TLS.
    pub tls: Option<Arc<ClusterTls>>,
    /// Serve Flight on a non-loopback address without TLS (`--insecure`).
    pub insecure: bool,
    /// The most bytes of `drove fs` chunks kept in `data_dir` (`--data-max`).
    pub data_max_bytes: u64,
    /// The worker's failure domain (`--zone`): replicas of a chunk go to different
    /// zones where there are several.
    pub zone: String,
    /// Bytes a second the scrubber reads to check stored chunks (0: none).
    pub scrub_bytes_per_s: u64,
    /// How long a draining worker that holds drove fs chunks waits for the
    /// coordinator to copy them elsewhere before it leaves anyway (in place of
    /// `drain_timeout_ms` when longer).
    pub chunk_drain_timeout_ms: u64,
}

/// The smallest memory budget a worker accepts: below it, a sort's merge buffers and a
/// few blocks in flight do not fit.
pub const MEMORY_MIN_BYTES: u64 = 32 << 20;

/// The default memory budget for `workers` workers on this machine: half of its memory
/// (or of the control group's limit, in a container), shared between them, and never
/// below [`MEMORY_MIN_BYTES`].
pub fn default_memory_bytes(workers: usize) -> u64 {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(8 << 30);
    // "max" (no limit) does not parse, and leaves the machine's memory.
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|m| m.trim().parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    (machine.min(cgroup) / 2 / workers.max(1) as u64).max(MEMORY_MIN_BYTES)
}

/// The default parent of workers' directories.
pub fn default_work_dir() -> PathBuf {
    std::env::temp_dir().join("drove-work")
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            coordinator: "127.0.0.1:7070".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            advertise: None,
            slots: 2,
            registration_timeout_ms: 300_000,
            drain_timeout_ms: 60_000,
            task_delay_ms: 0,
            memory_bytes: default_memory_bytes(1),
            work_dir: default_work_dir(),
            spill_codec: SpillCodec::default(),
            data_dir: None,
            tls: None,
            insecure: false,
            data_max_bytes: u64::MAX,
            zone: String::new(),
            scrub_bytes_per_s: 8 << 20,
            chunk_drain_timeout_ms: 600_000,
        }
    }
}

/// Task status reports queued towards the coordinator at most.
const STATUS_QUEUE_MAX: usize = 1024;
/// Reports sent in one heartbeat at most.
const STATUS_BATCH_MAX: usize = 256;

struct Shared {
    store: Arc<BlockStore>,
    /// Its `drove fs` chunks, with a data directory.
    chunks: Option<Arc<chunks::ChunkStore>>,
    chunk_clients: Arc<drove_exec::dfs::ChunkClients>,
    /// Writes drove:// files for tasks (MapReduce output).
    fs_writer: Arc<drove_exec::dfs_write::FsWriter>,
    /// Bytes of drove:// files its tasks read, from its own replicas and others'.
    fs_read: Arc<drove_exec::dfs::ReadBytes>,
    /// What checks clients' grants on the Flight service.
    ticket_key: flight::TicketKey,
    flight: Arc<FlightPool>,
    state: SessionState,
    /// Each running task's operators get a pool of this many bytes.
    task_pool_bytes: usize,
    /// Bytes the operators of all running tasks hold.
    execution_reserved: Arc<AtomicU64>,
    slots: Arc<Semaphore>,
    task_delay: Duration,
    memory_bytes: u64,
    /// Operator memory each task may set aside for merging its spills.
    sort_spill_reservation: usize,
    spill_codec: SpillCodec,
    /// The most blocks and operators have held at once, as sampled.
    peak: AtomicU64,
    /// What the operators of finished tasks spilled.
    operator_spills: AtomicU64,
    operator_spill_count: AtomicU64,
    /// Where tasks run, apart from the worker's control traffic.
    tasks: TaskRuntime,
    /// Sessions of recent jobs' settings: every task of a job carries the same
    /// settings, and parsing them costs more than a tiny task's work.
    sessions: std::sync::Mutex<VecDeque<(HashMap<String, String>, JobSession)>>,
    /// The worker's own directory; removed when the worker stops.
    _work_dir: workdir::WorkDir,
    /// The worker's lasting identity, with its directory locked.
    node: Option<node::NodeDir>,
}

/// Stack of a task thread. Evaluating an expression recurses once per level of its
/// tree, and a query may nest thousands of levels (a 3,000-term sum); a default 2 MiB
/// thread would overflow and abort the whole worker. It is reserved address space,
/// resident only as deep as a task goes; the runtime's blocking threads get it too.
const TASK_STACK_BYTES: usize = 256 << 20;

/// The runtime that runs a worker's tasks: threads of their own with deep stacks, so a
/// task neither overflows a stack nor starves heartbeats and the Flight service of the
/// runtime they run on. Stopped, without waiting, when the worker goes.
struct TaskRuntime(Option<tokio::runtime::Runtime>);

impl TaskRuntime {
    fn new(slots: u32) -> Result<Self> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(slots.max(1) as usize)
            .thread_name("drove-task")
            .thread_stack_size(TASK_STACK_BYTES)
            .enable_all()
            .build()
            .map(|r| Self(Some(r)))
            .map_err(|e| Error::Config(format!("cannot start the task threads: {e}")))
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("the task runtime lives until drop")
            .handle()
    }
}

impl Drop for TaskRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sessions a worker keeps (one per job that runs at once is plenty).
const SESSIONS_KEPT: usize = 16;

/// What a job's settings make of the worker's session.
#[derive(Clone)]
struct JobSession {
    config: datafusion::prelude::SessionConfig,
    /// The functions that read the settings (`to_timestamp` and the session's time
    /// zone, say) and that the settings change, made again for them. The worker's own were made for its defaults,
    /// and decoding a plan by function name would pick those: a `SET` would then
    /// change the plan's types on the coordinator but not the values on the workers.
    functions: Arc<Vec<Arc<ScalarUDF>>>,
}

impl Shared {
    /// The session of a task's settings, made once per distinct settings.
    fn session(&self, settings: &HashMap<String, String>) -> drove_exec::Result<JobSession> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, session)) = sessions.iter().find(|(s, _)| s == settings) {
            return Ok(session.clone());
        }
        let config = session::config(settings)?;
        // Only those the settings change: with the defaults, a task registers none.
        let functions = self
            .state
            .scalar_functions()
            .values()
            .filter_map(|f| {
                let made = f.inner().with_updated_config(config.options())?;
                (made != **f).then(|| Arc::new(made))
            })
            .collect();
        let session = JobSession {
            config,
            functions: Arc::new(functions),
        };
        if sessions.len() == SESSIONS_KEPT {
            sessions.pop_back();
        }
        sessions.push_front((settings.clone(), session.clone()));
        Ok(session)
    }

    fn memory(&self) -> pb::MemoryStats {
        let blocks = self.store.stats();
        let execution = self.execution_reserved.load(Ordering::Relaxed);
        let now = blocks.memory_bytes + execution;
        let peak = self
            .peak
            .fetch_max(now, Ordering::Relaxed)
            .max(now)
            .max(blocks.peak_memory_bytes);
        let operators = self.state.runtime_env().disk_manager.spilling_progress();
        pb::MemoryStats {
            budget_bytes: self.memory_bytes,
            block_bytes: blocks.memory_bytes,
            execution_bytes: execution,
            peak_bytes: peak,
            disk_bytes: blocks.disk_bytes + operators.current_bytes,
            spilled_bytes_total: blocks.spilled_bytes_total
                + self.operator_spills.load(Ordering::Relaxed),
            spill_count: blocks.spill_count + self.operator_spill_count.load(Ordering::Relaxed),
        }
    }
}

/// A running worker.
pub struct WorkerHandle {
    /// Where the Flight service listens.
    pub flight_addr: SocketAddr,
    /// Its lasting identity, with a data directory.
    pub node_id: Option<String>,
    pub store: Arc<BlockStore>,
    /// The worker's own directory for spill files (under `WorkerConfig::work_dir`).
    pub work_dir: PathBuf,
    shutdown: watch::Sender<bool>,
    drain: watch::Sender<bool>,
    main: JoinHandle<Result<()>>,
    flight_server: JoinHandle<()>,
}

impl WorkerHandle {
    /// Waits until the worker stops: an error if it could not (re)register in time.
    pub async fn wait(self) -> Result<()> {
        let result = match self.main.await {
            Ok(r) => r,
            Err(e) => Err(Error::Config(format!("the worker's main task died: {e}"))),
        };
        let _ = self.shutdown.send(true);
        close_flight(self.flight_server).await;
        result
    }

    /// Asks the worker to leave gracefully: [`Self::wait`] returns once the coordinator
    /// no longer needs it (or the drain timeout passed).
    pub fn drain(&self) {
        let _ = self.drain.send(true);
    }

    /// A handle that asks for a drain, usable while [`Self::wait`] owns the worker.
    pub fn drainer(&self) -> impl Fn() + Send + 'static {
        let drain = self.drain.clone();
        move || {
            let _ = drain.send(true);
        }
    }

    /// Stops the worker at once, as a crash would: its session and Flight service are
    /// dropped without waiting for anything, and its blocks are gone.
    pub fn kill(self) {
        self.main.abort();
        self.flight_server.abort();
        self.store.release_all();
    }

    /// Stops the worker: its session ends and its Flight service closes.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        self.main.abort();
        let _ = self.main.await;
        close_flight(self.flight_server).await;
    }
}

/// How long a stopping worker waits for the blocks it is sending to be read.
const FLIGHT_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Waits for the Flight server, told to stop, to finish the streams it serves, then
/// closes whatever a reader has left open: a peer that stopped reading must not keep
/// the worker from stopping.
async fn close_flight(mut server: JoinHandle<()>) {
    if tokio::time::timeout(FLIGHT_CLOSE_GRACE, &mut server)
        .await
        .is_err()
    {
        warn!(
            grace_ms = FLIGHT_CLOSE_GRACE.as_millis() as u64,
            "Flight streams were still open after the grace period; closing them"
        );
        server.abort();
        let _ = server.await;
    }
}

/// Starts a worker: binds Flight, then registers with the coordinator in the background.
pub async fn start(config: WorkerConfig) -> Result<WorkerHandle> {
    let slots_max = drove_core::scheduler::WORKER_SLOTS_MAX;
    if config.slots == 0 || config.slots > slots_max {
        return Err(Error::Config(format!(
            "--slots is {}; give 1 to {slots_max} (each slot is a thread)",
            config.slots
        )));
    }
    if config.memory_bytes < MEMORY_MIN_BYTES {
        return Err(Error::Config(format!(
            "--memory {} is below the minimum working size of {} ({} bytes); give the worker at least 32MiB",
            drove_core::human_bytes(config.memory_bytes),
            drove_core::human_bytes(MEMORY_MIN_BYTES),
            MEMORY_MIN_BYTES
        )));
    }
    drove_exec::tls::check_exposure(
        "the worker's Flight service",
        config.bind.ip(),
        config.tls.as_deref(),
        config.insecure,
    )
    .map_err(Error::Config)?;
    let coordinators =
        Coordinators::parse(&config.coordinator, config.tls.clone(), Default::default())
            .map_err(|why| Error::Config(format!("--coordinator: {why}")))?;
    let work_dir = workdir::WorkDir::create(&config.work_dir).map_err(Error::Config)?;
    let node = match &config.data_dir {
        Some(dir) => Some(node::NodeDir::open(dir).map_err(Error::Config)?),
        None => None,
    };
    let node_id = node.as_ref().map(|n| n.node_id.clone());
    let chunk_store = match &config.data_dir {
        Some(dir) if dir == &config.work_dir => {
            return Err(Error::Config(format!(
                "--data-dir and --work-dir are both {}; keep what lasts (drove fs chunks) apart from scratch space, which is removed",
                dir.display()
            )));
        }
        Some(dir) => Some(Arc::new(
            chunks::ChunkStore::open(&dir.join("chunks"), config.data_max_bytes)
                .map_err(Error::Config)?,
        )),
        None => None,
    };
    let own_dir = work_dir.path().to_path_buf();
    let block_bytes = counted_bytes(&config) / 2;
    let listener = TcpListener::bind(config.bind)
        .await
        .map_err(|source| Error::Bind {
            addr: config.bind,
            source,
        })?;
    let flight_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.bind,
        source,
    })?;
    let advertised = config
        .advertise
        .clone()
        .unwrap_or_else(|| flight_addr.to_string());
    let coordinators = Arc::new(coordinators);
    let chunk_clients = Arc::new(drove_exec::dfs::ChunkClients::new(config.tls.clone()));
    // Tasks read drove:// files through the leader's namespace, from this worker's own
    // replicas where it holds them.
    let fs_reader =
        drove_exec::dfs::ChunkReader::new(Arc::clone(&chunk_clients), Some(advertised.clone()));
    let stores = drove_exec::stores::Stores::new(Some(drove_exec::stores::DroveFs::new(
        Arc::clone(&coordinators) as _,
        fs_reader.clone(),
    )));
    let runtime = RuntimeEnvBuilder::new()
        .with_disk_manager_builder(
            DiskManagerBuilder::default()
                .with_mode(DiskManagerMode::Directories(vec![work_dir.operators()])),
        )
        .with_object_store_registry(Arc::new(stores))
        .build_arc()
        .map_err(|e| Error::Config(format!("cannot set up task memory and spilling: {e}")))?;
    let store = Arc::new(BlockStore::new(StoreConfig {
        memory_limit: block_bytes,
        spill_dir: Some(work_dir.blocks()),
        codec: config.spill_codec,
    }));
    let (shutdown, shutdown_rx) = watch::channel(false);

    let mut rx = shutdown_rx.clone();
    let ticket_key = flight::TicketKey::default();
    let server = flight::server(Arc::clone(&store), Arc::clone(&ticket_key));
    let chunk_service = (chunk_store.clone()).map(|c| chunks::server(c, Arc::clone(&ticket_key)));
    let mut builder =
        drove_exec::tls::server_builder(config.tls.as_deref()).map_err(Error::Config)?;
    let flight_server = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = builder
            .add_service(server)
            .add_optional_service(chunk_service)
            .serve_with_incoming_shutdown(drove_exec::net::incoming(listener), stop)
            .await
        {
            tracing::error!("worker Flight server stopped: {e}");
        }
    });

    let shared = Arc::new(Shared {
        store: Arc::clone(&store),
        chunks: chunk_store.clone(),
        fs_writer: Arc::new(drove_exec::dfs_write::FsWriter {
            coordinators: Arc::clone(&coordinators),
            clients: Arc::clone(&chunk_clients),
        }),
        chunk_clients,
        fs_read: Arc::clone(&fs_reader.read),
        ticket_key,
        flight: Arc::new(FlightPool::new(config.tls.clone())),
        state: {
            let mut state = SessionStateBuilder::new()
                .with_default_features()
                .with_runtime_env(runtime)
                .build();
            for udf in drove_exec::functions::udfs() {
                datafusion::execution::FunctionRegistry::register_udf(&mut state, udf)
                    .map_err(|e| Error::Config(format!("cannot register {e}")))?;
            }
            state
        },
        task_pool_bytes: task_pool_bytes(&config) as usize,
        execution_reserved: Arc::new(AtomicU64::new(0)),
        slots: Arc::new(Semaphore::new(config.slots as usize)),
        task_delay: Duration::from_millis(config.task_delay_ms),
        memory_bytes: config.memory_bytes,
        // DataFusion's default (10 MiB) would take most of a small budget's fair share.
        sort_spill_reservation: (task_pool_bytes(&config) as usize / 4).min(10 << 20),
        spill_codec: config.spill_codec,
        peak: AtomicU64::new(0),
        operator_spills: AtomicU64::new(0),
        operator_spill_count: AtomicU64::new(0),
        tasks: TaskRuntime::new(config.slots)?,
        sessions: Default::default(),
        _work_dir: work_dir,
        node,
    });
    if let Some(store) = chunk_store.clone()
        && config.scrub_bytes_per_s > 0
    {
        tokio::spawn(scrub(store, config.scrub_bytes_per_s, shutdown_rx.clone()));
    }
    let (drain, drain_rx) = watch::channel(false);
    let main = tokio::spawn(run(
        config,
        coordinators,
        advertised,
        shared,
        shutdown_rx,
        drain_rx,
    ));
    info!(%flight_addr, "worker Flight service listening");
    Ok(WorkerHandle {
        flight_addr,
        node_id,
        store,
        work_dir: own_dir,
        shutdown,
        drain,
        main,
        flight_server,
    })
}

/// Registers, serves the session until it breaks, and registers again.
async fn run(
    config: WorkerConfig,
    coordinators: Arc<Coordinators>,
    flight_addr: String,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut drain: watch::Receiver<bool>,
) -> Result<()> {
    let mut first = true;
    let node_id = shared.node.as_ref().map_or("", |n| n.node_id.as_str());
    // The cluster whose jobs wrote the blocks held (0 before the first session), and
    // the latest term of its leaders served.
    let mut cluster_id = 0;
    let mut term = 0;
    loop {
        let mut kept = shared.store.held_outputs();
        if kept.len() > drove_core::scheduler::HELD_OUTPUTS_MAX {
            warn!(
                outputs = kept.len(),
                "too many task outputs kept to report; dropping them"
            );
            shared.store.release_all();
            kept.clear();
        }
        let held = Held {
            cluster_id,
            term,
            outputs: (kept.into_iter())
                .map(|h| pb::HeldOutput {
                    task: Some(pb::TaskKey {
                        job_id: h.task.job.0,
                        stage_id: h.task.stage.0,
                        partition: h.task.partition,
                        attempt: h.attempt,
                    }),
                    rows: h.rows,
                    bytes: h.bytes,
                })
                .collect(),
            // Every chunk is reported, so the changes since the last report are moot.
            chunks: shared.chunks.as_ref().map(|c| {
                c.take_report();
                c.ids()
            }),
        };
        let session = tokio::select! {
            s = register(&config, &coordinators, &flight_addr, node_id, &held, first) => s?,
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
            // Not registered, so nothing of ours is needed: leave at once.
            true = requested(&mut drain) => return Ok(()),
        };
        first = false;
        *shared.ticket_key.write().unwrap_or_else(|p| p.into_inner()) = session.ticket_key.clone();
        if session.cluster_id != cluster_id {
            // Another cluster's job ids: what is held means nothing to it.
            shared.store.release_all();
            cluster_id = session.cluster_id;
        }
        term = session.term;
        let worker_id = session.worker_id;
        let drain_timeout = DrainTimeouts {
            tasks: Duration::from_millis(config.drain_timeout_ms),
            chunks: Duration::from_millis(config.chunk_drain_timeout_ms),
        };
        tokio::select! {
            end = serve(session, Arc::clone(&shared), drain.clone(), drain_timeout).instrument(info_span!("worker", worker_id)) => {
                if end == SessionEnd::Drained {
                    info!(worker_id, "drained; leaving");
                    return Ok(());
                }
            }
            _ = shutdown.wait_for(|s| *s) => return Ok(()),
        }
        // The coordinator no longer knows this identity, but the next one (the same
        // restarted, or a new leader) may want the outputs: they are reported to it.
        let freed = shared.store.fence();
        warn!(
            worker_id,
            freed,
            kept = shared.store.len(),
            "session with the coordinator ended; registering again"
        );
    }
}

/// What a worker holds from its last session, reported when it registers.
struct Held {
    cluster_id: u64,
    /// The term of the last session's leader: a coordinator of that cluster leading an
    /// earlier term was deposed, and its session is refused.
    term: u64,
    outputs: Vec<pb::HeldOutput>,
    /// Its drove fs chunks, when it stores them.
    chunks: Option<Vec<u64>>,
}

struct Session {
    worker_id: u64,
    cluster_id: u64,
    term: u64,
    ticket_key: Vec<u8>,
    heartbeat_interval: Duration,
    outbound: mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

/// Tries to register with the leader of `coordinators`, backing off between attempts,
/// until the timeout runs out. On the `first` registration, an answer from something
/// that is not a coordinator ends it at once; later, after a coordinator was there,
/// every failure is retried.
async fn register(
    config: &WorkerConfig,
    coordinators: &Coordinators,
    flight_addr: &str,
    node_id: &str,
    held: &Held,
    first: bool,
) -> Result<Session> {
    let deadline = Instant::now() + Duration::from_millis(config.registration_timeout_ms);
    let mut backoff = Duration::from_millis(100);
    loop {
        let (addr, mut client) = coordinators.current();
        let refused = |s: tonic::Status| {
            // Not the leader, or not there: the next attempt goes to the leader it
            // names, or to the next coordinator.
            coordinators.follow(&s);
            refusal(&addr, &s)
        };
        let attempt = async {
            let (outbound, rx) = mpsc::channel(64);
            let register = pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Register(pb::RegisterWorker {
                    flight_addr: flight_addr.to_string(),
                    slots: config.slots,
                    task_memory_bytes: task_pool_bytes(config),
                    node_id: node_id.to_string(),
                    held_cluster_id: held.cluster_id,
                    held: held.outputs.clone(),
                    zone: config.zone.clone(),
                    chunks: held.chunks.clone().unwrap_or_default(),
                    stores_chunks: held.chunks.is_some(),
                })),
            };
            outbound
                .send(register)
                .await
                .map_err(|e| Refusal::Retry(e.to_string()))?;
            let mut inbound = client
                .worker_session(ReceiverStream::new(rx))
                .await
                .map_err(refused)?
                .into_inner();
            match inbound.message().await {
                Ok(Some(pb::CoordinatorMessage {
                    kind: Some(pb::coordinator_message::Kind::Registered(r)),
                })) => {
                    if let Some(why) = deposed(held, r.cluster_id, r.term) {
                        // Dropping the session's streams ends it on the coordinator.
                        coordinators.follow(&tonic::Status::unavailable(why.clone()));
                        return Err(Refusal::Retry(format!("{addr}: {why}")));
                    }
                    Ok(Session {
                        worker_id: r.worker_id,
                        cluster_id: r.cluster_id,
                        term: r.term,
                        ticket_key: r.ticket_key,
                        heartbeat_interval: Duration::from_millis(r.heartbeat_interval_ms.max(10)),
                        outbound,
                        inbound,
                    })
                }
                Ok(_) => Err(Refusal::Retry(
                    "the coordinator did not acknowledge the registration".to_string(),
                )),
                Err(s) => Err(refused(s)),
            }
        };
        match attempt.await {
            Ok(session) => {
                info!(worker_id = session.worker_id, coordinator = %addr, "registered");
                return Ok(session);
            }
            Err(Refusal::Fatal(why)) if first => {
                // Plain HTTP/2 against a TLS server looks like a foreign protocol.
                let why = if config.tls.is_none() && drove_exec::net::speaks_tls(&addr).await {
                    format!("{addr}: {}", drove_exec::tls::NEEDS_TLS)
                } else {
                    why
                };
                return Err(Error::NotACoordinator(why));
            }
            Err(Refusal::Fatal(last_error) | Refusal::Retry(last_error)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(Error::Registration {
                        addr: config.coordinator.clone(),
                        timeout_ms: config.registration_timeout_ms,
                        last_error,
                    });
                }
                warn!(coordinator = %addr, error = %last_error, retry_in_ms = backoff.as_millis() as u64, "registration failed; retrying");
                tokio::time::sleep(backoff.min(deadline - now)).await;
                // After a session, the coordinator may be back any moment (restarted
                // on its data directory) and waits for its workers' outputs.
                let single = Duration::from_millis(if first { 2_000 } else { 500 });
                backoff = (backoff * 2).min(coordinators.retry_max(single));
            }
        }
    }
}

/// Why a session offered by the leader of `term` in `cluster` must be refused, if it
/// must: this worker served a later term of that cluster, whose leader deposed it.
fn deposed(held: &Held, cluster: u64, term: u64) -> Option<String> {
    (cluster == held.cluster_id && term < held.term).then(|| {
        format!(
            "it leads term {term}, but this worker served term {} of the same cluster: it was deposed",
            held.term
        )
    })
}

/// Why a registration attempt failed.
enum Refusal {
    /// Nothing answered, or the coordinator could not take us now: try again.
    Retry(String),
    /// Something answered that is not a drove coordinator: trying again cannot help.
    Fatal(String),
}

/// Classifies a failed registration call. A server that answers HTTP/2 but has no
/// coordinator service (a worker's Flight port), or that does not speak HTTP/2 at all
/// (the coordinator's HTTP port), is not a coordinator.
fn refusal(addr: &str, status: &tonic::Status) -> Refusal {
    let mut why = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(s) = source {
        why = if why.is_empty() {
            s.to_string()
        } else {
            format!("{why}: {s}")
        };
        source = s.source();
    }
    if why.is_empty() {
        why = format!("the call failed with gRPC code {:?}", status.code());
    }
    let foreign = status.code() == tonic::Code::Unimplemented
        || why.contains("protocol error")
        || why.contains("frame with invalid size")
        || why.contains("invalid HTTP version");
    if let Some(fix) = drove_exec::tls::mismatch(&why) {
        return Refusal::Fatal(format!("{addr}: {fix} ({why})"));
    }
    if foreign {
        Refusal::Fatal(format!(
            "{addr} answered, but not as a drove coordinator ({why}); point --coordinator at the gRPC address `drove coordinator` listens on (its --bind, 127.0.0.1:7070 by default), not at a worker or the HTTP port"
        ))
    } else {
        Refusal::Retry(why)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    /// The stream broke or the coordinator closed it.
    Broken,
    /// The worker drained and may leave.
    Drained,
}

/// Waits until the flag is set; false if it never can be.
async fn requested(flag: &mut watch::Receiver<bool>) -> bool {
    flag.wait_for(|f| *f).await.is_ok()
}

fn block_keys(tickets: &[pb::BlockTicket]) -> Vec<BlockKey> {
    tickets
        .iter()
        .map(|t| BlockKey {
            job: t.job_id,
            stage: t.stage_id,
            map_partition: t.map_partition,
            reduce_partition: t.reduce_partition,
            attempt: t.attempt,
        })
        .collect()
}

/// A task attempt on this worker: job, stage, partition and attempt.
type Attempt = drove_exec::blocks::OutputKey;

/// The identity of a task attempt on this worker.
fn attempt_of(key: &pb::TaskKey) -> Attempt {
    (key.job_id, key.stage_id, key.partition, key.attempt)
}

/// Runs one registered session until the coordinator's stream ends or the worker has
/// drained.
async fn serve(
    mut session: Session,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<bool>,
    timeouts: DrainTimeouts,
) -> SessionEnd {
    let (status_tx, mut status_rx) = mpsc::channel::<pb::TaskStatus>(STATUS_QUEUE_MAX);
    let outbound = session.outbound.clone();
    let slots = Arc::clone(&shared.slots);
    let memory = Arc::clone(&shared);
    let busy = BusyClocks::default();
    let clocks = busy.clone();
    let heartbeats = AbortOnDrop(tokio::spawn(async move {
        let mut interval = tokio::time::interval(session.heartbeat_interval);
        let mut reported = HashMap::new();
        loop {
            let mut statuses = Vec::new();
            tokio::select! {
                _ = interval.tick() => {}
                status = status_rx.recv() => match status {
                    Some(s) => statuses.push(s),
                    None => break,
                },
            }
            while statuses.len() < STATUS_BATCH_MAX {
                match status_rx.try_recv() {
                    Ok(s) => statuses.push(s),
                    Err(_) => break,
                }
            }
            let chunks = memory
                .chunks
                .as_ref()
                .map(|c| c.take_report())
                .unwrap_or_default();
            let usage = memory.chunks.as_ref().map_or((0, 0), |c| c.usage());
            let (read_local, read_remote) = memory.fs_read.take();
            let heartbeat = pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                    statuses,
                    free_slots: slots.available_permits() as u32,
                    memory: Some(memory.memory()),
                    progressed: clocks.advanced(&mut reported),
                    chunks_added: chunks.added,
                    chunks_removed: chunks.removed,
                    chunks_corrupt: chunks.corrupt,
                    chunk_copies_failed: chunks.copies_failed,
                    chunk_bytes: usage.0,
                    // No limit but the disk's shows as 0.
                    chunk_capacity_bytes: if usage.1 == u64::MAX { 0 } else { usage.1 },
                    fs_read_local_bytes: read_local,
                    fs_read_remote_bytes: read_remote,
                })),
            };
            if outbound.send(heartbeat).await.is_err() {
                break;
            }
        }
    }));

    let mut tasks = JoinSet::new();
    // The running attempts, so that a kill stops one and releasing a job (it ended,
    // failed or was cancelled) stops all of the job's. At most one per launch the
    // coordinator sent, which it bounds by the worker's slots.
    let mut running: HashMap<Attempt, tokio::task::AbortHandle> = HashMap::new();
    // The plans of the stages this worker ran tasks of, by job and stage: each comes with
    // the stage's first task here and goes when the job's blocks are released. The
    // coordinator bounds them, as it bounds the jobs that run at once and their stages.
    let mut plans: HashMap<(u64, u32), Arc<StagePlan>> = HashMap::new();
    // Once draining, leave at this instant even if the coordinator never says so.
    let mut leave_by: Option<tokio::time::Instant> = None;
    let end = loop {
        let message = tokio::select! {
            m = session.inbound.message() => m,
            // Reap finished tasks so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                running.retain(|_, h| !h.is_finished());
                busy.retain(|attempt| running.contains_key(attempt));
                continue;
            }
            true = requested(&mut drain), if leave_by.is_none() => {
                info!("draining: asking the coordinator for no new tasks");
                // Decided now: chunks stored since the session began count too.
                let holds_chunks = shared.chunks.as_ref().is_some_and(|c| !c.ids().is_empty());
                let drain_timeout = match holds_chunks {
                    true => timeouts.tasks.max(timeouts.chunks),
                    false => timeouts.tasks,
                };
                leave_by = Some(tokio::time::Instant::now() + drain_timeout);
                let message = pb::WorkerMessage {
                    kind: Some(pb::worker_message::Kind::Drain(pb::Drain {})),
                };
                if session.outbound.send(message).await.is_err() {
                    break SessionEnd::Drained;
                }
                continue;
            }
            () = tokio::time::sleep_until(leave_by.unwrap_or_else(tokio::time::Instant::now)), if leave_by.is_some() => {
                warn!("the drain timed out; leaving anyway");
                break SessionEnd::Drained;
            }
        };
        match message {
            Ok(Some(pb::CoordinatorMessage { kind: Some(kind) })) => match kind {
                pb::coordinator_message::Kind::Launch(mut launch) => {
                    let shared = Arc::clone(&shared);
                    let status_tx = status_tx.clone();
                    let worker_id = session.worker_id;
                    let attempt = attempt_of(&launch.task.unwrap_or_default());
                    let stage = (attempt.0, attempt.1);
                    if !launch.plan.is_empty() {
                        let plan = StagePlan::new(std::mem::take(&mut launch.plan));
                        plans.insert(stage, Arc::new(plan));
                    }
                    let plan = plans.get(&stage).cloned();
                    let clock = busy.start(attempt);
                    let handle = tasks.spawn(async move {
                        let status = run_task(worker_id, launch, plan, shared, clock).await;
                        let _ = status_tx.send(status).await;
                    });
                    running.insert(attempt, handle);
                }
                pb::coordinator_message::Kind::Kill(key) => {
                    if let Some(handle) = running.remove(&attempt_of(&key)) {
                        debug!(
                            job = key.job_id,
                            stage = key.stage_id,
                            partition = key.partition,
                            attempt = key.attempt,
                            "killing an attempt"
                        );
                        handle.abort();
                    }
                }
                pb::coordinator_message::Kind::Release(release) => {
                    plans.retain(|(job, _), _| *job != release.job_id);
                    running.retain(|(job, ..), handle| {
                        let keep = *job != release.job_id;
                        if !keep {
                            handle.abort();
                        }
                        keep
                    });
                    let freed = shared.store.release_job(release.job_id);
                    debug!(job = release.job_id, freed, "released a job's blocks");
                }
                pb::coordinator_message::Kind::Adopt(adopt) => {
                    let held = shared
                        .store
                        .adopt(&block_keys(&adopt.blocks), adopt.cache_id);
                    debug!(
                        cache = adopt.cache_id,
                        held, "blocks handed to a cached table"
                    );
                }
                pb::coordinator_message::Kind::Drop(drop) => {
                    let freed = shared.store.release_blocks(&block_keys(&drop.blocks));
                    debug!(freed, "dropped stale blocks");
                }
                pb::coordinator_message::Kind::DropOutputs(d) => {
                    let outputs: Vec<Attempt> = d.outputs.iter().map(attempt_of).collect();
                    let freed = shared.store.release_outputs(&outputs);
                    debug!(freed, "dropped held outputs no task took");
                }
                pb::coordinator_message::Kind::ReleaseCache(release) => {
                    let freed = shared.store.release_cache(release.cache_id);
                    debug!(
                        cache = release.cache_id,
                        freed, "released a cached table's blocks"
                    );
                }
                pb::coordinator_message::Kind::CopyChunk(copy) => {
                    if let Some(store) = &shared.chunks {
                        // Bounded by the coordinator, which has few copies under way.
                        let (store, shared) = (Arc::clone(store), Arc::clone(&shared));
                        let limit =
                            Duration::from_millis(drove_core::fs::copy_timeout_ms(copy.len));
                        tasks.spawn(async move {
                            let copied = tokio::time::timeout(
                                limit,
                                copy_chunk(&store, &shared.chunk_clients, &copy),
                            )
                            .await;
                            let copied = copied.unwrap_or_else(|_| {
                                Err(tonic::Status::deadline_exceeded(format!(
                                    "it took over {limit:?}"
                                )))
                            });
                            if let Err(e) = copied {
                                warn!(
                                    chunk = format!("{:016x}", copy.chunk_id),
                                    from = copy.from_addr,
                                    "copying a chunk failed: {}",
                                    e.message()
                                );
                                store.copy_failed(copy.chunk_id);
                            }
                        });
                    }
                }
                pb::coordinator_message::Kind::DropChunks(drop) => {
                    if let Some(store) = &shared.chunks {
                        for id in drop.chunk_ids {
                            store.remove(id);
                        }
                    }
                }
                pb::coordinator_message::Kind::Drained(_) => break SessionEnd::Drained,
                pb::coordinator_message::Kind::Registered(_) => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => break SessionEnd::Broken,
            Err(e) => {
                warn!("the coordinator stream failed: {}", e.message());
                break SessionEnd::Broken;
            }
        }
    };
    tasks.abort_all();
    drop(heartbeats);
    end
}

/// How long a draining worker waits for the coordinator's leave: for its tasks' blocks,
/// and, holding drove fs chunks, for them to be copied elsewhere.
#[derive(Debug, Clone, Copy)]
struct DrainTimeouts {
    tasks: Duration,
    chunks: Duration,
}

/// Copies a chunk from another worker into this one's store (a repair).
async fn copy_chunk(
    store: &Arc<chunks::ChunkStore>,
    clients: &drove_exec::dfs::ChunkClients,
    copy: &pb::CopyChunk,
) -> Result<(), tonic::Status> {
    // A node needs no grant.
    let bytes =
        drove_exec::dfs::read_chunk(clients, &copy.from_addr, copy.chunk_id, 0, 0, &[]).await?;
    let header = pb::ChunkPiece {
        chunk_id: copy.chunk_id,
        len: copy.len,
        crc32c: copy.crc32c,
        ..Default::default()
    };
    let pieces = futures::stream::iter([Ok(header)]).chain(bytes.map(|data| {
        data.map(|data| pb::ChunkPiece {
            data,
            ..Default::default()
        })
    }));
    chunks::store_stream(store, Box::pin(pieces)).await?;
    Ok(())
}

/// Checks stored chunks one after another, at most `bytes_per_s` a second, until the
/// worker stops: a corrupt replica is removed and reported, so it is copied again.
async fn scrub(store: Arc<chunks::ChunkStore>, bytes_per_s: u64, mut stop: watch::Receiver<bool>) {
    loop {
        // One pass over the chunks stored when it starts (those removed meanwhile
        // are skipped), then a pause before the next.
        for id in store.ids() {
            if !store.contains(id) {
                continue;
            }
            let s = Arc::clone(&store);
            // A corrupt chunk read up to the damage: pace as if read whole.
            let len = store.chunk_len(id);
            let scrubbed = tokio::task::spawn_blocking(move || s.scrub(id)).await;
            let bytes = scrubbed.ok().flatten().unwrap_or(len);
            let pause = Duration::from_secs_f64(bytes as f64 / bytes_per_s as f64);
            tokio::select! {
                _ = tokio::time::sleep(pause.max(Duration::from_millis(1))) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The part of the budget blocks and operators count against (see
/// [`WorkerConfig::memory_bytes`]).
fn counted_bytes(config: &WorkerConfig) -> u64 {
    config.memory_bytes - (config.memory_bytes / 8).min(64 << 20)
}

/// One task's share of the worker's operator memory: half the counted budget, divided
/// among the slots (the other half holds blocks).
fn task_pool_bytes(config: &WorkerConfig) -> u64 {
    let counted = counted_bytes(config);
    (counted - counted / 2) / u64::from(config.slots.max(1))
}

/// One task's share of the worker's operator memory (its budget's half divided by its
/// slots): a fair-spill pool of its own, so that one task's sort can never take the
/// memory another task's merge was promised, whose use also counts in the worker's
/// total.
#[derive(Debug)]
struct TaskPool {
    inner: FairSpillPool,
    worker_total: Arc<AtomicU64>,
    /// The most the task's operators have reserved at once.
    peak: AtomicU64,
}

impl TaskPool {
    fn grew(&self, additional: usize) {
        self.worker_total
            .fetch_add(additional as u64, Ordering::Relaxed);
        self.peak
            .fetch_max(self.inner.reserved() as u64, Ordering::Relaxed);
    }
}

impl std::fmt::Display for TaskPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "task pool ({})", self.inner)
    }
}

impl MemoryPool for TaskPool {
    fn name(&self) -> &str {
        "drove-task"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.inner.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.inner.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.inner.grow(reservation, additional);
        self.grew(additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.inner.shrink(reservation, shrink);
        self.worker_total
            .fetch_sub(shrink as u64, Ordering::Relaxed);
    }

    fn try_grow(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
    ) -> datafusion::error::Result<()> {
        self.inner.try_grow(reservation, additional)?;
        self.grew(additional);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.inner.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.inner.memory_limit()
    }
}

/// Runs one task attempt and returns its status report. Never panics: a panic inside
/// the task is caught and reported as the task's failure.
async fn run_task(
    worker_id: u64,
    launch: pb::LaunchTask,
    plan: Option<Arc<StagePlan>>,
    shared: Arc<Shared>,
    busy_ns: Arc<AtomicU64>,
) -> pb::TaskStatus {
    let key = launch.task.unwrap_or_default();
    let Some(plan) = plan else {
        return failed(
            key,
            pb::ErrorKind::Internal,
            format!(
                "the coordinator sent no plan for stage {} of job {}: it comes with the first of the stage's tasks on a worker",
                key.stage_id, key.job_id
            ),
        );
    };
    let span = info_span!(
        "task",
        job = key.job_id,
        stage = key.stage_id,
        partition = key.partition,
        attempt = key.attempt
    );
    let started = Instant::now();
    // The coordinator sends a few tasks more than there are slots, so that a slot starts
    // its next task as soon as one ends: they wait here, first come first served.
    let Ok(slot) = Arc::clone(&shared.slots).acquire_owned().await else {
        return failed(
            key,
            pb::ErrorKind::Internal,
            "the worker is shutting down".into(),
        );
    };
    // The slot goes with the task itself, not with its waiter: a killed task still
    // inside a long poll holds its thread, and the worker reports it busy until it ends.
    let work = Busy::new(
        execute(worker_id, key, launch, plan, Arc::clone(&shared)).instrument(span),
        busy_ns,
    );
    let handle = AbortOnDrop(shared.tasks.handle().spawn(async move {
        let _slot = slot;
        work.await
    }));
    let outcome = match handle.join().await {
        Ok(Ok(output)) => {
            shared
                .operator_spills
                .fetch_add(output.operator_spilled_bytes, Ordering::Relaxed);
            shared
                .operator_spill_count
                .fetch_add(output.operator_spill_count, Ordering::Relaxed);
            pb::task_status::Outcome::Succeeded(pb::TaskSucceeded {
                output_bytes: output.output_bytes,
                output_rows: output.output_rows,
                local_read_bytes: output.local_read_bytes,
                remote_read_bytes: output.remote_read_bytes,
                elapsed_ms: started.elapsed().as_millis() as u64,
                counters: output.counters.into_iter().collect(),
                spilled_bytes: output.spilled_bytes,
                spill_count: output.spill_count,
                memory_bytes: output.memory_bytes,
                peak_memory_bytes: output.peak_memory_bytes,
            })
        }
        Ok(Err(e)) => {
            let mut status = failed(key, net::error_kind_to_proto(e.kind()), error_message(&e));
            if let (Some(lost), Some(pb::task_status::Outcome::Failed(f))) =
                (e.lost_block(), status.outcome.as_mut())
            {
                f.fetch = Some(pb::FetchFailure {
                    stage_id: lost.stage,
                    map_partition: lost.map_partition,
                    worker_id: lost.worker,
                });
            }
            return status;
        }
        Err(join) => {
            let message = match join.try_into_panic() {
                Ok(payload) => drove_core::panic_message(payload.as_ref()),
                Err(e) => e.to_string(),
            };
            return failed(
                key,
                pb::ErrorKind::Internal,
                format!("the task panicked: {message}"),
            );
        }
    };
    pb::TaskStatus {
        task: Some(key),
        outcome: Some(outcome),
    }
}

/// How long each running attempt has worked (been polled), by attempt. Heartbeats
/// report the attempts whose time advanced: a task that is stuck (waiting on nothing
/// that will come) does not advance, and the coordinator retries it elsewhere.
#[derive(Clone, Default)]
struct BusyClocks(Arc<std::sync::Mutex<HashMap<Attempt, Arc<AtomicU64>>>>);

impl BusyClocks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Attempt, Arc<AtomicU64>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The attempt's clock, made at its launch.
    fn start(&self, attempt: Attempt) -> Arc<AtomicU64> {
        Arc::clone(self.lock().entry(attempt).or_default())
    }

    fn retain(&self, keep: impl Fn(&Attempt) -> bool) {
        self.lock().retain(|attempt, _| keep(attempt));
    }

    /// The attempts whose clock moved since `reported`, which it updates, and those
    /// still waiting for a slot (clock at zero): an attempt queued behind a running
    /// one is not stuck, and the running one is judged on its own clock.
    fn advanced(&self, reported: &mut HashMap<Attempt, u64>) -> Vec<pb::TaskKey> {
        let clocks = self.lock();
        reported.retain(|attempt, _| clocks.contains_key(attempt));
        let mut moved = Vec::new();
        for (&(job_id, stage_id, partition, attempt), clock) in clocks.iter() {
            let now = clock.load(Ordering::Relaxed);
            let before = reported.insert((job_id, stage_id, partition, attempt), now);
            if now == 0 || before.is_none_or(|b| b != now) {
                moved.push(pb::TaskKey {
                    job_id,
                    stage_id,
                    partition,
                    attempt,
                });
            }
        }
        moved
    }
}

/// A future that adds the time spent in its polls, its work, to a clock.
struct Busy<F> {
    inner: std::pin::Pin<Box<F>>,
    busy_ns: Arc<AtomicU64>,
}

impl<F: std::future::Future> Busy<F> {
    fn new(inner: F, busy_ns: Arc<AtomicU64>) -> Self {
        Self {
            inner: Box::pin(inner),
            busy_ns,
        }
    }
}

impl<F: std::future::Future> std::future::Future for Busy<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let started = Instant::now();
        let poll = self.inner.as_mut().poll(cx);
        let spent = started.elapsed().as_nanos().max(1) as u64;
        self.busy_ns.fetch_add(spent, Ordering::Relaxed);
        poll
    }
}

/// A spawned task that is aborted when its handle is dropped: a task attempt stops when
/// whoever waits for it stops waiting.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn error_message(e: &drove_exec::Error) -> String {
    match e {
        drove_exec::Error::DataFusion(df) => df.strip_backtrace(),
        other => other.to_string(),
    }
}

/// The longest error message a task reports: a message may quote a value of any size,
/// and a heartbeat carries a batch of them.
const ERROR_MESSAGE_MAX_BYTES: usize = 16 << 10;

fn failed(key: pb::TaskKey, kind: pb::ErrorKind, message: String) -> pb::TaskStatus {
    let message = drove_core::truncate_text(message, ERROR_MESSAGE_MAX_BYTES);
    warn!(job = key.job_id, stage = key.stage_id, partition = key.partition, attempt = key.attempt, %message, "task failed");
    pb::TaskStatus {
        task: Some(key),
        outcome: Some(pb::task_status::Outcome::Failed(pb::TaskFailed {
            message,
            kind: kind as i32,
            fetch: None,
        })),
    }
}

/// A launch's outputs of a stage it reads, as its readers look them up: by partition,
/// in order, those of no rows left out. A launch that lists them otherwise is refused.
fn stage_outputs(input: pb::StageInput) -> drove_exec::Result<(u32, StageOutputs)> {
    let outputs: Vec<MapOutputRef> = input
        .outputs
        .into_iter()
        .map(|o| MapOutputRef {
            job: o.job_id,
            stage: o.stage_id,
            partition: o.partition,
            attempt: o.attempt,
            worker_id: o.worker_id,
            flight_addr: o.flight_addr,
        })
        .collect();
    let partitions = match input.partitions {
        0 => outputs.len() as u32,
        n => n,
    };
    let ordered = outputs.windows(2).all(|w| w[0].partition < w[1].partition)
        && outputs.last().is_none_or(|o| o.partition < partitions);
    if !ordered {
        return Err(drove_exec::Error::Internal(format!(
            "the launch lists stage {}'s outputs out of order or beyond its {partitions} partitions",
            input.stage_id
        )));
    }
    Ok((
        input.stage_id,
        StageOutputs {
            partitions,
            outputs,
        },
    ))
}

async fn execute(
    worker_id: u64,
    key: pb::TaskKey,
    mut launch: pb::LaunchTask,
    plan: Arc<StagePlan>,
    shared: Arc<Shared>,
) -> drove_exec::Result<task::TaskOutput> {
    if !shared.task_delay.is_zero() {
        tokio::time::sleep(shared.task_delay).await;
    }
    let inputs = std::mem::take(&mut launch.inputs)
        .into_iter()
        .map(stage_outputs)
        .collect::<drove_exec::Result<HashMap<_, _>>>()?;
    let env = ShuffleEnv {
        job: key.job_id,
        local_worker: worker_id,
        store: Arc::clone(&shared.store),
        flight: Arc::clone(&shared.flight),
        inputs,
        reads: key.partition..launch.reads_to.max(key.partition.saturating_add(1)),
        local_read_bytes: AtomicU64::new(0),
        remote_read_bytes: Arc::new(AtomicU64::new(0)),
        counters: Default::default(),
    };
    let session = shared.session(&launch.settings)?;
    let mut config = (session.config)
        .with_extension(Arc::new(env))
        .with_extension(Arc::clone(&shared.fs_writer));
    let execution = &mut config.options_mut().execution;
    execution.sort_spill_reservation_bytes = shared.sort_spill_reservation;
    // Merges hold a batch or two of every input, unspillable: with a small share of
    // memory, smaller batches keep them within it.
    let batch_rows = (shared.task_pool_bytes >> 12).clamp(1024, 8192);
    if execution.batch_size.get() > batch_rows {
        execution.batch_size = datafusion::config::ConfigNonZeroUsize::try_new(batch_rows)?;
    }
    execution.spill_compression = shared.spill_codec.datafusion();
    let task_id = format!(
        "job{}-stage{}-part{}-attempt{}",
        key.job_id, key.stage_id, key.partition, key.attempt
    );
    let pool = Arc::new(TaskPool {
        inner: FairSpillPool::new(shared.task_pool_bytes),
        worker_total: Arc::clone(&shared.execution_reserved),
        peak: AtomicU64::new(0),
    });
    let runtime = RuntimeEnvBuilder::from_runtime_env(shared.state.runtime_env())
        .with_memory_pool(Arc::clone(&pool) as Arc<dyn MemoryPool>)
        .build_arc()?;
    let mut ctx = TaskContext::from(&shared.state)
        .with_session_config(config)
        .with_runtime(runtime)
        .with_task_id(task_id);
    for function in session.functions.iter() {
        ctx.register_udf(Arc::clone(function))?;
    }
    let ctx = Arc::new(ctx);
    let plan = plan.instance(&ctx).await?;
    let output = match launch.output() {
        pb::OutputMode::Single => OutputMode::Single,
        pb::OutputMode::RepartitionRoot => OutputMode::RepartitionRoot,
    };
    let key = task::TaskKey {
        job: key.job_id,
        stage: key.stage_id,
        partition: key.partition,
        attempt: key.attempt,
    };
    let mut output = task::run(key, plan, output, ctx, &shared.store).await?;
    output.peak_memory_bytes = pool.peak.load(Ordering::Relaxed);
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_of_an_earlier_term_of_the_same_cluster_is_refused() {
        let held = Held {
            cluster_id: 7,
            term: 5,
            outputs: Vec::new(),
            chunks: None,
        };
        let why = deposed(&held, 7, 4).expect("term 4 is older than 5");
        assert!(why.contains("term 4") && why.contains("term 5"), "{why}");
        assert!(deposed(&held, 7, 5).is_none(), "the same term");
        assert!(deposed(&held, 7, 6).is_none(), "a later term");
        // Another cluster's terms do not compare, and a single coordinator's is 0.
        assert!(deposed(&held, 8, 1).is_none());
        let fresh = Held {
            cluster_id: 0,
            term: 0,
            outputs: Vec::new(),
            chunks: None,
        };
        assert!(deposed(&fresh, 7, 0).is_none());
    }

    fn output(partition: u32) -> pb::MapOutput {
        pb::MapOutput {
            partition,
            worker_id: 1,
            flight_addr: "127.0.0.1:1".into(),
            job_id: 2,
            ..Default::default()
        }
    }

    /// A launch lists a stage's outputs with rows, in order, within its partitions;
    /// one that does otherwise is refused, naming the stage.
    #[test]
    fn a_launch_lists_outputs_in_order_within_the_stage() {
        let input = |outputs: Vec<pb::MapOutput>, partitions: u32| pb::StageInput {
            stage_id: 4,
            outputs,
            partitions,
        };
        let (stage, read) = stage_outputs(input(vec![output(0), output(7)], 9)).unwrap();
        assert_eq!(stage, 4);
        assert_eq!(read.partitions, 9);
        let listed: Vec<u32> = read.outputs.iter().map(|o| o.partition).collect();
        assert_eq!(listed, [0, 7]);
        // No count: as many partitions as outputs.
        let (_, read) = stage_outputs(input(vec![output(0), output(1)], 0)).unwrap();
        assert_eq!(read.partitions, 2);
        for bad in [
            input(vec![output(3), output(1)], 9),
            input(vec![output(1), output(1)], 9),
            input(vec![output(9)], 9),
        ] {
            let err = stage_outputs(bad).unwrap_err().to_string();
            assert!(err.contains("stage 4's outputs"), "{err}");
        }
    }
}
