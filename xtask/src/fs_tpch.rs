//! The `fs-tpch` workload: the 22 TPC-H queries over tables in drove fs (put with
//! replication 2 onto three `drove worker` processes, each with a data directory of its
//! own) against the same queries over the same tables as local Parquet files, on the
//! same cluster in the same run; every drove fs answer is checked against the local
//! one. It reports the share of the bytes the scans read from a replica on their own
//! worker (the workers count them as they read), and where the scan tasks ran.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use drove_client::Session;
use drove_client::fs::PutOptions;
use drove_exec::datagen::Benchmark;
use serde_json::{Value, json};

use crate::fs::{WORKERS, metric};
use crate::{Plan, median};

const REPLICATION: u32 = 2;

/// Per query, the seconds of each run: (local Parquet, drove fs).
type Times = Vec<(Vec<f64>, Vec<f64>)>;

struct Measured {
    times: Times,
    /// Bytes scans read from their own worker's replicas, and from others'.
    read_local: u64,
    read_remote: u64,
    /// Scan attempts by where they ran: node-local, zone-local, remote.
    locality: [u64; 3],
}

async fn measure(
    drove: &Path,
    root: &Path,
    tables: &Path,
    plan: &Plan,
    queries: &[usize],
) -> Result<Measured> {
    let cluster = crate::fs::start(drove, root, "2", "2GiB").await?;
    let session = Session::connect(&cluster.addr).await?;
    let options = PutOptions {
        replication: REPLICATION,
        ..Default::default()
    };
    for table in Benchmark::Tpch.tables() {
        let file = tables.join(format!("{table}.parquet"));
        let remote = format!("drove://tpch/{table}.parquet");
        session.fs_put(&file, &remote, &options).await?;
    }
    let local = Session::connect(&cluster.addr).await?;
    local.register_tpch(tables).await?;
    session.register_tpch("drove://tpch").await?;
    let mut times: Times = vec![(Vec::new(), Vec::new()); queries.len()];
    for run in 0..plan.iterations {
        println!("  fs-tpch run {} of {}", run + 1, plan.iterations);
        for (i, &q) in queries.iter().enumerate() {
            let sql = Benchmark::Tpch.query(q)?;
            let started = Instant::now();
            let expected = local.run_sql(sql).await?;
            times[i].0.push(started.elapsed().as_secs_f64());
            let started = Instant::now();
            let got = session.run_sql(sql).await?;
            times[i].1.push(started.elapsed().as_secs_f64());
            drove_testkit::compare(
                &got.batches,
                &expected.batches,
                drove_testkit::is_ordered(sql),
            )
            .map_err(|e| anyhow::anyhow!("Q{q} over drove:// differs from local Parquet: {e}"))?;
        }
    }
    // The workers report what they read in their heartbeats (every 500 ms).
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let read = |replica: &str| {
        metric(
            &cluster.http,
            &format!("drove_fs_read_bytes_total{{replica=\"{replica}\"}}"),
        )
    };
    let locality = |level: &str| {
        metric(
            &cluster.http,
            &format!("drove_task_locality_total{{locality=\"{level}\"}}"),
        )
    };
    Ok(Measured {
        times,
        read_local: read("local")?,
        read_remote: read("remote")?,
        locality: [locality("node")?, locality("zone")?, locality("remote")?],
    })
}

pub fn workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let drove = crate::processes::release_drove()?;
    let tables = crate::bench_data(&plan.args.data, Benchmark::Tpch, plan.scale)?;
    let root = plan.args.data.join("fs-tpch");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let queries: Vec<usize> = if plan.args.queries.is_empty() {
        (1..=22).collect()
    } else {
        plan.args.queries.clone()
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let measured = runtime.block_on(measure(&drove, &root, &tables, plan, &queries));
    let _ = std::fs::remove_dir_all(&root);
    let mut md = format!(
        "### fs-tpch — TPC-H scale {} over `drove://` (replication {REPLICATION}) against local Parquet, on one coordinator and {WORKERS} `drove worker` processes (release, 2 slots and 2 GiB each, a data directory each); medians of {} runs\n\n",
        plan.scale, plan.iterations
    );
    let m = match measured.context("fs-tpch") {
        Ok(m) => m,
        Err(e) => {
            let problem = format!("fs-tpch: {e:#}");
            md.push_str(&format!("FAILED: {problem}\n"));
            return Ok((
                md,
                json!({ "workload": "fs-tpch", "result": null }),
                vec![problem],
            ));
        }
    };
    md.push_str("| query | local Parquet s | drove:// s | ratio |\n|---|---|---|---|\n");
    let (mut local_total, mut drove_total) = (0.0, 0.0);
    let mut rows = Vec::new();
    for (q, (local, remote)) in queries.iter().zip(&m.times) {
        let (l, d) = (median(local), median(remote));
        local_total += l;
        drove_total += d;
        md.push_str(&format!("| Q{q} | {l:.3} | {d:.3} | {:.2} |\n", d / l));
        rows.push(json!({ "query": q, "local_s": l, "drove_s": d }));
    }
    let share = m.read_local as f64 / (m.read_local + m.read_remote).max(1) as f64;
    md.push_str(&format!(
        "| total | {local_total:.2} | {drove_total:.2} | {:.2} |\n\n\
         Bytes the drove:// scans read: {} MB from a replica on their own worker, {} MB from another's: {:.1}% local. Scan attempts: {} node-local, {} zone-local, {} remote. Each drove:// answer was checked against the local one.\n",
        drove_total / local_total,
        m.read_local / 1_000_000,
        m.read_remote / 1_000_000,
        share * 100.0,
        m.locality[0],
        m.locality[1],
        m.locality[2],
    ));
    let report = json!({
        "workload": "fs-tpch",
        "result": {
            "scale": plan.scale,
            "queries": rows,
            "read_local_bytes": m.read_local,
            "read_remote_bytes": m.read_remote,
            "locality": m.locality,
        }
    });
    Ok((md, report, Vec::new()))
}
