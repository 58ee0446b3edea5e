//! `drove fs`: files kept in the cluster's workers, split into chunks, each chunk
//! replicated on several workers (`drove://` paths).

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

pub use drove_exec::dfs::{Chunk, FsEntry, Replica};
use drove_exec::dfs_write::{FsWriter, WriteError};
pub use drove_exec::dfs_write::{PutOptions, PutSummary};
use drove_proto as pb;
use futures::{Stream, StreamExt};

use crate::write::LocalFile;
use crate::{Error, Result, Session, status_error};

impl From<WriteError> for Error {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Bad(message) => Error::Config(message),
            WriteError::Status(status) => status_error(status),
            WriteError::Transport(message) => Error::Transport(message),
        }
    }
}

impl Session {
    /// Writes drove fs through this session's cluster.
    pub(crate) fn fs_writer(&self) -> FsWriter {
        FsWriter {
            coordinators: Arc::clone(&self.inner.coordinators),
            clients: Arc::clone(&self.inner.chunks.clients),
        }
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
        Ok(self.fs_writer().put_file(local, remote, options).await?)
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
        Ok(self.fs_writer().mkdir(path).await?)
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
        Ok(self.fs_writer().remove(path, recursive).await?)
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
