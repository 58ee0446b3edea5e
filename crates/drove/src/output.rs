//! Printing results as they arrive: every format writes each batch as it comes and
//! keeps none, so printing a result of any size takes bounded memory.

use std::io::Write;

use anyhow::Result;
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use clap::ValueEnum;
use drove_client::ResultStream;
use futures::TryStreamExt;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table; its column widths come from the first rows.
    Table,
    /// A header row, then one line per row.
    Csv,
    /// A JSON array of objects, one a line.
    Json,
}

/// Rows a table's column widths are measured on before it starts printing.
const TABLE_SAMPLE_ROWS: usize = 1000;

/// Prints a result to stdout in `format` as it streams in.
pub async fn print(result: &mut ResultStream, format: OutputFormat) -> Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut writer = Writer::new(result.schema(), format);
    while let Some(batch) = result.try_next().await? {
        writer.write(&mut out, &batch)?;
    }
    writer.finish(&mut out)?;
    out.flush()?;
    Ok(())
}

/// Writes batches in one format, one at a time.
pub struct Writer {
    schema: SchemaRef,
    format: OutputFormat,
    rows: u64,
    /// Whether the CSV header is out.
    header_written: bool,
    /// The table's column widths, once measured, and the rows held to measure them.
    table: Option<Vec<usize>>,
    sample: Vec<RecordBatch>,
}

impl Writer {
    pub fn new(schema: SchemaRef, format: OutputFormat) -> Self {
        Self {
            schema,
            format,
            rows: 0,
            header_written: false,
            table: None,
            sample: Vec::new(),
        }
    }

    pub fn write(&mut self, out: &mut impl Write, batch: &RecordBatch) -> Result<()> {
        let first = self.rows == 0;
        self.rows += batch.num_rows() as u64;
        match self.format {
            OutputFormat::Csv => {
                arrow::csv::WriterBuilder::new()
                    .with_header(!self.header_written)
                    .build(&mut *out)
                    .write(batch)?;
                self.header_written = true;
            }
            OutputFormat::Json if batch.num_rows() == 0 => {}
            OutputFormat::Json => {
                let mut objects = arrow::json::LineDelimitedWriter::new(Vec::new());
                objects.write(batch)?;
                objects.finish()?;
                let objects = objects.into_inner();
                for (i, object) in objects
                    .split(|b| *b == b'\n')
                    .filter(|o| !o.is_empty())
                    .enumerate()
                {
                    out.write_all(if first && i == 0 { b"[\n" } else { b",\n" })?;
                    out.write_all(object)?;
                }
            }
            OutputFormat::Table => match &self.table {
                Some(widths) => write_rows(out, batch, widths)?,
                None => {
                    self.sample.push(batch.clone());
                    if self.rows >= TABLE_SAMPLE_ROWS as u64 {
                        self.start_table(out)?;
                    }
                }
            },
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut impl Write) -> Result<()> {
        match self.format {
            OutputFormat::Csv if !self.header_written => {
                let empty = RecordBatch::new_empty(self.schema.clone());
                self.write(out, &empty)?;
            }
            OutputFormat::Csv => {}
            OutputFormat::Json if self.rows == 0 => writeln!(out, "[]")?,
            OutputFormat::Json => writeln!(out, "\n]")?,
            OutputFormat::Table => {
                if self.table.is_none() {
                    self.start_table(out)?;
                }
                let widths = self.table.as_deref().unwrap_or_default();
                writeln!(out, "{}", rule(widths))?;
            }
        }
        Ok(())
    }

    /// Measures the held rows, prints the header and them.
    fn start_table(&mut self, out: &mut impl Write) -> Result<()> {
        let mut widths: Vec<usize> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().chars().count())
            .collect();
        for batch in &self.sample {
            for (column, width) in batch.columns().iter().zip(widths.iter_mut()) {
                let cells = ArrayFormatter::try_new(column, &format_options())?;
                for row in 0..batch.num_rows() {
                    *width = (*width).max(cells.value(row).to_string().chars().count());
                }
            }
        }
        writeln!(out, "{}", rule(&widths))?;
        let names: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        writeln!(out, "{}", line(names.iter().copied(), &widths))?;
        writeln!(out, "{}", rule(&widths))?;
        for batch in std::mem::take(&mut self.sample) {
            write_rows(out, &batch, &widths)?;
        }
        self.table = Some(widths);
        Ok(())
    }
}

fn format_options() -> FormatOptions<'static> {
    FormatOptions::default().with_null("NULL")
}

fn write_rows(out: &mut impl Write, batch: &RecordBatch, widths: &[usize]) -> Result<()> {
    let cells = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c, &format_options()))
        .collect::<Result<Vec<_>, _>>()?;
    for row in 0..batch.num_rows() {
        let values: Vec<String> = cells.iter().map(|c| c.value(row).to_string()).collect();
        writeln!(out, "{}", line(values.iter().map(String::as_str), widths))?;
    }
    Ok(())
}

/// `| a   | bb |`: a cell longer than its column's measured width widens its own row.
fn line<'a>(cells: impl Iterator<Item = &'a str>, widths: &[usize]) -> String {
    let mut text = String::from("|");
    for (cell, width) in cells.zip(widths) {
        text.push_str(&format!(" {cell:<width$} |"));
    }
    text
}

/// `+-----+----+`
fn rule(widths: &[usize]) -> String {
    let mut text = String::from("+");
    for width in widths {
        text.push_str(&"-".repeat(width + 2));
        text.push('+');
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batches() -> (SchemaRef, Vec<RecordBatch>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = |n: Vec<i64>, s: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(n)),
                    Arc::new(StringArray::from(s)),
                ],
            )
            .unwrap()
        };
        (
            schema.clone(),
            vec![
                batch(vec![1, 22], vec![Some("a"), None]),
                batch(vec![333], vec![Some("ccc")]),
            ],
        )
    }

    fn check(format: OutputFormat, sent: &[RecordBatch], schema: SchemaRef, expected: &str) {
        let mut out = Vec::new();
        let mut writer = Writer::new(schema, format);
        for batch in sent {
            writer.write(&mut out, batch).unwrap();
        }
        writer.finish(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn every_format_writes_batch_by_batch() {
        let (schema, mut sent) = batches();
        // An empty batch first, as a filter may send.
        sent.insert(0, RecordBatch::new_empty(schema.clone()));
        check(
            OutputFormat::Csv,
            &sent,
            schema.clone(),
            "n,name\n1,a\n22,\n333,ccc\n",
        );
        check(
            OutputFormat::Json,
            &sent,
            schema.clone(),
            "[\n{\"n\":1,\"name\":\"a\"},\n{\"n\":22},\n{\"n\":333,\"name\":\"ccc\"}\n]\n",
        );
        check(
            OutputFormat::Table,
            &sent,
            schema,
            "+-----+------+\n| n   | name |\n+-----+------+\n| 1   | a    |\n| 22  | NULL |\n| 333 | ccc  |\n+-----+------+\n",
        );
    }

    #[test]
    fn an_empty_result_still_has_its_header() {
        let (schema, _) = batches();
        check(OutputFormat::Csv, &[], schema.clone(), "n,name\n");
        check(OutputFormat::Json, &[], schema.clone(), "[]\n");
        check(
            OutputFormat::Table,
            &[],
            schema,
            "+---+------+\n| n | name |\n+---+------+\n+---+------+\n",
        );
    }
}
