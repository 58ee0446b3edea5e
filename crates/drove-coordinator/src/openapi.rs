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

/// An object schema whose every listed property is required and which has no others:
/// the API's objects are fixed, so a field the handlers add without documenting it is
/// a mismatch that schemathesis reports.
fn object(properties: &[(&str, Value)]) -> Value {
    let required: Vec<&str> = properties.iter().map(|(k, _)| *k).collect();
    let props: serde_json::Map<String, Value> = properties
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    json!({
        "type": "object",
        "required": required,
        "properties": props,
        "additionalProperties": false
    })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

fn error(description: &str) -> Value {
    ok(description, reference("Error"))
}

/// What every operation may answer besides its own responses.
fn internal_error() -> Value {
    error("A bug in the coordinator (a handler panicked); the message says where.")
}

/// Ids are u64: the handlers answer 400 for anything but decimal digits in this range.
fn id_parameter(what: &str) -> Value {
    json!([{
        "name": "id", "in": "path", "required": true,
        "description": format!("The {what}'s id: decimal digits, as /api/v1/{what}s lists it."),
        "schema": { "type": "integer", "minimum": 0, "maximum": u64::MAX }
    }])
}

fn bad_id() -> Value {
    error(&format!(
        "The id is not a whole number from 0 to {}.",
        u64::MAX
    ))
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
                "responses": {
                    "200": ok("The cluster.", reference("Cluster")),
                    "500": internal_error()
                }
            }},
            "/api/v1/workers": { "get": {
                "summary": "Registered workers.",
                "responses": {
                    "200": ok("The workers.", array_of(reference("Worker"))),
                    "500": internal_error()
                }
            }},
            "/api/v1/workers/{id}": { "get": {
                "summary": "One worker and the tasks it ran in recent jobs.",
                "parameters": id_parameter("worker"),
                "responses": {
                    "200": ok("The worker.", reference("WorkerDetail")),
                    "400": bad_id(),
                    "404": error("No such worker is registered."),
                    "500": internal_error()
                }
            }},
            "/api/v1/jobs": { "get": {
                "summary": "Recent jobs, newest first.",
                "responses": {
                    "200": ok("The jobs.", array_of(reference("JobSummary"))),
                    "500": internal_error()
                }
            }},
            "/api/v1/jobs/{id}": { "get": {
                "summary": "One job: its stages, tasks, SQL and physical plan.",
                "parameters": id_parameter("job"),
                "responses": {
                    "200": ok("The job.", reference("Job")),
                    "400": bad_id(),
                    "404": error("No such job in the history."),
                    "500": internal_error()
                }
            }},
            "/api/v1/jobs/{id}/cancel": { "post": {
                "summary": "Cancels a running job; an ended job is left as it was.",
                "parameters": id_parameter("job"),
                "responses": {
                    "200": ok("The job's state afterwards.", reference("CancelResult")),
                    "400": bad_id(),
                    "404": error("No such job in the history."),
                    "500": internal_error()
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

#[cfg(test)]
mod tests {
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
        let doc = document();
        let mut all = Vec::new();
        schemas(String::new(), &doc, &mut all);
        assert!(all.len() > 50, "{}", all.len());
        for (at, schema) in all {
            if schema["type"] == "object" {
                assert_eq!(schema["additionalProperties"], false, "{at}");
                let required = schema["required"].as_array().unwrap();
                assert_eq!(
                    required.len(),
                    schema["properties"].as_object().unwrap().len(),
                    "{at}"
                );
            }
            if let Some(r) = schema["$ref"].as_str() {
                let name = r.strip_prefix("#/components/schemas/").unwrap();
                assert!(
                    doc["components"]["schemas"][name].is_object(),
                    "{at}: {r} is not defined"
                );
            }
        }
    }

    #[test]
    fn every_operation_documents_its_errors() {
        let doc = document();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                let mut codes: Vec<&str> = responses.keys().map(String::as_str).collect();
                codes.sort_unstable();
                let expected = if path.contains("{id}") {
                    vec!["200", "400", "404", "500"]
                } else {
                    vec!["200", "500"]
                };
                assert_eq!(codes, expected, "{method} {path}");
                for code in ["400", "404", "500"] {
                    if let Some(r) = responses.get(code) {
                        assert_eq!(
                            r["content"]["application/json"]["schema"]["$ref"],
                            "#/components/schemas/Error",
                            "{method} {path} {code}"
                        );
                    }
                }
                if path.contains("{id}") {
                    let id = &op["parameters"][0]["schema"];
                    assert_eq!(id["maximum"], u64::MAX, "{method} {path}");
                }
            }
        }
    }
}
