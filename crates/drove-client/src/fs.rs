//! `drove fs`: files kept in the cluster's workers, split into chunks, each chunk
//! replicated on several workers (`drove://` paths).

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use drove_exec::dfs;
pub use drove_exec::dfs::{Chunk, FsEntry, Replica};
use drove_proto as pb;
use futures::{Stream, StreamExt};

use crate::write::LocalFile;
use crate::{Error, Result, Session, status_error};

/// Placements asked for one chunk at most, when workers fail to store it.
const PLACE_ATTEMPTS_MAX: usize = 4;
/// Chunks a put stores at once (each held in memory until stored).
const PUT_CHUNKS_IN_FLIGHT: usize = 2;

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

/// How `drove fs put` writes a file.
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

impl Session {
    fn chunk_clients(&self) -> &dfs::ChunkClients {
        &self.inner.chunks.clients
    }

    /// Copies the local file at `local` to `remote` (a `drove://` path). The file
    /// appears there only once every chunk is stored: a failed or interrupted put
    /// leaves nothing visible. Each chunk goes to its replicas at once, and two chunks
    /// are stored at a time (each held in memory until it is).
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// use drove_client::fs::PutOptions;
    /// let put = session.fs_put("events.parquet".as_ref(), "drove://data/events.parquet", &PutOptions::default()).await?;
    /// println!("{} bytes in {} chunks", put.bytes, put.chunks);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_put(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<PutSummary> {
        let path = drove_core::fs::normalize(remote).map_err(Error::Config)?;
        let chunk = options.chunk_bytes;
        if !(drove_core::fs::CHUNK_MIN_BYTES..=drove_core::fs::CHUNK_MAX_BYTES).contains(&chunk) {
            return Err(Error::Config(format!(
                "--chunk-size {chunk} is outside {} to {} bytes",
                drove_core::fs::CHUNK_MIN_BYTES,
                drove_core::fs::CHUNK_MAX_BYTES
            )));
        }
        if local.is_dir() {
            return Err(Error::Config(format!(
                "'{}' is a directory; drove fs put copies one file",
                local.display()
            )));
        }
        let cannot =
            |e: std::io::Error| Error::Config(format!("cannot read '{}': {e}", local.display()));
        let mut file = std::fs::File::open(local).map_err(cannot)?;
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
                .map_err(|e| Error::Transport(format!("storing a chunk stopped: {e}")))??;
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
                let (session, path, options) = (self.clone(), path.clone(), options.clone());
                let failed = Arc::clone(&failed);
                in_flight.0.push_back(tokio::spawn(async move {
                    session.store_chunk(&path, &options, data, &failed).await
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
        if summary.is_none() {
            // An empty file has no chunks, but its factor is still decided.
            let placed = self.place(&path, options, &BTreeSet::new(), 0, 0).await?;
            summary = Some((placed.replication, placed.warning));
        }
        let (replication, warning) = summary.expect("placed at least once");
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
        self.on_leader(|mut c| {
            let request = request.clone();
            async move { c.fs_commit(request).await }
        })
        .await
        .map_err(status_error)?;
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
        Ok(self
            .on_leader(|mut c| {
                let request = request.clone();
                async move { c.fs_place(request).await }
            })
            .await
            .map_err(status_error)?
            .into_inner())
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
                        dfs::write_chunk(self.chunk_clients(), &t.addr, id, crc32c, data, grant)
                            .await;
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
            return Err(Error::Transport(format!(
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

    async fn fs_list_raw(&self, path: &str) -> Result<pb::FsListResponse> {
        let request = pb::FsPathRequest {
            path: path.to_string(),
            recursive: false,
        };
        Ok(self
            .on_leader(|mut c| {
                let request = request.clone();
                async move { c.fs_list(request).await }
            })
            .await
            .map_err(status_error)?
            .into_inner())
    }

    /// A directory's entries, or the file at `path` alone.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// for entry in session.fs_list("drove://data").await? {
    ///     println!("{} {}", entry.name, entry.size);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_list(&self, path: &str) -> Result<Vec<FsEntry>> {
        let listed = self.fs_list_raw(path).await?;
        Ok(listed.entries.into_iter().map(FsEntry::from).collect())
    }

    /// A file with its chunks and where their replicas are, or a directory.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// let file = session.fs_stat("drove://data/events.parquet").await?;
    /// println!("{} chunks", file.chunks.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_stat(&self, path: &str) -> Result<FsEntry> {
        let listed = self.fs_list_raw(path).await?;
        if listed.is_dir {
            let name = drove_core::fs::normalize(path).map_err(Error::Config)?;
            return Ok(FsEntry {
                name,
                is_dir: true,
                size: 0,
                created_unix_ms: 0,
                replication: 0,
                chunk_bytes: 0,
                chunks: Vec::new(),
            });
        }
        let entry = listed.entries.into_iter().next().ok_or_else(|| {
            Error::Transport("the coordinator listed a file without its entry".into())
        })?;
        Ok(entry.into())
    }

    /// Makes a directory and its missing parents.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.fs_mkdir("drove://data/raw").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_mkdir(&self, path: &str) -> Result<()> {
        let request = pb::FsPathRequest {
            path: path.to_string(),
            recursive: false,
        };
        self.on_leader(|mut c| {
            let request = request.clone();
            async move { c.fs_mkdir(request).await }
        })
        .await
        .map_err(status_error)?;
        Ok(())
    }

    /// Removes a file, or a directory: an empty one, or with `recursive` everything
    /// under it. Their chunks are freed on the workers.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.fs_remove("drove://data/raw", true).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_remove(&self, path: &str, recursive: bool) -> Result<()> {
        let request = pb::FsPathRequest {
            path: path.to_string(),
            recursive,
        };
        self.on_leader(|mut c| {
            let request = request.clone();
            async move { c.fs_remove(request).await }
        })
        .await
        .map_err(status_error)?;
        Ok(())
    }

    /// The bytes of the file at `path`, chunk after chunk, each read from one of its
    /// replicas: a replica that fails (its worker is gone, or its copy is corrupt)
    /// is left for the next, from where the first stopped. Each chunk's checksum is
    /// checked once it is read whole.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// use futures::StreamExt;
    /// let mut bytes = session.fs_read("drove://data/notes.txt").await?;
    /// while let Some(piece) = bytes.next().await {
    ///     std::io::Write::write_all(&mut std::io::stdout(), &piece?).ok();
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_read(
        &self,
        path: &str,
    ) -> Result<impl Stream<Item = Result<bytes::Bytes>> + use<>> {
        let file = self.fs_stat(path).await?;
        if file.is_dir {
            return Err(Error::Config(format!(
                "drove://{} is a directory; name a file in it (`drove fs ls` lists them)",
                file.name
            )));
        }
        let bytes = self.inner.chunks.read(&file.name, &file, 0..file.size);
        Ok(bytes.map(|piece| piece.map_err(Error::Transport)))
    }

    /// Copies the file at `remote` to the local `local`, which appears only once
    /// whole (see [`crate::DataFrame::write_parquet`]); an existing file is replaced
    /// only with `overwrite`. Returns the bytes copied.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// session.fs_get("drove://data/notes.txt", "notes.txt".as_ref(), false).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn fs_get(&self, remote: &str, local: &Path, overwrite: bool) -> Result<u64> {
        let out = LocalFile::create(local, overwrite, "drove fs get")?;
        let mut bytes = self.fs_read(remote).await?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, out.file());
        let mut total = 0u64;
        while let Some(piece) = bytes.next().await {
            let piece = piece?;
            total += piece.len() as u64;
            file.write_all(&piece).map_err(|e| out.error(&e))?;
        }
        file.flush().map_err(|e| out.error(&e))?;
        drop(file);
        out.commit()?;
        Ok(total)
    }
}
