//! Running one engine in its own process tree: the child prints `RESULT {json}`, and
//! the parent samples the tree's resident memory to report its peak.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// What one engine's run gave.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The child's `RESULT` object.
    pub result: Value,
    /// Peak resident memory of the child and all its descendants together.
    pub peak_rss_bytes: u64,
}

/// The parent of each live process.
fn parents() -> HashMap<u32, u32> {
    let mut map = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return map;
    };
    for entry in dir.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces; fields follow it.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            map.insert(pid, ppid);
        }
    }
    map
}

/// Resident bytes of `root` and its descendants.
pub fn tree_rss(root: u32) -> u64 {
    let parents = parents();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| **pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/statm")).ok())
        .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 4096
}

/// Runs `command` to completion (at most `limit`), sampling its memory, and returns
/// its `RESULT`. Its stderr goes to `log`.
pub fn run(mut command: Command, log: &Path, limit: Duration) -> Result<Measured> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let description = format!("{command:?}");
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {description}"))?;
    let mut stdout = child.stdout.take().context("piped stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        peak = peak.max(tree_rss(child.id()));
        if started.elapsed() > limit {
            let _ = Command::new("pkill")
                .args(["-KILL", "-P", &child.id().to_string()])
                .status();
            let _ = child.kill();
            bail!("{description} ran past {limit:?}; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = reader.join().unwrap_or_default();
    if !status.success() {
        let tail: String = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!(
            "{description} failed ({status}); the end of {}:\n{tail}",
            log.display()
        );
    }
    let line = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("{description} printed no RESULT line"))?;
    Ok(Measured {
        result: serde_json::from_str(line)?,
        peak_rss_bytes: peak,
    })
}

/// The Python peers, if they could be installed, with their versions or why not.
pub struct Peers {
    pub python: Option<PathBuf>,
    pub spark: Result<String, String>,
    pub dask: Result<String, String>,
}

fn output_of(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr)
            .lines()
            .last()
            .unwrap_or("failed")
            .to_string())
    }
}

/// Installs PySpark and Dask into `venv` (a virtual environment the bench owns) and
/// Java when it is missing. A peer that cannot be installed is reported, not dropped.
pub fn peers(venv: &Path) -> Peers {
    let python = venv.join("bin/python");
    if !python.exists() {
        println!(
            "installing the peers into {} (PySpark, Dask)",
            venv.display()
        );
        let made = output_of(Command::new("python3").args(["-m", "venv"]).arg(venv));
        if let Err(e) = made {
            let why = format!("python3 -m venv failed: {e}");
            return Peers {
                python: None,
                spark: Err(why.clone()),
                dask: Err(why),
            };
        }
    }
    let installed = output_of(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "pyspark>=3.5,<3.6",
        "dask[distributed,dataframe]>=2024.8",
        "pyarrow",
        "pandas",
    ]));
    if let Err(e) = installed {
        let why = format!("pip install failed: {e}");
        return Peers {
            python: None,
            spark: Err(why.clone()),
            dask: Err(why),
        };
    }
    if output_of(Command::new("java").arg("-version")).is_err() {
        println!("installing Java for PySpark (openjdk-17-jre-headless)");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-q", "openjdk-17-jre-headless"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    let java = output_of(Command::new("sh").args(["-c", "java -version 2>&1 | head -1"]));
    let spark = match java {
        Ok(j) if !j.is_empty() && !j.contains("not found") => output_of(
            Command::new(&python).args(["-c", "import pyspark; print(pyspark.__version__)"]),
        )
        .map(|v| format!("PySpark {v} ({j})")),
        _ => Err("no Java runtime, and installing openjdk-17-jre-headless failed".into()),
    };
    let dask = output_of(Command::new(&python).args([
        "-c",
        "import dask, distributed; print(dask.__version__, distributed.__version__)",
    ]))
    .map(|v| match v.split_once(' ') {
        Some((dask, distributed)) => format!("Dask {dask} (distributed {distributed})"),
        None => format!("Dask {v}"),
    });
    Peers {
        python: Some(python),
        spark,
        dask,
    }
}
