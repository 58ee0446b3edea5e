//! Where the scheduler puts tasks.

use drove_client::LocalClusterConfig;

use crate::start;

/// Runs `sql` over the CSV files in `dir` as table `t`, on a cluster of `config` that
/// plans `files` partitions; the answer as a table, and the result.
async fn query_over_files(
    mut config: LocalClusterConfig,
    dir: &tempfile::TempDir,
    files: u64,
    sql: &str,
) -> (String, drove_client::QueryResult) {
    config.coordinator.target_partitions = Some(files as usize);
    let (_cluster, session) = start(config).await;
    session.register_csv("t", dir.path()).await.unwrap();
    let result = session.run_sql(sql).await.unwrap();
    let shown = arrow::util::pretty::pretty_format_batches(&result.batches)
        .unwrap()
        .to_string();
    (shown, result)
}

/// A stage whose tasks read no other stage's output has no reason to prefer a worker:
/// two equal workers each run about half of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_without_locality_preferences_spreads_evenly() {
    const FILES: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        let path = dir.path().join(format!("part-{i:03}.csv"));
        std::fs::write(path, format!("n\n{i}\n")).unwrap();
    }
    // Every task takes 20 ms more, far beyond the scheduling noise, so both workers
    // free their slots at the same pace however loaded the machine is, and the split
    // shows where the scheduler puts tasks rather than which in-process worker the OS
    // happened to run faster.
    let config = LocalClusterConfig {
        workers: 2,
        slots: 2,
        task_delay_ms: vec![20; 2],
        ..Default::default()
    };
    let (shown, result) = query_over_files(
        config,
        &dir,
        FILES,
        "SELECT count(*) AS c, sum(n) AS s FROM t",
    )
    .await;
    let expected = format!("| {FILES} | {} |", FILES * (FILES - 1) / 2);
    assert!(shown.contains(&expected), "{shown}");
    let stage = result
        .summary
        .stages
        .iter()
        .find(|s| s.tasks_total == FILES as u32)
        .expect("a stage of one task per file");
    let counts: Vec<u32> = stage.tasks_by_worker.values().copied().collect();
    assert_eq!(counts.len(), 2, "{stage:?}");
    for n in counts {
        let share = f64::from(n) / FILES as f64;
        assert!(
            (0.45..=0.55).contains(&share),
            "a worker ran {n} of {FILES} tasks: {:?}",
            stage.tasks_by_worker
        );
    }
}

/// A wide exchange of little data: the stage that reads it runs its small partitions
/// together, a task per slot, and gives the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_partitions_of_a_wide_exchange_run_a_task_per_slot() {
    const FILES: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    for i in 0..FILES {
        let rows: String = (0..100).map(|j| format!("{}\n", i * 100 + j)).collect();
        std::fs::write(
            dir.path().join(format!("part-{i:02}.csv")),
            format!("n\n{rows}"),
        )
        .unwrap();
    }
    let config = LocalClusterConfig {
        workers: 2,
        slots: 1,
        ..Default::default()
    };
    let sql = "SELECT count(*) AS g, sum(c) AS c FROM (SELECT n % 997 AS k, count(*) AS c FROM t GROUP BY n % 997) x";
    let (shown, result) = query_over_files(config, &dir, FILES, sql).await;
    assert!(shown.contains("| 997 | 4000 |"), "{shown}");
    let stages = &result.summary.stages;
    let reduce = (stages.iter())
        .find(|s| s.tasks_total == FILES as u32 && s.depends_on.len() == 1)
        .filter(|s| {
            stages
                .iter()
                .any(|m| m.stage_id == s.depends_on[0] && m.tasks_total == FILES as u32)
        })
        .unwrap_or_else(|| panic!("a stage reading the exchange: {stages:#?}"));
    assert_eq!(
        (reduce.attempts, reduce.tasks_coalesced),
        (2, FILES as u32 - 2),
        "its {FILES} partitions, a few KiB, run as a task for each of 2 slots: {reduce:?}"
    );
}

/// Tasks that keep every slot of a worker busy computing for longer than the heartbeat
/// timeout do not starve its heartbeats: the worker is never declared lost, so no task
/// runs twice and every one ran on the worker's first identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_busy_computing_past_the_heartbeat_timeout_keep_their_worker() {
    let mut config = LocalClusterConfig {
        workers: 1,
        slots: 2,
        ..Default::default()
    };
    config.coordinator.heartbeat_interval_ms = 100;
    config.coordinator.heartbeat_timeout_ms = 1_000;
    config.coordinator.target_partitions = Some(2);
    config.coordinator.speculation = None;
    let (_cluster, session) = start(config).await;
    // Grows the work until one job keeps both slots busy for three heartbeat timeouts.
    let mut rows: u64 = 200_000;
    loop {
        let sql = format!(
            "SELECT count(*) AS c FROM generate_series(1, {rows}) \
             WHERE length(regexp_replace(repeat(CAST(value AS VARCHAR), 20), \
             '([0-9])([0-9])', '${{2}}${{1}}', 'g')) > 0"
        );
        let started = std::time::Instant::now();
        let result = session.run_sql(&sql).await.unwrap();
        let elapsed = started.elapsed();
        let shown = arrow::util::pretty::pretty_format_batches(&result.batches)
            .unwrap()
            .to_string();
        assert!(shown.contains(&format!("| {rows} |")), "{shown}");
        for stage in &result.summary.stages {
            assert_eq!(
                stage.attempts, stage.tasks_total,
                "a task ran again: its worker was lost ({stage:?})"
            );
            assert!(
                stage.tasks_by_worker.keys().all(|w| *w == 1),
                "the worker registered again: it was lost ({stage:?})"
            );
        }
        if elapsed > std::time::Duration::from_secs(3) {
            break;
        }
        rows *= 2;
    }
}
