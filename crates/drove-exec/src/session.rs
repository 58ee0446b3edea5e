//! The DataFusion settings drove plans and runs with.

use std::collections::HashMap;

use datafusion::prelude::SessionConfig;

use crate::Result;

/// Settings that every plan drove distributes is made with, and that workers run it with.
/// `task_memory` is the smallest share of operator memory a task gets on the cluster's
/// workers, if known: it bounds the joins broadcast (see [`broadcast_joins`]).
///
/// Dynamic filters are off: they link operators across partitions inside one process
/// (a join's build side feeding the probe side's scan), and drove runs each partition
/// as its own task, possibly on another machine.
pub fn settings(target_partitions: usize, task_memory: Option<u64>) -> HashMap<String, String> {
    let target_partitions = target_partitions.max(1);
    let mut settings: HashMap<String, String> = [
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
    .collect();
    broadcast_joins(&mut settings, target_partitions, task_memory);
    settings
}

/// The most a join's build side may be estimated at for it to be broadcast (collected
/// whole by every task that probes it) rather than shuffled with its probe side.
pub const BROADCAST_MAX_BYTES: u64 = 8 << 20;

/// The most a broadcast may move in all: every probe task reads the whole build side.
pub const BROADCAST_TOTAL_BYTES: u64 = 64 << 20;

/// Sets how large a join's build side may be to be broadcast to `partitions` probe
/// tasks: [`BROADCAST_MAX_BYTES`], less where an eighth of `task_memory` (the smallest
/// share of operator memory a task gets) is less, since a build side cannot spill and
/// statistics estimate its size only roughly, and less where the copies would move more
/// than [`BROADCAST_TOTAL_BYTES`]. DataFusion's own threshold (1 MB) is set for building
/// once per process, where a shuffle costs nothing.
fn broadcast_joins(
    settings: &mut HashMap<String, String>,
    partitions: usize,
    task_memory: Option<u64>,
) {
    let bytes = BROADCAST_MAX_BYTES
        .min(task_memory.map_or(u64::MAX, |m| m / 8))
        .min(BROADCAST_TOTAL_BYTES / partitions.max(1) as u64);
    // Where only a row count is known: rows of 16 bytes.
    let rows = bytes / 16;
    settings.insert(
        "datafusion.optimizer.hash_join_single_partition_threshold".into(),
        bytes.to_string(),
    );
    settings.insert(
        "datafusion.optimizer.hash_join_single_partition_threshold_rows".into(),
        rows.to_string(),
    );
}

/// A DataFusion session configuration made of `settings`.
pub fn config(settings: &HashMap<String, String>) -> Result<SessionConfig> {
    Ok(SessionConfig::from_string_hash_map(settings)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thresholds(partitions: usize, task_memory: Option<u64>) -> (u64, u64) {
        let config = config(&settings(partitions, task_memory)).unwrap();
        let optimizer = &config.options().optimizer;
        (
            optimizer.hash_join_single_partition_threshold as u64,
            optimizer.hash_join_single_partition_threshold_rows as u64,
        )
    }

    #[test]
    fn a_broadcast_build_side_fits_a_tasks_memory_and_a_total() {
        let max = BROADCAST_MAX_BYTES;
        assert_eq!(thresholds(4, None), (max, max / 16));
        assert_eq!(thresholds(4, Some(1 << 30)).0, max);
        // An eighth of a task's share.
        assert_eq!(thresholds(4, Some(16 << 20)).0, 2 << 20);
        // 64 probe tasks read 1 MiB each at most.
        assert_eq!(thresholds(64, None).0, 1 << 20);
        assert_eq!(thresholds(64, Some(4 << 20)).0, 512 << 10);
    }
}
