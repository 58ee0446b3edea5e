//! Parquet scans split by rows rather than bytes.
//!
//! DataFusion splits a large file into byte ranges of equal length, one per scan
//! partition, and a partition reads the row groups that start in its range. A row group
//! cannot be split, so where a file has few of them the ranges are uneven: TPC-H's
//! customer table at scale 1 is three row groups of 64, 64 and 22 thousand rows, and
//! of two partitions one read 128 thousand rows while the other read 22. Inside one
//! process DataFusion spreads the rows again after the scan; in drove each partition is
//! a task, and the stage waits for its slowest one. [`balance`] moves the range
//! boundaries of each split file to row group starts that give its ranges rows as even
//! as the row groups allow.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::listing::FileRange;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::physical_plan::parquet::metadata::DFParquetMetadata;
use datafusion::datasource::source::DataSourceExec;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::parquet::file::metadata::ParquetMetaData;
use datafusion::physical_plan::ExecutionPlan;

use crate::Result;

/// `plan` with the byte ranges of its split Parquet files moved so that each range
/// holds about as many rows (see the module documentation). Reads each such file's
/// footer once, from `runtime`'s metadata cache where DataFusion left it. A file
/// whose ranges do not cover it end to end, or whose footer cannot be read, keeps its
/// ranges: the scan reports the footer's error itself.
pub async fn balance(
    plan: Arc<dyn ExecutionPlan>,
    runtime: &RuntimeEnv,
) -> Result<Arc<dyn ExecutionPlan>> {
    // Each split file once, by its store and location.
    let mut files: HashMap<(String, String), (ObjectStoreUrl, PartitionedFile)> = HashMap::new();
    plan.apply(|node| {
        if let Some(config) = parquet_scan(node) {
            for (location, pieces) in split_files(config) {
                let key = (config.object_store_url.to_string(), location);
                let (g, i, _) = pieces[0];
                let file = &config.file_groups[g][i];
                (files.entry(key))
                    .or_insert_with(|| (config.object_store_url.clone(), file.clone()));
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    if files.is_empty() {
        return Ok(plan);
    }
    let cache = runtime.cache_manager.get_file_metadata_cache();
    let mut starts: HashMap<(String, String), Vec<RowGroupStart>> = HashMap::new();
    for (key, (url, file)) in files {
        let Ok(store) = runtime.object_store(&url) else {
            continue;
        };
        let footer = DFParquetMetadata::new(store.as_ref(), &file.object_meta)
            .with_file_metadata_cache(Some(Arc::clone(&cache)))
            .fetch_metadata()
            .await;
        if let Ok(footer) = footer {
            starts.insert(key, row_group_starts(&footer));
        }
    }
    let balanced = plan.transform_up(|node| {
        let Some(config) = parquet_scan(&node) else {
            return Ok(Transformed::no(node));
        };
        let mut config = config.clone();
        let mut changed = false;
        for (location, pieces) in split_files(&config) {
            let key = (config.object_store_url.to_string(), location);
            if let Some(row_groups) = starts.get(&key) {
                changed |= rebalance(&mut config, pieces, row_groups);
            }
        }
        if changed {
            Ok(Transformed::yes(
                DataSourceExec::from_data_source(config) as Arc<dyn ExecutionPlan>
            ))
        } else {
            Ok(Transformed::no(node))
        }
    })?;
    Ok(balanced.data)
}

/// A piece of a file in a scan: its group, its index in the group, and its range.
type Piece = (usize, usize, FileRange);

/// The files of `config` cut into two ranges or more, by location, with their pieces in
/// file order.
fn split_files(config: &FileScanConfig) -> HashMap<String, Vec<Piece>> {
    let mut files: HashMap<String, Vec<Piece>> = HashMap::new();
    for (g, group) in config.file_groups.iter().enumerate() {
        for (i, file) in group.iter().enumerate() {
            if let Some(range) = &file.range {
                (files
                    .entry(file.object_meta.location.to_string())
                    .or_default())
                .push((g, i, range.clone()));
            }
        }
    }
    files.retain(|_, pieces| pieces.len() > 1);
    for pieces in files.values_mut() {
        pieces.sort_by_key(|(_, _, r)| r.start);
    }
    files
}

/// Where a row group starts (as DataFusion places it in a range: the offset of its
/// first column's first page) and how many rows it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RowGroupStart {
    offset: u64,
    rows: u64,
}

fn row_group_starts(footer: &ParquetMetaData) -> Vec<RowGroupStart> {
    let mut starts: Vec<RowGroupStart> = footer
        .row_groups()
        .iter()
        .filter(|rg| rg.num_columns() > 0)
        .map(|rg| {
            let first = rg.column(0);
            let offset = first
                .dictionary_page_offset()
                .unwrap_or_else(|| first.data_page_offset());
            RowGroupStart {
                offset: offset.max(0) as u64,
                rows: rg.num_rows().max(0) as u64,
            }
        })
        .collect();
    starts.sort_by_key(|s| s.offset);
    starts
}

/// The scan's config if `node` scans Parquet files.
fn parquet_scan(node: &Arc<dyn ExecutionPlan>) -> Option<&FileScanConfig> {
    let config = node
        .downcast_ref::<DataSourceExec>()?
        .data_source()
        .downcast_ref::<FileScanConfig>()?;
    (config.file_source().file_type() == "parquet").then_some(config)
}

/// Moves the ranges of a file's `pieces` in `config` to the boundaries [`boundaries`]
/// gives; whether any moved.
fn rebalance(
    config: &mut FileScanConfig,
    pieces: Vec<Piece>,
    row_groups: &[RowGroupStart],
) -> bool {
    let Some((_, _, last)) = pieces.last() else {
        return false;
    };
    let end = last.end;
    let tiled = pieces.first().is_some_and(|(_, _, r)| r.start == 0)
        && pieces.windows(2).all(|w| w[0].2.end == w[1].2.start);
    let Some(bounds) = tiled
        .then(|| boundaries(row_groups, pieces.len(), end))
        .flatten()
    else {
        return false;
    };
    let mut changed = false;
    for (k, (g, i, old)) in pieces.into_iter().enumerate() {
        let new = FileRange {
            start: bounds[k] as i64,
            end: bounds[k + 1] as i64,
        };
        if new != old {
            config.file_groups[g][i].range = Some(new);
            changed = true;
        }
    }
    changed
}

/// The `pieces + 1` boundaries of ranges over a file of `end` bytes, each starting at
/// a row group's start, such that each range holds about as many rows: a row group
/// goes to the range its middle row falls in when the rows are laid out evenly. A
/// range may be empty. `None` where the file has no rows or a row group starts past
/// `end`.
fn boundaries(row_groups: &[RowGroupStart], pieces: usize, end: i64) -> Option<Vec<u64>> {
    let total: u64 = row_groups.iter().map(|r| r.rows).sum();
    let end = u64::try_from(end).ok()?;
    if total == 0 || pieces == 0 || row_groups.iter().any(|r| r.offset >= end) {
        return None;
    }
    let mut bounds = vec![0u64; pieces + 1];
    bounds[pieces] = end;
    let mut next = 1;
    let mut before = 0u64;
    for r in row_groups {
        let middle = before * 2 + r.rows;
        let piece = ((middle as u128 * pieces as u128) / (2 * total as u128)) as usize;
        // Ranges up to this row group's piece start at the latest here.
        while next <= piece.min(pieces - 1) {
            bounds[next] = r.offset;
            next += 1;
        }
        before += r.rows;
    }
    // Pieces past the last row group's are empty.
    for b in bounds.iter_mut().take(pieces).skip(next) {
        *b = end;
    }
    Some(bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(rows: &[u64]) -> Vec<RowGroupStart> {
        // Row group i starts at 4 + 1000 i (after the magic bytes).
        (rows.iter().enumerate())
            .map(|(i, &rows)| RowGroupStart {
                offset: 4 + 1000 * i as u64,
                rows,
            })
            .collect()
    }

    #[test]
    fn ranges_hold_rows_as_evenly_as_row_groups_allow() {
        // TPC-H customer at scale 1: byte ranges gave 128 and 22 thousand rows.
        assert_eq!(
            boundaries(&groups(&[64, 64, 22]), 2, 3500),
            Some(vec![0, 1004, 3500])
        );
        // Even row groups split evenly.
        assert_eq!(
            boundaries(&groups(&[10; 6]), 3, 6500),
            Some(vec![0, 2004, 4004, 6500])
        );
        // More pieces than row groups: some are empty.
        assert_eq!(
            boundaries(&groups(&[10, 10]), 4, 2500),
            Some(vec![0, 4, 1004, 1004, 2500])
        );
        assert_eq!(
            boundaries(&groups(&[1, 100]), 3, 2500),
            Some(vec![0, 1004, 2500, 2500])
        );
        // One piece keeps the whole file.
        assert_eq!(boundaries(&groups(&[5, 7]), 1, 2100), Some(vec![0, 2100]));
        // Nothing to balance.
        assert_eq!(boundaries(&groups(&[0, 0]), 2, 2100), None);
        assert_eq!(boundaries(&groups(&[5, 5]), 2, 900), None);
    }

    /// Rows each partition of `plan` gives.
    async fn rows_per_partition(
        plan: &Arc<dyn ExecutionPlan>,
        ctx: &datafusion::prelude::SessionContext,
    ) -> Vec<usize> {
        let partitions =
            datafusion::physical_plan::collect_partitioned(Arc::clone(plan), ctx.task_ctx())
                .await
                .unwrap();
        partitions
            .iter()
            .map(|batches| batches.iter().map(|b| b.num_rows()).sum())
            .collect()
    }

    /// A file of row groups of 6,400, 6,400 and 2,200 rows, split in two: by bytes
    /// one partition reads 12,800 rows; balanced, the rows split 6,400 and 8,600, and
    /// every row is read once.
    #[tokio::test]
    async fn a_split_file_gives_its_partitions_even_rows() {
        use datafusion::arrow::array::Int64Array;
        use datafusion::arrow::datatypes::{DataType, Field, Schema};
        use datafusion::arrow::record_batch::RecordBatch;
        use datafusion::parquet::arrow::ArrowWriter;
        use datafusion::parquet::file::properties::WriterProperties;
        use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, false)]));
        let props = WriterProperties::builder()
            .set_max_row_group_row_count(Some(6400))
            .set_dictionary_enabled(false)
            .build();
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            Arc::clone(&schema),
            Some(props),
        )
        .unwrap();
        let column = Int64Array::from_iter_values((0..15_000).map(|i| i * 7919 % 100_003));
        writer
            .write(&RecordBatch::try_new(schema, vec![Arc::new(column)]).unwrap())
            .unwrap();
        writer.close().unwrap();

        let mut config = SessionConfig::new().with_target_partitions(2);
        config.options_mut().optimizer.repartition_file_min_size = 0;
        // As drove runs scans: each partition reads only its own ranges.
        config
            .options_mut()
            .execution
            .enable_file_stream_work_stealing = false;
        let ctx = SessionContext::new_with_config(config);
        ctx.register_parquet("t", path.to_str().unwrap(), ParquetReadOptions::default())
            .await
            .unwrap();
        let plan = ctx
            .sql("SELECT a FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        assert_eq!(rows_per_partition(&plan, &ctx).await, vec![12_800, 2_200]);

        let balanced = balance(Arc::clone(&plan), &ctx.runtime_env())
            .await
            .unwrap();
        assert_eq!(
            rows_per_partition(&balanced, &ctx).await,
            vec![6_400, 8_600]
        );
        let sum = |plan: Arc<dyn ExecutionPlan>| {
            let ctx = ctx.task_ctx();
            async move {
                let batches = datafusion::physical_plan::collect(plan, ctx).await.unwrap();
                batches
                    .iter()
                    .flat_map(|b| {
                        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                        a.values().to_vec()
                    })
                    .sum::<i64>()
            }
        };
        assert_eq!(sum(balanced).await, sum(plan).await);
    }
}
