//! From a MapReduce job description to a physical plan.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef};
use datafusion::common::ScalarValue;
use datafusion::common::SplitPoint;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_expr::RangePartitioning;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{ExecutionPlan, Partitioning};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};

use super::nodes::{MapExec, OutputSpec, ReduceExec, TextSourceExec, by_key};
use super::{Partitioner, Record, job};
use crate::{Error, Result};

/// Lines read from each text input to sample keys for range partitioning.
pub const SAMPLE_LINES_PER_FILE: usize = 2_000;
/// Reducers a job may have at most.
pub const REDUCERS_MAX: usize = 10_000;

/// What to run.
#[derive(Debug, Clone)]
pub struct MapReduceSpec {
    pub job: String,
    /// The job's parameters.
    pub args: super::JobArgs,
    /// Files or directories of files: text (any extension but .csv and .parquet), CSV
    /// or Parquet; local paths, or URLs in drove fs or an object store.
    pub inputs: Vec<String>,
    pub output: OutputSpec,
    pub reducers: usize,
    /// Run the job's combiner on the map side (when it has one).
    pub combine: bool,
}

#[derive(Debug, Default)]
struct Inputs {
    text: Vec<String>,
    csv: Vec<String>,
    parquet: Vec<String>,
}

/// Whether a file's name is a marker or hidden (`_SUCCESS`, `.crc`), not input.
fn hidden(name: &str) -> bool {
    name.starts_with('.') || name.starts_with('_')
}

/// The files of an input URL: the object it names, or the objects directly inside it.
async fn list_remote(
    stores: &dyn ObjectStoreRegistry,
    input: &str,
    url: &url::Url,
) -> Result<Vec<String>> {
    let (store, location) = crate::stores::locate(stores, url)?;
    let found = (crate::stores::find(store.as_ref(), &location).await)
        .map_err(|e| Error::User(format!("input {input} cannot be read: {e}")))?;
    let objects = match found {
        Some(crate::stores::Found::File(_)) => return Ok(vec![input.to_string()]),
        Some(crate::stores::Found::Dir { objects, .. }) => objects,
        None => {
            return Err(Error::User(format!(
                "input path '{input}' does not exist; pass existing files or directories"
            )));
        }
    };
    let base = &url[..url::Position::BeforePath];
    let mut files: Vec<String> = (objects.iter())
        .filter(|o| !o.location.filename().is_some_and(hidden))
        .map(|o| format!("{base}/{}", o.location))
        .collect();
    files.sort();
    Ok(files)
}

/// Lists the input files: a directory contributes its files, skipping names that start
/// with `.` or `_` (markers such as `_SUCCESS`).
async fn list_inputs(paths: &[String], stores: &dyn ObjectStoreRegistry) -> Result<Inputs> {
    if paths.is_empty() {
        return Err(Error::User(
            "no input; pass at least one --input PATH".into(),
        ));
    }
    let mut inputs = Inputs::default();
    let extension = |p: &str| {
        let name = p.rsplit('/').next().unwrap_or(p);
        name.rsplit_once('.').map(|(_, e)| e.to_string())
    };
    let mut add = |p: String| match extension(&p).as_deref() {
        Some("csv") => inputs.csv.push(p),
        Some("parquet") => inputs.parquet.push(p),
        _ => inputs.text.push(p),
    };
    for path in paths {
        if let Some(url) = crate::stores::url_of(path).map_err(Error::User)? {
            list_remote(stores, path, &url)
                .await?
                .into_iter()
                .for_each(&mut add);
            continue;
        }
        let meta = std::fs::metadata(path).map_err(|_| {
            Error::User(format!(
                "input path '{path}' does not exist; pass existing files or directories"
            ))
        })?;
        if meta.is_dir() {
            let mut files: Vec<String> = std::fs::read_dir(path)?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(hidden))
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            files.sort();
            files.into_iter().for_each(&mut add);
        } else {
            add(path.clone());
        }
    }
    if inputs.text.is_empty() && inputs.csv.is_empty() && inputs.parquet.is_empty() {
        return Err(Error::User("the inputs hold no files".into()));
    }
    Ok(inputs)
}

/// Builds the job's physical plan. Runs in the submitting process, which has the job's
/// code registered too; range partitioning samples the input here. `runtime` reaches
/// the inputs' object stores.
pub async fn build(
    spec: &MapReduceSpec,
    runtime: Arc<RuntimeEnv>,
) -> Result<Arc<dyn ExecutionPlan>> {
    // One scan partition per CSV or Parquet file, so a record's row number counts from
    // the start of its file.
    let ctx = SessionContext::new_with_config_rt(
        datafusion::prelude::SessionConfig::new().with_repartition_file_scans(false),
        Arc::clone(&runtime),
    );
    let job = job(&spec.job, &spec.args)?;
    if spec.reducers == 0 || spec.reducers > REDUCERS_MAX {
        return Err(Error::User(format!(
            "--reducers {} is out of range; use 1 to {REDUCERS_MAX}",
            spec.reducers
        )));
    }
    let inputs = list_inputs(&spec.inputs, runtime.object_store_registry.as_ref()).await?;
    let mut maps: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    if !inputs.text.is_empty() {
        let source = Arc::new(TextSourceExec::new(inputs.text.clone()));
        maps.push(Arc::new(MapExec::try_new(
            source,
            &spec.job,
            &spec.args,
            spec.combine,
            "",
        )?));
    }
    let tables = inputs
        .csv
        .iter()
        .map(|p| (p, true))
        .chain(inputs.parquet.iter().map(|p| (p, false)));
    for (name, is_csv) in tables {
        let name = name.as_str();
        let df = if is_csv {
            ctx.read_csv(name, CsvReadOptions::new().has_header(true))
                .await?
        } else {
            ctx.read_parquet(name, ParquetReadOptions::default())
                .await?
        };
        let scan = df.create_physical_plan().await?;
        maps.push(Arc::new(MapExec::try_new(
            scan,
            &spec.job,
            &spec.args,
            spec.combine,
            name,
        )?));
    }
    let map: Arc<dyn ExecutionPlan> = if maps.len() == 1 {
        maps.pop().expect("one map")
    } else {
        UnionExec::try_new(maps)?
    };
    let by_key = by_key().ok_or_else(|| Error::Internal("an empty sort key".into()))?;
    let partitioning = match job.partitioner() {
        Partitioner::Hash => {
            Partitioning::Hash(vec![Arc::new(Column::new("key", 0))], spec.reducers)
        }
        Partitioner::Range => {
            if !inputs.csv.is_empty() || !inputs.parquet.is_empty() {
                return Err(Error::User(
                    "range-partitioned jobs read text input only for now; convert CSV or Parquet input to text".into(),
                ));
            }
            let stores = Arc::clone(&runtime.object_store_registry);
            let job = Arc::clone(&job);
            let sample = tokio::task::spawn_blocking(move || {
                sample_keys(&inputs.text, &job, stores.as_ref())
            })
            .await
            .map_err(|e| Error::Internal(format!("sampling keys stopped: {e}")))??;
            let split_points = split_points(&sample, spec.reducers)?;
            Partitioning::Range(RangePartitioning::try_new(by_key.clone(), split_points)?)
        }
    };
    // Each map task sorts its output by key (DataFusion's sort, which spills under the
    // task's memory share), and each reduce partition merges the map tasks' sorted
    // pieces, so a reduce task sees each key's values together without sorting again.
    let sorted = Arc::new(SortExec::new(by_key, map).with_preserve_partitioning(true));
    let shuffle = Arc::new(RepartitionExec::try_new(sorted, partitioning)?.with_preserve_order());
    Ok(Arc::new(ReduceExec::try_new(
        shuffle,
        &spec.job,
        &spec.args,
        spec.output.clone(),
    )?))
}

/// Maps the first lines of each text input and returns the keys they emit. Reads on a
/// blocking thread.
fn sample_keys(
    text: &[String],
    job: &Arc<dyn super::ErasedJob>,
    stores: &dyn ObjectStoreRegistry,
) -> Result<ArrayRef> {
    let mut keys: Vec<ArrayRef> = Vec::new();
    for name in text {
        let reader = std::io::BufReader::new(super::nodes::open_text(name, stores)?);
        // A line that is not UTF-8 ends that file's sample; the job itself counts them.
        let lines: Vec<(u64, String)> = std::io::BufRead::lines(reader)
            .take(SAMPLE_LINES_PER_FILE)
            .map_while(Result::ok)
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l))
            .collect();
        let records: Vec<Record<'_>> = lines
            .iter()
            .map(|(line, text)| Record {
                file: name,
                line: *line,
                text,
            })
            .collect();
        keys.push(job.sample_keys(&records)?);
    }
    let refs: Vec<&dyn Array> = keys.iter().map(|k| k.as_ref()).collect();
    Ok(arrow::compute::concat(&refs)?)
}

/// `reducers - 1` split points at even quantiles of the sorted sample, without repeats.
fn split_points(sample: &ArrayRef, reducers: usize) -> Result<Vec<SplitPoint>> {
    let sorted = arrow::compute::sort(sample.as_ref(), None)?;
    let n = sorted.len();
    let mut points: Vec<ScalarValue> = Vec::new();
    if n > 0 {
        for i in 1..reducers {
            let value = ScalarValue::try_from_array(&sorted, i * n / reducers)?;
            points.push(value);
        }
    }
    points.dedup();
    Ok(points
        .into_iter()
        .map(|v| SplitPoint::new(vec![v]))
        .collect())
}
