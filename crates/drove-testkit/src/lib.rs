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
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = std::env::temp_dir().join(format!("drove-test-tpch-sf{scale}"));
    if dir.join("_COMPLETE").exists() {
        return dir;
    }
    let staging =
        std::env::temp_dir().join(format!("drove-test-tpch-sf{scale}.{}", std::process::id()));
    drove_exec::tpch::generate(scale, &staging, Format::Parquet).expect("generating TPC-H data");
    std::fs::write(staging.join("_COMPLETE"), b"").expect("marking the data complete");
    let _ = std::fs::remove_dir_all(&dir);
    if std::fs::rename(&staging, &dir).is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    dir
}

/// The scale of TPC-H data tests use: `DROVE_TPCH_SCALE`, else `default`.
pub fn tpch_scale(default: f64) -> f64 {
    std::env::var("DROVE_TPCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The TPC-H table specs in `dir`.
pub fn tpch_tables(dir: &Path) -> Vec<TableSpec> {
    tables::tpch_tables(dir).expect("TPC-H tables")
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

/// A loopback address with nothing listening on it: a port bound and released again.
pub fn unused_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
}
