//! The scheduler: a sans-I/O state machine.
//!
//! Events go in through [`Scheduler::handle`] (a worker joined, a job was submitted, a
//! task finished, the clock moved) and [`Command`]s come out (launch this attempt on
//! that worker, the job succeeded, drop that silent worker). The scheduler never blocks,
//! sleeps or talks to the network; the coordinator's runtime performs the commands and
//! feeds it the time through [`Event::Tick`]. Membership (heartbeat timeouts, draining),
//! retries, lineage recovery and speculation all live here, so the deterministic
//! simulation in `tests/simulation.rs` exercises the same code the coordinator runs.
//!
//! Architecture invariant: a stage's tasks are launched only once every stage it
//! depends on has all its tasks done, so a task never waits on data that is not there.
//! Architecture invariant: a task reads partition p of its inputs, or partitions p..q
//! once the tasks after it were coalesced into it (decided once per stage, see
//! [`StageSpec::coalesce`]); a task coalesced into another never runs.
//! Architecture invariant: only a running attempt of a task may complete it; a report
//! from any other attempt is ignored (fencing). Once a task is done, later reports of
//! its other attempts are ignored too, so no task completes twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;

use tracing::{debug, info, warn};

use crate::ids::{AttemptId, JobId, StageId, TaskId, WorkerId};
use crate::{Error, Result};

/// When a slow task gets a second, speculative attempt.
#[derive(Debug, Clone)]
pub struct SpeculationConfig {
    /// A task is slow once it has run this many times its stage's median task time.
    pub multiplier: f64,
    /// Speculate only once this fraction of the stage's tasks is done.
    pub quantile: f64,
    /// And only once it has run at least this long.
    pub min_ms: u64,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        Self {
            multiplier: 1.5,
            quantile: 0.75,
            min_ms: 1_000,
        }
    }
}

/// Limits and policies of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How many times a task may fail (transient errors, fetch failures) before its
    /// job fails. Attempts lost with their worker do not count.
    pub task_attempt_max: u32,
    /// How many jobs may be queued or running at once; more are refused.
    pub jobs_active_max: usize,
    /// A worker not heard from for this long is lost.
    pub heartbeat_timeout_ms: u64,
    /// Running jobs fail once no worker has been registered for this long.
    pub no_worker_grace_ms: u64,
    /// Speculative execution; `None` turns it off.
    pub speculation: Option<SpeculationConfig>,
    /// A running attempt that has made no progress (no work done, as its worker
    /// reports) for this long fails as a transient fault and is retried elsewhere.
    pub task_progress_timeout_ms: u64,
    /// Check every invariant over every task after each event (tests and the
    /// simulation). Off, each event checks what it touched, at a cost that does not
    /// grow with the size of the jobs.
    pub check_all_invariants: bool,
    /// Attempts each slot of a worker holds queued beyond the one it runs, so that a
    /// slot starts its next task as soon as one ends instead of waiting for the
    /// coordinator to hear of the end and answer. The scheduler still owns every queued
    /// attempt: it kills them like running ones (speculation, loss, cancellation).
    pub queued_per_slot: u32,
    /// Tenants' weights and quotas; a tenant not named has [`TenantPolicy::default`].
    pub tenants: BTreeMap<String, TenantPolicy>,
    /// Adaptive coalescing of small partitions (see [`StageSpec::coalesce`]); `None`
    /// turns it off.
    pub coalesce: Option<CoalesceConfig>,
    /// How long a stage whose tasks prefer workers ([`StageSpec::preferred`]) waits,
    /// since it last launched a task where that task preferred, for such a slot to
    /// free before it runs a task elsewhere (delay scheduling).
    pub locality_wait_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            task_attempt_max: 4,
            jobs_active_max: 1024,
            heartbeat_timeout_ms: 10_000,
            no_worker_grace_ms: 60_000,
            speculation: Some(SpeculationConfig::default()),
            task_progress_timeout_ms: 5 * 60 * 1000,
            check_all_invariants: false,
            queued_per_slot: 0,
            tenants: BTreeMap::new(),
            coalesce: Some(CoalesceConfig::default()),
            locality_wait_ms: 3_000,
        }
    }
}

/// How far adaptive coalescing goes. Once a stage's inputs are done, their sizes are
/// known: the stage's tasks are cut into runs of adjacent ones, of about equal bytes,
/// and each run is one task. There are as many runs as slots, or whole waves of them,
/// so that a run reads about `max_bytes` at most (a run holds whole partitions). Never
/// fewer runs than slots: bytes say little of the work (a stage of costly functions
/// over little data keeps every slot busy). A stage that would keep more than half its
/// tasks is left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceConfig {
    pub max_bytes: u64,
}

impl Default for CoalesceConfig {
    /// 8 MiB: starting a task costs drove a few milliseconds, which a run of a few MiB
    /// amortizes; larger runs would only make larger hash tables (Spark, whose tasks
    /// cost more to start, goes up to 64 MiB).
    fn default() -> Self {
        Self { max_bytes: 8 << 20 }
    }
}

/// A stage as the scheduler sees it: how many tasks, and which stages it reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageSpec {
    pub id: StageId,
    pub tasks: u32,
    pub depends_on: Vec<StageId>,
    /// Outputs that exist before the job starts, one per task, or none at all: a cached
    /// table's partitions, and the stages that computed them. Those tasks start done;
    /// lineage recovery recomputes any that are needed and gone.
    pub existing: Vec<Existing>,
    /// Task p reads output p of this stage (one of `depends_on`), so it prefers to run
    /// where that output is, when that worker has a free slot.
    pub local_input: Option<StageId>,
    /// Task p reads partition p of every stage it depends on, and nothing else: a task
    /// may read partitions p..q instead and do the work of tasks p to q - 1, which then
    /// never run (adaptive coalescing, decided when its first task launches, from the
    /// sizes its inputs' tasks reported; see [`CoalesceConfig`]).
    pub coalesce: bool,
    /// The workers each task prefers (those that hold the drove fs chunks it reads),
    /// one list per task, or none at all. A task runs on one of them when it has a
    /// slot free; otherwise the stage waits up to
    /// [`SchedulerConfig::locality_wait_ms`] before it runs tasks elsewhere.
    pub preferred: Vec<Vec<WorkerId>>,
}

/// An output that exists before its job starts (see [`StageSpec::existing`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub attempt: u32,
    /// [`WorkerId::NOWHERE`] for an output that exists nowhere: the stage is there for
    /// its lineage only, and runs if an output that depends on it is lost.
    pub worker: WorkerId,
    /// The job and stage that wrote it, which name its blocks.
    pub origin: (JobId, StageId),
}

/// The most task slots a worker may claim: each is a thread on the worker, and room in
/// the scheduler's per-worker indexes.
pub const WORKER_SLOTS_MAX: u32 = 1024;

/// The most task outputs a worker may report holding when it registers again: a
/// registration stays far below the message limit.
pub const HELD_OUTPUTS_MAX: usize = 100_000;

/// A task output a worker kept from before this scheduler ran its job: a new leader's
/// workers kept what they wrote for the old one (see [`Event::WorkerJoined`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldOutput {
    pub task: TaskId,
    pub attempt: u32,
    pub rows: u64,
    pub bytes: u64,
}

/// A job as the scheduler sees it. The last stage's output is the job's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub id: JobId,
    pub stages: Vec<StageSpec>,
    pub final_stage: StageId,
    /// The tenant it belongs to: slots are shared fairly between tenants.
    pub tenant: String,
    /// Among its tenant's jobs, higher goes first; equal ones go oldest first.
    pub priority: i32,
}

/// The range of a job's priority.
pub const PRIORITY_MIN: i32 = -1000;
pub const PRIORITY_MAX: i32 = 1000;

/// How a tenant shares the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantPolicy {
    /// Its share of the slots against other tenants' while both have work: a tenant
    /// of weight 2 gets twice the slots of one of weight 1.
    pub weight: u32,
    /// Attempts it may hold at once (running or queued on workers), at most.
    pub slots_max: Option<u32>,
    /// Of its running jobs, how many get tasks at once; the rest wait their turn.
    pub jobs_max: Option<u32>,
    /// Memory its cached tables may hold; past it, it caches no more tables until it
    /// uncaches some (the coordinator's catalog checks it).
    pub cache_bytes_max: Option<u64>,
}

impl TenantPolicy {
    /// Reads `NAME:weight=W,slots=S,jobs=J,cache=SIZE` (each setting optional): a
    /// tenant's policy as `--tenant` gives it.
    pub fn parse(text: &str) -> Result<(String, Self), String> {
        let form = "give NAME:weight=W,slots=S,jobs=J,cache=SIZE (each setting optional), e.g. analytics:weight=2,slots=8,cache=4GiB";
        let (name, settings) = text.split_once(':').unwrap_or((text, ""));
        crate::access::check_tenant(name).map_err(|e| format!("{e}; {form}"))?;
        let mut policy = Self::default();
        for setting in settings.split(',').filter(|s| !s.is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("'{setting}' is not KEY=VALUE; {form}"))?;
            if key == "cache" {
                let bytes = crate::parse_bytes(value).map_err(|e| format!("cache: {e}"))?;
                policy.cache_bytes_max = Some(bytes);
                continue;
            }
            let value: u32 = value
                .parse()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| format!("{key}={value}: give a whole number from 1; {form}"))?;
            match key {
                "weight" if value <= WEIGHT_MAX => policy.weight = value,
                "weight" => return Err(format!("weight={value}: at most {WEIGHT_MAX}")),
                "slots" => policy.slots_max = Some(value),
                "jobs" => policy.jobs_max = Some(value),
                other => return Err(format!("'{other}' is no tenant setting; {form}")),
            }
        }
        Ok((name.to_string(), policy))
    }
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            weight: 1,
            slots_max: None,
            jobs_max: None,
            cache_bytes_max: None,
        }
    }
}

/// What a finished task reports about its work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub output_bytes: u64,
    /// Bytes per output partition, which adaptive coalescing sums; empty if unknown.
    /// The scheduler keeps the sums, not the task's own list.
    pub partition_bytes: Vec<u64>,
    pub output_rows: u64,
    pub local_read_bytes: u64,
    pub remote_read_bytes: u64,
    pub elapsed_ms: u64,
    /// Named counts the task kept (e.g. invalid_utf8_lines).
    pub counters: BTreeMap<String, u64>,
    /// Bytes the task spilled to disk, and how many spills.
    pub spilled_bytes: u64,
    pub spill_count: u64,
    /// Bytes of its output kept in memory, and the most its operators held at once.
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
}

/// How an error should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's plan or data is wrong; retrying cannot help.
    User,
    /// May go away on its own (I/O, lost peer, timeout); worth a retry.
    Transient,
    /// A memory or disk budget was exhausted; worth a retry elsewhere.
    Resources,
    /// A bug in drove; retried like a transient fault, since another worker may not hit it.
    Internal,
}

impl ErrorKind {
    /// Whether another attempt may succeed.
    pub fn is_retryable(self) -> bool {
        !matches!(self, ErrorKind::User)
    }
}

/// The block a task could not read: the output of `stage`'s task `map_partition`,
/// held by `worker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchFailure {
    pub stage: StageId,
    pub map_partition: u32,
    pub worker: WorkerId,
}

/// A failed attempt's cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
    /// Set when the attempt failed because an input block could not be fetched: that
    /// block's producer is re-run before the task is retried.
    pub fetch: Option<FetchFailure>,
}

impl TaskError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            fetch: None,
        }
    }
}

/// Something that happened, fed to [`Scheduler::handle`].
#[derive(Debug, Clone)]
pub enum Event {
    /// The clock moved to `now_ms` (monotonic; earlier values are ignored). Heartbeat
    /// timeouts, the no-worker grace period and speculation are judged on ticks.
    Tick {
        now_ms: u64,
    },
    /// A worker registered. It may hold outputs written before this scheduler ran
    /// their jobs (it kept them when its coordinator failed over, restarted on its
    /// data directory, or dropped its session): tasks still to run take them as done
    /// before anything launches, and the worker is told to drop the others.
    WorkerJoined {
        worker: WorkerId,
        slots: u32,
        held: Vec<HeldOutput>,
    },
    /// The worker is alive (it sent a heartbeat).
    WorkerHeartbeat {
        worker: WorkerId,
    },
    /// The worker wants to leave: it gets no new tasks, and it is told
    /// ([`Command::WorkerDrained`]) once nothing it runs or holds is needed any more.
    WorkerDraining {
        worker: WorkerId,
    },
    /// The worker is gone (its session ended).
    WorkerLost {
        worker: WorkerId,
    },
    JobSubmitted(JobSpec),
    TaskSucceeded {
        attempt: AttemptId,
        worker: WorkerId,
        stats: TaskStats,
    },
    TaskFailed {
        attempt: AttemptId,
        worker: WorkerId,
        error: TaskError,
    },
    /// The attempt did work since the worker's last report.
    TaskProgressed {
        attempt: AttemptId,
        worker: WorkerId,
    },
    JobCancelled {
        job: JobId,
    },
    /// The runtime gave up on a running job.
    JobAborted {
        job: JobId,
        message: String,
    },
    /// The client has read the result; the job's blocks can go.
    JobReleased {
        job: JobId,
    },
}

/// Something the runtime must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Launch {
        attempt: AttemptId,
        worker: WorkerId,
        /// The partitions of its input stages it reads: its own, and those of the tasks
        /// coalesced into it (see [`StageSpec::coalesce`]).
        reads: Range<u32>,
    },
    /// Stop an attempt that is no longer wanted (its twin won, or its input is gone).
    Kill {
        attempt: AttemptId,
        worker: WorkerId,
    },
    /// The worker missed its heartbeat timeout and is lost: close its session. If it
    /// comes back it registers as a new worker.
    DropWorker {
        worker: WorkerId,
    },
    /// A draining worker may leave now.
    WorkerDrained {
        worker: WorkerId,
    },
    JobSucceeded {
        job: JobId,
    },
    JobFailed {
        job: JobId,
        message: String,
    },
    JobCancelled {
        job: JobId,
    },
    /// Drop every block of the job on these workers.
    ReleaseBlocks {
        job: JobId,
        workers: Vec<WorkerId>,
    },
    /// Drop these attempts' outputs on the worker (held outputs no task took).
    DropOutputs {
        worker: WorkerId,
        outputs: Vec<AttemptId>,
    },
}

/// One running attempt of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub attempt: u32,
    pub worker: WorkerId,
    pub started_ms: u64,
    /// When its worker last reported it doing work (at first, when it started).
    pub progress_ms: u64,
    /// A twin of a slow attempt (see speculation).
    pub speculative: bool,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptEnd {
    /// It completed its task.
    Succeeded,
    /// It failed (an error, a fetch failure, no progress), or its job failed by it.
    Failed,
    /// It was stopped: its twin finished first, its worker was lost, or an input it
    /// needed was lost.
    Stopped,
}

/// An attempt that ended: what a job's timeline shows besides the running ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndedAttempt {
    pub partition: u32,
    pub run: Run,
    pub ended_ms: u64,
    pub end: AttemptEnd,
}

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    /// One attempt, or two when the first is slow and a speculative twin runs.
    Running {
        runs: Vec<Run>,
    },
    Done {
        attempt: u32,
        worker: WorkerId,
        stats: TaskStats,
        /// For an output that existed before the job (see [`StageSpec::existing`]): the
        /// job and stage that wrote it. `None`: this job's own.
        origin: Option<(JobId, StageId)>,
    },
    /// Coalesced into task `into`, an earlier one of its stage, which reads its
    /// partitions too: it never runs and has no output of its own. It counts as done.
    Absorbed {
        into: u32,
    },
}

/// Where one task's output lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    pub attempt: u32,
    pub worker: WorkerId,
    /// The job and stage its blocks are named by.
    pub origin: (JobId, StageId),
}

/// A stage's tasks by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageCounts {
    pub pending: u32,
    pub running: u32,
    /// Done, the tasks coalesced into others included.
    pub done: u32,
    /// Coalesced into others: they never run.
    pub coalesced: u32,
}

/// Attempts a stage has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageAttempts {
    /// Attempts launched, speculative ones and re-runs included.
    pub launched: u32,
    /// Attempts that failed (transient errors and fetch failures).
    pub failed: u32,
    /// Speculative attempts launched.
    pub speculative: u32,
}

/// Sums over a stage's done tasks, kept as tasks finish and are undone, so a job's
/// status costs time in proportion to its stages, not its tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskTotals {
    pub spilled_bytes: u64,
    pub spill_count: u64,
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
}

impl TaskTotals {
    /// Adds another stage's sums (the peak is the larger one).
    pub fn add(&mut self, other: TaskTotals) {
        self.spilled_bytes = self.spilled_bytes.saturating_add(other.spilled_bytes);
        self.spill_count = self.spill_count.saturating_add(other.spill_count);
        self.memory_bytes = self.memory_bytes.saturating_add(other.memory_bytes);
        self.peak_memory_bytes = self.peak_memory_bytes.max(other.peak_memory_bytes);
    }
}

/// [`TaskTotals`] with the peaks counted per value, so that undoing a task can lower
/// the largest.
#[derive(Debug, Default)]
struct Totals {
    spilled_bytes: u64,
    spill_count: u64,
    memory_bytes: u64,
    peaks: RunTimes,
}

impl Totals {
    fn change(&mut self, stats: &TaskStats, add: bool) {
        if add {
            // Workers report these; wrapping keeps a bogus huge value from panicking,
            // and every add has its subtract, so the sums stay exact.
            self.spilled_bytes = self.spilled_bytes.wrapping_add(stats.spilled_bytes);
            self.spill_count = self.spill_count.wrapping_add(stats.spill_count);
            self.memory_bytes = self.memory_bytes.wrapping_add(stats.memory_bytes);
            self.peaks.add(stats.peak_memory_bytes);
        } else {
            self.spilled_bytes = self.spilled_bytes.wrapping_sub(stats.spilled_bytes);
            self.spill_count = self.spill_count.wrapping_sub(stats.spill_count);
            self.memory_bytes = self.memory_bytes.wrapping_sub(stats.memory_bytes);
            self.peaks.remove(stats.peak_memory_bytes);
        }
    }

    fn get(&self) -> TaskTotals {
        TaskTotals {
            spilled_bytes: self.spilled_bytes,
            spill_count: self.spill_count,
            memory_bytes: self.memory_bytes,
            peak_memory_bytes: self.peaks.counts.keys().next_back().copied().unwrap_or(0),
        }
    }
}

/// Done tasks' run times as counts per run time: the median costs time in proportion
/// to the distinct run times, never to the tasks.
#[derive(Debug, Default)]
struct RunTimes {
    counts: BTreeMap<u64, u32>,
    len: usize,
}

impl RunTimes {
    fn add(&mut self, ms: u64) {
        *self.counts.entry(ms).or_default() += 1;
        self.len += 1;
    }

    fn remove(&mut self, ms: u64) {
        if let Some(n) = self.counts.get_mut(&ms) {
            *n -= 1;
            if *n == 0 {
                self.counts.remove(&ms);
            }
            self.len -= 1;
        }
    }

    fn merge(&mut self, other: &RunTimes) {
        for (ms, n) in &other.counts {
            *self.counts.entry(*ms).or_default() += n;
        }
        self.len += other.len;
    }

    /// The run time at index `len / 2` of the sorted times.
    fn median(&self) -> Option<u64> {
        let mut rank = self.len / 2;
        for (ms, n) in &self.counts {
            if rank < *n as usize {
                return Some(*ms);
            }
            rank -= *n as usize;
        }
        None
    }
}

/// The run time of a task this job's own attempt completed.
fn own_run_time(task: &TaskState) -> Option<u64> {
    match task {
        TaskState::Done {
            stats,
            origin: None,
            ..
        } => Some(stats.elapsed_ms),
        _ => None,
    }
}

#[derive(Debug)]
struct StageState {
    spec: StageSpec,
    /// Changed only through [`StageState::set`], which keeps the counts below.
    tasks: Vec<TaskState>,
    /// The next attempt's number per task: attempts started, and numbers passed over
    /// by outputs held from before (see [`Event::WorkerJoined`]).
    attempts: Vec<u32>,
    /// Attempt numbers passed over.
    skipped: u32,
    /// Failed attempts per task, bounded by `task_attempt_max`.
    failures: Vec<u32>,
    /// Per task, fetch failures that named a holder other than its previous one's:
    /// inputs lost in another place, recomputed, and not counted in `failures` (a
    /// cached table replaced while it was read loses inputs on every holder at once).
    /// Bounded by [`FETCH_FAILURES_MAX`].
    fetch_forgiven: Vec<u32>,
    /// The holder the task's last fetch failure named.
    fetch_from: Vec<Option<WorkerId>>,
    /// Where each task last failed: its retry prefers another worker.
    failed_on: Vec<Option<WorkerId>>,
    speculative: u32,
    /// Attempts launched and failed, over all tasks.
    launched: u32,
    failed: u32,
    /// Tasks done.
    done: u32,
    /// Pending tasks by partition: the stage's ready queue.
    pending: BTreeSet<u32>,
    /// Run times of the tasks this job's attempts completed.
    times: RunTimes,
    /// Sums over the done tasks' stats.
    totals: Totals,
    /// Every attempt that ended, in the order they ended: one entry per launched
    /// attempt that is not running (`launched` counts them all).
    ended: Vec<EndedAttempt>,
    /// Bytes per output partition, summed over the reports of the tasks that were done
    /// (a task done again after its output was lost counts again): what adaptive
    /// coalescing of the stages that read this one goes by.
    sizes: Vec<u64>,
    /// Some task was done without reporting sizes like the others (an output that
    /// existed or was held from before): `sizes` are not the stage's.
    sizes_unknown: bool,
    /// Once adaptive coalescing was decided (see [`StageSpec::coalesce`]): the end of
    /// the partitions each task reads (past its own for one that took in others).
    reads_to: Option<Vec<u32>>,
    /// Tasks coalesced into others.
    absorbed: u32,
    /// The pending tasks each worker is preferred by (see [`StageSpec::preferred`]).
    pending_on: BTreeMap<WorkerId, BTreeSet<u32>>,
    /// When the stage last launched a task where it preferred, or first sought a slot.
    local_since_ms: Option<u64>,
}

impl StageState {
    fn new(spec: &StageSpec) -> Self {
        let n = spec.tasks as usize;
        let mut stage = StageState {
            spec: spec.clone(),
            tasks: vec![TaskState::Pending; n],
            attempts: vec![0; n],
            skipped: 0,
            failures: vec![0; n],
            fetch_forgiven: vec![0; n],
            fetch_from: vec![None; n],
            failed_on: vec![None; n],
            speculative: 0,
            launched: 0,
            failed: 0,
            done: 0,
            pending: (0..spec.tasks).collect(),
            times: RunTimes::default(),
            totals: Totals::default(),
            ended: Vec::new(),
            sizes: Vec::new(),
            sizes_unknown: !spec.existing.is_empty(),
            reads_to: None,
            absorbed: 0,
            pending_on: BTreeMap::new(),
            local_since_ms: None,
        };
        for (partition, workers) in spec.preferred.iter().enumerate() {
            for worker in workers {
                let on = stage.pending_on.entry(*worker).or_default();
                on.insert(partition as u32);
            }
        }
        for (partition, e) in spec.existing.iter().enumerate() {
            stage.set(
                partition,
                TaskState::Done {
                    attempt: e.attempt,
                    worker: e.worker,
                    stats: TaskStats::default(),
                    origin: Some(e.origin),
                },
            );
        }
        stage
    }

    fn is_done(&self) -> bool {
        self.done as usize == self.tasks.len()
    }

    /// Moves a task to a new state, keeping the counts, and returns its old state.
    fn set(&mut self, partition: usize, new: TaskState) -> TaskState {
        let old = std::mem::replace(&mut self.tasks[partition], new);
        for (task, delta) in [(&old, false), (&self.tasks[partition], true)] {
            if matches!(task, TaskState::Pending) {
                let preferred = self.spec.preferred.get(partition).into_iter().flatten();
                for worker in preferred {
                    let on = self.pending_on.entry(*worker).or_default();
                    if delta {
                        on.insert(partition as u32);
                    } else {
                        on.remove(&(partition as u32));
                    }
                }
            }
            match task {
                TaskState::Pending if delta => _ = self.pending.insert(partition as u32),
                TaskState::Pending => _ = self.pending.remove(&(partition as u32)),
                TaskState::Running { .. } => {}
                TaskState::Done { .. } | TaskState::Absorbed { .. } if delta => self.done += 1,
                TaskState::Done { .. } | TaskState::Absorbed { .. } => self.done -= 1,
            }
            match own_run_time(task) {
                Some(ms) if delta => self.times.add(ms),
                Some(ms) => self.times.remove(ms),
                None => {}
            }
            if let TaskState::Done { stats, .. } = task {
                self.totals.change(stats, delta);
            }
        }
        old
    }

    /// Keeps only the runs of a running task that `keep` accepts, recording the others
    /// as ended at `now` with `end`; a task left without runs is pending again.
    fn drop_run(
        &mut self,
        partition: usize,
        now: u64,
        end: AttemptEnd,
        keep: impl Fn(&Run) -> bool,
    ) {
        if let TaskState::Running { runs } = &mut self.tasks[partition] {
            let (kept, dropped) = runs.iter().partition(|r| keep(r));
            *runs = kept;
            let empty = runs.is_empty();
            self.record_ended(partition, dropped, now, end);
            if empty {
                self.set(partition, TaskState::Pending);
            }
        }
    }

    /// The partitions of its inputs task `partition` reads.
    fn reads(&self, partition: u32) -> Range<u32> {
        let end = (self.reads_to.as_ref()).map_or(partition + 1, |r| r[partition as usize]);
        partition..end
    }

    /// Adds a done task's sizes per output partition to the stage's.
    fn add_sizes(&mut self, sizes: &[u64]) {
        if self.sizes.is_empty() {
            self.sizes = vec![0; sizes.len()];
        }
        if sizes.is_empty() || sizes.len() != self.sizes.len() {
            self.sizes_unknown = true;
            return;
        }
        for (sum, bytes) in self.sizes.iter_mut().zip(sizes) {
            *sum = sum.saturating_add(*bytes);
        }
    }

    /// The tasks that run (those not coalesced into others).
    fn running_tasks(&self) -> usize {
        self.tasks.len() - self.absorbed as usize
    }

    fn record_ended(&mut self, partition: usize, runs: Vec<Run>, now: u64, end: AttemptEnd) {
        self.ended.extend(runs.into_iter().map(|run| EndedAttempt {
            partition: partition as u32,
            run,
            ended_ms: now,
            end,
        }));
    }
}

/// The outcome of a job, once it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Running,
    Succeeded,
    Failed(String),
    Cancelled,
}

#[derive(Debug)]
struct JobState {
    stages: BTreeMap<StageId, StageState>,
    final_stage: StageId,
    tenant: String,
    priority: i32,
    outcome: JobOutcome,
    /// Workers that may hold blocks of this job.
    touched: BTreeSet<WorkerId>,
    submitted_ms: u64,
}

impl JobState {
    /// Whether every stage the stage reads is done, so its tasks may run.
    fn is_runnable(&self, stage: &StageSpec) -> bool {
        stage.depends_on.iter().all(|d| self.stages[d].is_done())
    }

    /// The worker holding output `partition` of `stage`, if it is done.
    fn holder(&self, stage: StageId, partition: usize) -> Option<WorkerId> {
        match self.stages.get(&stage)?.tasks.get(partition)? {
            TaskState::Done { worker, .. } => Some(*worker),
            _ => None,
        }
    }

    /// Decides, once, whether the tasks of `stage_id` (whose inputs are all done) run
    /// coalesced, and into which runs (see [`StageSpec::coalesce`]). A stage's tasks
    /// coalesce only if every stage it reads reported its sizes for as many partitions
    /// as it has tasks. Tasks not pending (outputs held from before) stay on their own.
    fn coalesce(&mut self, stage_id: StageId, slots: u64, config: Option<CoalesceConfig>) {
        let stage = &self.stages[&stage_id];
        if !stage.spec.coalesce || stage.reads_to.is_some() {
            return;
        }
        let n = stage.tasks.len();
        let mut sizes = vec![0u64; n];
        for dep in &stage.spec.depends_on {
            let dep = &self.stages[dep];
            if dep.sizes_unknown || dep.sizes.len() != n {
                sizes.clear();
                break;
            }
            for (sum, bytes) in sizes.iter_mut().zip(&dep.sizes) {
                *sum = sum.saturating_add(*bytes);
            }
        }
        let stage = self.stages.get_mut(&stage_id).expect("found above");
        let mut reads_to: Vec<u32> = (1..=n as u32).collect();
        let total = sizes.iter().fold(0u64, |a, b| a.saturating_add(*b));
        let runs = config.map_or(n as u64, |c| runs_for(total, slots.max(1), c));
        // Partitions already about as large as a run stay as they are: coalescing them
        // would only make runs uneven.
        if !sizes.is_empty() && runs.saturating_mul(2) <= n as u64 {
            // Partition p goes to the run its middle byte falls in, of `runs` runs of
            // equal bytes: contiguous runs, as even as the partitions allow (a greedy
            // cut at total / slots bytes would leave a straggling run of the rest).
            // Every task is pending (an invariant: none launched, and a coalescing
            // stage takes no held outputs for pending tasks).
            let run_of = |before: u64, bytes: u64| {
                let middle = u128::from(before) + u128::from(bytes / 2);
                (middle * u128::from(runs) / u128::from(total.max(1))) as u64
            };
            let mut before = 0u64;
            let (mut start, mut start_run) = (0, u64::MAX);
            for (p, bytes) in sizes.iter().enumerate() {
                let run = run_of(before, *bytes);
                if run != start_run {
                    (start, start_run) = (p, run);
                }
                reads_to[start] = p as u32 + 1;
                before = before.saturating_add(*bytes);
            }
            let mut run = 0;
            for q in 0..n {
                if q < reads_to[run] as usize && q != run {
                    stage.set(q, TaskState::Absorbed { into: run as u32 });
                    stage.absorbed += 1;
                } else {
                    run = q;
                }
            }
            if stage.absorbed > 0 {
                info!(stage = %stage_id, tasks = n, runs = stage.running_tasks(), total_bytes = total, "coalesced small partitions");
            }
        }
        stage.reads_to = Some(reads_to);
    }

    /// Stages whose outputs must stay available: those a stage not yet done reads, and
    /// the final one (the client has yet to read it).
    fn needed_stages(&self) -> BTreeSet<StageId> {
        self.stages
            .values()
            .filter(|s| !s.is_done())
            .flat_map(|s| s.spec.depends_on.iter().copied())
            .chain([self.final_stage])
            .collect()
    }
}

#[derive(Debug)]
struct WorkerState {
    slots: u32,
    /// Attempts it may hold: one per slot, and those queued behind them.
    capacity: u32,
    running: BTreeSet<AttemptId>,
    last_seen_ms: u64,
    draining: bool,
    /// `WorkerDrained` was sent.
    drained: bool,
}

impl WorkerState {
    /// Attempts it may still take, to run or to queue.
    fn free_slots(&self) -> u32 {
        self.capacity.saturating_sub(self.running.len() as u32)
    }

    /// A new attempt would wait in its queue: every slot runs one.
    fn would_queue(&self) -> bool {
        self.running.len() as u32 >= self.slots
    }

    /// It holds an attempt of `stage` of `job`.
    fn holds_stage(&self, job: JobId, stage: StageId) -> bool {
        self.running
            .iter()
            .any(|a| a.task.job == job && a.task.stage == stage)
    }
}

/// The worker to run a new attempt on: the one with the most free slots, never a
/// draining one nor `avoid`, nor one that `refuses`; ties go to the lowest id.
fn pick_worker(
    workers: &mut BTreeMap<WorkerId, WorkerState>,
    avoid: Option<WorkerId>,
    refuses: impl Fn(&WorkerState) -> bool,
) -> Option<(WorkerId, &mut WorkerState)> {
    workers
        .iter_mut()
        .filter(|(id, w)| w.free_slots() > 0 && !w.draining && Some(**id) != avoid && !refuses(w))
        .max_by_key(|(id, w)| (w.free_slots(), std::cmp::Reverse(**id)))
        .map(|(id, w)| (*id, w))
}

/// Where a stage's next task runs (see [`StageSpec::preferred`]): a pending task
/// on a worker it prefers that has a slot free, the one with the most; else, within
/// `wait_ms` of the stage's last such launch, nothing, as long as the first pending
/// task prefers a worker that is up; else any.
fn locality(
    workers: &BTreeMap<WorkerId, WorkerState>,
    stage: &StageState,
    first: u32,
    now: u64,
    wait_ms: u64,
) -> Locality {
    if stage.spec.preferred.is_empty() || stage.spec.local_input.is_some() {
        return Locality::Anywhere;
    }
    let free = |w: &WorkerState| w.free_slots() > 0 && !w.draining;
    // Not a task that last failed on that worker: its retry goes elsewhere.
    let local = (stage.pending_on.iter())
        .filter_map(|(id, on)| {
            let task = on
                .iter()
                .find(|p| stage.failed_on[**p as usize] != Some(*id))?;
            Some((*id, *task, workers.get(id)?))
        })
        .filter(|(_, _, w)| free(w))
        .max_by_key(|(id, _, w)| (w.free_slots(), std::cmp::Reverse(*id)));
    if let Some((worker, partition, _)) = local {
        return Locality::Local(worker, partition);
    }
    let waited = stage
        .local_since_ms
        .is_some_and(|since| now >= since.saturating_add(wait_ms));
    let up = (stage
        .spec
        .preferred
        .get(first as usize)
        .into_iter()
        .flatten())
    .any(|id| workers.get(id).is_some_and(|w| !w.draining));
    if waited || !up {
        Locality::Anywhere
    } else {
        Locality::Wait
    }
}

/// Starts the task's next attempt on the worker: numbers it, counts it against the
/// worker's slots, remembers the worker may hold the job's blocks, and asks the runtime
/// to launch it.
fn launch(
    task: TaskId,
    stage: &mut StageState,
    (worker_id, worker): (WorkerId, &mut WorkerState),
    touched: &mut BTreeSet<WorkerId>,
    now: u64,
    out: &mut Vec<Command>,
) -> Run {
    stage.launched += 1;
    let next = &mut stage.attempts[task.partition as usize];
    let attempt = AttemptId {
        task,
        attempt: *next,
    };
    *next += 1;
    worker.running.insert(attempt);
    touched.insert(worker_id);
    out.push(Command::Launch {
        attempt,
        worker: worker_id,
        reads: stage.reads(task.partition),
    });
    Run {
        attempt: attempt.attempt,
        worker: worker_id,
        started_ms: now,
        progress_ms: now,
        speculative: false,
    }
}

/// A tenant's turn at free slots (see [`Scheduler::schedule`]).
struct TenantShare {
    tenant: String,
    /// Attempts it holds.
    held: u32,
    policy: TenantPolicy,
    /// Its stages with tasks to launch, in the order they take slots.
    queue: VecDeque<(JobId, StageId)>,
}

/// How slot time is shared between tenants: stride scheduling over the slot time each
/// has had. Every tenant with a running job has a clock of the slot-milliseconds it
/// has held, divided by its weight; a free slot goes to the tenant whose clock, plus
/// a quantum for each attempt it holds now, is lowest. Over time each gets slot time
/// in proportion to its weight (a tenant behind catches up); within an instant the
/// quanta spread the slots. A tenant that starts (or starts again) after a pause
/// begins level with the others, so a pause earns it no credit to starve them with.
#[derive(Debug, Default)]
struct FairShare {
    /// When `held` was counted.
    since_ms: u64,
    /// Attempts each tenant held from then.
    held: BTreeMap<String, u32>,
    /// Each active tenant's clock: slot-milliseconds for its weight, times
    /// [`WEIGHT_SCALE`].
    clocks: BTreeMap<String, u64>,
}

/// The clocks' fixed-point scale (weights divide it).
const WEIGHT_SCALE: u64 = 1_000;
/// The slot time a held attempt counts as when slots are handed out at one instant.
const QUANTUM_MS: u64 = 100;
/// The largest weight a tenant may have.
pub const WEIGHT_MAX: u32 = 1_000;

impl FairShare {
    /// Charges each tenant for the slots it held since the last count.
    fn advance(&mut self, now: u64, policies: &BTreeMap<String, TenantPolicy>) {
        let elapsed = now.saturating_sub(self.since_ms);
        self.since_ms = now;
        for (tenant, held) in &self.held {
            if let Some(clock) = self.clocks.get_mut(tenant) {
                let weight = policies
                    .get(tenant)
                    .map_or(1, |p| p.weight.clamp(1, WEIGHT_MAX));
                *clock += u64::from(*held) * elapsed * WEIGHT_SCALE / u64::from(weight);
            }
        }
    }

    /// Brings every tenant with a running job up to the lowest clock among them at
    /// least: a tenant that paused starts level with the others, and one that ran
    /// ahead before its pause stays ahead (its short jobs do not wipe what it had).
    /// The clocks of tenants without running jobs that are no longer ahead are
    /// dropped, which keeps the map to the tenants that matter.
    fn start<'a>(&mut self, active: impl Iterator<Item = &'a str>) {
        let active: BTreeSet<&str> = active.collect();
        let level = (self.clocks.iter())
            .filter(|(t, _)| active.contains(t.as_str()))
            .map(|(_, c)| *c)
            .min()
            .unwrap_or_else(|| self.clocks.values().copied().min().unwrap_or(0));
        self.clocks
            .retain(|t, c| active.contains(t.as_str()) || *c > level);
        for tenant in active {
            let clock = self.clocks.entry(tenant.to_string()).or_insert(level);
            *clock = (*clock).max(level);
        }
    }

    /// What orders the tenants for the next free slot: lowest first (ties go to the
    /// first tenant by name).
    fn key(&self, tenant: &str, held: u32, weight: u32) -> u64 {
        let clock = self.clocks.get(tenant).copied().unwrap_or(0);
        let weight = u64::from(weight.clamp(1, WEIGHT_MAX));
        clock + u64::from(held) * QUANTUM_MS * WEIGHT_SCALE / weight
    }
}

/// What [`Scheduler::launch_next`] did.
enum Launched {
    Yes,
    /// The stage has no pending task.
    StageDone,
    /// Slots are free, but none the stage may take.
    NoWorkerForStage,
    /// No slot is free anywhere.
    NoFreeSlot,
}

/// Where a stage's next task runs, as its preferred workers decide.
enum Locality {
    /// This task, on this worker, which it prefers and which has a slot free.
    Local(WorkerId, u32),
    /// No preferred worker has a slot free; the stage waits for one.
    Wait,
    /// The first pending task, on any worker.
    Anywhere,
}

/// Fetch failures per task that each named a new holder and so did not count
/// against [`SchedulerConfig::task_attempt_max`], at most.
const FETCH_FAILURES_MAX: u32 = 16;

/// The scheduler's whole state. See the module documentation.
#[derive(Debug)]
pub struct Scheduler {
    config: SchedulerConfig,
    now_ms: u64,
    workers: BTreeMap<WorkerId, WorkerState>,
    jobs: BTreeMap<JobId, JobState>,
    /// Since when no worker has been registered (`None` while some is).
    no_workers_since: Option<u64>,
    /// A worker went away or an output was lost since the last [`Self::repair`].
    repair_due: bool,
    /// No attempt launches before this time (see [`Scheduler::hold_launches`]).
    hold_until_ms: u64,
    fair: FairShare,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(SchedulerConfig::default())
    }
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            now_ms: 0,
            workers: BTreeMap::new(),
            jobs: BTreeMap::new(),
            no_workers_since: Some(0),
            repair_due: false,
            hold_until_ms: 0,
            fair: FairShare::default(),
        }
    }

    /// Checks that a job can be submitted: ids unique, dependencies known and acyclic
    /// (each stage depends only on stages listed before it), no empty stage.
    pub fn validate(&self, spec: &JobSpec) -> Result<()> {
        if self.jobs.contains_key(&spec.id) {
            return Err(Error::InvalidJob(format!(
                "{} was submitted twice",
                spec.id
            )));
        }
        let active = self
            .jobs
            .values()
            .filter(|j| j.outcome == JobOutcome::Running)
            .count();
        if active >= self.config.jobs_active_max {
            return Err(Error::InvalidJob(format!(
                "{active} jobs are already running, the limit is {}; wait for some to finish",
                self.config.jobs_active_max
            )));
        }
        let mut seen = BTreeSet::new();
        for stage in &spec.stages {
            if stage.tasks == 0 {
                return Err(Error::InvalidJob(format!("{} has no tasks", stage.id)));
            }
            for dep in &stage.depends_on {
                if !seen.contains(dep) {
                    return Err(Error::InvalidJob(format!(
                        "{} depends on {dep}, which is not an earlier stage",
                        stage.id
                    )));
                }
            }
            if !seen.insert(stage.id) {
                return Err(Error::InvalidJob(format!("{} appears twice", stage.id)));
            }
            if !stage.existing.is_empty() && stage.existing.len() != stage.tasks as usize {
                return Err(Error::InvalidJob(format!(
                    "{} has {} tasks but {} existing outputs",
                    stage.id,
                    stage.tasks,
                    stage.existing.len()
                )));
            }
            if !stage.preferred.is_empty() && stage.preferred.len() != stage.tasks as usize {
                return Err(Error::InvalidJob(format!(
                    "{} has {} tasks but preferred workers for {}",
                    stage.id,
                    stage.tasks,
                    stage.preferred.len()
                )));
            }
            // A stage coalesces runs of the partitions it reads, which are its tasks'
            // outputs: those of its last stage are the client's or a cached table's.
            if stage.coalesce
                && (stage.depends_on.is_empty()
                    || !stage.existing.is_empty()
                    || stage.id == spec.final_stage)
            {
                return Err(Error::InvalidJob(format!(
                    "{} may coalesce, but it reads no stage, or its outputs are a cached table's or the job's result",
                    stage.id
                )));
            }
            if let Some(input) = stage.local_input
                && !stage.depends_on.contains(&input)
            {
                return Err(Error::InvalidJob(format!(
                    "{} prefers to run by {input}'s outputs but does not read them",
                    stage.id
                )));
            }
        }
        if !seen.contains(&spec.final_stage) {
            return Err(Error::InvalidJob(format!(
                "final {} is not among the stages",
                spec.final_stage
            )));
        }
        Ok(())
    }

    /// Feeds one event in and returns what must be done because of it.
    pub fn handle(&mut self, event: Event) -> Vec<Command> {
        // A heartbeat only renews the worker's lease: nothing to repair or schedule, so
        // it skips the passes over every task (it arrives every second per worker).
        if let Event::WorkerHeartbeat { worker } = event {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.last_seen_ms = self.now_ms;
            }
            return Vec::new();
        }
        let mut out = Vec::new();
        let tick = matches!(event, Event::Tick { .. });
        let event_worker = match &event {
            Event::WorkerJoined { worker, .. }
            | Event::WorkerDraining { worker }
            | Event::TaskSucceeded { worker, .. }
            | Event::TaskFailed { worker, .. }
            | Event::TaskProgressed { worker, .. } => Some(*worker),
            _ => None,
        };
        match event {
            Event::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.expire_workers(&mut out);
                self.expire_stalled_attempts(&mut out);
                self.fail_jobs_without_workers(&mut out);
            }
            Event::WorkerJoined {
                worker,
                slots,
                held,
            } => {
                let previous = self.workers.insert(
                    worker,
                    WorkerState {
                        slots,
                        capacity: slots
                            .saturating_mul(self.config.queued_per_slot.saturating_add(1)),
                        running: BTreeSet::new(),
                        last_seen_ms: self.now_ms,
                        draining: false,
                        drained: false,
                    },
                );
                assert!(previous.is_none(), "{worker} joined twice");
                self.no_workers_since = None;
                self.adopt(worker, held, &mut out);
            }
            Event::WorkerHeartbeat { .. } => {} // handled above
            Event::WorkerDraining { worker } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    info!(%worker, running = w.running.len(), "worker draining");
                    w.draining = true;
                }
            }
            Event::WorkerLost { worker } => self.lose_worker(worker),
            Event::JobSubmitted(spec) => self.submit(spec, &mut out),
            Event::TaskSucceeded {
                attempt,
                worker,
                stats,
            } => self.task_succeeded(attempt, worker, stats, &mut out),
            Event::TaskFailed {
                attempt,
                worker,
                error,
            } => self.task_failed(attempt, worker, error, &mut out),
            Event::TaskProgressed { attempt, worker } => {
                let now = self.now_ms;
                if let Some(stage) = self.running_stage_mut(attempt, worker)
                    && let TaskState::Running { runs } =
                        &mut stage.tasks[attempt.task.partition as usize]
                    && let Some(run) = runs.iter_mut().find(|r| r.attempt == attempt.attempt)
                {
                    run.progress_ms = now;
                }
            }
            Event::JobCancelled { job } => {
                if self.job_outcome(job) == Some(&JobOutcome::Running) {
                    self.end_job(job, JobOutcome::Cancelled, &mut out);
                    out.push(Command::JobCancelled { job });
                }
            }
            Event::JobAborted { job, message } => {
                if self.job_outcome(job) == Some(&JobOutcome::Running) {
                    self.end_job(job, JobOutcome::Failed(message.clone()), &mut out);
                    out.push(Command::JobFailed { job, message });
                }
            }
            Event::JobReleased { job } => {
                if self.job_outcome(job) == Some(&JobOutcome::Running) {
                    // Releasing a running job is a cancel followed by a release.
                    self.end_job(job, JobOutcome::Cancelled, &mut out);
                    out.push(Command::JobCancelled { job });
                }
                if let Some(state) = self.jobs.remove(&job)
                    && !state.touched.is_empty()
                {
                    out.push(Command::ReleaseBlocks {
                        job,
                        workers: state.touched.into_iter().collect(),
                    });
                }
            }
        }
        self.repair(&mut out);
        self.schedule(&mut out);
        self.speculate(&mut out);
        self.release_drained(&mut out);
        let involved = event_worker
            .into_iter()
            .chain(out.iter().filter_map(|c| match c {
                Command::Launch { worker, .. } | Command::Kill { worker, .. } => Some(*worker),
                _ => None,
            }))
            .collect();
        self.check_invariants(&involved, tick);
        out
    }

    /// Launches nothing before `until_ms`: a new leader gives the workers time to come
    /// back and report the outputs they hold, so that tasks they already ran are not
    /// run again. The first [`Event::Tick`] after it launches what waited.
    pub fn hold_launches(&mut self, until_ms: u64) {
        self.hold_until_ms = until_ms;
    }

    /// Moves the clock without acting on it (the next [`Event::Tick`] does), so that
    /// events between ticks are stamped with the right time.
    pub fn set_clock(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
    }

    /// The scheduler's clock: the latest tick.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// The outcome of a job the scheduler still knows.
    pub fn job_outcome(&self, job: JobId) -> Option<&JobOutcome> {
        self.jobs.get(&job).map(|j| &j.outcome)
    }

    /// The state of every task of a stage, in partition order.
    pub fn stage_tasks(&self, job: JobId, stage: StageId) -> Option<&[TaskState]> {
        Some(&self.jobs.get(&job)?.stages.get(&stage)?.tasks)
    }

    /// How many of a stage's tasks are pending, running and done, at no cost that grows
    /// with the stage.
    pub fn stage_counts(&self, job: JobId, stage: StageId) -> Option<StageCounts> {
        let s = self.jobs.get(&job)?.stages.get(&stage)?;
        let pending = s.pending.len() as u32;
        Some(StageCounts {
            pending,
            running: s.spec.tasks - pending - s.done,
            done: s.done,
            coalesced: s.absorbed,
        })
    }

    /// Sums over a stage's done tasks, at no cost that grows with the stage.
    pub fn stage_totals(&self, job: JobId, stage: StageId) -> Option<TaskTotals> {
        Some(self.jobs.get(&job)?.stages.get(&stage)?.totals.get())
    }

    /// How many attempts a stage has launched, lost to failures and speculated.
    pub fn stage_attempts(&self, job: JobId, stage: StageId) -> Option<StageAttempts> {
        let s = self.jobs.get(&job)?.stages.get(&stage)?;
        Some(StageAttempts {
            launched: s.launched,
            failed: s.failed,
            speculative: s.speculative,
        })
    }

    /// The attempts of a stage that ended, in the order they ended.
    pub fn stage_ended_attempts(&self, job: JobId, stage: StageId) -> Option<&[EndedAttempt]> {
        Some(&self.jobs.get(&job)?.stages.get(&stage)?.ended)
    }

    /// When a job was submitted, on the scheduler's clock.
    pub fn job_submitted_ms(&self, job: JobId) -> Option<u64> {
        Some(self.jobs.get(&job)?.submitted_ms)
    }

    /// Where each partition of a finished stage's output lives, in partition order.
    /// `None` unless every task of the stage is done.
    pub fn stage_outputs(&self, job: JobId, stage: StageId) -> Option<Vec<Output>> {
        let outputs = self.stage_outputs_and_rows(job, stage)?;
        Some(outputs.into_iter().map(|(output, _)| output).collect())
    }

    /// [`Scheduler::stage_outputs`], each with the rows its task wrote: `None` for an
    /// output an earlier job wrote (a cached table's), whose count this job does not
    /// know. A reader skips the outputs of no rows: in a wide exchange most map tasks
    /// may have read nothing.
    pub fn stage_outputs_and_rows(
        &self,
        job: JobId,
        stage: StageId,
    ) -> Option<Vec<(Output, Option<u64>)>> {
        let tasks = self.stage_tasks(job, stage)?;
        tasks
            .iter()
            .map(|t| match t {
                TaskState::Done {
                    attempt,
                    worker,
                    origin,
                    stats,
                    ..
                } => Some((
                    Output {
                        attempt: *attempt,
                        worker: *worker,
                        origin: origin.unwrap_or((job, stage)),
                    },
                    (origin.is_none() || *origin == Some((job, stage)))
                        .then_some(stats.output_rows),
                )),
                // Its rows are in the output of the task it was coalesced into.
                TaskState::Absorbed { .. } => Some((
                    Output {
                        attempt: 0,
                        worker: WorkerId::NOWHERE,
                        origin: (job, stage),
                    },
                    Some(0),
                )),
                _ => None,
            })
            .collect()
    }

    /// The jobs still running.
    pub fn running_jobs(&self) -> Vec<JobId> {
        self.jobs
            .iter()
            .filter(|(_, j)| j.outcome == JobOutcome::Running)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The attempts running on a worker.
    pub fn running_on(&self, worker: WorkerId) -> usize {
        self.workers.get(&worker).map_or(0, |w| w.running.len())
    }

    /// Whether the worker is draining.
    pub fn is_draining(&self, worker: WorkerId) -> bool {
        self.workers.get(&worker).is_some_and(|w| w.draining)
    }

    /// Total slots of the live workers.
    pub fn total_slots(&self) -> u32 {
        self.workers.values().map(|w| w.slots).sum()
    }

    /// Forgets a job that has ended (for history limits); its blocks must be released first.
    pub fn forget(&mut self, job: JobId) {
        if let Some(state) = self.jobs.get(&job)
            && state.outcome != JobOutcome::Running
        {
            self.jobs.remove(&job);
        }
    }

    fn submit(&mut self, spec: JobSpec, out: &mut Vec<Command>) {
        if let Err(e) = self.validate(&spec) {
            warn!(job = %spec.id, "refusing job: {e}");
            out.push(Command::JobFailed {
                job: spec.id,
                message: e.to_string(),
            });
            return;
        }
        let stages = spec
            .stages
            .iter()
            .map(|s| (s.id, StageState::new(s)))
            .collect();
        // Outputs it reuses may be gone already.
        self.repair_due |= spec.stages.iter().any(|s| !s.existing.is_empty());
        let job = JobState {
            stages,
            final_stage: spec.final_stage,
            tenant: spec.tenant,
            priority: spec.priority,
            outcome: JobOutcome::Running,
            touched: BTreeSet::new(),
            submitted_ms: self.now_ms,
        };
        self.jobs.insert(spec.id, job);
    }

    /// Workers silent past the heartbeat timeout are lost.
    fn expire_workers(&mut self, out: &mut Vec<Command>) {
        let timeout = self.config.heartbeat_timeout_ms;
        let silent: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| self.now_ms.saturating_sub(w.last_seen_ms) > timeout)
            .map(|(id, _)| *id)
            .collect();
        for worker in silent {
            warn!(%worker, timeout_ms = timeout, "no heartbeat within the timeout; worker lost");
            self.lose_worker(worker);
            out.push(Command::DropWorker { worker });
        }
    }

    /// Every attempt the workers hold (running or queued), with its worker.
    fn running_attempts(&self) -> Vec<(AttemptId, WorkerId)> {
        self.workers
            .iter()
            .flat_map(|(id, w)| w.running.iter().map(move |a| (*a, *id)))
            .collect()
    }

    /// Fails, as a transient fault, every running attempt whose worker has reported no
    /// work done by it for the progress timeout: a worker that heartbeats but whose task
    /// is stuck must not hold its job forever. The retry prefers another worker. Costs
    /// time in proportion to the running attempts, which the slots bound.
    fn expire_stalled_attempts(&mut self, out: &mut Vec<Command>) {
        let timeout = self.config.task_progress_timeout_ms;
        let now = self.now_ms;
        for (attempt, worker) in self.running_attempts() {
            let stalled = self
                .running_stage_mut(attempt, worker)
                .map(|stage| &stage.tasks[attempt.task.partition as usize])
                .is_some_and(|task| match task {
                    TaskState::Running { runs } => runs.iter().any(|r| {
                        r.attempt == attempt.attempt && now.saturating_sub(r.progress_ms) > timeout
                    }),
                    _ => false,
                });
            if stalled {
                warn!(%attempt, %worker, timeout_ms = timeout, "the attempt made no progress within the timeout; retrying it elsewhere");
                out.push(Command::Kill { attempt, worker });
                let message = format!(
                    "{attempt} made no progress on {worker} for {} s (the task progress timeout)",
                    timeout / 1000
                );
                self.task_failed(
                    attempt,
                    worker,
                    TaskError::new(ErrorKind::Transient, message),
                    out,
                );
            }
        }
    }

    /// Fails the running jobs once no worker has been registered for the grace period,
    /// so a job never waits forever for workers that are not coming. A job submitted
    /// while there were no workers gets the whole grace period too.
    fn fail_jobs_without_workers(&mut self, out: &mut Vec<Command>) {
        let grace = self.config.no_worker_grace_ms;
        let Some(since) = self.no_workers_since else {
            return;
        };
        if self.now_ms.saturating_sub(since) < grace {
            return;
        }
        let expired: Vec<JobId> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.outcome == JobOutcome::Running
                    && self.now_ms.saturating_sub(j.submitted_ms) >= grace
            })
            .map(|(id, _)| *id)
            .collect();
        for job in expired {
            let message = format!(
                "no worker has been registered for {} s; start workers with `drove worker --coordinator ADDR`, then submit the job again",
                grace / 1000
            );
            warn!(%job, "failing a job: no workers");
            self.end_job(job, JobOutcome::Failed(message.clone()), out);
            out.push(Command::JobFailed { job, message });
        }
    }

    fn task_succeeded(
        &mut self,
        attempt: AttemptId,
        worker: WorkerId,
        stats: TaskStats,
        out: &mut Vec<Command>,
    ) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.running.remove(&attempt);
        }
        let now = self.now_ms;
        let Some(stage) = self.running_stage_mut(attempt, worker) else {
            return;
        };
        let mut stats = stats;
        stage.add_sizes(&std::mem::take(&mut stats.partition_bytes));
        let done = TaskState::Done {
            attempt: attempt.attempt,
            worker,
            stats,
            origin: None,
        };
        let partition = attempt.task.partition as usize;
        let TaskState::Running { runs } = stage.set(partition, done) else {
            unreachable!("running_stage_mut finds running tasks only");
        };
        let (won, lost): (Vec<Run>, Vec<Run>) =
            runs.iter().partition(|r| r.attempt == attempt.attempt);
        stage.record_ended(partition, won, now, AttemptEnd::Succeeded);
        stage.record_ended(partition, lost.clone(), now, AttemptEnd::Stopped);
        debug!(%attempt, %worker, "task done");
        // The twin of a speculated task lost the race: stop it.
        for run in &lost {
            let twin = AttemptId {
                task: attempt.task,
                attempt: run.attempt,
            };
            if let Some(w) = self.workers.get_mut(&run.worker) {
                w.running.remove(&twin);
            }
            out.push(Command::Kill {
                attempt: twin,
                worker: run.worker,
            });
        }
        let job = attempt.task.job;
        if self.jobs[&job].stages.values().all(StageState::is_done) {
            self.end_job(job, JobOutcome::Succeeded, out);
            out.push(Command::JobSucceeded { job });
        }
    }

    /// The outputs a joining worker holds (see [`Event::WorkerJoined`]). A held output
    /// stands for a task still pending (or done where it is lost): its stage is not
    /// done, so nothing read that task yet. Whatever no task takes is dropped; either
    /// way its attempt number is spent.
    fn adopt(&mut self, worker: WorkerId, outputs: Vec<HeldOutput>, out: &mut Vec<Command>) {
        let mut dropped = Vec::new();
        let mut completed = BTreeSet::new();
        for held in outputs {
            let task = held.task;
            let attempt = AttemptId {
                task,
                attempt: held.attempt,
            };
            let p = task.partition as usize;
            let job = (self.jobs.get_mut(&task.job)).filter(|j| j.outcome == JobOutcome::Running);
            let Some((job, stage)) = job.and_then(|job| {
                let stage = job
                    .stages
                    .get_mut(&task.stage)
                    .filter(|s| p < s.tasks.len())?;
                Some((&mut job.touched, stage))
            }) else {
                dropped.push(attempt);
                continue;
            };
            // Its number is spent: a later attempt of the task numbers past it.
            let next = &mut stage.attempts[p];
            if *next <= held.attempt {
                stage.skipped += held.attempt + 1 - *next;
                *next = held.attempt + 1;
            }
            let free = match &stage.tasks[p] {
                // Whether the scheduler that launched it coalesced the task with
                // others is not known: a coalescing stage runs it again.
                TaskState::Pending => !stage.spec.coalesce,
                // Done where a worker that is gone kept it: the same attempt's output,
                // kept by that worker's process under its new identity, takes its
                // place. Another attempt's does not: that attempt's end is not the
                // one this scheduler recorded.
                TaskState::Done {
                    worker, attempt, ..
                } => !self.workers.contains_key(worker) && *attempt == held.attempt,
                TaskState::Running { .. } | TaskState::Absorbed { .. } => false,
            };
            if !free {
                dropped.push(attempt);
                continue;
            }
            let done = TaskState::Done {
                attempt: held.attempt,
                worker,
                stats: TaskStats {
                    output_rows: held.rows,
                    output_bytes: held.bytes,
                    ..TaskStats::default()
                },
                origin: Some((task.job, task.stage)),
            };
            stage.set(p, done);
            stage.sizes_unknown = true;
            job.insert(worker);
            completed.insert(task.job);
        }
        debug!(%worker, dropped = dropped.len(), "held outputs taken");
        for job in completed {
            if self.jobs[&job].stages.values().all(StageState::is_done) {
                self.end_job(job, JobOutcome::Succeeded, out);
                out.push(Command::JobSucceeded { job });
            }
        }
        if !dropped.is_empty() {
            out.push(Command::DropOutputs {
                worker,
                outputs: dropped,
            });
        }
    }

    fn task_failed(
        &mut self,
        attempt: AttemptId,
        worker: WorkerId,
        error: TaskError,
        out: &mut Vec<Command>,
    ) {
        if let Some(w) = self.workers.get_mut(&worker) {
            w.running.remove(&attempt);
        }
        let now = self.now_ms;
        let Some(stage) = self.running_stage_mut(attempt, worker) else {
            return;
        };
        let partition = attempt.task.partition as usize;
        stage.drop_run(partition, now, AttemptEnd::Failed, |r| {
            r.attempt != attempt.attempt
        });
        stage.failed_on[partition] = Some(worker);
        stage.failed += 1;
        let forgiven = error.fetch.as_ref().is_some_and(|fetch| {
            let elsewhere = stage.fetch_from[partition] != Some(fetch.worker);
            stage.fetch_from[partition] = Some(fetch.worker);
            elsewhere && stage.fetch_forgiven[partition] < FETCH_FAILURES_MAX
        });
        if forgiven {
            stage.fetch_forgiven[partition] += 1;
        } else {
            stage.failures[partition] += 1;
        }
        let failures = stage.failures[partition];
        let job = attempt.task.job;
        let attempt_max = self.config.task_attempt_max;
        if !error.kind.is_retryable() {
            info!(%attempt, "task failed with a user error; failing the job");
            let message = format!("{} failed on {worker}: {}", attempt.task, error.message);
            self.end_job(job, JobOutcome::Failed(message.clone()), out);
            out.push(Command::JobFailed { job, message });
        } else if failures >= attempt_max {
            let message = format!(
                "{} failed {failures} times (the limit is {attempt_max}); last error on {worker}: {}",
                attempt.task, error.message
            );
            self.end_job(job, JobOutcome::Failed(message.clone()), out);
            out.push(Command::JobFailed { job, message });
        } else if let Some(fetch) = error.fetch {
            // The block is gone from its holder, and whatever else of that stage the
            // holder kept is likely gone with it (it restarted, or lost its memory):
            // re-run those producers, then this task, which waits for them.
            warn!(%attempt, %worker, stage = %fetch.stage, map = fetch.map_partition, holder = %fetch.worker, "fetch failure; re-running the holder's outputs");
            let producers = self
                .jobs
                .get_mut(&job)
                .and_then(|j| j.stages.get_mut(&fetch.stage));
            if let Some(producers) = producers {
                for partition in 0..producers.tasks.len() {
                    if matches!(producers.tasks[partition], TaskState::Done { worker, .. } if worker == fetch.worker)
                    {
                        producers.set(partition, TaskState::Pending);
                    }
                }
                self.repair_due = true;
            }
        } else {
            warn!(%attempt, %worker, error = %error.message, "task failed; retrying");
        }
    }

    /// The stage of a running attempt's task on that worker, in a running job.
    /// Anything else is a stale report.
    fn running_stage_mut(
        &mut self,
        attempt: AttemptId,
        worker: WorkerId,
    ) -> Option<&mut StageState> {
        let job = self.jobs.get_mut(&attempt.task.job)?;
        if job.outcome != JobOutcome::Running {
            return None;
        }
        let stage = job.stages.get_mut(&attempt.task.stage)?;
        match stage.tasks.get(attempt.task.partition as usize)? {
            TaskState::Running { runs }
                if runs
                    .iter()
                    .any(|r| r.attempt == attempt.attempt && r.worker == worker) =>
            {
                Some(stage)
            }
            _ => {
                debug!(%attempt, %worker, "ignoring a report from a superseded attempt");
                None
            }
        }
    }

    /// Removes a worker; its attempts stop counting. What it held is recomputed by
    /// [`Self::repair`] where still needed.
    fn lose_worker(&mut self, worker: WorkerId) {
        let Some(lost) = self.workers.remove(&worker) else {
            return;
        };
        info!(%worker, running = lost.running.len(), "worker removed from scheduling");
        let now = self.now_ms;
        if self.workers.is_empty() {
            self.no_workers_since = Some(self.now_ms);
        }
        self.repair_due = true;
        for job in self.jobs.values_mut() {
            if job.outcome == JobOutcome::Running {
                job.touched.remove(&worker);
            }
        }
        // Every run on the worker is in its running set (an invariant), except those
        // of jobs that ended, which are no longer scheduled.
        for attempt in lost.running {
            let stage = self
                .jobs
                .get_mut(&attempt.task.job)
                .filter(|j| j.outcome == JobOutcome::Running)
                .and_then(|j| j.stages.get_mut(&attempt.task.stage));
            if let Some(stage) = stage {
                stage.drop_run(
                    attempt.task.partition as usize,
                    now,
                    AttemptEnd::Stopped,
                    |r| r.worker != worker,
                );
            }
        }
    }

    /// Lineage recovery, repeated until nothing changes: a needed output whose worker
    /// is gone is recomputed, which makes its stage not done, which makes that stage's
    /// own inputs needed; and an attempt whose inputs are no longer all there is
    /// stopped and re-queued, since it would fail fetching them. It walks every task,
    /// so it runs only after a worker went away or an output was lost.
    fn repair(&mut self, out: &mut Vec<Command>) {
        if !std::mem::take(&mut self.repair_due) {
            return;
        }
        let now = self.now_ms;
        let workers = &mut self.workers;
        for (job_id, job) in &mut self.jobs {
            if job.outcome != JobOutcome::Running {
                continue;
            }
            loop {
                let needed = job.needed_stages();
                let runnable: BTreeSet<StageId> = job
                    .stages
                    .values()
                    .filter(|s| job.is_runnable(&s.spec))
                    .map(|s| s.spec.id)
                    .collect();
                let mut changed = false;
                for (stage_id, stage) in &mut job.stages {
                    let runnable = runnable.contains(stage_id);
                    for partition in 0..stage.tasks.len() {
                        match &mut stage.tasks[partition] {
                            TaskState::Done { worker, .. }
                                if needed.contains(stage_id) && !workers.contains_key(worker) =>
                            {
                                debug!(job = %job_id, stage = %stage_id, partition, "output lost; recomputing");
                                stage.set(partition, TaskState::Pending);
                                changed = true;
                            }
                            TaskState::Running { runs } if !runnable => {
                                let runs = std::mem::take(runs);
                                for run in &runs {
                                    let attempt = AttemptId {
                                        task: TaskId {
                                            job: *job_id,
                                            stage: *stage_id,
                                            partition: partition as u32,
                                        },
                                        attempt: run.attempt,
                                    };
                                    if let Some(w) = workers.get_mut(&run.worker) {
                                        w.running.remove(&attempt);
                                    }
                                    out.push(Command::Kill {
                                        attempt,
                                        worker: run.worker,
                                    });
                                }
                                stage.record_ended(partition, runs, now, AttemptEnd::Stopped);
                                stage.set(partition, TaskState::Pending);
                                changed = true;
                            }
                            _ => {}
                        }
                    }
                }
                if !changed {
                    break;
                }
            }
        }
    }

    fn end_job(&mut self, job: JobId, outcome: JobOutcome, out: &mut Vec<Command>) {
        let Some(state) = self.jobs.get_mut(&job) else {
            return;
        };
        assert_eq!(state.outcome, JobOutcome::Running, "{job} ended twice");
        let succeeded = outcome == JobOutcome::Succeeded;
        state.outcome = outcome;
        // Running attempts of an ended job no longer count against their workers' slots;
        // whatever they report later is ignored. Releasing the job's blocks stops them.
        for w in self.workers.values_mut() {
            w.running.retain(|a| a.task.job != job);
        }
        if !succeeded && !state.touched.is_empty() {
            out.push(Command::ReleaseBlocks {
                job,
                workers: std::mem::take(&mut state.touched).into_iter().collect(),
            });
        }
    }

    /// Hands pending tasks of runnable stages to free slots, each task to the worker
    /// with the most free slots. Between tenants, slot time is shared by weight (see
    /// [`FairShare`]): the next task goes to the tenant furthest behind, among those
    /// under their slot quota; within a tenant, to its jobs by priority, then oldest
    /// first, at most `jobs_max` of them at once. A stage with no more tasks than the
    /// cluster has slots is not queued behind an attempt of its own on a busy worker:
    /// its tasks could each have a slot, and queued there they would run one after the
    /// other while another worker may be about to idle (a join stage's two long tasks
    /// on one worker made TPC-H's Q7 take half again as long); it waits for a slot or
    /// a queue elsewhere. It costs time in proportion to the running attempts, the
    /// stages of running jobs and the tasks it launches.
    fn schedule(&mut self, out: &mut Vec<Command>) {
        let now = self.now_ms;
        if now < self.hold_until_ms {
            return;
        }
        let cluster_slots: u64 = self.workers.values().map(|w| u64::from(w.slots)).sum();
        let mut held = self.tenant_usage();
        self.fair.advance(now, &self.config.tenants);
        let mut shares = self.tenant_queues(&held);
        self.fair.start(shares.iter().map(|s| s.tenant.as_str()));
        self.fill(&mut shares, cluster_slots, out);
        for share in shares {
            held.insert(share.tenant, share.held);
        }
        self.fair.held = held;
    }

    /// Launches tasks from the tenants' queues until no slot is free or no task can
    /// take one.
    fn fill(&mut self, shares: &mut [TenantShare], cluster_slots: u64, out: &mut Vec<Command>) {
        loop {
            if !self
                .workers
                .values()
                .any(|w| w.free_slots() > 0 && !w.draining)
            {
                return;
            }
            let fair = &self.fair;
            let Some(share) = shares
                .iter_mut()
                .filter(|s| !s.queue.is_empty() && s.policy.slots_max.is_none_or(|m| s.held < m))
                .min_by_key(|s| fair.key(&s.tenant, s.held, s.policy.weight))
            else {
                return;
            };
            let (job_id, stage_id) = share.queue[0];
            match self.launch_next(job_id, stage_id, cluster_slots, out) {
                Launched::Yes => share.held += 1,
                // Only this stage waits: another may take a free slot.
                Launched::StageDone | Launched::NoWorkerForStage => {
                    share.queue.pop_front();
                }
                Launched::NoFreeSlot => return,
            }
        }
    }

    /// Each tenant with a running job: what it holds now, its policy, and its
    /// runnable stages with pending tasks in the order they take slots.
    fn tenant_queues(&self, held: &BTreeMap<String, u32>) -> Vec<TenantShare> {
        let mut jobs: Vec<(&str, std::cmp::Reverse<i32>, JobId)> = (self.jobs.iter())
            .filter(|(_, j)| j.outcome == JobOutcome::Running)
            .map(|(id, j)| (j.tenant.as_str(), std::cmp::Reverse(j.priority), *id))
            .collect();
        jobs.sort_unstable();
        let mut shares: Vec<TenantShare> = Vec::new();
        let mut jobs_taken = 0;
        for (tenant, _, job_id) in jobs {
            if shares.last().is_none_or(|s| s.tenant != tenant) {
                shares.push(TenantShare {
                    tenant: tenant.to_string(),
                    held: held.get(tenant).copied().unwrap_or(0),
                    policy: self.config.tenants.get(tenant).copied().unwrap_or_default(),
                    queue: VecDeque::new(),
                });
                jobs_taken = 0;
            }
            let share = shares.last_mut().expect("pushed above");
            if share.policy.jobs_max.is_some_and(|m| jobs_taken >= m) {
                continue;
            }
            jobs_taken += 1;
            let job = &self.jobs[&job_id];
            for (stage_id, stage) in &job.stages {
                if !stage.pending.is_empty() && job.is_runnable(&stage.spec) {
                    share.queue.push_back((job_id, *stage_id));
                }
            }
        }
        shares
    }

    /// Launches the next pending task of a stage, on a worker with a free slot (the
    /// one holding its local input, or one it prefers, if it has one free).
    fn launch_next(
        &mut self,
        job_id: JobId,
        stage_id: StageId,
        cluster_slots: u64,
        out: &mut Vec<Command>,
    ) -> Launched {
        let now = self.now_ms;
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Launched::StageDone;
        };
        job.coalesce(stage_id, cluster_slots, self.config.coalesce);
        let Some(&first) = job.stages[&stage_id].pending.first() else {
            return Launched::StageDone;
        };
        let stage = job.stages.get_mut(&stage_id).expect("found above");
        stage.local_since_ms.get_or_insert(now);
        let (partition, preferred_worker) = match locality(
            &self.workers,
            stage,
            first,
            now,
            self.config.locality_wait_ms,
        ) {
            Locality::Local(worker, partition) => {
                stage.local_since_ms = Some(now);
                (partition, Some(worker))
            }
            Locality::Wait => return Launched::NoWorkerForStage,
            Locality::Anywhere => (first, None),
        };
        let stage = &job.stages[&stage_id];
        let local_input = stage.spec.local_input;
        let spread = stage.running_tasks() as u64 <= cluster_slots;
        let refuses =
            |w: &WorkerState| spread && w.would_queue() && w.holds_stage(job_id, stage_id);
        let p = partition as usize;
        let local = (local_input.and_then(|input| job.holder(input, p)))
            .or(preferred_worker)
            .filter(|id| {
                self.workers
                    .get(id)
                    .is_some_and(|w| w.free_slots() > 0 && !w.draining)
            });
        let stage = job.stages.get_mut(&stage_id).expect("found above");
        let worker = match local {
            Some(id) => self.workers.get_mut(&id).map(|w| (id, w)),
            // Elsewhere than where it last failed, if any other worker has a free slot.
            None => {
                let failed = stage.failed_on[p];
                let elsewhere = self
                    .workers
                    .iter()
                    .any(|(id, w)| w.free_slots() > 0 && !w.draining && Some(*id) != failed);
                pick_worker(&mut self.workers, failed.filter(|_| elsewhere), refuses)
            }
        };
        let Some(worker) = worker else {
            return if self
                .workers
                .values()
                .any(|w| w.free_slots() > 0 && !w.draining)
            {
                Launched::NoWorkerForStage
            } else {
                Launched::NoFreeSlot
            };
        };
        let id = TaskId {
            job: job_id,
            stage: stage_id,
            partition,
        };
        let run = launch(id, stage, worker, &mut job.touched, now, out);
        stage.set(p, TaskState::Running { runs: vec![run] });
        Launched::Yes
    }

    /// Attempts each tenant holds now (running or queued on workers), by tenant.
    pub fn tenant_usage(&self) -> BTreeMap<String, u32> {
        let mut held: BTreeMap<&str, u32> = BTreeMap::new();
        for w in self.workers.values() {
            for a in &w.running {
                if let Some(job) = self.jobs.get(&a.task.job) {
                    *held.entry(job.tenant.as_str()).or_default() += 1;
                }
            }
        }
        // One name copied per tenant, not per attempt.
        held.into_iter().map(|(t, n)| (t.to_string(), n)).collect()
    }

    /// Gives a slow task a twin on another worker with a free slot: slow means running
    /// longer than `multiplier` times its stage's median task time (and `min_ms`), once
    /// `quantile` of the stage is done. A stage whose quorum is all of its tasks (a
    /// single-task stage, say) is compared with the median of the job's done tasks
    /// instead. Whichever attempt finishes first wins. It looks at the running
    /// attempts only, which the slots bound, and at medians of stages that have one
    /// running past `min_ms`.
    fn speculate(&mut self, out: &mut Vec<Command>) {
        let Some(config) = &self.config.speculation else {
            return;
        };
        let now = self.now_ms;
        // A twin counts against its tenant's slot quota too: what each tenant holds,
        // counted only when some tenant has a quota.
        let quotas = (self.config.tenants.values()).any(|p| p.slots_max.is_some());
        let mut held = quotas.then(|| self.tenant_usage());
        for (attempt, worker) in self.running_attempts() {
            let task = attempt.task;
            let Some(job) = self.jobs.get_mut(&task.job) else {
                continue;
            };
            let Some(stage) = job.stages.get(&task.stage) else {
                continue;
            };
            let TaskState::Running { runs } = &stage.tasks[task.partition as usize] else {
                continue;
            };
            let [first] = runs[..] else { continue };
            let running_ms = now.saturating_sub(first.started_ms);
            if first.worker != worker || running_ms <= config.min_ms {
                continue;
            }
            let tasks = stage.running_tasks();
            let quorum = ((tasks as f64 * config.quantile) as usize).max(1);
            let median = if stage.times.len >= quorum {
                stage.times.median()
            } else if quorum >= tasks {
                // Its stage could only reach the quorum once this very task is done.
                let mut all = RunTimes::default();
                for s in job.stages.values() {
                    all.merge(&s.times);
                }
                all.median()
            } else {
                None
            };
            let Some(median) = median else { continue };
            let slow_after = config
                .min_ms
                .max((median as f64 * config.multiplier) as u64);
            if running_ms <= slow_after {
                continue;
            }
            let slots_max = (self.config.tenants.get(&job.tenant)).and_then(|p| p.slots_max);
            let holding = held.as_ref().and_then(|h| h.get(&job.tenant)).copied();
            if slots_max.is_some_and(|max| holding.unwrap_or(0) >= max) {
                continue;
            }
            let Some(twin_worker) = pick_worker(&mut self.workers, Some(first.worker), |_| false)
            else {
                return;
            };
            let stage = job.stages.get_mut(&task.stage).expect("found above");
            let run = Run {
                speculative: true,
                ..launch(task, stage, twin_worker, &mut job.touched, now, out)
            };
            info!(%task, attempt = run.attempt, worker = %run.worker, running_ms, median_ms = median, "speculating a slow task");
            stage.speculative += 1;
            if let Some(held) = &mut held {
                *held.entry(job.tenant.clone()).or_default() += 1;
            }
            if let TaskState::Running { runs } = &mut stage.tasks[task.partition as usize] {
                runs.push(run);
            }
        }
    }

    /// Tells each draining worker that runs nothing and holds nothing still needed
    /// (inputs of unfinished stages, results not yet read) that it may go.
    fn release_drained(&mut self, out: &mut Vec<Command>) {
        for (id, w) in &mut self.workers {
            if !w.draining || w.drained || !w.running.is_empty() {
                continue;
            }
            let holds_needed = self.jobs.values().any(|job| {
                let needed = match job.outcome {
                    JobOutcome::Running => job.needed_stages(),
                    JobOutcome::Succeeded => BTreeSet::from([job.final_stage]),
                    _ => return false,
                };
                needed.iter().any(|s| {
                    job.stages[s]
                        .tasks
                        .iter()
                        .any(|t| matches!(t, TaskState::Done { worker, .. } if worker == id))
                })
            });
            if !holds_needed {
                info!(worker = %id, "drained; it may leave");
                w.drained = true;
                out.push(Command::WorkerDrained { worker: *id });
            }
        }
    }

    /// Asserts what must hold after an event; a failure is a bug in drove, and its
    /// message names the broken invariant. With `check_all_invariants` it walks every
    /// task; otherwise it checks the workers the event involved (all of them on a
    /// tick), which the slots bound.
    fn check_invariants(&self, involved: &BTreeSet<WorkerId>, tick: bool) {
        let full = self.config.check_all_invariants;
        for (id, w) in &self.workers {
            if full || tick || involved.contains(id) {
                self.check_worker(*id, w);
            }
        }
        if !full {
            return;
        }
        for (tenant, held) in self.tenant_usage() {
            let max = (self.config.tenants.get(&tenant)).and_then(|p| p.slots_max);
            invariant(max.is_none_or(|m| held <= m), "tenant-slots", || {
                format!("tenant {tenant} holds {held} attempts, over its quota {max:?}")
            });
        }
        for (job_id, job) in &self.jobs {
            for (stage_id, stage) in &job.stages {
                let done = (stage.tasks.iter())
                    .filter(|t| matches!(t, TaskState::Done { .. } | TaskState::Absorbed { .. }));
                let pending = (0..stage.spec.tasks)
                    .filter(|p| stage.tasks[*p as usize] == TaskState::Pending)
                    .collect::<BTreeSet<u32>>();
                invariant(
                    stage.done as usize == done.count() && stage.pending == pending,
                    "stage-counts",
                    || format!("{job_id} {stage_id} counts its done and pending tasks wrong"),
                );
                let mut pending_on: BTreeMap<WorkerId, BTreeSet<u32>> = BTreeMap::new();
                for p in &pending {
                    for w in stage.spec.preferred.get(*p as usize).into_iter().flatten() {
                        pending_on.entry(*w).or_default().insert(*p);
                    }
                }
                invariant(
                    (stage.pending_on.iter())
                        .filter(|(_, on)| !on.is_empty())
                        .eq(pending_on.iter()),
                    "stage-counts",
                    || {
                        format!(
                            "{job_id} {stage_id} indexes its pending tasks' preferred workers wrong"
                        )
                    },
                );
                invariant(
                    stage.launched + stage.skipped == stage.attempts.iter().sum::<u32>()
                        && stage.failed
                            == stage.failures.iter().sum::<u32>()
                                + stage.fetch_forgiven.iter().sum::<u32>(),
                    "stage-counts",
                    || format!("{job_id} {stage_id} counts its attempts wrong"),
                );
                invariant(
                    stage.times.len == stage.tasks.iter().filter_map(own_run_time).count(),
                    "stage-counts",
                    || format!("{job_id} {stage_id} keeps run times of tasks not done"),
                );
                self.check_attempt_log(*job_id, *stage_id, stage);
                check_runs(*job_id, *stage_id, stage);
                let mut totals = Totals::default();
                for task in &stage.tasks {
                    if let TaskState::Done { stats, .. } = task {
                        totals.change(stats, true);
                    }
                }
                invariant(totals.get() == stage.totals.get(), "stage-counts", || {
                    format!("{job_id} {stage_id} sums its done tasks' stats wrong")
                });
            }
            if job.outcome != JobOutcome::Running {
                continue;
            }
            let needed = job.needed_stages();
            for (stage_id, stage) in &job.stages {
                for (partition, task) in stage.tasks.iter().enumerate() {
                    match task {
                        TaskState::Running { runs } => {
                            invariant((1..=2).contains(&runs.len()), "runs-per-task", || {
                                format!(
                                    "{job_id} {stage_id} task {partition} has {} runs",
                                    runs.len()
                                )
                            });
                            invariant(job.is_runnable(&stage.spec), "inputs-done", || {
                                format!("{job_id} {stage_id} runs before its inputs are done")
                            });
                            for r in runs {
                                let attempt = AttemptId {
                                    task: TaskId {
                                        job: *job_id,
                                        stage: *stage_id,
                                        partition: partition as u32,
                                    },
                                    attempt: r.attempt,
                                };
                                invariant(
                                    self.workers
                                        .get(&r.worker)
                                        .is_some_and(|w| w.running.contains(&attempt)),
                                    "runs-agree",
                                    || {
                                        format!(
                                            "{attempt} runs on {} but that worker does not know it",
                                            r.worker
                                        )
                                    },
                                );
                            }
                        }
                        TaskState::Done { worker, .. } if needed.contains(stage_id) => invariant(
                            self.workers.contains_key(worker),
                            "needed-outputs-held",
                            || {
                                format!(
                                    "{job_id} {stage_id} task {partition} is needed but its {worker} is gone"
                                )
                            },
                        ),
                        _ => {}
                    }
                }
            }
        }
    }

    /// Every attempt a stage launched is running or ended, once; an ended one ended
    /// after it started; and a task its own attempt completed has that attempt ended
    /// as succeeded.
    fn check_attempt_log(&self, job: JobId, stage_id: StageId, stage: &StageState) {
        let mut logged: Vec<(u32, u32)> = stage
            .ended
            .iter()
            .map(|e| (e.partition, e.run.attempt))
            .collect();
        for (partition, task) in stage.tasks.iter().enumerate() {
            if let TaskState::Running { runs } = task {
                logged.extend(runs.iter().map(|r| (partition as u32, r.attempt)));
            }
        }
        let distinct = logged.iter().collect::<BTreeSet<_>>().len();
        invariant(
            logged.len() == stage.launched as usize && distinct == logged.len(),
            "attempt-log",
            || {
                format!(
                    "{job} {stage_id} launched {} attempts but logs {} ({distinct} distinct)",
                    stage.launched,
                    logged.len()
                )
            },
        );
        let mut succeeded = BTreeSet::new();
        for e in &stage.ended {
            invariant(e.ended_ms >= e.run.started_ms, "attempt-log", || {
                format!("{job} {stage_id} has an attempt that ended before it started")
            });
            if e.end == AttemptEnd::Succeeded {
                succeeded.insert((e.partition, e.run.attempt));
            }
        }
        for (partition, task) in stage.tasks.iter().enumerate() {
            if let TaskState::Done {
                attempt,
                origin: None,
                ..
            } = task
            {
                invariant(
                    succeeded.contains(&(partition as u32, *attempt)),
                    "attempt-log",
                    || {
                        format!(
                            "{job} {stage_id} task {partition} is done by an attempt not logged as succeeded"
                        )
                    },
                );
            }
        }
    }

    /// A worker holds no more attempts than its slots and their queues take, and each
    /// is a run of its task.
    fn check_worker(&self, id: WorkerId, w: &WorkerState) {
        invariant(w.running.len() as u32 <= w.capacity, "slots", || {
            format!(
                "{id} holds {} attempts but has room for {} ({} slots)",
                w.running.len(),
                w.capacity,
                w.slots
            )
        });
        for a in &w.running {
            let runs = match self
                .stage_tasks(a.task.job, a.task.stage)
                .and_then(|t| t.get(a.task.partition as usize))
            {
                Some(TaskState::Running { runs }) => &runs[..],
                _ => &[],
            };
            invariant(
                runs.iter()
                    .any(|r| r.attempt == a.attempt && r.worker == id),
                "runs-agree",
                || format!("{id} believes it runs {a}, the task disagrees"),
            );
        }
    }

    /// Corrupts the state the way a bug would: the first worker believes it runs an
    /// attempt that no task has. For the test that shows a broken invariant ends the
    /// coordinator; the next check of that worker fires.
    #[doc(hidden)]
    pub fn inject_fault_phantom_attempt(&mut self) {
        if let Some(w) = self.workers.values_mut().next() {
            w.running.insert(AttemptId {
                task: TaskId {
                    job: JobId(u64::MAX),
                    stage: StageId(0),
                    partition: 0,
                },
                attempt: 0,
            });
        }
    }
}

/// How many runs adaptive coalescing cuts a stage's `total` input bytes into: whole
/// waves of a run per slot, each run at most `max_bytes`.
fn runs_for(total: u64, slots: u64, config: CoalesceConfig) -> u64 {
    let waves = total.div_ceil(slots.saturating_mul(config.max_bytes.max(1)));
    slots.saturating_mul(waves.max(1))
}

/// A coalesced stage's runs cover its partitions once each: every task reads from its
/// own partition to the end of its run, and the tasks within a run are absorbed into
/// its first; a stage that does not coalesce has no runs.
fn check_runs(job: JobId, stage_id: StageId, stage: &StageState) {
    let n = stage.tasks.len();
    let Some(reads_to) = &stage.reads_to else {
        // Not decided yet: nothing of it ran, nor was taken from before.
        let untouched = !stage.spec.coalesce || stage.pending.len() == n;
        return invariant(stage.absorbed == 0 && untouched, "coalesced-runs", || {
            format!("{job} {stage_id} has absorbed or started tasks but no runs")
        });
    };
    invariant(
        stage.spec.coalesce && reads_to.len() == n,
        "coalesced-runs",
        || format!("{job} {stage_id} has runs but does not coalesce"),
    );
    let mut absorbed = 0;
    let mut p = 0;
    while p < n {
        let end = reads_to[p] as usize;
        invariant(
            end > p && end <= n && !matches!(stage.tasks[p], TaskState::Absorbed { .. }),
            "coalesced-runs",
            || format!("{job} {stage_id} task {p} starts a run to {end}, or is absorbed"),
        );
        for q in p + 1..end {
            invariant(
                stage.tasks[q] == TaskState::Absorbed { into: p as u32 },
                "coalesced-runs",
                || {
                    format!(
                        "{job} {stage_id} task {q} is in task {p}'s run but not absorbed into it"
                    )
                },
            );
            absorbed += 1;
        }
        p = end;
    }
    invariant(absorbed == stage.absorbed, "coalesced-runs", || {
        format!(
            "{job} {stage_id} counts {} absorbed tasks, its runs {absorbed}",
            stage.absorbed
        )
    });
}

/// Panics with the invariant's name unless `holds`. The message is built only then.
fn invariant(holds: bool, name: &str, detail: impl FnOnce() -> String) {
    if !holds {
        panic!("scheduler invariant '{name}' broken: {}", detail());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, stages: &[(u32, u32, &[u32])]) -> JobSpec {
        JobSpec {
            id: JobId(id),
            stages: stages
                .iter()
                .map(|(s, n, deps)| StageSpec {
                    id: StageId(*s),
                    tasks: *n,
                    depends_on: deps.iter().map(|d| StageId(*d)).collect(),
                    ..Default::default()
                })
                .collect(),
            final_stage: StageId(stages.last().unwrap().0),
            tenant: "t".into(),
            priority: 0,
        }
    }

    fn launches(cmds: &[Command]) -> Vec<(AttemptId, WorkerId)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Launch {
                    attempt, worker, ..
                } => Some((*attempt, *worker)),
                _ => None,
            })
            .collect()
    }

    fn failure(cmds: &[Command]) -> Option<&str> {
        cmds.iter().find_map(|c| match c {
            Command::JobFailed { message, .. } => Some(message.as_str()),
            _ => None,
        })
    }

    fn succeed_after(
        s: &mut Scheduler,
        (attempt, worker): (AttemptId, WorkerId),
        elapsed_ms: u64,
    ) -> Vec<Command> {
        s.handle(Event::TaskSucceeded {
            attempt,
            worker,
            stats: TaskStats {
                elapsed_ms,
                ..Default::default()
            },
        })
    }

    fn succeed(s: &mut Scheduler, launch: (AttemptId, WorkerId)) -> Vec<Command> {
        succeed_after(s, launch, 0)
    }

    fn fail(
        s: &mut Scheduler,
        (attempt, worker): (AttemptId, WorkerId),
        error: TaskError,
    ) -> Vec<Command> {
        s.handle(Event::TaskFailed {
            attempt,
            worker,
            error,
        })
    }

    fn with_workers(config: SchedulerConfig, slots: &[u32]) -> Scheduler {
        let mut s = Scheduler::new(SchedulerConfig {
            check_all_invariants: true,
            ..config
        });
        for (i, n) in slots.iter().enumerate() {
            s.handle(Event::WorkerJoined {
                worker: WorkerId(i as u64 + 1),
                slots: *n,
                held: Vec::new(),
            });
        }
        s
    }

    /// Jobs of one stage of `tasks` tasks, each `tenant`'s, with `priority`.
    fn tenant_job(id: u64, tenant: &str, tasks: u32, priority: i32) -> JobSpec {
        JobSpec {
            tenant: tenant.into(),
            priority,
            ..job(id, &[(0, tasks, &[])])
        }
    }

    /// Runs jobs whose every task takes 100 ms on workers of `slots`: `first` are
    /// submitted at 0 and `second` at 1 s. Returns when the first task of `second`
    /// started, and each tenant's slot-milliseconds from 1 s until a tenant ran out
    /// of tasks to start; `each` is called with every launch.
    fn run_tenants(
        tenants: &[(&str, TenantPolicy)],
        slots: &[u32],
        first: Vec<JobSpec>,
        second: Vec<JobSpec>,
        mut each: impl FnMut(&Scheduler, AttemptId),
    ) -> (Option<u64>, BTreeMap<String, u64>) {
        let config = SchedulerConfig {
            speculation: None,
            tenants: tenants.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            ..Default::default()
        };
        let mut s = with_workers(config, slots);
        let tenant_of: BTreeMap<JobId, String> = (first.iter().chain(&second))
            .map(|j| (j.id, j.tenant.clone()))
            .collect();
        let mut pending: BTreeMap<String, u32> = BTreeMap::new();
        for j in first.iter().chain(&second) {
            *pending.entry(j.tenant.clone()).or_default() += j.stages[0].tasks;
        }
        let mut running: Vec<(u64, AttemptId, WorkerId)> = Vec::new();
        let mut used: BTreeMap<String, u64> = BTreeMap::new();
        let mut second_started = None;
        let mut measuring = true;
        let mut launched = |s: &Scheduler, cmds: Vec<Command>, now: u64, running: &mut Vec<_>| {
            for (attempt, worker) in launches(&cmds) {
                let tenant = &tenant_of[&attempt.task.job];
                *pending.get_mut(tenant).unwrap() -= 1;
                if second.iter().any(|j| j.id == attempt.task.job) && second_started.is_none() {
                    second_started = Some(now);
                }
                each(s, attempt);
                running.push((now + 100, attempt, worker));
            }
            pending.values().all(|p| *p > 0)
        };
        for j in first {
            let cmds = s.handle(Event::JobSubmitted(j));
            launched(&s, cmds, 0, &mut running);
        }
        let mut now = 0;
        let mut second = Some(second.clone());
        while !running.is_empty() || second.is_some() {
            running.sort_by_key(|r| std::cmp::Reverse(r.0));
            let next = running.last().map_or(u64::MAX, |r| r.0);
            let next = if second.is_some() {
                next.min(1_000)
            } else {
                next
            };
            if measuring && now >= 1_000 {
                for (_, attempt, _) in &running {
                    *used
                        .entry(tenant_of[&attempt.task.job].clone())
                        .or_default() += next - now;
                }
            }
            now = next;
            s.handle(Event::Tick { now_ms: now });
            if now == 1_000
                && let Some(jobs) = second.take()
            {
                for j in jobs {
                    let cmds = s.handle(Event::JobSubmitted(j));
                    measuring &= launched(&s, cmds, now, &mut running);
                }
            }
            while running.last().is_some_and(|r| r.0 == now) {
                let (_, attempt, worker) = running.pop().unwrap();
                let cmds = succeed_after(&mut s, (attempt, worker), 100);
                measuring &= launched(&s, cmds, now, &mut running);
            }
        }
        (second_started, used)
    }

    fn share(used: &BTreeMap<String, u64>, tenant: &str) -> f64 {
        used[tenant] as f64 / used.values().sum::<u64>() as f64
    }

    #[test]
    fn tenants_share_slot_time_by_weight_and_a_newcomer_starts_at_once() {
        let backlog = |tenant: &str, base: u64| -> Vec<JobSpec> {
            (0..4)
                .map(|i| tenant_job(base + i, tenant, 60, 0))
                .collect()
        };
        for (weights, low, high) in [((1, 1), 0.45, 0.55), ((2, 1), 0.62, 0.71)] {
            for slots in [&[2, 2][..], &[3, 2], &[1]] {
                let policy = |weight| TenantPolicy {
                    weight,
                    ..Default::default()
                };
                let (started, used) = run_tenants(
                    &[("a", policy(weights.0)), ("b", policy(weights.1))],
                    slots,
                    backlog("a", 1),
                    backlog("b", 11),
                    |_, _| {},
                );
                // B's first task takes the first slot that frees.
                let started = started.unwrap();
                assert!(
                    started <= 1_100,
                    "{weights:?} {slots:?}: B started at {started} ms"
                );
                let a = share(&used, "a");
                assert!(
                    (low..=high).contains(&a),
                    "{weights:?} on {slots:?}: A had {a:.3} of the slot time ({used:?})"
                );
            }
        }
    }

    #[test]
    fn tenant_policies_parse_and_bad_ones_name_the_form() {
        let (name, p) = TenantPolicy::parse("team-a:weight=2,slots=8,jobs=3,cache=1MiB").unwrap();
        assert_eq!(name, "team-a");
        assert_eq!((p.weight, p.slots_max, p.jobs_max), (2, Some(8), Some(3)));
        assert_eq!(p.cache_bytes_max, Some(1 << 20));
        assert_eq!(TenantPolicy::parse("b").unwrap().1, TenantPolicy::default());
        for bad in [
            "",
            "a b:weight=1",
            "a:weight",
            "a:weight=0",
            "a:weight=1001",
            "a:color=3",
            "a:slots=-1",
            "a:cache=lots",
        ] {
            let e = TenantPolicy::parse(bad).unwrap_err();
            assert!(
                e.contains("NAME:weight=W") || e.contains("at most") || e.contains("not a size"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn quotas_make_a_tenant_wait_and_priorities_order_its_jobs() {
        // A tenant of one slot at most holds one, however many are free; its second
        // job waits for its first (jobs_max 1); B's higher-priority job goes before
        // its older one once slots free.
        let mut most = 0;
        let mut order = Vec::new();
        let limited = TenantPolicy {
            slots_max: Some(1),
            jobs_max: Some(1),
            ..Default::default()
        };
        run_tenants(
            &[("a", limited)],
            &[2, 2],
            vec![
                tenant_job(1, "a", 3, 0),
                tenant_job(2, "a", 3, 0),
                tenant_job(11, "b", 8, 0),
                tenant_job(12, "b", 4, 5),
            ],
            Vec::new(),
            |s, attempt| {
                let held = s.tenant_usage();
                most = most.max(held.get("a").copied().unwrap_or(0));
                order.push(attempt.task.job);
            },
        );
        assert_eq!(most, 1, "a tenant over its slot quota waits");
        let a_jobs: Vec<JobId> = order.iter().copied().filter(|j| j.0 < 10).collect();
        assert_eq!(a_jobs, [1, 1, 1, 2, 2, 2].map(JobId), "one job at a time");
        let b_jobs: Vec<JobId> = order.iter().copied().filter(|j| j.0 > 10).collect();
        // Job 11 took the slots free when it came; the next four go to job 12.
        assert_eq!(b_jobs[..3], [JobId(11); 3], "{b_jobs:?}");
        assert_eq!(
            b_jobs[3..7],
            [JobId(12); 4],
            "the higher priority first: {b_jobs:?}"
        );
    }

    #[test]
    fn runs_stages_in_dependency_order_and_spreads_tasks() {
        let mut s = with_workers(SchedulerConfig::default(), &[2, 2]);
        let cmds = s.handle(Event::JobSubmitted(job(1, &[(0, 4, &[]), (1, 2, &[0])])));
        let first = launches(&cmds);
        assert_eq!(first.len(), 4);
        assert!(first.iter().all(|(a, _)| a.task.stage == StageId(0)));
        let workers: BTreeSet<_> = first.iter().map(|(_, w)| *w).collect();
        assert_eq!(workers.len(), 2, "tasks spread over both workers");
        let mut second = Vec::new();
        for l in first {
            second.extend(launches(&succeed(&mut s, l)));
        }
        assert_eq!(second.len(), 2);
        assert!(second.iter().all(|(a, _)| a.task.stage == StageId(1)));
        let mut end = Vec::new();
        for l in second {
            end.extend(succeed(&mut s, l));
        }
        assert!(end.contains(&Command::JobSucceeded { job: JobId(1) }));
        let released = s.handle(Event::JobReleased { job: JobId(1) });
        assert!(
            matches!(&released[..], [Command::ReleaseBlocks { workers, .. }] if workers.len() == 2)
        );
    }

    /// A stage with no more tasks than the cluster has slots is not queued behind an
    /// attempt of its own: its second task waits for the other worker, which is busy
    /// now but not for long, rather than run after its sibling on the worker that
    /// happened to finish its short tasks first.
    #[test]
    fn a_stage_that_fits_the_slots_is_not_queued_behind_itself() {
        let config = SchedulerConfig {
            queued_per_slot: 1,
            ..Default::default()
        };
        let mut s = with_workers(config, &[1, 1]);
        let cmds = s.handle(Event::JobSubmitted(job(
            1,
            &[(0, 2, &[]), (1, 2, &[]), (2, 2, &[]), (3, 1, &[0, 1, 2])],
        )));
        let first = launches(&cmds);
        assert_eq!(first.len(), 4, "a slot and a queue on each worker");
        let on = |w: u64| -> Vec<(AttemptId, WorkerId)> {
            first
                .iter()
                .filter(|(_, id)| *id == WorkerId(w))
                .copied()
                .collect()
        };
        let (w1, w2) = (on(1), on(2));
        assert_eq!((w1.len(), w2.len()), (2, 2));
        // Worker 2 ends both its tasks: the long stage's first task goes there...
        let mut next = launches(&succeed(&mut s, w2[0]));
        next.extend(launches(&succeed(&mut s, w2[1])));
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(next[0].0.task.stage, StageId(2));
        assert_eq!(next[0].1, WorkerId(2));
        // ...and its second to worker 1 once that has room.
        let later = launches(&succeed(&mut s, w1[0]));
        assert_eq!(later.len(), 1, "{later:?}");
        assert_eq!(later[0].0.task.stage, StageId(2));
        assert_eq!(later[0].1, WorkerId(1));
    }

    #[test]
    fn an_attempt_without_progress_is_retried_on_another_worker() {
        let config = SchedulerConfig {
            task_progress_timeout_ms: 1_000,
            speculation: None,
            ..Default::default()
        };
        let mut s = with_workers(config, &[1, 1]);
        let cmds = s.handle(Event::JobSubmitted(job(3, &[(0, 2, &[])])));
        let [busy, stuck] = launches(&cmds)[..] else {
            panic!("{cmds:?}")
        };
        // One attempt reports work and finishes; the other heartbeats but does nothing.
        s.handle(Event::Tick { now_ms: 900 });
        s.handle(Event::TaskProgressed {
            attempt: busy.0,
            worker: busy.1,
        });
        let cmds = succeed(&mut s, busy);
        assert!(launches(&cmds).is_empty());
        assert!(s.handle(Event::Tick { now_ms: 1_000 }).is_empty());
        let cmds = s.handle(Event::Tick { now_ms: 1_001 });
        assert!(
            cmds.contains(&Command::Kill {
                attempt: stuck.0,
                worker: stuck.1
            }),
            "{cmds:?}"
        );
        let retry = launches(&cmds);
        assert_eq!(retry.len(), 1, "{cmds:?}");
        assert_eq!(retry[0].0.task, stuck.0.task);
        assert_ne!(
            retry[0].1, stuck.1,
            "retried on the worker where it stalled"
        );
        // Progress reports keep the retry alive past the timeout.
        for now_ms in [1_500, 2_000, 2_500] {
            s.handle(Event::Tick { now_ms });
            s.handle(Event::TaskProgressed {
                attempt: retry[0].0,
                worker: retry[0].1,
            });
        }
        let cmds = s.handle(Event::Tick { now_ms: 3_000 });
        assert!(launches(&cmds).is_empty(), "{cmds:?}");
        assert!(succeed(&mut s, retry[0]).contains(&Command::JobSucceeded { job: JobId(3) }));
    }

    #[test]
    fn stale_attempts_are_fenced_and_retries_are_bounded() {
        let config = SchedulerConfig {
            task_attempt_max: 2,
            ..Default::default()
        };
        let mut s = with_workers(config, &[1]);
        let first = launches(&s.handle(Event::JobSubmitted(job(7, &[(0, 1, &[])]))))[0];
        let error = TaskError::new(ErrorKind::Transient, "disk hiccup");
        let retry = launches(&fail(&mut s, first, error.clone()))[0];
        assert_eq!(retry.0.attempt, 1);
        // The first attempt reporting success late changes nothing.
        assert!(succeed(&mut s, first).is_empty());
        let end = fail(&mut s, retry, error);
        let message = failure(&end).expect("the job failed");
        assert!(
            message.contains("failed 2 times") && message.contains("disk hiccup"),
            "{message}"
        );
    }

    #[test]
    fn user_errors_fail_the_job_at_once() {
        let mut s = with_workers(SchedulerConfig::default(), &[1]);
        let l = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 1, &[])]))))[0];
        let out = fail(&mut s, l, TaskError::new(ErrorKind::User, "Divide by zero"));
        let message = failure(&out).expect("the job failed").to_string();
        assert!(message.contains("Divide by zero"), "{message}");
        assert_eq!(s.job_outcome(JobId(1)), Some(&JobOutcome::Failed(message)));
        assert_eq!(s.stage_attempts(JobId(1), StageId(0)).unwrap().launched, 1);
    }

    /// A stage that may coalesce runs one task per run of small partitions, sized by
    /// what its inputs reported; the tasks taken in never run, a lost run runs again
    /// whole, and outputs held from before are not taken for a coalescing stage.
    #[test]
    fn small_partitions_coalesce_into_runs_that_run_again_whole() {
        let config = SchedulerConfig {
            coalesce: Some(CoalesceConfig { max_bytes: 1000 }),
            speculation: None,
            ..Default::default()
        };
        let mut s = with_workers(config, &[1, 1]);
        let mut spec = job(1, &[(0, 2, &[]), (1, 8, &[0]), (2, 1, &[1])]);
        spec.stages[1].coalesce = true;
        let maps = launches(&s.handle(Event::JobSubmitted(spec)));
        assert_eq!(maps.len(), 2);
        // Map task 0 writes 100 bytes to each partition, map task 1 writes 100 to
        // partition 7 only: 900 bytes, 450 a slot.
        let mut reduces = Vec::new();
        for (launch, sizes) in maps.into_iter().zip([[100; 8], [0, 0, 0, 0, 0, 0, 0, 100]]) {
            reduces.extend(s.handle(Event::TaskSucceeded {
                attempt: launch.0,
                worker: launch.1,
                stats: TaskStats {
                    partition_bytes: sizes.to_vec(),
                    ..Default::default()
                },
            }));
        }
        let runs: Vec<(u32, Range<u32>, WorkerId)> = (reduces.iter())
            .filter_map(|c| match c {
                Command::Launch {
                    attempt,
                    worker,
                    reads,
                } => Some((attempt.task.partition, reads.clone(), *worker)),
                _ => None,
            })
            .collect();
        assert_eq!(
            runs.iter()
                .map(|(p, r, _)| (*p, r.clone()))
                .collect::<Vec<_>>(),
            [(0, 0..4), (4, 4..8)],
            "a run for each slot, of 400 and 500 bytes"
        );
        let tasks = s.stage_tasks(JobId(1), StageId(1)).unwrap();
        assert_eq!(tasks[3], TaskState::Absorbed { into: 0 });
        assert_eq!(tasks[7], TaskState::Absorbed { into: 4 });
        let counts = s.stage_counts(JobId(1), StageId(1)).unwrap();
        assert_eq!((counts.done, counts.coalesced, counts.running), (6, 6, 2));
        // Run the job to its end, losing the worker of the first run once stage 1 is
        // done: its output is computed again by the same run, whole.
        let mut queue: VecDeque<(AttemptId, WorkerId)> = launches(&reduces).into();
        let mut stage_1 = Vec::new();
        let mut lost = false;
        while let Some(launch) = queue.pop_front() {
            if launch.0.task.stage == StageId(1) {
                stage_1.push(launch.0.task.partition);
            }
            let mut cmds = s.handle(Event::TaskSucceeded {
                attempt: launch.0,
                worker: launch.1,
                stats: TaskStats {
                    partition_bytes: vec![100; 8],
                    ..Default::default()
                },
            });
            if !lost && s.stage_counts(JobId(1), StageId(1)).unwrap().done == 8 {
                lost = true;
                cmds.extend(s.handle(Event::WorkerLost { worker: runs[0].2 }));
                cmds.extend(s.handle(Event::WorkerJoined {
                    worker: WorkerId(9),
                    slots: 1,
                    held: Vec::new(),
                }));
            }
            queue.extend(launches(&cmds));
        }
        assert_eq!(s.job_outcome(JobId(1)), Some(&JobOutcome::Succeeded));
        assert_eq!(
            stage_1.iter().filter(|p| **p == 0).count(),
            2,
            "{stage_1:?}"
        );
        assert!(stage_1.iter().all(|p| [0, 4].contains(p)), "{stage_1:?}");
        // A worker comes back holding an output of a coalescing stage from before: not
        // taken, as the old scheduler may have coalesced it with others.
        let mut spec = job(2, &[(0, 1, &[]), (1, 2, &[0]), (2, 1, &[1])]);
        spec.stages[1].coalesce = true;
        s.handle(Event::JobSubmitted(spec));
        let back = s.handle(Event::WorkerJoined {
            worker: WorkerId(10),
            slots: 1,
            held: vec![HeldOutput {
                task: TaskId {
                    job: JobId(2),
                    stage: StageId(1),
                    partition: 1,
                },
                attempt: 0,
                rows: 1,
                bytes: 1,
            }],
        });
        assert!(
            back.iter()
                .any(|c| matches!(c, Command::DropOutputs { .. }))
        );
    }

    #[test]
    fn lost_worker_reruns_its_running_and_needed_tasks_without_counting_a_failure() {
        let config = SchedulerConfig {
            task_attempt_max: 1,
            ..Default::default()
        };
        let mut s = with_workers(config, &[1, 1]);
        let first = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 2, &[]), (1, 1, &[0])]))));
        let on_1 = *first.iter().find(|(_, w)| *w == WorkerId(1)).unwrap();
        let on_2 = *first.iter().find(|(_, w)| *w == WorkerId(2)).unwrap();
        succeed(&mut s, on_1);
        // Worker 1 dies holding a finished map output that stage 1 still needs.
        let relaunched = launches(&s.handle(Event::WorkerLost {
            worker: WorkerId(1),
        }));
        assert!(relaunched.is_empty(), "worker 2 is still busy");
        let next = launches(&succeed(&mut s, on_2));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].0.task, on_1.0.task, "the lost output is recomputed");
        assert_eq!(next[0].0.attempt, 1);
        assert_eq!(s.job_outcome(JobId(1)), Some(&JobOutcome::Running));
    }

    #[test]
    fn lost_outputs_are_recomputed_transitively() {
        let mut s = with_workers(SchedulerConfig::default(), &[1]);
        let spec = job(1, &[(0, 1, &[]), (1, 1, &[0]), (2, 1, &[1])]);
        let first = launches(&s.handle(Event::JobSubmitted(spec)));
        let second = launches(&succeed(&mut s, first[0]));
        let third = launches(&succeed(&mut s, second[0]));
        assert_eq!(third[0].0.task.stage, StageId(2));
        // Worker 1 dies while stage 2 runs; it held the outputs of stages 0 and 1.
        s.handle(Event::WorkerLost {
            worker: WorkerId(1),
        });
        let again = launches(&s.handle(Event::WorkerJoined {
            worker: WorkerId(2),
            slots: 1,
            held: Vec::new(),
        }));
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].0.task.stage,
            StageId(0),
            "stage 1's input is gone too"
        );
        assert_eq!(s.stage_outputs(JobId(1), StageId(1)), None);
    }

    /// A new leader holds launches while its workers come back; what they report
    /// holding stands for tasks still to run, and the rest is dropped.
    #[test]
    fn held_outputs_are_taken_as_done_and_the_rest_dropped() {
        let mut s = with_workers(SchedulerConfig::default(), &[2]);
        s.hold_launches(1_000);
        let cmds = s.handle(Event::JobSubmitted(job(1, &[(0, 3, &[]), (1, 2, &[0])])));
        assert!(launches(&cmds).is_empty(), "launches wait for the hold");
        let task = |stage, partition| TaskId {
            job: JobId(1),
            stage: StageId(stage),
            partition,
        };
        let held = |task, attempt| HeldOutput {
            task,
            attempt,
            rows: 10,
            bytes: 100,
        };
        let out = s.handle(Event::WorkerJoined {
            worker: WorkerId(2),
            slots: 2,
            held: vec![
                held(task(0, 0), 0),
                held(task(0, 2), 3),
                // A reader's output stands though its inputs are not all there now.
                held(task(1, 0), 0),
                // Another attempt of a task already taken.
                held(task(0, 0), 1),
                held(
                    TaskId {
                        job: JobId(9),
                        ..task(0, 0)
                    },
                    0,
                ),
            ],
        });
        assert_eq!(
            out,
            vec![Command::DropOutputs {
                worker: WorkerId(2),
                outputs: vec![
                    AttemptId {
                        task: task(0, 0),
                        attempt: 1
                    },
                    AttemptId {
                        task: TaskId {
                            job: JobId(9),
                            ..task(0, 0)
                        },
                        attempt: 0
                    },
                ],
            },]
        );
        let counts = s.stage_counts(JobId(1), StageId(0)).unwrap();
        assert_eq!((counts.done, counts.pending), (2, 1));
        let cmds = s.handle(Event::Tick { now_ms: 1_000 });
        let maps = launches(&cmds);
        assert_eq!(maps.len(), 1, "only the missing map task runs: {cmds:?}");
        assert_eq!(maps[0].0.task, task(0, 1));
        let reduces = launches(&succeed(&mut s, maps[0]));
        assert_eq!(reduces.len(), 1);
        assert_eq!(reduces[0].0.task, task(1, 1));
        let outputs = s.stage_outputs_and_rows(JobId(1), StageId(0)).unwrap();
        assert_eq!(outputs[2].0.attempt, 3);
        assert_eq!(outputs[2].1, Some(10), "a held output's rows are known");
        // A held output's attempt number is spent: a re-run numbers past it.
        let out = fail(
            &mut s,
            reduces[0],
            TaskError {
                kind: ErrorKind::Transient,
                message: "block not found".into(),
                fetch: Some(FetchFailure {
                    stage: StageId(0),
                    map_partition: 2,
                    worker: WorkerId(2),
                }),
            },
        );
        let rerun = launches(&out);
        assert!(
            rerun
                .iter()
                .any(|(a, _)| a.task == task(0, 2) && a.attempt == 4),
            "{rerun:?}"
        );
    }

    /// A worker's held outputs are taken before anything launches on it, hold or not.
    #[test]
    fn outputs_held_for_every_task_end_the_job() {
        let mut s = with_workers(SchedulerConfig::default(), &[]);
        s.handle(Event::JobSubmitted(job(1, &[(0, 2, &[])])));
        let held = (0..2)
            .map(|partition| HeldOutput {
                task: TaskId {
                    job: JobId(1),
                    stage: StageId(0),
                    partition,
                },
                attempt: 0,
                rows: 1,
                bytes: 1,
            })
            .collect();
        let out = s.handle(Event::WorkerJoined {
            worker: WorkerId(1),
            slots: 1,
            held,
        });
        assert_eq!(out, vec![Command::JobSucceeded { job: JobId(1) }]);
        assert_eq!(s.job_outcome(JobId(1)), Some(&JobOutcome::Succeeded));
    }

    #[test]
    fn a_fetch_failure_reruns_the_producer_then_the_reader() {
        let mut s = with_workers(SchedulerConfig::default(), &[1, 1]);
        let maps = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 2, &[]), (1, 2, &[0])]))));
        let mut reduces = Vec::new();
        for m in &maps {
            reduces.extend(launches(&succeed(&mut s, *m)));
        }
        assert_eq!(reduces.len(), 2);
        let holder = maps[1].1;
        let out = fail(
            &mut s,
            reduces[0],
            TaskError {
                kind: ErrorKind::Transient,
                message: "block not found".into(),
                fetch: Some(FetchFailure {
                    stage: StageId(0),
                    map_partition: 1,
                    worker: holder,
                }),
            },
        );
        // The other reducer can no longer get all its input: it is stopped too.
        assert!(out.contains(&Command::Kill {
            attempt: reduces[1].0,
            worker: reduces[1].1
        }));
        let rerun = launches(&out);
        assert_eq!(rerun.len(), 1);
        assert_eq!(rerun[0].0.task, maps[1].0.task);
        let readers = launches(&succeed(&mut s, rerun[0]));
        assert_eq!(readers.len(), 2, "both reducers run again");
        assert!(readers.iter().all(|(a, _)| a.attempt == 1));
        // The killed reducer's late success is fenced.
        assert!(succeed(&mut s, reduces[1]).is_empty());
    }

    #[test]
    fn a_slow_task_gets_a_twin_and_the_loser_is_killed() {
        let config = SchedulerConfig {
            speculation: Some(SpeculationConfig {
                multiplier: 2.0,
                quantile: 0.5,
                min_ms: 100,
            }),
            ..Default::default()
        };
        let mut s = with_workers(config, &[1, 1, 1]);
        let first = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 3, &[])]))));
        s.handle(Event::Tick { now_ms: 50 });
        succeed_after(&mut s, first[0], 50);
        succeed_after(&mut s, first[1], 50);
        assert!(launches(&s.handle(Event::Tick { now_ms: 90 })).is_empty());
        let twin = launches(&s.handle(Event::Tick { now_ms: 200 }));
        assert_eq!(twin.len(), 1);
        assert_eq!(twin[0].0.task, first[2].0.task);
        assert_ne!(twin[0].1, first[2].1, "the twin runs elsewhere");
        assert_eq!(
            s.stage_attempts(JobId(1), StageId(0)).unwrap().speculative,
            1
        );
        let end = succeed(&mut s, twin[0]);
        assert!(end.contains(&Command::Kill {
            attempt: first[2].0,
            worker: first[2].1
        }));
        assert!(end.contains(&Command::JobSucceeded { job: JobId(1) }));
        assert!(
            succeed(&mut s, first[2]).is_empty(),
            "no task completes twice"
        );
    }

    #[test]
    fn a_silent_worker_is_dropped_and_its_task_moves() {
        let config = SchedulerConfig {
            heartbeat_timeout_ms: 1_000,
            speculation: None,
            ..Default::default()
        };
        let mut s = with_workers(config, &[1, 1]);
        let first = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 1, &[])]))))[0];
        let other = WorkerId(3 - first.1.0);
        s.handle(Event::Tick { now_ms: 800 });
        s.handle(Event::WorkerHeartbeat { worker: other });
        let out = s.handle(Event::Tick { now_ms: 1_500 });
        assert!(out.contains(&Command::DropWorker { worker: first.1 }));
        assert_eq!(
            launches(&out),
            vec![(
                AttemptId {
                    task: first.0.task,
                    attempt: 1
                },
                other
            )]
        );
    }

    #[test]
    fn a_draining_worker_gets_no_tasks_and_leaves_once_its_blocks_are_not_needed() {
        let mut s = with_workers(SchedulerConfig::default(), &[1, 1]);
        let maps = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 2, &[]), (1, 1, &[0])]))));
        let draining = maps[0].1;
        assert!(
            s.handle(Event::WorkerDraining { worker: draining })
                .is_empty()
        );
        let mut reduce = Vec::new();
        for m in &maps {
            let out = succeed(&mut s, *m);
            assert!(
                !out.contains(&Command::WorkerDrained { worker: draining }),
                "its map output is still needed"
            );
            reduce.extend(launches(&out));
        }
        assert_eq!(reduce.len(), 1);
        assert_ne!(reduce[0].1, draining);
        let out = succeed(&mut s, reduce[0]);
        assert!(out.contains(&Command::WorkerDrained { worker: draining }));
    }

    #[test]
    fn jobs_fail_once_no_worker_came_for_the_grace_period() {
        let config = SchedulerConfig {
            no_worker_grace_ms: 1_000,
            ..Default::default()
        };
        let mut s = Scheduler::new(config);
        s.handle(Event::Tick { now_ms: 5_000 });
        s.handle(Event::JobSubmitted(job(1, &[(0, 1, &[])])));
        assert!(
            failure(&s.handle(Event::Tick { now_ms: 5_500 })).is_none(),
            "a new job gets the whole grace period"
        );
        let out = s.handle(Event::Tick { now_ms: 6_000 });
        assert!(
            failure(&out)
                .unwrap()
                .contains("no worker has been registered")
        );
        assert!(s.running_jobs().is_empty());
    }

    #[test]
    fn an_aborted_job_fails_with_its_reason_and_only_once() {
        let mut s = Scheduler::default();
        s.handle(Event::JobSubmitted(job(1, &[(0, 1, &[])])));
        assert_eq!(s.running_jobs(), vec![JobId(1)]);
        let out = s.handle(Event::JobAborted {
            job: JobId(1),
            message: "no workers".into(),
        });
        assert_eq!(failure(&out), Some("no workers"));
        assert!(s.running_jobs().is_empty());
        let again = s.handle(Event::JobAborted {
            job: JobId(1),
            message: "no workers".into(),
        });
        assert!(again.is_empty());
    }

    /// A job reading a cached table: stage 0 is lineage only, stage 1 the cached
    /// partitions at `holders`, stage 2 reads partition p of stage 1 in task p.
    fn cached_job(id: u64, holders: [WorkerId; 2]) -> JobSpec {
        let nowhere = Existing {
            attempt: 0,
            worker: WorkerId::NOWHERE,
            origin: (JobId(0), StageId(0)),
        };
        let at = |worker| Existing {
            attempt: 3,
            worker,
            origin: (JobId(0), StageId(1)),
        };
        JobSpec {
            id: JobId(id),
            stages: vec![
                StageSpec {
                    id: StageId(0),
                    tasks: 2,
                    existing: vec![nowhere; 2],
                    ..Default::default()
                },
                StageSpec {
                    id: StageId(1),
                    tasks: 2,
                    depends_on: vec![StageId(0)],
                    existing: holders.map(at).to_vec(),
                    ..Default::default()
                },
                StageSpec {
                    id: StageId(2),
                    tasks: 2,
                    depends_on: vec![StageId(1)],
                    local_input: Some(StageId(1)),
                    ..Default::default()
                },
            ],
            final_stage: StageId(2),
            tenant: "t".into(),
            priority: 0,
        }
    }

    #[test]
    fn existing_outputs_are_reused_where_they_are_and_only_lost_ones_recomputed() {
        let mut s = with_workers(SchedulerConfig::default(), &[2, 2]);
        let (w1, w2) = (WorkerId(1), WorkerId(2));
        // Both cached partitions live: only the readers run, each by its partition.
        let cmds = s.handle(Event::JobSubmitted(cached_job(1, [w2, w1])));
        let l = launches(&cmds);
        assert_eq!(l.len(), 2, "{cmds:?}");
        for (attempt, worker) in &l {
            assert_eq!(attempt.task.stage, StageId(2));
            let holder = if attempt.task.partition == 0 { w2 } else { w1 };
            assert_eq!(
                *worker, holder,
                "partition {} ran away from its data",
                attempt.task.partition
            );
        }
        let outputs = s.stage_outputs(JobId(1), StageId(1)).unwrap();
        assert_eq!(outputs[0].origin, (JobId(0), StageId(1)));
        assert_eq!(outputs[0].attempt, 3);
        for launch in l {
            succeed(&mut s, launch);
        }
        assert_eq!(s.job_outcome(JobId(1)), Some(&JobOutcome::Succeeded));

        // Partition 0's holder is gone: its lineage (stage 0) runs, then it, then the
        // readers; partition 1 is not computed again.
        let gone = WorkerId(99);
        let cmds = s.handle(Event::JobSubmitted(cached_job(2, [gone, w2])));
        let l = launches(&cmds);
        assert!(l.iter().all(|(a, _)| a.task.stage == StageId(0)), "{l:?}");
        assert_eq!(l.len(), 2);
        let mut next = Vec::new();
        for launch in l {
            next.extend(launches(&succeed(&mut s, launch)));
        }
        assert_eq!(next.len(), 1, "{next:?}");
        assert_eq!(
            (next[0].0.task.stage, next[0].0.task.partition),
            (StageId(1), 0)
        );
        let readers = launches(&succeed(&mut s, next[0]));
        assert_eq!(readers.len(), 2);
        let outputs = s.stage_outputs(JobId(2), StageId(1)).unwrap();
        assert_eq!(
            outputs[0].origin,
            (JobId(2), StageId(1)),
            "the recomputed partition is the job's own"
        );
        assert_eq!(outputs[1].origin, (JobId(0), StageId(1)));
        // The rows are known for the job's own output (none here), not for the cached
        // one's, so a reader reads it whatever it holds.
        let rows = |job| {
            s.stage_outputs_and_rows(JobId(job), StageId(1))
                .map(|outputs| {
                    outputs
                        .into_iter()
                        .map(|(_, rows)| rows)
                        .collect::<Vec<_>>()
                })
        };
        assert_eq!(rows(2), Some(vec![Some(0), None]));
        assert_eq!(rows(1), Some(vec![None, None]));
    }

    #[test]
    fn scan_tasks_run_where_their_data_is_and_elsewhere_only_after_the_wait() {
        let mut s = with_workers(
            SchedulerConfig {
                locality_wait_ms: 1_000,
                ..Default::default()
            },
            &[1, 1, 1],
        );
        let (w1, w2, w3) = (WorkerId(1), WorkerId(2), WorkerId(3));
        let mut spec = job(1, &[(0, 4, &[])]);
        // Tasks 0 and 1 prefer worker 2, task 2 workers 1 and 3, task 3 worker 3.
        spec.stages[0].preferred = vec![vec![w2], vec![w2], vec![w1, w3], vec![w3]];
        let l = launches(&s.handle(Event::JobSubmitted(spec)));
        let placed: BTreeMap<u32, WorkerId> =
            l.iter().map(|(a, w)| (a.task.partition, *w)).collect();
        // Worker 1 runs task 2, worker 2 task 0, worker 3 task 3: each where its data is.
        assert_eq!(placed, BTreeMap::from([(0, w2), (2, w1), (3, w3)]), "{l:?}");
        // Worker 3 frees a slot: task 1 waits for worker 2 rather than run there.
        let by_worker = |w: WorkerId| *l.iter().find(|(_, x)| *x == w).unwrap();
        let cmds = succeed(&mut s, by_worker(w3));
        assert!(launches(&cmds).is_empty(), "{cmds:?}");
        // Until the wait is over.
        let cmds = s.handle(Event::Tick { now_ms: 999 });
        assert!(launches(&cmds).is_empty(), "{cmds:?}");
        let l = launches(&s.handle(Event::Tick { now_ms: 1_000 }));
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].0.task.partition, l[0].1), (1, w3));
    }

    #[test]
    fn a_scan_whose_workers_are_gone_does_not_wait() {
        let mut s = with_workers(SchedulerConfig::default(), &[1]);
        let mut spec = job(1, &[(0, 1, &[])]);
        spec.stages[0].preferred = vec![vec![WorkerId(7)]];
        let l = launches(&s.handle(Event::JobSubmitted(spec)));
        assert_eq!(l.len(), 1, "the task waited for a worker that is not there");
    }

    #[test]
    fn rejects_malformed_jobs() {
        let s = Scheduler::default();
        assert!(s.validate(&job(1, &[(0, 0, &[])])).is_err());
        assert!(s.validate(&job(1, &[(0, 1, &[1]), (1, 1, &[])])).is_err());
        let mut preferring = job(1, &[(0, 2, &[])]);
        preferring.stages[0].preferred = vec![vec![WorkerId(1)]];
        assert!(
            s.validate(&preferring).is_err(),
            "preferences for 1 of 2 tasks"
        );
        // Only a stage that reads others, and is not the last, may coalesce.
        for stage in 0..3 {
            let mut spec = job(1, &[(0, 2, &[]), (1, 2, &[0]), (2, 1, &[1])]);
            spec.stages[stage].coalesce = true;
            assert_eq!(s.validate(&spec).is_ok(), stage == 1, "stage {stage}");
        }
    }
}
