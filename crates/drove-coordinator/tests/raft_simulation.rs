//! Deterministic simulation of replicated coordinators.
//!
//! Three coordinators run the real Raft: openraft, the coordinators' own log and
//! snapshot files ([`Replica`]), and the loop that takes and gives up the lead
//! ([`replica::follow`]). Only the network, the clock and the scheduling are
//! simulated: a seeded network delays, loses and partitions messages between
//! coordinators, and between coordinators and workers; tokio's clock is paused and
//! jumps to the next timer; everything runs on one thread, and openraft's election
//! timeouts come from a generator seeded by the run ([`replica::seed_elections`]).
//!
//! A model of the coordinator's scheduling stands in for its gRPC state: while a
//! coordinator leads it runs every job the committed metadata holds unended (as a
//! coordinator does when it takes the lead), hands the jobs' tasks to simulated
//! workers with a fencing key (the term, an attempt number that starts again in every
//! term), and commits each job's end, with its answer, through Raft. A client submits
//! jobs to whichever coordinator it picks.
//!
//! Faults: coordinators crash (at any await point) and restart from their data
//! directories; links between any two nodes are cut and healed; messages are delayed,
//! some for seconds, so that results arrive after the term that asked for them.
//! Invariants, checked as the run goes and at its end:
//!
//! - at most one leader per term, as Raft reports it and as the coordinators take
//!   the lead;
//! - no task result is accepted from another term than the one that assigned it;
//! - no job is answered twice, and every answer is the job's right value;
//! - every acknowledged job ends (after a fault-free phase), with the right answer in
//!   every coordinator's metadata, and every coordinator holds the same metadata.
//!
//! `DROVE_RAFT_SIM_SEEDS=N` runs seeds 0..N (200 by default); `DROVE_RAFT_SIM_SEED=S`
//! replays one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use drove_coordinator::replica::{self, Leadership, Peers, Raft, Replica, Types, WriteError};
use drove_core::JobId;
use drove_core::meta::{JobEnd, MetaCommand, MetaImage};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, ServerState};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use drove_core::rng::SplitMix64 as Rng;

const COORDINATORS: u64 = 3;
/// Worker node ids (coordinators are 1..=3).
const WORKERS: [u64; 3] = [101, 102, 103];
const TICK_MS: u64 = 50;
const CHAOS_MS: u64 = 40_000;
const END_MS: u64 = 240_000;
/// A task not reported this long after its assignment is assigned again.
const REASSIGN_MS: u64 = 2_000;
/// Few entries between snapshots, so that restarted coordinators load them and
/// lagging ones are sent them.
const SNAPSHOT_EVERY: u64 = 20;
const HISTORY_MAX: usize = 100_000;

/// A job: `tasks` tasks whose values depend on `salt`; its answer is their sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Spec {
    tasks: u32,
    salt: u64,
}

impl Spec {
    fn encode(self) -> Vec<u8> {
        let mut b = self.tasks.to_le_bytes().to_vec();
        b.extend_from_slice(&self.salt.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Spec {
        Spec {
            tasks: u32::from_le_bytes(b[..4].try_into().expect("4 bytes")),
            salt: u64::from_le_bytes(b[4..12].try_into().expect("8 bytes")),
        }
    }
    fn value(self, task: u32) -> u64 {
        Rng(self.salt ^ u64::from(task).wrapping_mul(0x1000_0001)).next_u64() >> 20
    }
    fn answer(self) -> u64 {
        (0..self.tasks).map(|t| self.value(t)).sum()
    }
}

/// What the checker saw; a violation ends the run.
#[derive(Default)]
struct Checker {
    now_ms: u64,
    violations: Vec<String>,
    /// Term → the coordinator that led it (as Raft reported, or as it took the lead).
    leaders: BTreeMap<u64, u64>,
    /// Every assignment made: its id → (coordinator, term).
    assignments: Vec<(u64, u64)>,
    /// Jobs whose submission was acknowledged to the client.
    acked: BTreeMap<JobId, Spec>,
    /// Jobs whose end was acknowledged as committed, with the answer.
    answered: BTreeMap<JobId, u64>,
    accepted: u64,
    refused_stale: u64,
    /// Trace of what happened, for replays and for the failure message.
    trace: Vec<String>,
}

impl Checker {
    fn event(&mut self, what: String) {
        self.trace.push(format!("{:>7} ms {what}", self.now_ms));
    }
    fn violation(&mut self, what: String) {
        self.event(format!("VIOLATION: {what}"));
        self.violations.push(what);
    }
    fn led(&mut self, term: u64, node: u64, how: &str) {
        match self.leaders.get(&term) {
            Some(other) if *other != node => self.violation(format!(
                "two leaders in term {term}: coordinators {other} and {node} ({how})"
            )),
            Some(_) => {}
            None => {
                self.leaders.insert(term, node);
                self.event(format!("coordinator {node} leads term {term} ({how})"));
            }
        }
    }
}

type Shared = Arc<Mutex<Checker>>;

/// The simulated network: which coordinators run, which links are cut, and delays.
#[derive(Clone)]
struct Net(Arc<Mutex<NetState>>);

struct NetState {
    /// The running coordinators, and which start of each runs.
    rafts: BTreeMap<u64, (u64, Raft)>,
    /// Cut links, as (lower id, higher id).
    cut: BTreeSet<(u64, u64)>,
    rng: Rng,
}

impl Net {
    fn linked(&self, a: u64, b: u64) -> bool {
        !self.0.lock().unwrap().cut.contains(&(a.min(b), a.max(b)))
    }
    fn delay(&self) -> Duration {
        let mut s = self.0.lock().unwrap();
        // Mostly quick; now and then a message lingers.
        let ms = match s.rng.chance(0.02) {
            true => s.rng.range(100, 3_000),
            false => s.rng.range(0, 20),
        };
        Duration::from_millis(ms)
    }
    fn raft(&self, from: u64, to: u64) -> Option<Raft> {
        let s = self.0.lock().unwrap();
        match s.cut.contains(&(from.min(to), from.max(to))) {
            true => None,
            false => s.rafts.get(&to).map(|r| r.1.clone()),
        }
    }

    /// Whether this start of coordinator `node` still runs: a crashed one sends nothing.
    fn runs(&self, node: u64, start: u64) -> bool {
        self.0
            .lock()
            .unwrap()
            .rafts
            .get(&node)
            .is_some_and(|r| r.0 == start)
    }
}

struct Factory {
    from: u64,
    start: u64,
    net: Net,
}

impl RaftNetworkFactory<Types> for Factory {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Peer {
        Peer {
            from: self.from,
            start: self.start,
            to: target,
            net: self.net.clone(),
        }
    }
}

struct Peer {
    from: u64,
    start: u64,
    to: u64,
    net: Net,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

fn unreachable<E: std::error::Error>(to: u64) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(format!(
        "coordinator {to} does not answer"
    ))))
}

impl Peer {
    /// Delivers a call after a delay, and its answer after another, unless the link is
    /// cut or the peer is down on the way. A crashed coordinator sends nothing new
    /// (what it sent before arrives).
    async fn call<T, E, F>(&self, f: impl FnOnce(Raft) -> F) -> RpcResult<T, E>
    where
        E: std::error::Error,
        F: Future<Output = Result<T, RaftError<u64, E>>>,
    {
        if !self.net.runs(self.from, self.start) {
            return Err(unreachable(self.to));
        }
        tokio::time::sleep(self.net.delay()).await;
        let raft = self
            .net
            .raft(self.from, self.to)
            .ok_or_else(|| unreachable(self.to))?;
        let answer = f(raft).await;
        tokio::time::sleep(self.net.delay()).await;
        if !self.net.linked(self.from, self.to) {
            return Err(unreachable(self.to));
        }
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.to, e)))
    }
}

impl RaftNetwork<Types> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        self.call(|raft| async move { raft.append_entries(rpc).await })
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Types>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        self.call(|raft| async move { raft.install_snapshot(rpc).await })
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        self.call(|raft| async move { raft.vote(rpc).await }).await
    }
}

/// A task handed to a worker: the fencing key (term, attempt) and what to compute.
#[derive(Clone, Copy, Debug)]
struct Assignment {
    coordinator: u64,
    term: u64,
    attempt: u64,
    /// The checker's id of this assignment, to look up who really made it.
    id: usize,
    job: JobId,
    task: u32,
    spec: Spec,
}

/// A job the leader runs.
struct Run {
    spec: Spec,
    /// Task → its value, once a result was accepted.
    done: BTreeMap<u32, u64>,
    /// Task → the attempt it waits for, and when that was assigned.
    assigned: BTreeMap<u32, (u64, u64)>,
    /// Its end is being committed.
    ending: bool,
}

/// The model of one coordinator's scheduling state (one incarnation of it).
#[derive(Clone)]
struct Model(Arc<Mutex<ModelState>>);

struct ModelState {
    node: u64,
    crashed: bool,
    led_term: u64,
    jobs: BTreeMap<JobId, Run>,
    /// Starts again at every lead, so only the term tells attempts of two terms apart.
    next_attempt: u64,
    checker: Shared,
}

impl ModelState {
    fn run(spec: Spec) -> Run {
        Run {
            spec,
            done: BTreeMap::new(),
            assigned: BTreeMap::new(),
            ending: false,
        }
    }

    /// Stops leading after a write that did not commit, as the coordinator does.
    fn deposed(&mut self) {
        self.led_term = 0;
        self.jobs.clear();
    }
}

impl Leadership for Model {
    fn led_term(&self) -> u64 {
        self.0.lock().unwrap().led_term
    }

    fn take_lead(&self, meta: MetaImage, term: u64) -> impl Future<Output = ()> + Send {
        let model = self.clone();
        async move {
            let mut m = model.0.lock().unwrap();
            if m.crashed {
                return;
            }
            let node = m.node;
            m.checker.lock().unwrap().led(term, node, "took the lead");
            m.led_term = term;
            m.next_attempt = 1;
            m.jobs = (meta.jobs.iter())
                .filter(|(_, j)| j.ended.is_none())
                .map(|(id, j)| (*id, ModelState::run(Spec::decode(&j.planned))))
                .collect();
        }
    }

    fn step_down(&self) -> impl Future<Output = ()> + Send {
        let model = self.clone();
        async move {
            let mut m = model.0.lock().unwrap();
            m.led_term = 0;
            m.jobs.clear();
        }
    }
}

impl Model {
    /// A worker's result reaches this coordinator: accepted only under the fencing key
    /// of the current term's assignment.
    fn result(&self, a: Assignment, value: u64) {
        let mut m = self.0.lock().unwrap();
        let led = m.led_term;
        if m.crashed || led == 0 {
            return;
        }
        if a.term != led {
            m.checker.lock().unwrap().refused_stale += 1;
            return;
        }
        let Some(run) = m.jobs.get_mut(&a.job) else {
            return;
        };
        if run.done.contains_key(&a.task)
            || run.assigned.get(&a.task).map(|w| w.0) != Some(a.attempt)
        {
            return;
        }
        run.done.insert(a.task, value);
        run.assigned.remove(&a.task);
        let mut c = m.checker.lock().unwrap();
        c.accepted += 1;
        let (by, term) = c.assignments[a.id];
        if (by, term) != (m.node, led) {
            c.violation(format!(
                "coordinator {} in term {led} accepted a result of job {} task {} assigned by coordinator {by} in term {term}",
                m.node, a.job.0, a.task
            ));
        }
    }
}

/// A coordinator: its data directory and, while it runs, its replica and model.
struct Node {
    id: u64,
    dir: PathBuf,
    up: Option<Up>,
    /// The last incarnation's replica, until every task that held it is done.
    gone: Weak<Replica>,
}

struct Up {
    replica: Arc<Replica>,
    model: Model,
    follow: JoinHandle<()>,
    _stop: watch::Sender<bool>,
}

/// What the workers run: (worker, task, when it finishes).
type Running = Arc<Mutex<Vec<(u64, Assignment, u64)>>>;

struct World {
    rng: Rng,
    net: Net,
    checker: Shared,
    nodes: Vec<Node>,
    /// The running coordinators' models, where workers send results.
    models: Arc<Mutex<BTreeMap<u64, Model>>>,
    running: Running,
    peers: BTreeMap<u64, String>,
    /// Simulated time since the run began.
    epoch: tokio::time::Instant,
    now_ms: u64,
    /// Coordinator starts so far.
    starts: u64,
}

impl World {
    fn now(&self) -> u64 {
        self.now_ms
    }

    async fn start(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if node.up.is_some() || node.gone.strong_count() > 0 {
            return;
        }
        // Machines do not start in step: Raft's ticks (every 150 ms) take each node's
        // phase, and nodes whose ticks kept in step could split every vote forever.
        tokio::time::sleep(Duration::from_millis(self.rng.range(0, 149))).await;
        let node = &mut self.nodes[i];
        let peers = Peers {
            node_id: node.id,
            nodes: self.peers.clone(),
        };
        self.starts += 1;
        let start = self.starts;
        let factory = Factory {
            from: node.id,
            start,
            net: self.net.clone(),
        };
        let replica = Replica::start_with(peers, &node.dir, HISTORY_MAX, factory, SNAPSHOT_EVERY)
            .await
            .unwrap_or_else(|e| panic!("coordinator {} cannot restart: {e}", node.id));
        (self.net.0.lock().unwrap().rafts).insert(node.id, (start, replica.raft().clone()));
        let model = Model(Arc::new(Mutex::new(ModelState {
            node: node.id,
            crashed: false,
            led_term: 0,
            jobs: BTreeMap::new(),
            next_attempt: 1,
            checker: self.checker.clone(),
        })));
        let (stop, stopped) = watch::channel(false);
        let follow = tokio::spawn(replica::follow(replica.clone(), model.clone(), stopped));
        self.models.lock().unwrap().insert(node.id, model.clone());
        node.up = Some(Up {
            replica,
            model,
            follow,
            _stop: stop,
        });
        let id = node.id;
        self.checker
            .lock()
            .unwrap()
            .event(format!("coordinator {id} starts"));
    }

    /// Kills a coordinator where it stands: whatever it was awaiting never resumes.
    async fn crash(&mut self, i: usize) {
        let Some(up) = self.nodes[i].up.take() else {
            return;
        };
        let id = self.nodes[i].id;
        self.net.0.lock().unwrap().rafts.remove(&id);
        self.models.lock().unwrap().remove(&id);
        up.follow.abort();
        {
            let mut m = up.model.0.lock().unwrap();
            m.crashed = true;
            m.deposed();
        }
        let _ = up.replica.raft().shutdown().await;
        self.nodes[i].gone = Arc::downgrade(&up.replica);
        self.checker
            .lock()
            .unwrap()
            .event(format!("coordinator {id} crashes"));
    }

    fn cut(&mut self, a: u64, b: u64) {
        let fresh = (self.net.0.lock().unwrap().cut).insert((a.min(b), a.max(b)));
        if fresh {
            self.checker
                .lock()
                .unwrap()
                .event(format!("link {a}-{b} cut"));
        }
    }

    fn heal_all(&mut self) {
        self.net.0.lock().unwrap().cut.clear();
    }

    async fn chaos(&mut self) {
        let i = self.rng.below(COORDINATORS) as usize;
        match self.rng.below(10) {
            0 | 1 => self.crash(i).await,
            2..=4 => self.start(i).await,
            5 => {
                // A coordinator cut off from everyone: the others elect another.
                let id = self.nodes[i].id;
                let all: Vec<u64> = (1..=COORDINATORS).chain(WORKERS).collect();
                for other in all.into_iter().filter(|o| *o != id) {
                    self.cut(id, other);
                }
            }
            6 => {
                let a = self.rng.range(1, COORDINATORS);
                let b = self.rng.range(1, COORDINATORS);
                if a != b {
                    self.cut(a, b);
                }
            }
            7 => {
                let w = WORKERS[self.rng.below(WORKERS.len() as u64) as usize];
                match self.rng.chance(0.3) {
                    // The worker dies with its tasks, and another takes its place.
                    true => {
                        self.running.lock().unwrap().retain(|r| r.0 != w);
                        self.checker
                            .lock()
                            .unwrap()
                            .event(format!("worker {w} restarts"));
                    }
                    false => self.cut(self.nodes[i].id, w),
                }
            }
            _ => {
                self.heal_all();
                self.checker
                    .lock()
                    .unwrap()
                    .event("every link healed".into());
            }
        }
    }

    /// The client submits a job to a coordinator of its choosing.
    fn submit(&mut self) {
        let i = self.rng.below(COORDINATORS) as usize;
        let Some(up) = &self.nodes[i].up else { return };
        let spec = Spec {
            tasks: self.rng.range(1, 6) as u32,
            salt: self.rng.next_u64(),
        };
        let (replica, model) = (up.replica.clone(), up.model.clone());
        let term = model.led_term();
        if term == 0 {
            return;
        }
        let now = self.now();
        tokio::spawn(async move {
            let command = MetaCommand::JobSubmitted {
                name: format!("job {}", spec.salt),
                tenant: "sim".into(),
                submitted_ms: now,
                planned: spec.encode(),
                request: 0,
            };
            let written = replica.write(command).await;
            let mut m = model.0.lock().unwrap();
            if m.crashed {
                return;
            }
            match written {
                Ok(applied) => {
                    let job = applied.job.expect("a submission allocates a job id");
                    let node = m.node;
                    let mut c = m.checker.lock().unwrap();
                    c.event(format!("job {} acknowledged by coordinator {node}", job.0));
                    c.acked.insert(job, spec);
                    drop(c);
                    if m.led_term == term {
                        m.jobs.entry(job).or_insert_with(|| ModelState::run(spec));
                    }
                }
                Err(WriteError::NotLeader) | Err(WriteError::Unknown(_)) => m.deposed(),
            }
        });
    }

    /// Every leader hands out tasks not assigned or not heard of in time, and commits
    /// the end of jobs whose tasks are all done.
    fn schedule(&mut self) {
        let now = self.now();
        for node in &self.nodes {
            let Some(up) = &node.up else { continue };
            let mut m = up.model.0.lock().unwrap();
            let term = m.led_term;
            if term == 0 {
                continue;
            }
            let mut sends = Vec::new();
            let mut ends = Vec::new();
            let mut next_attempt = m.next_attempt;
            for (job, run) in &mut m.jobs {
                if run.done.len() as u32 == run.spec.tasks {
                    if !run.ending {
                        run.ending = true;
                        ends.push((*job, run.done.values().sum::<u64>()));
                    }
                    continue;
                }
                for task in 0..run.spec.tasks {
                    let due = match run.assigned.get(&task) {
                        _ if run.done.contains_key(&task) => false,
                        Some((_, at)) => now >= at + REASSIGN_MS,
                        None => true,
                    };
                    if due {
                        run.assigned.insert(task, (next_attempt, now));
                        sends.push((*job, task, run.spec, next_attempt));
                        next_attempt += 1;
                    }
                }
            }
            m.next_attempt = next_attempt;
            let checker = m.checker.clone();
            drop(m);
            for (job, task, spec, attempt) in sends {
                let id = {
                    let mut c = checker.lock().unwrap();
                    c.assignments.push((node.id, term));
                    c.assignments.len() - 1
                };
                let a = Assignment {
                    coordinator: node.id,
                    term,
                    attempt,
                    id,
                    job,
                    task,
                    spec,
                };
                let worker = WORKERS[self.rng.below(WORKERS.len() as u64) as usize];
                let (net, delay) = (self.net.clone(), self.net.delay());
                let finish = now + delay.as_millis() as u64 + self.rng.range(50, 1_500);
                let running = self.running.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if net.linked(a.coordinator, worker) {
                        running.lock().unwrap().push((worker, a, finish));
                    }
                });
            }
            for (job, answer) in ends {
                let (replica, model) = (up.replica.clone(), up.model.clone());
                let node_id = node.id;
                tokio::spawn(async move {
                    let command = MetaCommand::JobEnded {
                        job,
                        end: JobEnd::Succeeded,
                        ended_ms: now,
                        record: answer.to_le_bytes().to_vec(),
                    };
                    let written = replica.write(command).await;
                    let mut m = model.0.lock().unwrap();
                    if m.crashed {
                        return;
                    }
                    match written {
                        Ok(_) => {
                            m.jobs.remove(&job);
                            let mut c = m.checker.lock().unwrap();
                            c.event(format!(
                                "job {} answered {answer} by coordinator {node_id} in term {term}",
                                job.0
                            ));
                            if let Some(first) = c.answered.insert(job, answer) {
                                c.violation(format!(
                                    "job {} answered twice: {first}, then {answer}",
                                    job.0
                                ));
                            }
                            let right = c.acked.get(&job).map(|spec| spec.answer());
                            if let Some(right) = right.filter(|r| *r != answer) {
                                c.violation(format!(
                                    "job {} answered {answer}, not {right}",
                                    job.0
                                ));
                            }
                        }
                        Err(_) => m.deposed(),
                    }
                });
            }
        }
    }
}

impl World {
    /// Workers report the tasks that finished to the coordinator that assigned them.
    fn work(&mut self) {
        let now = self.now();
        let finished: Vec<(u64, Assignment, u64)> = {
            let mut running = self.running.lock().unwrap();
            let (done, rest) = running.drain(..).partition(|r| r.2 <= now);
            *running = rest;
            done
        };
        for (worker, a, _) in finished {
            let (net, models, delay) = (self.net.clone(), self.models.clone(), self.net.delay());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let model = models.lock().unwrap().get(&a.coordinator).cloned();
                if let Some(model) = model.filter(|_| net.linked(worker, a.coordinator)) {
                    model.result(a, a.spec.value(a.task));
                }
            });
        }
    }

    /// Checks what Raft reports: one leader per term.
    fn observe(&mut self) {
        for node in &self.nodes {
            let Some(up) = &node.up else { continue };
            let m = up.replica.raft().metrics().borrow().clone();
            if m.state == ServerState::Leader {
                self.checker
                    .lock()
                    .unwrap()
                    .led(m.current_term, node.id, "Raft's metrics");
            }
        }
    }

    async fn tick(&mut self) {
        tokio::time::sleep(Duration::from_millis(TICK_MS)).await;
        self.now_ms = self.epoch.elapsed().as_millis() as u64;
        self.checker.lock().unwrap().now_ms = self.now_ms;
        self.observe();
        self.work();
        self.schedule();
    }

    /// Whether every acknowledged job has ended in every coordinator's metadata, and
    /// the coordinators agree on it all.
    fn settled(&self) -> bool {
        let images: Vec<MetaImage> = (self.nodes.iter())
            .filter_map(|n| n.up.as_ref().map(|u| u.replica.metadata()))
            .collect();
        let c = self.checker.lock().unwrap();
        images.len() == self.nodes.len()
            && images.windows(2).all(|w| w[0] == w[1])
            && c.acked
                .keys()
                .all(|job| (images[0].jobs.iter()).any(|(id, j)| id == job && j.ended.is_some()))
    }

    /// The final checks on the settled metadata.
    fn check_end(&self) {
        let image = self.nodes[0].up.as_ref().expect("up").replica.metadata();
        let mut c = self.checker.lock().unwrap();
        let acked = c.acked.clone();
        for (job, spec) in acked {
            let found = image.jobs.iter().find(|(id, _)| *id == job);
            match found.and_then(|(_, j)| j.ended.clone().map(|e| (e.0, j.record.clone()))) {
                Some((JobEnd::Succeeded, record)) if record == spec.answer().to_le_bytes() => {}
                other => c.violation(format!(
                    "job {} acknowledged but its metadata says {other:?}, not an answer of {}",
                    job.0,
                    spec.answer()
                )),
            }
        }
    }
}

/// What a run found.
struct Outcome {
    violations: Vec<String>,
    trace: Vec<String>,
    acked: usize,
    accepted: u64,
    refused_stale: u64,
    terms: usize,
}

fn scratch() -> PathBuf {
    // tmpfs where there is one: fsync there costs nothing, and the runs are many.
    match Path::new("/dev/shm").is_dir() {
        true => PathBuf::from("/dev/shm"),
        false => std::env::temp_dir(),
    }
}

fn run(seed: u64) -> Outcome {
    let dir = tempfile::Builder::new()
        .prefix("drove-raft-sim")
        .tempdir_in(scratch())
        .expect("a scratch directory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let outcome = rt.block_on(async {
        replica::seed_elections(seed ^ 0xE1EC_7104);
        let checker: Shared = Arc::default();
        let peers = (1..=COORDINATORS)
            .map(|id| (id, format!("coordinator-{id}:7070")))
            .collect();
        let mut world = World {
            rng: Rng(seed),
            net: Net(Arc::new(Mutex::new(NetState {
                rafts: BTreeMap::new(),
                cut: BTreeSet::new(),
                rng: Rng(seed.wrapping_mul(31).wrapping_add(7)),
            }))),
            checker: checker.clone(),
            nodes: (1..=COORDINATORS)
                .map(|id| Node {
                    id,
                    dir: dir.path().join(format!("c{id}")),
                    up: None,
                    gone: Weak::new(),
                })
                .collect(),
            models: Arc::default(),
            running: Arc::default(),
            peers,
            epoch: tokio::time::Instant::now(),
            now_ms: 0,
            starts: 0,
        };
        for n in &world.nodes {
            std::fs::create_dir_all(&n.dir).expect("a data directory");
        }
        for i in 0..world.nodes.len() {
            world.start(i).await;
        }
        while world.now_ms < CHAOS_MS && checker.lock().unwrap().violations.is_empty() {
            if world.rng.chance(0.04) {
                world.chaos().await;
            }
            if world.rng.chance(0.2) {
                world.submit();
            }
            world.tick().await;
        }
        // No more faults: every coordinator comes back, every link heals.
        world.heal_all();
        checker.lock().unwrap().event("faults end".into());
        for i in 0..world.nodes.len() {
            world.start(i).await;
        }
        while world.now_ms < END_MS
            && !world.settled()
            && checker.lock().unwrap().violations.is_empty()
        {
            for i in 0..world.nodes.len() {
                world.start(i).await;
            }
            world.tick().await;
        }
        if world.settled() {
            world.check_end();
        } else {
            let mut c = checker.lock().unwrap();
            if c.violations.is_empty() {
                let unended: Vec<u64> = c
                    .acked
                    .keys()
                    .filter(|j| !c.answered.contains_key(j))
                    .map(|j| j.0)
                    .collect();
                c.violation(format!(
                    "not settled {} s after the faults ended: acknowledged jobs without an answer {unended:?}, or coordinators that disagree",
                    (END_MS - CHAOS_MS) / 1_000
                ));
            }
        }
        for i in 0..world.nodes.len() {
            world.crash(i).await;
        }
        let mut c = checker.lock().unwrap();
        Outcome {
            violations: std::mem::take(&mut c.violations),
            trace: std::mem::take(&mut c.trace),
            acked: c.acked.len(),
            accepted: c.accepted,
            refused_stale: c.refused_stale,
            terms: c.leaders.len(),
        }
    });
    // What the run left running (writes awaiting a stopped Raft) goes with it.
    drop(rt);
    outcome
}

fn seeds() -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().map(|v| v.parse::<u64>());
    match (var("DROVE_RAFT_SIM_SEED"), var("DROVE_RAFT_SIM_SEEDS")) {
        (Some(seed), _) => vec![seed.expect("DROVE_RAFT_SIM_SEED is a whole number")],
        (None, Some(n)) => (0..n.expect("DROVE_RAFT_SIM_SEEDS is a whole number")).collect(),
        (None, None) => (0..200).collect(),
    }
}

#[test]
fn replicated_coordinators_keep_their_invariants_under_faults() {
    let seeds = seeds();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = Arc::new(Mutex::new(seeds.clone().into_iter()));
    let results: Vec<(u64, Outcome)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let next = next.clone();
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let seed = next.lock().unwrap().next();
                        let Some(seed) = seed else { break done };
                        let outcome = run(seed);
                        let failed = !outcome.violations.is_empty();
                        done.push((seed, outcome));
                        if failed {
                            break done;
                        }
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread"))
            .collect()
    });
    let (mut acked, mut accepted, mut refused, mut terms) = (0, 0, 0, 0);
    for (seed, outcome) in &results {
        if !outcome.violations.is_empty() {
            let tail = outcome.trace.len().saturating_sub(60);
            panic!(
                "seed {seed}: {}\nreplay with DROVE_RAFT_SIM_SEED={seed}; the run's last events:\n{}",
                outcome.violations.join("; "),
                outcome.trace[tail..].join("\n")
            );
        }
        acked += outcome.acked;
        accepted += outcome.accepted;
        refused += outcome.refused_stale;
        terms += outcome.terms;
    }
    eprintln!(
        "{} seeds: {acked} jobs acknowledged and answered, {terms} terms, {accepted} results accepted, {refused} refused as from another term",
        results.len()
    );
    assert_eq!(results.len(), seeds.len());
    if seeds.len() >= 50 {
        // The faults did their work: the runs changed leaders and fenced results.
        assert!(acked > 0 && terms > results.len() && refused > 0);
    }
}

#[test]
fn a_seed_replays_the_same_run() {
    let first = run(11);
    let again = run(11);
    assert!(first.violations.is_empty(), "{:?}", first.violations);
    assert_eq!(first.trace, again.trace, "the same seed ran differently");
}
