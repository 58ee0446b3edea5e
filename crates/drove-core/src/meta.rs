//! The coordinator's durable metadata as a deterministic state machine.
//!
//! Metadata that must survive a coordinator restart (which jobs exist and how they
//! ended, which ids are spent) changes only by [`MetaCommand`]s appended to a
//! [`MetaLog`] and applied in log order. The coordinator writes each command to disk
//! before it applies it (when it has a data directory); the Raft-replicated coordinator
//! replaces the local log with an openraft log without changing the commands.
//!
//! Architecture invariants: [`MetaState::apply`] is deterministic (the same commands in
//! the same order give the same state on every replica), and ids are allocated when a
//! command is applied, never read beforehand by whoever proposes it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use crate::access::{Identity, TokenMeta};
use crate::fs::{Entry, FsCommand, Namespace};
use crate::ids::{JobId, WorkerId};

/// Token ids the metadata keeps, at most: live and revoked together (a revoked id
/// is kept so it never authenticates again).
pub const TOKEN_IDS_MAX: usize = 100_000;

/// How a job ended, as recorded in the metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEnd {
    Succeeded,
    Failed(String),
    Cancelled,
}

/// One change to the metadata. Wall-clock times are carried in the commands so that
/// applying them stays deterministic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaCommand {
    /// A job was accepted; applying it allocates the job's id. `planned` is the job
    /// as its owner planned it (encoded by the coordinator), kept until it ends so a
    /// restarted coordinator can run it again; empty for a job that cannot be.
    JobSubmitted {
        name: String,
        /// The tenant it belongs to.
        tenant: String,
        submitted_ms: u64,
        planned: Vec<u8>,
        /// The client's id for the submission (0 for none): sent again, the same
        /// submission gets this job (see [`MetaState::submitted`]).
        request: u64,
    },
    /// A job ended. `record` is what the coordinator keeps of it for its history (its
    /// final status, encoded by the coordinator); the state machine does not read it.
    JobEnded {
        job: JobId,
        end: JobEnd,
        ended_ms: u64,
        record: Vec<u8>,
    },
    /// A worker registered; applying it allocates the worker's id, so that ids are
    /// never reused, across restarts too (attempt fencing relies on it).
    WorkerRegistered {
        flight_addr: String,
        registered_ms: u64,
        /// Its lasting identity, if it has one.
        node_id: String,
    },
    /// The cluster's identity, chosen once when its metadata begins: clients check it
    /// to tell a restarted coordinator that kept its metadata from one that did not.
    ClusterCreated {
        cluster_id: u64,
    },
    /// A table was cached.
    TableCached {
        name: String,
        table: TableMeta,
    },
    TableUncached {
        name: String,
    },
    /// A client token was made; `id` is the public part of it.
    TokenCreated {
        id: String,
        token: TokenMeta,
    },
    /// A token was revoked: it never authenticates again, nor does its id come back.
    TokenRevoked {
        id: String,
    },
    /// The key that signs clients' grants to read blocks; only the first counts.
    TicketKeyMade {
        key: Vec<u8>,
    },
    /// A change to `drove fs`'s namespace.
    Fs(FsCommand),
}

/// A cached table as the metadata keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableMeta {
    pub cache_id: u64,
    /// The tenant it belongs to.
    pub tenant: String,
    /// The memory its blocks held when it was cached.
    pub bytes: u64,
    pub cached_by: JobId,
    /// What its owner needs to compute it again (its schema and stages, encoded by
    /// the coordinator).
    pub lineage: Vec<u8>,
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The id a `JobSubmitted` allocated.
    pub job: Option<JobId>,
    /// The id a `WorkerRegistered` allocated.
    pub worker: Option<WorkerId>,
    /// Ended jobs pushed out of the history.
    pub evicted: Vec<JobId>,
    /// Chunks that no `drove fs` file holds any more.
    pub freed_chunks: Vec<u64>,
}

/// What the metadata says about a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    pub name: String,
    pub tenant: String,
    pub submitted_ms: u64,
    pub ended: Option<(JobEnd, u64)>,
    /// The job as planned, until it ends (see [`MetaCommand::JobSubmitted`]).
    pub planned: Vec<u8>,
    /// The coordinator's record of the ended job (see [`MetaCommand::JobEnded`]).
    pub record: Vec<u8>,
    /// The client's id for its submission (see [`MetaCommand::JobSubmitted`]).
    pub request: u64,
}

/// The whole state as plain data: what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaImage {
    pub cluster_id: u64,
    pub next_job_id: u64,
    pub next_worker_id: u64,
    /// Every job the state keeps, by id.
    pub jobs: Vec<(JobId, JobMeta)>,
    /// The ended ones among them, in the order they ended (oldest first).
    pub ended: Vec<JobId>,
    /// Cached tables by name.
    pub tables: Vec<(String, TableMeta)>,
    /// Live tokens by id.
    pub tokens: Vec<(String, TokenMeta)>,
    /// Revoked token ids.
    pub revoked: Vec<String>,
    /// Empty until [`MetaCommand::TicketKeyMade`].
    pub ticket_key: Vec<u8>,
    /// `drove fs`'s namespace, by path.
    pub fs: Vec<(String, Entry)>,
}

/// The state the commands build.
#[derive(Debug, Default)]
pub struct MetaState {
    /// 0 until [`MetaCommand::ClusterCreated`].
    cluster_id: u64,
    next_job_id: u64,
    next_worker_id: u64,
    jobs: BTreeMap<JobId, JobMeta>,
    /// The jobs kept, by their tenants and their submissions' request ids (those
    /// that have one): tenants choose their ids, so one tenant's cannot hide another's.
    requests: HashMap<(String, u64), JobId>,
    /// Ended jobs, oldest first, for the history limit.
    ended: VecDeque<JobId>,
    history_max: usize,
    tables: BTreeMap<String, TableMeta>,
    tokens: BTreeMap<String, TokenMeta>,
    revoked: BTreeSet<String>,
    ticket_key: Vec<u8>,
    fs: Namespace,
}

impl MetaState {
    /// Keeps at most `history_max` ended jobs; older ones are forgotten.
    pub fn new(history_max: usize) -> Self {
        Self {
            next_job_id: 1,
            next_worker_id: 1,
            history_max,
            ..Default::default()
        }
    }

    /// The state an image describes, keeping at most `history_max` ended jobs.
    pub fn from_image(image: MetaImage, history_max: usize) -> Self {
        let mut state = Self {
            cluster_id: image.cluster_id,
            next_job_id: image.next_job_id.max(1),
            next_worker_id: image.next_worker_id.max(1),
            requests: (image.jobs.iter())
                .filter(|(_, m)| m.request != 0)
                .map(|(id, m)| ((m.tenant.clone(), m.request), *id))
                .collect(),
            jobs: image.jobs.into_iter().collect(),
            ended: image.ended.into_iter().collect(),
            history_max,
            tables: image.tables.into_iter().collect(),
            tokens: image.tokens.into_iter().collect(),
            revoked: image.revoked.into_iter().collect(),
            ticket_key: image.ticket_key,
            fs: Namespace::from_entries(image.fs),
        };
        state.evict();
        state
    }

    pub fn image(&self) -> MetaImage {
        MetaImage {
            cluster_id: self.cluster_id,
            next_job_id: self.next_job_id,
            next_worker_id: self.next_worker_id,
            jobs: self.jobs.iter().map(|(id, m)| (*id, m.clone())).collect(),
            ended: self.ended.iter().copied().collect(),
            tables: (self.tables.iter())
                .map(|(n, t)| (n.clone(), t.clone()))
                .collect(),
            tokens: (self.tokens.iter())
                .map(|(id, t)| (id.clone(), t.clone()))
                .collect(),
            revoked: self.revoked.iter().cloned().collect(),
            ticket_key: self.ticket_key.clone(),
            fs: (self.fs.entries())
                .map(|(p, e)| (p.to_string(), e.clone()))
                .collect(),
        }
    }

    /// `drove fs`'s namespace.
    pub fn fs(&self) -> &Namespace {
        &self.fs
    }

    /// The key that signs clients' grants to read blocks; empty before one was made.
    pub fn ticket_key(&self) -> &[u8] {
        &self.ticket_key
    }

    /// Who a token is, given its id and the SHA-256 of its secret; `None` for an
    /// unknown or revoked token, or a wrong secret.
    pub fn token_identity(&self, id: &str, digest: &[u8]) -> Option<Identity> {
        let token = self.tokens.get(id)?;
        (token.digest == digest).then(|| Identity {
            tenant: token.tenant.clone(),
            role: token.role,
            principal: format!("token {id}"),
        })
    }

    /// Whether a token id was revoked (the bootstrap admin token's too).
    pub fn revoked(&self, id: &str) -> bool {
        self.revoked.contains(id)
    }

    /// Whether a token id is taken: live or revoked.
    pub fn token_id_used(&self, id: &str) -> bool {
        self.tokens.contains_key(id) || self.revoked.contains(id)
    }

    /// Token ids spent: live and revoked (at most [`TOKEN_IDS_MAX`]).
    pub fn token_ids_used(&self) -> usize {
        self.tokens.len() + self.revoked.len()
    }

    /// The live tokens, by id.
    pub fn tokens(&self) -> impl Iterator<Item = (&str, &TokenMeta)> {
        self.tokens.iter().map(|(id, t)| (id.as_str(), t))
    }

    pub fn table(&self, name: &str) -> Option<&TableMeta> {
        self.tables.get(name)
    }

    /// The cached tables, by name.
    pub fn tables(&self) -> impl Iterator<Item = (&str, &TableMeta)> {
        self.tables.iter().map(|(n, t)| (n.as_str(), t))
    }

    /// The cluster's identity; 0 before the cluster was created.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// The id the next submitted job will get.
    pub fn next_job_id(&self) -> JobId {
        JobId(self.next_job_id)
    }

    /// The id the next registered worker will get.
    pub fn next_worker_id(&self) -> WorkerId {
        WorkerId(self.next_worker_id)
    }

    pub fn job(&self, job: JobId) -> Option<&JobMeta> {
        self.jobs.get(&job)
    }

    /// The job `tenant`'s submission with id `request` made, if the state still keeps
    /// it: a client that sends a submission again (it could not tell whether the first
    /// reached the log) gets that job instead of a second one.
    pub fn submitted(&self, tenant: &str, request: u64) -> Option<JobId> {
        if request == 0 {
            return None;
        }
        self.requests.get(&(tenant.to_string(), request)).copied()
    }

    /// Jobs newest first.
    pub fn jobs(&self) -> impl Iterator<Item = (JobId, &JobMeta)> {
        self.jobs.iter().rev().map(|(id, m)| (*id, m))
    }

    /// Jobs submitted and not ended.
    pub fn unended(&self) -> impl Iterator<Item = JobId> + '_ {
        self.jobs
            .iter()
            .filter(|(_, m)| m.ended.is_none())
            .map(|(id, _)| *id)
    }

    /// Applies one command.
    pub fn apply(&mut self, command: &MetaCommand) -> Applied {
        match command {
            MetaCommand::JobSubmitted {
                name,
                tenant,
                submitted_ms,
                planned,
                request,
            } => {
                let job = JobId(self.next_job_id);
                self.next_job_id += 1;
                if *request != 0 {
                    self.requests.insert((tenant.clone(), *request), job);
                }
                self.jobs.insert(
                    job,
                    JobMeta {
                        name: name.clone(),
                        tenant: tenant.clone(),
                        submitted_ms: *submitted_ms,
                        ended: None,
                        planned: planned.clone(),
                        record: Vec::new(),
                        request: *request,
                    },
                );
                Applied {
                    job: Some(job),
                    ..Applied::default()
                }
            }
            MetaCommand::JobEnded {
                job,
                end,
                ended_ms,
                record,
            } => {
                let Some(meta) = self.jobs.get_mut(job) else {
                    return Applied::default();
                };
                if meta.ended.is_some() {
                    return Applied::default();
                }
                meta.ended = Some((end.clone(), *ended_ms));
                meta.planned = Vec::new();
                meta.record = record.clone();
                self.ended.push_back(*job);
                Applied {
                    evicted: self.evict(),
                    ..Applied::default()
                }
            }
            MetaCommand::TableCached { name, table } => {
                self.tables.insert(name.clone(), table.clone());
                Applied::default()
            }
            MetaCommand::TableUncached { name } => {
                self.tables.remove(name);
                Applied::default()
            }
            MetaCommand::TokenCreated { id, token } => {
                // Whoever proposes checks these; applying stays total and the same
                // on every replica.
                if !self.token_id_used(id) && self.token_ids_used() < TOKEN_IDS_MAX {
                    self.tokens.insert(id.clone(), token.clone());
                }
                Applied::default()
            }
            MetaCommand::TokenRevoked { id } => {
                self.tokens.remove(id);
                self.revoked.insert(id.clone());
                Applied::default()
            }
            MetaCommand::TicketKeyMade { key } => {
                if self.ticket_key.is_empty() {
                    self.ticket_key = key.clone();
                }
                Applied::default()
            }
            MetaCommand::Fs(command) => Applied {
                freed_chunks: self.fs.apply(command),
                ..Applied::default()
            },
            MetaCommand::ClusterCreated { cluster_id } => {
                if self.cluster_id == 0 {
                    self.cluster_id = *cluster_id;
                }
                Applied::default()
            }
            MetaCommand::WorkerRegistered { .. } => {
                let worker = WorkerId(self.next_worker_id);
                self.next_worker_id += 1;
                Applied {
                    worker: Some(worker),
                    ..Applied::default()
                }
            }
        }
    }

    fn evict(&mut self) -> Vec<JobId> {
        let mut evicted = Vec::new();
        while self.ended.len() > self.history_max {
            let old = self.ended.pop_front().expect("non-empty");
            if let Some(meta) = self.jobs.remove(&old) {
                let key = (meta.tenant, meta.request);
                if self.requests.get(&key) == Some(&old) {
                    self.requests.remove(&key);
                }
            }
            evicted.push(old);
        }
        evicted
    }
}

/// Where commands are applied, in log order. The log itself is kept by whoever
/// writes it down (the coordinator's data directory); this holds what it built.
#[derive(Debug)]
pub struct MetaLog {
    state: MetaState,
}

impl MetaLog {
    pub fn new(history_max: usize) -> Self {
        Self::from_state(MetaState::new(history_max))
    }

    /// A log that continues from `state` (recovered from disk).
    pub fn from_state(state: MetaState) -> Self {
        Self { state }
    }

    /// Applies the next command.
    pub fn append(&mut self, command: MetaCommand) -> Applied {
        self.state.apply(&command)
    }

    pub fn state(&self) -> &MetaState {
        &self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn history() -> Vec<MetaCommand> {
        let mut all = vec![MetaCommand::WorkerRegistered {
            flight_addr: "127.0.0.1:1".into(),
            registered_ms: 1,
            node_id: "node-1".into(),
        }];
        for i in 1..=4 {
            all.push(MetaCommand::JobSubmitted {
                name: format!("q{i}"),
                tenant: "a".into(),
                submitted_ms: i * 10,
                planned: vec![i as u8; 2],
                request: 100 + i,
            });
            all.push(MetaCommand::JobEnded {
                job: JobId(i),
                end: JobEnd::Succeeded,
                ended_ms: i * 10 + 5,
                record: vec![i as u8],
            });
        }
        all.push(MetaCommand::JobSubmitted {
            name: "running".into(),
            tenant: "b".into(),
            submitted_ms: 99,
            planned: vec![7],
            request: 0,
        });
        // Only the first identity counts.
        all.push(MetaCommand::ClusterCreated { cluster_id: 77 });
        all.push(MetaCommand::ClusterCreated { cluster_id: 78 });
        for (i, name) in ["a", "b"].into_iter().enumerate() {
            all.push(MetaCommand::TableCached {
                name: name.into(),
                table: TableMeta {
                    cache_id: i as u64 + 1,
                    tenant: "a".into(),
                    bytes: 10,
                    cached_by: JobId(2),
                    lineage: vec![9; i + 1],
                },
            });
        }
        all.push(MetaCommand::TableUncached { name: "a".into() });
        for id in ["t1", "t2"] {
            all.push(MetaCommand::TokenCreated {
                id: id.into(),
                token: TokenMeta {
                    tenant: "a".into(),
                    role: Role::Submit,
                    digest: id.as_bytes().to_vec(),
                    created_ms: 5,
                },
            });
        }
        all.push(MetaCommand::TokenRevoked { id: "t1".into() });
        all.push(MetaCommand::TicketKeyMade { key: vec![1; 32] });
        all.push(MetaCommand::TicketKeyMade { key: vec![2; 32] });
        all.push(MetaCommand::Fs(FsCommand::Commit {
            path: "d/f".into(),
            file: crate::fs::FileMeta {
                size: 3,
                chunk_bytes: 1 << 20,
                replication: 2,
                created_ms: 7,
                chunks: vec![crate::fs::ChunkMeta {
                    id: 5,
                    len: 3,
                    crc32c: 9,
                }],
            },
        }));
        all
    }

    #[test]
    fn tokens_authenticate_until_revoked_and_ids_never_return() {
        let mut log = MetaLog::new(2);
        for c in history() {
            log.append(c);
        }
        let state = log.state();
        assert!(state.token_identity("t1", b"t1").is_none(), "revoked");
        let who = state.token_identity("t2", b"t2").expect("live");
        assert_eq!((who.tenant.as_str(), who.role), ("a", Role::Submit));
        assert!(state.token_identity("t2", b"wrong").is_none());
        assert!(state.token_identity("t3", b"t3").is_none());
        // A revoked id made again stays revoked.
        log.append(MetaCommand::TokenCreated {
            id: "t1".into(),
            token: TokenMeta {
                tenant: "a".into(),
                role: Role::Admin,
                digest: b"t1".to_vec(),
                created_ms: 6,
            },
        });
        assert!(log.state().token_identity("t1", b"t1").is_none());
        assert!(log.state().revoked("t1") && log.state().token_id_used("t2"));
        assert_eq!(log.state().ticket_key(), [1; 32], "the first key stays");
    }

    #[test]
    fn ids_come_from_applying_and_history_is_bounded() {
        let mut log = MetaLog::new(2);
        let applied: Vec<Applied> = history().into_iter().map(|c| log.append(c)).collect();
        assert_eq!(applied[0].worker, Some(WorkerId(1)));
        assert_eq!(applied[1].job, Some(JobId(1)));
        assert_eq!(applied[9].job, Some(JobId(5)));
        assert_eq!(
            applied[6].evicted,
            vec![JobId(1)],
            "the third end evicts the first"
        );
        let kept: Vec<JobId> = log.state().jobs().map(|(id, _)| id).collect();
        assert_eq!(kept, vec![JobId(5), JobId(4), JobId(3)]);
        assert_eq!(log.state().unended().collect::<Vec<_>>(), vec![JobId(5)]);
        assert_eq!(log.state().next_job_id(), JobId(6));
        assert_eq!(log.state().cluster_id(), 77);
        let tables: Vec<_> = log.state().tables().map(|(n, t)| (n, t.cache_id)).collect();
        assert_eq!(tables, vec![("b", 2)]);
        assert_eq!(log.state().job(JobId(4)).unwrap().record, vec![4]);
        assert!(
            log.state().job(JobId(4)).unwrap().planned.is_empty(),
            "an ended job's plan is dropped"
        );
        assert_eq!(log.state().job(JobId(5)).unwrap().planned, vec![7]);
    }

    #[test]
    fn a_replica_and_a_restored_image_agree_with_the_log() {
        let mut log = MetaLog::new(2);
        let mut replica = MetaState::new(2);
        for c in history() {
            replica.apply(&c);
            log.append(c);
        }
        assert_eq!(replica.image(), log.state().image());
        let mut restored = MetaState::from_image(log.state().image(), 2);
        assert_eq!(restored.image(), log.state().image());
        // The restored state allocates where the original left off.
        let next = MetaCommand::WorkerRegistered {
            flight_addr: String::new(),
            registered_ms: 0,
            node_id: String::new(),
        };
        assert_eq!(restored.apply(&next).worker, Some(WorkerId(2)));
        let job = MetaCommand::JobSubmitted {
            name: String::new(),
            tenant: String::new(),
            submitted_ms: 0,
            planned: Vec::new(),
            request: 0,
        };
        assert_eq!(restored.apply(&job).job, Some(JobId(6)));
        // A smaller history limit on restore drops the oldest ended jobs.
        let smaller = MetaState::from_image(log.state().image(), 1);
        assert!(smaller.job(JobId(3)).is_none() && smaller.job(JobId(4)).is_some());
    }

    #[test]
    fn a_submission_sent_again_finds_its_job_while_the_history_keeps_it() {
        let mut state = MetaState::new(2);
        for c in history() {
            state.apply(&c);
        }
        // Jobs 1 and 2 were pushed out of the history of 2, and their requests with
        // them; job 4's request finds it, for its tenant only.
        assert_eq!(state.submitted("a", 104), Some(JobId(4)));
        assert_eq!(state.submitted("a", 103), Some(JobId(3)));
        assert_eq!(state.submitted("b", 104), None, "another tenant's request");
        assert_eq!(state.submitted("a", 101), None, "forgotten with its job");
        assert_eq!(state.submitted("b", 0), None, "no request id");
        // Another tenant's submission with the same id is its own.
        let b = state.apply(&MetaCommand::JobSubmitted {
            name: "b's".into(),
            tenant: "b".into(),
            submitted_ms: 100,
            planned: Vec::new(),
            request: 104,
        });
        assert_eq!(state.submitted("b", 104), b.job);
        assert_eq!(state.submitted("a", 104), Some(JobId(4)));
        // The index comes back from an image, as after a restart.
        let restored = MetaState::from_image(state.image(), 2);
        assert_eq!(restored.submitted("a", 104), Some(JobId(4)));
        assert_eq!(restored.submitted("b", 104), b.job);
        assert_eq!(restored.submitted("a", 101), None);
    }
}
