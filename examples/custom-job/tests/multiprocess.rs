//! The example binary's own job runs on a cluster of separate `my-engine` processes.

use std::collections::BTreeMap;
use std::process::Command;

use drove_testkit::Proc;
use std::time::{Duration, Instant};

fn my_engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_my-engine"));
    c.env_remove("RUST_LOG");
    c
}

fn spawn_until(args: &[&str], marker: &str) -> (Proc, String) {
    let mut command = my_engine();
    command.args(args);
    drove_testkit::spawn_until(command, marker)
}

#[test]
fn a_users_own_job_runs_on_a_multi_process_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut expected: BTreeMap<u64, u64> = BTreeMap::new();
    for f in 0..3 {
        let mut text = String::new();
        for i in 0..500 {
            let line = "x".repeat((i * 7 + f) % 40);
            *expected.entry(line.len() as u64).or_default() += 1;
            text.push_str(&line);
            text.push('\n');
        }
        std::fs::write(input.join(format!("f{f}.txt")), text).unwrap();
    }

    let (_coordinator, addr, _) = drove_testkit::start_coordinator(my_engine(), &[]);
    let _workers: Vec<Proc> = (0..2)
        .map(|_| {
            spawn_until(
                &["worker", "--coordinator", &addr, "--slots", "2"],
                "worker Flight service on",
            )
            .0
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = my_engine()
            .args(["status", "--coordinator", &addr])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).starts_with("2 workers") {
            break;
        }
        assert!(Instant::now() < deadline, "the workers did not register");
        std::thread::sleep(Duration::from_millis(50));
    }

    let output = dir.path().join("lengths");
    let run = my_engine()
        .args([
            "mapreduce",
            "line-lengths",
            "--input",
            input.to_str().unwrap(),
            "--output",
        ])
        .arg(&output)
        .args(["--coordinator", &addr, "--reducers", "2"])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(output.join("_SUCCESS").exists());
    let mut got = BTreeMap::new();
    for f in ["part-r-00000", "part-r-00001"] {
        for l in std::fs::read_to_string(output.join(f)).unwrap().lines() {
            let (len, n) = l.split_once('\t').unwrap();
            got.insert(len.parse::<u64>().unwrap(), n.parse::<u64>().unwrap());
        }
    }
    assert_eq!(got, expected);
}
