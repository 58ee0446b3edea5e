//! `drove demo`: TPC-H on an embedded cluster, with where every stage ran.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use drove_client::{LocalCluster, LocalClusterConfig, Session, human_bytes};
use drove_exec::datagen::Benchmark;
use drove_exec::tables::Format;

use crate::output::{self, OutputFormat};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// TPC-H scale factor of the generated data.
    #[arg(long, default_value_t = 0.1)]
    scale: f64,
    /// Workers in the embedded cluster.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// TPC-H queries to run, by number.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 3, 5, 10, 18])]
    queries: Vec<usize>,
    /// Rows of each result to print.
    #[arg(long, default_value_t = 5)]
    rows: usize,
}

pub async fn run(args: DemoArgs) -> Result<()> {
    Benchmark::Tpch.check_scale(args.scale)?;
    let queries = args
        .queries
        .iter()
        .map(|&n| Ok((n, Benchmark::Tpch.query(n)?)))
        .collect::<drove_exec::Result<Vec<_>>>()?;
    let dir = tempfile::tempdir().context("creating a temporary directory for the data")?;
    let started = Instant::now();
    let data = dir.path().join("tpch");
    Benchmark::Tpch.generate(args.scale, &data, Format::Parquet)?;
    println!(
        "generated TPC-H at scale {} in {:.1}s ({})",
        args.scale,
        started.elapsed().as_secs_f64(),
        data.display()
    );
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers: args.workers,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Default::default()
    })
    .await?;
    println!(
        "embedded cluster: coordinator {}, {} workers at {}",
        cluster.coordinator_addr(),
        args.workers,
        cluster
            .worker_addrs()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let http = cluster.http_addr();
    if let Some(http) = http {
        println!("web UI: http://{http}/");
    }
    let session = Session::with_cluster(cluster).await?;
    let outcome = run_queries(&session, &data, &queries, args.rows).await;
    // A person at a terminal gets to look at the UI; a script is never kept waiting.
    if outcome.is_ok()
        && let Some(http) = http
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal()
    {
        println!("the cluster stays up for the web UI at http://{http}/ ; press Enter to stop");
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    }
    session.shutdown().await;
    outcome
}

async fn run_queries(
    session: &Session,
    data: &std::path::Path,
    queries: &[(usize, &str)],
    rows: usize,
) -> Result<()> {
    session.register_tpch(data).await?;
    let mut remote = 0;
    let mut tasks = 0;
    for (n, sql) in queries {
        let result = session
            .run_sql(sql)
            .await
            .with_context(|| format!("TPC-H query {n}"))?;
        println!(
            "\n== TPC-H Q{n}: {} rows (first {rows} shown)",
            result.num_rows()
        );
        let mut out = std::io::stdout().lock();
        let mut table = output::Writer::new(result.schema.clone(), OutputFormat::Table);
        for batch in first_rows(&result.batches, rows) {
            table.write(&mut out, &batch)?;
        }
        table.finish(&mut out)?;
        print!("{}", result.summary);
        remote += result.summary.remote_read_bytes();
        tasks += result.summary.tasks();
    }
    println!(
        "\n{} queries, {tasks} tasks, {} shuffled between workers",
        queries.len(),
        human_bytes(remote)
    );
    Ok(())
}

fn first_rows(
    batches: &[arrow::record_batch::RecordBatch],
    n: usize,
) -> Vec<arrow::record_batch::RecordBatch> {
    let mut left = n;
    let mut out = Vec::new();
    for b in batches {
        if left == 0 {
            break;
        }
        let take = left.min(b.num_rows());
        out.push(b.slice(0, take));
        left -= take;
    }
    out
}
