//! Where the scheduler puts tasks.

use drove_client::LocalClusterConfig;

use crate::start;

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
    let mut config = LocalClusterConfig {
        workers: 2,
        slots: 2,
        ..Default::default()
    };
    config.coordinator.target_partitions = Some(FILES as usize);
    let (_cluster, session) = start(config).await;
    session.register_csv("t", dir.path()).await.unwrap();
    let result = session
        .run_sql("SELECT count(*) AS c, sum(n) AS s FROM t")
        .await
        .unwrap();
    let shown = arrow::util::pretty::pretty_format_batches(&result.batches)
        .unwrap()
        .to_string();
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
