//! The distributed planner: cuts a DataFusion physical plan into stages.
//!
//! DataFusion's optimizer already places exchanges where data must move between
//! partitions. Each exchange becomes a stage boundary:
//!
//! | exchange | the stage below writes | the stage above reads |
//! |---|---|---|
//! | `RepartitionExec` (hash, round-robin, range) | one block per output partition | [`ReadMode::Gather`] |
//! | the same, preserving order | the same, in its input's order | [`ReadMode::Merge`] of each map output (of at most [`MERGE_INPUTS_MAX`]; of more, [`ReadMode::Gather`] under a `SortExec` of each partition) |
//! | `CoalescePartitionsExec` | one block per task | [`ReadMode::Gather`], one partition |
//! | `SortPreservingMergeExec` | one sorted block per task | [`ReadMode::PerMap`] under the merge |
//!
//! A stage runs as one task per partition of its plan. The last stage's output is the
//! job's result.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::JoinType;
use datafusion::common::NullEquality;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_common::physical_expr::is_volatile;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::{HashJoinExec, NestedLoopJoinExec, PartitionMode};
use datafusion::physical_plan::limit::GlobalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
use datafusion::physical_plan::{
    ExecutionPlan, ExecutionPlanProperties, Partitioning, replace_children_if_necessary,
};

use crate::cache::CachedScanExec;
use crate::shuffle::{MERGE_INPUTS_MAX, ReadMode, ShuffleReaderExec};
use crate::{Error, Result};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};

/// How a stage's tasks write their output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputMode {
    /// One block per task.
    Single,
    /// The plan's root is a `RepartitionExec`; each task runs the root's input for its
    /// partition and writes one block per output partition of the root.
    RepartitionRoot,
}

/// One stage of a distributed plan.
#[derive(Debug, Clone)]
pub struct Stage {
    pub id: u32,
    pub plan: Arc<dyn ExecutionPlan>,
    pub output: OutputMode,
    /// How many tasks (map partitions) the stage runs.
    pub tasks: usize,
    /// Stages whose output this one reads.
    pub depends_on: Vec<u32>,
    /// The cached table this stage's output is: its blocks belong to the cache.
    pub cache: Option<u64>,
    /// For a stage copied from a cached table's lineage: that table and the stage's id
    /// in the job that cached it.
    pub origin: Option<(u64, u32)>,
    /// Task p reads partition p of this stage's output (a cached table), so it had
    /// better run where that partition is.
    pub local_input: Option<u32>,
    /// Its task p reads partition p of each stage it reads and nothing else, so one
    /// task can do the work of several adjacent ones by reading their partitions
    /// together, when they turn out small (adaptive coalescing; the scheduler decides,
    /// see `drove_core::scheduler::StageSpec::coalesce`). Never the final stage.
    pub coalesce: bool,
}

impl Stage {
    /// The name of the operator at the stage's root, for status output.
    pub fn root_name(&self) -> String {
        match self.output {
            OutputMode::RepartitionRoot => match self.plan.children().first() {
                Some(input) => format!("{} → Repartition", input.name()),
                None => self.plan.name().to_string(),
            },
            OutputMode::Single => self.plan.name().to_string(),
        }
    }
}

/// A plan cut into stages, in an order where every stage comes after the stages it reads.
#[derive(Debug, Clone)]
pub struct DistributedPlan {
    pub stages: Vec<Stage>,
}

impl DistributedPlan {
    /// The stage whose output is the result.
    pub fn final_stage(&self) -> &Stage {
        self.stages
            .last()
            .expect("a distributed plan has at least one stage")
    }

    /// The stages as text, for EXPLAIN: each stage's tasks, the stages it reads and
    /// where its output goes, then its plan.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for stage in &self.stages {
            let reads = match stage.depends_on.as_slice() {
                [] => String::new(),
                ids => format!(
                    ", reads stage{} {}",
                    if ids.len() > 1 { "s" } else { "" },
                    ids.iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let output = if stage.id == self.final_stage().id {
                "the result".to_string()
            } else {
                match stage.output {
                    OutputMode::Single => "one block per task".to_string(),
                    OutputMode::RepartitionRoot => format!(
                        "a block per partition of {}",
                        stage.plan.output_partitioning()
                    ),
                }
            };
            text.push_str(&format!(
                "Stage {}: {} task{}{reads}; writes {output}\n",
                stage.id,
                stage.tasks,
                if stage.tasks == 1 { "" } else { "s" },
            ));
            let plan = datafusion::physical_plan::displayable(stage.plan.as_ref()).indent(false);
            for line in plan.to_string().lines() {
                text.push_str(&format!("  {line}\n"));
            }
        }
        text
    }
}

/// Whether a join of this type, built from its left input, ends by emitting left rows
/// that no probe partition matched (or, for semi and anti joins, every left row).
///
/// DataFusion does that once *all* probe partitions in the process have finished, so in
/// a task that runs a single partition it never happens.
fn emits_build_rows_at_end(join_type: &JoinType) -> bool {
    matches!(
        join_type,
        JoinType::Left
            | JoinType::Full
            | JoinType::LeftSemi
            | JoinType::LeftAnti
            | JoinType::LeftMark
    )
}

/// Whether `join` collects its left input whole and must emit unmatched left rows at
/// the end, over a probe side of several partitions: as tasks, each would emit them.
fn loses_build_rows(join: &HashJoinExec) -> bool {
    *join.partition_mode() == PartitionMode::CollectLeft
        && emits_build_rows_at_end(join.join_type())
        && join.right().output_partitioning().partition_count() > 1
}

/// Whether `plan` has a hash join that collects its left input whole and must emit
/// unmatched left rows at the end. Such a plan must go through [`prepare`] before it
/// can be distributed.
pub fn loses_unmatched_build_rows(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let bad = plan
        .downcast_ref::<HashJoinExec>()
        .is_some_and(loses_build_rows);
    bad || plan.children().into_iter().any(loses_unmatched_build_rows)
}

/// DataFusion's single-process plan made fit for tasks: round-robin exchanges over
/// small files dropped ([`drop_round_robin_over_files`]), the second exchange of a
/// small two-level aggregation dropped ([`one_exchange_for_nested_groups`]), scans
/// below exchanges filtered by the broadcast joins above them
/// ([`filter_shuffled_scans`]), then the joins that would lose rows rewritten
/// ([`distribute_unmatched_joins`]). In that order: a join whose probe side is one
/// small file then stays a broadcast, in one task; and the build sides the last two
/// share between two places are not rebuilt afterwards (the scan filter takes none
/// that the join rewrite changes). Hand the result to [`split`] as it is: a rebuilt
/// copy would no longer share them.
pub fn prepare(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let plan = one_exchange_for_nested_groups(drop_round_robin_over_files(plan)?)?;
    let plan = filter_shuffled_scans(plan)?;
    distribute_unmatched_joins(plan)
}

/// A broadcast inner join drops the probe rows whose keys no build row has; where such
/// a row comes from a scan below an exchange, it is shuffled first and dropped after.
/// This drops it at the scan instead: the scan is right-semi-joined with the same
/// build side (as DataFusion's dynamic filters do inside one process, which drove
/// turns off). TPC-DS q72 joins 1.4 million catalog sales with 11.7 million inventory
/// rows before its dimension joins drop most of the sales.
///
/// The way down from the join to the scan may pass only through nodes that keep each
/// row's key as it is and drop no row the join would keep: projections and filters
/// (the key a plain column), inner joins (into either side of a partitioned one, only
/// the probe side of a broadcast), right semi joins and exchanges, none of them
/// limited. The build side is computed again in the scan's stage, so it
/// must give the same keys every time ([`same_keys_every_run`]).
fn filter_shuffled_scans(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let rewritten = plan.transform_up(|node| {
        let Some(join) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        let broadcast_dropping = *join.partition_mode() == PartitionMode::CollectLeft
            && matches!(join.join_type(), JoinType::Inner | JoinType::RightSemi);
        // A build side with a join the next rewrite changes would be rebuilt there
        // once for each place that holds it, and computed twice.
        let build = join.left();
        let usable =
            drops_rows(build) && same_keys_every_run(build) && !loses_unmatched_build_rows(build);
        if !broadcast_dropping || !usable {
            return Ok(Transformed::no(node));
        }
        let keys: KeyColumns = join
            .on()
            .iter()
            .filter_map(|(b, p)| Some((Arc::clone(b), p.downcast_ref::<Column>()?.index())))
            .collect();
        if keys.is_empty() || keys.iter().any(|(b, _)| is_volatile(b)) {
            return Ok(Transformed::no(node));
        }
        let filter = ScanFilter {
            build,
            null_equality: join.null_equality(),
        };
        match filter.below(join.right(), &keys, false)? {
            Some(probe) => Ok(Transformed::yes(replace_children_if_necessary(
                Arc::clone(&node),
                vec![Arc::clone(build), probe],
            )?)),
            None => Ok(Transformed::no(node)),
        }
    })?;
    Ok(rewritten.data)
}

/// Whether `plan` may leave out rows of the tables it reads (it filters or joins them).
/// A build side that reads whole tables is most likely a dimension every probe row
/// has a key in: filtering by it would cost a hash lookup per row for nothing.
fn drops_rows(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let dropping = |n: &Arc<dyn ExecutionPlan>| n.is::<FilterExec>() || n.is::<HashJoinExec>();
    matches!(plan.exists(|n| Ok(dropping(n))), Ok(true))
}

/// Whether `plan` gives the same set of rows every time it runs, however its
/// partitions interleave: scans, filters, projections, exchanges and inner or semi
/// hash joins of such, nothing limited and nothing volatile.
fn same_keys_every_run(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let settled = |node: &Arc<dyn ExecutionPlan>| {
        let kind_ok = node.is::<DataSourceExec>()
            || node.is::<FilterExec>()
            || node.is::<ProjectionExec>()
            || node.is::<RepartitionExec>()
            || node.is::<CoalescePartitionsExec>()
            || node.downcast_ref::<HashJoinExec>().is_some_and(|j| {
                matches!(
                    j.join_type(),
                    JoinType::Inner
                        | JoinType::LeftSemi
                        | JoinType::RightSemi
                        | JoinType::LeftAnti
                        | JoinType::RightAnti
                )
            });
        kind_ok && node.fetch().is_none()
    };
    matches!(plan.exists(|n| Ok(!settled(n))), Ok(false)) && !has_volatile(plan)
}

/// Join keys followed down to a scan: each build-side expression, with the column of
/// the node at hand its probe-side key is.
type KeyColumns = Vec<(Arc<dyn PhysicalExpr>, usize)>;

/// Where [`filter_shuffled_scans`] puts its right semi join: over a scan, with the
/// join's build side.
struct ScanFilter<'a> {
    build: &'a Arc<dyn ExecutionPlan>,
    null_equality: NullEquality,
}

impl ScanFilter<'_> {
    /// `plan` with its rows whose columns `keys` (build-side expression, column of
    /// `plan`) match no build row dropped at the scan they come from, if that scan is
    /// below an exchange (`shuffled`, or one on the way down) and the way is clear.
    fn below(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        keys: &[(Arc<dyn PhysicalExpr>, usize)],
        shuffled: bool,
    ) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
        if plan.fetch().is_some() {
            return Ok(None);
        }
        if plan.is::<DataSourceExec>() {
            if !shuffled {
                return Ok(None);
            }
            let schema = plan.schema();
            let on = keys
                .iter()
                .map(|(build_key, i)| {
                    let key: Arc<dyn PhysicalExpr> =
                        Arc::new(Column::new(schema.field(*i).name(), *i));
                    (Arc::clone(build_key), key)
                })
                .collect();
            return Ok(Some(matching_rows(
                self.build,
                plan,
                on,
                self.null_equality,
            )?));
        }
        let Some((child, keys, exchange)) = Self::way_down(plan, keys) else {
            return Ok(None);
        };
        let children = plan.children();
        let Some(filtered) = self.below(children[child], &keys, shuffled || exchange)? else {
            return Ok(None);
        };
        let mut new_children: Vec<Arc<dyn ExecutionPlan>> =
            children.into_iter().map(Arc::clone).collect();
        new_children[child] = filtered;
        Ok(Some(replace_children_if_necessary(
            Arc::clone(plan),
            new_children,
        )?))
    }

    /// Which child of `plan` the columns `keys` come from unchanged, those columns'
    /// places in it, and whether `plan` is an exchange; `None` if they do not all come
    /// from one child as they are, or rows may not be dropped below `plan`.
    fn way_down(
        plan: &Arc<dyn ExecutionPlan>,
        keys: &[(Arc<dyn PhysicalExpr>, usize)],
    ) -> Option<(usize, KeyColumns, bool)> {
        let remap = |to: &dyn Fn(usize) -> Option<usize>| {
            keys.iter()
                .map(|(b, i)| Some((Arc::clone(b), to(*i)?)))
                .collect::<Option<Vec<_>>>()
        };
        if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
            let exprs = projection.expr();
            let keys = remap(&|i| Some(exprs.get(i)?.expr.downcast_ref::<Column>()?.index()))?;
            return Some((0, keys, false));
        }
        if let Some(filter) = plan.downcast_ref::<FilterExec>() {
            let keys = match filter.projection() {
                Some(p) => remap(&|i| p.get(i).copied())?,
                None => keys.to_vec(),
            };
            return Some((0, keys, false));
        }
        if plan.is::<RepartitionExec>() {
            return Some((0, keys.to_vec(), true));
        }
        let join = plan.downcast_ref::<HashJoinExec>()?;
        let unprojected = remap(&|i| match &join.projection {
            Some(p) => p.get(i).copied(),
            None => Some(i),
        })?;
        match join.join_type() {
            JoinType::RightSemi => Some((1, unprojected, false)),
            JoinType::Inner => {
                let left = join.left().schema().fields().len();
                let side = |i: usize| usize::from(i >= left);
                let child = side(unprojected.first()?.1);
                let broadcast = *join.partition_mode() == PartitionMode::CollectLeft;
                if unprojected.iter().any(|(_, i)| side(*i) != child) || (broadcast && child == 0) {
                    return None;
                }
                let keys = unprojected
                    .into_iter()
                    .map(|(b, i)| (b, i - child * left))
                    .collect();
                Some((child, keys, false))
            }
            _ => None,
        }
    }
}

/// The most rows (as DataFusion estimates them) that one task is left to handle where
/// the plan could spread them over several: going into a two-level aggregation for
/// [`one_exchange_for_nested_groups`] to hash its first exchange on fewer keys, and
/// under a round-robin exchange for [`drop_round_robin_over_files`] to drop it.
const SMALL_INPUT_ROWS_MAX: usize = 1 << 20;

/// How many rows DataFusion estimates `plan` gives, if it can tell (an estimate it
/// fails to make is none: the rewrites that ask are only worth it where one is known).
fn estimated_rows(plan: &Arc<dyn ExecutionPlan>) -> Option<usize> {
    let stats = StatisticsContext::new()
        .compute(plan.as_ref(), &StatisticsArgs::new())
        .ok()?;
    stats.num_rows.get_value().copied()
}

/// An aggregation over the groups of another, whose keys are among the other's (as
/// DataFusion plans `count(DISTINCT x) ... GROUP BY k`: first grouped by k and x, then
/// by k), shuffles twice: by all the inner keys, then by the outer ones. Hashing the
/// first exchange by the outer keys alone puts every inner group of an outer group in
/// one partition already, so the second exchange goes, and with it a stage (TPC-H
/// Q16's). Fewer keys may spread rows over fewer partitions, so this is done only
/// where DataFusion estimates the rows going in as at most
/// [`SMALL_INPUT_ROWS_MAX`], and both exchanges have as many partitions.
///
/// ```text
/// Aggregate FinalPartitioned [k]             Aggregate FinalPartitioned [k]
///   Repartition Hash([k], n)                   Aggregate Partial [k]
///     Aggregate Partial [k]            =>        Aggregate FinalPartitioned [k, x]
///       Aggregate FinalPartitioned [k, x]          Repartition Hash([k], n)
///         Repartition Hash([k, x], n)                Aggregate Partial [k, x]
///           Aggregate Partial [k, x]
/// ```
fn one_exchange_for_nested_groups(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let rewritten = plan.transform_up(|node| {
        Ok(match nested_groups(&node)? {
            Some(one_exchange) => Transformed::yes(one_exchange),
            None => Transformed::no(node),
        })
    })?;
    Ok(rewritten.data)
}

/// `node` with one exchange, if it is the top of a two-level aggregation
/// [`one_exchange_for_nested_groups`] rewrites.
fn nested_groups(
    node: &Arc<dyn ExecutionPlan>,
) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
    // From the top down: outer, its exchange, outer_partial, inner, its exchange,
    // inner_partial.
    let Some((_, outer_exchange)) = aggregate_input(node, AggregateMode::FinalPartitioned) else {
        return Ok(None);
    };
    let Some((outer_hash, outer_n, outer_partial)) = hash_exchange_input(outer_exchange) else {
        return Ok(None);
    };
    let Some((outer_grouping, inner)) = aggregate_input(outer_partial, AggregateMode::Partial)
    else {
        return Ok(None);
    };
    let Some((inner_grouping, inner_exchange)) =
        aggregate_input(inner, AggregateMode::FinalPartitioned)
    else {
        return Ok(None);
    };
    let Some((_, inner_n, inner_partial)) = hash_exchange_input(inner_exchange) else {
        return Ok(None);
    };
    let Some((_, rows_in)) = aggregate_input(inner_partial, AggregateMode::Partial) else {
        return Ok(None);
    };
    let (outer_keys, inner_keys) = (
        outer_grouping.group_expr().expr(),
        inner_grouping.group_expr().expr(),
    );
    // The exchange that goes hashed the outer aggregation's keys, as they come out of
    // its partial step (its first columns, in order): what the one left hashes.
    let hashes_outer_keys = outer_hash.len() == outer_keys.len()
        && (outer_hash.iter().enumerate())
            .all(|(i, e)| e.downcast_ref::<Column>().is_some_and(|c| c.index() == i));
    if outer_n != inner_n || outer_keys.is_empty() || !hashes_outer_keys {
        return Ok(None);
    }
    // The outer keys, as columns of the inner aggregation's output, are among its first
    // (grouping) columns, which its partial aggregation outputs in the same places.
    let schema = inner_partial.schema();
    let mut keys: Vec<Arc<dyn PhysicalExpr>> = Vec::new();
    for (expr, _) in outer_keys {
        match expr.downcast_ref::<Column>() {
            Some(c) if c.index() < inner_keys.len() => {
                keys.push(Arc::new(Column::new(
                    schema.field(c.index()).name(),
                    c.index(),
                )));
            }
            _ => return Ok(None),
        }
    }
    if estimated_rows(rows_in).is_none_or(|n| n > SMALL_INPUT_ROWS_MAX) {
        return Ok(None);
    }
    let exchange: Arc<dyn ExecutionPlan> = Arc::new(RepartitionExec::try_new(
        Arc::clone(inner_partial),
        Partitioning::Hash(keys, inner_n),
    )?);
    let inner = replace_children_if_necessary(Arc::clone(inner), vec![exchange])?;
    let outer_partial = replace_children_if_necessary(Arc::clone(outer_partial), vec![inner])?;
    Ok(Some(replace_children_if_necessary(
        Arc::clone(node),
        vec![outer_partial],
    )?))
}

/// `plan` as an aggregation in `mode` without grouping sets, if it is one, and its input.
fn aggregate_input(
    plan: &Arc<dyn ExecutionPlan>,
    mode: AggregateMode,
) -> Option<(&AggregateExec, &Arc<dyn ExecutionPlan>)> {
    plan.downcast_ref::<AggregateExec>()
        .filter(|a| *a.mode() == mode && a.group_expr().is_single())
        .map(|a| (a, a.input()))
}

/// A hash exchange's hashed expressions, partition count and input.
type HashExchange<'a> = (
    &'a [Arc<dyn PhysicalExpr>],
    usize,
    &'a Arc<dyn ExecutionPlan>,
);

/// `plan` as a [`HashExchange`], if it is a hash exchange that keeps no order.
fn hash_exchange_input(plan: &Arc<dyn ExecutionPlan>) -> Option<HashExchange<'_>> {
    let exchange = plan.downcast_ref::<RepartitionExec>()?;
    match exchange.partitioning() {
        Partitioning::Hash(hashed, n) if !exchange.preserve_order() => {
            Some((hashed.as_slice(), *n, exchange.input()))
        }
        _ => None,
    }
}

/// Rewrites every collect-left hash join that emits unmatched build rows, which as
/// tasks would each emit them, leaving every other join as DataFusion planned it (a
/// small build side stays collected whole: a broadcast).
///
/// - Most become partitioned joins: both sides hash-repartitioned on the join keys into
///   as many partitions as the probe side had, so that each build row meets every probe
///   row it could match in one task. The join's output partitioning was unknown (that
///   of a collect-left join emitting build rows), so nothing above relied on it.
/// - A semi, anti or mark join on its keys alone keeps its broadcast, where both of
///   its halves can be sure to see the same build rows: see [`reduced_probe_side`].
/// - A null-aware anti join, which DataFusion builds only in collect-left mode, must
///   see every probe row in one place to know which build rows matched none: its probe
///   side is gathered, and it runs as one task.
fn distribute_unmatched_joins(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let rewritten = plan.transform_up(|node| {
        let Some(join) = node.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(node));
        };
        if !loses_build_rows(join) {
            return Ok(Transformed::no(node));
        }
        if let Some(reduced) = reduced_probe_side(join)? {
            return Ok(Transformed::yes(reduced));
        }
        if join.null_aware {
            let probe: Arc<dyn ExecutionPlan> =
                Arc::new(CoalescePartitionsExec::new(Arc::clone(join.right())));
            let left = Arc::clone(join.left());
            return Ok(Transformed::yes(replace_children_if_necessary(
                Arc::clone(&node),
                vec![left, probe],
            )?));
        }
        let partitions = join.right().output_partitioning().partition_count();
        // The build side was gathered into one partition for collecting; hash its
        // input instead, unless the gathering also limits it.
        let build = Arc::clone(plain_gathering(join.left()).unwrap_or(join.left()));
        let (left_keys, right_keys) = join
            .on()
            .iter()
            .map(|(l, r)| (Arc::clone(l), Arc::clone(r)))
            .unzip();
        let left = RepartitionExec::try_new(build, Partitioning::Hash(left_keys, partitions))?;
        let right = RepartitionExec::try_new(
            Arc::clone(join.right()),
            Partitioning::Hash(right_keys, partitions),
        )?;
        let partitioned = join
            .builder()
            .with_partition_mode(PartitionMode::Partitioned)
            .with_new_children(vec![Arc::new(left), Arc::new(right)])?
            .recompute_properties()
            .reset_state()
            .build_exec()?;
        Ok(Transformed::yes(partitioned))
    })?;
    Ok(rewritten.data)
}

/// A collect-left semi, anti or mark join whose probe side has several partitions,
/// rewritten so that the probe side shrinks before it moves: each probe task joins its
/// rows with the broadcast build side (a right semi join, keeping the probe rows that
/// match some build row) and keeps their distinct join keys; those are gathered, and
/// the join runs as one task over them (so does the rest of its stage: it sees at most
/// the build side's keys once per probe task). Whether a build row matches depends
/// only on whether its key is among the probe rows that match some build row, so the
/// answer is the same.
///
/// Both joins must see the same build rows: no expression in the build side or the
/// keys may be volatile, and the build side is either gathered from several
/// partitions, a stage both read (the cutter cuts a node the plan holds twice once:
/// see [`Cutter::cut`]), or one partition all the way down, computed alike in every
/// task. `None` where this does not hold, and for a join with a filter or a null-aware
/// anti join.
fn reduced_probe_side(
    join: &HashJoinExec,
) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
    let build = join.left();
    let keys_alone = matches!(
        join.join_type(),
        JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark
    ) && join.filter().is_none()
        && !join.null_aware
        && !join
            .on()
            .iter()
            .any(|(b, p)| is_volatile(b) || is_volatile(p));
    let shared = plain_gathering(build).is_some_and(|input| {
        input.output_partitioning().partition_count() > 1 && !has_volatile(input)
    });
    if !keys_alone || !(shared || one_partition_all_the_way(build)) {
        return Ok(None);
    }
    let matching = matching_rows(
        build,
        join.right(),
        join.on().to_vec(),
        join.null_equality(),
    )?;
    let (group_by, on): (Vec<_>, Vec<_>) = join
        .on()
        .iter()
        .enumerate()
        .map(|(i, (build_key, probe_key))| {
            let name = format!("key{i}");
            let key: Arc<dyn PhysicalExpr> = Arc::new(Column::new(&name, i));
            ((Arc::clone(probe_key), name), (Arc::clone(build_key), key))
        })
        .unzip();
    let distinct_keys = AggregateExec::try_new(
        AggregateMode::Partial,
        PhysicalGroupBy::new_single(group_by),
        vec![],
        vec![],
        Arc::clone(&matching),
        matching.schema(),
    )?;
    let gathered_keys = Arc::new(CoalescePartitionsExec::new(Arc::new(distinct_keys)));
    let reduced = join
        .builder()
        .with_on(on)
        .with_new_children(vec![Arc::clone(build), gathered_keys])?
        .reset_state()
        .build_exec()?;
    Ok(Some(reduced))
}

/// The rows of `probe` whose keys some row of `build` has: a right semi join with
/// `build` collected whole (a broadcast), as both rewrites that shrink a probe side
/// put in ([`reduced_probe_side`], [`filter_shuffled_scans`]).
fn matching_rows(
    build: &Arc<dyn ExecutionPlan>,
    probe: &Arc<dyn ExecutionPlan>,
    on: Vec<(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)>,
    null_equality: NullEquality,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    Ok(Arc::new(HashJoinExec::try_new(
        Arc::clone(build),
        Arc::clone(probe),
        on,
        None,
        &JoinType::RightSemi,
        None,
        PartitionMode::CollectLeft,
        null_equality,
        false,
    )?))
}

/// The input of `plan` if it is a gathering of partitions into one that limits nothing.
fn plain_gathering(plan: &Arc<dyn ExecutionPlan>) -> Option<&Arc<dyn ExecutionPlan>> {
    plan.downcast_ref::<CoalescePartitionsExec>()
        .filter(|c| c.fetch().is_none())
        .map(|c| c.input())
}

/// Whether any expression in `plan` is volatile (`random()`): two runs may differ.
fn has_volatile(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.exists(|node| {
        let mut volatile = false;
        node.apply_expressions(&mut |e| {
            volatile = is_volatile(e);
            Ok(if volatile {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        Ok(volatile)
    })
    .unwrap_or(true)
}

/// Whether `plan` gives the same rows in the same order every time it runs: one
/// partition all the way down (nothing gathers partitions, whose rows come in any
/// order, so limits and windows see them alike) and nothing volatile.
fn one_partition_all_the_way(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let spread = plan.exists(|node| Ok(node.output_partitioning().partition_count() != 1));
    matches!(spread, Ok(false)) && !has_volatile(plan)
}

/// Removes the round-robin repartitions DataFusion puts over one partition read from
/// files, to spread its rows over more partitions for parallelism, where that
/// partition is small: a scan of small files DataFusion did not split (at most
/// [`UNSPREAD_SCAN_MAX_BYTES`] each), or anything over files (of at most
/// [`ESTIMATED_SCAN_MAX_BYTES`] each) DataFusion estimates at most
/// [`SMALL_INPUT_ROWS_MAX`] rows (such as TPC-H Q22's customers without orders,
/// gathered for a join). Here each is an exchange: a stage of one task that writes
/// blocks, read by a stage of as many tasks as partitions, to spread rows a single task
/// handles in moments. Nothing above relies on the repartition's output partitioning
/// (unknown), and exchanges the plan needs for its meaning are hash or
/// single-partition ones, which stay. Over other inputs (a generated series, a cached
/// table) they stay: there they are how a job gets its parallelism.
fn drop_round_robin_over_files(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let dropped = plan.transform_up(|node| {
        let Some(repartition) = node.downcast_ref::<RepartitionExec>() else {
            return Ok(Transformed::no(node));
        };
        let round_robin = matches!(repartition.partitioning(), Partitioning::RoundRobinBatch(_));
        let input = repartition.input();
        let small = match largest_scan_bytes(input) {
            Some(bytes) if bytes <= UNSPREAD_SCAN_MAX_BYTES => true,
            Some(bytes) if bytes <= ESTIMATED_SCAN_MAX_BYTES => {
                estimated_rows(input).is_some_and(|n| n <= SMALL_INPUT_ROWS_MAX)
            }
            _ => false,
        };
        if round_robin && input.output_partitioning().partition_count() == 1 && small {
            Ok(Transformed::yes(Arc::clone(repartition.input())))
        } else {
            Ok(Transformed::no(node))
        }
    })?;
    Ok(dropped.data)
}

/// The most bytes of files a scan may read for a round-robin exchange over it to be
/// dropped: a file DataFusion cannot split (compressed, or one row group) may be large.
const UNSPREAD_SCAN_MAX_BYTES: u64 = 32 << 20;

/// The most bytes of files under a round-robin exchange that DataFusion's row estimate
/// may drop it over: estimates can be far off, and a wrong one here costs a stage's
/// parallelism.
const ESTIMATED_SCAN_MAX_BYTES: u64 = 1 << 30;

/// The bytes of the largest file scan among the leaves of `plan`, if every leaf is a
/// file scan.
fn largest_scan_bytes(plan: &Arc<dyn ExecutionPlan>) -> Option<u64> {
    let children = plan.children();
    if children.is_empty() {
        let scan = plan
            .downcast_ref::<DataSourceExec>()
            .and_then(|scan| scan.data_source().downcast_ref::<FileScanConfig>())?;
        let bytes = (scan.file_groups.iter())
            .flat_map(|group| group.iter())
            .map(|file| file.object_meta.size)
            .sum();
        return Some(bytes);
    }
    children.into_iter().try_fold(0, |largest, child| {
        largest_scan_bytes(child).map(|bytes| bytes.max(largest))
    })
}

/// Cuts `plan` into stages. See the module documentation.
pub fn split(plan: Arc<dyn ExecutionPlan>) -> Result<DistributedPlan> {
    split_with_caches(plan, &|_| None)
}

/// Cuts `plan` into stages; each cached table it scans brings the stages that
/// computed it, which `lineage` gives by the table's id (the last one is the cached
/// stage itself).
pub fn split_with_caches(
    plan: Arc<dyn ExecutionPlan>,
    lineage: &dyn Fn(u64) -> Option<Vec<Stage>>,
) -> Result<DistributedPlan> {
    // Readers are the planner's own; one in a submitted plan would name stages that
    // do not exist.
    if reads_stages(&plan) {
        return Err(Error::User(
            "the plan already reads other stages (it has a ShuffleReaderExec); submit a plan without drove's shuffle readers, which drove places itself".into(),
        ));
    }
    if loses_unmatched_build_rows(&plan) {
        return Err(Error::Internal(
            "a collect-left hash join that emits unmatched rows cannot be distributed; prepare the plan first".into(),
        ));
    }
    let mut cutter = Cutter {
        stages: Vec::new(),
        lineage,
        inlined: Vec::new(),
        cut_already: HashMap::new(),
    };
    let root = cutter.cut(plan)?;
    let tasks = some_partitions(root.output_partitioning().partition_count(), &root)?;
    push_stage(&mut cutter.stages, root, OutputMode::Single, tasks);
    // The result's partitions are the client's, and a cached table's are its own.
    if let Some(last) = cutter.stages.last_mut() {
        last.coalesce = false;
    }
    Ok(DistributedPlan {
        stages: cutter.stages,
    })
}

struct Cutter<'a> {
    stages: Vec<Stage>,
    lineage: &'a dyn Fn(u64) -> Option<Vec<Stage>>,
    /// Cached tables already copied into `stages`: (table, its cached stage's new id).
    inlined: Vec<(u64, u32)>,
    /// The nodes cut so far, by address: the node, and what it was cut into.
    cut_already: HashMap<*const (), [Arc<dyn ExecutionPlan>; 2]>,
}

impl Cutter<'_> {
    /// Copies a cached table's stages into the plan (once) and returns a reader of
    /// its cached stage in their place.
    fn cached(&mut self, scan: &CachedScanExec) -> Result<Arc<dyn ExecutionPlan>> {
        let cache = scan.cache();
        let stage = match self.inlined.iter().find(|(c, _)| *c == cache) {
            Some((_, stage)) => *stage,
            None => {
                let lineage = (self.lineage)(cache).ok_or_else(|| {
                    Error::User(format!(
                        "cached table {cache} is gone; it was uncached while this query was planned"
                    ))
                })?;
                let offset = self.stages.len() as u32;
                for s in lineage {
                    let plan = Arc::clone(&s.plan)
                        .transform_up(|node| {
                            Ok(match node.downcast_ref::<ShuffleReaderExec>() {
                                Some(r) => {
                                    Transformed::yes(Arc::new(r.reading(r.stage() + offset))
                                        as Arc<dyn ExecutionPlan>)
                                }
                                None => Transformed::no(node),
                            })
                        })?
                        .data;
                    self.stages.push(Stage {
                        id: s.id + offset,
                        plan,
                        depends_on: s.depends_on.iter().map(|d| d + offset).collect(),
                        // A stage that came from another cached table keeps its origin.
                        origin: s.origin.or(Some((cache, s.id))),
                        local_input: s.local_input.map(|l| l + offset),
                        // Lost partitions of the table are computed again one by one.
                        coalesce: false,
                        ..s
                    });
                }
                let stage = self.stages.len() as u32 - 1;
                if self.stages[stage as usize].cache != Some(cache) {
                    return Err(Error::Internal(format!(
                        "the last stage of cached table {cache}'s lineage is not the cached one"
                    )));
                }
                self.inlined.push((cache, stage));
                stage
            }
        };
        Ok(Arc::new(ShuffleReaderExec::new(
            stage,
            ReadMode::PerMap,
            scan.partitions(),
            scan.schema(),
        )))
    }
}

fn push_stage(
    stages: &mut Vec<Stage>,
    plan: Arc<dyn ExecutionPlan>,
    output: OutputMode,
    tasks: usize,
) -> u32 {
    assert!(tasks > 0, "a stage needs at least one task");
    let id = stages.len() as u32;
    let mut reads = Vec::new();
    collect_reads(&plan, &mut reads);
    // A stage whose tasks each read their own partition of a cached table runs best
    // where that partition is.
    let local_input = reads
        .iter()
        .find(|(stage, mode, partitions)| {
            *mode == ReadMode::PerMap
                && *partitions == tasks
                && stages[*stage as usize].cache.is_some()
        })
        .map(|(stage, ..)| *stage);
    let mut depends_on: Vec<u32> = reads.into_iter().map(|(stage, ..)| stage).collect();
    depends_on.sort_unstable();
    depends_on.dedup();
    let runs = match output {
        OutputMode::Single => Some(&plan),
        OutputMode::RepartitionRoot => plan.children().into_iter().next(),
    };
    let coalesce = tasks > 1 && runs.is_some_and(|p| partitionwise(p, tasks));
    stages.push(Stage {
        id,
        plan,
        output,
        tasks,
        depends_on,
        cache: None,
        origin: None,
        local_input,
        coalesce,
    });
    id
}

/// Whether partition p of `plan`, of `partitions` partitions, is computed from
/// partition p of the stages its readers gather and from nothing else, so that reading
/// partitions p..q together computes what partitions p to q - 1 would (see
/// [`Stage::coalesce`]). Only operators known to work partition by partition count:
/// a collect-left join, for one, reads every partition of its build side in each.
fn partitionwise(plan: &Arc<dyn ExecutionPlan>, partitions: usize) -> bool {
    use datafusion::physical_plan::joins::SortMergeJoinExec;
    use datafusion::physical_plan::union::InterleaveExec;
    use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
    if plan.output_partitioning().partition_count() != partitions {
        return false;
    }
    // A gathering reader that presents an order (it stands in for a repartition of one
    // sorted partition) would present it no longer: partitions p..q are sorted runs one
    // after the other.
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        return reader.mode() == ReadMode::Gather && plan.output_ordering().is_none();
    }
    let by_partition = plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan.is::<AggregateExec>()
        || plan.is::<SortExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<BoundedWindowAggExec>()
        || plan.is::<WindowAggExec>()
        || plan.is::<InterleaveExec>()
        || plan
            .downcast_ref::<HashJoinExec>()
            .is_some_and(|j| *j.partition_mode() == PartitionMode::Partitioned);
    by_partition
        && plan
            .children()
            .into_iter()
            .all(|child| partitionwise(child, partitions))
}

/// A stage's task count or a reader's partition count, which must not be zero (a plan
/// from a client can say anything).
fn some_partitions(count: usize, plan: &Arc<dyn ExecutionPlan>) -> Result<usize> {
    if count == 0 {
        return Err(Error::User(format!(
            "{} has no partitions, so drove has no task to run it in",
            plan.name()
        )));
    }
    Ok(count)
}

/// Whether `plan` has a shuffle reader anywhere.
fn reads_stages(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<ShuffleReaderExec>().is_some()
        || plan.children().into_iter().any(reads_stages)
}

/// The stages `plan` reads, with how and over how many partitions.
fn collect_reads(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<(u32, ReadMode, usize)>) {
    if let Some(reader) = plan.downcast_ref::<ShuffleReaderExec>() {
        out.push((reader.stage(), reader.mode(), reader.partitions()));
    }
    for child in plan.children() {
        collect_reads(child, out);
    }
}

impl Cutter<'_> {
    /// `plan` with each exchange in it cut into a stage and replaced by a reader. A
    /// subtree the plan holds twice (the same node, as [`reduced_probe_side`] shares a
    /// build side) is cut once: both places read the same stages.
    fn cut(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let node = Arc::as_ptr(&plan) as *const ();
        if let Some([_, done]) = self.cut_already.get(&node) {
            return Ok(Arc::clone(done));
        }
        let done = self.cut_once(Arc::clone(&plan))?;
        // The entry holds `plan` so that its address stays its own while cutting.
        self.cut_already.insert(node, [plan, Arc::clone(&done)]);
        Ok(done)
    }

    fn cut_once(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(scan) = plan.downcast_ref::<CachedScanExec>() {
            return self.cached(scan);
        }
        // A nested loop join has no partitioned mode: when it must emit unmatched left rows,
        // its probe side is gathered into one partition so that one task sees all of it.
        let plan = match plan.downcast_ref::<NestedLoopJoinExec>() {
            Some(join)
                if emits_build_rows_at_end(join.join_type())
                    && join.right().output_partitioning().partition_count() > 1 =>
            {
                let right: Arc<dyn ExecutionPlan> =
                    Arc::new(CoalescePartitionsExec::new(Arc::clone(join.right())));
                replace_children_if_necessary(
                    Arc::clone(&plan),
                    vec![Arc::clone(join.left()), right],
                )?
            }
            _ => plan,
        };
        let children = plan
            .children()
            .into_iter()
            .map(|c| self.cut(Arc::clone(c)))
            .collect::<Result<Vec<_>>>()?;
        let plan = replace_children_if_necessary(plan, children)?;

        if let Some(repartition) = plan.downcast_ref::<RepartitionExec>()
            && repartition.preserve_order()
        {
            // It merges its sorted inputs into each output partition. The map tasks
            // write their blocks in their input's order, so a reader of a few map
            // outputs merges them; one of many gathers blocks as they come, and each
            // partition is sorted again after it.
            let ordering = repartition.input().output_ordering().cloned();
            let unordered = Arc::new(RepartitionExec::try_new(
                Arc::clone(repartition.input()),
                repartition.partitioning().clone(),
            )?);
            let maps = repartition.input().output_partitioning().partition_count();
            if maps <= MERGE_INPUTS_MAX && ordering.is_some() {
                let stage = self.repartition_stage(unordered)?;
                return Ok(Arc::new(ShuffleReaderExec::standing_in(
                    stage,
                    ReadMode::Merge,
                    plan.as_ref(),
                )));
            }
            let reader = self.cut_repartition(unordered)?;
            return Ok(match ordering {
                Some(ordering) => {
                    Arc::new(SortExec::new(ordering, reader).with_preserve_partitioning(true))
                }
                None => reader,
            });
        }
        if plan.downcast_ref::<RepartitionExec>().is_some() {
            return self.cut_repartition(plan);
        }

        if let Some(coalesce) = plan.downcast_ref::<CoalescePartitionsExec>() {
            let input = Arc::clone(coalesce.input());
            let tasks = input.output_partitioning().partition_count();
            if tasks <= 1 {
                return Ok(plan);
            }
            let fetch = coalesce.fetch();
            let stage = push_stage(&mut self.stages, input, OutputMode::Single, tasks);
            let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::standing_in(
                stage,
                ReadMode::Gather,
                plan.as_ref(),
            ));
            return Ok(match fetch {
                Some(fetch) => Arc::new(GlobalLimitExec::new(reader, 0, Some(fetch))),
                None => reader,
            });
        }

        if let Some(merge) = plan.downcast_ref::<SortPreservingMergeExec>() {
            let input = Arc::clone(merge.input());
            let tasks = input.output_partitioning().partition_count();
            if tasks <= 1 {
                return Ok(plan);
            }
            let reader: Arc<dyn ExecutionPlan> = Arc::new(ShuffleReaderExec::standing_in(
                push_stage(
                    &mut self.stages,
                    Arc::clone(&input),
                    OutputMode::Single,
                    tasks,
                ),
                ReadMode::PerMap,
                input.as_ref(),
            ));
            return Ok(replace_children_if_necessary(
                Arc::clone(&plan),
                vec![reader],
            )?);
        }

        Ok(plan)
    }

    /// Cuts at a repartition that does not preserve order: the stage below writes one
    /// block per output partition, and a reader gathers them.
    fn cut_repartition(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
        let stage = self.repartition_stage(Arc::clone(&plan))?;
        Ok(Arc::new(ShuffleReaderExec::standing_in(
            stage,
            ReadMode::Gather,
            plan.as_ref(),
        )))
    }

    /// The stage that runs a repartition's input and writes one block per output
    /// partition.
    fn repartition_stage(&mut self, plan: Arc<dyn ExecutionPlan>) -> Result<u32> {
        let Some(repartition) = plan.downcast_ref::<RepartitionExec>() else {
            return Err(Error::Internal(format!(
                "{} is not a repartition",
                plan.name()
            )));
        };
        match repartition.partitioning() {
            Partitioning::Hash(..) | Partitioning::RoundRobinBatch(_) | Partitioning::Range(_) => {}
            other => {
                return Err(Error::User(format!(
                    "this query needs the partitioning {other:?}, which drove cannot distribute yet"
                )));
            }
        }
        some_partitions(repartition.partitioning().partition_count(), &plan)?;
        let tasks = some_partitions(
            repartition.input().output_partitioning().partition_count(),
            repartition.input(),
        )?;
        Ok(push_stage(
            &mut self.stages,
            plan,
            OutputMode::RepartitionRoot,
            tasks,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr};

    /// A gathering reader coalesces, unless it presents an order that reading several
    /// partitions one after the other would break; an operator that reads every
    /// partition of its input, or another read mode, does not coalesce either.
    #[test]
    fn only_plans_that_work_partition_by_partition_coalesce() {
        let schema = Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false)]));
        let reader = |mode, orderings| -> Arc<dyn ExecutionPlan> {
            let presented = crate::shuffle::Presented {
                orderings,
                ..Default::default()
            };
            Arc::new(
                ShuffleReaderExec::presenting(0, mode, 4, Arc::clone(&schema), presented).unwrap(),
            )
        };
        let key = Arc::new(Column::new("k", 0)) as Arc<dyn PhysicalExpr>;
        let sorted = LexOrdering::new([PhysicalSortExpr::new_default(key)]).unwrap();
        assert!(partitionwise(&reader(ReadMode::Gather, vec![]), 4));
        assert!(!partitionwise(&reader(ReadMode::Gather, vec![sorted]), 4));
        assert!(!partitionwise(&reader(ReadMode::PerMap, vec![]), 4));
        assert!(!partitionwise(&reader(ReadMode::Gather, vec![]), 3));
        let gathered = Arc::new(CoalescePartitionsExec::new(reader(
            ReadMode::Gather,
            vec![],
        )));
        assert!(!partitionwise(&(gathered as Arc<dyn ExecutionPlan>), 1));
    }
}
