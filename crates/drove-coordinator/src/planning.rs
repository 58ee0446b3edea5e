//! From a submitted job (SQL text or a logical plan) to stages ready to launch.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::format::ExplainFormat;
use datafusion::error::DataFusionError;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{
    DdlStatement, Explain, LogicalPlan, PlanType, StringifiedPlan, ToStringifiedPlan,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::explain::ExplainExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::DFParser;
use drove_core::access::Identity;
use drove_exec::cache::{CacheCodec, CachedTable};
use drove_exec::confine::AllowedPaths;
use drove_exec::planner::{self, OutputMode, Stage};
use drove_exec::scan_split;
use drove_exec::shuffle::schema_to_bytes;
use drove_exec::stores::DroveFs;
use drove_exec::tables::{self, TableSpec};
use drove_exec::{codec, session};
use tracing::debug;

use crate::{Error, Result};

/// How a submitted job runs, besides what it computes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// It runs on without a client watching it (`drove sql --detach`).
    pub detached: bool,
    /// Among its tenant's jobs, higher goes first.
    pub priority: i32,
    /// The client's id for the submission (0 for none): sent again, it gets the job
    /// the first one made.
    pub request: u64,
}

/// What a client asked to run.
#[derive(Debug, Clone)]
pub enum Query {
    Sql(String),
    LogicalPlan(Vec<u8>),
    /// A physical plan with drove's own nodes (a MapReduce job); its code must be
    /// registered in this binary too.
    PhysicalPlan(Vec<u8>),
}

/// A stage, encoded for the workers.
#[derive(Debug, Clone)]
pub struct PlannedStage {
    pub id: u32,
    pub plan: Arc<Vec<u8>>,
    pub output: OutputMode,
    pub tasks: u32,
    pub depends_on: Vec<u32>,
    pub root: String,
    /// The stage's plan as text, for people.
    pub plan_text: String,
    /// The cached table whose blocks this stage writes.
    pub cache: Option<u64>,
    /// For a stage of a cached table's lineage: the table and the stage's id in the
    /// job that cached it.
    pub origin: Option<(u64, u32)>,
    pub local_input: Option<u32>,
    /// See [`drove_exec::planner::Stage::coalesce`].
    pub coalesce: bool,
    /// The workers each task prefers, or none (see
    /// [`drove_core::scheduler::StageSpec::preferred`]).
    pub preferred: Vec<Vec<u64>>,
}

/// A job ready to schedule.
#[derive(Debug, Clone, Default)]
pub struct PlannedJob {
    pub stages: Vec<PlannedStage>,
    /// DataFusion's physical plan before it was cut, as text.
    pub physical_plan: String,
    pub settings: HashMap<String, String>,
    pub result_schema: Vec<u8>,
    /// The stages as plans: a cached table keeps them as its lineage.
    pub lineage: Vec<Stage>,
}

/// The cached tables a job may read, and the stages that computed each.
#[derive(Debug, Clone, Default)]
pub struct Caches {
    pub tables: Vec<CachedTable>,
    pub lineage: HashMap<u64, Vec<Stage>>,
}

/// What one job may take: `--stage-partitions-max` and `--job-tasks-max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// Tasks (partitions) in one stage.
    pub stage_partitions_max: usize,
    /// Tasks in all of a job's stages.
    pub job_tasks_max: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        Self {
            stage_partitions_max: 4096,
            job_tasks_max: 100_000,
        }
    }
}

impl JobLimits {
    /// Refuses a job whose stages are larger than the limits, naming the limit, the
    /// flag that raises it and the setting that made the stage so large.
    fn check(&self, stages: &[Stage]) -> Result<()> {
        if let Some(stage) = stages.iter().find(|s| s.tasks > self.stage_partitions_max) {
            return Err(Error::User(format!(
                "stage {} would run {} tasks, more than the {} partitions a stage may have; lower datafusion.execution.target_partitions (or the job's reducers), or start the coordinator with a larger --stage-partitions-max",
                stage.id, stage.tasks, self.stage_partitions_max
            )));
        }
        let tasks: usize = stages.iter().map(|s| s.tasks).sum();
        if tasks > self.job_tasks_max {
            return Err(Error::User(format!(
                "the job would run {tasks} tasks in {} stages, more than the {} a job may have; lower datafusion.execution.target_partitions, or start the coordinator with a larger --job-tasks-max",
                stages.len(),
                self.job_tasks_max
            )));
        }
        Ok(())
    }
}

/// What a job may do: how large it may be, and where it may read and write (all of
/// the machine the coordinator and workers can reach, without `--allow-path`).
#[derive(Debug, Clone)]
pub struct JobRules {
    pub limits: JobLimits,
    pub allowed_paths: Option<AllowedPaths>,
    /// Who submitted the job: a tenant reads only its own drove fs paths.
    pub who: Identity,
    /// drove fs, as the job's planning reads it.
    pub fs: DroveFs,
}

impl JobRules {
    /// Refuses `path` unless the job may read or write it.
    fn check_path(&self, path: &str) -> Result<()> {
        if path.starts_with("drove://") {
            let path = drove_core::fs::normalize(path).map_err(Error::User)?;
            return Ok(drove_core::fs::check_tenant_path(&self.who, &path)?);
        }
        match &self.allowed_paths {
            Some(allowed) => allowed.check(path).map_err(Error::User),
            None => Ok(()),
        }
    }
}

/// Stack for planning. DataFusion's analysis, optimization and physical planning
/// recurse over expression trees, and SQL nests them as deep as its author likes (a
/// 3,000-term sum is a tree 3,000 deep); a runtime thread's 2 MiB would overflow and
/// abort the whole coordinator. The stack is reserved address space, touched (and so
/// resident) only as deep as planning goes.
const PLAN_STACK_BYTES: usize = 512 << 20;

/// The largest encoded stage plan: a task message carries it with its inputs' places
/// and must stay within [`drove_proto::MAX_MESSAGE_BYTES`].
const STAGE_PLAN_MAX_BYTES: usize = drove_proto::MAX_MESSAGE_BYTES / 2;

/// Jobs planned at once; more wait for a turn.
const PLANNING_MAX: usize = 8;

static PLANNING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(PLANNING_MAX);

/// [`plan`], on a thread of its own with a deep stack. A panic in planning becomes
/// this job's error; the coordinator goes on.
pub async fn plan_isolated(
    query: Query,
    tables: Vec<TableSpec>,
    caches: Caches,
    cache_as: Option<u64>,
    target_partitions: usize,
    task_memory: Option<u64>,
    rules: JobRules,
) -> Result<PlannedJob> {
    // Held by the planning thread: a client that goes away frees no turn while its
    // plan is still being made.
    let turn = PLANNING
        .acquire()
        .await
        .map_err(|_| Error::Internal("the planning queue is closed".into()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("drove-plan".into())
        .stack_size(PLAN_STACK_BYTES)
        .spawn(move || {
            let _turn = turn;
            let planned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| {
                        Error::Internal(format!("cannot start a planning runtime: {e}"))
                    })?;
                runtime.block_on(plan(
                    &query,
                    &tables,
                    &caches,
                    cache_as,
                    target_partitions,
                    task_memory,
                    &rules,
                ))
            }))
            .unwrap_or_else(|panic| {
                Err(Error::Internal(format!(
                    "planning the job panicked: {}",
                    drove_core::panic_message(panic.as_ref())
                )))
            });
            let _ = tx.send(planned);
        })
        .map_err(|e| Error::Internal(format!("cannot start a planning thread: {e}")))?;
    rx.await
        .map_err(|_| Error::Internal("the planning thread ended without an answer".into()))?
}

/// Plans a job: registers its tables and the cached ones, runs its DDL statements,
/// plans the last query and cuts it into stages. With `cache_as`, the final stage
/// writes the blocks of that cached table. `task_memory` is the smallest share of
/// operator memory a task gets on the cluster's workers, if known: it bounds the
/// joins broadcast.
pub async fn plan(
    query: &Query,
    tables: &[TableSpec],
    caches: &Caches,
    cache_as: Option<u64>,
    target_partitions: usize,
    task_memory: Option<u64>,
    rules: &JobRules,
) -> Result<PlannedJob> {
    let mut planned =
        plan_stages(query, tables, caches, target_partitions, task_memory, rules).await?;
    for (stage, lineage) in planned.stages.iter_mut().zip(&planned.lineage) {
        let (tasks, namespace) = (stage.tasks as usize, rules.fs.namespace.as_ref());
        stage.preferred =
            drove_exec::locality::preferred_workers(&lineage.plan, tasks, namespace).await;
    }
    if let Some(cache) = cache_as
        && let (Some(last), Some(stage)) = (planned.lineage.last_mut(), planned.stages.last_mut())
    {
        last.cache = Some(cache);
        stage.cache = Some(cache);
    }
    Ok(planned)
}

async fn plan_stages(
    query: &Query,
    tables: &[TableSpec],
    caches: &Caches,
    target_partitions: usize,
    task_memory: Option<u64>,
    rules: &JobRules,
) -> Result<PlannedJob> {
    let mut settings = session::settings(target_partitions, task_memory);
    let base = session::config(&settings)?;
    let stores = drove_exec::stores::Stores::new(Some(rules.fs.clone()));
    let runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(stores))
        .build_arc()?;
    let ctx = SessionContext::new_with_config_rt(base.clone(), runtime);
    for udf in drove_exec::functions::udfs() {
        ctx.register_udf(udf.as_ref().clone());
    }
    drove_exec::functions::register_table_functions(&ctx);
    let mut names = Vec::new();
    for table in tables {
        if names.contains(&table.name) {
            return Err(Error::User(format!(
                "table '{}' is registered twice; give each table one name",
                table.name
            )));
        }
        rules.check_path(&table.path.display().to_string())?;
        tables::register(&ctx, table).await?;
        names.push(table.name.clone());
    }
    for table in &caches.tables {
        if names.contains(&table.name) {
            return Err(Error::User(format!(
                "table '{}' is registered and cached under the same name; rename one, or UNCACHE TABLE {} first",
                table.name, table.name
            )));
        }
        ctx.register_table(table.name.as_str(), Arc::new(table.clone()))?;
        names.push(table.name.clone());
    }
    let logical = match query {
        Query::Sql(sql) => plan_sql(&ctx, sql, &names, rules).await?,
        Query::LogicalPlan(bytes) => codec::logical_plan_from_bytes(
            bytes,
            &ctx.task_ctx(),
            &CacheCodec::new(caches.tables.iter().cloned()),
        )
        .map_err(|e| Error::User(format!("the submitted logical plan cannot be read: {e}")))?,
        Query::PhysicalPlan(bytes) => {
            let physical = codec::plan_from_bytes(bytes, &ctx.task_ctx()).map_err(|e| match e {
                drove_exec::Error::DataFusion(DataFusionError::External(inner)) => {
                    Error::User(inner.to_string())
                }
                other => Error::from(other),
            })?;
            check_plan_paths(&physical, rules)?;
            return distribute(physical, settings, caches, rules.limits);
        }
    };
    // What the query's own statements SET (a time zone, say) travels with the job, so
    // that the workers compute as the plan was planned.
    settings.extend(changed_settings(&ctx, &base));
    let logical = drove_exec::subquery::check_scalar_subqueries(logical)?;
    let physical = match &logical {
        LogicalPlan::Explain(explain)
            if !explain.verbose && explain.explain_format == ExplainFormat::Indent =>
        {
            // EXPLAIN shows the plan drove runs: the stages the query's plan is cut into.
            let LogicalPlan::Explain(explain) = ctx.state().optimize(&logical)? else {
                return Err(Error::Internal("an optimized EXPLAIN is no EXPLAIN".into()));
            };
            let query = physical_plan(&ctx, &explain.plan, &names).await?;
            let distributed =
                planner::split_with_caches(query, &|cache| caches.lineage.get(&cache).cloned())?;
            explained(&explain, distributed.describe())
        }
        _ => physical_plan(&ctx, &logical, &names).await?,
    };
    check_plan_paths(&physical, rules)?;
    distribute(physical, settings, caches, rules.limits)
}

/// Refuses a plan that reads or writes outside the allowed directories, or another
/// tenant's drove fs files.
fn check_plan_paths(plan: &Arc<dyn ExecutionPlan>, rules: &JobRules) -> Result<()> {
    let mut drove = Vec::new();
    let mut local = Vec::new();
    for path in drove_exec::confine::named_paths(plan) {
        // A path that is no URL drove reads is refused before it is sorted.
        match drove_exec::stores::url_of(&path).map_err(Error::User)? {
            Some(url) if url.scheme() == drove_exec::stores::SCHEME => drove.push(path),
            _ => local.push(path),
        }
    }
    drove.iter().try_for_each(|p| rules.check_path(p))?;
    match &rules.allowed_paths {
        Some(allowed) => local
            .iter()
            .try_for_each(|p| allowed.check(p))
            .map_err(Error::User),
        None => Ok(()),
    }
}

/// The physical plan of `logical`, its split Parquet files cut at even rows (see
/// [`scan_split::balance`]) and made fit for tasks (see [`planner::prepare`]).
async fn physical_plan(
    ctx: &SessionContext,
    logical: &LogicalPlan,
    names: &[String],
) -> Result<Arc<dyn ExecutionPlan>> {
    let physical = ctx
        .state()
        .create_physical_plan(logical)
        .await
        .map_err(|e| explain_missing_table(e, names))?;
    let physical = scan_split::balance(physical, &ctx.runtime_env()).await?;
    Ok(planner::prepare(physical)?)
}

/// EXPLAIN's answer: DataFusion's optimized logical plan, and as the physical plan
/// `stages`.
fn explained(explain: &Explain, stages: String) -> Arc<dyn ExecutionPlan> {
    let plans = vec![
        explain.plan.to_stringified(PlanType::FinalLogicalPlan),
        StringifiedPlan::new(PlanType::FinalPhysicalPlan, stages),
    ];
    Arc::new(ExplainExec::new(
        Arc::clone(explain.schema.inner()),
        plans,
        false,
    ))
}

/// The options of `ctx`'s session that differ from `base`, the config it was made
/// with: what the submitted statements changed with `SET`.
fn changed_settings(ctx: &SessionContext, base: &SessionConfig) -> Vec<(String, String)> {
    let before: HashMap<String, Option<String>> = base
        .options()
        .entries()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    ctx.state()
        .config()
        .options()
        .entries()
        .into_iter()
        .filter_map(|e| {
            let value = e.value?;
            (before.get(&e.key) != Some(&Some(value.clone()))).then_some((e.key, value))
        })
        .collect()
}

/// Cuts a physical plan into stages and encodes them for the workers.
fn distribute(
    physical: Arc<dyn ExecutionPlan>,
    settings: HashMap<String, String>,
    caches: &Caches,
    limits: JobLimits,
) -> Result<PlannedJob> {
    let physical_plan = datafusion::physical_plan::displayable(physical.as_ref())
        .indent(false)
        .to_string();
    debug!("physical plan:\n{physical_plan}");
    let result_schema = schema_to_bytes(&physical.schema())?;
    let distributed =
        planner::split_with_caches(physical, &|cache| caches.lineage.get(&cache).cloned())?;
    limits.check(&distributed.stages)?;
    let stages = distributed
        .stages
        .iter()
        .map(|s| {
            let plan = codec::plan_to_bytes(Arc::clone(&s.plan))?;
            if plan.len() > STAGE_PLAN_MAX_BYTES {
                return Err(Error::User(format!(
                    "stage {}'s plan is {} encoded, over the {} a task message may carry; the query carries too much data in its text or constants: read large values from a table instead",
                    s.id,
                    drove_core::human_bytes(plan.len() as u64),
                    drove_core::human_bytes(STAGE_PLAN_MAX_BYTES as u64)
                )));
            }
            Ok(PlannedStage {
                id: s.id,
                plan: Arc::new(plan),
                output: s.output,
                tasks: s.tasks as u32,
                depends_on: s.depends_on.clone(),
                root: s.root_name(),
                plan_text: datafusion::physical_plan::displayable(s.plan.as_ref())
                    .indent(false)
                    .to_string(),
                cache: s.cache,
                origin: s.origin,
                local_input: s.local_input,
                coalesce: s.coalesce,
                preferred: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(PlannedJob {
        stages,
        physical_plan,
        settings,
        result_schema,
        lineage: distributed.stages,
    })
}

/// A stage's plan from the bytes it was planned into, as a cached table's lineage is
/// taken back after a restart.
pub fn decode_stage_plan(bytes: &[u8]) -> Result<Arc<dyn ExecutionPlan>> {
    let ctx = SessionContext::new();
    for udf in drove_exec::functions::udfs() {
        ctx.register_udf(udf.as_ref().clone());
    }
    Ok(codec::plan_from_bytes(bytes, &ctx.task_ctx())?)
}

/// Runs every statement but queries on the coordinator's session (CREATE VIEW, SET, ...)
/// and returns the plan of the last query.
async fn plan_sql(
    ctx: &SessionContext,
    sql: &str,
    tables: &[String],
    rules: &JobRules,
) -> Result<LogicalPlan> {
    let statements = DFParser::parse_sql(sql)
        .map_err(|e| Error::User(format!("the SQL does not parse: {e}")))?;
    let mut last_query = None;
    for statement in statements {
        let plan = ctx
            .state()
            .statement_to_plan(statement)
            .await
            .map_err(|e| explain_missing_table(e, tables))?;
        match plan {
            LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => {
                // A table's files are listed, and read for its schema, right here.
                if let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(table)) = &plan {
                    for location in &table.locations {
                        rules.check_path(location)?;
                    }
                }
                ctx.execute_logical_plan(plan)
                    .await
                    .map_err(|e| explain_missing_table(e, tables))?;
            }
            LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => {
                return Err(Error::User(
                    "INSERT, UPDATE, DELETE and COPY are not supported yet; write queries (SELECT) and views".into(),
                ));
            }
            query => last_query = Some(query),
        }
    }
    last_query
        .ok_or_else(|| Error::User("the SQL has no query to run; add a SELECT statement".into()))
}

/// Adds the registered tables to DataFusion's "table not found" message.
fn explain_missing_table(e: DataFusionError, tables: &[String]) -> Error {
    let message = e.to_string();
    if message.contains("not found") && message.contains("table") {
        let known = if tables.is_empty() {
            "none (register tables with --table NAME=PATH or --tpch DIR)".to_string()
        } else {
            tables.join(", ")
        };
        Error::User(format!(
            "{}; registered tables: {known}",
            e.strip_backtrace()
        ))
    } else {
        Error::from(e)
    }
}
