//! A stage's plan as a worker keeps it between the stage's tasks: decoded once, by the
//! first of them to run there, and handed to each task as a copy whose execution state
//! (metrics, a join's build side, a scan's shared work) is the task's own. A scan's
//! metrics are the exception: they live in its data source, which the copies share, so
//! they add up over the stage's tasks on the worker.
//!
//! Decoding costs time in proportion to the plan, which lists every file group of a
//! stage's scans: decoding it in every task made a stage of n tasks cost O(n^2).

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::DynamicFilterPhysicalExpr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use tokio::sync::OnceCell;

use crate::{Result, codec};

/// One stage's encoded plan, and the plan decoded from it once.
#[derive(Debug)]
pub struct StagePlan {
    bytes: Vec<u8>,
    /// `None` if copies cannot be made safely (see [`Self::instance`]).
    decoded: OnceCell<Option<Arc<dyn ExecutionPlan>>>,
}

impl StagePlan {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            bytes,
            decoded: OnceCell::new(),
        }
    }

    /// The plan for one task: a copy of the decoded plan with its execution state
    /// reset, sharing what does not change (file lists, expressions, schemas). A plan
    /// that links operators through a dynamic filter (a join or sort that narrows a
    /// scan as it runs) would keep that link only between the original operators, so
    /// such a plan is decoded anew for every task.
    pub async fn instance(&self, ctx: &TaskContext) -> Result<Arc<dyn ExecutionPlan>> {
        let shared = self
            .decoded
            .get_or_try_init(|| async {
                let plan = codec::plan_from_bytes(&self.bytes, ctx)?;
                Ok::<_, crate::Error>((!links_dynamic_filters(&plan)).then_some(plan))
            })
            .await?;
        match shared {
            Some(plan) => Ok(reset_plan_states(Arc::clone(plan))?),
            None => codec::plan_from_bytes(&self.bytes, ctx),
        }
    }
}

/// Whether any operator of `plan` uses a dynamic filter (or cannot tell).
fn links_dynamic_filters(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.exists(|node| {
        let mut found = false;
        node.apply_expressions(&mut |expr| {
            found = expr.exists(|e| Ok(e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some()))?;
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        Ok(found)
    })
    .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use datafusion::physical_plan::collect_partitioned;
    use datafusion::prelude::{CsvReadOptions, SessionConfig, SessionContext};

    use super::*;

    async fn plan(dir: &std::path::Path, sql: &str) -> (SessionContext, Arc<dyn ExecutionPlan>) {
        for (i, rows) in ["a\n1\n2\n2\n", "a\n2\n3\n3\n3\n"].iter().enumerate() {
            std::fs::write(dir.join(format!("part-{i}.csv")), rows).unwrap();
        }
        let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
        ctx.register_csv("t", dir.to_str().unwrap(), CsvReadOptions::new())
            .await
            .unwrap();
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        (ctx, plan)
    }

    /// Copies share the decoded scan but not its state: each copy's operators count
    /// only their own rows, and every copy answers as the original does.
    #[tokio::test]
    async fn copies_share_the_decoding_and_keep_their_own_state() {
        let dir = tempfile::tempdir().unwrap();
        let sql = "SELECT a, count(*) AS n FROM t GROUP BY a ORDER BY a";
        let (ctx, original) = plan(dir.path(), sql).await;
        let expected = datafusion::arrow::util::pretty::pretty_format_batches(
            &datafusion::physical_plan::collect(Arc::clone(&original), ctx.task_ctx())
                .await
                .unwrap(),
        )
        .unwrap()
        .to_string();
        let stage = StagePlan::new(codec::plan_to_bytes(original).unwrap());
        let task = ctx.task_ctx();
        let mut scans = Vec::new();
        for _ in 0..3 {
            let copy = stage.instance(&task).await.unwrap();
            let batches = datafusion::physical_plan::collect(Arc::clone(&copy), ctx.task_ctx())
                .await
                .unwrap();
            let shown = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
                .unwrap()
                .to_string();
            assert_eq!(shown, expected);
            // Three distinct values: a copy that shared its operators' metrics with the
            // copies before it would count them again.
            assert_eq!(copy.metrics().and_then(|m| m.output_rows()), Some(3));
            let mut scan = None;
            copy.apply(|node| {
                if let Some(s) =
                    node.downcast_ref::<datafusion::datasource::source::DataSourceExec>()
                {
                    scan = Some(Arc::clone(s.data_source()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
            .unwrap();
            scans.push(scan.expect("a scan"));
        }
        assert!(Arc::ptr_eq(&scans[0], &scans[1]) && Arc::ptr_eq(&scans[1], &scans[2]));
        // Partitions of different copies run at once, as tasks on one worker do.
        let (one, two) = (
            stage.instance(&task).await.unwrap(),
            stage.instance(&task).await.unwrap(),
        );
        let (a, b) = tokio::join!(
            collect_partitioned(one, ctx.task_ctx()),
            collect_partitioned(two, ctx.task_ctx())
        );
        assert_eq!(a.unwrap().len(), b.unwrap().len());
    }

    /// Bytes that are not a plan fail each task that asks, with the decoding error.
    #[tokio::test]
    async fn a_malformed_plan_fails_every_task() {
        let stage = StagePlan::new(vec![0xff; 16]);
        let task = SessionContext::new().task_ctx();
        for _ in 0..2 {
            let err = stage.instance(&task).await.unwrap_err().to_string();
            assert!(err.contains("decod"), "{err}");
        }
    }
}
