//! The plan nodes of MapReduce jobs.

use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, DictionaryArray, Int32Array, RecordBatch, StringArray, StringBuilder, UInt64Array,
};
use arrow::buffer::{Buffer, OffsetBuffer};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties, SendableRecordBatchStream,
};
use futures::{StreamExt, TryStreamExt};

use super::output::OutputDir;
use super::{ErasedJob, JobArgs, record_schema};
use crate::Error;
use crate::dfs_write::FsWriter;
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
    /// Local paths, or URLs of files in object stores (`drove://`, `s3://`).
    files: Vec<String>,
    properties: Arc<PlanProperties>,
}

impl TextSourceExec {
    pub fn new(files: Vec<String>) -> Self {
        assert!(!files.is_empty(), "a text source needs at least one file");
        let properties = properties(record_schema(), files.len());
        Self { files, properties }
    }

    pub fn files(&self) -> &[String] {
        &self.files
    }
}

/// Pieces of an object being read that wait for the reader, at most.
const OBJECT_PIECES_AHEAD: usize = 4;

/// An object's bytes as a blocking reader: a task fetches them into a small bounded
/// channel. Read only from a blocking thread.
struct ObjectReader {
    pieces: tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.pieces.blocking_recv() {
                Some(piece) => self.current = piece?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        bytes::Buf::advance(&mut self.current, n);
        Ok(n)
    }
}

/// Opens a text input, a local path or an object store's URL, for reading on a
/// blocking thread. Must be called inside a Tokio runtime (it starts the fetch).
pub(super) fn open_text(
    file: &str,
    stores: &dyn datafusion::execution::object_store::ObjectStoreRegistry,
) -> crate::Result<Box<dyn Read + Send>> {
    let Some(url) = crate::stores::url_of(file).map_err(Error::User)? else {
        let opened = std::fs::File::open(file)
            .map_err(|e| Error::Io(std::io::Error::new(e.kind(), format!("{file}: {e}"))))?;
        return Ok(Box::new(opened));
    };
    use object_store::ObjectStoreExt;
    let (store, location) = crate::stores::locate(stores, &url)?;
    let (tx, pieces) = tokio::sync::mpsc::channel(OBJECT_PIECES_AHEAD);
    let io_error = move |e: object_store::Error| std::io::Error::other(format!("{url}: {e}"));
    tokio::spawn(async move {
        let mut bytes = match store.get(&location).await {
            Ok(got) => got.into_stream(),
            Err(e) => {
                let _ = tx.send(Err(io_error(e))).await;
                return;
            }
        };
        while let Some(piece) = bytes.next().await {
            let failed = piece.is_err();
            // The reader went away, or the read failed: either ends it.
            if tx.send(piece.map_err(&io_error)).await.is_err() || failed {
                return;
            }
        }
    });
    Ok(Box::new(ObjectReader {
        pieces,
        current: bytes::Bytes::new(),
    }))
}

/// Bytes read from a text file at a time.
const READ_BYTES: usize = 1 << 20;
/// Bytes of text a batch of records holds at most (but a longer line).
const BATCH_BYTES: usize = 64 << 20;
/// The longest line a text input may have (a batch's text must stay under 2 GiB).
const LINE_BYTES_MAX: usize = 1 << 30;

/// Reads `path` as lines, handing batches of records to `emit` until it returns false
/// (the reader went away). It reads large blocks and copies each line once, into the
/// batch's text column.
fn read_lines(
    name: &str,
    mut file: impl Read,
    ctx: &TaskContext,
    line_max: usize,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> crate::Result<()> {
    let io_error =
        |e: std::io::Error| Error::Io(std::io::Error::new(e.kind(), format!("{name}: {e}")));
    let mut batch = Lines::new(name.to_string());
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BYTES);
    // Where in `buf` the line being read starts.
    let mut start = 0;
    loop {
        buf.drain(..start);
        start = 0;
        let before = buf.len();
        let read = (&mut file)
            .take(READ_BYTES as u64)
            .read_to_end(&mut buf)
            .map_err(io_error)?;
        let end = if read == 0 {
            buf.len()
        } else {
            // Only the new bytes can end the line `buf` began with.
            match memchr::memrchr(b'\n', &buf[before..]) {
                Some(last) => before + last + 1,
                None if buf.len() > line_max => {
                    return Err(Error::User(format!(
                        "line {} of {name} is longer than {} MiB; split it into lines",
                        batch.number + 1,
                        line_max >> 20
                    )));
                }
                None => continue,
            }
        };
        while start < end {
            let line_end = memchr::memchr(b'\n', &buf[start..end]).map_or(end, |i| start + i + 1);
            batch.push(&buf[start..line_end]);
            start = line_end;
            if batch.is_full() && !emit(batch.take()?) {
                return Ok(());
            }
        }
        if read == 0 {
            break;
        }
    }
    if batch.len() > 0 {
        emit(batch.take()?);
    }
    count(ctx, "invalid_utf8_lines", batch.invalid);
    Ok(())
}

/// A batch of records being read from one text file: lines are copied into one buffer
/// and checked for UTF-8 together when the batch is taken.
struct Lines {
    file: String,
    number: u64,
    numbers: Vec<u64>,
    values: Vec<u8>,
    offsets: Vec<i32>,
    /// Lines skipped as not UTF-8, over the whole file.
    invalid: u64,
}

impl Lines {
    fn new(file: String) -> Self {
        Self {
            file,
            number: 0,
            numbers: Vec::with_capacity(LINES_PER_BATCH),
            values: Vec::new(),
            offsets: vec![0],
            invalid: 0,
        }
    }

    fn len(&self) -> usize {
        self.numbers.len()
    }

    /// Whether the batch should be taken: it has [`LINES_PER_BATCH`] lines, or
    /// [`BATCH_BYTES`] of text.
    fn is_full(&self) -> bool {
        self.len() == LINES_PER_BATCH || self.values.len() >= BATCH_BYTES
    }

    /// Adds a line, with its end of line if it has one.
    fn push(&mut self, line: &[u8]) {
        self.number += 1;
        let line = match line.strip_suffix(b"\n") {
            Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
            None => line,
        };
        self.values.extend_from_slice(line);
        // At most BATCH_BYTES and a line of LINE_BYTES_MAX.
        self.offsets.push(self.values.len() as i32);
        self.numbers.push(self.number);
    }

    /// The records added since the last batch, without the lines that are not UTF-8.
    fn take(&mut self) -> crate::Result<RecordBatch> {
        let mut numbers = std::mem::replace(&mut self.numbers, Vec::with_capacity(LINES_PER_BATCH));
        let offsets = std::mem::replace(&mut self.offsets, vec![0]);
        let values = Buffer::from_vec(std::mem::take(&mut self.values));
        let texts = match StringArray::try_new(
            OffsetBuffer::new(offsets.clone().into()),
            values.clone(),
            None,
        ) {
            Ok(texts) => texts,
            // Some line is not UTF-8: the lines are checked one by one.
            Err(_) => {
                let mut texts = StringBuilder::new();
                let mut kept = Vec::with_capacity(numbers.len());
                for (number, range) in numbers.iter().zip(offsets.windows(2)) {
                    match std::str::from_utf8(&values[range[0] as usize..range[1] as usize]) {
                        Ok(text) => {
                            texts.append_value(text);
                            kept.push(*number);
                        }
                        Err(_) => self.invalid += 1,
                    }
                }
                numbers = kept;
                texts.finish()
            }
        };
        records(&self.file, numbers, Arc::new(texts))
    }
}

/// Records of one file: their line numbers and texts.
fn records(file: &str, numbers: Vec<u64>, texts: ArrayRef) -> crate::Result<RecordBatch> {
    let files = DictionaryArray::new(
        Int32Array::from(vec![0; numbers.len()]),
        Arc::new(StringArray::from(vec![file])),
    );
    let columns: Vec<ArrayRef> = vec![Arc::new(files), Arc::new(UInt64Array::from(numbers)), texts];
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
        let stores = Arc::clone(&context.runtime_env().object_store_registry);
        let file = open_text(&path, stores.as_ref());
        // A blocking reader feeds a small bounded channel: memory stays at a few
        // batches whatever the file's size.
        let (tx, rx) = tokio::sync::mpsc::channel::<DfResult<RecordBatch>>(2);
        tokio::task::spawn_blocking(move || {
            let sent = file.and_then(|file| {
                read_lines(&path, file, &context, LINE_BYTES_MAX, |batch| {
                    tx.blocking_send(Ok(batch)).is_ok()
                })
            });
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
    records(file, numbers, Arc::new(StringArray::from(lines)))
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
    /// A local path, or the URL of a directory in drove fs or an object store.
    pub dir: String,
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

/// Pairs ordered by their key, as a reduce task reads them.
pub fn by_key() -> Option<LexOrdering> {
    LexOrdering::new([PhysicalSortExpr::new(
        Arc::new(Column::new("key", 0)),
        SortOptions::default(),
    )])
}

/// The schema of what a reduce task reports: which file it wrote.
pub fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
    ]))
}

/// The error of a reduce task whose run's output directory is gone.
fn gone(dir: &OutputDir) -> DataFusionError {
    external(crate::Error::User(format!(
        "the job's output directory {} is gone: its client gave up",
        dir.name()
    )))
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

/// A part file being written, a batch at a time.
enum PartWriter {
    Text(std::io::BufWriter<std::fs::File>),
    Csv(arrow::csv::Writer<std::fs::File>),
    Parquet(parquet::arrow::ArrowWriter<std::fs::File>),
}

impl PartWriter {
    fn create(path: &Path, format: OutputFormat, schema: SchemaRef) -> crate::Result<Self> {
        let file = std::fs::File::create(path)?;
        Ok(match format {
            OutputFormat::Text => Self::Text(std::io::BufWriter::new(file)),
            OutputFormat::Csv => {
                let mut writer = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(file);
                // The header, even in a partition that gets no rows.
                writer.write(&RecordBatch::new_empty(schema))?;
                Self::Csv(writer)
            }
            OutputFormat::Parquet => {
                Self::Parquet(parquet::arrow::ArrowWriter::try_new(file, schema, None)?)
            }
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> crate::Result<()> {
        match self {
            Self::Text(out) => {
                use std::io::Write;
                let nested =
                    |c: &ArrayRef| matches!(c.data_type(), DataType::Struct(_) | DataType::List(_));
                let (keys, values) = (batch.column(0), batch.column(1));
                if nested(keys) || nested(values) {
                    let keys = text_cells(keys)?;
                    let values = text_cells(values)?;
                    for (k, v) in keys.iter().zip(&values) {
                        writeln!(out, "{k}\t{v}")?;
                    }
                } else {
                    // Plain cells are formatted straight into the file.
                    let options = FormatOptions::default();
                    let keys = ArrayFormatter::try_new(keys.as_ref(), &options)?;
                    let values = ArrayFormatter::try_new(values.as_ref(), &options)?;
                    for i in 0..batch.num_rows() {
                        writeln!(out, "{}\t{}", keys.value(i), values.value(i))?;
                    }
                }
            }
            Self::Csv(writer) => writer.write(batch)?,
            Self::Parquet(writer) => writer.write(batch)?,
        }
        Ok(())
    }

    fn close(self) -> crate::Result<()> {
        match self {
            Self::Text(mut out) => std::io::Write::flush(&mut out)?,
            Self::Csv(writer) => drop(writer.into_inner()),
            Self::Parquet(writer) => {
                writer.close()?;
            }
        }
        Ok(())
    }
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
            self.job_name, self.output.dir
        )
    }
}

#[allow(deprecated)] // `with_new_children` must still be implemented in DataFusion 55.
impl ExecutionPlan for ReduceExec {
    fn name(&self) -> &str {
        "ReduceExec"
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        vec![by_key().map(Into::into)]
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
        let mut input = self.input.execute(partition, Arc::clone(&context))?;
        let output = self.output.clone();
        let attempt = context.task_id().unwrap_or_else(|| "local".to_string());
        // The input comes sorted by key: each key's values are reduced as soon as the
        // next key starts, and the output is written as it comes, so a reduce task
        // holds one key's values, not its partition.
        let stream = futures::stream::once(async move {
            let writer = context.session_config().get_extension::<FsWriter>();
            let dir = OutputDir::open(&output.dir, &context.runtime_env(), writer.as_deref())
                .map_err(external)?;
            // The submitter staged the run's directory before submitting; one that is
            // gone was removed by a submitter that gave up, and nothing is written back.
            if !dir.staged(&output.token).await.map_err(external)? {
                return Err(gone(&dir));
            }
            let name = format!("part-r-{partition:05}.{attempt}");
            // A part for a local output is written in place; for any other, to this
            // worker's scratch space first, then copied there whole.
            let (path, scratch) = match dir.local_part(&output.token, &name) {
                Some(path) => (path, None),
                None => {
                    let file = (context.runtime_env().disk_manager)
                        .create_tmp_file("a MapReduce part file")?;
                    let path = file.path().map(Path::to_path_buf).ok_or_else(|| {
                        DataFusionError::Internal(
                            "the worker's scratch space holds no local files".into(),
                        )
                    })?;
                    (path, Some(file))
                }
            };
            let mut writer =
                PartWriter::create(&path, output.format, job.output_schema()).map_err(external)?;
            let mut reducer = Arc::clone(&job).reducer();
            let mut rows = 0;
            while let Some(pairs) = input.try_next().await? {
                if let Some(out) = reducer.push(&pairs).map_err(external)? {
                    rows += out.num_rows() as u64;
                    writer.write(&out).map_err(external)?;
                }
            }
            if let Some(out) = reducer.finish().map_err(external)? {
                rows += out.num_rows() as u64;
                writer.write(&out).map_err(external)?;
            }
            writer.close().map_err(external)?;
            let at = match scratch {
                None => path.to_string_lossy().into_owned(),
                // Asked again: a submitter that gave up while the part was written
                // gets nothing written back into what it removed.
                Some(_) if !dir.staged(&output.token).await.map_err(external)? => {
                    return Err(gone(&dir));
                }
                Some(_) => (dir.put_part(&output.token, &name, &path).await).map_err(external)?,
            };
            let columns: Vec<ArrayRef> = vec![
                Arc::new(UInt64Array::from(vec![partition as u64])),
                Arc::new(StringArray::from(vec![at])),
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

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::Int32Type;

    use super::*;

    /// A text file's records as the source reads them: (line number, text).
    async fn read(path: &Path) -> Vec<(u64, String)> {
        let source = TextSourceExec::new(vec![path.to_string_lossy().into_owned()]);
        let batches: Vec<RecordBatch> = source
            .execute(0, Arc::new(TaskContext::default()))
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut records = Vec::new();
        for batch in batches {
            assert!(batch.num_rows() <= LINES_PER_BATCH);
            let files = batch.column(0).as_dictionary::<Int32Type>();
            let names = files.values().as_string::<i32>();
            let numbers = batch
                .column(1)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .unwrap();
            let texts = batch.column(2).as_string::<i32>();
            for i in 0..batch.num_rows() {
                assert_eq!(
                    names.value(files.keys().value(i) as usize),
                    path.to_string_lossy()
                );
                records.push((numbers.value(i), texts.value(i).to_string()));
            }
            assert_eq!(texts.null_count(), 0);
        }
        records
    }

    #[tokio::test]
    async fn text_is_read_as_lines_across_read_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        // Lines of every length up to past a read block, CRLF endings, a line that is
        // not UTF-8, an empty line, and a last line without an end.
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        let mut number = 0;
        let mut line = |text: Vec<u8>, end: &[u8], bytes: &mut Vec<u8>| {
            number += 1;
            if let Ok(t) = String::from_utf8(text.clone()) {
                expected.push((number, t));
            }
            bytes.extend_from_slice(&text);
            bytes.extend_from_slice(end);
        };
        for i in 0..30_000usize {
            let text = "wörd ".repeat(i % 40).into_bytes();
            line(text, if i % 7 == 0 { b"\r\n" } else { b"\n" }, &mut bytes);
        }
        line(b"\xff\xfe broken".to_vec(), b"\n", &mut bytes);
        line(Vec::new(), b"\n", &mut bytes);
        line(vec![b'x'; READ_BYTES + 10], b"\n", &mut bytes);
        line(b"the end".to_vec(), b"", &mut bytes);
        assert!(bytes.len() > 2 * READ_BYTES);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).await, expected);

        // A file that ends with its line's end has no empty line after it.
        std::fs::write(&path, b"one\ntwo\n").unwrap();
        assert_eq!(read(&path).await, [(1, "one".into()), (2, "two".into())]);
        std::fs::write(&path, b"").unwrap();
        assert!(read(&path).await.is_empty());
        // A lone carriage return at the end is part of the last line.
        std::fs::write(&path, b"a\r\nb\r").unwrap();
        assert_eq!(read(&path).await, [(1, "a".into()), (2, "b\r".into())]);
    }

    #[test]
    fn a_line_longer_than_the_limit_is_refused_before_it_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("long.txt");
        let mut bytes = b"short\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'x', 3 * READ_BYTES));
        bytes.extend_from_slice(b"\nafter\n");
        std::fs::write(&path, &bytes).unwrap();
        let mut rows = 0;
        let open = || std::fs::File::open(&path).unwrap();
        let e = read_lines(
            "long.txt",
            open(),
            &TaskContext::default(),
            READ_BYTES,
            |b| {
                rows += b.num_rows();
                true
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 2 of long.txt") && e.contains("longer than 1 MiB"),
            "{e}"
        );
        // Under a higher limit the same file reads.
        read_lines(
            "long.txt",
            open(),
            &TaskContext::default(),
            4 * READ_BYTES,
            |b| {
                rows += b.num_rows();
                true
            },
        )
        .unwrap();
        assert_eq!(rows, 3);
    }
}
