//! The iterative workloads: PageRank with its links cached in worker memory and
//! without (`pagerank`), and a sort over data four times the cluster's memory budget
//! on workers that are separate processes (`memory`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use serde_json::{Value, json};

use crate::engines::number;
use crate::processes::{ProcessCluster, release_drove};

/// Runs PageRank `iterations` times on fresh embedded clusters; writes the last run's
/// ranks to the spec's `output` (one "node rank" line each).
pub async fn pagerank(spec: &Value) -> Result<Value> {
    let options = pagerank::Options {
        nodes: number(spec, "nodes")?,
        degree: number(spec, "degree")?,
        iterations: number(spec, "pagerank_iterations")? as u32,
        cache: spec["cache"].as_bool().context("cache")?,
        dir: PathBuf::from(spec["data"].as_str().context("data")?),
    };
    let (mut totals, mut caching) = (Vec::new(), Vec::new());
    let mut last = Vec::new();
    for _ in 0..number(spec, "iterations")? {
        let cluster = LocalCluster::start(LocalClusterConfig {
            workers: number(spec, "workers")? as usize,
            slots: number(spec, "slots")? as u32,
            ..Default::default()
        })
        .await?;
        let session = Session::with_cluster(cluster).await?;
        let started = Instant::now();
        let ranks = pagerank::run(&session, &options).await?;
        totals.push(started.elapsed().as_secs_f64());
        caching.push(ranks.cache_secs);
        last = ranks.ranks;
        session.shutdown().await;
    }
    let text: String = last.iter().map(|(n, r)| format!("{n} {r:e}\n")).collect();
    std::fs::write(spec["output"].as_str().context("output")?, text)?;
    Ok(json!({ "total_s": totals, "cache_s": caching }))
}

/// Ranks as [`pagerank`] wrote them.
pub fn read_ranks(path: &Path) -> Result<Vec<(i64, f64)>> {
    std::fs::read_to_string(path)?
        .lines()
        .map(|l| {
            let (n, r) = l.split_once(' ').context("a malformed ranks line")?;
            Ok((n.parse()?, r.parse()?))
        })
        .collect()
}

/// The memory workload's settings.
pub struct MemoryRun {
    pub budget: u64,
    pub rows_per_file: usize,
    pub slots: u64,
    pub iterations: u64,
}

/// Sorts a table at least four times the cluster's budget on a `drove coordinator` and
/// two `drove worker --memory BUDGET` processes (release build), checks the answer
/// against DataFusion, and reports each worker's peak resident memory.
pub fn memory(run: &MemoryRun) -> Result<Value> {
    let drove = release_drove()?;
    let data = drove_testkit::wide_table(4, run.rows_per_file);
    let sql = "SELECT k, v, s FROM t ORDER BY k, v";
    let tables = vec![drove_exec::tables::TableSpec {
        name: "t".into(),
        path: data.clone(),
        format: None,
    }];
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The table's size in memory as a scan reads it (the sorted result's batches share
    // buffers, so they cannot tell).
    let data_bytes: u64 = runtime
        .block_on(drove_testkit::reference(&tables, "SELECT * FROM t"))?
        .iter()
        .map(|b| b.get_array_memory_size() as u64)
        .sum();
    let expected = runtime.block_on(drove_testkit::reference(&tables, sql))?;
    if data_bytes < 4 * 2 * run.budget {
        bail!("the table ({data_bytes} bytes) is less than four times the cluster's budget");
    }
    let mut runs = Vec::new();
    for _ in 0..run.iterations {
        let (seconds, summary, peaks) = runtime.block_on(async {
            let cluster = ProcessCluster::start(&drove, 2, run.slots, run.budget).await?;
            let session = cluster.session().await?;
            session.register_parquet("t", &data).await?;
            let started = Instant::now();
            let result = session.run_sql(sql).await?;
            let seconds = started.elapsed().as_secs_f64();
            if let Err(diff) = drove_testkit::compare_exact(&result.batches, &expected) {
                bail!("the sort's answer differs from DataFusion's: {diff}");
            }
            Ok((seconds, result.summary, cluster.peaks()?))
        })?;
        runs.push(json!({
            "seconds": seconds,
            "peak_rss_bytes": peaks,
            "spilled_bytes": summary.spilled_bytes,
            "spill_count": summary.spill_count,
        }));
    }
    Ok(json!({ "budget_bytes": run.budget, "data_bytes": data_bytes, "runs": runs }))
}
