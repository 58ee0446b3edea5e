//! `cargo xtask`: drove's project tasks.
//!
//! `cargo xtask bench tpch [--scale 1] [--workers 2] [--slots 1] [--iterations 3]`
//! runs the 22 TPC-H queries on an embedded drove cluster and on single-process
//! DataFusion over the same files, in the same run, checks that the answers agree, and
//! reports medians and ratios.
//!
//! `cargo xtask bench wordcount [--size 1000000000]` counts words on drove and with a
//! single-threaded HashMap.
//!
//! `cargo xtask bench recovery [--scale 1] [--size 1000000000] [--workers 3]` runs
//! TPC-H Q9 and word count failure-free, then again with one worker killed at half the
//! failure-free time, and reports the slowdown and the attempts re-run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use datafusion::prelude::{SessionConfig, SessionContext};
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use drove_exec::tables::{self, Format};
use drove_testkit::{compare, is_ordered, run_statements};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// The 22 TPC-H queries: drove against single-process DataFusion.
    Tpch(TpchArgs),
    /// Word count over generated text: drove against a single-threaded HashMap count.
    Wordcount(WordcountArgs),
    /// TPC-H Q9 and word count, failure-free and with a worker killed halfway.
    Recovery(RecoveryArgs),
}

#[derive(Args)]
struct RecoveryArgs {
    /// TPC-H scale for Q9.
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Bytes of generated text for word count.
    #[arg(long, default_value_t = 1_000_000_000)]
    size: u64,
    #[arg(long, default_value_t = 8)]
    files: usize,
    #[arg(long, default_value_t = 3)]
    workers: usize,
    #[arg(long, default_value_t = 1)]
    slots: u32,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Args)]
struct WordcountArgs {
    /// Bytes of generated text.
    #[arg(long, default_value_t = 1_000_000_000)]
    size: u64,
    /// Files the text is spread over.
    #[arg(long, default_value_t = 8)]
    files: usize,
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 1)]
    slots: u32,
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Args)]
struct TpchArgs {
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Workers in the embedded drove cluster.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots per worker.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// Runs per query and engine; the median is reported.
    #[arg(long, default_value_t = 3)]
    iterations: usize,
    /// Queries to run (default: all 22).
    #[arg(long, value_delimiter = ',')]
    queries: Vec<usize>,
    /// Where the generated data is kept between runs.
    #[arg(long, default_value = "target/bench-data")]
    data: PathBuf,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Record drove's tracing at info level, as JSON lines to target/bench-trace.log,
    /// to measure what tracing costs.
    #[arg(long)]
    tracing: bool,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Bench(Bench::Tpch(args)) = &cli.command
        && args.tracing
    {
        let log = std::fs::File::create("target/bench-trace.log")?;
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(std::sync::Mutex::new(log))
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench(Bench::Tpch(args)) => runtime.block_on(bench_tpch(args)),
        Command::Bench(Bench::Wordcount(args)) => runtime.block_on(bench_wordcount(args)),
        Command::Bench(Bench::Recovery(args)) => runtime.block_on(bench_recovery(args)),
    }
}

/// A session on an embedded cluster of `workers` workers with `slots` slots each.
async fn embedded_session(workers: usize, slots: u32) -> Result<Session> {
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers,
        slots,
        ..Default::default()
    })
    .await?;
    Ok(Session::with_cluster(cluster).await?)
}

/// Writes a JSON report as `out/name` and says where.
fn write_report(out: &Path, name: &str, report: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let path = out.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(report)?)?;
    println!("results written to {}", path.display());
    Ok(())
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn tpch_dir(data: &Path, scale: f64) -> Result<PathBuf> {
    let dir = data.join(format!("tpch-sf{scale}"));
    let marker = dir.join("_COMPLETE");
    if !marker.exists() {
        println!("generating TPC-H at scale {scale} into {}", dir.display());
        drove_exec::tpch::generate(scale, &dir, Format::Parquet)?;
        std::fs::write(&marker, b"")?;
    }
    Ok(dir)
}

async fn bench_tpch(args: TpchArgs) -> Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    let queries: Vec<usize> = if args.queries.is_empty() {
        (1..=22).collect()
    } else {
        args.queries.clone()
    };
    for &q in &queries {
        drove_exec::tpch::query(q)?;
    }
    let dir = tpch_dir(&args.data, args.scale)?;
    let specs = tables::tpch_tables(&dir)?;

    let session = embedded_session(args.workers, args.slots).await?;
    session.register_tpch(&dir).await?;

    // Single-process DataFusion with as many partitions as drove has slots in all.
    let partitions = args.workers * args.slots as usize;
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    for t in &specs {
        tables::register(&ctx, t).await?;
    }

    println!(
        "TPC-H scale {} | drove: {} workers x {} slots (embedded) | DataFusion: 1 process, {partitions} partitions | {} iterations, medians",
        args.scale, args.workers, args.slots, args.iterations
    );
    println!("| query | drove ms | DataFusion ms | ratio |");
    println!("|---|---|---|---|");
    let mut rows = Vec::new();
    let (mut drove_total, mut df_total) = (0.0, 0.0);
    for &q in &queries {
        let sql = drove_exec::tpch::query(q)?;
        let mut drove_ms = Vec::new();
        let mut df_ms = Vec::new();
        for _ in 0..args.iterations {
            let started = Instant::now();
            let expected = run_statements(&ctx, sql)
                .await
                .with_context(|| format!("DataFusion Q{q}"))?;
            df_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            let started = Instant::now();
            let actual = session
                .run_sql(sql)
                .await
                .with_context(|| format!("drove Q{q}"))?;
            drove_ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if let Err(diff) = compare(&actual.batches, &expected, is_ordered(sql)) {
                bail!("Q{q}: drove's answer differs from DataFusion's: {diff}");
            }
        }
        let (d, f) = (median(&mut drove_ms), median(&mut df_ms));
        drove_total += d;
        df_total += f;
        println!("| Q{q} | {d:.0} | {f:.0} | {:.2} |", d / f);
        rows.push(serde_json::json!({"query": q, "drove_ms": drove_ms, "datafusion_ms": df_ms, "drove_median_ms": d, "datafusion_median_ms": f}));
    }
    println!(
        "| total | {drove_total:.0} | {df_total:.0} | {:.2} |",
        drove_total / df_total
    );
    session.shutdown().await;

    let report = serde_json::json!({
        "workload": "tpch",
        "scale": args.scale,
        "workers": args.workers,
        "slots": args.slots,
        "iterations": args.iterations,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "queries": rows,
        "drove_total_ms": drove_total,
        "datafusion_total_ms": df_total,
        "tracing": args.tracing,
    });
    let name = format!(
        "tpch-sf{}-{}w{}.json",
        args.scale,
        args.workers,
        if args.tracing { "-tracing" } else { "" }
    );
    write_report(&args.out, &name, &report)
}

/// A single-threaded word count: the COST baseline.
fn reference_wordcount(files: &[PathBuf]) -> Result<std::collections::HashMap<String, u64>> {
    let mut counts = std::collections::HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for w in drove::jobs::words(&text) {
            *counts.entry(w).or_insert(0u64) += 1;
        }
    }
    Ok(counts)
}

async fn bench_wordcount(args: WordcountArgs) -> Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    drove::jobs::register_builtin();
    let (dir, files) = text_dir(&args.data, args.size, args.files)?;

    let session = embedded_session(args.workers, args.slots).await?;
    let out_dir = args.data.join("wordcount-out");
    let mb = args.size as f64 / 1e6;
    let (mut drove_s, mut reference_s) = (Vec::new(), Vec::new());
    let mut reference = Default::default();
    for _ in 0..args.iterations {
        let started = Instant::now();
        reference = reference_wordcount(&files)?;
        reference_s.push(started.elapsed().as_secs_f64());

        let _ = std::fs::remove_dir_all(&out_dir);
        let started = Instant::now();
        let result = session
            .run_mapreduce(drove_client::mapreduce::MapReduceOptions {
                job: "wordcount".into(),
                args: Default::default(),
                inputs: vec![dir.clone()],
                output: out_dir.clone(),
                reducers: args.workers * args.slots as usize,
                format: drove_client::OutputFormat::Text,
                overwrite: false,
                combine: true,
            })
            .await?;
        drove_s.push(started.elapsed().as_secs_f64());
        if read_counts(&result.files)? != reference {
            bail!("drove's word counts differ from the single-threaded reference");
        }
    }
    session.shutdown().await;
    let (d, r) = (median(&mut drove_s), median(&mut reference_s));
    println!(
        "wordcount over {mb:.0} MB in {} files | drove: {} workers x {} slots (embedded) | {} iterations, medians",
        files.len(),
        args.workers,
        args.slots,
        args.iterations
    );
    println!("| engine | seconds | MB/s |");
    println!("|---|---|---|");
    println!("| drove | {d:.2} | {:.1} |", mb / d);
    println!("| single-threaded HashMap | {r:.2} | {:.1} |", mb / r);
    println!("drove / reference throughput: {:.2}", r / d);
    let report = serde_json::json!({
        "workload": "wordcount", "bytes": args.size, "files": files.len(),
        "workers": args.workers, "slots": args.slots,
        "drove_s": drove_s, "reference_s": reference_s,
        "drove_median_s": d, "reference_median_s": r,
        "words": reference.len(),
    });
    let name = format!("wordcount-{}-{}w.json", args.size, args.workers);
    write_report(&args.out, &name, &report)
}

/// Generated text of `size` bytes in `files` files, kept between runs: its directory
/// and its files.
fn text_dir(data: &Path, size: u64, files: usize) -> Result<(PathBuf, Vec<PathBuf>)> {
    let dir = data.join(format!("text-{size}-{files}"));
    if !dir.join("_COMPLETE").exists() {
        println!("generating {size} bytes of text into {}", dir.display());
        drove::gentext::generate(size, files, &dir, 42)?;
        std::fs::write(dir.join("_COMPLETE"), b"")?;
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    paths.sort();
    Ok((dir, paths))
}

/// The word counts in word count's part files.
fn read_counts(files: &[PathBuf]) -> Result<std::collections::HashMap<String, u64>> {
    let mut got = std::collections::HashMap::new();
    for f in files {
        for line in std::fs::read_to_string(f)?.lines() {
            let (w, n) = line.split_once('\t').context("a malformed output line")?;
            got.insert(w.to_string(), n.parse::<u64>()?);
        }
    }
    Ok(got)
}

/// What the recovery benchmark runs, with the answer it must give.
enum RecoveryJob {
    Q9 {
        dir: PathBuf,
        expected: Vec<datafusion::arrow::record_batch::RecordBatch>,
    },
    Wordcount {
        dir: PathBuf,
        out: PathBuf,
        expected: std::collections::HashMap<String, u64>,
        reducers: usize,
    },
}

impl RecoveryJob {
    fn name(&self) -> &'static str {
        match self {
            RecoveryJob::Q9 { .. } => "TPC-H Q9",
            RecoveryJob::Wordcount { .. } => "wordcount",
        }
    }

    /// Runs the job once on a fresh cluster, killing worker 1 after `kill_after` if
    /// given; checks the answer and returns seconds taken and attempts re-run.
    async fn run(&self, args: &RecoveryArgs, kill_after: Option<f64>) -> Result<(f64, u32)> {
        let mut cluster = LocalCluster::start(LocalClusterConfig {
            workers: args.workers,
            slots: args.slots,
            ..Default::default()
        })
        .await?;
        let session = Session::connect(&cluster.coordinator_addr().to_string()).await?;
        let q9 = drove_exec::tpch::query(9)?;
        if let RecoveryJob::Q9 { dir, .. } = self {
            session.register_tpch(dir).await?;
        }
        let started = Instant::now();
        let job = async {
            match self {
                RecoveryJob::Q9 { expected, .. } => {
                    let result = session.run_sql(q9).await?;
                    if let Err(diff) = compare(&result.batches, expected, is_ordered(q9)) {
                        bail!("Q9: drove's answer differs from DataFusion's: {diff}");
                    }
                    Ok(result.summary.extra_attempts())
                }
                RecoveryJob::Wordcount {
                    dir,
                    out,
                    expected,
                    reducers,
                } => {
                    let _ = std::fs::remove_dir_all(out);
                    let result = session
                        .run_mapreduce(drove_client::mapreduce::MapReduceOptions {
                            job: "wordcount".into(),
                            args: Default::default(),
                            inputs: vec![dir.clone()],
                            output: out.clone(),
                            reducers: *reducers,
                            format: drove_client::OutputFormat::Text,
                            overwrite: false,
                            combine: true,
                        })
                        .await?;
                    if &read_counts(&result.files)? != expected {
                        bail!("drove's word counts differ from the single-threaded reference");
                    }
                    Ok(result.summary.extra_attempts())
                }
            }
        };
        let killer = async {
            if let Some(after) = kill_after {
                tokio::time::sleep(std::time::Duration::from_secs_f64(after)).await;
                cluster.kill_worker(1);
            }
        };
        let (rerun, ()) = tokio::join!(job, killer);
        let elapsed = started.elapsed().as_secs_f64();
        cluster.shutdown().await;
        Ok((elapsed, rerun?))
    }
}

async fn bench_recovery(args: RecoveryArgs) -> Result<()> {
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    if args.workers < 2 {
        bail!("--workers must be at least 2: one is killed");
    }
    drove::jobs::register_builtin();
    let tpch = tpch_dir(&args.data, args.scale)?;
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_target_partitions(args.workers * args.slots as usize),
    );
    for t in &tables::tpch_tables(&tpch)? {
        tables::register(&ctx, t).await?;
    }
    let expected = run_statements(&ctx, drove_exec::tpch::query(9)?).await?;
    let (text, files) = text_dir(&args.data, args.size, args.files)?;
    let jobs = [
        RecoveryJob::Q9 {
            dir: tpch,
            expected,
        },
        RecoveryJob::Wordcount {
            dir: text,
            out: args.data.join("recovery-wordcount-out"),
            expected: reference_wordcount(&files)?,
            reducers: args.workers * args.slots as usize,
        },
    ];
    println!(
        "recovery | drove: {} workers x {} slots (embedded), worker 1 killed at half the failure-free median | {} iterations, medians",
        args.workers, args.slots, args.iterations
    );
    println!("| job | failure-free s | one worker killed s | ratio | attempts re-run (median) |");
    println!("|---|---|---|---|---|");
    let mut rows = Vec::new();
    for job in &jobs {
        let mut clean = Vec::new();
        for _ in 0..args.iterations {
            clean.push(job.run(&args, None).await?.0);
        }
        let clean_median = median(&mut clean);
        let (mut killed, mut reruns) = (Vec::new(), Vec::new());
        for _ in 0..args.iterations {
            let (s, rerun) = job.run(&args, Some(clean_median / 2.0)).await?;
            killed.push(s);
            reruns.push(f64::from(rerun));
        }
        let (k, r) = (median(&mut killed), median(&mut reruns));
        println!(
            "| {} | {clean_median:.2} | {k:.2} | {:.2} | {r:.0} |",
            job.name(),
            k / clean_median
        );
        rows.push(serde_json::json!({
            "job": job.name(), "failure_free_s": clean, "killed_s": killed,
            "reruns": reruns, "failure_free_median_s": clean_median, "killed_median_s": k,
        }));
    }
    let report = serde_json::json!({
        "workload": "recovery", "scale": args.scale, "text_bytes": args.size,
        "workers": args.workers, "slots": args.slots, "iterations": args.iterations,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "jobs": rows,
    });
    write_report(
        &args.out,
        &format!("recovery-{}w.json", args.workers),
        &report,
    )
}
