//! A cluster of separate processes: `drove coordinator`, two `drove worker`s, and a
//! query through `drove sql --coordinator`.

use std::time::Duration;

use drove_exec::tpch::QUERIES;
use drove_testkit::{reference, tpch_data, tpch_tables};

#[test]
fn coordinator_two_workers_and_sql_as_separate_processes() {
    let dir = tpch_data(0.01);
    let (_coordinator, line) = crate::spawn_until(
        &[
            "coordinator",
            "--bind",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
        "coordinator listening on",
    );
    let words: Vec<&str> = line.split_whitespace().collect();
    let addr = words[3].to_string();
    let http = words[6]
        .trim_start_matches("http://")
        .trim_end_matches(')')
        .to_string();
    assert_eq!(http_get(&http, "/health"), "ok\n");
    let _workers: Vec<_> = (0..2)
        .map(|_| {
            crate::spawn_until(
                &["worker", "--coordinator", &addr, "--slots", "2"],
                "worker Flight service on",
            )
            .0
        })
        .collect();
    wait_for_workers(&addr, 2);

    let q1 = QUERIES[0];
    let out = crate::run(
        &[
            "sql",
            "--coordinator",
            &addr,
            "--tpch",
            dir.to_str().unwrap(),
            "--format",
            "csv",
            "-e",
            q1,
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let expected = runtime.block_on(reference(&tpch_tables(&dir), q1)).unwrap();
    let mut csv = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(true)
            .build(&mut csv);
        for b in &expected {
            w.write(b).unwrap();
        }
    }
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&csv)
    );
}

/// A plain HTTP/1.0 GET on loopback; returns the body.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).expect("connecting to the coordinator's HTTP");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default()
}

fn wait_for_workers(addr: &str, n: usize) {
    for _ in 0..200 {
        let out = crate::run(&["status", "--coordinator", addr], Duration::from_secs(30));
        if String::from_utf8_lossy(&out.stdout).starts_with(&format!("{n} workers")) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{n} workers did not register");
}
