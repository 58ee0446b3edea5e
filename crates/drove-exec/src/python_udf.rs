//! Scalar functions written in Python, run on the workers in Python processes.
//!
//! A [`PythonUdf`] carries its function as the bytes `cloudpickle` made of it, with
//! its argument and return types. It travels inside plans (the codecs call
//! [`PythonUdf::encode`] and [`PythonUdf::decode`]), and where a task calls it, it
//! hands each batch of arguments, as an Arrow IPC stream, to a Python process running
//! `drove._udf_worker` and reads the result column back the same way. The processes
//! are kept and reused by later batches and tasks of the same function, up to
//! [`IDLE_MAX`] idle ones a process. The interpreter is `DROVE_PYTHON`; a worker
//! without it runs no Python functions, which are code from whoever sent the plan
//! (`drove.local` points it at its own interpreter for its own workers). It starts in the
//! temporary directory, its data memory limited to `DROVE_PYTHON_MEMORY` (default
//! [`MEMORY_DEFAULT_BYTES`]).
//!
//! The exchange on the process's stdin and stdout: first the function and the schema
//! of its arguments and result, then for each call the arguments; each answer is a
//! status byte (0: the result follows, 1: a traceback follows) and its bytes. Every
//! piece is framed by its length as a little-endian u64, and bounded.

use std::hash::{Hash, Hasher};
use std::io::{BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// What starts an encoded [`PythonUdf`].
const MAGIC: &[u8] = b"drove-python-udf-1";
/// The largest batch of arguments or result either side sends.
pub const MESSAGE_MAX_BYTES: u64 = 1 << 30;
/// The status of an answer that carries the function's result.
const STATUS_RESULT: u8 = 0;
/// The status of an answer that carries a Python traceback.
const STATUS_RAISED: u8 = 1;
/// Idle Python processes kept per drove process; more are ended.
pub const IDLE_MAX: usize = 8;
/// The memory a Python process may take for its data unless `DROVE_PYTHON_MEMORY`
/// says otherwise; beyond it the function raises MemoryError.
pub const MEMORY_DEFAULT_BYTES: u64 = 2 << 30;

/// The memory limit of each Python process: `DROVE_PYTHON_MEMORY` (e.g. 512MiB), else
/// [`MEMORY_DEFAULT_BYTES`].
fn memory_limit() -> std::io::Result<u64> {
    match std::env::var("DROVE_PYTHON_MEMORY") {
        Err(_) => Ok(MEMORY_DEFAULT_BYTES),
        Ok(text) => drove_core::parse_bytes(&text).map_err(|e| {
            std::io::Error::other(format!(
                "DROVE_PYTHON_MEMORY={text}: {e}; give a size such as 512MiB or 2GiB"
            ))
        }),
    }
}

/// A scalar function in Python (see the module's documentation).
#[derive(Debug, Clone)]
pub struct PythonUdf {
    name: String,
    /// The function, pickled.
    function: Arc<[u8]>,
    /// Its arguments' fields (`a0`, `a1`, ...), then its result's (`result`).
    schema: SchemaRef,
    signature: Signature,
    /// What a new process is told first, made at the first call; the pool's key.
    greeting: OnceLock<Arc<[u8]>>,
}

impl PartialEq for PythonUdf {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.function == other.function && self.schema == other.schema
    }
}

impl Eq for PythonUdf {}

impl Hash for PythonUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.function.hash(state);
    }
}

impl PythonUdf {
    /// The function `function` (pickled) named `name`, taking arguments of `args` and
    /// returning `returns`.
    pub fn new(name: &str, function: Vec<u8>, args: Vec<DataType>, returns: DataType) -> Self {
        let mut fields: Vec<Field> = args
            .iter()
            .enumerate()
            .map(|(i, t)| Field::new(format!("a{i}"), t.clone(), true))
            .collect();
        fields.push(Field::new("result", returns, true));
        Self::with_schema(name, function.into(), Arc::new(Schema::new(fields)))
    }

    fn with_schema(name: &str, function: Arc<[u8]>, schema: SchemaRef) -> Self {
        Self {
            name: name.to_string(),
            function,
            signature: Signature::exact(arg_types(&schema), Volatility::Volatile),
            schema,
            greeting: OnceLock::new(),
        }
    }

    /// This function as a DataFusion scalar UDF.
    pub fn into_udf(self) -> ScalarUDF {
        ScalarUDF::new_from_impl(self)
    }

    /// The function as plans carry it: [`MAGIC`], then the name, the schema and the
    /// pickled function, each framed by its length.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let schema = crate::shuffle::schema_to_bytes(&self.schema)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut out = MAGIC.to_vec();
        for piece in [self.name.as_bytes(), &schema, &self.function] {
            frame(&mut out, piece);
        }
        Ok(out)
    }

    /// A function [`PythonUdf::encode`] wrote; `None` if `bytes` is not one.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>> {
        let Some(mut rest) = bytes.strip_prefix(MAGIC) else {
            return Ok(None);
        };
        let mut piece = || -> Result<&[u8]> {
            let (len, after) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| DataFusionError::Internal("a Python UDF cut short".into()))?;
            let len = usize::try_from(u64::from_le_bytes(*len)).unwrap_or(usize::MAX);
            if len > after.len() {
                return Err(DataFusionError::Internal("a Python UDF cut short".into()));
            }
            let (piece, after) = after.split_at(len);
            rest = after;
            Ok(piece)
        };
        let name = String::from_utf8(piece()?.to_vec())
            .map_err(|_| DataFusionError::Internal("a Python UDF's name is not UTF-8".into()))?;
        let schema = crate::shuffle::schema_from_bytes(piece()?)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let function: Arc<[u8]> = piece()?.into();
        if !rest.is_empty() {
            return Err(DataFusionError::Internal(
                "a Python UDF with bytes after its end".into(),
            ));
        }
        if schema.fields().is_empty() {
            return Err(DataFusionError::Internal(
                "a Python UDF without a result type".into(),
            ));
        }
        Ok(Some(Self::with_schema(&name, function, schema)))
    }

    /// What a new Python process is told first: the function and the schema.
    fn greeting(&self) -> Result<&Arc<[u8]>> {
        if let Some(made) = self.greeting.get() {
            return Ok(made);
        }
        let mut out = Vec::new();
        frame(&mut out, &self.function);
        frame(&mut out, &ipc_stream(&self.schema, &[])?);
        Ok(self.greeting.get_or_init(|| out.into()))
    }

    /// The type it returns.
    pub fn returns(&self) -> &DataType {
        self.schema.fields()[self.schema.fields().len() - 1].data_type()
    }

    /// The types of its arguments.
    pub fn args(&self) -> Vec<DataType> {
        arg_types(&self.schema)
    }

    /// The function applied to `args` (of `rows` rows) in a Python process.
    pub fn call(&self, args: Vec<ArrayRef>, rows: usize) -> Result<ArrayRef> {
        let declared = self.schema.fields().len() - 1;
        if args.len() != declared {
            return Err(self.failed(format!(
                "it was given {} argument(s) where it takes {declared}",
                args.len()
            )));
        }
        let fields = self.schema.fields()[..declared].to_vec();
        let batch = RecordBatch::try_new_with_options(
            Arc::new(Schema::new(fields)),
            args,
            &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)),
        )?;
        let request = ipc_stream(&batch.schema(), std::slice::from_ref(&batch))?;
        if request.len() as u64 > MESSAGE_MAX_BYTES {
            return Err(self.failed(format!(
                "a batch of its arguments is {} bytes, more than the {MESSAGE_MAX_BYTES} a call may send; lower datafusion.execution.batch_size",
                request.len()
            )));
        }
        let greeting = Arc::clone(self.greeting()?);
        // A process from the pool may have died idle (Ctrl-C to the terminal's group, the
        // OOM killer): one that fails before answering is replaced once by a new one.
        let (process, answer) = match take_idle(&greeting) {
            Some(mut idle) => match idle.ask(&request) {
                Ok(answer) => (idle, answer),
                Err(_) => self.ask_new(&greeting, &request)?,
            },
            None => self.ask_new(&greeting, &request)?,
        };
        let (status, bytes) = answer;
        if status == STATUS_RAISED {
            give_back(greeting, process);
            let traceback = String::from_utf8_lossy(&bytes);
            return exec_err!("the Python UDF {} raised:\n{traceback}", self.name);
        }
        let mut reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
        let result = match reader.next() {
            Some(batch) => batch?,
            None => return Err(self.failed("its Python process returned no batch".into())),
        };
        give_back(greeting, process);
        if result.num_columns() != 1 || result.num_rows() != rows {
            return Err(self.failed(format!(
                "it returned {} column(s) of {} row(s) for {rows} row(s); return one value for each row",
                result.num_columns(),
                result.num_rows()
            )));
        }
        let column = Arc::clone(result.column(0));
        if column.data_type() != self.returns() {
            return Err(self.failed(format!(
                "it returned {} where it was declared to return {}",
                column.data_type(),
                self.returns()
            )));
        }
        Ok(column)
    }

    /// `request` asked of a new process. A process that cannot start or that ends
    /// before it answers is an I/O error, which the task's retries try again (on
    /// another worker, perhaps one that runs Python).
    fn ask_new(&self, greeting: &[u8], request: &[u8]) -> Result<(Interpreter, (u8, Vec<u8>))> {
        let lost = |why: String| {
            DataFusionError::IoError(std::io::Error::other(format!(
                "the Python UDF {} failed: {why}",
                self.name
            )))
        };
        let mut process =
            Interpreter::start(greeting).map_err(|e| lost(format!("cannot start Python: {e}")))?;
        match process.ask(request) {
            Ok(answer) => Ok((process, answer)),
            Err(e) => {
                let exit = process.end();
                Err(lost(format!(
                    "its Python process ended ({exit}) while computing it: {e}"
                )))
            }
        }
    }

    fn failed(&self, why: String) -> DataFusionError {
        DataFusionError::Execution(format!("the Python UDF {} failed: {why}", self.name))
    }
}

impl ScalarUDFImpl for PythonUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.returns().clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        // A function of no arguments still sees how many rows there are.
        Ok(ColumnarValue::Array(self.call(arrays, rows)?))
    }
}

/// The argument types of a function of `schema`: its fields but the last, the result.
fn arg_types(schema: &Schema) -> Vec<DataType> {
    let fields = schema.fields();
    fields[..fields.len().saturating_sub(1)]
        .iter()
        .map(|f| f.data_type().clone())
        .collect()
}

/// What both of drove's plan codecs write for a scalar function: a Python one encoded,
/// nothing for the others (found by name where the plan is read).
pub fn encode_udf(udf: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
    if let Some(python) = udf.inner().downcast_ref::<PythonUdf>() {
        buf.extend_from_slice(&python.encode()?);
    }
    Ok(())
}

/// The function `name` of a plan being read: the Python one [`encode_udf`] wrote, or
/// an error naming it (the caller found no function of that name registered).
pub fn decode_udf(name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
    match PythonUdf::decode(buf)? {
        Some(python) => Ok(Arc::new(python.into_udf())),
        None => datafusion::common::plan_err!("there is no function named {name}"),
    }
}

/// `batches` of `schema` as an Arrow IPC stream, as the Python processes and pyarrow
/// read them.
pub fn ipc_stream(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

fn frame(out: &mut Vec<u8>, piece: &[u8]) {
    out.extend_from_slice(&(piece.len() as u64).to_le_bytes());
    out.extend_from_slice(piece);
}

/// A Python process running `drove._udf_worker` for one function.
struct Interpreter {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl Interpreter {
    fn start(greeting: &[u8]) -> std::io::Result<Self> {
        // Running Python functions is opt-in: they are code from the plan's sender.
        let python = std::env::var_os("DROVE_PYTHON").ok_or_else(|| {
            std::io::Error::other(
                "this worker runs no Python functions: start it with DROVE_PYTHON set to a Python that has the drove package (drove.local sets it for its own workers)",
            )
        })?;
        let memory = memory_limit()?;
        // In the temporary directory: `python -m` puts its working directory first on
        // the module path, where a source tree's drove/ would hide the installed one.
        let mut child = Command::new(&python)
            .args(["-m", "drove._udf_worker"])
            .current_dir(std::env::temp_dir())
            .env("DROVE_UDF_MEMORY_BYTES", memory.to_string())
            .env("DROVE_UDF_ANSWER_MAX_BYTES", MESSAGE_MAX_BYTES.to_string())
            // Its own process group: Ctrl-C to a terminal running `drove.local` interrupts
            // the client, not the pooled processes.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!(
                        "{}: {e}; set DROVE_PYTHON to a Python with the drove package",
                        python.to_string_lossy()
                    ),
                )
            })?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("no pipes to the Python process"));
        };
        let mut process = Self {
            child,
            input,
            output: BufReader::new(output),
        };
        process.input.write_all(greeting)?;
        Ok(process)
    }

    /// Sends `request` and reads the status and bytes of the answer.
    fn ask(&mut self, request: &[u8]) -> std::io::Result<(u8, Vec<u8>)> {
        self.input
            .write_all(&(request.len() as u64).to_le_bytes())?;
        self.input.write_all(request)?;
        self.input.flush()?;
        let mut status = [0u8; 1];
        self.output.read_exact(&mut status)?;
        let mut len = [0u8; 8];
        self.output.read_exact(&mut len)?;
        let len = u64::from_le_bytes(len);
        if ![STATUS_RESULT, STATUS_RAISED].contains(&status[0]) || len > MESSAGE_MAX_BYTES {
            return Err(std::io::Error::other(format!(
                "it answered out of turn (status {}, {len} bytes; at most {MESSAGE_MAX_BYTES} may come): does something print to its stdout before drove's worker starts?",
                status[0]
            )));
        }
        // Grows with the bytes that arrive, not with the length announced.
        let mut bytes = Vec::new();
        (&mut self.output).take(len).read_to_end(&mut bytes)?;
        if bytes.len() as u64 != len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        Ok((status[0], bytes))
    }

    /// Ends the process; how it ended.
    fn end(mut self) -> String {
        let _ = self.child.kill();
        match self.child.wait() {
            Ok(status) => status.to_string(),
            Err(e) => format!("its status unknown: {e}"),
        }
    }
}

impl Drop for Interpreter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Idle processes, each with the greeting it was started with (its function and types).
static IDLE: Mutex<Vec<(Arc<[u8]>, Interpreter)>> = Mutex::new(Vec::new());

/// An idle process started with `greeting` that is still running.
fn take_idle(greeting: &[u8]) -> Option<Interpreter> {
    loop {
        let mut process = {
            let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
            let at = idle.iter().position(|(g, _)| **g == *greeting)?;
            idle.swap_remove(at).1
        };
        if matches!(process.child.try_wait(), Ok(None)) {
            return Some(process);
        }
    }
}

fn give_back(greeting: Arc<[u8]>, process: Interpreter) {
    let evicted = {
        let mut idle = IDLE.lock().unwrap_or_else(|p| p.into_inner());
        idle.push((greeting, process));
        (idle.len() > IDLE_MAX).then(|| idle.remove(0))
    };
    // Dropped outside the lock: ending a process waits for it.
    drop(evicted);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_survives_encoding_and_bad_bytes_are_refused() {
        let udf = PythonUdf::new(
            "twice",
            b"pickled".to_vec(),
            vec![DataType::Float64, DataType::Utf8],
            DataType::Int64,
        );
        let bytes = udf.encode().unwrap();
        let back = PythonUdf::decode(&bytes).unwrap().unwrap();
        assert_eq!(back, udf);
        assert_eq!(back.returns(), &DataType::Int64);
        assert!(PythonUdf::decode(b"not one").unwrap().is_none());
        for cut in MAGIC.len()..bytes.len() {
            assert!(PythonUdf::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(PythonUdf::decode(&longer).is_err());
    }
}
