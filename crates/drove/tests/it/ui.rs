//! Seeing the cluster: the web UI in headless Chromium, the REST API against its
//! OpenAPI document, Prometheus metrics, progress lines, JSON logs and default binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use drove_client::proto::JobState;
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use drove_exec::tpch::QUERIES;
use drove_testkit::tpch_data;
use serde_json::Value;

/// An embedded cluster serving HTTP on a free loopback port; tasks take `delay_ms`.
async fn cluster(workers: usize, delay_ms: u64) -> (LocalCluster, Session, String) {
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers,
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        task_delay_ms: vec![delay_ms; workers],
        ..Default::default()
    })
    .await
    .unwrap();
    let session = Session::connect(&cluster.coordinator_addr().to_string())
        .await
        .unwrap();
    session.register_tpch(tpch_data(0.01)).await.unwrap();
    let http = cluster.http_addr().unwrap().to_string();
    (cluster, session, http)
}

async fn get_json(http: &str, path: &str) -> (u16, Value) {
    request_json(http, "GET", path).await
}

/// Waits until a job runs with its first stage done and returns its id.
async fn running_job(session: &Session) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = session.cluster_status().await.unwrap();
        if let Some(j) = status.jobs.iter().find(|j| {
            j.state() == JobState::Running && j.stages.iter().any(|s| s.tasks_done == s.tasks_total)
        }) {
            return j.job_id;
        }
        assert!(Instant::now() < deadline, "no job got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Where the screenshots are kept: `target/tmp/ui-screenshots`.
fn screenshot_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Makes sure Debian's `chromium` is installed, installing it on a fresh machine (as
/// `.ci/run` does), so that `cargo test --workspace` works anywhere the README says.
fn ensure_chromium() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let present = || {
            Command::new("chromium")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if present() {
            return;
        }
        let _ = Command::new("apt-get").arg("update").arg("-q").status();
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends", "chromium", "fonts-dejavu-core"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        assert!(
            present(),
            "the web UI tests need Debian's chromium package and could not install it; run `apt-get install chromium` as root"
        );
    });
}

/// Loads `url` in headless Chromium; returns the DOM after load, and saves a
/// screenshot as `shot`.
async fn chromium(url: String, shot: &str) -> String {
    let shot = screenshot_dir().join(shot);
    tokio::task::spawn_blocking(move || {
        ensure_chromium();
        let base = |c: &mut Command| {
            c.args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--window-size=1400,1000",
            ]);
        };
        let mut dump = Command::new("chromium");
        base(&mut dump);
        let out = dump
            .args(["--dump-dom", &url])
            .output()
            .expect("running chromium (the Debian package `chromium`; .ci/run installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut snap = Command::new("chromium");
        base(&mut snap);
        let status = snap
            .arg(format!("--screenshot={}", shot.display()))
            .arg(&url)
            .output()
            .unwrap();
        assert!(
            status.status.success() && shot.exists(),
            "no screenshot of {url}"
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_web_ui_shows_the_cluster_a_running_job_a_finished_job_and_a_failure() {
    // Slow tasks keep the job running for seconds after its first stage.
    let _alone = crate::exclusive_async().await;
    let (cluster, session, http) = cluster(3, 4000).await;
    let sql = QUERIES[4];
    let (result, running_dom) = tokio::join!(session.run_sql(sql), async {
        let job = running_job(&session).await;
        // Chromium renders the page the server sent while the job ran, saved to a file:
        // on a loaded machine Chromium can take longer to start than the job to end.
        let (code, page) = request(&http, "GET", &format!("/jobs/{job}")).await;
        assert_eq!(code, 200, "{page}");
        let saved = screenshot_dir().join("job-running.html");
        std::fs::write(&saved, page).unwrap();
        let url = format!("file://{}", saved.display());
        (job, chromium(url, "job-running.png").await)
    });
    let result = result.unwrap();
    let (job, running_dom) = running_dom;
    let stages = result.summary.stages.len();
    assert!(running_dom.contains("state running"), "{running_dom}");
    assert_eq!(running_dom.matches("class=\"stage\"").count(), stages);

    let done = chromium(format!("http://{http}/jobs/{job}"), "job-finished.png").await;
    assert!(done.contains("state succeeded"));
    assert_eq!(done.matches("class=\"stage\"").count(), stages);
    // One row per task that ran: those coalesced into another ran as part of it.
    let tasks: u32 = result.summary.stages.iter().map(|s| s.tasks_total).sum();
    let ran: u32 = (result.summary.stages.iter())
        .map(|s| s.tasks_total - s.tasks_coalesced)
        .sum();
    assert_eq!(done.matches("<tr class=\"task").count() as u32, ran);
    // The cluster's summary leaves out per-task runs but counts the same tasks done.
    let (full, summary) = (
        session.cluster_status().await.unwrap(),
        session.cluster_summary().await.unwrap(),
    );
    let find = |s: &drove_client::proto::ClusterStatusResponse| {
        s.jobs.iter().find(|j| j.job_id == job).unwrap().clone()
    };
    let (full, summary) = (find(&full), find(&summary));
    let tasks_done =
        |j: &drove_client::proto::JobStatus| j.stages.iter().map(|s| s.tasks_done).sum::<u32>();
    assert_eq!((tasks_done(&full), tasks_done(&summary)), (tasks, tasks));
    let runs: usize = full.stages.iter().map(|s| s.tasks.len()).sum();
    assert_eq!(runs as u32, ran);
    assert!(summary.stages.iter().all(|s| s.tasks.is_empty()));
    assert!(done.contains("id=\"sql\"") && done.contains("id=\"plan\""));
    // The timeline has a bar per attempt the job launched, as the API lists them, and
    // every completed task's attempt is among them as succeeded.
    let (_, api) = get_json(&http, &format!("/api/v1/jobs/{job}")).await;
    let attempts = api["attempts"].as_array().unwrap();
    let launched: u64 = api["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["attempts_launched"].as_u64().unwrap())
        .sum();
    assert_eq!(attempts.len() as u64, launched);
    for s in api["stages"].as_array().unwrap() {
        for t in s["tasks"].as_array().unwrap() {
            assert!(
                attempts.iter().any(|a| a["stage_id"] == s["stage_id"]
                    && a["partition"] == t["partition"]
                    && a["attempt"] == t["attempt"]
                    && a["worker_id"] == t["worker_id"]
                    && a["outcome"] == "succeeded"
                    && a["ended_ms"].as_u64() >= a["started_ms"].as_u64()),
                "{t} has no succeeded attempt in {attempts:?}"
            );
        }
    }
    // The job list, kept without per-task runs, agrees with the job's whole status.
    let (_, list) = get_json(&http, "/api/v1/jobs").await;
    let listed = list
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job)
        .unwrap();
    for field in [
        "state",
        "tasks_total",
        "tasks_done",
        "spilled_bytes",
        "memory_bytes",
        "peak_memory_bytes",
    ] {
        assert_eq!(listed[field], api[field], "{field}");
    }
    assert!(api["memory_bytes"].as_u64() > Some(0), "{api}");
    assert!(done.contains("id=\"timeline\""), "{done}");
    assert_eq!(
        done.matches("<rect class=\"attempt ").count(),
        attempts.len()
    );

    let e = session
        .run_sql(
            "SELECT count(*) FROM lineitem WHERE l_linenumber / (l_linenumber - l_linenumber) > 1",
        )
        .await
        .unwrap_err();
    let drove_client::Error::JobFailed { job: failed, .. } = e else {
        panic!("{e:?}")
    };
    let failed_dom = chromium(format!("http://{http}/jobs/{failed}"), "job-failed.png").await;
    assert!(failed_dom.contains("state failed"));
    assert!(
        failed_dom.contains("id=\"error\"") && failed_dom.contains("Divide by zero"),
        "{failed_dom}"
    );

    // The cluster's recent load saw the job's tasks busy, and the overview charts it.
    let (_, cluster_json) = get_json(&http, "/api/v1/cluster").await;
    let recent = cluster_json["recent"].as_array().unwrap();
    assert!(
        recent.iter().any(|s| s["slots_busy"].as_u64() > Some(0)
            && s["slots_busy"].as_u64() <= s["slots"].as_u64()),
        "{recent:?}"
    );
    let overview = chromium(format!("http://{http}/"), "overview.png").await;
    for chart in ["chart-slots", "chart-memory", "chart-traffic"] {
        assert!(overview.contains(&format!("id=\"{chart}\"")), "{overview}");
    }
    assert_eq!(overview.matches("<polyline class=\"series\"").count(), 6);
    assert_eq!(overview.matches("<tr class=\"worker\"").count(), 3);
    assert_eq!(overview.matches("<tr class=\"job\"").count(), 2);
    let worker_page = chromium(
        format!("http://{http}/workers/{}", result.summary.workers_used()[0]),
        "worker.png",
    )
    .await;
    assert!(worker_page.contains("<tr class=\"task\""));
    cluster.shutdown().await;
}

/// An HTTP request from async code: its status and body.
async fn request(http: &str, method: &str, path: &str) -> (u16, String) {
    let (http, method, path) = (http.to_string(), method.to_string(), path.to_string());
    tokio::task::spawn_blocking(move || crate::http(&http, &method, &path))
        .await
        .unwrap()
}

async fn request_json(http: &str, method: &str, path: &str) -> (u16, Value) {
    let (code, body) = request(http, method, path).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, value)
}

/// The document's schema of an answer, as a JSON Schema (OpenAPI 3.1's schemas are
/// JSON Schema 2020-12) whose references resolve within the document.
fn answer_schema(doc: &Value, path: &str, method: &str, code: u16) -> jsonschema::Validator {
    let schema = &doc["paths"][path][method]["responses"][code.to_string()]["content"]["application/json"]
        ["schema"];
    assert!(
        schema.is_object(),
        "the document has no {code} answer for {method} {path}"
    );
    let root = serde_json::json!({ "allOf": [schema], "components": doc["components"] });
    jsonschema::draft202012::new(&root)
        .unwrap_or_else(|e| panic!("{method} {path} {code}: the schema does not compile: {e}"))
}

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The documented paths are exactly the API's routes: every documented operation
/// answers (200, or the error it documents) with JSON that validates against the
/// document's strict schema, every other method on a documented path is not allowed,
/// and a path under /api/v1 that is not documented does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rest_api_answers_as_its_openapi_document_says() {
    let (cluster, session, http) = cluster(2, 0).await;
    let done = session.run_sql(QUERIES[2]).await.unwrap().summary.job_id;
    session
        .run_sql("CACHE TABLE small AS SELECT n_name FROM nation")
        .await
        .unwrap();
    let (code, doc) = get_json(&http, "/api/v1/openapi.json").await;
    assert_eq!(code, 200);
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let worker = session.cluster_status().await.unwrap().workers[0].worker_id;
    // For each path: the ids to try, with the answer each must get.
    let ids = |kind: &str| -> Vec<(String, u16)> {
        let real = if kind == "worker" { worker } else { done };
        vec![
            (real.to_string(), 200),
            ("424242".into(), 404),
            (u64::MAX.to_string(), 404),
            ("18446744073709551616".into(), 400),
            ("-1".into(), 400),
            ("abc".into(), 400),
        ]
    };
    let paths = doc["paths"].as_object().unwrap();
    let mut checked = 0;
    for (template, item) in paths {
        let cases = if template.contains("{id}") {
            let kind = if template.contains("workers") {
                "worker"
            } else {
                "job"
            };
            ids(kind)
                .into_iter()
                .map(|(id, code)| (template.replace("{id}", &id), code))
                .collect()
        } else {
            vec![(template.clone(), 200)]
        };
        for method in METHODS {
            let documented = item.get(method).is_some();
            for (path, expected) in &cases {
                let (code, body) = request_json(&http, &method.to_uppercase(), path).await;
                if !documented {
                    assert_eq!(code, 405, "{method} {path} is not documented: {body}");
                    continue;
                }
                assert_eq!(code, *expected, "{method} {path}: {body}");
                let validator = answer_schema(&doc, template, method, code);
                if let Err(e) = validator.validate(&body) {
                    panic!("{method} {path} does not match the document: {e}\n{body:#}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked}");
    for path in [
        "/api/v1",
        "/api/v1/nope",
        "/api/v1/jobs/1/tasks",
        "/api/v2/jobs",
    ] {
        let (code, body) = get_json(&http, path).await;
        assert_eq!(
            code, 404,
            "{path} is not documented, so it must not exist: {body}"
        );
    }
    // The answers say what happened, not just their shape.
    let (_, job) = get_json(&http, &format!("/api/v1/jobs/{done}")).await;
    assert_eq!(job["state"], "succeeded");
    assert!(job["sql"].as_str().unwrap().contains("revenue"));
    let (_, cluster_json) = get_json(&http, "/api/v1/cluster").await;
    assert_eq!(cluster_json["cached_tables"][0]["name"], "small");
    let (_, cancelled) = request_json(&http, "POST", &format!("/api/v1/jobs/{done}/cancel")).await;
    assert_eq!(
        cancelled["state"], "succeeded",
        "an ended job stays as it was"
    );
    cluster.shutdown().await;
}

/// The value of the first sample of `name` with these labels in a Prometheus scrape.
fn sample(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name_and_labels} in:\n{scrape}"))
        .parse()
        .unwrap()
}

async fn scrape(http: &str) -> String {
    let http = http.to_string();
    let (code, body) = tokio::task::spawn_blocking(move || crate::http(&http, "GET", "/metrics"))
        .await
        .unwrap();
    assert_eq!(code, 200);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_with_a_job() {
    let (cluster, session, http) = cluster(2, 200).await;
    let before = scrape(&http).await;
    assert_eq!(sample(&before, "drove_workers"), 2.0);
    assert!(before.contains("# TYPE drove_task_duration_seconds histogram"));
    let (result, during) = tokio::join!(session.run_sql(QUERIES[2]), async {
        running_job(&session).await;
        scrape(&http).await
    });
    let result = result.unwrap();
    let busy = sample(&during, "drove_tasks{state=\"running\"}")
        + sample(&during, "drove_tasks{state=\"pending\"}");
    assert!(busy > 0.0, "{during}");
    assert_eq!(sample(&during, "drove_jobs{state=\"running\"}"), 1.0);
    let after = scrape(&http).await;
    let tasks: u32 = (result.summary.stages.iter())
        .map(|s| s.tasks_total - s.tasks_coalesced)
        .sum();
    let completed = sample(&after, "drove_tasks_completed_total")
        - sample(&before, "drove_tasks_completed_total");
    assert_eq!(completed, f64::from(tasks));
    assert_eq!(
        sample(&after, "drove_task_duration_seconds_count"),
        completed
    );
    assert!(sample(&after, "drove_shuffle_write_bytes_total") > 0.0);
    // Every task's completion took the coordinator's state, and so was timed.
    assert!(
        sample(&after, "drove_coordinator_state_held_seconds_count")
            - sample(&before, "drove_coordinator_state_held_seconds_count")
            >= completed,
        "{after}"
    );
    assert_eq!(
        sample(&after, "drove_jobs_ended_total{state=\"succeeded\"}"),
        1.0
    );
    assert_eq!(sample(&after, "drove_jobs{state=\"running\"}"), 0.0);
    let worker = result.summary.workers_used()[0];
    assert!(
        sample(
            &after,
            &format!("drove_worker_heartbeat_age_seconds{{worker=\"{worker}\"}}")
        ) < 10.0
    );
    cluster.shutdown().await;
}

#[test]
fn progress_is_printed_as_plain_lines_when_stderr_is_not_a_terminal() {
    let dir = tpch_data(0.01);
    let out = crate::run(
        &[
            "sql",
            "--local",
            "2",
            "--tpch",
            dir.to_str().unwrap(),
            "-e",
            QUERIES[2],
        ],
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("progress: job-"))
        .collect();
    assert!(!lines.is_empty(), "{stderr}");
    assert!(!stderr.contains('\r'), "no bar redraws off a terminal");
    let last = lines.last().unwrap();
    assert!(last.ends_with(", ended"), "{last}");
    let tasks = last
        .split(" tasks")
        .next()
        .unwrap()
        .rsplit(", ")
        .next()
        .unwrap();
    let (done, total) = tasks.split_once('/').unwrap();
    assert_eq!(done, total, "{last}");

    let quiet = crate::run(
        &["sql", "--local", "1", "--no-progress", "-e", "SELECT 1"],
        Duration::from_secs(60),
    );
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("progress:"));
}

#[test]
fn log_lines_are_json_objects_with_log_format_json() {
    let out = crate::drove()
        .env("RUST_LOG", "info")
        .args([
            "--log-format",
            "json",
            "sql",
            "--local",
            "1",
            "--no-progress",
            "-e",
            "SELECT 1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let logs: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "job submitted"),
        "{stderr}"
    );
    assert!(logs.iter().all(|l| l["level"].is_string()));
}

#[test]
fn everything_listens_on_loopback_by_default() {
    let (_coordinator, line) = crate::spawn_until(&["coordinator"], "coordinator listening on");
    assert_eq!(
        line,
        format!(
            "coordinator listening on {} (HTTP on http://{})",
            drove::DEFAULT_COORDINATOR_ADDR,
            drove::DEFAULT_HTTP_ADDR
        )
    );
    assert!(drove::DEFAULT_COORDINATOR_ADDR.starts_with("127.0.0.1:"));
    assert!(drove::DEFAULT_HTTP_ADDR.starts_with("127.0.0.1:"));
    let (_worker, line) = crate::spawn_until(
        &["worker", "--coordinator", drove::DEFAULT_COORDINATOR_ADDR],
        "worker Flight service on",
    );
    assert!(
        line.starts_with("worker Flight service on 127.0.0.1:"),
        "{line}"
    );
}
