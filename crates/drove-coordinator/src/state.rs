//! The coordinator's runtime: it owns the scheduler and the metadata log, turns what
//! workers and clients say into scheduler events, and performs the commands the
//! scheduler answers with.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::arrow::datatypes::SchemaRef;
use drove_core::access::{Identity, Role, TokenMeta, check_tenant};
use drove_core::catalog::{CachedStage, Catalog, CatalogCommand, table_part};
use drove_core::meta::{Applied, JobEnd, MetaCommand, MetaLog, TableMeta};
use drove_core::scheduler::{
    Command, ErrorKind, Event, FetchFailure, HeldOutput, JobSpec, Output, Run, Scheduler,
    SchedulerConfig, StageSpec, TaskError, TaskState, TaskStats, TaskTotals,
};
use drove_core::{AttemptId, JobId, StageId, TaskId, WorkerId};
use drove_exec::cache::CachedTable;
use drove_exec::planner::{OutputMode, Stage};
use drove_exec::tables::TableSpec;
use drove_exec::token::{Granted, Presented};
use drove_proto as pb;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, info_span, warn};

use crate::auth::{self, ADMIN_TENANT, Credential};
use crate::durable::{self, MetaStore};
use crate::history::{History, Reading};
use crate::metrics::{Metrics, Snapshot};
use crate::planning::{self, JobOptions, PlannedJob, Query};
use crate::replica::{RaftStatus, Replica, WriteError};
use crate::rest::{Attempt, AttemptOutcome, ClusterSample, JobState, WorkerTask};
use crate::{CoordinatorConfig, Error, Result};

mod fs;

/// What a worker says about itself when it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Where its Flight service listens.
    pub flight_addr: String,
    pub slots: u32,
    /// The operator memory each of its tasks gets.
    pub task_memory: u64,
    /// Its lasting identity (kept in its data directory); empty without one.
    pub node_id: String,
    /// Task outputs it kept from its last session, and the cluster whose jobs wrote
    /// them.
    pub held_cluster_id: u64,
    pub held: Vec<HeldOutput>,
    /// Its `--zone` label.
    pub zone: String,
    /// The drove fs chunks it holds, if it stores chunks (it has a data directory).
    pub chunks: Option<Vec<u64>>,
}

/// The longest Flight address or node id a worker may claim, in bytes.
const WORKER_NAME_MAX_BYTES: usize = 256;

impl Registration {
    /// Refuses claims beyond what any real worker makes: they would cost the
    /// coordinator memory or time in proportion to a number the worker chose.
    fn check(&self) -> std::result::Result<(), String> {
        let slots_max = drove_core::scheduler::WORKER_SLOTS_MAX;
        if self.slots == 0 || self.slots > slots_max {
            return Err(format!(
                "a worker claimed {} slots; a worker has 1 to {slots_max} (--slots)",
                self.slots
            ));
        }
        let held_max = drove_core::scheduler::HELD_OUTPUTS_MAX;
        if self.held.len() > held_max {
            return Err(format!(
                "a worker reported {} kept task outputs; at most {held_max} are taken",
                self.held.len()
            ));
        }
        if self.flight_addr.len() > WORKER_NAME_MAX_BYTES
            || self.node_id.len() > WORKER_NAME_MAX_BYTES
            || self.zone.len() > WORKER_NAME_MAX_BYTES
        {
            return Err(format!(
                "a worker's Flight address, node id and zone may have at most {WORKER_NAME_MAX_BYTES} bytes"
            ));
        }
        Ok(())
    }
}

/// Messages to one worker's stream.
pub type WorkerTx = mpsc::Sender<Result<pb::CoordinatorMessage, tonic::Status>>;

/// A handle to the coordinator's state; cheap to clone.
///
/// One thread owns the state ([`State`]) and does what requests and events ask of it,
/// one at a time, in the order they arrive through a bounded queue: nothing else can
/// see the state half changed, and its work stays off the async runtime that answers
/// workers and clients. A full queue makes senders wait.
#[derive(Clone)]
pub struct Coordinator {
    pub(crate) config: Arc<CoordinatorConfig>,
    work: mpsc::Sender<Work>,
    /// Known once the metadata is: at start, or when a replicated coordinator first
    /// leads.
    cluster_id: Arc<AtomicU64>,
    /// The Raft term in which a replicated coordinator's state leads; 0 while it does
    /// not.
    led_term: Arc<AtomicU64>,
    /// A replicated coordinator's Raft.
    replica: Option<Arc<Replica>>,
}

/// Something for the state's owner to do.
type Work = Box<dyn FnOnce(&mut State) + Send>;

/// Requests and events waiting for the coordinator's state, at most.
pub const STATE_QUEUE_MAX: usize = 1024;

struct WorkerConn {
    flight_addr: String,
    /// Its lasting identity; empty for a worker without a data directory.
    node_id: String,
    slots: u32,
    tx: WorkerTx,
    last_heartbeat: Instant,
    memory: pb::MemoryStats,
    /// The operator memory each of its tasks gets, as it registered (0: not told).
    task_memory: u64,
    /// The stages whose plan this worker was sent, with the first of their tasks it got;
    /// it keeps them until their job's blocks are released.
    plans: HashSet<(JobId, StageId)>,
    /// The last [`WORKER_TASKS_KEPT`] tasks it completed, oldest first.
    recent_tasks: VecDeque<WorkerTask>,
    zone: String,
    /// It stores drove fs chunks: their bytes, and its --data-max (0: none).
    stores_chunks: bool,
    chunk_bytes: u64,
    chunk_capacity_bytes: u64,
}

/// How many of its completed tasks a worker's page lists.
pub const WORKER_TASKS_KEPT: usize = 1_000;

struct JobRecord {
    name: String,
    /// The tenant that submitted it.
    tenant: String,
    sql: String,
    submitted_unix_ms: u64,
    planned: PlannedJob,
    started: Instant,
    ended: Option<Instant>,
    state: pb::JobState,
    error: String,
    /// Whether the job is still running, sent on every change: watchers wake on it,
    /// and read it without asking the state.
    changed: watch::Sender<bool>,
    /// Frozen once the job ends and the scheduler may forget it.
    final_status: Option<pb::JobStatus>,
    /// Frozen with `final_status`: every attempt, for the timeline, and the status
    /// without per-task runs, for lists.
    final_attempts: Option<Vec<Attempt>>,
    final_summary: Option<pb::JobStatus>,
    released: bool,
    /// The table this job caches (CACHE TABLE name AS ...): its result stays on the
    /// workers instead of going to the client.
    caches_as: Option<(String, u64)>,
    lease: Lease,
    /// Why the job is being cancelled, for its status.
    cancel_reason: Option<String>,
    /// Where its attempts that scan drove fs files ran.
    locality: pb::TaskLocality,
}

impl JobRecord {
    /// A job starting to run.
    fn new(
        name: String,
        tenant: String,
        sql: String,
        submitted_unix_ms: u64,
        planned: PlannedJob,
        caches_as: Option<(String, u64)>,
        detached: bool,
    ) -> Self {
        JobRecord {
            name,
            tenant,
            sql,
            submitted_unix_ms,
            planned,
            started: Instant::now(),
            ended: None,
            state: pb::JobState::Running,
            error: String::new(),
            changed: watch::channel(true).0,
            final_status: None,
            final_attempts: None,
            final_summary: None,
            released: false,
            caches_as,
            lease: Lease {
                detached,
                watchers: 0,
                unwatched_since: Instant::now(),
            },
            cancel_reason: None,
            locality: Default::default(),
        }
    }

    /// A job that ended before the coordinator restarted, from the status its end kept.
    fn ended(status: pb::JobStatus) -> Self {
        let now = Instant::now();
        let elapsed = std::time::Duration::from_millis(status.elapsed_ms);
        let summary = pb::JobStatus {
            sql: String::new(),
            physical_plan: String::new(),
            stages: (status.stages.iter())
                .map(|s| pb::StageStatus {
                    plan: String::new(),
                    ..s.clone()
                })
                .collect(),
            ..status.clone()
        };
        let fresh = JobRecord::new(
            status.name.clone(),
            status.tenant.clone(),
            status.sql.clone(),
            status.submitted_unix_ms,
            PlannedJob::default(),
            None,
            true,
        );
        JobRecord {
            started: now.checked_sub(elapsed).unwrap_or(now),
            ended: Some(now),
            state: status.state(),
            error: status.error.clone(),
            changed: watch::channel(false).0,
            final_summary: Some(summary),
            released: true,
            final_status: Some(status),
            ..fresh
        }
    }
}

/// What keeps a running job alive: a client watching it. One that nobody has watched
/// for the coordinator's client lease is cancelled, unless it was submitted detached.
struct Lease {
    detached: bool,
    watchers: usize,
    /// Since when nobody watches (from submission until the first watcher).
    unwatched_since: Instant,
}

/// What a cached table carries besides its partitions: its schema, and the stages
/// that computed it.
#[derive(Clone)]
struct CacheMeta {
    schema: SchemaRef,
    lineage: Vec<Stage>,
    /// The tenant whose job cached it.
    tenant: String,
    /// The memory its blocks held when it was cached.
    bytes: u64,
}

/// Where the metadata's commands go before they are applied.
enum Journal {
    /// Nowhere: the metadata lives in memory only.
    Memory,
    /// The data directory (`--data-dir`).
    Disk(MetaStore),
    /// The replicated log (`--peers`): a command is applied once a quorum of
    /// coordinators holds it.
    Raft {
        replica: Arc<Replica>,
        runtime: tokio::runtime::Handle,
    },
}

impl Journal {
    /// Whether what it holds outlives the process.
    fn durable(&self) -> bool {
        !matches!(self, Journal::Memory)
    }

    /// The log's last entry (with Raft, the last applied), the last one a snapshot
    /// holds, and Raft's view when replicated; read once per status or scrape.
    fn status(&self) -> (u64, u64, Option<RaftStatus>) {
        match self {
            Journal::Memory => (0, 0, None),
            Journal::Disk(store) => (store.last_index(), store.snapshot_index(), None),
            Journal::Raft { replica, .. } => {
                let raft = replica.status();
                (raft.applied_index, raft.snapshot_index, Some(raft))
            }
        }
    }
}

/// The coordinator's state, owned by one thread (see [`Coordinator`]).
struct State {
    config: Arc<CoordinatorConfig>,
    scheduler: Scheduler,
    meta: MetaLog,
    journal: Journal,
    /// Whether this coordinator schedules: always, but for a replicated one that does
    /// not lead.
    leading: bool,
    /// Set when a replicated coordinator fails to commit a command: it steps down once
    /// the work at hand is done. With why, for the request that wanted the change.
    deposed: Option<WriteError>,
    cluster_id: Arc<AtomicU64>,
    led_term: Arc<AtomicU64>,
    workers: BTreeMap<WorkerId, WorkerConn>,
    jobs: HashMap<JobId, JobRecord>,
    /// The scheduler's clock counts milliseconds from here.
    epoch: Instant,
    metrics: Metrics,
    /// The last minutes of the cluster's load, sampled as the clock ticks.
    history: History,
    /// Cached tables, and the names claimed by jobs caching them.
    catalog: Catalog<CacheMeta>,
    /// drove fs: where chunks' replicas are, and the writes under way.
    fs: fs::FsRuntime,
}

/// A cached table as its `TableCached` entry kept it: the stage that writes it, its
/// partitions, and its schema and lineage.
fn restored_table(table: &TableMeta) -> Result<(StageId, u32, CacheMeta)> {
    let (schema, stages) = durable::decode_cached_table(&table.lineage)
        .ok_or_else(|| Error::Internal("its lineage cannot be read".into()))?;
    let schema = drove_exec::shuffle::schema_from_bytes(&schema)?;
    let writer = stages
        .iter()
        .find(|s| s.cache == Some(table.cache_id))
        .ok_or_else(|| Error::Internal("no stage of its lineage writes it".into()))?;
    let (stage, partitions) = (StageId(writer.id), writer.tasks);
    let lineage = stages
        .into_iter()
        .map(|s| {
            Ok(Stage {
                id: s.id,
                plan: planning::decode_stage_plan(&s.plan)?,
                output: s.output,
                tasks: s.tasks as usize,
                depends_on: s.depends_on,
                cache: s.cache,
                origin: s.origin,
                local_input: s.local_input,
                coalesce: s.coalesce,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let tenant = table.tenant.clone();
    Ok((
        stage,
        partitions,
        CacheMeta {
            schema,
            lineage,
            tenant,
            bytes: table.bytes,
        },
    ))
}

/// Room in a log entry for what it holds besides a job's plans.
const ENTRY_HEADROOM: usize = 1 << 20;

/// The exit code of a coordinator that found its own state broken (EX_SOFTWARE).
pub const FATAL_EXIT_CODE: i32 = 70;

/// A hidden switch for the test that breaks an invariant on purpose: set to
/// `phantom-attempt`, the coordinator corrupts its scheduler's state at the next job
/// submission, and the scheduler's own check finds it.
const INJECT_FAULT_ENV: &str = "DROVE_INJECT_FAULT";

/// Ends the process. Work on the coordinator's state panicked: the state broke an
/// invariant, or its code has a bug. Either way it may be wrong or half changed, and
/// acting on it could lose or corrupt work; a process that listens but does nothing
/// helps nobody. A supervisor restarts it.
fn fatal(what: &str) -> ! {
    tracing::error!("fatal: {what}");
    eprintln!("drove coordinator: fatal: {what}; exiting (code {FATAL_EXIT_CODE})");
    std::process::exit(FATAL_EXIT_CODE)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn scheduler_config(config: &CoordinatorConfig) -> SchedulerConfig {
    SchedulerConfig {
        task_attempt_max: config.task_attempt_max,
        heartbeat_timeout_ms: config.heartbeat_timeout_ms,
        no_worker_grace_ms: config.no_worker_grace_ms,
        speculation: config.speculation.clone(),
        task_progress_timeout_ms: config.task_progress_timeout_ms,
        queued_per_slot: config.task_queue_per_slot,
        locality_wait_ms: config.locality_wait_ms,
        tenants: config.tenants.clone(),
        coalesce: config.coalesce,
        ..Default::default()
    }
}

impl Coordinator {
    /// Starts the thread that owns the state; it ends when the last handle is dropped.
    pub fn new(config: CoordinatorConfig) -> Result<Self> {
        let (meta, journal) = match &config.data_dir {
            None => (MetaLog::new(config.job_history_max), Journal::Memory),
            Some(dir) => {
                let recovered = MetaStore::open(dir, config.job_history_max)
                    .map_err(|e| Error::User(e.to_string()))?;
                info!(
                    dir = %dir.display(),
                    jobs = recovered.state.jobs().count(),
                    replayed = recovered.replayed,
                    torn_bytes = recovered.torn_bytes,
                    "metadata recovered"
                );
                (
                    MetaLog::from_state(recovered.state),
                    Journal::Disk(recovered.store),
                )
            }
        };
        Self::start(config, journal, Some(meta))
    }

    /// A replicated coordinator: it schedules only while it leads, as
    /// [`crate::replica::follow`] tells it. Call from within the async runtime.
    pub fn replicated(config: CoordinatorConfig, replica: Arc<Replica>) -> Result<Self> {
        let journal = Journal::Raft {
            replica: replica.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let mut coordinator = Self::start(config, journal, None)?;
        coordinator.replica = Some(replica);
        Ok(coordinator)
    }

    /// Starts the state's owner; with `meta`, leading from the start.
    fn start(config: CoordinatorConfig, journal: Journal, meta: Option<MetaLog>) -> Result<Self> {
        let config = Arc::new(config);
        let cluster_id = Arc::new(AtomicU64::new(0));
        let led_term = Arc::new(AtomicU64::new(0));
        let mut state = State {
            config: config.clone(),
            scheduler: Scheduler::new(scheduler_config(&config)),
            meta: MetaLog::new(config.job_history_max),
            journal,
            leading: false,
            deposed: None,
            cluster_id: cluster_id.clone(),
            led_term: led_term.clone(),
            workers: BTreeMap::new(),
            jobs: HashMap::new(),
            epoch: Instant::now(),
            metrics: Metrics::new(),
            history: History::default(),
            catalog: Catalog::default(),
            fs: fs::FsRuntime::default(),
        };
        if let Some(meta) = meta {
            state.take_lead(meta, 0);
        }
        let (work, mut queue) = mpsc::channel::<Work>(STATE_QUEUE_MAX);
        std::thread::Builder::new()
            .name("drove-coordinator-state".into())
            .spawn(move || {
                while let Some(work) = queue.blocking_recv() {
                    let since = Instant::now();
                    // A panic may have left the state half changed; a scheduler's
                    // broken invariant ends up here too.
                    if let Err(panic) =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut state)))
                    {
                        fatal(&drove_core::panic_message(panic.as_ref()));
                    }
                    if state.deposed.is_some() {
                        state.step_down();
                    }
                    state.metrics.state_held(since.elapsed());
                }
            })
            .map_err(|e| {
                Error::Internal(format!("cannot start the coordinator's state thread: {e}"))
            })?;
        Ok(Self {
            config,
            work,
            cluster_id,
            led_term,
            replica: None,
        })
    }

    /// Starts scheduling from `meta`, the metadata as committed: a replicated
    /// coordinator elected leader in `term`.
    pub async fn take_lead(&self, meta: drove_core::meta::MetaImage, term: u64) {
        self.ask(move |state| {
            let history_max = state.config.job_history_max;
            let meta =
                MetaLog::from_state(drove_core::meta::MetaState::from_image(meta, history_max));
            state.take_lead(meta, term)
        })
        .await
    }

    /// The Raft term in which this replicated coordinator schedules; 0 while it does
    /// not.
    pub fn led_term(&self) -> u64 {
        self.led_term.load(Ordering::Relaxed)
    }

    /// Stops scheduling: another coordinator leads.
    pub async fn step_down(&self) {
        self.ask(State::step_down).await
    }

    /// The cluster's identity: kept in the data directory, new at each start without
    /// one. Clients check it to know a restarted coordinator still knows their jobs.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Has the state's owner run `f` and returns its answer.
    async fn ask<R: Send + 'static>(&self, f: impl FnOnce(&mut State) -> R + Send + 'static) -> R {
        let (answer, answered) = oneshot::channel();
        let work: Work = Box::new(move |state| {
            let _ = answer.send(f(state));
        });
        if self.work.send(work).await.is_ok()
            && let Ok(answer) = answered.await
        {
            return answer;
        }
        // The owner stops only with the last handle, or when it ends the process
        // (`fatal`); this handle is alive, so the process is exiting.
        std::future::pending().await
    }

    /// Has the state's owner run `f`, waiting only for room in its queue.
    async fn tell(&self, f: impl FnOnce(&mut State) + Send + 'static) {
        let _ = self.work.send(Box::new(f)).await;
    }

    /// [`Self::tell`] from where nothing can wait (a `Drop`): if the queue is full, a
    /// task waits for room instead.
    fn tell_later(&self, f: impl FnOnce(&mut State) + Send + 'static) {
        let work: Work = Box::new(f);
        match self.work.try_send(work) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(work)) => {
                let queue = self.work.clone();
                match tokio::runtime::Handle::try_current() {
                    Ok(runtime) => {
                        runtime.spawn(async move {
                            let _ = queue.send(work).await;
                        });
                    }
                    Err(_) => warn!(
                        "the coordinator's queue is full and no runtime can wait for room; a change is lost"
                    ),
                }
            }
        }
    }

    /// Registers a worker and returns its new id. Its stream gets a `Registered` first.
    pub async fn register_worker(&self, worker: Registration, tx: WorkerTx) -> Result<WorkerId> {
        worker.check().map_err(Error::User)?;
        self.ask(move |state| state.register_worker(worker, tx))
            .await
    }

    /// A heartbeat with a batch of task reports.
    pub async fn heartbeat(&self, worker: WorkerId, heartbeat: pb::Heartbeat) {
        self.tell(move |state| state.heartbeat(worker, heartbeat))
            .await;
    }

    /// Requests and events waiting for the state now.
    pub fn queued(&self) -> usize {
        STATE_QUEUE_MAX - self.work.capacity()
    }

    /// `/metrics`: the counters, and gauges read from the state now. Costs time in
    /// proportion to the workers and running stages, not to the jobs' tasks.
    /// Tenants' series are those `who` sees.
    pub async fn metrics_text(&self, who: &Identity) -> String {
        let queued = self.queued();
        let who = who.clone();
        self.ask(move |state| state.metrics_text(queued, &who))
            .await
    }

    /// The recent jobs `who` sees, without their per-task runs, newest first.
    pub async fn jobs(&self, who: &Identity) -> Vec<pb::JobStatus> {
        let who = who.clone();
        self.ask(move |state| state.recent_jobs(&who, false)).await
    }

    /// A replicated coordinator answers gRPC clients only as a leader that a quorum
    /// confirms at the time of the request (Raft's read index): one deposed that has
    /// not noticed yet sends the client on, instead of answering from a state that may
    /// be stale (a job another leader ended, a token another revoked).
    /// The state must lead in the confirmed term too: it takes and gives up the lead
    /// a moment after Raft does.
    pub async fn confirm_lead(&self) -> Result<()> {
        match &self.replica {
            Some(replica) if replica.confirm_lead().await != Some(self.led_term()) => {
                Err(Error::NotLeader {
                    leader: replica.leader_hint(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Who sent a request, from what it carried. Without TLS the cluster is open:
    /// everyone is [`Identity::open`]. A certificate says who it is by itself; a
    /// token is looked up in the metadata, which a replicated coordinator knows only
    /// while it leads (a follower sends the client on).
    pub async fn identify(&self, credential: Credential) -> Result<Identity> {
        let Some(tls) = &self.config.tls else {
            return Ok(Identity::open());
        };
        let identified = match credential {
            Credential::Token(text) => {
                let admin = tls.admin_token().cloned();
                self.ask(move |state| {
                    state.lead()?;
                    state.identify_token(&text, admin.as_ref())
                })
                .await
            }
            other => other.certificate_identity(),
        };
        if let Err(e @ Error::Unauthenticated(_)) = &identified {
            auth::refused_credential(e);
        }
        identified
    }

    /// Makes a client token for `tenant` with `role` (admins only); returns its text,
    /// shown once, and its id.
    pub async fn create_token(
        &self,
        who: &Identity,
        tenant: String,
        role: Role,
    ) -> Result<(String, String)> {
        let (text, presented) = drove_exec::token::generate().map_err(Error::Internal)?;
        let id = presented.id.clone();
        let target = format!("token {id} for tenant {tenant} ({role})");
        let asker = who.clone();
        let made = self
            .ask(move |state| {
                state.lead()?;
                asker.may_administer()?;
                check_tenant(&tenant).map_err(Error::User)?;
                let meta = state.meta.state();
                if meta.token_id_used(&presented.id) {
                    return Err(Error::Internal(
                        "a new token's id is taken; try again".into(),
                    ));
                }
                if meta.token_ids_used() >= drove_core::meta::TOKEN_IDS_MAX {
                    return Err(Error::User(format!(
                        "the cluster has made {} tokens (live and revoked), the most it keeps track of",
                        meta.token_ids_used()
                    )));
                }
                let token = TokenMeta {
                    tenant,
                    role,
                    digest: presented.digest,
                    created_ms: now_ms(),
                };
                let id = presented.id;
                state
                    .record(MetaCommand::TokenCreated { id, token })
                    .ok_or_else(|| state.not_written())?;
                Ok(())
            })
            .await;
        auth::audit(who, "token.create", &target, &made);
        made.map(|()| (text, id))
    }

    /// Revokes a token (admins only), on every coordinator: the revocation is in the
    /// replicated metadata.
    pub async fn revoke_token(&self, who: &Identity, id: String) -> Result<()> {
        let target = format!("token {id}");
        let asker = who.clone();
        let admin = self
            .config
            .tls
            .as_ref()
            .and_then(|t| t.admin_token().map(|a| a.id.clone()));
        let revoked = self
            .ask(move |state| {
                state.lead()?;
                asker.may_administer()?;
                drove_exec::token::check_id(&id).map_err(Error::User)?;
                let meta = state.meta.state();
                let live = meta.tokens().any(|(t, _)| t == id)
                    || (admin.as_deref() == Some(id.as_str()) && !meta.revoked(&id));
                if !live {
                    return Err(Error::NotFound(format!(
                        "no live token has id {id}; `drove token list` shows them"
                    )));
                }
                state
                    .record(MetaCommand::TokenRevoked { id })
                    .ok_or_else(|| state.not_written())?;
                Ok(())
            })
            .await;
        auth::audit(who, "token.revoke", &target, &revoked);
        revoked
    }

    /// The live tokens (admins only): id, tenant, role and when each was made.
    pub async fn tokens(&self, who: &Identity) -> Result<Vec<(String, TokenMeta)>> {
        let who = who.clone();
        self.ask(move |state| {
            state.lead()?;
            who.may_administer()?;
            Ok(state
                .meta
                .state()
                .tokens()
                .map(|(id, t)| (id.to_string(), t.clone()))
                .collect())
        })
        .await
    }

    /// The worker's stream ended, or it went silent. `clean`: it closed its session
    /// itself, which is a normal departure rather than a fault.
    pub async fn worker_lost(&self, worker: WorkerId, why: String, clean: bool) {
        self.tell(move |state| state.worker_lost(worker, &why, clean))
            .await;
    }

    /// The worker asked to leave: it gets no new tasks and is told when it may go.
    pub async fn drain(&self, worker: WorkerId) {
        self.tell(move |state| state.handle(Event::WorkerDraining { worker }))
            .await;
    }

    /// Plans and submits a job; returns its id once it is queued. With `cache_as`, the
    /// job's result becomes the cached table of that name.
    pub async fn submit(
        &self,
        who: &Identity,
        name: String,
        query: Query,
        tables: Vec<TableSpec>,
        cache_as: Option<String>,
        options: JobOptions,
    ) -> Result<JobId> {
        let sql = match &query {
            Query::Sql(sql) => sql.clone(),
            _ => String::new(),
        };
        // Table names fold to lower case, as DataFusion folds unquoted names; each
        // tenant's names are its own.
        let cache_as = cache_as.map(|name| cache_key(&who.tenant, &name.to_ascii_lowercase()));
        let coordinator = self.clone();
        let target = if name.is_empty() {
            "a job".to_string()
        } else {
            format!("job '{name}'")
        };
        // A submission sent again (its client lost the coordinator mid-call, so could
        // not tell whether the first reached the log) gets the job the first made.
        if options.request != 0 {
            let (tenant, request) = (who.tenant.clone(), options.request);
            let earlier = self
                .ask(move |state| {
                    state.lead()?;
                    Ok::<_, Error>(state.meta.state().submitted(&tenant, request))
                })
                .await?;
            if let Some(job) = earlier {
                let outcome = Ok::<_, Error>(job);
                auth::audit(who, "submit again", &format!("{job} ({target})"), &outcome);
                return outcome;
            }
        }
        let asker = who.clone();
        // The claim frees the name on every way out but a submitted job, including
        // this future being dropped (the client went away) while it plans or waits.
        let claimed = self
            .ask(move |state| {
                state.lead()?;
                asker.may_submit()?;
                if cache_as.is_some() {
                    state.check_cache_quota(&asker.tenant)?;
                }
                let cache_id = match &cache_as {
                    Some(table) => Some(
                        state
                            .catalog
                            .claim(table)
                            .map_err(|e| Error::User(e.to_string()))?,
                    ),
                    None => None,
                };
                let claim = ClaimedName {
                    coordinator,
                    name: cache_as,
                };
                Ok::<_, Error>((
                    state.caches_for_planning(&asker),
                    claim,
                    cache_id,
                    state.scheduler.total_slots() as usize,
                    state.task_memory(),
                ))
            })
            .await;
        if claimed.is_err() {
            auth::audit(who, "submit", &target, &claimed);
        }
        let (caches, claim, cache_id, total_slots, task_memory) = claimed?;
        let target_partitions = self
            .config
            .target_partitions
            .unwrap_or(total_slots)
            .clamp(1, self.config.job_limits.stage_partitions_max);
        let planned = planning::plan_isolated(
            query,
            tables,
            caches,
            cache_id,
            target_partitions,
            task_memory,
            planning::JobRules {
                limits: self.config.job_limits,
                allowed_paths: (self.config.tenant_paths.get(&who.tenant))
                    .or(self.config.allowed_paths.as_ref())
                    .cloned(),
                who: who.clone(),
                fs: drove_exec::stores::DroveFs::new(
                    Arc::new(fs::PlanningNamespace {
                        coordinator: self.clone(),
                        who: who.clone(),
                    }),
                    // Its connections are made on the planning thread, and end with it.
                    drove_exec::dfs::ChunkReader::new(
                        Arc::new(drove_exec::dfs::ChunkClients::new(self.config.tls.clone())),
                        None,
                    ),
                ),
            },
        )
        .await?;
        let submission = Submission {
            name,
            tenant: who.tenant.clone(),
            sql,
            planned,
            claim,
            cache_id,
            options,
        };
        let submitted = self.ask(move |state| state.submit(submission)).await;
        let target = match &submitted {
            Ok(job) => format!("{job} ({target})"),
            Err(_) => target,
        };
        auth::audit(who, "submit", &target, &submitted);
        submitted
    }

    /// A receiver that wakes whenever the job changes and holds whether it still runs.
    /// The job counts as watched, and so keeps its lease, until the returned
    /// [`Watching`] is dropped.
    ///
    /// With `reader`, a client certificate's name, it also returns the grant that
    /// lets that certificate read the job's blocks (see [`drove_exec::token::grant`]);
    /// empty without one.
    pub async fn subscribe(
        &self,
        who: &Identity,
        job: JobId,
        reader: Option<String>,
    ) -> Result<(watch::Receiver<bool>, Watching, Vec<u8>)> {
        let who = who.clone();
        let (changes, grant) = self
            .ask(move |state| {
                state.lead()?;
                state.job_for(job, &who)?;
                let grant = reader.map_or_else(Vec::new, |reader| {
                    let key = state.meta.state().ticket_key();
                    let expires_ms = now_ms() + drove_exec::token::GRANT_LIFE_MS;
                    drove_exec::token::grant(key, Granted::Job(job.0), &reader, expires_ms)
                });
                let record = state.jobs.get_mut(&job).ok_or_else(|| not_found(job))?;
                record.lease.watchers += 1;
                Ok::<_, Error>((record.changed.subscribe(), grant))
            })
            .await?;
        let watching = Watching {
            coordinator: self.clone(),
            job,
        };
        Ok((changes, watching, grant))
    }

    /// The registered workers.
    pub async fn workers(&self) -> Vec<pb::WorkerStatus> {
        self.ask(|state| state.worker_statuses()).await
    }

    /// A registered worker's status and the last tasks it completed, newest first.
    /// Only tasks of jobs `who` sees are listed.
    pub async fn worker(
        &self,
        who: &Identity,
        worker: WorkerId,
    ) -> Option<(pb::WorkerStatus, Vec<WorkerTask>)> {
        let who = who.clone();
        self.ask(move |state| {
            let conn = state.workers.get(&worker)?;
            let tasks = (conn.recent_tasks.iter().rev())
                .filter(|t| {
                    let job = JobId(t.job_id);
                    let tenant = (state.jobs.get(&job).map(|r| r.tenant.as_str()))
                        .or_else(|| state.meta.state().job(job).map(|m| m.tenant.as_str()));
                    tenant.is_some_and(|t| who.sees(t))
                })
                .cloned()
                .collect();
            Some((state.worker_status(worker, conn), tasks))
        })
        .await
    }

    /// The last minutes of the cluster's load, oldest first.
    pub async fn history(&self) -> Vec<ClusterSample> {
        self.ask(|state| state.history.samples()).await
    }

    /// The job's whole status and every attempt so far (its timeline), taken at one
    /// moment so that they agree.
    pub async fn status_and_attempts(
        &self,
        who: &Identity,
        job: JobId,
    ) -> Result<(pb::JobStatus, Vec<Attempt>)> {
        let who = who.clone();
        self.ask(move |state| {
            state.lead()?;
            state.job_for(job, &who)?;
            let status = state.status(job).ok_or_else(|| not_found(job))?;
            Ok((status, state.attempts(job).unwrap_or_default()))
        })
        .await
    }

    /// The job's status while it runs, without the per-task runs: it costs time in
    /// proportion to the job's stages, not its tasks. Once the job has ended, its whole
    /// status.
    pub async fn progress(&self, job: JobId) -> Result<pb::JobStatus> {
        self.ask(move |state| {
            state.lead()?;
            let record = state.jobs.get(&job).ok_or_else(|| not_found(job))?;
            let status = if record.state == pb::JobState::Running {
                state.summary(job)
            } else {
                state.status(job)
            };
            status.ok_or_else(|| not_found(job))
        })
        .await
    }

    pub async fn cancel(&self, who: &Identity, job: JobId) -> Result<pb::JobStatus> {
        let asker = who.clone();
        let cancelled = self
            .ask(move |state| {
                state.may_change_job(job, &asker)?;
                state.handle(Event::JobCancelled { job });
                state.touch(job);
                state.status(job).ok_or_else(|| not_found(job))
            })
            .await;
        auth::audit(who, "cancel", &job, &cancelled);
        cancelled
    }

    /// The client has read the result: free the job's blocks.
    pub async fn release(&self, who: &Identity, job: JobId) -> Result<()> {
        let asker = who.clone();
        let released = self
            .ask(move |state| {
                state.may_change_job(job, &asker)?;
                state.release(job)
            })
            .await;
        if released.is_err() {
            // Releases that work are a client's routine after each result: only
            // refusals are worth a line.
            auth::audit(who, "release", &job, &released);
        }
        released
    }

    /// Forgets a cached table and frees its blocks on every worker; false if no table
    /// of that name is cached.
    /// An admin names another tenant's table as `TENANT/TABLE`.
    pub async fn uncache(&self, who: &Identity, name: &str) -> Result<bool> {
        let name = name.to_ascii_lowercase();
        let target = format!("table {name}");
        let name = match name.contains('/') && who.is_admin() {
            true => name,
            false => cache_key(&who.tenant, &name),
        };
        let asker = who.clone();
        let uncached = self
            .ask(move |state| {
                state.lead()?;
                let owner = (state.catalog.tables())
                    .find(|e| e.name == name)
                    .map(|e| e.meta.tenant.clone());
                match owner {
                    // Another tenant's tables are not shown to exist.
                    Some(owner) if !asker.sees(&owner) => return Ok(false),
                    Some(owner) => {
                        asker.may_change(&owner, &format!("table {}", table_part(&name)))?
                    }
                    None => asker.may_submit()?,
                }
                let Some(release) = state
                    .catalog
                    .uncache(&name)
                    .map_err(|e| Error::User(e.to_string()))?
                else {
                    return Ok(false);
                };
                info!(table = %name, "uncaching");
                if state.meta.state().table(&name).is_some()
                    && state
                        .record(MetaCommand::TableUncached { name: name.clone() })
                        .is_none()
                {
                    return Err(state.not_written());
                }
                state.perform_catalog(release);
                Ok(true)
            })
            .await;
        auth::audit(who, "uncache", &target, &uncached);
        uncached
    }

    /// The workers and recent jobs (newest first), the jobs with their per-task runs
    /// if `with_tasks` (which costs time in proportion to every task in the history).
    pub async fn cluster_status(
        &self,
        who: &Identity,
        with_tasks: bool,
    ) -> pb::ClusterStatusResponse {
        let who = who.clone();
        self.ask(move |state| state.cluster_status(&who, with_tasks))
            .await
    }

    /// [`Self::cluster_status`] from the leader only: a client asking a follower is
    /// sent on to the leader, which knows the workers and jobs.
    pub async fn leader_status(
        &self,
        who: &Identity,
        with_tasks: bool,
    ) -> Result<pb::ClusterStatusResponse> {
        let who = who.clone();
        self.ask(move |state| {
            state.lead()?;
            Ok(state.cluster_status(&who, with_tasks))
        })
        .await
    }

    /// Advances the scheduler's clock (heartbeat timeouts, the no-worker grace period,
    /// speculation), cancels jobs whose lease ran out and frees results nobody read in
    /// time.
    pub async fn tick(&self) {
        self.tell(State::tick).await;
    }
}

/// A client watching a job; the job's lease starts to run out when the last is dropped.
pub struct Watching {
    coordinator: Coordinator,
    job: JobId,
}

impl Drop for Watching {
    fn drop(&mut self) {
        let job = self.job;
        self.coordinator.tell_later(move |state| {
            if let Some(record) = state.jobs.get_mut(&job) {
                record.lease.watchers -= 1;
                if record.lease.watchers == 0 {
                    record.lease.unwatched_since = Instant::now();
                }
            }
        });
    }
}

/// A cached table's name claimed by a job being planned; released when dropped
/// unless the job went on to be submitted (`name` taken).
struct ClaimedName {
    coordinator: Coordinator,
    name: Option<String>,
}

impl Drop for ClaimedName {
    fn drop(&mut self) {
        if let Some(name) = self.name.take() {
            self.coordinator
                .tell_later(move |state| state.catalog.unclaim(&name));
        }
    }
}

/// A planned job on its way to the scheduler.
struct Submission {
    name: String,
    tenant: String,
    sql: String,
    planned: PlannedJob,
    /// The name of the table it caches, and the id the catalog gave that table.
    claim: ClaimedName,
    cache_id: Option<u64>,
    options: JobOptions,
}

/// What the handle's requests and events do, on the state's owner.
impl State {
    fn register_worker(&mut self, registration: Registration, tx: WorkerTx) -> Result<WorkerId> {
        self.lead()?;
        let Registration {
            flight_addr,
            slots,
            task_memory,
            node_id,
            held_cluster_id,
            held,
            zone,
            chunks,
        } = registration;
        // A worker that registers again (its session broke) no longer runs the old
        // one: what it held there it reports now.
        let old: Vec<WorkerId> = (self.workers.iter())
            .filter(|(_, c)| c.flight_addr == flight_addr)
            .map(|(id, _)| *id)
            .collect();
        for id in old {
            self.worker_lost(id, "it registered again", false);
        }
        let worker = self
            .record(MetaCommand::WorkerRegistered {
                flight_addr: flight_addr.clone(),
                registered_ms: now_ms(),
                node_id: node_id.clone(),
            })
            .ok_or_else(|| self.not_written())?
            .worker
            .expect("a registration allocates a worker id");
        let registered = pb::CoordinatorMessage {
            kind: Some(pb::coordinator_message::Kind::Registered(pb::Registered {
                worker_id: worker.0,
                heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                cluster_id: self.meta.state().cluster_id(),
                ticket_key: self.meta.state().ticket_key().to_vec(),
                term: self.led_term.load(Ordering::Relaxed),
            })),
        };
        tx.try_send(Ok(registered))
            .map_err(|_| Error::Internal("the new worker's stream closed at once".into()))?;
        info!(%worker, %flight_addr, slots, node_id, "worker registered");
        self.workers.insert(
            worker,
            WorkerConn {
                flight_addr,
                node_id,
                slots,
                tx,
                last_heartbeat: Instant::now(),
                memory: pb::MemoryStats::default(),
                task_memory,
                plans: HashSet::new(),
                recent_tasks: VecDeque::new(),
                zone,
                stores_chunks: chunks.is_some(),
                chunk_bytes: 0,
                chunk_capacity_bytes: 0,
            },
        );
        if let Some(chunks) = chunks {
            self.fs.replicas.held(worker, chunks);
        }
        // Outputs written for this cluster's jobs (under a leader that is gone, before
        // this coordinator restarted, or in the worker's last session): its running
        // jobs may take them.
        let held = match held_cluster_id == self.meta.state().cluster_id() {
            true => held,
            false => Vec::new(),
        };
        if !held.is_empty() {
            info!(%worker, outputs = held.len(), "the worker kept task outputs");
        }
        self.handle(Event::WorkerJoined {
            worker,
            slots,
            held,
        });
        Ok(worker)
    }

    fn heartbeat(&mut self, worker: WorkerId, heartbeat: pb::Heartbeat) {
        let Some(conn) = self.workers.get_mut(&worker) else {
            return;
        };
        conn.last_heartbeat = Instant::now();
        if let Some(memory) = heartbeat.memory {
            conn.memory = memory;
        }
        conn.chunk_bytes = heartbeat.chunk_bytes;
        conn.chunk_capacity_bytes = heartbeat.chunk_capacity_bytes;
        self.fs_reported(worker, &heartbeat);
        self.handle(Event::WorkerHeartbeat { worker });
        for key in &heartbeat.progressed {
            let attempt = attempt_id(key);
            self.handle(Event::TaskProgressed { attempt, worker });
        }
        for status in heartbeat.statuses {
            let Some(key) = status.task else { continue };
            let attempt = attempt_id(&key);
            let event = match status.outcome {
                Some(pb::task_status::Outcome::Succeeded(s)) => Event::TaskSucceeded {
                    attempt,
                    worker,
                    stats: TaskStats {
                        // Saturating: a worker's figures must not overflow the
                        // coordinator's arithmetic, whatever it sends.
                        output_bytes: s.output_bytes.iter().fold(0, |a, b| a.saturating_add(*b)),
                        partition_bytes: s.output_bytes,
                        output_rows: s.output_rows.iter().fold(0, |a, b| a.saturating_add(*b)),
                        local_read_bytes: s.local_read_bytes,
                        remote_read_bytes: s.remote_read_bytes,
                        elapsed_ms: s.elapsed_ms,
                        counters: s.counters.into_iter().collect(),
                        spilled_bytes: s.spilled_bytes,
                        spill_count: s.spill_count,
                        memory_bytes: s.memory_bytes,
                        peak_memory_bytes: s.peak_memory_bytes,
                    },
                },
                Some(pb::task_status::Outcome::Failed(f)) => Event::TaskFailed {
                    attempt,
                    worker,
                    error: TaskError {
                        kind: drove_exec::net::error_kind_from_proto(f.kind()),
                        fetch: f.fetch.map(|l| FetchFailure {
                            stage: StageId(l.stage_id),
                            map_partition: l.map_partition,
                            worker: WorkerId(l.worker_id),
                        }),
                        message: f.message,
                    },
                },
                None => continue,
            };
            let failed_before = self.failed_attempts(attempt);
            self.handle(event);
            self.count(attempt, worker, failed_before);
            self.touch(attempt.task.job);
        }
    }

    /// `/metrics`, with `queued` requests and events waiting for the state.
    fn metrics_text(&self, queued: usize, who: &Identity) -> String {
        let (mut tasks_pending, mut tasks_running) = (0, 0);
        for job in self.scheduler.running_jobs() {
            let Some(record) = self.jobs.get(&job) else {
                continue;
            };
            for s in &record.planned.stages {
                if let Some(c) = self.scheduler.stage_counts(job, StageId(s.id)) {
                    tasks_pending += u64::from(c.pending);
                    tasks_running += u64::from(c.running);
                }
            }
        }
        let mut jobs_by_state = [
            pb::JobState::Running,
            pb::JobState::Succeeded,
            pb::JobState::Failed,
            pb::JobState::Cancelled,
        ]
        .map(|s| (JobState::from(s).name(), 0));
        for (id, _) in self.meta.state().jobs() {
            if let Some(record) = self.jobs.get(&id) {
                let name = JobState::from(record.state).name();
                if let Some(count) = jobs_by_state.iter_mut().find(|(n, _)| *n == name) {
                    count.1 += 1;
                }
            }
        }
        let workers = self.worker_statuses();
        let (log_index, snapshot_index, raft) = self.journal.status();
        let raft = raft.unwrap_or_default();
        let (under, missing) = self.fs_under_replicated();
        let tenants: Vec<_> = (self.tenant_usage().into_iter())
            .filter(|t| who.sees(&t.tenant))
            .collect();
        self.metrics.encode(&Snapshot {
            jobs_by_state,
            tenants: &tenants,
            tasks_pending,
            tasks_running,
            workers: &workers,
            queued,
            meta_log_index: log_index,
            meta_snapshot_index: snapshot_index,
            raft_term: raft.term,
            raft_leader: raft.role == "leader",
            raft_last_log_index: raft.last_log_index,
            raft_applied_index: raft.applied_index,
            fs_chunks_under_replicated: under,
            fs_chunks_missing: missing,
        })
    }

    fn worker_lost(&mut self, worker: WorkerId, why: &str, clean: bool) {
        if self.workers.remove(&worker).is_some() {
            if clean {
                info!(%worker, why, "worker left");
            } else {
                warn!(%worker, why, "worker lost");
            }
            self.handle(Event::WorkerLost { worker });
            self.fs.replicas.lost(worker);
            let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
            for job in jobs {
                self.touch(job);
            }
        }
    }

    /// Submits a planned job; a refused one frees the table name it claimed.
    fn submit(&mut self, submission: Submission) -> Result<JobId> {
        let Submission {
            name,
            tenant,
            sql,
            planned,
            mut claim,
            cache_id,
            options,
        } = submission;
        // The state frees the claimed name from here: the job's end does, or its refusal.
        let caches_as = claim.name.take().zip(cache_id);
        // The same submission, sent again while the first was being planned.
        if let Some(job) = self.meta.state().submitted(&tenant, options.request) {
            if let Some((table, _)) = &caches_as {
                self.catalog.unclaim(table);
            }
            return Ok(job);
        }
        // The log allocates the job's id when it records the job, after validation;
        // the spec is validated under the id no job has yet.
        let next = self.meta.state().next_job_id();
        let mut spec = self.job_spec(next, &planned, &tenant, options.priority);
        if let Err(e) = self.scheduler.validate(&spec) {
            if let Some((table, _)) = &caches_as {
                self.catalog.unclaim(table);
            }
            return Err(Error::Internal(e.to_string()));
        }
        // Written to disk only: a restarted coordinator runs the job again from it.
        let kept = match self.journal.durable() {
            true => durable::encode_planned(&planned, &sql, options, caches_as.is_some()),
            false => Vec::new(),
        };
        if kept.len() > durable::ENTRY_MAX - ENTRY_HEADROOM {
            if let Some((table, _)) = &caches_as {
                self.catalog.unclaim(table);
            }
            return Err(Error::User(format!(
                "the job's plans take {} bytes, over the {} the metadata log holds for one job; split the query, or run the coordinator without --data-dir",
                kept.len(),
                durable::ENTRY_MAX - ENTRY_HEADROOM
            )));
        }
        let submitted_ms = now_ms();
        let job = self
            .record(MetaCommand::JobSubmitted {
                name: name.clone(),
                tenant: tenant.clone(),
                submitted_ms,
                planned: kept,
                request: options.request,
            })
            .ok_or_else(|| self.not_written())?
            .job
            .expect("a submission allocates a job id");
        spec.id = job;
        self.metrics.job_submitted();
        let record = JobRecord::new(
            name,
            tenant,
            sql,
            submitted_ms,
            planned,
            caches_as,
            options.detached,
        );
        self.admit(job, record, spec);
        Ok(job)
    }

    /// The scheduler's view of a planned job.
    fn job_spec(&self, id: JobId, planned: &PlannedJob, tenant: &str, priority: i32) -> JobSpec {
        JobSpec {
            id,
            tenant: tenant.to_string(),
            priority,
            stages: planned
                .stages
                .iter()
                .map(|s| StageSpec {
                    id: StageId(s.id),
                    tasks: s.tasks,
                    depends_on: s.depends_on.iter().map(|d| StageId(*d)).collect(),
                    existing: self.catalog.existing(
                        s.origin.map(|(cache, stage)| (cache, StageId(stage))),
                        s.cache,
                        s.tasks,
                    ),
                    local_input: s.local_input.map(StageId),
                    coalesce: s.coalesce,
                    preferred: (s.preferred.iter())
                        .map(|workers| workers.iter().map(|w| WorkerId(*w)).collect())
                        .collect(),
                })
                .collect(),
            final_stage: StageId(planned.stages.last().map_or(0, |s| s.id)),
        }
    }

    /// Hands a recorded job to the scheduler.
    fn admit(&mut self, job: JobId, record: JobRecord, spec: JobSpec) {
        let _span = info_span!("job", %job).entered();
        info!(stages = spec.stages.len(), "job submitted");
        self.jobs.insert(job, record);
        if std::env::var_os(INJECT_FAULT_ENV).is_some_and(|v| v == "phantom-attempt") {
            warn!("{INJECT_FAULT_ENV}: corrupting the scheduler's state on purpose");
            self.scheduler.inject_fault_phantom_attempt();
        }
        self.handle(Event::JobSubmitted(spec));
        self.touch(job);
    }

    /// The client has read the result: free the job's blocks.
    fn release(&mut self, job: JobId) -> Result<()> {
        let record = self.jobs.get_mut(&job).ok_or_else(|| not_found(job))?;
        if record.released {
            return Ok(());
        }
        record.released = true;
        if record.state == pb::JobState::Running {
            // Released before it ended: the client gave up on it.
            self.handle(Event::JobCancelled { job });
        }
        self.freeze(job);
        self.handle(Event::JobReleased { job });
        self.touch(job);
        if self.meta.state().job(job).is_none() {
            // Already pushed out of the history while its result waited to be read.
            self.jobs.remove(&job);
        }
        Ok(())
    }

    /// Each tenant with a running job, an attempt on a worker or a cached table: what
    /// it holds.
    fn tenant_usage(&self) -> Vec<pb::TenantUsage> {
        let mut usage: BTreeMap<String, pb::TenantUsage> = BTreeMap::new();
        let policies = &self.config.tenants;
        fn entry<'a>(
            usage: &'a mut BTreeMap<String, pb::TenantUsage>,
            policies: &BTreeMap<String, drove_core::scheduler::TenantPolicy>,
            tenant: &str,
        ) -> &'a mut pb::TenantUsage {
            usage
                .entry(tenant.to_string())
                .or_insert_with(|| pb::TenantUsage {
                    tenant: tenant.to_string(),
                    weight: policies.get(tenant).map_or(1, |p| p.weight),
                    ..Default::default()
                })
        }
        for (tenant, attempts) in self.scheduler.tenant_usage() {
            entry(&mut usage, policies, &tenant).attempts = attempts;
        }
        for record in self.jobs.values() {
            if record.state == pb::JobState::Running {
                entry(&mut usage, policies, &record.tenant).running_jobs += 1;
            }
        }
        for table in self.catalog.tables() {
            entry(&mut usage, policies, &table.meta.tenant).cached_bytes += table.meta.bytes;
        }
        usage.into_values().collect()
    }

    fn cluster_status(&self, who: &Identity, with_tasks: bool) -> pb::ClusterStatusResponse {
        let workers = self.worker_statuses();
        let jobs = self.recent_jobs(who, with_tasks);
        let cached_tables = self
            .catalog
            .tables()
            .filter(|e| who.sees(&e.meta.tenant))
            .map(|e| pb::CachedTableStatus {
                name: shown_name(who, &e.name, &e.meta.tenant),
                partitions: e.partitions.len() as u32,
                partitions_available: e
                    .partitions
                    .iter()
                    .filter(|o| self.workers.contains_key(&o.worker))
                    .count() as u32,
                job_id: e.cached_by.0,
            })
            .collect();
        let (log_index, snapshot_index, raft) = self.journal.status();
        let mut metadata = pb::MetadataStatus {
            cluster_id: self.cluster_id.load(Ordering::Relaxed),
            role: "single".into(),
            data_dir: (self.config.data_dir.as_ref())
                .map_or(String::new(), |d| d.display().to_string()),
            log_index,
            snapshot_index,
            ..Default::default()
        };
        if let Some(raft) = raft {
            // Elected, but still taking over: not scheduling yet.
            metadata.role = match (raft.role, self.leading) {
                ("leader", false) => "elected".into(),
                (role, _) => role.into(),
            };
            metadata.node_id = raft.node_id;
            metadata.term = raft.term;
            metadata.leader_id = raft.leader_id;
            metadata.leader_addr = raft.leader_addr;
            metadata.coordinators = (raft.coordinators.into_iter())
                .map(|(node_id, addr, role, matched_index)| pb::CoordinatorPeer {
                    node_id,
                    addr,
                    role: role.into(),
                    matched_index,
                })
                .collect();
        }
        let tenants = (self.tenant_usage().into_iter())
            .filter(|t| who.sees(&t.tenant))
            .collect();
        pb::ClusterStatusResponse {
            workers,
            jobs,
            cached_tables,
            metadata: Some(metadata),
            tenants,
            fs: Some(self.fs_status()),
        }
    }

    /// Advances the scheduler's clock, cancels the jobs whose lease ran out, and frees
    /// results nobody read in time.
    fn tick(&mut self) {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        self.handle(Event::Tick { now_ms });
        self.fs_maintain();
        self.sample();
        let lease = std::time::Duration::from_millis(self.config.client_lease_ms);
        let lapsed: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, r)| {
                r.state == pb::JobState::Running
                    && !r.lease.detached
                    && r.lease.watchers == 0
                    && r.lease.unwatched_since.elapsed() > lease
            })
            .map(|(id, _)| *id)
            .collect();
        for job in lapsed {
            warn!(%job, lease_ms = lease.as_millis() as u64, "no client has watched the job for its lease; cancelling it");
            if let Some(record) = self.jobs.get_mut(&job) {
                record.cancel_reason = Some(format!(
                    "cancelled: no client watched it for {} s (the client went away); submit it detached (`drove sql --detach`) to keep a job running without a client",
                    lease.as_secs()
                ));
            }
            self.handle(Event::JobCancelled { job });
            self.touch(job);
        }
        let ttl = std::time::Duration::from_millis(self.config.result_ttl_ms);
        let expired: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, r)| !r.released && r.ended.is_some_and(|t| t.elapsed() > ttl))
            .map(|(id, _)| *id)
            .collect();
        for job in expired {
            info!(%job, "result not read in time; freeing its blocks");
            let _ = self.release(job);
        }
    }
}

/// The name of the one block of partition `partition` of a cached stage.
fn block_ticket(partition: u32, o: &Output) -> pb::BlockTicket {
    pb::BlockTicket {
        job_id: o.origin.0.0,
        stage_id: o.origin.1.0,
        map_partition: partition,
        reduce_partition: 0,
        attempt: o.attempt,
        ..Default::default()
    }
}

pub(crate) fn attempt_id(key: &pb::TaskKey) -> AttemptId {
    AttemptId {
        task: TaskId {
            job: JobId(key.job_id),
            stage: StageId(key.stage_id),
            partition: key.partition,
        },
        attempt: key.attempt,
    }
}

fn task_key(attempt: AttemptId) -> pb::TaskKey {
    pb::TaskKey {
        job_id: attempt.task.job.0,
        stage_id: attempt.task.stage.0,
        partition: attempt.task.partition,
        attempt: attempt.attempt,
    }
}

impl State {
    /// The memory a tenant's cached tables hold.
    fn cached_bytes(&self, tenant: &str) -> u64 {
        (self.catalog.tables())
            .filter(|e| e.meta.tenant == tenant)
            .map(|e| e.meta.bytes)
            .sum()
    }

    /// Refuses a new cached table to a tenant whose tables already hold its cache
    /// quota, or that is caching one already (its size is known only once cached).
    /// The table that crosses the quota is kept: the next is refused.
    fn check_cache_quota(&self, tenant: &str) -> Result<()> {
        let Some(max) = self
            .config
            .tenants
            .get(tenant)
            .and_then(|p| p.cache_bytes_max)
        else {
            return Ok(());
        };
        let caching = (self.jobs.values())
            .filter(|r| r.tenant == tenant && r.state == pb::JobState::Running)
            .find_map(|r| r.caches_as.as_ref());
        if let Some((name, _)) = caching {
            let table = table_part(name);
            return Err(Error::User(format!(
                "tenant {tenant} is caching table {table} already, and has a cache quota (--tenant {tenant}:cache=SIZE): cache one table at a time"
            )));
        }
        let held = self.cached_bytes(tenant);
        if held >= max {
            return Err(Error::User(format!(
                "tenant {tenant}'s cached tables hold {}, its quota is {} (--tenant {tenant}:cache=SIZE); UNCACHE TABLE one first",
                drove_core::human_bytes(held),
                drove_core::human_bytes(max)
            )));
        }
        Ok(())
    }

    /// The job, if `who` may see it: another tenant's job is not found, as if it did
    /// not exist.
    fn job_for(&self, job: JobId, who: &Identity) -> Result<&JobRecord> {
        (self.jobs.get(&job))
            .filter(|record| who.sees(&record.tenant))
            .ok_or_else(|| not_found(job))
    }

    /// Whether `who` may change `job` (cancel it, release its result) here: this
    /// coordinator leads, the job is one `who` sees, and `who`'s role may change it.
    fn may_change_job(&self, job: JobId, who: &Identity) -> Result<()> {
        self.lead()?;
        let owner = &self.job_for(job, who)?.tenant;
        Ok(who.may_change(owner, &job.to_string())?)
    }

    /// Who a token is: one the metadata (or the CA, for its first admin token)
    /// knows and has not revoked.
    fn identify_token(&self, text: &str, admin: Option<&Presented>) -> Result<Identity> {
        let presented = drove_exec::token::parse(text).map_err(Error::Unauthenticated)?;
        let meta = self.meta.state();
        if let Some(admin) = admin
            && admin.id == presented.id
            && admin.digest == presented.digest
            && !meta.revoked(&admin.id)
        {
            return Ok(Identity {
                tenant: ADMIN_TENANT.into(),
                role: Role::Admin,
                principal: format!("token {} (admin.token)", admin.id),
            });
        }
        meta.token_identity(&presented.id, &presented.digest)
            .ok_or_else(|| {
                Error::Unauthenticated(format!(
                    "token {} is unknown or revoked here; ask an admin for a token of this cluster (`drove token create`)",
                    presented.id
                ))
            })
    }
}

/// Where a tenant's cached table is in the catalog and the metadata: its names are
/// apart from other tenants'.
fn cache_key(tenant: &str, table: &str) -> String {
    format!("{tenant}/{table}")
}

/// How `who` names a cached table: by its own name if it is its tenant's, else as
/// `TENANT/TABLE` (for an admin).
fn shown_name(who: &Identity, key: &str, tenant: &str) -> String {
    match tenant == who.tenant {
        true => table_part(key).to_string(),
        false => key.to_string(),
    }
}

fn not_found(job: JobId) -> Error {
    Error::NotFound(format!(
        "{job} does not exist (or is older than the job history)"
    ))
}

impl State {
    /// Feeds an event to the scheduler and performs the commands, including those that
    /// follow from commands failing (a worker whose stream is gone is lost).
    fn handle(&mut self, event: Event) {
        self.scheduler
            .set_clock(self.epoch.elapsed().as_millis() as u64);
        let mut events = VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            // A broken invariant panics; the state's owner ends the process.
            for command in self.scheduler.handle(event) {
                if let Some(follow_up) = self.perform(command) {
                    events.push_back(follow_up);
                }
            }
        }
    }

    /// Counts where an attempt of a task that scans drove fs files runs, against the
    /// workers that hold its data.
    fn count_locality(&mut self, task: TaskId, worker: WorkerId) {
        let Some(record) = self.jobs.get_mut(&task.job) else {
            return;
        };
        let preferred = (record.planned.stages.iter())
            .find(|s| s.id == task.stage.0)
            .and_then(|s| s.preferred.get(task.partition as usize))
            .filter(|p| !p.is_empty());
        let Some(preferred) = preferred else {
            return;
        };
        let zone_of = |w: &WorkerId| {
            (self.workers.get(w))
                .map(|c| c.zone.as_str())
                .filter(|z| !z.is_empty())
        };
        let level = if preferred.contains(&worker.0) {
            record.locality.node_local += 1;
            "node"
        } else if zone_of(&worker).is_some_and(|zone| {
            preferred
                .iter()
                .any(|p| zone_of(&WorkerId(*p)) == Some(zone))
        }) {
            record.locality.zone_local += 1;
            "zone"
        } else {
            record.locality.remote += 1;
            "remote"
        };
        self.metrics.task_locality(level);
    }

    fn perform(&mut self, command: Command) -> Option<Event> {
        match command {
            Command::Launch {
                attempt,
                worker,
                reads,
            } => {
                let _span = info_span!(
                    "attempt",
                    job = %attempt.task.job,
                    stage = %attempt.task.stage,
                    partition = attempt.task.partition,
                    attempt = attempt.attempt,
                    %worker
                )
                .entered();
                tracing::debug!("launching");
                if let Some(TaskState::Running { runs }) = self
                    .scheduler
                    .stage_tasks(attempt.task.job, attempt.task.stage)
                    .and_then(|t| t.get(attempt.task.partition as usize))
                    && runs.len() > 1
                    && runs.last().is_some_and(|r| r.attempt == attempt.attempt)
                {
                    self.metrics.attempt_speculative();
                }
                self.count_locality(attempt.task, worker);
                let stage = (attempt.task.job, attempt.task.stage);
                let first = !self.workers.get(&worker)?.plans.contains(&stage);
                let message = match self.launch_message(attempt, reads, first) {
                    Ok(launch) => pb::CoordinatorMessage {
                        kind: Some(pb::coordinator_message::Kind::Launch(launch)),
                    },
                    Err(e) => {
                        return Some(Event::TaskFailed {
                            attempt,
                            worker,
                            error: TaskError::new(ErrorKind::Internal, e.to_string()),
                        });
                    }
                };
                // A message over the limit would break the stream, and with it every
                // other job's tasks on this worker: it fails its own job instead.
                let bytes = drove_proto::Message::encoded_len(&message);
                if bytes > drove_proto::MAX_MESSAGE_BYTES {
                    return Some(Event::TaskFailed {
                        attempt,
                        worker,
                        error: TaskError::new(ErrorKind::User, too_large(attempt, bytes)),
                    });
                }
                let conn = self.workers.get_mut(&worker)?;
                if conn.tx.try_send(Ok(message)).is_err() {
                    warn!(%worker, "worker stream full or closed; declaring it lost");
                    self.workers.remove(&worker);
                    return Some(Event::WorkerLost { worker });
                }
                conn.plans.insert(stage);
                None
            }
            Command::Kill { attempt, worker } => {
                self.send(
                    worker,
                    pb::coordinator_message::Kind::Kill(task_key(attempt)),
                );
                None
            }
            Command::WorkerDrained { worker } => {
                // A worker with drove fs chunks leaves once they are elsewhere
                // (`fs_maintain` tells it).
                if self.workers.get(&worker).is_some_and(|c| c.stores_chunks) {
                    self.fs.leaving.insert(worker);
                } else {
                    self.send(
                        worker,
                        pb::coordinator_message::Kind::Drained(pb::Drained {}),
                    );
                }
                None
            }
            Command::DropWorker { worker } => {
                // Dropping its sender ends the session; if the worker is alive after
                // all, it registers again as a new worker.
                self.workers.remove(&worker);
                let jobs: Vec<JobId> = self.jobs.keys().copied().collect();
                for job in jobs {
                    self.touch(job);
                }
                None
            }
            Command::JobSucceeded { job } => {
                self.keep_cached_outputs(job);
                self.end_job(
                    job,
                    pb::JobState::Succeeded,
                    String::new(),
                    JobEnd::Succeeded,
                );
                None
            }
            Command::JobFailed { job, message } => {
                let end = JobEnd::Failed(message.clone());
                self.end_job(job, pb::JobState::Failed, message, end);
                None
            }
            Command::JobCancelled { job } => {
                let why = self
                    .jobs
                    .get_mut(&job)
                    .and_then(|r| r.cancel_reason.take())
                    .unwrap_or_else(|| "cancelled".into());
                self.end_job(job, pb::JobState::Cancelled, why, JobEnd::Cancelled);
                None
            }
            Command::DropOutputs { worker, outputs } => {
                let outputs = outputs.iter().map(|a| task_key(*a)).collect();
                let drop = pb::DropOutputs { outputs };
                self.send(worker, pb::coordinator_message::Kind::DropOutputs(drop));
                None
            }
            Command::ReleaseBlocks { job, workers } => {
                for worker in workers {
                    if let Some(conn) = self.workers.get_mut(&worker) {
                        conn.plans.retain(|(j, _)| *j != job);
                    }
                    let release = pb::ReleaseJobBlocks { job_id: job.0 };
                    self.send(worker, pb::coordinator_message::Kind::Release(release));
                }
                None
            }
        }
    }

    /// Adds the cluster's load now to its history (at most a sample a second).
    fn sample(&mut self) {
        let mut now = Reading {
            at_ms: self.epoch.elapsed().as_millis() as u64,
            unix_ms: now_ms(),
            shuffle_bytes_total: self.metrics.shuffle_bytes_total(),
            ..Default::default()
        };
        for (id, w) in &self.workers {
            now.slots += w.slots;
            // Attempts queued behind busy slots do not make more slots busy.
            now.slots_busy += (self.scheduler.running_on(*id) as u32).min(w.slots);
            now.memory_bytes += w.memory.block_bytes + w.memory.execution_bytes;
            now.spill_disk_bytes += w.memory.disk_bytes;
            now.spilled_by_worker
                .insert(id.0, w.memory.spilled_bytes_total);
        }
        self.history.record(now);
    }

    fn worker_statuses(&self) -> Vec<pb::WorkerStatus> {
        self.workers
            .iter()
            .map(|(id, w)| self.worker_status(*id, w))
            .collect()
    }

    fn worker_status(&self, id: WorkerId, w: &WorkerConn) -> pb::WorkerStatus {
        pb::WorkerStatus {
            worker_id: id.0,
            node_id: w.node_id.clone(),
            flight_addr: w.flight_addr.clone(),
            slots: w.slots,
            running_tasks: self.scheduler.running_on(id) as u32,
            heartbeat_age_ms: w.last_heartbeat.elapsed().as_millis() as u64,
            draining: self.scheduler.is_draining(id),
            block_bytes: w.memory.block_bytes,
            memory: Some(w.memory),
            chunk_bytes: w.chunk_bytes,
            chunk_capacity_bytes: w.chunk_capacity_bytes,
        }
    }

    /// The statuses of the jobs in the history, newest first; without their per-task
    /// runs unless `with_tasks`.
    fn recent_jobs(&self, who: &Identity, with_tasks: bool) -> Vec<pb::JobStatus> {
        let mut jobs: Vec<pb::JobStatus> = self
            .meta
            .state()
            .jobs()
            .filter(|(_, meta)| who.sees(&meta.tenant))
            .filter_map(|(id, _)| {
                if with_tasks {
                    self.status(id)
                } else {
                    self.summary(id)
                }
            })
            .collect();
        jobs.sort_by_key(|j| std::cmp::Reverse(j.job_id));
        jobs
    }

    /// Failed attempts of the attempt's stage so far.
    fn failed_attempts(&self, attempt: AttemptId) -> u32 {
        self.scheduler
            .stage_attempts(attempt.task.job, attempt.task.stage)
            .map_or(0, |a| a.failed)
    }

    /// Counts what a task report changed: a completion the scheduler accepted (its
    /// task is now done by this attempt), or a failure that counted.
    fn count(&mut self, attempt: AttemptId, worker: WorkerId, failed_before: u32) {
        let failed = self.failed_attempts(attempt);
        self.metrics
            .attempts_failed(u64::from(failed.saturating_sub(failed_before)));
        let task = self
            .scheduler
            .stage_tasks(attempt.task.job, attempt.task.stage)
            .and_then(|t| t.get(attempt.task.partition as usize));
        if let Some(TaskState::Done {
            attempt: a,
            worker: w,
            stats,
            ..
        }) = task
            && *a == attempt.attempt
            && *w == worker
        {
            self.metrics.task_completed(
                stats.elapsed_ms,
                stats.output_bytes,
                stats.remote_read_bytes,
            );
            let task = WorkerTask {
                job_id: attempt.task.job.0,
                stage_id: attempt.task.stage.0,
                partition: attempt.task.partition,
                attempt: attempt.attempt,
                elapsed_ms: stats.elapsed_ms,
                output_bytes: stats.output_bytes,
            };
            if let Some(conn) = self.workers.get_mut(&worker) {
                if conn.recent_tasks.len() == WORKER_TASKS_KEPT {
                    conn.recent_tasks.pop_front();
                }
                conn.recent_tasks.push_back(task);
            }
        }
    }

    /// Sends a message that needs no answer. A full queue means a stuck worker; the
    /// heartbeat timeout deals with it.
    fn send(&self, worker: WorkerId, kind: pb::coordinator_message::Kind) -> bool {
        self.workers.get(&worker).is_some_and(|conn| {
            conn.tx
                .try_send(Ok(pb::CoordinatorMessage { kind: Some(kind) }))
                .is_ok()
        })
    }

    fn end_job(&mut self, job: JobId, state: pb::JobState, error: String, end: JobEnd) {
        let Some(record) = self.jobs.get_mut(&job) else {
            return;
        };
        if let Some((name, _)) = &record.caches_as {
            self.catalog.unclaim(name);
        }
        record.state = state;
        record.error = error;
        record.ended = Some(Instant::now());
        self.metrics.job_ended(JobState::from(state).name());
        info!(%job, ?state, elapsed_ms = record.started.elapsed().as_millis() as u64, "job ended");
        // What the history keeps of the job across restarts (only written to disk).
        let kept = match self.journal.durable() {
            true => self.history_record(job),
            false => Vec::new(),
        };
        let Some(Applied { evicted, .. }) = self.record(MetaCommand::JobEnded {
            job,
            end,
            ended_ms: now_ms(),
            record: kept,
        }) else {
            return;
        };
        if state != pb::JobState::Succeeded {
            // Nothing to read: the blocks are already released by the scheduler.
            self.freeze(job);
            if let Some(r) = self.jobs.get_mut(&job) {
                r.released = true;
            }
        }
        for old in evicted {
            if let Some(r) = self.jobs.get(&old)
                && !r.released
            {
                continue;
            }
            self.jobs.remove(&old);
            self.scheduler.forget(old);
        }
        self.touch(job);
    }

    /// Writes `command` to the journal, then applies it. A change the disk cannot hold
    /// must not be acted on, so a failed write ends the process (a supervisor restarts
    /// it, from what the disk holds). A replicated coordinator that cannot commit it no
    /// longer leads: `None`, and it steps down once the work at hand is done.
    fn record(&mut self, command: MetaCommand) -> Option<Applied> {
        let since = Instant::now();
        let committed = match &mut self.journal {
            Journal::Memory => None,
            Journal::Disk(store) => {
                if let Err(e) = store.append(&command) {
                    fatal(&format!("the metadata log cannot be written: {e}"));
                }
                None
            }
            // Once a write failed, the rest of the work at hand writes nothing.
            Journal::Raft { .. } if !self.leading => return None,
            Journal::Raft { replica, runtime } => {
                match runtime.block_on(replica.write(command.clone())) {
                    Ok(applied) => Some(applied),
                    Err(e) => {
                        warn!(error = ?e, "a metadata change was not committed; stepping down");
                        self.leading = false;
                        self.deposed = Some(e);
                        self.led_term.store(0, Ordering::Relaxed);
                        return None;
                    }
                }
            }
        };
        if self.journal.durable() {
            self.metrics.meta_written(since.elapsed());
        }
        let applied = self.meta.append(command);
        if let Some(committed) = committed
            && committed != applied
        {
            // The leader's copy of the metadata and the log's disagree: a bug. Leading
            // on would hand out ids the log gave to others.
            warn!(
                ?committed,
                ?applied,
                "the metadata diverged from the log; stepping down"
            );
            self.leading = false;
            self.deposed = Some(WriteError::Unknown("the metadata diverged".into()));
            self.led_term.store(0, Ordering::Relaxed);
            return None;
        }
        if let Journal::Disk(store) = &mut self.journal
            && let Err(e) = store.compact_if_due(self.meta.state())
        {
            fatal(&format!("the metadata snapshot cannot be written: {e}"));
        }
        Some(applied)
    }

    /// Starts scheduling from `meta`: the jobs it holds that have not ended run again.
    /// `term`: the Raft term it leads in (0 for a single coordinator).
    fn take_lead(&mut self, meta: MetaLog, term: u64) {
        self.meta = meta;
        self.leading = true;
        self.fs.restart();
        if matches!(self.journal, Journal::Raft { .. }) {
            self.metrics.lead_taken();
            self.led_term.store(term, Ordering::Relaxed);
        }
        if self.meta.state().cluster_id() == 0
            && self
                .record(MetaCommand::ClusterCreated {
                    cluster_id: drove_core::ids::random_id(),
                })
                .is_none()
        {
            return;
        }
        // Metadata from before grants has no key yet.
        if self.meta.state().ticket_key().is_empty() {
            let key = match drove_exec::token::new_ticket_key() {
                Ok(key) => key,
                Err(e) => fatal(&format!("cannot make the key for block grants: {e}")),
            };
            if self.record(MetaCommand::TicketKeyMade { key }).is_none() {
                return;
            }
        }
        (self.cluster_id).store(self.meta.state().cluster_id(), Ordering::Relaxed);
        self.recover();
    }

    /// Forgets what this coordinator ran as leader: its workers' sessions and its
    /// watchers' streams end, and they find the new leader, which runs the jobs again.
    fn step_down(&mut self) {
        self.leading = false;
        self.deposed = None;
        self.led_term.store(0, Ordering::Relaxed);
        self.workers.clear();
        self.jobs.clear();
        self.scheduler = Scheduler::new(scheduler_config(&self.config));
        self.catalog = Catalog::default();
        self.meta = MetaLog::new(self.config.job_history_max);
    }

    /// Refuses work that only the leader does, saying where the leader is.
    fn lead(&self) -> Result<()> {
        match self.leading {
            true => Ok(()),
            false => Err(self.not_leader()),
        }
    }

    /// Why a change a request wanted was not made: another leads (the client may try
    /// the leader), or the outcome is unknown (trying again could make it twice).
    fn not_written(&self) -> Error {
        match &self.deposed {
            Some(WriteError::Unknown(why)) => Error::Internal(format!(
                "the change may or may not have been made: {why}; check `drove status` before trying again"
            )),
            _ => self.not_leader(),
        }
    }

    /// The error that sends a client on to the leader, if one is known.
    fn not_leader(&self) -> Error {
        let leader = match &self.journal {
            Journal::Raft { replica, .. } => replica.leader_hint(),
            _ => String::new(),
        };
        Error::NotLeader { leader }
    }

    /// The ended job's status as the history keeps it on disk: without its per-task
    /// runs and its result's location (a result not read is released when the next
    /// coordinator takes over).
    fn history_record(&self, job: JobId) -> Vec<u8> {
        self.described(job)
            .map_or_else(Vec::new, |s| pb::Message::encode_to_vec(&s))
    }

    /// The job's summary with its SQL and plans: its status without the per-task runs
    /// and the result's location.
    fn described(&self, job: JobId) -> Option<pb::JobStatus> {
        let record = self.jobs.get(&job)?;
        if let Some(s) = &record.final_status {
            let mut s = pb::JobStatus {
                result_released: record.released,
                result: Vec::new(),
                ..s.clone()
            };
            for stage in &mut s.stages {
                stage.tasks.clear();
            }
            return Some(s);
        }
        let mut status = self.summary(job)?;
        status.sql = record.sql.clone();
        status.physical_plan = record.planned.physical_plan.clone();
        status.result_schema = record.planned.result_schema.clone();
        for (stage, planned) in status.stages.iter_mut().zip(&record.planned.stages) {
            stage.plan = planned.plan_text.clone();
        }
        Some(status)
    }

    /// After a restart from the data directory, or on taking the lead: jobs that were
    /// running when the last coordinator stopped run again from their plans; the tasks
    /// whose outputs the workers kept are not run again (they report them when they
    /// register, and nothing launches for `held_outputs_wait_ms` while they come
    /// back). The few that cannot run again (those that cache a table or read one) are
    /// recorded as failed. Every ended job in the history is
    /// listed again from its record, and every cached table is back in the catalog
    /// with its partitions lost, to be computed again from its lineage.
    fn recover(&mut self) {
        let unended: Vec<JobId> = self.meta.state().unended().collect();
        // Set before the jobs are admitted, which schedules them.
        if !unended.is_empty() {
            let now = self.epoch.elapsed().as_millis() as u64;
            (self.scheduler).hold_launches(now + self.config.held_outputs_wait_ms);
        }
        for job in unended.iter().copied() {
            let meta = self.meta.state().job(job).expect("listed");
            let (name, tenant, submitted_ms) =
                (meta.name.clone(), meta.tenant.clone(), meta.submitted_ms);
            let resumed = match durable::decode_planned(&meta.planned) {
                None if meta.planned.is_empty() => Err(
                    "a job that caches a table or reads a cached one is not run again after a restart yet".to_string(),
                ),
                None => Err("its plan in the data directory cannot be read".to_string()),
                Some(r) => {
                    let spec = self.job_spec(job, &r.planned, &tenant, r.options.priority);
                    match self.scheduler.validate(&spec) {
                        Ok(()) => Ok((r, spec)),
                        Err(e) => Err(format!("its plan is no longer accepted: {e}")),
                    }
                }
            };
            match resumed {
                Ok((r, spec)) => {
                    info!(%job, "the job was running when the coordinator stopped; running it again");
                    let record = JobRecord::new(
                        name,
                        tenant,
                        r.sql,
                        submitted_ms,
                        r.planned,
                        None,
                        r.options.detached,
                    );
                    self.admit(job, record, spec);
                }
                Err(why) => {
                    let error = format!(
                        "the coordinator stopped while this job ran, and it cannot run again: {why}; submit it again"
                    );
                    warn!(%job, %error, "recorded as failed");
                    let status = pb::JobStatus {
                        job_id: job.0,
                        state: pb::JobState::Failed as i32,
                        name,
                        tenant,
                        error: error.clone(),
                        submitted_unix_ms: submitted_ms,
                        ..Default::default()
                    };
                    let _ = self.record(MetaCommand::JobEnded {
                        job,
                        end: JobEnd::Failed(error),
                        ended_ms: now_ms(),
                        record: pb::Message::encode_to_vec(&status),
                    });
                }
            }
        }
        let recovered: Vec<(JobId, pb::JobStatus)> = self
            .meta
            .state()
            .jobs()
            .filter(|(_, meta)| meta.ended.is_some())
            .filter_map(|(id, meta)| {
                let status = <pb::JobStatus as pb::Message>::decode(meta.record.as_slice());
                Some((id, status.ok()?))
            })
            .collect();
        for (job, status) in recovered {
            self.jobs.insert(job, JobRecord::ended(status));
        }
        let tables: Vec<(String, TableMeta)> = (self.meta.state().tables())
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        for (name, table) in tables {
            // Kept in the moment between its table's entry and its own end.
            let restored = if unended.contains(&table.cached_by) {
                Err(Error::Internal("the job that cached it did not end".into()))
            } else {
                restored_table(&table)
            };
            match restored {
                Ok((stage, partitions, meta)) => {
                    info!(table = %name, "cached table kept; its partitions are computed again when next read");
                    let id = table.cache_id;
                    (self.catalog).restore(&name, id, table.cached_by, stage, partitions, meta);
                }
                Err(e) => {
                    warn!(table = %name, error = %e, "a cached table cannot be taken back; uncached");
                    let _ = self.record(MetaCommand::TableUncached { name });
                }
            }
        }
    }

    /// Keeps the job's last status so the scheduler can forget it.
    fn freeze(&mut self, job: JobId) {
        let attempts = self.attempts(job);
        let summary = self.summary(job);
        if let Some(status) = self.status(job)
            && let Some(record) = self.jobs.get_mut(&job)
        {
            record.final_status = Some(status);
            record.final_attempts = attempts;
            record.final_summary = summary;
        }
    }

    fn touch(&self, job: JobId) {
        if let Some(r) = self.jobs.get(&job) {
            let running = r.state == pb::JobState::Running;
            r.changed.send_modify(|v| *v = running);
        }
    }

    /// The launch of an attempt that reads partitions `reads` of its inputs, with its
    /// stage's plan if `with_plan` (the first of the stage's tasks its worker gets).
    fn launch_message(
        &self,
        attempt: AttemptId,
        reads: Range<u32>,
        with_plan: bool,
    ) -> Result<pb::LaunchTask> {
        let job = attempt.task.job;
        let record = self.jobs.get(&job).ok_or_else(|| not_found(job))?;
        let stage = record
            .planned
            .stages
            .iter()
            .find(|s| s.id == attempt.task.stage.0)
            .ok_or_else(|| Error::Internal(format!("{} has no {}", job, attempt.task.stage)))?;
        let inputs = stage
            .depends_on
            .iter()
            .map(|dep| {
                let outputs = self
                    .scheduler
                    .stage_outputs_and_rows(job, StageId(*dep))
                    .ok_or_else(|| Error::Internal(format!("stage {dep} of {job} is not done")))?;
                Ok(pb::StageInput {
                    stage_id: *dep,
                    partitions: outputs.len() as u32,
                    // Those of no rows are left out (an unknown count is kept).
                    outputs: outputs
                        .iter()
                        .enumerate()
                        .filter(|(_, (_, rows))| *rows != Some(0))
                        .map(|(partition, (o, _))| self.map_output(partition, o))
                        .collect(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(pb::LaunchTask {
            task: Some(task_key(attempt)),
            plan: if with_plan {
                stage.plan.as_ref().clone()
            } else {
                Vec::new()
            },
            output: match stage.output {
                OutputMode::Single => pb::OutputMode::Single as i32,
                OutputMode::RepartitionRoot => pb::OutputMode::RepartitionRoot as i32,
            },
            inputs,
            settings: record.planned.settings.clone(),
            reads_to: if reads.len() > 1 { reads.end } else { 0 },
        })
    }

    /// Where map partition `partition`'s output `o` is, as launches and results name it.
    fn map_output(&self, partition: usize, o: &Output) -> pb::MapOutput {
        pb::MapOutput {
            partition: partition as u32,
            attempt: o.attempt,
            worker_id: o.worker.0,
            flight_addr: self
                .workers
                .get(&o.worker)
                .map(|w| w.flight_addr.clone())
                .unwrap_or_default(),
            job_id: o.origin.0.0,
            stage_id: o.origin.1.0,
        }
    }

    /// The smallest share of operator memory a task gets on the workers that told it.
    fn task_memory(&self) -> Option<u64> {
        self.workers
            .values()
            .map(|w| w.task_memory)
            .filter(|&m| m > 0)
            .min()
    }

    /// The cached tables of `who`'s tenant, by the names its SQL gives them, for
    /// planning its job.
    fn caches_for_planning(&self, who: &Identity) -> planning::Caches {
        planning::Caches {
            tables: self
                .catalog
                .tables()
                .filter(|e| e.meta.tenant == who.tenant)
                .map(|e| CachedTable {
                    id: e.id,
                    name: table_part(&e.name).to_string(),
                    schema: e.meta.schema.clone(),
                    partitions: e.partitions.len(),
                })
                .collect(),
            lineage: self
                .catalog
                .tables()
                .filter(|e| e.meta.tenant == who.tenant)
                .map(|e| (e.id, e.meta.lineage.clone()))
                .collect(),
        }
    }

    /// After a job succeeded: the catalog takes the table it cached and the cached
    /// partitions it computed again, and the workers are told which blocks to keep.
    fn keep_cached_outputs(&mut self, job: JobId) {
        let Some(record) = self.jobs.get(&job) else {
            return;
        };
        let stages: Vec<CachedStage> = record
            .planned
            .stages
            .iter()
            .filter_map(|s| {
                let cache = s.cache?;
                let outputs = self.scheduler.stage_outputs(job, StageId(s.id))?;
                Some(CachedStage { cache, outputs })
            })
            .collect();
        let new_table = record.caches_as.as_ref().and_then(|(name, cache_id)| {
            let schema = record.planned.lineage.last()?.plan.schema();
            let lineage = record.planned.lineage.clone();
            let tenant = record.tenant.clone();
            let writer = (record.planned.stages.iter()).find(|s| s.cache == Some(*cache_id))?;
            let bytes = (self.scheduler.stage_totals(job, StageId(writer.id)))
                .map_or(0, |t| t.memory_bytes);
            Some((
                name.clone(),
                CacheMeta {
                    schema,
                    lineage,
                    tenant,
                    bytes,
                },
            ))
        });
        // What a restarted coordinator needs to compute the table again.
        let kept = match (&new_table, &record.caches_as, self.journal.durable()) {
            (Some((name, meta)), Some((_, cache_id)), true) => {
                match drove_exec::shuffle::schema_to_bytes(&meta.schema) {
                    Ok(schema) => Some((
                        name.clone(),
                        TableMeta {
                            cache_id: *cache_id,
                            tenant: record.tenant.clone(),
                            bytes: meta.bytes,
                            cached_by: job,
                            lineage: durable::encode_cached_table(schema, &record.planned.stages),
                        },
                    )),
                    Err(e) => {
                        warn!(table = %name, error = %e, "the table's schema cannot be kept; it will not outlive a restart");
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some((name, _)) = &new_table {
            info!(table = %name, %job, "table cached");
        }
        let commands = self.catalog.job_succeeded(job, new_table, stages);
        if let Some((name, table)) = kept {
            let taken = (self.catalog.tables())
                .any(|e| e.name == name && e.id == table.cache_id && e.cached_by == job);
            if table.lineage.len() > durable::ENTRY_MAX - ENTRY_HEADROOM {
                warn!(table = %name, bytes = table.lineage.len(), "the table's lineage is over what the metadata log holds; it will not outlive a restart");
            } else if taken {
                let _ = self.record(MetaCommand::TableCached { name, table });
            }
        }
        for command in commands {
            self.perform_catalog(command);
        }
    }

    /// Sends a catalog's message. A worker that cannot be told to keep its blocks
    /// frees them with the job: the catalog counts them lost.
    fn perform_catalog(&mut self, command: CatalogCommand) {
        let tickets = |blocks: &[(u32, Output)]| -> Vec<pb::BlockTicket> {
            blocks.iter().map(|(p, o)| block_ticket(*p, o)).collect()
        };
        match command {
            CatalogCommand::Adopt {
                worker,
                cache,
                blocks,
            } => {
                let adopt = pb::AdoptBlocks {
                    cache_id: cache,
                    blocks: tickets(&blocks),
                };
                if !self.send(worker, pb::coordinator_message::Kind::Adopt(adopt)) {
                    self.catalog.adoption_failed(cache, &blocks);
                }
            }
            CatalogCommand::Drop { worker, blocks } => {
                info!(%worker, blocks = blocks.len(), "dropping replaced copies of cached partitions");
                let drop = pb::DropBlocks {
                    blocks: tickets(&blocks),
                };
                self.send(worker, pb::coordinator_message::Kind::Drop(drop));
            }
            CatalogCommand::ReleaseCache { cache } => {
                for worker in self.workers.keys() {
                    self.send(
                        *worker,
                        pb::coordinator_message::Kind::ReleaseCache(pb::ReleaseCache {
                            cache_id: cache,
                        }),
                    );
                }
            }
        }
    }

    /// Every attempt of the job, ended ones in the order they ended, then the running
    /// ones; an attempt still running when its job ended shows as stopped then.
    fn attempts(&self, job: JobId) -> Option<Vec<Attempt>> {
        let record = self.jobs.get(&job)?;
        if let Some(attempts) = &record.final_attempts {
            return Some(attempts.clone());
        }
        let since = self.scheduler.job_submitted_ms(job)?;
        let end = record
            .ended
            .map_or_else(|| self.epoch.elapsed(), |t| t - self.epoch)
            .as_millis() as u64;
        let running = record.state == pb::JobState::Running;
        let mut attempts = Vec::new();
        for s in &record.planned.stages {
            let stage = StageId(s.id);
            let attempt = |partition: u32, run: &Run, ended_ms: u64, outcome| Attempt {
                stage_id: s.id,
                partition,
                attempt: run.attempt,
                worker_id: run.worker.0,
                started_ms: run.started_ms.saturating_sub(since),
                ended_ms: ended_ms.saturating_sub(since),
                outcome,
                speculative: run.speculative,
            };
            for e in self
                .scheduler
                .stage_ended_attempts(job, stage)
                .unwrap_or(&[])
            {
                attempts.push(attempt(e.partition, &e.run, e.ended_ms, e.end.into()));
            }
            let tasks = self.scheduler.stage_tasks(job, stage).unwrap_or(&[]);
            for (partition, task) in tasks.iter().enumerate() {
                if let TaskState::Running { runs } = task {
                    for run in runs {
                        let outcome = if running {
                            AttemptOutcome::Running
                        } else {
                            AttemptOutcome::Stopped
                        };
                        attempts.push(attempt(partition as u32, run, end, outcome));
                    }
                }
            }
        }
        Some(attempts)
    }

    /// The job's status without its per-task runs, result, SQL and plans: stage counts
    /// and sums kept as tasks finish, so it costs time in proportion to the stages.
    fn summary(&self, job: JobId) -> Option<pb::JobStatus> {
        let record = self.jobs.get(&job)?;
        if let Some(s) = &record.final_summary {
            return Some(pb::JobStatus {
                result_released: record.released,
                ..s.clone()
            });
        }
        let mut totals = TaskTotals::default();
        let stages = record
            .planned
            .stages
            .iter()
            .map(|s| {
                let stage = StageId(s.id);
                let counts = self.scheduler.stage_counts(job, stage).unwrap_or_default();
                let attempts = self
                    .scheduler
                    .stage_attempts(job, stage)
                    .unwrap_or_default();
                totals.add(self.scheduler.stage_totals(job, stage).unwrap_or_default());
                pb::StageStatus {
                    stage_id: s.id,
                    depends_on: s.depends_on.clone(),
                    tasks_total: s.tasks,
                    tasks_done: counts.done,
                    tasks_coalesced: counts.coalesced,
                    // An ended job's leftover attempts are being stopped, not run.
                    tasks_running: if record.state == pb::JobState::Running {
                        counts.running
                    } else {
                        0
                    },
                    root: s.root.clone(),
                    attempts_launched: attempts.launched,
                    attempts_failed: attempts.failed,
                    attempts_speculative: attempts.speculative,
                    ..Default::default()
                }
            })
            .collect();
        let elapsed = record.ended.unwrap_or_else(Instant::now) - record.started;
        Some(pb::JobStatus {
            job_id: job.0,
            state: record.state as i32,
            name: record.name.clone(),
            error: record.error.clone(),
            stages,
            result_stage_id: record.planned.stages.last().map_or(0, |s| s.id),
            elapsed_ms: elapsed.as_millis() as u64,
            submitted_unix_ms: record.submitted_unix_ms,
            spilled_bytes: totals.spilled_bytes,
            spill_count: totals.spill_count,
            memory_bytes: totals.memory_bytes,
            peak_memory_bytes: totals.peak_memory_bytes,
            result_released: record.released,
            tenant: record.tenant.clone(),
            locality: Some(record.locality),
            ..Default::default()
        })
    }

    /// The job's whole status: its summary, each stage's completed tasks, and where
    /// its result is.
    fn status(&self, job: JobId) -> Option<pb::JobStatus> {
        let record = self.jobs.get(&job)?;
        if let Some(s) = &record.final_status {
            return Some(pb::JobStatus {
                result_released: record.released,
                ..s.clone()
            });
        }
        let mut status = self.described(job)?;
        for stage in &mut status.stages {
            let tasks = self
                .scheduler
                .stage_tasks(job, StageId(stage.stage_id))
                .unwrap_or(&[]);
            for (partition, t) in tasks.iter().enumerate() {
                if let TaskState::Done {
                    attempt,
                    worker,
                    stats,
                    ..
                } = t
                {
                    stage.tasks.push(pb::TaskRun {
                        partition: partition as u32,
                        attempt: *attempt,
                        worker_id: worker.0,
                        output_bytes: stats.output_bytes,
                        output_rows: stats.output_rows,
                        local_read_bytes: stats.local_read_bytes,
                        remote_read_bytes: stats.remote_read_bytes,
                        elapsed_ms: stats.elapsed_ms,
                        counters: stats.counters.clone().into_iter().collect(),
                        spilled_bytes: stats.spilled_bytes,
                        spill_count: stats.spill_count,
                        memory_bytes: stats.memory_bytes,
                        peak_memory_bytes: stats.peak_memory_bytes,
                    });
                }
            }
        }
        if record.state == pb::JobState::Succeeded && record.caches_as.is_none() {
            status.result = self
                .scheduler
                .stage_outputs(job, StageId(status.result_stage_id))
                // The client reads every result partition, so none is left out.
                .map(|outputs| {
                    outputs
                        .iter()
                        .enumerate()
                        .map(|(partition, o)| self.map_output(partition, o))
                        .collect()
                })
                .unwrap_or_default();
        }
        Some(status)
    }
}

/// Why a task's message cannot be sent.
fn too_large(attempt: AttemptId, bytes: usize) -> String {
    format!(
        "{} of {} needs a {} task message, over the {} limit of a message; the query carries too much data in its text or constants: read large values from a table instead",
        attempt.task.stage,
        attempt.task.job,
        drove_core::human_bytes(bytes as u64),
        drove_core::human_bytes(drove_proto::MAX_MESSAGE_BYTES as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state's owner does one thing at a time; while it is busy, at most
    /// [`STATE_QUEUE_MAX`] requests wait and the next sender waits for room.
    #[tokio::test]
    async fn a_busy_state_queues_a_bounded_number_of_requests() {
        let coordinator = Coordinator::new(CoordinatorConfig::default()).unwrap();
        let (free_owner, owner_freed) = std::sync::mpsc::channel::<()>();
        let (started, owner_busy) = oneshot::channel();
        coordinator
            .tell(move |_| {
                let _ = started.send(());
                let _ = owner_freed.recv();
            })
            .await;
        owner_busy.await.unwrap();
        let (done_tx, mut done) = mpsc::channel(STATE_QUEUE_MAX + 1);
        for i in 0..STATE_QUEUE_MAX {
            let done_tx = done_tx.clone();
            coordinator
                .tell(move |_| done_tx.try_send(i).unwrap())
                .await;
        }
        assert_eq!(coordinator.queued(), STATE_QUEUE_MAX);
        // One more waits for room, and counts as a request once there is some.
        let extra = coordinator.clone();
        let last = tokio::spawn(async move { extra.workers().await.len() });
        tokio::task::yield_now().await;
        assert!(!last.is_finished(), "a full queue makes its sender wait");
        free_owner.send(()).unwrap();
        assert_eq!(last.await.unwrap(), 0);
        // Everything queued ran, in order.
        for i in 0..STATE_QUEUE_MAX {
            assert_eq!(done.recv().await, Some(i));
        }
        assert_eq!(coordinator.queued(), 0);
    }
}
