//! `drove._drove`, the native module of drove's Python package: a [`Session`] on an
//! embedded or remote cluster, lazy [`DataFrame`]s whose expressions are SQL text, and
//! the `drove` command line ([`cli`]), so that the wheel holds one copy of the engine.
//!
//! Results reach Python as Arrow IPC streams that pyarrow reads into a `pyarrow.Table`.
//! Every call that waits on the cluster lets go of the interpreter while it waits, so
//! other Python threads run on.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::OnceLock;

use drove_client::arrow::array::RecordBatch;
use drove_client::arrow::datatypes::{DataType, SchemaRef};
use drove_client::arrow::ipc::reader::StreamReader;
use drove_client::datafusion::common::{Column, DFSchema, JoinType};
use drove_client::datafusion::functions::core::expr_fn::coalesce;
use drove_client::datafusion::logical_expr::{Expr, SortExpr};
use drove_exec::python_udf::ipc_stream;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

pyo3::create_exception!(
    drove,
    DroveError,
    PyException,
    "An error drove reports: bad SQL, a missing file, an unreachable cluster, a failed job. \
     The message names the problem and, where there is one, the fix."
);

pyo3::create_exception!(
    drove,
    ConnectionFailed,
    DroveError,
    "The cluster could not be reached, or the connection to it broke."
);
pyo3::create_exception!(
    drove,
    QueryError,
    DroveError,
    "The query was refused before it ran: bad SQL, an unknown table, a missing file."
);
pyo3::create_exception!(
    drove,
    JobFailed,
    DroveError,
    "The job ran on the cluster and failed; the message carries the worker's error."
);
pyo3::create_exception!(
    drove,
    AccessDenied,
    DroveError,
    "The cluster does not know the token or certificate, or refuses this caller."
);

/// A drove error of the caller's own making found here (a bad argument).
fn error(e: impl std::fmt::Display) -> PyErr {
    DroveError::new_err(e.to_string())
}

/// A client error as the exception of its kind.
fn client_error(e: drove_client::Error) -> PyErr {
    use drove_client::Error;
    let message = e.to_string();
    match e {
        Error::Connect { .. } | Error::Transport(_) => ConnectionFailed::new_err(message),
        Error::Rejected(_) | Error::Exec(_) => QueryError::new_err(message),
        Error::JobFailed { .. } => JobFailed::new_err(message),
        Error::Denied(_) => AccessDenied::new_err(message),
        Error::Config(_) => DroveError::new_err(message),
    }
}

/// The tokio runtime every session of this process runs on, started at first use.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("drove")
                .build()
                .map_err(|e| format!("cannot start drove's async runtime: {e}"))
        })
        .as_ref()
        .map_err(error)
}

/// How often a wait looks for Ctrl-C (Python's pending signals).
const SIGNAL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Runs `work` to its end on the runtime, without holding the interpreter. Ctrl-C
/// raises KeyboardInterrupt within a tenth of a second: `work` is dropped, which
/// cancels the job it was running.
fn wait<T: Send>(
    py: Python<'_>,
    work: impl Future<Output = drove_client::Result<T>> + Send,
) -> PyResult<T> {
    let runtime = runtime()?;
    py.detach(|| {
        runtime.block_on(async {
            let mut work = std::pin::pin!(work);
            let mut tick = tokio::time::interval(SIGNAL_CHECK_EVERY);
            loop {
                tokio::select! {
                    done = &mut work => return done.map_err(client_error),
                    _ = tick.tick() => {
                        if let Some(Err(interrupted)) = Python::try_attach(|py| py.check_signals()) {
                            return Err(interrupted);
                        }
                    }
                }
            }
        })
    })
}

/// A connection to a drove cluster and the tables registered on it.
#[pyclass(frozen, module = "drove")]
struct Session {
    inner: drove_client::Session,
}

/// How long a job runs before its progress shows, by default: quick ones stay quiet.
const PROGRESS_AFTER_S: f64 = 1.0;

impl Session {
    /// `inner`, showing the progress of jobs that run longer than `after` seconds on
    /// Python's `sys.stderr` (a terminal or a notebook), as a bar redrawn in place.
    fn with_progress(inner: drove_client::Session, after_ms: Option<u64>) -> Self {
        if let Some(after_ms) = after_ms {
            inner.on_progress(move |p| {
                if p.elapsed_ms < after_ms {
                    return;
                }
                let end = if p.ended { "\n" } else { "" };
                let text = format!(
                    "\r{} {}{end}",
                    drove::progress::bar(p),
                    drove::progress::line(p)
                );
                // try_attach: at interpreter exit, nothing is shown.
                Python::try_attach(|py| {
                    let shown = py.import("sys").and_then(|sys| {
                        let stderr = sys.getattr("stderr")?;
                        stderr.call_method1("write", (text,))?;
                        stderr.call_method0("flush")
                    });
                    // Progress is best effort: a closed or missing stderr hides it.
                    drop(shown);
                });
            });
        }
        Self { inner }
    }
}

/// Sends drove's warnings (more with RUST_LOG) to stderr, once a session starts: not
/// at import, where it would take the place of the CLI's own logging.
fn log_warnings() {
    drove::init_logging("warn", drove::LogFormat::Text);
}

/// The `progress=` argument in milliseconds, checked.
fn progress_after(seconds: Option<f64>) -> PyResult<Option<u64>> {
    match seconds {
        Some(s) if !(s.is_finite() && s >= 0.0) => Err(error(format!(
            "progress={s}: give the seconds a job runs before its progress shows (0 or more), or None"
        ))),
        Some(s) => Ok(Some((s * 1000.0) as u64)),
        None => Ok(None),
    }
}

#[pymethods]
impl Session {
    /// Starts an embedded cluster of `workers` workers, of `slots` task slots each
    /// (by default 2), on loopback and connects to it. `progress`: seconds a job runs
    /// before its progress shows on `sys.stderr` (None: never).
    #[staticmethod]
    #[pyo3(signature = (workers = 2, progress = Some(PROGRESS_AFTER_S), slots = None))]
    fn local(
        py: Python<'_>,
        workers: usize,
        progress: Option<f64>,
        slots: Option<u32>,
    ) -> PyResult<Self> {
        if workers == 0 {
            return Err(error(
                "drove.local(workers=0): a cluster needs at least one worker; pass workers=1 or more",
            ));
        }
        if slots == Some(0) {
            return Err(error(
                "drove.local(slots=0): a worker needs at least one task slot; pass slots=1 or more, or None",
            ));
        }
        let progress = progress_after(progress)?;
        log_warnings();
        let mut config = drove_client::LocalClusterConfig {
            workers,
            ..Default::default()
        };
        config.slots = slots.unwrap_or(config.slots);
        let inner = wait(py, async move {
            drove_client::Session::with_cluster(drove_client::LocalCluster::start(config).await?)
                .await
        })?;
        Ok(Self::with_progress(inner, progress))
    }

    /// Connects to the coordinator at `address` (host:port), with a token and the
    /// directory of a client certificate (`drove cert client`) where the cluster asks
    /// for them.
    #[staticmethod]
    #[pyo3(signature = (address, token = None, tls_dir = None, progress = Some(PROGRESS_AFTER_S)))]
    fn connect(
        py: Python<'_>,
        address: &str,
        token: Option<String>,
        tls_dir: Option<PathBuf>,
        progress: Option<f64>,
    ) -> PyResult<Self> {
        let tls = match tls_dir {
            Some(dir) => Some(
                drove_client::ClusterTls::load(&dir)
                    .map_err(|e| error(format!("tls_dir={}: {e}", dir.display())))?,
            ),
            None => None,
        };
        let progress = progress_after(progress)?;
        log_warnings();
        let credentials = drove_client::Credentials { tls, token };
        let inner = wait(
            py,
            drove_client::Session::connect_with(address, &credentials),
        )?;
        Ok(Self::with_progress(inner, progress))
    }

    /// The coordinator's address.
    #[getter]
    fn address(&self) -> String {
        self.inner.coordinator_addr()
    }

    /// Registers a Parquet file or directory as table `name`.
    fn register_parquet(&self, py: Python<'_>, name: &str, path: PathBuf) -> PyResult<()> {
        wait(py, self.inner.register_parquet(name, path))
    }

    /// Registers a CSV file (with a header row) or directory as table `name`.
    fn register_csv(&self, py: Python<'_>, name: &str, path: PathBuf) -> PyResult<()> {
        wait(py, self.inner.register_csv(name, path))
    }

    /// Registers the eight TPC-H tables of a directory `drove gen tpch` wrote.
    fn register_tpch(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        wait(py, self.inner.register_tpch(path))
    }

    /// Makes a Python function (`drove.udf(...)`) callable by its name in this
    /// session's SQL; it runs in Python processes beside the workers.
    fn register_udf(&self, udf: &Udf) {
        self.inner.register_udf(udf.function.clone().into_udf());
    }

    /// The names of the registered tables.
    fn tables(&self) -> Vec<String> {
        self.inner.table_names()
    }

    /// A lazy DataFrame of one SQL query; it runs on the cluster when collected.
    fn sql(&self, py: Python<'_>, query: &str) -> PyResult<DataFrame> {
        let df = wait(py, self.inner.sql(query))?;
        Ok(DataFrame { df })
    }

    /// A lazy DataFrame over a Parquet file or directory.
    fn read_parquet(&self, py: Python<'_>, path: PathBuf) -> PyResult<DataFrame> {
        let df = wait(py, self.inner.read_parquet(path))?;
        Ok(DataFrame { df })
    }

    /// A lazy DataFrame over a CSV file (with a header row) or directory.
    fn read_csv(&self, py: Python<'_>, path: PathBuf) -> PyResult<DataFrame> {
        let df = wait(py, self.inner.read_csv(path))?;
        Ok(DataFrame { df })
    }

    /// A client for task graphs on this cluster: `submit(fn, *args)` returns a
    /// future, `map`, `gather` and `as_completed` as in Dask; see `drove.Client`.
    /// `partitions`: drove tasks per job (by default four per worker slot).
    #[pyo3(signature = (partitions = None))]
    fn client<'py>(
        slf: &Bound<'py, Self>,
        partitions: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        slf.py()
            .import("drove._tasks")?
            .getattr("Client")?
            .call1((slf, partitions))
    }

    /// The task slots of the cluster's workers that take tasks.
    fn _slots(&self, py: Python<'_>) -> PyResult<u32> {
        let status = wait(py, self.inner.cluster_summary())?;
        Ok(status
            .workers
            .iter()
            .filter(|w| !w.draining)
            .map(|w| w.slots)
            .sum())
    }

    /// Runs a MapReduce job over text files and commits its output directory:
    /// `mapreduce(inputs, output, mapper=None, reducer=None, combiner=None, *,
    /// key_type=pa.string(), value_type=pa.int64(), output_type=None, reducers=2,
    /// format="text", overwrite=False, job=None, args=None)`. Give Python functions
    /// `mapper(line)` (yields `(key, value)` pairs) and `reducer(key, values)` (returns
    /// the key's output, or yields several), or `job=` a job built into drove
    /// ("wordcount", ...). See `drove._mapreduce.run`.
    #[pyo3(signature = (*args, **kwargs))]
    fn mapreduce<'py>(
        slf: &Bound<'py, Self>,
        args: &Bound<'py, PyTuple>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut all = vec![slf.clone().into_any()];
        all.extend(args.iter());
        slf.py()
            .import("drove._mapreduce")?
            .getattr("run")?
            .call(PyTuple::new(slf.py(), all)?, kwargs)
    }

    /// Runs the MapReduce job `job` (with Python functions `map` and `reduce` for the
    /// job `python`), its combiner on, and commits its output; returns its part files,
    /// records, job and the bytes its map tasks shuffled.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (job, inputs, output, reducers, format, overwrite, args, map = None, reduce = None))]
    fn _mapreduce<'py>(
        &self,
        py: Python<'py>,
        job: String,
        inputs: Vec<PathBuf>,
        output: PathBuf,
        reducers: usize,
        format: &str,
        overwrite: bool,
        args: std::collections::BTreeMap<String, String>,
        map: Option<&Udf>,
        reduce: Option<&Udf>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let format = drove_client::OutputFormat::parse(format).map_err(error)?;
        let args = match (map, reduce) {
            (Some(map), Some(reduce)) => {
                drove_exec::mapreduce::python::args(&map.function, &reduce.function)
                    .map_err(error)?
            }
            _ => args,
        };
        let options = drove_client::mapreduce::MapReduceOptions {
            job,
            args,
            inputs,
            output,
            reducers,
            format,
            overwrite,
            combine: true,
        };
        let result = wait(py, self.inner.run_mapreduce(options))?;
        let done = PyDict::new(py);
        done.set_item("files", result.files)?;
        done.set_item("records", result.records)?;
        done.set_item("job", result.summary.job_id)?;
        done.set_item("shuffled_bytes", result.summary.shuffle_write_bytes())?;
        Ok(done)
    }

    /// Ends the session's jobs and, for `drove.local`, stops its cluster.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        let session = self.inner.clone();
        wait(py, async move {
            session.shutdown().await;
            Ok(())
        })
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _kind: Py<PyAny>,
        _value: Py<PyAny>,
        _traceback: Py<PyAny>,
    ) -> PyResult<bool> {
        self.shutdown(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!("drove.Session(address={:?})", self.inner.coordinator_addr())
    }
}

/// A lazy query: each method returns a new DataFrame, and the actions (`collect`,
/// `count`, ...) run it on the cluster. Expressions are SQL text, as in
/// `df.filter("price > 10").select("name", "price * 2 AS doubled")`.
#[pyclass(frozen, module = "drove")]
struct DataFrame {
    df: drove_client::DataFrame,
}

impl DataFrame {
    fn expr(&self, text: &str) -> PyResult<Expr> {
        self.df.inner().parse_sql_expr(text).map_err(|e| {
            error(format!(
                "cannot read the expression {text:?}: {e}; write it as SQL, e.g. \"price * 2 AS doubled\""
            ))
        })
    }

    fn exprs(&self, texts: &[String]) -> PyResult<Vec<Expr>> {
        texts.iter().map(|t| self.expr(t)).collect()
    }

    fn then(
        &self,
        f: impl FnOnce(
            drove_client::datafusion::dataframe::DataFrame,
        ) -> drove_client::datafusion::error::Result<
            drove_client::datafusion::dataframe::DataFrame,
        >,
    ) -> PyResult<Self> {
        let df = self.df.clone().transform(f).map_err(error)?;
        Ok(Self { df })
    }

    /// `text` as a sort key: an expression, then optionally `ASC` or `DESC` and
    /// `NULLS FIRST` or `NULLS LAST` (nulls come last ascending, first descending, by
    /// default, as in SQL). The expression is read as written, spaces and all.
    fn sort_key(&self, text: &str) -> PyResult<SortExpr> {
        // The last word of `rest` and what comes before it, if the word is one of `words`.
        fn peel<'a>(rest: &'a str, words: &[&str]) -> Option<(&'a str, String)> {
            let (before, last) = rest.trim_end().rsplit_once(char::is_whitespace)?;
            let last = last.to_ascii_uppercase();
            words.contains(&last.as_str()).then_some((before, last))
        }
        let mut rest = text;
        let mut nulls_first = None;
        if let Some((before, which)) = peel(rest, &["FIRST", "LAST"])
            && let Some((before, _)) = peel(before, &["NULLS"])
        {
            nulls_first = Some(which == "FIRST");
            rest = before;
        }
        let mut ascending = true;
        if let Some((before, order)) = peel(rest, &["ASC", "DESC"]) {
            ascending = order == "ASC";
            rest = before;
        }
        let expr = self.expr(rest).map_err(|_| {
            error(format!(
                "cannot read the sort key {text:?}: write an SQL expression, then optionally ASC or DESC and NULLS FIRST or NULLS LAST, e.g. \"price DESC\""
            ))
        })?;
        Ok(expr.sort(ascending, nulls_first.unwrap_or(!ascending)))
    }

    /// The rows (run on the cluster) as an aligned text table.
    fn table_text(&self, py: Python<'_>) -> PyResult<String> {
        let batches = self.run(py)?.batches;
        let text =
            drove_client::arrow::util::pretty::pretty_format_batches(&batches).map_err(error)?;
        Ok(text.to_string())
    }

    fn run(&self, py: Python<'_>) -> PyResult<drove_client::QueryResult> {
        wait(py, self.df.clone().collect_with_summary())
    }
}

#[pymethods]
impl DataFrame {
    /// Computes these expressions for every row.
    #[pyo3(signature = (*exprs))]
    fn select(&self, exprs: Vec<String>) -> PyResult<Self> {
        let exprs = self.exprs(&exprs)?;
        self.then(|df| df.select(exprs))
    }

    /// Keeps the rows for which `predicate` is true.
    fn filter(&self, predicate: &str) -> PyResult<Self> {
        let predicate = self.expr(predicate)?;
        self.then(|df| df.filter(predicate))
    }

    /// Adds column `name` (or replaces the one of that name) computed by `expr`.
    fn with_column(&self, name: &str, expr: &str) -> PyResult<Self> {
        let expr = self.expr(expr)?;
        self.then(|df| df.with_column(name, expr))
    }

    /// Groups by these expressions; `.agg(...)` on the result computes aggregates for
    /// each group.
    #[pyo3(signature = (*keys))]
    fn group_by(&self, keys: Vec<String>) -> PyResult<GroupBy> {
        Ok(GroupBy {
            keys: self.exprs(&keys)?,
            df: self.df.clone(),
        })
    }

    /// Joins with `right`: on the columns `on` (a name or a list of names both sides
    /// have; the right side's copies are left out), or where the columns `left_on`
    /// equal `right_on`. `how` is one of inner, left, right, full, semi, anti.
    #[pyo3(signature = (right, on = None, *, left_on = None, right_on = None, how = "inner"))]
    fn join(
        &self,
        right: &DataFrame,
        on: Option<&Bound<'_, PyAny>>,
        left_on: Option<&Bound<'_, PyAny>>,
        right_on: Option<&Bound<'_, PyAny>>,
        how: &str,
    ) -> PyResult<Self> {
        let join_type = match how.to_ascii_lowercase().as_str() {
            "inner" => JoinType::Inner,
            "left" => JoinType::Left,
            "right" => JoinType::Right,
            "full" | "outer" => JoinType::Full,
            "semi" | "left_semi" => JoinType::LeftSemi,
            "anti" | "left_anti" => JoinType::LeftAnti,
            other => {
                return Err(error(format!(
                    "join: unknown how={other:?}; use one of inner, left, right, full, semi, anti"
                )));
            }
        };
        let (left_on, right_on, shared_keys) = match (on, left_on, right_on) {
            (Some(on), None, None) => {
                let on = names(on)?;
                (on.clone(), on, true)
            }
            (None, Some(l), Some(r)) => (names(l)?, names(r)?, false),
            _ => {
                return Err(error(
                    "join: give either on=... or both left_on=... and right_on=...",
                ));
            }
        };
        if left_on.is_empty() || left_on.len() != right_on.len() {
            return Err(error(format!(
                "join: {} left key(s) and {} right key(s); give one or more, as many on both sides",
                left_on.len(),
                right_on.len()
            )));
        }
        // The right side under a name of its own, so that two sides of one table (or
        // of two unnamed files) do not clash.
        let right_df = right.df.inner().clone().alias(RIGHT_SIDE).map_err(error)?;
        let left_keys = key_columns(self.df.inner().schema(), &left_on, "left")?;
        let right_keys = key_columns(right_df.schema(), &right_on, "right")?;
        self.then(|df| {
            let left: Vec<&str> = left_on.iter().map(String::as_str).collect();
            let right: Vec<&str> = right_on.iter().map(String::as_str).collect();
            let joined = df.join(right_df, join_type, &left, &right, None)?;
            let keeps_right = !matches!(join_type, JoinType::LeftSemi | JoinType::LeftAnti);
            if !(shared_keys && keeps_right) {
                return Ok(joined);
            }
            // Keys named by `on` appear once, where the left side has them, with the
            // value of the side that has the row: the right's in a right join, either
            // in a full one.
            let columns: Vec<Expr> = joined
                .schema()
                .columns()
                .into_iter()
                .filter(|c| !right_keys.contains(c))
                .map(|c| match left_keys.iter().position(|k| *k == c) {
                    None => Expr::Column(c),
                    Some(i) => {
                        let (l, r) = (Expr::Column(c.clone()), Expr::Column(right_keys[i].clone()));
                        match join_type {
                            JoinType::Right => r.alias(&c.name),
                            JoinType::Full => coalesce(vec![l, r]).alias(&c.name),
                            _ => l,
                        }
                    }
                })
                .collect();
            joined.select(columns)
        })
    }

    /// Sorts by these keys: SQL expressions, each optionally followed by ASC or DESC and
    /// NULLS FIRST or NULLS LAST.
    #[pyo3(signature = (*keys))]
    fn sort(&self, keys: Vec<String>) -> PyResult<Self> {
        let keys = keys
            .iter()
            .map(|k| self.sort_key(k))
            .collect::<PyResult<Vec<_>>>()?;
        self.then(|df| df.sort(keys))
    }

    /// At most `n` rows, after skipping `offset`.
    #[pyo3(signature = (n, offset = 0))]
    fn limit(&self, n: usize, offset: usize) -> PyResult<Self> {
        self.then(|df| df.limit(offset, Some(n)))
    }

    /// `function` applied to the rows batch by batch, in Python processes beside the
    /// workers: it takes a `pyarrow.RecordBatch` and returns a RecordBatch, Table or
    /// pandas DataFrame with a row for each row, of the columns of `schema` (a
    /// `pyarrow.Schema`; the input's if not given).
    #[pyo3(signature = (function, schema = None))]
    fn map_batches(
        &self,
        py: Python<'_>,
        function: &Bound<'_, PyAny>,
        schema: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let given = self.df.inner().schema().as_arrow().clone();
        let stream = ipc_stream(&given, &[]).map_err(error)?;
        let made = py
            .import("drove._batches")?
            .call_method1("udf_for", (function, PyBytes::new(py, &stream), schema))?;
        let udf = made.cast::<Udf>()?.get().function.clone();
        let fields = match &udf.returns() {
            DataType::Struct(fields) => fields.clone(),
            other => return Err(error(format!("map_batches: a struct result, not {other}"))),
        };
        let columns = self
            .df
            .inner()
            .schema()
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        let call = udf.into_udf().call(columns).alias(BATCH_COLUMN);
        // The struct's fields come out through an unnest, which the optimizer does not
        // merge into the call: field accesses would each call the function again.
        self.then(|df| {
            let fields = fields
                .iter()
                .map(|f| {
                    let unnested = Column::from_name(format!("{BATCH_COLUMN}.{}", f.name()));
                    Expr::Column(unnested).alias(f.name())
                })
                .collect::<Vec<_>>();
            df.select(vec![call])?
                .unnest_columns(&[BATCH_COLUMN])?
                .select(fields)
        })
    }

    /// The distinct rows.
    fn distinct(&self) -> PyResult<Self> {
        self.then(|df| df.distinct())
    }

    /// This DataFrame's rows followed by `other`'s (whose columns must match), without
    /// duplicates when `distinct`.
    #[pyo3(signature = (other, distinct = false))]
    fn union(&self, other: &DataFrame, distinct: bool) -> PyResult<Self> {
        let other = other.df.inner().clone();
        self.then(|df| {
            if distinct {
                df.union_distinct(other)
            } else {
                df.union(other)
            }
        })
    }

    /// The column names.
    #[getter]
    fn columns(&self) -> Vec<String> {
        self.df
            .inner()
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    /// The plan as text: the logical plan and the distributed plan with its stages;
    /// with `analyze`, the query runs and the plan carries its metrics.
    #[pyo3(signature = (analyze = false))]
    fn explain(&self, py: Python<'_>, analyze: bool) -> PyResult<String> {
        self.then(|df| df.explain(false, analyze))?.table_text(py)
    }

    /// Runs the query on the cluster and keeps its result in the workers' memory
    /// (spilling under pressure); returns a DataFrame that reads it.
    fn cache(&self, py: Python<'_>) -> PyResult<Self> {
        let df = wait(py, self.df.clone().cache())?;
        Ok(Self { df })
    }

    /// Frees the cached result this DataFrame reads; false if it reads none.
    fn unpersist(&self, py: Python<'_>) -> PyResult<bool> {
        let df = self.df.clone();
        wait(py, async move { df.unpersist().await })
    }

    /// Runs the query on the cluster and returns its rows as a `pyarrow.Table`.
    fn collect<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let result = self.run(py)?;
        arrow_table(py, &result.schema, &result.batches)
    }

    /// `collect()`, and what the job did: its id, drove tasks, attempts beyond one
    /// per task (re-runs after failures or lost workers) and the workers it ran on.
    fn _collect_with_summary<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyDict>)> {
        let result = self.run(py)?;
        let table = arrow_table(py, &result.schema, &result.batches)?;
        let summary = PyDict::new(py);
        summary.set_item("job", result.summary.job_id)?;
        summary.set_item("tasks", result.summary.tasks())?;
        summary.set_item("extra_attempts", result.summary.extra_attempts())?;
        summary.set_item("workers", result.summary.workers_used())?;
        Ok((table, summary))
    }

    /// Runs the query and writes its rows to one Parquet file at `path`, streamed
    /// through this client; the file appears only when complete. An existing file is
    /// refused unless `overwrite=True`. Returns the rows written.
    #[pyo3(signature = (path, overwrite = false))]
    fn write_parquet(&self, py: Python<'_>, path: PathBuf, overwrite: bool) -> PyResult<u64> {
        wait(py, self.df.clone().write_parquet(path, overwrite))
    }

    /// Runs the query and returns its rows as a pandas DataFrame (pandas must be
    /// installed).
    fn to_pandas<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.collect(py)?.call_method0("to_pandas")
    }

    /// Runs the query and returns its rows as a Polars DataFrame (polars must be
    /// installed).
    fn to_polars<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let table = self.collect(py)?;
        py.import("polars")?.call_method1("from_arrow", (table,))
    }

    /// The number of rows, counted on the cluster.
    fn count(&self, py: Python<'_>) -> PyResult<usize> {
        let counted = self.then(|df| {
            df.aggregate(
                vec![],
                vec![drove_client::datafusion::functions_aggregate::count::count_all().alias("n")],
            )
        })?;
        let batches = counted.run(py)?.batches;
        let n = batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<drove_client::arrow::array::Int64Array>()
                    .map(|a| a.value(0))
            })
            .ok_or_else(|| error("count: the cluster returned no count"))?;
        usize::try_from(n).map_err(error)
    }

    /// Prints the first `n` rows as a table.
    #[pyo3(signature = (n = 20))]
    fn show(&self, py: Python<'_>, n: usize) -> PyResult<()> {
        let text = self.limit(n, 0)?.table_text(py)?;
        py.import("builtins")?.call_method1("print", (text,))?;
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!("drove.DataFrame(columns={:?})", self.columns())
    }
}

/// A vectorised Python function for SQL: `drove.udf(fn, input_types, return_type)`
/// makes one.
#[pyclass(frozen, module = "drove")]
struct Udf {
    function: drove_exec::python_udf::PythonUdf,
}

#[pymethods]
impl Udf {
    /// `name`; the function pickled; an Arrow IPC stream of the schema of its
    /// arguments, then its result.
    #[new]
    fn new(name: &str, pickled: Vec<u8>, schema: Vec<u8>) -> PyResult<Self> {
        let reader = StreamReader::try_new(std::io::Cursor::new(schema), None).map_err(error)?;
        let fields = reader.schema().fields().clone();
        let Some((result, args)) = fields.split_last() else {
            return Err(error("a UDF needs a return type"));
        };
        let args = args.iter().map(|f| f.data_type().clone()).collect();
        Ok(Self {
            function: drove_exec::python_udf::PythonUdf::new(
                name,
                pickled,
                args,
                result.data_type().clone(),
            ),
        })
    }

    /// The name SQL calls it by.
    #[getter]
    fn name(&self) -> String {
        use drove_client::datafusion::logical_expr::ScalarUDFImpl;
        self.function.name().to_string()
    }
}

/// A DataFrame's rows grouped by keys, waiting for the aggregates to compute.
#[pyclass(frozen, module = "drove")]
struct GroupBy {
    df: drove_client::DataFrame,
    keys: Vec<Expr>,
}

#[pymethods]
impl GroupBy {
    /// Computes these aggregates (SQL, such as "sum(price) AS total") for each group;
    /// the result has the keys' columns, then the aggregates'.
    #[pyo3(signature = (*aggregates))]
    fn agg(&self, aggregates: Vec<String>) -> PyResult<DataFrame> {
        let frame = DataFrame {
            df: self.df.clone(),
        };
        let aggregates = frame.exprs(&aggregates)?;
        let keys = self.keys.clone();
        frame.then(|df| df.aggregate(keys, aggregates))
    }
}

/// The column `map_batches` puts its function's struct result in.
const BATCH_COLUMN: &str = "__drove_batch";

/// The name a join gives its right side.
const RIGHT_SIDE: &str = "right_side";

/// The columns of `schema` named `names`, qualified as a join's schema has them.
fn key_columns(schema: &DFSchema, names: &[String], side: &str) -> PyResult<Vec<Column>> {
    names
        .iter()
        .map(|name| {
            let (qualifier, field) =
                schema
                    .qualified_field_with_unqualified_name(name)
                    .map_err(|e| {
                        error(format!(
                            "join: the {side} side has no key column {name:?}: {e}"
                        ))
                    })?;
            Ok(Column::new(qualifier.cloned(), field.name()))
        })
        .collect()
}

/// `batches` as a `pyarrow.Table`, read through an Arrow IPC stream.
fn arrow_table<'py>(
    py: Python<'py>,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> PyResult<Bound<'py, PyAny>> {
    let bytes = ipc_stream(schema, batches).map_err(error)?;
    py.import("pyarrow.ipc")?
        .call_method1("open_stream", (PyBytes::new(py, &bytes),))?
        .call_method0("read_all")
}

/// Column names given as one name or a list of names.
fn names(given: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(one) = given.extract::<String>() {
        return Ok(vec![one]);
    }
    given.extract::<Vec<String>>().map_err(|_| {
        error(format!(
            "expected a column name or a list of names, got {given}"
        ))
    })
}

/// Runs the `drove` command line with `args` (the program name first) and returns its
/// exit code: the wheel's `drove` command calls this.
#[pyfunction]
fn cli(py: Python<'_>, args: Vec<OsString>) -> u8 {
    let code = py.detach(|| drove::main_from(args));
    if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    }
}

#[pymodule]
fn _drove(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The MapReduce jobs every process of a cluster knows, for the embedded workers
    // and for planning jobs here.
    drove::jobs::register_builtin();
    m.add_class::<Session>()?;
    m.add_class::<DataFrame>()?;
    m.add_class::<GroupBy>()?;
    m.add_class::<Udf>()?;
    let py = m.py();
    m.add("DroveError", py.get_type::<DroveError>())?;
    m.add("ConnectionFailed", py.get_type::<ConnectionFailed>())?;
    m.add("QueryError", py.get_type::<QueryError>())?;
    m.add("JobFailed", py.get_type::<JobFailed>())?;
    m.add("AccessDenied", py.get_type::<AccessDenied>())?;
    m.add_function(wrap_pyfunction!(cli, m)?)?;
    Ok(())
}
