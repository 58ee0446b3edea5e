//! An embedded cluster with mutual TLS: what each certificate may do is enforced on
//! the wire, whatever client makes the call.

use std::path::Path;
use std::sync::Arc;

use drove_client::proto as pb;
use drove_client::{ClusterTls, CoordinatorConfig, Credentials, LocalClusterConfig, Session};
use drove_exec::tls::{self, Role};

fn identity(root: &Path, ca: &str, name: &str, role: Role) -> Arc<ClusterTls> {
    let ca = root.join(ca);
    if !ca.exists() {
        tls::init(&ca).unwrap();
    }
    let out = root.join(name);
    tls::issue(&ca, name, role, &[], 1, &out).unwrap();
    ClusterTls::load(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_cannot_join_as_a_worker_and_flight_admits_only_the_cluster() {
    let root = tempfile::tempdir().unwrap();
    let node = identity(root.path(), "ca", "node", Role::Node);
    let client = identity(root.path(), "ca", "alice", Role::Client);
    let rogue = identity(root.path(), "other-ca", "rogue", Role::Node);
    let (cluster, _) = crate::start(LocalClusterConfig {
        workers: 2,
        coordinator: CoordinatorConfig {
            tls: Some(node),
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let addr = cluster.coordinator_addr().to_string();

    // The client's certificate runs a query whose result it reads from the workers.
    let session = Session::connect_with(
        &addr,
        &Credentials {
            tls: Some(client.clone()),
        },
    )
    .await
    .expect("connecting with a client certificate");
    let result = session
        .run_sql("SELECT value % 2 AS k, count(*) AS n FROM generate_series(1, 10) GROUP BY k ORDER BY k")
        .await
        .expect("a query over TLS");
    let text = drove_client::arrow::util::pretty::pretty_format_batches(&result.batches)
        .unwrap()
        .to_string();
    assert!(
        text.contains("| 0 | 5 |") && text.contains("| 1 | 5 |"),
        "{text}"
    );

    // It cannot open a worker's session: only nodes may.
    let endpoint = drove_exec::net::endpoint(&addr, Some(&client)).unwrap();
    let mut coordinator = pb::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy());
    let register = pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Register(Default::default())),
    };
    let refused = coordinator
        .worker_session(futures::stream::iter(vec![register]))
        .await
        .expect_err("a client's certificate opened a worker session");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("client's"), "{refused}");
    session.shutdown().await;

    // A worker's Flight service answers no one without a certificate of the cluster.
    let worker = cluster.worker_addrs()[0].to_string();
    let ticket = drove_exec::shuffle::ticket(&Default::default());
    for (who, identity, says) in [
        ("no certificate", None, "protocol error"),
        ("another CA's", Some(rogue), "invalid peer certificate"),
    ] {
        let pool = drove_exec::shuffle::FlightPool::new(identity);
        let answer = pool.client(&worker).unwrap().do_get(ticket.clone()).await;
        let e = answer.expect_err(who);
        let chain = drove_exec::net::error_chain(&e);
        assert!(chain.contains(says), "{who}: {chain}");
    }
    cluster.shutdown().await;
}
