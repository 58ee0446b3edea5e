//! Running one task: a stage's plan for one partition, its output written as blocks.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::TryStreamExt;
use tracing::debug;

use crate::blocks::{Block, BlockKey, BlockStore};
use crate::planner::OutputMode;
use crate::shuffle::ShuffleEnv;
use crate::{Error, Result};

/// What one task attempt produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOutput {
    /// Bytes and rows per output partition.
    pub output_bytes: Vec<u64>,
    pub output_rows: Vec<u64>,
    pub local_read_bytes: u64,
    pub remote_read_bytes: u64,
    /// Named counts kept by the task's operators.
    pub counters: std::collections::BTreeMap<String, u64>,
}

/// Which attempt of which task this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskKey {
    pub job: u64,
    pub stage: u32,
    pub partition: u32,
    pub attempt: u32,
}

impl TaskKey {
    fn block(&self, reduce_partition: u32) -> BlockKey {
        BlockKey {
            job: self.job,
            stage: self.stage,
            map_partition: self.partition,
            reduce_partition,
            attempt: self.attempt,
        }
    }
}

/// Runs `plan` for `key.partition` and stores its output in `store`. `ctx` must carry
/// the task's [`ShuffleEnv`].
pub async fn run(
    key: TaskKey,
    plan: Arc<dyn ExecutionPlan>,
    output: OutputMode,
    ctx: Arc<TaskContext>,
    store: &BlockStore,
) -> Result<TaskOutput> {
    let partition = key.partition as usize;
    let buckets = match output {
        OutputMode::Single => {
            let count = plan.output_partitioning().partition_count();
            check_partition(partition, count)?;
            let batches: Vec<_> = plan
                .execute(partition, Arc::clone(&ctx))?
                .try_collect()
                .await?;
            vec![batches]
        }
        OutputMode::RepartitionRoot => {
            let repartition = plan.downcast_ref::<RepartitionExec>().ok_or_else(|| {
                Error::Internal(format!(
                    "a repartitioning stage has {} at its root",
                    plan.name()
                ))
            })?;
            let input = repartition.input();
            let input_partitions = input.output_partitioning().partition_count();
            check_partition(partition, input_partitions)?;
            let partitioning = repartition.partitioning().clone();
            let mut buckets = vec![Vec::new(); partitioning.partition_count()];
            let mut partitioner =
                BatchPartitioner::try_new(partitioning, Time::new(), partition, input_partitions)?;
            let mut stream = input.execute(partition, Arc::clone(&ctx))?;
            while let Some(batch) = stream.try_next().await? {
                partitioner.partition(batch, |reduce, part| {
                    buckets[reduce].push(part);
                    Ok(())
                })?;
            }
            buckets
        }
    };
    let schema = plan.schema();
    let mut out = TaskOutput::default();
    for (reduce, batches) in buckets.into_iter().enumerate() {
        let block = Block::new(Arc::clone(&schema), batches);
        out.output_bytes.push(block.bytes);
        out.output_rows.push(block.rows);
        store.put(key.block(reduce as u32), block);
    }
    if let Some(env) = ctx.session_config().get_extension::<ShuffleEnv>() {
        out.local_read_bytes = env.local_read_bytes.load(Ordering::Relaxed);
        out.remote_read_bytes = env.remote_read_bytes.load(Ordering::Relaxed);
        out.counters = env
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
    }
    debug!(
        ?key,
        rows = out.output_rows.iter().sum::<u64>(),
        "task wrote its blocks"
    );
    Ok(out)
}

fn check_partition(partition: usize, count: usize) -> Result<()> {
    if partition < count {
        Ok(())
    } else {
        Err(Error::Internal(format!(
            "task for partition {partition} of a plan with {count} partitions"
        )))
    }
}
