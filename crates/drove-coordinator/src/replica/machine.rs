//! The replicated state machine: the coordinator's metadata ([`MetaState`]) with the
//! Raft entries applied to it, and its snapshots (`raft.snapshot`, written to a
//! temporary file, fsync'd and renamed into place).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use drove_core::meta::{Applied, MetaImage, MetaState};
use drove_proto as pb;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StoredMembership,
};
use pb::Message;

use super::{Types, wire};
use crate::durable::{self, StoreError};

const SNAPSHOT: &str = "raft.snapshot";

/// The state machine; clones share it (the coordinator reads it when it takes the lead).
#[derive(Clone)]
pub struct Machine {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    history_max: usize,
    state: MetaState,
    applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    /// The last snapshot, as written to disk.
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
}

fn snapshot_error(verb: ErrorVerb, e: impl ToString) -> StorageError<u64> {
    StorageError::from_io_error(
        ErrorSubject::Snapshot(None),
        verb,
        std::io::Error::other(e.to_string()),
    )
}

impl Machine {
    /// The state as of the snapshot in `dir`, if there is one; Raft applies the log's
    /// committed entries after it.
    pub fn open(dir: &Path, history_max: usize) -> Result<Self, StoreError> {
        let path = dir.join(SNAPSHOT);
        let _ = std::fs::remove_file(dir.join(format!("{SNAPSHOT}.tmp")));
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            history_max,
            state: MetaState::new(history_max),
            applied: None,
            membership: StoredMembership::default(),
            snapshot: None,
        };
        if let Some(bytes) = durable::read_file(&path)? {
            let found = durable::frames(&bytes, durable::SNAPSHOT_MAX);
            let file = match (found.payloads.as_slice(), found.end) {
                ([payload], durable::End::Clean) => pb::RaftSnapshotFile::decode(*payload).ok(),
                _ => None,
            }
            .ok_or_else(|| {
                StoreError::new(format!(
                    "the Raft snapshot {} is damaged; restore this coordinator's data directory from a backup (started empty under the same --node-id, it could vote twice in a term)",
                    path.display()
                ))
            })?;
            let meta = wire::snapshot_meta_from(&file.meta.unwrap_or_default());
            inner.restore(&meta, &file.data).map_err(StoreError::new)?;
            inner.snapshot = Some((meta, file.data));
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The metadata as applied so far.
    pub fn image(&self) -> MetaImage {
        self.lock().state.image()
    }

    /// The index of the last snapshot.
    pub fn snapshot_index(&self) -> u64 {
        let inner = self.lock();
        (inner.snapshot.as_ref())
            .and_then(|(m, _)| m.last_log_id)
            .map_or(0, |id| id.index)
    }
}

impl Inner {
    fn restore(&mut self, meta: &SnapshotMeta<u64, BasicNode>, data: &[u8]) -> Result<(), String> {
        let snapshot = pb::MetaSnapshot::decode(data)
            .map_err(|e| format!("a Raft snapshot cannot be read: {e}"))?;
        self.state = MetaState::from_image(durable::image_from_proto(snapshot), self.history_max);
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    fn save(
        &mut self,
        meta: SnapshotMeta<u64, BasicNode>,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let file = pb::RaftSnapshotFile {
            meta: Some(wire::snapshot_meta(&meta)),
            data,
        };
        if file.encoded_len() > durable::SNAPSHOT_MAX - 64 {
            return Err(StoreError::new(format!(
                "the metadata snapshot would take {} bytes, over the {} a snapshot file holds; keep fewer jobs (--job-history)",
                file.encoded_len(),
                durable::SNAPSHOT_MAX
            )));
        }
        durable::replace(&self.dir, SNAPSHOT, &durable::frame(&file.encode_to_vec()))?;
        self.snapshot = Some((meta, file.data));
        Ok(())
    }
}

impl RaftSnapshotBuilder<Types> for Machine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<Types>, StorageError<u64>> {
        let mut inner = self.lock();
        let index = inner.applied.map_or(0, |id| id.index);
        let data = durable::image_to_proto(inner.state.image(), index).encode_to_vec();
        let meta = SnapshotMeta {
            last_log_id: inner.applied,
            last_membership: inner.membership.clone(),
            snapshot_id: inner.applied.map_or_else(
                || "0-0".into(),
                |id| format!("{}-{}", id.leader_id.term, id.index),
            ),
        };
        inner
            .save(meta.clone(), data.clone())
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<Types> for Machine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let inner = self.lock();
        Ok((inner.applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Types>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let mut answers = Vec::new();
        for e in entries {
            inner.applied = Some(e.log_id);
            answers.push(match e.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Normal(command) => inner.state.apply(&command),
                EntryPayload::Membership(m) => {
                    inner.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied::default()
                }
            });
        }
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let data = snapshot.into_inner();
        let mut inner = self.lock();
        inner
            .restore(meta, &data)
            .map_err(|e| snapshot_error(ErrorVerb::Read, e))?;
        inner
            .save(meta.clone(), data)
            .map_err(|e| snapshot_error(ErrorVerb::Write, e))
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<Types>>, StorageError<u64>> {
        let inner = self.lock();
        Ok(inner.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

#[cfg(test)]
mod tests {
    use drove_core::meta::MetaCommand;
    use openraft::CommittedLeaderId;

    use super::*;

    fn entry(index: u64, command: MetaCommand) -> Entry<Types> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    #[tokio::test]
    async fn a_snapshot_carries_the_state_to_a_peer_and_across_a_restart() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut leader = Machine::open(a.path(), 10).unwrap();
        let answers = leader
            .apply([
                entry(1, MetaCommand::ClusterCreated { cluster_id: 42 }),
                entry(
                    2,
                    MetaCommand::WorkerRegistered {
                        flight_addr: "w:1".into(),
                        registered_ms: 5,
                        node_id: String::new(),
                    },
                ),
            ])
            .await
            .unwrap();
        assert_eq!(answers[1].worker.map(|w| w.0), Some(1));
        let snapshot = leader.build_snapshot().await.unwrap();
        assert_eq!(leader.snapshot_index(), 2);

        let mut follower = Machine::open(b.path(), 10).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(2));
        assert_eq!(follower.image().cluster_id, 42);
        // Ids go on from the snapshot, on the follower and after its restart.
        drop(follower);
        let mut follower = Machine::open(b.path(), 10).unwrap();
        let next = follower
            .apply([entry(
                3,
                MetaCommand::WorkerRegistered {
                    flight_addr: "w:2".into(),
                    registered_ms: 6,
                    node_id: String::new(),
                },
            )])
            .await
            .unwrap();
        assert_eq!(next[0].worker.map(|w| w.0), Some(2));

        std::fs::write(b.path().join(SNAPSHOT), b"damaged").unwrap();
        let e = Machine::open(b.path(), 10).err().unwrap().to_string();
        assert!(e.contains("is damaged"), "{e}");
    }
}
