//! Scalar subqueries on a cluster: one that returns several rows fails, as SQL requires
//! (a join would answer it with a row for each), and the others give single-process
//! DataFusion's answers, column names included.

use arrow::array::Array;
use datafusion::prelude::SessionContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scalar_subqueries_of_several_rows_fail_and_the_others_equal_datafusion() {
    let session = crate::cluster(2).await;
    for (sql, rows) in [
        ("SELECT (SELECT column1 FROM (VALUES (1), (2))) AS x", 2),
        (
            "SELECT value FROM generate_series(1, 10) WHERE value = (SELECT value FROM generate_series(3, 5))",
            3,
        ),
        (
            "SELECT value + (SELECT value FROM range(0, 4) WHERE value > 0) FROM range(1, 3)",
            3,
        ),
    ] {
        let err = session
            .run_sql(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} returned rows"))
            .to_string();
        assert!(
            err.contains(&format!("a scalar subquery returned {rows} rows"))
                && err.contains("LIMIT 1"),
            "{sql}: {err}"
        );
    }
    // No row: NULL. (Single-process DataFusion 55 fails on this query: it declares the
    // subquery's value non-nullable.)
    let none = session
        .run_sql("SELECT (SELECT column1 FROM (VALUES (1), (2)) WHERE column1 > 5) AS x")
        .await
        .unwrap();
    let rows: usize = none.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 1);
    assert!(
        none.batches
            .iter()
            .all(|b| b.num_rows() == 0 || b.column(0).is_null(0))
    );
    let reference = SessionContext::new();
    for sql in [
        // One row, and subqueries that cannot return more than one.
        "SELECT (SELECT column1 FROM (VALUES (1), (2)) WHERE column1 = 2) AS x",
        "SELECT value FROM generate_series(1, 10) WHERE value > (SELECT avg(value) FROM range(0, 10)) ORDER BY value",
        "SELECT value, (SELECT max(value) FROM range(0, 7)) AS m FROM range(0, 3) ORDER BY value",
        "SELECT (SELECT value FROM range(5, 9) ORDER BY value DESC LIMIT 1) AS top",
        // Correlated: one row per outer key, untouched.
        "SELECT a.value, (SELECT count(*) FROM range(0, 10) b WHERE b.value = a.value * 2) AS n FROM range(0, 4) a ORDER BY a.value",
    ] {
        crate::assert_answers_as_datafusion(&session, &reference, sql).await;
    }
}
