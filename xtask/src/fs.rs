//! The `fs` workload: `drove fs put` and `get` throughput on a coordinator and three
//! `drove worker` processes (the release binary, each with a data directory of its own
//! on the bench's disk), against the disk measured in the same run with the same fsync
//! policy (one file per chunk, synced, renamed), and the throughput of re-replication
//! after a worker holding replicas is killed with SIGKILL.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drove_client::Session;
use drove_client::fs::PutOptions;
use serde_json::{Value, json};

use crate::{Plan, median};

pub(crate) const WORKERS: usize = 3;
const REPLICATION: u32 = 2;
const CHUNK_BYTES: u64 = 64 << 20;

/// Bytes that do not compress, made once.
fn payload(path: &Path, bytes: u64) -> Result<()> {
    if path.metadata().is_ok_and(|m| m.len() == bytes) {
        return Ok(());
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut left = bytes;
    let mut block = vec![0u8; 1 << 20];
    while left > 0 {
        for b in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(block.len() as u64) as usize;
        out.write_all(&block[..n])?;
        left -= n as u64;
    }
    out.flush()?;
    Ok(())
}

/// The disk's speed with drove fs's fsync policy: `bytes` written as files of a chunk
/// each, every one synced and renamed into place, `copies` times over (as a put
/// writes); then one copy read back into one synced file (as a get does). Returns
/// (write, read) seconds.
fn disk(dir: &Path, src: &Path, bytes: u64, copies: u32) -> Result<(f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let data = std::fs::read(src)?;
    let started = Instant::now();
    for copy in 0..copies {
        for (i, chunk) in data.chunks(CHUNK_BYTES as usize).enumerate() {
            let tmp = dir.join(format!("{copy}-{i}.tmp"));
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(chunk)?;
            f.sync_all()?;
            std::fs::rename(&tmp, dir.join(format!("{copy}-{i}.chunk")))?;
        }
        std::fs::File::open(dir)?.sync_all()?;
    }
    let write = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut read = 0u64;
    let mut out = std::fs::File::create(dir.join("copy"))?;
    for i in 0..bytes.div_ceil(CHUNK_BYTES) {
        let chunk = std::fs::read(dir.join(format!("0-{i}.chunk")))?;
        out.write_all(&chunk)?;
        read += chunk.len() as u64;
    }
    out.sync_all()?;
    let read_s = started.elapsed().as_secs_f64();
    if read != bytes {
        bail!("the disk test read {read} bytes of {bytes}");
    }
    std::fs::remove_dir_all(dir)?;
    Ok((write, read_s))
}

pub(crate) struct Cluster {
    pub addr: String,
    pub http: String,
    _coordinator: drove_testkit::Proc,
    workers: Vec<drove_testkit::Proc>,
}

/// A coordinator and [`WORKERS`] workers, each with `slots` slots, `memory` and a data
/// and work directory of its own under `root`.
pub(crate) async fn start(drove: &Path, root: &Path, slots: &str, memory: &str) -> Result<Cluster> {
    let (coordinator, addr, http) = drove_testkit::start_coordinator(
        Command::new(drove),
        &[
            "--heartbeat-interval-ms",
            "500",
            "--heartbeat-timeout-ms",
            "3000",
        ],
    );
    let workers = (0..WORKERS)
        .map(|i| {
            let mut c = Command::new(drove);
            c.args([
                "worker",
                "--coordinator",
                &addr,
                "--slots",
                slots,
                "--memory",
                memory,
            ])
            .arg("--data-dir")
            .arg(root.join(format!("data-{i}")))
            .arg("--work-dir")
            .arg(root.join(format!("work-{i}")));
            drove_testkit::spawn_until(c, "worker Flight service on").0
        })
        .collect();
    let cluster = Cluster {
        addr,
        http,
        _coordinator: coordinator,
        workers,
    };
    let session = Session::connect(&cluster.addr).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while session.cluster_status().await?.workers.len() < WORKERS {
        if Instant::now() > deadline {
            bail!("the workers did not register");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(cluster)
}

pub(crate) fn metric(http: &str, name: &str) -> Result<u64> {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(http)?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {http}\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in /metrics"))
}

/// One run's figures.
struct Run {
    disk_write_s: f64,
    disk_read_s: f64,
    put_s: f64,
    get_s: f64,
    /// From the kill until every chunk has its factor again.
    repair_s: f64,
    /// The bytes of the replicas the killed worker held.
    lost_bytes: u64,
}

/// One run: put, get (checked), then a worker killed and the time until every chunk
/// has its factor again.
async fn run_once(
    drove: &Path,
    root: &Path,
    src: &Path,
    bytes: u64,
    disk: (f64, f64),
) -> Result<Run> {
    let _ = std::fs::remove_dir_all(root);
    std::fs::create_dir_all(root)?;
    let mut cluster = start(drove, root, "1", "256MiB").await?;
    let session = Session::connect(&cluster.addr).await?;
    let options = PutOptions {
        replication: REPLICATION,
        chunk_bytes: CHUNK_BYTES,
        overwrite: false,
    };
    let started = Instant::now();
    session
        .fs_put(src, "drove://bench/payload", &options)
        .await?;
    let put = started.elapsed().as_secs_f64();
    let out = root.join("got");
    let started = Instant::now();
    let got = session.fs_get("drove://bench/payload", &out, false).await?;
    let get = started.elapsed().as_secs_f64();
    if got != bytes || std::fs::read(&out)? != std::fs::read(src)? {
        bail!("drove fs get gave back other bytes than were put");
    }
    std::fs::remove_file(&out)?;
    // The worker with the most chunks goes.
    let held = |i: usize| {
        std::fs::read_dir(root.join(format!("data-{i}/chunks"))).map_or(0, |d| d.count())
    };
    let victim = (0..WORKERS).max_by_key(|&i| held(i)).expect("workers");
    let lost = std::fs::read_dir(root.join(format!("data-{victim}/chunks")))?
        .map(|e| Ok(e?.metadata()?.len()))
        .sum::<Result<u64>>()?;
    let copies_before = metric(&cluster.http, "drove_fs_chunk_copies_total")?;
    cluster.workers.remove(victim);
    let killed = Instant::now();
    loop {
        let file = session.fs_stat("drove://bench/payload").await?;
        let copies = metric(&cluster.http, "drove_fs_chunk_copies_total")?;
        if copies > copies_before
            && file
                .chunks
                .iter()
                .all(|c| c.replicas.len() >= REPLICATION as usize)
        {
            break;
        }
        if killed.elapsed() > Duration::from_secs(600) {
            bail!("the replication factor was not restored within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let repair = killed.elapsed().as_secs_f64();
    drop(cluster);
    let _ = std::fs::remove_dir_all(root);
    Ok(Run {
        disk_write_s: disk.0,
        disk_read_s: disk.1,
        put_s: put,
        get_s: get,
        repair_s: repair,
        lost_bytes: lost,
    })
}

pub fn workload(plan: &Plan) -> Result<(String, Value, Vec<String>)> {
    let drove = crate::processes::release_drove()?;
    let bytes = plan.size;
    let base = plan.args.data.join("fs");
    std::fs::create_dir_all(&base)?;
    let src = base.join(format!("payload-{bytes}"));
    payload(&src, bytes)?;
    let runtime = tokio::runtime::Runtime::new()?;
    let mut rows = Vec::new();
    let mut problems = Vec::new();
    for i in 0..plan.iterations {
        println!("  fs run {} of {}", i + 1, plan.iterations);
        let measured = disk(&base.join("disk"), &src, bytes, REPLICATION)?;
        match runtime.block_on(run_once(
            &drove,
            &base.join("cluster"),
            &src,
            bytes,
            measured,
        )) {
            Ok(run) => rows.push(run),
            Err(e) => problems.push(format!("fs: {e:#}")),
        }
    }
    let mb = |b: u64, s: f64| b as f64 / s / 1e6;
    let col = |f: fn(&Run) -> f64| median(&rows.iter().map(f).collect::<Vec<_>>());
    let mut md = format!(
        "### fs — `drove fs put` and `get` of {} MB on a coordinator and {WORKERS} `drove worker` processes (release), replication {REPLICATION}, chunks of {} MiB, each worker's --data-dir on this disk; medians of {} runs\n\n",
        bytes / 1_000_000,
        CHUNK_BYTES >> 20,
        rows.len()
    );
    let report = if rows.is_empty() {
        md.push_str("FAILED: no run completed\n");
        Value::Null
    } else {
        let (dw, dr) = (col(|r| r.disk_write_s), col(|r| r.disk_read_s));
        let (put, get, repair) = (col(|r| r.put_s), col(|r| r.get_s), col(|r| r.repair_s));
        let lost = col(|r| r.lost_bytes as f64) as u64;
        let stored = bytes * u64::from(REPLICATION);
        md.push_str(&format!(
            "| | seconds | file MB/s | disk MB/s (all copies) | vs the disk |\n|---|---|---|---|---|\n\
             | disk: {REPLICATION} copies written as synced chunk files | {dw:.2} | {:.0} | {:.0} | 1.00 |\n\
             | `drove fs put` | {put:.2} | {:.0} | {:.0} | {:.2} |\n\
             | disk: one copy read back into a synced file | {dr:.2} | {:.0} | | 1.00 |\n\
             | `drove fs get` (checked against the source) | {get:.2} | {:.0} | | {:.2} |\n\
             | re-replication after a SIGKILL ({} MB lost) | {repair:.2} | {:.0} | | |\n",
            mb(bytes, dw),
            mb(stored, dw),
            mb(bytes, put),
            mb(stored, put),
            dw / put,
            mb(bytes, dr),
            mb(bytes, get),
            dr / get,
            lost / 1_000_000,
            mb(lost, repair),
        ));
        md.push_str("\nThe re-replication time runs from the kill until every chunk has its factor again, detection included. The disk reads come from the page cache as much as drove's do; both reads write the file they read into, synced, as `get` does.\n");
        let runs: Vec<Value> = (rows.iter())
            .map(|r| {
                json!({
                    "disk_write_s": r.disk_write_s,
                    "disk_read_s": r.disk_read_s,
                    "put_s": r.put_s,
                    "get_s": r.get_s,
                    "repair_s": r.repair_s,
                    "lost_bytes": r.lost_bytes,
                })
            })
            .collect();
        json!({ "bytes": bytes, "runs": runs })
    };
    for p in &problems {
        md.push_str(&format!("\n{p}\n"));
    }
    Ok((md, json!({ "workload": "fs", "result": report }), problems))
}
