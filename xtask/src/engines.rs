//! The Rust engines, each run in a child process of its own (`xtask engine SPEC`) so
//! that its peak memory can be measured: drove on an embedded cluster, single-process
//! DataFusion, and single-threaded reference code.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::prelude::{SessionConfig, SessionContext};
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use drove_exec::datagen::Benchmark;
use drove_exec::tables;
use drove_testkit::run_statements;
use serde_json::{Value, json};

use crate::processes::ProcessCluster;

fn field<'a>(spec: &'a Value, name: &str) -> Result<&'a Value> {
    spec.get(name)
        .with_context(|| format!("the engine spec has no '{name}'"))
}

fn path(spec: &Value, name: &str) -> Result<PathBuf> {
    Ok(PathBuf::from(
        field(spec, name)?.as_str().context("not a string")?,
    ))
}

pub fn number(spec: &Value, name: &str) -> Result<u64> {
    field(spec, name)?.as_u64().context("not a number")
}

/// Runs the engine the spec names and returns its `RESULT`.
pub async fn run(mut spec: Value) -> Result<Value> {
    // With `durable_in`: a coordinator data directory of this run's own, made there
    // and removed with the run.
    let durable = match spec.get("durable_in").and_then(Value::as_str) {
        Some(parent) => {
            std::fs::create_dir_all(parent)?;
            let dir = tempfile::Builder::new()
                .prefix("durable-coordinator-")
                .tempdir_in(parent)?;
            spec["durable_dir"] = json!(dir.path());
            Some(dir)
        }
        None => None,
    };
    let result = run_engine(spec).await;
    drop(durable);
    result
}

async fn run_engine(spec: Value) -> Result<Value> {
    let engine = field(&spec, "engine")?.as_str().unwrap_or_default();
    let workload = field(&spec, "workload")?.as_str().unwrap_or_default();
    match (workload, engine) {
        ("tpch", "drove" | "datafusion") => {
            queries(&spec, Benchmark::Tpch, engine == "drove").await
        }
        ("tpcds", "drove" | "datafusion") => {
            queries(&spec, Benchmark::Tpcds, engine == "drove").await
        }
        ("wordcount", "drove") => mapreduce(&spec, "wordcount").await,
        ("sort", "drove") => match spec.get("worker_memory").and_then(Value::as_u64) {
            Some(budget) => sort_on_processes(&spec, budget).await,
            None => mapreduce(&spec, "sort").await,
        },
        ("wordcount", "reference") => reference_wordcount(&spec),
        ("sort", "reference") => reference_sort(&spec),
        ("tasks", "drove") => tasks(&spec).await,
        ("shuffle", "drove" | "datafusion") => shuffle(&spec, engine == "drove").await,
        ("recovery", "drove") => crate::recovery::run(&spec).await,
        ("pagerank", "drove") => crate::iterative::pagerank(&spec).await,
        _ => bail!("no engine '{engine}' for workload '{workload}'"),
    }
}

/// An embedded drove cluster of the spec's workers and slots, and a session on it.
async fn drove_session(spec: &Value, target_partitions: Option<usize>) -> Result<Session> {
    let mut config = LocalClusterConfig {
        workers: number(spec, "workers")? as usize,
        slots: number(spec, "slots")? as u32,
        ..Default::default()
    };
    config.coordinator.target_partitions = target_partitions;
    // The benchmarks run jobs of more tasks than a cluster allows by default (the
    // tasks workload has one stage of 10,000 and more).
    config.coordinator.job_limits = drove_client::JobLimits {
        stage_partitions_max: 1_000_000,
        job_tasks_max: 10_000_000,
    };
    if let Some(dir) = spec.get("durable_dir").and_then(Value::as_str) {
        config.data_dir = Some(dir.into());
    }
    if let Some(n) = spec.get("coordinators").and_then(Value::as_u64) {
        config.coordinators = n as usize;
    }
    if spec.get("coalesce").and_then(Value::as_bool) == Some(false) {
        config.coordinator.coalesce = None;
    }
    if spec.get("tls").and_then(Value::as_bool) != Some(true) {
        let cluster = LocalCluster::start(config).await?;
        return Ok(Session::with_cluster(cluster).await?);
    }
    // As a user of a secured cluster: a client certificate, and a tenant's token made
    // with the CA's admin token.
    let (node, client, admin) = tls_identities()?;
    config.coordinator.tls = Some(node);
    let cluster = LocalCluster::start(config).await?;
    let as_admin = drove_client::Credentials {
        tls: Some(client.clone()),
        token: Some(admin),
    };
    let admin = Session::connect_with(&cluster.coordinator_addrs(), &as_admin).await?;
    let token = admin.create_token("bench", "submit").await?.token;
    let as_user = drove_client::Credentials {
        tls: Some(client),
        token: Some(token),
    };
    Ok(Session::with_cluster_as(cluster, &as_user).await?)
}

/// A node's and a client's identities of a cluster CA made for this run, and its
/// admin token: the files are read into memory, and removed.
fn tls_identities() -> Result<(
    std::sync::Arc<drove_client::ClusterTls>,
    std::sync::Arc<drove_client::ClusterTls>,
    String,
)> {
    use drove_exec::tls;
    let dir = tempfile::tempdir()?;
    let fail = |e: String| anyhow::anyhow!(e);
    let ca = dir.path().join("ca");
    tls::init(&ca).map_err(fail)?;
    let (node, client) = (dir.path().join("node"), dir.path().join("client"));
    tls::issue(&ca, "bench-node", tls::Role::Node, &[], 1, &node).map_err(fail)?;
    tls::issue(&ca, "bench-client", tls::Role::Client, &[], 1, &client).map_err(fail)?;
    let admin = std::fs::read_to_string(ca.join(drove_exec::token::ADMIN_TOKEN))?;
    Ok((
        drove_client::ClusterTls::load(&node).map_err(fail)?,
        drove_client::ClusterTls::load(&client).map_err(fail)?,
        admin.trim().to_string(),
    ))
}

/// A result's rows as JSON arrays of display strings (null for null), the form every
/// engine writes so xtask can compare them.
pub fn rows_json(batches: &[RecordBatch]) -> Result<Value> {
    let options = FormatOptions::default();
    let mut rows = Vec::new();
    for b in batches {
        let formatters = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for i in 0..b.num_rows() {
            let row: Vec<Value> = b
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(c, f)| {
                    if c.is_null(i) {
                        Value::Null
                    } else {
                        Value::String(f.value(i).to_string())
                    }
                })
                .collect();
            rows.push(Value::Array(row));
        }
    }
    Ok(Value::Array(rows))
}

/// A session on an embedded drove cluster with `benchmark`'s tables in `data`, if
/// `drove`.
async fn bench_session(
    spec: &Value,
    drove: bool,
    data: &Path,
    benchmark: Benchmark,
) -> Result<Option<Session>> {
    if !drove {
        return Ok(None);
    }
    let session = drove_session(spec, None).await?;
    session.register_benchmark(data, benchmark).await?;
    Ok(Some(session))
}

/// A single-process DataFusion context of `partitions`, with `benchmark`'s tables in
/// `data` if `register`.
pub async fn bench_context(
    data: &Path,
    benchmark: Benchmark,
    partitions: usize,
    register: bool,
) -> Result<SessionContext> {
    let ctx =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    if register {
        for t in &tables::generated_tables(data, benchmark)? {
            tables::register(&ctx, t).await?;
        }
    }
    Ok(ctx)
}

/// The spec's queries of `benchmark`, each run `iterations` times. Query n's last answer
/// goes to `OUTPUT/qN.json`; a query that fails is reported under `errors` and the run
/// goes on with the next.
async fn queries(spec: &Value, benchmark: Benchmark, drove: bool) -> Result<Value> {
    let data = path(spec, "data")?;
    let out = path(spec, "output")?;
    std::fs::create_dir_all(&out)?;
    let iterations = number(spec, "iterations")?;
    let in_turns = spec["in_turns"].as_bool() == Some(true);
    // Everything an engine does, not only what it times, happens in its turns: its
    // setup or its writing would otherwise slow the other engine's timed runs.
    let turn = || in_turns.then(Turn::wait).transpose();
    let partitions = (number(spec, "workers")? * number(spec, "slots")?) as usize;
    let setup = turn()?;
    let session = bench_session(spec, drove, &data, benchmark).await?;
    let ctx = bench_context(&data, benchmark, partitions, !drove).await?;
    drop(setup);
    let (mut times, mut errors) = (serde_json::Map::new(), serde_json::Map::new());
    'queries: for q in field(spec, "queries")?.as_array().context("queries")? {
        let q = q.as_u64().context("a query number")? as usize;
        let sql = benchmark.query(q)?;
        let mut ms = Vec::new();
        for i in 0..iterations {
            let _turn = turn()?;
            let started = Instant::now();
            let answer = match &session {
                Some(s) => s
                    .run_sql(sql)
                    .await
                    .map(|r| r.batches)
                    .map_err(|e| e.to_string()),
                None => run_statements(&ctx, sql).await.map_err(|e| e.to_string()),
            };
            let batches = match answer {
                Ok(batches) => batches,
                Err(e) => {
                    errors.insert(format!("q{q}"), json!(e));
                    continue 'queries;
                }
            };
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
            if i + 1 == iterations {
                std::fs::write(
                    out.join(format!("q{q}.json")),
                    serde_json::to_string(&rows_json(&batches)?)?,
                )?;
            }
        }
        times.insert(format!("q{q}"), json!(ms));
    }
    let _shutdown = turn()?;
    if let Some(s) = session {
        s.shutdown().await;
    }
    Ok(json!({ "times": times, "errors": errors }))
}

/// A turn to take one step (setting up, one timed iteration, shutting down), with
/// `in_turns` in the spec: the engines of a workload run at once and take turns (see
/// [`crate::measure::run_in_turns`]), so that a slow spell of a shared machine falls on
/// both sides of a comparison alike. The turn is waited for on stdin (a line, or its
/// end, which frees the engine to go on alone) and handed back on stdout when dropped.
struct Turn;

impl Turn {
    fn wait() -> Result<Self> {
        let mut line = String::new();
        tokio::task::block_in_place(|| std::io::stdin().read_line(&mut line))
            .context("waiting for a turn on stdin")?;
        Ok(Self)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", crate::measure::TURN_DONE);
        let _ = out.flush();
    }
}

/// The shuffle workload's queries over lineitem, by name. Each has an all-to-all
/// exchange at the session's partitions (every map task writes a block for every reduce
/// partition). The first moves about as many rows at any width; in the second, the
/// narrower a partial aggregation's input, the less it reduces, so its second exchange
/// moves more rows the wider it is.
pub const SHUFFLE_QUERIES: [(&str, &str); 2] = [
    (
        "group-by",
        "SELECT count(*) AS orders, sum(q) AS quantity FROM (SELECT l_orderkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey) a",
    ),
    (
        "two-level group-by",
        "SELECT count(*) AS suppliers, sum(s) AS quantity FROM (SELECT l_suppkey, sum(q) AS s FROM (SELECT l_orderkey, l_suppkey, sum(l_quantity) AS q FROM lineitem GROUP BY l_orderkey, l_suppkey) a GROUP BY l_suppkey) b",
    ),
];

/// Each of [`SHUFFLE_QUERIES`] at each of the spec's partition counts (both sides of
/// every exchange), with drove's Flight calls per run; query i's answer at width w goes
/// to `OUTPUT/qI-pW.json`.
async fn shuffle(spec: &Value, drove: bool) -> Result<Value> {
    let data = path(spec, "data")?;
    let out = path(spec, "output")?;
    std::fs::create_dir_all(&out)?;
    let session = bench_session(spec, drove, &data, Benchmark::Tpch).await?;
    let mut runs = Vec::new();
    for (i, (_, query)) in SHUFFLE_QUERIES.iter().enumerate() {
        for width in field(spec, "partitions")?
            .as_array()
            .context("partitions")?
        {
            let width = width.as_u64().context("a partition count")? as usize;
            let ctx = bench_context(&data, Benchmark::Tpch, width, !drove).await?;
            let (mut ms, mut calls, mut last) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..number(spec, "iterations")? {
                let started = Instant::now();
                last = match &session {
                    Some(s) => {
                        let sql = format!(
                            "SET datafusion.execution.target_partitions = {width}; {query}"
                        );
                        let result = s.run_sql(&sql).await?;
                        let counted = result
                            .summary
                            .counters
                            .get(drove_exec::shuffle::FLIGHT_CALLS);
                        calls.push(counted.copied().unwrap_or(0));
                        result.batches
                    }
                    None => run_statements(&ctx, query).await?,
                };
                ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            std::fs::write(
                out.join(format!("q{i}-p{width}.json")),
                serde_json::to_string(&rows_json(&last)?)?,
            )?;
            runs.push(json!({ "query": i, "partitions": width, "ms": ms, "flight_calls": calls }));
        }
    }
    if let Some(s) = session {
        s.shutdown().await;
    }
    Ok(json!({ "runs": runs }))
}

async fn mapreduce(spec: &Value, job: &str) -> Result<Value> {
    let session = drove_session(spec, None).await?;
    let times = run_mapreduce(spec, &session, job).await?;
    session.shutdown().await;
    Ok(json!({ "times": times }))
}

/// The sort on a coordinator and worker processes of `budget` bytes of memory each
/// (the release build), with each worker's peak resident memory.
async fn sort_on_processes(spec: &Value, budget: u64) -> Result<Value> {
    let drove = crate::processes::release_drove()?;
    let workers = number(spec, "workers")?;
    let cluster = ProcessCluster::start(&drove, workers, number(spec, "slots")?, budget).await?;
    let times = run_mapreduce(spec, &cluster.session().await?, "sort").await?;
    Ok(
        json!({ "times": times, "worker_peak_rss_bytes": cluster.peaks()?, "worker_memory_bytes": budget }),
    )
}

/// Runs a built-in job `iterations` times into the spec's output; returns the times.
async fn run_mapreduce(spec: &Value, session: &Session, job: &str) -> Result<Vec<f64>> {
    drove::jobs::register_builtin();
    let reducers = (number(spec, "workers")? * number(spec, "slots")?) as usize;
    let out = path(spec, "output")?;
    let mut times = Vec::new();
    for _ in 0..number(spec, "iterations")? {
        let _ = std::fs::remove_dir_all(&out);
        let started = Instant::now();
        session
            .run_mapreduce(drove_client::mapreduce::MapReduceOptions {
                job: job.into(),
                args: Default::default(),
                inputs: vec![path(spec, "input")?],
                output: out.clone(),
                reducers,
                format: drove_client::OutputFormat::Text,
                overwrite: false,
                combine: true,
            })
            .await?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(times)
}

/// The `.txt` files of a directory, in name order.
pub fn text_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "txt"));
    files.sort();
    Ok(files)
}

/// Counts the words of the files on one thread, as a competent programmer would: each
/// file read whole, words borrowed from it (see [`drove::jobs::for_each_word`]) and
/// counted in a hash table with a fast hasher, a key allocated once per distinct word.
fn count_words(files: &[PathBuf]) -> Result<foldhash::HashMap<String, u64>> {
    let mut counts: foldhash::HashMap<String, u64> = Default::default();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        drove::jobs::for_each_word(&text, |w| match counts.get_mut(w) {
            Some(n) => *n += 1,
            None => {
                counts.insert(w.to_string(), 1);
            }
        });
    }
    Ok(counts)
}

/// The word counts every engine's answer is checked against, by the plain definition
/// of a word (a maximal run of alphanumeric characters, lowercased), so the check does
/// not rest on drove's own tokenizer.
pub fn expected_word_counts(files: &[PathBuf]) -> Result<HashMap<String, u64>> {
    let mut counts = HashMap::new();
    for f in files {
        let text = std::fs::read_to_string(f)?;
        for w in text.split(|c: char| !c.is_alphanumeric()) {
            if !w.is_empty() {
                *counts.entry(w.to_lowercase()).or_insert(0) += 1;
            }
        }
    }
    Ok(counts)
}

/// Runs a single-threaded reference `iterations` times over the input's text files,
/// each run writing afresh into the output directory; returns the run times.
fn reference(
    spec: &Value,
    mut run: impl FnMut(&[PathBuf], &mut dyn Write) -> Result<()>,
    output_file: &str,
) -> Result<Value> {
    let files = text_files(&path(spec, "input")?)?;
    let out = path(spec, "output")?;
    let mut times = Vec::new();
    for _ in 0..number(spec, "iterations")? {
        let _ = std::fs::remove_dir_all(&out);
        let started = Instant::now();
        std::fs::create_dir_all(&out)?;
        let mut w = std::io::BufWriter::new(std::fs::File::create(out.join(output_file))?);
        run(&files, &mut w)?;
        w.flush()?;
        times.push(started.elapsed().as_secs_f64());
    }
    Ok(json!({ "times": times }))
}

/// A single-threaded word count: the COST baseline for `wordcount`.
fn reference_wordcount(spec: &Value) -> Result<Value> {
    let count = |files: &[PathBuf], w: &mut dyn Write| -> Result<()> {
        for (word, n) in &count_words(files)? {
            writeln!(w, "{word}\t{n}")?;
        }
        Ok(())
    };
    reference(spec, count, "counts.txt")
}

/// A single-threaded sort of all lines: the COST baseline for `sort`.
fn reference_sort(spec: &Value) -> Result<Value> {
    let sort = |files: &[PathBuf], w: &mut dyn Write| -> Result<()> {
        let mut text = String::new();
        for f in files {
            text.push_str(&std::fs::read_to_string(f)?);
        }
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        for l in lines {
            writeln!(w, "{l}")?;
        }
        Ok(())
    };
    reference(spec, sort, "part-00000.txt")
}

/// Many tiny tasks: a sum over 1..=n spread over n partitions, so one stage has n
/// tasks of one row each, and the next reads their n partial sums.
async fn tasks(spec: &Value) -> Result<Value> {
    let n = number(spec, "tasks")? as usize;
    // The workload measures the control plane: its stage must run n tasks, which
    // coalescing would run as a task per slot (their partitions are a few bytes).
    let mut spec = spec.clone();
    spec["coalesce"] = json!(false);
    let spec = &spec;
    let session = drove_session(spec, Some(n)).await?;
    let sql = format!("SELECT sum(value) AS s FROM generate_series(1, {n})");
    let mut times = Vec::new();
    let (mut ran, mut sum) = (0, String::new());
    for _ in 0..number(spec, "iterations")? {
        let started = Instant::now();
        let result = session.run_sql(&sql).await?;
        times.push(started.elapsed().as_secs_f64());
        ran = result.summary.tasks();
        sum = rows_json(&result.batches)?[0][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
    }
    session.shutdown().await;
    std::fs::write(path(spec, "output")?, sum)?;
    Ok(json!({ "times": times, "tasks_run": ran }))
}
