//! `drove fs` on the coordinator: placing new chunks, making written files visible,
//! listing, removing, and keeping every chunk at its replication factor. The
//! decisions are `drove_core::fs`'s; this sends the messages they call for.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use drove_core::WorkerId;
use drove_core::access::Identity;
use drove_core::fs::{self as core_fs, Entry, FileMeta, FsCommand, Holder, Replicas};
use drove_core::meta::MetaCommand;
use drove_exec::token::Granted;
use drove_proto as pb;
use tracing::{info, warn};

use super::{Coordinator, State, now_ms};
use crate::durable::{file_from_proto, file_to_proto};
use crate::{Error, Result};

/// Chunks placed and not yet committed, at most (writes under way); a placement
/// beyond it is refused until some commit or expire.
const PENDING_MAX: usize = 100_000;
/// A chunk placed this long ago and not committed belongs to a write that gave up;
/// chunks no file holds are removed only once the coordinator has led this long.
const PENDING_TTL: Duration = Duration::from_secs(3600);

/// The coordinator's view of drove fs beyond the durable namespace.
#[derive(Debug)]
pub struct FsRuntime {
    pub replicas: Replicas,
    /// Chunks placed for writes under way: the path each was placed for (only a
    /// write of that path places more replicas of it or commits it), and when.
    pending: HashMap<u64, (String, Instant)>,
    /// Draining workers the scheduler let go, waiting for their chunks to be copied
    /// elsewhere before they are told to leave.
    pub leaving: BTreeSet<WorkerId>,
    /// Since when this coordinator has known every worker's chunks (it started, or
    /// began to lead).
    since: Instant,
}

impl Default for FsRuntime {
    fn default() -> Self {
        Self {
            replicas: Replicas::default(),
            pending: HashMap::new(),
            leaving: BTreeSet::new(),
            since: Instant::now(),
        }
    }
}

fn path_of(path: &str) -> Result<String> {
    core_fs::normalize(path).map_err(Error::User)
}

impl State {
    fn fs_holders(&self) -> Vec<Holder> {
        (self.workers.iter())
            .filter(|(_, c)| c.stores_chunks)
            .map(|(id, c)| Holder {
                worker: *id,
                zone: c.zone.clone(),
                draining: self.scheduler.is_draining(*id),
            })
            .collect()
    }

    fn replica(&self, worker: WorkerId) -> Option<pb::ChunkReplica> {
        let conn = self.workers.get(&worker)?;
        Some(pb::ChunkReplica {
            worker_id: worker.0,
            addr: conn.flight_addr.clone(),
            zone: conn.zone.clone(),
        })
    }

    /// Where a new chunk of the file at `path` goes, or more replicas of one placed
    /// for the same write.
    fn fs_place(
        &mut self,
        who: &Identity,
        reader: Option<&str>,
        request: pb::FsPlaceRequest,
    ) -> Result<pb::FsPlaceResponse> {
        self.lead()?;
        who.may_submit()?;
        let path = path_of(&request.path)?;
        core_fs::check_tenant_path(who, &path)?;
        let replication = request.replication;
        let exclude: BTreeSet<WorkerId> = request.exclude.iter().map(|w| WorkerId(*w)).collect();
        if replication > core_fs::REPLICATION_MAX {
            return Err(Error::User(format!(
                "--replication {replication} is more than drove fs allows ({})",
                core_fs::REPLICATION_MAX
            )));
        }
        let holders = self.fs_holders();
        let live = holders.iter().filter(|h| !h.draining).count();
        if live == 0 {
            return Err(Error::User(format!(
                "no worker stores drove fs chunks, so drove://{path} cannot be written; start workers with --data-dir (`drove local --data-dir DIR` gives its workers one each)"
            )));
        }
        let (replication, warning) = match replication {
            0 if live < core_fs::REPLICATION_DEFAULT as usize => (
                live as u32,
                format!(
                    "only {live} worker(s) store chunks, so drove://{path} gets {live} replica(s), not the default {}",
                    core_fs::REPLICATION_DEFAULT
                ),
            ),
            0 => (core_fs::REPLICATION_DEFAULT, String::new()),
            n if n as usize > live => {
                return Err(Error::User(format!(
                    "--replication {n} asks for more replicas than the {live} worker(s) that store chunks; give at most {live}, or start more workers with --data-dir"
                )));
            }
            n => (n, String::new()),
        };
        let (chunk, count) = match request.chunk_id {
            0 => {
                // Refused now rather than at the commit, after every chunk was sent.
                let commit = FsCommand::Commit {
                    path: path.clone(),
                    file: FileMeta {
                        size: 0,
                        chunk_bytes: 0,
                        replication,
                        created_ms: 0,
                        chunks: Vec::new(),
                    },
                };
                (self.meta.state().fs())
                    .check(&commit, request.overwrite)
                    .map_err(Error::User)?;
                (drove_core::ids::random_id(), replication)
            }
            id if self.fs.pending_for(id) == Some(&path) => (id, request.count.min(replication)),
            id => {
                return Err(Error::User(format!(
                    "chunk {id:016x} is not being written; place a new one"
                )));
            }
        };
        let load = self.fs.replicas.load();
        let targets = core_fs::place(chunk, count as usize, &holders, &load, &exclude);
        if targets.is_empty() && request.chunk_id == 0 {
            return Err(Error::User(format!(
                "every worker that stores chunks failed to store one of drove://{path} (a full --data-max or disk?); free space, or start more workers with --data-dir"
            )));
        }
        if request.chunk_id == 0 {
            self.fs.pend(chunk, &path)?;
        }
        Ok(pb::FsPlaceResponse {
            grant: self.chunk_grant(reader, Granted::ChunkWrite(chunk)),
            chunk_id: chunk,
            targets: targets
                .into_iter()
                .filter_map(|w| self.replica(w))
                .collect(),
            replication,
            warning,
        })
    }

    /// Makes a written file visible, whole. A commit refused abandons its write: the
    /// chunks placed for it are removed at once. One whose outcome is unknown (the
    /// metadata write may yet commit) removes nothing.
    fn fs_commit(&mut self, who: &Identity, request: pb::FsCommitRequest) -> Result<()> {
        let written: Vec<(u64, Vec<u64>)> = (request.file.iter())
            .flat_map(|f| f.chunks.iter().map(|c| c.id))
            .zip(request.stored.iter().map(|s| s.worker_ids.clone()))
            .collect();
        let path = core_fs::normalize(&request.path).unwrap_or_default();
        let command = match self.fs_commit_checked(who, request) {
            Ok(command) => command,
            Err(refused) => {
                self.fs_abandon(&path, written);
                return Err(refused);
            }
        };
        self.fs_record(command)?;
        for (id, _) in written {
            self.fs.pending.remove(&id);
        }
        Ok(())
    }

    /// Removes the chunks of a write of `path` that will not commit: only those placed
    /// for that path's write and not committed, whatever else a commit names.
    fn fs_abandon(&mut self, path: &str, written: Vec<(u64, Vec<u64>)>) {
        let mut drops = Vec::new();
        for (chunk, stored) in written {
            if self.fs.pending_for(chunk) != Some(path) {
                continue;
            }
            self.fs.pending.remove(&chunk);
            let holders: BTreeSet<WorkerId> = (stored.into_iter().map(WorkerId))
                .chain(self.fs.replicas.forget(chunk))
                .collect();
            drops.extend(holders.into_iter().map(|w| (w, chunk)));
        }
        self.send_drops(drops);
    }

    /// The command that commits a write, once every check passed.
    fn fs_commit_checked(
        &mut self,
        who: &Identity,
        request: pb::FsCommitRequest,
    ) -> Result<FsCommand> {
        self.lead()?;
        who.may_submit()?;
        let path = path_of(&request.path)?;
        core_fs::check_tenant_path(who, &path)?;
        let file = file_from_proto(request.file.unwrap_or_default());
        check_file(&file)?;
        if request.stored.len() != file.chunks.len() {
            return Err(Error::User(format!(
                "the commit of drove://{path} names where {} chunks are stored, and the file has {}",
                request.stored.len(),
                file.chunks.len()
            )));
        }
        let holders: BTreeSet<WorkerId> = self.fs_holders().iter().map(|h| h.worker).collect();
        for (chunk, stored) in file.chunks.iter().zip(&request.stored) {
            if self.fs.pending_for(chunk.id) != Some(&path) {
                return Err(Error::User(format!(
                    "chunk {:016x} of drove://{path} was not placed by this coordinator for a write under way (it may have restarted, or the write took over an hour); write the file again",
                    chunk.id
                )));
            }
            let live: Vec<WorkerId> = (stored.worker_ids.iter())
                .map(|w| WorkerId(*w))
                .filter(|w| holders.contains(w))
                .collect();
            if live.is_empty() && self.fs.replicas.holders(chunk.id).next().is_none() {
                return Err(Error::User(format!(
                    "no worker that stored chunk {:016x} of drove://{path} is still here; write the file again",
                    chunk.id
                )));
            }
            // The workers' own reports confirm these.
            for w in live {
                self.fs.replicas.held(w, [chunk.id]);
            }
        }
        let command = FsCommand::Commit {
            path,
            file: FileMeta {
                created_ms: now_ms(),
                ..file
            },
        };
        (self.meta.state().fs())
            .check(&command, request.overwrite)
            .map_err(Error::User)?;
        Ok(command)
    }

    fn fs_change(&mut self, who: &Identity, command: FsCommand, recursive: bool) -> Result<()> {
        self.lead()?;
        who.may_submit()?;
        let path = match &command {
            FsCommand::Mkdir { path, .. }
            | FsCommand::Commit { path, .. }
            | FsCommand::Remove { path } => path,
            FsCommand::Rename { .. } => {
                return Err(Error::Internal("a rename is made by fs_rename".into()));
            }
        };
        core_fs::check_tenant_path(who, path)?;
        let fs = self.meta.state().fs();
        match (&command, fs.get(path)) {
            (FsCommand::Mkdir { .. }, Some(Entry::Dir { .. })) => return Ok(()),
            (FsCommand::Remove { path }, Some(Entry::Dir { .. }))
                if !recursive && !path.is_empty() && !fs.list(path).is_empty() =>
            {
                return Err(Error::User(format!(
                    "drove://{path} is a directory that is not empty; pass --recursive to remove it and everything under it"
                )));
            }
            _ => {}
        }
        fs.check(&command, false).map_err(Error::User)?;
        self.fs_record(command)
    }

    /// Removes paths and moves files as one change, every path inside the caller's
    /// tenant.
    fn fs_rename(&mut self, who: &Identity, request: pb::MetaFsRename) -> Result<()> {
        self.lead()?;
        who.may_submit()?;
        let checked = |path: &str| -> Result<String> {
            let path = path_of(path)?;
            core_fs::check_tenant_path(who, &path)?;
            Ok(path)
        };
        let moves = (request.moves.iter())
            .map(|m| Ok((checked(&m.from)?, checked(&m.to)?)))
            .collect::<Result<Vec<_>>>()?;
        let remove = (request.remove.iter())
            .map(|path| checked(path))
            .collect::<Result<Vec<_>>>()?;
        // A prefix's directory is inside the tenant, so is what it removes.
        let remove_prefixed = (request.remove_prefixed.iter())
            .map(|path| checked(path))
            .collect::<Result<Vec<_>>>()?;
        let command = FsCommand::Rename {
            moves,
            remove,
            remove_prefixed,
        };
        (self.meta.state().fs())
            .check(&command, false)
            .map_err(Error::User)?;
        self.fs_record(command)
    }

    /// Records a change; tells the holders of the chunks it frees to remove them.
    fn fs_record(&mut self, command: FsCommand) -> Result<()> {
        let applied = self
            .record(MetaCommand::Fs(command))
            .ok_or_else(|| self.not_written())?;
        let mut drops = Vec::new();
        for chunk in applied.freed_chunks {
            drops.extend(
                self.fs
                    .replicas
                    .forget(chunk)
                    .into_iter()
                    .map(|w| (w, chunk)),
            );
        }
        self.send_drops(drops);
        Ok(())
    }

    /// Tells workers to remove chunks, a message per worker. Where the message does
    /// not fit in a worker's queue, the chunk stays counted there: a later tick trims
    /// it, or removes it as an orphan.
    fn send_drops(&mut self, drops: impl IntoIterator<Item = (WorkerId, u64)>) {
        let mut by_worker: HashMap<WorkerId, Vec<u64>> = HashMap::new();
        for (w, chunk) in drops {
            by_worker.entry(w).or_default().push(chunk);
        }
        for (w, chunk_ids) in by_worker {
            let message = pb::DropChunks {
                chunk_ids: chunk_ids.clone(),
            };
            if self.send(w, pb::coordinator_message::Kind::DropChunks(message)) {
                for chunk in chunk_ids {
                    self.fs.replicas.dropped(w, chunk);
                }
            } else if self.workers.contains_key(&w) {
                self.fs.replicas.held(w, chunk_ids);
            }
        }
    }

    /// A file, or a directory's entries; a tenant listing the root sees its own
    /// directory only.
    fn fs_list(
        &self,
        who: &Identity,
        reader: Option<&str>,
        path: &str,
    ) -> Result<pb::FsListResponse> {
        self.lead()?;
        let path = path_of(path)?;
        if !path.is_empty() {
            core_fs::check_tenant_path(who, &path)?;
        }
        let fs = self.meta.state().fs();
        match fs.get(&path) {
            None => Err(Error::NotFound(format!(
                "drove://{path} does not exist; `drove fs ls` shows what does"
            ))),
            Some(Entry::File(f)) => Ok(pb::FsListResponse {
                entries: vec![self.entry_info(&path, &Entry::File(f), Some(reader))],
                is_dir: false,
            }),
            Some(Entry::Dir { .. }) => Ok(pb::FsListResponse {
                entries: (fs.list(&path).into_iter())
                    .filter(|(name, _)| !path.is_empty() || who.is_admin() || *name == who.tenant)
                    .map(|(name, e)| self.entry_info(name, e, None))
                    .collect(),
                is_dir: true,
            }),
        }
    }

    /// With TLS, what lets the client certificate `reader` read or write a chunk.
    fn chunk_grant(&self, reader: Option<&str>, what: Granted) -> Vec<u8> {
        reader.map_or_else(Vec::new, |reader| {
            let key = self.meta.state().ticket_key();
            let expires_ms = now_ms() + drove_exec::token::GRANT_LIFE_MS;
            drove_exec::token::grant(key, what, reader, expires_ms)
        })
    }

    /// An entry as listed: a file with its chunks when `chunks` names who reads them
    /// (`Some(None)` without TLS).
    fn entry_info(
        &self,
        name: &str,
        entry: &Entry,
        chunks: Option<Option<&str>>,
    ) -> pb::FsEntryInfo {
        match entry {
            Entry::Dir { created_ms } => pb::FsEntryInfo {
                name: name.to_string(),
                is_dir: true,
                created_unix_ms: *created_ms,
                ..Default::default()
            },
            Entry::File(f) => {
                let wire = file_to_proto(f);
                pb::FsEntryInfo {
                    name: name.to_string(),
                    is_dir: false,
                    size: f.size,
                    created_unix_ms: f.created_ms,
                    replication: f.replication,
                    chunk_bytes: f.chunk_bytes,
                    chunks: match chunks {
                        None => Vec::new(),
                        Some(reader) => (wire.chunks.into_iter())
                            .map(|c| pb::FsChunkInfo {
                                grant: self.chunk_grant(reader, Granted::ChunkRead(c.id)),
                                id: c.id,
                                len: c.len,
                                crc32c: c.crc32c,
                                replicas: (self.fs.replicas.holders(c.id))
                                    .filter_map(|w| self.replica(w))
                                    .collect(),
                            })
                            .collect(),
                    },
                }
            }
        }
    }

    /// A worker's heartbeat said which chunks it stored, removed, found corrupt, or
    /// failed to copy.
    pub(super) fn fs_reported(&mut self, worker: WorkerId, heartbeat: &pb::Heartbeat) {
        if heartbeat.chunks_corrupt > 0 {
            warn!(%worker, corrupt = heartbeat.chunks_corrupt, "a worker found corrupt chunk replicas");
            self.metrics.fs_corrupt_found(heartbeat.chunks_corrupt);
        }
        (self.metrics).fs_read(
            heartbeat.fs_read_local_bytes,
            heartbeat.fs_read_remote_bytes,
        );
        (self.fs.replicas).held(worker, heartbeat.chunks_added.iter().copied());
        for &chunk in &heartbeat.chunks_removed {
            self.fs.replicas.dropped(worker, chunk);
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        for &chunk in &heartbeat.chunk_copies_failed {
            self.fs.replicas.copy_failed(worker, chunk, now_ms);
        }
    }

    /// On every tick: copies under-replicated chunks, trims surplus replicas, and
    /// removes chunks no file or write holds.
    pub(super) fn fs_maintain(&mut self) {
        // A coordinator that begins to lead knows a worker's chunks only once it has
        // registered again: until the workers had a heartbeat timeout to do so, every
        // chunk would look short of replicas, and copies made now trimmed later.
        let settled = Duration::from_millis(self.config.heartbeat_timeout_ms);
        if !self.leading || self.fs.since.elapsed() < settled {
            return;
        }
        self.fs.expire_pending();
        let holders = self.fs_holders();
        let fs = self.meta.state().fs();
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let copies_max = self.config.fs_copies_max.max(1);
        let copies = self.fs.replicas.repairs(fs, &holders, copies_max, now_ms);
        for copy in copies {
            let Some(from) = self.workers.get(&copy.from).map(|c| c.flight_addr.clone()) else {
                continue;
            };
            info!(chunk = format!("{:016x}", copy.chunk.id), from = %copy.from, to = %copy.to, "copying an under-replicated chunk");
            self.metrics.fs_copy_asked();
            self.send(
                copy.to,
                pb::coordinator_message::Kind::CopyChunk(pb::CopyChunk {
                    chunk_id: copy.chunk.id,
                    len: copy.chunk.len,
                    crc32c: copy.chunk.crc32c,
                    from_addr: from,
                }),
            );
        }
        let fs = self.meta.state().fs();
        let leaving: Vec<WorkerId> = self.fs.leaving.iter().copied().collect();
        for worker in leaving {
            let gone = !self.workers.contains_key(&worker);
            if gone || self.fs.replicas.handed_off(worker, fs, &holders) {
                self.fs.leaving.remove(&worker);
                if !gone {
                    info!(%worker, "its drove fs chunks are on other workers; it may leave");
                    self.send(
                        worker,
                        pb::coordinator_message::Kind::Drained(pb::Drained {}),
                    );
                }
            }
        }
        let mut drops = self.fs.replicas.surplus(fs, &holders);
        if self.fs.since.elapsed() >= PENDING_TTL {
            for (chunk, held) in self.fs.replicas.orphans(fs) {
                if !self.fs.pending.contains_key(&chunk) {
                    drops.extend(held.into_iter().map(|w| (w, chunk)));
                }
            }
        }
        self.send_drops(drops);
    }

    /// drove fs as `drove status` and the UI show it.
    pub(super) fn fs_status(&self) -> pb::FsStatus {
        let files = self.meta.state().fs().files_under("");
        let (under, missing) = self.fs_under_replicated();
        pb::FsStatus {
            files: files.len() as u64,
            bytes: files.iter().map(|(_, f)| f.size).sum(),
            chunks: files.iter().map(|(_, f)| f.chunks.len() as u64).sum(),
            under_replicated: under as u64,
            missing: missing as u64,
        }
    }

    /// Chunks below their replication factor, and chunks with no replica at all.
    pub(super) fn fs_under_replicated(&self) -> (usize, usize) {
        let holders = self.fs_holders();
        self.fs
            .replicas
            .under_replicated(self.meta.state().fs(), &holders)
    }
}

impl FsRuntime {
    fn pend(&mut self, chunk: u64, path: &str) -> Result<()> {
        if self.pending.len() >= PENDING_MAX {
            return Err(Error::User(format!(
                "{PENDING_MAX} chunks are being written and not yet committed, the most drove fs keeps track of; try again once some writes have finished"
            )));
        }
        self.pending
            .insert(chunk, (path.to_string(), Instant::now()));
        Ok(())
    }

    /// The path a chunk was placed for, while its write is under way.
    fn pending_for(&self, chunk: u64) -> Option<&str> {
        self.pending.get(&chunk).map(|(path, _)| path.as_str())
    }

    fn expire_pending(&mut self) {
        self.pending.retain(|_, (_, at)| at.elapsed() < PENDING_TTL);
    }

    /// A new leader learns every worker's chunks again, from their registrations.
    pub fn restart(&mut self) {
        *self = Self::default();
    }
}

/// Refuses a file description no write of drove's makes.
fn check_file(file: &FileMeta) -> Result<()> {
    let bad = |why: String| {
        Err(Error::User(format!(
            "a drove fs commit is malformed: {why}"
        )))
    };
    if !(core_fs::CHUNK_MIN_BYTES..=core_fs::CHUNK_MAX_BYTES).contains(&file.chunk_bytes) {
        return bad(format!(
            "the chunk size {} is outside {}..={}",
            file.chunk_bytes,
            core_fs::CHUNK_MIN_BYTES,
            core_fs::CHUNK_MAX_BYTES
        ));
    }
    if file.replication == 0 || file.replication > core_fs::REPLICATION_MAX {
        return bad(format!("a replication factor of {}", file.replication));
    }
    let mut total = 0u64;
    let mut ids = BTreeSet::new();
    for (i, c) in file.chunks.iter().enumerate() {
        let last = i + 1 == file.chunks.len();
        if c.len > file.chunk_bytes || c.len == 0 || (!last && c.len != file.chunk_bytes) {
            return bad(format!(
                "chunk {i} has {} bytes, with chunks of {}",
                c.len, file.chunk_bytes
            ));
        }
        if !ids.insert(c.id) {
            return bad(format!("chunk {:016x} appears twice", c.id));
        }
        total = total.saturating_add(c.len);
    }
    if total != file.size {
        return bad(format!(
            "its chunks hold {total} bytes, and its size is {}",
            file.size
        ));
    }
    Ok(())
}

impl Coordinator {
    /// With `reader`, a client certificate's name, the placement comes with the grant
    /// that lets it write the chunk.
    pub async fn fs_place(
        &self,
        who: &Identity,
        reader: Option<String>,
        request: pb::FsPlaceRequest,
    ) -> Result<pb::FsPlaceResponse> {
        let who = who.clone();
        self.ask(move |state| state.fs_place(&who, reader.as_deref(), request))
            .await
    }

    pub async fn fs_commit(&self, who: &Identity, request: pb::FsCommitRequest) -> Result<()> {
        let who = who.clone();
        self.ask(move |state| state.fs_commit(&who, request)).await
    }

    /// With `reader`, a client certificate's name, a file's chunks come with grants
    /// that let it read them.
    pub async fn fs_list(
        &self,
        who: &Identity,
        reader: Option<String>,
        path: String,
    ) -> Result<pb::FsListResponse> {
        let who = who.clone();
        self.ask(move |state| state.fs_list(&who, reader.as_deref(), &path))
            .await
    }

    pub async fn fs_mkdir(&self, who: &Identity, path: String) -> Result<()> {
        let who = who.clone();
        self.ask(move |state| {
            let command = FsCommand::Mkdir {
                path: path_of(&path)?,
                created_ms: now_ms(),
            };
            state.fs_change(&who, command, false)
        })
        .await
    }

    /// Removes paths, then moves files, as one change.
    pub async fn fs_rename(&self, who: &Identity, request: pb::MetaFsRename) -> Result<()> {
        let who = who.clone();
        self.ask(move |state| state.fs_rename(&who, request)).await
    }

    /// Removes a file, or a directory: with `recursive`, one that is not empty.
    pub async fn fs_remove(&self, who: &Identity, path: String, recursive: bool) -> Result<()> {
        let who = who.clone();
        self.ask(move |state| {
            let command = FsCommand::Remove {
                path: path_of(&path)?,
            };
            state.fs_change(&who, command, recursive)
        })
        .await
    }
}

/// drove fs's namespace as a job's planning reads it: this coordinator's, seen as
/// the job's submitter (a tenant lists only its own paths).
pub struct PlanningNamespace {
    pub coordinator: Coordinator,
    pub who: Identity,
}

impl std::fmt::Debug for PlanningNamespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the coordinator's namespace, as {}", self.who.principal)
    }
}

#[async_trait::async_trait]
impl drove_exec::dfs::Namespace for PlanningNamespace {
    async fn list(
        &self,
        path: &str,
    ) -> std::result::Result<Option<drove_exec::dfs::Listing>, String> {
        match self
            .coordinator
            .fs_list(&self.who, None, path.to_string())
            .await
        {
            Ok(listed) => Ok(Some(listed.into())),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}
