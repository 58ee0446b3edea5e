//! The failover workload: TPC-H queries run one after another on three replicated
//! `drove coordinator` processes and three workers, while the leader is killed with
//! SIGKILL at random points and started again. Every answer is checked against
//! single-process DataFusion; a checker over the history of submissions,
//! acknowledgements and answers finds any job lost, answered twice or run twice; and each kill
//! measures the time from the leader's death to the first task the new leader runs
//! (or takes from a worker that kept its output), and how many stages finished at the
//! kill were run again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drove_client::Session;
use drove_exec::datagen::Benchmark;
use drove_testkit::{Proc, Replicated};
use serde_json::{Value, json};

use crate::engines::{bench_context, rows_json};

pub struct FailoverRun {
    pub kills: usize,
    pub data: PathBuf,
    pub slots: u64,
    pub seed: u64,
}

/// What the client saw of one query.
struct Call {
    query: usize,
    /// The job id of the answer, and whether the answer was right; or the error.
    outcome: Result<(u64, bool), String>,
}

/// The leader's node id (1-based) and status, asked of the coordinators as a client
/// would.
async fn leader(session: &Session) -> Result<(usize, drove_client::proto::ClusterStatusResponse)> {
    let status = session.cluster_summary().await?;
    let m = status.metadata.clone().unwrap_or_default();
    if m.role != "leader" {
        bail!("the coordinator that answered is {}", m.role);
    }
    Ok((m.node_id as usize, status))
}

/// The first moment a coordinator other than `dead` leads and has a task of a running
/// job running or done (run, or taken from the output a worker kept), polled every
/// 10 ms through its own session; how long after `since`.
async fn first_task(trio: &Replicated, dead: usize, since: Instant) -> Result<Duration> {
    let mut sessions = Vec::new();
    for (i, a) in trio.addrs.iter().enumerate() {
        if i + 1 != dead {
            sessions.push(Session::connect(a).await?);
        }
    }
    loop {
        for s in &sessions {
            if let Ok((node, status)) = leader(s).await
                && node != dead
                && status.jobs.iter().any(|j| {
                    j.state() == drove_client::proto::JobState::Running
                        && j.stages
                            .iter()
                            .any(|st| st.tasks_running + st.tasks_done > 0)
                })
            {
                return Ok(since.elapsed());
            }
        }
        if since.elapsed() > Duration::from_secs(120) {
            bail!("no new leader ran a task within 120 s of the kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A small deterministic generator for the kill points.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

pub fn run(run: &FailoverRun) -> Result<Value> {
    let drove = crate::processes::release_drove()?;
    tokio::runtime::Runtime::new()?.block_on(failover(run, &drove))
}

async fn failover(run: &FailoverRun, drove: &Path) -> Result<Value> {
    // The reference answers, from single-process DataFusion.
    let partitions = 3 * run.slots as usize;
    let ctx = bench_context(&run.data, Benchmark::Tpch, partitions, true).await?;
    let mut expected = BTreeMap::new();
    for q in 1..=22 {
        let sql = Benchmark::Tpch.query(q)?;
        let batches = drove_testkit::run_statements(&ctx, sql).await?;
        expected.insert(q, rows_json(&batches)?);
    }
    let expected = Arc::new(expected);

    // Every job of the run stays in the history, for the checker.
    let mut trio = Replicated::start(drove, &["--job-history", "100000"]);
    let work = tempfile::tempdir()?;
    let list = trio.list();
    let slots = run.slots.to_string();
    let _workers: Vec<Proc> = (0..3)
        .map(|_| {
            let mut c = Command::new(drove);
            c.args([
                "worker",
                "--coordinator",
                &list,
                "--slots",
                &slots,
                "--work-dir",
            ])
            .arg(work.path());
            drove_testkit::spawn_until(c, "worker Flight service on").0
        })
        .collect();
    let watcher = Session::connect(&list).await?;
    let started = Instant::now();
    while leader(&watcher).await.map_or(0, |(_, s)| s.workers.len()) < 3 {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the workers did not register with a leader");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The client: the 22 queries over and over until told to stop.
    let calls = Arc::new(Mutex::new(Vec::<Call>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (calls, stop, expected) = (calls.clone(), stop.clone(), expected.clone());
        let (list, data) = (list.clone(), run.data.clone());
        tokio::spawn(async move {
            let session = Session::connect(&list).await?;
            session.register_benchmark(&data, Benchmark::Tpch).await?;
            'all: loop {
                for q in 1..=22 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break 'all;
                    }
                    let sql = Benchmark::Tpch.query(q)?;
                    let outcome = match session.run_sql(sql).await {
                        Ok(r) => {
                            let rows = rows_json(&r.batches)?;
                            let right = crate::same_rows_json(
                                &expected[&q],
                                &rows,
                                drove_testkit::is_ordered(sql),
                            )
                            .is_none();
                            Ok((r.summary.job_id, right))
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    calls.lock().unwrap().push(Call { query: q, outcome });
                }
            }
            session.shutdown().await;
            anyhow::Ok(())
        })
    };

    let mut seed = run.seed.max(1);
    let mut failovers = Vec::new();
    let mut finished = Vec::new();
    for k in 0..run.kills {
        tokio::time::sleep(Duration::from_millis(500 + next(&mut seed) % 3_000)).await;
        let (dead, status) = leader(&watcher).await.context("finding the leader")?;
        // The stages finished when the leader dies: the next one should not run them.
        for j in &status.jobs {
            if j.state() == drove_client::proto::JobState::Running {
                (j.stages.iter())
                    .filter(|s| s.tasks_total > 0 && s.tasks_done == s.tasks_total)
                    .for_each(|s| finished.push((j.job_id, s.stage_id)));
            }
        }
        let term = status.metadata.unwrap_or_default().term;
        trio.kill(dead - 1);
        let since = Instant::now();
        let took = first_task(&trio, dead, since).await?;
        println!(
            "  kill {}: node {dead} (term {term}); a task ran under the new leader {:.0} ms later",
            k + 1,
            took.as_secs_f64() * 1000.0
        );
        failovers.push(took.as_secs_f64() * 1000.0);
        trio.start_node(dead - 1);
        // Back to three before the next kill: the restarted one has caught up.
        let started = Instant::now();
        loop {
            if let Ok((_, s)) = leader(&watcher).await {
                let peers = s.metadata.unwrap_or_default().coordinators;
                let top = peers.iter().map(|c| c.matched_index).max().unwrap_or(0);
                if peers.len() == 3
                    && peers
                        .iter()
                        .all(|c| c.matched_index + 2 >= top && c.matched_index > 0)
                {
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("node {dead} did not catch up after its restart");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    client.await??;

    // The checker: every call answered, rightly, under a job id of its own, and the
    // leader's history has each of those jobs once, succeeded.
    let (_, status) = leader(&watcher).await?;
    let calls = std::mem::take(&mut *calls.lock().unwrap());
    let history: BTreeMap<u64, i32> = status.jobs.iter().map(|j| (j.job_id, j.state)).collect();
    // A stage finished before a kill that its job's final status shows attempts for
    // was run again (or its job ended under the old leader, just before the kill).
    let launched: BTreeMap<(u64, u32), u32> = (status.jobs.iter())
        .flat_map(|j| (j.stages.iter()).map(|s| ((j.job_id, s.stage_id), s.attempts_launched)))
        .collect();
    let rerun = (finished.iter())
        .filter(|k| launched.get(k).is_some_and(|n| *n > 0))
        .count();
    let mut problems = Vec::new();
    let mut seen = BTreeMap::new();
    for c in calls.iter() {
        match &c.outcome {
            Err(e) => problems.push(format!("q{}: lost ({e})", c.query)),
            Ok((_, false)) => problems.push(format!("q{}: a wrong answer", c.query)),
            Ok((job, true)) => {
                if seen.insert(*job, c.query).is_some() {
                    problems.push(format!("job {job} answered twice"));
                }
                if history.get(job) != Some(&(drove_client::proto::JobState::Succeeded as i32)) {
                    problems.push(format!(
                        "job {job} (q{}) is not succeeded in the history",
                        c.query
                    ));
                }
            }
        }
    }
    // And no job ran that answered no call: a submission its client sent again after
    // a kill (not knowing whether the first reached the log) must not run twice.
    let lost = calls.iter().filter(|c| c.outcome.is_err()).count();
    let orphans: Vec<u64> = (history.keys())
        .filter(|job| !seen.contains_key(*job))
        .copied()
        .collect();
    if orphans.len() > lost {
        problems.push(format!(
            "jobs {orphans:?} ran but answered no call: submissions ran twice"
        ));
    }
    Ok(json!({
        "kills": run.kills,
        "queries": calls.len(),
        "failover_ms": failovers,
        "stages_finished_at_kills": finished.len(),
        "stages_rerun": rerun,
        "problems": problems,
    }))
}
