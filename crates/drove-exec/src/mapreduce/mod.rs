//! MapReduce: user-written map, combine and reduce functions, run as plan nodes.
//!
//! A job implements [`MapReduce`] and is registered by name with [`register`]. The same
//! binary runs on every node, so a plan that names a job finds its code wherever its
//! tasks run. A job compiles to a physical plan (see [`plan`]):
//!
//! ```text
//! ReduceExec            reduce every key of one partition, write part-r-NNNNN
//!   RepartitionExec     hash (or range) on the key: the shuffle
//!     MapExec           map (and combine) each record
//!       TextSourceExec  lines of text files (or a DataFusion CSV / Parquet scan)
//! ```
//!
//! and runs through the same distributed planner, scheduler and shuffle as SQL.

mod datum;
pub mod nodes;
pub mod plan;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, OnceLock, RwLock};

use arrow::array::{ArrayRef, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

pub use datum::Datum;

use crate::{Error, Result};

/// One input record handed to [`MapReduce::map`].
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The file it came from.
    pub file: &'a str,
    /// Its line number in that file (1-based) for text input; its row number for
    /// CSV and Parquet input.
    pub line: u64,
    /// The line, or for CSV and Parquet the row's values joined by commas.
    pub text: &'a str,
}

/// How map output is spread over reducers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Partitioner {
    /// By a hash of the key (the default).
    #[default]
    Hash,
    /// By key ranges chosen from a sample of the map output, so the reducers' outputs,
    /// concatenated in reducer order, are globally sorted.
    Range,
}

/// A MapReduce job: plain Rust functions over typed keys and values.
///
/// ```
/// use drove_exec::mapreduce::{MapReduce, Record};
///
/// struct LineLengths;
///
/// impl MapReduce for LineLengths {
///     type Key = u64;
///     type Value = u64;
///     type Output = u64;
///
///     fn map(&self, record: &Record<'_>, emit: &mut dyn FnMut(u64, u64)) {
///         emit(record.text.len() as u64, 1);
///     }
///
///     fn combine(&self, _key: &u64, values: &[u64]) -> Option<u64> {
///         Some(values.iter().sum())
///     }
///
///     fn reduce(&self, _key: &u64, values: Vec<u64>, emit: &mut dyn FnMut(u64)) {
///         emit(values.iter().sum());
///     }
/// }
/// ```
pub trait MapReduce: Send + Sync + 'static {
    type Key: Datum + Hash + Eq + Ord;
    type Value: Datum;
    type Output: Datum;

    /// Turns one record into key-value pairs.
    fn map(&self, record: &Record<'_>, emit: &mut dyn FnMut(Self::Key, Self::Value));

    /// Folds some values of one key into one value on the map side, before the shuffle.
    /// `None` (the default) means the job has no combiner.
    fn combine(&self, _key: &Self::Key, _values: &[Self::Value]) -> Option<Self::Value> {
        None
    }

    /// Folds all values of one key into the job's output for that key: any number of
    /// outputs, each written as one `key, output` record.
    fn reduce(&self, key: &Self::Key, values: Vec<Self::Value>, emit: &mut dyn FnMut(Self::Output));

    /// How keys are spread over reducers.
    fn partitioner(&self) -> Partitioner {
        Partitioner::Hash
    }
}

/// Distinct keys a map task holds for combining before it flushes them.
pub const COMBINE_KEYS_MAX: usize = 100_000;
/// Values held for one key before the combiner folds them into one.
const COMBINE_VALUES_MAX: usize = 64;

/// A job with its types erased, as plan nodes use it.
pub trait ErasedJob: Send + Sync {
    /// The schema of map output: `key`, `value`.
    fn map_schema(&self) -> SchemaRef;
    /// The schema of reduce output: `key`, `value`.
    fn output_schema(&self) -> SchemaRef;
    fn partitioner(&self) -> Partitioner;
    /// A map task's state: records in, key-value batches out.
    fn mapper(self: Arc<Self>, combine: bool) -> Box<dyn Mapper>;
    /// Groups all pairs of one reduce partition by key, reduces each key, and returns the
    /// output sorted by key.
    fn reduce(&self, batches: &[RecordBatch]) -> Result<RecordBatch>;
    /// Maps a handful of records and returns the keys they emit (for range sampling).
    fn sample_keys(&self, records: &[Record<'_>]) -> Result<ArrayRef>;
}

/// A map task's state.
pub trait Mapper: Send {
    /// Maps a batch of records (`file`, `line`, `text`); may return pairs to shuffle.
    fn push(&mut self, records: &RecordBatch) -> Result<Option<RecordBatch>>;
    /// Returns whatever the combiner still holds.
    fn finish(&mut self) -> Result<Option<RecordBatch>>;
}

/// The schema of records: `file`, `line`, `text`.
pub fn record_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new("file", DataType::Utf8, false),
            Field::new("line", DataType::UInt64, false),
            Field::new("text", DataType::Utf8, false),
        ]))
    }))
}

fn pair_schema(key: DataType, value: DataType) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", key, false),
        Field::new("value", value, false),
    ]))
}

struct Typed<J>(J);

struct TypedMapper<J: MapReduce> {
    job: Arc<Typed<J>>,
    combine: bool,
    held: HashMap<J::Key, Vec<J::Value>>,
}

impl<J: MapReduce> TypedMapper<J> {
    fn batch(&self, keys: Vec<J::Key>, values: Vec<J::Value>) -> Result<Option<RecordBatch>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let schema = self.job.map_schema();
        Ok(Some(RecordBatch::try_new(
            schema,
            vec![J::Key::to_array(keys), J::Value::to_array(values)],
        )?))
    }

    fn flush(&mut self) -> Result<Option<RecordBatch>> {
        let mut keys = Vec::with_capacity(self.held.len());
        let mut values = Vec::with_capacity(self.held.len());
        for (k, vs) in std::mem::take(&mut self.held) {
            match self.job.0.combine(&k, &vs) {
                Some(v) => {
                    keys.push(k);
                    values.push(v);
                }
                None => {
                    for v in vs {
                        keys.push(k.clone());
                        values.push(v);
                    }
                }
            }
        }
        self.batch(keys, values)
    }
}

impl<J: MapReduce> Mapper for TypedMapper<J> {
    fn push(&mut self, records: &RecordBatch) -> Result<Option<RecordBatch>> {
        let column = |i: usize| records.column(i);
        let files = column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("map input 'file' is not Utf8".into()))?;
        let lines = column(1)
            .as_any()
            .downcast_ref::<UInt64Array>()
            .ok_or_else(|| Error::Internal("map input 'line' is not UInt64".into()))?;
        let texts = column(2)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| Error::Internal("map input 'text' is not Utf8".into()))?;
        let mut keys = Vec::new();
        let mut values = Vec::new();
        for i in 0..records.num_rows() {
            let record = Record {
                file: files.value(i),
                line: lines.value(i),
                text: texts.value(i),
            };
            if self.combine {
                let held = &mut self.held;
                let job = &self.job.0;
                job.map(&record, &mut |k, v| match held.entry(k) {
                    Entry::Occupied(mut held) => {
                        held.get_mut().push(v);
                        if held.get().len() >= COMBINE_VALUES_MAX
                            && let Some(folded) = job.combine(held.key(), held.get())
                        {
                            *held.get_mut() = vec![folded];
                        }
                    }
                    Entry::Vacant(slot) => {
                        slot.insert(vec![v]);
                    }
                });
            } else {
                self.job.0.map(&record, &mut |k, v| {
                    keys.push(k);
                    values.push(v);
                });
            }
        }
        if self.combine {
            if self.held.len() >= COMBINE_KEYS_MAX {
                return self.flush();
            }
            return Ok(None);
        }
        self.batch(keys, values)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        self.flush()
    }
}

impl<J: MapReduce> ErasedJob for Typed<J> {
    fn map_schema(&self) -> SchemaRef {
        pair_schema(J::Key::data_type(), J::Value::data_type())
    }

    fn output_schema(&self) -> SchemaRef {
        pair_schema(J::Key::data_type(), J::Output::data_type())
    }

    fn partitioner(&self) -> Partitioner {
        self.0.partitioner()
    }

    fn mapper(self: Arc<Self>, combine: bool) -> Box<dyn Mapper> {
        Box::new(TypedMapper {
            job: self,
            combine,
            held: HashMap::new(),
        })
    }

    fn reduce(&self, batches: &[RecordBatch]) -> Result<RecordBatch> {
        let mut groups: BTreeMap<J::Key, Vec<J::Value>> = BTreeMap::new();
        for batch in batches {
            let keys = J::Key::from_array(batch.column(0).as_ref())?;
            let values = J::Value::from_array(batch.column(1).as_ref())?;
            for (k, v) in keys.into_iter().zip(values) {
                groups.entry(k).or_default().push(v);
            }
        }
        let mut keys = Vec::with_capacity(groups.len());
        let mut outputs = Vec::with_capacity(groups.len());
        for (k, vs) in groups {
            self.0.reduce(&k, vs, &mut |out| {
                keys.push(k.clone());
                outputs.push(out);
            });
        }
        Ok(RecordBatch::try_new(
            self.output_schema(),
            vec![J::Key::to_array(keys), J::Output::to_array(outputs)],
        )?)
    }

    fn sample_keys(&self, records: &[Record<'_>]) -> Result<ArrayRef> {
        let mut keys = Vec::new();
        for r in records {
            self.0.map(r, &mut |k, _| keys.push(k));
        }
        Ok(J::Key::to_array(keys))
    }
}

/// Parameters a job is started with (`--arg KEY=VALUE` on the command line).
pub type JobArgs = BTreeMap<String, String>;

type Factory = Arc<dyn Fn(&JobArgs) -> Result<Arc<dyn ErasedJob>> + Send + Sync>;
type Registry = RwLock<BTreeMap<String, Factory>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Registers a job that takes no parameters under `name`, replacing any job of that
/// name. Register every job at start-up, identically in every process of the cluster.
pub fn register<J: MapReduce>(name: &str, job: J) {
    let job: Arc<dyn ErasedJob> = Arc::new(Typed(job));
    register_factory(name, move |_args| Ok(Arc::clone(&job)));
}

/// Registers a job made from parameters: `make` runs wherever a task of the job runs,
/// with the parameters the job was submitted with. It returns an error naming what is
/// wrong with them.
pub fn register_with_args<J, F>(name: &str, make: F)
where
    J: MapReduce,
    F: Fn(&JobArgs) -> std::result::Result<J, String> + Send + Sync + 'static,
{
    register_factory(name, move |args| {
        let job = make(args).map_err(Error::User)?;
        Ok(Arc::new(Typed(job)) as Arc<dyn ErasedJob>)
    });
}

fn register_factory(
    name: &str,
    factory: impl Fn(&JobArgs) -> Result<Arc<dyn ErasedJob>> + Send + Sync + 'static,
) {
    let mut jobs = registry().write().unwrap_or_else(|p| p.into_inner());
    jobs.insert(name.to_string(), Arc::new(factory));
}

/// The job registered under `name`, made with `args`.
pub fn job(name: &str, args: &JobArgs) -> Result<Arc<dyn ErasedJob>> {
    let factory = {
        let jobs = registry().read().unwrap_or_else(|p| p.into_inner());
        jobs.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = jobs.keys().map(String::as_str).collect();
            Error::User(format!(
                "no MapReduce job is registered as '{name}'; registered jobs: {}",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })?
    };
    factory(args).map_err(|e| match e {
        Error::User(m) => Error::User(format!("job '{name}': {m}")),
        other => other,
    })
}
