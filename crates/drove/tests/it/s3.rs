//! Tables in S3: a moto server (`pip install 'moto[server]'`) on loopback speaks the
//! S3 API; `drove gen tpch --out s3://` writes the tables into a bucket, and a
//! coordinator and worker read them there, every process configured by the usual AWS
//! environment variables.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A moto server on a free loopback port, stopped when dropped.
struct Moto {
    _server: crate::Proc,
    addr: String,
}

impl Moto {
    fn start() -> Self {
        let addr = drove_testkit::unused_addr();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(addr.port().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 to start the moto server");
        let mut server = crate::Proc(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.0.try_wait() {
                panic!(
                    "the moto server exited ({status}); install it with pip install 'moto[server]'"
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the moto server did not listen within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _server: server,
            addr: addr.to_string(),
        }
    }

    /// `drove` with the environment that reaches this server.
    fn drove(&self) -> Command {
        let mut c = crate::drove();
        c.env("AWS_ENDPOINT", format!("http://{}", self.addr))
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1");
        c
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        let mut c = self.drove();
        c.args(args);
        crate::run_command(c, Duration::from_secs(300))
    }
}

#[test]
fn tpch_tables_in_s3_answer_as_local_files_do() {
    let s3 = Moto::start();
    let (code, body) = crate::http(&s3.addr, "PUT", "/tables");
    assert_eq!(code, 200, "making the bucket: {body}");

    let out = s3.run(&[
        "gen",
        "tpch",
        "--scale",
        "0.01",
        "--out",
        "s3://tables/tpch",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (_coordinator, addr, _) = drove_testkit::start_coordinator(s3.drove(), &[]);
    let work = tempfile::tempdir().unwrap();
    let mut worker = s3.drove();
    worker.args([
        "worker",
        "--coordinator",
        &addr,
        "--slots",
        "2",
        "--work-dir",
    ]);
    worker.arg(work.path());
    let _worker = drove_testkit::spawn_until(worker, "worker Flight service on").0;

    let local = drove_testkit::tpch_data(0.01);
    for q in [1, 3, 6] {
        let sql = drove_exec::tpch::QUERIES[q - 1];
        let out = s3.run(&[
            "sql",
            "--coordinator",
            &addr,
            "--tpch",
            "s3://tables/tpch",
            "--format",
            "csv",
            "-e",
            sql,
        ]);
        assert!(
            out.status.success(),
            "Q{q}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            crate::multiprocess::expected_csv(&local, sql),
            "Q{q}"
        );
    }

    // Bad input: an object that is not there, and a bucket that is not there.
    for (table, needle) in [
        ("t=s3://tables/tpch/nothing.parquet", "does not exist"),
        ("t=s3://no-such-bucket/x.parquet", "no-such-bucket"),
    ] {
        let out = s3.run(&[
            "sql",
            "--coordinator",
            &addr,
            "--table",
            table,
            "-e",
            "SELECT 1 FROM t",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table} was accepted");
        assert!(
            stderr.contains(needle),
            "{table}: no '{needle}' in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
