//! `cargo xtask`: drove's project tasks.
//!
//! `cargo xtask bench tpch [--scale 1] [--workers 2] [--slots 1] [--iterations 3]`
//! runs the 22 TPC-H queries on an embedded drove cluster and on single-process
//! DataFusion over the same files, in the same run, checks that the answers agree, and
//! reports medians and ratios.

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
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Bench(Bench::Tpch(args)) => runtime.block_on(bench_tpch(args)),
        Command::Bench(Bench::Wordcount(args)) => runtime.block_on(bench_wordcount(args)),
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
    });
    let name = format!("tpch-sf{}-{}w.json", args.scale, args.workers);
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
    let dir = args.data.join(format!("text-{}-{}", args.size, args.files));
    if !dir.join("_COMPLETE").exists() {
        println!(
            "generating {} bytes of text into {}",
            args.size,
            dir.display()
        );
        drove::gentext::generate(args.size, args.files, &dir, 42)?;
        std::fs::write(dir.join("_COMPLETE"), b"")?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();

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
        let mut got = std::collections::HashMap::new();
        for f in &result.files {
            for line in std::fs::read_to_string(f)?.lines() {
                let (w, n) = line.split_once('\t').context("a malformed output line")?;
                got.insert(w.to_string(), n.parse::<u64>()?);
            }
        }
        if got != reference {
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
