//! Integration tests of the client against real embedded clusters (gRPC and Flight on
//! loopback ports).

mod dataframe;
mod errors;
mod fuzz_sql;
mod memory;
mod placement;
mod recovery;
mod scalar_subqueries;
mod sockets;
mod table_functions;
mod tpch;

use drove_client::{LocalCluster, LocalClusterConfig, Session};

/// An embedded cluster and a session on it that leaves the cluster to the test.
pub async fn start(config: LocalClusterConfig) -> (LocalCluster, Session) {
    let cluster = LocalCluster::start(config)
        .await
        .expect("an embedded cluster");
    let session = Session::connect(&cluster.coordinator_addr().to_string())
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
