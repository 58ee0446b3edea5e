//! Table functions (`generate_series`, `range`) on a cluster give single-process
//! DataFusion's answers, also when a query reads none of their columns.

use datafusion::prelude::SessionContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generator_scans_equal_datafusion_also_without_columns() {
    let session = crate::cluster(2).await;
    let reference = SessionContext::new();
    for sql in [
        // No column is read: the scan's projection is empty.
        "SELECT count(*) FROM generate_series(1, 10)",
        "SELECT count(*) AS n FROM range(0, 1000, 3)",
        "SELECT count(*) AS n FROM generate_series(1, 10) a CROSS JOIN generate_series(1, 7) b",
        "SELECT count(1) AS n FROM generate_series(1, 5000) WHERE random() >= 0",
        // The column is read.
        "SELECT sum(value) AS s, min(value) AS lo, max(value) AS hi FROM generate_series(1, 100)",
        "SELECT value % 3 AS k, count(*) AS n FROM range(1, 50) GROUP BY 1 ORDER BY 1",
    ] {
        crate::assert_answers_as_datafusion(&session, &reference, sql).await;
    }
}
