//! Tables and MapReduce in S3: a moto server (`pip install 'moto[server]'`) on
//! loopback speaks the S3 API; `drove gen tpch --out s3://` writes the tables into a
//! bucket, a coordinator and worker read them there, and MapReduce reads its input
//! and commits its output there, every process configured by the usual AWS
//! environment variables.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A moto server on a free loopback port, stopped when dropped.
struct Moto {
    _server: crate::Proc,
    addr: String,
}

/// Starts a Python server (`python3 ARGS`, which `pip install PACKAGE` provides) on a
/// free loopback port; `args` gets the port. Returns it once it listens.
pub(crate) fn python_server(
    package: &str,
    args: impl FnOnce(u16) -> Vec<String>,
) -> (crate::Proc, String) {
    let addr = drove_testkit::unused_addr();
    let child = Command::new("python3")
        .args(args(addr.port()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 to start a server");
    let mut server = crate::Proc(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!(
                "the {package} server exited ({status}); install it with pip install '{package}'"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the {package} server did not listen within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, addr.to_string())
}

impl Moto {
    fn start() -> Self {
        let (server, addr) = python_server("moto[server]", |port| {
            [
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ]
            .map(String::from)
            .to_vec()
        });
        Self {
            _server: server,
            addr,
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

    /// A coordinator and a worker that reach this server.
    fn cluster(&self) -> (crate::Proc, crate::Proc, String, tempfile::TempDir) {
        crate::cluster_with(|| self.drove())
    }

    /// The keys under `prefix` in `bucket`.
    fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let (code, body) = crate::http(
            &self.addr,
            "GET",
            &format!("/{bucket}?list-type=2&prefix={prefix}"),
        );
        assert_eq!(code, 200, "{body}");
        let mut keys: Vec<String> = (body.split("<Key>").skip(1))
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect();
        keys.sort();
        keys
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

    let (_coordinator, _worker, addr, _work) = s3.cluster();

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

/// Word count with its input and its output in a bucket: the counts equal a plain
/// count, the output is committed with `_SUCCESS` and no temporary objects left, and
/// `--overwrite` replaces the earlier parts.
#[test]
fn wordcount_commits_its_output_to_s3() {
    let s3 = Moto::start();
    let (code, body) = crate::http(&s3.addr, "PUT", "/jobs");
    assert_eq!(code, 200, "making the bucket: {body}");
    let mut reference: std::collections::BTreeMap<String, u64> = Default::default();
    for f in 0..3 {
        let text: String = (0..2000)
            .map(|i| format!("Élan {} river{} stone. {}\n", f, i % 31, i % 7))
            .collect();
        for w in crate::mapreduce::words(&text) {
            *reference.entry(w).or_default() += 1;
        }
        let (code, body) = crate::http_with(
            &s3.addr,
            "PUT",
            &format!("/jobs/corpus/f{f}.txt"),
            text.as_bytes(),
        );
        assert_eq!(code, 200, "{body}");
    }
    let (_coordinator, _worker, addr, _work) = s3.cluster();
    let mapreduce = |extra: &[&str]| {
        let mut args = vec![
            "mapreduce",
            "wordcount",
            "--coordinator",
            &addr,
            "--no-progress",
        ];
        args.extend_from_slice(extra);
        s3.run(&args)
    };
    // The committed output read back as a table of CSV parts.
    let counts = || {
        let out = s3.run(&[
            "sql",
            "--coordinator",
            &addr,
            "--table",
            "counts=s3://jobs/counts",
            "--format",
            "csv",
            "-e",
            "SELECT * FROM counts",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        crate::cloud::counts(&String::from_utf8_lossy(&out.stdout))
    };

    for (reducers, overwrite) in [("3", false), ("1", true)] {
        let mut args = vec![
            "--input",
            "s3://jobs/corpus",
            "--output",
            "s3://jobs/counts",
            "--reducers",
            reducers,
            "--format",
            "csv",
        ];
        if overwrite {
            args.push("--overwrite");
        }
        let out = mapreduce(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let keys = s3.keys("jobs", "counts/");
        let parts: Vec<String> = (0..reducers.parse::<usize>().unwrap())
            .map(|r| format!("counts/part-r-{r:05}.csv"))
            .collect();
        let mut expected = vec!["counts/_SUCCESS".to_string()];
        expected.extend(parts);
        assert_eq!(
            keys, expected,
            "the committed parts and marker, nothing else"
        );
        assert_eq!(counts(), reference);
    }

    // Bad input: an existing output without --overwrite, a missing input, an output
    // in a bucket that is not there.
    for (input, output, needle) in [
        ("s3://jobs/corpus", "s3://jobs/counts", "--overwrite"),
        ("s3://jobs/nothing", "s3://jobs/out", "does not exist"),
        (
            "s3://jobs/corpus",
            "s3://no-such-bucket/out",
            "no-such-bucket",
        ),
    ] {
        let out = mapreduce(&["--input", input, "--output", output]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{output} was accepted");
        assert!(stderr.contains(needle), "no '{needle}' in {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert!(
        s3.keys("jobs", "out").is_empty(),
        "a refused run wrote nothing"
    );
}
