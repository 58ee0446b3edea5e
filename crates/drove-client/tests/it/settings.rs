//! The settings a job is planned with reach its workers: a `SET` changes what they
//! compute over column data, as it does in single-process DataFusion.

use arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::{CsvReadOptions, SessionContext};

/// `to_timestamp` reads the session's time zone. The coordinator plans its type with
/// the zone set; a worker that decoded the plan with its own default function made
/// values of another type, and the task failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_session_time_zone_reaches_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("times.csv");
    std::fs::write(&path, "s\n2024-01-01 00:00:00\n2024-06-01 12:30:00\n").unwrap();
    let session = crate::cluster(2).await;
    session.register_csv("t", &path).await.unwrap();
    let set = "SET datafusion.execution.time_zone = '+05:00'";
    let query =
        "SELECT s, to_timestamp(s) AS z, CAST(to_timestamp(s) AS BIGINT) AS n FROM t ORDER BY s";

    let reference = SessionContext::new();
    reference
        .register_csv("t", path.to_str().unwrap(), CsvReadOptions::new())
        .await
        .unwrap();
    let answer = |batches: &[arrow::record_batch::RecordBatch]| {
        pretty_format_batches(batches).unwrap().to_string()
    };
    let without = answer(&reference.sql(query).await.unwrap().collect().await.unwrap());
    reference.sql(set).await.unwrap().collect().await.unwrap();
    let with = answer(&reference.sql(query).await.unwrap().collect().await.unwrap());
    assert_ne!(with, without, "the setting changes the answer");

    let got = session
        .run_sql(&format!("{set}; {query}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answer(&got.batches), with);
    let got = session.run_sql(query).await.unwrap();
    assert_eq!(
        answer(&got.batches),
        without,
        "the next job has its own settings"
    );
}
