//! Clusters of separate processes: `drove coordinator`, `drove worker`s and queries
//! through `drove sql --coordinator`; workers are killed, paused and drained with real
//! signals while jobs run.

use std::time::Duration;

use drove_exec::tpch::QUERIES;
use drove_testkit::{reference, tpch_data, tpch_tables};

#[test]
fn coordinator_two_workers_and_sql_as_separate_processes() {
    let dir = tpch_data(0.01);
    let (_coordinator, addr, http) = crate::coordinator(&[]);
    assert_eq!(http_get(&http, "/health"), "ok\n");
    let _workers: Vec<_> = (0..2)
        .map(|_| {
            crate::spawn_until(
                &["worker", "--coordinator", &addr, "--slots", "2"],
                "worker Flight service on",
            )
            .0
        })
        .collect();
    wait_for_workers(&addr, 2);

    let q1 = QUERIES[0];
    let out = crate::run(
        &[
            "sql",
            "--coordinator",
            &addr,
            "--tpch",
            dir.to_str().unwrap(),
            "--format",
            "csv",
            "-e",
            q1,
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(String::from_utf8_lossy(&out.stdout), expected_csv(&dir, q1));
}

/// The reference answer to `sql` as `drove sql --format csv` prints it.
pub(crate) fn expected_csv(dir: &std::path::Path, sql: &str) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let expected = runtime.block_on(reference(&tpch_tables(dir), sql)).unwrap();
    let mut csv = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut csv);
        for b in &expected {
            w.write(b).unwrap();
        }
    }
    String::from_utf8(csv).unwrap()
}

/// A plain HTTP/1.0 GET on loopback that must answer 200; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    let (code, body) = crate::http(addr, "GET", path);
    assert_eq!(code, 200, "{body}");
    body
}

fn wait_for_workers(addr: &str, n: usize) {
    for _ in 0..200 {
        let out = crate::run(&["status", "--coordinator", addr], Duration::from_secs(30));
        if String::from_utf8_lossy(&out.stdout).starts_with(&format!("{n} workers")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{n} workers did not register");
}

/// A coordinator and workers as separate processes, with fast heartbeats.
struct ProcessCluster {
    addr: String,
    http: String,
    _coordinator: crate::Proc,
    workers: Vec<crate::Proc>,
}

impl ProcessCluster {
    fn start(workers: usize, task_delay_ms: u64) -> Self {
        let (coordinator, addr, http) = crate::coordinator(&[
            "--heartbeat-interval-ms",
            "200",
            "--heartbeat-timeout-ms",
            "2000",
            // Speculative twins would blur the re-run counts these tests check.
            "--no-speculation",
        ]);
        let delay = task_delay_ms.to_string();
        let workers = (0..workers)
            .map(|_| {
                crate::spawn_until(
                    &[
                        "worker",
                        "--coordinator",
                        &addr,
                        "--slots",
                        "2",
                        "--inject-task-delay-ms",
                        &delay,
                    ],
                    "worker Flight service on",
                )
                .0
            })
            .collect::<Vec<_>>();
        wait_for_workers(&addr, workers.len());
        Self {
            addr,
            http,
            _coordinator: coordinator,
            workers,
        }
    }

    /// Starts `drove sql` on this cluster in the background.
    fn sql(&self, dir: &std::path::Path, sql: &str) -> std::process::Child {
        crate::drove()
            .args([
                "sql",
                "--coordinator",
                &self.addr,
                "--tpch",
                dir.to_str().unwrap(),
                "--format",
                "csv",
                "--summary",
                "-e",
                sql,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn wait_past_first_stage(&self) -> u64 {
        wait_past_first_stage(&self.addr)
    }
}

/// Waits until a job on the coordinator at `addr` runs with a stage done; its id.
pub(crate) fn wait_past_first_stage(addr: &str) -> u64 {
    wait_for_done_stages(addr).0
}

/// Waits until a job on the coordinator at `addr` runs with a stage done; its id and
/// the stages done.
pub(crate) fn wait_for_done_stages(addr: &str) -> (u64, Vec<u32>) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let session = drove_client::Session::connect(addr).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let status = session.cluster_status().await.unwrap();
            if let Some(job) = status.jobs.iter().find(|j| {
                j.state() == drove_client::proto::JobState::Running
                    && j.stages.iter().any(|s| s.tasks_done == s.tasks_total)
            }) {
                let done = (job.stages.iter())
                    .filter(|s| s.tasks_done == s.tasks_total)
                    .map(|s| s.stage_id)
                    .collect();
                return (job.job_id, done);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no job got past its first stage"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} failed");
}

/// Starts `drove sql --coordinator COORDINATOR --tpch DIR --format csv -e SQL` in the
/// background, its output piped (read it with [`finish`]).
pub(crate) fn tpch_sql(coordinator: &str, dir: &std::path::Path, sql: &str) -> std::process::Child {
    crate::drove()
        .args(["sql", "--coordinator", coordinator, "--tpch"])
        .arg(dir)
        .args(["--format", "csv", "-e", sql])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for `drove sql` and returns its stdout and stderr, failing on a non-zero exit.
pub(crate) fn finish(child: std::process::Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "drove sql failed: {stderr}");
    (stdout, stderr)
}

#[test]
fn a_worker_killed_with_sigkill_mid_job_costs_only_re_runs() {
    let dir = tpch_data(0.01);
    let cluster = ProcessCluster::start(3, 300);
    let q9 = QUERIES[8];
    let sql = cluster.sql(&dir, q9);
    cluster.wait_past_first_stage();
    signal(&cluster.workers[2].0, "KILL");
    let (stdout, stderr) = finish(sql);
    assert_eq!(stdout, expected_csv(&dir, q9));
    assert!(
        stderr.contains("extra attempts"),
        "no re-runs shown: {stderr}"
    );
}

#[test]
fn a_paused_worker_is_replaced_and_comes_back_as_a_new_worker() {
    let dir = tpch_data(0.01);
    let cluster = ProcessCluster::start(3, 300);
    let q = QUERIES[4];
    // Files split, so that the paused worker's scans write rows that the next stage
    // must read (it is little data, coalesced into few tasks that may run anywhere).
    let split = format!("SET datafusion.optimizer.repartition_file_min_size = 1; {q}");
    let sql = cluster.sql(&dir, &split);
    cluster.wait_past_first_stage();
    signal(&cluster.workers[1].0, "STOP");
    let (stdout, stderr) = finish(sql);
    signal(&cluster.workers[1].0, "CONT");
    assert_eq!(stdout, expected_csv(&dir, q), "{stderr}");
    assert!(
        stderr.contains("extra attempts"),
        "no re-runs shown: {stderr}"
    );
    // It lost its session while stopped, registers again, and takes work again.
    wait_for_workers(&cluster.addr, 3);
    let (again, _) = finish(cluster.sql(&dir, q));
    assert_eq!(again, stdout);
}

#[test]
fn a_worker_sent_sigterm_drains_and_exits_cleanly() {
    let dir = tpch_data(0.01);
    let mut cluster = ProcessCluster::start(3, 300);
    let q = QUERIES[2];
    let sql = cluster.sql(&dir, q);
    cluster.wait_past_first_stage();
    signal(&cluster.workers[0].0, "TERM");
    let (stdout, stderr) = finish(sql);
    assert_eq!(stdout, expected_csv(&dir, q), "{stderr}");
    assert!(
        !stderr.contains("extra attempts"),
        "a drain must not cost re-runs: {stderr}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(status) = cluster.workers[0].0.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the drained worker did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit:?}");
    wait_for_workers(&cluster.addr, 2);
}

#[test]
fn a_job_cancelled_over_http_stops_and_its_client_is_told() {
    let dir = tpch_data(0.01);
    let cluster = ProcessCluster::start(2, 300);
    let (code, body) = crate::http(&cluster.http, "POST", "/api/v1/jobs/12345/cancel");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("job-12345 does not exist"), "{body}");
    let (code, body) = crate::http(&cluster.http, "POST", "/api/v1/jobs/twelve/cancel");
    assert_eq!(code, 400, "{body}");

    let sql = cluster.sql(&dir, QUERIES[8]);
    let job = cluster.wait_past_first_stage();
    let (code, body) = crate::http(&cluster.http, "POST", &format!("/api/v1/jobs/{job}/cancel"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"state\":\"cancelled\""), "{body}");
    let out = sql.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cancelled"), "{stderr}");
    // The job shows as cancelled, and nothing of it runs any more.
    let status = crate::run(
        &["status", "--coordinator", &cluster.addr],
        Duration::from_secs(30),
    );
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("Cancelled"), "{status}");
    assert!(status.contains(", 0 running,"), "{status}");
}
