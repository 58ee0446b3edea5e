//! A coordinator with `--data-dir`, killed with SIGKILL and started again on the same
//! directory: what it acknowledged before is still there, and no id is given twice.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use drove_testkit::Proc;
use serde_json::Value;

/// A `drove coordinator` on the fixed gRPC address `addr` (workers find it again after
/// a restart there) keeping its metadata in `dir`; with its HTTP address.
fn coordinator_on(addr: &str, dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--data-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    coordinator_at(addr, &args)
}

/// A `drove coordinator` on the fixed gRPC address `addr` with `extra` flags; with its
/// HTTP address.
fn coordinator_at(addr: &str, extra: &[&str]) -> (Proc, String) {
    let (proc, _, http) = drove_testkit::start_coordinator_at(crate::drove(), addr, extra);
    (proc, http)
}

/// The jobs the coordinator lists, by id: (name, state, error).
pub(crate) fn jobs(http: &str) -> BTreeMap<u64, (String, String, String)> {
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
    workers(http, n).into_iter().map(|(id, _)| id).collect()
}

/// The registered workers' ids and node ids, once there are `n`.
pub(crate) fn workers(http: &str, n: usize) -> Vec<(u64, String)> {
    let started = Instant::now();
    loop {
        let (code, body) = crate::http(http, "GET", "/api/v1/workers");
        assert_eq!(code, 200, "{body}");
        let list: Vec<Value> = serde_json::from_str(&body).unwrap();
        if list.len() == n {
            return list
                .iter()
                .map(|w| {
                    let node = w["node_id"].as_str().unwrap().to_string();
                    (w["worker_id"].as_u64().unwrap(), node)
                })
                .collect();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{n} workers did not register: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts `drove sql -e SQL` in the background, and returns it once a job runs.
fn sql_until_running(addr: &str, http: &str, sql: &str) -> std::process::Child {
    let client = crate::drove()
        .args(["sql", "--coordinator", addr, "-e", sql])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !jobs(http).values().any(|(_, state, _)| state == "running") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the job did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client
}

pub(crate) fn sql(addr: &str, args: &[&str]) -> String {
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
    let metadata = |http: &str| {
        let (code, body) = crate::http(http, "GET", "/api/v1/cluster");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Value>(&body).unwrap()["metadata"].clone()
    };
    let meta = metadata(&http);
    assert_eq!(meta["data_dir"], data.path().to_str().unwrap(), "{meta}");
    assert!(meta["log_index"].as_u64().unwrap() >= 7, "{meta}");

    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let (_coordinator, http) = coordinator_on(&addr, data.path(), &[]);

    let again = metadata(&http);
    assert_eq!(again["cluster_id"], meta["cluster_id"], "the same cluster");
    let status = crate::run(&["status", "--coordinator", &addr], Duration::from_secs(60));
    let printed = String::from_utf8_lossy(&status.stdout);
    assert!(
        printed.contains("coordinator: single, metadata in"),
        "{printed}"
    );
    let (code, page) = crate::http(&http, "GET", "/");
    assert_eq!(code, 200);
    assert!(page.contains("log entry"), "{page}");
    let after = jobs(&http);
    for (id, (name, state, _)) in &before {
        let (name_after, state_after, _) = &after[id];
        assert_eq!(name_after, name, "job {id}'s name");
        assert_eq!(state_after, state, "job {id}");
    }
    // The worker comes back under a new id, and new jobs get new ids; the job that
    // was running runs again.
    assert_eq!(worker_ids(&http, 1), vec![2]);
    assert_eq!(sql(&addr, &["-e", "SELECT 3 AS three"]), "three\n3\n");
    let newest = *jobs(&http).keys().max().unwrap();
    assert_eq!(newest, running + 1);
    let out = crate::run(
        &["cancel", "--coordinator", &addr, &running.to_string()],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(jobs(&http)[&running].1, "cancelled");
}

/// A TPC-H query whose coordinator is killed with SIGKILL once a stage has finished,
/// and started again on its data directory: the job runs on under the same id without
/// the stages its workers kept, the client takes up its watch, and gets the right
/// answer.
#[test]
fn a_query_outlives_its_coordinator_killed_and_restarted_mid_job() {
    let dir = drove_testkit::tpch_data(0.01);
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (mut coordinator, _) = coordinator_on(&addr, data.path(), &[]);
    let _workers: Vec<Proc> = (0..2)
        .map(|_| crate::worker(&addr, work.path(), &["--inject-task-delay-ms", "200"]))
        .collect();
    let q9 = drove_exec::tpch::QUERIES[8];
    let client = crate::multiprocess::tpch_sql(&addr, &dir, q9);
    let (job, done) = crate::multiprocess::wait_for_done_stages(&addr);
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let (_coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    let (stdout, _) = crate::multiprocess::finish(client);
    assert_eq!(stdout, crate::multiprocess::expected_csv(&dir, q9));
    let listed = jobs(&http);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[&job].1, "succeeded");
    crate::replicated::assert_not_run_again(&http, job, &done);
}

/// A job that caches a table cannot run again after a restart (the cached tables are
/// not kept yet): its client is told why.
#[test]
fn a_caching_job_cut_off_by_a_restart_fails_saying_why() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (mut coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    let _worker = crate::worker(&addr, work.path(), &[]);
    let client = sql_until_running(
        &addr,
        &http,
        "CACHE TABLE big AS SELECT count(*) AS n FROM generate_series(1, 100000000000)",
    );
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let (_coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("caches a table"), "{stderr}");
    let listed = jobs(&http);
    assert!(
        listed.values().all(|(_, state, _)| state == "failed"),
        "{listed:?}"
    );
}

/// What the client was told: the ids it was given, and the jobs whose answer it read.
#[derive(Default, Clone, Debug)]
struct Acknowledged {
    submitted: Vec<u64>,
    answered: Vec<u64>,
}

/// Kills the coordinator with SIGKILL at random moments while a client submits jobs
/// and reads their answers, restarts it on its data directory each time, and checks
/// the history against what the client was told: every job it was given an id for is
/// still listed, every job whose answer it read is listed as succeeded, and ids only
/// grow, never given twice.
#[test]
fn acknowledged_jobs_survive_kills_at_random_points() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let extra = ["--job-history", "10000"];
    let (mut coordinator, mut http) = coordinator_on(&addr, data.path(), &extra);
    let _worker = crate::worker(&addr, work.path(), &[]);
    worker_ids(&http, 1);

    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, acked, stop) = (addr.clone(), Arc::clone(&acked), Arc::clone(&stop));
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(submit_and_read(&addr, &acked, &stop))
        })
    };
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut in_flight = std::collections::BTreeSet::new();
    for round in 0..8 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(seed % 1_000));
        // Kill while a job runs that no earlier kill cut into.
        let newest = in_flight.last().copied().unwrap_or(0);
        let started = Instant::now();
        while !jobs(&http)
            .iter()
            .any(|(id, (_, state, _))| *id > newest && state == "running")
        {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "round {round}: no job runs"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        coordinator.0.kill().unwrap();
        coordinator.0.wait().unwrap();
        // The coordinator is gone: nothing more can be submitted to it, and what the
        // client read from here on, the restarted one answered.
        let before = acked.lock().unwrap().clone();
        in_flight.extend(
            before
                .submitted
                .iter()
                .filter(|id| !before.answered.contains(id)),
        );
        (coordinator, http) = coordinator_on(&addr, data.path(), &extra);
        let listed = jobs(&http);
        for id in &before.submitted {
            assert!(listed.contains_key(id), "round {round}: job {id} is gone");
        }
        for id in &before.answered {
            assert_eq!(listed[id].1, "succeeded", "round {round}: job {id}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    // Jobs in flight at a kill whose answers came from the restarted coordinator.
    let carried = in_flight
        .iter()
        .filter(|id| acked.answered.contains(id))
        .count();
    assert!(
        carried >= 4,
        "only {carried} jobs in flight at a kill were answered after it ({} in flight)",
        in_flight.len()
    );
    // None is lost: each was answered, or has ended (one whose answer went with the
    // workers' blocks at a kill), or runs on unwatched until its lease ends.
    let listed = jobs(&http);
    for id in &acked.submitted {
        assert!(listed.contains_key(id), "job {id} is gone");
    }
    assert!(
        acked.submitted.windows(2).all(|w| w[0] < w[1]),
        "an id was given twice: {:?}",
        acked.submitted
    );
}

/// A job that runs long enough (a few hundred milliseconds) for kills to land in it.
const QUERY: &str = "SELECT count(*) AS n FROM generate_series(1, 3000000)";

/// Submits [`QUERY`] jobs back to back and reads each answer, until `stop`. A
/// submission cut off by a kill is tried again; a job whose answer cannot be read
/// (its blocks went with the workers' session) is left.
async fn submit_and_read(addr: &str, acked: &Mutex<Acknowledged>, stop: &AtomicBool) {
    let session = drove_client::Session::connect(addr).await.unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Ok(id) = session.submit_sql(QUERY).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        acked.lock().unwrap().submitted.push(id);
        let Ok(stream) = session.result(id).await else {
            continue;
        };
        if let Ok(result) = stream.collect().await {
            let n = arrow::compute::concat_batches(&result.schema, &result.batches).unwrap();
            let n = n
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>();
            assert_eq!(
                n.map(|n| n.values().to_vec()),
                Some(vec![3_000_000]),
                "job {id}"
            );
            acked.lock().unwrap().answered.push(id);
        }
    }
}

/// A coordinator without a data directory forgets its jobs when it restarts, and gives
/// their ids to new jobs: a client waiting for one of the old ones is told it was
/// lost, and is not handed the new job of the same id.
#[test]
fn a_client_whose_coordinator_restarts_without_its_data_is_told_its_job_was_lost() {
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (mut coordinator, http) = coordinator_at(&addr, &[]);
    let _worker = crate::worker(&addr, work.path(), &[]);
    let client = sql_until_running(
        &addr,
        &http,
        "SELECT count(*) AS n FROM generate_series(1, 100000000000)",
    );
    // Watches job 1 as of the cluster `cluster_id` (0: any); the cluster of its status.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let watch = |cluster_id: u64| {
        runtime.block_on(async {
            let endpoint = format!("http://{addr}");
            let mut client =
                drove_client::proto::coordinator_client::CoordinatorClient::connect(endpoint)
                    .await
                    .unwrap();
            let request = drove_client::proto::JobRequest {
                job_id: 1,
                cluster_id,
            };
            let mut updates = client.watch_job(request).await?.into_inner();
            Ok::<_, tonic::Status>(updates.message().await?.unwrap().cluster_id)
        })
    };
    let old_cluster = watch(0).unwrap();
    assert_ne!(old_cluster, 0);
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let (_coordinator, http) = coordinator_at(&addr, &[]);
    worker_ids(&http, 1);
    // The new coordinator's job 1, which the waiting client must not take for its own.
    assert_eq!(sql(&addr, &["-e", "SELECT 1 AS one"]), "one\n1\n");
    assert!(jobs(&http).contains_key(&1));
    let new_cluster = watch(0).unwrap();
    assert_ne!(new_cluster, old_cluster);
    let refused = watch(old_cluster).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused}");
    let out = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("was lost"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A worker keeps its node id in its data directory: started again there it is the
/// same node under a new worker id; a second worker cannot share the directory.
#[test]
fn a_worker_restarted_on_its_data_dir_keeps_its_node_id() {
    let (_coordinator, addr, http) = crate::coordinator(&[]);
    let (data, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let flags = ["--data-dir", data.path().to_str().unwrap()];
    let worker = crate::worker(&addr, work.path(), &flags);
    let [(first_id, ref node)] = workers(&http, 1)[..] else {
        unreachable!()
    };
    assert!(node.starts_with("node-"), "{node}");

    let out = crate::run(
        &["worker", "--coordinator", &addr, "--data-dir", flags[1]],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("in use by another worker"), "{stderr}");

    drop(worker);
    workers(&http, 0);
    let _again = crate::worker(&addr, work.path(), &flags);
    let [(second_id, ref same)] = workers(&http, 1)[..] else {
        unreachable!()
    };
    assert_eq!(same, node);
    assert!(second_id > first_id);
    let (code, page) = crate::http(&http, "GET", &format!("/workers/{second_id}"));
    assert_eq!(code, 200);
    assert!(page.contains(node.as_str()), "{page}");
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

/// `drove local --data-dir`, killed and started again: the same history, and its
/// worker the same node under a new worker id.
#[test]
fn drove_local_on_its_data_dir_comes_back_with_its_history_and_nodes() {
    let data = tempfile::tempdir().unwrap();
    let (addr, http) = (
        drove_testkit::unused_addr().to_string(),
        drove_testkit::unused_addr().to_string(),
    );
    let start = || {
        let dir = data.path().to_str().unwrap();
        let args = ["local", "--workers", "1", "--bind", &addr, "--http", &http];
        let mut all = args.to_vec();
        all.extend(["--data-dir", dir]);
        crate::spawn_until(&all, "coordinator:").0
    };
    let mut local = start();
    let before = workers(&http, 1);
    assert_eq!(sql(&addr, &["-e", "SELECT 5 AS five"]), "five\n5\n");
    local.0.kill().unwrap();
    local.0.wait().unwrap();

    let _again = start();
    let after = workers(&http, 1);
    assert_eq!(after[0].1, before[0].1, "the same node");
    assert!(after[0].0 > before[0].0, "a new worker id");
    assert_eq!(jobs(&http)[&1].1, "succeeded");
    assert!(data.path().join("coordinator").is_dir() && data.path().join("worker-1").is_dir());
}

/// A cached table outlives a restart on the data directory (its partitions, gone with
/// the workers' blocks, are computed again from its lineage when read); an uncached
/// one stays uncached.
#[test]
fn cached_tables_survive_a_restart_and_are_computed_again() {
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (mut coordinator, _) = coordinator_on(&addr, data.path(), &[]);
    let _worker = crate::worker(&addr, work.path(), &[]);
    let cache = "CACHE TABLE t AS SELECT value % 7 AS k, count(*) AS n FROM generate_series(1, 1000) GROUP BY value % 7";
    sql(&addr, &["-e", cache]);
    // A table cached from the cached one: its lineage reads t's.
    sql(&addr, &["-e", "CACHE TABLE v AS SELECT sum(n) AS s FROM t"]);
    sql(&addr, &["-e", "CACHE TABLE gone AS SELECT 1 AS one"]);
    sql(&addr, &["-e", "UNCACHE TABLE gone"]);
    let read = "SELECT k, n FROM t ORDER BY k";
    let before = sql(&addr, &["-e", read]);
    assert!(before.starts_with("k,n\n0,142\n"), "{before}");
    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();

    let (_coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    worker_ids(&http, 1);
    assert_eq!(sql(&addr, &["-e", read]), before);
    assert_eq!(sql(&addr, &["-e", "SELECT s FROM v"]), "s\n1000\n");
    // New tables get ids of their own after the restart, beside the kept ones.
    sql(
        &addr,
        &["-e", "CACHE TABLE u AS SELECT k FROM t WHERE n > 142"],
    );
    assert_eq!(sql(&addr, &["-e", "SELECT count(*) AS c FROM u"]), "c\n6\n");
    assert_eq!(sql(&addr, &["-e", read]), before);
    let out = crate::run(
        &["sql", "--coordinator", &addr, "-e", "SELECT * FROM gone"],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("gone"), "{stderr}");
    let again = crate::run(
        &["sql", "--coordinator", &addr, "-e", cache],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(stderr.contains("already cached"), "{stderr}");
}

/// A client that lost its coordinator mid-submission cannot tell whether the job was
/// taken, so it sends the same submission again, with the same request id: the
/// coordinator restarted on its data directory answers with the job the first made
/// instead of running it twice; another request id is another job.
#[test]
fn a_submission_sent_again_after_a_restart_gets_the_same_job() {
    use drove_client::proto as pb;
    let data = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let addr = drove_testkit::unused_addr().to_string();
    let (mut coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    let _worker = crate::worker(&addr, work.path(), &[]);
    worker_ids(&http, 1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let submit = |request_id: u64| {
        runtime.block_on(async {
            let endpoint = format!("http://{addr}");
            let mut client = pb::coordinator_client::CoordinatorClient::connect(endpoint)
                .await
                .unwrap();
            let request = pb::SubmitJobRequest {
                query: Some(pb::submit_job_request::Query::Sql(
                    "SELECT count(*) FROM generate_series(1, 100000000000)".into(),
                )),
                detached: true,
                request_id,
                ..Default::default()
            };
            client
                .submit_job(request)
                .await
                .unwrap()
                .into_inner()
                .job_id
        })
    };
    let first = submit(0xfeed);
    assert_eq!(submit(0xfeed), first, "sent again to the same coordinator");

    coordinator.0.kill().unwrap();
    coordinator.0.wait().unwrap();
    let (_coordinator, http) = coordinator_on(&addr, data.path(), &[]);
    assert_eq!(submit(0xfeed), first, "sent again after the restart");
    let other = submit(0xbeef);
    assert_ne!(other, first, "another request is another job");
    let listed = jobs(&http);
    assert_eq!(
        listed.keys().copied().collect::<Vec<_>>(),
        vec![first, other],
        "{listed:?}"
    );
}
