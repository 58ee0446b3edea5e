//! Bad input on the command line: a clear message, a non-zero exit, never a panic or hang.

use std::time::{Duration, Instant};

use drove_testkit::tpch_data;

const LIMIT: Duration = Duration::from_secs(60);

fn fails_with(args: &[&str], expected: &[&str]) {
    let out = crate::run(args, LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "`drove {}` succeeded",
        args.join(" ")
    );
    assert!(
        !stderr.contains("panicked"),
        "`drove {}` panicked:\n{stderr}",
        args.join(" ")
    );
    for e in expected {
        assert!(
            stderr.contains(e),
            "`drove {}`: expected '{e}' in:\n{stderr}",
            args.join(" ")
        );
    }
}

#[test]
fn sql_that_does_not_parse() {
    fails_with(
        &["sql", "--local", "1", "-e", "SELEC 1"],
        &["does not parse"],
    );
}

#[test]
fn an_unknown_table_lists_the_registered_ones() {
    let dir = tpch_data(0.01);
    let dir = dir.to_str().unwrap();
    fails_with(
        &[
            "sql",
            "--local",
            "1",
            "--tpch",
            dir,
            "-e",
            "SELECT * FROM nope",
        ],
        &["nope", "registered tables: nation, region, part"],
    );
}

#[test]
fn a_path_that_does_not_exist() {
    fails_with(
        &[
            "sql",
            "--local",
            "1",
            "--table",
            "t=/no/such/file.parquet",
            "-e",
            "SELECT * FROM t",
        ],
        &["/no/such/file.parquet", "does not exist"],
    );
    fails_with(
        &[
            "sql",
            "--local",
            "1",
            "--tpch",
            "/no/such/dir",
            "-e",
            "SELECT 1",
        ],
        &["/no/such/dir"],
    );
}

#[test]
fn a_table_flag_without_equals() {
    fails_with(
        &[
            "sql",
            "--local",
            "1",
            "--table",
            "lineitem.parquet",
            "-e",
            "SELECT 1",
        ],
        &["NAME=PATH"],
    );
}

#[test]
fn a_coordinator_that_is_not_there_fails_within_seconds() {
    let addr = drove_testkit::unused_addr().to_string();
    let started = Instant::now();
    fails_with(
        &["sql", "--coordinator", &addr, "-e", "SELECT 1"],
        &["cannot reach the coordinator", &addr],
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_worker_with_a_wrong_coordinator_gives_up_after_its_registration_timeout() {
    let addr = drove_testkit::unused_addr().to_string();
    let started = Instant::now();
    let out = crate::run(
        &[
            "worker",
            "--coordinator",
            &addr,
            "--registration-timeout-secs",
            "2",
        ],
        LIMIT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("could not register with the coordinator"),
        "{stderr}"
    );
    assert!(
        stderr.contains("retrying"),
        "it retried and said why:\n{stderr}"
    );
    assert!(started.elapsed() >= Duration::from_secs(2), "gave up early");
}

/// Retrying is for when nothing answers: a worker pointed at something that answers
/// but is not a coordinator (its HTTP port, a server of another protocol) fails at
/// once, saying so, instead of retrying for its whole registration timeout.
#[test]
fn a_worker_pointed_at_something_else_fails_at_once_saying_what_answered() {
    let (_coordinator, _grpc, http) = crate::coordinator(&[]);
    let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let other_addr = other.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in other.incoming().flatten() {
            use std::io::Write;
            let mut stream = stream;
            let _ = stream.write_all(b"220 an SMTP server says hello\r\n");
        }
    });
    for addr in [&http, &other_addr] {
        let out = crate::run(
            &[
                "worker",
                "--coordinator",
                addr,
                "--registration-timeout-secs",
                "600",
            ],
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!("{addr} answered, but not as a drove coordinator"))
                && stderr.contains("--bind"),
            "{stderr}"
        );
    }
}

#[test]
fn a_scale_of_zero_or_below_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (benchmark, name) in [("tpch", "TPC-H"), ("tpcds", "TPC-DS")] {
        let out = dir.path().join(benchmark);
        let out = out.to_str().unwrap();
        for scale in ["0", "-1", "nan"] {
            fails_with(
                &["gen", benchmark, "--scale", scale, "--out", out],
                &["--scale", &format!("not a valid {name} scale factor")],
            );
        }
        assert!(!dir.path().join(benchmark).exists(), "nothing is written");
    }
}

#[test]
fn gen_tpcds_writes_24_tables_that_sql_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let generated = crate::run(&["gen", "tpcds", "--scale", "0.01", "--out", out], LIMIT);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 24, "one Parquet file per table");
    let sql = crate::run(
        &[
            "sql",
            "--local",
            "2",
            "--tpcds",
            out,
            "--format",
            "csv",
            "-e",
            "SELECT count(*) AS n, min(d_year) AS first FROM date_dim",
        ],
        LIMIT,
    );
    assert!(
        sql.status.success(),
        "{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    // date_dim is the same at every scale: 73,049 days from 1900.
    assert_eq!(
        String::from_utf8_lossy(&sql.stdout),
        "n,first\n73049,1900\n"
    );
}

#[test]
fn tpcds_over_a_directory_without_its_tables() {
    // A TPC-H directory has none of TPC-DS's tables.
    let dir = tpch_data(0.01);
    fails_with(
        &[
            "sql",
            "--local",
            "1",
            "--tpcds",
            dir.to_str().unwrap(),
            "-e",
            "SELECT 1",
        ],
        &["has no table 'call_center'", "drove gen tpcds"],
    );
    fails_with(
        &[
            "sql",
            "--local",
            "1",
            "--tpcds",
            "/no/such/dir",
            "-e",
            "SELECT 1",
        ],
        &["/no/such/dir", "is not a directory", "drove gen tpcds"],
    );
}

#[test]
fn gen_and_sql_print_csv_with_a_header() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let generated = crate::run(&["gen", "tpch", "--scale", "0.001", "--out", out], LIMIT);
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let sql = crate::run(
        &[
            "sql",
            "--local",
            "2",
            "--tpch",
            out,
            "--format",
            "csv",
            "-e",
            "SELECT r_regionkey, r_name FROM region ORDER BY r_regionkey",
        ],
        LIMIT,
    );
    assert!(
        sql.status.success(),
        "{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    let stdout = String::from_utf8_lossy(&sql.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "r_regionkey,r_name");
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(lines[1], "0,AFRICA");

    let json = crate::run(
        &[
            "sql",
            "--local",
            "1",
            "--tpch",
            out,
            "--format",
            "json",
            "-e",
            "SELECT r_regionkey, r_name FROM region WHERE r_regionkey < 2 ORDER BY r_regionkey",
        ],
        LIMIT,
    );
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    // One object a line, so a result streams out as it arrives.
    assert_eq!(
        String::from_utf8_lossy(&json.stdout),
        "[\n{\"r_regionkey\":0,\"r_name\":\"AFRICA\"},\n{\"r_regionkey\":1,\"r_name\":\"AMERICA\"}\n]\n"
    );
}

#[test]
fn mapreduce_names_unknown_jobs_and_missing_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out = out.to_str().unwrap();
    let texts = dir.path().join("texts");
    std::fs::create_dir(&texts).unwrap();
    let texts = texts.to_str().unwrap();
    fails_with(
        &[
            "mapreduce",
            "wordcnt",
            "--input",
            texts,
            "--output",
            out,
            "--local",
            "1",
        ],
        &[
            "no MapReduce job is registered as 'wordcnt'",
            "registered jobs:",
            "wordcount",
            "grep",
        ],
    );
    fails_with(
        &[
            "mapreduce",
            "wordcount",
            "--input",
            "/no/such/input",
            "--output",
            out,
            "--local",
            "1",
        ],
        &["input path '/no/such/input' does not exist"],
    );
    fails_with(
        &[
            "mapreduce",
            "grep",
            "--input",
            texts,
            "--output",
            out,
            "--local",
            "1",
        ],
        &["grep needs a pattern", "--arg pattern=REGEX"],
    );
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "some words\n").unwrap();
    let exists = dir.path().join("exists");
    std::fs::create_dir_all(&exists).unwrap();
    fails_with(
        &[
            "mapreduce",
            "wordcount",
            "--input",
            input.to_str().unwrap(),
            "--output",
            exists.to_str().unwrap(),
            "--local",
            "1",
        ],
        &["already exists", "--overwrite"],
    );
}

/// The reported loss: `--input in2 --output in2 --overwrite` deleted the input. No
/// output that overlaps an input, and no directory that is not an earlier drove output,
/// is written, with or without `--overwrite`; an unwritable output is refused before
/// any task runs.
#[test]
fn mapreduce_never_deletes_what_drove_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    // An earlier run's output, used as the next run's input.
    let first = crate::run(
        &[
            "mapreduce",
            "wordcount",
            "--input",
            &path("in.txt"),
            "--output",
            &path("in2"),
            "--local",
            "1",
        ],
        LIMIT,
    );
    assert!(!first.status.success(), "a missing input was accepted");
    std::fs::write(dir.path().join("in.txt"), "a rose is a rose\n").unwrap();
    let first = crate::run(
        &[
            "mapreduce",
            "wordcount",
            "--input",
            &path("in.txt"),
            "--output",
            &path("in2"),
            "--local",
            "1",
        ],
        LIMIT,
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let snapshot = |d: &str| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join(d))
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        files.sort();
        files
    };
    let before = snapshot("in2");
    assert!(
        before.iter().any(|(name, _)| name.starts_with("part-r-")),
        "{before:?}"
    );

    let in2 = path("in2");
    let inside = path("in2/more");
    let cases: [(&str, &str, &str); 3] = [
        (&in2, &in2, "is input"),
        (&in2, &inside, "lies inside input"),
        (&path("in2/part-r-00000"), &in2, "contains input"),
    ];
    for (input, output, expected) in cases {
        for overwrite in [false, true] {
            let mut args = vec![
                "mapreduce",
                "wordcount",
                "--input",
                input,
                "--output",
                output,
                "--local",
                "1",
            ];
            if overwrite {
                args.push("--overwrite");
            }
            fails_with(&args, &[expected, "choose an --output outside every input"]);
            assert_eq!(
                snapshot("in2"),
                before,
                "`drove {}` changed the input",
                args.join(" ")
            );
            assert!(!dir.path().join("in2/more").exists());
        }
    }

    // --overwrite replaces only an earlier drove output.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("part-r-00000"), "a user's own file").unwrap();
    fails_with(
        &[
            "mapreduce",
            "wordcount",
            "--input",
            &path("in.txt"),
            "--output",
            &path("mine"),
            "--local",
            "1",
            "--overwrite",
        ],
        &["is not an earlier drove output", "has no _SUCCESS"],
    );
    assert_eq!(
        std::fs::read_to_string(mine.join("part-r-00000")).unwrap(),
        "a user's own file"
    );

    // An output that cannot be made is refused before any task runs, naming the path.
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    fails_with(
        &[
            "mapreduce",
            "wordcount",
            "--input",
            &path("in.txt"),
            "--output",
            &path("a-file/out"),
            "--local",
            "1",
        ],
        &[
            "cannot write the output directory",
            "a-file/out",
            "choose an --output this user can write",
        ],
    );
}

#[test]
fn gen_text_refuses_a_zero_size() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(
        &[
            "gen",
            "text",
            "--size",
            "0",
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &["--size 0 is out of range"],
    );
}

#[test]
fn coordinator_failure_settings_that_cannot_work_are_refused() {
    let base = [
        "coordinator",
        "--bind",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().chain(extra).copied().collect()
    };
    fails_with(
        &with(&[
            "--heartbeat-interval-ms",
            "5000",
            "--heartbeat-timeout-ms",
            "1000",
        ]),
        &["--heartbeat-timeout-ms (1000) must be longer than --heartbeat-interval-ms (5000)"],
    );
    fails_with(
        &with(&["--task-attempts", "0"]),
        &["--task-attempts must be at least 1"],
    );
    fails_with(
        &with(&["--speculation-multiplier", "0.5"]),
        &["--speculation-multiplier must be 1 or more"],
    );
    fails_with(
        &with(&["--speculation-quantile", "1.5"]),
        &["--speculation-quantile must be in (0, 1]"],
    );
}

#[test]
fn cancel_names_an_unknown_job_and_a_missing_coordinator() {
    let addr = drove_testkit::unused_addr().to_string();
    fails_with(&["cancel", "7", "--coordinator", &addr], &[&addr]);
    fails_with(
        &["cancel", "not-a-number"],
        &["invalid value 'not-a-number'"],
    );

    let (_coordinator, addr, _) = crate::coordinator(&[]);
    fails_with(
        &["cancel", "42", "--coordinator", &addr],
        &["job-42 does not exist"],
    );
}

#[test]
fn the_demo_runs_its_queries_and_exits_when_not_on_a_terminal() {
    let out = crate::run(
        &[
            "demo",
            "--scale",
            "0.01",
            "--workers",
            "2",
            "--queries",
            "1,6",
        ],
        Duration::from_secs(300),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "== TPC-H Q1",
        "== TPC-H Q6",
        "2 queries",
        "http://127.0.0.1:",
    ] {
        assert!(stdout.contains(expected), "no '{expected}' in:\n{stdout}");
    }
}

/// EXPLAIN ANALYZE shows what the final stage's shuffle reader read: its rows, the
/// blocks (one per map output with rows, for each of its partitions), the Flight calls
/// and bytes.
#[test]
fn explain_analyze_counts_what_the_shuffle_reader_read() {
    let sql = crate::run(
        &[
            "sql",
            "--local",
            "2",
            "--format",
            "csv",
            "-e",
            "SET datafusion.execution.target_partitions = 6; \
             EXPLAIN ANALYZE SELECT value % 7 AS k, count(*) FROM generate_series(1, 2000) GROUP BY k",
        ],
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&sql.stdout);
    assert!(
        sql.status.success(),
        "{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    let reader = stdout
        .lines()
        .find(|l| l.contains("ShuffleReaderExec") && l.contains("partitions=6"))
        .unwrap_or_else(|| panic!("no reader of 6 partitions in {stdout}"));
    let metric = |name: &str| -> u64 {
        let at = reader
            .find(&format!("{name}="))
            .unwrap_or_else(|| panic!("no {name} in {reader}"));
        let value: String = reader[at + name.len() + 1..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        value.parse().unwrap()
    };
    // Seven groups. Each of the six partitions reads the same map outputs: those of the
    // six that wrote rows (the generator fills some), skipping the empty ones.
    assert_eq!(metric("output_rows"), 7, "{reader}");
    let blocks = metric("blocks_read");
    assert!(blocks % 6 == 0 && (6..=36).contains(&blocks), "{reader}");
    // At most one Flight call per partition: the other worker's blocks come in one.
    assert!(metric("fetch_calls") <= 6, "{reader}");
    assert!(
        metric("bytes_read_local") + metric("bytes_read_remote") > 0,
        "{reader}"
    );
}

#[test]
fn a_worker_refuses_a_coordinator_list_it_cannot_read_before_it_starts() {
    for (list, says) in [
        (" , ", "no coordinator address given"),
        ("a b:1", "is not a HOST:PORT"),
    ] {
        let out = crate::run(&["worker", "--coordinator", list], LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{list:?} was accepted");
        assert!(
            stderr.contains("--coordinator: ") && stderr.contains(says),
            "{stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("worker Flight service on"));
    }
}
