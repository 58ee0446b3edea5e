//! Where a stage's tasks would read their data locally: the workers that hold the
//! drove fs chunks of the bytes each task scans.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::dfs::{FsEntry, Namespace};
use crate::mapreduce::nodes::TextSourceExec;
use crate::stores::SCHEME;

/// The workers each of a stage's `tasks` tasks prefers: those holding the most bytes
/// of what it scans in drove fs. None when the stage scans no `drove://` files, or
/// no scan's partitions are its tasks.
pub async fn preferred_workers(
    plan: &Arc<dyn ExecutionPlan>,
    tasks: usize,
    namespace: &dyn Namespace,
) -> Vec<Vec<u64>> {
    let mut scans = Vec::new();
    drove_scans(plan, &mut scans);
    // Only scans whose partitions are the stage's tasks say what a task reads.
    scans.retain(|scan| scan.len() == tasks);
    if scans.is_empty() {
        return Vec::new();
    }
    let mut files: HashMap<String, Option<FsEntry>> = HashMap::new();
    let mut held: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); tasks];
    for scan in scans {
        for (task, group) in scan.into_iter().enumerate() {
            for (path, range) in group {
                if !files.contains_key(&path) {
                    let entry = match namespace.list(&path).await {
                        Ok(Some(listed)) if !listed.is_dir => listed.entries.into_iter().next(),
                        _ => None,
                    };
                    files.insert(path.clone(), entry);
                }
                let Some(entry) = &files[&path] else {
                    continue;
                };
                let range = range.unwrap_or(0..entry.size);
                for (worker, bytes) in bytes_held(entry, range) {
                    *held[task].entry(worker).or_default() += bytes;
                }
            }
        }
    }
    let preferred: Vec<Vec<u64>> = (held.into_iter())
        .map(|held| {
            let most = held.values().copied().max().unwrap_or(0);
            (held.into_iter())
                .filter(|(_, bytes)| most > 0 && *bytes == most)
                .map(|(worker, _)| worker)
                .collect()
        })
        .collect();
    if preferred.iter().all(Vec::is_empty) {
        return Vec::new();
    }
    preferred
}

/// The bytes of `range` of `file` each worker holds a replica of.
fn bytes_held(file: &FsEntry, range: Range<u64>) -> BTreeMap<u64, u64> {
    let mut held = BTreeMap::new();
    let mut start = 0u64;
    for chunk in &file.chunks {
        let end = start + chunk.len;
        let overlap = range.end.min(end).saturating_sub(range.start.max(start));
        if overlap > 0 {
            for replica in &chunk.replicas {
                *held.entry(replica.worker_id).or_default() += overlap;
            }
        }
        start = end;
    }
    held
}

/// A scan of drove fs files: for each of its partitions, the files it reads, by drove
/// fs path, with the byte range it reads when not the whole file.
type Scan = Vec<Vec<(String, Option<Range<u64>>)>>;

/// The scans of drove fs files in `plan`: Parquet and CSV scans, and MapReduce text
/// sources.
fn drove_scans(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Scan>) {
    if let Some(scan) = plan
        .downcast_ref::<DataSourceExec>()
        .and_then(|scan| scan.data_source().downcast_ref::<FileScanConfig>())
    {
        let store = scan.object_store_url.as_str();
        if let Some(root) = store.strip_prefix(&format!("{SCHEME}://")) {
            let root = root.trim_end_matches('/');
            out.push(
                (scan.file_groups.iter())
                    .map(|group| {
                        (group.iter())
                            .map(|file| {
                                let location = file.object_meta.location.as_ref();
                                let path = if root.is_empty() {
                                    location.to_string()
                                } else {
                                    format!("{root}/{location}")
                                };
                                let range = (file.range.as_ref())
                                    .map(|r| r.start.max(0) as u64..r.end.max(0) as u64);
                                (path, range)
                            })
                            .collect()
                    })
                    .collect(),
            );
        }
    }
    if let Some(text) = plan.downcast_ref::<TextSourceExec>() {
        let in_drove = |file: &String| {
            (file.starts_with(&format!("{SCHEME}://")))
                .then(|| drove_core::fs::normalize(file).ok())
                .flatten()
        };
        if text.files().iter().any(|f| in_drove(f).is_some()) {
            out.push(
                (text.files().iter())
                    .map(|file| {
                        in_drove(file)
                            .map(|path| (path, None))
                            .into_iter()
                            .collect()
                    })
                    .collect(),
            );
        }
    }
    for child in plan.children() {
        drove_scans(child, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dfs::{Chunk, Replica};

    fn chunk(len: u64, workers: &[u64]) -> Chunk {
        Chunk {
            id: 0,
            len,
            crc32c: 0,
            grant: Vec::new(),
            replicas: (workers.iter())
                .map(|w| Replica {
                    worker_id: *w,
                    addr: String::new(),
                    zone: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn a_range_counts_the_bytes_of_each_chunk_it_overlaps() {
        let file = FsEntry {
            name: "f".into(),
            is_dir: false,
            size: 30,
            created_unix_ms: 0,
            replication: 2,
            chunk_bytes: 10,
            chunks: vec![chunk(10, &[1, 2]), chunk(10, &[2, 3]), chunk(10, &[3, 1])],
        };
        let held = bytes_held(&file, 5..18);
        assert_eq!(held, BTreeMap::from([(1, 5), (2, 13), (3, 8)]));
        assert_eq!(bytes_held(&file, 0..30).values().sum::<u64>(), 60);
        assert!(bytes_held(&file, 30..40).is_empty());
    }
}
