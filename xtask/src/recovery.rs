//! The recovery workload: TPC-H Q9 and word count, failure-free and with one worker
//! killed at half the failure-free median, on a fresh embedded cluster each run.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::prelude::{SessionConfig, SessionContext};
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use drove_exec::datagen::Benchmark;
use drove_exec::tables;
use drove_testkit::{compare, is_ordered, run_statements};
use serde_json::{Value, json};

use crate::engines::{expected_word_counts, text_files};

/// The word counts in word count's part files.
pub fn read_counts(files: &[PathBuf]) -> Result<std::collections::HashMap<String, u64>> {
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
    async fn run(&self, workers: usize, slots: u32, kill_after: Option<f64>) -> Result<(f64, u32)> {
        let mut cluster = LocalCluster::start(LocalClusterConfig {
            workers,
            slots,
            ..Default::default()
        })
        .await?;
        let session = Session::connect(&cluster.coordinator_addr().to_string()).await?;
        let q9 = Benchmark::Tpch.query(9)?;
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

/// Runs both jobs `iterations` times failure-free, then as often with a worker killed.
pub async fn run(spec: &Value) -> Result<Value> {
    let num = |k: &str| {
        spec[k]
            .as_u64()
            .with_context(|| format!("'{k}' in the spec"))
    };
    let (workers, slots, iterations) = (
        num("workers")? as usize,
        num("slots")? as u32,
        num("iterations")?,
    );
    if workers < 2 {
        bail!("--workers must be at least 2: one is killed");
    }
    drove::jobs::register_builtin();
    let tpch = PathBuf::from(spec["data"].as_str().context("data")?);
    let text = PathBuf::from(spec["input"].as_str().context("input")?);
    let ctx = SessionContext::new_with_config(
        SessionConfig::new().with_target_partitions(workers * slots as usize),
    );
    for t in &tables::generated_tables(&tpch, Benchmark::Tpch)? {
        tables::register(&ctx, t).await?;
    }
    let expected = run_statements(&ctx, Benchmark::Tpch.query(9)?).await?;
    let jobs = [
        RecoveryJob::Q9 {
            dir: tpch,
            expected,
        },
        RecoveryJob::Wordcount {
            out: PathBuf::from(spec["output"].as_str().context("output")?),
            expected: expected_word_counts(&text_files(&text)?)?,
            dir: text,
            reducers: workers * slots as usize,
        },
    ];
    let mut rows = Vec::new();
    for job in &jobs {
        let mut clean = Vec::new();
        for _ in 0..iterations {
            clean.push(job.run(workers, slots, None).await?.0);
        }
        let mut sorted = clean.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let (mut killed, mut reruns) = (Vec::new(), Vec::new());
        for _ in 0..iterations {
            let (s, rerun) = job.run(workers, slots, Some(median / 2.0)).await?;
            killed.push(s);
            reruns.push(rerun);
        }
        rows.push(json!({ "job": job.name(), "failure_free_s": clean, "killed_s": killed, "reruns": reruns }));
    }
    Ok(json!({ "jobs": rows }))
}
