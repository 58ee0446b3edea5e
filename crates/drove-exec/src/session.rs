//! The DataFusion settings drove plans and runs with.

use std::collections::HashMap;

use datafusion::prelude::SessionConfig;

use crate::Result;

/// Settings that every plan drove distributes is made with, and that workers run it with.
///
/// Dynamic filters are off: they link operators across partitions inside one process
/// (a join's build side feeding the probe side's scan), and drove runs each partition
/// as its own task, possibly on another machine.
pub fn settings(target_partitions: usize) -> HashMap<String, String> {
    let target_partitions = target_partitions.max(1);
    [
        (
            "datafusion.execution.target_partitions",
            target_partitions.to_string(),
        ),
        (
            "datafusion.optimizer.enable_dynamic_filter_pushdown",
            "false".to_string(),
        ),
        (
            "datafusion.optimizer.enable_topk_dynamic_filter_pushdown",
            "false".to_string(),
        ),
        (
            "datafusion.optimizer.enable_join_dynamic_filter_pushdown",
            "false".to_string(),
        ),
        (
            "datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown",
            "false".to_string(),
        ),
        (
            "datafusion.optimizer.prefer_existing_sort",
            "false".to_string(),
        ),
        // Each partition runs as its own task, so a scan partition must read exactly its
        // own file group: siblings that could take over its files are elsewhere.
        (
            "datafusion.execution.enable_file_stream_work_stealing",
            "false".to_string(),
        ),
        // Uncorrelated scalar subqueries become joins, which cut into stages like any
        // other join (checked to return at most one row: see `crate::subquery`);
        // DataFusion's physical ScalarSubqueryExec links expressions to a subquery run
        // inside the same process.
        (
            "datafusion.optimizer.enable_physical_uncorrelated_scalar_subquery",
            "false".to_string(),
        ),
        (
            "datafusion.execution.collect_statistics",
            "true".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A DataFusion session configuration made of `settings`.
pub fn config(settings: &HashMap<String, String>) -> Result<SessionConfig> {
    Ok(SessionConfig::from_string_hash_map(settings)?)
}
