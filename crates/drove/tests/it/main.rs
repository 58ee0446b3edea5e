//! Tests of the `drove` binary as a user runs it: real processes, real ports, real files.

mod cli;
mod cloud;
mod compose;
mod durable;
mod fs;
mod hardening;
mod mapreduce;
mod memory;
mod multiprocess;
mod replicated;
mod s3;
mod secured;
mod security;
mod ui;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Held by the tests that load the machine most (sorting hundreds of MB) and by the
/// test that needs Chromium to load a page while a job runs, so they do not overlap.
pub fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.blocking_lock()
}

/// [`exclusive`] for async tests.
pub async fn exclusive_async() -> tokio::sync::MutexGuard<'static, ()> {
    HEAVY.lock().await
}

static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The `drove` binary under test.
pub fn drove() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drove"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs `drove ARGS` to completion, failing the test if it takes longer than `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let mut command = drove();
    command.args(args);
    run_command(command, limit)
}

/// Runs `command` to completion, failing the test if it takes longer than `limit`.
pub fn run_command(mut command: Command, limit: Duration) -> Output {
    let started = Instant::now();
    let args: Vec<String> = (command.get_args())
        .map(|a| a.to_string_lossy().into())
        .collect();
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting drove");
    loop {
        if child.try_wait().expect("waiting for drove").is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("`drove {}` did not finish within {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("collecting output")
}

pub use drove_testkit::Proc;

/// A `drove coordinator` on free loopback ports, with `extra` flags: the process, its
/// gRPC address and its HTTP address.
pub fn coordinator(extra: &[&str]) -> (Proc, String, String) {
    drove_testkit::start_coordinator(drove(), extra)
}

/// A `drove worker` of the coordinator at `addr` with 2 slots, its spill directories
/// under `work_dir`, and `extra` flags; returned once its Flight service listens.
pub fn worker(addr: &str, work_dir: &std::path::Path, extra: &[&str]) -> Proc {
    let mut args = vec![
        "worker",
        "--coordinator",
        addr,
        "--slots",
        "2",
        "--work-dir",
        work_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    spawn_until(&args, "worker Flight service on").0
}

/// A coordinator and a worker with 2 slots, each started by `command` (so with its
/// environment); returns them with the coordinator's address and the worker's work
/// directory.
pub fn cluster_with(command: impl Fn() -> Command) -> (Proc, Proc, String, tempfile::TempDir) {
    let (coordinator, addr, _) = drove_testkit::start_coordinator(command(), &[]);
    let work = tempfile::tempdir().unwrap();
    let mut worker = command();
    worker.args([
        "worker",
        "--coordinator",
        &addr,
        "--slots",
        "2",
        "--work-dir",
    ]);
    worker.arg(work.path());
    let worker = drove_testkit::spawn_until(worker, "worker Flight service on").0;
    (coordinator, worker, addr, work)
}

/// Starts `drove ARGS` in the background and returns it with the first stdout line that
/// contains `marker`.
pub fn spawn_until(args: &[&str], marker: &str) -> (Proc, String) {
    let mut command = drove();
    command.args(args);
    drove_testkit::spawn_until(command, marker)
}

/// A plain HTTP/1.0 request on loopback; returns the status code and the body.
pub fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    http_with(addr, method, path, b"")
}

/// [`http`] with a request body.
pub fn http_with(addr: &str, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(addr).expect("connecting to the coordinator's HTTP");
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    stream.write_all(body).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (code, body)
}
