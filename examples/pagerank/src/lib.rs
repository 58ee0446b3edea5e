//! PageRank on drove: the iterative job in-memory engines exist for.
//!
//! The graph is generated: `nodes` nodes, each with between 1 and `2 × degree - 1`
//! out-links to pseudo-random targets, written as Parquet. Every iteration joins the
//! weighted links with the current ranks and sums what flows into each node. The
//! links (edges joined with their source's out-degree) are the same every iteration:
//! with the cache they are computed once and kept in worker memory (`CACHE TABLE`);
//! without it every iteration computes them again from the files. Ranks go from one
//! iteration to the next as Parquet files the client writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use drove_client::Session;
use drove_client::arrow::array::{Array, Float64Array, Int64Array, RecordBatch};
use drove_client::arrow::datatypes::{DataType, Field, Schema};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: u64,
    pub degree: u64,
    pub iterations: u32,
    /// Keep the links in worker memory across iterations.
    pub cache: bool,
    /// Where the graph and the ranks of each iteration are written.
    pub dir: PathBuf,
}

/// The outcome: every node's final rank, by node, and the time each iteration took.
#[derive(Debug, Clone)]
pub struct Ranks {
    pub ranks: Vec<(i64, f64)>,
    pub iteration_secs: Vec<f64>,
    /// Time to cache the links (zero without the cache).
    pub cache_secs: f64,
}

const DAMPING: f64 = 0.85;

fn mix(x: u64) -> u64 {
    // SplitMix64's finalizer: a cheap, well-spread hash.
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn write_parquet(path: &Path, batches: &[RecordBatch], schema: Arc<Schema>) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut writer = parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
    for b in batches {
        writer.write(b)?;
    }
    writer.close()?;
    Ok(())
}

/// Writes the graph (once per size) and returns its directory.
pub fn generate(dir: &Path, nodes: u64, degree: u64) -> Result<PathBuf> {
    if nodes == 0 || degree == 0 {
        bail!("--nodes and --degree must be at least 1");
    }
    let graph = dir.join(format!("graph-{nodes}x{degree}"));
    if graph.join("_complete").exists() {
        return Ok(graph);
    }
    let _ = std::fs::remove_dir_all(&graph);
    std::fs::create_dir_all(&graph)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("src", DataType::Int64, false),
        Field::new("dst", DataType::Int64, false),
    ]));
    const FILES: u64 = 4;
    for f in 0..FILES {
        let (mut src, mut dst) = (Vec::new(), Vec::new());
        for node in (f..nodes).step_by(FILES as usize) {
            let out = 1 + mix(node) % (2 * degree - 1);
            for j in 0..out {
                src.push(node as i64);
                dst.push((mix(node.wrapping_mul(1_000_003).wrapping_add(j)) % nodes) as i64);
            }
        }
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from(src)),
                Arc::new(Int64Array::from(dst)),
            ],
        )?;
        write_parquet(
            &graph.join(format!("edges-{f}.parquet")),
            &[batch],
            Arc::clone(&schema),
        )?;
    }
    std::fs::write(graph.join("_complete"), b"")?;
    Ok(graph)
}

fn links_sql(edges: &str) -> String {
    format!(
        "SELECT e.src, e.dst, 1.0 / d.degree AS weight \
         FROM {edges} e JOIN (SELECT src, count(*) AS degree FROM {edges} GROUP BY src) d ON e.src = d.src"
    )
}

/// Runs PageRank on the cluster behind `session`.
pub async fn run(session: &Session, options: &Options) -> Result<Ranks> {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    // Table names of this run: a session keeps the tables of earlier runs.
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let graph = generate(&options.dir, options.nodes, options.degree)?;
    let run_dir = options
        .dir
        .join(format!("ranks-{}-{run}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    std::fs::create_dir_all(&run_dir)?;
    let edges = format!("edges_{run}");
    session.register_parquet(&edges, &graph).await?;

    let n = options.nodes as f64;
    let rank_schema = Arc::new(Schema::new(vec![
        Field::new("node", DataType::Int64, false),
        Field::new("rank", DataType::Float64, false),
    ]));
    let first = RecordBatch::try_new(
        Arc::clone(&rank_schema),
        vec![
            Arc::new(Int64Array::from_iter_values(0..options.nodes as i64)),
            Arc::new(Float64Array::from(vec![1.0 / n; options.nodes as usize])),
        ],
    )?;
    let mut ranks_path = run_dir.join("ranks-0.parquet");
    write_parquet(&ranks_path, &[first], Arc::clone(&rank_schema))?;

    let mut cache_secs = 0.0;
    let links = if options.cache {
        let started = Instant::now();
        session
            .cache_sql(&format!("links_{run}"), &links_sql(&edges))
            .await?;
        cache_secs = started.elapsed().as_secs_f64();
        format!("links_{run}")
    } else {
        format!("({})", links_sql(&edges))
    };
    let mut iteration_secs = Vec::new();
    let mut last = Vec::new();
    for i in 1..=options.iterations {
        let started = Instant::now();
        let table = format!("ranks_{run}_{}", i - 1);
        session.register_parquet(&table, &ranks_path).await?;
        let sql = format!(
            "SELECT l.dst AS node, {} + {DAMPING} * sum(r.rank * l.weight) AS rank \
             FROM {links} l JOIN {table} r ON l.src = r.node GROUP BY l.dst ORDER BY node",
            (1.0 - DAMPING) / n
        );
        let result = session.run_sql(&sql).await?;
        ranks_path = run_dir.join(format!("ranks-{i}.parquet"));
        write_parquet(&ranks_path, &result.batches, Arc::clone(&rank_schema))?;
        session.deregister_table(&table);
        iteration_secs.push(started.elapsed().as_secs_f64());
        last = result.batches;
    }
    if options.cache {
        session.uncache(&links, false).await?;
    }
    session.deregister_table(&edges);
    let _ = std::fs::remove_dir_all(&run_dir);
    let mut ranks = Vec::new();
    for b in &last {
        let nodes = b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("node column")?;
        let values = b
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .context("rank column")?;
        for row in 0..b.num_rows() {
            ranks.push((nodes.value(row), values.value(row)));
        }
    }
    Ok(Ranks {
        ranks,
        iteration_secs,
        cache_secs,
    })
}

/// Whether two runs agree: the same nodes, ranks equal within 1e-9 (relative; sums in
/// another order round differently). Returns the first difference.
pub fn same_ranks(a: &[(i64, f64)], b: &[(i64, f64)]) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} ranked nodes against {}", a.len(), b.len()));
    }
    for ((na, ra), (nb, rb)) in a.iter().zip(b) {
        if na != nb || (ra - rb).abs() > 1e-9 * ra.abs().max(rb.abs()) {
            return Err(format!(
                "node {na} has rank {ra}, the other run node {nb} rank {rb}"
            ));
        }
    }
    Ok(())
}
