//! Three `drove coordinator` processes that replicate their metadata with Raft
//! (`--node-id`, `--peers`): one leads, a leader killed with SIGKILL mid-query costs
//! the query nothing, and the job history outlives a restart of all three.

use std::time::{Duration, Instant};

use drove_testkit::Proc;
use serde_json::Value;

/// Three coordinators on fixed loopback addresses, each with its data directory.
struct Trio {
    procs: Vec<Option<Proc>>,
    addrs: Vec<String>,
    https: Vec<String>,
    dirs: Vec<tempfile::TempDir>,
}

impl Trio {
    fn start() -> Self {
        let addrs: Vec<String> = (0..3)
            .map(|_| drove_testkit::unused_addr().to_string())
            .collect();
        let mut trio = Trio {
            procs: (0..3).map(|_| None).collect(),
            https: vec![String::new(); 3],
            dirs: (0..3).map(|_| tempfile::tempdir().unwrap()).collect(),
            addrs,
        };
        for i in 0..3 {
            trio.start_node(i);
        }
        trio
    }

    fn peers(&self) -> String {
        (self.addrs.iter().enumerate())
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every coordinator's gRPC address, comma-separated, as clients name them.
    fn list(&self) -> String {
        self.addrs.join(",")
    }

    fn start_node(&mut self, i: usize) {
        let node_id = (i + 1).to_string();
        let peers = self.peers();
        let dir = self.dirs[i].path().to_str().unwrap().to_string();
        let (proc, _, http) = drove_testkit::start_coordinator_at(
            crate::drove(),
            &self.addrs[i],
            &["--node-id", &node_id, "--peers", &peers, "--data-dir", &dir],
        );
        self.procs[i] = Some(proc);
        self.https[i] = http;
    }

    /// Kills coordinator `i` with SIGKILL.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    /// The index and term of the leader, once exactly one live coordinator leads and
    /// every live one agrees on it.
    fn leader(&self) -> (usize, u64) {
        let started = Instant::now();
        loop {
            let live: Vec<(usize, Value)> = (0..3)
                .filter(|i| self.procs[*i].is_some())
                .map(|i| {
                    let (code, body) = crate::http(&self.https[i], "GET", "/api/v1/cluster");
                    assert_eq!(code, 200, "{body}");
                    (
                        i,
                        serde_json::from_str::<Value>(&body).unwrap()["metadata"].clone(),
                    )
                })
                .collect();
            let leaders: Vec<&(usize, Value)> =
                live.iter().filter(|(_, m)| m["role"] == "leader").collect();
            if let [(i, m)] = leaders[..] {
                let node = (*i + 1) as u64;
                if live.iter().all(|(_, o)| o["leader_id"] == node) {
                    return (*i, m["term"].as_u64().unwrap());
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no single leader emerged: {live:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Q9 runs on three workers under three coordinators; the leader is killed with
/// SIGKILL once a stage has finished. Another is elected, runs the job on under the
/// same id, and `drove sql` (naming all three) gets the right answer. Then all three
/// are killed and started again: the job is still in the history.
#[test]
fn a_query_outlives_its_leader_killed_mid_job_and_the_history_a_full_restart() {
    let dir = drove_testkit::tpch_data(0.01);
    let work = tempfile::tempdir().unwrap();
    let mut trio = Trio::start();
    let (first, first_term) = trio.leader();
    let list = trio.list();
    let _workers: Vec<Proc> = (0..3)
        .map(|_| crate::worker(&list, work.path(), &["--inject-task-delay-ms", "200"]))
        .collect();
    // Planned with every worker's slots.
    crate::durable::workers(&trio.https[first], 3);
    let q9 = drove_exec::tpch::QUERIES[8];
    let client = crate::drove()
        .args(["sql", "--coordinator", &list, "--tpch"])
        .arg(&dir)
        .args(["--format", "csv", "-e", q9])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A stage finished under the first leader's term.
    let job = crate::multiprocess::wait_past_first_stage(&list);
    trio.kill(first);
    let (second, second_term) = trio.leader();
    assert_ne!(second, first);
    assert!(second_term > first_term, "{second_term} after {first_term}");
    let (stdout, _) = crate::multiprocess::finish(client);
    assert_eq!(stdout, crate::multiprocess::expected_csv(&dir, q9));
    // The second leader finished it, under the same id.
    let listed = crate::durable::jobs(&trio.https[second]);
    assert_eq!(listed[&job].1, "succeeded", "{listed:?}");

    for i in 0..3 {
        trio.kill(i);
    }
    for i in 0..3 {
        trio.start_node(i);
    }
    let (third, _) = trio.leader();
    let listed = crate::durable::jobs(&trio.https[third]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[&job].1, "succeeded", "{listed:?}");
}

/// `drove status` naming a follower is answered by the leader, which lists every
/// coordinator; bad `--peers` are refused with the fix.
#[test]
fn a_follower_sends_clients_to_the_leader_and_bad_peers_are_refused() {
    let trio = Trio::start();
    let (leader, term) = trio.leader();
    let follower = (leader + 1) % 3;
    let out = crate::run(
        &["status", "--coordinator", &trio.addrs[follower]],
        Duration::from_secs(60),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!(
            "raft: node {}, term {term}, leader node {}",
            leader + 1,
            leader + 1
        )),
        "{text}"
    );
    for i in 0..3 {
        assert!(
            text.contains(&format!("  coordinator {} at {}: ", i + 1, trio.addrs[i])),
            "{text}"
        );
    }
    // The follower's own page says whom it follows.
    let (_, body) = crate::http(&trio.https[follower], "GET", "/");
    assert!(
        body.contains(&format!("Leader: {} at", leader + 1)),
        "{body}"
    );

    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    for (args, says) in [
        (
            vec!["--node-id", "1", "--peers", "1=127.0.0.1:1"],
            "--peers needs --data-dir",
        ),
        (
            vec![
                "--node-id",
                "4",
                "--peers",
                "1=127.0.0.1:1",
                "--data-dir",
                dir,
            ],
            "--node-id 4 is not among --peers (1)",
        ),
        (
            vec!["--node-id", "1", "--peers", "1=nowhere", "--data-dir", dir],
            "is not HOST:PORT",
        ),
        (
            vec!["--peers", "1=127.0.0.1:1", "--data-dir", dir],
            "--node-id",
        ),
    ] {
        let mut all = vec![
            "coordinator",
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ];
        all.extend_from_slice(&args);
        let out = crate::run(&all, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// `drove local --coordinators 3` runs three replicated coordinators in one process:
/// queries naming all three run, and `drove status` lists them; two are refused.
#[test]
fn drove_local_runs_three_replicated_coordinators() {
    let addr = drove_testkit::unused_addr().to_string();
    let http = drove_testkit::unused_addr().to_string();
    let (_local, line) = crate::spawn_until(
        &[
            "local",
            "--workers",
            "2",
            "--coordinators",
            "3",
            "--bind",
            &addr,
            "--http",
            &http,
        ],
        "coordinator:",
    );
    // "coordinator: A,B,C"
    let list = line.trim_start_matches("coordinator:").trim().to_string();
    assert_eq!(list.split(',').count(), 3, "{line}");
    assert!(list.starts_with(&addr), "{line}");
    let out = crate::run(
        &[
            "sql",
            "--coordinator",
            &list,
            "--format",
            "csv",
            "-e",
            "SELECT 5 AS five",
        ],
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "five\n5\n");
    let out = crate::run(&["status", "--coordinator", &list], Duration::from_secs(60));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("2 workers"), "{text}");
    assert_eq!(text.matches("  coordinator ").count(), 3, "{text}");

    let out = crate::run(&["local", "--coordinators", "2"], Duration::from_secs(30));
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("run 1, or 3 or 5"), "{stderr}");
}
