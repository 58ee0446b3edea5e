//! Replicated coordinators (`drove coordinator --node-id N --peers ...`): the
//! metadata log kept by Raft (openraft) on every coordinator, and who leads.
//!
//! Every coordinator keeps the log (`raft.log`) and a snapshot of the metadata
//! (`raft.snapshot`) in its data directory. Only the leader schedules: when this
//! coordinator becomes leader it takes the metadata as committed, and runs again the
//! jobs it holds that have not ended; when it stops leading it drops what it ran, and
//! its workers and clients go to the new leader.

mod log;
mod machine;
mod net;
mod wire;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::future::Future;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drove_core::meta::{Applied, MetaCommand, MetaImage};
use drove_core::rng::SplitMix64;
use openraft::network::RaftNetworkFactory;
use openraft::{
    AsyncRuntime, BasicNode, Config, OptionalSend, ServerState, SnapshotPolicy, TokioRuntime,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::state::Coordinator;
use crate::{Error, Result};

pub use net::server;

openraft::declare_raft_types!(
    /// Raft's types for the coordinators' metadata log.
    pub Types:
        D = MetaCommand,
        R = Applied,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = Runtime,
);

pub type Raft = openraft::Raft<Types>;

/// Leader heartbeats, and the election timeout's range: a leader's death is noticed
/// within the timeout.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 500;
const ELECTION_MAX_MS: u64 = 1_000;

/// A leader that has heard from no quorum for this long stops scheduling: the others
/// may have elected another.
const QUORUM_LOST_MS: u64 = ELECTION_MAX_MS;

/// How long a metadata write may wait to be committed before this coordinator gives
/// up leading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many entries a snapshot leaves in the log for peers a little behind (one
/// further behind gets the snapshot; snapshots come every
/// [`crate::durable::SNAPSHOT_EVERY`] entries). Entries can hold a job's plans, so the
/// log in memory stays short, and so do the batches sent to a peer.
const KEPT_AFTER_SNAPSHOT: u64 = 100;
const ENTRIES_PER_APPEND: u64 = 64;

/// How long a peer may take over a snapshot chunk, fsync included.
const SNAPSHOT_CHUNK_TIMEOUT_MS: u64 = 10_000;

/// openraft's runtime: tokio's, except that election timeouts are drawn from a
/// per-thread generator that a simulation seeds ([`seed_elections`]) so that a run
/// can be replayed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Runtime;

thread_local! {
    static ELECTION_RNG: Cell<u64> = Cell::new(drove_core::ids::random_id());
}

/// Makes the election timeouts drawn on this thread from now on follow `seed`.
pub fn seed_elections(seed: u64) {
    ELECTION_RNG.with(|s| s.set(seed));
}

/// This thread's election generator.
pub struct ElectionRng;

impl rand::RngCore for ElectionRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }
    fn next_u64(&mut self) -> u64 {
        ELECTION_RNG.with(|s| {
            let mut rng = SplitMix64(s.get());
            let n = rng.next_u64();
            s.set(rng.0);
            n
        })
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> std::result::Result<(), rand::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl AsyncRuntime for Runtime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = ElectionRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }
    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }
    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }
    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }
    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }
    fn thread_rng() -> ElectionRng {
        ElectionRng
    }
    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        TokioRuntime::oneshot()
    }
}

/// Why a metadata write did not commit.
#[derive(Debug)]
pub enum WriteError {
    /// Another coordinator leads: the write was not made.
    NotLeader,
    /// It may yet commit, or not: no quorum answered in time, or Raft failed.
    Unknown(String),
}

/// Who this coordinator is among its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    pub node_id: u64,
    /// Every coordinator's node id and gRPC address, this one's included.
    pub nodes: BTreeMap<u64, String>,
}

impl Peers {
    /// Reads `--node-id` and `--peers ID=HOST:PORT,...`.
    pub fn parse(node_id: u64, peers: &str) -> Result<Self> {
        let mut nodes = BTreeMap::new();
        for part in peers.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, addr) = part.split_once('=').ok_or_else(|| {
                Error::User(format!(
                    "--peers: '{part}' is not ID=HOST:PORT; write e.g. --peers 1=10.0.0.1:7070,2=10.0.0.2:7070,3=10.0.0.3:7070"
                ))
            })?;
            let id: u64 = id.trim().parse().ok().filter(|id| *id > 0).ok_or_else(|| {
                Error::User(format!(
                    "--peers: '{id}' in '{part}' is not a node id; node ids are whole numbers from 1"
                ))
            })?;
            let addr = addr.trim();
            if addr
                .rsplit_once(':')
                .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
            {
                return Err(Error::User(format!(
                    "--peers: '{addr}' in '{part}' is not HOST:PORT"
                )));
            }
            if nodes.insert(id, addr.to_string()).is_some() {
                return Err(Error::User(format!(
                    "--peers names node {id} twice; give each coordinator its own id"
                )));
            }
        }
        if nodes.is_empty() {
            return Err(Error::User(
                "--peers is empty; list every coordinator, e.g. --peers 1=10.0.0.1:7070,2=10.0.0.2:7070,3=10.0.0.3:7070".into(),
            ));
        }
        if !nodes.contains_key(&node_id) {
            return Err(Error::User(format!(
                "--node-id {node_id} is not among --peers ({}); list this coordinator too",
                nodes
                    .keys()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Self { node_id, nodes })
    }
}

/// What `drove status` and `/api/v1/cluster` say about this coordinator's Raft.
#[derive(Debug, Clone, Default)]
pub struct RaftStatus {
    pub node_id: u64,
    /// "leader", "follower", "candidate" or "learner".
    pub role: &'static str,
    pub term: u64,
    pub leader_id: u64,
    pub leader_addr: String,
    /// The log's last entry, the last applied to the metadata, and the last a
    /// snapshot holds.
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    /// On the leader: every coordinator's id, address, role, and the last entry known
    /// to match the leader's log.
    pub coordinators: Vec<(u64, String, &'static str, u64)>,
}

/// This coordinator's part in the replicated log.
pub struct Replica {
    raft: Raft,
    peers: Peers,
    machine: machine::Machine,
    /// Held while the data directory is in use.
    _lock: std::fs::File,
}

impl Replica {
    /// Opens the log and snapshot in `dir` and joins the peers over gRPC; a
    /// coordinator that has never run proposes the cluster of `peers` (every peer does,
    /// and they agree).
    /// Peers are reached over mutual TLS with `tls`, if given.
    pub async fn start(
        peers: Peers,
        dir: &Path,
        history_max: usize,
        tls: Option<Arc<drove_exec::tls::ClusterTls>>,
    ) -> Result<Arc<Self>> {
        let every = crate::durable::SNAPSHOT_EVERY;
        Self::start_with(peers, dir, history_max, net::Network { tls }, every).await
    }

    /// [`Replica::start`] over another network (the simulation's), with a snapshot
    /// every `snapshot_every` entries.
    pub async fn start_with<N: RaftNetworkFactory<Types>>(
        peers: Peers,
        dir: &Path,
        history_max: usize,
        network: N,
        snapshot_every: u64,
    ) -> Result<Arc<Self>> {
        let user = |e: crate::durable::StoreError| Error::User(e.to_string());
        let lock = crate::durable::lock_dir(dir).map_err(user)?;
        let log = log::LogStore::open(dir).map_err(user)?;
        let machine = machine::Machine::open(dir, history_max).map_err(user)?;
        let fresh = log.is_fresh();
        let config = Config {
            cluster_name: "drove".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(snapshot_every),
            max_in_snapshot_log_to_keep: KEPT_AFTER_SNAPSHOT.min(snapshot_every),
            max_payload_entries: ENTRIES_PER_APPEND,
            install_snapshot_timeout: SNAPSHOT_CHUNK_TIMEOUT_MS,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::Internal(format!("Raft's settings: {e}")))?;
        let raft = Raft::new(
            peers.node_id,
            Arc::new(config),
            network,
            log,
            machine.clone(),
        )
        .await
        .map_err(|e| Error::Internal(format!("Raft cannot start: {e}")))?;
        if fresh {
            let members: BTreeMap<u64, BasicNode> = (peers.nodes.iter())
                .map(|(id, addr)| (*id, BasicNode::new(addr)))
                .collect();
            if let Err(e) = raft.initialize(members).await {
                info!(error = %e, "the cluster was already formed");
            }
        }
        info!(node_id = peers.node_id, peers = ?peers.nodes, dir = %dir.display(), "replicated metadata opened");
        Ok(Arc::new(Self {
            raft,
            peers,
            machine,
            _lock: lock,
        }))
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Commits `command` to the log and applies it; what applying it allocated. An
    /// error means this coordinator could not commit it as leader, and must stop
    /// leading.
    pub async fn write(&self, command: MetaCommand) -> Result<Applied, WriteError> {
        use openraft::error::{ClientWriteError, RaftError};
        match tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(command)).await {
            Ok(Ok(response)) => Ok(response.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
                Err(WriteError::NotLeader)
            }
            Ok(Err(e)) => Err(WriteError::Unknown(e.to_string())),
            Err(_) => Err(WriteError::Unknown(format!(
                "no quorum of coordinators committed it within {} s",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The term in which a quorum confirms now that this coordinator leads (Raft's
    /// read index), if one does: what it answers after that is current, as no other
    /// leader can have committed anything it has not seen.
    pub async fn confirm_lead(&self) -> Option<u64> {
        let wait = Duration::from_millis(QUORUM_LOST_MS);
        match tokio::time::timeout(wait, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Some(self.raft.metrics().borrow().current_term),
            _ => None,
        }
    }

    /// The leader's address when another coordinator leads, as far as this one knows;
    /// empty when none is known (Raft may still take this one for the leader while it
    /// has stepped down, because no quorum answers it).
    pub fn leader_hint(&self) -> String {
        Some(self.status())
            .filter(|s| s.leader_id != s.node_id)
            .map_or(String::new(), |s| s.leader_addr)
    }

    /// The metadata as applied here.
    pub fn metadata(&self) -> MetaImage {
        self.machine.image()
    }

    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let leader_id = m.current_leader.unwrap_or(0);
        RaftStatus {
            node_id: self.peers.node_id,
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Follower | ServerState::Shutdown => "follower",
            },
            term: m.current_term,
            leader_id,
            leader_addr: self
                .peers
                .nodes
                .get(&leader_id)
                .cloned()
                .unwrap_or_default(),
            last_log_index: m.last_log_index.unwrap_or(0),
            applied_index: m.last_applied.map_or(0, |id| id.index),
            snapshot_index: self.machine.snapshot_index(),
            coordinators: match &m.replication {
                Some(matched) if m.state == ServerState::Leader => (self.peers.nodes.iter())
                    .map(|(id, addr)| {
                        let (role, index) = if *id == self.peers.node_id {
                            ("leader", m.last_log_index.unwrap_or(0))
                        } else {
                            let index = matched.get(id).copied().flatten();
                            ("follower", index.map_or(0, |l| l.index))
                        };
                        (*id, addr.clone(), role, index)
                    })
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// Whether this coordinator leads, as Raft sees it, and has heard from a quorum
    /// lately; with the term.
    fn leads(&self) -> (bool, u64) {
        let m = self.raft.metrics().borrow().clone();
        let leads = m.state == ServerState::Leader
            && m.current_leader == Some(self.peers.node_id)
            && m.millis_since_quorum_ack
                .is_some_and(|ms| ms < QUORUM_LOST_MS);
        (leads, m.current_term)
    }
}

/// What schedules while this coordinator leads: the coordinator's state (or the
/// simulation's model of it).
pub trait Leadership {
    /// The term it schedules in; 0 while it does not (also after a metadata write
    /// failed to commit).
    fn led_term(&self) -> u64;
    /// Starts scheduling in `term` from the metadata as committed.
    fn take_lead(&self, meta: MetaImage, term: u64) -> impl Future<Output = ()> + Send;
    /// Stops scheduling and forgets what it ran.
    fn step_down(&self) -> impl Future<Output = ()> + Send;
}

impl Leadership for Coordinator {
    fn led_term(&self) -> u64 {
        Coordinator::led_term(self)
    }
    fn take_lead(&self, meta: MetaImage, term: u64) -> impl Future<Output = ()> + Send {
        Coordinator::take_lead(self, meta, term)
    }
    fn step_down(&self) -> impl Future<Output = ()> + Send {
        Coordinator::step_down(self)
    }
}

/// Follows Raft's view of who leads: takes the lead when this coordinator is elected,
/// and gives it up when another is, or when no quorum answers. Ends on `stop`.
pub async fn follow<L: Leadership>(
    replica: Arc<Replica>,
    coordinator: L,
    mut stop: watch::Receiver<bool>,
) {
    let mut metrics = replica.raft.metrics();
    loop {
        metrics.borrow_and_update();
        let (leads, term) = replica.leads();
        // The term the coordinator's state schedules in (0: none); it also drops to 0
        // when a metadata write fails to commit.
        let led = coordinator.led_term();
        if leads && led != term {
            if led != 0 {
                coordinator.step_down().await;
            }
            // Everything committed before this term is applied once a quorum confirms
            // the lead; and everything in this coordinator's own log (a write that
            // timed out may commit later) once it is applied, so that the metadata it
            // leads from holds every entry it will ever see committed before its own.
            let confirmed = async {
                replica
                    .raft
                    .ensure_linearizable()
                    .await
                    .map_err(|e| e.to_string())?;
                let last = replica.raft.metrics().borrow().last_log_index;
                (replica.raft.wait(None))
                    .applied_index_at_least(last, "the leader's own log applied")
                    .await
                    .map_err(|e| e.to_string())
            };
            match tokio::time::timeout(WRITE_TIMEOUT, confirmed).await {
                Ok(Ok(_)) => {
                    info!(term, "leading");
                    coordinator.take_lead(replica.machine.image(), term).await;
                }
                Ok(Err(e)) => warn!(term, error = %e, "elected, but the lead is not confirmed"),
                Err(_) => warn!(term, "elected, but no quorum confirmed the lead in time"),
            }
        } else if !leads && led != 0 {
            info!(
                term,
                "no longer leading; what ran here moves to the new leader"
            );
            coordinator.step_down().await;
        }
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            changed = metrics.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)) => {}
        }
    }
    if coordinator.led_term() != 0 {
        coordinator.step_down().await;
    }
    let _ = replica.raft.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_read_and_bad_ones_refused_with_the_fix() {
        let p = Peers::parse(2, "1=127.0.0.1:7070, 2=127.0.0.1:7071,3=h:1").unwrap();
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.nodes[&2], "127.0.0.1:7071");
        for (id, peers, says) in [
            (1, "", "--peers is empty"),
            (1, "1=a:1,1=b:2", "names node 1 twice"),
            (4, "1=a:1,2=b:2", "--node-id 4 is not among --peers (1, 2)"),
            (1, "1:a:1", "is not ID=HOST:PORT"),
            (1, "x=a:1", "is not a node id"),
            (0, "0=a:1", "is not a node id"),
            (1, "1=a", "is not HOST:PORT"),
            (1, "1=:80", "is not HOST:PORT"),
        ] {
            let e = Peers::parse(id, peers).unwrap_err().to_string();
            assert!(e.contains(says), "{peers}: {e}");
        }
    }
}
