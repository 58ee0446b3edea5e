//! `drove fs` on a cluster of processes: a `drove coordinator` and `drove worker`s,
//! each with a data directory and a work directory of its own (nothing shared), driven
//! through the `drove fs` commands; workers are killed with SIGKILL and their chunk
//! files damaged on disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use drove_client::Session;
use drove_client::fs::FsEntry;

/// How long a test waits for the cluster to reach a state before it fails.
const PATIENCE: Duration = Duration::from_secs(180);

struct FsCluster {
    addr: String,
    http: String,
    _coordinator: crate::Proc,
    workers: Vec<Option<crate::Proc>>,
    /// Each worker's flags, to start it again.
    worker_args: Vec<Vec<String>>,
    dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    session: Session,
}

impl FsCluster {
    /// A coordinator with fast heartbeats and `workers` workers; `extra(i)` gives
    /// worker i's own flags.
    fn start(workers: usize, extra: impl Fn(usize) -> Vec<String>) -> Self {
        let (coordinator, addr, http) = crate::coordinator(&[
            "--heartbeat-interval-ms",
            "200",
            "--heartbeat-timeout-ms",
            "2000",
            "--fs-copies-max",
            "2",
        ]);
        let dir = tempfile::tempdir().unwrap();
        let worker_args: Vec<Vec<String>> = (0..workers)
            .map(|i| {
                let mut args: Vec<String> = [
                    "worker",
                    "--coordinator",
                    &addr,
                    "--slots",
                    "1",
                    "--memory",
                    "64MiB",
                    "--data-dir",
                    dir.path().join(format!("data-{i}")).to_str().unwrap(),
                    "--work-dir",
                    dir.path().join(format!("work-{i}")).to_str().unwrap(),
                ]
                .map(String::from)
                .to_vec();
                args.extend(extra(i));
                args
            })
            .collect();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let session = runtime.block_on(Session::connect(&addr)).unwrap();
        let mut cluster = Self {
            addr,
            http,
            _coordinator: coordinator,
            workers: Vec::new(),
            worker_args,
            dir,
            runtime,
            session,
        };
        for i in 0..workers {
            cluster.workers.push(None);
            cluster.start_worker(i);
        }
        cluster.wait_for("every worker to register", |c| {
            c.block(c.session.cluster_status()).unwrap().workers.len() == workers
        });
        cluster
    }

    fn start_worker(&mut self, i: usize) {
        let args: Vec<&str> = self.worker_args[i].iter().map(String::as_str).collect();
        self.workers[i] = Some(crate::spawn_until(&args, "worker Flight service on").0);
    }

    fn kill_worker(&mut self, i: usize) {
        drop(self.workers[i].take());
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("data-{i}"))
    }

    /// The chunk files worker i keeps.
    fn chunk_files(&self, i: usize) -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(self.data_dir(i).join("chunks")) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "chunk"))
            .collect()
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }

    /// Runs `drove fs ARGS --coordinator ADDR`.
    fn fs(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["fs"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--coordinator", &self.addr]);
        crate::run(&all, Duration::from_secs(120))
    }

    fn fs_ok(&self, args: &[&str]) -> String {
        let out = self.fs(args);
        assert!(
            out.status.success(),
            "drove fs {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `drove fs ARGS` must fail with a message that contains `needle`.
    fn fs_fails(&self, args: &[&str], needle: &str) {
        let out = self.fs(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "drove fs {args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "drove fs {args:?}: no '{needle}' in: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    /// `drove fs put` of `len` bytes made from `seed` to `path`, in chunks of 1 MiB with
    /// `replication` replicas each; returns the bytes.
    fn put_data(&self, path: &str, len: usize, seed: u64, replication: u32) -> Vec<u8> {
        let bytes = data(len, seed);
        let src = write(self.dir.path(), "src.bin", &bytes);
        let r = replication.to_string();
        self.fs_ok(&[
            "put",
            &src,
            path,
            "--chunk-size",
            "1MiB",
            "--replication",
            &r,
        ]);
        bytes
    }

    /// `drove fs get` of `path` must give `bytes` back.
    fn check_file(&self, path: &str, bytes: &[u8]) {
        let got = self.dir.path().join("got.bin");
        self.fs_ok(&["get", path, got.to_str().unwrap(), "--overwrite"]);
        assert!(
            std::fs::read(&got).unwrap() == bytes,
            "drove fs get of {path} differs"
        );
    }

    fn stat(&self, path: &str) -> FsEntry {
        self.block(self.session.fs_stat(path)).unwrap()
    }

    /// The live workers holding each chunk of the file at `path`.
    fn replicas(&self, path: &str) -> Vec<BTreeSet<u64>> {
        (self.stat(path).chunks.iter())
            .map(|c| c.replicas.iter().map(|r| r.worker_id).collect())
            .collect()
    }

    fn metric(&self, name: &str) -> u64 {
        let (code, body) = crate::http(&self.http, "GET", "/metrics");
        assert_eq!(code, 200);
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }

    /// The sum of a per-worker metric over the workers.
    fn worker_metric(&self, name: &str) -> u64 {
        let (_, body) = crate::http(&self.http, "GET", "/metrics");
        (body.lines())
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    fn wait_for(&self, what: &str, done: impl Fn(&Self) -> bool) -> Duration {
        let started = Instant::now();
        while !done(self) {
            assert!(
                started.elapsed() < PATIENCE,
                "waited {PATIENCE:?} for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        started.elapsed()
    }
}

/// `len` bytes that differ from chunk to chunk.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn files_go_in_whole_come_out_equal_and_bad_requests_are_refused() {
    let c = FsCluster::start(3, |_| Vec::new());
    let local = tempfile::tempdir().unwrap();
    let bytes = data(5 << 20, 1);
    let src = write(local.path(), "src.bin", &bytes);
    // Five chunks of 1 MiB, two replicas each on distinct workers.
    c.fs_ok(&[
        "put",
        &src,
        "drove://d/e/f.bin",
        "--chunk-size",
        "1MiB",
        "--replication",
        "2",
    ]);
    let replicas = c.replicas("drove://d/e/f.bin");
    assert_eq!(replicas.len(), 5);
    assert!(replicas.iter().all(|r| r.len() == 2), "{replicas:?}");
    let stat = c.fs_ok(&["stat", "drove://d/e/f.bin"]);
    assert!(stat.contains("5242880 bytes, 5 chunk(s)"), "{stat}");
    // get and cat give the bytes back.
    let got = local.path().join("got.bin");
    c.fs_ok(&["get", "drove://d/e/f.bin", got.to_str().unwrap()]);
    assert!(std::fs::read(&got).unwrap() == bytes, "get differs");
    // (Read as it comes: it is larger than a pipe holds.)
    let out = (crate::drove().args(["fs", "cat", "drove://d/e/f.bin", "--coordinator", &c.addr]))
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout == bytes, "cat differs");
    assert!(c.fs_ok(&["ls", "drove://d"]).contains("e/"));
    assert!(c.fs_ok(&["ls", "drove://d/e"]).contains("5242880  f.bin"));
    // The default factor is 3 with three workers; an empty file is a file too.
    let small = write(local.path(), "small.txt", b"hello\n");
    c.fs_ok(&["put", &small, "drove://d/small.txt"]);
    assert_eq!(c.stat("drove://d/small.txt").replication, 3);
    let empty = write(local.path(), "empty", b"");
    c.fs_ok(&["put", &empty, "drove://d/empty"]);
    assert_eq!(c.fs(&["cat", "drove://d/empty"]).stdout, b"");

    let status = String::from_utf8(
        crate::run(
            &["status", "--coordinator", &c.addr],
            Duration::from_secs(60),
        )
        .stdout,
    )
    .unwrap();
    assert!(
        status.contains(
            "drove fs: 3 files, 5.0 MiB in 6 chunks; 0 under-replicated, 0 with no live replica"
        ),
        "{status}"
    );

    // A stored chunk is never rewritten, not even by a client that names it.
    let chunk = &c.stat("drove://d/e/f.bin").chunks[0];
    let clients = drove_exec::dfs::ChunkClients::new(None);
    let data = bytes::Bytes::from_static(b"forged");
    let rewrite = drove_exec::dfs::write_chunk(
        &clients,
        &chunk.replicas[0].addr,
        chunk.id,
        drove_exec::dfs::checksum(&data),
        data,
        &[],
    );
    let refused = c.block(rewrite).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused}");

    // The workers' heartbeats carry what their chunks take: the replicas' bytes, and
    // their checksums and trailers.
    c.wait_for("the workers' chunk bytes in /metrics", |c| {
        c.worker_metric("drove_worker_fs_bytes") > 2 * (5 << 20)
    });

    // Bad input.
    c.fs_fails(
        &["put", &small, "drove://d/small.txt"],
        "exists; pass --overwrite",
    );
    c.fs_ok(&[
        "put",
        &src,
        "drove://d/small.txt",
        "--overwrite",
        "--chunk-size",
        "1MiB",
    ]);
    assert_eq!(c.stat("drove://d/small.txt").size, bytes.len() as u64);
    c.fs_fails(
        &["put", &small, "drove://x", "--replication", "4"],
        "more replicas than the 3 worker(s)",
    );
    c.fs_fails(
        &["put", &small, "drove://x", "--replication", "0"],
        "--replication 0",
    );
    c.fs_fails(
        &["put", &small, "drove://x", "--chunk-size", "1KiB"],
        "--chunk-size",
    );
    c.fs_fails(&["put", &small, "/x"], "not a drove fs path");
    c.fs_fails(&["put", &small, "drove://d/../x"], "'..'");
    c.fs_fails(&["put", "/no/such/file", "drove://x"], "is not a file");
    c.fs_fails(&["put", &small, "drove://d"], "is a directory");
    c.fs_fails(&["put", &small, "drove://d/small.txt/under"], "is a file");
    c.fs_fails(
        &[
            "get",
            "drove://nothing",
            got.to_str().unwrap(),
            "--overwrite",
        ],
        "does not exist",
    );
    c.fs_fails(
        &["get", "drove://d/small.txt", got.to_str().unwrap()],
        "exists; pass overwrite",
    );
    c.fs_fails(&["cat", "drove://d"], "is a directory");
    c.fs_fails(&["stat", "drove://nothing"], "does not exist");
    c.fs_fails(&["rm", "drove://d"], "--recursive");
    c.fs_fails(&["rm", "drove://"], "root");
    let out = crate::run(
        &["coordinator", "--fs-copies-max", "0"],
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--fs-copies-max"),
        "{stderr}"
    );
    // Nothing refused left a chunk behind: only the files' chunks are on disk.
    let held: usize = (0..3).map(|i| c.chunk_files(i).len()).sum();
    let want: usize = ["drove://d/e/f.bin", "drove://d/small.txt"]
        .iter()
        .map(|p| c.replicas(p).iter().map(BTreeSet::len).sum::<usize>())
        .sum();
    assert_eq!(held, want);

    // Removing a directory frees its chunks on the workers.
    c.fs_ok(&["mkdir", "drove://made/here"]);
    assert!(c.fs_ok(&["ls", "drove://made"]).contains("here/"));
    c.fs_ok(&["rm", "drove://d", "--recursive"]);
    c.fs_fails(&["ls", "drove://d"], "does not exist");
    c.wait_for("the removed files' chunks to go", |c| {
        (0..3).all(|i| c.chunk_files(i).is_empty())
    });
}

#[test]
fn a_killed_worker_s_chunks_are_copied_back_and_a_returning_one_trimmed() {
    let mut c = FsCluster::start(3, |_| Vec::new());
    let bytes = c.put_data("drove://f", 8 << 20, 2, 2);
    let before = c.replicas("drove://f");
    let index = (0..3)
        .find(|&i| !c.chunk_files(i).is_empty() && c.chunk_files(i).len() < 8)
        .expect("a worker holding some chunks");
    let victim_chunks = c.chunk_files(index).len();
    assert!(victim_chunks > 0);
    c.kill_worker(index);
    let killed = Instant::now();
    // Readable at once, from the other replicas.
    c.check_file("drove://f", &bytes);
    // Every chunk gets its second replica back on the two workers left.
    c.wait_for("the factor to be restored", |c| {
        c.replicas("drove://f").iter().all(|r| r.len() == 2)
            && c.metric("drove_fs_chunks_under_replicated") == 0
    });
    let restored = killed.elapsed();
    eprintln!(
        "replication restored {restored:?} after the kill ({victim_chunks} chunks of 1 MiB lost with worker {index})"
    );
    assert!(c.metric("drove_fs_chunk_copies_total") >= victim_chunks as u64);
    let after = c.replicas("drove://f");
    assert_ne!(before, after);
    // It comes back with its chunks: they count again, and the surplus goes.
    c.start_worker(index);
    c.wait_for("surplus replicas to be trimmed", |c| {
        c.replicas("drove://f").iter().all(|r| r.len() == 2)
            && (0..3).map(|i| c.chunk_files(i).len()).sum::<usize>() == 16
    });
    c.check_file("drove://f", &bytes);
}

#[test]
fn corrupt_replicas_are_found_counted_and_replaced() {
    // A fast scrubber finds the corrupt replicas a read does not touch.
    let c = FsCluster::start(3, |_| vec!["--scrub-rate".into(), "64MiB".into()]);
    let bytes = c.put_data("drove://f", 4 << 20, 3, 2);
    // Flip a byte in one replica of every chunk; the other stays good.
    let mut flipped = 0;
    for chunk in c.stat("drove://f").chunks {
        let name = format!("{:016x}.chunk", chunk.id);
        let path = (0..3)
            .flat_map(|i| c.chunk_files(i))
            .find(|p| p.file_name().unwrap().to_str() == Some(name.as_str()))
            .expect("a replica on disk");
        let mut b = std::fs::read(&path).unwrap();
        b[300_000] ^= 0x01;
        std::fs::write(&path, b).unwrap();
        flipped += 1;
    }
    assert_eq!(flipped, 4);
    // Reads still give the right bytes.
    c.check_file("drove://f", &bytes);
    // Every corrupt replica is found, counted and replaced.
    c.wait_for("every corrupt replica to be counted", |c| {
        c.metric("drove_fs_corrupt_replicas_total") == flipped
    });
    c.wait_for("the corrupt replicas to be replaced", |c| {
        c.replicas("drove://f").iter().all(|r| r.len() == 2)
            && c.metric("drove_fs_chunks_under_replicated") == 0
    });
    c.check_file("drove://f", &bytes);
    // With nothing reading, the scrubber finds a damaged replica by itself.
    let victim = (0..3)
        .flat_map(|i| c.chunk_files(i))
        .next()
        .expect("a replica on disk");
    let mut b = std::fs::read(&victim).unwrap();
    b[10] ^= 0x80;
    std::fs::write(&victim, b).unwrap();
    c.wait_for("the scrubber to find it", |c| {
        c.metric("drove_fs_corrupt_replicas_total") == flipped + 1
    });
    c.wait_for("it to be replaced", |c| {
        c.replicas("drove://f").iter().all(|r| r.len() == 2)
    });
}

#[test]
fn a_full_worker_s_share_goes_to_the_others() {
    // Worker 0 keeps at most 1 MiB: no chunk of 1 MiB fits with its checksums.
    let c = FsCluster::start(3, |i| match i {
        0 => vec!["--data-max".into(), "1MiB".into()],
        _ => Vec::new(),
    });
    let bytes = c.put_data("drove://f", 6 << 20, 4, 2);
    assert!(c.chunk_files(0).is_empty());
    assert!(c.replicas("drove://f").iter().all(|r| r.len() == 2));
    c.check_file("drove://f", &bytes);
    // With every worker needed, the put still completes on the two that have room,
    // and no temporary file is left on the full one.
    c.put_data("drove://g", 6 << 20, 4, 3);
    assert!(c.replicas("drove://g").iter().all(|r| r.len() == 2));
    let left = std::fs::read_dir(c.data_dir(0).join("chunks"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "the full worker keeps nothing");
}

#[test]
fn a_put_whose_workers_are_killed_leaves_its_file_whole_or_absent() {
    let mut c = FsCluster::start(3, |_| Vec::new());
    let local = tempfile::tempdir().unwrap();
    let mut seed = 0x5eed_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let addr = c.addr.clone();
    let put = |src: &str, path: &str| {
        crate::drove()
            .args([
                "fs",
                "put",
                src,
                path,
                "--chunk-size",
                "256KiB",
                "--replication",
                "2",
            ])
            .args(["--coordinator", &addr])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    // Kills land anywhere in a put as long as one takes here.
    let src = write(local.path(), "src.bin", &data(8 << 20, 9));
    let started = Instant::now();
    assert!(put(&src, "drove://timed").wait().unwrap().success());
    let span_ms = started.elapsed().as_millis() as u64 + 1;
    let (mut complete, mut absent) = (0, 0);
    for run in 0..20 {
        let bytes = data(8 << 20, run + 10);
        let src = write(local.path(), "src.bin", &bytes);
        let path = format!("drove://runs/{run}");
        let mut putting = put(&src, &path);
        // Kill a random worker at a random point of the put, then start it again; in
        // every fourth run, kill the put itself first.
        std::thread::sleep(Duration::from_millis(next() % span_ms));
        if run % 4 == 3 {
            let _ = putting.kill();
        }
        let victim = (next() % 3) as usize;
        c.kill_worker(victim);
        let status = putting.wait().unwrap();
        c.start_worker(victim);
        drop(putting);
        c.wait_for("the worker to come back", |c| {
            c.block(c.session.cluster_status()).unwrap().workers.len() == 3
        });
        match c.block(c.session.fs_stat(&path)) {
            Ok(_) => {
                // Visible means whole: every byte reads back.
                c.check_file(&path, &bytes);
                complete += 1;
            }
            Err(e) => {
                assert!(!status.success(), "run {run}: the put succeeded, but: {e}");
                assert!(e.to_string().contains("does not exist"), "run {run}: {e}");
                absent += 1;
            }
        }
    }
    assert!(
        complete > 0,
        "no put completed: the runs tested nothing visible"
    );
    eprintln!(
        "of 20 puts with a worker killed (every fourth killed itself too), {complete} completed and {absent} left nothing visible; a put took {span_ms} ms"
    );
}

#[test]
fn a_draining_worker_hands_its_chunks_off_before_it_leaves() {
    let mut c = FsCluster::start(3, |_| Vec::new());
    let bytes = c.put_data("drove://f", 6 << 20, 5, 2);
    let index = (0..3)
        .find(|&i| !c.chunk_files(i).is_empty())
        .expect("a worker holding chunks");
    let held = c.chunk_files(index).len();
    let worker = c.workers[index].as_mut().unwrap();
    let pid = worker.0.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exited = worker.0.wait().unwrap();
    assert!(
        exited.success(),
        "the drained worker exits cleanly: {exited}"
    );
    // Once it has gone, every chunk is on two of the workers that stay.
    let others: Vec<usize> = (0..3).filter(|&i| i != index).collect();
    for chunk in c.stat("drove://f").chunks {
        let name = format!("{:016x}.chunk", chunk.id);
        let copies = (others.iter())
            .filter(|&&i| c.data_dir(i).join("chunks").join(&name).exists())
            .count();
        assert_eq!(copies, 2, "chunk {name} after the drain");
    }
    assert!(c.metric("drove_fs_chunk_copies_total") >= held as u64);
    c.check_file("drove://f", &bytes);
}

/// `drove gen tpch --out drove://` writes the tables into drove fs, replicated on
/// workers that share nothing; queries over `drove://` tables answer as
/// single-process DataFusion does over the same tables generated locally, and the
/// bytes they read are counted by where the replica was.
#[test]
fn tpch_in_drove_fs_answers_as_local_parquet_does() {
    let c = FsCluster::start(3, |_| Vec::new());
    let gen_args = |extra: &[&str]| {
        let mut args = vec!["gen", "tpch", "--scale", "0.01", "--coordinator", &c.addr];
        args.extend_from_slice(extra);
        crate::run(&args, Duration::from_secs(300))
    };
    let out = gen_args(&["--out", "drove://tpch", "--replication", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lineitem = c.stat("drove://tpch/lineitem.parquet");
    assert!(
        lineitem.size > 0 && lineitem.replication == 2,
        "{lineitem:?}"
    );
    assert!(
        c.replicas("drove://tpch/lineitem.parquet")
            .iter()
            .all(|r| r.len() == 2)
    );

    // Bad input: an existing output, a factor above the workers, flags that need
    // drove://, and a table that is not there.
    let again = gen_args(&["--out", "drove://tpch"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("--overwrite"),
        "{stderr}"
    );
    let too_many = gen_args(&["--out", "drove://other", "--replication", "4"]);
    let stderr = String::from_utf8_lossy(&too_many.stderr);
    assert!(
        !too_many.status.success() && stderr.contains("replication"),
        "{stderr}"
    );
    let local_dir = c.dir.path().join("local-tpch");
    let local_flag = gen_args(&["--out", local_dir.to_str().unwrap(), "--replication", "2"]);
    let stderr = String::from_utf8_lossy(&local_flag.stderr);
    assert!(
        !local_flag.status.success() && stderr.contains("drove://"),
        "{stderr}"
    );
    let missing = crate::run(
        &[
            "sql",
            "--coordinator",
            &c.addr,
            "--table",
            "t=drove://tpch/nothing.parquet",
            "-e",
            "SELECT 1 FROM t",
        ],
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        !missing.status.success() && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // One table through the CLI, against the reference over the local copy.
    let local = drove_testkit::tpch_data(0.01);
    let q6 = drove_exec::tpch::QUERIES[5];
    let out = crate::run(
        &[
            "sql",
            "--coordinator",
            &c.addr,
            "--table",
            "lineitem=drove://tpch/lineitem.parquet",
            "--format",
            "csv",
            "-e",
            q6,
        ],
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        crate::multiprocess::expected_csv(&local, q6)
    );

    // All 22 queries, as tables of a directory.
    let tables = drove_testkit::tpch_tables(&local);
    c.block(c.session.register_tpch("drove://tpch")).unwrap();
    let mut node_local = 0;
    let mut job = 0;
    for (i, sql) in drove_exec::tpch::QUERIES.iter().enumerate() {
        let got = c
            .block(c.session.run_sql(sql))
            .unwrap_or_else(|e| panic!("Q{}: {e}", i + 1));
        let expected = c.block(drove_testkit::reference(&tables, sql)).unwrap();
        node_local += got.summary.locality.0;
        job = got.summary.job_id;
        drove_testkit::compare(&got.batches, &expected, drove_testkit::is_ordered(sql))
            .unwrap_or_else(|e| panic!("Q{}: {e}", i + 1));
    }
    // Scans ran where their data was, and the jobs say so.
    assert!(node_local > 0, "no scan ran on a worker holding its data");
    let (code, body) = crate::http(&c.http, "GET", &format!("/api/v1/jobs/{job}"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"locality\":{\"node_local\":"), "{body}");
    let read = |replica: &str| {
        c.metric(&format!(
            "drove_fs_read_bytes_total{{replica=\"{replica}\"}}"
        ))
    };
    c.wait_for("workers to report the bytes they read", |_| {
        read("local") + read("remote") >= lineitem.size
    });
    eprintln!(
        "drove fs bytes read: {} local, {} remote",
        read("local"),
        read("remote")
    );
}

/// Word count from `drove://` input to `drove://` output, on workers that share no
/// directory: the counts equal a plain count, the output appears whole with
/// `_SUCCESS`, `--overwrite` replaces it in one step, and bad paths are refused.
#[test]
fn wordcount_reads_and_writes_drove_fs_with_nothing_shared() {
    let c = FsCluster::start(3, |_| Vec::new());
    let mut reference: std::collections::BTreeMap<String, u64> = Default::default();
    for f in 0..4 {
        let text: String = (0..3000)
            .map(|i| {
                format!(
                    "Wörd{} the {} fox, jumps; {}\n",
                    i % 97,
                    f,
                    (i * 7 + f) % 13
                )
            })
            .collect();
        for w in crate::mapreduce::words(&text) {
            *reference.entry(w).or_default() += 1;
        }
        let src = write(c.dir.path(), &format!("f{f}.txt"), text.as_bytes());
        c.fs_ok(&[
            "put",
            &src,
            &format!("drove://corpus/f{f}.txt"),
            "--replication",
            "2",
        ]);
    }
    // A marker beside the input is not read as input.
    let marker = write(c.dir.path(), "_SUCCESS", b"not words");
    c.fs_ok(&["put", &marker, "drove://corpus/_SUCCESS"]);

    let mapreduce = |extra: &[&str]| {
        let mut args = vec![
            "mapreduce",
            "wordcount",
            "--coordinator",
            &c.addr,
            "--no-progress",
        ];
        args.extend_from_slice(extra);
        crate::run(&args, Duration::from_secs(300))
    };
    let run_ok = |extra: &[&str]| {
        let out = mapreduce(extra);
        assert!(
            out.status.success(),
            "drove mapreduce {extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // The committed output: its entries, and the counts its parts hold.
    let output = |dir: &str| {
        let listed = c.block(c.session.fs_list(dir)).unwrap();
        let names: Vec<String> = listed.into_iter().map(|e| e.name).collect();
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for name in names.iter().filter(|n| n.starts_with("part-r-")) {
            let part = c.fs_ok(&["cat", &format!("{dir}/{name}")]);
            for line in part.lines() {
                let (word, n) = line.split_once('\t').unwrap();
                assert!(
                    counts
                        .insert(word.to_string(), n.parse().unwrap())
                        .is_none(),
                    "{word} counted in two parts"
                );
            }
        }
        (names, counts)
    };

    run_ok(&[
        "--input",
        "drove://corpus",
        "--output",
        "drove://counts",
        "--reducers",
        "3",
    ]);
    let (names, counts) = output("drove://counts");
    assert_eq!(
        names,
        ["_SUCCESS", "part-r-00000", "part-r-00001", "part-r-00002"],
        "the output holds its parts and marker, and no temporary files"
    );
    assert_eq!(counts, reference);

    // An existing output needs --overwrite, which replaces the parts (fewer now).
    let again = mapreduce(&["--input", "drove://corpus", "--output", "drove://counts"]);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && stderr.contains("--overwrite"),
        "{stderr}"
    );
    run_ok(&[
        "--input",
        "drove://corpus/f0.txt",
        "drove://corpus/f1.txt",
        "drove://corpus/f2.txt",
        "drove://corpus/f3.txt",
        "--output",
        "drove://counts",
        "--reducers",
        "2",
        "--overwrite",
    ]);
    let (names, counts) = output("drove://counts");
    assert_eq!(names, ["_SUCCESS", "part-r-00000", "part-r-00001"]);
    assert_eq!(counts, reference);

    // Bad paths: a missing input, an output inside the input, a directory that is not
    // an earlier output, and a file as the output.
    c.fs_ok(&["put", &marker, "drove://other/notes.txt"]);
    for (extra, needle) in [
        (["drove://nothing", "drove://out"], "does not exist"),
        (["drove://corpus", "drove://corpus/out"], "lies inside"),
        (
            ["drove://corpus", "drove://other"],
            "not an earlier drove output",
        ),
        (
            ["drove://corpus", "drove://other/notes.txt"],
            "not a directory",
        ),
    ] {
        let out = mapreduce(&["--input", extra[0], "--output", extra[1], "--overwrite"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(needle),
            "{extra:?}: no '{needle}' in {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    // Nothing was left behind by the refused runs.
    assert!(c.block(c.session.fs_stat("drove://out")).is_err());
    assert!(c.block(c.session.fs_stat("drove://corpus/out")).is_err());
}
