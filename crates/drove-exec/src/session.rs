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
        ("datafusion.execution.target_partitions", target_partitions.to_string()),
        ("datafusion.optimizer.enable_dynamic_filter_pushdown", "false".to_string()),
        ("datafusion.optimizer.enable_topk_dynamic_filter_pushdown", "false".to_string()),
        ("datafusion.optimizer.enable_join_dynamic_filter_pushdown", "false".to_string()),
        ("datafusion.optimizer.enable_aggregate_dynamic_filter_pushdown", "false".to_string()),
        ("datafusion.optimizer.prefer_existing_sort", "false".to_string()),
        ("datafusion.execution.collect_statistics", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A DataFusion session configuration made of `settings`.
pub fn config(settings: &HashMap<String, String>) -> Result<SessionConfig> {
    Ok(SessionConfig::from_string_hash_map(settings)?)
}
