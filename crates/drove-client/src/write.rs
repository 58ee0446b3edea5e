//! Writing a DataFrame's rows to a Parquet file that appears only when complete, and
//! the local file that does (shared with `drove fs get`).

use std::path::{Path, PathBuf};

use futures::TryStreamExt;

use crate::{DataFrame, Error, Result};

/// The most bytes of rows the writer holds before it writes them as a row group.
const ROW_GROUP_MAX_BYTES: usize = 128 << 20;

/// A local file being written: a temporary file beside its target, renamed into place
/// by [`LocalFile::commit`] once synced, and removed if dropped before.
pub(crate) struct LocalFile {
    temp: tempfile::NamedTempFile,
    path: PathBuf,
    dir: PathBuf,
    overwrite: bool,
}

impl LocalFile {
    /// Refuses a directory, and an existing file unless `overwrite`; `what` names the
    /// writer in messages ("write_parquet").
    pub(crate) fn create(path: &Path, overwrite: bool, what: &str) -> Result<Self> {
        let shown = path.display();
        if path.is_dir() {
            return Err(Error::Config(format!(
                "'{shown}' is a directory; {what} writes one file: name a file inside it"
            )));
        }
        if path.exists() && !overwrite {
            return Err(Error::Config(format!(
                "'{shown}' exists; pass overwrite to replace it, or choose another path"
            )));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            return Err(Error::Config(format!(
                "cannot write '{shown}': the directory '{}' does not exist; create it first",
                dir.display()
            )));
        }
        // Readable as any new file is (the umask narrows it), not only by its owner.
        let temp = tempfile::Builder::new()
            .prefix(".drove-write-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| cannot(path, &e))?;
        Ok(Self {
            temp,
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            overwrite,
        })
    }

    pub(crate) fn file(&self) -> &std::fs::File {
        self.temp.as_file()
    }

    pub(crate) fn error(&self, e: &dyn std::fmt::Display) -> Error {
        cannot(&self.path, e)
    }

    /// Syncs the file and renames it into place; without overwrite, a file that
    /// appeared meanwhile is kept, not replaced.
    pub(crate) fn commit(self) -> Result<()> {
        let Self {
            temp,
            path,
            dir,
            overwrite,
        } = self;
        temp.as_file().sync_all().map_err(|e| cannot(&path, &e))?;
        let persisted = match overwrite {
            true => temp.persist(&path),
            false => temp.persist_noclobber(&path),
        };
        persisted.map_err(|e| match e.error.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Config(format!(
                "'{}' appeared while it was written; pass overwrite to replace it, or choose another path",
                path.display()
            )),
            _ => cannot(&path, &e.error),
        })?;
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| cannot(&path, &e))
    }
}

fn cannot(path: &Path, e: &dyn std::fmt::Display) -> Error {
    Error::Config(format!("cannot write '{}': {e}", path.display()))
}

impl DataFrame {
    /// Runs the plan on the cluster and writes its rows to one Parquet file at `path`,
    /// streamed through this client a batch at a time (row groups of at most
    /// 128 MiB in memory). Returns the rows written. The file is
    /// written with blocking calls, on the task that awaits this.
    ///
    /// The file appears only when complete: rows go to a temporary file beside it,
    /// which is synced and then renamed into place, and which a failure or a dropped
    /// future removes. An existing file is refused unless `overwrite`, which replaces
    /// it; a directory always is.
    ///
    /// ```no_run
    /// # async fn demo(df: drove_client::DataFrame) -> drove_client::Result<()> {
    /// let rows = df.write_parquet("out/summary.parquet", false).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn write_parquet(self, path: impl AsRef<Path>, overwrite: bool) -> Result<u64> {
        let out = LocalFile::create(path.as_ref(), overwrite, "write_parquet")?;
        let mut rows = self.stream().await?;
        let file = out.file().try_clone().map_err(|e| out.error(&e))?;
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_bytes(Some(ROW_GROUP_MAX_BYTES))
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, rows.schema(), Some(properties))
                .map_err(|e| out.error(&e))?;
        let mut written = 0;
        while let Some(batch) = rows.try_next().await? {
            written += batch.num_rows() as u64;
            writer.write(&batch).map_err(|e| out.error(&e))?;
        }
        writer.close().map_err(|e| out.error(&e))?;
        out.commit()?;
        Ok(written)
    }
}
