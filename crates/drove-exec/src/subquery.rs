//! Scalar subqueries that return several rows fail, as SQL requires.
//!
//! drove runs an uncorrelated scalar subquery as a join (DataFusion's optimizer rewrites
//! it so), because DataFusion's physical `ScalarSubqueryExec` runs the subquery inside
//! the process that runs the outer plan. A join, though, answers a subquery that
//! returns several rows with one outer row for each of them, where SQL requires an
//! error. So before planning, every uncorrelated scalar subquery that could return more
//! than one row is wrapped: an aggregate takes its value and counts its rows, and
//! [`SingleValue`] fails the query when the count is above one. The wrapped subquery
//! returns exactly one row (NULL when the subquery returns none), so the join is exact.
//! Correlated scalar subqueries need nothing: DataFusion joins them on an aggregate
//! grouped by the correlated columns, one row per outer key.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result, ScalarValue, exec_err};
use datafusion::functions_aggregate::expr_fn::{count, first_value};
use datafusion::logical_expr::{
    ColumnarValue, Expr, FetchType, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Subquery, Volatility, lit,
};

/// The name [`SingleValue`] is registered under.
pub const SINGLE_VALUE: &str = "drove_scalar_subquery_value";

/// `plan` with every uncorrelated scalar subquery that could return several rows
/// wrapped so that it fails when it does (see the module's documentation).
pub fn check_scalar_subqueries(plan: LogicalPlan) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|node| {
        node.map_expressions(|expr| {
            expr.transform_up(|e| match e {
                Expr::ScalarSubquery(s)
                    if s.outer_ref_columns.is_empty() && !at_most_one_row(&s.subquery) =>
                {
                    let subquery = Arc::new(single_row(s.subquery.as_ref().clone())?);
                    Ok(Transformed::yes(Expr::ScalarSubquery(Subquery {
                        subquery,
                        ..s
                    })))
                }
                other => Ok(Transformed::no(other)),
            })
        })
    })
    .map(|t| t.data)
}

/// Whether `plan` returns at most one row whatever its input: an aggregate without
/// groups or a LIMIT of at most 1, under operators that do not add rows.
fn at_most_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::Limit(l) => {
            matches!(l.get_fetch_type(), Ok(FetchType::Literal(Some(n))) if n <= 1)
        }
        LogicalPlan::Projection(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_) => plan.inputs().iter().all(|p| at_most_one_row(p)),
        _ => false,
    }
}

/// `plan`, a scalar subquery's single column, as one row: its value checked by
/// [`SingleValue`] against the number of rows it had, under the column's own name (the
/// outer query names the subquery's value after it).
fn single_row(plan: LogicalPlan) -> Result<LogicalPlan> {
    let (qualifier, field) = plan.schema().qualified_field(0);
    let name = field.name().clone();
    let value = Expr::Column(Column::new(qualifier.cloned(), &name));
    let checked = ScalarUDF::new_from_impl(SingleValue::default()).call(vec![
        Expr::Column(Column::from_name("rows")),
        Expr::Column(Column::from_name("value")),
    ]);
    LogicalPlanBuilder::from(plan)
        .aggregate(
            Vec::<Expr>::new(),
            vec![
                first_value(value, vec![]).alias("value"),
                count(lit(1)).alias("rows"),
            ],
        )?
        .project(vec![checked.alias(name)])?
        .build()
}

/// `drove_scalar_subquery_value(rows, value)`: `value`, or an error when `rows` is
/// above one.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct SingleValue {
    signature: Signature,
}

impl Default for SingleValue {
    fn default() -> Self {
        Self {
            signature: Signature::any(2, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for SingleValue {
    fn name(&self) -> &str {
        SINGLE_VALUE
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(args[1].clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = match &args.args[0] {
            ColumnarValue::Array(a) if a.data_type() == &DataType::Int64 => a
                .as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .max()
                .unwrap_or(0),
            ColumnarValue::Scalar(ScalarValue::Int64(n)) => n.unwrap_or(0),
            ColumnarValue::Scalar(s) => {
                return exec_err!("{SINGLE_VALUE} counts rows as Int64, not {}", s.data_type());
            }
            ColumnarValue::Array(a) => {
                return exec_err!("{SINGLE_VALUE} counts rows as Int64, not {}", a.data_type());
            }
        };
        if rows > 1 {
            return exec_err!(
                "a scalar subquery returned {rows} rows, and a subquery used as a value must return at most one; add a WHERE clause, an aggregate or LIMIT 1 to it"
            );
        }
        Ok(args.args[1].clone())
    }
}
