//! A worker's store of shuffle blocks.
//!
//! A block is the output of one task attempt for one reduce partition. Blocks are
//! kept in memory until their job is released.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

/// The name of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockKey {
    pub job: u64,
    pub stage: u32,
    pub map_partition: u32,
    pub reduce_partition: u32,
    pub attempt: u32,
}

impl std::fmt::Display for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block job-{}/stage-{}/map-{}/reduce-{}#{}",
            self.job, self.stage, self.map_partition, self.reduce_partition, self.attempt
        )
    }
}

/// One block's data.
#[derive(Debug)]
pub struct Block {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub bytes: u64,
    pub rows: u64,
}

/// A batch whose string and binary view columns hold only the bytes their rows use.
///
/// Splitting a batch by partition (`take`) or by size (`slice`) keeps every view
/// column's data buffers whole, so each piece would carry, and send over Flight, the
/// whole batch's bytes. Compacting before a block is stored keeps a shuffle's size
/// proportional to its rows.
pub fn compact(batch: RecordBatch) -> RecordBatch {
    use arrow::array::{ArrayRef, AsArray, GenericByteViewArray};
    use arrow::datatypes::{ByteViewType, DataType};
    // Copies only when the buffers hold at least twice the bytes the rows use.
    fn compact_view<T: ByteViewType + ?Sized>(a: &GenericByteViewArray<T>) -> Option<ArrayRef> {
        let buffers: usize = a.data_buffers().iter().map(|b| b.len()).sum();
        (buffers > 2 * a.total_buffer_bytes_used()).then(|| Arc::new(a.gc()) as ArrayRef)
    }
    let compacted: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| {
            let compacted = match c.data_type() {
                DataType::Utf8View => compact_view(c.as_string_view()),
                DataType::BinaryView => compact_view(c.as_binary_view()),
                _ => None,
            };
            compacted.unwrap_or_else(|| Arc::clone(c))
        })
        .collect();
    RecordBatch::try_new(batch.schema(), compacted).unwrap_or(batch)
}

impl Block {
    /// A block of `batches`, compacted (see [`compact`]).
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let batches: Vec<RecordBatch> = batches.into_iter().map(compact).collect();
        let bytes = batches
            .iter()
            .map(|b| b.get_array_memory_size() as u64)
            .sum();
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        Self {
            schema,
            batches,
            bytes,
            rows,
        }
    }
}

/// The blocks one worker holds.
#[derive(Debug, Default)]
pub struct BlockStore {
    blocks: Mutex<BTreeMap<BlockKey, Arc<Block>>>,
    bytes_held: AtomicU64,
}

impl BlockStore {
    /// Stores a block. Storing the same key twice is a bug: attempts are unique.
    pub fn put(&self, key: BlockKey, block: Block) {
        let bytes = block.bytes;
        let previous = self.lock().insert(key, Arc::new(block));
        assert!(previous.is_none(), "{key} was written twice");
        self.bytes_held.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn get(&self, key: &BlockKey) -> Option<Arc<Block>> {
        self.lock().get(key).cloned()
    }

    /// Drops every block of a job; returns how many bytes that freed.
    pub fn release_job(&self, job: u64) -> u64 {
        let mut blocks = self.lock();
        let keys: Vec<BlockKey> = blocks.keys().filter(|k| k.job == job).copied().collect();
        let freed: u64 = keys
            .iter()
            .filter_map(|k| blocks.remove(k))
            .map(|b| b.bytes)
            .sum();
        self.bytes_held.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    /// Drops every block; returns how many bytes that freed.
    pub fn release_all(&self) -> u64 {
        let mut blocks = self.lock();
        let freed = blocks.values().map(|b| b.bytes).sum();
        blocks.clear();
        self.bytes_held.fetch_sub(freed, Ordering::Relaxed);
        freed
    }

    /// Bytes held in memory by all blocks.
    pub fn bytes_held(&self) -> u64 {
        self.bytes_held.load(Ordering::Relaxed)
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<BlockKey, Arc<Block>>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, StringViewArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::compact;

    #[test]
    fn a_piece_of_a_view_column_keeps_only_its_own_bytes() {
        let long: Vec<String> = (0..1000)
            .map(|i| format!("a string long enough to be out of line {i}"))
            .collect();
        let schema = Arc::new(Schema::new(vec![Field::new(
            "s",
            DataType::Utf8View,
            false,
        )]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringViewArray::from_iter_values(&long))],
        )
        .unwrap();
        let piece =
            arrow::compute::take_record_batch(&batch, &UInt32Array::from(vec![3, 7])).unwrap();
        let buffer_bytes = |b: &RecordBatch| -> usize {
            b.column(0)
                .as_string_view()
                .data_buffers()
                .iter()
                .map(|d| d.len())
                .sum()
        };
        let before = buffer_bytes(&piece);
        let compacted = compact(piece);
        let after = buffer_bytes(&compacted);
        assert!(after * 100 < before, "{after} bytes after, {before} before");
        assert_eq!(compacted.column(0).as_string_view().value(1), long[7]);
        assert_eq!(compacted.column(0).len(), 2);
    }
}
