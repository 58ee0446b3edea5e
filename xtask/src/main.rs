//! `cargo xtask`: drove's project tasks.
//!
//! `cargo xtask bench [WORKLOAD...] [--quick]` measures drove against its peers on the
//! same files in the same run: `tpch` and `tpcds` (single-process DataFusion, PySpark),
//! `wordcount`
//! and `sort` (a single-threaded Rust reference, PySpark, Dask), `tasks` (Dask,
//! PySpark), `recovery` (drove with a worker killed), `shuffle` (group-bys whose
//! exchanges are all-to-all at 8 and 500 partitions, drove and DataFusion) and
//! `fs` (`drove fs` against the disk, on demand), `fs-tpch` (TPC-H over `drove://`
//! against local Parquet, on demand), `python` (drove's wheel: TPC-H from Python against Rust, a Python UDF against
//! PySpark's; wordcount and tasks run drove from Python too, see [`python`]). Every
//! engine runs in its own process tree, whose peak resident memory is sampled; every
//! answer is checked before a time is reported. Tables are appended to BENCHMARKS.md, JSON goes to
//! `bench-results/`. PySpark and Dask are installed into `target/bench-venv` by the
//! bench itself; a peer that cannot be installed is reported as missing.
//!
//! `cargo xtask build-report [--tests] [--release]` times the README's set-up commands
//! from a fresh clone with an empty cargo cache (see [`build_report`]).

mod build_report;
mod engines;
mod failover;
mod fs;
mod fs_tpch;
mod iterative;
mod measure;
mod processes;
mod python;
mod recovery;

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use drove_exec::datagen::Benchmark;
use drove_exec::tables::Format;
use serde_json::{Value, json};

use measure::{Measured, Peers};

/// The allocator the `drove` binary ships with, so that the engines measured here in
/// process (drove and single-process DataFusion alike) allocate as drove does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Benchmarks drove against its peers.
    Bench(Box<BenchArgs>),
    /// Times the README's demo command (and with --tests its test command) from a
    /// fresh clone with an empty cargo cache, and lists the slowest crates.
    BuildReport(build_report::BuildReportArgs),
    /// Runs one engine on one workload in this process (used by `bench`).
    #[command(hide = true)]
    Engine { spec: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Peer {
    Pyspark,
    Dask,
}

impl Workload {
    /// The benchmark whose queries the workload runs, if it is one.
    fn benchmark(self) -> Option<Benchmark> {
        match self {
            Workload::Tpch => Some(Benchmark::Tpch),
            Workload::Tpcds => Some(Benchmark::Tpcds),
            _ => None,
        }
    }
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::Pyspark => "PySpark",
            Peer::Dask => "Dask",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    Tpch,
    /// The 99 TPC-DS queries.
    Tpcds,
    Wordcount,
    /// A sort of 100-byte records by key; at full size drove's two workers are processes
    /// with `--memory 512MiB` each, their peak resident memory reported.
    Sort,
    Tasks,
    Recovery,
    /// PageRank with its links cached and without.
    Pagerank,
    /// A sort over four times the workers' memory budget, workers as processes (on
    /// demand only: it builds the release `drove` binary).
    Memory,
    /// Group-bys whose exchanges are all-to-all at 8 and at 500 partitions (8 and 64
    /// with --quick), drove and DataFusion each against itself at 8.
    Shuffle,
    /// TPC-H queries on three replicated coordinator processes whose leader is killed
    /// at --kills random points (on demand only: it builds the release `drove`).
    Failover,
    /// drove's wheel: its size and import time, TPC-H from Python against drove's Rust
    /// client, and a Python UDF against PySpark's pandas UDF (it builds the wheel:
    /// optimized, or in the dev profile with --quick).
    Python,
    /// `drove fs put` and `get` of --size bytes against the disk with the same fsync
    /// policy, and re-replication after a worker is killed (on demand only: it builds
    /// the release `drove`).
    Fs,
    /// TPC-H written into drove fs (replication 2, three `drove worker` processes)
    /// against the same tables as local Parquet on the same cluster, with the share of
    /// bytes read from a local replica (on demand only: it builds the release `drove`).
    FsTpch,
}

#[derive(Args)]
struct BenchArgs {
    /// Workloads to run (default: all).
    #[arg(value_enum)]
    workloads: Vec<Workload>,
    /// Small scales and one iteration: every workload and peer in minutes.
    #[arg(long)]
    quick: bool,
    /// TPC-H and TPC-DS scale (default 1; 0.01 with --quick).
    #[arg(long)]
    scale: Option<f64>,
    /// Bytes of text for wordcount and recovery (default 1 GB; 10 MB with --quick).
    #[arg(long)]
    size: Option<u64>,
    /// Bytes of records for sort (default 1 GB; 10 MB with --quick).
    #[arg(long)]
    sort_size: Option<u64>,
    /// Tiny tasks in the tasks workload (default 10,000; 500 with --quick).
    #[arg(long)]
    tasks: Option<u64>,
    /// Graph nodes for pagerank (default 200,000; 20,000 with --quick).
    #[arg(long)]
    nodes: Option<u64>,
    /// Each worker's memory budget in the memory workload (default 256MiB; 32MiB with
    /// --quick); the table sorted is at least four times the two workers' total.
    #[arg(long, value_parser = drove_core::parse_bytes)]
    memory_budget: Option<u64>,
    /// Runs per engine; medians are reported (default 3; 1 with --quick).
    #[arg(long)]
    iterations: Option<u64>,
    /// The TPC-H or TPC-DS queries to run (default: all).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// drove workers; PySpark gets workers × slots cores, Dask as many workers.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    #[arg(long, default_value_t = 1)]
    slots: u64,
    /// Skip PySpark and Dask.
    #[arg(long, conflicts_with = "peers")]
    no_peers: bool,
    /// The peers to run (default: both); `--peers dask` skips PySpark, whose tasks run
    /// takes minutes.
    #[arg(long, value_delimiter = ',', default_values = ["pyspark", "dask"])]
    peers: Vec<Peer>,
    /// Record drove's tracing at info level (JSON lines to a file), to measure its cost.
    #[arg(long)]
    tracing: bool,
    /// Give drove's coordinator a data directory (`--data-dir`, a new one under --data
    /// for each engine run, removed after it), so every job's submission and end is on
    /// disk before it is acted on: the cost of a durable coordinator.
    #[arg(long)]
    durable: bool,
    /// Run drove with this many coordinators: 3 or 5 replicate the metadata with Raft
    /// (each keeps its log on disk, under --data with --durable, else in a temporary
    /// directory): the cost of an HA coordinator.
    #[arg(long, default_value_t = 1)]
    coordinators: usize,
    /// Run drove's cluster secured: mutual TLS between its nodes and its client (a CA
    /// and certificates made for the run), the client with a tenant's token and
    /// reading results with grants: the cost of security.
    #[arg(long)]
    tls: bool,
    /// Rows the python workload's UDF runs over (default 100 million; 1 million with
    /// --quick).
    #[arg(long)]
    udf_rows: Option<u64>,
    /// Turn drove's adaptive coalescing of small partitions off (`drove coordinator
    /// --no-coalesce`): its effect, measured.
    #[arg(long)]
    no_coalesce: bool,
    /// Leader kills in the failover workload (default 30; 3 with --quick).
    #[arg(long)]
    kills: Option<usize>,
    /// Do not append the tables to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Task::Engine { spec } => {
            let spec: Value = serde_json::from_str(&spec)?;
            if spec["tracing"].as_bool() == Some(true) {
                let log = std::fs::File::create(spec["trace_log"].as_str().context("trace_log")?)?;
                tracing_subscriber::fmt()
                    .json()
                    .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                    .with_writer(std::sync::Mutex::new(log))
                    .init();
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let result = runtime.block_on(engines::run(spec))?;
            println!("RESULT {result}");
            Ok(())
        }
        Task::Bench(args) => bench(*args),
        Task::BuildReport(args) => build_report::run(args),
    }
}

/// The settings of one bench run, with the --quick defaults applied.
struct Plan {
    args: BenchArgs,
    scale: f64,
    size: u64,
    sort_size: u64,
    tasks: u64,
    iterations: u64,
    run_dir: PathBuf,
    peers: Option<Peers>,
    /// drove's wheel, built and installed when an engine first needs it.
    wheel: std::cell::OnceCell<Result<python::Wheel, String>>,
}

fn bench(args: BenchArgs) -> Result<()> {
    let quick = args.quick;
    let pick =
        |v: Option<u64>, full: u64, small: u64| v.unwrap_or(if quick { small } else { full });
    let scale = args.scale.unwrap_or(if quick { 0.01 } else { 1.0 });
    Benchmark::Tpch.check_scale(scale)?;
    let plan = Plan {
        scale,
        size: pick(args.size, 1_000_000_000, 10_000_000),
        sort_size: pick(args.sort_size, 1_000_000_000, 10_000_000),
        tasks: pick(args.tasks, 10_000, 500),
        iterations: pick(args.iterations, 3, 1),
        run_dir: args.data.join("runs"),
        peers: None,
        wheel: std::cell::OnceCell::new(),
        args,
    };
    if plan.iterations == 0
        || plan.tasks == 0
        || plan.size == 0
        || plan.sort_size == 0
        || plan.args.udf_rows == Some(0)
    {
        bail!("--iterations, --tasks, --size, --sort-size and --udf-rows must be at least 1");
    }
    let mut plan = plan;
    if !plan.args.no_peers {
        plan.peers = Some(measure::peers(Path::new("target/bench-venv")));
    }
    let workloads = if plan.args.workloads.is_empty() {
        vec![
            Workload::Tpch,
            Workload::Tpcds,
            Workload::Wordcount,
            Workload::Sort,
            Workload::Tasks,
            Workload::Recovery,
            Workload::Pagerank,
            Workload::Shuffle,
            Workload::Python,
        ]
    } else {
        plan.args.workloads.clone()
    };
    for w in &workloads {
        if let Some(benchmark) = w.benchmark() {
            for &q in &plan.args.queries {
                benchmark.query(q)?;
            }
        }
    }
    let mut sections = Vec::new();
    let mut reports = Vec::new();
    let mut problems = Vec::new();
    for w in workloads {
        println!("== {w:?}");
        let (markdown, report, mut trouble) = match w {
            Workload::Tpch | Workload::Tpcds => {
                queries_workload(&plan, w.benchmark().expect("a query benchmark"))?
            }
            Workload::Wordcount => wordcount(&plan)?,
            Workload::Sort => sort(&plan)?,
            Workload::Tasks => tasks(&plan)?,
            Workload::Recovery => recovery_workload(&plan)?,
            Workload::Pagerank => pagerank_workload(&plan)?,
            Workload::Memory => memory_workload(&plan)?,
            Workload::Shuffle => shuffle_workload(&plan)?,
            Workload::Failover => failover_workload(&plan)?,
            Workload::Fs => fs::workload(&plan)?,
            Workload::FsTpch => fs_tpch::workload(&plan)?,
            Workload::Python => python::workload(
                &plan,
                plan.args.udf_rows.unwrap_or(if plan.args.quick {
                    1_000_000
                } else {
                    100_000_000
                }),
            )?,
        };
        println!("{markdown}");
        sections.push(markdown);
        reports.push(report);
        problems.append(&mut trouble);
    }
    let header = header(&plan);
    std::fs::create_dir_all(&plan.args.out)?;
    let stamp = Command::new("date")
        .arg("+%Y%m%d-%H%M%S")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let json_path = plan.args.out.join(format!("bench-{stamp}.json"));
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&json!({ "header": header, "workloads": reports }))?,
    )?;
    println!("results written to {}", json_path.display());
    if !plan.args.no_append {
        let mut text = std::fs::read_to_string("BENCHMARKS.md").unwrap_or_else(|_| {
            "# Benchmarks\n\nEach section below is one run of `cargo xtask bench`, appended by the command itself.\n".into()
        });
        text.push_str(&format!("\n## {header}\n\n{}\n", sections.join("\n")));
        std::fs::write("BENCHMARKS.md", text)?;
        println!("tables appended to BENCHMARKS.md");
    }
    if !problems.is_empty() {
        bail!("the run had problems:\n{}", problems.join("\n"));
    }
    Ok(())
}

fn header(plan: &Plan) -> String {
    let (date, machine) = (utc_now(), machine());
    let peer = |which: Peer, f: fn(&Peers) -> &Result<String, String>| match &plan.peers {
        None => "not run (--no-peers)".to_string(),
        Some(_) if !plan.args.peers.contains(&which) => format!("{} not run", which.name()),
        Some(p) => match f(p) {
            Ok(v) => v.clone(),
            Err(e) => format!("missing: {e}"),
        },
    };
    format!(
        "{date}{} — {machine}; drove {} ({} workers × {} slot(s), embedded{}), DataFusion 55.2; {}; {}",
        if plan.args.quick { " (--quick)" } else { "" },
        env!("CARGO_PKG_VERSION"),
        plan.args.workers,
        plan.args.slots,
        match (plan.args.coordinators, plan.args.durable) {
            (1, true) => ", coordinator with --data-dir".to_string(),
            (1, false) => String::new(),
            (n, _) => format!(", {n} coordinators replicated with Raft"),
        } + if plan.args.tls {
            ", mutual TLS and a token"
        } else {
            ""
        } + if plan.args.no_coalesce {
            ", no coalescing"
        } else {
            ""
        },
        peer(Peer::Pyspark, |p| &p.spark),
        peer(Peer::Dask, |p| &p.dask),
    )
}

/// The machine, as "2 cores, 24 GiB".
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or("?".into(), |kb| format!("{:.0} GiB", kb as f64 / 1048576.0));
    format!("{cores} cores, {memory}")
}

/// The time now, as "2026-12-04 13:05 UTC".
fn utc_now() -> String {
    Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Peers slower than this per run are run once, so a full run ends in under an hour.
const PEER_RUN_ONCE_AFTER_S: u64 = 120;

/// The longest an engine's run may take.
const RUN_LIMIT: Duration = Duration::from_secs(3 * 3600);

fn outcome(measured: Result<Measured>) -> Outcome {
    match measured {
        Ok(m) => Outcome::Ran(m),
        Err(e) => Outcome::Failed(format!("{e:#}")),
    }
}

/// One engine's outcome in a workload: its measurements, or why it has none.
enum Outcome {
    Ran(Measured),
    Missing(String),
    Failed(String),
}

impl Plan {
    fn base_spec(&self, engine: &str, workload: &str) -> Value {
        json!({
            "engine": engine, "workload": workload, "iterations": self.iterations,
            // A peer whose first run takes longer than this runs once.
            "max_seconds": PEER_RUN_ONCE_AFTER_S,
            "workers": self.args.workers, "slots": self.args.slots,
            "durable_in": self.args.durable.then(|| self.args.data.clone()),
            "coordinators": self.args.coordinators,
            "tls": self.args.tls,
            "coalesce": !self.args.no_coalesce,
        })
    }

    /// Runs an engine: the Rust ones through `xtask engine`, the peers in Python.
    fn run(&self, engine: &str, workload: &str, extra: Value) -> Outcome {
        let (command, log) = match self.command(engine, workload, extra) {
            Ok(c) => c,
            Err(missing) => return missing,
        };
        println!("  running {engine} ({workload})");
        outcome(measure::run(command, &log, RUN_LIMIT))
    }

    /// Runs the engines at once, taking turns at each step (see
    /// [`measure::run_in_turns`]); each with its own extra spec.
    fn run_in_turns(&self, workload: &str, engines: Vec<(&str, Value)>) -> Vec<Outcome> {
        let mut outcomes: Vec<Option<Outcome>> = Vec::new();
        let mut commands = Vec::new();
        let mut names = Vec::new();
        for (engine, mut extra) in engines {
            extra["in_turns"] = json!(true);
            match self.command(engine, workload, extra) {
                Ok(c) => {
                    commands.push(c);
                    names.push(engine);
                    outcomes.push(None);
                }
                Err(missing) => outcomes.push(Some(missing)),
            }
        }
        println!("  running {} in turns ({workload})", names.join(" and "));
        // Each engine's own time goes on while the others take their turns.
        let limit = RUN_LIMIT * commands.len().max(1) as u32;
        let mut ran = measure::run_in_turns(commands, limit).into_iter();
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| outcome(ran.next().expect("one result per command"))))
            .collect()
    }

    /// The command that runs an engine, and the log for its stderr; or why it cannot run.
    fn command(
        &self,
        engine: &str,
        workload: &str,
        extra: Value,
    ) -> Result<(Command, PathBuf), Outcome> {
        let mut spec = self.base_spec(engine, workload);
        for (k, v) in extra.as_object().into_iter().flatten() {
            spec[k] = v.clone();
        }
        let command = match engine {
            "drove-python" => match self.wheel() {
                Ok(wheel) => python::command(wheel, &spec),
                Err(why) => return Err(Outcome::Missing(why.clone())),
            },
            "pyspark" | "dask" => {
                let Some(peers) = &self.peers else {
                    return Err(Outcome::Missing("not run (--no-peers)".into()));
                };
                let peer = if engine == "pyspark" {
                    Peer::Pyspark
                } else {
                    Peer::Dask
                };
                if !self.args.peers.contains(&peer) {
                    return Err(Outcome::Missing("not run (not in --peers)".into()));
                }
                let available = if engine == "pyspark" {
                    &peers.spark
                } else {
                    &peers.dask
                };
                if let Err(e) = available {
                    return Err(Outcome::Missing(e.clone()));
                }
                let Some(python) = &peers.python else {
                    return Err(Outcome::Missing("no Python environment".into()));
                };
                let script = if engine == "pyspark" {
                    "spark_bench.py"
                } else {
                    "dask_bench.py"
                };
                let mut c = Command::new(python);
                c.arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../bench/peers")
                        .join(script),
                )
                .arg(spec.to_string())
                .env("PYSPARK_PYTHON", python)
                .env("PYSPARK_DRIVER_PYTHON", python);
                c
            }
            _ => {
                let mut c = Command::new(std::env::current_exe().expect("the xtask binary"));
                c.arg("engine").arg(spec.to_string());
                c
            }
        };
        let log = self
            .run_dir
            .join("logs")
            .join(format!("{workload}-{engine}.log"));
        Ok((command, log))
    }

    fn out(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    /// drove's wheel, installed for the Python engine (the first call builds it:
    /// optimized, or in the dev profile with --quick).
    fn wheel(&self) -> Result<&python::Wheel, &String> {
        self.wheel
            .get_or_init(|| python::install(if self.args.quick { "dev" } else { "release" }))
            .as_ref()
    }
}

/// The median; NaN (shown as "NaN") when a run reported no times.
fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn times(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The median, then the range: "12.3 (11.9–13.0)".
fn spread(samples: &[f64], digits: usize) -> String {
    let min = samples.iter().copied().fold(f64::INFINITY, f64::min);
    let max = samples.iter().copied().fold(0.0, f64::max);
    format!(
        "{:.digits$} ({min:.digits$}–{max:.digits$})",
        median(samples)
    )
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// `benchmark`'s tables at `scale` in `data`, generated the first time.
fn bench_data(data: &Path, benchmark: Benchmark, scale: f64) -> Result<PathBuf> {
    let dir = data.join(format!("{}-sf{scale}", benchmark.key()));
    if !dir.join("_COMPLETE").exists() {
        println!(
            "generating {} at scale {scale} into {}",
            benchmark.name(),
            dir.display()
        );
        benchmark.generate(scale, &dir, Format::Parquet)?;
        std::fs::write(dir.join("_COMPLETE"), b"")?;
    }
    Ok(dir)
}

fn text_dir(data: &Path, size: u64) -> Result<PathBuf> {
    let dir = data.join(format!("text-{size}-8"));
    if !dir.join("_COMPLETE").exists() {
        println!("generating {size} bytes of text into {}", dir.display());
        drove::gentext::generate(size, 8, &dir, 42)?;
        std::fs::write(dir.join("_COMPLETE"), b"")?;
    }
    Ok(dir)
}

/// `size` bytes of 100-byte `KEY<TAB>VALUE` records (10-character keys) in 8 files.
fn records_dir(data: &Path, size: u64) -> Result<PathBuf> {
    use std::io::Write;
    let dir = data.join(format!("records-{size}-8"));
    if dir.join("_COMPLETE").exists() {
        return Ok(dir);
    }
    println!("generating {size} bytes of records into {}", dir.display());
    std::fs::create_dir_all(&dir)?;
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ALPHABET[(state % ALPHABET.len() as u64) as usize]
    };
    let records = size / 100;
    for f in 0..8u64 {
        let mut w =
            std::io::BufWriter::new(std::fs::File::create(dir.join(format!("part-{f:02}.txt")))?);
        let mut line = [0u8; 100];
        for _ in 0..records / 8 + u64::from(f < records % 8) {
            for b in &mut line[..10] {
                *b = next();
            }
            line[10] = b'\t';
            for b in &mut line[11..99] {
                *b = next();
            }
            line[99] = b'\n';
            w.write_all(&line)?;
        }
        w.flush()?;
    }
    std::fs::write(dir.join("_COMPLETE"), b"")?;
    Ok(dir)
}

/// A cell for comparison: numbers canonical, null and empty alike.
fn norm(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Number(n) => format!("{:.6e}", n.as_f64().unwrap_or(0.0)),
        Value::String(s) => match s.trim().parse::<f64>() {
            Ok(f) => format!("{f:.6e}"),
            Err(_) => s.trim().to_string(),
        },
        other => other.to_string(),
    }
}

fn cells_equal(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (a.parse::<f64>(), b.parse::<f64>()) {
        // Engines round decimals differently in the last place (an average to 6
        // places, say): 2 parts in a million, or 2e-6 for values below 1.
        (Ok(x), Ok(y)) => (x - y).abs() <= 2e-6 * x.abs().max(y.abs()).max(1.0),
        _ => false,
    }
}

/// Compares two result files of rows; `ordered`: the order must match too.
fn same_rows(expected: &Path, actual: &Path, ordered: bool) -> Result<Option<String>> {
    let load =
        |p: &Path| -> Result<Value> { Ok(serde_json::from_str(&std::fs::read_to_string(p)?)?) };
    Ok(same_rows_json(&load(expected)?, &load(actual)?, ordered))
}

/// Compares two answers, arrays of rows; a difference, if any.
fn same_rows_json(expected: &Value, actual: &Value, ordered: bool) -> Option<String> {
    let rows = |v: &Value| -> Vec<Vec<String>> {
        v.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        r.as_array()
                            .map(|c| c.iter().map(norm).collect())
                            .unwrap_or_default()
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (mut e, mut a) = (rows(expected), rows(actual));
    if e.len() != a.len() {
        return Some(format!("{} rows, expected {}", a.len(), e.len()));
    }
    if !ordered {
        e.sort();
        a.sort();
    }
    for (i, (re, ra)) in e.iter().zip(&a).enumerate() {
        if re.len() != ra.len() || !re.iter().zip(ra).all(|(x, y)| cells_equal(x, y)) {
            return Some(format!("row {i}: {ra:?}, expected {re:?}"));
        }
    }
    None
}

/// A benchmark's queries on drove, single-process DataFusion and PySpark. DataFusion's
/// answers are the reference: drove failing a query DataFusion answers, or answering it
/// otherwise, is a problem of the run; PySpark's failures and differences are listed.
fn queries_workload(plan: &Plan, benchmark: Benchmark) -> Result<(String, Value, Vec<String>)> {
    let key = benchmark.key();
    let data = bench_data(&plan.args.data, benchmark, plan.scale)?;
    let queries: Vec<usize> = if plan.args.queries.is_empty() {
        (1..=benchmark.queries().len()).collect()
    } else {
        plan.args.queries.clone()
    };
    let query_dir = plan.out(&format!("{key}-queries"));
    std::fs::create_dir_all(&query_dir)?;
    for &q in &queries {
        std::fs::write(query_dir.join(format!("q{q}.sql")), benchmark.query(q)?)?;
    }
    let tables = benchmark.tables();
    // DataFusion first: the others are checked against it.
    let engines = ["datafusion", "drove", "pyspark"];
    let mut specs = Vec::new();
    for engine in engines {
        let output = plan.out(&format!("{key}-{engine}"));
        let mut extra = json!({
            "data": data, "queries": queries, "query_dir": query_dir, "tables": tables,
            "output": output,
        });
        if engine == "drove" && plan.args.tracing {
            extra["tracing"] = json!(true);
            extra["trace_log"] = json!(plan.out("drove-trace.log"));
        }
        let _ = std::fs::remove_dir_all(&output);
        std::fs::create_dir_all(&output)?;
        specs.push((engine, extra));
    }
    // drove and DataFusion take turns query by query, so that what the machine's other
    // load costs falls on both alike; PySpark, much slower, runs after them (it is
    // last in `engines`, so the outcomes keep their order).
    let (in_turns, after): (Vec<_>, Vec<_>) =
        (specs.into_iter()).partition(|(engine, _)| *engine != "pyspark");
    let mut outcomes = plan.run_in_turns(key, in_turns);
    outcomes.extend(
        after
            .into_iter()
            .map(|(engine, extra)| plan.run(engine, key, extra)),
    );
    // Each engine's median per query it answered as DataFusion did, or why not.
    let mut answers: Vec<HashMap<usize, Result<Vec<f64>, &'static str>>> = Vec::new();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let engine = engines[i];
        let mut by_query = HashMap::new();
        let m = match outcome {
            Outcome::Ran(m) => m,
            Outcome::Failed(why) => {
                problems.push(format!("{key}: {engine} failed: {}", first_line(why)));
                answers.push(by_query);
                continue;
            }
            Outcome::Missing(_) => {
                answers.push(by_query);
                continue;
            }
        };
        let (mut failed, mut wrong) = (Vec::new(), Vec::new());
        for &q in &queries {
            let name = format!("q{q}");
            let reference_answered = i > 0 && matches!(answers[0].get(&q), Some(Ok(_)));
            let answer = if let Some(error) = m.result["errors"][&name].as_str() {
                failed.push(format!("{name}: {}", first_line(error)));
                if engine == "drove" && reference_answered {
                    problems.push(format!(
                        "drove fails {key} {name}, which DataFusion answers: {}",
                        first_line(error)
                    ));
                }
                Err("error")
            } else if i == 0 {
                Ok(times(&m.result["times"][&name]))
            } else if !reference_answered {
                Err("—")
            } else {
                let file = format!("{name}.json");
                let expected = plan.out(&format!("{key}-datafusion")).join(&file);
                let actual = plan.out(&format!("{key}-{engine}")).join(&file);
                let sql = benchmark.query(q)?;
                match same_rows(&expected, &actual, drove_testkit::is_ordered(sql))? {
                    Some(diff) => {
                        wrong.push(format!("{name}: {diff}"));
                        if engine == "drove" {
                            problems.push(format!(
                                "drove's {key} {name} differs from DataFusion's: {diff}"
                            ));
                        }
                        Err("wrong")
                    }
                    None => Ok(times(&m.result["times"][&name])),
                }
            };
            by_query.insert(q, answer);
        }
        for (what, list) in [
            ("fails", &failed),
            ("answers differently from DataFusion", &wrong),
        ] {
            if !list.is_empty() {
                notes.push(format!(
                    "{engine} {what} on {}: {}",
                    list.len(),
                    list.join("; ")
                ));
            }
        }
        answers.push(by_query);
    }
    let mut md = format!(
        "### {key} — {} scale {}, {} iterations (drove and DataFusion taking turns), median ms (min–max)\n\n| query | drove | DataFusion | PySpark | drove / DataFusion | PySpark / drove |\n|---|---|---|---|---|---|\n",
        benchmark.name(),
        plan.scale,
        plan.iterations
    );
    // drove = 1, DataFusion = 0, PySpark = 2: the table's column order.
    let (mut totals, mut counted, mut rows) = ([0.0f64; 3], 0, Vec::new());
    for &q in &queries {
        let get = |i: usize| answers[i].get(&q);
        let cell = |i: usize| match get(i) {
            Some(Ok(t)) => spread(t, 0),
            Some(Err(why)) => (*why).to_string(),
            None => "—".into(),
        };
        let med = |i: usize| match get(i) {
            Some(Ok(t)) => Some(median(t)),
            _ => None,
        };
        // Totals over the queries every engine that ran answered alike.
        let ran: Vec<usize> = (0..3)
            .filter(|&i| matches!(outcomes[i], Outcome::Ran(_)))
            .collect();
        if ran.iter().all(|&i| med(i).is_some()) {
            counted += 1;
            for &i in &ran {
                totals[i] += med(i).unwrap_or(0.0);
            }
        }
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "—".into(),
        };
        md.push_str(&format!(
            "| Q{q} | {} | {} | {} | {} | {} |\n",
            cell(1),
            cell(0),
            cell(2),
            ratio(med(1), med(0)),
            ratio(med(2), med(1))
        ));
        rows.push(json!({
            "query": q, "drove_ms": med(1), "datafusion_ms": med(0), "pyspark_ms": med(2),
        }));
    }
    let ran = |i: usize| matches!(outcomes[i], Outcome::Ran(_));
    let total = |i: usize| {
        if ran(i) {
            format!("{:.0}", totals[i])
        } else {
            "—".into()
        }
    };
    let ratio = |a: usize, b: usize| {
        if ran(a) && ran(b) && totals[b] > 0.0 {
            format!("{:.2}", totals[a] / totals[b])
        } else {
            "—".into()
        }
    };
    md.push_str(&format!(
        "| **total** ({counted} queries) | {} | {} | {} | {} | {} |\n",
        total(1),
        total(0),
        total(2),
        ratio(1, 0),
        ratio(2, 1),
    ));
    for note in &notes {
        md.push_str(&format!("\n{note}\n"));
    }
    md.push_str(&memory_line(&[
        ("drove", &outcomes[1]),
        ("DataFusion", &outcomes[0]),
        ("PySpark", &outcomes[2]),
    ]));
    Ok((
        md,
        json!({ "workload": key, "scale": plan.scale, "queries": rows, "notes": notes }),
        problems,
    ))
}

/// The first line of an error, for a table.
fn first_line(error: &str) -> &str {
    error.lines().next().unwrap_or_default()
}

fn memory_line(engines: &[(&str, &Outcome)]) -> String {
    let parts: Vec<String> = engines
        .iter()
        .map(|(name, o)| match o {
            Outcome::Ran(m) => format!("{name} {}", gib(m.peak_rss_bytes)),
            Outcome::Missing(why) => format!("{name} missing ({why})"),
            Outcome::Failed(why) => format!("{name} FAILED ({})", why.lines().next().unwrap_or("")),
        })
        .collect();
    format!(
        "\nPeak resident memory (whole process tree): {}.\n",
        parts.join(", ")
    )
}

/// Word counts from an engine's output directory, whatever its file names.
fn counts_in(dir: &Path) -> Result<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    for f in output_files(dir)? {
        for line in std::io::BufReader::new(std::fs::File::open(&f)?).lines() {
            let line = line?;
            let (w, n) = line
                .rsplit_once('\t')
                .with_context(|| format!("a malformed line in {}", f.display()))?;
            *counts.entry(w.to_string()).or_insert(0) += n.trim().parse::<u64>()?;
        }
    }
    Ok(counts)
}

/// An engine's part files in name order (no markers, checksums or hidden files).
fn output_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        p.is_file() && !name.starts_with('.') && !name.starts_with('_') && !name.ends_with(".crc")
    });
    files.sort();
    Ok(files)
}

/// Runs the engines of a file workload and tabulates them against drove.
/// `drove_spec` adds to the spec drove runs with (the first engine).
fn file_workload(
    plan: &Plan,
    workload: &str,
    input: &Path,
    bytes: u64,
    engines: &[(&str, &str)],
    drove_spec: Value,
    check: &dyn Fn(&str, &Path) -> Result<Option<String>>,
) -> Result<(String, Value, Vec<String>)> {
    let mut problems = Vec::new();
    let mut outcomes = Vec::new();
    for (engine, _) in engines {
        let output = plan.out(&format!("{workload}-{engine}"));
        let _ = std::fs::remove_dir_all(&output);
        let mut outcome = plan.run(engine, workload, {
            let mut spec = json!({ "input": input, "output": output });
            if *engine == "drove"
                && let (Some(spec), Some(extra)) = (spec.as_object_mut(), drove_spec.as_object())
            {
                spec.extend(extra.clone());
            }
            spec
        });
        if let Outcome::Ran(_) = outcome
            && let Some(diff) = check(engine, &output)?
        {
            let message = format!("{engine}'s {workload} output is wrong: {diff}");
            problems.push(message.clone());
            outcome = Outcome::Failed(message);
        }
        outcomes.push(outcome);
    }
    let mb = bytes as f64 / 1e6;
    let drove = match &outcomes[0] {
        Outcome::Ran(m) => Some(median(&times(&m.result["times"]))),
        _ => None,
    };
    let mut md = format!(
        "### {workload} — {mb:.0} MB, {} iterations\n\n| engine | seconds, median (min–max) | MB/s | time / drove's | peak memory |\n|---|---|---|---|---|\n",
        plan.iterations
    );
    let mut json_rows = Vec::new();
    for ((_, label), o) in engines.iter().zip(&outcomes) {
        match o {
            Outcome::Ran(m) => {
                let t = times(&m.result["times"]);
                let med = median(&t);
                md.push_str(&format!(
                    "| {label} | {} | {:.1} | {} | {} |\n",
                    spread(&t, 2),
                    mb / med,
                    drove.map_or("—".into(), |d| format!("{:.2}", med / d)),
                    gib(m.peak_rss_bytes)
                ));
                json_rows.push(
                    json!({ "engine": label, "seconds": t, "peak_rss_bytes": m.peak_rss_bytes }),
                );
            }
            Outcome::Missing(why) => md.push_str(&format!("| {label} | missing: {why} | | | |\n")),
            Outcome::Failed(why) => md.push_str(&format!(
                "| {label} | FAILED: {} | | | |\n",
                why.lines().next().unwrap_or("")
            )),
        }
    }
    // drove's workers as processes: each one's peak against its budget.
    if let Outcome::Ran(m) = &outcomes[0]
        && let (Some(peaks), Some(budget)) = (
            m.result["worker_peak_rss_bytes"].as_array(),
            m.result["worker_memory_bytes"].as_u64(),
        )
    {
        let peaks: Vec<u64> = peaks.iter().filter_map(Value::as_u64).collect();
        let bound = budget + WORKER_MEMORY_SLACK;
        md.push_str(&format!(
            "\ndrove ran as {} `drove worker --memory {}` processes; their peak resident memory: {} (bound: budget + {}).\n",
            peaks.len(),
            drove_core::human_bytes(budget),
            peaks.iter().map(|p| drove_core::human_bytes(*p)).collect::<Vec<_>>().join(", "),
            drove_core::human_bytes(WORKER_MEMORY_SLACK),
        ));
        if let Some(p) = peaks.iter().find(|p| **p > bound) {
            problems.push(format!(
                "a drove worker peaked at {} resident, over its budget plus {}",
                drove_core::human_bytes(*p),
                drove_core::human_bytes(WORKER_MEMORY_SLACK)
            ));
        }
    }
    Ok((
        md,
        json!({ "workload": workload, "bytes": bytes, "engines": json_rows }),
        problems,
    ))
}

/// How far above its `--memory` budget a worker process's resident memory may go (the
/// binary, its runtime, and buffers no budget counts).
const WORKER_MEMORY_SLACK: u64 = 64 << 20;

/// The memory each of drove's worker processes gets in the full sort workload.
const SORT_WORKER_MEMORY: u64 = 512 << 20;

fn wordcount(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let input = text_dir(&plan.args.data, plan.size)?;
    let engines = [
        ("drove", "drove"),
        ("reference", "single-threaded Rust"),
        ("drove-python", "drove, map and reduce in Python"),
        ("pyspark", "PySpark"),
        ("dask", "Dask"),
    ];
    // Every engine's counts must equal a plain count of the input.
    let expected = engines::expected_word_counts(&engines::text_files(&input)?)?;
    let check = |_: &str, out: &Path| -> Result<Option<String>> {
        let got = counts_in(out)?;
        Ok((got != expected)
            .then(|| format!("{} distinct words, expected {}", got.len(), expected.len())))
    };
    file_workload(
        plan,
        "wordcount",
        &input,
        plan.size,
        &engines,
        json!({}),
        &check,
    )
}

fn sort(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let input = records_dir(&plan.args.data, plan.sort_size)?;
    let engines = [
        ("drove", "drove"),
        ("reference", "single-threaded Rust"),
        ("pyspark", "PySpark"),
        ("dask", "Dask"),
    ];
    // Every engine's part files, read in order, must be the input's lines sorted.
    let mut expected: Vec<String> = Vec::new();
    for f in engines::text_files(&input)? {
        expected.extend(std::fs::read_to_string(f)?.lines().map(str::to_string));
    }
    expected.sort_unstable();
    let check = |_: &str, out: &Path| -> Result<Option<String>> {
        let mut i = 0;
        for f in output_files(out)? {
            for line in std::io::BufReader::new(std::fs::File::open(&f)?).lines() {
                let line = line?;
                if expected.get(i) != Some(&line) {
                    return Ok(Some(format!(
                        "line {i} is '{line}', expected '{}'",
                        expected.get(i).map_or("", |s| s)
                    )));
                }
                i += 1;
            }
        }
        Ok((i != expected.len()).then(|| format!("{i} lines, expected {}", expected.len())))
    };
    // At full size drove's workers are processes with a memory budget of their own (the
    // release build); --quick keeps them embedded, in the build at hand.
    let drove_spec = if plan.args.quick {
        json!({})
    } else {
        json!({ "worker_memory": SORT_WORKER_MEMORY })
    };
    file_workload(
        plan,
        "sort",
        &input,
        plan.sort_size,
        &engines,
        drove_spec,
        &check,
    )
}

fn tasks(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let n = plan.tasks;
    let engines = [
        ("drove", "drove"),
        ("drove-python", "drove, from Python (client.map)"),
        ("dask", "Dask"),
        ("pyspark", "PySpark"),
    ];
    let mut problems = Vec::new();
    let mut md = format!(
        "### tasks — jobs of {n} tiny tasks, {} iterations\n\n| engine | seconds, median (min–max) | tasks run | tasks per second | per-task ms | peak memory |\n|---|---|---|---|---|---|\n",
        plan.iterations
    );
    let mut rows = Vec::new();
    for (engine, label) in engines {
        let output = plan.out(&format!("tasks-{engine}.txt"));
        let _ = std::fs::remove_file(&output);
        let outcome = plan.run(engine, "tasks", json!({ "tasks": n, "output": output }));
        // Every engine sums 1..=n.
        let expected = n * (n + 1) / 2;
        match outcome {
            Outcome::Ran(m) => {
                let got = std::fs::read_to_string(&output).unwrap_or_default();
                if got.trim() != expected.to_string() {
                    let message =
                        format!("{engine}'s tasks answer is '{got}', expected {expected}");
                    problems.push(message.clone());
                    md.push_str(&format!("| {label} | FAILED: {message} | | | | |\n"));
                    continue;
                }
                let t = times(&m.result["times"]);
                let ran = m.result["tasks_run"].as_u64().unwrap_or(n);
                let med = median(&t);
                md.push_str(&format!(
                    "| {label} | {} | {ran} | {:.0} | {:.3} | {} |\n",
                    spread(&t, 2),
                    ran as f64 / med,
                    med * 1000.0 / ran as f64,
                    gib(m.peak_rss_bytes)
                ));
                rows.push(json!({ "engine": label, "seconds": t, "tasks_run": ran, "peak_rss_bytes": m.peak_rss_bytes }));
            }
            Outcome::Missing(why) => {
                md.push_str(&format!("| {label} | missing: {why} | | | | |\n"))
            }
            Outcome::Failed(why) => {
                problems.push(why.clone());
                md.push_str(&format!(
                    "| {label} | FAILED: {} | | | | |\n",
                    why.lines().next().unwrap_or("")
                ));
            }
        }
    }
    Ok((
        md,
        json!({ "workload": "tasks", "tasks": n, "engines": rows }),
        problems,
    ))
}

fn shuffle_workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let data = bench_data(&plan.args.data, Benchmark::Tpch, plan.scale)?;
    let widths: [u64; 2] = if plan.args.quick { [8, 64] } else { [8, 500] };
    let engines = [("datafusion", "DataFusion"), ("drove", "drove")];
    let mut problems = Vec::new();
    let mut results = Vec::new();
    for (engine, _) in engines {
        let output = plan.out(&format!("shuffle-{engine}"));
        let _ = std::fs::remove_dir_all(&output);
        let outcome = plan.run(
            engine,
            "shuffle",
            json!({ "data": data, "partitions": widths, "output": output }),
        );
        results.push((output, outcome));
    }
    // Every run's answer must be DataFusion's at the narrowest width; without that,
    // drove's answers cannot be checked and its times are not reported.
    let answer = |output: &Path, q: usize, w: u64| output.join(format!("q{q}-p{w}.json"));
    let reference_ran = matches!(results[0].1, Outcome::Ran(_));
    for ((engine, _), (output, outcome)) in engines.iter().zip(&mut results) {
        if !matches!(outcome, Outcome::Ran(_)) {
            continue;
        }
        if !reference_ran {
            *outcome = Outcome::Failed(format!(
                "{engine}'s shuffle answers were not checked: DataFusion did not run"
            ));
            continue;
        }
        'check: for (q, (name, _)) in engines::SHUFFLE_QUERIES.iter().enumerate() {
            let expected = answer(&plan.out("shuffle-datafusion"), q, widths[0]);
            for w in widths {
                if let Some(diff) = same_rows(&expected, &answer(output, q, w), false)? {
                    *outcome = Outcome::Failed(format!(
                        "{engine}'s {name} answer at {w} partitions differs: {diff}"
                    ));
                    break 'check;
                }
            }
        }
    }
    let mut md = format!(
        "### shuffle — group-bys over TPC-H scale {} lineitem, all-to-all at each width, {} iterations, median ms (min–max)\n\n| query | partitions | drove | Flight calls | drove / drove at {n} | DataFusion | DataFusion / DataFusion at {n} |\n|---|---|---|---|---|---|---|\n",
        plan.scale,
        plan.iterations,
        n = widths[0],
    );
    // A run's times, or none if its engine did not run.
    let run = |o: &Outcome, q: usize, w: u64| -> Option<Value> {
        let Outcome::Ran(m) = o else { return None };
        m.result["runs"]
            .as_array()?
            .iter()
            .find(|r| r["query"] == q && r["partitions"] == w)
            .cloned()
    };
    let ms = |r: &Option<Value>| {
        r.as_ref()
            .map(|r| times(&r["ms"]))
            .filter(|t| !t.is_empty())
    };
    let cell = |t: &Option<Vec<f64>>| t.as_ref().map_or("—".to_string(), |t| spread(t, 0));
    let ratio = |t: &Option<Vec<f64>>, base: &Option<Vec<f64>>| match (t, base) {
        (Some(t), Some(b)) => format!("{:.2}", median(t) / median(b)),
        _ => "—".into(),
    };
    let mut rows = Vec::new();
    for (q, (name, _)) in engines::SHUFFLE_QUERIES.iter().enumerate() {
        let (df_base, dr_base) = (
            ms(&run(&results[0].1, q, widths[0])),
            ms(&run(&results[1].1, q, widths[0])),
        );
        for w in widths {
            let (f, d) = (run(&results[0].1, q, w), run(&results[1].1, q, w));
            let calls = d.as_ref().map_or("—".to_string(), |r| {
                format!("{:.0}", median(&times(&r["flight_calls"])))
            });
            let (f_ms, d_ms) = (ms(&f), ms(&d));
            md.push_str(&format!(
                "| {name} | {w} | {} | {calls} | {} | {} | {} |\n",
                cell(&d_ms),
                ratio(&d_ms, &dr_base),
                cell(&f_ms),
                ratio(&f_ms, &df_base),
            ));
            rows.push(json!({ "query": name, "partitions": w, "drove": d, "datafusion": f }));
        }
    }
    for ((_, label), (_, outcome)) in engines.iter().zip(&results) {
        match outcome {
            Outcome::Ran(m) => md.push_str(&format!(
                "\nPeak resident memory, {label}: {}.",
                gib(m.peak_rss_bytes)
            )),
            Outcome::Missing(why) => md.push_str(&format!("\n{label}: {why}.")),
            Outcome::Failed(why) => {
                md.push_str(&format!("\n{label}: {}.", why.lines().next().unwrap_or("")));
                problems.push(why.clone());
            }
        }
    }
    md.push('\n');
    Ok((md, json!({ "workload": "shuffle", "runs": rows }), problems))
}

fn recovery_workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let data = bench_data(&plan.args.data, Benchmark::Tpch, plan.scale)?;
    let input = text_dir(&plan.args.data, plan.size)?;
    let workers = plan.args.workers.max(3);
    let mut spec =
        json!({ "data": data, "input": input, "output": plan.out("recovery-wordcount") });
    spec["workers"] = json!(workers);
    // Recovery wants at least three workers, so that two are left after the kill.
    let outcome = plan.run("drove", "recovery", spec);
    let mut md = format!(
        "### recovery — {workers} workers, one killed at half the failure-free median, {} iterations\n\n| job | failure-free s | one worker killed s | ratio | attempts re-run (median) |\n|---|---|---|---|---|\n",
        plan.iterations
    );
    let mut problems = Vec::new();
    let report = match &outcome {
        Outcome::Ran(m) => {
            for j in m.result["jobs"].as_array().into_iter().flatten() {
                let (clean, killed) = (times(&j["failure_free_s"]), times(&j["killed_s"]));
                let reruns = times(&j["reruns"]);
                md.push_str(&format!(
                    "| {} | {} | {} | {:.2} | {:.0} |\n",
                    j["job"].as_str().unwrap_or("?"),
                    spread(&clean, 2),
                    spread(&killed, 2),
                    median(&killed) / median(&clean),
                    median(&reruns)
                ));
            }
            md.push_str(&format!(
                "\nPeak resident memory: drove {}.\n",
                gib(m.peak_rss_bytes)
            ));
            m.result.clone()
        }
        Outcome::Missing(why) | Outcome::Failed(why) => {
            problems.push(format!("recovery: {why}"));
            md.push_str(&format!(
                "| FAILED: {} | | | | |\n",
                why.lines().next().unwrap_or("")
            ));
            Value::Null
        }
    };
    Ok((
        md,
        json!({ "workload": "recovery", "result": report }),
        problems,
    ))
}

fn pagerank_workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let nodes = plan
        .args
        .nodes
        .unwrap_or(if plan.args.quick { 20_000 } else { 200_000 });
    let rounds = 10;
    let mut md = format!(
        "### pagerank — {nodes} nodes, ~10 links each, {rounds} iterations, {} runs per mode\n\n| mode | total s | of which caching the links s | ratio to no cache |\n|---|---|---|---|\n",
        plan.iterations
    );
    let mut problems = Vec::new();
    let mut modes = Vec::new();
    for cache in [false, true] {
        let output = plan.out(&format!("pagerank-ranks-{cache}.txt"));
        let spec = json!({
            "data": plan.args.data, "nodes": nodes, "degree": 10,
            "pagerank_iterations": rounds, "cache": cache, "output": output,
        });
        modes.push((cache, output, plan.run("drove", "pagerank", spec)));
    }
    let mut report = Vec::new();
    let mut baseline = f64::NAN;
    for (cache, _, outcome) in &modes {
        let label = if *cache { "links cached" } else { "no cache" };
        match outcome {
            Outcome::Ran(m) => {
                let total = times(&m.result["total_s"]);
                if !*cache {
                    baseline = median(&total);
                }
                md.push_str(&format!(
                    "| {label} | {} | {} | {:.2} |\n",
                    spread(&total, 2),
                    spread(&times(&m.result["cache_s"]), 2),
                    median(&total) / baseline
                ));
                report.push(json!({ "cache": cache, "result": m.result }));
            }
            Outcome::Missing(why) | Outcome::Failed(why) => {
                problems.push(format!("pagerank ({label}): {why}"));
                md.push_str(&format!(
                    "| {label} | FAILED: {} | | |\n",
                    why.lines().next().unwrap_or("")
                ));
            }
        }
    }
    if let [(_, plain, Outcome::Ran(_)), (_, cached, Outcome::Ran(_))] = &modes[..] {
        let same = iterative::read_ranks(plain).and_then(|p| {
            let c = iterative::read_ranks(cached)?;
            pagerank::same_ranks(&p, &c).map_err(anyhow::Error::msg)
        });
        match same {
            Ok(()) => {
                md.push_str("\nThe ranks are equal with and without the cache (relative 1e-9).\n")
            }
            Err(e) => {
                problems.push(format!("pagerank: the modes disagree: {e:#}"));
                md.push_str(&format!("\nThe modes DISAGREE: {e:#}\n"));
            }
        }
    }
    Ok((
        md,
        json!({ "workload": "pagerank", "nodes": nodes, "modes": report }),
        problems,
    ))
}

fn failover_workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let data = bench_data(&plan.args.data, Benchmark::Tpch, plan.scale)?;
    let kills = plan
        .args
        .kills
        .unwrap_or(if plan.args.quick { 3 } else { 30 });
    println!("  running drove processes (failover)");
    let run = failover::FailoverRun {
        kills,
        data,
        slots: plan.args.slots,
        seed: 0x5eed_0001,
    };
    let mut md = format!(
        "### failover — TPC-H scale {} queries in a loop on 3 replicated `drove coordinator` processes and 3 workers × {} slot(s); the leader killed with SIGKILL at {kills} random points (0.5 to 3.5 s apart) and restarted\n\n",
        plan.scale, plan.args.slots
    );
    let mut problems = Vec::new();
    let report = match failover::run(&run) {
        Ok(r) => {
            let ms = times(&r["failover_ms"]);
            let mut sorted = ms.clone();
            sorted.sort_by(f64::total_cmp);
            let p99 = sorted
                .get(((sorted.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0.0);
            let found: Vec<String> = (r["problems"].as_array().into_iter().flatten())
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            md.push_str(&format!(
                "| kills | queries answered | leader's death to the new leader's first task, median ms | p99 ms | max ms | stages finished at the kills, run again | jobs lost, answered twice or wrong |\n|---|---|---|---|---|---|---|\n| {} | {} | {:.0} | {:.0} | {:.0} | {} of {} | {} |\n",
                ms.len(),
                r["queries"],
                median(&ms),
                p99,
                sorted.last().copied().unwrap_or(0.0),
                r["stages_rerun"],
                r["stages_finished_at_kills"],
                found.len()
            ));
            for p in &found {
                problems.push(format!("failover: {p}"));
            }
            r
        }
        Err(e) => {
            problems.push(format!("failover: {e:#}"));
            md.push_str(&format!("FAILED: {e:#}\n"));
            Value::Null
        }
    };
    Ok((
        md,
        json!({ "workload": "failover", "result": report }),
        problems,
    ))
}

fn memory_workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let quick = plan.args.quick;
    let budget = plan
        .args
        .memory_budget
        .unwrap_or(if quick { 32 << 20 } else { 256 << 20 });
    // About 168 bytes a row in memory (the table's strings keep spare capacity).
    let rows_per_file = ((8 * budget) as usize / 168 / 4 + 1).max(100_000);
    let run = iterative::MemoryRun {
        budget,
        rows_per_file,
        slots: plan.args.slots,
        iterations: plan.iterations,
    };
    println!("  running drove processes (memory)");
    let mut problems = Vec::new();
    let mut md = format!(
        "### memory — sort of a table over four times the budget, 2 `drove worker` processes × {} slot(s) with `--memory {}`, {} runs\n\n",
        plan.args.slots,
        drove_core::human_bytes(budget),
        plan.iterations
    );
    let report = match iterative::memory(&run) {
        Ok(r) => {
            let runs = r["runs"].as_array().cloned().unwrap_or_default();
            let secs: Vec<f64> = runs.iter().filter_map(|r| r["seconds"].as_f64()).collect();
            let peaks: Vec<f64> = runs
                .iter()
                .flat_map(|r| times(&r["peak_rss_bytes"]))
                .collect();
            let spilled: Vec<f64> = runs
                .iter()
                .filter_map(|r| r["spilled_bytes"].as_f64())
                .collect();
            md.push_str(&format!(
                "| table in memory | time s | peak resident per worker (median, max) | budget | bytes spilled |\n|---|---|---|---|---|\n| {} | {} | {}, {} | {} | {} |\n",
                drove_core::human_bytes(r["data_bytes"].as_u64().unwrap_or(0)),
                spread(&secs, 2),
                drove_core::human_bytes(median(&peaks) as u64),
                drove_core::human_bytes(peaks.iter().copied().fold(0.0, f64::max) as u64),
                drove_core::human_bytes(budget),
                drove_core::human_bytes(median(&spilled) as u64),
            ));
            r
        }
        Err(e) => {
            problems.push(format!("memory: {e:#}"));
            md.push_str(&format!("FAILED: {e:#}\n"));
            Value::Null
        }
    };
    Ok((
        md,
        json!({ "workload": "memory", "result": report }),
        problems,
    ))
}
