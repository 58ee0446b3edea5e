//! The coordinator's HTTP endpoints: health and a JSON view of the cluster.

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use serde_json::{Value, json};

use crate::state::Coordinator;

/// The HTTP routes.
pub fn router(coordinator: Coordinator) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/api/v1/cluster", get(cluster))
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
