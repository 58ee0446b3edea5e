//! Running MapReduce jobs and committing their output.
//!
//! Reduce tasks write part files under `OUTPUT/_temporary/TOKEN/`. Only when the whole
//! job has succeeded does the client move the winning attempts' files to
//! `OUTPUT/part-r-NNNNN` and write `OUTPUT/_SUCCESS`; a failed job's temporary files are
//! removed, so no partial output ever looks complete.

use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray, UInt64Array};
use drove_exec::codec;
use drove_exec::mapreduce::nodes::{OutputFormat, OutputSpec};
use drove_exec::mapreduce::plan::{self, MapReduceSpec};
use drove_proto as pb;

use crate::{Error, JobSummary, Result, Session};

/// A MapReduce run, as [`Session::run_mapreduce`] takes it.
#[derive(Debug, Clone)]
pub struct MapReduceOptions {
    /// The registered job's name.
    pub job: String,
    /// The job's parameters.
    pub args: drove_exec::mapreduce::JobArgs,
    /// Files or directories of text, CSV or Parquet files.
    pub inputs: Vec<PathBuf>,
    /// The output directory; it must not exist unless `overwrite`.
    pub output: PathBuf,
    pub reducers: usize,
    pub format: OutputFormat,
    /// Replace an existing output directory's part files.
    pub overwrite: bool,
    /// Run the job's combiner on the map side.
    pub combine: bool,
}

/// What a MapReduce run produced.
#[derive(Debug, Clone)]
pub struct MapReduceResult {
    /// The committed part files, in reducer order.
    pub files: Vec<PathBuf>,
    /// Output records in all.
    pub records: u64,
    pub summary: JobSummary,
}

const SUCCESS_MARKER: &str = "_SUCCESS";

impl Session {
    /// Runs a registered MapReduce job on the cluster and commits its output.
    ///
    /// ```no_run
    /// # async fn demo(session: drove_client::Session) -> drove_client::Result<()> {
    /// use drove_client::OutputFormat;
    /// use drove_client::mapreduce::MapReduceOptions;
    /// let result = session
    ///     .run_mapreduce(MapReduceOptions {
    ///         job: "wordcount".into(),
    ///         args: Default::default(),
    ///         inputs: vec!["corpus/".into()],
    ///         output: "counts".into(),
    ///         reducers: 4,
    ///         format: OutputFormat::Text,
    ///         overwrite: false,
    ///         combine: true,
    ///     })
    ///     .await?;
    /// println!("{} records in {} files", result.records, result.files.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_mapreduce(&self, options: MapReduceOptions) -> Result<MapReduceResult> {
        let out = &options.output;
        if out.exists() {
            if !out.is_dir() {
                return Err(Error::Config(format!(
                    "output '{}' exists and is not a directory; choose another --output",
                    out.display()
                )));
            }
            if !options.overwrite {
                return Err(Error::Config(format!(
                    "output directory '{}' already exists; pass --overwrite to replace it, or choose another --output",
                    out.display()
                )));
            }
        }
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let spec = MapReduceSpec {
            job: options.job.clone(),
            args: options.args.clone(),
            inputs: options.inputs.clone(),
            output: OutputSpec {
                dir: out.clone(),
                format: options.format,
                token: token.clone(),
            },
            reducers: options.reducers,
            combine: options.combine,
        };
        let physical = plan::build(&spec).await?;
        let bytes = codec::plan_to_bytes(physical)?;
        let existed = out.exists();
        let temporary = out.join("_temporary").join(&token);
        let outcome = self
            .run(
                pb::submit_job_request::Query::PhysicalPlan(bytes),
                format!("mapreduce {}", options.job),
                String::new(),
            )
            .await;
        let result = match outcome {
            Ok(result) => result,
            Err(e) => {
                abandon(out, &temporary, existed);
                return Err(e);
            }
        };
        let mut written = Vec::new();
        for batch in &result.batches {
            let partitions = column::<UInt64Array>(batch.column(0))?;
            let paths = column::<StringArray>(batch.column(1))?;
            let rows = column::<UInt64Array>(batch.column(2))?;
            for i in 0..batch.num_rows() {
                written.push((
                    partitions.value(i),
                    PathBuf::from(paths.value(i)),
                    rows.value(i),
                ));
            }
        }
        written.sort_by_key(|(p, _, _)| *p);
        let files =
            commit(out, &temporary, &written, options.format, options.overwrite).map_err(|e| {
                abandon(out, &temporary, existed);
                Error::Config(format!(
                    "committing the output to '{}' failed: {e}",
                    out.display()
                ))
            })?;
        Ok(MapReduceResult {
            files,
            records: written.iter().map(|(_, _, r)| r).sum(),
            summary: result.summary,
        })
    }
}

fn column<T: 'static>(array: &dyn Array) -> Result<&T> {
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| Error::Transport("a reduce task reported an unexpected schema".into()))
}

/// Moves the winning part files into place and marks the output complete.
fn commit(
    out: &Path,
    temporary: &Path,
    written: &[(u64, PathBuf, u64)],
    format: OutputFormat,
    overwrite: bool,
) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    if overwrite {
        for entry in std::fs::read_dir(out)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.starts_with("part-") || name == SUCCESS_MARKER {
                std::fs::remove_file(&path)?;
            }
        }
    }
    let mut files = Vec::with_capacity(written.len());
    for (partition, path, _) in written {
        let target = out.join(format!("part-r-{partition:05}{}", format.extension()));
        std::fs::rename(path, &target)?;
        files.push(target);
    }
    std::fs::remove_dir_all(temporary)?;
    let _ = std::fs::remove_dir(out.join("_temporary"));
    std::fs::write(out.join(SUCCESS_MARKER), b"")?;
    Ok(files)
}

/// Removes what a failed run wrote, leaving any earlier output as it was.
fn abandon(out: &Path, temporary: &Path, existed: bool) {
    let _ = std::fs::remove_dir_all(temporary);
    let _ = std::fs::remove_dir(out.join("_temporary"));
    if !existed {
        let _ = std::fs::remove_dir(out);
    }
}
