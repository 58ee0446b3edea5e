//! The coordinator's metadata on disk (`--data-dir`): the [`MetaCommand`]s in an
//! append-only log, and snapshots of the state they built.
//!
//! Files in the directory:
//! - `meta.log`: one frame per entry: the payload's length (u32, little-endian), its
//!   CRC-32C (u32, little-endian), then the payload, an encoded `MetaEntry`. An entry is
//!   written and fsync'd before its command is applied, so nobody hears of a change the
//!   disk does not hold. A crash can tear only the last entry, one nobody heard of; it
//!   is cut off when the log is opened.
//! - `meta.snapshot`: one frame holding a `MetaSnapshot`, written to a temporary file,
//!   fsync'd, renamed into place, and the directory fsync'd. The log then starts again,
//!   empty; entries a crash left in it that the snapshot already covers are skipped by
//!   their index.
//! - `LOCK`: locked while a coordinator uses the directory, so two cannot share it.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

use std::sync::Arc;

use drove_core::JobId;
use drove_core::access::{Role, TokenMeta};
use drove_core::fs::{ChunkMeta, Entry, FileMeta, FsCommand};
use drove_core::meta::{JobEnd, JobMeta, MetaCommand, MetaImage, MetaState, TableMeta};
use drove_exec::planner::OutputMode;
use drove_proto::{self as pb, Message};
use tracing::warn;

use crate::planning::{JobOptions, PlannedJob, PlannedStage};

const LOG: &str = "meta.log";
const SNAPSHOT: &str = "meta.snapshot";
/// Bytes before each frame's payload.
const HEADER: usize = 8;
/// The largest log entry: a job whose plans take more is refused at submission.
pub const ENTRY_MAX: usize = pb::MAX_MESSAGE_BYTES;
/// The largest snapshot (what a frame's length can say).
pub(crate) const SNAPSHOT_MAX: usize = u32::MAX as usize;
/// Entries written between snapshots.
pub const SNAPSHOT_EVERY: u64 = 1_000;

/// A data directory that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(String);

impl StoreError {
    pub(crate) fn new(message: String) -> Self {
        Self(message)
    }
}

/// Creates `dir` if needed and takes its `LOCK`, which stops two coordinators sharing
/// it; the lock holds while the file stays open.
pub(crate) fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    drove_exec::datadir::lock(dir, "coordinator").map_err(StoreError)
}

pub(crate) fn io_error(doing: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError(format!("cannot {doing} {}: {e}", path.display()))
}

/// The log and snapshot files of one data directory, open for appending.
pub struct MetaStore {
    dir: PathBuf,
    log: File,
    /// The index the next entry gets.
    next_index: u64,
    /// The index the last snapshot covers.
    snapshot_index: u64,
    snapshot_every: u64,
    _lock: File,
}

/// What opening a data directory found.
pub struct Recovered {
    pub store: MetaStore,
    pub state: MetaState,
    /// Entries replayed on top of the snapshot.
    pub replayed: u64,
    /// Bytes of a torn last entry cut off the log.
    pub torn_bytes: u64,
}

impl MetaStore {
    /// Opens (creating if needed) `dir` and rebuilds the state its snapshot and log
    /// describe, keeping at most `history_max` ended jobs.
    pub fn open(dir: &Path, history_max: usize) -> Result<Recovered, StoreError> {
        Self::open_with(dir, history_max, SNAPSHOT_EVERY)
    }

    /// [`MetaStore::open`], snapshotting every `snapshot_every` entries.
    pub fn open_with(
        dir: &Path,
        history_max: usize,
        snapshot_every: u64,
    ) -> Result<Recovered, StoreError> {
        let lock = lock_dir(dir)?;
        let _ = std::fs::remove_file(dir.join(format!("{SNAPSHOT}.tmp")));
        let _ = std::fs::remove_file(dir.join(format!("{LOG}.tmp")));

        let (snapshot_index, image) = match read_file(&dir.join(SNAPSHOT))? {
            None => (0, None),
            Some(bytes) => {
                let frames = frames(&bytes, SNAPSHOT_MAX);
                let ([payload], End::Clean) = (frames.payloads.as_slice(), frames.end) else {
                    return Err(StoreError(format!(
                        "the snapshot {} is damaged; restore the data directory from a backup, or move it away to start with no history",
                        dir.join(SNAPSHOT).display()
                    )));
                };
                let snapshot = pb::MetaSnapshot::decode(*payload).map_err(|e| {
                    StoreError(format!(
                        "the snapshot {} cannot be read ({e}); restore the data directory from a backup, or move it away to start with no history",
                        dir.join(SNAPSHOT).display()
                    ))
                })?;
                (snapshot.last_index, Some(image_from_proto(snapshot)))
            }
        };
        let mut state = match image {
            Some(image) => MetaState::from_image(image, history_max),
            None => MetaState::new(history_max),
        };

        let log_path = dir.join(LOG);
        let bytes = read_file(&log_path)?.unwrap_or_default();
        let found = frames(&bytes, ENTRY_MAX);
        let corrupt = |at: usize| {
            StoreError(format!(
                "the log {} is damaged at byte {at}, before its last entry (a write that was acknowledged); restore the data directory from a backup",
                log_path.display()
            ))
        };
        let mut next_index = snapshot_index + 1;
        let mut replayed = 0;
        let mut valid_len = 0;
        for (payload, end) in found.payloads.iter().zip(&found.ends) {
            let command = pb::MetaEntry::decode(*payload)
                .ok()
                .and_then(|e| Some((e.index, command_from_proto(e.command)?)));
            let Some((index, command)) = command else {
                // Whole and checksummed, yet not an entry: only a tail of zeros (a
                // torn write some filesystems leave) is not damage.
                if bytes[valid_len..].iter().all(|b| *b == 0) {
                    break;
                }
                return Err(corrupt(valid_len));
            };
            valid_len = *end;
            if index < next_index {
                continue; // covered by the snapshot
            }
            if index != next_index {
                return Err(StoreError(format!(
                    "the log {} skips from entry {} to {index}; restore the data directory from a backup",
                    log_path.display(),
                    next_index - 1,
                )));
            }
            state.apply(&command);
            next_index += 1;
            replayed += 1;
        }
        if let End::Damaged(at) = found.end {
            return Err(corrupt(at));
        }
        let torn_bytes = (bytes.len() - valid_len) as u64;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error("open", &log_path, e))?;
        if torn_bytes > 0 {
            warn!(
                path = %log_path.display(),
                torn_bytes,
                "cutting a torn last entry off the metadata log"
            );
            log.set_len(valid_len as u64)
                .and_then(|()| log.sync_all())
                .map_err(|e| io_error("truncate", &log_path, e))?;
        }
        sync_dir(dir)?;
        Ok(Recovered {
            store: MetaStore {
                dir: dir.to_path_buf(),
                log,
                next_index,
                snapshot_index,
                snapshot_every: snapshot_every.max(1),
                _lock: lock,
            },
            state,
            replayed,
            torn_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last entry written.
    pub fn last_index(&self) -> u64 {
        self.next_index - 1
    }

    /// The last entry the snapshot holds.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot_index
    }

    /// Writes `command` as the next entry and waits until the disk holds it.
    pub fn append(&mut self, command: &MetaCommand) -> Result<(), StoreError> {
        let entry = pb::MetaEntry {
            index: self.next_index,
            command: Some(command_to_proto(command)),
        };
        let path = self.dir.join(LOG);
        let payload = entry.encode_to_vec();
        if payload.len() > ENTRY_MAX {
            return Err(StoreError(format!(
                "an entry of {} bytes is over the log's limit of {ENTRY_MAX}",
                payload.len()
            )));
        }
        self.log
            .write_all(&frame(&payload))
            .and_then(|()| self.log.sync_data())
            .map_err(|e| io_error("write to", &path, e))?;
        self.next_index += 1;
        Ok(())
    }

    /// Once enough entries have been written since the last snapshot, writes `state`
    /// (which must be the state after every entry written) as the new snapshot and
    /// empties the log.
    pub fn compact_if_due(&mut self, state: &MetaState) -> Result<(), StoreError> {
        let last_index = self.next_index - 1;
        if last_index - self.snapshot_index < self.snapshot_every {
            return Ok(());
        }
        let snapshot = image_to_proto(state.image(), last_index).encode_to_vec();
        if snapshot.len() > SNAPSHOT_MAX {
            return Err(StoreError(format!(
                "a snapshot of {} bytes is over the {SNAPSHOT_MAX} a frame can hold; lower --job-history",
                snapshot.len()
            )));
        }
        replace(&self.dir, SNAPSHOT, &frame(&snapshot))?;
        self.snapshot_index = last_index;
        replace(&self.dir, LOG, &[])?;
        let path = self.dir.join(LOG);
        self.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| io_error("open", &path, e))?;
        Ok(())
    }
}

/// A job that a restarted coordinator can run again, as [`decode_planned`] gives it back.
pub struct Resumable {
    pub planned: PlannedJob,
    pub sql: String,
    pub options: JobOptions,
}

/// `planned` as a job's submission keeps it, or nothing for a job that is not run
/// again after a restart: one that caches a table or reads a cached one (its plans
/// name blocks of cached tables that a restart loses).
pub fn encode_planned(
    planned: &PlannedJob,
    sql: &str,
    options: JobOptions,
    caches: bool,
) -> Vec<u8> {
    let reads_cache = planned
        .stages
        .iter()
        .any(|s| s.cache.is_some() || s.origin.is_some() || s.local_input.is_some());
    if caches || reads_cache {
        return Vec::new();
    }
    pb::MetaPlannedJob {
        sql: sql.to_string(),
        physical_plan: planned.physical_plan.clone(),
        settings: planned.settings.clone(),
        result_schema: planned.result_schema.clone(),
        stages: planned.stages.iter().map(stage_to_proto).collect(),
        detached: options.detached,
        priority: options.priority,
    }
    .encode_to_vec()
}

/// The job [`encode_planned`] kept; `None` for none (or bytes that do not decode).
pub fn decode_planned(bytes: &[u8]) -> Option<Resumable> {
    if bytes.is_empty() {
        return None;
    }
    let job = pb::MetaPlannedJob::decode(bytes).ok()?;
    Some(Resumable {
        planned: PlannedJob {
            stages: job.stages.into_iter().map(stage_from_proto).collect(),
            physical_plan: job.physical_plan,
            settings: job.settings,
            result_schema: job.result_schema,
            lineage: Vec::new(),
        },
        sql: job.sql,
        options: JobOptions {
            detached: job.detached,
            priority: job.priority,
            ..JobOptions::default()
        },
    })
}

/// A cached table's schema (Arrow IPC bytes) and the stages that computed it, as its
/// `TableCached` entry keeps them.
pub fn encode_cached_table(schema: Vec<u8>, stages: &[PlannedStage]) -> Vec<u8> {
    pb::MetaCachedTable {
        schema,
        stages: stages.iter().map(stage_to_proto).collect(),
    }
    .encode_to_vec()
}

/// What [`encode_cached_table`] kept.
pub fn decode_cached_table(bytes: &[u8]) -> Option<(Vec<u8>, Vec<PlannedStage>)> {
    let table = pb::MetaCachedTable::decode(bytes).ok()?;
    let stages = table.stages.into_iter().map(stage_from_proto).collect();
    Some((table.schema, stages))
}

fn stage_to_proto(s: &PlannedStage) -> pb::MetaPlannedStage {
    pb::MetaPlannedStage {
        id: s.id,
        plan: s.plan.as_ref().clone(),
        output: match s.output {
            OutputMode::Single => pb::OutputMode::Single,
            OutputMode::RepartitionRoot => pb::OutputMode::RepartitionRoot,
        } as i32,
        tasks: s.tasks,
        depends_on: s.depends_on.clone(),
        root: s.root.clone(),
        plan_text: s.plan_text.clone(),
        cache: s.cache,
        origin_cache: s.origin.map(|(cache, _)| cache),
        origin_stage: s.origin.map(|(_, stage)| stage),
        local_input: s.local_input,
        coalesce: s.coalesce,
    }
}

fn stage_from_proto(s: pb::MetaPlannedStage) -> PlannedStage {
    PlannedStage {
        id: s.id,
        output: match s.output() {
            pb::OutputMode::Single => OutputMode::Single,
            pb::OutputMode::RepartitionRoot => OutputMode::RepartitionRoot,
        },
        plan: Arc::new(s.plan),
        tasks: s.tasks,
        depends_on: s.depends_on,
        root: s.root,
        plan_text: s.plan_text,
        cache: s.cache,
        origin: s.origin_cache.zip(s.origin_stage),
        local_input: s.local_input,
        coalesce: s.coalesce,
        // Where the data was when it was planned: not kept, as the replicas move.
        preferred: Vec::new(),
    }
}

pub(crate) fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The whole frames at the start of `bytes` (none longer than `max`), where each ends,
/// and what follows them.
pub(crate) struct Frames<'a> {
    pub payloads: Vec<&'a [u8]>,
    pub ends: Vec<usize>,
    pub end: End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Nothing follows the last whole frame.
    Clean,
    /// A frame cut short, or one that fails its checksum and runs to the end: the last
    /// write, torn by a crash, and never acknowledged.
    Torn,
    /// A frame that fails its checksum with more after it, from this offset: damage.
    Damaged(usize),
}

pub(crate) fn frames(bytes: &[u8], max: usize) -> Frames<'_> {
    let mut found = Frames {
        payloads: Vec::new(),
        ends: Vec::new(),
        end: End::Clean,
    };
    let mut at = 0;
    while at < bytes.len() {
        if bytes.len() - at < HEADER {
            found.end = End::Torn;
            break;
        }
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let start = at + HEADER;
        if len > max {
            // No entry is that long: a damaged header.
            found.end = End::Damaged(at);
            break;
        }
        if bytes.len() - start < len {
            found.end = End::Torn;
            break;
        }
        let payload = &bytes[start..start + len];
        if crc32c::crc32c(payload) != crc {
            found.end = if start + len == bytes.len() {
                End::Torn
            } else {
                End::Damaged(at)
            };
            break;
        }
        at = start + len;
        found.payloads.push(payload);
        found.ends.push(at);
    }
    found
}

pub(crate) fn read_file(path: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("open", path, e)),
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|e| io_error("read", path, e))?;
    Ok(Some(bytes))
}

/// Replaces `dir/name` with `contents`, atomically and durably.
pub(crate) fn replace(dir: &Path, name: &str, contents: &[u8]) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut file = File::create(&tmp).map_err(|e| io_error("create", &tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("write", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error("rename into place", &path, e))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync the directory", dir, e))
}

fn end_to_proto(job: JobId, end: &JobEnd, ended_ms: u64, record: &[u8]) -> pb::MetaJobEnded {
    let (state, error) = match end {
        JobEnd::Succeeded => (pb::JobState::Succeeded, String::new()),
        JobEnd::Failed(e) => (pb::JobState::Failed, e.clone()),
        JobEnd::Cancelled => (pb::JobState::Cancelled, String::new()),
    };
    pb::MetaJobEnded {
        job_id: job.0,
        state: state as i32,
        error,
        ended_unix_ms: ended_ms,
        status: record.to_vec(),
    }
}

fn end_from_proto(e: &pb::MetaJobEnded) -> JobEnd {
    match e.state() {
        pb::JobState::Succeeded => JobEnd::Succeeded,
        pb::JobState::Cancelled => JobEnd::Cancelled,
        _ => JobEnd::Failed(e.error.clone()),
    }
}

pub(crate) fn command_to_proto(command: &MetaCommand) -> pb::meta_entry::Command {
    use pb::meta_entry::Command as C;
    match command {
        MetaCommand::JobSubmitted {
            name,
            tenant,
            submitted_ms,
            planned,
            request,
        } => C::JobSubmitted(pb::MetaJobSubmitted {
            name: name.clone(),
            tenant: tenant.clone(),
            submitted_unix_ms: *submitted_ms,
            planned: planned.clone(),
            request: *request,
        }),
        MetaCommand::JobEnded {
            job,
            end,
            ended_ms,
            record,
        } => C::JobEnded(end_to_proto(*job, end, *ended_ms, record)),
        MetaCommand::WorkerRegistered {
            flight_addr,
            registered_ms,
            node_id,
        } => C::WorkerRegistered(pb::MetaWorkerRegistered {
            flight_addr: flight_addr.clone(),
            registered_unix_ms: *registered_ms,
            node_id: node_id.clone(),
        }),
        MetaCommand::ClusterCreated { cluster_id } => C::ClusterCreated(pb::MetaClusterCreated {
            cluster_id: *cluster_id,
        }),
        MetaCommand::TableCached { name, table } => C::TableCached(table_to_proto(name, table)),
        MetaCommand::TableUncached { name } => {
            C::TableUncached(pb::MetaTableUncached { name: name.clone() })
        }
        MetaCommand::TokenCreated { id, token } => C::TokenCreated(token_to_proto(id, token)),
        MetaCommand::TokenRevoked { id } => {
            C::TokenRevoked(pb::MetaTokenRevoked { id: id.clone() })
        }
        MetaCommand::TicketKeyMade { key } => C::TicketKey(pb::MetaTicketKey { key: key.clone() }),
        MetaCommand::Fs(change) => C::Fs(pb::MetaFs {
            change: Some(match change {
                FsCommand::Mkdir { path, created_ms } => {
                    pb::meta_fs::Change::Mkdir(pb::MetaFsMkdir {
                        path: path.clone(),
                        created_unix_ms: *created_ms,
                    })
                }
                FsCommand::Commit { path, file } => pb::meta_fs::Change::Commit(pb::MetaFsCommit {
                    path: path.clone(),
                    file: Some(file_to_proto(file)),
                }),
                FsCommand::Remove { path } => pb::meta_fs::Change::Remove(path.clone()),
                FsCommand::Rename {
                    moves,
                    remove,
                    remove_prefixed,
                } => pb::meta_fs::Change::Rename(pb::MetaFsRename {
                    moves: (moves.iter())
                        .map(|(from, to)| pb::MetaFsMove {
                            from: from.clone(),
                            to: to.clone(),
                        })
                        .collect(),
                    remove: remove.clone(),
                    remove_prefixed: remove_prefixed.clone(),
                }),
            }),
        }),
    }
}

pub(crate) fn file_to_proto(f: &FileMeta) -> pb::MetaFsFile {
    pb::MetaFsFile {
        size: f.size,
        chunk_bytes: f.chunk_bytes,
        replication: f.replication,
        created_unix_ms: f.created_ms,
        chunks: (f.chunks.iter())
            .map(|c| pb::MetaFsChunk {
                id: c.id,
                len: c.len,
                crc32c: c.crc32c,
            })
            .collect(),
    }
}

pub(crate) fn file_from_proto(f: pb::MetaFsFile) -> FileMeta {
    FileMeta {
        size: f.size,
        chunk_bytes: f.chunk_bytes,
        replication: f.replication,
        created_ms: f.created_unix_ms,
        chunks: (f.chunks.into_iter())
            .map(|c| ChunkMeta {
                id: c.id,
                len: c.len,
                crc32c: c.crc32c,
            })
            .collect(),
    }
}

pub(crate) fn command_from_proto(command: Option<pb::meta_entry::Command>) -> Option<MetaCommand> {
    use pb::meta_entry::Command as C;
    Some(match command? {
        C::JobSubmitted(s) => MetaCommand::JobSubmitted {
            name: s.name,
            tenant: s.tenant,
            submitted_ms: s.submitted_unix_ms,
            planned: s.planned,
            request: s.request,
        },
        C::JobEnded(e) => MetaCommand::JobEnded {
            job: JobId(e.job_id),
            end: end_from_proto(&e),
            ended_ms: e.ended_unix_ms,
            record: e.status,
        },
        C::WorkerRegistered(w) => MetaCommand::WorkerRegistered {
            flight_addr: w.flight_addr,
            registered_ms: w.registered_unix_ms,
            node_id: w.node_id,
        },
        C::ClusterCreated(c) => MetaCommand::ClusterCreated {
            cluster_id: c.cluster_id,
        },
        C::TableCached(t) => {
            let (name, table) = table_from_proto(t);
            MetaCommand::TableCached { name, table }
        }
        C::TableUncached(t) => MetaCommand::TableUncached { name: t.name },
        C::TokenCreated(t) => {
            let (id, token) = token_from_proto(t);
            MetaCommand::TokenCreated { id, token }
        }
        C::TokenRevoked(t) => MetaCommand::TokenRevoked { id: t.id },
        C::TicketKey(k) => MetaCommand::TicketKeyMade { key: k.key },
        C::Fs(fs) => MetaCommand::Fs(match fs.change? {
            pb::meta_fs::Change::Mkdir(m) => FsCommand::Mkdir {
                path: m.path,
                created_ms: m.created_unix_ms,
            },
            pb::meta_fs::Change::Commit(c) => FsCommand::Commit {
                path: c.path,
                file: file_from_proto(c.file?),
            },
            pb::meta_fs::Change::Remove(path) => FsCommand::Remove { path },
            pb::meta_fs::Change::Rename(r) => FsCommand::Rename {
                moves: r.moves.into_iter().map(|m| (m.from, m.to)).collect(),
                remove: r.remove,
                remove_prefixed: r.remove_prefixed,
            },
        }),
    })
}

pub(crate) fn image_to_proto(image: MetaImage, last_index: u64) -> pb::MetaSnapshot {
    pb::MetaSnapshot {
        last_index,
        cluster_id: image.cluster_id,
        next_job_id: image.next_job_id,
        next_worker_id: image.next_worker_id,
        jobs: image
            .jobs
            .into_iter()
            .map(|(id, m)| pb::MetaJob {
                job_id: id.0,
                name: m.name,
                tenant: m.tenant,
                submitted_unix_ms: m.submitted_ms,
                end: m
                    .ended
                    .map(|(end, ended_ms)| end_to_proto(id, &end, ended_ms, &m.record)),
                planned: m.planned,
                request: m.request,
            })
            .collect(),
        ended: image.ended.into_iter().map(|j| j.0).collect(),
        tables: (image.tables.iter())
            .map(|(name, t)| table_to_proto(name, t))
            .collect(),
        tokens: (image.tokens.iter())
            .map(|(id, t)| token_to_proto(id, t))
            .collect(),
        revoked_tokens: image.revoked,
        ticket_key: image.ticket_key,
        fs: (image.fs.into_iter())
            .map(|(path, entry)| match entry {
                Entry::Dir { created_ms } => pb::MetaFsEntry {
                    path,
                    file: None,
                    created_unix_ms: created_ms,
                },
                Entry::File(f) => pb::MetaFsEntry {
                    path,
                    created_unix_ms: f.created_ms,
                    file: Some(file_to_proto(&f)),
                },
            })
            .collect(),
    }
}

fn token_to_proto(id: &str, t: &TokenMeta) -> pb::MetaTokenCreated {
    pb::MetaTokenCreated {
        id: id.to_string(),
        tenant: t.tenant.clone(),
        role: t.role.name().to_string(),
        digest: t.digest.clone(),
        created_unix_ms: t.created_ms,
    }
}

fn token_from_proto(t: pb::MetaTokenCreated) -> (String, TokenMeta) {
    let token = TokenMeta {
        tenant: t.tenant,
        // Written by this code, so always a role; were it damaged, the least one.
        role: Role::parse(&t.role).unwrap_or(Role::Read),
        digest: t.digest,
        created_ms: t.created_unix_ms,
    };
    (t.id, token)
}

fn table_from_proto(t: pb::MetaTableCached) -> (String, TableMeta) {
    let table = TableMeta {
        cache_id: t.cache_id,
        tenant: t.tenant,
        bytes: t.bytes,
        cached_by: JobId(t.cached_by_job),
        lineage: t.lineage,
    };
    (t.name, table)
}

fn table_to_proto(name: &str, t: &TableMeta) -> pb::MetaTableCached {
    pb::MetaTableCached {
        name: name.to_string(),
        cache_id: t.cache_id,
        cached_by_job: t.cached_by.0,
        lineage: t.lineage.clone(),
        tenant: t.tenant.clone(),
        bytes: t.bytes,
    }
}

pub(crate) fn image_from_proto(snapshot: pb::MetaSnapshot) -> MetaImage {
    MetaImage {
        cluster_id: snapshot.cluster_id,
        next_job_id: snapshot.next_job_id,
        next_worker_id: snapshot.next_worker_id,
        jobs: snapshot
            .jobs
            .into_iter()
            .map(|j| {
                let ended = j.end.as_ref().map(|e| (end_from_proto(e), e.ended_unix_ms));
                let meta = JobMeta {
                    name: j.name,
                    tenant: j.tenant,
                    submitted_ms: j.submitted_unix_ms,
                    ended,
                    planned: j.planned,
                    record: j.end.map(|e| e.status).unwrap_or_default(),
                    request: j.request,
                };
                (JobId(j.job_id), meta)
            })
            .collect(),
        ended: snapshot.ended.into_iter().map(JobId).collect(),
        tables: snapshot.tables.into_iter().map(table_from_proto).collect(),
        tokens: snapshot.tokens.into_iter().map(token_from_proto).collect(),
        revoked: snapshot.revoked_tokens,
        ticket_key: snapshot.ticket_key,
        fs: (snapshot.fs.into_iter())
            .map(|e| {
                let entry = match e.file {
                    Some(f) => Entry::File(file_from_proto(f)),
                    None => Entry::Dir {
                        created_ms: e.created_unix_ms,
                    },
                };
                (e.path, entry)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use drove_core::WorkerId;

    fn submitted(i: u64) -> MetaCommand {
        MetaCommand::JobSubmitted {
            name: format!("q{i}"),
            tenant: format!("tenant-{}", i % 2),
            submitted_ms: i,
            planned: vec![i as u8; 5],
            request: i * 7,
        }
    }

    fn ended(i: u64) -> MetaCommand {
        MetaCommand::JobEnded {
            job: JobId(i),
            end: if i.is_multiple_of(2) {
                JobEnd::Succeeded
            } else {
                JobEnd::Failed(format!("boom {i}"))
            },
            ended_ms: i + 1,
            record: vec![i as u8; 3],
        }
    }

    /// Writes `commands` through a store (snapshotting every `every`) and through a
    /// state in memory; returns that state.
    fn write(dir: &Path, every: u64, commands: &[MetaCommand]) -> MetaState {
        let mut rec = MetaStore::open_with(dir, 10, every).unwrap();
        for c in commands {
            rec.store.append(c).unwrap();
            rec.state.apply(c);
            rec.store.compact_if_due(&rec.state).unwrap();
        }
        rec.state
    }

    fn commands(n: u64) -> Vec<MetaCommand> {
        let mut all = vec![
            MetaCommand::ClusterCreated { cluster_id: 42 },
            MetaCommand::TableCached {
                name: "t".into(),
                table: TableMeta {
                    cache_id: 3,
                    tenant: "a".into(),
                    bytes: 7,
                    cached_by: JobId(1),
                    lineage: vec![1, 2, 3],
                },
            },
            MetaCommand::TokenCreated {
                id: "0123456789abcdef".into(),
                token: TokenMeta {
                    tenant: "a".into(),
                    role: Role::Submit,
                    digest: vec![7; 32],
                    created_ms: 9,
                },
            },
            MetaCommand::TokenRevoked {
                id: "fedcba9876543210".into(),
            },
            MetaCommand::TicketKeyMade { key: vec![5; 32] },
            MetaCommand::Fs(FsCommand::Mkdir {
                path: "empty/dir".into(),
                created_ms: 3,
            }),
            MetaCommand::Fs(FsCommand::Commit {
                path: "data/f".into(),
                file: FileMeta {
                    size: 5,
                    chunk_bytes: 4,
                    replication: 2,
                    created_ms: 4,
                    chunks: vec![
                        ChunkMeta {
                            id: u64::MAX,
                            len: 4,
                            crc32c: 1,
                        },
                        ChunkMeta {
                            id: 2,
                            len: 1,
                            crc32c: u32::MAX,
                        },
                    ],
                },
            }),
            MetaCommand::Fs(FsCommand::Commit {
                path: "data/g".into(),
                file: FileMeta {
                    size: 0,
                    chunk_bytes: 4,
                    replication: 1,
                    created_ms: 4,
                    chunks: Vec::new(),
                },
            }),
            MetaCommand::Fs(FsCommand::Remove {
                path: "data/g".into(),
            }),
            MetaCommand::Fs(FsCommand::Rename {
                moves: vec![("data/f".into(), "data/h".into())],
                remove: vec!["data/h".into()],
                remove_prefixed: vec!["data/g".into()],
            }),
        ];
        for i in 1..=n {
            all.push(submitted(i));
            all.push(MetaCommand::WorkerRegistered {
                flight_addr: format!("127.0.0.1:{i}"),
                registered_ms: i,
                node_id: format!("node-{i}"),
            });
            if !i.is_multiple_of(3) {
                all.push(ended(i));
            }
        }
        all
    }

    #[test]
    fn a_reopened_directory_gives_the_state_back_with_and_without_snapshots() {
        for every in [1, 4, 1_000] {
            let dir = tempfile::tempdir().unwrap();
            let written = write(dir.path(), every, &commands(20));
            let back = MetaStore::open_with(dir.path(), 10, every).unwrap();
            assert_eq!(
                back.state.image(),
                written.image(),
                "snapshot every {every}"
            );
            assert_eq!(back.torn_bytes, 0);
            // It goes on from where it was: the next ids are the ones not yet given.
            assert_eq!(back.state.next_job_id(), JobId(21));
            assert_eq!(back.state.next_worker_id(), WorkerId(21));
            assert_eq!(back.state.cluster_id(), 42);
        }
    }

    #[test]
    fn a_torn_last_entry_is_cut_off_and_damage_before_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let all = commands(5);
        let written = write(dir.path(), 1_000, &all);
        let log = dir.path().join(LOG);
        let full = std::fs::read(&log).unwrap();
        // Every cut inside the last entry loses that entry and nothing else.
        let before_last = {
            let mut state = MetaState::new(10);
            for c in &all[..all.len() - 1] {
                state.apply(c);
            }
            state
        };
        let last_len = frame(
            &pb::MetaEntry {
                index: all.len() as u64,
                command: Some(command_to_proto(all.last().unwrap())),
            }
            .encode_to_vec(),
        )
        .len();
        for cut in [1, 4, HEADER, last_len - 1] {
            std::fs::write(&log, &full[..full.len() - cut]).unwrap();
            let back = MetaStore::open(dir.path(), 10).unwrap();
            assert_eq!(back.state.image(), before_last.image(), "cut {cut}");
            assert_eq!(back.torn_bytes as usize, last_len - cut);
            drop(back);
            assert_eq!(
                std::fs::metadata(&log).unwrap().len() as usize,
                full.len() - last_len,
                "the torn bytes are gone from the file"
            );
        }
        // A flipped bit in the last entry fails its checksum the same way.
        let mut flipped = full.clone();
        *flipped.last_mut().unwrap() ^= 1;
        std::fs::write(&log, &flipped).unwrap();
        let back = MetaStore::open(dir.path(), 10).unwrap();
        assert_eq!(back.state.image(), before_last.image());
        drop(back);
        // Zeros after the last entry (a torn write on some filesystems) go too.
        let mut zeros = full.clone();
        zeros.extend([0; 64]);
        std::fs::write(&log, &zeros).unwrap();
        let back = MetaStore::open(dir.path(), 10).unwrap();
        assert_eq!(back.state.image(), written.image());
        assert_eq!(back.torn_bytes, 64);
        drop(back);
        // Damage before the last entry is not a torn write: acknowledged entries would
        // be lost, so the directory is refused.
        let mut damaged = full.clone();
        damaged[HEADER] ^= 1;
        std::fs::write(&log, &damaged).unwrap();
        let err = MetaStore::open(dir.path(), 10).err().unwrap().to_string();
        assert!(err.contains("damaged at byte 0"), "{err}");
        let mut long = full.clone();
        long[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&log, &long).unwrap();
        let err = MetaStore::open(dir.path(), 10).err().unwrap().to_string();
        assert!(err.contains("damaged at byte 0"), "{err}");
        std::fs::write(&log, &full).unwrap();
        let back = MetaStore::open(dir.path(), 10).unwrap();
        assert_eq!(back.state.image(), written.image());
    }

    #[test]
    fn entries_a_snapshot_covers_are_not_applied_twice() {
        // A crash after the snapshot was renamed into place and before the log was
        // emptied leaves the old entries beside a snapshot that holds them.
        let dir = tempfile::tempdir().unwrap();
        let all = commands(6);
        write(dir.path(), 1_000, &all);
        let old_log = std::fs::read(dir.path().join(LOG)).unwrap();
        let mut rec = MetaStore::open_with(dir.path(), 10, 1).unwrap();
        let extra = submitted(99);
        rec.store.append(&extra).unwrap();
        rec.state.apply(&extra);
        rec.store.compact_if_due(&rec.state).unwrap();
        let expected = rec.state.image();
        drop(rec);
        let mut stale = old_log;
        stale.extend(frame(
            &pb::MetaEntry {
                index: all.len() as u64 + 1,
                command: Some(command_to_proto(&extra)),
            }
            .encode_to_vec(),
        ));
        std::fs::write(dir.path().join(LOG), stale).unwrap();
        let back = MetaStore::open(dir.path(), 10).unwrap();
        assert_eq!(back.state.image(), expected);
        assert_eq!(back.replayed, 0);
    }

    #[test]
    fn bad_data_directories_are_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let first = MetaStore::open(dir.path(), 10).unwrap();
        let second = MetaStore::open(dir.path(), 10).err().unwrap().to_string();
        assert!(second.contains("in use by another coordinator"), "{second}");
        drop(first);
        assert!(
            MetaStore::open(dir.path(), 10).is_ok(),
            "the lock goes with its holder"
        );

        let file = dir.path().join("a-file");
        std::fs::write(&file, "x").unwrap();
        let err = MetaStore::open(&file, 10).err().unwrap().to_string();
        assert!(err.contains("--data-dir"), "{err}");

        let damaged = tempfile::tempdir().unwrap();
        write(damaged.path(), 1, &commands(2));
        let snapshot = damaged.path().join(SNAPSHOT);
        let mut bytes = std::fs::read(&snapshot).unwrap();
        bytes[HEADER] ^= 0xff;
        std::fs::write(&snapshot, bytes).unwrap();
        let err = MetaStore::open(damaged.path(), 10)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("snapshot") && err.contains("damaged"), "{err}");
    }
}
