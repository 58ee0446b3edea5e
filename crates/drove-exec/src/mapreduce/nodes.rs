//! The plan nodes of MapReduce jobs.

use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::{ErasedJob, JobArgs, record_schema};
use crate::Error;
use crate::shuffle::ShuffleEnv;
use crate::tables::Format;

/// Lines per record batch read from a text file.
const LINES_PER_BATCH: usize = 8192;

fn external(e: Error) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn properties(schema: SchemaRef, partitions: usize) -> Arc<PlanProperties> {
    Arc::new(PlanProperties::new(
        EquivalenceProperties::new(schema),
        Partitioning::UnknownPartitioning(partitions),
        EmissionType::Incremental,
        Boundedness::Bounded,
    ))
}

/// Adds to a counter of the running task, reported in the job summary.
fn count(ctx: &TaskContext, name: &str, n: u64) {
    if n > 0
        && let Some(env) = ctx.session_config().get_extension::<ShuffleEnv>()
    {
        env.count(name, n);
    }
}

/// Reads text files as records (`file`, `line`, `text`), one partition per file. Lines
/// that are not valid UTF-8 are skipped and counted as `invalid_utf8_lines`.
#[derive(Debug)]
pub struct TextSourceExec {
    files: Vec<PathBuf>,
    properties: Arc<PlanProperties>,
}

impl TextSourceExec {
    pub fn new(files: Vec<PathBuf>) -> Self {
        assert!(!files.is_empty(), "a text source needs at least one file");
        let properties = properties(record_schema(), files.len());
        Self { files, properties }
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

/// Reads `path` line by line, handing batches of records to `emit` until it returns
/// false (the reader went away).
fn read_lines(
    path: &Path,
    ctx: &TaskContext,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> crate::Result<()> {
    let file = std::fs::File::open(path).map_err(|e| {
        Error::Io(std::io::Error::new(
            e.kind(),
            format!("{}: {e}", path.display()),
        ))
    })?;
    let mut reader = BufReader::new(file);
    let name = path.to_string_lossy().into_owned();
    let mut lines = Vec::new();
    let mut numbers = Vec::new();
    let mut invalid = 0;
    let mut buf = Vec::new();
    let mut number = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        number += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        match String::from_utf8(std::mem::take(&mut buf)) {
            Ok(line) => {
                lines.push(line);
                numbers.push(number);
            }
            Err(_) => invalid += 1,
        }
        if lines.len() == LINES_PER_BATCH
            && !emit(records(
                &name,
                std::mem::take(&mut numbers),
                std::mem::take(&mut lines),
            )?)
        {
            return Ok(());
        }
    }
    if !lines.is_empty() {
        emit(records(&name, numbers, lines)?);
    }
    count(ctx, "invalid_utf8_lines", invalid);
    Ok(())
}

fn records(file: &str, numbers: Vec<u64>, lines: Vec<String>) -> crate::Result<RecordBatch> {
    let n = lines.len();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![file; n])),
        Arc::new(UInt64Array::from(numbers)),
        Arc::new(StringArray::from(lines)),
    ];
    Ok(RecordBatch::try_new(record_schema(), columns)?)
}

impl DisplayAs for TextSourceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TextSourceExec: files={}", self.files.len())
    }
}

#[allow(deprecated)] // `with_new_children` must still be implemented in DataFusion 55.
impl ExecutionPlan for TextSourceExec {
    fn name(&self) -> &str {
        "TextSourceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let path = self.files.get(partition).cloned().ok_or_else(|| {
            DataFusionError::Internal(format!("no text file for partition {partition}"))
        })?;
        // A blocking reader feeds a small bounded channel: memory stays at a few
        // batches whatever the file's size.
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        tokio::task::spawn_blocking(move || {
            let sent = read_lines(&path, &context, |batch| tx.blocking_send(Ok(batch)).is_ok());
            if let Err(e) = sent {
                let _ = tx.blocking_send(Err(external(e)));
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            record_schema(),
            stream,
        )))
    }
}

/// Turns rows of any schema into records: `text` is the row's values joined by commas.
fn rows_as_records(batch: &RecordBatch, file: &str, first_row: u64) -> crate::Result<RecordBatch> {
    let options = FormatOptions::default().with_null("");
    let formatters = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<Vec<_>, _>>()?;
    let lines: Vec<String> = (0..batch.num_rows())
        .map(|i| {
            formatters
                .iter()
                .map(|f| f.value(i).to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let numbers = (first_row + 1..=first_row + batch.num_rows() as u64).collect();
    records(file, numbers, lines)
}

/// Runs the job's map (and combine) over its input's records.
#[derive(Debug)]
pub struct MapExec {
    input: Arc<dyn ExecutionPlan>,
    job_name: String,
    args: JobArgs,
    combine: bool,
    /// For inputs that are not records already: the name their rows carry as `file`.
    source_name: String,
    properties: Arc<PlanProperties>,
}

impl MapExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        job_name: &str,
        args: &JobArgs,
        combine: bool,
        source_name: &str,
    ) -> crate::Result<Self> {
        let job = super::job(job_name, args)?;
        let partitions = input.output_partitioning().partition_count();
        Ok(Self {
            input,
            job_name: job_name.to_string(),
            args: args.clone(),
            combine,
            source_name: source_name.to_string(),
            properties: properties(job.map_schema(), partitions),
        })
    }

    pub fn job_name(&self) -> &str {
        &self.job_name
    }

    pub fn args(&self) -> &JobArgs {
        &self.args
    }

    pub fn combine(&self) -> bool {
        self.combine
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }
}

impl DisplayAs for MapExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "MapExec: job={}, combine={}",
            self.job_name, self.combine
        )
    }
}

#[allow(deprecated)] // `with_new_children` must still be implemented in DataFusion 55.
impl ExecutionPlan for MapExec {
    fn name(&self) -> &str {
        "MapExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("MapExec takes one input".into()))?;
        Ok(Arc::new(
            MapExec::try_new(
                input,
                &self.job_name,
                &self.args,
                self.combine,
                &self.source_name,
            )
            .map_err(external)?,
        ))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let job = super::job(&self.job_name, &self.args).map_err(external)?;
        let schema = job.map_schema();
        let mapper = Arc::clone(&job).mapper(self.combine);
        let is_records = self.input.schema() == record_schema();
        let source = self.source_name.clone();
        let input = self.input.execute(partition, context)?;
        // Runs inline in the task, so a panicking map function fails the task (the worker
        // catches it) instead of silently ending the stream.
        struct State {
            input: SendableRecordBatchStream,
            mapper: Box<dyn super::Mapper>,
            rows: u64,
            done: bool,
        }
        let state = State {
            input,
            mapper,
            rows: 0,
            done: false,
        };
        let stream = futures::stream::try_unfold(state, move |mut st| {
            let source = source.clone();
            async move {
                while !st.done {
                    let Some(batch) = st.input.try_next().await? else {
                        st.done = true;
                        return Ok(st.mapper.finish().map_err(external)?.map(|out| (out, st)));
                    };
                    let records = if is_records {
                        batch
                    } else {
                        let r = rows_as_records(&batch, &source, st.rows).map_err(external)?;
                        st.rows += batch.num_rows() as u64;
                        r
                    };
                    if let Some(out) = st.mapper.push(&records).map_err(external)? {
                        return Ok(Some((out, st)));
                    }
                }
                Ok(None)
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Where and how a MapReduce job writes its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub dir: PathBuf,
    pub format: OutputFormat,
    /// Names this run's temporary directory, `DIR/_temporary/TOKEN`.
    pub token: String,
}

/// Output file formats of MapReduce jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// One `key<TAB>value` line per record.
    Text,
    Csv,
    Parquet,
}

impl OutputFormat {
    pub fn parse(s: &str) -> crate::Result<Self> {
        match s {
            "text" => Ok(Self::Text),
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            other => Err(Error::User(format!(
                "unknown output format '{other}'; use text, csv or parquet"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }

    /// The extension of committed part files.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Text => "",
            Self::Csv => ".csv",
            Self::Parquet => ".parquet",
        }
    }
}

impl From<Format> for OutputFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Csv => Self::Csv,
            Format::Parquet => Self::Parquet,
        }
    }
}

/// The schema of what a reduce task reports: which file it wrote.
pub fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

/// Reduces every key of its partition and writes the result to a temporary part file;
/// outputs one row naming that file, which the client commits once the job succeeded.
#[derive(Debug)]
pub struct ReduceExec {
    input: Arc<dyn ExecutionPlan>,
    job_name: String,
    args: JobArgs,
    output: OutputSpec,
    properties: Arc<PlanProperties>,
}

impl ReduceExec {
    pub fn try_new(
        input: Arc<dyn ExecutionPlan>,
        job_name: &str,
        args: &JobArgs,
        output: OutputSpec,
    ) -> crate::Result<Self> {
        super::job(job_name, args)?;
        let partitions = input.output_partitioning().partition_count();
        Ok(Self {
            input,
            job_name: job_name.to_string(),
            args: args.clone(),
            output,
            properties: properties(written_schema(), partitions),
        })
    }

    pub fn job_name(&self) -> &str {
        &self.job_name
    }

    pub fn args(&self) -> &JobArgs {
        &self.args
    }

    pub fn output(&self) -> &OutputSpec {
        &self.output
    }
}

fn write_part(batch: &RecordBatch, path: &Path, format: OutputFormat) -> crate::Result<()> {
    let file = std::fs::File::create(path)?;
    match format {
        OutputFormat::Text => {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(file);
            let keys = text_cells(batch.column(0))?;
            let values = text_cells(batch.column(1))?;
            for (k, v) in keys.iter().zip(&values) {
                writeln!(out, "{k}\t{v}")?;
            }
            out.flush()?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(file);
            writer.write(batch)?;
        }
        OutputFormat::Parquet => {
            let mut writer = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None)?;
            writer.write(batch)?;
            writer.close()?;
        }
    }
    Ok(())
}

/// A column as text: a struct's fields joined by ':', a list's items by ','.
fn text_cells(array: &ArrayRef) -> crate::Result<Vec<String>> {
    use arrow::array::{Array, AsArray};
    match array.data_type() {
        DataType::Struct(_) => {
            let fields = array
                .as_struct()
                .columns()
                .iter()
                .map(text_cells)
                .collect::<crate::Result<Vec<_>>>()?;
            Ok((0..array.len())
                .map(|i| {
                    fields
                        .iter()
                        .map(|f| f[i].as_str())
                        .collect::<Vec<_>>()
                        .join(":")
                })
                .collect())
        }
        DataType::List(_) => {
            let lists = array.as_list::<i32>();
            (0..array.len())
                .map(|i| Ok(text_cells(&lists.value(i))?.join(",")))
                .collect()
        }
        _ => {
            let formatter = ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default())?;
            Ok((0..array.len())
                .map(|i| formatter.value(i).to_string())
                .collect())
        }
    }
}

impl DisplayAs for ReduceExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ReduceExec: job={}, output={}",
            self.job_name,
            self.output.dir.display()
        )
    }
}

#[allow(deprecated)] // `with_new_children` must still be implemented in DataFusion 55.
impl ExecutionPlan for ReduceExec {
    fn name(&self) -> &str {
        "ReduceExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("ReduceExec takes one input".into()))?;
        Ok(Arc::new(
            ReduceExec::try_new(input, &self.job_name, &self.args, self.output.clone())
                .map_err(external)?,
        ))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let job: Arc<dyn ErasedJob> = super::job(&self.job_name, &self.args).map_err(external)?;
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let output = self.output.clone();
        let attempt = context.task_id().unwrap_or_else(|| "local".to_string());
        let stream = futures::stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let dir = output.dir.join("_temporary").join(&output.token);
            let path = dir.join(format!("part-r-{partition:05}.{attempt}"));
            // The client made the directory before submitting; one that is gone was
            // removed by a client that gave up, and nothing is written back into it.
            let reduce = tokio::task::spawn_blocking(move || -> crate::Result<(PathBuf, u64)> {
                let reduced = job.reduce(&batches)?;
                if !dir.is_dir() {
                    return Err(crate::Error::User(format!(
                        "the job's output directory {} is gone: its client gave up",
                        dir.display()
                    )));
                }
                write_part(&reduced, &path, output.format)?;
                Ok((path, reduced.num_rows() as u64))
            });
            let rows = while_working(reduce)
                .await
                .map_err(|e| DataFusionError::ExecutionJoin(Box::new(e)))?
                .map_err(external)?;
            let (path, rows) = rows;
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(vec![partition as u64])),
                Arc::new(StringArray::from(vec![path.to_string_lossy().into_owned()])),
                Arc::new(UInt64Array::from(vec![rows])),
            ];
            Ok(RecordBatch::try_new(written_schema(), columns)?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_schema(),
            stream.boxed(),
        )))
    }
}

/// Waits for work on a blocking thread, waking the task every second meanwhile: a
/// worker counts the time its tasks spend being polled as their progress, and a task
/// waiting on its own blocking work is working.
async fn while_working<T>(
    mut work: tokio::task::JoinHandle<T>,
) -> Result<T, tokio::task::JoinError> {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            done = &mut work => return done,
            _ = tick.tick() => {}
        }
    }
}
