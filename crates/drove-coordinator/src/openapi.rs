//! The OpenAPI 3 document of the coordinator's REST API, served at
//! `/api/v1/openapi.json`. A test checks every endpoint's answers against it.

use serde_json::{Value, json};

fn int() -> Value {
    json!({ "type": "integer", "minimum": 0 })
}

fn string() -> Value {
    json!({ "type": "string" })
}

fn reference(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn array_of(item: Value) -> Value {
    json!({ "type": "array", "items": item })
}

/// An object schema whose every listed property is required.
fn object(properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(k, _)| *k).collect();
    let props: serde_json::Map<String, Value> = properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!({ "type": "object", "required": required, "properties": props })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn error(description: &str) -> Value {
    ok(description, reference("Error"))
}

fn id_parameter(what: &str) -> Value {
    json!([{
        "name": "id", "in": "path", "required": true,
        "description": format!("The {what}'s id."),
        "schema": { "type": "integer", "minimum": 0 }
    }])
}

/// The document.
pub fn document() -> Value {
    let job_state = json!({ "type": "string", "enum": ["running", "succeeded", "failed", "cancelled", "unknown"] });
    let job_summary_fields = vec![
        ("job_id", int()),
        ("name", string()),
        ("state", job_state.clone()),
        ("error", string()),
        ("elapsed_ms", int()),
        ("submitted_unix_ms", int()),
        ("stages", int()),
        ("tasks_total", int()),
        ("tasks_done", int()),
        ("spilled_bytes", int()),
        ("spill_count", int()),
        ("memory_bytes", int()),
        ("peak_memory_bytes", int()),
    ];
    let mut job_fields = job_summary_fields.clone();
    job_fields.retain(|(k, _)| *k != "stages");
    job_fields.extend([
        ("stages", array_of(reference("Stage"))),
        ("sql", string()),
        ("physical_plan", string()),
    ]);
    let worker_fields = vec![
        ("worker_id", int()),
        ("flight_addr", string()),
        ("slots", int()),
        ("running_tasks", int()),
        ("heartbeat_age_ms", int()),
        (
            "state",
            json!({ "type": "string", "enum": ["active", "draining"] }),
        ),
        ("block_bytes", int()),
        (
            "memory",
            object(&[
                ("budget_bytes", int()),
                ("block_bytes", int()),
                ("execution_bytes", int()),
                ("peak_bytes", int()),
                ("disk_bytes", int()),
                ("spilled_bytes_total", int()),
                ("spill_count", int()),
            ]),
        ),
    ];
    let mut worker_detail_fields = worker_fields.clone();
    worker_detail_fields.push((
        "tasks",
        array_of(object(&[
            ("job_id", int()),
            ("stage_id", int()),
            ("partition", int()),
            ("attempt", int()),
            ("elapsed_ms", int()),
            ("output_bytes", int()),
        ])),
    ));
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "drove coordinator",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Workers, jobs, stages and tasks of a drove cluster. Served on the coordinator's --http address."
        },
        "paths": {
            "/api/v1/cluster": { "get": {
                "summary": "Workers and recent jobs.",
                "responses": { "200": ok("The cluster.", reference("Cluster")) }
            }},
            "/api/v1/workers": { "get": {
                "summary": "Registered workers.",
                "responses": { "200": ok("The workers.", array_of(reference("Worker"))) }
            }},
            "/api/v1/workers/{id}": { "get": {
                "summary": "One worker and the tasks it ran in recent jobs.",
                "parameters": id_parameter("worker"),
                "responses": {
                    "200": ok("The worker.", reference("WorkerDetail")),
                    "400": error("The id is not a number."),
                    "404": error("No such worker is registered.")
                }
            }},
            "/api/v1/jobs": { "get": {
                "summary": "Recent jobs, newest first.",
                "responses": { "200": ok("The jobs.", array_of(reference("JobSummary"))) }
            }},
            "/api/v1/jobs/{id}": { "get": {
                "summary": "One job: its stages, tasks, SQL and physical plan.",
                "parameters": id_parameter("job"),
                "responses": {
                    "200": ok("The job.", reference("Job")),
                    "400": error("The id is not a number."),
                    "404": error("No such job in the history.")
                }
            }},
            "/api/v1/jobs/{id}/cancel": { "post": {
                "summary": "Cancels a running job; an ended job is left as it was.",
                "parameters": id_parameter("job"),
                "responses": {
                    "200": ok("The job's state afterwards.", reference("CancelResult")),
                    "400": error("The id is not a number."),
                    "404": error("No such job in the history.")
                }
            }}
        },
        "components": { "schemas": {
            "Error": object(&[("error", string())]),
            "Worker": object(&worker_fields),
            "WorkerDetail": object(&worker_detail_fields),
            "JobSummary": object(&job_summary_fields),
            "Job": object(&job_fields),
            "Stage": object(&[
                ("stage_id", int()),
                ("root", string()),
                ("depends_on", array_of(int())),
                ("tasks_total", int()),
                ("tasks_done", int()),
                ("tasks_running", int()),
                ("attempts_launched", int()),
                ("attempts_failed", int()),
                ("attempts_speculative", int()),
                ("plan", string()),
                ("tasks", array_of(reference("Task"))),
            ]),
            "Task": object(&[
                ("partition", int()),
                ("attempt", int()),
                ("worker_id", int()),
                ("elapsed_ms", int()),
                ("output_rows", int()),
                ("output_bytes", int()),
                ("local_read_bytes", int()),
                ("remote_read_bytes", int()),
                ("spilled_bytes", int()),
                ("skewed", json!({ "type": "boolean" })),
            ]),
            "Cluster": object(&[
                ("workers", array_of(reference("Worker"))),
                ("jobs", array_of(reference("JobSummary"))),
                ("cached_tables", array_of(reference("CachedTable"))),
            ]),
            "CachedTable": object(&[
                ("name", string()),
                ("partitions", int()),
                ("partitions_available", int()),
                ("job_id", int()),
            ]),
            "CancelResult": object(&[("job_id", int()), ("state", job_state)]),
        }}
    })
}
