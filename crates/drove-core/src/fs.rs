//! `drove fs`, the block store's decisions: its namespace, where a new chunk's
//! replicas go, and which chunks to copy or drop after workers come and go.
//!
//! The namespace (directories, and files as lists of chunks with their checksums) is
//! durable: it lives in the metadata ([`crate::meta`]) and changes only by commands.
//! Where the replicas are is not: workers report the chunks they hold when they
//! register and as they write them, and [`Replicas`] is rebuilt from those reports
//! (a new leader learns it the same way).
//!
//! Architecture invariant: a file is in the namespace only once every one of its
//! chunks was written, so a reader never sees part of a file.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::access::{Identity, Refusal};
use crate::ids::WorkerId;

/// The longest path the namespace accepts, in bytes.
pub const PATH_MAX_BYTES: usize = 1024;
/// The most directory levels a path may have.
pub const PATH_DEPTH_MAX: usize = 64;
/// The most entries (files and directories) the namespace keeps.
pub const ENTRIES_MAX: usize = 1_000_000;
/// The most chunks one file may have (at 64 MiB each, 4 TiB).
pub const FILE_CHUNKS_MAX: usize = 65_536;
/// The smallest and largest chunk sizes a file may be written with.
pub const CHUNK_MIN_BYTES: u64 = 64 << 10;
pub const CHUNK_MAX_BYTES: u64 = 1 << 30;
/// The most paths one rename may name (moved and removed together).
pub const RENAME_PATHS_MAX: usize = 100_000;
/// The default chunk size and replication factor.
pub const CHUNK_DEFAULT_BYTES: u64 = 64 << 20;
pub const REPLICATION_DEFAULT: u32 = 3;
/// The highest replication factor a file may ask for.
pub const REPLICATION_MAX: u32 = 16;

/// One chunk of a file: its id (unique in the cluster), its length and the CRC-32C of
/// its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkMeta {
    pub id: u64,
    pub len: u64,
    pub crc32c: u32,
}

/// A file as the namespace keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    pub chunk_bytes: u64,
    pub replication: u32,
    pub created_ms: u64,
    pub chunks: Vec<ChunkMeta>,
}

/// An entry of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { created_ms: u64 },
    File(FileMeta),
}

/// A change to the namespace (carried inside [`crate::meta::MetaCommand::Fs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsCommand {
    /// Makes a directory and any missing parents.
    Mkdir { path: String, created_ms: u64 },
    /// Makes a file visible, whole, replacing a file at the path if there is one
    /// (whoever proposes checks `--overwrite`); missing parents are made.
    Commit { path: String, file: FileMeta },
    /// Removes a file, or a directory with everything under it.
    Remove { path: String },
    /// Removes paths, then moves files to new paths, as one change: what a MapReduce
    /// commit publishes, so readers see the old output or the new, never a mix. A
    /// removal that names nothing is skipped; a moved file's missing parents are made.
    /// `remove_prefixed` removes what is in a directory under names that start alike
    /// (`out/part-r-` removes `out/part-r-00000` and on), as the namespace holds it
    /// when the change is applied.
    Rename {
        moves: Vec<(String, String)>,
        remove: Vec<String>,
        remove_prefixed: Vec<String>,
    },
}

/// A `drove://` path, checked and normalized: components joined by `/`, without a
/// leading or trailing one; the root is empty.
pub fn normalize(path: &str) -> Result<String, String> {
    let rest = path.strip_prefix("drove://").unwrap_or(path);
    if rest.len() > PATH_MAX_BYTES {
        return Err(format!(
            "the path {path:?} is {} bytes long; drove fs paths hold at most {PATH_MAX_BYTES}",
            rest.len()
        ));
    }
    let mut parts = Vec::new();
    for part in rest.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return Err(format!(
                "the path {path:?} has a '{part}' component; drove fs paths name each directory"
            ));
        }
        if part.chars().any(|c| c.is_control()) {
            return Err(format!(
                "the path {path:?} holds a control character; use printable names"
            ));
        }
        parts.push(part);
    }
    if parts.len() > PATH_DEPTH_MAX {
        return Err(format!(
            "the path {path:?} is {} levels deep; drove fs allows {PATH_DEPTH_MAX}",
            parts.len()
        ));
    }
    Ok(parts.join("/"))
}

/// Refuses a path outside the caller's tenant: a tenant keeps its files under
/// `drove://TENANT/`, and only admins reach the rest (on a cluster without
/// authentication, everyone is an admin).
pub fn check_tenant_path(who: &Identity, path: &str) -> Result<(), Refusal> {
    let tenant = who.tenant.as_str();
    let inside = path == tenant
        || path
            .strip_prefix(tenant)
            .is_some_and(|r| r.starts_with('/'));
    if who.is_admin() || inside {
        return Ok(());
    }
    Err(Refusal::Denied(format!(
        "tenant {tenant} keeps its drove fs files under drove://{tenant}/, and drove://{path} is outside it"
    )))
}

/// The directories above `path`, nearest last ("a/b/c" gives "a", "a/b").
fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// The namespace: every directory and file, by normalized path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Namespace {
    entries: BTreeMap<String, Entry>,
}

impl Namespace {
    pub fn from_entries(entries: impl IntoIterator<Item = (String, Entry)>) -> Self {
        Self {
            entries: entries.into_iter().collect(),
        }
    }

    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The entry at a normalized path; the root is a directory.
    pub fn get(&self, path: &str) -> Option<Entry> {
        if path.is_empty() {
            return Some(Entry::Dir { created_ms: 0 });
        }
        self.entries.get(path).cloned()
    }

    pub fn file(&self, path: &str) -> Option<&FileMeta> {
        match self.entries.get(path) {
            Some(Entry::File(f)) => Some(f),
            _ => None,
        }
    }

    /// The entries directly under a directory, by name.
    pub fn list(&self, dir: &str) -> Vec<(&str, &Entry)> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.entries
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .filter(|(p, _)| !p[prefix.len()..].contains('/'))
            .map(|(p, e)| (&p[prefix.len()..], e))
            .collect()
    }

    /// Every file at or under a path (a file, or a directory's files at any depth).
    pub fn files_under(&self, path: &str) -> Vec<(&str, &FileMeta)> {
        let prefix = format!("{path}/");
        self.entries
            .iter()
            .filter(|(p, _)| path.is_empty() || *p == path || p.starts_with(&prefix))
            .filter_map(|(p, e)| match e {
                Entry::File(f) => Some((p.as_str(), f)),
                Entry::Dir { .. } => None,
            })
            .collect()
    }

    /// Why `command` cannot be applied as it stands, for whoever proposes it:
    /// `overwrite` allows a commit to replace a file.
    pub fn check(&self, command: &FsCommand, overwrite: bool) -> Result<(), String> {
        let path = match command {
            FsCommand::Mkdir { path, .. }
            | FsCommand::Commit { path, .. }
            | FsCommand::Remove { path } => path,
            FsCommand::Rename {
                moves,
                remove,
                remove_prefixed,
            } => {
                let remove = self.removals(remove, remove_prefixed)?;
                return self.check_rename(moves, &remove);
            }
        };
        for parent in parents(path) {
            if let Some(Entry::File(_)) = self.entries.get(parent) {
                return Err(format!(
                    "drove://{parent} is a file, so drove://{path} cannot be made under it"
                ));
            }
        }
        let fresh = parents(path)
            .filter(|p| !self.entries.contains_key(*p))
            .count()
            + usize::from(!self.entries.contains_key(path.as_str()));
        if !matches!(command, FsCommand::Remove { .. }) && self.entries.len() + fresh > ENTRIES_MAX
        {
            return Err(format!(
                "drove fs holds {} entries, the most it keeps; remove some first",
                self.entries.len()
            ));
        }
        match (command, self.entries.get(path.as_str())) {
            (FsCommand::Remove { .. }, _) if path.is_empty() => {
                Err("drove fs will not remove its root; remove what is under it by name".into())
            }
            (FsCommand::Remove { .. }, None) => Err(format!(
                "drove://{path} does not exist; `drove fs ls` shows what does"
            )),
            (FsCommand::Mkdir { .. }, Some(Entry::File(_))) => {
                Err(format!("drove://{path} exists and is a file"))
            }
            (FsCommand::Commit { .. }, Some(Entry::Dir { .. })) => Err(format!(
                "drove://{path} is a directory; name a file inside it"
            )),
            (FsCommand::Commit { .. }, _) if path.is_empty() => {
                Err("drove:// is the root directory; name a file inside it".into())
            }
            (FsCommand::Commit { .. }, Some(Entry::File(_))) if !overwrite => Err(format!(
                "drove://{path} exists; pass --overwrite to replace it"
            )),
            (FsCommand::Commit { file, .. }, _) if file.chunks.len() > FILE_CHUNKS_MAX => {
                Err(format!(
                    "a file may have at most {FILE_CHUNKS_MAX} chunks; use a larger --chunk-size"
                ))
            }
            _ => Ok(()),
        }
    }

    /// The paths a [`FsCommand::Rename`] removes: `remove`, and what is in each
    /// prefix's directory under a name with that prefix.
    fn removals(
        &self,
        remove: &[String],
        remove_prefixed: &[String],
    ) -> Result<Vec<String>, String> {
        if remove_prefixed.len() > RENAME_PATHS_MAX {
            return Err(format!(
                "a rename removes at most {RENAME_PATHS_MAX} prefixes; this one names {}",
                remove_prefixed.len()
            ));
        }
        let mut all = remove.to_vec();
        for prefix in remove_prefixed {
            let Some((dir, name)) = prefix.rsplit_once('/') else {
                return Err(format!(
                    "drove://{prefix} is a prefix in the root directory; name one inside a directory"
                ));
            };
            all.extend(
                (self.list(dir).into_iter())
                    .filter(|(entry, _)| entry.starts_with(name))
                    .map(|(entry, _)| format!("{dir}/{entry}")),
            );
        }
        Ok(all)
    }

    /// Why a [`FsCommand::Rename`] cannot be applied.
    fn check_rename(&self, moves: &[(String, String)], remove: &[String]) -> Result<(), String> {
        if moves.len() + remove.len() > RENAME_PATHS_MAX {
            return Err(format!(
                "a rename names at most {RENAME_PATHS_MAX} paths; this one names {}",
                moves.len() + remove.len()
            ));
        }
        if remove.iter().any(|r| r.is_empty()) {
            return Err(
                "drove fs will not remove its root; remove what is under it by name".into(),
            );
        }
        let removed: BTreeSet<&str> = remove.iter().map(String::as_str).collect();
        // Whether `path` goes with the removals: it or a directory above it is removed.
        let goes = |path: &str| {
            removed.contains(path) || parents(path).any(|parent| removed.contains(parent))
        };
        let froms: BTreeSet<&str> = moves.iter().map(|(from, _)| from.as_str()).collect();
        let tos: BTreeSet<&str> = moves.iter().map(|(_, to)| to.as_str()).collect();
        if froms.len() < moves.len() || tos.len() < moves.len() {
            return Err("a rename moves each file once, and to a path of its own".into());
        }
        // A move adds as many entries as it takes away, but for the directories it
        // makes.
        let fresh: BTreeSet<&str> = (moves.iter())
            .flat_map(|(_, to)| parents(to))
            .filter(|parent| !self.entries.contains_key(*parent))
            .collect();
        if self.entries.len() + fresh.len() > ENTRIES_MAX {
            return Err(format!(
                "drove fs holds {} entries, the most it keeps; remove some first",
                self.entries.len()
            ));
        }
        for (from, to) in moves {
            if !matches!(self.entries.get(from), Some(Entry::File(_))) || goes(from) {
                return Err(format!(
                    "drove://{from} is not a file that can be moved; name an existing file that is not removed"
                ));
            }
            if to.is_empty() || froms.contains(to.as_str()) {
                return Err(format!(
                    "drove://{to} cannot be a rename's target; name a new path"
                ));
            }
            if self.entries.contains_key(to) && !goes(to) {
                return Err(format!(
                    "drove://{to} exists; remove it in the same rename to replace it"
                ));
            }
            for parent in parents(to) {
                let file =
                    matches!(self.entries.get(parent), Some(Entry::File(_))) && !goes(parent);
                if file || tos.contains(parent) {
                    return Err(format!(
                        "drove://{parent} is a file, so drove://{to} cannot be made under it"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies a command, total and deterministic: one that [`Self::check`] refuses
    /// changes nothing. Returns the chunks no file holds any more.
    pub fn apply(&mut self, command: &FsCommand) -> Vec<u64> {
        if self.check(command, true).is_err() {
            return Vec::new();
        }
        match command {
            FsCommand::Mkdir { path, created_ms } => {
                self.make_parents(path, *created_ms);
                if !path.is_empty() {
                    self.entries.entry(path.clone()).or_insert(Entry::Dir {
                        created_ms: *created_ms,
                    });
                }
                Vec::new()
            }
            FsCommand::Commit { path, file } => {
                self.make_parents(path, file.created_ms);
                match self.entries.insert(path.clone(), Entry::File(file.clone())) {
                    Some(Entry::File(old)) => {
                        let kept: BTreeSet<u64> = file.chunks.iter().map(|c| c.id).collect();
                        (old.chunks.iter())
                            .map(|c| c.id)
                            .filter(|id| !kept.contains(id))
                            .collect()
                    }
                    _ => Vec::new(),
                }
            }
            FsCommand::Remove { path } => self.remove(path),
            FsCommand::Rename {
                moves,
                remove,
                remove_prefixed,
            } => {
                let remove = self.removals(remove, remove_prefixed).unwrap_or_default();
                let freed = remove.iter().flat_map(|path| self.remove(path)).collect();
                for (from, to) in moves {
                    if let Some(Entry::File(file)) = self.entries.remove(from) {
                        self.make_parents(to, file.created_ms);
                        self.entries.insert(to.clone(), Entry::File(file));
                    }
                }
                freed
            }
        }
    }

    /// Removes a file, or a directory with everything under it; returns the chunks
    /// they held.
    fn remove(&mut self, path: &str) -> Vec<u64> {
        let prefix = format!("{path}/");
        let gone: Vec<String> = (self.entries.range(path.to_string()..))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .filter(|p| *p == path || p.starts_with(&prefix))
            .cloned()
            .collect();
        let mut freed = Vec::new();
        for p in gone {
            if let Some(Entry::File(f)) = self.entries.remove(&p) {
                freed.extend(f.chunks.iter().map(|c| c.id));
            }
        }
        freed
    }

    fn make_parents(&mut self, path: &str, created_ms: u64) {
        for parent in parents(path) {
            self.entries
                .entry(parent.to_string())
                .or_insert(Entry::Dir { created_ms });
        }
    }

    /// Every chunk the namespace holds, with its file's replication factor.
    pub fn chunks(&self) -> impl Iterator<Item = (&ChunkMeta, u32)> {
        self.entries.values().flat_map(|e| match e {
            Entry::File(f) => f.chunks.iter().map(|c| (c, f.replication)).collect(),
            Entry::Dir { .. } => Vec::new(),
        })
    }
}

/// A worker as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub worker: WorkerId,
    /// Its `--zone` label (empty for none).
    pub zone: String,
    /// It is leaving: it gets no new replicas, and its replicas count as lost.
    pub draining: bool,
}

/// Chooses `n` workers for a new replica set of `chunk`, or fewer if fewer can hold
/// it: distinct workers, none in `exclude`, spread over as many zones as there are,
/// and the least loaded first (ties broken by the chunk id, so that chunks spread).
pub fn place(
    chunk: u64,
    n: usize,
    workers: &[Holder],
    load: &HashMap<WorkerId, usize>,
    exclude: &BTreeSet<WorkerId>,
) -> Vec<WorkerId> {
    let mut zones: HashMap<&str, usize> = HashMap::new();
    for w in workers.iter().filter(|w| exclude.contains(&w.worker)) {
        *zones.entry(w.zone.as_str()).or_default() += 1;
    }
    let mut candidates: Vec<&Holder> = (workers.iter())
        .filter(|w| !w.draining && !exclude.contains(&w.worker))
        .collect();
    let mut chosen = Vec::new();
    while chosen.len() < n && !candidates.is_empty() {
        let best = (0..candidates.len())
            .min_by_key(|&i| {
                let w = candidates[i];
                (
                    zones.get(w.zone.as_str()).copied().unwrap_or(0),
                    load.get(&w.worker).copied().unwrap_or(0),
                    (w.worker.0 ^ chunk).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                )
            })
            .expect("non-empty");
        let w = candidates.swap_remove(best);
        *zones.entry(w.zone.as_str()).or_default() += 1;
        chosen.push(w.worker);
    }
    chosen
}

/// One copy the coordinator asks a worker to make: `to` fetches `chunk` from `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub chunk: ChunkMeta,
    pub from: WorkerId,
    pub to: WorkerId,
}

/// A copy not reported done this long after it was asked for, plus a second for every
/// [`COPY_MIN_BYTES_PER_S`] of the chunk, has failed (its target cannot store it, or
/// the source went away): it is asked of another worker.
pub const COPY_TIMEOUT_MS: u64 = 60_000;
pub const COPY_MIN_BYTES_PER_S: u64 = 4 << 20;

/// How long a copy of a chunk of `len` bytes may take.
pub fn copy_timeout_ms(len: u64) -> u64 {
    COPY_TIMEOUT_MS + len / COPY_MIN_BYTES_PER_S * 1000
}

fn copy_deadline_ms(now_ms: u64, len: u64) -> u64 {
    now_ms + copy_timeout_ms(len)
}

/// Where the replicas are, as the workers reported them, and the copies under way.
#[derive(Debug, Default)]
pub struct Replicas {
    holders: HashMap<u64, BTreeSet<WorkerId>>,
    /// Copies asked for and not yet reported done, by chunk: where to, and by when.
    copying: HashMap<u64, (WorkerId, u64)>,
    /// Workers whose copy of a chunk failed or timed out, and when the last did: its
    /// next copy goes elsewhere, and once every worker failed, all are tried again a
    /// copy timeout later. Kept while the chunk is short of replicas.
    failed: HashMap<u64, (BTreeSet<WorkerId>, u64)>,
}

impl Replicas {
    /// A worker reports it holds `chunks` (on registering, or after writing them).
    pub fn held(&mut self, worker: WorkerId, chunks: impl IntoIterator<Item = u64>) {
        for chunk in chunks {
            self.holders.entry(chunk).or_default().insert(worker);
            if self.copying.get(&chunk).is_some_and(|c| c.0 == worker) {
                self.copying.remove(&chunk);
            }
        }
    }

    /// A worker no longer holds `chunk` (it was corrupt, or dropped).
    pub fn dropped(&mut self, worker: WorkerId, chunk: u64) {
        if let Some(set) = self.holders.get_mut(&chunk) {
            set.remove(&worker);
            if set.is_empty() {
                self.holders.remove(&chunk);
            }
        }
        if self.copying.get(&chunk).is_some_and(|c| c.0 == worker) {
            self.copying.remove(&chunk);
        }
    }

    /// A worker could not make the copy of `chunk` it was asked for: the next copy
    /// goes elsewhere, at once.
    pub fn copy_failed(&mut self, worker: WorkerId, chunk: u64, now_ms: u64) {
        if self.copying.get(&chunk).is_some_and(|c| c.0 == worker) {
            self.copying.remove(&chunk);
            self.fail(chunk, worker, now_ms);
        }
    }

    fn fail(&mut self, chunk: u64, worker: WorkerId, now_ms: u64) {
        let (workers, last_ms) = self.failed.entry(chunk).or_default();
        workers.insert(worker);
        *last_ms = now_ms;
    }

    /// A worker is gone, and every replica it held with it.
    pub fn lost(&mut self, worker: WorkerId) {
        self.holders.retain(|_, set| {
            set.remove(&worker);
            !set.is_empty()
        });
        self.copying.retain(|_, (to, _)| *to != worker);
    }

    /// A chunk was freed: forgets it, and returns who held it (to be told to drop it).
    pub fn forget(&mut self, chunk: u64) -> BTreeSet<WorkerId> {
        self.copying.remove(&chunk);
        self.failed.remove(&chunk);
        self.holders.remove(&chunk).unwrap_or_default()
    }

    pub fn holders(&self, chunk: u64) -> impl Iterator<Item = WorkerId> + '_ {
        self.holders.get(&chunk).into_iter().flatten().copied()
    }

    /// How many replicas each worker holds.
    pub fn load(&self) -> HashMap<WorkerId, usize> {
        let mut load = HashMap::new();
        for set in self.holders.values() {
            for w in set {
                *load.entry(*w).or_default() += 1;
            }
        }
        for (w, _) in self.copying.values() {
            *load.entry(*w).or_default() += 1;
        }
        load
    }

    /// Chunks of the namespace with fewer live replicas than their factor asks for
    /// (or than there are workers to hold them), and those with none at all.
    pub fn under_replicated(&self, namespace: &Namespace, workers: &[Holder]) -> (usize, usize) {
        let live = live_holders(workers);
        let mut under = 0;
        let mut missing = 0;
        for (chunk, factor) in namespace.chunks() {
            let have = self.live_count(chunk.id, &live);
            if have == 0 {
                missing += 1;
            }
            if have < (factor as usize).min(live.len()) {
                under += 1;
            }
        }
        (under, missing)
    }

    fn live_count(&self, chunk: u64, live: &BTreeSet<WorkerId>) -> usize {
        self.holders(chunk).filter(|w| live.contains(w)).count()
    }

    /// The copies that bring under-replicated chunks back to their factor, at most
    /// `max` under way at once; each is recorded as under way until the target
    /// reports the chunk (or is lost). A draining worker's replicas do not count, but
    /// it may still be copied from.
    pub fn repairs(
        &mut self,
        namespace: &Namespace,
        workers: &[Holder],
        max: usize,
        now_ms: u64,
    ) -> Vec<Copy> {
        let live = live_holders(workers);
        let expired: Vec<u64> = (self.copying.iter())
            .filter(|(_, (_, deadline))| now_ms >= *deadline)
            .map(|(chunk, _)| *chunk)
            .collect();
        for chunk in expired {
            if let Some((to, _)) = self.copying.remove(&chunk) {
                self.fail(chunk, to, now_ms);
            }
        }
        let mut load = self.load();
        let mut copies = Vec::new();
        for (chunk, factor) in namespace.chunks() {
            if self.copying.len() >= max {
                break;
            }
            if self.copying.contains_key(&chunk.id) {
                continue;
            }
            let held: BTreeSet<WorkerId> = self.holders(chunk.id).collect();
            let have = held.iter().filter(|w| live.contains(w)).count();
            let want = (factor as usize).min(live.len());
            let Some(&from) = held.iter().find(|w| live.contains(w)).or(held.first()) else {
                continue;
            };
            if have >= want {
                self.failed.remove(&chunk.id);
                continue;
            }
            let mut exclude = held.clone();
            let (failed, last_ms) = self.failed.get(&chunk.id).cloned().unwrap_or_default();
            exclude.extend(failed);
            let to = match place(chunk.id, 1, workers, &load, &exclude).first() {
                Some(&to) => to,
                // Every other worker failed it: wait, then try them all again.
                None if now_ms < last_ms + COPY_TIMEOUT_MS => continue,
                None => match place(chunk.id, 1, workers, &load, &held).first() {
                    Some(&to) => {
                        self.failed.remove(&chunk.id);
                        to
                    }
                    None => continue,
                },
            };
            *load.entry(to).or_default() += 1;
            self.copying
                .insert(chunk.id, (to, copy_deadline_ms(now_ms, chunk.len)));
            copies.push(Copy {
                chunk: *chunk,
                from,
                to,
            });
        }
        copies
    }

    /// Replicas beyond their chunk's factor on live workers (a worker came back after
    /// its chunks were copied elsewhere): which worker drops which chunk. The most
    /// loaded holders drop first. Nothing is trimmed while a copy of it is under way.
    pub fn surplus(&self, namespace: &Namespace, workers: &[Holder]) -> Vec<(WorkerId, u64)> {
        let live = live_holders(workers);
        let load = self.load();
        let mut drops = Vec::new();
        for (chunk, factor) in namespace.chunks() {
            if self.copying.contains_key(&chunk.id) {
                continue;
            }
            let mut held: Vec<WorkerId> = self
                .holders(chunk.id)
                .filter(|w| live.contains(w))
                .collect();
            held.sort_by_key(|w| std::cmp::Reverse((load.get(w).copied().unwrap_or(0), *w)));
            let extra = held.len().saturating_sub(factor as usize);
            drops.extend(held.into_iter().take(extra).map(|w| (w, chunk.id)));
        }
        drops
    }

    /// Whether a draining worker may leave without taking a chunk below its factor:
    /// every chunk of the namespace it holds has its factor's replicas (or one on
    /// every other worker) on workers that stay.
    pub fn handed_off(&self, leaving: WorkerId, namespace: &Namespace, workers: &[Holder]) -> bool {
        let live = live_holders(workers);
        namespace.chunks().all(|(chunk, factor)| {
            let held: BTreeSet<WorkerId> = self.holders(chunk.id).collect();
            !held.contains(&leaving)
                || held.iter().filter(|w| live.contains(w)).count()
                    >= (factor as usize).min(live.len())
        })
    }

    /// Chunks a worker reported that no file holds: left by a write that never
    /// committed, or freed while the worker was away.
    pub fn orphans(&self, namespace: &Namespace) -> Vec<(u64, BTreeSet<WorkerId>)> {
        let known: BTreeSet<u64> = namespace.chunks().map(|(c, _)| c.id).collect();
        (self.holders.iter())
            .filter(|(id, _)| !known.contains(id))
            .map(|(id, set)| (*id, set.clone()))
            .collect()
    }
}

fn live_holders(workers: &[Holder]) -> BTreeSet<WorkerId> {
    workers
        .iter()
        .filter(|w| !w.draining)
        .map(|w| w.worker)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ids: &[u64], replication: u32) -> FileMeta {
        FileMeta {
            size: ids.len() as u64 * 10,
            chunk_bytes: 10,
            replication,
            created_ms: 1,
            chunks: ids
                .iter()
                .map(|&id| ChunkMeta {
                    id,
                    len: 10,
                    crc32c: 0,
                })
                .collect(),
        }
    }

    fn holders(zones: &[&str]) -> Vec<Holder> {
        zones
            .iter()
            .enumerate()
            .map(|(i, z)| Holder {
                worker: WorkerId(i as u64 + 1),
                zone: z.to_string(),
                draining: false,
            })
            .collect()
    }

    #[test]
    fn a_tenant_reaches_only_its_own_directory() {
        let who = Identity {
            tenant: "team-a".into(),
            role: crate::access::Role::Submit,
            principal: "token x".into(),
        };
        assert!(check_tenant_path(&who, "team-a").is_ok());
        assert!(check_tenant_path(&who, "team-a/x/y").is_ok());
        let refused = check_tenant_path(&who, "team-ab/x").unwrap_err();
        assert!(
            refused.to_string().contains("under drove://team-a/"),
            "{refused}"
        );
        assert!(check_tenant_path(&who, "").is_err());
        assert!(check_tenant_path(&Identity::open(), "anything").is_ok());
    }

    #[test]
    fn paths_are_normalized_and_bad_ones_named() {
        assert_eq!(normalize("drove://a//b/").unwrap(), "a/b");
        assert_eq!(normalize("/a/b").unwrap(), "a/b");
        assert_eq!(normalize("drove://").unwrap(), "");
        assert!(normalize("drove://a/../b").unwrap_err().contains("'..'"));
        assert!(normalize("a/\u{1}").unwrap_err().contains("control"));
        assert!(normalize(&"x/".repeat(65)).unwrap_err().contains("levels"));
        assert!(
            normalize(&"x".repeat(2000))
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn files_appear_whole_and_removal_frees_their_chunks() {
        let mut ns = Namespace::default();
        let commit = FsCommand::Commit {
            path: "a/b/f".into(),
            file: file(&[1, 2], 2),
        };
        assert!(ns.check(&commit, false).is_ok());
        assert!(ns.apply(&commit).is_empty());
        assert!(
            matches!(ns.get("a"), Some(Entry::Dir { .. })),
            "parents made"
        );
        assert_eq!(ns.list("a").len(), 1);
        assert_eq!(ns.list("").iter().map(|e| e.0).collect::<Vec<_>>(), ["a"]);
        // An existing file needs overwrite; replacing it frees the old chunks.
        let again = FsCommand::Commit {
            path: "a/b/f".into(),
            file: file(&[3], 2),
        };
        assert!(ns.check(&again, false).unwrap_err().contains("--overwrite"));
        assert_eq!(ns.apply(&again), vec![1, 2]);
        // Nothing goes under a file, and a directory is not a file.
        let under = FsCommand::Mkdir {
            path: "a/b/f/g".into(),
            created_ms: 1,
        };
        assert!(ns.check(&under, true).unwrap_err().contains("is a file"));
        assert!(ns.apply(&under).is_empty());
        let onto_dir = FsCommand::Commit {
            path: "a/b".into(),
            file: file(&[4], 1),
        };
        assert!(ns.check(&onto_dir, true).unwrap_err().contains("directory"));
        assert!(ns.apply(&onto_dir).is_empty());
        assert!(matches!(ns.get("a/b"), Some(Entry::Dir { .. })));
        // Removing a directory takes what is under it.
        let rm = FsCommand::Remove { path: "a".into() };
        assert_eq!(ns.apply(&rm), vec![3]);
        assert!(ns.entries().next().is_none());
        assert!(ns.check(&rm, false).unwrap_err().contains("does not exist"));
        assert!(
            (ns.check(
                &FsCommand::Remove {
                    path: String::new()
                },
                false
            ))
            .unwrap_err()
            .contains("root")
        );
    }

    #[test]
    fn a_rename_publishes_files_and_removes_old_ones_at_once() {
        let mut ns = Namespace::default();
        let commit = |ns: &mut Namespace, path: &str, ids: &[u64]| {
            ns.apply(&FsCommand::Commit {
                path: path.into(),
                file: file(ids, 1),
            })
        };
        commit(&mut ns, "out/part-0", &[1]);
        commit(&mut ns, "out/_SUCCESS", &[]);
        commit(&mut ns, "out/_temporary/t/a.1", &[2]);
        commit(&mut ns, "out/_temporary/t/a.2", &[3]);
        commit(&mut ns, "out/_temporary/t/b.1", &[4]);
        commit(&mut ns, "out/_temporary/t/ok", &[]);
        let rename = |moves: &[(&str, &str)], remove: &[&str]| FsCommand::Rename {
            moves: (moves.iter())
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            remove: remove.iter().map(|r| r.to_string()).collect(),
            remove_prefixed: Vec::new(),
        };
        // Refused: a target that exists and is not removed, a missing source, a
        // source that is removed, two moves to one path, a target under a file.
        let refused = [
            rename(&[("out/_temporary/t/a.1", "out/part-0")], &[]),
            rename(&[("out/nothing", "out/part-9")], &[]),
            rename(
                &[("out/_temporary/t/a.1", "out/part-1")],
                &["out/_temporary"],
            ),
            rename(
                &[
                    ("out/_temporary/t/a.1", "out/part-1"),
                    ("out/_temporary/t/b.1", "out/part-1"),
                ],
                &[],
            ),
            rename(&[("out/_temporary/t/a.1", "out/part-0/x")], &[]),
            rename(&[], &[""]),
        ];
        let before = ns.clone();
        for command in &refused {
            assert!(ns.check(command, false).is_err(), "{command:?}");
            assert!(ns.apply(command).is_empty());
            assert_eq!(ns, before, "a refused rename changes nothing");
        }
        // The commit: the old output goes, the winning attempts and the marker move in.
        let publish = rename(
            &[
                ("out/_temporary/t/a.2", "out/part-0"),
                ("out/_temporary/t/b.1", "out/part-1"),
                ("out/_temporary/t/ok", "out/_SUCCESS"),
            ],
            &["out/part-0", "out/_SUCCESS", "out/missing"],
        );
        ns.check(&publish, false).unwrap();
        assert_eq!(ns.apply(&publish), vec![1]);
        assert_eq!(ns.file("out/part-0").unwrap().chunks[0].id, 3);
        assert_eq!(ns.file("out/part-1").unwrap().chunks[0].id, 4);
        assert!(ns.file("out/_SUCCESS").is_some());
        assert_eq!(
            ns.list("out/_temporary/t").len(),
            1,
            "the losing attempt stays"
        );
        // A prefix removes what the directory holds when the change applies: here a
        // part the commit did not list.
        commit(&mut ns, "out/_temporary/u/a", &[5]);
        commit(&mut ns, "out/_temporary/u/ok", &[]);
        let replace = FsCommand::Rename {
            moves: vec![
                ("out/_temporary/u/a".into(), "out/part-0".into()),
                ("out/_temporary/u/ok".into(), "out/_SUCCESS".into()),
            ],
            remove: vec!["out/_SUCCESS".into()],
            remove_prefixed: vec!["out/part-".into()],
        };
        ns.check(&replace, false).unwrap();
        assert_eq!(ns.apply(&replace), vec![3, 4]);
        let names: Vec<&str> = ns.list("out").into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["_SUCCESS", "_temporary", "part-0"]);
        let at_root = FsCommand::Rename {
            moves: Vec::new(),
            remove: Vec::new(),
            remove_prefixed: vec!["ou".into()],
        };
        assert!(ns.check(&at_root, false).unwrap_err().contains("root"));
        // Moved files keep their chunks when what is left is removed.
        assert_eq!(
            ns.apply(&FsCommand::Remove {
                path: "out/_temporary".into()
            }),
            vec![2]
        );
    }

    #[test]
    fn placement_spreads_over_workers_and_zones() {
        let workers = holders(&["a", "a", "b", "b"]);
        let none = BTreeSet::new();
        let load = HashMap::new();
        for chunk in 0..50 {
            let chosen = place(chunk, 2, &workers, &load, &none);
            assert_eq!(chosen.len(), 2);
            let zones: BTreeSet<&str> = (chosen.iter())
                .map(|w| workers[w.0 as usize - 1].zone.as_str())
                .collect();
            assert_eq!(zones.len(), 2, "two zones for chunk {chunk}: {chosen:?}");
        }
        // The least loaded go first; nothing is placed twice on one worker.
        let load = HashMap::from([(WorkerId(1), 5), (WorkerId(3), 5)]);
        let mut chosen = place(7, 2, &workers, &load, &none);
        chosen.sort();
        assert_eq!(chosen, vec![WorkerId(2), WorkerId(4)]);
        assert_eq!(place(7, 9, &workers, &load, &none).len(), 4);
        let mut draining = workers.clone();
        draining[0].draining = true;
        assert!(!place(1, 4, &draining, &load, &none).contains(&WorkerId(1)));
    }

    #[test]
    fn a_lost_worker_is_repaired_and_a_returning_one_trimmed() {
        let mut ns = Namespace::default();
        ns.apply(&FsCommand::Commit {
            path: "f".into(),
            file: file(&[10, 11, 12], 2),
        });
        let all = holders(&["", "", ""]);
        let mut r = Replicas::default();
        r.held(WorkerId(1), [10, 11]);
        r.held(WorkerId(2), [10, 12]);
        r.held(WorkerId(3), [11, 12]);
        assert_eq!(r.under_replicated(&ns, &all), (0, 0));
        assert!(r.repairs(&ns, &all, 10, 0).is_empty());
        // Worker 3 goes: chunks 11 and 12 have one replica each.
        r.lost(WorkerId(3));
        let two = &all[..2];
        assert_eq!(r.under_replicated(&ns, two), (2, 0));
        let copies = r.repairs(&ns, two, 1, 0);
        assert_eq!(copies.len(), 1, "bounded");
        assert!(
            r.repairs(&ns, two, 1, 0).is_empty(),
            "one under way already"
        );
        let copies = [copies, r.repairs(&ns, two, 10, 0)].concat();
        assert_eq!(copies.len(), 2);
        for c in &copies {
            assert_ne!(c.from, c.to);
            assert!(r.holders(c.chunk.id).any(|w| w == c.from));
            r.held(c.to, [c.chunk.id]);
        }
        assert_eq!(r.under_replicated(&ns, two), (0, 0));
        // Worker 3 comes back with its replicas: each chunk now has a surplus one.
        r.held(WorkerId(3), [11, 12]);
        let drops = r.surplus(&ns, &all);
        assert_eq!(drops.len(), 2);
        for (w, c) in drops {
            r.dropped(w, c);
        }
        assert_eq!(r.under_replicated(&ns, &all), (0, 0));
        assert!(r.surplus(&ns, &all).is_empty());
        // A chunk no file holds is an orphan; freeing names its holders.
        r.held(WorkerId(1), [99]);
        assert_eq!(r.orphans(&ns).len(), 1);
        assert_eq!(r.forget(99), BTreeSet::from([WorkerId(1)]));
        // With every holder gone, a chunk is missing, not repairable.
        r.lost(WorkerId(1));
        r.lost(WorkerId(2));
        r.lost(WorkerId(3));
        assert_eq!(r.under_replicated(&ns, &[]), (0, 3));
        assert!(r.repairs(&ns, &[], 10, 0).is_empty());
    }

    #[test]
    fn a_draining_worker_leaves_once_its_chunks_are_elsewhere() {
        let mut ns = Namespace::default();
        ns.apply(&FsCommand::Commit {
            path: "f".into(),
            file: file(&[1, 2], 2),
        });
        let mut all = holders(&["", "", ""]);
        let mut r = Replicas::default();
        r.held(WorkerId(1), [1, 2]);
        r.held(WorkerId(2), [1]);
        r.held(WorkerId(3), [2]);
        assert!(r.handed_off(WorkerId(1), &ns, &all));
        all[0].draining = true;
        assert!(
            !r.handed_off(WorkerId(1), &ns, &all),
            "its replicas no longer count"
        );
        let copies = r.repairs(&ns, &all, 10, 0);
        assert_eq!(copies.len(), 2);
        for c in &copies {
            assert_ne!(c.to, WorkerId(1), "nothing goes to a draining worker");
            r.held(c.to, [c.chunk.id]);
        }
        assert!(r.handed_off(WorkerId(1), &ns, &all));
    }

    #[test]
    fn a_copy_that_times_out_goes_to_another_worker() {
        let mut ns = Namespace::default();
        ns.apply(&FsCommand::Commit {
            path: "f".into(),
            file: file(&[1], 2),
        });
        let all = holders(&["", "", ""]);
        let mut r = Replicas::default();
        r.held(WorkerId(1), [1]);
        let first = r.repairs(&ns, &all, 10, 0);
        assert_eq!(first.len(), 1);
        assert!(
            r.repairs(&ns, &all, 10, COPY_TIMEOUT_MS - 1).is_empty(),
            "under way"
        );
        let second = r.repairs(&ns, &all, 10, COPY_TIMEOUT_MS);
        assert_eq!(second.len(), 1);
        assert_ne!(
            second[0].to, first[0].to,
            "the worker that failed is passed over"
        );
        // A failure reported sends the next copy elsewhere at once.
        let mut reported = Replicas::default();
        reported.held(WorkerId(1), [1]);
        let first = reported.repairs(&ns, &all, 10, 0);
        reported.copy_failed(first[0].to, 1, 0);
        let again = reported.repairs(&ns, &all, 10, 1);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].to, first[0].to);
        // Both others failed: after a pause, they are tried again rather than never.
        assert!(
            r.repairs(&ns, &all, 10, 2 * COPY_TIMEOUT_MS).is_empty(),
            "a pause"
        );
        let third = r.repairs(&ns, &all, 10, 3 * COPY_TIMEOUT_MS);
        assert_eq!(third.len(), 1);
        r.held(third[0].to, [1]);
        assert!(r.repairs(&ns, &all, 10, 4 * COPY_TIMEOUT_MS).is_empty());
    }
}
