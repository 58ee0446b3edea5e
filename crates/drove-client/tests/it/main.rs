//! Integration tests of the client against real embedded clusters (gRPC and Flight on
//! loopback ports).

mod dataframe;
mod errors;
mod memory;
mod recovery;
mod tpch;

use drove_client::{LocalCluster, LocalClusterConfig, Session};

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
