//! MapReduce jobs whose map and reduce functions are written in Python (drove's
//! Python package: `session.mapreduce(inputs, output, mapper=..., reducer=...)`).
//!
//! The job [`NAME`] takes two [`PythonUdf`]s as parameters, `map` and `reduce`,
//! encoded as plans carry them and then as hex. Both answer a batch at a time in the
//! workers' Python processes:
//! - `map` takes the batch's lines (`Utf8`) and returns, for each line, a list of
//!   `{key, value}` structs: the pairs it emits (a combiner folds a batch's pairs and
//!   returns them all in the first line's list);
//! - `reduce` takes pairs sorted by key (`key`, `value`), whole keys only, and returns,
//!   for each pair, a list of `{key, value}` outputs: a key's outputs in the list of its
//!   first pair, the other lists empty.
//!
//! Their types are the job's: map's key and value, and reduce's value as the output.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, ListArray, RecordBatch, StructArray};
use arrow::datatypes::{DataType, SchemaRef};

use super::{ErasedJob, JobArgs, Mapper, Partitioner, Record, Reducer, pair_schema};
use crate::python_udf::PythonUdf;
use crate::{Error, Result};

/// The name the job is registered under.
pub const NAME: &str = "python";

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
        if reduce.args() != [key.clone(), value.clone()] || reduced_key != key {
            return Err(Error::User(format!(
                "the reduce function takes {:?} and returns keys of {reduced_key}; the map function emits keys of {key} and values of {value}, so it must take ({key}, {value}) and return keys of {key}",
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
    for (column, field) in pairs.columns().iter().zip(schema.fields()) {
        if column.null_count() > 0 || pairs.null_count() > 0 {
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
        Box::new(PythonMapper(self))
    }

    fn reducer(self: Arc<Self>) -> Box<dyn Reducer> {
        Box::new(PythonReducer {
            job: self,
            held: None,
        })
    }

    fn sample_keys(&self, _records: &[Record<'_>]) -> Result<ArrayRef> {
        Err(Error::User(format!(
            "the {NAME} job partitions by hash; it takes no key samples"
        )))
    }
}

struct PythonMapper(Arc<PythonJob>);

impl Mapper for PythonMapper {
    fn push(&mut self, records: &RecordBatch) -> Result<Option<RecordBatch>> {
        let job = &self.0;
        let lines = Arc::clone(records.column(2));
        let lists = job.map.call(vec![lines], records.num_rows())?;
        flatten(&lists, &job.map_schema, "map")
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
}

struct PythonReducer {
    job: Arc<PythonJob>,
    /// The pairs of the last key pushed, which the next batch may continue.
    held: Option<RecordBatch>,
}

impl PythonReducer {
    fn reduce(&self, pairs: &RecordBatch) -> Result<Option<RecordBatch>> {
        if pairs.num_rows() == 0 {
            return Ok(None);
        }
        let job = &self.job;
        let lists = job
            .reduce
            .call(pairs.columns().to_vec(), pairs.num_rows())?;
        flatten(&lists, &job.output_schema, "reduce")
    }
}

impl Reducer for PythonReducer {
    fn push(&mut self, pairs: &RecordBatch) -> Result<Option<RecordBatch>> {
        let pairs = match self.held.take() {
            Some(held) => arrow::compute::concat_batches(&pairs.schema(), [&held, pairs])?,
            None => pairs.clone(),
        };
        let keys = arrow::compute::partition(&[Arc::clone(pairs.column(0))])?.ranges();
        let Some(last) = keys.last() else {
            return Ok(None);
        };
        // The last key's pairs wait for the next batch, which may hold more of them.
        self.held = Some(pairs.slice(last.start, pairs.num_rows() - last.start));
        self.reduce(&pairs.slice(0, last.start))
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>> {
        match self.held.take() {
            Some(held) => self.reduce(&held),
            None => Ok(None),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
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
            vec![DataType::Utf8, DataType::Int64],
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
        assert!(refused.contains("must take (Utf8, Int64)"), "{refused}");
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
}
