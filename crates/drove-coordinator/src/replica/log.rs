//! The Raft log on disk (`raft.log`): a CRC-framed `RaftLogRecord` per change, in the
//! order made (entries, truncations, purges, votes, the commit point), each fsync'd
//! before it is acknowledged, except the commit point, which Raft can learn again.
//! Entries stay in memory until a snapshot lets Raft purge them; then the file is
//! rewritten with what is left.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use drove_proto as pb;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, LogId, RaftLogReader, StorageError, Vote};
use pb::Message;
use pb::raft_log_record::Record;

use super::{Types, wire};
use crate::durable::{self, StoreError};

const LOG: &str = "raft.log";

/// Records beyond the entries it holds that the file may carry before a purge rewrites it.
const REWRITE_AFTER: u64 = 4_096;

/// The log; clones share it (Raft reads it from its replication tasks).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry<Types>>,
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    purged: Option<LogId<u64>>,
    written: u64,
}

fn write_error(e: StoreError) -> StorageError<u64> {
    StorageError::from_io_error(
        ErrorSubject::Logs,
        ErrorVerb::Write,
        std::io::Error::other(e),
    )
}

impl LogStore {
    /// Opens `dir/raft.log` (creating it if needed), cutting off a torn last record;
    /// damage before the last record is refused.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(LOG);
        let _ = std::fs::remove_file(dir.join(format!("{LOG}.tmp")));
        let bytes = durable::read_file(&path)?.unwrap_or_default();
        let found = durable::frames(&bytes, durable::ENTRY_MAX);
        let damaged = |at: usize| {
            StoreError::new(format!(
                "the Raft log {} is damaged at byte {at}; restore this coordinator's data directory from a backup (started empty under the same --node-id, it could vote twice in a term)",
                path.display()
            ))
        };
        if let durable::End::Damaged(at) = found.end {
            return Err(damaged(at));
        }
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| durable::io_error("open", &path, e))?,
            entries: BTreeMap::new(),
            vote: None,
            committed: None,
            purged: None,
            written: found.payloads.len() as u64,
        };
        let mut good = 0;
        for (payload, end) in found.payloads.iter().zip(&found.ends) {
            let Some(record) = pb::RaftLogRecord::decode(*payload)
                .ok()
                .and_then(|r| r.record)
            else {
                // Whole and checksummed, yet not a record: only a tail of zeros (a torn
                // write some filesystems leave) is not damage.
                if bytes[good..].iter().all(|b| *b == 0) {
                    break;
                }
                return Err(damaged(good));
            };
            inner.replay(record).map_err(|e| {
                StoreError::new(format!(
                    "the Raft log {} cannot be read: {e}",
                    path.display()
                ))
            })?;
            good = *end;
        }
        let good = good as u64;
        if good < bytes.len() as u64 {
            inner
                .file
                .set_len(good)
                .and_then(|()| inner.file.sync_all())
                .map_err(|e| durable::io_error("cut the torn end of", &path, e))?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether nothing was ever written: a node that has yet to join its cluster.
    pub fn is_fresh(&self) -> bool {
        let inner = self.lock();
        inner.vote.is_none() && inner.entries.is_empty() && inner.purged.is_none()
    }
}

fn framed(records: &[Record]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for r in records {
        let record = pb::RaftLogRecord {
            record: Some(r.clone()),
        };
        bytes.extend(durable::frame(&record.encode_to_vec()));
    }
    bytes
}

impl Inner {
    fn replay(&mut self, record: Record) -> Result<(), wire::Malformed> {
        match record {
            Record::Entry(e) => {
                let e = wire::entry_from(e)?;
                self.entries.insert(e.log_id.index, e);
            }
            Record::TruncatedFrom(index) => {
                self.entries.split_off(&index);
            }
            Record::Purged(id) => {
                let id = wire::log_id_from(&id);
                self.entries = self.entries.split_off(&(id.index + 1));
                self.purged = Some(id);
            }
            Record::Vote(v) => self.vote = Some(wire::vote_from(Some(&v))?),
            Record::Committed(id) => self.committed = Some(wire::log_id_from(&id)),
        }
        Ok(())
    }

    fn write(&mut self, records: &[Record], sync: bool) -> Result<(), StoreError> {
        let bytes = framed(records);
        let path = self.dir.join(LOG);
        self.file
            .write_all(&bytes)
            .map_err(|e| durable::io_error("write", &path, e))?;
        if sync {
            self.file
                .sync_data()
                .map_err(|e| durable::io_error("sync", &path, e))?;
        }
        self.written += records.len() as u64;
        Ok(())
    }

    /// Writes what the log holds now to a new file and puts it in place of the old.
    fn rewrite(&mut self) -> Result<(), StoreError> {
        let mut records = Vec::new();
        records.extend(self.vote.as_ref().map(|v| Record::Vote(wire::vote(v))));
        records.extend(
            self.purged
                .as_ref()
                .map(|p| Record::Purged(wire::log_id(p))),
        );
        records.extend(
            self.committed
                .as_ref()
                .map(|c| Record::Committed(wire::log_id(c))),
        );
        records.extend(self.entries.values().map(|e| Record::Entry(wire::entry(e))));
        durable::replace(&self.dir, LOG, &framed(&records))?;
        let path = self.dir.join(LOG);
        self.file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| durable::io_error("open", &path, e))?;
        self.written = records.len() as u64;
        Ok(())
    }

    fn last(&self) -> Option<LogId<u64>> {
        self.entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(self.purged)
    }
}

impl RaftLogReader<Types> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<Types>>, StorageError<u64>> {
        Ok(self
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect())
    }
}

impl RaftLogStorage<Types> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<Types>, StorageError<u64>> {
        let inner = self.lock();
        Ok(LogState {
            last_purged_log_id: inner.purged,
            last_log_id: inner.last(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner
            .write(&[Record::Vote(wire::vote(vote))], true)
            .map_err(write_error)?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<u64>>,
    ) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        if let Some(c) = committed {
            inner
                .write(&[Record::Committed(wire::log_id(&c))], false)
                .map_err(write_error)?;
        }
        inner.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<Types>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<Types>> + Send,
        I::IntoIter: Send,
    {
        let mut inner = self.lock();
        let entries: Vec<Entry<Types>> = entries.into_iter().collect();
        let records: Vec<Record> = entries
            .iter()
            .map(|e| Record::Entry(wire::entry(e)))
            .collect();
        let written = inner.write(&records, true);
        if written.is_ok() {
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        drop(inner);
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let io = std::io::Error::other(e.to_string());
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageError::from_io_error(
                    ErrorSubject::Logs,
                    ErrorVerb::Write,
                    io,
                ))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner
            .write(&[Record::TruncatedFrom(log_id.index)], true)
            .map_err(write_error)?;
        inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut inner = self.lock();
        inner
            .write(&[Record::Purged(wire::log_id(&log_id))], true)
            .map_err(write_error)?;
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        inner.purged = Some(log_id);
        if inner.written > REWRITE_AFTER + inner.entries.len() as u64 {
            inner.rewrite().map_err(write_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use drove_core::meta::MetaCommand;
    use openraft::storage::RaftLogStorageExt;
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<Types> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Normal(MetaCommand::ClusterCreated { cluster_id: index }),
        }
    }

    async fn indexes(store: &mut LogStore) -> Vec<(u64, u64)> {
        let entries = store.try_get_log_entries(0..u64::MAX).await.unwrap();
        entries
            .iter()
            .map(|e| (e.log_id.leader_id.term, e.log_id.index))
            .collect()
    }

    #[tokio::test]
    async fn the_log_survives_a_reopen_with_its_truncations_purges_and_vote() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(store.is_fresh());
        store.save_vote(&Vote::new(2, 1)).await.unwrap();
        store
            .blocking_append((1..=6).map(|i| entry(1, i)))
            .await
            .unwrap();
        // A new leader's log replaces entries from 5 on; a snapshot covers up to 2.
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), 5))
            .await
            .unwrap();
        store.blocking_append([entry(2, 5)]).await.unwrap();
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 2))
            .await
            .unwrap();
        let want = vec![(1, 3), (1, 4), (2, 5)];
        assert_eq!(indexes(&mut store).await, want);
        drop(store);

        let mut store = LogStore::open(dir.path()).unwrap();
        assert!(!store.is_fresh());
        assert_eq!(indexes(&mut store).await, want);
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));

        // A torn last record (a crash mid-write) is cut off; damage before it refused.
        let path = dir.path().join(LOG);
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(&[7, 0, 0, 0, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, want);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
        drop(store);
        // So is a tail of zeros (whole frames of nothing, as some filesystems leave).
        let mut zeros = bytes[..whole].to_vec();
        zeros.extend_from_slice(&[0; 24]);
        std::fs::write(&path, &zeros).unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await, want);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
        drop(store);
        bytes[20] ^= 0xff;
        bytes.truncate(whole);
        std::fs::write(&path, &bytes).unwrap();
        let e = LogStore::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("is damaged") && e.contains("restore this coordinator's data directory"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_purge_rewrites_a_file_grown_long() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = LogStore::open(dir.path()).unwrap();
        for i in 1..=REWRITE_AFTER + 10 {
            store.blocking_append([entry(1, i)]).await.unwrap();
        }
        let before = std::fs::metadata(dir.path().join(LOG)).unwrap().len();
        let last = LogId::new(CommittedLeaderId::new(1, 1), REWRITE_AFTER);
        store.purge(last).await.unwrap();
        let after = std::fs::metadata(dir.path().join(LOG)).unwrap().len();
        assert!(after * 10 < before, "{after} bytes after, {before} before");
        drop(store);
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(indexes(&mut store).await.len(), 10);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(last));
    }
}
