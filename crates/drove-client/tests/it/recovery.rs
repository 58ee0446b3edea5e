//! Failures during jobs: killed, draining and slow workers, deterministic errors,
//! cancellation and a cluster with no workers left. Every surviving job's answer must
//! equal single-process DataFusion.

use std::time::{Duration, Instant};

use drove_client::proto::JobState;
use drove_client::{Error, LocalClusterConfig, Session};
use drove_coordinator::{CoordinatorConfig, SpeculationConfig};
use drove_exec::tpch::QUERIES;
use drove_testkit::{compare, is_ordered, reference, tpch_data, tpch_tables};

use crate::start;

/// Waits until a job runs with at least one stage done and returns its id.
async fn job_past_its_first_stage(session: &Session) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = session.cluster_status().await.unwrap();
        if let Some(job) = status.jobs.iter().find(|j| {
            j.state() == JobState::Running && j.stages.iter().any(|s| s.tasks_done == s.tasks_total)
        }) {
            return job.job_id;
        }
        assert!(Instant::now() < deadline, "no job got past its first stage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until some job is running.
async fn running_job(session: &Session) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = session.cluster_status().await.unwrap();
        if let Some(job) = status.jobs.iter().find(|j| j.state() == JobState::Running) {
            return job.job_id;
        }
        assert!(Instant::now() < deadline, "no job started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tpch_q5_q9_q18_survive_a_worker_killed_mid_job() {
    let dir = tpch_data(0.1);
    let tables = tpch_tables(&dir);
    for n in [5, 9, 18] {
        let sql = QUERIES[n - 1];
        let (mut cluster, session) = start(LocalClusterConfig {
            workers: 3,
            // Every task takes a little while, so the kill lands mid-job.
            task_delay_ms: vec![100; 3],
            ..Default::default()
        })
        .await;
        session.register_tpch(&dir).await.unwrap();
        let (result, ()) = tokio::join!(session.run_sql(sql), async {
            job_past_its_first_stage(&session).await;
            cluster.kill_worker(1);
        });
        let result = result.unwrap_or_else(|e| panic!("Q{n} failed after a worker died: {e}"));
        let expected = reference(&tables, sql).await.unwrap();
        if let Err(diff) = compare(&result.batches, &expected, is_ordered(sql)) {
            panic!("Q{n} after a worker died: {diff}");
        }
        assert!(
            result.summary.extra_attempts() > 0,
            "Q{n}: nothing was re-run, so the kill came too late: {}",
            result.summary
        );
        assert!(
            result.summary.extra_attempts() < result.summary.tasks(),
            "Q{n}: as many re-runs as a whole new run: {}",
            result.summary
        );
        cluster.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_lost_by_a_live_worker_are_recomputed_after_fetch_failures() {
    let dir = tpch_data(0.01);
    let (cluster, session) = start(LocalClusterConfig {
        workers: 3,
        task_delay_ms: vec![200; 3],
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    // Q9 with every join partitioned, so that later stages read blocks of earlier ones
    // (at this scale its tables are small enough to broadcast into one stage).
    let sql = &format!(
        "SET datafusion.optimizer.hash_join_single_partition_threshold = 0; \
         SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 0; {}",
        QUERIES[8]
    );
    let (result, lost) = tokio::join!(session.run_sql(sql), async {
        job_past_its_first_stage(&session).await;
        let held = cluster.blocks_held();
        let most = (0..held.len()).max_by_key(|i| held[*i]).unwrap();
        cluster.lose_blocks(most);
        held[most]
    });
    let result = result.unwrap();
    let expected = reference(&tpch_tables(&dir), sql).await.unwrap();
    compare(&result.batches, &expected, is_ordered(sql)).unwrap();
    let failed: u32 = result
        .summary
        .stages
        .iter()
        .map(|s| s.attempts_failed)
        .sum();
    assert!(lost > 0, "worker 1 held no blocks");
    assert!(
        failed > 0,
        "no fetch failure was reported: {}",
        result.summary
    );
    assert_eq!(
        session.cluster_status().await.unwrap().workers.len(),
        3,
        "no worker was lost"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_straggler_is_overtaken_by_its_speculative_twin() {
    const DELAY_MS: u64 = 20_000;
    let dir = tpch_data(0.01);
    let (cluster, session) = start(LocalClusterConfig {
        workers: 3,
        slots: 1,
        task_delay_ms: vec![DELAY_MS],
        coordinator: CoordinatorConfig {
            heartbeat_interval_ms: 100,
            speculation: Some(SpeculationConfig {
                multiplier: 1.5,
                quantile: 0.5,
                min_ms: 300,
            }),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let sql = QUERIES[2];
    let started = Instant::now();
    let result = session.run_sql(sql).await.unwrap();
    let elapsed = started.elapsed();
    let expected = reference(&tpch_tables(&dir), sql).await.unwrap();
    compare(&result.batches, &expected, is_ordered(sql)).unwrap();
    let speculative: u32 = result
        .summary
        .stages
        .iter()
        .map(|s| s.attempts_speculative)
        .sum();
    assert!(speculative > 0, "{}", result.summary);
    // Without speculation the job waits at least one full delay on the slow worker.
    assert!(
        elapsed.as_millis() * 4 < u128::from(DELAY_MS),
        "took {elapsed:?}, a quarter of the straggler's {DELAY_MS} ms is the limit: {}",
        result.summary
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn division_by_zero_fails_after_one_attempt() {
    let dir = tpch_data(0.01);
    let (cluster, session) = start(LocalClusterConfig {
        workers: 2,
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let e = session
        .run_sql(
            "SELECT count(*) FROM lineitem WHERE l_linenumber / (l_linenumber - l_linenumber) > 1",
        )
        .await
        .unwrap_err();
    let Error::JobFailed { job, message } = &e else {
        panic!("{e:?}");
    };
    assert!(message.contains("Divide by zero"), "{message}");
    assert!(!message.contains("times"), "it was retried: {message}");
    let status = session.cluster_status().await.unwrap();
    let job = status.jobs.iter().find(|j| j.job_id == *job).unwrap();
    let failed: u32 = job.stages.iter().map(|s| s.attempts_failed).sum();
    let retried = job
        .stages
        .iter()
        .any(|s| s.attempts_launched > s.tasks_total);
    assert!(failed >= 1 && !retried, "{job:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_every_worker_killed_the_job_fails_after_the_grace_period_and_runs_once_they_return() {
    let dir = tpch_data(0.01);
    let (mut cluster, session) = start(LocalClusterConfig {
        workers: 2,
        task_delay_ms: vec![200; 2],
        coordinator: CoordinatorConfig {
            heartbeat_interval_ms: 100,
            no_worker_grace_ms: 2_000,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let sql = QUERIES[2];
    let (result, killed_at) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), session.run_sql(sql)),
        async {
            running_job(&session).await;
            let killed_at = Instant::now();
            cluster.kill_worker(0);
            cluster.kill_worker(1);
            killed_at
        }
    );
    let e = result.expect("the job must not hang").unwrap_err();
    assert!(
        e.to_string().contains("no worker has been registered"),
        "{e}"
    );
    assert!(
        killed_at.elapsed() >= Duration::from_secs(2),
        "failed before the grace period: {:?} {e}",
        killed_at.elapsed()
    );

    cluster.add_worker().await.unwrap();
    let result = session.run_sql(sql).await.unwrap();
    let expected = reference(&tpch_tables(&dir), sql).await.unwrap();
    compare(&result.batches, &expected, is_ordered(sql)).unwrap();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draining_worker_finishes_its_work_and_leaves_without_losing_any() {
    let dir = tpch_data(0.01);
    let (mut cluster, session) = start(LocalClusterConfig {
        workers: 3,
        task_delay_ms: vec![100; 3],
        // Speculative twins would count as extra attempts; this test wants none.
        coordinator: CoordinatorConfig {
            speculation: None,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let sql = QUERIES[4];
    let (result, left) = tokio::join!(session.run_sql(sql), async {
        job_past_its_first_stage(&session).await;
        cluster.drain_worker(0).await
    });
    let result = result.unwrap();
    assert!(left, "the draining worker did not leave cleanly");
    let expected = reference(&tpch_tables(&dir), sql).await.unwrap();
    compare(&result.batches, &expected, is_ordered(sql)).unwrap();
    assert_eq!(
        result.summary.extra_attempts(),
        0,
        "a drain must not cost re-runs: {}",
        result.summary
    );
    assert_eq!(session.cluster_status().await.unwrap().workers.len(), 2);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_job_stops_its_tasks_and_frees_its_blocks() {
    let dir = tpch_data(0.01);
    let (cluster, session) = start(LocalClusterConfig {
        workers: 2,
        task_delay_ms: vec![300; 2],
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let (result, ()) = tokio::join!(session.run_sql(QUERIES[8]), async {
        let job = job_past_its_first_stage(&session).await;
        let status = session.cancel(job).await.unwrap();
        assert_eq!(status.state(), JobState::Cancelled);
        // Cancelling again, or an unknown job, is answered, not an error or a panic.
        assert_eq!(
            session.cancel(job).await.unwrap().state(),
            JobState::Cancelled
        );
        let e = session.cancel(987_654).await.unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    });
    let e = result.unwrap_err();
    assert!(e.to_string().contains("cancelled"), "{e}");
    let mut held = cluster.blocks_held();
    for _ in 0..200 {
        if held.iter().all(|n| *n == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        held = cluster.blocks_held();
    }
    assert!(held.iter().all(|n| *n == 0), "blocks still held: {held:?}");
    let running: u32 = session
        .cluster_status()
        .await
        .unwrap()
        .workers
        .iter()
        .map(|w| w.running_tasks)
        .sum();
    assert_eq!(running, 0);
    cluster.shutdown().await;
}
