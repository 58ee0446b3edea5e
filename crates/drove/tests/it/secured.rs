//! A secured cluster on a network: a coordinator and workers on addresses of network
//! namespaces the test makes (not loopback), with mutual TLS and tokens. The right
//! credentials work; no credentials, a forged, malformed or revoked token, another
//! tenant's token, a worker of another CA, and raw Flight reads without the job's
//! grant are refused; every listening port is scanned for what it answers without
//! credentials; refusals are audit lines.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use drove_testkit::Proc;

use crate::replicated::Net;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "drove failed: {}{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

fn failed(out: &Output) -> String {
    assert!(!out.status.success(), "drove succeeded: {}", stdout(out));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `curl` in namespace `ns`: (exit code, what it printed).
fn curl(ns: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("running curl");
    let text = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text.trim().to_string())
}

/// The TCP ports listening in namespace `ns`.
fn listening(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-ltnH"])
        .output()
        .expect("running ss");
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

#[test]
fn a_secured_cluster_on_a_network_lets_in_only_what_it_should() {
    let net = Net::create();
    let (coordinator_ns, hub) = (&net.coordinators[0], &net.hub);
    let host = net.addr(0);
    let addr = format!("{host}:7070");
    let hub_ip = format!("10.77.{}.1", net.subnet);

    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let limit = Duration::from_secs(60);
    let ca = r.join("ca");
    ok(&crate::run(&["cert", "init", "--out", path(&ca)], limit));
    let issue = |ca: &Path, name: &str, client: bool| {
        let out = r.join(name);
        let mut args = vec!["cert", "issue", "--ca", path(ca), "--name", name];
        args.extend(["--out", path(&out)]);
        if client {
            args.push("--client");
        }
        ok(&crate::run(&args, limit));
        out
    };
    let coordinator_dir = issue(&ca, "coordinator", false);
    let worker_dir = issue(&ca, "worker", false);
    let alice = issue(&ca, "alice", true);
    let other_ca = r.join("other-ca");
    ok(&crate::run(
        &["cert", "init", "--out", path(&other_ca)],
        limit,
    ));
    let rogue = issue(&other_ca, "rogue", false);
    let admin = std::fs::read_to_string(ca.join("admin.token")).unwrap();
    let admin = admin.trim();

    // The coordinator, its log in a file for the audit lines.
    let log = r.join("coordinator.log");
    let mut command = Net::drove(coordinator_ns);
    command
        .args(["coordinator", "--bind", &addr])
        .args(["--http", &format!("{host}:7071")])
        .args(["--tls-dir", path(&coordinator_dir)])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = command.spawn().unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _coordinator = Proc(child);
    let mut lines = lines.map_while(Result::ok);
    assert!(
        lines.any(|l| l.contains("coordinator listening on")),
        "the coordinator did not start: {}",
        std::fs::read_to_string(&log).unwrap()
    );
    std::thread::spawn(move || for _ in lines {});
    let work = tempfile::tempdir().unwrap();
    let _workers: Vec<Proc> = (0..2)
        .map(|i| {
            let mut c = Net::drove(hub);
            c.args(["worker", "--coordinator", &addr, "--slots", "2"])
                .args(["--bind", &format!("{hub_ip}:0"), "--work-dir"])
                .arg(work.path())
                .arg("--data-dir")
                .arg(work.path().join(format!("data-{i}")))
                .args(["--tls-dir", path(&worker_dir)]);
            drove_testkit::spawn_until(c, "worker Flight service on").0
        })
        .collect();
    let client = |args: &[&str], token: Option<&str>| {
        let mut all = args.to_vec();
        all.extend(["--coordinator", &addr, "--tls-dir", path(&alice)]);
        if let Some(t) = token {
            all.extend(["--token", t]);
        }
        Net::run(hub, &all)
    };
    let started = Instant::now();
    while !stdout(&client(&["status"], Some(admin))).starts_with("2 workers") {
        assert!(started.elapsed() < limit, "the workers did not join");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Tokens for two tenants; the right one runs a query, shuffled between workers.
    let token = |tenant: &str| {
        let made = ok(&client(
            &["token", "create", "--tenant", tenant],
            Some(admin),
        ));
        made.trim().to_string()
    };
    let (team_a, team_b, doomed) = (token("team-a"), token("team-b"), token("team-c"));
    const QUERY: &str =
        "SELECT value % 3 AS k, count(*) AS n FROM generate_series(1, 999) GROUP BY k ORDER BY k";
    let sql = |token: Option<&str>, extra: &[&str]| {
        let mut args = vec!["sql", "--format", "csv", "--no-progress", "-e", QUERY];
        args.extend_from_slice(extra);
        client(&args, token)
    };
    assert_eq!(ok(&sql(Some(&team_a), &[])), "k,n\n0,333\n1,333\n2,333\n");

    // drove fs over mutual TLS: a tenant's files are under drove://TENANT/, and
    // another tenant neither reads, writes, removes nor sees them.
    let note = r.join("note.txt");
    std::fs::write(&note, "team a's note\n").unwrap();
    ok(&client(
        &["fs", "put", path(&note), "drove://team-a/note.txt"],
        Some(&team_a),
    ));
    assert_eq!(
        ok(&client(
            &["fs", "cat", "drove://team-a/note.txt"],
            Some(&team_a)
        )),
        "team a's note\n"
    );
    for args in [
        &["fs", "cat", "drove://team-a/note.txt"][..],
        &["fs", "put", path(&note), "drove://team-a/theirs.txt"],
        &["fs", "rm", "drove://team-a/note.txt"],
        &["fs", "put", path(&note), "drove://elsewhere.txt"],
    ] {
        let e = failed(&client(args, Some(&team_b)));
        assert!(
            e.contains("keeps its drove fs files under drove://team-b/"),
            "{args:?}: {e}"
        );
    }
    // MapReduce over a tenant's files, its reduce tasks writing the output through
    // the workers; another tenant can read none of it.
    let mapreduce = |input: &str, output: &str| {
        let args = [
            "mapreduce",
            "wordcount",
            "--no-progress",
            "--reducers",
            "1",
            "--input",
            input,
            "--output",
            output,
        ];
        args.map(String::from)
    };
    let args = mapreduce("drove://team-a/note.txt", "drove://team-a/counts");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&client(&args, Some(&team_a)));
    assert_eq!(
        ok(&client(
            &["fs", "cat", "drove://team-a/counts/part-r-00000"],
            Some(&team_a)
        )),
        "a\t1\nnote\t1\ns\t1\nteam\t1\n"
    );
    for (input, output) in [
        ("drove://team-a/note.txt", "drove://team-b/counts"),
        ("drove://team-a/counts", "drove://team-b/again"),
    ] {
        let args = mapreduce(input, output);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = failed(&client(&args, Some(&team_b)));
        assert!(
            e.contains("keeps its drove fs files under drove://team-b/"),
            "{input}: {e}"
        );
    }
    assert!(!ok(&client(&["fs", "ls"], Some(&team_b))).contains("team-a"));
    assert!(ok(&client(&["fs", "ls"], Some(admin))).contains("team-a/"));
    // Nor does a client certificate reach the chunk on its worker without the
    // coordinator's grant for it.
    let stat = ok(&client(
        &["fs", "stat", "drove://team-a/note.txt"],
        Some(&team_a),
    ));
    let row = stat.lines().nth(2).expect("a chunk row");
    let chunk = u64::from_str_radix(row.split_whitespace().nth(1).unwrap(), 16).unwrap();
    let worker = row
        .split('(')
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .to_string();
    let alice_tls = alice.clone();
    let codes = in_namespace(hub, move || chunk_probe(&worker, &alice_tls, chunk));
    assert_eq!(
        codes,
        [tonic::Code::PermissionDenied, tonic::Code::PermissionDenied]
    );

    // No credentials at all: the TLS handshake refuses the client.
    let e = failed(&Net::run(
        hub,
        &["sql", "--coordinator", &addr, "-e", QUERY],
    ));
    assert!(e.contains("--tls-dir"), "{e}");
    // A forged token (a real id, another secret), a malformed one, a revoked one.
    let id = drove_exec::token::parse(&team_a).unwrap().id;
    let forged = format!("drove_{id}_{}", "0".repeat(64));
    let e = failed(&sql(Some(&forged), &[]));
    assert!(e.contains("unknown or revoked"), "{e}");
    let e = failed(&sql(Some("guess"), &[]));
    assert!(e.contains("not a drove token"), "{e}");
    let doomed_id = drove_exec::token::parse(&doomed).unwrap().id;
    ok(&sql(Some(&doomed), &[]));
    ok(&client(&["token", "revoke", &doomed_id], Some(admin)));
    let e = failed(&sql(Some(&doomed), &[]));
    assert!(e.contains("unknown or revoked"), "{e}");

    // Another tenant's token neither cancels team A's job nor reads its page.
    let job = ok(&sql(Some(&team_a), &["--detach"])).trim().to_string();
    let e = failed(&client(&["cancel", &job], Some(&team_b)));
    assert!(e.contains("does not exist"), "{e}");
    let https = |path_: &str, token: &str| {
        let url = format!("https://{}:7071{path_}", drove_exec::tls::NODE_NAME);
        let resolve = format!("{}:7071:{host}", drove_exec::tls::NODE_NAME);
        let header = format!("Authorization: Bearer {token}");
        let ca_pem = alice.join("ca.pem");
        let (cert, key) = (alice.join("cert.pem"), alice.join("key.pem"));
        curl(
            hub,
            &[
                "--resolve",
                &resolve,
                "--cacert",
                path(&ca_pem),
                "--cert",
                path(&cert),
                "--key",
                path(&key),
                "-H",
                &header,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &url,
            ],
        )
        .1
    };
    let page = format!("/api/v1/jobs/{job}");
    assert_eq!(https(&page, &team_a), "200");
    assert_eq!(
        https(&page, &team_b),
        "404",
        "another tenant's job is not found"
    );
    assert_eq!(https(&page, &forged), "401");
    assert_eq!(https("/metrics", &team_b), "200");

    // Raw Flight calls to a worker, from the network, with alice's certificate: the
    // block ids of team A's job (as its status shows them) read nothing without the
    // grant for that job, nor with another job's; its own grant reads it.
    let other = ok(&sql(Some(&team_a), &["--detach"])).trim().to_string();
    let (job, other): (u64, u64) = (job.parse().unwrap(), other.parse().unwrap());
    let (alice_tls, token) = (alice.clone(), team_a.clone());
    let target = addr.clone();
    let answers = in_namespace(hub, move || {
        flight_probe(&target, &alice_tls, &token, job, other)
    });
    assert_eq!(
        answers,
        [
            ("no grant", tonic::Code::PermissionDenied),
            ("another job's grant", tonic::Code::PermissionDenied),
            ("its grant", tonic::Code::Ok),
        ]
    );

    // A worker of another CA never joins.
    let mut args = vec![
        "worker",
        "--coordinator",
        &addr,
        "--work-dir",
        path(work.path()),
    ];
    args.extend([
        "--registration-timeout-secs",
        "20",
        "--tls-dir",
        path(&rogue),
    ]);
    let e = failed(&Net::run(hub, &args));
    assert!(e.contains("not of the cluster in --tls-dir"), "{e}");

    // Every listening port, as a scanner without credentials finds it: nothing
    // answers without the cluster's certificate. Printed for the closing note.
    let mut scanned = Vec::new();
    for (ns, ports) in [
        (coordinator_ns, listening(coordinator_ns)),
        (hub, listening(hub)),
    ] {
        for port in ports {
            let port = port.replace("0.0.0.0", &hub_ip);
            let plain = curl(ns, &[&format!("http://{port}/")]);
            let tls = curl(ns, &["-k", &format!("https://{port}/health")]);
            eprintln!(
                "scan {port}: plain HTTP: {:?}; TLS without a certificate: {:?}",
                plain, tls
            );
            assert_ne!(plain.0, 0, "{port} answered plain HTTP: {}", plain.1);
            assert_ne!(
                tls.0, 0,
                "{port} answered TLS without a certificate: {}",
                tls.1
            );
            scanned.push(port);
        }
    }
    assert!(
        scanned.len() >= 4,
        "the coordinator's two ports and two workers' were scanned: {scanned:?}"
    );

    // Who did what, and what was refused, is in the coordinator's log.
    let audit = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("drove::audit"))
        .collect();
    for (what, says) in [
        ("a submission", "action=\"submit\""),
        ("the tenant", "tenant=team-a"),
        ("a token made", "action=\"token.create\""),
        ("a token revoked", "action=\"token.revoke\""),
        ("a refused credential", "action=\"authenticate\""),
        ("a refused cancel", "action=\"cancel\""),
    ] {
        assert!(
            lines.iter().any(|l| l.contains(says)),
            "no audit line for {what} ({says}) in:\n{}",
            lines.join("\n")
        );
    }
    assert!(!audit.contains(&team_a), "a token's secret is never logged");
}

/// Runs `f` on a thread of its own inside network namespace `ns`.
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::os::fd::AsFd;
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let namespace = std::fs::File::open(&path).unwrap();
        let network = Some(rustix::thread::LinkNameSpaceType::Network);
        rustix::thread::move_into_link_name_space(namespace.as_fd(), network).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Reads a block of `job`'s result straight from its worker over Flight, with the
/// client certificate in `tls` and: no grant, `other`'s grant, and `job`'s own.
fn flight_probe(
    addr: &str,
    tls: &Path,
    token: &str,
    job: u64,
    other: u64,
) -> Vec<(&'static str, tonic::Code)> {
    use drove_exec::leader::{Bearer, Coordinators};
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tls = drove_exec::tls::ClusterTls::load(tls).unwrap();
        let bearer = Bearer::new(Some(token)).unwrap();
        let coordinators = Coordinators::parse(addr, Some(tls.clone()), bearer).unwrap();
        let mut rpc = coordinators.current().1;
        // Grants come with a watched job's status (which waits for the job's end).
        let mut watcher = rpc.clone();
        let mut grant_of = async |job_id| {
            let request = drove_client::proto::JobRequest {
                job_id,
                cluster_id: 0,
            };
            let mut updates = watcher.watch_job(request).await.unwrap().into_inner();
            let mut grant = Vec::new();
            while let Some(s) = updates.message().await.unwrap() {
                grant = s.result_grant;
            }
            grant
        };
        let (own_grant, other_grant) = (grant_of(job).await, grant_of(other).await);
        // The job's status, as its tenant sees it: where its result's blocks are.
        let request = drove_client::proto::ClusterStatusRequest { with_tasks: true };
        let status = rpc.cluster_status(request).await.unwrap().into_inner();
        let status = status.jobs.into_iter().find(|j| j.job_id == job).unwrap();
        let output = status
            .result
            .first()
            .expect("the job's result waits")
            .clone();
        let key = drove_exec::blocks::BlockKey {
            job,
            stage: status.result_stage_id,
            map_partition: output.partition,
            reduce_partition: 0,
            attempt: output.attempt,
        };
        let pool = drove_exec::shuffle::FlightPool::new(Some(tls));
        let mut answers = Vec::new();
        for (case, grant) in [
            ("no grant", Vec::new()),
            ("another job's grant", other_grant),
            ("its grant", own_grant),
        ] {
            let mut client = pool.client(&output.flight_addr).unwrap();
            let ticket = drove_exec::shuffle::ticket(&key, &grant);
            let code = match client.do_get(ticket).await {
                Ok(_) => tonic::Code::Ok,
                Err(e) => e.code(),
            };
            answers.push((case, code));
        }
        answers
    })
}

/// Reads and overwrites `chunk` straight on the worker at `worker`, with the client
/// certificate in `tls` and no grant: the answers' codes.
fn chunk_probe(worker: &str, tls: &Path, chunk: u64) -> Vec<tonic::Code> {
    use drove_exec::dfs;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tls = drove_exec::tls::ClusterTls::load(tls).unwrap();
        let clients = dfs::ChunkClients::new(Some(tls));
        let read = match dfs::read_chunk(&clients, worker, chunk, 0, 0, &[]).await {
            Err(e) => e.code(),
            Ok(mut pieces) => {
                use futures::StreamExt;
                match pieces.next().await {
                    Some(Err(e)) => e.code(),
                    _ => tonic::Code::Ok,
                }
            }
        };
        let data = bytes::Bytes::from_static(b"forged\n");
        let crc = dfs::checksum(&data);
        let write = match dfs::write_chunk(&clients, worker, chunk, crc, data, &[]).await {
            Err(e) => e.code(),
            Ok(()) => tonic::Code::Ok,
        };
        vec![read, write]
    })
}
