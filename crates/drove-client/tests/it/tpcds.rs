//! All 99 TPC-DS queries on a 3-worker cluster give single-process DataFusion's answer.
//! The scale is `DROVE_TPCDS_SCALE` (0.1 by default: the smallest at which at least 80
//! of the queries return rows).

use drove_exec::datagen::Benchmark;
use drove_exec::tables::generated_tables;
use drove_exec::tpcds::QUERIES;
use drove_testkit::{compare, is_ordered, reference, tpcds_data};

/// How many queries must return rows at the default scale for the test to mean much.
const QUERIES_WITH_ROWS: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_99_queries_equal_single_process_datafusion() {
    let scale = drove_testkit::scale(Benchmark::Tpcds, 0.1);
    let dir = tpcds_data(scale);
    let session = crate::cluster(3).await;
    session.register_tpcds(&dir).await.unwrap();
    let tables = generated_tables(&dir, Benchmark::Tpcds).unwrap();
    let mut failures = Vec::new();
    let mut with_rows = 0;
    for (i, sql) in QUERIES.iter().enumerate() {
        let n = i + 1;
        let expected = match reference(&tables, sql).await {
            Ok(batches) => batches,
            Err(e) => {
                // Listed, not failed: drove answers what DataFusion answers.
                eprintln!("q{n}: single-process DataFusion cannot run it: {e}");
                continue;
            }
        };
        if expected.iter().any(|b| b.num_rows() > 0) {
            with_rows += 1;
        }
        match session.run_sql(sql).await {
            Ok(actual) => {
                if let Err(diff) = compare(&actual.batches, &expected, is_ordered(sql)) {
                    failures.push(format!("q{n}: {diff}"));
                }
            }
            Err(e) => failures.push(format!("q{n}: {e}")),
        }
    }
    session.shutdown().await;
    eprintln!("at scale {scale}: {with_rows} of 99 queries return rows");
    assert!(
        failures.is_empty(),
        "at scale {scale}, {} of 99 queries differ from DataFusion:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if scale >= 0.1 {
        assert!(
            with_rows >= QUERIES_WITH_ROWS,
            "only {with_rows} queries returned rows at scale {scale}"
        );
    }
}
