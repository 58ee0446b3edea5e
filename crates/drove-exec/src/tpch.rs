//! The TPC-H benchmark: its eight tables, written with `tpchgen` and `tpchgen-arrow`,
//! and its 22 queries.

use arrow::datatypes::SchemaRef;

use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::datagen::{self, BATCH_ROWS, Batches};
use crate::{Error, Result};

/// The 22 TPC-H queries, `QUERIES[0]` being Q1.
pub const QUERIES: [&str; 22] =
    datagen::query_files!("tpch", 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22);

/// A table's schema and rows at `scale`.
pub(crate) fn generator(table: &str, scale: f64) -> Result<(SchemaRef, Batches)> {
    macro_rules! gen_table {
        ($gen:ident, $arrow:ident) => {{
            let g = $arrow::new($gen::new(scale, 1, 1)).with_batch_size(BATCH_ROWS);
            Ok(($arrow::schema_ref(), Box::new(g) as Batches))
        }};
    }
    match table {
        "nation" => gen_table!(NationGenerator, NationArrow),
        "region" => gen_table!(RegionGenerator, RegionArrow),
        "part" => gen_table!(PartGenerator, PartArrow),
        "supplier" => gen_table!(SupplierGenerator, SupplierArrow),
        "partsupp" => gen_table!(PartSuppGenerator, PartSuppArrow),
        "customer" => gen_table!(CustomerGenerator, CustomerArrow),
        "orders" => gen_table!(OrderGenerator, OrderArrow),
        "lineitem" => gen_table!(LineItemGenerator, LineItemArrow),
        other => Err(Error::Internal(format!("not a TPC-H table: {other}"))),
    }
}
