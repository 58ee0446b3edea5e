//! The REST API under `/api/v1`: its types, its handlers, and the OpenAPI document,
//! which utoipa generates from both. An operation is registered with the router and
//! documented by one and the same `routes!` entry, so the two cannot drift apart.
//!
//! Every object is closed (`deny_unknown_fields` becomes `additionalProperties:
//! false`) and every field is required, so a field added without its type changing is
//! a mismatch the tests and schemathesis report.

use std::sync::OnceLock;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use drove_core::access::Identity;
use drove_core::{JobId, WorkerId};
use drove_proto as pb;
use serde::{Deserialize, Serialize};
use utoipa::openapi::OpenApi;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::Error;
use crate::state::Coordinator;

/// The state of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Unknown,
}

impl JobState {
    pub fn name(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Unknown => "unknown",
        }
    }
}

impl From<pb::JobState> for JobState {
    fn from(state: pb::JobState) -> Self {
        match state {
            pb::JobState::Running => JobState::Running,
            pb::JobState::Succeeded => JobState::Succeeded,
            pb::JobState::Failed => JobState::Failed,
            pb::JobState::Cancelled => JobState::Cancelled,
            pb::JobState::Unspecified => JobState::Unknown,
        }
    }
}

/// Whether a worker takes new tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Active,
    Draining,
}

/// What went wrong, and what to do about it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Error)]
pub struct ApiError {
    pub error: String,
}

/// A worker's memory: its budget, what blocks and operators hold, and what spilled.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub budget_bytes: u64,
    pub block_bytes: u64,
    pub execution_bytes: u64,
    pub peak_bytes: u64,
    pub disk_bytes: u64,
    pub spilled_bytes_total: u64,
    pub spill_count: u64,
}

/// A registered worker.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Worker {
    pub worker_id: u64,
    /// Its lasting identity, kept in its data directory across restarts (its worker id
    /// is new with every session); empty for a worker without one.
    pub node_id: String,
    pub flight_addr: String,
    pub slots: u32,
    pub running_tasks: u32,
    pub heartbeat_age_ms: u64,
    pub state: WorkerState,
    pub block_bytes: u64,
    pub memory: Memory,
}

/// A worker and the last tasks it completed (newest first, at most 1,000).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerDetail {
    pub worker_id: u64,
    /// See [`Worker::node_id`].
    pub node_id: String,
    pub flight_addr: String,
    pub slots: u32,
    pub running_tasks: u32,
    pub heartbeat_age_ms: u64,
    pub state: WorkerState,
    pub block_bytes: u64,
    pub memory: Memory,
    pub tasks: Vec<WorkerTask>,
}

/// A task a worker ran.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerTask {
    pub job_id: u64,
    pub stage_id: u32,
    pub partition: u32,
    pub attempt: u32,
    pub elapsed_ms: u64,
    pub output_bytes: u64,
}

/// A job as the job list shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSummary {
    pub job_id: u64,
    pub name: String,
    /// The tenant that submitted it ("default" on a cluster without authentication).
    pub tenant: String,
    pub state: JobState,
    pub error: String,
    pub elapsed_ms: u64,
    pub submitted_unix_ms: u64,
    /// How many stages it has.
    pub stages: u64,
    pub tasks_total: u32,
    pub tasks_done: u32,
    pub spilled_bytes: u64,
    pub spill_count: u64,
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
    pub locality: TaskLocality,
}

/// Attempts of a job's tasks that scan drove fs files, by where they ran against where
/// their data was.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskLocality {
    /// On a worker that holds the most of the task's data.
    pub node_local: u32,
    /// On a worker in the zone of one that does.
    pub zone_local: u32,
    pub remote: u32,
}

impl From<Option<&pb::TaskLocality>> for TaskLocality {
    fn from(l: Option<&pb::TaskLocality>) -> Self {
        let l = l.copied().unwrap_or_default();
        Self {
            node_local: l.node_local,
            zone_local: l.zone_local,
            remote: l.remote,
        }
    }
}

/// One job: its stages, tasks, attempts, SQL and physical plan.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub job_id: u64,
    pub name: String,
    pub tenant: String,
    pub state: JobState,
    pub error: String,
    pub elapsed_ms: u64,
    pub submitted_unix_ms: u64,
    pub stages: Vec<Stage>,
    pub tasks_total: u32,
    pub tasks_done: u32,
    pub spilled_bytes: u64,
    pub spill_count: u64,
    pub memory_bytes: u64,
    pub peak_memory_bytes: u64,
    pub locality: TaskLocality,
    pub sql: String,
    pub physical_plan: String,
    /// Every attempt launched, running ones included: the job's timeline.
    pub attempts: Vec<Attempt>,
}

/// How an attempt ended, or that it still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttemptOutcome {
    Running,
    Succeeded,
    Failed,
    /// Stopped: its speculative twin finished first, its worker was lost, an input it
    /// needed was lost, or its job ended.
    Stopped,
}

/// One attempt of a task, placed in time from the job's submission.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub stage_id: u32,
    pub partition: u32,
    pub attempt: u32,
    pub worker_id: u64,
    /// Milliseconds from the job's submission to the attempt's launch.
    pub started_ms: u64,
    /// Milliseconds from the job's submission to its end (for a running one: to now).
    pub ended_ms: u64,
    pub outcome: AttemptOutcome,
    /// A twin launched because the first attempt of its task was slow.
    pub speculative: bool,
}

/// A stage of a job, with the tasks that completed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub stage_id: u32,
    pub root: String,
    pub depends_on: Vec<u32>,
    pub tasks_total: u32,
    pub tasks_done: u32,
    pub tasks_running: u32,
    pub attempts_launched: u32,
    pub attempts_failed: u32,
    pub attempts_speculative: u32,
    pub plan: String,
    pub tasks: Vec<Task>,
}

/// A completed task: the attempt that counted, and what it did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub partition: u32,
    pub attempt: u32,
    pub worker_id: u64,
    pub elapsed_ms: u64,
    pub output_rows: u64,
    pub output_bytes: u64,
    pub local_read_bytes: u64,
    pub remote_read_bytes: u64,
    pub spilled_bytes: u64,
    /// It ran more than twice its stage's median time, and by more than 100 ms.
    pub skewed: bool,
}

/// A table cached with `CACHE TABLE`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CachedTable {
    pub name: String,
    pub partitions: u32,
    /// Partitions on a registered worker; the others are computed again when read.
    pub partitions_available: u32,
    pub job_id: u64,
}

/// The cluster at one moment of its recent past.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterSample {
    pub unix_ms: u64,
    /// Task slots of the registered workers.
    pub slots: u32,
    /// Slots running an attempt.
    pub slots_busy: u32,
    /// Bytes that shuffle blocks and operators hold in the workers' memory.
    pub memory_bytes: u64,
    /// Bytes of spilled data on the workers' disks.
    pub spill_disk_bytes: u64,
    pub spilled_bytes_per_second: u64,
    /// Shuffle bytes written and read across the network, per second.
    pub shuffle_bytes_per_second: u64,
}

/// Workers, recent jobs (newest first), cached tables, and the last minutes of the
/// cluster's load (oldest first, a sample a second).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub metadata: Metadata,
    pub workers: Vec<Worker>,
    pub jobs: Vec<JobSummary>,
    pub cached_tables: Vec<CachedTable>,
    /// Tenants with running jobs (those the caller sees), and what they hold.
    pub tenants: Vec<TenantUsage>,
    pub recent: Vec<ClusterSample>,
    pub fs: FsSummary,
}

/// drove fs: the files the workers keep, and how many chunks lack replicas.
#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FsSummary {
    pub files: u64,
    /// The files' bytes, each replica not counted.
    pub bytes: u64,
    pub chunks: u64,
    /// Chunks below their replication factor (they are being copied).
    pub under_replicated: u64,
    /// Chunks with no live replica: their files cannot be read until a worker that
    /// holds them returns.
    pub missing: u64,
}

/// A tenant's use of the cluster now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantUsage {
    pub tenant: String,
    /// Attempts it holds on workers (running, or queued behind a slot).
    pub attempts: u32,
    pub running_jobs: u32,
    /// Its share of slot time against other tenants'.
    pub weight: u32,
    /// Memory its cached tables hold.
    pub cached_bytes: u64,
}

/// Where the coordinator keeps its metadata.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// The cluster's identity: kept in the data directory, new at each start without.
    pub cluster_id: u64,
    /// `single`: one coordinator; with `--peers`, `leader`, `follower`, `candidate`, or
    /// `elected` (elected, and taking over: not scheduling yet).
    pub role: String,
    /// Its data directory (`--data-dir`); empty when the metadata lives in memory only.
    pub data_dir: String,
    /// The last entry written to the metadata log (with `--peers`, applied), and the
    /// last one its snapshot holds.
    pub log_index: u64,
    pub snapshot_index: u64,
    /// With `--peers`: this coordinator's node id and Raft term, and the leader it
    /// knows (0 and empty while none is).
    pub node_id: u64,
    pub term: u64,
    pub leader_id: u64,
    pub leader_addr: String,
    /// On the leader, every coordinator; empty elsewhere.
    pub coordinators: Vec<CoordinatorPeer>,
}

/// A replicated coordinator as the leader sees it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorPeer {
    pub node_id: u64,
    pub addr: String,
    /// `leader` or `follower`.
    pub role: String,
    /// The last log entry known to match the leader's.
    pub matched_index: u64,
}

/// A job's state after a cancel request.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelResult {
    pub job_id: u64,
    pub state: JobState,
}

/// The median run time of a stage's completed tasks, if it has two or more.
fn stage_median_ms(stage: &pb::StageStatus) -> Option<u64> {
    if stage.tasks.len() < 2 {
        return None;
    }
    let mut times: Vec<u64> = stage.tasks.iter().map(|t| t.elapsed_ms).collect();
    let middle = times.len() / 2;
    Some(*times.select_nth_unstable(middle).1)
}

/// Whether a task ran far longer than its stage's median: more than twice it, and by
/// more than 100 ms.
fn skewed(elapsed_ms: u64, median_ms: Option<u64>) -> bool {
    median_ms.is_some_and(|m| elapsed_ms > 2 * m && elapsed_ms > m + 100)
}

impl From<&pb::WorkerStatus> for Worker {
    fn from(w: &pb::WorkerStatus) -> Self {
        let m = w.memory.unwrap_or_default();
        Worker {
            worker_id: w.worker_id,
            node_id: w.node_id.clone(),
            flight_addr: w.flight_addr.clone(),
            slots: w.slots,
            running_tasks: w.running_tasks,
            heartbeat_age_ms: w.heartbeat_age_ms,
            state: if w.draining {
                WorkerState::Draining
            } else {
                WorkerState::Active
            },
            block_bytes: w.block_bytes,
            memory: Memory {
                budget_bytes: m.budget_bytes,
                block_bytes: m.block_bytes,
                execution_bytes: m.execution_bytes,
                peak_bytes: m.peak_bytes,
                disk_bytes: m.disk_bytes,
                spilled_bytes_total: m.spilled_bytes_total,
                spill_count: m.spill_count,
            },
        }
    }
}

fn task_counts(j: &pb::JobStatus) -> (u32, u32) {
    let total = j.stages.iter().map(|s| s.tasks_total).sum();
    let done = j.stages.iter().map(|s| s.tasks_done).sum();
    (total, done)
}

impl From<&pb::JobStatus> for JobSummary {
    fn from(j: &pb::JobStatus) -> Self {
        let (tasks_total, tasks_done) = task_counts(j);
        JobSummary {
            job_id: j.job_id,
            name: j.name.clone(),
            tenant: j.tenant.clone(),
            state: j.state().into(),
            error: j.error.clone(),
            elapsed_ms: j.elapsed_ms,
            submitted_unix_ms: j.submitted_unix_ms,
            stages: j.stages.len() as u64,
            tasks_total,
            tasks_done,
            spilled_bytes: j.spilled_bytes,
            spill_count: j.spill_count,
            memory_bytes: j.memory_bytes,
            peak_memory_bytes: j.peak_memory_bytes,
            locality: j.locality.as_ref().into(),
        }
    }
}

impl From<&pb::StageStatus> for Stage {
    fn from(s: &pb::StageStatus) -> Self {
        let median = stage_median_ms(s);
        Stage {
            stage_id: s.stage_id,
            root: s.root.clone(),
            depends_on: s.depends_on.clone(),
            tasks_total: s.tasks_total,
            tasks_done: s.tasks_done,
            tasks_running: s.tasks_running,
            attempts_launched: s.attempts_launched,
            attempts_failed: s.attempts_failed,
            attempts_speculative: s.attempts_speculative,
            plan: s.plan.clone(),
            tasks: s
                .tasks
                .iter()
                .map(|t| Task {
                    partition: t.partition,
                    attempt: t.attempt,
                    worker_id: t.worker_id,
                    elapsed_ms: t.elapsed_ms,
                    output_rows: t.output_rows,
                    output_bytes: t.output_bytes,
                    local_read_bytes: t.local_read_bytes,
                    remote_read_bytes: t.remote_read_bytes,
                    spilled_bytes: t.spilled_bytes,
                    skewed: skewed(t.elapsed_ms, median),
                })
                .collect(),
        }
    }
}

impl From<drove_core::scheduler::AttemptEnd> for AttemptOutcome {
    fn from(end: drove_core::scheduler::AttemptEnd) -> Self {
        use drove_core::scheduler::AttemptEnd;
        match end {
            AttemptEnd::Succeeded => AttemptOutcome::Succeeded,
            AttemptEnd::Failed => AttemptOutcome::Failed,
            AttemptEnd::Stopped => AttemptOutcome::Stopped,
        }
    }
}

impl Job {
    /// A job from its status and its attempts.
    pub fn new(j: &pb::JobStatus, attempts: Vec<Attempt>) -> Self {
        let (tasks_total, tasks_done) = task_counts(j);
        Job {
            job_id: j.job_id,
            name: j.name.clone(),
            tenant: j.tenant.clone(),
            state: j.state().into(),
            error: j.error.clone(),
            elapsed_ms: j.elapsed_ms,
            submitted_unix_ms: j.submitted_unix_ms,
            stages: j.stages.iter().map(Stage::from).collect(),
            tasks_total,
            tasks_done,
            spilled_bytes: j.spilled_bytes,
            spill_count: j.spill_count,
            memory_bytes: j.memory_bytes,
            peak_memory_bytes: j.peak_memory_bytes,
            locality: j.locality.as_ref().into(),
            sql: j.sql.clone(),
            physical_plan: j.physical_plan.clone(),
            attempts,
        }
    }
}

/// The cluster as `/api/v1/cluster` and the UI's overview show it.
pub async fn cluster_view(coordinator: &Coordinator, who: &Identity) -> Cluster {
    let status = coordinator.cluster_status(who, false).await;
    let m = status.metadata.clone().unwrap_or_default();
    let fs = status.fs.unwrap_or_default();
    Cluster {
        fs: FsSummary {
            files: fs.files,
            bytes: fs.bytes,
            chunks: fs.chunks,
            under_replicated: fs.under_replicated,
            missing: fs.missing,
        },
        metadata: Metadata {
            cluster_id: m.cluster_id,
            role: m.role,
            data_dir: m.data_dir,
            log_index: m.log_index,
            snapshot_index: m.snapshot_index,
            node_id: m.node_id,
            term: m.term,
            leader_id: m.leader_id,
            leader_addr: m.leader_addr,
            coordinators: (m.coordinators.into_iter())
                .map(|c| CoordinatorPeer {
                    node_id: c.node_id,
                    addr: c.addr,
                    role: c.role,
                    matched_index: c.matched_index,
                })
                .collect(),
        },
        workers: status.workers.iter().map(Worker::from).collect(),
        jobs: status.jobs.iter().map(JobSummary::from).collect(),
        cached_tables: status
            .cached_tables
            .iter()
            .map(|t| CachedTable {
                name: t.name.clone(),
                partitions: t.partitions,
                partitions_available: t.partitions_available,
                job_id: t.job_id,
            })
            .collect(),
        tenants: (status.tenants.iter())
            .map(|t| TenantUsage {
                tenant: t.tenant.clone(),
                attempts: t.attempts,
                running_jobs: t.running_jobs,
                weight: t.weight,
                cached_bytes: t.cached_bytes,
            })
            .collect(),
        recent: coordinator.history().await,
    }
}

/// One job as `/api/v1/jobs/{id}` and its UI page show it.
pub async fn job_view(coordinator: &Coordinator, who: &Identity, job: JobId) -> Result<Job, Error> {
    let (status, attempts) = coordinator.status_and_attempts(who, job).await?;
    Ok(Job::new(&status, attempts))
}

/// One worker and the last tasks it completed (see [`crate::state::WORKER_TASKS_KEPT`]); `Err` names a
/// worker that is not registered.
pub async fn worker_view(
    coordinator: &Coordinator,
    who: &Identity,
    id: u64,
) -> Result<WorkerDetail, String> {
    let (w, tasks) = coordinator.worker(who, WorkerId(id)).await.ok_or_else(|| {
        format!(
            "{} is not registered (it may have left or been lost)",
            WorkerId(id)
        )
    })?;
    let Worker {
        worker_id,
        node_id,
        flight_addr,
        slots,
        running_tasks,
        heartbeat_age_ms,
        state,
        block_bytes,
        memory,
    } = Worker::from(&w);
    Ok(WorkerDetail {
        worker_id,
        node_id,
        flight_addr,
        slots,
        running_tasks,
        heartbeat_age_ms,
        state,
        block_bytes,
        memory,
        tasks,
    })
}

/// An error answer: the status and `{"error": message}`.
pub fn api_error(status: StatusCode, message: String) -> Response {
    (status, Json(ApiError { error: message })).into_response()
}

/// The most of a bad path segment that an error message repeats.
const ECHO_CHARS_MAX: usize = 64;

/// A path id as the OpenAPI document describes it: decimal digits only, from 0 to
/// `u64::MAX`. Anything else (a sign, spaces, a segment that is not UTF-8, a number
/// too large) is the reason for a 400.
pub fn parse_id(kind: &str, raw: Result<Path<String>, PathRejection>) -> Result<u64, String> {
    let raw = match raw {
        Ok(Path(raw)) => raw,
        Err(e) => return Err(format!("the {kind} id is not valid: {}", e.body_text())),
    };
    let id = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
        raw.parse::<u64>().ok()
    } else {
        None
    };
    id.ok_or_else(|| {
        let mut shown: String = raw.chars().take(ECHO_CHARS_MAX).collect();
        if shown.len() < raw.len() {
            shown.push_str("...");
        }
        format!(
            "'{shown}' is not a {kind} id; ids are whole numbers from 0 to {}, \
             as /api/v1/{kind}s lists them",
            u64::MAX
        )
    })
}

/// The answer of an operation on the job a path names: 400 for an id that is not
/// one, 404 for a job not in the history.
async fn answer_for_job<T: IntoResponse>(
    raw: Result<Path<String>, PathRejection>,
    answer: impl AsyncFnOnce(JobId) -> Result<T, Error>,
) -> Response {
    let id = match parse_id("job", raw) {
        Ok(id) => id,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    match answer(JobId(id)).await {
        Ok(body) => body.into_response(),
        Err(Error::NotFound(m)) => api_error(StatusCode::NOT_FOUND, m),
        Err(Error::Denied(m)) => api_error(StatusCode::FORBIDDEN, m),
        Err(e @ Error::NotLeader { .. }) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
        Err(other) => api_error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// What every operation may answer besides its own responses.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // only its description is used: handlers answer with `api_error`
enum EveryOperation {
    /// The cluster authenticates clients (it has TLS) and the request carried no
    /// token or client certificate it knows: send `Authorization: Bearer TOKEN`.
    #[response(status = 401)]
    Unauthenticated(ApiError),
    /// A bug in the coordinator (a handler panicked); the message says where.
    #[response(status = 500)]
    Internal(ApiError),
}

/// A path's id, as the document describes it.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // only its description is used: handlers parse the raw segment
struct Id {
    /// The id: decimal digits, from 0 to 18446744073709551615, as the list
    /// operations show it.
    id: u64,
}

/// Workers, recent jobs and cached tables.
#[utoipa::path(get, path = "/api/v1/cluster", responses(
    (status = 200, description = "The cluster.", body = Cluster),
    EveryOperation,
))]
async fn cluster(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
) -> Json<Cluster> {
    Json(cluster_view(&coordinator, &who).await)
}

/// Registered workers.
#[utoipa::path(get, path = "/api/v1/workers", responses(
    (status = 200, description = "The workers.", body = Vec<Worker>),
    EveryOperation,
))]
async fn workers(State(coordinator): State<Coordinator>) -> Json<Vec<Worker>> {
    Json(
        coordinator
            .workers()
            .await
            .iter()
            .map(Worker::from)
            .collect(),
    )
}

/// One worker and the last tasks it completed, newest first.
#[utoipa::path(get, path = "/api/v1/workers/{id}", params(Id), responses(
    (status = 200, description = "The worker.", body = WorkerDetail),
    (status = 400, description = "The id is not a whole number from 0 to 18446744073709551615.", body = ApiError),
    (status = 404, description = "No such worker is registered.", body = ApiError),
    EveryOperation,
))]
async fn worker(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id("worker", raw) {
        Ok(id) => id,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    match worker_view(&coordinator, &who, id).await {
        Ok(detail) => Json(detail).into_response(),
        Err(m) => api_error(StatusCode::NOT_FOUND, m),
    }
}

/// Recent jobs, newest first.
#[utoipa::path(get, path = "/api/v1/jobs", responses(
    (status = 200, description = "The jobs.", body = Vec<JobSummary>),
    EveryOperation,
))]
async fn jobs(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
) -> Json<Vec<JobSummary>> {
    Json(
        coordinator
            .jobs(&who)
            .await
            .iter()
            .map(JobSummary::from)
            .collect(),
    )
}

/// One job: its stages, tasks, attempts, SQL and physical plan.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", params(Id), responses(
    (status = 200, description = "The job.", body = Job),
    (status = 400, description = "The id is not a whole number from 0 to 18446744073709551615.", body = ApiError),
    (status = 404, description = "No such job in the history.", body = ApiError),
    EveryOperation,
))]
async fn job(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    answer_for_job(raw, async |job| {
        Ok(Json(job_view(&coordinator, &who, job).await?))
    })
    .await
}

/// Cancels a running job; an ended job is left as it was.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", params(Id), responses(
    (status = 200, description = "The job's state afterwards.", body = CancelResult),
    (status = 400, description = "The id is not a whole number from 0 to 18446744073709551615.", body = ApiError),
    (status = 403, description = "The request came from another site, or as a form post (see the web surface in README.md); or the caller's role may not cancel jobs.", body = ApiError),
    (status = 404, description = "No such job in the history.", body = ApiError),
    EveryOperation,
))]
async fn cancel(
    State(coordinator): State<Coordinator>,
    Extension(who): Extension<Identity>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    answer_for_job(raw, async |job| {
        let status = coordinator.cancel(&who, job).await?;
        Ok(Json(CancelResult {
            job_id: job.0,
            state: status.state().into(),
        }))
    })
    .await
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses(
    (status = 200, description = "The OpenAPI document of this API.", body = Object),
    EveryOperation,
))]
async fn openapi() -> Json<&'static OpenApi> {
    Json(document())
}

/// The API's routes, each registered together with its documentation.
fn api() -> OpenApiRouter<Coordinator> {
    OpenApiRouter::new()
        .routes(routes!(cluster))
        .routes(routes!(workers))
        .routes(routes!(worker))
        .routes(routes!(jobs))
        .routes(routes!(job))
        .routes(routes!(cancel))
        .routes(routes!(openapi))
}

/// The API's routes, for the HTTP router.
pub fn router() -> axum::Router<Coordinator> {
    api().split_for_parts().0
}

/// The OpenAPI document, generated once from the routes and their types.
pub fn document() -> &'static OpenApi {
    static DOCUMENT: OnceLock<OpenApi> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc = api().split_for_parts().1;
        doc.info.title = "drove coordinator".into();
        doc.info.description = Some(
            "Workers, jobs, stages and tasks of a drove cluster. Served on the coordinator's --http address."
                .into(),
        );
        doc.info.license = None;
        doc.info.contact = None;
        doc
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every schema in the document, with where it is.
    fn schemas(at: String, v: &Value, out: &mut Vec<(String, Value)>) {
        match v {
            Value::Object(m) => {
                if m.contains_key("type") || m.contains_key("$ref") {
                    out.push((at.clone(), v.clone()));
                }
                for (k, sub) in m {
                    schemas(format!("{at}/{k}"), sub, out);
                }
            }
            Value::Array(items) => {
                for (i, sub) in items.iter().enumerate() {
                    schemas(format!("{at}/{i}"), sub, out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn objects_are_closed_and_references_resolve() {
        let doc = serde_json::to_value(document()).unwrap();
        let mut all = Vec::new();
        schemas(String::new(), &doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        let mut closed = 0;
        for (at, schema) in all {
            if schema["type"] == "object" && schema.get("properties").is_some() {
                assert_eq!(schema["additionalProperties"], false, "{at}");
                let required = schema["required"].as_array().unwrap();
                assert_eq!(
                    required.len(),
                    schema["properties"].as_object().unwrap().len(),
                    "{at}: every field is required"
                );
                closed += 1;
            }
            if let Some(r) = schema["$ref"].as_str() {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "{at}: {r} is not defined"
                );
            }
        }
        assert!(closed >= 12, "{closed}");
    }

    #[test]
    fn every_operation_documents_its_errors() {
        let doc = serde_json::to_value(document()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.len(), 7, "{:?}", paths.keys());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let mut codes: Vec<&str> = responses.keys().map(String::as_str).collect();
                codes.sort_unstable();
                let mut expected = if path.contains("{id}") {
                    vec!["200", "400", "401", "404", "500"]
                } else {
                    vec!["200", "401", "500"]
                };
                // A write may be refused as cross-site (see `http::web_surface`),
                // or for the caller's role.
                if method == "post" {
                    expected.insert(3, "403");
                }
                assert_eq!(codes, expected, "{method} {path}");
                for code in ["400", "401", "403", "404", "500"] {
                    if let Some(r) = responses.get(code) {
                        assert_eq!(
                            r["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Error",
                            "{method} {path} {code}"
                        );
                    }
                }
                if path.contains("{id}") {
                    let id = &op["parameters"][0];
                    assert_eq!(id["in"], "path", "{method} {path}");
                    assert_eq!(id["schema"]["minimum"], 0, "{method} {path}");
                }
            }
        }
    }

    #[test]
    fn skew_is_against_the_stage_median() {
        let stage = pb::StageStatus {
            tasks: [10, 20, 30, 500]
                .map(|ms| pb::TaskRun {
                    elapsed_ms: ms,
                    ..Default::default()
                })
                .to_vec(),
            ..Default::default()
        };
        let median = stage_median_ms(&stage);
        assert_eq!(median, Some(30));
        assert!(skewed(500, median));
        assert!(!skewed(30, median));
        assert!(!skewed(500, None));
    }
}
