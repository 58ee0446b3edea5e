//! Running MapReduce jobs and committing their output ([`drove_exec::mapreduce::output`]
//! says how, for each kind of place): no partial output ever looks complete.

use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray, UInt64Array};
use drove_exec::codec;
use drove_exec::mapreduce::nodes::{OutputFormat, OutputSpec};
use drove_exec::mapreduce::output::{Existing, OutputDir, SUCCESS_MARKER};
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
    /// Files or directories of text, CSV or Parquet files: local paths, or URLs
    /// (`drove://`, `s3://`).
    pub inputs: Vec<PathBuf>,
    /// The output directory, a local path or a URL; it must not exist unless
    /// `overwrite`.
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
        let text = |p: &Path| {
            (p.to_str().map(str::to_string))
                .ok_or_else(|| Error::Config(format!("path '{}' is not UTF-8", p.display())))
        };
        let inputs = (options.inputs.iter())
            .map(|p| text(p))
            .collect::<Result<Vec<_>>>()?;
        let runtime = self.inner.ctx.runtime_env();
        let out = OutputDir::open(&text(&options.output)?, &runtime, Some(&self.fs_writer()))?;
        let existing = check_paths(&inputs, &out, options.overwrite).await?;
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
            inputs,
            output: OutputSpec {
                dir: out.name(),
                format: options.format,
                token: token.clone(),
            },
            reducers: options.reducers,
            combine: options.combine,
        };
        let physical = plan::build(&spec, runtime).await?;
        let bytes = codec::plan_to_bytes(physical)?;
        // Made before any task runs, so an output nobody can write is refused early.
        out.stage(&token).await?;
        // Removes what this run wrote if this future is dropped (Ctrl-C) before it
        // ends, and leaves any earlier output as it was.
        let mut staging = Staging {
            out: out.clone(),
            token: token.clone(),
            existed: existing != Existing::Absent,
            ended: false,
        };
        let ran = async {
            let result = self
                .run(
                    pb::submit_job_request::Query::PhysicalPlan(bytes),
                    format!("mapreduce {}", options.job),
                    String::new(),
                )
                .await?;
            let mut written = Vec::new();
            let mut records = 0;
            for batch in &result.batches {
                let partitions = column::<UInt64Array>(batch.column(0))?;
                let paths = column::<StringArray>(batch.column(1))?;
                let rows = column::<UInt64Array>(batch.column(2))?;
                for i in 0..batch.num_rows() {
                    written.push((partitions.value(i), paths.value(i).to_string()));
                    records += rows.value(i);
                }
            }
            written.sort();
            let files = (out.commit(&token, &written, options.format, options.overwrite)).await?;
            Ok((files, records, result.summary))
        }
        .await;
        staging.ended = true;
        let (files, records, summary) = match ran {
            Ok(ran) => ran,
            Err(e) => {
                out.discard(&token, !staging.existed).await;
                return Err(e);
            }
        };
        Ok(MapReduceResult {
            files: files.into_iter().map(PathBuf::from).collect(),
            records,
            summary,
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
/// Returns what is there.
async fn check_paths(inputs: &[String], out: &OutputDir, overwrite: bool) -> Result<Existing> {
    let out_key = place_key(&out.name())?;
    for input in inputs {
        let input_key = place_key(input)?;
        let inside = |a: &str, b: &str| a.starts_with(&format!("{}/", b.trim_end_matches('/')));
        let how = if out_key == input_key {
            "is"
        } else if inside(&out_key, &input_key) {
            "lies inside"
        } else if inside(&input_key, &out_key) {
            "contains"
        } else {
            continue;
        };
        return Err(Error::Config(format!(
            "output '{}' {how} input '{input}'; writing it could destroy the input, so choose an --output outside every input",
            out.name()
        )));
    }
    let existing = out.existing().await?;
    match existing {
        Existing::Absent => {}
        Existing::File => {
            return Err(Error::Config(format!(
                "output '{}' exists and is not a directory; choose another --output",
                out.name()
            )));
        }
        _ if !overwrite => {
            return Err(Error::Config(format!(
                "output directory '{}' already exists; pass --overwrite to replace an earlier drove output, or choose another --output",
                out.name()
            )));
        }
        Existing::Empty | Existing::Output => {}
        Existing::Other => {
            return Err(Error::Config(format!(
                "output directory '{}' is not an earlier drove output (it has no {SUCCESS_MARKER}); --overwrite replaces only those, so choose another --output or empty it yourself",
                out.name()
            )));
        }
    }
    Ok(existing)
}

/// A place as compared for overlap: a URL as written, a drove fs path normalized, a
/// local path absolute with links resolved.
fn place_key(place: &str) -> Result<String> {
    match drove_exec::stores::url_of(place).map_err(Error::Config)? {
        Some(url) if url.scheme() == drove_exec::stores::SCHEME => {
            let path = drove_core::fs::normalize(place).map_err(Error::Config)?;
            Ok(format!("drove://{path}"))
        }
        Some(url) => Ok(url.as_str().trim_end_matches('/').to_string()),
        None => Ok(resolve(Path::new(place))?.to_string_lossy().into_owned()),
    }
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

/// What a run writes before its commit: the output's `_temporary/TOKEN`, and the
/// output itself unless it `existed`. Dropped before the run `ended` (its future was
/// dropped), it removes them: a local output at once, any other in a task on the
/// current runtime.
struct Staging {
    out: OutputDir,
    token: String,
    existed: bool,
    ended: bool,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        if self.out.discard_now(&self.token, !self.existed) {
            return;
        }
        let (out, token, existed) = (self.out.clone(), self.token.clone(), self.existed);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { out.discard(&token, !existed).await });
        }
    }
}
