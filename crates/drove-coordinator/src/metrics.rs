//! The coordinator's Prometheus metrics, kept and encoded by prometheus-client
//! (OpenMetrics text). Counters and the task-duration histogram change as events
//! arrive; gauges are set from the cluster's state when `/metrics` is scraped.

use std::sync::atomic::AtomicU64;

use drove_proto as pb;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds of the task run-time histogram, in seconds.
const TASK_SECONDS_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0];

/// How long the coordinator's state takes over a request or event: microseconds when all is well.
const STATE_SECONDS_BUCKETS: [f64; 8] = [1e-5, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.5, 1.0];

/// How long writing one metadata entry to disk takes (with its fsync).
const META_WRITE_SECONDS_BUCKETS: [f64; 8] = [1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 1.0];

/// The job states a job ends in, as the metrics label them.
const ENDED_STATES: [&str; 3] = ["succeeded", "failed", "cancelled"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabel {
    worker: u64,
}

type PerWorker = Family<WorkerLabel, Gauge>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabel {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabel {
    replica: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LocalityLabel {
    locality: &'static str,
}

/// How a worker's status gives a gauge's value.
type WorkerValue = fn(&pb::WorkerStatus) -> u64;

/// The per-worker gauges: name, help, and the value a worker's status gives.
const WORKER_GAUGES: [(&str, &str, WorkerValue); 9] = [
    ("worker_slots", "Task slots per worker.", |w| {
        u64::from(w.slots)
    }),
    (
        "worker_running_tasks",
        "Attempts running per worker.",
        |w| u64::from(w.running_tasks),
    ),
    (
        "worker_block_bytes",
        "Bytes of shuffle blocks held in memory per worker.",
        |w| w.block_bytes,
    ),
    (
        "worker_memory_budget_bytes",
        "Each worker's memory budget.",
        |w| w.memory.unwrap_or_default().budget_bytes,
    ),
    (
        "worker_memory_execution_bytes",
        "Bytes the running tasks' operators hold per worker.",
        |w| w.memory.unwrap_or_default().execution_bytes,
    ),
    (
        "worker_memory_peak_bytes",
        "The most memory blocks and operators have held at once per worker.",
        |w| w.memory.unwrap_or_default().peak_bytes,
    ),
    (
        "worker_spill_disk_bytes",
        "Bytes of spilled data on disk now per worker.",
        |w| w.memory.unwrap_or_default().disk_bytes,
    ),
    (
        "worker_fs_bytes",
        "Bytes of drove fs chunks each worker keeps in its --data-dir.",
        |w| w.chunk_bytes,
    ),
    (
        "worker_fs_capacity_bytes",
        "Each worker's --data-max for drove fs chunks (0: no limit but its disk's).",
        |w| w.chunk_capacity_bytes,
    ),
];

/// What the gauges show, read from the coordinator's state at a scrape.
pub struct Snapshot<'a> {
    /// Jobs in the history by state name (running, succeeded, failed, cancelled).
    pub jobs_by_state: [(&'static str, usize); 4],
    pub tasks_pending: u64,
    pub tasks_running: u64,
    pub workers: &'a [pb::WorkerStatus],
    /// Tenants with running jobs or attempts on workers.
    pub tenants: &'a [pb::TenantUsage],
    /// Requests and events waiting for the coordinator's state.
    pub queued: usize,
    /// The metadata log's last entry, and the last its snapshot holds (0 without a
    /// data directory).
    pub meta_log_index: u64,
    pub meta_snapshot_index: u64,
    /// With `--peers`: the Raft term, whether this coordinator leads, and its log's
    /// last entry and last applied one (all 0 otherwise).
    pub raft_term: u64,
    pub raft_leader: bool,
    pub raft_last_log_index: u64,
    pub raft_applied_index: u64,
    /// drove fs chunks below their replication factor, and those with no live replica.
    pub fs_chunks_under_replicated: usize,
    pub fs_chunks_missing: usize,
}

pub struct Metrics {
    registry: Registry,
    jobs_submitted: Counter,
    jobs_ended: Family<StateLabel, Counter>,
    tasks_completed: Counter,
    attempts_failed: Counter,
    attempts_speculative: Counter,
    task_duration: Histogram,
    state_held: Histogram,
    state_queued: Gauge,
    meta_write: Histogram,
    meta_log_index: Gauge,
    meta_snapshot_index: Gauge,
    raft_term: Gauge,
    raft_leader: Gauge,
    raft_last_log_index: Gauge,
    raft_apply_lag: Gauge,
    raft_leads: Counter,
    shuffle_write_bytes: Counter,
    shuffle_remote_read_bytes: Counter,
    jobs: Family<StateLabel, Gauge>,
    tasks: Family<StateLabel, Gauge>,
    workers: Gauge,
    /// One family per entry of [`WORKER_GAUGES`], in its order.
    worker_gauges: [PerWorker; WORKER_GAUGES.len()],
    /// Totals each worker reports; reset and set again at every scrape.
    worker_spilled_bytes: Family<WorkerLabel, Counter>,
    worker_spills: Family<WorkerLabel, Counter>,
    worker_heartbeat_age: Family<WorkerLabel, Gauge<f64, AtomicU64>>,
    tenant_attempts: Family<TenantLabel, Gauge>,
    tenant_jobs_running: Family<TenantLabel, Gauge>,
    tenant_cached_bytes: Family<TenantLabel, Gauge>,
    fs_under_replicated: Gauge,
    fs_missing: Gauge,
    fs_corrupt: Counter,
    fs_copies: Counter,
    fs_read: Family<ReplicaLabel, Counter>,
    task_locality: Family<LocalityLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("drove");
        let m = Metrics {
            jobs_submitted: Counter::default(),
            jobs_ended: Family::default(),
            tasks_completed: Counter::default(),
            attempts_failed: Counter::default(),
            attempts_speculative: Counter::default(),
            task_duration: Histogram::new(TASK_SECONDS_BUCKETS),
            state_held: Histogram::new(STATE_SECONDS_BUCKETS),
            state_queued: Gauge::default(),
            meta_write: Histogram::new(META_WRITE_SECONDS_BUCKETS),
            meta_log_index: Gauge::default(),
            meta_snapshot_index: Gauge::default(),
            raft_term: Gauge::default(),
            raft_leader: Gauge::default(),
            raft_last_log_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            raft_leads: Counter::default(),
            shuffle_write_bytes: Counter::default(),
            shuffle_remote_read_bytes: Counter::default(),
            jobs: Family::default(),
            tasks: Family::default(),
            workers: Gauge::default(),
            worker_gauges: Default::default(),
            worker_spilled_bytes: Family::default(),
            worker_spills: Family::default(),
            worker_heartbeat_age: Family::default(),
            tenant_attempts: Family::default(),
            tenant_jobs_running: Family::default(),
            tenant_cached_bytes: Family::default(),
            fs_under_replicated: Gauge::default(),
            fs_missing: Gauge::default(),
            fs_corrupt: Counter::default(),
            fs_copies: Counter::default(),
            fs_read: Family::default(),
            task_locality: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "fs_chunks_under_replicated",
            "drove fs chunks with fewer live replicas than their replication factor (or than there are workers).",
            m.fs_under_replicated.clone(),
        );
        r.register(
            "fs_chunks_missing",
            "drove fs chunks with no live replica: their files cannot be read until a worker that holds them returns.",
            m.fs_missing.clone(),
        );
        r.register(
            "fs_corrupt_replicas",
            "Corrupt drove fs chunk replicas workers found (on a read or a scrub) and removed.",
            m.fs_corrupt.clone(),
        );
        r.register(
            "fs_read_bytes",
            "Bytes of drove fs files tasks read, by where the replica was: the task's own worker (local) or another (remote).",
            m.fs_read.clone(),
        );
        for replica in ["local", "remote"] {
            let _ = m.fs_read.get_or_create(&ReplicaLabel { replica });
        }
        r.register(
            "task_locality",
            "Attempts of tasks that scan drove fs files, by where they ran: on a worker holding the most of their data (node), in its zone (zone), or elsewhere (remote).",
            m.task_locality.clone(),
        );
        for locality in ["node", "zone", "remote"] {
            let _ = m.task_locality.get_or_create(&LocalityLabel { locality });
        }
        r.register(
            "fs_chunk_copies",
            "Copies of under-replicated drove fs chunks the coordinator asked for.",
            m.fs_copies.clone(),
        );
        r.register(
            "jobs_submitted",
            "Jobs submitted.",
            m.jobs_submitted.clone(),
        );
        r.register(
            "jobs_ended",
            "Jobs ended, by final state.",
            m.jobs_ended.clone(),
        );
        r.register("jobs", "Jobs in the history, by state.", m.jobs.clone());
        r.register(
            "tenant_attempts",
            "Attempts each tenant holds on workers (running, or queued behind a slot).",
            m.tenant_attempts.clone(),
        );
        r.register(
            "tenant_jobs_running",
            "Running jobs of each tenant.",
            m.tenant_jobs_running.clone(),
        );
        r.register_with_unit(
            "tenant_cached",
            "Memory each tenant's cached tables hold.",
            Unit::Bytes,
            m.tenant_cached_bytes.clone(),
        );
        r.register("tasks", "Tasks of running jobs, by state.", m.tasks.clone());
        r.register(
            "tasks_completed",
            "Task completions the scheduler accepted.",
            m.tasks_completed.clone(),
        );
        r.register(
            "task_attempts_failed",
            "Attempts that failed and were retried or failed their job (retries).",
            m.attempts_failed.clone(),
        );
        r.register(
            "task_attempts_speculative",
            "Speculative twins launched for slow tasks.",
            m.attempts_speculative.clone(),
        );
        r.register_with_unit(
            "task_duration",
            "Run time of completed tasks.",
            Unit::Seconds,
            m.task_duration.clone(),
        );
        r.register_with_unit(
            "coordinator_state_held",
            "How long the coordinator's state took over each request or event (its owner does one at a time).",
            Unit::Seconds,
            m.state_held.clone(),
        );
        r.register(
            "coordinator_state_queued",
            "Requests and events waiting for the coordinator's state.",
            m.state_queued.clone(),
        );
        r.register_with_unit(
            "metadata_write",
            "How long writing one metadata entry to the data directory took, fsync included.",
            Unit::Seconds,
            m.meta_write.clone(),
        );
        r.register(
            "metadata_log_index",
            "The metadata log's last entry (0 without a data directory).",
            m.meta_log_index.clone(),
        );
        r.register(
            "metadata_snapshot_index",
            "The last metadata entry the snapshot holds.",
            m.meta_snapshot_index.clone(),
        );
        r.register(
            "raft_term",
            "The Raft term this coordinator is in: each election starts a new one (0 without --peers).",
            m.raft_term.clone(),
        );
        r.register(
            "raft_leader",
            "1 while this coordinator leads, else 0.",
            m.raft_leader.clone(),
        );
        r.register(
            "raft_last_log_index",
            "The last entry of this coordinator's Raft log.",
            m.raft_last_log_index.clone(),
        );
        r.register(
            "raft_apply_lag",
            "Entries of this coordinator's Raft log not yet applied to its metadata.",
            m.raft_apply_lag.clone(),
        );
        r.register(
            "raft_leads",
            "Times this coordinator was elected and took the lead.",
            m.raft_leads.clone(),
        );
        r.register(
            "shuffle_write_bytes",
            "Bytes completed tasks wrote as blocks.",
            m.shuffle_write_bytes.clone(),
        );
        r.register(
            "shuffle_remote_read_bytes",
            "Shuffle bytes completed tasks fetched from other workers.",
            m.shuffle_remote_read_bytes.clone(),
        );
        r.register("workers", "Registered workers.", m.workers.clone());
        for ((name, help, _), family) in WORKER_GAUGES.iter().zip(&m.worker_gauges) {
            r.register(*name, *help, family.clone());
        }
        r.register(
            "worker_spilled_bytes",
            "Bytes spilled to disk per worker since it started.",
            m.worker_spilled_bytes.clone(),
        );
        r.register(
            "worker_spills",
            "Spills per worker since it started.",
            m.worker_spills.clone(),
        );
        r.register_with_unit(
            "worker_heartbeat_age",
            "Time since each worker's last heartbeat.",
            Unit::Seconds,
            m.worker_heartbeat_age.clone(),
        );
        // Ended states show from the start, at zero.
        for state in ENDED_STATES {
            let _ = m.jobs_ended.get_or_create(&StateLabel { state });
        }
        Metrics { registry: r, ..m }
    }

    pub fn state_held(&self, held: std::time::Duration) {
        self.state_held.observe(held.as_secs_f64());
    }

    pub fn job_submitted(&self) {
        self.jobs_submitted.inc();
    }

    /// A job ended in `state` (succeeded, failed or cancelled).
    pub fn job_ended(&self, state: &'static str) {
        self.jobs_ended.get_or_create(&StateLabel { state }).inc();
    }

    pub fn attempts_failed(&self, n: u64) {
        self.attempts_failed.inc_by(n);
    }

    pub fn attempt_speculative(&self) {
        self.attempts_speculative.inc();
    }

    /// A task completion the scheduler accepted.
    pub fn task_completed(&self, elapsed_ms: u64, output_bytes: u64, remote_read_bytes: u64) {
        self.tasks_completed.inc();
        self.task_duration.observe(elapsed_ms as f64 / 1000.0);
        self.shuffle_write_bytes.inc_by(output_bytes);
        self.shuffle_remote_read_bytes.inc_by(remote_read_bytes);
    }

    /// Shuffle bytes written and read remotely so far.
    pub fn shuffle_bytes_total(&self) -> u64 {
        self.shuffle_write_bytes.get() + self.shuffle_remote_read_bytes.get()
    }

    /// Sets the gauges from `now` and encodes every metric as OpenMetrics text.
    /// This coordinator was elected and took the lead.
    pub fn lead_taken(&self) {
        self.raft_leads.inc();
    }

    /// Workers found `n` corrupt drove fs replicas.
    pub fn fs_corrupt_found(&self, n: u64) {
        self.fs_corrupt.inc_by(n);
    }

    /// An attempt of a task that scans drove fs files launched at this locality.
    pub fn task_locality(&self, locality: &'static str) {
        self.task_locality
            .get_or_create(&LocalityLabel { locality })
            .inc();
    }

    /// A worker's tasks read drove fs bytes from its own replicas and from others'.
    pub fn fs_read(&self, local: u64, remote: u64) {
        for (replica, n) in [("local", local), ("remote", remote)] {
            self.fs_read
                .get_or_create(&ReplicaLabel { replica })
                .inc_by(n);
        }
    }

    /// The coordinator asked for a copy of an under-replicated chunk.
    pub fn fs_copy_asked(&self) {
        self.fs_copies.inc();
    }

    /// A metadata entry took `elapsed` to write and sync.
    pub fn meta_written(&self, elapsed: std::time::Duration) {
        self.meta_write.observe(elapsed.as_secs_f64());
    }

    pub fn encode(&self, now: &Snapshot<'_>) -> String {
        for (state, n) in now.jobs_by_state {
            self.jobs.get_or_create(&StateLabel { state }).set(n as i64);
        }
        for (state, n) in [
            ("pending", now.tasks_pending),
            ("running", now.tasks_running),
        ] {
            self.tasks
                .get_or_create(&StateLabel { state })
                .set(n as i64);
        }
        self.workers.set(now.workers.len() as i64);
        self.state_queued.set(now.queued as i64);
        self.fs_under_replicated
            .set(now.fs_chunks_under_replicated as i64);
        self.fs_missing.set(now.fs_chunks_missing as i64);
        self.meta_log_index
            .set(i64::try_from(now.meta_log_index).unwrap_or(i64::MAX));
        self.meta_snapshot_index
            .set(i64::try_from(now.meta_snapshot_index).unwrap_or(i64::MAX));
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.raft_term.set(gauge(now.raft_term));
        self.raft_leader.set(i64::from(now.raft_leader));
        self.raft_last_log_index.set(gauge(now.raft_last_log_index));
        (self.raft_apply_lag).set(gauge(
            now.raft_last_log_index
                .saturating_sub(now.raft_applied_index),
        ));
        // Workers that left go from every per-worker family.
        for family in &self.worker_gauges {
            family.clear();
        }
        self.worker_spilled_bytes.clear();
        self.worker_spills.clear();
        self.worker_heartbeat_age.clear();
        self.tenant_attempts.clear();
        self.tenant_jobs_running.clear();
        self.tenant_cached_bytes.clear();
        for t in now.tenants {
            let label = TenantLabel {
                tenant: t.tenant.clone(),
            };
            (self.tenant_attempts.get_or_create(&label)).set(i64::from(t.attempts));
            (self.tenant_jobs_running.get_or_create(&label)).set(i64::from(t.running_jobs));
            (self.tenant_cached_bytes.get_or_create(&label))
                .set(i64::try_from(t.cached_bytes).unwrap_or(i64::MAX));
        }
        for w in now.workers {
            let label = WorkerLabel {
                worker: w.worker_id,
            };
            for ((_, _, value), family) in WORKER_GAUGES.iter().zip(&self.worker_gauges) {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(value(w)).unwrap_or(i64::MAX));
            }
            let memory = w.memory.unwrap_or_default();
            self.worker_spilled_bytes
                .get_or_create(&label)
                .inc_by(memory.spilled_bytes_total);
            self.worker_spills
                .get_or_create(&label)
                .inc_by(memory.spill_count);
            self.worker_heartbeat_age
                .get_or_create(&label)
                .set(w.heartbeat_age_ms as f64 / 1000.0);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_workers_that_left() {
        let m = Metrics::new();
        m.job_submitted();
        m.job_ended("succeeded");
        m.task_completed(30, 100, 40);
        m.task_completed(2_000, 1, 0);
        let worker = |id| pb::WorkerStatus {
            worker_id: id,
            slots: 4,
            heartbeat_age_ms: 1_500,
            ..Default::default()
        };
        let two = [worker(1), worker(2)];
        let text = m.encode(&Snapshot {
            jobs_by_state: [
                ("running", 1),
                ("succeeded", 1),
                ("failed", 0),
                ("cancelled", 0),
            ],
            tasks_pending: 3,
            tasks_running: 2,
            workers: &two,
            tenants: &[pb::TenantUsage {
                tenant: "team-a".into(),
                attempts: 3,
                running_jobs: 2,
                weight: 1,
                cached_bytes: 4096,
            }],
            queued: 5,
            meta_log_index: 12,
            meta_snapshot_index: 10,
            raft_term: 3,
            raft_leader: true,
            raft_last_log_index: 14,
            raft_applied_index: 12,
            fs_chunks_under_replicated: 7,
            fs_chunks_missing: 1,
        });
        m.fs_corrupt_found(2);
        m.fs_read(7, 1);
        m.meta_written(std::time::Duration::from_millis(2));
        for line in [
            "drove_jobs_submitted_total 1",
            "drove_jobs_ended_total{state=\"succeeded\"} 1",
            "drove_jobs_ended_total{state=\"failed\"} 0",
            "drove_tasks{state=\"pending\"} 3",
            "drove_tasks_completed_total 2",
            "drove_task_duration_seconds_bucket{le=\"0.05\"} 1",
            "drove_task_duration_seconds_bucket{le=\"2.5\"} 2",
            "drove_task_duration_seconds_count 2",
            "drove_shuffle_write_bytes_total 101",
            "drove_workers 2",
            "drove_coordinator_state_queued 5",
            "drove_metadata_log_index 12",
            "drove_metadata_snapshot_index 10",
            "drove_raft_term 3",
            "drove_raft_leader 1",
            "drove_raft_apply_lag 2",
            "drove_worker_slots{worker=\"2\"} 4",
            "drove_worker_heartbeat_age_seconds{worker=\"1\"} 1.5",
            "drove_tenant_attempts{tenant=\"team-a\"} 3",
            "drove_tenant_jobs_running{tenant=\"team-a\"} 2",
            "drove_tenant_cached_bytes{tenant=\"team-a\"} 4096",
            "drove_fs_chunks_under_replicated 7",
            "drove_fs_chunks_missing 1",
            "# TYPE drove_task_duration_seconds histogram",
        ] {
            assert!(text.lines().any(|l| l == line), "no '{line}' in:\n{text}");
        }
        let one = [worker(2)];
        let text = m.encode(&Snapshot {
            jobs_by_state: [
                ("running", 0),
                ("succeeded", 1),
                ("failed", 0),
                ("cancelled", 0),
            ],
            tasks_pending: 0,
            tasks_running: 0,
            workers: &one,
            tenants: &[],
            queued: 0,
            meta_log_index: 12,
            meta_snapshot_index: 10,
            raft_term: 3,
            raft_leader: true,
            raft_last_log_index: 14,
            raft_applied_index: 12,
            fs_chunks_under_replicated: 0,
            fs_chunks_missing: 0,
        });
        assert!(text.contains("drove_fs_corrupt_replicas_total 2"), "{text}");
        assert!(
            text.contains("drove_fs_read_bytes_total{replica=\"local\"} 7")
                && text.contains("drove_fs_read_bytes_total{replica=\"remote\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("drove_metadata_write_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(!text.contains("worker=\"1\""), "a worker that left: {text}");
        assert!(
            !text.contains("team-a"),
            "a tenant with nothing running: {text}"
        );
        assert!(
            text.contains("drove_worker_slots{worker=\"2\"} 4"),
            "{text}"
        );
        assert!(
            text.contains("drove_worker_spills_total{worker=\"2\"} 0"),
            "{text}"
        );
    }
}
