//! PageRank gives the same ranks with and without the cache, and both equal a plain
//! single-threaded PageRank over the same graph.

use std::collections::HashMap;

use drove_client::{LocalCluster, LocalClusterConfig, Session};
use pagerank::{Options, generate, run, same_ranks};

/// PageRank in plain Rust over the generated graph's files.
fn reference(graph: &std::path::Path, nodes: u64, iterations: u32) -> Vec<(i64, f64)> {
    use drove_client::arrow::array::{Array, Int64Array};
    let mut edges = Vec::new();
    for entry in std::fs::read_dir(graph).unwrap().flatten() {
        if entry.path().extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        let file = std::fs::File::open(entry.path()).unwrap();
        let reader =
            parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(file, 8192).unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let col = |i: usize| {
                batch
                    .column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (src, dst) = (col(0), col(1));
            for r in 0..batch.num_rows() {
                edges.push((src.value(r), dst.value(r)));
            }
        }
    }
    let mut degree: HashMap<i64, f64> = HashMap::new();
    for (s, _) in &edges {
        *degree.entry(*s).or_default() += 1.0;
    }
    let n = nodes as f64;
    let mut ranks: HashMap<i64, f64> = (0..nodes as i64).map(|v| (v, 1.0 / n)).collect();
    for _ in 0..iterations {
        let mut next: HashMap<i64, f64> = HashMap::new();
        for (s, d) in &edges {
            if let Some(r) = ranks.get(s) {
                *next.entry(*d).or_default() += r / degree[s];
            }
        }
        ranks = next
            .into_iter()
            .map(|(v, sum)| (v, 0.15 / n + 0.85 * sum))
            .collect();
    }
    let mut out: Vec<(i64, f64)> = ranks.into_iter().collect();
    out.sort_by_key(|(v, _)| *v);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ranks_are_the_same_with_and_without_the_cache_and_match_a_plain_pagerank() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(LocalClusterConfig {
        workers: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let session = Session::with_cluster(cluster).await.unwrap();
    let options = |cache| Options {
        nodes: 2_000,
        degree: 4,
        iterations: 4,
        cache,
        dir: dir.path().to_path_buf(),
    };
    let cached = run(&session, &options(true)).await.unwrap();
    let plain = run(&session, &options(false)).await.unwrap();
    same_ranks(&cached.ranks, &plain.ranks).unwrap();
    let graph = generate(dir.path(), 2_000, 4).unwrap();
    same_ranks(&cached.ranks, &reference(&graph, 2_000, 4)).unwrap();
    assert_eq!(cached.iteration_secs.len(), 4);
    // The cache is gone afterwards.
    let status = session.cluster_status().await.unwrap();
    let held: u64 = status.workers.iter().map(|w| w.block_bytes).sum();
    let e = session
        .run_sql("SELECT count(*) FROM links_0")
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("links_0"),
        "{e}; {held} bytes of blocks held"
    );
    session.shutdown().await;
}
