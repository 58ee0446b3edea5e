//! `pagerank`: PageRank over a generated graph on an embedded drove cluster (or a
//! running one), with the links cached in worker memory unless `--no-cache`.

use std::path::PathBuf;

use anyhow::Result;
use clap::Parser;
use drove_client::{LocalCluster, LocalClusterConfig, Session};
use pagerank::{Options, run};

#[derive(Parser)]
#[command(about = "PageRank over a generated graph on drove, with or without caching its links")]
struct Args {
    /// Nodes in the graph.
    #[arg(long, default_value_t = 200_000)]
    nodes: u64,
    /// Average out-links per node.
    #[arg(long, default_value_t = 10)]
    degree: u64,
    #[arg(long, default_value_t = 10)]
    iterations: u32,
    /// Compute the links again every iteration instead of caching them.
    #[arg(long)]
    no_cache: bool,
    /// Workers of the embedded cluster.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Use a running coordinator (HOST:PORT) instead of an embedded cluster.
    #[arg(long)]
    coordinator: Option<String>,
    /// Where the graph and the ranks are written.
    #[arg(long, default_value = "target/pagerank")]
    dir: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.iterations == 0 {
        anyhow::bail!("--iterations must be at least 1");
    }
    let session = match &args.coordinator {
        Some(addr) => Session::connect(addr).await?,
        None => {
            let cluster = LocalCluster::start(LocalClusterConfig {
                workers: args.workers,
                ..Default::default()
            })
            .await?;
            Session::with_cluster(cluster).await?
        }
    };
    let options = Options {
        nodes: args.nodes,
        degree: args.degree,
        iterations: args.iterations,
        cache: !args.no_cache,
        dir: args.dir,
    };
    let result = run(&session, &options).await?;
    let total: f64 = result.cache_secs + result.iteration_secs.iter().sum::<f64>();
    println!(
        "{} iterations over {} nodes ({}): {total:.2} s, caching the links {:.2} s, iterations {}",
        options.iterations,
        options.nodes,
        if options.cache {
            "links cached"
        } else {
            "no cache"
        },
        result.cache_secs,
        result
            .iteration_secs
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut top = result.ranks.clone();
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (node, rank) in top.iter().take(5) {
        println!("node {node:>8}  rank {rank:.8}");
    }
    session.shutdown().await;
    Ok(())
}
