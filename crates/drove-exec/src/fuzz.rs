//! Fuzz entry points: one function per decoder of bytes that arrive from the network.
//!
//! Each `decode_*` function hands arbitrary bytes to one decoder exactly as a drove
//! process does with what it receives, and returns whether they decoded. An error is
//! the right answer to bad bytes; a panic or an abort is a bug, since a coordinator or
//! worker must survive whatever a peer sends.
//!
//! Two drivers call them: a bounded, seeded run over mutations of real encodings in the
//! test suite (`crates/drove-exec/tests/it/fuzz.rs`, part of CI), and open-ended
//! coverage-guided runs with cargo-fuzz and libFuzzer (`fuzz/` at the repository root;
//! see its README).
//!
//! | function | decoder | who decodes |
//! |---|---|---|
//! | [`decode_physical_plan`] | [`codec::plan_from_bytes`], then cutting into stages | a worker (a task's plan), the coordinator (a submitted MapReduce plan) |
//! | [`decode_logical_plan`] | [`codec::logical_plan_from_bytes`] with a [`CacheCodec`] | the coordinator (a client's DataFrame) |
//! | [`decode_block_ticket`] | [`shuffle::block_key`] | a worker's Flight service |
//! | [`decode_schema`] | [`shuffle::schema_from_bytes`] | a client (a job's result schema), a worker (a shuffle reader node) |
//! | [`decode_worker_message`] | prost | the coordinator (the worker stream) |
//! | [`decode_coordinator_message`] | prost | a worker (the worker stream) |
//! | [`decode_submit_job_request`] | prost | the coordinator (a job submission) |
//! | [`decode_flight_block`] | [`shuffle::decode_block`] (Arrow Flight's decoder) | a shuffle reader, a client (a block fetched over Flight) |

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema};
use arrow_flight::FlightData;
use datafusion::execution::TaskContext;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use prost::Message;

use crate::cache::{CacheCodec, CachedTable};
use crate::mapreduce::{self, MapReduce, Partitioner, Record};
use crate::{codec, planner, session, shuffle};

/// A MapReduce job registered by [`setup`] (hash partitioned), so plans that name it
/// decode all the way.
pub const HASH_JOB: &str = "drove-fuzz-words";
/// A range-partitioned MapReduce job registered by [`setup`].
pub const RANGE_JOB: &str = "drove-fuzz-sorted-words";
/// The cached table the coordinator's codec in [`decode_logical_plan`] knows.
pub const CACHED_TABLE: &str = "drove_fuzz_cached";

/// Batches read from one Flight input at most; an input cannot hold more anyway.
const FLIGHT_BATCHES_MAX: usize = 10_000;

/// Counts words: the shape of the built-in jobs.
struct Words {
    partitioner: Partitioner,
}

impl MapReduce for Words {
    type Key = String;
    type Value = u64;
    type Output = u64;

    fn map(&self, record: &Record<'_>, emit: &mut impl FnMut(&str, &u64)) {
        for word in record.text.split_whitespace() {
            emit(word, &1);
        }
    }

    const COMBINES: bool = true;

    fn combine(&self, _key: &str, held: &mut u64, value: &u64) -> bool {
        *held += value;
        true
    }

    fn reduce(&self, _key: &String, values: Vec<u64>, emit: &mut dyn FnMut(u64)) {
        emit(values.iter().sum());
    }

    fn partitioner(&self) -> Partitioner {
        self.partitioner
    }
}

/// The schema of [`CACHED_TABLE`].
pub fn cached_table_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("word", DataType::Utf8, false),
        Field::new("n", DataType::Int64, true),
    ]))
}

/// What the decoders need, made once: the MapReduce jobs [`HASH_JOB`] and
/// [`RANGE_JOB`] registered (plans name jobs that the binary registers at start-up),
/// and a task context with the settings drove plans and runs with.
pub fn setup() -> &'static Arc<TaskContext> {
    static CONTEXT: OnceLock<Arc<TaskContext>> = OnceLock::new();
    CONTEXT.get_or_init(|| {
        mapreduce::register(
            HASH_JOB,
            Words {
                partitioner: Partitioner::Hash,
            },
        );
        mapreduce::register(
            RANGE_JOB,
            Words {
                partitioner: Partitioner::Range,
            },
        );
        let config =
            session::config(&session::settings(4, None)).expect("drove's own settings parse");
        let ctx = SessionContext::new_with_config(config);
        // As the coordinator and the workers decode plans: with drove's bounded functions.
        for udf in crate::functions::bounded() {
            ctx.register_udf(udf.as_ref().clone());
        }
        ctx.task_ctx()
    })
}

/// A task's or a submitted job's physical plan: decoded as a worker decodes a task's
/// plan and the coordinator a submitted MapReduce plan, then, as the coordinator goes
/// on with the latter, cut into stages and encoded again.
pub fn decode_physical_plan(data: &[u8]) -> bool {
    let Ok(plan) = codec::plan_from_bytes(data, setup()) else {
        return false;
    };
    if let Ok(distributed) = planner::split(plan) {
        for stage in distributed.stages {
            let _ = codec::plan_to_bytes(stage.plan);
        }
    }
    true
}

/// A client's logical plan, decoded as the coordinator does, with a codec that knows
/// one cached table, [`CACHED_TABLE`].
pub fn decode_logical_plan(data: &[u8]) -> bool {
    static CODEC: OnceLock<CacheCodec> = OnceLock::new();
    let codec = CODEC.get_or_init(|| {
        CacheCodec::new([CachedTable {
            id: 1,
            name: CACHED_TABLE.to_string(),
            schema: cached_table_schema(),
            partitions: 2,
        }])
    });
    codec::logical_plan_from_bytes(data, setup(), codec).is_ok()
}

/// A Flight ticket naming a block.
pub fn decode_block_ticket(data: &[u8]) -> bool {
    shuffle::block_keys(data).is_ok()
}

/// A schema's Arrow IPC bytes.
pub fn decode_schema(data: &[u8]) -> bool {
    shuffle::schema_from_bytes(data).is_ok()
}

/// A message of the worker stream, as the coordinator receives it.
pub fn decode_worker_message(data: &[u8]) -> bool {
    drove_proto::WorkerMessage::decode(data).is_ok()
}

/// A message of the worker stream, as a worker receives it.
pub fn decode_coordinator_message(data: &[u8]) -> bool {
    drove_proto::CoordinatorMessage::decode(data).is_ok()
}

/// A job submission, as the coordinator receives it.
pub fn decode_submit_job_request(data: &[u8]) -> bool {
    drove_proto::SubmitJobRequest::decode(data).is_ok()
}

/// A block's Flight stream, decoded into record batches as a shuffle reader or a client
/// does. The input is the stream's messages (each a protobuf `FlightData`, as in a
/// gRPC frame), each preceded by its length as a varint; see [`flight_input`]. A
/// message that cannot be read ends the stream with an error, as a broken gRPC stream
/// does.
pub fn decode_flight_block(data: &[u8]) -> bool {
    let mut rest = data;
    let mut messages = Vec::new();
    let mut framing_ok = true;
    while !rest.is_empty() {
        match FlightData::decode_length_delimited(&mut rest) {
            Ok(message) => messages.push(Ok(message)),
            Err(e) => {
                messages.push(Err(arrow_flight::error::FlightError::DecodeError(
                    e.to_string(),
                )));
                framing_ok = false;
                break;
            }
        }
    }
    let stream = shuffle::decode_block(futures::stream::iter(messages));
    let all_ok = futures::executor::block_on(
        stream
            .take(FLIGHT_BATCHES_MAX)
            .fold(true, |ok, batch| async move { ok && batch.is_ok() }),
    );
    framing_ok && all_ok
}

/// The input [`decode_flight_block`] takes for a stream of Flight messages.
pub fn flight_input(messages: &[FlightData]) -> Vec<u8> {
    let mut out = Vec::new();
    for message in messages {
        message
            .encode_length_delimited(&mut out)
            .expect("a Vec grows as needed");
    }
    out
}

/// A fuzz entry point: it decodes the bytes and says whether they decoded.
pub type Decoder = fn(&[u8]) -> bool;

/// Every entry point with its name, in the order of the table above; the names are
/// those of the cargo-fuzz targets.
pub const TARGETS: [(&str, Decoder); 8] = [
    ("physical_plan", decode_physical_plan),
    ("logical_plan", decode_logical_plan),
    ("block_ticket", decode_block_ticket),
    ("schema", decode_schema),
    ("worker_message", decode_worker_message),
    ("coordinator_message", decode_coordinator_message),
    ("submit_job_request", decode_submit_job_request),
    ("flight_block", decode_flight_block),
];
