//! The coordinator's HTTP endpoints: the web UI ([`crate::ui`]), a JSON REST API
//! described by an OpenAPI document, Prometheus metrics and a health check.
//!
//! Every view is built from the same `drove_proto` status messages the gRPC API
//! returns, so the UI, the REST API and `drove status` never disagree.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use drove_core::{JobId, WorkerId};
use drove_proto as pb;
use serde_json::{Value, json};

use crate::state::{Coordinator, TASK_SECONDS_BUCKETS};
use crate::{Error, ui};

/// The HTTP routes.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/", get(ui_overview))
        .route("/jobs/{id}", get(ui_job))
        .route("/workers/{id}", get(ui_worker))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/workers/{id}", get(worker))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{id}", get(job))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .fallback(|| async { api_error(StatusCode::NOT_FOUND, "no such page".into()) })
        // After the routes: it applies to those registered before it. Axum still sets
        // the Allow header.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(coordinator)
        // A panic in a handler is a bug; it fails that request, not the server.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |panic: Box<dyn std::any::Any + Send>| {
                api_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!(
                        "internal error: {}",
                        drove_core::panic_message(panic.as_ref())
                    ),
                )
            },
        ))
}

fn api_error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A request with a method the path does not take: 405 with a JSON error, like every
/// other error of the API, beside the Allow header axum adds.
async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    api_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; the Allow header lists the methods it takes",
            uri.path()
        ),
    )
}

/// The most of a bad path segment that an error message repeats.
const ECHO_CHARS_MAX: usize = 64;

/// A path id as the OpenAPI document describes it: decimal digits only, from 0 to
/// `u64::MAX`. Anything else (a sign, spaces, a segment that is not UTF-8, a number
/// too large) is the reason for a 400.
fn parse_id(kind: &str, raw: Result<Path<String>, PathRejection>) -> Result<u64, String> {
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

fn not_found_or_internal(e: Error) -> Response {
    match e {
        Error::NotFound(m) => api_error(StatusCode::NOT_FOUND, m),
        other => api_error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}

/// The job's state as the API names it.
pub fn state_name(state: pb::JobState) -> &'static str {
    match state {
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::Failed => "failed",
        pb::JobState::Cancelled => "cancelled",
        pb::JobState::Unspecified => "unknown",
    }
}

/// Whether a task ran far longer than its stage's median: more than twice it, and by
/// more than 100 ms.
pub fn skewed(task: &pb::TaskRun, stage: &pb::StageStatus) -> bool {
    let mut times: Vec<u64> = stage.tasks.iter().map(|t| t.elapsed_ms).collect();
    if times.len() < 2 {
        return false;
    }
    times.sort_unstable();
    let median = times[times.len() / 2];
    task.elapsed_ms > 2 * median && task.elapsed_ms > median + 100
}

pub fn worker_json(w: &pb::WorkerStatus) -> Value {
    let memory = w.memory.unwrap_or_default();
    json!({
        "worker_id": w.worker_id,
        "flight_addr": w.flight_addr,
        "slots": w.slots,
        "running_tasks": w.running_tasks,
        "heartbeat_age_ms": w.heartbeat_age_ms,
        "state": if w.draining { "draining" } else { "active" },
        "block_bytes": w.block_bytes,
        "memory": {
            "budget_bytes": memory.budget_bytes,
            "block_bytes": memory.block_bytes,
            "execution_bytes": memory.execution_bytes,
            "peak_bytes": memory.peak_bytes,
            "disk_bytes": memory.disk_bytes,
            "spilled_bytes_total": memory.spilled_bytes_total,
            "spill_count": memory.spill_count,
        },
    })
}

pub fn job_summary_json(j: &pb::JobStatus) -> Value {
    let tasks_total: u32 = j.stages.iter().map(|s| s.tasks_total).sum();
    let tasks_done: u32 = j.stages.iter().map(|s| s.tasks_done).sum();
    json!({
        "job_id": j.job_id,
        "name": j.name,
        "state": state_name(j.state()),
        "error": j.error,
        "elapsed_ms": j.elapsed_ms,
        "submitted_unix_ms": j.submitted_unix_ms,
        "stages": j.stages.len(),
        "tasks_total": tasks_total,
        "tasks_done": tasks_done,
        "spilled_bytes": j.spilled_bytes,
        "spill_count": j.spill_count,
        "memory_bytes": j.memory_bytes,
        "peak_memory_bytes": j.peak_memory_bytes,
    })
}

fn task_json(t: &pb::TaskRun, stage: &pb::StageStatus) -> Value {
    json!({
        "partition": t.partition,
        "attempt": t.attempt,
        "worker_id": t.worker_id,
        "elapsed_ms": t.elapsed_ms,
        "output_rows": t.output_rows,
        "output_bytes": t.output_bytes,
        "local_read_bytes": t.local_read_bytes,
        "remote_read_bytes": t.remote_read_bytes,
        "spilled_bytes": t.spilled_bytes,
        "skewed": skewed(t, stage),
    })
}

pub fn job_json(j: &pb::JobStatus) -> Value {
    let mut v = job_summary_json(j);
    let stages: Vec<Value> = j
        .stages
        .iter()
        .map(|s| {
            json!({
                "stage_id": s.stage_id,
                "root": s.root,
                "depends_on": s.depends_on,
                "tasks_total": s.tasks_total,
                "tasks_done": s.tasks_done,
                "tasks_running": s.tasks_running,
                "attempts_launched": s.attempts_launched,
                "attempts_failed": s.attempts_failed,
                "attempts_speculative": s.attempts_speculative,
                "plan": s.plan,
                "tasks": s.tasks.iter().map(|t| task_json(t, s)).collect::<Vec<_>>(),
            })
        })
        .collect();
    v["stages"] = Value::Array(stages);
    v["sql"] = json!(j.sql);
    v["physical_plan"] = json!(j.physical_plan);
    v
}

/// The tasks a worker ran in the jobs still in the history.
pub fn worker_tasks(worker: u64, jobs: &[pb::JobStatus]) -> Vec<(u64, u32, pb::TaskRun)> {
    let mut tasks = Vec::new();
    for j in jobs {
        for s in &j.stages {
            for t in s.tasks.iter().filter(|t| t.worker_id == worker) {
                tasks.push((j.job_id, s.stage_id, t.clone()));
            }
        }
    }
    tasks
}

async fn cluster(State(coordinator): State<Coordinator>) -> Json<Value> {
    let status = coordinator.cluster_status();
    let workers: Vec<Value> = status.workers.iter().map(worker_json).collect();
    let jobs: Vec<Value> = status.jobs.iter().map(job_summary_json).collect();
    let cached: Vec<Value> = status
        .cached_tables
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "partitions": t.partitions,
                "partitions_available": t.partitions_available,
                "job_id": t.job_id,
            })
        })
        .collect();
    Json(json!({ "workers": workers, "jobs": jobs, "cached_tables": cached }))
}

async fn workers(State(coordinator): State<Coordinator>) -> Json<Value> {
    let status = coordinator.cluster_status();
    Json(Value::Array(
        status.workers.iter().map(worker_json).collect(),
    ))
}

async fn worker(
    State(coordinator): State<Coordinator>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id("worker", raw) {
        Ok(id) => id,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    let status = coordinator.cluster_status();
    let Some(w) = status.workers.iter().find(|w| w.worker_id == id) else {
        return api_error(
            StatusCode::NOT_FOUND,
            format!(
                "{} is not registered (it may have left or been lost)",
                WorkerId(id)
            ),
        );
    };
    let mut v = worker_json(w);
    v["tasks"] = worker_tasks(id, &coordinator.jobs())
        .iter()
        .map(|(job, stage, t)| {
            json!({
                "job_id": job, "stage_id": stage, "partition": t.partition,
                "attempt": t.attempt, "elapsed_ms": t.elapsed_ms,
                "output_bytes": t.output_bytes,
            })
        })
        .collect();
    Json(v).into_response()
}

async fn jobs(State(coordinator): State<Coordinator>) -> Json<Value> {
    Json(Value::Array(
        coordinator.jobs().iter().map(job_summary_json).collect(),
    ))
}

async fn job(
    State(coordinator): State<Coordinator>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id("job", raw) {
        Ok(id) => id,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    match coordinator.status(JobId(id)) {
        Ok(status) => Json(job_json(&status)).into_response(),
        Err(e) => not_found_or_internal(e),
    }
}

/// Cancels a running job; a job that already ended is left as it was.
async fn cancel(
    State(coordinator): State<Coordinator>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let id = match parse_id("job", raw) {
        Ok(id) => id,
        Err(m) => return api_error(StatusCode::BAD_REQUEST, m),
    };
    match coordinator.cancel(JobId(id)) {
        Ok(status) => {
            Json(json!({ "job_id": id, "state": state_name(status.state()) })).into_response()
        }
        Err(e) => not_found_or_internal(e),
    }
}

async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}

/// Prometheus text exposition format, version 0.0.4.
async fn metrics(State(coordinator): State<Coordinator>) -> Response {
    let m = coordinator.metrics();
    let status = coordinator.cluster_status();
    let jobs = &status.jobs;
    let (pending, running) = coordinator.task_gauges();
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let plain = |v: String| vec![(String::new(), v)];
    family(
        "drove_jobs_submitted_total",
        "counter",
        "Jobs submitted.",
        &plain(m.jobs_submitted.to_string()),
    );
    let ended: Vec<(String, String)> = [
        "JOB_STATE_SUCCEEDED",
        "JOB_STATE_FAILED",
        "JOB_STATE_CANCELLED",
    ]
    .iter()
    .map(|s| {
        let label = state_name(pb::JobState::from_str_name(s).unwrap_or_default());
        (
            format!("{{state=\"{label}\"}}"),
            m.jobs_ended.get(s).copied().unwrap_or(0).to_string(),
        )
    })
    .collect();
    family(
        "drove_jobs_ended_total",
        "counter",
        "Jobs ended, by final state.",
        &ended,
    );
    let by_state: Vec<(String, String)> = ["running", "succeeded", "failed", "cancelled"]
        .iter()
        .map(|s| {
            let n = jobs.iter().filter(|j| state_name(j.state()) == *s).count();
            (format!("{{state=\"{s}\"}}"), n.to_string())
        })
        .collect();
    family(
        "drove_jobs",
        "gauge",
        "Jobs in the history, by state.",
        &by_state,
    );
    family(
        "drove_tasks",
        "gauge",
        "Tasks of running jobs, by state.",
        &[
            ("{state=\"pending\"}".into(), pending.to_string()),
            ("{state=\"running\"}".into(), running.to_string()),
        ],
    );
    family(
        "drove_tasks_completed_total",
        "counter",
        "Task completions the scheduler accepted.",
        &plain(m.tasks_completed.to_string()),
    );
    family(
        "drove_task_attempts_failed_total",
        "counter",
        "Attempts that failed and were retried or failed their job (retries).",
        &plain(m.attempts_failed.to_string()),
    );
    family(
        "drove_task_attempts_speculative_total",
        "counter",
        "Speculative twins launched for slow tasks.",
        &plain(m.attempts_speculative.to_string()),
    );
    let mut histogram = Vec::new();
    for (bound, count) in TASK_SECONDS_BUCKETS.iter().zip(&m.task_seconds_buckets) {
        histogram.push((format!("_bucket{{le=\"{bound}\"}}"), count.to_string()));
    }
    histogram.push(("_bucket{le=\"+Inf\"}".into(), m.tasks_completed.to_string()));
    histogram.push(("_sum".into(), format!("{:.3}", m.task_seconds_sum)));
    histogram.push(("_count".into(), m.tasks_completed.to_string()));
    family(
        "drove_task_duration_seconds",
        "histogram",
        "Run time of completed tasks.",
        &histogram,
    );
    family(
        "drove_shuffle_write_bytes_total",
        "counter",
        "Bytes completed tasks wrote as blocks.",
        &plain(m.task_output_bytes.to_string()),
    );
    family(
        "drove_shuffle_remote_read_bytes_total",
        "counter",
        "Shuffle bytes completed tasks fetched from other workers.",
        &plain(m.remote_read_bytes.to_string()),
    );
    family(
        "drove_workers",
        "gauge",
        "Registered workers.",
        &plain(status.workers.len().to_string()),
    );
    let per_worker = |f: &dyn Fn(&pb::WorkerStatus) -> String| -> Vec<(String, String)> {
        status
            .workers
            .iter()
            .map(|w| (format!("{{worker=\"{}\"}}", w.worker_id), f(w)))
            .collect()
    };
    family(
        "drove_worker_slots",
        "gauge",
        "Task slots per worker.",
        &per_worker(&|w| w.slots.to_string()),
    );
    family(
        "drove_worker_running_tasks",
        "gauge",
        "Attempts running per worker.",
        &per_worker(&|w| w.running_tasks.to_string()),
    );
    family(
        "drove_worker_block_bytes",
        "gauge",
        "Bytes of shuffle blocks held in memory per worker.",
        &per_worker(&|w| w.block_bytes.to_string()),
    );
    let memory = |f: fn(&pb::MemoryStats) -> u64| {
        move |w: &pb::WorkerStatus| f(&w.memory.unwrap_or_default()).to_string()
    };
    for (name, kind, help, f) in [
        (
            "drove_worker_memory_budget_bytes",
            "gauge",
            "Each worker's memory budget.",
            memory(|m| m.budget_bytes),
        ),
        (
            "drove_worker_memory_execution_bytes",
            "gauge",
            "Bytes the running tasks' operators hold per worker.",
            memory(|m| m.execution_bytes),
        ),
        (
            "drove_worker_memory_peak_bytes",
            "gauge",
            "The most memory blocks and operators have held at once per worker.",
            memory(|m| m.peak_bytes),
        ),
        (
            "drove_worker_spill_disk_bytes",
            "gauge",
            "Bytes of spilled data on disk now per worker.",
            memory(|m| m.disk_bytes),
        ),
        (
            "drove_worker_spilled_bytes_total",
            "counter",
            "Bytes spilled to disk per worker since it started.",
            memory(|m| m.spilled_bytes_total),
        ),
        (
            "drove_worker_spills_total",
            "counter",
            "Spills per worker since it started.",
            memory(|m| m.spill_count),
        ),
    ] {
        family(name, kind, help, &per_worker(&f));
    }
    family(
        "drove_worker_heartbeat_age_seconds",
        "gauge",
        "Time since each worker's last heartbeat.",
        &per_worker(&|w| format!("{:.3}", w.heartbeat_age_ms as f64 / 1000.0)),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn ui_overview(State(coordinator): State<Coordinator>) -> Html<String> {
    Html(ui::overview(&coordinator.cluster_status()))
}

async fn ui_job(
    State(coordinator): State<Coordinator>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let page = parse_id("job", raw)
        .and_then(|id| coordinator.status(JobId(id)).map_err(|e| e.to_string()));
    match page {
        Ok(status) => Html(ui::job(&status)).into_response(),
        Err(message) => (StatusCode::NOT_FOUND, Html(ui::not_found(&message))).into_response(),
    }
}

async fn ui_worker(
    State(coordinator): State<Coordinator>,
    raw: Result<Path<String>, PathRejection>,
) -> Response {
    let status = coordinator.cluster_status();
    let found = parse_id("worker", raw).and_then(|id| {
        status
            .workers
            .iter()
            .find(|w| w.worker_id == id)
            .ok_or_else(|| format!("{} is not registered", WorkerId(id)))
    });
    match found {
        Ok(w) => Html(ui::worker(w, &worker_tasks(w.worker_id, &status.jobs))).into_response(),
        Err(message) => (StatusCode::NOT_FOUND, Html(ui::not_found(&message))).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::CoordinatorConfig;

    /// The router of a coordinator with no workers and no jobs, on a loopback port.
    async fn serve() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(Coordinator::new(CoordinatorConfig::default()));
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    /// One HTTP/1.1 request: the status, the head (lower case) and the body.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_lowercase(), body.to_string())
    }

    /// `request` ("METHOD PATH") answers `status` with a JSON `{"error": ...}` (or, for
    /// the UI's pages, HTML) whose message contains `message`. Returns the head.
    async fn check(addr: SocketAddr, (request, status, message): (&str, u16, &str)) -> String {
        let (method, path) = request.split_once(' ').unwrap();
        let (code, head, body) = self::request(addr, method, path).await;
        let what = format!("{request}: {code}\n{head}\n{body}");
        assert_eq!(code, status, "{what}");
        if path.starts_with("/api/") {
            assert!(head.contains("content-type: application/json"), "{what}");
            let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {what}"));
            let fields = v.as_object().unwrap();
            assert_eq!(fields.len(), 1, "only the documented field: {what}");
            assert!(
                fields["error"].as_str().unwrap().contains(message),
                "{what}"
            );
            assert!(body.len() < 400, "the message repeats no long id: {what}");
        } else {
            assert!(head.contains("content-type: text/html"), "{what}");
            assert!(body.contains(message), "{what}");
        }
        assert_eq!(head.contains("\r\nallow: "), code == 405, "{what}");
        head
    }

    #[tokio::test]
    async fn bad_ids_and_methods_get_json_errors_as_documented() {
        let addr = serve().await;
        let long = format!("GET /api/v1/jobs/{}", "9".repeat(1000));
        let cases = [
            ("GET /api/v1/jobs/1", 404, "job-1 does not exist"),
            (
                "GET /api/v1/jobs/18446744073709551615",
                404,
                "does not exist",
            ),
            (
                "GET /api/v1/jobs/18446744073709551616",
                400,
                "from 0 to 18446744073709551615",
            ),
            ("GET /api/v1/jobs/-1", 400, "'-1' is not a job id"),
            ("GET /api/v1/jobs/+1", 400, "'+1' is not a job id"),
            ("GET /api/v1/jobs/%201", 400, "' 1' is not a job id"),
            ("GET /api/v1/jobs/1.0", 400, "'1.0' is not a job id"),
            (
                "GET /api/v1/jobs/%FF",
                400,
                "the job id is not valid: Invalid URL",
            ),
            (&long, 400, "99...' is not a job id"),
            (
                "POST /api/v1/jobs/%FF/cancel",
                400,
                "the job id is not valid",
            ),
            ("POST /api/v1/jobs/7/cancel", 404, "job-7 does not exist"),
            ("POST /api/v1/jobs/x/cancel", 400, "'x' is not a job id"),
            ("GET /api/v1/workers/%FF", 400, "the worker id is not valid"),
            ("GET /api/v1/workers/w1", 400, "'w1' is not a worker id"),
            ("GET /api/v1/workers/1", 404, "worker-1 is not registered"),
            ("POST /api/v1/jobs", 405, "/api/v1/jobs does not take POST"),
            ("DELETE /api/v1/cluster", 405, "does not take DELETE"),
            ("GET /api/v1/jobs/1/cancel", 405, "does not take GET"),
            ("GET /api/v1/nope", 404, "no such page"),
            ("GET /jobs/%FF", 404, "the job id is not valid"),
            ("GET /jobs/abc", 404, "&#39;abc&#39; is not a job id"),
            ("GET /workers/%FF", 404, "the worker id is not valid"),
            ("GET /workers/3", 404, "worker-3 is not registered"),
        ];
        for case in cases {
            check(addr, case).await;
        }
        let head = check(addr, ("POST /api/v1/jobs", 405, "")).await;
        assert!(head.contains("\r\nallow: get,head"), "{head}");
        let head = check(addr, ("GET /api/v1/jobs/1/cancel", 405, "")).await;
        assert!(head.contains("\r\nallow: post"), "{head}");
    }
}
