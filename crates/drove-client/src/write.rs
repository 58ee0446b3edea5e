//! Writing a DataFrame's rows to a Parquet file that appears only when complete.

use std::path::Path;

use futures::TryStreamExt;

use crate::{DataFrame, Error, Result};

/// The most bytes of rows the writer holds before it writes them as a row group.
const ROW_GROUP_MAX_BYTES: usize = 128 << 20;

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
        let path = path.as_ref();
        let shown = path.display();
        if path.is_dir() {
            return Err(Error::Config(format!(
                "'{shown}' is a directory; write_parquet writes one file: name a file, e.g. '{}'",
                path.join("part-0.parquet").display()
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
        let cannot =
            |e: &dyn std::fmt::Display| Error::Config(format!("cannot write '{shown}': {e}"));
        // Readable as any new file is (the umask narrows it), not only by its owner.
        let temp = tempfile::Builder::new()
            .prefix(".drove-write-")
            .suffix(".tmp")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| cannot(&e))?;
        let mut rows = self.stream().await?;
        let file = temp.as_file().try_clone().map_err(|e| cannot(&e))?;
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_bytes(Some(ROW_GROUP_MAX_BYTES))
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, rows.schema(), Some(properties))
                .map_err(|e| cannot(&e))?;
        let mut written = 0;
        while let Some(batch) = rows.try_next().await? {
            written += batch.num_rows() as u64;
            writer.write(&batch).map_err(|e| cannot(&e))?;
        }
        writer.close().map_err(|e| cannot(&e))?;
        temp.as_file().sync_all().map_err(|e| cannot(&e))?;
        // Without overwrite, a file that appeared meanwhile is kept, not replaced.
        let persisted = if overwrite {
            temp.persist(path)
        } else {
            temp.persist_noclobber(path)
        };
        persisted.map_err(|e| match e.error.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Config(format!(
                "'{shown}' appeared while it was written; pass overwrite to replace it, or choose another path"
            )),
            _ => cannot(&e.error),
        })?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| cannot(&e))?;
        Ok(written)
    }
}
