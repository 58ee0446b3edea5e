//! The coordinator's durable metadata as a deterministic state machine.
//!
//! Metadata that must survive a coordinator restart (which jobs exist, how they ended)
//! changes only by [`MetaCommand`]s appended to a [`MetaLog`] and applied in log order.
//! Today the log lives in the coordinator's memory; the Raft-replicated coordinator
//! replaces [`MetaLog`] with an openraft log without changing the commands.
//!
//! Architecture invariant: [`MetaState::apply`] is deterministic: the same commands in
//! the same order give the same state on every replica.

use std::collections::{BTreeMap, VecDeque};

use crate::ids::JobId;

/// How a job ended, as recorded in the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    Failed(String),
    Cancelled,
}

/// One change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaCommand {
    /// A job was accepted. `submitted_ms` is the coordinator's wall clock, carried in the
    /// command so that applying it stays deterministic.
    JobSubmitted {
        job: JobId,
        name: String,
        submitted_ms: u64,
    },
    JobEnded {
        job: JobId,
        end: JobEnd,
        ended_ms: u64,
    },
}

/// What the metadata says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    pub name: String,
    pub submitted_ms: u64,
    pub ended: Option<(JobEnd, u64)>,
}

/// The state the commands build.
#[derive(Debug, Default)]
pub struct MetaState {
    next_job_id: u64,
    jobs: BTreeMap<JobId, JobMeta>,
    /// Ended jobs, oldest first, for the history limit.
    ended: VecDeque<JobId>,
    history_max: usize,
}

impl MetaState {
    /// Keeps at most `history_max` ended jobs; older ones are forgotten.
    pub fn new(history_max: usize) -> Self {
        Self {
            next_job_id: 1,
            history_max,
            ..Default::default()
        }
    }

    /// The id the next submitted job will get.
    pub fn next_job_id(&self) -> JobId {
        JobId(self.next_job_id)
    }

    pub fn job(&self, job: JobId) -> Option<&JobMeta> {
        self.jobs.get(&job)
    }

    /// Jobs newest first.
    pub fn jobs(&self) -> impl Iterator<Item = (JobId, &JobMeta)> {
        self.jobs.iter().rev().map(|(id, m)| (*id, m))
    }

    /// Applies one command and returns the jobs it pushed out of the history.
    pub fn apply(&mut self, command: &MetaCommand) -> Vec<JobId> {
        match command {
            MetaCommand::JobSubmitted {
                job,
                name,
                submitted_ms,
            } => {
                assert!(job.0 >= self.next_job_id, "{job} reuses an id");
                self.next_job_id = job.0 + 1;
                self.jobs.insert(
                    *job,
                    JobMeta {
                        name: name.clone(),
                        submitted_ms: *submitted_ms,
                        ended: None,
                    },
                );
                Vec::new()
            }
            MetaCommand::JobEnded { job, end, ended_ms } => {
                let Some(meta) = self.jobs.get_mut(job) else {
                    return Vec::new();
                };
                if meta.ended.is_some() {
                    return Vec::new();
                }
                meta.ended = Some((end.clone(), *ended_ms));
                self.ended.push_back(*job);
                let mut evicted = Vec::new();
                while self.ended.len() > self.history_max {
                    let old = self.ended.pop_front().expect("non-empty");
                    self.jobs.remove(&old);
                    evicted.push(old);
                }
                evicted
            }
        }
    }
}

/// The log of commands, applied in order. Bounded: entries before the oldest job still
/// in the state are compacted away.
#[derive(Debug)]
pub struct MetaLog {
    entries: VecDeque<MetaCommand>,
    entries_max: usize,
    state: MetaState,
}

impl MetaLog {
    pub fn new(history_max: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            entries_max: history_max.saturating_mul(4).max(64),
            state: MetaState::new(history_max),
        }
    }

    /// Appends a command and applies it; returns the jobs evicted from the history.
    pub fn append(&mut self, command: MetaCommand) -> Vec<JobId> {
        let evicted = self.state.apply(&command);
        self.entries.push_back(command);
        while self.entries.len() > self.entries_max {
            // A real snapshot would be written here; the in-memory state is the snapshot.
            self.entries.pop_front();
        }
        evicted
    }

    pub fn state(&self) -> &MetaState {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaying_the_log_gives_the_same_state_and_history_is_bounded() {
        let mut log = MetaLog::new(2);
        let mut all = Vec::new();
        for i in 1..=4 {
            let job = JobId(i);
            let cmds = [
                MetaCommand::JobSubmitted {
                    job,
                    name: format!("q{i}"),
                    submitted_ms: i * 10,
                },
                MetaCommand::JobEnded {
                    job,
                    end: JobEnd::Succeeded,
                    ended_ms: i * 10 + 5,
                },
            ];
            for c in cmds {
                all.push(c.clone());
                log.append(c);
            }
        }
        assert_eq!(
            log.state().jobs().count(),
            2,
            "only two ended jobs are kept"
        );
        assert_eq!(log.state().next_job_id(), JobId(5));
        let mut replica = MetaState::new(2);
        for c in &all {
            replica.apply(c);
        }
        assert_eq!(
            replica.jobs().collect::<Vec<_>>(),
            log.state().jobs().collect::<Vec<_>>()
        );
    }
}
