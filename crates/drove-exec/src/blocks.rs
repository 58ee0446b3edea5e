//! A worker's store of shuffle blocks.
//!
//! A block is the output of one task attempt for one reduce partition. Blocks stay in
//! memory while the store's memory limit allows; a block that does not fit is written
//! to the store's spill directory as compressed Arrow IPC instead, and read back from
//! there the same way. A spilled block's file is deleted when the last reader of a
//! released block lets go of it.
//!
//! A block belongs to its job, or to a cached table when the task that wrote it was
//! computing one: releasing a job frees the job's own blocks and leaves cached ones.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::datatypes::SchemaRef;
use arrow::ipc::CompressionType;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::{IpcWriteOptions, StreamWriter};
use arrow::record_batch::RecordBatch;

use crate::{Error, Result};
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
    data: Data,
    /// Bytes the block takes in memory (as Arrow arrays), wherever it is now.
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
            data: Data::Memory(batches),
            bytes,
            rows,
        }
    }
}

/// How spilled blocks are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SpillCodec {
    None,
    #[default]
    Lz4,
    Zstd,
}

impl SpillCodec {
    fn compression(self) -> Option<CompressionType> {
        match self {
            SpillCodec::None => None,
            SpillCodec::Lz4 => Some(CompressionType::LZ4_FRAME),
            SpillCodec::Zstd => Some(CompressionType::ZSTD),
        }
    }

    /// The name DataFusion's `datafusion.execution.spill_compression` uses.
    pub fn datafusion_name(self) -> &'static str {
        match self {
            SpillCodec::None => "uncompressed",
            SpillCodec::Lz4 => "lz4_frame",
            SpillCodec::Zstd => "zstd",
        }
    }
}

impl std::str::FromStr for SpillCodec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "uncompressed" => Ok(SpillCodec::None),
            "lz4" => Ok(SpillCodec::Lz4),
            "zstd" => Ok(SpillCodec::Zstd),
            other => Err(format!(
                "unknown spill codec '{other}'; use lz4, zstd or none"
            )),
        }
    }
}

/// A block written to disk. The file goes when the last reference does.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    bytes: u64,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), "could not delete a spilled block: {e}");
        }
    }
}

#[derive(Debug)]
enum Data {
    Memory(Vec<RecordBatch>),
    Disk(SpillFile),
}

impl Block {
    /// Whether the block lives in a file rather than in memory.
    pub fn is_spilled(&self) -> bool {
        matches!(self.data, Data::Disk(_))
    }

    /// The block's batches, read from memory or, one at a time, from its file.
    pub fn batches(&self) -> Result<Box<dyn Iterator<Item = Result<RecordBatch>> + Send>> {
        match &self.data {
            Data::Memory(batches) => Ok(Box::new(batches.clone().into_iter().map(Ok))),
            Data::Disk(file) => {
                let reader =
                    File::open(&file.path).map_err(|e| spill_error("reading", &file.path, e))?;
                let reader = StreamReader::try_new(BufReader::new(reader), None)?;
                Ok(Box::new(reader.map(|b| b.map_err(Error::from))))
            }
        }
    }
}

fn spill_error(doing: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Io(std::io::Error::new(
        e.kind(),
        format!(
            "{doing} spilled block {}: {e}; the worker's --work-dir needs free space for blocks beyond its --memory budget",
            path.display()
        ),
    ))
}

/// How a store keeps blocks.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Bytes of blocks kept in memory at most; more spill to `spill_dir`.
    pub memory_limit: u64,
    /// Where spilled blocks go. `None`: nothing spills, the limit is not enforced.
    pub spill_dir: Option<PathBuf>,
    pub codec: SpillCodec,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_limit: u64::MAX,
            spill_dir: None,
            codec: SpillCodec::default(),
        }
    }
}

/// What a store holds and has done, for heartbeats and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Bytes of blocks in memory, blocks being written included.
    pub memory_bytes: u64,
    /// The most `memory_bytes` has been.
    pub peak_memory_bytes: u64,
    /// Bytes of spilled blocks on disk now.
    pub disk_bytes: u64,
    /// Bytes written to disk since the store started, and how many blocks.
    pub spilled_bytes_total: u64,
    pub spill_count: u64,
    pub blocks: u64,
}

#[derive(Debug)]
struct Entry {
    block: Arc<Block>,
    /// The cached table the block belongs to, if any.
    cache: Option<u64>,
}

/// The blocks one worker holds.
#[derive(Debug, Default)]
pub struct BlockStore {
    blocks: Mutex<BTreeMap<BlockKey, Entry>>,
    config: StoreConfig,
    memory: AtomicU64,
    peak: AtomicU64,
    disk: AtomicU64,
    spilled_total: AtomicU64,
    spill_count: AtomicU64,
    next_file: AtomicU64,
}

impl BlockStore {
    pub fn new(config: StoreConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Takes `bytes` of the memory limit, if they fit.
    fn try_reserve(&self, bytes: u64) -> bool {
        let limit = if self.config.spill_dir.is_some() {
            self.config.memory_limit
        } else {
            u64::MAX
        };
        let reserved = self
            .memory
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                m.checked_add(bytes).filter(|n| *n <= limit)
            });
        match reserved {
            Ok(before) => {
                self.peak.fetch_max(before + bytes, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    fn unreserve(&self, bytes: u64) {
        let before = self.memory.fetch_sub(bytes, Ordering::AcqRel);
        assert!(before >= bytes, "block memory accounting went below zero");
    }

    /// Starts writing the blocks of one task attempt: `partitions` of them, owned by
    /// `cache` if the task computes a cached table.
    pub fn writer(
        &self,
        schema: SchemaRef,
        partitions: usize,
        cache: Option<u64>,
    ) -> BlockWriter<'_> {
        BlockWriter {
            store: self,
            schema,
            cache,
            parts: (0..partitions).map(|_| Part::default()).collect(),
        }
    }

    /// Stores a block of `batches` in memory, past the limit if need be (tests and small
    /// results). Storing the same key twice is a bug: attempts are unique.
    pub fn put(&self, key: BlockKey, block: Block) {
        if let Data::Memory(_) = block.data {
            self.memory.fetch_add(block.bytes, Ordering::AcqRel);
        }
        self.insert(key, block, None);
    }

    fn insert(&self, key: BlockKey, block: Block, cache: Option<u64>) {
        let block = Arc::new(block);
        let previous = self.lock().insert(key, Entry { block, cache });
        assert!(previous.is_none(), "{key} was written twice");
    }

    pub fn get(&self, key: &BlockKey) -> Option<Arc<Block>> {
        self.lock().get(key).map(|e| Arc::clone(&e.block))
    }

    /// Drops blocks that `keep` rejects; returns how many bytes that freed.
    fn release(&self, drop: impl Fn(&BlockKey, &Entry) -> bool) -> u64 {
        let mut blocks = self.lock();
        let keys: Vec<BlockKey> = blocks
            .iter()
            .filter(|(k, e)| drop(k, e))
            .map(|(k, _)| *k)
            .collect();
        let mut freed = 0;
        for key in keys {
            let Some(entry) = blocks.remove(&key) else {
                continue;
            };
            freed += entry.block.bytes;
            match &entry.block.data {
                Data::Memory(_) => self.unreserve(entry.block.bytes),
                Data::Disk(file) => {
                    self.disk.fetch_sub(file.bytes, Ordering::AcqRel);
                }
            }
        }
        freed
    }

    /// Drops every block of a job but those of cached tables; returns the bytes freed.
    pub fn release_job(&self, job: u64) -> u64 {
        self.release(|k, e| k.job == job && e.cache.is_none())
    }

    /// Drops every block of a cached table; returns the bytes freed.
    pub fn release_cache(&self, cache: u64) -> u64 {
        self.release(|_, e| e.cache == Some(cache))
    }

    /// Drops every block; returns how many bytes that freed.
    pub fn release_all(&self) -> u64 {
        self.release(|_, _| true)
    }

    /// Bytes of blocks held in memory, blocks being written included.
    pub fn bytes_held(&self) -> u64 {
        self.memory.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            memory_bytes: self.bytes_held(),
            peak_memory_bytes: self.peak.load(Ordering::Relaxed),
            disk_bytes: self.disk.load(Ordering::Acquire),
            spilled_bytes_total: self.spilled_total.load(Ordering::Relaxed),
            spill_count: self.spill_count.load(Ordering::Relaxed),
            blocks: self.len() as u64,
        }
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<BlockKey, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.blocks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a [`BlockWriter`] stored.
#[derive(Debug, Default)]
pub struct Written {
    /// Bytes and rows of each partition's block.
    pub sizes: Vec<(u64, u64)>,
    /// Bytes of the blocks that went to disk, and how many did.
    pub spilled_bytes: u64,
    pub spill_count: u64,
}

/// One output partition being written.
#[derive(Default)]
struct Part {
    batches: Vec<RecordBatch>,
    /// Memory bytes of `batches`, reserved in the store.
    reserved: u64,
    /// Memory bytes and rows of everything written.
    bytes: u64,
    rows: u64,
    file: Option<(PathBuf, StreamWriter<BufWriter<File>>)>,
}

/// Writes one task attempt's blocks: in memory while the store's limit allows, then to
/// a spill file per partition. Dropped unfinished (the task failed or was stopped), it
/// gives back its memory and deletes its files.
pub struct BlockWriter<'a> {
    store: &'a BlockStore,
    schema: SchemaRef,
    cache: Option<u64>,
    parts: Vec<Part>,
}

impl BlockWriter<'_> {
    /// Appends a batch to output partition `partition`.
    pub fn push(&mut self, partition: usize, batch: RecordBatch) -> Result<()> {
        let batch = compact(batch);
        let size = batch.get_array_memory_size() as u64;
        let count = self.parts.len();
        let part = self.parts.get_mut(partition).ok_or_else(|| {
            Error::Internal(format!(
                "a task wrote to output partition {partition} of {count}"
            ))
        })?;
        part.bytes += size;
        part.rows += batch.num_rows() as u64;
        if part.file.is_none() && self.store.try_reserve(size) {
            part.reserved += size;
            part.batches.push(batch);
            return Ok(());
        }
        if part.file.is_none() {
            let dir = self.store.config.spill_dir.as_ref().ok_or_else(|| {
                Error::Internal("the block store is full but has nowhere to spill".into())
            })?;
            let n = self.store.next_file.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("block-{n}.arrow"));
            let file = File::create(&path).map_err(|e| spill_error("creating", &path, e))?;
            let options = IpcWriteOptions::default()
                .try_with_compression(self.store.config.codec.compression())?;
            let writer =
                StreamWriter::try_new_with_options(BufWriter::new(file), &self.schema, options)
                    .map_err(|e| arrow_spill_error(&path, e))?;
            part.file = Some((path, writer));
            self.store.spill_count.fetch_add(1, Ordering::Relaxed);
            let (path, writer) = part.file.as_mut().expect("just set");
            for b in part.batches.drain(..) {
                writer.write(&b).map_err(|e| arrow_spill_error(path, e))?;
            }
            self.store.unreserve(std::mem::take(&mut part.reserved));
        }
        let (path, writer) = part.file.as_mut().expect("spilling");
        writer.write(&batch).map_err(|e| arrow_spill_error(path, e))
    }

    /// Stores the blocks under the keys `key` gives each partition.
    pub fn finish(mut self, key: impl Fn(u32) -> BlockKey) -> Result<Written> {
        // Close every file first: a failure then leaves nothing stored.
        let mut blocks = Vec::with_capacity(self.parts.len());
        for part in &mut self.parts {
            let data = match part.file.take() {
                None => Data::Memory(std::mem::take(&mut part.batches)),
                Some((path, writer)) => {
                    // From here the file is deleted with the block, or on failure.
                    let mut file = SpillFile { path, bytes: 0 };
                    let inner = writer
                        .into_inner()
                        .map_err(|e| arrow_spill_error(&file.path, e))?;
                    let inner = inner
                        .into_inner()
                        .map_err(|e| spill_error("writing", &file.path, e.into_error()))?;
                    inner
                        .sync_data()
                        .map_err(|e| spill_error("writing", &file.path, e))?;
                    file.bytes = inner
                        .metadata()
                        .map_err(|e| spill_error("writing", &file.path, e))?
                        .len();
                    Data::Disk(file)
                }
            };
            blocks.push((data, part.bytes, part.rows));
        }
        let mut written = Written::default();
        for (partition, (data, bytes, rows)) in blocks.into_iter().enumerate() {
            let part = &mut self.parts[partition];
            if let Data::Disk(file) = &data {
                self.store.disk.fetch_add(file.bytes, Ordering::AcqRel);
                self.store
                    .spilled_total
                    .fetch_add(file.bytes, Ordering::Relaxed);
                written.spilled_bytes += file.bytes;
                written.spill_count += 1;
            }
            // The reservation now belongs to the stored block.
            part.reserved = 0;
            let block = Block {
                schema: Arc::clone(&self.schema),
                data,
                bytes,
                rows,
            };
            self.store.insert(key(partition as u32), block, self.cache);
            written.sizes.push((bytes, rows));
        }
        Ok(written)
    }
}

impl Drop for BlockWriter<'_> {
    fn drop(&mut self) {
        for part in &mut self.parts {
            if part.reserved > 0 {
                self.store.unreserve(std::mem::take(&mut part.reserved));
            }
            if let Some((path, _)) = part.file.take() {
                drop(SpillFile { path, bytes: 0 });
            }
        }
    }
}

fn arrow_spill_error(path: &Path, e: arrow::error::ArrowError) -> Error {
    match e {
        arrow::error::ArrowError::IoError(_, io) => spill_error("writing", path, io),
        other => Error::from(other),
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
