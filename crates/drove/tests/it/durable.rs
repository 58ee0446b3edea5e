//! A coordinator with `--data-dir`, killed with SIGKILL and started again on the same
//! directory: what it acknowledged before is still there, and no id is given twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use drove_testkit::Proc;
use serde_json::Value;

/// A `drove coordinator` on the fixed gRPC address `addr` (workers find it again after
/// a restart there) keeping its metadata in `dir`; with its HTTP address.
fn coordinator_on(addr: &str, dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut command = crate::drove();
    command
        .args(["coordinator", "--bind", addr, "--http", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .args(extra);
    let (proc, line) = drove_testkit::spawn_until(command, "coordinator listening on");
    let http = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no HTTP address in: {line}"))
        .to_string();
    (proc, http)
}

/// The jobs the coordinator lists, by id: (name, state, error).
fn jobs(http: &str) -> BTreeMap<u64, (String, String, String)> {
    let (code, body) = crate::http(http, "GET", "/api/v1/jobs");
    assert_eq!(code, 200, "{body}");
    let list: Vec<Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .map(|j| {
            let text = |k: &str| j[k].as_str().unwrap_or_default().to_string();
            (
                j["job_id"].as_u64().unwrap(),
                (text("name"), text("state"), text("error")),
            )
        })
        .collect()
}

/// The ids of the registered workers, once there are `n`.
fn worker_ids(http: &str, n: usize) -> Vec<u64> {
    let started = Instant::now();
    loop {
        let (code, body) = crate::http(http, "GET", "/api/v1/workers");
        assert_eq!(code, 200, "{body}");
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        if list.len() == n {
            return list
                .iter()
                .map(|w| w["worker_id"].as_u64().unwrap())
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{n} workers did not register: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sql(addr: &str, args: &[&str]) -> String {
    let mut all = vec!["sql", "--coordinator", addr, "--format", "csv"];
    all.extend_from_slice(args);
    let out = crate::run(&all, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "drove {}: {}",
        all.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_restarted_coordinator_keeps_its_history_and_gives_no_id_twice() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (mut coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    let _worker = crate::worker(&addr, work.path(), &[]);
    assert_eq!(worker_ids(&http, 1), vec![1]);

    assert_eq!(
        sql(&addr, &["-e", "SELECT 41 + 1 AS answer"]),
        "answer\n42\n"
    );
    assert_eq!(sql(&addr, &["-e", "SELECT 'two' AS n"]), "n\ntwo\n");
    // A job that is still running when the coordinator dies.
    let detached = sql(
        &addr,
        &[
            "--detach",
            "-e",
            "SELECT count(*) FROM generate_series(1, 100000000000)",
        ],
    );
    let running: u64 = detached
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no job id in: {detached}"));
    let before = jobs(&http);
    assert_eq!(before.len(), 3, "{before:?}");
    assert_eq!(before[&running].1, "running");

    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let (_coordinator, http) = coordinator_on(&addr, data.path(), &[]);

    let after = jobs(&http);
    for (id, (name, state, _)) in &before {
        let (name_after, state_after, error) = &after[id];
        assert_eq!(name_after, name, "job {id}'s name");
        if *id == running {
            assert_eq!(state_after, "failed");
            assert!(error.contains("coordinator stopped"), "{error}");
        } else {
            assert_eq!(state_after, state, "job {id}");
            assert_eq!(state, "succeeded");
        }
    }
    // The worker comes back under a new id, and new jobs get new ids.
    assert_eq!(worker_ids(&http, 1), vec![2]);
    assert_eq!(sql(&addr, &["-e", "SELECT 3 AS three"]), "three\n3\n");
    let newest = *jobs(&http).keys().max().unwrap();
    assert_eq!(newest, running + 1);
}

/// Kills the coordinator with SIGKILL at random moments while clients submit jobs and
/// wait for them, restarts it on its data directory each time, and checks the whole
/// history: every job a client was given an id for is still listed (one whose success
/// a client saw, as succeeded), and ids only grow, never given twice.
#[test]
fn acknowledged_jobs_survive_kills_at_random_points() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let extra = ["--job-history", "10000"];
    let (mut coordinator, mut http) = coordinator_on(&addr, data.path(), &extra);
    let _worker = crate::worker(&addr, work.path(), &[]);
    worker_ids(&http, 1);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut submitted: Vec<u64> = Vec::new();
    let mut succeeded: Vec<u64> = Vec::new();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for round in 0..10 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let kill_after = Duration::from_millis(200 + seed % 1_300);
        let pid = coordinator.0.id().to_string();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            std::process::Command::new("kill")
                .args(["-KILL", &pid])
                .status()
                .unwrap()
        });
        let (ids, ok) = runtime.block_on(submit_until_cut_off(&addr));
        assert!(killer.join().unwrap().success());
        coordinator.0.wait().unwrap();
        assert!(!ids.is_empty(), "round {round}: no job was submitted");
        let last = submitted.last().copied().unwrap_or(0);
        assert!(
            ids.iter().all(|id| *id > last),
            "round {round}: an id was given again: {ids:?} after {last}"
        );
        eprintln!(
            "round {round}: {} submitted, {} succeeded",
            ids.len(),
            ok.len()
        );
        submitted.extend(ids);
        succeeded.extend(ok);
        (coordinator, http) = coordinator_on(&addr, data.path(), &extra);
        let listed = jobs(&http);
        for id in &submitted {
            assert!(listed.contains_key(id), "round {round}: job {id} is gone");
        }
        for id in &succeeded {
            assert_eq!(listed[id].1, "succeeded", "round {round}: job {id}");
        }
        assert!(
            listed.values().all(|(_, state, _)| state != "running"),
            "round {round}: a job from before the kill still runs: {listed:?}"
        );
    }
    assert!(
        succeeded.len() > 10,
        "too few jobs ran to check anything: {succeeded:?}"
    );
}

/// Submits `SELECT 1` jobs back to back and waits for each, until the coordinator stops
/// answering; the ids given, and the ids whose results arrived. A call cut off by the
/// kill is neither.
async fn submit_until_cut_off(addr: &str) -> (Vec<u64>, Vec<u64>) {
    let session = drove_client::Session::connect(addr).await.unwrap();
    let (mut ids, mut ok) = (Vec::new(), Vec::new());
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the coordinator was not killed"
        );
        let Ok(id) = session.submit_sql("SELECT 1 AS one").await else {
            break;
        };
        ids.push(id);
        let Ok(stream) = session.result(id).await else {
            break;
        };
        if stream.collect().await.is_err() {
            break;
        }
        ok.push(id);
    }
    (ids, ok)
}

#[test]
fn a_data_dir_that_cannot_be_used_is_refused_with_the_fix() {
    let data = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (_first, _) = coordinator_on(&addr, data.path(), &[]);
    let file = data.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    for (dir, expected) in [
        (data.path(), "in use by another coordinator"),
        (file.as_path(), "cannot create the data directory"),
    ] {
        let out = crate::run(
            &[
                "coordinator",
                "--bind",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--data-dir",
                dir.to_str().unwrap(),
            ],
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
