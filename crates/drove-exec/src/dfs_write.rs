//! Writing `drove fs`: files put chunk by chunk, removals and renames, through the
//! coordinators' leader. Clients (`drove fs put`) and workers (MapReduce reduce tasks
//! writing `drove://` output) share it.

use std::collections::{BTreeSet, VecDeque};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drove_proto as pb;

use crate::dfs::{self, ChunkClients};
use crate::leader::Coordinators;

/// Placements asked for one chunk at most, when workers fail to store it.
const PLACE_ATTEMPTS_MAX: usize = 4;
/// Chunks a put stores at once (each held in memory until stored).
const PUT_CHUNKS_IN_FLIGHT: usize = 2;
/// How long a write follows the coordinators' leader (one restarting on its data
/// directory takes seconds).
const LEADER_WINDOW: Duration = Duration::from_secs(60);

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The request is wrong (a path, a chunk size); the message says how to fix it.
    #[error("{0}")]
    Bad(String),
    /// The coordinator refused or failed the request.
    #[error("{}", .0.message())]
    Status(tonic::Status),
    /// Workers could not store a chunk, or a store stopped.
    #[error("{0}")]
    Transport(String),
}

type Result<T, E = WriteError> = std::result::Result<T, E>;

/// How a file is put.
#[derive(Debug, Clone)]
pub struct PutOptions {
    /// Replicas of each chunk; 0 for the default (3, lowered with a warning when
    /// fewer workers store chunks).
    pub replication: u32,
    /// Bytes per chunk.
    pub chunk_bytes: u64,
    /// Replace a file at the path.
    pub overwrite: bool,
}

impl Default for PutOptions {
    fn default() -> Self {
        Self {
            replication: 0,
            chunk_bytes: drove_core::fs::CHUNK_DEFAULT_BYTES,
            overwrite: false,
        }
    }
}

/// What a put wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutSummary {
    pub bytes: u64,
    pub chunks: usize,
    /// The factor the file got.
    pub replication: u32,
    /// Why the factor is lower than the default, if it is.
    pub warning: Option<String>,
}

/// A chunk stored: its metadata, the workers that hold it, and its placement.
type Stored = (pb::MetaFsChunk, Vec<u64>, pb::FsPlaceResponse);

/// Tasks aborted when dropped (a put given up stops storing its chunks).
struct Aborting<T>(VecDeque<tokio::task::JoinHandle<Result<T>>>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Reads up to `buf.len()` bytes, fewer only at the end.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Writes drove fs files: the namespace through the leader, chunks to workers.
#[derive(Debug, Clone)]
pub struct FsWriter {
    pub coordinators: Arc<Coordinators>,
    pub clients: Arc<ChunkClients>,
}

impl FsWriter {
    async fn leader<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(crate::leader::CoordinatorRpc) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        (self.coordinators.on_leader(LEADER_WINDOW, call).await)
            .map(tonic::Response::into_inner)
            .map_err(WriteError::Status)
    }

    /// Copies the local file at `local` to `remote` (a `drove://` path). The file
    /// appears there only once every chunk is stored: a failed or interrupted put
    /// leaves nothing visible. Each chunk goes to its replicas at once, and two chunks
    /// are stored at a time (each held in memory until it is).
    pub async fn put_file(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<PutSummary> {
        if local.is_dir() {
            return Err(WriteError::Bad(format!(
                "'{}' is a directory; drove fs put copies one file",
                local.display()
            )));
        }
        let cannot =
            |e: std::io::Error| WriteError::Bad(format!("cannot read '{}': {e}", local.display()));
        let file = std::fs::File::open(local).map_err(cannot)?;
        self.put(file, &local.display().to_string(), remote, options)
            .await
    }

    /// Writes what `file` (named `name` in messages) holds to `remote`, as
    /// [`Self::put_file`] does.
    pub async fn put(
        &self,
        mut file: impl Read,
        name: &str,
        remote: &str,
        options: &PutOptions,
    ) -> Result<PutSummary> {
        let path = drove_core::fs::normalize(remote).map_err(WriteError::Bad)?;
        let chunk = options.chunk_bytes;
        if !(drove_core::fs::CHUNK_MIN_BYTES..=drove_core::fs::CHUNK_MAX_BYTES).contains(&chunk) {
            return Err(WriteError::Bad(format!(
                "--chunk-size {chunk} is outside {} to {} bytes",
                drove_core::fs::CHUNK_MIN_BYTES,
                drove_core::fs::CHUNK_MAX_BYTES
            )));
        }
        let cannot = |e: std::io::Error| WriteError::Bad(format!("cannot read '{name}': {e}"));
        let mut chunks = Vec::new();
        let mut stored = Vec::new();
        let failed = Arc::new(Mutex::new(BTreeSet::new()));
        let mut size = 0u64;
        let mut summary = None;
        let mut buf = vec![0u8; chunk as usize];
        // Chunks being stored while the next is read and sent: a worker's sync of one
        // overlaps the sending of the next. Dropped, the stores stop.
        let mut in_flight = Aborting(VecDeque::new());
        let mut finish = async |in_flight: &mut Aborting<Stored>| -> Result<()> {
            let Some(task) = in_flight.0.pop_front() else {
                return Ok(());
            };
            let (meta, workers, placed) = task
                .await
                .map_err(|e| WriteError::Transport(format!("storing a chunk stopped: {e}")))??;
            summary.get_or_insert((placed.replication, placed.warning));
            size += meta.len;
            chunks.push(meta);
            stored.push(pb::FsStored {
                worker_ids: workers,
            });
            Ok(())
        };
        loop {
            let n = read_full(&mut file, &mut buf).map_err(cannot)?;
            if n > 0 {
                let data = bytes::Bytes::copy_from_slice(&buf[..n]);
                let (writer, path, options) = (self.clone(), path.clone(), options.clone());
                let failed = Arc::clone(&failed);
                in_flight.0.push_back(tokio::spawn(async move {
                    writer.store_chunk(&path, &options, data, &failed).await
                }));
                while in_flight.0.len() >= PUT_CHUNKS_IN_FLIGHT {
                    finish(&mut in_flight).await?;
                }
            }
            if n < buf.len() {
                break;
            }
        }
        while !in_flight.0.is_empty() {
            finish(&mut in_flight).await?;
        }
        let (replication, warning) = match summary {
            Some(summary) => summary,
            None => {
                // An empty file has no chunks, but its factor is still decided.
                let placed = self.place(&path, options, &BTreeSet::new(), 0, 0).await?;
                (placed.replication, placed.warning)
            }
        };
        let request = pb::FsCommitRequest {
            path: path.clone(),
            overwrite: options.overwrite,
            file: Some(pb::MetaFsFile {
                size,
                chunk_bytes: chunk,
                replication,
                created_unix_ms: 0,
                chunks: chunks.clone(),
            }),
            stored,
        };
        self.leader(|mut c| {
            let request = request.clone();
            async move { c.fs_commit(request).await }
        })
        .await?;
        Ok(PutSummary {
            bytes: size,
            chunks: chunks.len(),
            replication,
            warning: (!warning.is_empty()).then_some(warning),
        })
    }

    /// Where a new chunk goes, or (with `chunk_id`) `count` more replicas of one.
    async fn place(
        &self,
        path: &str,
        options: &PutOptions,
        exclude: &BTreeSet<u64>,
        chunk_id: u64,
        count: u32,
    ) -> Result<pb::FsPlaceResponse> {
        let request = pb::FsPlaceRequest {
            path: path.to_string(),
            replication: options.replication,
            exclude: exclude.iter().copied().collect(),
            chunk_id,
            count,
            overwrite: options.overwrite,
        };
        self.leader(|mut c| {
            let request = request.clone();
            async move { c.fs_place(request).await }
        })
        .await
    }

    /// Stores one chunk on as many workers as its factor asks for: where placement
    /// says, then on others in place of any that failed (a full disk), for as long
    /// as workers are left to try. At least one must store it.
    async fn store_chunk(
        &self,
        path: &str,
        options: &PutOptions,
        data: bytes::Bytes,
        failed: &Mutex<BTreeSet<u64>>,
    ) -> Result<Stored> {
        let crc32c = dfs::checksum(&data);
        let failed_now = || failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let first = self.place(path, options, &failed_now(), 0, 0).await?;
        let id = first.chunk_id;
        let mut targets = first.targets.clone();
        let mut stored = Vec::new();
        let mut errors = Vec::new();
        for _ in 0..PLACE_ATTEMPTS_MAX {
            let grant = &first.grant;
            let writes = targets.iter().map(|t| {
                let data = data.clone();
                async move {
                    let written =
                        dfs::write_chunk(&self.clients, &t.addr, id, crc32c, data, grant).await;
                    (t, written)
                }
            });
            for (target, written) in futures::future::join_all(writes).await {
                match written {
                    Ok(()) => stored.push(target.worker_id),
                    Err(e) => {
                        tracing::warn!(
                            worker = target.addr,
                            "storing a chunk failed: {}",
                            e.message()
                        );
                        errors.push(format!("{}: {}", target.addr, e.message()));
                        (failed.lock().unwrap_or_else(|p| p.into_inner())).insert(target.worker_id);
                    }
                }
            }
            let missing = (first.replication as usize).saturating_sub(stored.len());
            if missing == 0 {
                break;
            }
            let exclude: BTreeSet<u64> = failed_now()
                .into_iter()
                .chain(stored.iter().copied())
                .collect();
            targets = self
                .place(path, options, &exclude, id, missing as u32)
                .await?
                .targets;
            if targets.is_empty() {
                break;
            }
        }
        if stored.is_empty() {
            return Err(WriteError::Transport(format!(
                "no worker could store a chunk of drove://{path}, and nothing was written: {}",
                errors.join("; ")
            )));
        }
        let meta = pb::MetaFsChunk {
            id,
            len: data.len() as u64,
            crc32c,
        };
        Ok((meta, stored, first))
    }

    /// Makes a directory and its missing parents.
    pub async fn mkdir(&self, path: &str) -> Result<()> {
        let request = pb::FsPathRequest {
            path: path.to_string(),
            recursive: false,
        };
        self.leader(|mut c| {
            let request = request.clone();
            async move { c.fs_mkdir(request).await }
        })
        .await?;
        Ok(())
    }

    /// Removes a file, or a directory: an empty one, or with `recursive` everything
    /// under it. Their chunks are freed on the workers.
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<()> {
        let request = pb::FsPathRequest {
            path: path.to_string(),
            recursive,
        };
        self.leader(|mut c| {
            let request = request.clone();
            async move { c.fs_remove(request).await }
        })
        .await?;
        Ok(())
    }

    /// Removes `remove` (paths that name nothing are skipped) and, for each
    /// `DIR/PREFIX` of `remove_prefixed`, what is in DIR under a name that starts with
    /// PREFIX; then moves each file `from` to `to`. One change: readers see all of it
    /// or none.
    pub async fn rename(
        &self,
        moves: &[(String, String)],
        remove: &[String],
        remove_prefixed: &[String],
    ) -> Result<()> {
        let request = pb::MetaFsRename {
            moves: (moves.iter())
                .map(|(from, to)| pb::MetaFsMove {
                    from: from.clone(),
                    to: to.clone(),
                })
                .collect(),
            remove: remove.to_vec(),
            remove_prefixed: remove_prefixed.to_vec(),
        };
        self.leader(|mut c| {
            let request = request.clone();
            async move { c.fs_rename(request).await }
        })
        .await?;
        Ok(())
    }
}
