//! What careless and hostile users did to drove, reproduced against real processes: a
//! query, a setting or an interrupted client must fail its own job at most, never a
//! process or another job.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(300);

/// A coordinator process and one worker process with `worker_extra` flags.
struct Cluster {
    coordinator: crate::Proc,
    _worker: crate::Proc,
    addr: String,
    http: String,
    _work: tempfile::TempDir,
}

fn cluster(worker_extra: &[&str]) -> Cluster {
    let (coordinator, addr, http) = crate::coordinator(&[]);
    let work = tempfile::tempdir().unwrap();
    let mut extra = vec!["--memory", "256MiB"];
    extra.extend_from_slice(worker_extra);
    let worker = crate::worker(&addr, work.path(), &extra);
    wait_for(&http, "the worker to register", |_, workers| {
        workers.as_array().is_some_and(|w| w.len() == 1)
    });
    Cluster {
        coordinator,
        _worker: worker,
        addr,
        http,
        _work: work,
    }
}

fn api(http: &str, path: &str) -> Value {
    let (code, body) = crate::http(http, "GET", path);
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// Polls the REST API until `done(jobs, workers)` holds.
fn wait_for(http: &str, what: &str, done: impl Fn(&Value, &Value) -> bool) -> (Value, Value) {
    let started = Instant::now();
    loop {
        let (jobs, workers) = (api(http, "/api/v1/jobs"), api(http, "/api/v1/workers"));
        if done(&jobs, &workers) {
            return (jobs, workers);
        }
        assert!(
            started.elapsed() < LIMIT,
            "waited {LIMIT:?} for {what}: jobs {jobs}, workers {workers}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `drove sql --coordinator ADDR -e SQL --format csv`: its stdout, or its stderr as the error.
fn sql(addr: &str, query: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec![
        "sql",
        "--coordinator",
        addr,
        "--no-progress",
        "--format",
        "csv",
        "-e",
        query,
    ];
    args.extend_from_slice(extra);
    let out = crate::run(&args, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(stderr)
    }
}

/// `drove sql -e QUERY --format csv` in the background, once its job runs.
fn start_query(cluster: &Cluster, query: &str) -> std::process::Child {
    let client = crate::drove()
        .args([
            "sql",
            "--coordinator",
            &cluster.addr,
            "--no-progress",
            "--format",
            "csv",
            "-e",
            query,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&cluster.http, "the job to run", |jobs, _| {
        jobs.as_array()
            .is_some_and(|j| j.iter().any(|j| j["state"] == "running"))
    });
    client
}

/// The query's single value, from single-process DataFusion on a thread deep enough
/// for its expressions.
fn reference_value(query: &str) -> String {
    let query = query.to_string();
    std::thread::Builder::new()
        .stack_size(512 << 20)
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let batches = runtime
                .block_on(drove_testkit::reference(&[], &query))
                .unwrap();
            arrow::util::display::array_value_to_string(batches[0].column(0), 0).unwrap()
        })
        .unwrap()
        .join()
        .unwrap()
}

/// The reported crash: a 1,000-term OR or a 3,000-term sum overflowed a runtime
/// thread's stack and aborted the coordinator, losing its job history.
#[test]
fn deep_expressions_run_and_equal_datafusion_and_the_coordinator_survives() {
    let mut cluster = cluster(&[]);
    let or_terms: Vec<String> = (0..1000).map(|i| format!("x = {}", i * 3)).collect();
    let deep_or = format!(
        "SELECT count(*) AS n FROM (VALUES (0), (1), (3), (4), (2997), (3000)) t(x) WHERE {}",
        or_terms.join(" OR ")
    );
    let sum_terms = vec!["x"; 3000].join(" + ");
    let deep_sum = format!("SELECT sum({sum_terms}) AS s FROM (VALUES (1), (2), (40)) t(x)");
    for query in [&deep_or, &deep_sum] {
        let expected = reference_value(query);
        let out = sql(&cluster.addr, query, &[]).unwrap_or_else(|e| panic!("{e}"));
        let value = out.lines().nth(1).unwrap_or_default();
        assert_eq!(value, expected, "query of {} bytes", query.len());
    }
    assert_eq!(
        sql(&cluster.addr, "SELECT 41 + 1 AS a", &[]).unwrap(),
        "a\n42\n"
    );
    assert!(
        cluster.coordinator.0.try_wait().unwrap().is_none(),
        "the coordinator died"
    );
}

/// The reported exhaustion: `target_partitions = 20000` made 59,994 tasks. A stage or
/// job beyond the limits is refused with the flag that raises it, and the flags of
/// `drove local` raise them.
#[test]
fn oversized_jobs_are_refused_naming_the_flag_that_raises_the_limit() {
    let cluster = cluster(&[]);
    let group_by = "SELECT x % 7 AS k, count(*) AS n FROM (VALUES (1), (2), (3), (9)) t(x) GROUP BY 1 ORDER BY 1";
    let e = sql(
        &cluster.addr,
        &format!("SET datafusion.execution.target_partitions = 20000; {group_by}"),
        &[],
    )
    .unwrap_err();
    assert!(
        e.contains("20000 tasks") && e.contains("--stage-partitions-max"),
        "{e}"
    );
    assert!(
        api(&cluster.http, "/api/v1/jobs")
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused job ran"
    );

    let (_local, line) = crate::spawn_until(
        &[
            "local",
            "--workers",
            "1",
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--stage-partitions-max",
            "6",
            "--job-tasks-max",
            "7",
        ],
        "coordinator:",
    );
    let local = line.split_whitespace().nth(1).unwrap().to_string();
    let with = |partitions: u32| {
        format!("SET datafusion.execution.target_partitions = {partitions}; {group_by}")
    };
    let e = sql(&local, &with(7), &[]).unwrap_err();
    assert!(
        e.contains("7 tasks") && e.contains("--stage-partitions-max"),
        "{e}"
    );
    // 1 + 6 + 1 tasks: the values, the group-by and the final merge.
    let e = sql(&local, &with(6), &[]).unwrap_err();
    assert!(
        e.contains("8 tasks") && e.contains("--job-tasks-max"),
        "{e}"
    );
    let out = sql(&local, &with(4), &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "k,n\n1,1\n2,2\n3,1\n");
}

/// The reported breakage: a 100 MB constant made a task message over the 64 MiB limit,
/// every worker's connection broke, and another job's shuffle data was thrown away.
/// It fails alone, while a job beside it succeeds on the same worker session.
#[test]
fn a_huge_constant_fails_its_own_job_and_a_job_beside_it_succeeds() {
    let cluster = cluster(&["--inject-task-delay-ms", "300"]);
    let (_, workers) = wait_for(&cluster.http, "a worker", |_, w| w[0].is_object());
    let worker_id = workers[0]["worker_id"].clone();
    let beside = "SELECT x % 3 AS k, count(*) AS n FROM (VALUES (1), (2), (3), (4)) t(x) GROUP BY 1 ORDER BY 1";
    let other = start_query(&cluster, beside);
    // A 40 MB literal: the SQL fits in a request, its stage's plan not in a task message.
    let dir = tempfile::tempdir().unwrap();
    let huge = dir.path().join("huge.sql");
    let literal = "x".repeat(40_000_000);
    std::fs::write(
        &huge,
        format!("SELECT '{literal}' AS s FROM (VALUES (1)) t(x)"),
    )
    .unwrap();
    let out = crate::run(
        &[
            "sql",
            "--coordinator",
            &cluster.addr,
            "--no-progress",
            "-f",
            huge.to_str().unwrap(),
        ],
        LIMIT,
    );
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains("over the") && e.contains("read large values from a table instead"),
        "{e}"
    );
    // A 100 MB value made by a function fails on its own too, naming the function.
    let e = sql(
        &cluster.addr,
        "SELECT repeat('x', 100000000) AS s FROM (VALUES (1)) t(x)",
        &[],
    )
    .unwrap_err();
    assert!(e.contains("repeat() would make"), "{e}");
    let out = other.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k,n\n0,1\n1,2\n2,1\n");
    let workers = api(&cluster.http, "/api/v1/workers");
    assert_eq!(
        workers[0]["worker_id"], worker_id,
        "the worker registered again: its session broke"
    );
}

/// The reported leak: Ctrl-C killed `drove sql` but its job ran on. Now the job is
/// cancelled, visible in the coordinator within seconds.
#[test]
fn ctrl_c_on_drove_sql_cancels_its_job() {
    let cluster = cluster(&["--inject-task-delay-ms", "60000"]);
    let client = start_query(&cluster, "SELECT count(*) FROM (VALUES (1), (2)) t(x)");
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &client.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let out = client.wait_with_output().unwrap();
    assert!(!out.status.success(), "an interrupted client exited 0");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("the job was cancelled"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(&cluster.http, "the job to be cancelled", |jobs, _| {
        jobs.as_array()
            .is_some_and(|j| j.len() == 1 && j[0]["state"] == "cancelled")
    });
}

/// A client that vanishes (SIGKILL: no chance to cancel) loses its job once its lease
/// lapses; a detached job outlives the same lease, and `drove result` reads it later.
#[test]
fn a_vanished_client_loses_its_job_and_a_detached_job_lives_on() {
    let (_coordinator, addr, http) = crate::coordinator(&["--client-lease-secs", "1"]);
    let work = tempfile::tempdir().unwrap();
    let _worker = crate::worker(&addr, work.path(), &["--inject-task-delay-ms", "4000"]);
    let query =
        "SELECT x % 2 AS k, count(*) AS n FROM (VALUES (1), (2), (3)) t(x) GROUP BY 1 ORDER BY 1";
    let detached = sql(&addr, query, &["--detach"]).unwrap_or_else(|e| panic!("{e}"));
    let detached: u64 = detached.trim().parse().expect("--detach prints the job id");

    let mut vanishing = crate::drove()
        .args(["sql", "--coordinator", &addr, "--no-progress", "-e", query])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (jobs, _) = wait_for(&http, "the client's job to run", |jobs, _| {
        jobs.as_array().is_some_and(|j| j.len() == 2)
    });
    let job = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_u64().unwrap())
        .max()
        .unwrap();
    vanishing.kill().unwrap();
    vanishing.wait().unwrap();
    let (jobs, _) = wait_for(&http, "the lease to lapse", |jobs, _| {
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["job_id"] == job && j["state"] == "cancelled")
    });
    let lapsed = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == job)
        .unwrap();
    assert!(
        lapsed["error"]
            .as_str()
            .unwrap()
            .contains("no client watched it"),
        "{lapsed}"
    );
    let still = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_id"] == detached)
        .unwrap();
    assert_ne!(
        still["state"], "cancelled",
        "the detached job lost its lease: {still}"
    );

    let out = crate::run(
        &[
            "result",
            &detached.to_string(),
            "--coordinator",
            &addr,
            "--format",
            "csv",
        ],
        LIMIT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "k,n\n0,1\n1,2\n");
    // Read once, the result is gone, and a second read says so.
    let again = crate::run(
        &["result", &detached.to_string(), "--coordinator", &addr],
        LIMIT,
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("result was already read"), "{stderr}");
}

/// Printing a large result holds only the batch in hand, in every format: the client
/// is a process of its own, and its peak resident memory is sampled while it prints.
#[test]
fn a_large_result_prints_in_every_format_in_bounded_client_memory() {
    let _alone = crate::exclusive();
    let rows: u64 = std::env::var("DROVE_PRINT_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let cluster = cluster(&[]);
    let query =
        format!("SELECT value AS v, value * 3 AS w, 'row' AS s FROM generate_series(1, {rows})");
    for format in ["csv", "json", "table"] {
        let mut client = crate::drove()
            .args([
                "sql",
                "--coordinator",
                &cluster.addr,
                "--no-progress",
                "--format",
                format,
                "-e",
                &query,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = client.id();
        let stdout = client.stdout.take().unwrap();
        let counter = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stdout).split(b'\n').count()
        });
        let mut peak = 0;
        while client.try_wait().unwrap().is_none() {
            if let Ok(rss) = drove_testkit::peak_rss(pid) {
                peak = peak.max(rss);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = client.wait().unwrap();
        assert!(status.success(), "--format {format} failed");
        let lines = counter.join().unwrap() as u64;
        // The header, the JSON array's brackets or the table's header and rules.
        let framing = match format {
            "csv" => 1,
            "json" => 2,
            _ => 4,
        };
        assert_eq!(lines, rows + framing, "--format {format}");
        eprintln!(
            "--format {format}: {rows} rows, client peak resident {} MiB",
            peak >> 20
        );
        assert!(peak > 0, "the client's memory was never sampled");
        assert!(
            peak < 300 << 20,
            "--format {format}: the client peaked at {} MiB",
            peak >> 20
        );
    }
}

/// The reported stall: a worker that heartbeats but never finishes its tasks held its
/// job until it left. Its stuck attempts are now retried on the other worker once they
/// make no progress for the timeout, and the job succeeds.
#[test]
fn a_worker_that_stops_making_progress_has_its_tasks_retried_elsewhere() {
    let (_coordinator, addr, http) = crate::coordinator(&[
        "--heartbeat-interval-ms",
        "200",
        "--heartbeat-timeout-ms",
        "1000",
        "--task-progress-timeout-secs",
        "2",
        "--no-speculation",
    ]);
    let work = tempfile::tempdir().unwrap();
    let worker = |extra: &[&str]| crate::worker(&addr, work.path(), extra);
    // Every task on this one sleeps for ten minutes: it heartbeats, but does no work.
    let _stuck = worker(&["--inject-task-delay-ms", "600000"]);
    let _healthy = worker(&[]);
    wait_for(&http, "both workers", |_, w| {
        w.as_array().is_some_and(|w| w.len() == 2)
    });
    let query = "SET datafusion.execution.target_partitions = 4; SELECT x % 3 AS k, count(*) AS n FROM (VALUES (1), (2), (3), (4)) t(x) GROUP BY 1 ORDER BY 1";
    let out = sql(&addr, query, &[]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out, "k,n\n0,1\n1,2\n2,1\n");
    let jobs = api(&http, "/api/v1/jobs");
    let job = jobs[0]["job_id"].as_u64().unwrap();
    let status = api(&http, &format!("/api/v1/jobs/{job}"));
    let retried = status["stages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["tasks"].as_array().unwrap())
        .filter(|t| t["attempt"].as_u64().unwrap() > 0)
        .count();
    assert!(retried > 0, "no task was retried: {status}");
}

/// The reported blow-up: `repeat(l_comment, 20000)` took a 256 MiB worker past 6 GB.
/// The function's result is bounded, so the job fails cleanly, naming it, and the
/// worker stays far under 1 GiB and runs the next query.
#[test]
fn a_function_that_makes_gigabytes_fails_its_job_within_the_workers_memory() {
    let cluster = cluster(&[]);
    let tpch = drove_testkit::tpch_data(0.01);
    let (_, workers) = wait_for(&cluster.http, "a worker", |_, w| w[0].is_object());
    let worker_id = workers[0]["worker_id"].clone();
    let e = sql(
        &cluster.addr,
        "SELECT max(length(repeat(l_comment, 20000))) FROM lineitem",
        &["--tpch", tpch.to_str().unwrap()],
    )
    .unwrap_err();
    assert!(
        e.contains("repeat() would make") && e.contains("repeat fewer times"),
        "{e}"
    );
    let workers = api(&cluster.http, "/api/v1/workers");
    assert_eq!(workers[0]["worker_id"], worker_id, "the worker was lost");
    let peak = workers[0]["memory"]["peak_bytes"].as_u64().unwrap();
    assert!(
        peak < 1 << 30,
        "the worker's memory peaked at {} MiB",
        peak >> 20
    );
    let pid = cluster._worker.0.id();
    let resident = drove_testkit::peak_rss(pid).unwrap();
    assert!(
        resident < 1 << 30,
        "the worker's resident memory peaked at {} MiB",
        resident >> 20
    );
    let out = sql(
        &cluster.addr,
        "SELECT count(*) AS n FROM lineitem",
        &["--tpch", tpch.to_str().unwrap()],
    )
    .unwrap();
    assert!(out.starts_with("n\n"), "{out}");
}

/// A coordinator whose scheduler state breaks an invariant (corrupted on purpose through
/// a hidden switch; the scheduler's own check finds it) exits at once with a non-zero
/// code that names the invariant, instead of listening on and doing nothing.
#[test]
fn a_broken_invariant_ends_the_coordinator_naming_it() {
    use std::io::{BufRead, BufReader};
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let mut child = crate::drove()
        .args([
            "coordinator",
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ])
        .env("DROVE_INJECT_FAULT", "phantom-attempt")
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines
        .find_map(|l| l.ok().filter(|l| l.contains("coordinator listening on")))
        .expect("the coordinator starts");
    std::thread::spawn(move || for _ in lines {});
    let addr = line.split_whitespace().nth(3).unwrap().to_string();
    let coordinator = crate::Proc(child);
    let work = tempfile::tempdir().unwrap();
    let _worker = crate::worker(&addr, work.path(), &[]);
    // The query cannot succeed: its coordinator goes away under it.
    let out = crate::run(&["sql", "--coordinator", &addr, "-e", "SELECT 1"], LIMIT);
    assert!(!out.status.success());
    let mut coordinator = coordinator;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = coordinator.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the coordinator still runs with a broken invariant"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(70), "{status:?}");
    let log = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(
        log.contains("fatal: scheduler invariant 'runs-agree' broken"),
        "{log}"
    );
}
