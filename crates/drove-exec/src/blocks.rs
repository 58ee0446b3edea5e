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

impl Block {
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
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
