//! All 22 TPC-H queries on a 3-worker cluster, as SQL text and as lazy DataFrames,
//! equal single-process DataFusion.
//! The scale is `DROVE_TPCH_SCALE` (0.01 by default; 0.1 on demand).

use drove_exec::datagen::Benchmark;
use drove_exec::tpch::QUERIES;
use drove_testkit::{compare, is_ordered, reference, scale, tpch_data, tpch_tables};

/// Makes DataFusion split even small files into several partitions, as it does large
/// ones: then joins see probe sides of several partitions, which the planner rewrites.
const SPLIT_FILES: &str = "SET datafusion.optimizer.repartition_file_min_size = 1;";

/// Each query as it is, and again with files split (see [`SPLIT_FILES`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_22_queries_equal_single_process_datafusion() {
    let scale = scale(Benchmark::Tpch, 0.01);
    let dir = tpch_data(scale);
    let session = crate::cluster(3).await;
    session.register_tpch(&dir).await.unwrap();
    let tables = tpch_tables(&dir);
    let mut failures = Vec::new();
    for (i, sql) in QUERIES.iter().enumerate() {
        let n = i + 1;
        let expected = reference(&tables, sql).await.expect("reference result");
        for before in ["", SPLIT_FILES] {
            match session.run_sql(&format!("{before} {sql}")).await {
                Ok(actual) => {
                    if let Err(diff) = compare(&actual.batches, &expected, is_ordered(sql)) {
                        failures.push(format!("Q{n} {before}: {diff}"));
                    }
                }
                Err(e) => failures.push(format!("Q{n} {before}: {e}")),
            }
        }
        // As a lazy DataFrame, which travels as a logical plan rather than as text.
        let actual = match session.sql(sql).await {
            Ok(df) => df.collect().await,
            Err(e) => Err(e),
        };
        match actual {
            Ok(batches) => {
                if let Err(diff) = compare(&batches, &expected, is_ordered(sql)) {
                    failures.push(format!("Q{n} as a DataFrame: {diff}"));
                }
            }
            Err(e) => failures.push(format!("Q{n} as a DataFrame: {e}")),
        }
    }
    session.shutdown().await;
    assert!(
        failures.is_empty(),
        "at scale {scale}:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shuffling_query_runs_on_several_workers_and_moves_blocks_between_them() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(3).await;
    session.register_tpch(&dir).await.unwrap();
    // Files split, so that every worker's scans write rows: the stages reading them,
    // this little data coalesced into a task per slot, read some from other workers.
    let q5 = format!("{SPLIT_FILES} {}", QUERIES[4]);
    let result = session.run_sql(&q5).await.unwrap();
    let summary = &result.summary;
    assert!(summary.stages.len() >= 3, "Q5 shuffles: {summary}");
    assert!(
        summary.workers_used().len() >= 2,
        "tasks ran on one worker only: {summary}"
    );
    assert!(
        summary.remote_read_bytes() > 0,
        "no block crossed between workers: {summary}"
    );
    // The summary counts the Flight calls that fetched them.
    let calls = summary.counters.get(drove_exec::shuffle::FLIGHT_CALLS);
    assert!(calls > Some(&0), "no Flight calls counted: {summary}");
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blocks_are_freed_once_the_result_is_read() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    session.run_sql(QUERIES[2]).await.unwrap();
    // The release travels to the workers asynchronously.
    let mut held = Vec::new();
    for _ in 0..200 {
        held = session
            .with_local_cluster(|c| c.blocks_held())
            .await
            .unwrap();
        if held.iter().all(|n| *n == 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(held.iter().all(|n| *n == 0), "blocks still held: {held:?}");
    session.shutdown().await;
}

/// Found by the SQL fuzzer, each refused by drove and answered by DataFusion:
/// - `NOT IN` over an outer join's nullable column plans a null-aware anti join, which
///   DataFusion builds only collecting its build side; its probe side is now gathered;
/// - a union of aggregates grouped again interleaves only if the shuffle readers
///   present the hash partitioning of the stages they read;
/// - a window partitioned by a key a filter fixed sorts without it, which holds only if
///   the reader under it presents that key as constant, also when the filter ran in a
///   stage gathered into one partition (a join's collected build side);
/// - an aggregate over sorted partitions repartitions them preserving their order,
///   which a reader that gathers blocks as they come does by sorting again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_the_fuzzer_found_refused_equal_datafusion() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let tables = tpch_tables(&dir);
    for sql in [
        "SELECT k, sum(c) AS s FROM (SELECT n_regionkey AS k, count(*) AS c FROM nation GROUP BY n_regionkey UNION ALL SELECT r_regionkey AS k, count(*) AS c FROM region GROUP BY r_regionkey) u GROUP BY k",
        "SELECT n_name, row_number() OVER (PARTITION BY n_regionkey ORDER BY n_nationkey) AS rn FROM nation WHERE n_regionkey = 1",
        "SELECT rn, bool_or(c IN ('1', '2')) AS b FROM (SELECT CAST(s_nationkey AS VARCHAR) AS c, row_number() OVER (ORDER BY s_suppkey, s_nationkey) AS rn FROM supplier JOIN nation ON s_nationkey = n_nationkey) GROUP BY rn",
        "SELECT p_name, ps_suppkey, row_number() OVER (PARTITION BY p_brand ORDER BY ps_partkey, ps_suppkey) AS rn FROM partsupp JOIN part ON ps_partkey = p_partkey WHERE p_brand = 'Brand#45'",
        "SELECT c_mktsegment, count(*) AS n FROM customer LEFT JOIN orders ON o_custkey = c_custkey WHERE o_orderkey NOT IN (SELECT l_orderkey FROM lineitem WHERE l_quantity > 45) GROUP BY 1",
        "SELECT n_name FROM nation LEFT JOIN supplier ON s_nationkey = n_nationkey WHERE s_suppkey NOT IN (SELECT ps_suppkey FROM partsupp WHERE ps_availqty < 100)",
    ] {
        let expected = reference(&tables, sql).await.expect("reference result");
        assert!(!expected.is_empty());
        let actual = session
            .run_sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        if let Err(diff) = compare(&actual.batches, &expected, false) {
            panic!("{sql}: {diff}");
        }
    }
    session.shutdown().await;
}

/// EXPLAIN's rows for `sql`: the plan types, and the plans.
async fn explain(session: &drove_client::Session, sql: &str) -> (Vec<String>, Vec<String>) {
    explain_after(session, "", sql).await
}

/// [`explain`], after the statements `before` (each ending with `;`).
async fn explain_after(
    session: &drove_client::Session,
    before: &str,
    sql: &str,
) -> (Vec<String>, Vec<String>) {
    use arrow::array::{Array, StringArray};
    let explained = session
        .run_sql(&format!("{before} EXPLAIN {sql}"))
        .await
        .unwrap();
    let batch = &explained.batches[0];
    let column = |i: usize| {
        let a = batch
            .column(i)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..a.len())
            .map(|r| a.value(r).to_string())
            .collect::<Vec<_>>()
    };
    (column(0), column(1))
}

/// EXPLAIN shows the plan drove runs: the optimized logical plan, then each stage the
/// query is cut into, with its tasks, the stages it reads and its plan; the same
/// stages the query then runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explain_shows_the_stages_the_query_runs() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let sql = QUERIES[4];
    let (types, plans) = explain(&session, sql).await;
    let ran = session.run_sql(sql).await.unwrap();
    session.shutdown().await;

    assert_eq!(types, ["logical_plan", "physical_plan"]);
    assert!(plans[0].contains("TableScan: lineitem"), "{}", plans[0]);
    let stages: Vec<&str> = plans[1]
        .lines()
        .filter(|l| l.starts_with("Stage "))
        .collect();
    assert_eq!(stages.len(), ran.summary.stages.len(), "{}", plans[1]);
    for (line, stage) in stages.iter().zip(&ran.summary.stages) {
        let tasks = stage.tasks_total;
        let reads = match stage.depends_on.as_slice() {
            [] => String::new(),
            [one] => format!(", reads stage {one}"),
            many => format!(
                ", reads stages {}",
                many.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let plural = if tasks == 1 { "" } else { "s" };
        let expected = format!(
            "Stage {}: {tasks} task{plural}{reads}; writes ",
            stage.stage_id
        );
        assert!(line.starts_with(&expected), "{line}: expected {expected}");
    }
    assert!(stages.last().unwrap().ends_with("writes the result"));
    assert!(
        plans[1].contains("ShuffleReaderExec: stage=0"),
        "{}",
        plans[1]
    );
}

/// Q2's semi join, a broadcast over a probe side of several partitions, would emit its
/// build rows once per task as DataFusion planned it: it keeps its broadcast, with each
/// probe task sending on only the keys that match (see the test after next). Its small
/// dimension joins stay broadcasts (collect-left) inside the stages that scan, no join
/// is partitioned, and its small tables are not spread round-robin over a stage of
/// their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_that_would_lose_rows_run_so_they_do_not() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let (_, explained) = explain(&session, QUERIES[1]).await;
    session.shutdown().await;
    let plans = &explained[1];
    assert!(
        plans.contains("mode=CollectLeft, join_type=RightSemi"),
        "{plans}"
    );
    assert!(
        plans.contains("mode=CollectLeft, join_type=LeftSemi"),
        "{plans}"
    );
    assert!(!plans.contains("mode=Partitioned"), "{plans}");
    let broadcasts = plans
        .matches("HashJoinExec: mode=CollectLeft, join_type=Inner")
        .count();
    assert!(broadcasts >= 4, "{plans}");
    assert!(!plans.contains("RoundRobinBatch"), "{plans}");
}

/// A join whose build side is limited keeps the limit when it is made partitioned:
/// ten customers stay ten, whichever ten they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_limited_build_side_stays_limited() {
    async fn count(session: &drove_client::Session, sql: String) -> i64 {
        use arrow::array::{Array, Int64Array};
        let result = session.run_sql(&sql).await.unwrap();
        let column = result.batches[0].column(0);
        column
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .value(0)
    }
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let ten = "(SELECT c_custkey FROM customer LIMIT 10) a";
    let orders = "SELECT 1 FROM orders o WHERE o.o_custkey = a.c_custkey";
    let left = format!(
        "SELECT count(DISTINCT a.c_custkey) FROM {ten} LEFT JOIN orders o ON o.o_custkey = a.c_custkey"
    );
    let left = count(&session, left).await;
    let with = count(
        &session,
        format!("SELECT count(*) FROM {ten} WHERE EXISTS ({orders})"),
    )
    .await;
    let without = count(
        &session,
        format!("SELECT count(*) FROM {ten} WHERE NOT EXISTS ({orders})"),
    )
    .await;
    session.shutdown().await;
    assert_eq!(left, 10);
    assert_eq!(with + without, 10, "{with} with orders, {without} without");
}

/// `count(DISTINCT x) ... GROUP BY k` groups by (k, x), then by k. Over a small input
/// (TPC-H Q16's) the first exchange hashes by k alone, so the second one and its stage
/// go, and the answer stays DataFusion's; over an input DataFusion estimates as large,
/// both exchanges stay, since hashing by fewer keys could leave partitions idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_small_distinct_count_shuffles_once_and_a_large_one_twice() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let exchanges = |plan: &str| plan.matches("RepartitionExec: partitioning=Hash").count();
    let q16 = QUERIES[15];
    let (_, plans) = explain(&session, q16).await;
    assert_eq!(exchanges(&plans[1]), 1, "{}", plans[1]);
    let ran = session.run_sql(q16).await.unwrap();
    assert_eq!(ran.summary.stages.len(), 3, "{}", ran.summary);
    let expected = reference(&tpch_tables(&dir), q16).await.unwrap();
    compare(&ran.batches, &expected, is_ordered(q16)).unwrap();

    // 1.5 million rows, as DataFusion counts them from the files.
    let large = "SELECT l_returnflag, count(DISTINCT n_name) AS n \
                 FROM lineitem CROSS JOIN nation GROUP BY l_returnflag";
    let (_, plans) = explain(&session, large).await;
    assert_eq!(exchanges(&plans[1]), 2, "{}", plans[1]);
    session.shutdown().await;
}

/// A round-robin exchange over one partition read from files is dropped where
/// DataFusion estimates that partition as small, however large its files: here a
/// 40 MB file of three rows, anti-joined and gathered for a join with a scalar
/// subquery (the shape of TPC-H Q22). Over a generated series, the exchange stays: it is how such a job gets
/// its parallelism. Both answer as DataFusion does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_small_partition_from_large_files_is_not_spread_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("padded.parquet");
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.sql(&format!(
        "COPY (SELECT repeat(chr(65 + v), 13000000) AS pad, v FROM (VALUES (1), (2), (3)) AS t(v)) \
         TO '{}' STORED AS PARQUET OPTIONS ('format.compression' 'uncompressed', 'format.dictionary_enabled' 'false')",
        path.display()
    ))
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 32 << 20);

    let session = crate::cluster(2).await;
    session.register_table("padded", &path).await.unwrap();
    let spread = |plan: &str| plan.contains("RoundRobinBatch");
    let small = "SELECT v % 2 AS k, count(*) AS n FROM padded \
                 WHERE v >= (SELECT avg(v) FROM padded) \
                 AND NOT EXISTS (SELECT 1 FROM padded p WHERE p.v = padded.v + 1) \
                 GROUP BY k ORDER BY k";
    let (_, plans) = explain(&session, small).await;
    assert!(!spread(&plans[1]), "{}", plans[1]);
    let ran = session.run_sql(small).await.unwrap();
    let table = drove_exec::tables::TableSpec {
        name: "padded".into(),
        path: path.clone(),
        format: None,
    };
    let expected = reference(&[table], small).await.unwrap();
    compare(&ran.batches, &expected, true).unwrap();

    let generated = "SELECT value % 2 AS k, count(*) AS n FROM generate_series(1, 1000) \
                     WHERE value >= (SELECT avg(value) FROM generate_series(1, 1000)) GROUP BY k";
    let (_, plans) = explain(&session, generated).await;
    assert!(spread(&plans[1]), "{}", plans[1]);
    session.shutdown().await;
}

/// How many rows `table` has, as single-process DataFusion counts them.
async fn rows(tables: &[drove_exec::tables::TableSpec], table: &str) -> usize {
    use arrow::array::{Array, Int64Array};
    let counted = reference(tables, &format!("SELECT count(*) FROM {table}"))
        .await
        .unwrap();
    let column = counted[0].column(0);
    column
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .value(0) as usize
}

/// The stages of EXPLAIN's physical plan: each one's header line, with the stages it
/// reads, and its plan.
fn explained_stages(plan: &str) -> Vec<(Vec<u32>, String)> {
    let mut stages: Vec<(Vec<u32>, String)> = Vec::new();
    for line in plan.lines() {
        if let Some(header) = line.strip_prefix("Stage ") {
            let reads = header
                .split_once(", reads stage")
                .map(|(_, rest)| {
                    let ids = rest.trim_start_matches('s').split(';').next().unwrap();
                    ids.split(',').map(|i| i.trim().parse().unwrap()).collect()
                })
                .unwrap_or_default();
            stages.push((reads, String::new()));
        } else if let Some((_, text)) = stages.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    stages
}

/// A broadcast semi, anti or mark join no longer shuffles its probe side whole: each
/// probe task keeps the distinct keys of its rows that match the broadcast build side,
/// and the join runs over those. Both joins read the build side from the same stage,
/// computed once. Each answers as DataFusion does; in TPC-H Q22 (an anti join of the
/// customers with the orders) no stage writes as many rows as the orders have.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broadcast_semi_or_anti_join_moves_matching_keys_not_probe_rows() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let tables = tpch_tables(&dir);
    let exists = "EXISTS (SELECT 1 FROM orders WHERE o_custkey = c_custkey)";
    let queries = [
        ("LeftAnti", QUERIES[21].to_string()),
        (
            "LeftSemi",
            format!(
                "SELECT c_mktsegment, count(*) AS n FROM customer WHERE {exists} \
                 GROUP BY c_mktsegment ORDER BY c_mktsegment"
            ),
        ),
        (
            "LeftMark",
            format!(
                "SELECT c_mktsegment, count(*) AS n FROM customer \
                 WHERE c_acctbal > 9000 OR NOT {exists} GROUP BY c_mktsegment ORDER BY c_mktsegment"
            ),
        ),
    ];
    for (kind, sql) in &queries {
        let (_, plans) = explain_after(&session, SPLIT_FILES, sql).await;
        let stages = explained_stages(&plans[1]);
        let reading = |needle: &str| {
            stages
                .iter()
                .find(|(_, plan)| plan.contains(needle))
                .unwrap_or_else(|| panic!("{kind}: no stage has {needle}:\n{}", plans[1]))
                .0
                .clone()
        };
        assert!(
            !plans[1].contains("mode=Partitioned"),
            "{kind}:\n{}",
            plans[1]
        );
        let semi = reading("mode=CollectLeft, join_type=RightSemi");
        let join = reading(&format!("mode=CollectLeft, join_type={kind}"));
        // Q22's customers are gathered from several partitions: one stage, which both
        // joins read. (The other two read theirs in one partition, in each task.)
        if *kind == "LeftAnti" {
            assert!(
                semi.iter().any(|s| join.contains(s)),
                "{kind}: the two joins read no build stage in common:\n{}",
                plans[1]
            );
        }

        let ran = session
            .run_sql(&format!("{SPLIT_FILES} {sql}"))
            .await
            .unwrap();
        let expected = reference(&tables, sql).await.unwrap();
        compare(&ran.batches, &expected, true).unwrap_or_else(|d| panic!("{kind}: {d}"));
        if *kind == "LeftAnti" {
            let orders = rows(&tables, "orders").await;
            for stage in &ran.summary.stages {
                assert!(stage.output_rows < orders as u64, "{}", ran.summary);
            }
        }
    }
    // A build side that may give other rows each time it runs stays partitioned: the
    // two joins could not be sure to see the same rows.
    let volatile = format!(
        "SELECT count(*) FROM (SELECT * FROM customer WHERE random() < 0.5) c WHERE {exists}"
    );
    let (_, plans) = explain_after(&session, SPLIT_FILES, &volatile).await;
    assert!(
        plans[1].contains("mode=Partitioned, join_type=LeftSemi"),
        "{}",
        plans[1]
    );
    session.shutdown().await;
}

/// A broadcast join that drops rows (its build side filtered) filters the scan its probe
/// keys come from when that scan is below an exchange, so the rows it would drop are
/// not shuffled first: here lineitem, hash-partitioned to meet orders, is right-semi-
/// joined with the filtered parts at its scan, and its stage writes only the lineitems
/// of those parts. The answer stays DataFusion's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_filtered_broadcast_join_filters_the_scan_below_the_shuffle() {
    let dir = tpch_data(0.01);
    let session = crate::cluster(2).await;
    session.register_tpch(&dir).await.unwrap();
    let tables = tpch_tables(&dir);
    // Broadcast only what DataFusion estimates at 500 rows or fewer: the parts of one
    // size, not lineitem or orders, which meet in a partitioned join.
    let small = "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 500; \
                 SET datafusion.optimizer.hash_join_single_partition_threshold = 100000;";
    let before = format!("{SPLIT_FILES} {small}");
    let sql = "SELECT count(*) AS n, sum(l_quantity) AS q FROM lineitem \
               JOIN orders ON l_orderkey = o_orderkey \
               JOIN (SELECT p_partkey FROM part WHERE p_size = 15) p ON l_partkey = p_partkey";
    let (_, plans) = explain_after(&session, &before, sql).await;
    let stages = explained_stages(&plans[1]);
    let scan_stage = stages
        .iter()
        .position(|(_, plan)| plan.contains("lineitem.parquet"))
        .unwrap_or_else(|| panic!("no stage scans lineitem:\n{}", plans[1]));
    assert!(
        stages[scan_stage]
            .1
            .contains("join_type=RightSemi, on=[(p_partkey"),
        "{}",
        plans[1]
    );
    assert!(
        plans[1].contains("mode=Partitioned, join_type=Inner"),
        "{}",
        plans[1]
    );

    let ran = session.run_sql(&format!("{before} {sql}")).await.unwrap();
    let expected = reference(&tables, sql).await.unwrap();
    compare(&ran.batches, &expected, false).unwrap();
    let lineitems = rows(&tables, "lineitem").await;
    // The stages run as EXPLAIN numbered them.
    let shuffled = ran.summary.stages[scan_stage].output_rows;
    assert!(shuffled * 10 < lineitems as u64, "{}", ran.summary);
    session.shutdown().await;
}
