//! A drove cluster of separate processes (the release `drove` binary): a coordinator and
//! workers with a memory budget, so each worker's resident memory can be measured.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use drove_client::Session;

/// Builds the release `drove` binary and returns its path.
pub fn release_drove() -> Result<PathBuf> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "drove", "--bin", "drove"])
        .status()
        .context("building drove")?;
    if !status.success() {
        bail!("cargo build --release -p drove failed");
    }
    Ok(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/drove"))
}

/// A `drove coordinator` and `drove worker --memory BUDGET` processes, stopped and their
/// work directory removed when dropped.
pub struct ProcessCluster {
    pub addr: String,
    workers: Vec<drove_testkit::Proc>,
    _coordinator: drove_testkit::Proc,
    work: PathBuf,
}

impl ProcessCluster {
    /// Starts the processes and waits until every worker has registered.
    pub async fn start(drove: &Path, workers: u64, slots: u64, budget: u64) -> Result<Self> {
        let work = std::env::temp_dir().join(format!("drove-bench-workers-{}", std::process::id()));
        let work_arg = work.to_string_lossy().into_owned();
        let (coordinator, addr, _) = drove_testkit::start_coordinator(Command::new(drove), &[]);
        let (budget, slots) = (format!("{budget}B"), slots.to_string());
        let workers = (0..workers)
            .map(|_| {
                let args = [
                    "worker",
                    "--coordinator",
                    &addr,
                    "--slots",
                    &slots,
                    "--memory",
                    &budget,
                    "--work-dir",
                    &work_arg,
                ];
                let mut command = Command::new(drove);
                command.args(args);
                drove_testkit::spawn_until(command, "worker Flight service on").0
            })
            .collect::<Vec<_>>();
        let cluster = Self {
            addr,
            workers,
            _coordinator: coordinator,
            work,
        };
        let session = cluster.session().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while session.cluster_status().await?.workers.len() < cluster.workers.len() {
            if Instant::now() > deadline {
                bail!("the workers did not register");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(cluster)
    }

    pub async fn session(&self) -> Result<Session> {
        Ok(Session::connect(&self.addr).await?)
    }

    /// Each worker's peak resident memory so far.
    pub fn peaks(&self) -> Result<Vec<u64>> {
        self.workers
            .iter()
            .map(|w| Ok(drove_testkit::peak_rss(w.0.id())?))
            .collect()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        self.workers.clear();
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
