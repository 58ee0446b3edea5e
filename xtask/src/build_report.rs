//! `cargo xtask build-report`: how long a newcomer waits for the README's commands.
//!
//! Clones the committed HEAD into a new directory, gives cargo an empty cache (so the
//! downloads are timed too), and times the README's demo command, `cargo run -- demo`,
//! as a newcomer would run it: a clean target directory, nothing built. With `--tests`
//! it then times the test command in the same clone, as the README orders them; with
//! `--release` it also times the release profile from another fresh clone. cargo's
//! `--timings` report gives the units compiled and the slowest of them. The tables are
//! appended to BENCHMARKS.md, so a slower build shows against the earlier runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;

#[derive(Args)]
pub struct BuildReportArgs {
    /// Also time the test command, `cargo test --workspace`, right after the demo
    /// command in the same clone (about 13 more minutes on 2 cores).
    #[arg(long)]
    tests: bool,
    /// Also time `cargo run --release -- demo` from another fresh clone (about 35
    /// more minutes on 2 cores).
    #[arg(long)]
    release: bool,
    /// Use this machine's cargo cache instead of an empty one: the downloads are
    /// then not timed.
    #[arg(long)]
    keep_registry: bool,
    /// Do not append the tables to BENCHMARKS.md.
    #[arg(long)]
    no_append: bool,
    /// Where the clones and their logs go; emptied first.
    #[arg(long, default_value = "target/build-report")]
    dir: PathBuf,
}

/// One timed command.
struct Timed {
    command: String,
    profile: &'static str,
    seconds: f64,
    units: Vec<Unit>,
}

/// One unit of cargo's `--timings` report: a crate compiled or a build script run.
#[derive(Debug, Clone, PartialEq)]
struct Unit {
    name: String,
    /// "todo" for compiling a crate, "run-custom-build" for running a build script.
    mode: String,
    seconds: f64,
}

pub fn run(args: BuildReportArgs) -> Result<()> {
    let root = git(None, &["rev-parse", "--show-toplevel"])?;
    let root = PathBuf::from(root);
    let commit = git(Some(&root), &["rev-parse", "--short", "HEAD"])?;
    if !git(
        Some(&root),
        &["status", "--porcelain", "--untracked-files=no"],
    )?
    .is_empty()
    {
        println!(
            "note: the working tree has uncommitted changes; the report measures commit {commit} without them"
        );
    }
    let dir = std::path::absolute(&args.dir)?;
    prepare_dir(&dir)?;
    let mut timed = Vec::new();
    let dev = checkout(&root, &dir.join("dev"), args.keep_registry)?;
    timed.push(dev.time(&["run", "--timings", "--", "demo"], "dev")?);
    if args.tests {
        timed.push(dev.time(&["test", "--workspace", "--timings"], "dev, tests")?);
    }
    if args.release {
        let release = checkout(&root, &dir.join("release"), args.keep_registry)?;
        timed.push(release.time(&["run", "--release", "--timings", "--", "demo"], "release")?);
    }
    let markdown = report(&commit, args.keep_registry, &timed);
    println!("{markdown}");
    if !args.no_append {
        let path = root.join("BENCHMARKS.md");
        let mut text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.push_str(&format!("\n{markdown}"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        println!("tables appended to {}", path.display());
    }
    Ok(())
}

/// Marks a directory as made by build-report, which may then empty it on its next run.
const MARKER: &str = ".drove-build-report";

/// Makes `dir` empty: a directory that an earlier report made is emptied; any other
/// that is not empty is refused, since it may hold the user's files.
fn prepare_dir(dir: &Path) -> Result<()> {
    if dir.join(MARKER).exists() {
        std::fs::remove_dir_all(dir)
            .with_context(|| format!("emptying {} (remove it by hand)", dir.display()))?;
    } else if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        bail!(
            "--dir {} is not empty and was not made by build-report; name a new directory, or remove this one yourself",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "")
        .with_context(|| format!("writing into {}", dir.display()))?;
    Ok(())
}

/// A fresh clone and the cargo cache its commands use.
struct Checkout {
    dir: PathBuf,
    cargo_home: Option<PathBuf>,
    logs: PathBuf,
}

fn checkout(root: &Path, dir: &Path, keep_registry: bool) -> Result<Checkout> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let checkout = dir.join("drove");
    git(
        Some(root),
        &[
            "clone",
            "--quiet",
            "--no-hardlinks",
            ".",
            checkout
                .to_str()
                .context("a directory name that is not UTF-8")?,
        ],
    )?;
    let cargo_home = (!keep_registry).then(|| dir.join("cargo-home"));
    if let Some(home) = &cargo_home {
        std::fs::create_dir_all(home)?;
    }
    Ok(Checkout {
        dir: checkout,
        cargo_home,
        logs: dir.to_path_buf(),
    })
}

impl Checkout {
    /// Runs `cargo ARGS` in the clone and times it; its output goes to a log file.
    fn time(&self, args: &[&str], profile: &'static str) -> Result<Timed> {
        let command = format!("cargo {}", args.join(" ").replace(" --timings", ""));
        let log = self.logs.join(format!("{}.log", args[0]));
        println!(
            "timing `{command}` in {} (log: {})",
            self.dir.display(),
            log.display()
        );
        let out = std::fs::File::create(&log)?;
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or("cargo".into()));
        cargo
            .args(args)
            .current_dir(&self.dir)
            // The clone builds into its own, empty target directory.
            .env_remove("CARGO_TARGET_DIR")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        if let Some(home) = &self.cargo_home {
            cargo.env("CARGO_HOME", home);
        }
        let start = Instant::now();
        let status = cargo.status().context("starting cargo")?;
        let seconds = start.elapsed().as_secs_f64();
        if !status.success() {
            bail!("`{command}` failed ({status}); see {}", log.display());
        }
        let html = self.dir.join("target/cargo-timings/cargo-timing.html");
        let text = std::fs::read_to_string(&html)
            .with_context(|| format!("reading cargo's timings report {}", html.display()))?;
        let units = parse_units(&text)
            .with_context(|| format!("reading the units of {}", html.display()))?;
        println!("  {} in {}", command, minutes(seconds));
        Ok(Timed {
            command,
            profile,
            seconds,
            units,
        })
    }
}

/// The units of a `cargo --timings` HTML report, from the JSON it embeds.
fn parse_units(html: &str) -> Result<Vec<Unit>> {
    const MARK: &str = "const UNIT_DATA = ";
    let start = html
        .find(MARK)
        .context("no UNIT_DATA in the report: has cargo changed its format?")?;
    let json = &html[start + MARK.len()..];
    let data: Value = serde_json::Deserializer::from_str(json)
        .into_iter()
        .next()
        .context("UNIT_DATA is empty")??;
    let units = data.as_array().context("UNIT_DATA is not a list")?;
    units
        .iter()
        .map(|u| {
            Ok(Unit {
                name: u["name"].as_str().context("a unit without a name")?.into(),
                mode: u["mode"].as_str().unwrap_or("todo").into(),
                seconds: u["duration"]
                    .as_f64()
                    .context("a unit without a duration")?,
            })
        })
        .collect()
}

fn report(commit: &str, keep_registry: bool, timed: &[Timed]) -> String {
    let mut md = format!(
        "## Build report: {} — {}; commit {commit}; {}; {}\n\n",
        crate::utc_now(),
        crate::machine(),
        tool_version("rustc"),
        if keep_registry {
            "this machine's cargo cache (downloads not timed)"
        } else {
            "empty cargo cache (downloads timed)"
        },
    );
    md.push_str(
        "Each command ran in a fresh clone with an empty target directory, as the README's \
         set-up commands would on a new machine; the test command ran right after the demo \
         command, in the same clone.\n\n",
    );
    md.push_str("| command | profile | wall time | units compiled (crates, tests, build scripts) | build scripts run | CPU time in them |\n|---|---|---|---|---|---|\n");
    for t in timed {
        let compiled = t.units.iter().filter(|u| u.mode == "todo").count();
        let scripts = t.units.len() - compiled;
        let cpu: f64 = t.units.iter().map(|u| u.seconds).sum();
        md.push_str(&format!(
            "| `{}` | {} | {} | {compiled} | {scripts} | {cpu:.0} s |\n",
            t.command,
            t.profile,
            minutes(t.seconds)
        ));
    }
    for t in timed {
        md.push_str(&format!(
            "\nThe ten slowest units of `{}`, seconds:\n\n| unit | s |\n|---|---|\n",
            t.command
        ));
        for u in slowest(&t.units, 10) {
            let what = if u.mode == "todo" {
                u.name.clone()
            } else {
                format!("{} (build script)", u.name)
            };
            md.push_str(&format!("| {what} | {:.1} |\n", u.seconds));
        }
    }
    md
}

fn slowest(units: &[Unit], n: usize) -> Vec<Unit> {
    let mut units = units.to_vec();
    units.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
    units.truncate(n);
    units
}

fn minutes(seconds: f64) -> String {
    let s = seconds.round() as u64;
    format!("{} min {:02} s", s / 60, s % 60)
}

fn tool_version(tool: &str) -> String {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| format!("{tool} not found"))
}

fn git(dir: Option<&Path>, args: &[&str]) -> Result<String> {
    let mut git = Command::new("git");
    if let Some(dir) = dir {
        git.current_dir(dir);
    }
    let out = git
        .args(args)
        .output()
        .context("running git (build-report clones the repository with it)")?;
    if !out.status.success() {
        bail!(
            "`git {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_from_the_json_in_cargos_report() {
        let html = r#"<script>
const UNIT_DATA = [{"i":0,"name":"syn","version":"2.0.1","mode":"todo","target":"","start":0.5,"duration":14.25,"rmeta_time":9.0,"unlocked_units":[1],"unlocked_rmeta_units":[]},
{"i":1,"name":"zstd-sys","version":"2.1.3","mode":"run-custom-build","target":" build script (run)","start":3.0,"duration":11.0,"unlocked_units":[],"unlocked_rmeta_units":[]}];
const CONCURRENCY_DATA = [];
</script>"#;
        let units = parse_units(html).unwrap();
        assert_eq!(
            units,
            vec![
                Unit {
                    name: "syn".into(),
                    mode: "todo".into(),
                    seconds: 14.25
                },
                Unit {
                    name: "zstd-sys".into(),
                    mode: "run-custom-build".into(),
                    seconds: 11.0
                },
            ]
        );
        let md = report(
            "abc1234",
            false,
            &[Timed {
                command: "cargo run -- demo".into(),
                profile: "dev",
                seconds: 683.4,
                units,
            }],
        );
        assert!(
            md.contains("| `cargo run -- demo` | dev | 11 min 23 s | 1 | 1 | 25 s |"),
            "{md}"
        );
        assert!(md.contains("| zstd-sys (build script) | 11.0 |"), "{md}");
    }

    #[test]
    fn a_directory_the_report_did_not_make_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("notes.txt"), "keep me").unwrap();
        let e = prepare_dir(&theirs).unwrap_err();
        assert!(
            e.to_string().contains("was not made by build-report"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_to_string(theirs.join("notes.txt")).unwrap(),
            "keep me"
        );

        let ours = tmp.path().join("ours");
        prepare_dir(&ours).unwrap();
        std::fs::write(ours.join("run.log"), "old").unwrap();
        prepare_dir(&ours).unwrap();
        assert!(
            !ours.join("run.log").exists(),
            "an earlier report's files are emptied"
        );
        assert!(ours.join(MARKER).exists());
    }

    #[test]
    fn a_report_without_unit_data_names_the_problem() {
        let e = parse_units("<html>no data</html>").unwrap_err();
        assert!(e.to_string().contains("no UNIT_DATA"), "{e}");
        let e = parse_units("const UNIT_DATA = {\"name\": 1};").unwrap_err();
        assert!(e.to_string().contains("not a list"), "{e}");
    }
}
