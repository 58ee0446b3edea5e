//! What every gRPC and Flight connection in drove shares: endpoints with timeouts and
//! keep-alives, error chains as text, and the error classes on the wire.

use std::time::Duration;

use drove_core::scheduler::ErrorKind;
use tonic::transport::Endpoint;

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings on every connection, so a peer that vanished without closing its
/// connection is noticed instead of waited on forever.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A ping unanswered for this long closes the connection.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// An endpoint for `addr` (HOST:PORT) with drove's timeouts and keep-alives.
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("'{addr}' is not a HOST:PORT address ({e})"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
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
