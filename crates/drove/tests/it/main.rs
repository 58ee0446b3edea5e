//! Tests of the `drove` binary as a user runs it: real processes, real ports, real files.

mod cli;
mod mapreduce;
mod multiprocess;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `drove` binary under test.
pub fn drove() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_drove"));
    c.env_remove("RUST_LOG");
    c
}

/// Runs `drove ARGS` to completion, failing the test if it takes longer than `limit`.
pub fn run(args: &[&str], limit: Duration) -> Output {
    let started = Instant::now();
    let mut child = drove()
        .args(args)
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

/// A child process killed when dropped, so a failing test leaves nothing running.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `drove ARGS` in the background and returns it with the first stdout line that
/// contains `marker`.
pub fn spawn_until(args: &[&str], marker: &str) -> (Proc, String) {
    let mut child = drove()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting drove");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc(child);
    let mut lines = BufReader::new(stdout).lines();
    let line = loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(marker) => break l,
            Some(Ok(_)) => continue,
            _ => panic!(
                "`drove {}` exited before printing '{marker}'",
                args.join(" ")
            ),
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (proc, line)
}
