//! Cached tables as plans see them.
//!
//! `CACHE TABLE name AS query` (or `DataFrame::cache`) runs the query and keeps its
//! final stage's blocks on the workers. Later queries name the table like any other;
//! its [`CachedTable`] provider plans a [`CachedScanExec`] leaf, which the distributed
//! planner replaces by the stages that computed the table (their lineage) and a reader
//! of the cached stage. The scheduler starts those stages done, so only lost
//! partitions are ever computed again.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::expressions::Column;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion_proto::logical_plan::{DefaultLogicalExtensionCodec, LogicalExtensionCodec};

/// A cached table: its name, schema and number of partitions.
#[derive(Debug, Clone)]
pub struct CachedTable {
    pub id: u64,
    pub name: String,
    pub schema: SchemaRef,
    pub partitions: usize,
}

#[async_trait::async_trait]
impl TableProvider for CachedTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let scan: Arc<dyn ExecutionPlan> = Arc::new(CachedScanExec::new(
            self.id,
            self.partitions,
            Arc::clone(&self.schema),
        ));
        project(scan, projection)
    }
}

/// A scan's columns at a table provider's `projection` (all of them when there is
/// none), by a projection above the scan: for scans whose own node cannot carry the
/// projection to a worker (cached tables, and the generators of [`crate::functions`]).
pub(crate) fn project(
    plan: Arc<dyn ExecutionPlan>,
    projection: Option<&Vec<usize>>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let Some(projection) = projection else {
        return Ok(plan);
    };
    let schema = plan.schema();
    let exprs: Vec<(Arc<dyn PhysicalExpr>, String)> = projection
        .iter()
        .map(|i| {
            let name = schema.field(*i).name().clone();
            (
                Arc::new(Column::new(&name, *i)) as Arc<dyn PhysicalExpr>,
                name,
            )
        })
        .collect();
    Ok(Arc::new(ProjectionExec::try_new(exprs, plan)?))
}

/// Stands for a cached table's partitions until the distributed planner replaces it;
/// it cannot run on its own.
#[derive(Debug)]
pub struct CachedScanExec {
    cache: u64,
    properties: Arc<PlanProperties>,
}

impl CachedScanExec {
    pub fn new(cache: u64, partitions: usize, schema: SchemaRef) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            cache,
            properties: Arc::new(properties),
        }
    }

    pub fn cache(&self) -> u64 {
        self.cache
    }

    pub fn partitions(&self) -> usize {
        self.properties.partitioning.partition_count()
    }
}

impl DisplayAs for CachedScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "CachedScanExec: cache={}, partitions={}",
            self.cache,
            self.partitions()
        )
    }
}

#[allow(deprecated)] // `with_new_children` must still be implemented in DataFusion 55.
impl ExecutionPlan for CachedScanExec {
    fn name(&self) -> &str {
        "CachedScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "CachedScanExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "CachedScanExec runs only after the distributed planner replaced it".into(),
        ))
    }
}

/// Carries cached tables through datafusion-proto logical plans by name: the client
/// encodes a scan of a cached table as its name, and the coordinator decodes the name
/// into its own [`CachedTable`]. Everything else goes to DataFusion's default codec.
#[derive(Debug)]
pub struct CacheCodec {
    tables: HashMap<String, CachedTable>,
    default: DefaultLogicalExtensionCodec,
}

impl CacheCodec {
    /// A codec that decodes the names of `tables`.
    pub fn new(tables: impl IntoIterator<Item = CachedTable>) -> Self {
        Self {
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            default: DefaultLogicalExtensionCodec {},
        }
    }
}

impl LogicalExtensionCodec for CacheCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        self.default.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        self.default.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        _schema: SchemaRef,
        _ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let name = String::from_utf8_lossy(buf);
        match self.tables.get(name.as_ref()) {
            Some(table) => Ok(Arc::new(table.clone())),
            None => Err(DataFusionError::Plan(format!(
                "table '{table_ref}' is not cached (any more); cache it again with CACHE TABLE {name} AS ..."
            ))),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        match node.downcast_ref::<CachedTable>() {
            Some(table) => {
                buf.extend_from_slice(table.name.as_bytes());
                Ok(())
            }
            None => self.default.try_encode_table_provider(table_ref, node, buf),
        }
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.default.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> DfResult<()> {
        self.default.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(
        &self,
        name: &str,
        buf: &[u8],
    ) -> DfResult<Arc<datafusion::logical_expr::ScalarUDF>> {
        crate::python_udf::decode_udf(name, buf)
    }

    fn try_encode_udf(
        &self,
        node: &datafusion::logical_expr::ScalarUDF,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        crate::python_udf::encode_udf(node, buf)
    }
}
