//! The coordinator's HTTP endpoints: health and a JSON view of the cluster.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Json;
use axum::routing::{get, post};
use drove_core::JobId;
use serde_json::{Value, json};

use crate::Error;
use crate::state::Coordinator;

/// The HTTP routes.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/jobs/{id}/cancel", post(cancel))
        .with_state(coordinator)
}

async fn cluster(State(coordinator): State<Coordinator>) -> Json<Value> {
    let status = coordinator.cluster_status();
    let workers: Vec<Value> = status
        .workers
        .iter()
        .map(|w| {
            json!({
                "worker_id": w.worker_id,
                "flight_addr": w.flight_addr,
                "slots": w.slots,
                "running_tasks": w.running_tasks,
                "heartbeat_age_ms": w.heartbeat_age_ms,
                "draining": w.draining,
            })
        })
        .collect();
    let jobs: Vec<Value> = status
        .jobs
        .iter()
        .map(|j| {
            json!({
                "job_id": j.job_id,
                "name": j.name,
                "state": j.state().as_str_name(),
                "error": j.error,
                "elapsed_ms": j.elapsed_ms,
                "stages": j.stages.len(),
            })
        })
        .collect();
    Json(json!({ "workers": workers, "jobs": jobs }))
}

/// Cancels a running job; a job that already ended is left as it was.
async fn cancel(
    State(coordinator): State<Coordinator>,
    Path(id): Path<u64>,
) -> (StatusCode, Json<Value>) {
    match coordinator.cancel(JobId(id)) {
        Ok(status) => (
            StatusCode::OK,
            Json(json!({ "job_id": id, "state": status.state().as_str_name() })),
        ),
        Err(e @ Error::NotFound(_)) => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": e.to_string() })),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({ "error": e.to_string() })),
        ),
    }
}
