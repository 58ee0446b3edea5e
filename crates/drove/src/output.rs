//! Printing results.

use std::io::Write;

use anyhow::Result;
use arrow::record_batch::RecordBatch;
use clap::ValueEnum;
use drove_client::QueryResult;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// A header row, then one line per row.
    Csv,
    /// A JSON array of objects.
    Json,
}

/// Prints a result to stdout in `format`.
pub fn print(result: &QueryResult, format: OutputFormat) -> Result<()> {
    let mut out = std::io::stdout().lock();
    write(&mut out, &result.batches, result.schema.clone(), format)?;
    out.flush()?;
    Ok(())
}

/// Writes batches in `format`.
pub fn write(
    out: &mut impl Write,
    batches: &[RecordBatch],
    schema: arrow::datatypes::SchemaRef,
    format: OutputFormat,
) -> Result<()> {
    match format {
        OutputFormat::Table => {
            let table = if batches.is_empty() {
                arrow::util::pretty::pretty_format_batches(&[RecordBatch::new_empty(schema)])?
            } else {
                arrow::util::pretty::pretty_format_batches(batches)?
            };
            writeln!(out, "{table}")?;
        }
        OutputFormat::Csv => {
            let mut writer = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                writer.write(&RecordBatch::new_empty(schema))?;
            }
            for batch in batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = arrow::json::ArrayWriter::new(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
    }
    Ok(())
}
