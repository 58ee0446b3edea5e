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
pub mod output;
pub mod plan;
pub mod python;

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::{Arc, OnceLock, RwLock};

use arrow::array::{ArrayRef, DictionaryArray, StringArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

pub use datum::Datum;
use datum::downcast;

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
/// A map function emits keys and values by reference (`&str` for a `String`), so that a
/// word borrowed from its input is copied into the map output's columns, or into the
/// combiner's table the first time the task sees it, and a record costs no allocation.
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
///     fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&u64, &u64)) {
///         emit(&(record.text.len() as u64), &1);
///     }
///
///     const COMBINES: bool = true;
///
///     fn combine(&self, _key: &u64, held: &mut u64, value: &u64) -> bool {
///         *held += value;
///         true
///     }
///
///     fn reduce(&self, _key: &u64, values: Vec<u64>, emit: &mut dyn FnMut(u64)) {
///         emit(values.iter().sum());
///     }
/// }
/// ```
pub trait MapReduce: Send + Sync + Sized + 'static {
    type Key: Datum<Ref: Hash + Eq> + Borrow<KeyRef<Self>> + Hash + Eq + Ord;
    type Value: Datum;
    type Output: Datum;

    /// Turns one record into key-value pairs.
    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&KeyRef<Self>, &ValueRef<Self>));

    /// Whether the job has a combiner ([`Self::combine`]). Without one, map output goes
    /// to the shuffle as it is emitted.
    const COMBINES: bool = false;

    /// Folds `value` into `held`, the value the map task holds for `key`, before the
    /// shuffle, and returns true; or returns false to have the pair shuffled as it is.
    /// Called only if [`Self::COMBINES`].
    fn combine(
        &self,
        _key: &KeyRef<Self>,
        _held: &mut Self::Value,
        _value: &ValueRef<Self>,
    ) -> bool {
        false
    }

    /// Folds all values of one key into the job's output for that key: any number of
    /// outputs, each written as one `key, output` record.
    fn reduce(&self, key: &Self::Key, values: Vec<Self::Value>, emit: &mut dyn FnMut(Self::Output));

    /// How keys are spread over reducers.
    fn partitioner(&self) -> Partitioner {
        Partitioner::Hash
    }
}

/// The form a job's map function emits its keys in (`str` for `String` keys).
pub type KeyRef<J> = <<J as MapReduce>::Key as Datum>::Ref;
/// The form a job's map function emits its values in.
pub type ValueRef<J> = <<J as MapReduce>::Value as Datum>::Ref;

/// Distinct keys a map task holds for combining before it flushes them.
pub const COMBINE_KEYS_MAX: usize = 100_000;
/// Rows a map or reduce task collects before it hands them on as one batch.
const BATCH_ROWS: usize = 8192;

/// The hash table a map task combines in: foldhash, a fast hasher for short keys.
type Held<J> = HashMap<<J as MapReduce>::Key, <J as MapReduce>::Value, foldhash::fast::RandomState>;

/// A job with its types erased, as plan nodes use it.
pub trait ErasedJob: Send + Sync {
    /// The schema of map output: `key`, `value`.
    fn map_schema(&self) -> SchemaRef;
    /// The schema of reduce output: `key`, `value`.
    fn output_schema(&self) -> SchemaRef;
    fn partitioner(&self) -> Partitioner;
    /// A map task's state: records in, key-value batches out.
    fn mapper(self: Arc<Self>, combine: bool) -> Box<dyn Mapper>;
    /// A reduce task's state: pairs sorted by key in, the output of each key out.
    fn reducer(self: Arc<Self>) -> Box<dyn Reducer>;
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

/// A reduce task's state.
pub trait Reducer: Send {
    /// Takes the next pairs of the task's partition, sorted by key (and following those
    /// pushed before); may return the output of the keys they completed.
    fn push(&mut self, pairs: &RecordBatch) -> Result<Option<RecordBatch>>;
    /// Returns the output of the last key.
    fn finish(&mut self) -> Result<Option<RecordBatch>>;
}

/// The schema of records: `file` (dictionary-encoded: a batch's rows come from one or
/// a few files), `line`, `text`.
pub fn record_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    Arc::clone(SCHEMA.get_or_init(|| {
        Arc::new(Schema::new(vec![
            Field::new(
                "file",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                false,
            ),
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
    held: Held<J>,
    /// Pairs to hand on: those the combiner did not fold, and the flushed ones.
    keys: <J::Key as Datum>::Builder,
    values: <J::Value as Datum>::Builder,
    rows: usize,
}

impl<J: MapReduce> TypedMapper<J> {
    /// The pairs collected so far as one batch, if there are any.
    fn batch(&mut self) -> Result<Option<RecordBatch>> {
        let schema = self.job.map_schema();
        take_batch::<J::Key, J::Value>(schema, &mut self.keys, &mut self.values, &mut self.rows)
    }

    /// Moves what the combiner holds to the pairs to hand on.
    fn flush(&mut self) {
        for (k, v) in self.held.drain() {
            J::Key::append(&mut self.keys, k.borrowed());
            J::Value::append(&mut self.values, v.borrowed());
            self.rows += 1;
        }
    }
}

impl<J: MapReduce> Mapper for TypedMapper<J> {
    fn push(&mut self, records: &RecordBatch) -> Result<Option<RecordBatch>> {
        let files =
            downcast::<DictionaryArray<Int32Type>>(records.column(0).as_ref(), "map input file")?;
        let names = downcast::<StringArray>(files.values().as_ref(), "map input file names")?;
        let lines = downcast::<UInt64Array>(records.column(1).as_ref(), "map input line")?;
        let texts = downcast::<StringArray>(records.column(2).as_ref(), "map input text")?;
        let job = &self.job.0;
        let (held, keys, values, rows) = (
            &mut self.held,
            &mut self.keys,
            &mut self.values,
            &mut self.rows,
        );
        let combine = self.combine;
        let mut emit = |k: &KeyRef<J>, v: &ValueRef<J>| {
            if combine {
                match held.get_mut(k) {
                    Some(h) => {
                        if job.combine(k, h, v) {
                            return;
                        }
                    }
                    None => {
                        held.insert(k.to_owned(), v.to_owned());
                        return;
                    }
                }
            }
            J::Key::append(keys, k);
            J::Value::append(values, v);
            *rows += 1;
        };
        for i in 0..records.num_rows() {
            let record = Record {
                file: names.value(files.keys().value(i) as usize),
                line: lines.value(i),
                text: texts.value(i),
            };
            job.map(&record, &mut emit);
        }
        if self.held.len() >= COMBINE_KEYS_MAX {
            self.flush();
        }
        if self.rows >= BATCH_ROWS {
            return self.batch();
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        self.flush();
        self.batch()
    }
}

struct TypedReducer<J: MapReduce> {
    job: Arc<Typed<J>>,
    /// The key being reduced and its values so far.
    current: Option<(J::Key, Vec<J::Value>)>,
    keys: <J::Key as Datum>::Builder,
    outputs: <J::Output as Datum>::Builder,
    rows: usize,
}

impl<J: MapReduce> TypedReducer<J> {
    /// Reduces the current key's values into the output.
    fn reduce_current(&mut self) {
        if let Some((key, values)) = self.current.take() {
            let (keys, outputs, rows) = (&mut self.keys, &mut self.outputs, &mut self.rows);
            self.job.0.reduce(&key, values, &mut |out| {
                J::Key::append(keys, key.borrowed());
                J::Output::append(outputs, out.borrowed());
                *rows += 1;
            });
        }
    }

    fn batch(&mut self) -> Result<Option<RecordBatch>> {
        let schema = self.job.output_schema();
        take_batch::<J::Key, J::Output>(schema, &mut self.keys, &mut self.outputs, &mut self.rows)
    }
}

/// The `rows` rows collected in two builders as one batch of `schema`, if there are any;
/// the builders are left empty.
fn take_batch<K: Datum, V: Datum>(
    schema: SchemaRef,
    keys: &mut K::Builder,
    values: &mut V::Builder,
    rows: &mut usize,
) -> Result<Option<RecordBatch>> {
    if *rows == 0 {
        return Ok(None);
    }
    *rows = 0;
    Ok(Some(RecordBatch::try_new(
        schema,
        vec![K::finish(keys), V::finish(values)],
    )?))
}

impl<J: MapReduce> Reducer for TypedReducer<J> {
    fn push(&mut self, pairs: &RecordBatch) -> Result<Option<RecordBatch>> {
        let keys = J::Key::from_array(pairs.column(0).as_ref())?;
        let values = J::Value::from_array(pairs.column(1).as_ref())?;
        for (k, v) in keys.into_iter().zip(values) {
            match &mut self.current {
                Some((key, held)) if *key == k => held.push(v),
                Some((key, _)) if *key > k => {
                    return Err(Error::User(
                        "a reduce task's keys came out of order: the job's key type orders its values unlike its Arrow column sorts; make its Ord agree with the column's order".into(),
                    ));
                }
                _ => {
                    self.reduce_current();
                    self.current = Some((k, vec![v]));
                }
            }
        }
        if self.rows >= BATCH_ROWS {
            return self.batch();
        }
        Ok(None)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        self.reduce_current();
        self.batch()
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
            combine: combine && J::COMBINES,
            held: Held::<J>::default(),
            keys: Default::default(),
            values: Default::default(),
            rows: 0,
        })
    }

    fn reducer(self: Arc<Self>) -> Box<dyn Reducer> {
        Box::new(TypedReducer {
            job: self,
            current: None,
            keys: Default::default(),
            outputs: Default::default(),
            rows: 0,
        })
    }

    fn sample_keys(&self, records: &[Record<'_>]) -> Result<ArrayRef> {
        let mut keys = <J::Key as Datum>::Builder::default();
        for r in records {
            self.0.map(r, &mut |k, _| J::Key::append(&mut keys, k));
        }
        Ok(J::Key::finish(&mut keys))
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
