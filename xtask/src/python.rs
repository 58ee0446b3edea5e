//! drove from Python, measured: the `python` workload, and the `drove-python` engine
//! that the wordcount and tasks workloads also run. The engine is
//! `bench/python/drove_bench.py` in a virtual environment of the bench's own
//! (`target/bench-drove-venv`) with the optimized wheel built from this checkout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::Result;
use datafusion::arrow::array::Int64Array;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use drove_exec::datagen::Benchmark;
use serde_json::{Value, json};

use crate::measure::output_of;
use crate::{Outcome, Plan, bench_data, gib, median, same_rows, spread, times};

/// The wheel as installed for the bench.
pub struct Wheel {
    /// The environment's Python, which has the wheel.
    pub python: PathBuf,
    pub bytes: u64,
}

/// Builds the wheel in cargo's `profile` and installs it into a new environment.
pub fn install(profile: &str) -> Result<Wheel, String> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .map_err(|e| e.to_string())?;
    let target = repo.join("target");
    let wheels = target.join("bench-wheels");
    println!(
        "building drove's wheel ({profile}) into {}",
        wheels.display()
    );
    let built = Command::new(repo.join("python/build-wheel.sh"))
        .arg(profile)
        .arg(&wheels)
        .status()
        .map_err(|e| format!("python/build-wheel.sh: {e}"))?;
    if !built.success() {
        return Err(format!("python/build-wheel.sh {profile} failed ({built})"));
    }
    let wheel = std::fs::read_dir(&wheels)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or("maturin made no wheel")?;
    let bytes = std::fs::metadata(&wheel).map_err(|e| e.to_string())?.len();
    let venv = target.join("bench-drove-venv");
    output_of(
        Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
    )?;
    let python = venv.join("bin/python");
    output_of(
        Command::new(&python)
            .args(["-m", "pip", "install", "-q"])
            .arg(&wheel),
    )?;
    Ok(Wheel { python, bytes })
}

/// The median wall time of `python -c code` over 11 runs, in ms.
fn startup_ms(python: &Path, code: &str) -> Result<f64, String> {
    let mut ms = Vec::new();
    for _ in 0..11 {
        let started = Instant::now();
        output_of(Command::new(python).args(["-c", code]))?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(median(&ms))
}

/// The command that runs the Python engine with `spec`.
pub fn command(wheel: &Wheel, spec: &Value) -> Command {
    let mut c = Command::new(&wheel.python);
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/python/drove_bench.py"))
        .arg(spec.to_string());
    c
}

/// The `python` workload: the wheel's size and import time; TPC-H from Python against
/// drove's Rust client (what the CLI runs), taking turns on the same cluster shape;
/// and a vectorised Python UDF over `rows` rows against PySpark's pandas UDF.
pub fn workload(plan: &Plan, rows: u64) -> Result<(String, Value, Vec<String>)> {
    let mut problems = Vec::new();
    let mut md = String::from("### python — drove's wheel\n\n");
    let wheel = match plan.wheel() {
        Ok(w) => w,
        Err(why) => {
            md.push_str(&format!("missing: {why}\n"));
            return Ok((md, json!({ "workload": "python" }), vec![why.clone()]));
        }
    };
    // Timed here only: the other workloads want the wheel's Python, not its start-up.
    let import_ms = startup_ms(&wheel.python, "import drove").map_err(anyhow::Error::msg)?;
    let bare_ms = startup_ms(&wheel.python, "pass").map_err(anyhow::Error::msg)?;
    md.push_str(&format!(
        "The wheel ({}) is {:.1} MB; `import drove` takes {:.0} ms ({import_ms:.0} ms for `python -c \"import drove\"`, {bare_ms:.0} for `python -c pass`; medians of 11).\n\n",
        if plan.args.quick { "dev profile, --quick" } else { "optimized" },
        wheel.bytes as f64 / 1e6,
        import_ms - bare_ms,
    ));
    let (tpch_md, tpch_json) = tpch(plan, &mut problems)?;
    md.push_str(&tpch_md);
    let (udf_md, udf_json) = udf(plan, rows, &mut problems)?;
    md.push_str(&udf_md);
    Ok((
        md,
        json!({
            "workload": "python", "wheel_bytes": wheel.bytes,
            "import_ms": import_ms - bare_ms,
            "tpch": tpch_json, "udf": udf_json,
        }),
        problems,
    ))
}

fn tpch(plan: &Plan, problems: &mut Vec<String>) -> Result<(String, Value)> {
    let benchmark = Benchmark::Tpch;
    let data = bench_data(&plan.args.data, benchmark, plan.scale)?;
    let queries: Vec<usize> = if plan.args.queries.is_empty() {
        (1..=benchmark.queries().len()).collect()
    } else {
        plan.args.queries.clone()
    };
    let query_dir = plan.out("python-tpch-queries");
    std::fs::create_dir_all(&query_dir)?;
    for &q in &queries {
        std::fs::write(query_dir.join(format!("q{q}.sql")), benchmark.query(q)?)?;
    }
    let engines = ["drove", "drove-python"];
    let mut specs = Vec::new();
    for engine in engines {
        let output = plan.out(&format!("python-tpch-{engine}"));
        let _ = std::fs::remove_dir_all(&output);
        std::fs::create_dir_all(&output)?;
        specs.push((
            engine,
            json!({
                "data": data, "queries": queries, "query_dir": query_dir,
                "tables": benchmark.tables(), "output": output,
            }),
        ));
    }
    let outcomes = plan.run_in_turns("tpch", specs);
    let mut md = format!(
        "#### TPC-H scale {} from Python and from Rust — {} iterations taking turns, median ms (min–max)\n\nBoth start an embedded cluster of {} workers × {} slot(s): drove's Rust client (the CLI's) in `xtask`, and `drove.local` in the wheel, whose results are read into pyarrow.\n\n| query | Rust client | Python | Python / Rust |\n|---|---|---|---|\n",
        plan.scale, plan.iterations, plan.args.workers, plan.args.slots
    );
    let results: Vec<Option<&Value>> = outcomes
        .iter()
        .zip(engines)
        .map(|(o, engine)| match o {
            Outcome::Ran(m) => Some(&m.result),
            Outcome::Missing(why) | Outcome::Failed(why) => {
                problems.push(format!("python tpch: {engine}: {}", crate::first_line(why)));
                None
            }
        })
        .collect();
    let (Some(rust), Some(python)) = (results[0], results[1]) else {
        md.push_str("| all | did not run | | |\n\n");
        return Ok((md, json!(null)));
    };
    let (mut total_rust, mut total_python) = (0.0, 0.0);
    let mut rows = Vec::new();
    for &q in &queries {
        let name = format!("q{q}");
        let (r, p) = (times(&rust["times"][&name]), times(&python["times"][&name]));
        if r.is_empty() || p.is_empty() {
            problems.push(format!("python tpch {name}: an engine failed it"));
            md.push_str(&format!("| Q{q} | failed | failed | |\n"));
            continue;
        }
        let diff = same_rows(
            &plan.out("python-tpch-drove").join(format!("{name}.json")),
            &plan
                .out("python-tpch-drove-python")
                .join(format!("{name}.json")),
            drove_testkit::is_ordered(benchmark.query(q)?),
        )?;
        if let Some(diff) = diff {
            problems.push(format!(
                "python tpch {name}: Python's answer differs: {diff}"
            ));
        }
        let (mr, mp) = (median(&r), median(&p));
        total_rust += mr;
        total_python += mp;
        md.push_str(&format!(
            "| Q{q} | {} | {} | {:.2} |\n",
            spread(&r, 0),
            spread(&p, 0),
            mp / mr
        ));
        rows.push(json!({ "query": q, "rust_ms": r, "python_ms": p }));
    }
    md.push_str(&format!(
        "| total | {total_rust:.0} | {total_python:.0} | {:.3} |\n\n",
        total_python / total_rust
    ));
    Ok((
        md,
        json!({ "queries": rows, "ratio": total_python / total_rust }),
    ))
}

fn udf(plan: &Plan, rows: u64, problems: &mut Vec<String>) -> Result<(String, Value)> {
    let input = numbers_dir(&plan.args.data, rows)?;
    // Every engine sums 3v + 1 over v = 0..rows.
    let expected = 3 * (rows as i128) * (rows as i128 - 1) / 2 + rows as i128;
    let engines = [
        ("drove-python", "drove"),
        ("pyspark", "PySpark (pandas_udf)"),
    ];
    let mut md = format!(
        "#### A vectorised Python UDF over {rows} rows — `sum(f(v))`, f(v) = 3v + 1 in pyarrow (drove) or pandas (PySpark), {} iterations\n\n| engine | seconds, median (min–max) | million rows/s | time / drove's | peak memory |\n|---|---|---|---|---|\n",
        plan.iterations
    );
    let mut json_rows = Vec::new();
    // drove's median, the base of the ratios.
    let mut drove = None;
    for (engine, label) in engines {
        let output = plan.out(&format!("udf-{engine}.txt"));
        let _ = std::fs::remove_file(&output);
        match plan.run(engine, "udf", json!({ "input": input, "output": output })) {
            Outcome::Ran(m) => {
                let got = std::fs::read_to_string(&output).unwrap_or_default();
                if got.trim() != expected.to_string() {
                    let why = format!(
                        "{engine}'s UDF sum is '{}', expected {expected}",
                        got.trim()
                    );
                    md.push_str(&format!("| {label} | FAILED: {why} | | | |\n"));
                    problems.push(why);
                    continue;
                }
                let t = times(&m.result["times"]);
                let med = median(&t);
                if engine == "drove-python" {
                    drove = Some(med);
                }
                md.push_str(&format!(
                    "| {label} | {} | {:.1} | {} | {} |\n",
                    spread(&t, 2),
                    rows as f64 / med / 1e6,
                    drove.map_or("—".into(), |d| format!("{:.2}", med / d)),
                    gib(m.peak_rss_bytes)
                ));
                json_rows.push(
                    json!({ "engine": label, "seconds": t, "peak_rss_bytes": m.peak_rss_bytes }),
                );
            }
            Outcome::Missing(why) => md.push_str(&format!("| {label} | missing: {why} | | | |\n")),
            Outcome::Failed(why) => {
                md.push_str(&format!(
                    "| {label} | FAILED: {} | | | |\n",
                    crate::first_line(&why)
                ));
                problems.push(format!("udf: {engine} failed: {}", crate::first_line(&why)));
            }
        }
    }
    md.push('\n');
    Ok((md, json!({ "rows": rows, "engines": json_rows })))
}

/// Files of one Int64 column `v` holding 0..rows, in `data`, written the first time.
fn numbers_dir(data: &Path, rows: u64) -> Result<PathBuf> {
    let dir = data.join(format!("numbers-{rows}"));
    if dir.join("_COMPLETE").exists() {
        return Ok(dir);
    }
    println!("writing {rows} numbers into {}", dir.display());
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    let files = 10u64.min(rows.max(1));
    let per_file = rows.div_ceil(files);
    const BATCH: u64 = 1 << 20;
    for f in 0..files {
        let (start, end) = (f * per_file, ((f + 1) * per_file).min(rows));
        let file = std::fs::File::create(dir.join(format!("part-{f:02}.parquet")))?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), None)?;
        let mut at = start;
        while at < end {
            let upto = (at + BATCH).min(end);
            let values = Int64Array::from_iter_values(at as i64..upto as i64);
            writer.write(&RecordBatch::try_new(
                schema.clone(),
                vec![std::sync::Arc::new(values)],
            )?)?;
            at = upto;
        }
        writer.close()?;
    }
    std::fs::write(dir.join("_COMPLETE"), "")?;
    Ok(dir)
}
