//! SQL functions whose results drove bounds.
//!
//! DataFusion's memory accounting covers operators (sorts, joins, aggregations), not
//! the values expressions compute: `repeat(l_comment, 20000)` makes half a megabyte a
//! row, gigabytes a batch, and would take a worker far past its budget before anything
//! could spill. drove registers bounded versions under the same names, on the
//! coordinator (where constants are folded) and on the workers (where plans are
//! decoded by function name), so one call can never make more than
//! [`FUNCTION_RESULT_MAX_BYTES`] at once: past it the query fails, naming the function.
//!
//! The table functions `generate_series` and `range` are wrapped too, so that their
//! scans survive the trip to a worker (see [`GeneratorScan`]).

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::context::SessionContext;
use datafusion::functions::string::repeat::RepeatFunc;
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

/// The most one call of a bounded function may produce for one batch.
pub const FUNCTION_RESULT_MAX_BYTES: u64 = 64 << 20;

/// The bounded functions, to register over DataFusion's own.
pub fn bounded() -> Vec<Arc<ScalarUDF>> {
    vec![Arc::new(ScalarUDF::new_from_impl(BoundedRepeat::default()))]
}

/// Every scalar function drove registers over DataFusion's, on the coordinator and on
/// the workers: the bounded ones and the scalar subquery check
/// ([`crate::subquery::SingleValue`]).
pub fn udfs() -> Vec<Arc<ScalarUDF>> {
    let mut all = bounded();
    all.push(Arc::new(ScalarUDF::new_from_impl(
        crate::subquery::SingleValue::default(),
    )));
    all
}

/// Registers `generate_series` and `range` over DataFusion's own, as [`GeneratorScan`]s.
/// Only the planner needs them: the plans it makes hold the scans themselves.
pub fn register_table_functions(ctx: &SessionContext) {
    for name in ["generate_series", "range"] {
        if let Ok(own) = ctx.table_function(name) {
            let inner = Arc::clone(own.function());
            ctx.register_udtf(name, Arc::new(GeneratorFunction { inner }));
        }
    }
}

/// A table function whose tables are [`GeneratorScan`]s.
#[derive(Debug)]
struct GeneratorFunction {
    inner: Arc<dyn TableFunctionImpl>,
}

impl TableFunctionImpl for GeneratorFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let inner = self.inner.call_with_args(args)?;
        Ok(Arc::new(GeneratorScan { inner }))
    }
}

/// A generator's table (`generate_series(1, 10)`) whose scan makes every column and
/// leaves the choice of columns to a projection above it. DataFusion's plan encoding
/// keeps a generator scan's projected schema but not its projection, so a worker would
/// make the column under a schema without it: `SELECT count(*) FROM
/// generate_series(1, 10)` failed with "number of columns(1) must match number of
/// fields(0)".
#[derive(Debug)]
struct GeneratorScan {
    inner: Arc<dyn TableProvider>,
}

#[async_trait::async_trait]
impl TableProvider for GeneratorScan {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let scan = self.inner.scan(state, None, filters, limit).await?;
        crate::cache::project(scan, projection)
    }
}

/// `repeat(str, n)` that refuses to make more than [`FUNCTION_RESULT_MAX_BYTES`].
#[derive(Debug, Default, PartialEq, Eq, Hash)]
struct BoundedRepeat {
    inner: RepeatFunc,
}

impl ScalarUDFImpl for BoundedRepeat {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if let [text, times] = args.args.as_slice() {
            let bytes = repeat_bytes(text, times, args.number_rows)?;
            if bytes > FUNCTION_RESULT_MAX_BYTES {
                return Err(DataFusionError::Execution(format!(
                    "repeat() would make {} for {} rows, more than the {} one function call may produce; repeat fewer times, or fewer or shorter strings",
                    drove_core::human_bytes(bytes),
                    args.number_rows,
                    drove_core::human_bytes(FUNCTION_RESULT_MAX_BYTES)
                )));
            }
        }
        self.inner.invoke_with_args(args)
    }
}

/// What `repeat(text, times)` makes over `rows` rows: each string's length times its
/// count, summed.
fn repeat_bytes(text: &ColumnarValue, times: &ColumnarValue, rows: usize) -> Result<u64> {
    let lengths: Vec<u64> = match text {
        ColumnarValue::Scalar(s) => {
            let length = s.try_as_str().flatten().map_or(0, str::len) as u64;
            vec![
                length;
                if matches!(times, ColumnarValue::Scalar(_)) {
                    1
                } else {
                    rows
                }
            ]
        }
        ColumnarValue::Array(a) => string_lengths(a.as_ref())?,
    };
    let count = |i: usize| -> i64 {
        match times {
            ColumnarValue::Scalar(ScalarValue::Int64(n)) => n.unwrap_or(0),
            ColumnarValue::Array(a) => a
                .as_any()
                .downcast_ref::<Int64Array>()
                .filter(|a| a.is_valid(i))
                .map_or(0, |a| a.value(i)),
            ColumnarValue::Scalar(_) => 0,
        }
    };
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(i, length)| length.saturating_mul(count(i).max(0) as u64))
        .fold(0u64, u64::saturating_add))
}

fn string_lengths(array: &dyn Array) -> Result<Vec<u64>> {
    let length = |valid: bool, len: usize| if valid { len as u64 } else { 0 };
    Ok(match array.data_type() {
        DataType::Utf8 => {
            let a = array.as_string::<i32>();
            (0..a.len())
                .map(|i| length(a.is_valid(i), a.value_length(i) as usize))
                .collect()
        }
        DataType::LargeUtf8 => {
            let a = array.as_string::<i64>();
            (0..a.len())
                .map(|i| length(a.is_valid(i), a.value_length(i) as usize))
                .collect()
        }
        DataType::Utf8View => {
            let a = array.as_string_view();
            (0..a.len())
                .map(|i| length(a.is_valid(i), a.value(i).len()))
                .collect()
        }
        other => {
            return Err(DataFusionError::Internal(format!(
                "repeat() got a {other} string argument"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    async fn run(ctx: &SessionContext, sql: &str) -> Result<Vec<arrow::record_batch::RecordBatch>> {
        ctx.sql(sql).await?.collect().await
    }

    #[tokio::test]
    async fn repeat_answers_as_before_within_the_bound_and_refuses_beyond_it() {
        let ctx = SessionContext::new();
        for udf in bounded() {
            ctx.register_udf(udf.as_ref().clone());
        }
        let small = run(
            &ctx,
            "SELECT repeat(s, n) AS r FROM (VALUES ('ab', 3), ('c', 0), (NULL, 2), ('d', -1)) t(s, n)",
        )
        .await
        .unwrap();
        let expected = SessionContext::new()
            .sql("SELECT repeat(s, n) AS r FROM (VALUES ('ab', 3), ('c', 0), (NULL, 2), ('d', -1)) t(s, n)")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        assert_eq!(small, expected);

        // 1,000 strings of 10 bytes, 10,000 times each: 100 MB in one batch.
        let e = run(
            &ctx,
            "SELECT length(repeat('0123456789' || CAST(value AS VARCHAR), 10000)) FROM generate_series(1, 1000)",
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("repeat() would make"), "{e}");
        // A constant is refused the same way, while it is folded.
        let e = run(&ctx, "SELECT repeat('x', 100000000) AS s")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("more than the 64.0 MiB"), "{e}");
    }
}
