//! Deterministic simulation of the coordinator's scheduling and membership.
//!
//! A seeded world of simulated workers, a simulated network and a simulated client
//! drives the real [`Scheduler`]: workers crash (with and without their connection
//! closing), pause past the heartbeat timeout and come back, lose their sessions (and
//! keep their tasks' outputs, which they report when they register again), drain and
//! leave; messages are delayed; tasks fail, straggle, or fail deterministically.
//! After every step the world checks its invariants:
//!
//! - no task completes twice: a done task only becomes done again after its output
//!   was lost (or moved with its process to the process's new identity), and only
//!   through an attempt that really ran and reported success;
//! - every block a running attempt was told to read exists, or its holder is dead
//!   (so the scheduler will learn and recompute it);
//! - a succeeded job's result has every partition exactly once, and its value is the
//!   reference value;
//! - a task coalesced into another (adaptive coalescing) never runs, the task it was
//!   coalesced into reads its partitions, and when a job succeeds every partition of
//!   every stage was read by exactly one attempt that succeeded;
//! - the catalog of cached tables keeps its own invariants, and every partition it
//!   lists on a live worker is there, kept by the table (or about to be).
//!
//! Some jobs cache their result as a table, others read one, so lost cached partitions
//! are computed again from their lineage, and tables are uncached while jobs read them.
//!
//! Then comes a fault-free phase in which every job must end, and every job submitted
//! in that phase must succeed unless it was built to fail.
//!
//! `DROVE_SIM_SEEDS=N` runs seeds 0..N (200 by default); `DROVE_SIM_SEED=S` replays one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use drove_core::catalog::{CachedStage, Catalog, CatalogCommand, CatalogError};
use drove_core::scheduler::{
    CoalesceConfig, Command, ErrorKind, Event, FetchFailure, HeldOutput, JobOutcome, JobSpec,
    Output, Scheduler, SchedulerConfig, SpeculationConfig, StageSpec, TaskError, TaskState,
    TaskStats, TenantPolicy,
};
use drove_core::{AttemptId, JobId, StageId, TaskId, WorkerId};

use drove_core::rng::SplitMix64 as Rng;

const HEARTBEAT_MS: u64 = 100;
const HEARTBEAT_TIMEOUT_MS: u64 = 1_000;
const TICK_MS: u64 = 50;
const CHAOS_MS: u64 = 30_000;
/// Longer than the slowest task that makes progress, far shorter than the run.
const PROGRESS_TIMEOUT_MS: u64 = 3_000;
const END_MS: u64 = 300_000;

/// A block: the output of one task attempt.
type BlockId = (AttemptId, WorkerId);

/// Where a launched attempt reads its inputs: per map output, its attempt and holder.
#[derive(Clone)]
struct Launched {
    attempt: AttemptId,
    inputs: Vec<(AttemptId, WorkerId)>,
    /// It hangs: its worker heartbeats, but it does no work and never finishes.
    stuck: bool,
}

enum Action {
    Tick,
    /// A message reaching the coordinator.
    ToCoordinator(Event),
    Launch(WorkerId, Launched),
    Kill(WorkerId, AttemptId),
    Release(WorkerId, JobId),
    /// The coordinator closed this worker's session.
    SessionClosed(WorkerId),
    Drained(WorkerId),
    /// A draining worker gives up waiting and leaves.
    DrainTimeout(WorkerId),
    TaskFinished(WorkerId, AttemptId),
    Heartbeat(WorkerId),
    /// A process whose worker identity ended registers again (or a new machine joins).
    Join {
        process: usize,
    },
    Resume {
        process: usize,
    },
    Chaos,
    Submit,
    /// The coordinator plans a job the client asked for, and submits it.
    Plan(JobId),
    /// A worker is told to keep blocks for a cached table.
    Adopt(WorkerId, u64, Vec<BlockId>),
    /// A worker is told to free these blocks.
    DropBlocks(WorkerId, Vec<BlockId>),
    ReleaseCache(WorkerId, u64),
    /// The client uncaches a table, or (None) every table once all jobs ended.
    Uncache(Option<String>),
}

/// The names of the tables jobs cache: few, so they collide.
const TABLE_NAMES: [&str; 3] = ["t0", "t1", "t2"];

/// What a job does with cached tables.
#[derive(Clone)]
enum Uses {
    Nothing,
    /// It caches its result under this name.
    Caches(String),
    /// It reads this table and adds stages of its own.
    Reads(String),
}

struct Process {
    /// The identity of its current session, if registered.
    worker: Option<WorkerId>,
    slots: u32,
    slow: bool,
    /// During the chaos phase, some of its attempts hang (a wedged task runtime).
    hangs: bool,
    alive: bool,
    paused: bool,
    draining: bool,
    /// Attempts holding a slot, at most `slots`.
    running: BTreeMap<AttemptId, Launched>,
    /// Attempts waiting for a slot, first come first served, as a worker queues them.
    queued: VecDeque<Launched>,
    blocks: BTreeSet<BlockId>,
    /// Blocks kept for a cached table, past their job.
    adopted: BTreeMap<BlockId, u64>,
}

struct SimJob {
    spec: JobSpec,
    /// A task that fails with a user error on every attempt, if any.
    poison: Option<TaskId>,
    submitted_in_chaos: bool,
    outcome: Option<JobOutcome>,
    /// The name it caches its result under, and the table's id.
    caches_as: Option<(String, u64)>,
    /// Its stages that write a cached table's partitions.
    cached_stages: Vec<(StageId, u64)>,
}

struct World {
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Action>,
    sched: Scheduler,
    processes: Vec<Process>,
    /// Which process holds each worker identity ever issued.
    identity: BTreeMap<WorkerId, usize>,
    next_worker: u64,
    jobs: BTreeMap<JobId, SimJob>,
    next_job: u64,
    /// Attempts that really ran and reported success.
    succeeded: BTreeSet<AttemptId>,
    /// The last seen state of every task, to check completions.
    done: BTreeMap<TaskId, (u32, WorkerId)>,
    stats: Stats,
    /// The last delivery time on each link.
    links: BTreeMap<(u64, bool), u64>,
    /// The cached tables; each keeps the stages of the job that cached it.
    catalog: Catalog<Vec<StageSpec>>,
    /// Jobs asked for but not planned yet: their stages, and what they do with tables.
    asked: BTreeMap<JobId, (Vec<StageSpec>, Option<TaskId>, Uses)>,
    /// The partitions of its inputs each launched attempt reads.
    reads: BTreeMap<AttemptId, std::ops::Range<u32>>,
}

/// What a run went through, so the test can tell that faults really happened.
#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    jobs: usize,
    results_checked: usize,
    results_lost: usize,
    faults: usize,
    fetch_failures: usize,
    speculative: usize,
    recomputed: usize,
    /// Attempts that hung on a heartbeating worker.
    stalled: usize,
    tables_cached: usize,
    /// Jobs that read a cached table.
    cache_reads: usize,
    /// Lost cached partitions computed again and adopted by their table.
    cache_repairs: usize,
    uncached: usize,
    /// Outputs processes kept across a session and reported when they registered again.
    held: u64,
    /// Attempts launched to read the partitions of tasks coalesced into theirs.
    coalesced: usize,
    /// Done tasks whose output moved to its holder's new identity.
    taken: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.jobs += o.jobs;
        self.results_checked += o.results_checked;
        self.results_lost += o.results_lost;
        self.faults += o.faults;
        self.fetch_failures += o.fetch_failures;
        self.speculative += o.speculative;
        self.recomputed += o.recomputed;
        self.stalled += o.stalled;
        self.tables_cached += o.tables_cached;
        self.cache_reads += o.cache_reads;
        self.cache_repairs += o.cache_repairs;
        self.uncached += o.uncached;
        self.held += o.held;
        self.coalesced += o.coalesced;
        self.taken += o.taken;
    }
}

/// The block of partition `partition` that `output` names, on its worker.
fn block_of(partition: u32, output: &Output) -> BlockId {
    let task = TaskId {
        job: output.origin.0,
        stage: output.origin.1,
        partition,
    };
    (
        AttemptId {
            task,
            attempt: output.attempt,
        },
        output.worker,
    )
}

fn task_value(t: TaskId) -> i64 {
    (t.stage.0 as i64 + 1) * 1000 + t.partition as i64 + 1
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = Rng(seed);
        let speculation = rng.chance(0.7).then_some(SpeculationConfig {
            multiplier: 1.5,
            quantile: 0.5,
            min_ms: 200,
        });
        let sched = Scheduler::new(SchedulerConfig {
            task_attempt_max: 4,
            jobs_active_max: 64,
            heartbeat_timeout_ms: HEARTBEAT_TIMEOUT_MS,
            no_worker_grace_ms: 5_000,
            speculation,
            task_progress_timeout_ms: PROGRESS_TIMEOUT_MS,
            check_all_invariants: true,
            queued_per_slot: rng.range(0, 2) as u32,
            locality_wait_ms: rng.range(0, 2_000),
            tenants: [
                (
                    "a",
                    TenantPolicy {
                        weight: 2,
                        slots_max: None,
                        jobs_max: None,
                        cache_bytes_max: None,
                    },
                ),
                (
                    "b",
                    TenantPolicy {
                        weight: 1,
                        slots_max: Some(2),
                        jobs_max: None,
                        cache_bytes_max: None,
                    },
                ),
                (
                    "c",
                    TenantPolicy {
                        weight: 1,
                        slots_max: None,
                        jobs_max: Some(1),
                        cache_bytes_max: None,
                    },
                ),
            ]
            .into_iter()
            .map(|(t, p)| (t.to_string(), p))
            .collect(),
            // Tasks report 0 to 99 bytes per partition: stages coalesce into runs of
            // one to several tasks, or not at all.
            coalesce: rng.chance(0.8).then_some(CoalesceConfig { max_bytes: 200 }),
        });
        let n = rng.range(2, 5) as usize;
        let processes = (0..n)
            .map(|i| Process {
                worker: None,
                slots: rng.range(1, 3) as u32,
                slow: i == 0 && rng.chance(0.3),
                hangs: i == 1 && rng.chance(0.3),
                alive: true,
                paused: false,
                draining: false,
                running: BTreeMap::new(),
                queued: VecDeque::new(),
                blocks: BTreeSet::new(),
                adopted: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            sched,
            processes,
            identity: BTreeMap::new(),
            next_worker: 1,
            jobs: BTreeMap::new(),
            next_job: 1,
            succeeded: BTreeSet::new(),
            done: BTreeMap::new(),
            stats: Stats::default(),
            links: BTreeMap::new(),
            catalog: Catalog::default(),
            asked: BTreeMap::new(),
            reads: BTreeMap::new(),
        };
        for p in 0..n {
            let d = world.rng.range(0, 200);
            world.at(d, Action::Join { process: p });
        }
        world.at(0, Action::Tick);
        world.at(100, Action::Chaos);
        world.at(50, Action::Submit);
        world
    }

    fn at(&mut self, delay: u64, action: Action) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), action);
    }

    /// A message's delay on a link: random, but never overtaking an earlier message on
    /// the same link (each link is one ordered gRPC stream). A link is a worker id (0:
    /// the client) and a direction (true: towards the coordinator).
    fn net_delay(&mut self, link: (u64, bool)) -> u64 {
        let at = self.now + self.rng.range(1, 30);
        let last = self.links.entry(link).or_insert(0);
        *last = (*last).max(at);
        *last - self.now
    }

    fn chaos(&self) -> bool {
        self.now < CHAOS_MS
    }

    fn process_of(&self, worker: WorkerId) -> Option<usize> {
        let p = *self.identity.get(&worker)?;
        (self.processes[p].worker == Some(worker)).then_some(p)
    }

    /// Feeds an event to the scheduler and performs its commands like the runtime does.
    fn feed(&mut self, event: Event) {
        for command in self.sched.handle(event) {
            self.perform(command);
        }
        self.check();
    }

    fn perform(&mut self, command: Command) {
        match command {
            Command::Launch {
                attempt,
                worker,
                reads,
            } => {
                let spec = &self.jobs[&attempt.task.job].spec;
                let deps = &spec
                    .stages
                    .iter()
                    .find(|s| s.id == attempt.task.stage)
                    .expect("the stage exists")
                    .depends_on;
                let mut inputs = Vec::new();
                for dep in deps {
                    let outputs = self
                        .sched
                        .stage_outputs_and_rows(attempt.task.job, *dep)
                        .expect("launched only once its inputs are done");
                    for (partition, (output, rows)) in outputs.into_iter().enumerate() {
                        // Outputs of no rows are not read, as the coordinator leaves
                        // them out; only a task coalesced into another has none here.
                        if rows != Some(0) {
                            inputs.push(block_of(partition as u32, &output));
                        }
                    }
                }
                // It reads the partitions of the tasks coalesced into it, and no others.
                let tasks = self.sched.stage_tasks(attempt.task.job, attempt.task.stage);
                let tasks = tasks.expect("the stage exists");
                for q in reads.clone() {
                    let own = attempt.task.partition;
                    assert!(
                        q == own || tasks[q as usize] == TaskState::Absorbed { into: own },
                        "{attempt} reads partition {q}, which is not coalesced into it"
                    );
                }
                if reads.len() > 1 {
                    self.stats.coalesced += 1;
                }
                self.reads.insert(attempt, reads);
                let d = self.net_delay((worker.0, false));
                let launched = Launched {
                    attempt,
                    inputs,
                    stuck: false,
                };
                self.at(d, Action::Launch(worker, launched));
            }
            Command::Kill { attempt, worker } => {
                let d = self.net_delay((worker.0, false));
                self.at(d, Action::Kill(worker, attempt));
            }
            Command::DropWorker { worker } => {
                let d = self.net_delay((worker.0, false));
                self.at(d, Action::SessionClosed(worker));
            }
            Command::WorkerDrained { worker } => {
                let d = self.net_delay((worker.0, false));
                self.at(d, Action::Drained(worker));
            }
            Command::ReleaseBlocks { job, workers } => {
                for w in workers {
                    let d = self.net_delay((w.0, false));
                    self.at(d, Action::Release(w, job));
                }
            }
            Command::DropOutputs { worker, outputs } => {
                let blocks = outputs.into_iter().map(|a| (a, worker)).collect();
                let d = self.net_delay((worker.0, false));
                self.at(d, Action::DropBlocks(worker, blocks));
            }
            Command::JobSucceeded { job } => {
                self.check_result(job);
                self.keep_cached_outputs(job);
            }
            Command::JobFailed { job, message } => {
                let sim = self.jobs.get_mut(&job).expect("known job");
                if let Some((name, _)) = &sim.caches_as {
                    self.catalog.unclaim(name);
                }
                let legit = message.contains("poisoned")
                    || message.contains("failed 4 times")
                    || message.contains("no worker has been registered");
                assert!(legit, "{job} failed for no good reason: {message}");
                sim.outcome = Some(JobOutcome::Failed(message));
            }
            Command::JobCancelled { job } => {
                let sim = self.jobs.get_mut(&job).expect("known job");
                if let Some((name, _)) = &sim.caches_as {
                    self.catalog.unclaim(name);
                }
                sim.outcome = Some(JobOutcome::Cancelled);
            }
        }
    }

    /// What the coordinator does when a job succeeded: the catalog takes the table it
    /// cached and the cached partitions it computed again.
    fn keep_cached_outputs(&mut self, job: JobId) {
        let sim = &self.jobs[&job];
        let stages: Vec<CachedStage> = sim
            .cached_stages
            .iter()
            .filter_map(|(stage, cache)| {
                Some(CachedStage {
                    cache: *cache,
                    outputs: self.sched.stage_outputs(job, *stage)?,
                })
            })
            .collect();
        let new_table = sim
            .caches_as
            .as_ref()
            .map(|(name, _)| (name.clone(), sim.spec.stages.clone()));
        if new_table.is_some() {
            self.stats.tables_cached += 1;
        }
        let commands = self.catalog.job_succeeded(job, new_table, stages);
        for command in commands {
            self.perform_catalog(command);
        }
        // Each table the job wrote lists the partitions it computed, but where a
        // worker could not be told to keep them.
        for (stage, cache) in &self.jobs[&job].cached_stages {
            let Some(table) = self.catalog.tables().find(|t| t.id == *cache) else {
                continue; // uncached meanwhile
            };
            let outputs = self.sched.stage_outputs(job, *stage).expect("done");
            for (partition, (listed, ended)) in table.partitions.iter().zip(&outputs).enumerate() {
                assert!(
                    ended.origin.0 != job || listed == ended || listed.worker == WorkerId::NOWHERE,
                    "table {} lists {listed:?} for partition {partition}, but {job} computed {ended:?}",
                    table.name
                );
            }
        }
    }

    fn perform_catalog(&mut self, command: CatalogCommand) {
        match command {
            CatalogCommand::Adopt {
                worker,
                cache,
                blocks,
            } => {
                // The job that computed them (the catalog adopts only a job's own).
                let job = blocks[0].1.origin.0;
                if self.jobs[&job].caches_as.is_none() {
                    self.stats.cache_repairs += 1;
                }
                if self.process_of(worker).is_none() {
                    // Its session is gone: the coordinator could not send it.
                    self.catalog.adoption_failed(cache, &blocks);
                    return;
                }
                let blocks = blocks.iter().map(|(p, o)| block_of(*p, o)).collect();
                let d = self.net_delay((worker.0, false));
                self.at(d, Action::Adopt(worker, cache, blocks));
            }
            CatalogCommand::Drop { worker, blocks } => {
                let blocks = blocks.iter().map(|(p, o)| block_of(*p, o)).collect();
                let d = self.net_delay((worker.0, false));
                self.at(d, Action::DropBlocks(worker, blocks));
            }
            CatalogCommand::ReleaseCache { cache } => {
                let workers: Vec<WorkerId> =
                    self.processes.iter().filter_map(|p| p.worker).collect();
                for worker in workers {
                    let d = self.net_delay((worker.0, false));
                    self.at(d, Action::ReleaseCache(worker, cache));
                }
            }
        }
    }

    fn check_result(&mut self, job: JobId) {
        let sim = self.jobs.get_mut(&job).expect("known job");
        assert!(sim.outcome.is_none(), "{job} ended twice");
        sim.outcome = Some(JobOutcome::Succeeded);
        assert!(
            sim.poison.is_none(),
            "{job} succeeded despite its poisoned task"
        );
        let spec = sim.spec.clone();
        let outputs = self
            .sched
            .stage_outputs(job, spec.final_stage)
            .expect("a succeeded job's final stage is done");
        let final_tasks = spec.stages.last().unwrap().tasks as usize;
        assert_eq!(
            outputs.len(),
            final_tasks,
            "every result partition exactly once"
        );
        // Every partition of every stage was read by one attempt that succeeded: its
        // own task's, or that of the task it was coalesced into.
        for stage in &spec.stages {
            let tasks = self
                .sched
                .stage_tasks(job, stage.id)
                .expect("the stage exists");
            for (p, task) in tasks.iter().enumerate() {
                let (head, attempt) = match task {
                    TaskState::Done {
                        attempt,
                        origin: None,
                        ..
                    } => (p as u32, *attempt),
                    TaskState::Absorbed { into } => match &tasks[*into as usize] {
                        TaskState::Done {
                            attempt,
                            origin: None,
                            ..
                        } => (*into, *attempt),
                        other => panic!("{job} {} task {p} is coalesced into {other:?}", stage.id),
                    },
                    _ => continue, // an output from before the job
                };
                let attempt = AttemptId {
                    task: TaskId {
                        job,
                        stage: stage.id,
                        partition: head,
                    },
                    attempt,
                };
                let reads = &self.reads[&attempt];
                assert!(
                    reads.contains(&(p as u32)),
                    "{job} {} partition {p} was read by no attempt that succeeded ({attempt} read {reads:?})",
                    stage.id
                );
            }
        }
        let mut lost = false;
        for (
            partition,
            drove_core::scheduler::Output {
                attempt, worker, ..
            },
        ) in outputs.iter().enumerate()
        {
            let id = AttemptId {
                task: TaskId {
                    job,
                    stage: spec.final_stage,
                    partition: partition as u32,
                },
                attempt: *attempt,
            };
            match self.process_of(*worker) {
                Some(p) if self.processes[p].alive => assert!(
                    self.processes[p].blocks.contains(&(id, *worker)),
                    "result block {id} is missing on live {worker}"
                ),
                // Its holder died a moment ago; the client's fetch would fail.
                _ => lost = true,
            }
        }
        if lost {
            self.stats.results_lost += 1;
        } else {
            self.stats.results_checked += 1;
        }
        let d = self.net_delay((0, true));
        self.at(d, Action::ToCoordinator(Event::JobReleased { job }));
    }

    /// Invariants checked after every step.
    fn check(&mut self) {
        let jobs: Vec<(JobId, JobSpec)> = self
            .jobs
            .iter()
            .map(|(id, j)| (*id, j.spec.clone()))
            .collect();
        for (job, spec) in jobs {
            for stage in &spec.stages {
                let Some(tasks) = self.sched.stage_tasks(job, stage.id) else {
                    continue;
                };
                for (partition, state) in tasks.iter().enumerate() {
                    let task = TaskId {
                        job,
                        stage: stage.id,
                        partition: partition as u32,
                    };
                    match state {
                        TaskState::Done {
                            attempt,
                            worker,
                            origin,
                            ..
                        } => {
                            if *worker == WorkerId::NOWHERE {
                                // A lost cached partition, or its lineage.
                                continue;
                            }
                            let (id, _) = block_of(
                                partition as u32,
                                &Output {
                                    attempt: *attempt,
                                    worker: *worker,
                                    origin: origin.unwrap_or((job, stage.id)),
                                },
                            );
                            assert!(
                                self.succeeded.contains(&id),
                                "{id} is done but never reported success"
                            );
                            // A table's blocks may be uncached or replaced while a job
                            // reads them: the reader's fetch fails and it computes them
                            // again. The catalog's own check is below.
                            let running = self.sched.job_outcome(job) == Some(&JobOutcome::Running)
                                && origin.is_none();
                            if let Some(h) = self.process_of(*worker).filter(|_| running) {
                                let h = &self.processes[h];
                                assert!(
                                    !h.alive || h.blocks.contains(&(id, *worker)),
                                    "{id} is done on live {worker}, which lacks its block"
                                );
                            }
                            if let Some(previous) = self.done.insert(task, (*attempt, *worker))
                                && previous != (*attempt, *worker)
                            {
                                // The same output, kept by its process under a new
                                // identity, is no second completion.
                                assert!(
                                    previous.0 == *attempt && self.process_of(previous.1).is_none(),
                                    "{task} completed twice without losing its output: {previous:?}, then {:?}",
                                    (*attempt, *worker)
                                );
                                self.stats.taken += 1;
                            }
                        }
                        _ => {
                            if self.done.remove(&task).is_some() {
                                self.stats.recomputed += 1;
                            }
                        }
                    }
                }
            }
        }
        // Every block a running attempt reads exists, or its holder is dead.
        for p in &self.processes {
            if !p.alive || p.worker.is_none() {
                continue;
            }
            for launched in p.running.values() {
                // Once a job ended its blocks are released, whatever still runs.
                if self.sched.job_outcome(launched.attempt.task.job) != Some(&JobOutcome::Running) {
                    continue;
                }
                for (input, holder) in &launched.inputs {
                    if input.task.job != launched.attempt.task.job {
                        continue; // a cached table's block; see above
                    }
                    let present = self.process_of(*holder).is_some_and(|h| {
                        let h = &self.processes[h];
                        !h.alive || h.blocks.contains(&(*input, *holder))
                    });
                    let gone = self.process_of(*holder).is_none();
                    assert!(
                        present || gone,
                        "{} reads {input} from live {holder}, which does not have it",
                        launched.attempt
                    );
                }
            }
        }
        self.check_catalog();
    }

    /// Every partition the catalog lists on a live worker is there: kept by its table,
    /// or still its job's while the message to adopt it is on its way.
    fn check_catalog(&self) {
        self.catalog.check_invariants();
        for table in self.catalog.tables() {
            for (partition, output) in table.partitions.iter().enumerate() {
                let Some(p) = self.process_of(output.worker) else {
                    continue;
                };
                let p = &self.processes[p];
                let block = block_of(partition as u32, output);
                assert!(
                    !p.alive || p.blocks.contains(&block),
                    "cached table {} lists partition {partition} on live {}, which lacks {}",
                    table.name,
                    output.worker,
                    block.0
                );
            }
        }
    }

    fn new_job(&mut self) {
        let id = JobId(self.next_job);
        self.next_job += 1;
        let stages_n = self.rng.range(1, 4) as u32;
        let mut stages = Vec::new();
        for s in 0..stages_n {
            let depends_on = if s == 0 {
                vec![]
            } else if s >= 2 && self.rng.chance(0.3) {
                vec![StageId(s - 2), StageId(s - 1)]
            } else {
                vec![StageId(s - 1)]
            };
            // Up to 8 tasks: enough to coalesce into runs for 2 to 4 slots.
            let tasks = self.rng.range(1, 9) as u32;
            // A scan's tasks prefer workers that hold their data: live, gone or not
            // yet there.
            let preferred = if s == 0 && self.rng.chance(0.5) {
                (0..tasks)
                    .map(|_| {
                        (0..self.rng.range(0, 3))
                            .map(|_| WorkerId(self.rng.range(1, self.next_worker + 2)))
                            .collect()
                    })
                    .collect()
            } else {
                Vec::new()
            };
            stages.push(StageSpec {
                id: StageId(s),
                tasks,
                // The coordinator never coalesces a job's last stage.
                coalesce: s > 0 && s + 1 < stages_n && self.rng.chance(0.7),
                depends_on,
                preferred,
                ..Default::default()
            });
        }
        let poison = self.rng.chance(0.05).then(|| {
            let s = self.rng.below(stages_n as u64) as u32;
            TaskId {
                job: id,
                stage: StageId(s),
                partition: self.rng.below(stages[s as usize].tasks as u64) as u32,
            }
        });
        let name = TABLE_NAMES[self.rng.below(TABLE_NAMES.len() as u64) as usize].to_string();
        let uses = match self.rng.below(10) {
            0 | 1 => Uses::Caches(name),
            2..=4 => Uses::Reads(name),
            _ => Uses::Nothing,
        };
        let poison = poison.filter(|_| !matches!(uses, Uses::Reads(_)));
        self.asked.insert(id, (stages, poison, uses));
        let d = self.net_delay((0, true));
        self.at(d, Action::Plan(id));
    }

    /// Plans a job the way the coordinator does, in one step: claims the name of the
    /// table it caches, or starts from the partitions of the table it reads.
    fn plan(&mut self, id: JobId) {
        let (mut stages, poison, uses) = self.asked.remove(&id).expect("asked for");
        let mut caches_as = None;
        let mut cached_stages = Vec::new();
        match uses {
            Uses::Nothing => {}
            Uses::Caches(name) => match self.catalog.claim(&name) {
                Ok(cache) => {
                    let last = stages.last().expect("a stage").id;
                    cached_stages.push((last, cache));
                    caches_as = Some((name, cache));
                }
                Err(e) => assert_eq!(e, CatalogError::Taken(name)),
            },
            Uses::Reads(name) => {
                let table = self.catalog.tables().find(|t| t.name == name);
                if let Some(table) = table {
                    self.stats.cache_reads += 1;
                    let cache = table.id;
                    let lineage = table.meta.clone();
                    let cached = lineage.last().expect("a stage").id;
                    let mut read: Vec<StageSpec> = lineage
                        .iter()
                        .map(|s| StageSpec {
                            existing: self.catalog.existing(
                                Some((cache, s.id)),
                                (s.id == cached).then_some(cache),
                                s.tasks,
                            ),
                            // As the planner copies a lineage: its partitions are a
                            // table's, computed again one by one.
                            coalesce: false,
                            ..s.clone()
                        })
                        .collect();
                    let first = cached.0 + 1;
                    for (i, own) in stages.iter().take(2).enumerate() {
                        let id = StageId(first + i as u32);
                        read.push(StageSpec {
                            id,
                            tasks: own.tasks,
                            depends_on: vec![StageId(id.0 - 1)],
                            ..Default::default()
                        });
                    }
                    cached_stages.push((cached, cache));
                    stages = read;
                }
            }
        }
        // Three tenants with their own weights and quotas, and priorities within them.
        let tenant = ["a", "b", "c"][self.rng.below(3) as usize].to_string();
        let spec = JobSpec {
            id,
            final_stage: stages.last().expect("a stage").id,
            stages,
            tenant,
            priority: self.rng.below(3) as i32,
        };
        self.jobs.insert(
            id,
            SimJob {
                spec: spec.clone(),
                poison,
                submitted_in_chaos: self.chaos(),
                outcome: None,
                caches_as,
                cached_stages,
            },
        );
        self.feed(Event::JobSubmitted(spec));
    }

    fn uncache(&mut self, name: Option<String>) {
        let names: Vec<String> = match name {
            Some(n) => vec![n],
            None => self.catalog.tables().map(|t| t.name.clone()).collect(),
        };
        for name in names {
            match self.catalog.uncache(&name) {
                Ok(Some(release)) => {
                    self.stats.uncached += 1;
                    self.perform_catalog(release);
                }
                Ok(None) => {}
                Err(e) => assert_eq!(e, CatalogError::StillCaching(name)),
            }
        }
        self.check();
    }

    fn step(&mut self, action: Action) {
        match action {
            Action::Tick => {
                self.feed(Event::Tick { now_ms: self.now });
                self.at(TICK_MS, Action::Tick);
            }
            Action::ToCoordinator(event) => self.feed(event),
            Action::Plan(job) => self.plan(job),
            Action::Uncache(name) => self.uncache(name),
            Action::Adopt(worker, cache, blocks) => {
                if let Some(p) = self.process_of(worker) {
                    let process = &mut self.processes[p];
                    for block in blocks {
                        if process.blocks.contains(&block) {
                            process.adopted.insert(block, cache);
                        }
                    }
                }
            }
            Action::DropBlocks(worker, blocks) => {
                if let Some(p) = self.process_of(worker) {
                    let process = &mut self.processes[p];
                    for block in blocks {
                        process.blocks.remove(&block);
                        process.adopted.remove(&block);
                    }
                }
                self.check();
            }
            Action::ReleaseCache(worker, cache) => {
                if let Some(p) = self.process_of(worker) {
                    let process = &mut self.processes[p];
                    let freed: Vec<BlockId> = process
                        .adopted
                        .iter()
                        .filter(|(_, c)| **c == cache)
                        .map(|(b, _)| *b)
                        .collect();
                    for block in freed {
                        process.blocks.remove(&block);
                        process.adopted.remove(&block);
                    }
                }
                self.check();
            }
            Action::Submit => {
                if self.rng.chance(0.05) {
                    let name = TABLE_NAMES[self.rng.below(TABLE_NAMES.len() as u64) as usize];
                    let d = self.net_delay((0, true));
                    self.at(d, Action::Uncache(Some(name.to_string())));
                }
                self.new_job();
                if self.now < CHAOS_MS + 5_000 {
                    let d = self.rng.range(100, 1_500);
                    self.at(d, Action::Submit);
                }
            }
            Action::Join { process } => {
                let p = &mut self.processes[process];
                if p.worker.is_some() || p.paused {
                    return;
                }
                p.alive = true;
                p.draining = false;
                p.running.clear();
                p.queued.clear();
                p.adopted.clear();
                let worker = WorkerId(self.next_worker);
                self.next_worker += 1;
                p.worker = Some(worker);
                // What it kept from its last session is its own now, and reported.
                p.blocks = p.blocks.iter().map(|(a, _)| (*a, worker)).collect();
                let outputs: Vec<HeldOutput> = (p.blocks.iter())
                    .map(|(a, _)| HeldOutput {
                        task: a.task,
                        attempt: a.attempt,
                        // Some rows, so that readers of the output read it.
                        rows: 1,
                        bytes: 0,
                    })
                    .collect();
                let slots = p.slots;
                self.identity.insert(worker, process);
                self.stats.held += outputs.len() as u64;
                self.feed(Event::WorkerJoined {
                    worker,
                    slots,
                    held: outputs,
                });
                self.at(HEARTBEAT_MS, Action::Heartbeat(worker));
            }
            Action::Heartbeat(worker) => {
                let Some(p) = self.process_of(worker) else {
                    return;
                };
                let p = &self.processes[p];
                if !p.alive {
                    return;
                }
                if !p.paused {
                    // Waiting for a slot counts as progress, as a worker reports it.
                    let working: Vec<AttemptId> = p
                        .running
                        .values()
                        .filter(|l| !l.stuck)
                        .chain(&p.queued)
                        .map(|l| l.attempt)
                        .collect();
                    let d = self.net_delay((worker.0, true));
                    self.at(d, Action::ToCoordinator(Event::WorkerHeartbeat { worker }));
                    for attempt in working {
                        let event = Event::TaskProgressed { attempt, worker };
                        self.at(d, Action::ToCoordinator(event));
                    }
                }
                self.at(HEARTBEAT_MS, Action::Heartbeat(worker));
            }
            Action::Launch(worker, launched) => {
                let Some(p) = self.process_of(worker) else {
                    return;
                };
                if !self.processes[p].alive {
                    return;
                }
                let process = &mut self.processes[p];
                if process.running.len() >= process.slots as usize {
                    process.queued.push_back(launched);
                } else {
                    self.start(p, worker, launched);
                }
                self.check();
            }
            Action::TaskFinished(worker, attempt) => {
                let Some(p) = self.process_of(worker) else {
                    return;
                };
                if self.processes[p].paused {
                    // A paused process makes no progress; try again later.
                    self.at(50, Action::TaskFinished(worker, attempt));
                    return;
                }
                if !self.processes[p].alive {
                    return;
                }
                let Some(launched) = self.processes[p].running.remove(&attempt) else {
                    return; // killed
                };
                self.start_queued(p, worker);
                let missing = launched.inputs.iter().find(|(input, holder)| {
                    !self.process_of(*holder).is_some_and(|h| {
                        self.processes[h].alive
                            && self.processes[h].blocks.contains(&(*input, *holder))
                    })
                });
                let job = &self.jobs[&attempt.task.job];
                // A poisoned partition fails whichever task reads it.
                let poisoned = job.poison.is_some_and(|t| {
                    TaskId { partition: 0, ..t }
                        == TaskId {
                            partition: 0,
                            ..attempt.task
                        }
                        && self.reads[&attempt].contains(&t.partition)
                });
                let event = if poisoned {
                    Event::TaskFailed {
                        attempt,
                        worker,
                        error: TaskError::new(ErrorKind::User, "poisoned: division by zero"),
                    }
                } else if let Some((input, holder)) = missing {
                    self.stats.fetch_failures += 1;
                    Event::TaskFailed {
                        attempt,
                        worker,
                        error: TaskError {
                            kind: ErrorKind::Transient,
                            message: format!("{input} not found"),
                            fetch: Some(FetchFailure {
                                stage: input.task.stage,
                                map_partition: input.task.partition,
                                worker: *holder,
                            }),
                        },
                    }
                } else if self.chaos() && self.rng.chance(0.03) {
                    Event::TaskFailed {
                        attempt,
                        worker,
                        error: TaskError::new(ErrorKind::Transient, "disk hiccup"),
                    }
                } else {
                    let value = task_value(attempt.task)
                        + launched
                            .inputs
                            .iter()
                            .map(|(i, _)| task_value(i.task))
                            .sum::<i64>();
                    self.processes[p].blocks.insert((attempt, worker));
                    self.succeeded.insert(attempt);
                    // Bytes for each partition of the stage that reads this one, as a
                    // map task writes one block per reduce partition.
                    let stages = &self.jobs[&attempt.task.job].spec.stages;
                    let readers = (stages.iter())
                        .find(|s| s.depends_on.contains(&attempt.task.stage))
                        .map_or(1, |s| s.tasks);
                    let partition_bytes = (0..readers).map(|_| self.rng.below(100)).collect();
                    Event::TaskSucceeded {
                        attempt,
                        worker,
                        // Stats that differ by attempt, so the stages' sums over
                        // done tasks change as tasks are undone and done again.
                        stats: TaskStats {
                            output_rows: value as u64,
                            partition_bytes,
                            elapsed_ms: 100,
                            spilled_bytes: self.rng.below(1 << 20),
                            spill_count: self.rng.below(4),
                            memory_bytes: self.rng.below(1 << 20),
                            peak_memory_bytes: self.rng.below(1 << 24),
                            ..Default::default()
                        },
                    }
                };
                let d = self.net_delay((worker.0, true));
                self.at(d, Action::ToCoordinator(event));
            }
            Action::Kill(worker, attempt) => {
                if let Some(p) = self.process_of(worker) {
                    let process = &mut self.processes[p];
                    process.running.remove(&attempt);
                    process.queued.retain(|l| l.attempt != attempt);
                    self.start_queued(p, worker);
                }
            }
            Action::Release(worker, job) => {
                if let Some(p) = self.process_of(worker) {
                    let process = &mut self.processes[p];
                    process.running.retain(|a, _| a.task.job != job);
                    process.queued.retain(|l| l.attempt.task.job != job);
                    let adopted = &process.adopted;
                    process
                        .blocks
                        .retain(|b| b.0.task.job != job || adopted.contains_key(b));
                    self.start_queued(p, worker);
                }
            }
            Action::SessionClosed(worker) => {
                if let Some(p) = self.process_of(worker) {
                    self.end_session(p, true);
                }
            }
            Action::Drained(worker) | Action::DrainTimeout(worker) => {
                if let Some(p) = self.process_of(worker) {
                    self.end_session(p, false);
                    let d = self.net_delay((worker.0, true));
                    self.at(d, Action::ToCoordinator(Event::WorkerLost { worker }));
                    // The machine comes back later as a new worker.
                    let back = self.rng.range(500, 3_000);
                    self.at(back, Action::Join { process: p });
                }
            }
            Action::Resume { process } => {
                let p = &mut self.processes[process];
                p.paused = false;
                if p.worker.is_none() && p.alive {
                    // Its session was closed while it slept: register again.
                    self.at(10, Action::Join { process });
                }
            }
            Action::Chaos => {
                if self.chaos() {
                    self.inject_fault();
                    let d = self.rng.range(200, 1_500);
                    self.at(d, Action::Chaos);
                } else {
                    self.heal();
                }
            }
        }
    }

    /// Runs an attempt in a free slot of the process: it finishes after a while, or,
    /// on a process that hangs, never.
    fn start(&mut self, p: usize, worker: WorkerId, mut launched: Launched) {
        if self.processes[p].hangs && self.now < CHAOS_MS && self.rng.chance(0.3) {
            self.stats.stalled += 1;
            launched.stuck = true;
            self.processes[p].running.insert(launched.attempt, launched);
            return;
        }
        let mut duration = self.rng.range(10, 200);
        if self.processes[p].slow {
            duration *= 20;
        }
        let attempt = launched.attempt;
        self.processes[p].running.insert(attempt, launched);
        self.at(duration, Action::TaskFinished(worker, attempt));
    }

    /// Starts queued attempts while the process has free slots.
    fn start_queued(&mut self, p: usize, worker: WorkerId) {
        while self.processes[p].running.len() < self.processes[p].slots as usize {
            let Some(next) = self.processes[p].queued.pop_front() else {
                break;
            };
            self.start(p, worker, next);
        }
    }

    /// The process's session ends: its tasks stop, and its blocks go unless it
    /// registers again soon (`reconnect`): then it keeps its tasks' outputs (not the
    /// cached tables') and reports them when it registers.
    fn end_session(&mut self, process: usize, reconnect: bool) {
        let p = &mut self.processes[process];
        p.worker = None;
        p.running.clear();
        p.queued.clear();
        let adopted = std::mem::take(&mut p.adopted);
        match reconnect && p.alive {
            true => p.blocks.retain(|b| !adopted.contains_key(b)),
            false => p.blocks.clear(),
        }
        if reconnect && !p.paused && p.alive {
            let d = self.rng.range(50, 500);
            self.at(d, Action::Join { process });
        }
    }

    fn inject_fault(&mut self) {
        let process = self.rng.below(self.processes.len() as u64) as usize;
        let Some(worker) = self.processes[process].worker else {
            return;
        };
        if !self.processes[process].alive || self.processes[process].paused {
            return;
        }
        self.stats.faults += 1;
        match self.rng.below(5) {
            // Killed: the OS closes its connection, the coordinator hears at once.
            0 => {
                self.processes[process].alive = false;
                self.end_session(process, false);
                let d = self.net_delay((worker.0, true));
                self.at(d, Action::ToCoordinator(Event::WorkerLost { worker }));
                let back = self.rng.range(500, 5_000);
                self.revive_later(process, back);
            }
            // The machine vanished: only the heartbeat timeout tells.
            1 => {
                self.processes[process].alive = false;
                self.processes[process].worker = None;
                self.processes[process].running.clear();
                self.processes[process].queued.clear();
                self.processes[process].blocks.clear();
                self.processes[process].adopted.clear();
                let back = self.rng.range(500, 5_000);
                self.revive_later(process, back);
            }
            // Paused (SIGSTOP), sometimes past the heartbeat timeout.
            2 => {
                self.processes[process].paused = true;
                let d = self.rng.range(200, 3_000);
                self.at(d, Action::Resume { process });
            }
            // Its connection broke: it registers again as a new worker.
            3 => {
                self.end_session(process, true);
                let d = self.net_delay((worker.0, true));
                self.at(d, Action::ToCoordinator(Event::WorkerLost { worker }));
            }
            // Decommissioned.
            _ => {
                if !self.processes[process].draining {
                    self.processes[process].draining = true;
                    let d = self.net_delay((worker.0, true));
                    self.at(d, Action::ToCoordinator(Event::WorkerDraining { worker }));
                    let timeout = self.rng.range(2_000, 10_000);
                    self.at(timeout, Action::DrainTimeout(worker));
                }
            }
        }
    }

    fn revive_later(&mut self, process: usize, delay: u64) {
        self.seq += 1;
        // A dead process comes back through Join, which marks it alive again.
        self.queue
            .insert((self.now + delay, self.seq), Action::Join { process });
    }

    /// The fault-free phase begins: every process runs and is registered.
    fn heal(&mut self) {
        for process in 0..self.processes.len() {
            if self.processes[process].paused {
                self.at(1, Action::Resume { process });
            } else if self.processes[process].worker.is_none() {
                self.at(1, Action::Join { process });
            }
        }
    }

    fn run(mut self) -> Stats {
        let mut quiet_until = None;
        while let Some(((time, _), action)) = self.queue.pop_first() {
            self.now = time;
            if self.now > END_MS {
                break;
            }
            if self.now > CHAOS_MS + 5_000
                && self.asked.is_empty()
                && self.jobs.values().all(|j| j.outcome.is_some())
            {
                // Uncache every table, let the last releases arrive, then nothing may
                // be left behind.
                if quiet_until.is_none() {
                    self.at(0, Action::Uncache(None));
                }
                quiet_until.get_or_insert(self.now + 1_000);
            } else {
                quiet_until = None;
            }
            if quiet_until.is_some_and(|t| self.now > t) {
                break;
            }
            self.step(action);
        }
        for (id, job) in &self.jobs {
            let outcome = job
                .outcome
                .as_ref()
                .unwrap_or_else(|| panic!("{id} never ended; {:?}", self.sched.job_outcome(*id)));
            if !job.submitted_in_chaos && job.poison.is_none() {
                assert_eq!(
                    outcome,
                    &JobOutcome::Succeeded,
                    "{id} was submitted in the fault-free phase"
                );
            }
            if job.poison.is_some() {
                assert!(
                    matches!(outcome, JobOutcome::Failed(m) if m.contains("poisoned")),
                    "{id}: {outcome:?}"
                );
            }
        }
        assert_eq!(self.catalog.tables().count(), 0, "every table was uncached");
        for p in &self.processes {
            assert!(
                !p.alive || p.blocks.is_empty(),
                "{:?} still holds {} blocks after every job ended and was released",
                p.worker,
                p.blocks.len()
            );
        }
        self.stats.jobs = self.jobs.len();
        self.stats.speculative = self
            .jobs
            .values()
            .flat_map(|j| j.spec.stages.iter().map(move |s| (j.spec.id, s.id)))
            .filter_map(|(job, stage)| self.sched.stage_attempts(job, stage))
            .map(|a| a.speculative as usize)
            .sum();
        self.stats
    }
}

fn run_seed(seed: u64) -> Stats {
    let result = std::panic::catch_unwind(|| World::new(seed).run());
    match result {
        Ok(r) => r,
        Err(panic) => {
            eprintln!("simulation seed {seed} failed; replay it with DROVE_SIM_SEED={seed}");
            std::panic::resume_unwind(panic)
        }
    }
}

/// The seeds to run: `DROVE_SIM_SEEDS=N` runs 0..N (200 by default), and
/// `DROVE_SIM_SEED=S` replays one.
fn seeds() -> Vec<u64> {
    match std::env::var("DROVE_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("DROVE_SIM_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("DROVE_SIM_SEEDS")
                .ok()
                .map(|n| n.parse().expect("DROVE_SIM_SEEDS must be a number"))
                .unwrap_or(200);
            (0..n).collect()
        }
    }
}

#[test]
fn scheduling_survives_crashes_pauses_and_delays() {
    let seeds = seeds();
    let mut total = Stats::default();
    for seed in &seeds {
        total += run_seed(*seed);
    }
    eprintln!("{} seeds: {total:?}", seeds.len());
    assert!(
        total.results_checked > seeds.len(),
        "seeds must produce checked results"
    );
    if seeds.len() >= 50 {
        // The harness must really have hurt the scheduler, in every way it can.
        assert!(
            total.faults > seeds.len()
                && total.recomputed > 0
                && total.fetch_failures > 0
                && total.stalled > 0
                && total.tables_cached > 0
                && total.cache_reads > 0
                && total.cache_repairs > 0
                && total.uncached > 0
                && total.held > 0
                && total.taken > 0
                && total.coalesced > 0,
            "{total:?}"
        );
    }
}

/// drove fs's replica decisions, simulated the same way.
#[path = "simulation/fs.rs"]
mod fs;
