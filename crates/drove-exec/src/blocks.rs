//! A worker's store of shuffle blocks.
//!
//! A block is the output of one task attempt for one reduce partition. Blocks stay in
//! memory while the store's memory limit allows; an output partition that does not fit
//! is written to the store's spill directory as compressed Arrow IPC instead, and read
//! back from there the same way. A block gives its memory back, and its file is
//! deleted, when it has been released and its last reader is done with it.
//!
//! A block belongs to its job until the coordinator hands it to a cached table
//! ([`BlockStore::adopt`]): releasing a job frees the job's own blocks and leaves
//! cached ones, which go when their table is uncached.

use std::collections::{HashSet, VecDeque};
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

use drove_core::scheduler::HeldOutput;
use drove_core::{JobId, StageId, TaskId};

use crate::{Error, Result};

/// The name of one block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockKey {
    pub job: u64,
    pub stage: u32,
    pub map_partition: u32,
    pub reduce_partition: u32,
    pub attempt: u32,
}

impl BlockKey {
    /// The task output the block is part of.
    fn output(&self) -> OutputKey {
        (self.job, self.stage, self.map_partition, self.attempt)
    }
}

/// The name of one task attempt's output: job, stage, map partition, attempt.
pub type OutputKey = (u64, u32, u32, u32);

impl std::fmt::Display for BlockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "block job-{}/stage-{}/map-{}/reduce-{}#{}",
            self.job, self.stage, self.map_partition, self.reduce_partition, self.attempt
        )
    }
}

/// A batch whose columns hold only the bytes their rows use.
///
/// Splitting a batch by partition (`take`) or by size (`slice`) keeps every view
/// column's data buffers whole, and DataFusion's hash repartitioning takes a batch
/// once in partition order and hands out slices of it, so each piece would carry the
/// whole batch's buffers: counted in full against the block store's memory (a 500 by
/// 500 shuffle counted each block 500 times over and spilled) and kept alive while
/// any piece is. Compacting before a block is stored keeps its size proportional to
/// its rows. (A map task's pieces go through [`BlockWriter::push_pieces`] instead,
/// which copies only their view columns and counts the batch once among them.)
pub fn compact(batch: RecordBatch) -> RecordBatch {
    compact_columns(batch, true)
}

/// [`compact`], or with `copy_slices` false, of the view columns only: the other
/// columns of a slice stay slices of the batch they came from.
fn compact_columns(batch: RecordBatch, copy_slices: bool) -> RecordBatch {
    use arrow::array::{Array, ArrayRef, AsArray, GenericByteViewArray, MutableArrayData};
    use arrow::datatypes::{ByteViewType, DataType};
    // Copies only when the buffers hold at least twice the bytes the rows use.
    fn compact_view<T: ByteViewType + ?Sized>(a: &GenericByteViewArray<T>) -> Option<ArrayRef> {
        let buffers: usize = a.data_buffers().iter().map(|b| b.len()).sum();
        (buffers > 2 * a.total_buffer_bytes_used()).then(|| Arc::new(a.gc()) as ArrayRef)
    }
    /// A copy of just the rows of a slice whose buffers are more than twice (and a
    /// page) larger than the rows need.
    fn compact_slice(a: &ArrayRef) -> Option<ArrayRef> {
        let held = a.get_buffer_memory_size();
        if held <= 4096 {
            return None; // too small to matter: skip measuring the slice
        }
        let data = a.to_data();
        let used = data.get_slice_memory_size().ok()?;
        if held <= 2 * used + 4096 {
            return None;
        }
        let mut copy = MutableArrayData::new(vec![&data], false, a.len());
        copy.try_extend(0, 0, a.len()).ok()?;
        Some(arrow::array::make_array(copy.freeze()))
    }
    let compacted: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| {
            let compacted = match c.data_type() {
                DataType::Utf8View => compact_view(c.as_string_view()),
                DataType::BinaryView => compact_view(c.as_binary_view()),
                _ if copy_slices => compact_slice(c),
                _ => None,
            };
            compacted.unwrap_or_else(|| Arc::clone(c))
        })
        .collect();
    RecordBatch::try_new(batch.schema(), compacted).unwrap_or(batch)
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

    /// The same codec for DataFusion's own spill files.
    pub fn datafusion(self) -> datafusion::common::config::SpillCompression {
        use datafusion::common::config::SpillCompression;
        match self {
            SpillCodec::None => SpillCompression::Uncompressed,
            SpillCodec::Lz4 => SpillCompression::Lz4Frame,
            SpillCodec::Zstd => SpillCompression::Zstd,
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

/// Memory and disk a store's blocks hold, shared with the blocks so that each gives
/// back what it took when it is dropped.
#[derive(Debug, Default)]
struct Counters {
    memory: AtomicU64,
    peak: AtomicU64,
    disk: AtomicU64,
}

impl Counters {
    /// Takes `bytes` of memory if the total stays within `limit`.
    fn try_reserve(&self, bytes: u64, limit: u64) -> bool {
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
}

/// A spill file, deleted when dropped.
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    bytes: u64,
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "could not delete a spill file: {e}")
            }
        }
    }
}

#[derive(Debug)]
enum Data {
    Memory(Vec<RecordBatch>),
    Disk(SpillFile),
}

/// One block's data, in memory or in a file.
#[derive(Debug)]
pub struct Block {
    pub schema: SchemaRef,
    data: Data,
    /// Bytes the block takes in memory (as Arrow arrays), wherever it is now.
    pub bytes: u64,
    pub rows: u64,
    counters: Arc<Counters>,
}

impl Drop for Block {
    fn drop(&mut self) {
        match &self.data {
            Data::Memory(_) => self.counters.unreserve(self.bytes),
            Data::Disk(file) => {
                self.counters.disk.fetch_sub(file.bytes, Ordering::AcqRel);
            }
        }
    }
}

/// A stream of one block's batches; it keeps the block alive while it is read.
pub type BlockReader = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// How many batches of a spilled block are read ahead of the one being sent.
const READ_AHEAD_BATCHES: usize = 2;

impl Block {
    /// Whether the block lives in a file rather than in memory.
    pub fn is_spilled(&self) -> bool {
        matches!(self.data, Data::Disk(_))
    }

    /// Reads the block: its batches from memory, or one at a time from its file.
    pub fn read(self: &Arc<Self>) -> Result<BlockReader> {
        match &self.data {
            Data::Memory(_) => {
                let block = Arc::clone(self);
                let mut next = 0;
                Ok(Box::new(std::iter::from_fn(move || {
                    let Data::Memory(batches) = &block.data else {
                        return None;
                    };
                    let batch = batches.get(next)?.clone();
                    next += 1;
                    Some(Ok(batch))
                })))
            }
            Data::Disk(file) => {
                let opened =
                    File::open(&file.path).map_err(|e| spill_error("reading", &file.path, e))?;
                let reader = StreamReader::try_new(BufReader::new(opened), None)?;
                let block = Arc::clone(self);
                Ok(Box::new(reader.map(move |b| {
                    let _keep = &block;
                    b.map_err(Error::from)
                })))
            }
        }
    }
}

impl Block {
    /// Reads the block from async code without blocking its runtime: batches in
    /// memory come at once; a spilled block's file is opened and read on a blocking
    /// thread, at most [`READ_AHEAD_BATCHES`] ahead of the reader. Dropping the stream
    /// stops the reading.
    pub fn stream(self: &Arc<Self>) -> crate::shuffle::BlockStream {
        use futures::StreamExt as _;
        if !self.is_spilled() {
            return match self.read() {
                Ok(batches) => futures::stream::iter(batches).boxed(),
                Err(e) => futures::stream::once(futures::future::ready(Err(e))).boxed(),
            };
        }
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD_BATCHES);
        let block = Arc::clone(self);
        tokio::task::spawn_blocking(move || match block.read() {
            Ok(batches) => {
                for batch in batches {
                    if tx.blocking_send(batch).is_err() {
                        break; // the reader went away
                    }
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            let batch = rx.recv().await?;
            Some((batch, rx))
        })
        .boxed()
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

fn arrow_spill_error(path: &Path, e: arrow::error::ArrowError) -> Error {
    match e {
        arrow::error::ArrowError::IoError(_, io) => spill_error("writing", path, io),
        other => Error::from(other),
    }
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
    /// Bytes of blocks in memory: stored, being written, or released but still read.
    pub memory_bytes: u64,
    /// The most `memory_bytes` has been.
    pub peak_memory_bytes: u64,
    /// Bytes of spill files on disk now.
    pub disk_bytes: u64,
    /// Bytes written to spill files since the store started, and how many files.
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

/// Released jobs remembered, so that a task that finishes after its job was released
/// does not leave blocks nobody will free.
const RELEASED_JOBS_MAX: usize = 4096;

/// One task attempt's blocks, by reduce partition; `None` once released.
#[derive(Debug)]
struct Output {
    parts: Vec<Option<Entry>>,
    held: usize,
}

#[derive(Debug, Default)]
struct Blocks {
    /// Blocks by the task output they belong to: a task of a wide exchange writes a
    /// block per reduce partition and every reduce task reads one from each map task,
    /// so a task costs one map operation here, not one per partition. DataFusion's
    /// map, whose hash costs a fraction of the standard one's: a 500 by 500 exchange
    /// looks up 250,000 blocks.
    outputs: datafusion::common::HashMap<OutputKey, Output>,
    /// Blocks in `outputs`, counted as they come and go: every heartbeat reports it.
    held: usize,
    /// The released jobs, oldest first, and the same as a set.
    released: VecDeque<u64>,
    released_set: HashSet<u64>,
    /// Bumped by [`BlockStore::release_all`] and [`BlockStore::fence`]: writers
    /// started before it store nothing (their worker's session ended, and job ids may
    /// start again).
    generation: u64,
}

impl Blocks {
    fn entry(&self, key: &BlockKey) -> Option<&Entry> {
        let output = self.outputs.get(&key.output())?;
        output.parts.get(key.reduce_partition as usize)?.as_ref()
    }

    fn entry_mut(&mut self, key: &BlockKey) -> Option<&mut Entry> {
        let output = self.outputs.get_mut(&key.output())?;
        output
            .parts
            .get_mut(key.reduce_partition as usize)?
            .as_mut()
    }
}

/// The blocks one worker holds.
#[derive(Debug, Default)]
pub struct BlockStore {
    blocks: Mutex<Blocks>,
    config: StoreConfig,
    counters: Arc<Counters>,
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

    fn memory_limit(&self) -> u64 {
        if self.config.spill_dir.is_some() {
            self.config.memory_limit
        } else {
            u64::MAX
        }
    }

    /// Starts writing the blocks of one task attempt, `partitions` of them.
    pub fn writer(&self, schema: SchemaRef, partitions: usize) -> BlockWriter<'_> {
        BlockWriter {
            store: self,
            schema,
            generation: self.lock().generation,
            parts: (0..partitions).map(|_| Part::default()).collect(),
        }
    }

    /// Stores a task attempt's finished blocks, one per reduce partition: false if its
    /// job was released, or the store emptied or fenced, since its writer started (the blocks
    /// are dropped); an error if the attempt stored blocks before (attempts are unique,
    /// so that is a bug).
    fn insert(&self, output: OutputKey, blocks: Vec<Arc<Block>>, generation: u64) -> Result<bool> {
        let mut guard = self.lock();
        let held = &mut *guard;
        if held.generation != generation || held.released_set.contains(&output.0) {
            return Ok(false);
        }
        let (job, stage, map_partition, attempt) = output;
        match held.outputs.entry(output) {
            datafusion::common::hash_map::Entry::Occupied(_) => Err(Error::Internal(format!(
                "job-{job}/stage-{stage}/map-{map_partition}#{attempt} stored its blocks twice"
            ))),
            datafusion::common::hash_map::Entry::Vacant(v) => {
                let parts: Vec<_> = blocks
                    .into_iter()
                    .map(|block| Some(Entry { block, cache: None }))
                    .collect();
                held.held += parts.len();
                v.insert(Output {
                    held: parts.len(),
                    parts,
                });
                Ok(true)
            }
        }
    }

    pub fn get(&self, key: &BlockKey) -> Option<Arc<Block>> {
        self.lock().entry(key).map(|e| Arc::clone(&e.block))
    }

    /// The blocks of `keys`, in order, looked up under one lock.
    pub fn get_many(&self, keys: &[BlockKey]) -> Vec<Option<Arc<Block>>> {
        let blocks = self.lock();
        keys.iter()
            .map(|key| blocks.entry(key).map(|e| Arc::clone(&e.block)))
            .collect()
    }

    /// Hands blocks of a finished job to cached table `cache`: releasing the job
    /// leaves them. Returns how many of them this store holds.
    pub fn adopt(&self, keys: &[BlockKey], cache: u64) -> usize {
        let mut blocks = self.lock();
        let mut held = 0;
        for key in keys {
            if let Some(entry) = blocks.entry_mut(key) {
                entry.cache = Some(cache);
                held += 1;
            }
        }
        held
    }

    /// Drops the blocks `drop` picks among the outputs `outputs` picks; returns how
    /// many bytes they take. Their memory and files go once nobody reads them any more.
    fn release(
        &self,
        blocks: &mut Blocks,
        outputs: impl Fn(&OutputKey) -> bool,
        drop: impl Fn(&BlockKey, &Entry) -> bool,
    ) -> u64 {
        let (mut freed, mut dropped) = (0, 0);
        blocks
            .outputs
            .retain(|&(job, stage, map_partition, attempt), output| {
                if !outputs(&(job, stage, map_partition, attempt)) {
                    return true;
                }
                for (reduce, part) in output.parts.iter_mut().enumerate() {
                    let key = BlockKey {
                        job,
                        stage,
                        map_partition,
                        reduce_partition: reduce as u32,
                        attempt,
                    };
                    if part.as_ref().is_some_and(|e| drop(&key, e)) {
                        freed += part.take().map_or(0, |e| e.block.bytes);
                        output.held -= 1;
                        dropped += 1;
                    }
                }
                output.held > 0
            });
        blocks.held -= dropped;
        freed
    }

    /// Drops every block of a job but those handed to cached tables; blocks its tasks
    /// finish later are dropped as they come. Returns the bytes freed.
    pub fn release_job(&self, job: u64) -> u64 {
        let mut blocks = self.lock();
        if blocks.released_set.insert(job) {
            if blocks.released.len() == RELEASED_JOBS_MAX
                && let Some(oldest) = blocks.released.pop_front()
            {
                blocks.released_set.remove(&oldest);
            }
            blocks.released.push_back(job);
        }
        self.release(&mut blocks, |o| o.0 == job, |_, e| e.cache.is_none())
    }

    /// Drops every block of a cached table; returns the bytes freed.
    pub fn release_cache(&self, cache: u64) -> u64 {
        let mut blocks = self.lock();
        self.release(&mut blocks, |_| true, |_, e| e.cache == Some(cache))
    }

    /// Drops these blocks (of a cached table, say, that has a newer copy elsewhere);
    /// returns the bytes freed.
    pub fn release_blocks(&self, keys: &[BlockKey]) -> u64 {
        let mut blocks = self.lock();
        let outputs: HashSet<OutputKey> = keys.iter().map(BlockKey::output).collect();
        let keys: HashSet<&BlockKey> = keys.iter().collect();
        self.release(
            &mut blocks,
            |o| outputs.contains(o),
            |k, _| keys.contains(k),
        )
    }

    /// Ends a worker's session but keeps its tasks' outputs for the next coordinator
    /// (one that took over, or restarted on its data directory): tasks started before
    /// now store nothing, and blocks handed to cached tables go (a coordinator that
    /// takes over computes cached tables again). Returns the bytes freed.
    /// Outputs no longer whole go too: no coordinator could use them.
    pub fn fence(&self) -> u64 {
        let mut blocks = self.lock();
        blocks.generation += 1;
        let cached = self.release(&mut blocks, |_| true, |_, e| e.cache.is_some());
        let partial: HashSet<OutputKey> = (blocks.outputs.iter())
            .filter(|(_, o)| o.held < o.parts.len())
            .map(|(key, _)| *key)
            .collect();
        cached + self.release(&mut blocks, |o| partial.contains(o), |_, _| true)
    }

    /// The task outputs held whole, that no cached table owns, in order (after a
    /// [`BlockStore::fence`], every output held).
    pub fn held_outputs(&self) -> Vec<HeldOutput> {
        let blocks = self.lock();
        let mut held: Vec<HeldOutput> = (blocks.outputs.iter())
            .filter(|(_, o)| {
                o.held == o.parts.len() && o.parts.iter().flatten().all(|e| e.cache.is_none())
            })
            .map(|(&(job, stage, partition, attempt), o)| {
                let entries = o.parts.iter().flatten();
                HeldOutput {
                    task: TaskId {
                        job: JobId(job),
                        stage: StageId(stage),
                        partition,
                    },
                    attempt,
                    rows: entries.clone().map(|e| e.block.rows).sum(),
                    bytes: entries.map(|e| e.block.bytes).sum(),
                }
            })
            .collect();
        held.sort_by_key(|h| (h.task, h.attempt));
        held
    }

    /// Drops these task outputs (held ones no coordinator wanted); returns the bytes
    /// freed.
    pub fn release_outputs(&self, outputs: &[OutputKey]) -> u64 {
        let mut blocks = self.lock();
        let outputs: HashSet<&OutputKey> = outputs.iter().collect();
        self.release(
            &mut blocks,
            |o| outputs.contains(o),
            |_, e| e.cache.is_none(),
        )
    }

    /// Drops every block, and every block a task started before now would store;
    /// returns how many bytes that freed.
    pub fn release_all(&self) -> u64 {
        let mut blocks = self.lock();
        blocks.generation += 1;
        blocks.released.clear();
        blocks.released_set.clear();
        self.release(&mut blocks, |_| true, |_, _| true)
    }

    /// Bytes of blocks in memory (see [`StoreStats::memory_bytes`]).
    pub fn bytes_held(&self) -> u64 {
        self.counters.memory.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> StoreStats {
        StoreStats {
            memory_bytes: self.bytes_held(),
            peak_memory_bytes: self.counters.peak.load(Ordering::Relaxed),
            disk_bytes: self.counters.disk.load(Ordering::Acquire),
            spilled_bytes_total: self.spilled_total.load(Ordering::Relaxed),
            spill_count: self.spill_count.load(Ordering::Relaxed),
            blocks: self.len() as u64,
        }
    }

    /// Number of blocks held.
    pub fn len(&self) -> usize {
        self.lock().held
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Blocks> {
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
    /// Bytes of the blocks kept in memory.
    pub memory_bytes: u64,
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
    /// Once the partition no longer fits in memory: its file (deleted if the writer
    /// is dropped unfinished) and the writer into it.
    file: Option<(SpillFile, StreamWriter<BufWriter<File>>)>,
}

/// Writes one task attempt's blocks: in memory while the store's limit allows, then to
/// a spill file per partition. Dropped unfinished (the task failed or was stopped), it
/// gives back its memory and deletes its files.
pub struct BlockWriter<'a> {
    store: &'a BlockStore,
    schema: SchemaRef,
    generation: u64,
    parts: Vec<Part>,
}

impl BlockWriter<'_> {
    /// Appends a batch to output partition `partition`.
    pub fn push(&mut self, partition: usize, batch: RecordBatch) -> Result<()> {
        let batch = compact(batch);
        let size = batch.get_array_memory_size() as u64;
        self.push_sized(partition, batch, size)
    }

    /// Appends the pieces of one batch, each to its output partition: the slices that
    /// DataFusion's repartitioning cuts from one batch it took in partition order. They
    /// are kept as slices, not copied (in a 500-way exchange a piece is a few rows, and
    /// copying them one by one cost more than the take), and the batch's memory is
    /// counted once, shared among its pieces by rows. The batch lives while any of its
    /// pieces does; the pieces of a task's output go together when its job ends.
    pub fn push_pieces(&mut self, pieces: Vec<(usize, RecordBatch)>) -> Result<()> {
        let Some((_, first)) = pieces.first() else {
            return Ok(());
        };
        let shared = first.get_array_memory_size() as u64;
        let rows = pieces
            .iter()
            .map(|(_, b)| b.num_rows() as u64)
            .sum::<u64>()
            .max(1);
        for (partition, piece) in pieces {
            let share = shared * piece.num_rows() as u64 / rows;
            // A view column's pieces would each carry all its data buffers: copied
            // apart, they count their own bytes on top of their share.
            let compacted = compact_columns(piece.clone(), false);
            let own: usize = compacted
                .columns()
                .iter()
                .zip(piece.columns())
                .filter(|(new, old)| !Arc::ptr_eq(new, old))
                .map(|(new, _)| new.get_array_memory_size())
                .sum();
            self.push_sized(partition, compacted, share + own as u64)?;
        }
        Ok(())
    }

    fn push_sized(&mut self, partition: usize, batch: RecordBatch, size: u64) -> Result<()> {
        let count = self.parts.len();
        let part = self.parts.get_mut(partition).ok_or_else(|| {
            Error::Internal(format!(
                "a task wrote to output partition {partition} of {count}"
            ))
        })?;
        part.bytes += size;
        part.rows += batch.num_rows() as u64;
        let counters = &self.store.counters;
        if part.file.is_none() && counters.try_reserve(size, self.store.memory_limit()) {
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
            // From here the file is deleted if anything goes wrong.
            let spill = SpillFile { path, bytes: 0 };
            let options = IpcWriteOptions::default()
                .try_with_compression(self.store.config.codec.compression())?;
            let mut writer =
                StreamWriter::try_new_with_options(BufWriter::new(file), &self.schema, options)
                    .map_err(|e| arrow_spill_error(&spill.path, e))?;
            for b in &part.batches {
                writer
                    .write(b)
                    .map_err(|e| arrow_spill_error(&spill.path, e))?;
            }
            part.batches.clear();
            counters.unreserve(std::mem::take(&mut part.reserved));
            part.file = Some((spill, writer));
        }
        let (spill, writer) = part.file.as_mut().expect("spilling");
        writer
            .write(&batch)
            .map_err(|e| arrow_spill_error(&spill.path, e))
    }

    /// Stores the blocks as the task output `output` names (its reduce partition is
    /// each block's own).
    pub fn finish(mut self, output: BlockKey) -> Result<Written> {
        let counters = Arc::clone(&self.store.counters);
        // Every block is made before any is stored: a failure stores nothing, and the
        // blocks made so far give their memory and files back as they drop.
        let mut blocks = Vec::with_capacity(self.parts.len());
        let mut written = Written::default();
        // In a wide exchange most of a task's partitions get no rows (all of them, for
        // a task whose input was empty): they share one empty block rather than each
        // costing an allocation to make, look up and free.
        let mut empty: Option<Arc<Block>> = None;
        for part in &mut self.parts {
            if part.rows == 0 && part.file.is_none() {
                part.batches.clear();
                counters.unreserve(std::mem::take(&mut part.reserved));
                written.sizes.push((0, 0));
                let block = empty.get_or_insert_with(|| {
                    Arc::new(Block {
                        schema: Arc::clone(&self.schema),
                        data: Data::Memory(Vec::new()),
                        bytes: 0,
                        rows: 0,
                        counters: Arc::clone(&counters),
                    })
                });
                blocks.push(Arc::clone(block));
                continue;
            }
            let data = match part.file.take() {
                None => {
                    written.memory_bytes += part.bytes;
                    Data::Memory(std::mem::take(&mut part.batches))
                }
                Some((mut spill, writer)) => {
                    let buffered = writer
                        .into_inner()
                        .map_err(|e| arrow_spill_error(&spill.path, e))?;
                    let file = buffered
                        .into_inner()
                        .map_err(|e| spill_error("writing", &spill.path, e.into_error()))?;
                    spill.bytes = file
                        .metadata()
                        .map_err(|e| spill_error("writing", &spill.path, e))?
                        .len();
                    counters.disk.fetch_add(spill.bytes, Ordering::AcqRel);
                    written.spilled_bytes += spill.bytes;
                    written.spill_count += 1;
                    Data::Disk(spill)
                }
            };
            // The reservation now belongs to the block.
            part.reserved = 0;
            written.sizes.push((part.bytes, part.rows));
            blocks.push(Arc::new(Block {
                schema: Arc::clone(&self.schema),
                data,
                bytes: part.bytes,
                rows: part.rows,
                counters: Arc::clone(&counters),
            }));
        }
        let store = self.store;
        store
            .spilled_total
            .fetch_add(written.spilled_bytes, Ordering::Relaxed);
        store
            .spill_count
            .fetch_add(written.spill_count, Ordering::Relaxed);
        store.insert(output.output(), blocks, self.generation)?;
        Ok(written)
    }
}

impl Drop for BlockWriter<'_> {
    fn drop(&mut self) {
        for part in &mut self.parts {
            if part.reserved > 0 {
                self.store
                    .counters
                    .unreserve(std::mem::take(&mut part.reserved));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, StringViewArray, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;

    use super::*;

    fn numbers(n: i64) -> RecordBatch {
        use arrow::array::Int64Array;
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from_iter_values(0..n))]).unwrap()
    }

    fn key(job: u64, reduce: u32) -> BlockKey {
        BlockKey {
            job,
            stage: 0,
            map_partition: 0,
            reduce_partition: reduce,
            attempt: 0,
        }
    }

    /// A spilled block streams the batches its file holds, read on a blocking thread;
    /// a stream dropped half read stops the reading and lets the file go.
    #[tokio::test(flavor = "current_thread")]
    async fn a_spilled_block_streams_from_a_blocking_thread() {
        use futures::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let batch = numbers(1_000);
        let store = BlockStore::new(StoreConfig {
            memory_limit: 0,
            spill_dir: Some(dir.path().to_path_buf()),
            codec: SpillCodec::Lz4,
        });
        let mut writer = store.writer(batch.schema(), 1);
        for _ in 0..5 {
            writer.push(0, batch.clone()).unwrap();
        }
        writer.finish(key(1, 0)).unwrap();
        let block = store.get(&key(1, 0)).unwrap();
        assert!(block.is_spilled());
        let read: Vec<RecordBatch> = block.stream().map(Result::unwrap).collect().await;
        assert_eq!(read, vec![batch.clone(); 5]);
        let mut half = block.stream();
        assert_eq!(half.next().await.unwrap().unwrap(), batch);
        drop((half, block));
        store.release_job(1);
        // The reading thread ends once its sends fail, and the file goes with it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while store.stats().disk_bytes > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the reading thread never ended"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn blocks_past_the_limit_spill_and_read_back_the_same_and_go_when_released() {
        let dir = tempfile::tempdir().unwrap();
        let batch = numbers(10_000);
        let size = batch.get_array_memory_size() as u64;
        let store = BlockStore::new(StoreConfig {
            memory_limit: 3 * size,
            spill_dir: Some(dir.path().to_path_buf()),
            codec: SpillCodec::Zstd,
        });
        let mut writer = store.writer(batch.schema(), 2);
        for _ in 0..2 {
            writer.push(0, batch.clone()).unwrap();
            writer.push(1, batch.clone()).unwrap();
        }
        let written = writer.finish(key(1, 0)).unwrap();
        // Three batches fit: partition 1's second one did not, so partition 1 spilled.
        assert_eq!(written.spill_count, 1);
        assert!(written.spilled_bytes > 0);
        let stats = store.stats();
        assert_eq!(stats.memory_bytes, 2 * size);
        assert!(stats.disk_bytes > 0 && stats.peak_memory_bytes >= 3 * size);
        let spilled = store.get(&key(1, 1)).unwrap();
        assert!(spilled.is_spilled());
        let read: Vec<RecordBatch> = spilled.read().unwrap().map(Result::unwrap).collect();
        assert_eq!(read, vec![batch.clone(), batch.clone()]);

        // A reader keeps a released block's memory and file until it is done.
        let in_memory = store.get(&key(1, 0)).unwrap();
        let mut reader = in_memory.read().unwrap();
        drop((in_memory, spilled));
        store.release_job(1);
        assert_eq!(store.len(), 0);
        assert_eq!(store.stats().memory_bytes, 2 * size);
        assert_eq!(reader.next().unwrap().unwrap(), batch);
        drop(reader);
        assert_eq!(store.stats().memory_bytes, 0);
        assert_eq!(store.stats().disk_bytes, 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a spill file is left"
        );

        // A task of the released job that finishes late leaves nothing.
        let mut late = store.writer(batch.schema(), 1);
        late.push(0, batch.clone()).unwrap();
        late.finish(key(1, 0)).unwrap();
        assert!(store.is_empty());
        assert_eq!(store.stats().memory_bytes, 0);

        // Nor does one started before the store was emptied (a new session), while
        // the job ids the new session sees may start again.
        let mut old = store.writer(batch.schema(), 1);
        old.push(0, batch.clone()).unwrap();
        store.release_all();
        old.finish(key(2, 0)).unwrap();
        assert!(store.is_empty());
        let mut reused = store.writer(batch.schema(), 1);
        reused.push(0, batch.clone()).unwrap();
        reused.finish(key(1, 0)).unwrap();
        assert_eq!(store.len(), 1, "a reused job id's block was dropped");
        assert_eq!(store.release_blocks(&[key(1, 0)]), size);
        assert!(store.is_empty());
    }

    /// A session's end keeps whole task outputs for the next coordinator, drops what
    /// cached tables own and what is no longer whole, and stores nothing that a task
    /// of the old session finishes.
    #[test]
    fn a_fenced_store_keeps_whole_outputs_and_lists_them() {
        let store = BlockStore::default();
        let batch = numbers(100);
        let size = batch.get_array_memory_size() as u64;
        for job in [1, 2, 3] {
            let mut writer = store.writer(batch.schema(), 2);
            writer.push(0, batch.clone()).unwrap();
            writer.push(1, batch.clone()).unwrap();
            writer.finish(key(job, 0)).unwrap();
        }
        store.adopt(&[key(2, 0), key(2, 1)], 7);
        // One block of job 3's output is gone: the output is no longer whole.
        store.release_blocks(&[key(3, 1)]);
        let mut late = store.writer(batch.schema(), 1);
        late.push(0, batch.clone()).unwrap();
        assert_eq!(store.fence(), 3 * size, "the cached and partial outputs go");
        late.finish(key(4, 0)).unwrap();
        assert_eq!(
            store.held_outputs(),
            vec![HeldOutput {
                task: TaskId {
                    job: JobId(1),
                    stage: StageId(0),
                    partition: 0,
                },
                attempt: 0,
                rows: 200,
                bytes: 2 * size,
            }],
            "job 4's late output is not stored"
        );
        assert_eq!(store.release_outputs(&[(1, 0, 0, 0)]), 2 * size);
        assert!(store.is_empty());
    }

    #[test]
    fn adopted_blocks_outlive_their_job_and_go_with_their_cache() {
        let store = BlockStore::default();
        let batch = numbers(100);
        for job in [1, 2] {
            let mut writer = store.writer(batch.schema(), 1);
            writer.push(0, batch.clone()).unwrap();
            writer.finish(key(job, 0)).unwrap();
        }
        assert_eq!(store.adopt(&[key(1, 0), key(9, 0)], 7), 1);
        store.release_job(1);
        store.release_job(2);
        assert_eq!(store.len(), 1);
        assert!(store.get(&key(1, 0)).is_some());
        store.release_cache(7);
        assert!(store.is_empty());
        assert_eq!(store.stats().memory_bytes, 0);
        // A key written twice is an error, not a panic.
        let mut writer = store.writer(batch.schema(), 1);
        writer.push(0, batch.clone()).unwrap();
        writer.finish(key(3, 0)).unwrap();
        let mut again = store.writer(batch.schema(), 1);
        again.push(0, batch).unwrap();
        assert!(again.finish(key(3, 0)).is_err());
    }

    /// A task's blocks are stored together but found, adopted and released one by one.
    #[test]
    fn the_blocks_of_one_task_come_and_go_one_by_one() {
        let store = BlockStore::default();
        let batch = numbers(10);
        let mut writer = store.writer(batch.schema(), 3);
        for reduce in 0..3 {
            writer.push(reduce, numbers(reduce as i64 + 1)).unwrap();
        }
        writer.finish(key(1, 0)).unwrap();
        assert_eq!(store.len(), 3);
        let found = store.get_many(&[key(1, 2), key(1, 3), key(2, 0), key(1, 0)]);
        let rows: Vec<_> = found.iter().map(|b| b.as_ref().map(|b| b.rows)).collect();
        assert_eq!(rows, [Some(3), None, None, Some(1)]);
        assert_eq!(store.adopt(&[key(1, 1)], 5), 1);
        let one_row = store.get(&key(1, 0)).unwrap().bytes;
        assert_eq!(store.release_blocks(&[key(1, 0), key(1, 7)]), one_row);
        assert_eq!((store.len(), store.get(&key(1, 0)).is_none()), (2, true));
        store.release_job(1);
        assert_eq!(store.len(), 1, "the adopted block stays");
        assert_eq!(store.get(&key(1, 1)).map(|b| b.rows), Some(2));
        store.release_cache(5);
        assert!(store.is_empty());
    }

    /// The partitions a task wrote no rows to share one empty block, which reads as
    /// nothing and holds no memory, even where an empty batch was pushed; each is
    /// still found and released like any other.
    #[test]
    fn a_tasks_empty_partitions_share_one_empty_block() {
        let store = BlockStore::default();
        let batch = numbers(1_000);
        let mut writer = store.writer(batch.schema(), 4);
        writer.push(0, batch.slice(0, 0)).unwrap();
        writer.push(2, numbers(5)).unwrap();
        let written = writer.finish(key(1, 0)).unwrap();
        let rows: Vec<u64> = written.sizes.iter().map(|(_, rows)| *rows).collect();
        assert_eq!(rows, [0, 0, 5, 0]);
        assert_eq!(store.bytes_held(), written.sizes[2].0);
        let found: Vec<_> = store
            .get_many(&[key(1, 0), key(1, 1), key(1, 3)])
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert!(Arc::ptr_eq(&found[0], &found[1]) && Arc::ptr_eq(&found[1], &found[2]));
        assert_eq!((found[0].rows, found[0].bytes), (0, 0));
        assert_eq!(found[0].read().unwrap().count(), 0);
        assert_eq!(store.len(), 4);
        drop(found);
        store.release_job(1);
        assert_eq!((store.len(), store.bytes_held()), (0, 0));
    }

    /// The pieces of one batch (as hash repartitioning cuts them) are kept as they
    /// are and count the batch's memory once between them, not once each; a piece that
    /// spills writes only its own rows.
    #[test]
    fn the_pieces_of_one_batch_count_its_memory_once() {
        const PIECES: usize = 100;
        let dir = tempfile::tempdir().unwrap();
        let batch = numbers(10_000);
        let size = batch.get_array_memory_size() as u64;
        let pieces: Vec<(usize, RecordBatch)> = (0..PIECES)
            .map(|p| (p, batch.slice(p * 100, 100)))
            .collect();
        let read = |store: &BlockStore, p: usize| -> Vec<RecordBatch> {
            let block = store.get(&key(1, p as u32)).unwrap();
            block.read().unwrap().map(Result::unwrap).collect()
        };
        // Room for the batch and a little: a piece that counted the whole batch would
        // leave no room for the next.
        let store = BlockStore::new(StoreConfig {
            memory_limit: size + size / 2,
            spill_dir: Some(dir.path().to_path_buf()),
            codec: SpillCodec::None,
        });
        let mut writer = store.writer(batch.schema(), PIECES);
        writer.push_pieces(pieces.clone()).unwrap();
        let written = writer.finish(key(1, 0)).unwrap();
        assert_eq!((written.spill_count, store.len()), (0, PIECES));
        let memory = store.stats().memory_bytes;
        assert!(
            (size - PIECES as u64..=size).contains(&memory),
            "{memory} bytes held for a batch of {size}"
        );
        for (p, piece) in &pieces {
            assert_eq!(read(&store, *p), vec![piece.clone()], "piece {p}");
        }
        store.release_job(1);
        assert_eq!(store.stats().memory_bytes, 0);

        // With no memory, every piece spills, and its file holds its rows only.
        let store = BlockStore::new(StoreConfig {
            memory_limit: 0,
            spill_dir: Some(dir.path().to_path_buf()),
            codec: SpillCodec::None,
        });
        let mut writer = store.writer(batch.schema(), PIECES);
        writer.push_pieces(pieces.clone()).unwrap();
        let written = writer.finish(key(1, 0)).unwrap();
        assert_eq!(written.spill_count, PIECES as u64);
        let file_bytes = written.spilled_bytes / written.spill_count;
        assert!(
            file_bytes < size / 10,
            "a spilled piece of 100 rows took {file_bytes} bytes of a batch of {size}"
        );
        for (p, piece) in &pieces {
            assert_eq!(read(&store, *p), vec![piece.clone()], "piece {p}");
        }
        store.release_job(1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_slice_of_a_large_batch_is_counted_and_kept_at_its_own_size() {
        let big = numbers(100_000);
        let piece = big.slice(500, 20);
        assert!(
            piece.get_array_memory_size() > 100 * 20 * 8,
            "a slice counts it all"
        );
        let compacted = compact(piece.clone());
        assert!(
            compacted.get_array_memory_size() < 4096,
            "{} bytes",
            compacted.get_array_memory_size()
        );
        assert_eq!(compacted, piece);
        // A batch that is not a slice is left as it is.
        let small = numbers(20);
        let same = compact(small.clone());
        assert!(Arc::ptr_eq(small.column(0), same.column(0)));
    }

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
