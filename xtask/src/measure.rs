//! Running one engine in its own process tree: the child prints `RESULT {json}`, and
//! the parent samples the tree's resident memory to report its peak.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
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

/// The line an engine prints on stdout when it hands its turn back.
pub const TURN_DONE: &str = "TURN DONE";

/// Runs `command` to completion (at most `limit`), sampling its memory, and returns
/// its `RESULT`. Its stderr goes to `log`.
pub fn run(command: Command, log: &Path, limit: Duration) -> Result<Measured> {
    run_in_turns(vec![(command, log.to_path_buf())], limit)
        .pop()
        .expect("one result per command")
}

/// Runs the commands at once, each to completion (all within `limit`), letting one at
/// a time go on: each waits for a line on its stdin before each step, and prints
/// [`TURN_DONE`] when the step is done, which hands the turn to the next one still
/// running. A command that never asks keeps its turn until it ends. Returns each one's
/// `RESULT` and peak memory, in order; the stderr of each goes to its log.
pub fn run_in_turns(commands: Vec<(Command, PathBuf)>, limit: Duration) -> Vec<Result<Measured>> {
    // Bounded: a reader waits (and so does its engine's stdout) while the lines pile up.
    let (events, lines) = std::sync::mpsc::sync_channel::<(usize, Option<String>)>(1024);
    let mut children: Vec<(Result<Child>, String, PathBuf)> = (commands.into_iter())
        .enumerate()
        .map(|(i, (command, log))| {
            let description = format!("{command:?}");
            let child = spawn(command, &log, &description).map(|mut child| {
                let stdout = child.stdout.take().expect("piped stdout");
                let events = events.clone();
                // Lines as they come, then the end of the output.
                std::thread::spawn(move || {
                    let mut stdout = BufReader::new(stdout);
                    let mut line = Vec::new();
                    while matches!(stdout.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        if events.send((i, Some(text))).is_err() {
                            return;
                        }
                        line.clear();
                    }
                    let _ = events.send((i, None));
                });
                Child {
                    stdin: child.stdin.take(),
                    process: child,
                    output: String::new(),
                    peak: 0,
                    ended: false,
                    exit: None,
                }
            });
            (child, description, log)
        })
        .collect();
    drop(events);
    let started = Instant::now();
    let mut sampled = started;
    let mut turn = pass_turn(&mut children, 0);
    while let Some(holder) = turn
        && started.elapsed() <= limit
    {
        let mut handed_back = false;
        if let Ok((i, line)) = lines.recv_timeout(SAMPLE_EVERY)
            && let Ok(child) = &mut children[i].0
        {
            let done = child.take(line);
            handed_back = i == holder && done;
        }
        // Sampled every 50 ms at most: reading /proc costs the engine whose turn it is.
        if sampled.elapsed() >= SAMPLE_EVERY {
            sampled = Instant::now();
            for (child, _, _) in &mut children {
                if let Ok(c) = child
                    && !c.done()
                {
                    c.peak = c.peak.max(tree_rss(c.process.id()));
                    // Exited is done even if a descendant still holds its stdout (a
                    // peer's worker processes may outlive it a while).
                    c.exit = c.process.try_wait().ok().flatten();
                }
            }
        }
        if handed_back || matches!(&children[holder].0, Ok(c) if c.done()) {
            turn = pass_turn(&mut children, holder + 1);
        }
    }
    // What the exited ones printed last (their RESULT) may still be on its way; a
    // descendant holding their stdout must not keep this waiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    while children
        .iter()
        .any(|(c, _, _)| matches!(c, Ok(c) if !c.ended))
        && let Some(left) = deadline.checked_duration_since(Instant::now())
        && let Ok((i, line)) = lines.recv_timeout(left)
    {
        if let Ok(child) = &mut children[i].0 {
            child.take(line);
        }
    }
    children
        .into_iter()
        .map(|(child, description, log)| finish(child?, &description, &log, limit))
        .collect()
}

/// Starts `command` with piped stdin and stdout and its stderr in `log`.
fn spawn(mut command: Command, log: &Path, description: &str) -> Result<std::process::Child> {
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {description}"))
}

/// How often [`run_in_turns`] samples memory and looks for exited processes.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A running engine of [`run_in_turns`].
struct Child {
    process: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    /// Its stdout so far, but for the turns it handed back.
    output: String,
    peak: u64,
    /// Whether its stdout has ended.
    ended: bool,
    exit: Option<std::process::ExitStatus>,
}

impl Child {
    fn done(&self) -> bool {
        self.ended || self.exit.is_some()
    }

    /// Takes a line of its stdout (`None`: the end of it); whether that ends its turn.
    fn take(&mut self, line: Option<String>) -> bool {
        match line {
            Some(line) if line == TURN_DONE => true,
            Some(line) => {
                self.output.push_str(&line);
                self.output.push('\n');
                false
            }
            None => {
                self.ended = true;
                true
            }
        }
    }
}

/// Gives the turn to the first child from `from` on (in a circle) that is not done,
/// and returns which one; `None` when all are done. One that has stopped reading its
/// stdin is left to go on: its output's end ends its turn.
fn pass_turn(children: &mut [(Result<Child>, String, PathBuf)], from: usize) -> Option<usize> {
    let n = children.len();
    let k = (0..n)
        .map(|k| (from + k) % n)
        .find(|&k| matches!(&children[k].0, Ok(c) if !c.done()))?;
    if let Ok(c) = &mut children[k].0
        && let Some(stdin) = &mut c.stdin
        && (writeln!(stdin).is_err() || stdin.flush().is_err())
    {
        c.stdin = None;
    }
    Some(k)
}

/// Waits for `child` to exit (killing it if it ran past `limit`) and reads its
/// `RESULT`.
fn finish(mut child: Child, description: &str, log: &Path, limit: Duration) -> Result<Measured> {
    // Its stdin closed: an engine still waiting for a turn goes on alone.
    drop(child.stdin.take());
    let status = if let Some(status) = child.exit {
        status
    } else if child.ended {
        child.process.wait()?
    } else {
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &child.process.id().to_string()])
            .status();
        let _ = child.process.kill();
        let _ = child.process.wait();
        bail!("{description} ran past {limit:?}; see {}", log.display());
    };
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
    let line = child
        .output
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("{description} printed no RESULT line"))?;
    Ok(Measured {
        result: serde_json::from_str(line)?,
        peak_rss_bytes: child.peak,
    })
}

/// The Python peers, if they could be installed, with their versions or why not.
pub struct Peers {
    pub python: Option<PathBuf>,
    pub spark: Result<String, String>,
    pub dask: Result<String, String>,
}

pub fn output_of(command: &mut Command) -> Result<String, String> {
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
