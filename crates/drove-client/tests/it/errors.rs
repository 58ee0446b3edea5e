//! Bad input reaches the user as a clear error, never a panic or a hang.

use std::time::{Duration, Instant};

use drove_client::{Error, Session};
use drove_testkit::tpch_data;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_sql_unknown_tables_and_missing_paths_are_named() {
    let session = crate::cluster(1).await;
    session.register_tpch(tpch_data(0.01)).await.unwrap();

    let e = session.run_sql("SELEC 1").await.unwrap_err();
    assert!(matches!(e, Error::Rejected(_)), "{e:?}");
    assert!(e.to_string().contains("does not parse"), "{e}");

    let e = session
        .run_sql("SELECT * FROM nosuchtable")
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("nosuchtable") && message.contains("registered tables: nation, region"),
        "{message}"
    );

    let e = session
        .register_table("ghost", "/definitely/not/here.parquet")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");

    let e = session
        .run_sql("CREATE VIEW v AS SELECT 1")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no query to run"), "{e}");

    // Lazy DataFrames of several statements take views and one query only; each
    // script here is refused, with a message that says so.
    let refusal = async |sql: &str| match session.sql(sql).await {
        Ok(_) => panic!("{sql} was accepted"),
        Err(e) => e.to_string(),
    };
    for (script, says) in [
        ("CREATE TABLE t AS SELECT 1; SELECT 2", "run_sql"),
        ("CREATE VIEW w AS SELECT 1; DROP VIEW w", "holds no query"),
        ("SELECT 1; SELECT 2", "`SELECT 2`"),
        // A failed script leaves no view behind: the same script fails alike again.
        (
            "CREATE VIEW u AS SELECT 3 AS x; SELECT * FROM nosuchtable",
            "nosuchtable",
        ),
        (
            "CREATE VIEW u AS SELECT 3 AS x; SELECT * FROM nosuchtable",
            "nosuchtable",
        ),
    ] {
        let message = refusal(script).await;
        assert!(message.contains(says), "{script}: {message}");
    }
    let df = session
        .sql("CREATE VIEW u AS SELECT 3 AS x; SELECT x + 1 AS y FROM u; DROP VIEW u")
        .await
        .unwrap();
    let batches = df.collect().await.unwrap();
    assert_eq!(
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
            .lines()
            .nth(3),
        Some("| 4 |")
    );
    session.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_error_on_a_worker_reaches_the_client_with_its_own_message() {
    let session = crate::cluster(2).await;
    session.register_tpch(tpch_data(0.01)).await.unwrap();
    let e = session
        .run_sql("SELECT CAST(l_shipmode AS INT) FROM lineitem")
        .await
        .unwrap_err();
    let message = e.to_string();
    assert!(matches!(e, Error::JobFailed { .. }), "{e:?}");
    assert!(
        message.contains("Cannot cast") || message.contains("cast"),
        "{message}"
    );
    assert!(message.contains("failed on worker-"), "{message}");
    assert!(!message.contains("Unknown"), "{message}");
    session.shutdown().await;
}

#[tokio::test]
async fn a_coordinator_address_with_nothing_behind_it_fails_fast() {
    let addr = drove_testkit::unused_addr();
    let started = Instant::now();
    let e = Session::connect(&addr.to_string())
        .await
        .err()
        .expect("no coordinator there");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(matches!(e, Error::Connect { .. }), "{e:?}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_without_workers_fails_after_the_grace_period_instead_of_hanging() {
    let config = drove_coordinator::CoordinatorConfig {
        no_worker_grace_ms: 1_000,
        heartbeat_interval_ms: 100,
        ..Default::default()
    };
    let coordinator = drove_coordinator::start(config, "127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let session = Session::connect(&coordinator.addr.to_string())
        .await
        .unwrap();
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), session.run_sql("SELECT 1"))
        .await
        .expect("the job must not hang")
        .unwrap_err();
    assert!(matches!(e, Error::JobFailed { .. }), "{e:?}");
    assert!(
        e.to_string().contains("no worker has been registered"),
        "{e}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "failed before the grace period"
    );
    coordinator.shutdown().await;
}
