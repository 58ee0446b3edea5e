//! The benchmarks whose data drove generates (TPC-H, TPC-DS): their tables, written as
//! Parquet or CSV files, one file per table, each under a temporary name renamed into
//! place when complete; and their queries.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::tables::{Format, TPCDS_TABLES, TPCH_TABLES};
use crate::{Error, Result};
use crate::{tpcds, tpch};

/// Rows per Parquet row group: small enough that a table splits into several scan
/// partitions even at small scales.
const ROW_GROUP_ROWS: usize = 64 * 1024;
/// Rows per generated batch.
pub(crate) const BATCH_ROWS: usize = 8192;
/// The largest scale factor the generators accept.
pub const SCALE_MAX: f64 = 1000.0;

/// The texts of `queries/DIR/qN.sql` for each N listed, in that order.
macro_rules! query_files {
    ($dir:literal, $($n:literal)*) => {
        [$(include_str!(concat!("../../../queries/", $dir, "/q", stringify!($n), ".sql"))),*]
    };
}
pub(crate) use query_files;

/// A table's rows, batch by batch.
pub type Batches = Box<dyn Iterator<Item = Result<RecordBatch, ArrowError>> + Send>;

/// A benchmark whose tables drove generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Benchmark {
    Tpch,
    Tpcds,
}

impl Benchmark {
    /// Its name in prose: "TPC-H".
    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Tpch => "TPC-H",
            Benchmark::Tpcds => "TPC-DS",
        }
    }

    /// Its name in commands and flags: `drove gen tpch`, `--tpch DIR`.
    pub fn key(self) -> &'static str {
        match self {
            Benchmark::Tpch => "tpch",
            Benchmark::Tpcds => "tpcds",
        }
    }

    /// Its tables, in the order they are written.
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Benchmark::Tpch => &TPCH_TABLES,
            Benchmark::Tpcds => &TPCDS_TABLES,
        }
    }

    /// Its queries, the first being query 1.
    pub fn queries(self) -> &'static [&'static str] {
        match self {
            Benchmark::Tpch => &tpch::QUERIES,
            Benchmark::Tpcds => &tpcds::QUERIES,
        }
    }

    /// The text of query `n`, numbered from 1.
    pub fn query(self, n: usize) -> Result<&'static str> {
        let queries = self.queries();
        queries.get(n.wrapping_sub(1)).copied().ok_or_else(|| {
            Error::User(format!(
                "there is no {} query {n}; the queries are 1 to {}",
                self.name(),
                queries.len()
            ))
        })
    }

    /// Checks a scale factor from the command line.
    pub fn check_scale(self, scale: f64) -> Result<()> {
        if scale.is_finite() && scale > 0.0 && scale <= SCALE_MAX {
            Ok(())
        } else {
            Err(Error::User(format!(
                "--scale {scale} is not a valid {} scale factor; use a number above 0 and at most {SCALE_MAX}, e.g. --scale 0.1",
                self.name()
            )))
        }
    }

    /// Writes its tables at `scale` into `out` (created if missing), one file per
    /// table named after it.
    pub fn generate(self, scale: f64, out: &Path, format: Format) -> Result<Vec<PathBuf>> {
        self.check_scale(scale)?;
        match self {
            Benchmark::Tpch => {
                write_tables(self.tables(), out, format, |t| tpch::generator(t, scale))
            }
            Benchmark::Tpcds => {
                write_tables(self.tables(), out, format, |t| tpcds::generator(t, scale))
            }
        }
    }
}

/// Writes `tables` into `out` (created if missing), one thread per table, each file
/// named after its table. `generator` gives a table's schema and rows.
fn write_tables(
    tables: &[&str],
    out: &Path,
    format: Format,
    generator: impl Fn(&str) -> Result<(SchemaRef, Batches)> + Sync,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out)?;
    let paths: Vec<PathBuf> = tables
        .iter()
        .map(|t| out.join(format!("{t}.{}", format.extension())))
        .collect();
    let generator = &generator;
    std::thread::scope(|scope| {
        let handles: Vec<_> = tables
            .iter()
            .zip(&paths)
            .map(|(table, path)| scope.spawn(move || write_table(generator(table)?, path, format)))
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

fn write_table((schema, batches): (SchemaRef, Batches), path: &Path, format: Format) -> Result<()> {
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
