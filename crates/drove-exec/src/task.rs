//! Running one task: a stage's plan for one partition, its output written as blocks.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::{BatchPartitioner, RepartitionExec};
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use futures::TryStreamExt;
use tracing::debug;

use crate::blocks::{BlockKey, BlockStore};
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
    /// Bytes the task's operators (sorts, aggregations, joins) and its output wrote to
    /// disk because they did not fit in memory, and how many times.
    pub spilled_bytes: u64,
    pub spill_count: u64,
    /// The part of those that the operators spilled (the rest is the task's output).
    pub operator_spilled_bytes: u64,
    pub operator_spill_count: u64,
    /// Bytes of its output kept in memory.
    pub memory_bytes: u64,
    /// The most its operators held at once (set by whoever knows the task's pool).
    pub peak_memory_bytes: u64,
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
    /// The name of the attempt's output (its first block's key).
    fn output(&self) -> BlockKey {
        BlockKey {
            job: self.job,
            stage: self.stage,
            map_partition: self.partition,
            reduce_partition: 0,
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
    let schema = plan.schema();
    let (executed, writer) = match output {
        OutputMode::Single => {
            let count = plan.output_partitioning().partition_count();
            check_partition(partition, count)?;
            let mut writer = store.writer(Arc::clone(&schema), 1);
            let mut stream = plan.execute(partition, Arc::clone(&ctx))?;
            while let Some(batch) = stream.try_next().await? {
                writer.push(0, batch)?;
            }
            (Arc::clone(&plan), writer)
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
            let mut writer = store.writer(Arc::clone(&schema), partitioning.partition_count());
            let mut partitioner =
                BatchPartitioner::try_new(partitioning, Time::new(), partition, input_partitions)?;
            let mut stream = input.execute(partition, Arc::clone(&ctx))?;
            while let Some(batch) = stream.try_next().await? {
                let pieces = partitioner
                    .partition_iter(batch)?
                    .collect::<datafusion::common::Result<Vec<_>>>()?;
                writer.push_pieces(pieces)?;
            }
            (Arc::clone(input), writer)
        }
    };
    let written = writer.finish(key.output())?;
    let (spilled_bytes, spill_count) = plan_spills(executed.as_ref());
    let mut out = TaskOutput {
        spilled_bytes: spilled_bytes + written.spilled_bytes,
        spill_count: spill_count + written.spill_count,
        operator_spilled_bytes: spilled_bytes,
        operator_spill_count: spill_count,
        memory_bytes: written.memory_bytes,
        ..TaskOutput::default()
    };
    for (bytes, rows) in written.sizes {
        out.output_bytes.push(bytes);
        out.output_rows.push(rows);
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
        spilled_bytes = out.spilled_bytes,
        "task wrote its blocks"
    );
    Ok(out)
}

/// Bytes and times the operators of `plan` spilled, from their metrics. Leaves (scans
/// and shuffle readers) never spill, and are not asked: a scan's metrics are shared by
/// the copies of its stage's plan on a worker (see [`crate::stage_plan`]), so they grow
/// with every task the stage ran there.
fn plan_spills(plan: &dyn ExecutionPlan) -> (u64, u64) {
    let children = plan.children();
    if children.is_empty() {
        return (0, 0);
    }
    let own = plan.metrics().map_or((0, 0), |m| {
        (
            m.spilled_bytes().unwrap_or(0) as u64,
            m.spill_count().unwrap_or(0) as u64,
        )
    });
    children.into_iter().fold(own, |(b, c), child| {
        let (cb, cc) = plan_spills(child.as_ref());
        (b + cb, c + cc)
    })
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
