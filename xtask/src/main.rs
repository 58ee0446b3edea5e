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
    }
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

    let cluster = LocalCluster::start(LocalClusterConfig {
        workers: args.workers,
        slots: args.slots,
        ..Default::default()
    })
    .await?;
    let session = Session::with_cluster(cluster).await?;
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

    std::fs::create_dir_all(&args.out)?;
    let path = args
        .out
        .join(format!("tpch-sf{}-{}w.json", args.scale, args.workers));
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
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("results written to {}", path.display());
    Ok(())
}
