//! What every gRPC, Flight and HTTP connection in drove shares: sockets with
//! TCP_NODELAY and keep-alives on both ends, endpoints with timeouts, error chains as
//! text, and the error classes on the wire.

use std::time::Duration;

use drove_core::scheduler::ErrorKind;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Endpoint;
use tonic::transport::server::TcpIncoming;

use crate::tls::ClusterTls;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on every connection, so a peer that vanished without closing its
/// connection is noticed instead of waited on forever.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered for this long closes the connection.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a TCP connection may be silent before the kernel probes its peer.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// How often an unanswered TCP keep-alive probe is repeated.
pub const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// An endpoint for `addr` (HOST:PORT) with drove's timeouts and keep-alives, over
/// mutual TLS with the cluster's identity if `tls` is given.
pub fn endpoint(addr: &str, tls: Option<&ClusterTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("'{addr}' is not a HOST:PORT address ({e})"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .tcp_keepalive(Some(TCP_KEEPALIVE_IDLE))
        .tcp_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint.tls_config(tls.client()).map_err(|e| {
            format!(
                "the TLS files in {} cannot connect: {}",
                tls.dir().display(),
                error_chain(&e)
            )
        }),
    }
}

/// Whether the server at `addr` speaks TLS: it answers the start of a plain HTTP/2
/// connection with a TLS alert. For a client without `--tls-dir` whose connection
/// failed in a way plain TCP cannot explain.
pub async fn speaks_tls(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .ok()?;
        let mut head = [0u8; 2];
        stream.read_exact(&mut head).await.ok()?;
        // A TLS record of type alert (21), version 3.x.
        Some(head == [21, 3])
    };
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, probe).await,
        Ok(Some(true))
    )
}

/// The connections a gRPC or Flight server accepts on `listener`, each with
/// TCP_NODELAY and keep-alives. (Tonic's `Server::tcp_nodelay` does not reach
/// connections from a stream it was given, so without this small responses wait for
/// delayed ACKs: about 40 ms each.)
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(TCP_KEEPALIVE_IDLE))
        .with_keepalive_interval(Some(TCP_KEEPALIVE_INTERVAL))
}

/// Gives a connection the HTTP server accepted what [`incoming`] gives gRPC's. A
/// socket that refuses an option still serves, only slower to notice a dead peer.
pub fn configure_accepted(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!("setting TCP_NODELAY on an accepted connection: {e}");
    }
    let keepalive = TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL);
    if let Err(e) = SockRef::from(stream).set_tcp_keepalive(&keepalive) {
        tracing::warn!("setting TCP keep-alives on an accepted connection: {e}");
    }
}

/// An error and its sources, joined by ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}

/// An error class as it travels.
pub fn error_kind_to_proto(kind: ErrorKind) -> drove_proto::ErrorKind {
    match kind {
        ErrorKind::User => drove_proto::ErrorKind::User,
        ErrorKind::Transient => drove_proto::ErrorKind::Transient,
        ErrorKind::Resources => drove_proto::ErrorKind::Resources,
        ErrorKind::Internal => drove_proto::ErrorKind::Internal,
    }
}

/// An error class from the wire; an unknown one counts as internal.
pub fn error_kind_from_proto(kind: drove_proto::ErrorKind) -> ErrorKind {
    match kind {
        drove_proto::ErrorKind::User => ErrorKind::User,
        drove_proto::ErrorKind::Transient => ErrorKind::Transient,
        drove_proto::ErrorKind::Resources => ErrorKind::Resources,
        drove_proto::ErrorKind::Internal | drove_proto::ErrorKind::Unspecified => {
            ErrorKind::Internal
        }
    }
}
