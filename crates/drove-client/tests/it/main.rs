//! Integration tests of the client against real embedded clusters (gRPC and Flight on
//! loopback ports).

mod dataframe;
mod errors;
mod fs;
mod fuzz_sql;
mod memory;
mod placement;
mod recovery;
mod scalar_subqueries;
mod security;
mod settings;
mod sockets;
mod table_functions;
mod tpcds;
mod tpch;

use drove_client::{LocalCluster, LocalClusterConfig, Session};

/// An embedded cluster and a session on it (with the cluster's own credentials) that
/// leaves the cluster to the test.
pub async fn start(config: LocalClusterConfig) -> (LocalCluster, Session) {
    let cluster = LocalCluster::start(config)
        .await
        .expect("an embedded cluster");
    let credentials = drove_client::Credentials {
        tls: cluster.tls().cloned(),
        token: None,
    };
    let session = Session::connect_with(&cluster.coordinator_addr().to_string(), &credentials)
        .await
        .expect("connecting");
    (cluster, session)
}

/// A session on a fresh embedded cluster of `workers` workers.
pub async fn cluster(workers: usize) -> Session {
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers,
        ..Default::default()
    })
    .await
    .expect("starting an embedded cluster");
    Session::with_cluster(cluster).await.expect("connecting")
}

/// Runs `sql` on `session`'s cluster and on single-process DataFusion (`reference`), and
/// asserts that both print the same table, column names included.
pub async fn assert_answers_as_datafusion(
    session: &Session,
    reference: &datafusion::prelude::SessionContext,
    sql: &str,
) {
    use arrow::util::pretty::pretty_format_batches;
    let got = session
        .run_sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let want = reference.sql(sql).await.unwrap().collect().await.unwrap();
    assert_eq!(
        pretty_format_batches(&got.batches).unwrap().to_string(),
        pretty_format_batches(&want).unwrap().to_string(),
        "{sql}"
    );
}
