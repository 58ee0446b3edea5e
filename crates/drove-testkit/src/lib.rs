//! Helpers for drove's tests: single-process DataFusion reference results, and a
//! comparison of result sets that tolerates float rounding and, where the query does
//! not order its rows, row order.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use arrow::array::{Array, Float32Array, Float64Array};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::SessionContext;
use drove_exec::datagen::Benchmark;
use drove_exec::tables::{self, Format, TableSpec};

/// Relative tolerance for floats.
pub const FLOAT_TOLERANCE: f64 = 1e-9;

#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Text(String),
    Float(f64),
}

fn cell_eq(a: &Cell, b: &Cell) -> bool {
    match (a, b) {
        (Cell::Float(x), Cell::Float(y)) => {
            (x.is_nan() && y.is_nan())
                || x == y
                || (x - y).abs() <= FLOAT_TOLERANCE * x.abs().max(y.abs())
        }
        _ => a == b,
    }
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<Cell>> {
    let options = FormatOptions::default().with_null("NULL");
    let mut out = Vec::new();
    for batch in batches {
        let columns: Vec<Box<dyn Fn(usize) -> Cell>> = batch
            .columns()
            .iter()
            .map(|col| -> Box<dyn Fn(usize) -> Cell> {
                let col = col.clone();
                match col.data_type() {
                    DataType::Float64 => Box::new(move |i| {
                        let a = col.as_any().downcast_ref::<Float64Array>().expect("f64");
                        if a.is_null(i) {
                            Cell::Text("NULL".into())
                        } else {
                            Cell::Float(a.value(i))
                        }
                    }),
                    DataType::Float32 => Box::new(move |i| {
                        let a = col.as_any().downcast_ref::<Float32Array>().expect("f32");
                        if a.is_null(i) {
                            Cell::Text("NULL".into())
                        } else {
                            Cell::Float(a.value(i) as f64)
                        }
                    }),
                    _ => {
                        let options = options.clone();
                        Box::new(move |i| {
                            let f = ArrayFormatter::try_new(col.as_ref(), &options)
                                .expect("formattable");
                            Cell::Text(f.value(i).to_string())
                        })
                    }
                }
            })
            .collect();
        for i in 0..batch.num_rows() {
            out.push(columns.iter().map(|c| c(i)).collect());
        }
    }
    out
}

fn sort_key(row: &[Cell]) -> String {
    row.iter()
        .map(|c| match c {
            Cell::Text(s) => s.clone(),
            Cell::Float(f) => format!("{f:.6e}"),
        })
        .collect::<Vec<_>>()
        .join("\u{1}")
}

/// Compares two results. `ordered`: row order matters. Returns a description of the
/// first difference.
pub fn compare(
    actual: &[RecordBatch],
    expected: &[RecordBatch],
    ordered: bool,
) -> Result<(), String> {
    let mut a = rows(actual);
    let mut e = rows(expected);
    if a.len() != e.len() {
        return Err(format!("{} rows, expected {}", a.len(), e.len()));
    }
    if !ordered {
        a.sort_by_cached_key(|r| sort_key(r));
        e.sort_by_cached_key(|r| sort_key(r));
    }
    for (i, (ra, re)) in a.iter().zip(&e).enumerate() {
        if ra.len() != re.len() || !ra.iter().zip(re).all(|(x, y)| cell_eq(x, y)) {
            return Err(format!(
                "row {i} differs:\n  got      {ra:?}\n  expected {re:?}"
            ));
        }
    }
    Ok(())
}

/// Whether the query's final result is ordered (its text ends in ORDER BY ... or LIMIT).
pub fn is_ordered(sql: &str) -> bool {
    let last_query = sql
        .split(';')
        .map(str::trim)
        .rfind(|s| {
            let s = s.to_ascii_lowercase();
            s.starts_with("select") || s.starts_with("with")
        })
        .unwrap_or("");
    last_query.to_ascii_lowercase().contains("order by")
}

/// Runs SQL (statements separated by ';') on single-process DataFusion over `tables`
/// and returns the last query's rows.
pub async fn reference(
    tables_: &[TableSpec],
    sql: &str,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    for t in tables_ {
        tables::register(&ctx, t)
            .await
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    }
    run_statements(&ctx, sql).await
}

/// Runs statements separated by ';' on `ctx` and returns the last query's rows.
pub async fn run_statements(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let mut last = Vec::new();
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let batches = ctx.sql(statement).await?.collect().await?;
        let lower = statement.to_ascii_lowercase();
        if lower.starts_with("select") || lower.starts_with("with") {
            last = batches;
        }
    }
    Ok(last)
}

/// TPC-H data at `scale`, generated once into the system's temporary directory and
/// reused by later runs (generation is deterministic).
pub fn tpch_data(scale: f64) -> PathBuf {
    generated_data(Benchmark::Tpch, scale)
}

/// TPC-DS data at `scale`, generated once like [`tpch_data`].
pub fn tpcds_data(scale: f64) -> PathBuf {
    generated_data(Benchmark::Tpcds, scale)
}

fn generated_data(benchmark: Benchmark, scale: f64) -> PathBuf {
    let key = benchmark.key();
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("drove-test-{key}-sf{scale}"));
    if dir.join("_COMPLETE").exists() {
        return dir;
    }
    let staging =
        std::env::temp_dir().join(format!("drove-test-{key}-sf{scale}.{}", std::process::id()));
    benchmark
        .generate(scale, &staging, Format::Parquet)
        .unwrap_or_else(|e| panic!("generating {} data: {e}", benchmark.name()));
    std::fs::write(staging.join("_COMPLETE"), b"").expect("marking the data complete");
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::rename(&staging, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    dir
}

/// The scale of `benchmark`'s data tests use: `DROVE_TPCH_SCALE` or
/// `DROVE_TPCDS_SCALE`, else `default`.
pub fn scale(benchmark: Benchmark, default: f64) -> f64 {
    std::env::var(format!(
        "DROVE_{}_SCALE",
        benchmark.key().to_ascii_uppercase()
    ))
    .ok()
    .and_then(|s| s.parse().ok())
    .unwrap_or(default)
}

/// The TPC-H table specs in `dir`.
pub fn tpch_tables(dir: &Path) -> Vec<TableSpec> {
    tables::generated_tables(dir, Benchmark::Tpch).expect("TPC-H tables")
}

/// A child process that is killed when dropped, so a failing test leaves nothing running.
pub struct Proc(pub std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` in the background and returns it with the first line of its stdout
/// that contains `marker`; the rest of stdout is drained so the child never blocks.
pub fn spawn_until(mut command: std::process::Command, marker: &str) -> (Proc, String) {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let description = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {description}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(marker) => break l,
            Some(Ok(_)) => continue,
            _ => panic!("{description} exited before printing '{marker}'"),
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (proc, line)
}

/// Starts `command` (a drove binary) as `coordinator` on free loopback ports with
/// `extra` flags; returns the process, its gRPC address and its HTTP address once it
/// listens.
pub fn start_coordinator(command: std::process::Command, extra: &[&str]) -> (Proc, String, String) {
    start_coordinator_at(command, "127.0.0.1:0", extra)
}

/// [`start_coordinator`] with its gRPC service on `bind` (a fixed address, where
/// workers find it again after a restart); its HTTP on a free loopback port.
pub fn start_coordinator_at(
    mut command: std::process::Command,
    bind: &str,
    extra: &[&str],
) -> (Proc, String, String) {
    command
        .args(["coordinator", "--bind", bind, "--http", "127.0.0.1:0"])
        .args(extra);
    let (proc, line) = spawn_until(command, "coordinator listening on");
    // "coordinator listening on ADDR (HTTP on http://ADDR)", or https://
    let words: Vec<&str> = line.split_whitespace().collect();
    let (grpc, http) = match words[..] {
        [_, _, _, grpc, _, _, http, ..] => (grpc, http),
        _ => panic!("a coordinator's first line that names no addresses: {line}"),
    };
    let http = http
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches(')');
    (proc, grpc.to_string(), http.to_string())
}

/// Three `drove coordinator` processes replicating their metadata with Raft
/// (`--node-id`, `--peers`), on fixed loopback addresses (so one restarted is found
/// again), each with a data directory of its own.
pub struct Replicated {
    drove: PathBuf,
    procs: Vec<Option<Proc>>,
    /// Each one's gRPC and HTTP address.
    pub addrs: Vec<String>,
    pub https: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
    extra: Vec<String>,
}

impl Replicated {
    /// Starts the three from the `drove` binary, each with `extra` flags too.
    pub fn start(drove: &Path, extra: &[&str]) -> Self {
        let mut r = Replicated {
            drove: drove.to_path_buf(),
            procs: (0..3).map(|_| None).collect(),
            addrs: (0..3).map(|_| unused_addr().to_string()).collect(),
            https: vec![String::new(); 3],
            dirs: (0..3)
                .map(|_| tempfile::tempdir().expect("a temporary directory"))
                .collect(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..3 {
            r.start_node(i);
        }
        r
    }

    /// Starts coordinator `i` (node id `i + 1`) on its address and data directory.
    pub fn start_node(&mut self, i: usize) {
        let peers = (self.addrs.iter().enumerate())
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let (id, dir) = (
            (i + 1).to_string(),
            self.dirs[i].path().to_string_lossy().into_owned(),
        );
        let mut args = vec!["--node-id", &id, "--peers", &peers, "--data-dir", &dir];
        args.extend(self.extra.iter().map(String::as_str));
        let mut command = std::process::Command::new(&self.drove);
        command.env_remove("RUST_LOG");
        let (proc, _, http) = start_coordinator_at(command, &self.addrs[i], &args);
        self.procs[i] = Some(proc);
        self.https[i] = http;
    }

    /// Kills coordinator `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            let _ = p.0.kill();
            let _ = p.0.wait();
        }
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.procs[i].is_some()
    }

    /// Every coordinator's gRPC address, comma-separated, as `--coordinator` takes them.
    pub fn list(&self) -> String {
        self.addrs.join(",")
    }
}

/// A loopback address with nothing listening on it: a port bound and released again.
pub fn unused_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
}

/// A table of `files` Parquet files with `rows_per_file` rows each, written once into
/// the system's temporary directory and reused: columns `k` (a scrambled BIGINT with
/// repeats), `v` (the row number) and `s` (a 48-byte string). Each row takes about 80
/// bytes in memory as Arrow arrays.
pub fn wide_table(files: usize, rows_per_file: usize) -> PathBuf {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    const BATCH: usize = 65_536;
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir =
        std::env::temp_dir().join(format!("drove-test-wide-{files}x{rows_per_file}-rg{BATCH}"));
    let done = dir.join("_complete");
    if done.exists() {
        return dir;
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating the table directory");
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Int64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    for f in 0..files {
        let file = std::fs::File::create(dir.join(format!("part-{f}.parquet")))
            .expect("creating a table file");
        // Row groups of one batch: a reader holds a row group's column chunks whole.
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_max_row_group_row_count(Some(BATCH))
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, Arc::clone(&schema), Some(properties))
                .expect("a Parquet writer");
        let first = (f * rows_per_file) as i64;
        let mut start = 0;
        while start < rows_per_file {
            let n = BATCH.min(rows_per_file - start);
            let v: Vec<i64> = (0..n as i64).map(|i| first + start as i64 + i).collect();
            // Many keys repeat a few times; order has nothing to do with `v`.
            let k: Vec<i64> = v
                .iter()
                .map(|v| (v.wrapping_mul(2_654_435_761) % 1_000_003).abs())
                .collect();
            let s: Vec<String> = v
                .iter()
                .map(|v| format!("row {v:>12} of a wide test table..."))
                .collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(k)),
                    Arc::new(Int64Array::from(v)),
                    Arc::new(StringArray::from(s)),
                ],
            )
            .expect("a batch");
            writer.write(&batch).expect("writing a batch");
            start += n;
        }
        writer.close().expect("closing a table file");
    }
    std::fs::write(&done, b"").expect("marking the table complete");
    dir
}

/// Whether two results hold the same rows in the same order, value for value (no
/// float tolerance; for large results, where [`compare`] would be slow). Returns the
/// first difference.
pub fn compare_exact(actual: &[RecordBatch], expected: &[RecordBatch]) -> Result<(), String> {
    let rows = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
    if rows(actual) != rows(expected) {
        return Err(format!(
            "{} rows, expected {}",
            rows(actual),
            rows(expected)
        ));
    }
    let (Some(a), Some(e)) = (actual.first(), expected.first()) else {
        return Ok(());
    };
    let a = arrow::compute::concat_batches(&a.schema(), actual).map_err(|e| e.to_string())?;
    let e = arrow::compute::concat_batches(&e.schema(), expected).map_err(|e| e.to_string())?;
    for (i, (ca, ce)) in a.columns().iter().zip(e.columns()).enumerate() {
        let ca = arrow::compute::cast(ca, ce.data_type()).map_err(|e| e.to_string())?;
        if ca.as_ref() != ce.as_ref() {
            let first = (0..ca.len())
                .find(|r| ca.slice(*r, 1).as_ref() != ce.slice(*r, 1).as_ref())
                .unwrap_or(0);
            return Err(format!("column {i} differs first at row {first}"));
        }
    }
    Ok(())
}

/// The peak resident memory of process `pid` so far (`VmHWM` in /proc), in bytes.
pub fn peak_rss(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| std::io::Error::other(format!("no VmHWM in /proc/{pid}/status")))
}

/// Every file under a work directory, recursively, but the workers' marker files (drove-worker.lock): what
/// jobs left behind.
pub fn spill_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(spill_files(&path));
        } else if path.file_name().is_some_and(|n| n != "drove-worker.lock") {
            out.push(path);
        }
    }
    out
}
