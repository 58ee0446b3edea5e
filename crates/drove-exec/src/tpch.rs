//! Writes the eight TPC-H tables with `tpchgen` and `tpchgen-arrow`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator,
    PartSuppGenerator, RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow,
    SupplierArrow,
};

use crate::tables::{Format, TPCH_TABLES};
use crate::{Error, Result};

/// Rows per Parquet row group: small enough that a table splits into several scan
/// partitions even at small scales.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;
const BATCH_ROWS: usize = 8192;
/// The largest scale factor `drove gen tpch` accepts.
pub const SCALE_MAX: f64 = 1000.0;

/// The 22 TPC-H queries, `QUERIES[0]` being Q1.
pub const QUERIES: [&str; 22] = [
    include_str!("../../../queries/tpch/q1.sql"),
    include_str!("../../../queries/tpch/q2.sql"),
    include_str!("../../../queries/tpch/q3.sql"),
    include_str!("../../../queries/tpch/q4.sql"),
    include_str!("../../../queries/tpch/q5.sql"),
    include_str!("../../../queries/tpch/q6.sql"),
    include_str!("../../../queries/tpch/q7.sql"),
    include_str!("../../../queries/tpch/q8.sql"),
    include_str!("../../../queries/tpch/q9.sql"),
    include_str!("../../../queries/tpch/q10.sql"),
    include_str!("../../../queries/tpch/q11.sql"),
    include_str!("../../../queries/tpch/q12.sql"),
    include_str!("../../../queries/tpch/q13.sql"),
    include_str!("../../../queries/tpch/q14.sql"),
    include_str!("../../../queries/tpch/q15.sql"),
    include_str!("../../../queries/tpch/q16.sql"),
    include_str!("../../../queries/tpch/q17.sql"),
    include_str!("../../../queries/tpch/q18.sql"),
    include_str!("../../../queries/tpch/q19.sql"),
    include_str!("../../../queries/tpch/q20.sql"),
    include_str!("../../../queries/tpch/q21.sql"),
    include_str!("../../../queries/tpch/q22.sql"),
];

/// The text of TPC-H query `n` (1 to 22).
pub fn query(n: usize) -> Result<&'static str> {
    QUERIES.get(n.wrapping_sub(1)).copied().ok_or_else(|| {
        Error::User(format!(
            "there is no TPC-H query {n}; the queries are 1 to 22"
        ))
    })
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

fn generator(table: &str, scale: f64) -> (SchemaRef, Batches) {
    macro_rules! gen_table {
        ($gen:ident, $arrow:ident) => {{
            let g = $arrow::new($gen::new(scale, 1, 1)).with_batch_size(BATCH_ROWS);
            ($arrow::schema_ref(), Box::new(g) as Batches)
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
        other => unreachable!("not a TPC-H table: {other}"),
    }
}

/// Checks a scale factor from the command line.
pub fn check_scale(scale: f64) -> Result<()> {
    if scale.is_finite() && scale > 0.0 && scale <= SCALE_MAX {
        Ok(())
    } else {
        Err(Error::User(format!(
            "--scale {scale} is not a valid TPC-H scale factor; use a number above 0 and at most {SCALE_MAX}, e.g. --scale 0.1"
        )))
    }
}

/// Writes the eight tables into `out` (created if missing), one file per table named
/// after it. Each file is written under a temporary name and renamed when complete.
pub fn generate(scale: f64, out: &Path, format: Format) -> Result<Vec<PathBuf>> {
    check_scale(scale)?;
    std::fs::create_dir_all(out)?;
    let paths: Vec<PathBuf> = TPCH_TABLES
        .iter()
        .map(|t| out.join(format!("{t}.{}", format.extension())))
        .collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = TPCH_TABLES
            .iter()
            .zip(&paths)
            .map(|(table, path)| scope.spawn(move || write_table(table, scale, path, format)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Internal("a generator thread panicked".into())))
            })
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(paths)
}

fn write_table(table: &str, scale: f64, path: &Path, format: Format) -> Result<()> {
    let (schema, batches) = generator(table, scale);
    let tmp = path.with_extension(format!("{}.tmp", format.extension()));
    let file = File::create(&tmp)?;
    let written = match format {
        Format::Parquet => write_parquet(file, schema, batches),
        Format::Csv => write_csv(file, batches),
    };
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn write_parquet(file: File, schema: SchemaRef, batches: Batches) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))?;
    for batch in batches {
        writer.write(&batch?)?;
    }
    writer.close()?;
    Ok(())
}

fn write_csv(file: File, batches: Batches) -> Result<()> {
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(file);
    for batch in batches {
        writer.write(&batch?)?;
    }
    Ok(())
}
