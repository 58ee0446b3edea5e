//! drove's DataFusion integration.
//!
//! - [`planner`] cuts a DataFusion physical plan into stages at its exchanges.
//! - [`shuffle`] holds the shuffle reader node and the way tasks find their inputs.
//! - [`codec`] lets drove's own nodes travel inside datafusion-proto plans.
//! - [`blocks`] is a worker's store of shuffle blocks, spilling past its memory limit.
//! - [`cache`] is how plans see cached tables.
//! - [`task`] runs one task: a stage's plan for one partition, written as blocks;
//!   [`stage_plan`] keeps a stage's plan decoded once for all its tasks on a worker.
//! - [`mapreduce`] runs user-written map, combine and reduce functions as plan nodes.
//! - [`tables`] registers files as tables; [`tpch`] and [`tpcds`] hold the benchmarks'
//!   tables and queries, written by [`datagen`].
//! - [`fuzz`] holds the fuzz entry points of every decoder of network bytes.
//!
//! Architecture invariant: a block is named by (job, stage, map partition, reduce
//! partition, attempt), and only the attempt that wrote it is ever read.

pub mod blocks;
pub mod cache;
pub mod codec;
pub mod confine;
pub mod datadir;
pub mod datagen;
pub mod dfs;
pub mod dfs_write;
pub mod error;
pub mod functions;
pub mod fuzz;
pub mod leader;
pub mod locality;
pub mod mapreduce;
pub mod net;
pub mod planner;
pub mod python_udf;
pub mod scan_split;
pub mod session;
pub mod shuffle;
pub mod stage_plan;
pub mod stores;
pub mod subquery;
pub mod tables;
pub mod task;
pub mod tls;
pub mod token;
pub mod tpcds;
pub mod tpch;

pub use error::{Error, Result};
