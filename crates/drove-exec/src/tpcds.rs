//! The TPC-DS benchmark: its 24 tables, written with `tpcdsgen` and `tpcdsgen-arrow`
//! (a port of the official dsdgen), and its 99 queries.

use arrow::datatypes::SchemaRef;
use tpcdsgen::config::SessionBuilder;
use tpcdsgen_arrow::{
    CallCenterArrow, CatalogPageArrow, CatalogReturnsArrow, CatalogSalesArrow,
    CustomerAddressArrow, CustomerArrow, CustomerDemographicsArrow, DateDimArrow,
    HouseholdDemographicsArrow, IncomeBandArrow, InventoryArrow, ItemArrow, PromotionArrow,
    ReasonArrow, ShipModeArrow, StoreArrow, StoreReturnsArrow, StoreSalesArrow, TimeDimArrow,
    WarehouseArrow, WebPageArrow, WebReturnsArrow, WebSalesArrow, WebSiteArrow,
};

use crate::datagen::{self, BATCH_ROWS, Batches};
use crate::{Error, Result};

/// The 99 TPC-DS queries, `QUERIES[0]` being Q1: qgen's texts with the default
/// substitutions, as they run on single-process DataFusion (q14, q23, q24 and q39 are
/// their first part only).
pub const QUERIES: [&str; 99] = datagen::query_files!("tpcds",
    1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32
    33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61
    62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90
    91 92 93 94 95 96 97 98 99);

/// A table's schema and rows at `scale`.
pub(crate) fn generator(table: &str, scale: f64) -> Result<(SchemaRef, Batches)> {
    let session = SessionBuilder::new()
        .with_scale_factor(scale)
        .build()
        .map_err(|e| Error::User(format!("cannot generate TPC-DS data at scale {scale}: {e}")))?;
    macro_rules! gen_table {
        ($arrow:ident) => {{
            let g = $arrow::new(session).with_batch_size(BATCH_ROWS);
            Ok(($arrow::schema_ref(), Box::new(g) as Batches))
        }};
    }
    match table {
        "call_center" => gen_table!(CallCenterArrow),
        "catalog_page" => gen_table!(CatalogPageArrow),
        "catalog_returns" => gen_table!(CatalogReturnsArrow),
        "catalog_sales" => gen_table!(CatalogSalesArrow),
        "customer" => gen_table!(CustomerArrow),
        "customer_address" => gen_table!(CustomerAddressArrow),
        "customer_demographics" => gen_table!(CustomerDemographicsArrow),
        "date_dim" => gen_table!(DateDimArrow),
        "household_demographics" => gen_table!(HouseholdDemographicsArrow),
        "income_band" => gen_table!(IncomeBandArrow),
        "inventory" => gen_table!(InventoryArrow),
        "item" => gen_table!(ItemArrow),
        "promotion" => gen_table!(PromotionArrow),
        "reason" => gen_table!(ReasonArrow),
        "ship_mode" => gen_table!(ShipModeArrow),
        "store" => gen_table!(StoreArrow),
        "store_returns" => gen_table!(StoreReturnsArrow),
        "store_sales" => gen_table!(StoreSalesArrow),
        "time_dim" => gen_table!(TimeDimArrow),
        "warehouse" => gen_table!(WarehouseArrow),
        "web_page" => gen_table!(WebPageArrow),
        "web_returns" => gen_table!(WebReturnsArrow),
        "web_sales" => gen_table!(WebSalesArrow),
        "web_site" => gen_table!(WebSiteArrow),
        other => Err(Error::Internal(format!("not a TPC-DS table: {other}"))),
    }
}
