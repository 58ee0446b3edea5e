//! Memory on embedded clusters: cached tables (SQL and DataFrames), their locality and
//! recovery after a worker is killed, and nothing left behind by jobs that succeeded,
//! failed or were cancelled while spilling.

use std::time::{Duration, Instant};

use drove_client::proto::{JobState, JobStatus};
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use drove_testkit::{compare, reference, tpch_data, tpch_tables, wide_table};

use crate::start;

const CACHE: &str = "SELECT l_orderkey, l_returnflag, l_quantity, l_extendedprice FROM lineitem WHERE l_quantity > 10";
const QUERY: &str = "SELECT l_returnflag, count(*) AS n, sum(l_extendedprice) AS total, max(l_orderkey) AS last FROM li GROUP BY l_returnflag ORDER BY l_returnflag";

/// The job's status as the coordinator last reported it.
async fn job(session: &Session, id: u64) -> JobStatus {
    let status = session.cluster_status().await.unwrap();
    status.jobs.into_iter().find(|j| j.job_id == id).unwrap()
}

/// Attempts launched for the `lineage` stages a query copied from a cached table (they
/// come first in the job; the last of them is the cached stage), and whether every task
/// of the stage reading the cached one ran where its partition was.
fn cached_stage_runs(status: &JobStatus, lineage: usize) -> (u32, bool) {
    let cached = lineage as u32 - 1;
    let lineage_attempts = status.stages[..lineage]
        .iter()
        .map(|s| s.attempts_launched)
        .sum();
    let reader = status
        .stages
        .iter()
        .find(|s| s.depends_on.contains(&cached))
        .expect("a stage reading the cache");
    let holders = &status.stages[lineage - 1].tasks;
    let local = reader.tasks.iter().all(|t| {
        holders
            .iter()
            .any(|h| h.partition == t.partition && h.worker_id == t.worker_id)
    });
    (lineage_attempts, local)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_table_is_read_from_memory_where_it_lives_and_recomputed_after_a_kill() {
    let dir = tpch_data(0.01);
    let (mut cluster, session) = start(LocalClusterConfig {
        workers: 3,
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let expected = reference(
        &tpch_tables(&dir),
        &format!("CREATE VIEW li AS {CACHE}; {QUERY}"),
    )
    .await
    .unwrap();

    let cached = session
        .run_sql(&format!("CACHE TABLE li AS {CACHE}"))
        .await
        .unwrap();
    assert_eq!(cached.num_rows(), 0, "CACHE TABLE returns no rows");
    let lineage = cached.summary.stages.len();
    let listed = session.cluster_status().await.unwrap().cached_tables;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "li");
    assert_eq!(listed[0].partitions, listed[0].partitions_available);
    let held: usize = cluster.blocks_held().iter().sum();
    assert!(held > 0, "no worker holds the cached table");

    let first = session.run_sql(QUERY).await.unwrap();
    compare(&first.batches, &expected, true).unwrap();
    let status = job(&session, first.summary.job_id).await;
    let (lineage_runs, local) = cached_stage_runs(&status, lineage);
    assert_eq!(lineage_runs, 0, "the cached table was computed again");
    assert!(local, "a task reading a cached partition ran away from it");

    // Worker 0 dies with its cached partitions; the next query recomputes them.
    cluster.kill_worker(0);
    // The coordinator notices the broken session, and lists the partitions as gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = session.cluster_status().await.unwrap().cached_tables;
        if listed[0].partitions_available < listed[0].partitions {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed worker's partitions are still listed as available: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = session.run_sql(QUERY).await.unwrap();
    compare(&second.batches, &expected, true).unwrap();
    let (lineage_runs, _) = cached_stage_runs(&job(&session, second.summary.job_id).await, lineage);
    assert!(lineage_runs > 0, "nothing was recomputed after the kill");

    // The recomputed partitions are kept: the third query computes nothing again.
    let third = session.run_sql(QUERY).await.unwrap();
    compare(&third.batches, &expected, true).unwrap();
    let (lineage_runs, _) = cached_stage_runs(&job(&session, third.summary.job_id).await, lineage);
    assert_eq!(lineage_runs, 0, "the recomputed partitions were not kept");

    // Bad input: caching a name twice, uncaching an unknown one, malformed statements.
    let twice = session
        .run_sql(&format!("CACHE TABLE li AS {CACHE}"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        twice.contains("already cached") && twice.contains("UNCACHE TABLE li"),
        "{twice}"
    );
    for (sql, says) in [
        ("UNCACHE TABLE nothing", "IF EXISTS"),
        ("CACHE TABLE x", "CACHE TABLE name AS query"),
        ("CACHE TABLE 1x AS SELECT 1", "cannot name a cached table"),
        ("UNCACHE TABLE", "UNCACHE TABLE [IF EXISTS] name"),
    ] {
        let e = session.run_sql(sql).await.unwrap_err().to_string();
        assert!(e.contains(says), "{sql}: {e}");
    }
    session
        .run_sql("UNCACHE TABLE IF EXISTS nothing")
        .await
        .unwrap();

    session.run_sql("UNCACHE TABLE li").await.unwrap();
    wait_until_empty(&cluster).await;

    // A CACHE TABLE job that fails leaves no table and no blocks, and frees the name.
    let failed = session
        .run_sql(
            "CACHE TABLE bad AS SELECT l_orderkey / (l_quantity - l_quantity) AS x FROM lineitem",
        )
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("Divide by zero"), "{failed}");
    wait_until_empty(&cluster).await;
    session
        .run_sql("CACHE TABLE bad AS SELECT 1 AS x")
        .await
        .unwrap();
    session.run_sql("UNCACHE TABLE bad").await.unwrap();
    wait_until_empty(&cluster).await;

    // Names fold to lower case, as DataFusion's do.
    session
        .run_sql("CACHE TABLE Mixed AS SELECT 1 AS x")
        .await
        .unwrap();
    let one = session.run_sql("SELECT x FROM MIXED").await.unwrap();
    assert_eq!(one.num_rows(), 1);
    assert!(session.uncache("mixed", false).await.unwrap());
    wait_until_empty(&cluster).await;
    let gone = session.run_sql(QUERY).await.unwrap_err().to_string();
    assert!(gone.contains("li"), "{gone}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_cached_from_a_cached_table_survives_a_killed_worker() {
    let dir = tpch_data(0.01);
    let (mut cluster, session) = start(LocalClusterConfig {
        workers: 3,
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let outer = "SELECT l_returnflag, l_extendedprice FROM li WHERE l_extendedprice > 1000";
    let query = "SELECT l_returnflag, count(*) AS n, sum(l_extendedprice) AS total FROM li2 GROUP BY l_returnflag ORDER BY l_returnflag";
    let expected = reference(
        &tpch_tables(&dir),
        &format!("CREATE VIEW li AS {CACHE}; CREATE VIEW li2 AS {outer}; {query}"),
    )
    .await
    .unwrap();
    session.cache_sql("li", CACHE).await.unwrap();
    session.cache_sql("li2", outer).await.unwrap();
    let first = session.run_sql(query).await.unwrap();
    compare(&first.batches, &expected, true).unwrap();
    // Nothing of either table's lineage ran: li2's stages, and li's within them.
    let idle = first
        .summary
        .stages
        .iter()
        .filter(|s| s.attempts == 0)
        .count();
    assert!(idle >= 2, "{}", first.summary);
    cluster.kill_worker(1);
    let second = session.run_sql(query).await.unwrap();
    compare(&second.batches, &expected, true).unwrap();
    let third = session.run_sql(query).await.unwrap();
    compare(&third.batches, &expected, true).unwrap();
    session.uncache("li2", false).await.unwrap();
    session.uncache("li", false).await.unwrap();
    wait_until_empty(&cluster).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cached_dataframe_is_reused_and_freed_by_unpersist() {
    use drove_client::datafusion::functions_aggregate::expr_fn::{count, sum};
    use drove_client::datafusion::prelude::{col, lit};
    let dir = tpch_data(0.01);
    let (cluster, session) = start(LocalClusterConfig {
        workers: 2,
        ..Default::default()
    })
    .await;
    session.register_tpch(&dir).await.unwrap();
    let big = session
        .read_parquet(dir.join("lineitem.parquet"))
        .await
        .unwrap()
        .filter(col("l_quantity").gt(lit(10)))
        .unwrap()
        .cache()
        .await
        .unwrap();
    let expected = reference(
        &tpch_tables(&dir),
        "SELECT l_returnflag, count(l_orderkey) AS n, sum(l_quantity) AS q FROM lineitem WHERE l_quantity > 10 GROUP BY l_returnflag",
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let result = big
            .clone()
            .aggregate(
                vec![col("l_returnflag")],
                vec![
                    count(col("l_orderkey")).alias("n"),
                    sum(col("l_quantity")).alias("q"),
                ],
            )
            .unwrap()
            .collect_with_summary()
            .await
            .unwrap();
        compare(&result.batches, &expected, false).unwrap();
        // The scan and filter were not run again: their stage launched nothing.
        let status = job(&session, result.summary.job_id).await;
        assert_eq!(
            status.stages[0].attempts_launched, 0,
            "the cached DataFrame was computed again"
        );
    }
    assert!(big.unpersist().await.unwrap(), "unpersist found no cache");
    wait_until_empty(&cluster).await;
    cluster.shutdown().await;
}

/// Waits until no worker holds a block (releases travel asynchronously).
async fn wait_until_empty(cluster: &LocalCluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.blocks_held().iter().sum::<usize>() > 0 {
        assert!(
            Instant::now() < deadline,
            "blocks are left: {:?}",
            cluster.blocks_held()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_blocks_or_spill_files_remain_after_jobs_succeed_fail_or_are_cancelled() {
    let data = wide_table(2, 300_000);
    let work = tempfile::tempdir().unwrap();
    let (cluster, session) = start(LocalClusterConfig {
        workers: 2,
        memory_bytes: Some(32 << 20),
        work_dir: Some(work.path().to_path_buf()),
        ..Default::default()
    })
    .await;
    session.register_parquet("t", &data).await.unwrap();
    let check_clean = |what: &str| {
        let left = drove_testkit::spill_files(work.path());
        assert!(left.is_empty(), "after a job that {what}: {left:?}");
    };

    let sorted = session
        .run_sql("SELECT k, v, s FROM t ORDER BY k, v")
        .await
        .unwrap();
    assert!(sorted.summary.spilled_bytes > 0, "the sort did not spill");
    wait_until_empty(&cluster).await;
    check_clean("succeeded");
    let stats = cluster.block_stats();
    assert!(
        stats.iter().any(|s| s.spill_count > 0) && stats.iter().all(|s| s.disk_bytes == 0),
        "{stats:?}"
    );

    // Fails after its first stage wrote (and spilled) its blocks.
    let failed = session
        .run_sql("SELECT g, 100 / (n - n) FROM (SELECT k % 100000 AS g, count(*) AS n, max(s) AS m FROM t GROUP BY k % 100000)")
        .await
        .unwrap_err();
    assert!(failed.to_string().contains("Divide by zero"), "{failed}");
    wait_until_empty(&cluster).await;
    check_clean("failed");

    let (cancelled, ()) = tokio::join!(
        session.run_sql("SELECT k, v, s FROM t ORDER BY s, k"),
        async {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let status = session.cluster_status().await.unwrap();
                let spilled = status
                    .workers
                    .iter()
                    .any(|w| w.memory.is_some_and(|m| m.disk_bytes > 0));
                if let Some(j) = status.jobs.iter().find(|j| j.state() == JobState::Running)
                    && spilled
                {
                    session.cancel(j.job_id).await.unwrap();
                    break;
                }
                assert!(Instant::now() < deadline, "the job never spilled");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    );
    assert!(cancelled.is_err(), "the cancelled job succeeded");
    wait_until_empty(&cluster).await;
    // Cancelled tasks stop at their next await; give them a moment to drop their files.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !drove_testkit::spill_files(work.path()).is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check_clean("was cancelled");
    cluster.shutdown().await;
    assert!(
        drove_testkit::spill_files(work.path()).is_empty()
            && std::fs::read_dir(work.path()).unwrap().count() == 0,
        "stopped workers left their directories"
    );
}

#[tokio::test]
async fn a_budget_below_the_minimum_is_refused_naming_the_minimum() {
    let e = LocalCluster::start(LocalClusterConfig {
        workers: 1,
        memory_bytes: Some(16 << 20),
        ..Default::default()
    })
    .await
    .err()
    .expect("a 16 MiB worker started");
    assert!(
        e.to_string().contains("minimum working size of 32.0 MiB"),
        "{e}"
    );
}
