//! MapReduce jobs whose map and reduce functions are written in Python (drove's
//! Python package: `session.mapreduce(inputs, output, mapper=..., reducer=...)`).
//!
//! The job [`NAME`] takes two [`PythonUdf`]s as parameters, `map` and `reduce`,
//! encoded as plans carry them and then as hex. Both answer a batch at a time in the
//! workers' Python processes:
//! - `map` takes the batch's lines (`Utf8`) and returns, for each line, a list of
//!   `{key, value}` structs: the pairs it emits (a combiner folds a batch's pairs and
//!   returns them all in the first line's list);
//! - `reduce` takes pairs sorted by key (`key`, `value`), whole keys only, with `starts`
//!   (`Boolean`) true at each key's first pair, as Arrow's equality groups them; it
//!   returns, for each pair, a list of `{key, value}` outputs: a key's outputs in the
//!   list of its first pair, the other lists empty. A key's values go to Python in one
//!   call, at most [`KEY_MAX_BYTES`] of them.
//!
//! Their types are the job's: map's key and value, and reduce's value as the output.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, ListArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, SchemaRef};

use super::{ErasedJob, JobArgs, Mapper, Partitioner, Record, Reducer, pair_schema};
use crate::python_udf::{MESSAGE_MAX_BYTES, PythonUdf};
use crate::token::{hex, unhex};
use crate::{Error, Result};

/// The name the job is registered under.
pub const NAME: &str = "python";

/// The most bytes of values one key may have: they reach the reduce function at once.
pub const KEY_MAX_BYTES: usize = (MESSAGE_MAX_BYTES / 4) as usize;

/// Registers the job [`NAME`]; every process of a cluster does, as for the built-in
/// jobs.
pub fn register() {
    super::register_factory(NAME, |args| Ok(Arc::new(PythonJob::from_args(args)?)));
}

/// The parameters of a job of [`NAME`] whose functions are `map` and `reduce`.
pub fn args(map: &PythonUdf, reduce: &PythonUdf) -> Result<JobArgs> {
    // Checked here, so the client is told before any task runs.
    PythonJob::new(map.clone(), reduce.clone())?;
    let mut args = JobArgs::new();
    args.insert("map".into(), hex(&map.encode()?));
    args.insert("reduce".into(), hex(&reduce.encode()?));
    Ok(args)
}

struct PythonJob {
    map: PythonUdf,
    reduce: PythonUdf,
    map_schema: SchemaRef,
    output_schema: SchemaRef,
}

impl PythonJob {
    fn from_args(args: &JobArgs) -> Result<Self> {
        let function = |name: &str| -> Result<PythonUdf> {
            let text = args.get(name).ok_or_else(|| {
                Error::User(format!(
                    "the MapReduce job {NAME} needs its {name} function; run it from drove's Python package (session.mapreduce)"
                ))
            })?;
            let bytes = unhex(text).ok_or_else(|| {
                Error::User(format!("the {NAME} job's {name} parameter is not hex"))
            })?;
            PythonUdf::decode(&bytes)?.ok_or_else(|| {
                Error::User(format!(
                    "the {NAME} job's {name} parameter is not a Python function"
                ))
            })
        };
        Self::new(function("map")?, function("reduce")?)
    }

    fn new(map: PythonUdf, reduce: PythonUdf) -> Result<Self> {
        let (key, value) = pair_types(&map, "map")?;
        let (reduced_key, output) = pair_types(&reduce, "reduce")?;
        if map.args() != [DataType::Utf8] {
            return Err(Error::User(format!(
                "the map function takes {:?}; it must take one Utf8 column of lines",
                map.args()
            )));
        }
        if reduce.args() != [key.clone(), value.clone(), DataType::Boolean] || reduced_key != key {
            return Err(Error::User(format!(
                "the reduce function takes {:?} and returns keys of {reduced_key}; the map function emits keys of {key} and values of {value}, so it must take ({key}, {value}, Boolean) and return keys of {key}",
                reduce.args()
            )));
        }
        Ok(Self {
            map_schema: pair_schema(key.clone(), value),
            output_schema: pair_schema(key, output),
            map,
            reduce,
        })
    }
}

/// The key and value types of the `{key, value}` lists `function` returns.
fn pair_types(function: &PythonUdf, which: &str) -> Result<(DataType, DataType)> {
    if let DataType::List(item) = function.returns()
        && let DataType::Struct(fields) = item.data_type()
        && let [key, value] = &fields[..]
        && key.name() == "key"
        && value.name() == "value"
    {
        return Ok((key.data_type().clone(), value.data_type().clone()));
    }
    Err(Error::User(format!(
        "the {which} function returns {}; it must return a list of {{key, value}} structs for each row",
        function.returns()
    )))
}

/// The pairs in the lists of `lists` (as a [`pair_types`] function returns them) as
/// one batch of `schema`, or none if the lists are empty.
fn flatten(lists: &ArrayRef, schema: &SchemaRef, which: &str) -> Result<Option<RecordBatch>> {
    let lists = lists
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or_else(|| Error::Internal(format!("the {which} function returned no list")))?;
    let offsets = lists.value_offsets();
    let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
    if first == last {
        return Ok(None);
    }
    let pairs = lists.values().slice(first, last - first);
    let pairs = pairs
        .as_any()
        .downcast_ref::<StructArray>()
        .ok_or_else(|| Error::Internal(format!("the {which} function returned no structs")))?;
    if pairs.null_count() > 0 {
        return Err(Error::User(format!(
            "the {which} function emitted None for a pair; emit (key, value) tuples"
        )));
    }
    for (column, field) in pairs.columns().iter().zip(schema.fields()) {
        if column.null_count() > 0 {
            return Err(Error::User(format!(
                "the {which} function emitted None as a {}; emit a value of {} for every {}",
                field.name(),
                field.data_type(),
                field.name()
            )));
        }
    }
    Ok(Some(RecordBatch::try_new(
        Arc::clone(schema),
        pairs.columns().to_vec(),
    )?))
}

impl ErasedJob for PythonJob {
    fn map_schema(&self) -> SchemaRef {
        Arc::clone(&self.map_schema)
    }

    fn output_schema(&self) -> SchemaRef {
        Arc::clone(&self.output_schema)
    }

    fn partitioner(&self) -> Partitioner {
        Partitioner::Hash
    }

    fn mapper(self: Arc<Self>, _combine: bool) -> Box<dyn Mapper> {
        Box::new(PythonMapper {
            job: self,
            lines: Vec::new(),
            bytes: 0,
        })
    }

    fn reducer(self: Arc<Self>) -> Box<dyn Reducer> {
        Box::new(PythonReducer {
            job: self,
            keys: KeyGroups::default(),
        })
    }

    fn sample_keys(&self, _records: &[Record<'_>]) -> Result<ArrayRef> {
        Err(Error::User(format!(
            "the {NAME} job partitions by hash; it takes no key samples"
        )))
    }
}

/// Lines a map task gathers, in bytes, before it calls its Python function: the
/// function's combiner folds the pairs of a whole call, so larger calls shuffle less.
const MAP_CALL_BYTES: usize = 16 << 20;

struct PythonMapper {
    job: Arc<PythonJob>,
    /// Lines not yet mapped, and their bytes.
    lines: Vec<ArrayRef>,
    bytes: usize,
}

impl PythonMapper {
    /// The pairs of the lines gathered so far.
    fn map(&mut self) -> Result<Option<RecordBatch>> {
        let pieces = std::mem::take(&mut self.lines);
        self.bytes = 0;
        let lines = match &pieces[..] {
            [] => return Ok(None),
            [one] => Arc::clone(one),
            many => {
                let many: Vec<&dyn Array> = many.iter().map(|a| a.as_ref()).collect();
                arrow::compute::concat(&many)?
            }
        };
        let rows = lines.len();
        let lists = self.job.map.call(vec![lines], rows)?;
        flatten(&lists, &self.job.map_schema, "map")
    }
}

impl Mapper for PythonMapper {
    fn push(&mut self, records: &RecordBatch) -> Result<Option<RecordBatch>> {
        let lines = records
            .column_by_name("text")
            .ok_or_else(|| Error::Internal("map input without its text column".into()))?;
        self.bytes += lines.get_array_memory_size();
        self.lines.push(Arc::clone(lines));
        if self.bytes < MAP_CALL_BYTES {
            return Ok(None);
        }
        self.map()
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        self.map()
    }
}

struct PythonReducer {
    job: Arc<PythonJob>,
    keys: KeyGroups,
}

impl PythonReducer {
    /// The outputs of the whole keys in `pairs`.
    fn reduce(&self, pairs: Option<RecordBatch>) -> Result<Option<RecordBatch>> {
        let Some(pairs) = pairs else {
            return Ok(None);
        };
        let starts = group_starts(pairs.column(0))?;
        let args = vec![
            Arc::clone(pairs.column(0)),
            Arc::clone(pairs.column(1)),
            Arc::new(starts),
        ];
        let lists = self.job.reduce.call(args, pairs.num_rows())?;
        flatten(&lists, &self.job.output_schema, "reduce")
    }
}

impl Reducer for PythonReducer {
    fn push(&mut self, pairs: &RecordBatch) -> Result<Option<RecordBatch>> {
        let whole = self.keys.push(pairs)?;
        self.reduce(whole)
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        let rest = self.keys.finish()?;
        self.reduce(rest)
    }
}

/// True at the first row of each run of equal keys.
fn group_starts(keys: &ArrayRef) -> Result<BooleanArray> {
    let mut starts = vec![false; keys.len()];
    for range in arrow::compute::partition(&[Arc::clone(keys)])?.ranges() {
        starts[range.start] = true;
    }
    Ok(BooleanArray::from(starts))
}

/// Pairs sorted by key, in batches, regrouped into batches of whole keys: the last key
/// of a batch waits, in pieces, for the batch that ends it.
#[derive(Default)]
struct KeyGroups {
    /// The pieces of the key not yet known to be whole, and their bytes.
    held: Vec<RecordBatch>,
    held_bytes: usize,
}

impl KeyGroups {
    /// Takes the next pairs; returns those of the keys they complete, if any.
    fn push(&mut self, pairs: &RecordBatch) -> Result<Option<RecordBatch>> {
        if pairs.num_rows() == 0 {
            return Ok(None);
        }
        let keys = arrow::compute::partition(&[Arc::clone(pairs.column(0))])?.ranges();
        let continues = match self.held.first() {
            Some(held) => {
                let compare = arrow::array::make_comparator(
                    held.column(0),
                    pairs.column(0),
                    Default::default(),
                )?;
                compare(0, 0).is_eq()
            }
            None => false,
        };
        let mut from = 0;
        if continues {
            if keys.len() == 1 {
                self.hold(pairs.clone())?;
                return Ok(None);
            }
            self.hold(pairs.slice(0, keys[0].end))?;
            from = keys[0].end;
        }
        // The held key is whole now, and so is every key of this batch but its last.
        let mut whole = std::mem::take(&mut self.held);
        self.held_bytes = 0;
        let last = keys[keys.len() - 1].start.max(from);
        if last > from {
            whole.push(pairs.slice(from, last - from));
        }
        self.hold(pairs.slice(last, pairs.num_rows() - last))?;
        concat(&pairs.schema(), whole)
    }

    /// The pairs of the last key.
    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        self.held_bytes = 0;
        let held = std::mem::take(&mut self.held);
        match held.first() {
            Some(first) => concat(&first.schema(), held),
            None => Ok(None),
        }
    }

    fn hold(&mut self, piece: RecordBatch) -> Result<()> {
        self.held_bytes += piece.get_array_memory_size();
        self.held.push(piece);
        if self.held_bytes > KEY_MAX_BYTES {
            return Err(Error::User(format!(
                "one key has more than {} of values, which its reduce call would take at once; give the job a combiner, or a finer key",
                drove_core::human_bytes(KEY_MAX_BYTES as u64)
            )));
        }
        Ok(())
    }
}

fn concat(schema: &SchemaRef, pieces: Vec<RecordBatch>) -> Result<Option<RecordBatch>> {
    match pieces.len() {
        0 => Ok(None),
        1 => Ok(pieces.into_iter().next()),
        _ => Ok(Some(arrow::compute::concat_batches(schema, &pieces)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn function(args: Vec<DataType>, key: DataType, value: DataType) -> PythonUdf {
        let pair = DataType::Struct(
            vec![
                arrow::datatypes::Field::new("key", key, true),
                arrow::datatypes::Field::new("value", value, true),
            ]
            .into(),
        );
        let list = DataType::List(Arc::new(arrow::datatypes::Field::new("item", pair, true)));
        PythonUdf::new("f", b"pickled".to_vec(), args, list)
    }

    #[test]
    fn functions_survive_the_job_parameters_and_mismatched_types_are_refused() {
        let map = function(vec![DataType::Utf8], DataType::Utf8, DataType::Int64);
        let reduce = function(
            vec![DataType::Utf8, DataType::Int64, DataType::Boolean],
            DataType::Utf8,
            DataType::Float64,
        );
        let job = PythonJob::from_args(&args(&map, &reduce).unwrap()).unwrap();
        assert_eq!(job.map_schema.field(1).data_type(), &DataType::Int64);
        assert_eq!(job.output_schema.field(1).data_type(), &DataType::Float64);

        let wrong = function(
            vec![DataType::Utf8, DataType::Utf8],
            DataType::Utf8,
            DataType::Int64,
        );
        let refused = args(&map, &wrong).err().unwrap().to_string();
        assert!(
            refused.contains("must take (Utf8, Int64, Boolean)"),
            "{refused}"
        );
        let missing = PythonJob::from_args(&JobArgs::new())
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("needs its map function"), "{missing}");
        let mut bad = args(&map, &reduce).unwrap();
        bad.insert("map".into(), "zz".into());
        let refused = PythonJob::from_args(&bad).err().unwrap().to_string();
        assert!(refused.contains("not hex"), "{refused}");
    }

    fn pairs(keys: &[&str]) -> RecordBatch {
        let values: Vec<i64> = (0..keys.len() as i64).collect();
        RecordBatch::try_new(
            pair_schema(DataType::Utf8, DataType::Int64),
            vec![
                Arc::new(arrow::array::StringArray::from(keys.to_vec())),
                Arc::new(arrow::array::Int64Array::from(values)),
            ],
        )
        .unwrap()
    }

    fn keys_of(batch: Option<RecordBatch>) -> Vec<String> {
        batch.map_or(vec![], |b| {
            let keys = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap();
            keys.iter().map(|k| k.unwrap().to_string()).collect()
        })
    }

    #[test]
    fn keys_are_regrouped_whole_across_batches() {
        let mut groups = KeyGroups::default();
        // "b" goes on over three batches, the middle one all "b".
        assert_eq!(
            keys_of(groups.push(&pairs(&["a", "a", "b"])).unwrap()),
            ["a", "a"]
        );
        assert!(keys_of(groups.push(&pairs(&["b", "b"])).unwrap()).is_empty());
        assert_eq!(
            keys_of(groups.push(&pairs(&["b", "c", "d"])).unwrap()),
            ["b", "b", "b", "b", "c"]
        );
        // A batch that starts with a new key ends the held one.
        assert_eq!(keys_of(groups.push(&pairs(&["e"])).unwrap()), ["d"]);
        assert!(keys_of(groups.push(&pairs(&[])).unwrap()).is_empty());
        assert_eq!(keys_of(groups.finish().unwrap()), ["e"]);
        assert!(keys_of(groups.finish().unwrap()).is_empty());

        let starts = group_starts(pairs(&["a", "a", "b", "c", "c"]).column(0)).unwrap();
        assert_eq!(
            starts.iter().map(Option::unwrap).collect::<Vec<_>>(),
            [true, false, true, true, false]
        );
    }
}
