//! A cluster with mutual TLS (`drove cert`, `--tls-dir`): its nodes and clients get in
//! with certificates of its CA, and nothing else does; no listener goes onto a
//! network without TLS unless `--insecure` says so; and with `--allow-path`, jobs
//! read and write only where the admin allows.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::{coordinator, drove, run, worker};

const LIMIT: Duration = Duration::from_secs(120);

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "drove failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn failed(output: &Output) -> String {
    assert!(
        !output.status.success(),
        "drove succeeded: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What a `drove coordinator` on free loopback ports with `extra` flags says as it
/// refuses to start.
fn coordinator_refuses(extra: &[&str]) -> String {
    let mut args = vec![
        "coordinator",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    failed(&run(&args, LIMIT))
}

/// `drove cert issue --ca CA --name NAME --out OUT` with `extra` flags.
fn issue(ca: &Path, name: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["cert", "issue", "--ca", path(ca), "--name", name];
    args.extend_from_slice(&["--out", path(out)]);
    args.extend_from_slice(extra);
    run(&args, LIMIT)
}

/// `drove cert init` into `root/ca`, then `drove cert issue` for each of `nodes` and
/// `clients` into `root/NAME`.
fn certificates(root: &Path, nodes: &[&str], clients: &[&str]) {
    let ca = root.join("ca");
    ok(&run(&["cert", "init", "--out", path(&ca)], LIMIT));
    for name in nodes {
        ok(&issue(&ca, name, &root.join(name), &[]));
    }
    for name in clients {
        ok(&issue(&ca, name, &root.join(name), &["--client"]));
    }
}

const QUERY: &str =
    "SELECT value % 3 AS k, count(*) AS n FROM generate_series(1, 999) GROUP BY k ORDER BY k";
const ANSWER: &str = "k,n\n0,333\n1,333\n2,333\n";

fn sql(addr: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "sql",
        "--coordinator",
        addr,
        "--format",
        "csv",
        "--no-progress",
        "-e",
        QUERY,
    ];
    args.extend_from_slice(extra);
    run(&args, LIMIT)
}

#[test]
fn only_holders_of_the_clusters_certificates_get_in() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    certificates(r, &["coordinator", "worker-1", "worker-2"], &["alice"]);
    // Another cluster's CA and a node certificate of it.
    ok(&run(
        &["cert", "init", "--out", path(&r.join("other-ca"))],
        LIMIT,
    ));
    ok(&issue(&r.join("other-ca"), "rogue", &r.join("rogue"), &[]));

    let work = r.join("work");
    let (_c, addr, http) = coordinator(&["--tls-dir", path(&r.join("coordinator"))]);
    let _w1 = worker(&addr, &work, &["--tls-dir", path(&r.join("worker-1"))]);
    let _w2 = worker(&addr, &work, &["--tls-dir", path(&r.join("worker-2"))]);

    // A client with its certificate gets the answer, shuffled between two workers
    // over TLS; a node's certificate works as a client's too.
    assert_eq!(
        ok(&sql(&addr, &["--tls-dir", path(&r.join("alice"))])),
        ANSWER
    );
    let status = drove()
        .args(["status", "--coordinator", &addr])
        .env("DROVE_TLS_DIR", r.join("worker-1"))
        .output()
        .unwrap();
    assert!(ok(&status).contains("2 workers"));

    // No certificate, or another cluster's: refused, saying what to pass.
    let e = failed(&sql(&addr, &[]));
    assert!(e.contains("--tls-dir"), "{e}");
    let e = failed(&sql(&addr, &["--tls-dir", path(&r.join("rogue"))]));
    assert!(e.contains("not of the cluster in --tls-dir"), "{e}");

    // A worker of another cluster, or with no certificate, never joins: it exits
    // non-zero, saying why.
    let join = |extra: &[&str]| {
        let mut args = vec!["worker", "--coordinator", &addr, "--work-dir", path(&work)];
        args.extend_from_slice(&["--registration-timeout-secs", "30"]);
        args.extend_from_slice(extra);
        run(&args, LIMIT)
    };
    let e = failed(&join(&["--tls-dir", path(&r.join("rogue"))]));
    assert!(e.contains("not of the cluster in --tls-dir"), "{e}");
    let e = failed(&join(&[]));
    assert!(e.contains("the server speaks TLS"), "{e}");
    // A client's certificate cannot serve as a worker's.
    let e = failed(&join(&["--tls-dir", path(&r.join("alice"))]));
    assert!(e.contains("is a client's"), "{e}");

    // HTTP is HTTPS, with the same certificates: curl with alice's gets /health, and
    // without one the handshake fails.
    let port = http.rsplit(':').next().unwrap();
    let url = format!("https://{}:{port}/health", drove_exec::tls::NODE_NAME);
    let resolve = format!("{}:{port}:127.0.0.1", drove_exec::tls::NODE_NAME);
    let curl = |extra: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "--resolve", &resolve, "--cacert"])
            .arg(r.join("ca").join("ca.pem"))
            .args(extra)
            .arg(&url)
            .output()
            .expect("running curl")
    };
    let alice = r.join("alice");
    let with = curl(&[
        "--cert",
        path(&alice.join("cert.pem")),
        "--key",
        path(&alice.join("key.pem")),
    ]);
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    assert!(String::from_utf8_lossy(&with.stdout).contains("ok"));
    assert!(
        !curl(&[]).status.success(),
        "HTTPS without a client certificate answered"
    );

    // Tokens: the CA's admin token makes a tenant's token, which runs queries and
    // is refused once revoked; tokens are an admin's to manage.
    let admin = std::fs::read_to_string(r.join("ca").join("admin.token")).unwrap();
    let admin = admin.trim();
    let alice = path(&alice);
    let token = |args: &[&str], token: Option<&str>| {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--coordinator", &addr, "--tls-dir", alice]);
        let mut command = drove();
        command.args(&all).env_remove("DROVE_TOKEN");
        if let Some(t) = token {
            command.env("DROVE_TOKEN", t);
        }
        command.output().unwrap()
    };
    let admin_file = r.join("ca").join("admin.token");
    let made = ok(&run(
        &[
            "token",
            "create",
            "--tenant",
            "team-a",
            "--coordinator",
            &addr,
            "--tls-dir",
            alice,
            "--token-file",
            path(&admin_file),
        ],
        LIMIT,
    ));
    let team_a = made.trim();
    let id = drove_exec::token::parse(team_a)
        .expect("a token alone on stdout")
        .id;
    assert_eq!(
        ok(&sql(&addr, &["--tls-dir", alice, "--token", team_a])),
        ANSWER
    );
    let listed = ok(&token(&["list"], Some(admin)));
    assert!(
        listed.contains(&id) && listed.contains("team-a") && !listed.contains(team_a),
        "{listed}"
    );
    let e = failed(&token(&["create", "--tenant", "team-b"], Some(team_a)));
    assert!(e.contains("not an admin"), "{e}");
    let e = failed(&token(&["create", "--tenant", "team b"], Some(admin)));
    assert!(e.contains("--tenant"), "{e}");
    let e = failed(&token(
        &["create", "--tenant", "t", "--role", "root"],
        Some(admin),
    ));
    assert!(e.contains("admin, submit or read"), "{e}");
    let e = failed(&token(&["revoke", "nothex"], Some(admin)));
    assert!(e.contains("not a token id"), "{e}");
    let missing = r.join("no-such.token");
    let e = failed(&token(&["list", "--token-file", path(&missing)], None));
    assert!(
        e.contains("--token-file") && e.contains("no-such.token"),
        "{e}"
    );
    ok(&token(&["revoke", &id], Some(admin)));
    let e = failed(&sql(&addr, &["--tls-dir", alice, "--token", team_a]));
    assert!(e.contains("unknown or revoked"), "{e}");
    let e = failed(&sql(&addr, &["--tls-dir", alice, "--token", "guess"]));
    assert!(
        e.contains("not a drove token") && !e.contains("guess"),
        "{e}"
    );
}

#[test]
fn a_listener_off_loopback_needs_tls_or_insecure() {
    // Refused before anything listens, naming both ways out.
    for args in [
        vec![
            "coordinator",
            "--bind",
            "0.0.0.0:0",
            "--http",
            "127.0.0.1:0",
        ],
        vec![
            "coordinator",
            "--bind",
            "127.0.0.1:0",
            "--http",
            "0.0.0.0:0",
        ],
        vec![
            "worker",
            "--coordinator",
            "127.0.0.1:1",
            "--bind",
            "0.0.0.0:0",
        ],
        vec![
            "local",
            "--bind",
            "0.0.0.0:0",
            "--http",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
    ] {
        let e = failed(&run(&args, LIMIT));
        assert!(
            e.contains("reachable from the network")
                && e.contains("--tls-dir")
                && e.contains("--insecure"),
            "{args:?}: {e}"
        );
    }
    // With --insecure it starts, and says what that means. (It listens on every
    // interface, but this test sends nothing to it.)
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = drove()
        .args([
            "coordinator",
            "--bind",
            "0.0.0.0:0",
            "--http",
            "127.0.0.1:0",
            "--insecure",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _proc = drove_testkit::Proc(child);
    let started = std::io::BufRead::lines(std::io::BufReader::new(stdout))
        .map_while(Result::ok)
        .any(|l| l.contains("coordinator listening on"));
    assert!(started, "the coordinator with --insecure did not start");
    let e = std::fs::read_to_string(&log).unwrap();
    assert!(
        e.contains("--insecure") && e.contains("network you trust"),
        "{e}"
    );
}

#[test]
fn bad_certificate_requests_fail_with_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let ca = r.join("ca");
    ok(&run(&["cert", "init", "--out", path(&ca)], LIMIT));
    let e = failed(&run(&["cert", "init", "--out", path(&ca)], LIMIT));
    assert!(e.contains("already holds a CA"), "{e}");
    let e = failed(&issue(&r.join("nope"), "w", &r.join("w"), &[]));
    assert!(e.contains("drove cert init"), "{e}");
    let e = failed(&issue(&ca, "../w", &r.join("w"), &[]));
    assert!(e.contains("is not a name"), "{e}");
    assert!(!r.join("w").exists());
    // A node pointed at the CA's own directory is told which directory to give.
    let e = coordinator_refuses(&["--tls-dir", path(&ca)]);
    assert!(e.contains("is the CA's directory"), "{e}");
}

/// The historical attack: `CREATE EXTERNAL TABLE ... LOCATION '/etc/shadow'` read the
/// file's rows. With --allow-path every way to name a file outside is refused before
/// anything opens it, links out of an allowed directory included; inside works.
#[test]
fn jobs_read_and_write_only_under_the_allowed_directories() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let data = r.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("t.csv"), "a\n1\n2\n").unwrap();
    std::fs::write(r.join("secret.csv"), "s\nhidden\n").unwrap();
    std::os::unix::fs::symlink(r.join("secret.csv"), data.join("link.csv")).unwrap();
    let work = r.join("work");
    let (_c, addr, _) = coordinator(&["--allow-path", path(&data)]);
    let _w = worker(&addr, &work, &[]);
    let query = |extra: &[&str], sql: &str| {
        let mut args = vec![
            "sql",
            "--coordinator",
            &addr,
            "--format",
            "csv",
            "--no-progress",
            "-e",
            sql,
        ];
        args.extend_from_slice(extra);
        run(&args, LIMIT)
    };

    let table = format!("t={}", data.join("t.csv").display());
    assert_eq!(
        ok(&query(&["--table", &table], "SELECT sum(a) AS s FROM t")),
        "s\n3\n"
    );

    let outside = [
        (vec![], "CREATE EXTERNAL TABLE p (line varchar) STORED AS CSV LOCATION '/etc/shadow'; SELECT * FROM p".to_string()),
        (vec![], format!("CREATE EXTERNAL TABLE p STORED AS CSV LOCATION '{}'; SELECT * FROM p", r.join("secret.csv").display())),
        (vec!["--table".to_string(), format!("s={}", r.join("secret.csv").display())], "SELECT * FROM s".to_string()),
        (vec!["--table".to_string(), format!("l={}", data.join("link.csv").display())], "SELECT * FROM l".to_string()),
    ];
    for (extra, sql) in outside {
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let e = failed(&query(&extra, &sql));
        assert!(
            e.contains("--allow-path") && !e.contains("hidden"),
            "{sql}: {e}"
        );
    }

    // MapReduce: an input inside, an output outside, is refused, and leaves nothing;
    // inside, it runs.
    let input = data.join("t.csv");
    let wordcount = |out: &Path| {
        let args = [
            "mapreduce",
            "wordcount",
            "--coordinator",
            &addr,
            "--no-progress",
        ];
        let mut args = args.to_vec();
        args.extend_from_slice(&["--input", path(&input), "--output", path(out)]);
        run(&args, LIMIT)
    };
    let out = r.join("out");
    let e = failed(&wordcount(&out));
    assert!(e.contains("--allow-path"), "{e}");
    assert!(!out.exists(), "a refused job left {}", out.display());
    ok(&wordcount(&data.join("out")));
    assert!(data.join("out").join("_SUCCESS").exists());

    // A directory that does not exist is refused at start.
    let e = coordinator_refuses(&["--allow-path", path(&r.join("nope"))]);
    assert!(e.contains("existing directory"), "{e}");
}
