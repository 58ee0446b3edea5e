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
/// How the part files a run commits are named: `part-r-00000` and on.
const PART_PREFIX: &str = "part-r-";

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
        check_paths(&options.inputs, out, options.overwrite)?;
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
        // Removes what this run wrote on every way out but a commit, including this
        // future being dropped (Ctrl-C), and leaves any earlier output as it was.
        let mut staging = Staging {
            committed: false,
            existed: out.exists(),
            temporary: out.join("_temporary").join(&token),
            out: out.clone(),
        };
        // Made now, so an output nobody can write is refused before any task runs.
        std::fs::create_dir_all(&staging.temporary).map_err(|e| {
            Error::Config(format!(
                "cannot write the output directory '{}': {e}; choose an --output this user can write",
                out.display()
            ))
        })?;
        let physical = plan::build(&spec).await?;
        let bytes = codec::plan_to_bytes(physical)?;
        let result = self
            .run(
                pb::submit_job_request::Query::PhysicalPlan(bytes),
                format!("mapreduce {}", options.job),
                String::new(),
            )
            .await?;
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
        let files = commit(
            out,
            &staging.temporary,
            &written,
            options.format,
            options.overwrite,
        )
        .map_err(|e| {
            Error::Config(format!(
                "committing the output to '{}' failed: {e}",
                out.display()
            ))
        })?;
        staging.committed = true;
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

/// Refuses an output that would destroy data: one that is, contains or lies inside an
/// input, or an existing directory that is not an earlier drove output. `--overwrite`
/// replaces only what a successful drove run committed there (`_SUCCESS` marks it).
fn check_paths(inputs: &[PathBuf], out: &Path, overwrite: bool) -> Result<()> {
    let out_resolved = resolve(out)?;
    for input in inputs {
        let input_resolved = resolve(input)?;
        if out_resolved.starts_with(&input_resolved) || input_resolved.starts_with(&out_resolved) {
            let how = if out_resolved == input_resolved {
                "is"
            } else if out_resolved.starts_with(&input_resolved) {
                "lies inside"
            } else {
                "contains"
            };
            return Err(Error::Config(format!(
                "output '{}' {how} input '{}'; writing it could destroy the input, so choose an --output outside every input",
                out.display(),
                input.display()
            )));
        }
    }
    if !out.exists() {
        return Ok(());
    }
    if !out.is_dir() {
        return Err(Error::Config(format!(
            "output '{}' exists and is not a directory; choose another --output",
            out.display()
        )));
    }
    if !overwrite {
        return Err(Error::Config(format!(
            "output directory '{}' already exists; pass --overwrite to replace an earlier drove output, or choose another --output",
            out.display()
        )));
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| Error::Config(format!("cannot read '{}': {e}", out.display())))?
        .next()
        .is_none();
    if !empty && !out.join(SUCCESS_MARKER).is_file() {
        return Err(Error::Config(format!(
            "output directory '{}' is not an earlier drove output (it has no {SUCCESS_MARKER}); --overwrite replaces only those, so choose another --output or empty it yourself",
            out.display()
        )));
    }
    Ok(())
}

/// The absolute path with links resolved as far as it exists, so two names of one
/// directory compare equal.
fn resolve(path: &Path) -> Result<PathBuf> {
    let absolute = std::path::absolute(path)
        .map_err(|e| Error::Config(format!("cannot resolve '{}': {e}", path.display())))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return Ok(rest.iter().rev().fold(real, |p, part| p.join(part)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
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
            if name.starts_with(PART_PREFIX) || name == SUCCESS_MARKER {
                std::fs::remove_file(&path)?;
            }
        }
    }
    let mut files = Vec::with_capacity(written.len());
    for (partition, path, _) in written {
        let target = out.join(format!("{PART_PREFIX}{partition:05}{}", format.extension()));
        std::fs::rename(path, &target)?;
        files.push(target);
    }
    std::fs::remove_dir_all(temporary)?;
    let _ = std::fs::remove_dir(out.join("_temporary"));
    std::fs::write(out.join(SUCCESS_MARKER), b"")?;
    Ok(files)
}

/// What a run writes before its commit: `OUTPUT/_temporary/TOKEN`, and `OUTPUT` itself
/// unless it `existed`. Dropped before it is `committed`, it removes them.
struct Staging {
    out: PathBuf,
    temporary: PathBuf,
    existed: bool,
    committed: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.temporary);
        let _ = std::fs::remove_dir(self.out.join("_temporary"));
        if !self.existed {
            let _ = std::fs::remove_dir(&self.out);
        }
    }
}
