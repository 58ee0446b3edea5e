//! The coordinators a client or worker talks to (`--coordinator A,B,C`), and which of
//! them it takes for the leader. Only the leader of replicated coordinators schedules;
//! the others answer `UNAVAILABLE`, naming the leader when they know it
//! ([`drove_proto::LEADER_HEADER`]). A caller that gets such an answer, or none, asks
//! [`Coordinators::follow`] and tries again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drove_proto::coordinator_client::CoordinatorClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::net;
use crate::tls::ClusterTls;

/// The coordinators named, each with a client that connects when first used.
#[derive(Debug)]
pub struct Coordinators {
    named: Mutex<Vec<(String, CoordinatorRpc)>>,
    current: AtomicUsize,
    tls: Option<Arc<ClusterTls>>,
    bearer: Bearer,
}

/// A coordinator's client, whose calls carry the caller's token if it has one.
pub type CoordinatorRpc = CoordinatorClient<InterceptedService<Channel, Bearer>>;

/// Puts a client's token on every call (`authorization: Bearer TOKEN`).
#[derive(Clone, Debug, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// `None` sends no token. The token is checked by the cluster, not here; only
    /// characters a header cannot carry are refused.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        match token {
            None => Ok(Self(None)),
            Some(token) => {
                let mut value: MetadataValue<Ascii> = format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| {
                        "the token holds characters no token has; give one from `drove token create` or `admin.token`".to_string()
                    })?;
                value.set_sensitive(true);
                Ok(Self(Some(value)))
            }
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Coordinators a list may name, at most (a leader one names is added beyond them).
pub const COORDINATORS_MAX: usize = 16;

/// The longest a caller following the leader of several coordinators waits between
/// tries: asking costs little, and an election is over in a second or two.
pub const RETRY_MAX: Duration = Duration::from_millis(250);

/// Whether `status` says the coordinator asked cannot answer for the cluster: it is
/// not the leader, or nothing listens (UNAVAILABLE), or the connection broke mid-call
/// because it died (UNKNOWN, CANCELLED).
pub fn gone(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

fn client(addr: &str, tls: Option<&ClusterTls>, bearer: &Bearer) -> Result<CoordinatorRpc, String> {
    let channel = net::endpoint(addr, tls)?.connect_lazy();
    Ok(CoordinatorClient::with_interceptor(channel, bearer.clone())
        .max_decoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(drove_proto::MAX_MESSAGE_BYTES))
}

impl Coordinators {
    /// Reads a comma-separated list of HOST:PORT addresses, reached over mutual TLS
    /// if `tls` is given; every call carries `bearer`'s token.
    pub fn parse(list: &str, tls: Option<Arc<ClusterTls>>, bearer: Bearer) -> Result<Self, String> {
        let addrs: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .collect();
        if addrs.is_empty() {
            return Err(
                "no coordinator address given; name one as HOST:PORT, or several as HOST:PORT,HOST:PORT"
                    .into(),
            );
        }
        if addrs.len() > COORDINATORS_MAX {
            return Err(format!(
                "{} coordinators named; at most {COORDINATORS_MAX} are followed",
                addrs.len()
            ));
        }
        let named = addrs
            .into_iter()
            .map(|a| Ok((a.to_string(), client(a, tls.as_deref(), &bearer)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            named: Mutex::new(named),
            current: AtomicUsize::new(0),
            tls,
            bearer,
        })
    }

    fn named(&self) -> std::sync::MutexGuard<'_, Vec<(String, CoordinatorRpc)>> {
        self.named.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many coordinators are named.
    pub fn len(&self) -> usize {
        self.named().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The longest wait between tries: [`RETRY_MAX`] among several coordinators,
    /// `single` for one (which may be restarting).
    pub fn retry_max(&self, single: Duration) -> Duration {
        if self.len() > 1 { RETRY_MAX } else { single }
    }

    /// The one taken for the leader now: its address and client.
    pub fn current(&self) -> (String, CoordinatorRpc) {
        let named = self.named();
        named[self.current.load(Ordering::Relaxed) % named.len()].clone()
    }

    /// Takes the coordinator at index `i` for the leader.
    pub fn select(&self, i: usize) {
        self.current.store(i, Ordering::Relaxed);
    }

    /// After `status` from the current one: moves to the leader it names, else (no
    /// answer, a broken connection, or no leader known) to the next coordinator.
    /// Whether trying again may help: the answer named a leader, or there is another
    /// coordinator to ask.
    pub fn follow(&self, status: &tonic::Status) -> bool {
        if !gone(status) {
            return false;
        }
        let named_leader = status
            .metadata()
            .get(drove_proto::LEADER_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .filter(|a| !a.is_empty());
        let mut named = self.named();
        if let Some(leader) = named_leader {
            if let Some(i) = named.iter().position(|(a, _)| *a == leader) {
                self.current.store(i, Ordering::Relaxed);
                return true;
            }
            if named.len() < COORDINATORS_MAX + 1
                && let Ok(c) = client(&leader, self.tls.as_deref(), &self.bearer)
            {
                named.push((leader, c));
                self.current.store(named.len() - 1, Ordering::Relaxed);
                return true;
            }
        }
        let n = named.len();
        self.current.store(
            (self.current.load(Ordering::Relaxed) + 1) % n,
            Ordering::Relaxed,
        );
        n > 1
    }
}

impl Coordinators {
    /// Makes `call` on the leader, following it through elections and restarts for
    /// up to `window`.
    pub async fn on_leader<T, F, Fut>(
        &self,
        window: Duration,
        mut call: F,
    ) -> Result<T, tonic::Status>
    where
        F: FnMut(CoordinatorRpc) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let since = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(50);
        loop {
            match call(self.current().1).await {
                Err(e) if since.elapsed() < window && self.follow(&e) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
                answer => return answer,
            }
        }
    }
}

/// How long a read of drove fs's namespace follows the leader.
const NAMESPACE_WINDOW: Duration = Duration::from_secs(30);

#[async_trait::async_trait]
impl crate::dfs::Namespace for Coordinators {
    async fn list(&self, path: &str) -> Result<Option<crate::dfs::Listing>, String> {
        let request = drove_proto::FsPathRequest {
            path: path.to_string(),
            recursive: false,
        };
        let listed = self
            .on_leader(NAMESPACE_WINDOW, |mut c| {
                let request = request.clone();
                async move { c.fs_list(request).await }
            })
            .await;
        match listed {
            Ok(listed) => Ok(Some(listed.into_inner().into())),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e.message().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_leader(leader: &str) -> tonic::Status {
        let mut s = tonic::Status::unavailable("not the leader");
        s.metadata_mut()
            .insert(drove_proto::LEADER_HEADER, leader.parse().unwrap());
        s
    }

    #[tokio::test]
    async fn a_named_leader_is_followed_and_silence_moves_on() {
        let c = Coordinators::parse(
            "127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3",
            None,
            Bearer::default(),
        )
        .unwrap();
        assert_eq!(c.current().0, "127.0.0.1:1");
        assert!(c.follow(&not_leader("127.0.0.1:3")));
        assert_eq!(c.current().0, "127.0.0.1:3");
        assert!(c.follow(&tonic::Status::unavailable("connection refused")));
        assert_eq!(c.current().0, "127.0.0.1:1");
        // A leader not named is added.
        assert!(c.follow(&not_leader("127.0.0.1:9")));
        assert_eq!(c.current().0, "127.0.0.1:9");
        assert_eq!(c.len(), 4);
        // Other failures are not about leadership.
        assert!(!c.follow(&tonic::Status::invalid_argument("bad sql")));
        assert!(c.follow(&tonic::Status::cancelled("operation was canceled")));

        let one = Coordinators::parse("127.0.0.1:1", None, Bearer::default()).unwrap();
        assert!(!one.follow(&tonic::Status::unavailable("gone")));
        assert!(one.follow(&not_leader("127.0.0.1:2")));
    }

    #[tokio::test]
    async fn bad_lists_are_refused() {
        assert!(
            Coordinators::parse(" , ", None, Bearer::default())
                .unwrap_err()
                .contains("no coordinator")
        );
        let many = vec!["127.0.0.1:1"; 17].join(",");
        assert!(
            Coordinators::parse(&many, None, Bearer::default())
                .unwrap_err()
                .contains("at most 16")
        );
        assert!(Coordinators::parse("a b:1", None, Bearer::default()).is_err());
    }
}
