//! The coordinator's HTTP endpoints: the web UI ([`crate::ui`]), the JSON REST API
//! ([`crate::rest`]) with its generated OpenAPI document, Prometheus metrics and a
//! health check.
//!
//! Every view is built from the same `drove_proto` status messages the gRPC API
//! returns, so the UI, the REST API and `drove status` never disagree.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use drove_core::{JobId, WorkerId};
use drove_proto as pb;

use crate::rest::{JobState, api_error, parse_id, worker_tasks};
use crate::state::{Coordinator, TASK_SECONDS_BUCKETS};
use crate::{rest, ui};

/// The HTTP routes.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/", get(ui_overview))
        .route("/jobs/{id}", get(ui_job))
        .route("/workers/{id}", get(ui_worker))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(rest::router())
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
        let label = JobState::from(pb::JobState::from_str_name(s).unwrap_or_default()).name();
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
            let n = jobs
                .iter()
                .filter(|j| JobState::from(j.state()).name() == *s)
                .count();
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

    use serde_json::Value;

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
