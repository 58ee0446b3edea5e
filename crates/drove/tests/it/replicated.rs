//! Three `drove coordinator` processes that replicate their metadata with Raft
//! (`--node-id`, `--peers`): one leads, a leader killed with SIGKILL mid-query costs
//! the query nothing, and the job history outlives a restart of all three.

use std::time::{Duration, Instant};

use std::path::Path;

use drove_testkit::{Proc, Replicated};
use serde_json::Value;

fn trio() -> Replicated {
    Replicated::start(Path::new(env!("CARGO_BIN_EXE_drove")), &[])
}

/// The index and term of the leader, once exactly one live coordinator leads and every
/// live one agrees on it.
fn leader(trio: &Replicated) -> (usize, u64) {
    let started = Instant::now();
    loop {
        let live: Vec<(usize, Value)> = (0..3)
            .filter(|i| trio.is_running(*i))
            .map(|i| {
                let (code, body) = crate::http(&trio.https[i], "GET", "/api/v1/cluster");
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

/// The coordinator at `http` ran none of the job's stages `done` (finished before
/// its predecessor died): the workers kept their outputs and reported them to it.
pub(crate) fn assert_not_run_again(http: &str, job: u64, done: &[u32]) {
    let (code, body) = crate::http(http, "GET", &format!("/api/v1/jobs/{job}"));
    assert_eq!(code, 200, "{body}");
    let stages = serde_json::from_str::<Value>(&body).unwrap()["stages"].clone();
    for stage in stages.as_array().unwrap() {
        if done.contains(&(stage["stage_id"].as_u64().unwrap() as u32)) {
            assert_eq!(stage["attempts_launched"], 0, "run again: {stage}");
            assert_eq!(stage["tasks_done"], stage["tasks_total"], "{stage}");
        }
    }
}

/// Q9 runs on three workers under three coordinators; the leader is killed with
/// SIGKILL once a stage has finished. Another is elected, runs the job on under the
/// same id without running the finished stages again, and `drove sql` (naming all
/// three) gets the right answer. Then all three are killed and started again: the job
/// is still in the history, and a table cached before is still in the catalog.
#[test]
fn a_query_outlives_its_leader_killed_mid_job_and_the_history_a_full_restart() {
    let dir = drove_testkit::tpch_data(0.01);
    let work = tempfile::tempdir().unwrap();
    let mut trio = trio();
    let (first, first_term) = leader(&trio);
    let list = trio.list();
    let _workers: Vec<Proc> = (0..3)
        .map(|_| crate::worker(&list, work.path(), &["--inject-task-delay-ms", "200"]))
        .collect();
    // Planned with every worker's slots.
    crate::durable::workers(&trio.https[first], 3);
    let q9 = drove_exec::tpch::QUERIES[8];
    let client = crate::multiprocess::tpch_sql(&list, &dir, q9);
    // A stage finished under the first leader's term.
    let (job, done) = crate::multiprocess::wait_for_done_stages(&list);
    trio.kill(first);
    let (second, second_term) = leader(&trio);
    assert_ne!(second, first);
    assert!(second_term > first_term, "{second_term} after {first_term}");
    let (stdout, _) = crate::multiprocess::finish(client);
    assert_eq!(stdout, crate::multiprocess::expected_csv(&dir, q9));
    // The second leader finished it, under the same id.
    let listed = crate::durable::jobs(&trio.https[second]);
    assert_eq!(listed[&job].1, "succeeded", "{listed:?}");
    assert_not_run_again(&trio.https[second], job, &done);
    // A cached table, to outlive the restart of all three.
    let cache = "CACHE TABLE t AS SELECT value % 7 AS k, count(*) AS n FROM generate_series(1, 1000) GROUP BY value % 7";
    crate::durable::sql(&list, &["-e", cache]);
    let read = "SELECT k, n FROM t ORDER BY k";
    let before = crate::durable::sql(&list, &["-e", read]);
    assert!(before.starts_with("k,n\n0,142\n"), "{before}");

    for i in 0..3 {
        trio.kill(i);
    }
    for i in 0..3 {
        trio.start_node(i);
    }
    let (third, _) = leader(&trio);
    let listed = crate::durable::jobs(&trio.https[third]);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(listed[&job].1, "succeeded", "{listed:?}");
    // The catalog kept the table: its partitions are computed again from its lineage.
    crate::durable::workers(&trio.https[third], 3);
    assert_eq!(crate::durable::sql(&list, &["-e", read]), before);
}

/// `drove status` naming a follower is answered by the leader, which lists every
/// coordinator; bad `--peers` are refused with the fix.
#[test]
fn a_follower_sends_clients_to_the_leader_and_bad_peers_are_refused() {
    let trio = trio();
    let (leader, term) = leader(&trio);
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

/// A test network: a hub namespace (workers and clients, 10.77.N.1) with a bridge, and
/// one namespace per coordinator (10.77.N.11, .12, .13) joined to it by a veth pair
/// whose hub end can be set down to cut that coordinator off from everyone.
pub(crate) struct Net {
    /// What names its namespaces and links apart from other tests' and runs'.
    tag: String,
    pub(crate) hub: String,
    pub(crate) coordinators: Vec<String>,
    pub(crate) subnet: u32,
}

fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs iproute2's `ip` (and root, for network namespaces): {e}")
        });
    assert!(
        out.status.success(),
        "ip {}: {} (this test needs root, for network namespaces)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    pub(crate) fn create() -> Self {
        // Each test of this process makes its own (link names stay under 16 bytes).
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let subnet = (std::process::id() + 37 * n) % 200 + 20;
        let tag = format!("drv{}{n}", std::process::id() % 1_000_000);
        let net = Net {
            tag: tag.clone(),
            hub: format!("{tag}-hub"),
            coordinators: (1..=3).map(|i| format!("{tag}-c{i}")).collect(),
            subnet,
        };
        ip(&["netns", "add", &net.hub]);
        ip(&["-n", &net.hub, "link", "set", "lo", "up"]);
        ip(&["-n", &net.hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &net.hub, "link", "set", "br0", "up"]);
        ip(&[
            "-n",
            &net.hub,
            "addr",
            "add",
            &format!("10.77.{subnet}.1/24"),
            "dev",
            "br0",
        ]);
        for (i, ns) in net.coordinators.iter().enumerate() {
            let (inner, outer) = (format!("{tag}i{i}"), format!("{tag}o{i}"));
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", ns]);
            ip(&["link", "set", &outer, "netns", &net.hub]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", net.addr(i)),
                "dev",
                &inner,
            ]);
            ip(&["-n", ns, "link", "set", &inner, "up"]);
            ip(&["-n", &net.hub, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &net.hub, "link", "set", &outer, "up"]);
        }
        net
    }

    /// Coordinator `i`'s address.
    pub(crate) fn addr(&self, i: usize) -> String {
        format!("10.77.{}.{}", self.subnet, 11 + i)
    }

    /// `drove` inside namespace `ns`.
    pub(crate) fn drove(ns: &str) -> std::process::Command {
        let mut c = std::process::Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_drove")]);
        c.env_remove("RUST_LOG");
        c
    }

    /// Cuts coordinator `i` off from the others and the hub, or joins it again.
    fn link(&self, i: usize, up: bool) {
        let outer = format!("{}o{i}", self.tag);
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &outer,
            if up { "up" } else { "down" },
        ]);
    }

    /// Runs `drove ARGS` in namespace `ns` to its end.
    pub(crate) fn run(ns: &str, args: &[&str]) -> std::process::Output {
        let mut c = Self::drove(ns);
        c.args(args);
        let child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.coordinators.iter().chain([&self.hub]) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// What `drove status` says of Raft: (leader's node id, term).
fn raft_line(text: &str) -> Option<(usize, u64)> {
    let line = text.lines().find(|l| l.starts_with("raft: node "))?;
    // "raft: node N, term T, leader node L at ADDR"
    let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    Some((words.get(7)?.parse().ok()?, words.get(4)?.parse().ok()?))
}

/// The leader is cut off from the other coordinators and the workers while Q9 runs:
/// the others elect a new leader, which finishes the job; the old one stops
/// scheduling (it answers that it does not lead); the client, which names all three,
/// gets the right answer once; after the partition heals the old leader follows.
#[test]
fn a_leader_cut_off_by_a_partition_is_replaced_and_stops_scheduling() {
    let dir = drove_testkit::tpch_data(0.01);
    let work = tempfile::tempdir().unwrap();
    let datas: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let net = Net::create();
    // Off loopback, so with mutual TLS: Raft, worker sessions, Flight and the
    // client's calls all cross the namespaces' links encrypted.
    let certs = tempfile::tempdir().unwrap();
    let cert = |name: &str, client: bool| {
        let out = certs.path().join(name);
        let ca = certs.path().join("ca");
        let mut args = vec![
            "cert",
            "issue",
            "--ca",
            ca.to_str().unwrap(),
            "--name",
            name,
        ];
        args.extend(["--out", out.to_str().unwrap()]);
        if client {
            args.push("--client");
        }
        let made = crate::run(&args, Duration::from_secs(30));
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        out.to_str().unwrap().to_string()
    };
    let ca = certs.path().join("ca");
    assert!(
        crate::run(
            &["cert", "init", "--out", ca.to_str().unwrap()],
            Duration::from_secs(30)
        )
        .status
        .success()
    );
    let coordinator_certs: Vec<String> =
        (1..=3).map(|i| cert(&format!("coord{i}"), false)).collect();
    let worker_cert = cert("worker", false);
    let client_cert = cert("client", true);
    let addrs: Vec<String> = (0..3).map(|i| format!("{}:7070", net.addr(i))).collect();
    let list = addrs.join(",");
    let peers = (addrs.iter().enumerate())
        .map(|(i, a)| format!("{}={a}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let _coordinators: Vec<Proc> = (0..3)
        .map(|i| {
            let mut c = Net::drove(&net.coordinators[i]);
            c.args(["coordinator", "--bind", &addrs[i]])
                .args(["--http", &format!("{}:7071", net.addr(i))])
                .args(["--node-id", &(i + 1).to_string(), "--peers", &peers])
                .args(["--tls-dir", &coordinator_certs[i]])
                .arg("--data-dir")
                .arg(datas[i].path());
            drove_testkit::spawn_until(c, "coordinator listening on").0
        })
        .collect();
    let status = |ns: &str, coordinator: &str| {
        let out = Net::run(
            ns,
            &[
                "status",
                "--coordinator",
                coordinator,
                "--tls-dir",
                &client_cert,
            ],
        );
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let _workers: Vec<Proc> = (0..3)
        .map(|_| {
            let mut c = Net::drove(&net.hub);
            c.args(["worker", "--coordinator", &list, "--slots", "2", "--bind"])
                .arg(format!("10.77.{}.1:0", net.subnet))
                .arg("--work-dir")
                .arg(work.path())
                .args(["--inject-task-delay-ms", "300"])
                .args(["--tls-dir", &worker_cert]);
            drove_testkit::spawn_until(c, "worker Flight service on").0
        })
        .collect();
    let started = Instant::now();
    let (old, term) = loop {
        let (text, _) = status(&net.hub, &list);
        if text.starts_with("3 workers")
            && let Some(found) = raft_line(&text)
        {
            break found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no cluster: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let q9 = drove_exec::tpch::QUERIES[8];
    let mut client = Net::drove(&net.hub);
    client
        .args(["sql", "--coordinator", &list, "--tpch"])
        .arg(&dir)
        .args(["--format", "csv", "-e", q9])
        .args(["--tls-dir", &client_cert])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let client = client.spawn().unwrap();
    // A stage finishes under the first leader.
    let started = Instant::now();
    loop {
        let (text, _) = status(&net.hub, &list);
        if text.contains("Running") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no job ran: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    net.link(old - 1, false);
    // The old leader, alone, answers no client from now on, not even in the second
    // before it notices the lost quorum by itself: no quorum confirms its lead (Raft's
    // read index), so it says it does not lead.
    let (text, stderr) = status(&net.coordinators[old - 1], &addrs[old - 1]);
    assert!(
        text.is_empty() && stderr.contains("is not the leader"),
        "the cut-off leader answered: {text}{stderr}"
    );
    // And it stops scheduling by itself once no quorum has answered it for a second:
    // its own view, which its web API serves without asking the quorum, no longer
    // says it leads.
    let node = drove_exec::tls::NODE_NAME;
    let own_view = || {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &net.coordinators[old - 1], "curl", "-sS"])
            .args(["--max-time", "10", "--resolve"])
            .arg(format!("{node}:7071:{}", net.addr(old - 1)))
            .arg("--cacert")
            .arg(format!("{client_cert}/ca.pem"))
            .arg("--cert")
            .arg(format!("{client_cert}/cert.pem"))
            .arg("--key")
            .arg(format!("{client_cert}/key.pem"))
            .arg(format!("https://{node}:7071/api/v1/cluster"))
            .output()
            .expect("running curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let started = Instant::now();
    loop {
        let body = own_view();
        let role = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["metadata"]["role"].as_str().map(str::to_string));
        if role.is_some_and(|r| r != "leader") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the cut-off leader still schedules: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The others elect a new leader in a later term.
    let started = Instant::now();
    let new = loop {
        let (text, _) = status(&net.hub, &list);
        if let Some((leader, t)) = raft_line(&text)
            && leader != old
            && t > term
        {
            break leader;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no new leader: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, _) = crate::multiprocess::finish(client);
    assert_eq!(stdout, crate::multiprocess::expected_csv(&dir, q9));

    net.link(old - 1, true);
    // Healed, the old leader follows the new one.
    let started = Instant::now();
    loop {
        let (text, _) = status(&net.coordinators[old - 1], &addrs[old - 1]);
        if raft_line(&text).is_some_and(|(leader, _)| leader == new) {
            // One job, answered once: the new leader's history has it succeeded.
            assert_eq!(text.matches("Succeeded").count(), 1, "{text}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the old leader does not follow: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
