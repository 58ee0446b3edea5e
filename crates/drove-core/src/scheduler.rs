//! The scheduler: a sans-I/O state machine.
//!
//! Events go in through [`Scheduler::handle`] (a worker joined, a job was submitted, a
//! task finished) and [`Command`]s come out (launch this attempt on that worker, the job
//! succeeded). The scheduler never blocks, sleeps or talks to the network; the
//! coordinator's runtime performs the commands.
//!
//! Architecture invariant: a stage's tasks are launched only once every stage it
//! depends on has all its tasks done, so a task never waits on data that is not there.
//! Architecture invariant: only the current attempt of a task may complete it; a report
//! from any other attempt is ignored (fencing).

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use crate::ids::{AttemptId, JobId, StageId, TaskId, WorkerId};
use crate::{Error, Result};

/// Limits and policies of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// How many attempts a task gets before its job fails (transient errors only).
    pub task_attempt_max: u32,
    /// How many jobs may be queued or running at once; more are refused.
    pub jobs_active_max: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            task_attempt_max: 4,
            jobs_active_max: 1024,
        }
    }
}

/// A stage as the scheduler sees it: how many tasks, and which stages it reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    pub id: StageId,
    pub tasks: u32,
    pub depends_on: Vec<StageId>,
}

/// A job as the scheduler sees it. The last stage's output is the job's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSpec {
    pub id: JobId,
    pub stages: Vec<StageSpec>,
    pub final_stage: StageId,
}

/// What a finished task reports about its work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskStats {
    pub output_bytes: u64,
    pub output_rows: u64,
    pub local_read_bytes: u64,
    pub remote_read_bytes: u64,
    pub elapsed_ms: u64,
    /// Named counts the task kept (e.g. invalid_utf8_lines).
    pub counters: BTreeMap<String, u64>,
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

/// A failed attempt's cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Something that happened, fed to [`Scheduler::handle`].
#[derive(Debug, Clone)]
pub enum Event {
    WorkerJoined {
        worker: WorkerId,
        slots: u32,
    },
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
    JobCancelled {
        job: JobId,
    },
    /// The runtime gave up on a running job (e.g. no worker came for too long).
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
}

/// Where a task is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Running {
        attempt: u32,
        worker: WorkerId,
    },
    Done {
        attempt: u32,
        worker: WorkerId,
        stats: TaskStats,
    },
}

#[derive(Debug)]
struct StageState {
    spec: StageSpec,
    tasks: Vec<TaskState>,
    /// Attempts started per task; the next attempt's number.
    attempts: Vec<u32>,
}

impl StageState {
    fn is_done(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| matches!(t, TaskState::Done { .. }))
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
    outcome: JobOutcome,
    /// Workers that may hold blocks of this job.
    touched: BTreeSet<WorkerId>,
}

#[derive(Debug)]
struct WorkerState {
    slots: u32,
    running: BTreeSet<AttemptId>,
}

/// The scheduler's whole state. See the module documentation.
#[derive(Debug, Default)]
pub struct Scheduler {
    config: SchedulerConfig,
    workers: BTreeMap<WorkerId, WorkerState>,
    jobs: BTreeMap<JobId, JobState>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            workers: BTreeMap::new(),
            jobs: BTreeMap::new(),
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
        let mut out = Vec::new();
        match event {
            Event::WorkerJoined { worker, slots } => {
                let previous = self.workers.insert(
                    worker,
                    WorkerState {
                        slots,
                        running: BTreeSet::new(),
                    },
                );
                assert!(previous.is_none(), "{worker} joined twice");
            }
            Event::WorkerLost { worker } => self.lose_worker(worker),
            Event::JobSubmitted(spec) => {
                if let Err(e) = self.validate(&spec) {
                    warn!(job = %spec.id, "refusing job: {e}");
                    out.push(Command::JobFailed {
                        job: spec.id,
                        message: e.to_string(),
                    });
                    return out;
                }
                let stages = spec
                    .stages
                    .iter()
                    .map(|s| {
                        let n = s.tasks as usize;
                        (
                            s.id,
                            StageState {
                                spec: s.clone(),
                                tasks: vec![TaskState::Pending; n],
                                attempts: vec![0; n],
                            },
                        )
                    })
                    .collect();
                self.jobs.insert(
                    spec.id,
                    JobState {
                        stages,
                        final_stage: spec.final_stage,
                        outcome: JobOutcome::Running,
                        touched: BTreeSet::new(),
                    },
                );
            }
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
                if let Some(state) = self.jobs.remove(&job) {
                    if state.outcome == JobOutcome::Running {
                        // Releasing a running job is a cancel followed by a release.
                        self.jobs.insert(job, state);
                        self.end_job(job, JobOutcome::Cancelled, &mut out);
                        out.push(Command::JobCancelled { job });
                        self.jobs.remove(&job);
                    } else if !state.touched.is_empty() {
                        out.push(Command::ReleaseBlocks {
                            job,
                            workers: state.touched.into_iter().collect(),
                        });
                    }
                }
            }
        }
        self.schedule(&mut out);
        self.check_invariants();
        out
    }

    /// The outcome of a job the scheduler still knows.
    pub fn job_outcome(&self, job: JobId) -> Option<&JobOutcome> {
        self.jobs.get(&job).map(|j| &j.outcome)
    }

    /// The state of every task of a stage, in partition order.
    pub fn stage_tasks(&self, job: JobId, stage: StageId) -> Option<&[TaskState]> {
        Some(&self.jobs.get(&job)?.stages.get(&stage)?.tasks)
    }

    /// Where each partition of a finished stage's output lives: (attempt, worker) per
    /// partition. `None` unless every task of the stage is done.
    pub fn stage_outputs(&self, job: JobId, stage: StageId) -> Option<Vec<(u32, WorkerId)>> {
        let tasks = self.stage_tasks(job, stage)?;
        tasks
            .iter()
            .map(|t| match t {
                TaskState::Done {
                    attempt, worker, ..
                } => Some((*attempt, *worker)),
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
        let Some(task) = self.current_task_mut(attempt, worker) else {
            return;
        };
        *task = TaskState::Done {
            attempt: attempt.attempt,
            worker,
            stats,
        };
        debug!(%attempt, %worker, "task done");
        let job = attempt.task.job;
        let state = &self.jobs[&job];
        if state.stages.values().all(StageState::is_done) {
            self.end_job(job, JobOutcome::Succeeded, out);
            out.push(Command::JobSucceeded { job });
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
        let attempt_max = self.config.task_attempt_max;
        let Some(task) = self.current_task_mut(attempt, worker) else {
            return;
        };
        *task = TaskState::Pending;
        let job = attempt.task.job;
        let attempts = attempt.attempt + 1;
        if !error.kind.is_retryable() {
            info!(%attempt, "task failed with a user error; failing the job");
            let message = format!("{} failed on {worker}: {}", attempt.task, error.message);
            self.end_job(job, JobOutcome::Failed(message.clone()), out);
            out.push(Command::JobFailed { job, message });
        } else if attempts >= attempt_max {
            let message = format!(
                "{} failed {attempts} times (the limit is {attempt_max}); last error on {worker}: {}",
                attempt.task, error.message
            );
            self.end_job(job, JobOutcome::Failed(message.clone()), out);
            out.push(Command::JobFailed { job, message });
        } else {
            warn!(%attempt, %worker, error = %error.message, "task failed; retrying");
        }
    }

    /// The task an attempt belongs to, if that attempt is the one currently running on
    /// that worker and the job is still running. Anything else is a stale report.
    fn current_task_mut(&mut self, attempt: AttemptId, worker: WorkerId) -> Option<&mut TaskState> {
        let job = self.jobs.get_mut(&attempt.task.job)?;
        if job.outcome != JobOutcome::Running {
            return None;
        }
        let stage = job.stages.get_mut(&attempt.task.stage)?;
        let task = stage.tasks.get_mut(attempt.task.partition as usize)?;
        match task {
            TaskState::Running {
                attempt: a,
                worker: w,
            } if *a == attempt.attempt && *w == worker => Some(task),
            _ => {
                debug!(%attempt, %worker, "ignoring a report from a superseded attempt");
                None
            }
        }
    }

    fn lose_worker(&mut self, worker: WorkerId) {
        let Some(lost) = self.workers.remove(&worker) else {
            return;
        };
        info!(%worker, running = lost.running.len(), "worker removed from scheduling");
        for job in self.jobs.values_mut() {
            if job.outcome != JobOutcome::Running {
                continue;
            }
            job.touched.remove(&worker);
            // Re-run what the worker was running, and whatever it held that is still
            // needed: outputs read by a stage not yet done, and the final stage's (the
            // client has yet to read it). Resetting a task makes its stage not done, which
            // can make more outputs needed: repeat until nothing changes (lineage).
            loop {
                let needed: BTreeSet<StageId> = job
                    .stages
                    .values()
                    .filter(|s| !s.is_done())
                    .flat_map(|s| s.spec.depends_on.iter().copied())
                    .chain([job.final_stage])
                    .collect();
                let mut changed = false;
                for (stage_id, stage) in &mut job.stages {
                    for task in &mut stage.tasks {
                        let rerun = match task {
                            TaskState::Running { worker: w, .. } => *w == worker,
                            TaskState::Done { worker: w, .. } => {
                                *w == worker && needed.contains(stage_id)
                            }
                            TaskState::Pending => false,
                        };
                        if rerun {
                            *task = TaskState::Pending;
                            changed = true;
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
        // whatever they report later is ignored.
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

    /// Hands pending tasks of runnable stages to free slots, oldest job first, each task
    /// to the worker with the most free slots.
    fn schedule(&mut self, out: &mut Vec<Command>) {
        for (job_id, job) in &mut self.jobs {
            if job.outcome != JobOutcome::Running {
                continue;
            }
            let done: BTreeSet<StageId> = job
                .stages
                .iter()
                .filter(|(_, s)| s.is_done())
                .map(|(id, _)| *id)
                .collect();
            for (stage_id, stage) in &mut job.stages {
                if !stage.spec.depends_on.iter().all(|d| done.contains(d)) {
                    continue;
                }
                for (partition, task) in stage.tasks.iter_mut().enumerate() {
                    if *task != TaskState::Pending {
                        continue;
                    }
                    let Some((worker_id, worker)) = self
                        .workers
                        .iter_mut()
                        .filter(|(_, w)| (w.running.len() as u32) < w.slots)
                        .max_by_key(|(id, w)| {
                            (w.slots - w.running.len() as u32, std::cmp::Reverse(**id))
                        })
                    else {
                        return;
                    };
                    let attempt = AttemptId {
                        task: TaskId {
                            job: *job_id,
                            stage: *stage_id,
                            partition: partition as u32,
                        },
                        attempt: stage.attempts[partition],
                    };
                    stage.attempts[partition] += 1;
                    worker.running.insert(attempt);
                    job.touched.insert(*worker_id);
                    *task = TaskState::Running {
                        attempt: attempt.attempt,
                        worker: *worker_id,
                    };
                    out.push(Command::Launch {
                        attempt,
                        worker: *worker_id,
                    });
                }
            }
        }
    }

    /// Asserts what must hold after every event. A failure here is a bug in drove.
    fn check_invariants(&self) {
        for (id, w) in &self.workers {
            assert!(
                w.running.len() as u32 <= w.slots,
                "{id} runs {} attempts on {} slots",
                w.running.len(),
                w.slots
            );
            for a in &w.running {
                let task = self
                    .stage_tasks(a.task.job, a.task.stage)
                    .map(|t| &t[a.task.partition as usize]);
                assert_eq!(
                    task,
                    Some(&TaskState::Running {
                        attempt: a.attempt,
                        worker: *id
                    }),
                    "{id} believes it runs {a}, the task disagrees"
                );
            }
        }
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
                })
                .collect(),
            final_stage: StageId(stages.last().unwrap().0),
        }
    }

    fn launches(cmds: &[Command]) -> Vec<(AttemptId, WorkerId)> {
        cmds.iter()
            .filter_map(|c| match c {
                Command::Launch { attempt, worker } => Some((*attempt, *worker)),
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

    fn succeed(s: &mut Scheduler, (attempt, worker): (AttemptId, WorkerId)) -> Vec<Command> {
        s.handle(Event::TaskSucceeded {
            attempt,
            worker,
            stats: TaskStats::default(),
        })
    }

    #[test]
    fn runs_stages_in_dependency_order_and_spreads_tasks() {
        let mut s = Scheduler::default();
        s.handle(Event::WorkerJoined {
            worker: WorkerId(1),
            slots: 2,
        });
        s.handle(Event::WorkerJoined {
            worker: WorkerId(2),
            slots: 2,
        });
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

    #[test]
    fn stale_attempts_are_fenced_and_retries_are_bounded() {
        let mut s = Scheduler::new(SchedulerConfig {
            task_attempt_max: 2,
            ..Default::default()
        });
        s.handle(Event::WorkerJoined {
            worker: WorkerId(1),
            slots: 1,
        });
        let first = launches(&s.handle(Event::JobSubmitted(job(7, &[(0, 1, &[])]))))[0];
        let error = TaskError {
            kind: ErrorKind::Transient,
            message: "disk hiccup".into(),
        };
        let retry = launches(&s.handle(Event::TaskFailed {
            attempt: first.0,
            worker: first.1,
            error: error.clone(),
        }))[0];
        assert_eq!(retry.0.attempt, 1);
        // The first attempt reporting success late changes nothing.
        assert!(succeed(&mut s, first).is_empty());
        let end = s.handle(Event::TaskFailed {
            attempt: retry.0,
            worker: retry.1,
            error,
        });
        let message = failure(&end).expect("the job failed");
        assert!(
            message.contains("failed 2 times") && message.contains("disk hiccup"),
            "{message}"
        );
    }

    #[test]
    fn user_errors_fail_the_job_at_once() {
        let mut s = Scheduler::default();
        s.handle(Event::WorkerJoined {
            worker: WorkerId(1),
            slots: 1,
        });
        let l = launches(&s.handle(Event::JobSubmitted(job(1, &[(0, 1, &[])]))))[0];
        let out = s.handle(Event::TaskFailed {
            attempt: l.0,
            worker: l.1,
            error: TaskError {
                kind: ErrorKind::User,
                message: "Divide by zero".into(),
            },
        });
        let message = failure(&out).expect("the job failed").to_string();
        assert!(message.contains("Divide by zero"), "{message}");
        assert_eq!(s.job_outcome(JobId(1)), Some(&JobOutcome::Failed(message)));
    }

    #[test]
    fn lost_worker_reruns_its_running_and_needed_tasks() {
        let mut s = Scheduler::default();
        s.handle(Event::WorkerJoined {
            worker: WorkerId(1),
            slots: 1,
        });
        s.handle(Event::WorkerJoined {
            worker: WorkerId(2),
            slots: 1,
        });
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
    }

    #[test]
    fn lost_outputs_are_recomputed_transitively() {
        let mut s = Scheduler::default();
        s.handle(Event::WorkerJoined {
            worker: WorkerId(1),
            slots: 1,
        });
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
        }));
        assert_eq!(again.len(), 1);
        assert_eq!(
            again[0].0.task.stage,
            StageId(0),
            "stage 1's input is gone too"
        );
        assert_eq!(s.stage_outputs(JobId(1), StageId(1)), None);
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

    #[test]
    fn rejects_malformed_jobs() {
        let s = Scheduler::default();
        assert!(s.validate(&job(1, &[(0, 0, &[])])).is_err());
        assert!(s.validate(&job(1, &[(0, 1, &[1]), (1, 1, &[])])).is_err());
    }
}
