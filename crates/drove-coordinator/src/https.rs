//! HTTP over mutual TLS: a listener for axum whose connections have finished a TLS
//! handshake with a peer holding a certificate of the cluster; each comes with the
//! name in that certificate ([`Peer`]).
//!
//! Handshakes run apart from accepting, a bounded number at once and each within a
//! time limit, so a client that connects and says nothing holds up no one else.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, rustls};

use crate::auth::Credential;
use crate::http::Peer;

/// Handshakes under way at most; further connections wait to be accepted.
const HANDSHAKES_MAX: usize = 64;
/// Finished handshakes waiting for the server to take them, at most.
const READY_MAX: usize = 64;

/// Connections that have completed a TLS handshake.
pub struct Listener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Accepts on `listener`, with `config`'s identity and client verification.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, ready) = mpsc::channel(READY_MAX);
        let accepting = tokio::spawn(accept(listener, TlsAcceptor::from(config), tx));
        Self {
            ready,
            local,
            accepting,
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, Peer)>,
) {
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    loop {
        let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, as axum does.
                    tracing::warn!("accepting an HTTPS connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = ready.closed() => return,
        };
        drove_exec::net::configure_accepted(&tcp);
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(drove_exec::net::CONNECT_TIMEOUT, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => {
                    let certificate = (tls.get_ref().1.peer_certificates())
                        .and_then(|chain| chain.first())
                        .map(|cert| cert.as_ref());
                    let peer = Peer {
                        addr: peer,
                        credential: Credential::of_certificate(certificate),
                    };
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!("TLS handshake with {peer} failed: {e}"),
                Err(_) => tracing::debug!("TLS handshake with {peer} timed out"),
            }
        });
    }
}

impl axum::serve::Listener for Listener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accepting task ended only if this listener is being dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer {
            addr: self.local,
            credential: Credential::None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Listener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Listener>) -> Self {
        stream.remote_addr().clone()
    }
}
