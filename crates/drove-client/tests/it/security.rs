//! What a peer may do, enforced on the wire whatever client makes the call: with
//! mutual TLS, what each certificate may do; a worker's claims when it registers; and
//! markup in a job's text, which the web UI shows as text.

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
        // The TLS server answers plain HTTP/2 with an alert and closes: how that
        // shows depends on timing (a protocol error, a broken pipe).
        ("no certificate", None, ""),
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

/// A worker's registration claims no more than a real worker makes: absurd slot
/// counts, kept-output lists or names are refused, naming the limit, and the
/// coordinator goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_claiming_too_much_is_refused_and_the_coordinator_carries_on() {
    let (cluster, session) = crate::start(LocalClusterConfig {
        workers: 1,
        ..Default::default()
    })
    .await;
    let addr = cluster.coordinator_addr().to_string();
    let endpoint = drove_exec::net::endpoint(&addr, None).unwrap();
    let mut coordinator = pb::coordinator_client::CoordinatorClient::new(endpoint.connect_lazy());
    let held = pb::HeldOutput {
        task: Some(Default::default()),
        ..Default::default()
    };
    for (claim, says) in [
        (
            pb::RegisterWorker {
                slots: u32::MAX,
                ..Default::default()
            },
            "slots",
        ),
        (
            pb::RegisterWorker {
                slots: 0,
                ..Default::default()
            },
            "slots",
        ),
        (
            pb::RegisterWorker {
                slots: 1,
                held: vec![held; drove_core::scheduler::HELD_OUTPUTS_MAX + 1],
                ..Default::default()
            },
            "kept task outputs",
        ),
        (
            pb::RegisterWorker {
                slots: 1,
                flight_addr: "x".repeat(10_000),
                ..Default::default()
            },
            "at most 256 bytes",
        ),
    ] {
        let register = pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::Register(claim)),
        };
        let refused = coordinator
            .worker_session(futures::stream::iter(vec![register]))
            .await
            .expect_err("an absurd registration was taken");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
        assert!(refused.message().contains(says), "{refused}");
    }
    let result = session.run_sql("SELECT 41 + 1 AS n").await.unwrap();
    assert_eq!(
        result.batches.iter().map(|b| b.num_rows()).sum::<usize>(),
        1
    );
    assert_eq!(session.cluster_status().await.unwrap().workers.len(), 1);
    session.shutdown().await;
    cluster.shutdown().await;
}

/// The historical class of UI injection: a job's SQL text carries markup, and the
/// pages that show it show it as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn markup_in_a_jobs_sql_is_shown_as_text_in_the_web_ui() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (cluster, session) = crate::start(LocalClusterConfig {
        workers: 1,
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let attack = "<script>alert(1)</script>";
    session
        .run_sql(&format!(
            "SELECT '{attack}' AS \"<img src=x onerror=alert(2)>\""
        ))
        .await
        .unwrap();
    let http = cluster.http_addr().unwrap();
    let get = |path: &'static str| async move {
        let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
        let request = format!("GET {path} HTTP/1.0\r\nHost: {http}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).await.unwrap();
        page
    };
    for path in ["/", "/jobs/1"] {
        let page = get(path).await;
        assert!(page.contains("200 OK"), "{path}: {page}");
        assert!(
            page.contains("&lt;script&gt;"),
            "{path} does not show the text: {page}"
        );
        assert!(
            !page.contains("<script") && !page.contains("<img"),
            "{path}: {page}"
        );
    }
    session.shutdown().await;
    cluster.shutdown().await;
}
