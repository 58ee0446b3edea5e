//! Every TCP connection drove accepts or makes has TCP_NODELAY (without it, small
//! responses wait about 40 ms for delayed ACKs) and TCP keep-alives. Checked on the
//! live sockets of an embedded cluster: the test takes a copy of each of its own
//! process's socket descriptors (`pidfd_getfd`) and reads the options the kernel holds.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;

use drove_client::LocalClusterConfig;
use drove_exec::net::TCP_KEEPALIVE_IDLE;
use rustix::net::sockopt;
use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};

/// One connected TCP socket of this process.
struct Connection {
    local: SocketAddr,
    peer: SocketAddr,
    fd: OwnedFd,
}

/// Every connected TCP socket this process holds.
fn connections() -> Vec<Connection> {
    let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("a pidfd of this process");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("listing /proc/self/fd") {
        let Ok(entry) = entry else { continue };
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"));
        let Some(number) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if !is_socket {
            continue;
        }
        // The descriptor may have closed since it was listed.
        let Ok(fd) = pidfd_getfd(&me, number, PidfdGetfdFlags::empty()) else {
            continue;
        };
        let local = rustix::net::getsockname(&fd)
            .ok()
            .and_then(|a| SocketAddr::try_from(a).ok());
        let peer = rustix::net::getpeername(&fd)
            .ok()
            .flatten()
            .and_then(|a| SocketAddr::try_from(a).ok());
        if let (Some(local), Some(peer)) = (local, peer) {
            found.push(Connection { local, peer, fd });
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_has_nodelay_and_keepalives() {
    let (cluster, session) = crate::start(LocalClusterConfig {
        workers: 2,
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    // Workers registered, and a client connection to the coordinator is open.
    let status = session.cluster_status().await.expect("cluster status");
    assert_eq!(status.workers.len(), 2);

    let coordinator = cluster.coordinator_addr();
    let http = cluster.http_addr().expect("an HTTP address");
    let flights = cluster.worker_addrs();
    // A connection to each worker's Flight service, as a shuffle reader makes one.
    let mut channels = Vec::new();
    for flight in &flights {
        let endpoint = drove_exec::net::endpoint(&flight.to_string(), None).unwrap();
        channels.push(endpoint.connect().await.expect("connecting to Flight"));
    }
    // An HTTP connection, kept open (HTTP/1.1 keeps it alive) while the sockets are read.
    let mut browser = TcpStream::connect(http).expect("connecting to HTTP");
    browser
        .write_all(b"GET /health HTTP/1.1\r\nHost: drove\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 64];
    let n = browser.read(&mut answer).expect("an HTTP answer");
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let browser_port = browser.local_addr().unwrap().port();

    let servers: BTreeMap<u16, &str> = [(coordinator.port(), "coordinator gRPC")]
        .into_iter()
        .chain([(http.port(), "coordinator HTTP")])
        .chain(flights.iter().map(|f| (f.port(), "worker Flight")))
        .collect();
    // A connection the client side sees open may still wait in the server's backlog on
    // a loaded machine: wait until every server has accepted one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let found = loop {
        let found = connections();
        let all = servers
            .keys()
            .all(|port| found.iter().any(|c| c.local.port() == *port));
        if all || std::time::Instant::now() > deadline {
            break found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let mut accepted: BTreeMap<u16, usize> = BTreeMap::new();
    let mut made = 0;
    let mut wrong = Vec::new();
    for c in found {
        let role = if let Some(server) = servers.get(&c.local.port()) {
            *accepted.entry(c.local.port()).or_default() += 1;
            format!("{server} accepted from {}", c.peer)
        } else if servers.contains_key(&c.peer.port()) && c.local.port() != browser_port {
            made += 1;
            format!("connection to {} from {}", c.peer, c.local)
        } else {
            continue;
        };
        let nodelay = sockopt::tcp_nodelay(&c.fd).expect("TCP_NODELAY");
        let keepalive = sockopt::socket_keepalive(&c.fd).expect("SO_KEEPALIVE");
        let idle = sockopt::tcp_keepidle(&c.fd).expect("TCP_KEEPIDLE");
        if !nodelay || !keepalive || idle != TCP_KEEPALIVE_IDLE {
            wrong.push(format!(
                "{role}: nodelay {nodelay}, keep-alive {keepalive}, idle {idle:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "sockets without drove's options:\n{}",
        wrong.join("\n")
    );
    // Both workers and the session talk to the coordinator; the test reached every
    // server; drove's own ends of those connections were seen too.
    assert!(
        accepted.get(&coordinator.port()) >= Some(&3),
        "connections the coordinator accepted: {accepted:?}"
    );
    for port in servers.keys() {
        assert!(
            accepted.contains_key(port),
            "no accepted connection found on {} (port {port}): {accepted:?}",
            servers[port]
        );
    }
    assert!(
        made >= 5,
        "only {made} connections made by drove's clients found"
    );
    drop(channels);
    session.shutdown().await;
    cluster.shutdown().await;
}
