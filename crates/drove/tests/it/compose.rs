//! The container image (`docker/image.sh`), its certificates (`docker/certs.sh`) and the
//! Compose file (`docker/compose.yaml`): three replicated coordinators and three workers
//! on a private network, with mutual TLS and tokens; the leader's container is killed
//! while a tenant's Q9 runs, and the answer is right.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn must(command: &mut Command) -> Output {
    let description = format!("{command:?}");
    let out = command.output().unwrap_or_else(|e| {
        panic!("{description}: {e} (this test needs docker and docker-compose)")
    });
    assert!(
        out.status.success(),
        "{description}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A Compose project of this test's own, taken down (with its volumes) and its image
/// removed when dropped.
struct Project {
    name: String,
    image: String,
    tpch: std::path::PathBuf,
    /// What `docker/certs.sh` made.
    certs: std::path::PathBuf,
}

impl Project {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(repo())
            .args(["-p", &self.name, "-f", "docker/compose.yaml"])
            .env("DROVE_IMAGE", &self.image)
            .env("DROVE_TPCH", &self.tpch)
            .env("DROVE_CERTS", &self.certs)
            .env("DROVE_WORKER_FLAGS", "--inject-task-delay-ms 400");
        c
    }

    /// `docker run` of the image on the project's network, with the TPC-H tables, the
    /// client certificate and `token`.
    fn drove(&self, token: &str, args: &[&str]) -> Command {
        let mut c = Command::new("docker");
        c.args([
            "run",
            "--rm",
            "--network",
            &format!("{}_default", self.name),
            "-e",
            "DROVE_TLS_DIR=/tls",
            "-e",
            &format!("DROVE_TOKEN={token}"),
            "-v",
        ])
        .arg(format!("{}:/tls:ro", self.certs.join("client").display()))
        .arg("-v")
        .arg(format!("{}:/tpch:ro", self.tpch.display()))
        .arg(&self.image)
        .args(args);
        c
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self
            .compose()
            .args(["down", "-v", "--timeout", "1"])
            .output();
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

const COORDINATORS: &str = "coord1:7070,coord2:7070,coord3:7070";

#[test]
fn a_compose_cluster_answers_with_its_leader_container_killed() {
    let tpch = drove_testkit::tpch_data(0.01);
    let tag = format!("drove-test-{}", std::process::id());
    let scratch = tempfile::tempdir().unwrap();
    let project = Project {
        name: tag.replace('-', ""),
        image: format!("{tag}:latest"),
        tpch: tpch.clone(),
        certs: scratch.path().join("certs"),
    };
    must(
        Command::new(repo().join("docker/image.sh"))
            .arg(env!("CARGO_BIN_EXE_drove"))
            .arg(&project.image),
    );
    must(
        Command::new(repo().join("docker/certs.sh"))
            .arg(env!("CARGO_BIN_EXE_drove"))
            .arg(&project.certs),
    );
    let admin = std::fs::read_to_string(project.certs.join("ca/admin.token")).unwrap();
    let admin = admin.trim();
    must(project.compose().args(["up", "-d"]));

    let status = || {
        let out = project
            .drove(admin, &["status", "--coordinator", COORDINATORS])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let started = Instant::now();
    while !status().starts_with("3 workers") {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the cluster did not come up: {}",
            status()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Only a token the cluster made gets in; the admin makes one for a tenant.
    let forged = format!("drove_{}_{}", "0".repeat(16), "0".repeat(64));
    let refused = project
        .drove(&forged, &["status", "--coordinator", COORDINATORS])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "a forged token was let in: {}",
        String::from_utf8_lossy(&refused.stdout)
    );
    let token = must(&mut project.drove(
        admin,
        &[
            "token",
            "create",
            "--coordinator",
            COORDINATORS,
            "--tenant",
            "analytics",
        ],
    ))
    .stdout;
    let token = String::from_utf8(token).unwrap();

    let q9 = drove_exec::tpch::QUERIES[8];
    let client = project
        .drove(
            token.trim(),
            &[
                "sql",
                "--coordinator",
                COORDINATORS,
                "--tpch",
                "/tpch",
                "--format",
                "csv",
                "-e",
                q9,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed while the job runs.
    let started = Instant::now();
    let leader = loop {
        let text = status();
        if text.contains(" Running ") {
            let line = text
                .lines()
                .find(|l| l.starts_with("raft: "))
                .unwrap_or_default();
            // "raft: node N, term T, leader node L at ADDR"
            let leader = line
                .split("leader node ")
                .nth(1)
                .and_then(|r| r.split(' ').next());
            break leader.expect("the leader is named").to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no job ran: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    must(Command::new("docker").args(["kill", &format!("{}_coord{leader}_1", project.name)]));

    let (stdout, _) = crate::multiprocess::finish(client);
    assert_eq!(stdout, crate::multiprocess::expected_csv(&tpch, q9));
    let after = status();
    assert!(
        !after.contains(&format!("leader node {leader} ")),
        "{after}"
    );
}
