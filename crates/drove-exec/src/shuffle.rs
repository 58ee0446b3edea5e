//! The read side of the shuffle.
//!
//! A [`ShuffleReaderExec`] stands where the distributed planner cut an exchange out of
//! a plan. When it runs, it finds the blocks of the stage it reads through the task's
//! [`ShuffleEnv`] (placed in the DataFusion session config by the worker), reads the
//! ones on its own worker from memory and fetches the rest over Arrow Flight.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::compute::BatchCoalescer;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightData, IpcMessage, SchemaAsIpc, Ticket};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::physical_expr::{ConstExpr, EquivalenceProperties, LexOrdering, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{StreamExt, TryFutureExt, TryStreamExt};
use prost::Message;
use tonic::transport::{Channel, Endpoint};

use crate::blocks::{BlockKey, BlockStore};
use crate::error::{LostBlock, decode_unpanicked};
use crate::{Error, Result};

/// How many fetches (each of one worker's blocks) one reader partition runs at once.
pub const FETCH_CONCURRENCY_MAX: usize = 4;

/// The most blocks one Flight call reads; a reader of more of one worker's blocks
/// makes several calls.
pub const BLOCKS_PER_TICKET_MAX: usize = 4096;

/// The task counter (summed in a job's summary) of the Flight calls its shuffle readers
/// made.
pub const FLIGHT_CALLS: &str = "shuffle_flight_calls";

/// How a reader's partitions map onto the blocks of the stage it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadMode {
    /// Partition p reads reduce partition p of every map output (after a hash or
    /// round-robin repartition, or a coalesce into one partition).
    Gather,
    /// Partition p reads the one block of map partition p (before a sort-preserving
    /// merge, which needs each sorted input on its own).
    PerMap,
    /// Partition p reads reduce partition p of every map output, as [`Self::Gather`]
    /// does, but each map output on its own, and merges them by the ordering the reader
    /// presents: the map tasks sorted their output, so the exchange keeps its order
    /// without sorting again (a sort-based shuffle). It holds a read open per map
    /// output, so the planner chooses it for at most [`MERGE_INPUTS_MAX`] of them.
    Merge,
}

/// The most map outputs a [`ReadMode::Merge`] reader merges; an ordered exchange of more
/// gathers and sorts again.
pub const MERGE_INPUTS_MAX: usize = 64;

/// Where one map task's output lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapOutputRef {
    /// The job and stage its blocks are named by: the reading job's own, or, for a
    /// cached table, the job that computed it.
    pub job: u64,
    pub stage: u32,
    pub partition: u32,
    pub attempt: u32,
    pub worker_id: u64,
    pub flight_addr: String,
}

/// A stage's outputs as its readers see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StageOutputs {
    /// How many map partitions the stage has.
    pub partitions: u32,
    /// The outputs that may hold rows, in partition order; the partitions not here
    /// wrote no rows, and their blocks are not read.
    pub outputs: Vec<MapOutputRef>,
}

/// What a running task needs to find its inputs. One per task, carried in the
/// DataFusion session config as an extension.
#[derive(Debug)]
pub struct ShuffleEnv {
    pub job: u64,
    pub local_worker: u64,
    pub store: Arc<BlockStore>,
    pub flight: Arc<FlightPool>,
    /// Outputs of every stage the task reads, by stage id.
    pub inputs: HashMap<u32, StageOutputs>,
    /// The partitions its gathering readers read: the task's own alone, or from its
    /// own on when the scheduler coalesced the tasks of the next ones into it.
    pub reads: std::ops::Range<u32>,
    pub local_read_bytes: AtomicU64,
    pub remote_read_bytes: Arc<AtomicU64>,
    /// Named counts the task's operators keep (e.g. `invalid_utf8_lines`).
    pub counters: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

impl ShuffleEnv {
    /// Adds `n` to the task's counter `name`.
    pub fn count(&self, name: &str, n: u64) {
        let mut counters = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *counters.entry(name.to_string()).or_default() += n;
    }
}

/// Flight clients to other workers: per address, an endpoint and one shared channel.
/// Connections of their own come from the same endpoint, so that with TLS they resume
/// its session instead of paying a full handshake.
#[derive(Debug, Default)]
pub struct FlightPool {
    peers: std::sync::Mutex<HashMap<String, (Endpoint, FlightServiceClient<Channel>)>>,
    tls: Option<Arc<crate::tls::ClusterTls>>,
}

impl FlightPool {
    /// A pool whose connections use mutual TLS with `tls`, if given.
    pub fn new(tls: Option<Arc<crate::tls::ClusterTls>>) -> Self {
        Self {
            peers: Default::default(),
            tls,
        }
    }

    /// A client for the Flight service at `addr` (HOST:PORT). Connects lazily.
    pub fn client(&self, addr: &str) -> Result<FlightServiceClient<Channel>> {
        self.peer(addr).map(|(_, client)| client)
    }

    /// A client on a connection of its own, for a read that may sit unread while others
    /// from the same worker go on (an input of a merge, which reads whichever input holds
    /// the next row). On a shared connection, what such a read has received but not yet
    /// been asked for holds the connection's flow-control window, and the read the merge
    /// waits for would stall behind it for good.
    pub fn own_client(&self, addr: &str) -> Result<FlightServiceClient<Channel>> {
        self.peer(addr)
            .map(|(endpoint, _)| Self::client_on(&endpoint))
    }

    fn peer(&self, addr: &str) -> Result<(Endpoint, FlightServiceClient<Channel>)> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(addr) {
            return Ok(peer.clone());
        }
        let endpoint =
            crate::net::endpoint(addr, self.tls.as_deref()).map_err(|message| Error::Fetch {
                addr: addr.to_string(),
                message,
                lost: None,
            })?;
        let peer = (endpoint.clone(), Self::client_on(&endpoint));
        peers.insert(addr.to_string(), peer.clone());
        Ok(peer)
    }

    fn client_on(endpoint: &Endpoint) -> FlightServiceClient<Channel> {
        FlightServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
    }
}

/// Encodes a block's name as a Flight ticket, with a client's `grant` to read its job
/// (empty for a node's reads; see [`crate::token::grant`]).
pub fn ticket(key: &BlockKey, grant: &[u8]) -> Ticket {
    batch_ticket(std::slice::from_ref(key), grant)
}

/// Encodes the names of blocks to read in one call as a Flight ticket: blocks of the
/// first one's job and stage (the others' are not looked at), at most
/// [`BLOCKS_PER_TICKET_MAX`], with a client's `grant` to read that job.
pub fn batch_ticket(keys: &[BlockKey], grant: &[u8]) -> Ticket {
    let first = keys.first().copied().unwrap_or_default();
    let more = keys.get(1..).unwrap_or_default();
    let one_reduce = more
        .iter()
        .all(|k| k.reduce_partition == first.reduce_partition);
    let t = drove_proto::BlockTicket {
        job_id: first.job,
        stage_id: first.stage,
        map_partition: first.map_partition,
        reduce_partition: first.reduce_partition,
        attempt: first.attempt,
        more_map_partitions: more.iter().map(|k| k.map_partition).collect(),
        more_attempts: more.iter().map(|k| k.attempt).collect(),
        more_reduce_partitions: match one_reduce {
            true => Vec::new(),
            false => more.iter().map(|k| k.reduce_partition).collect(),
        },
        grant: grant.to_vec(),
    };
    Ticket::new(t.encode_to_vec())
}

/// Decodes a Flight ticket into the names of the blocks it asks for, in order.
pub fn block_keys(ticket: &[u8]) -> Result<Vec<BlockKey>> {
    Ok(decode_ticket(ticket)?.0)
}

/// Decodes a Flight ticket into the names of the blocks it asks for, in order, and
/// the grant it carries.
pub fn decode_ticket(ticket: &[u8]) -> Result<(Vec<BlockKey>, Vec<u8>)> {
    let t = drove_proto::BlockTicket::decode(ticket)
        .map_err(|e| Error::User(format!("not a drove block ticket: {e}")))?;
    if t.more_map_partitions.len() != t.more_attempts.len() {
        return Err(Error::User(format!(
            "a block ticket names {} more map partitions but {} attempts; they go in pairs",
            t.more_map_partitions.len(),
            t.more_attempts.len()
        )));
    }
    if !t.more_reduce_partitions.is_empty()
        && t.more_reduce_partitions.len() != t.more_map_partitions.len()
    {
        return Err(Error::User(format!(
            "a block ticket names {} more map partitions but {} reduce partitions; give one for each, or none",
            t.more_map_partitions.len(),
            t.more_reduce_partitions.len()
        )));
    }
    if t.more_map_partitions.len() >= BLOCKS_PER_TICKET_MAX {
        return Err(Error::User(format!(
            "a block ticket names {} blocks, the most one call reads is {BLOCKS_PER_TICKET_MAX}",
            t.more_map_partitions.len() + 1
        )));
    }
    let key = |map_partition, reduce_partition, attempt| BlockKey {
        job: t.job_id,
        stage: t.stage_id,
        map_partition,
        reduce_partition,
        attempt,
    };
    let reduces =
        (t.more_reduce_partitions.iter().copied()).chain(std::iter::repeat(t.reduce_partition));
    let keys = std::iter::once(key(t.map_partition, t.reduce_partition, t.attempt))
        .chain(
            (t.more_map_partitions
                .iter()
                .zip(&t.more_attempts)
                .zip(reduces))
            .map(|((m, a), r)| key(*m, r, *a)),
        )
        .collect();
    Ok((keys, t.grant))
}

/// A stream of one block's batches.
pub type BlockStream = futures::stream::BoxStream<'static, Result<RecordBatch>>;

/// Starts fetching one block from the Flight service at `addr`: its batches arrive as
/// the stream is read (gRPC flow control keeps what waits in memory small), and
/// `on_wire_bytes` is told the bytes of each message that crosses the network.
/// `grant`: a client's grant to read the block's job (empty for a node).
pub async fn open_block(
    pool: &FlightPool,
    addr: &str,
    key: &BlockKey,
    grant: &[u8],
    on_wire_bytes: impl Fn(u64) + Send + 'static,
) -> Result<BlockStream> {
    let keys = std::slice::from_ref(key);
    open_blocks(pool.client(addr)?, addr, keys, grant, on_wire_bytes).await
}

/// Starts fetching blocks of one stage and reduce partition from the Flight service
/// at `addr` in one call (see [`batch_ticket`]) with `client`, a client of `addr`,
/// and a client's `grant` (empty for a node); their batches arrive in one stream.
pub async fn open_blocks(
    mut client: FlightServiceClient<Channel>,
    addr: &str,
    keys: &[BlockKey],
    grant: &[u8],
    on_wire_bytes: impl Fn(u64) + Send + 'static,
) -> Result<BlockStream> {
    let addr = addr.to_string();
    let key = keys.first().copied().unwrap_or_default();
    let more = keys.len().saturating_sub(1);
    let fetch_err = move |message: String| Error::Fetch {
        addr: addr.clone(),
        message: if more == 0 {
            format!("{key}: {message}")
        } else {
            format!("{key} and {more} more: {message}")
        },
        lost: None,
    };
    let response = client
        .do_get(batch_ticket(keys, grant))
        .await
        .map_err(|s| fetch_err(s.message().to_string()))?;
    let data = response.into_inner().map(move |d| {
        if let Ok(d) = &d {
            on_wire_bytes((d.data_header.len() + d.data_body.len()) as u64);
        }
        d.map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)))
    });
    Ok(decode_block(data)
        .map_err(move |e| fetch_err(e.to_string()))
        .boxed())
}

/// Decodes a block's Flight messages into its batches. Malformed messages end the
/// stream with an error, even those that make arrow-ipc panic (then the panic's
/// message is the stream's last item).
///
/// Compressed batches are refused: drove sends blocks uncompressed, and arrow-ipc
/// allocates whatever size a compressed buffer claims, so that a few bytes could abort
/// the process.
pub fn decode_block<S>(
    data: S,
) -> impl futures::Stream<Item = std::result::Result<RecordBatch, FlightError>> + Send + 'static
where
    S: futures::Stream<Item = std::result::Result<FlightData, FlightError>> + Send + 'static,
{
    let data = data.map(|d| d.and_then(refuse_compressed));
    std::panic::AssertUnwindSafe(FlightRecordBatchStream::new_from_flight_data(data))
        .catch_unwind()
        .map(|item| {
            item.unwrap_or_else(|panic| {
                Err(FlightError::DecodeError(format!(
                    "malformed Arrow IPC data (arrow-ipc panicked decoding it: {})",
                    drove_core::panic_message(panic.as_ref())
                )))
            })
        })
}

/// A Flight message, unless it carries a compressed batch or dictionary.
fn refuse_compressed(data: FlightData) -> std::result::Result<FlightData, FlightError> {
    // A header that is no IPC message is left to the decoder to refuse.
    let Ok(message) = arrow::ipc::root_as_message(&data.data_header) else {
        return Ok(data);
    };
    let batch = message
        .header_as_record_batch()
        .or_else(|| message.header_as_dictionary_batch().and_then(|d| d.data()));
    if batch.and_then(|b| b.compression()).is_some() {
        return Err(FlightError::ProtocolError(
            "a compressed Arrow IPC batch; drove's workers send blocks uncompressed".into(),
        ));
    }
    Ok(data)
}

/// Arrow IPC bytes of a schema.
pub fn schema_to_bytes(schema: &Schema) -> Result<Vec<u8>> {
    let message: IpcMessage = SchemaAsIpc::new(schema, &IpcWriteOptions::default()).try_into()?;
    Ok(message.0.to_vec())
}

/// A schema from its Arrow IPC bytes. Malformed bytes are an error, even those that
/// make arrow-ipc panic.
pub fn schema_from_bytes(bytes: &[u8]) -> Result<SchemaRef> {
    let schema = decode_unpanicked(|| Schema::try_from(IpcMessage(bytes.to_vec().into())))
        .map_err(|panic| {
            arrow::error::ArrowError::ParseError(format!(
                "malformed Arrow IPC schema (arrow-ipc panicked decoding it: {panic})"
            ))
        })??;
    Ok(Arc::new(schema))
}

/// What a [`ShuffleReaderExec`] presents to the operators above it, beyond its schema.
#[derive(Debug, Clone, Default)]
pub struct Presented {
    /// The keys of its hash partitioning (none for another partitioning).
    pub keys: Vec<Arc<dyn PhysicalExpr>>,
    /// Expressions constant in its output.
    pub constants: Vec<ConstExpr>,
    /// Sets (of two or more) of expressions equal in its output.
    pub equal: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// Orderings every partition of its output has.
    pub orderings: Vec<LexOrdering>,
}

/// Reads the output of another stage. See the module documentation.
///
/// Its metrics, which EXPLAIN ANALYZE shows, count per partition the rows it output,
/// the blocks it opened, the Flight calls it made, the bytes of the blocks it opened on
/// its own worker and the bytes that reached it over the network.
#[derive(Debug)]
pub struct ShuffleReaderExec {
    stage: u32,
    mode: ReadMode,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShuffleReaderExec {
    pub fn new(stage: u32, mode: ReadMode, partitions: usize, schema: SchemaRef) -> Self {
        assert!(
            partitions > 0,
            "a shuffle reader needs at least one partition"
        );
        Self::with(
            stage,
            mode,
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
        )
    }

    fn with(
        stage: u32,
        mode: ReadMode,
        properties: EquivalenceProperties,
        partitioning: Partitioning,
    ) -> Self {
        let properties = PlanProperties::new(
            properties,
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self {
            stage,
            mode,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// A reader that stands in for `replaced`, a plan the planner cut out (an exchange,
    /// or a merge's input), and presents what it presented: its hash partitioning, the
    /// expressions constant in its output, the sets of expressions equal in it and the
    /// orderings of each partition. Operators above were planned over those, and find
    /// them again when the plan is rebuilt (on a worker, from bytes): a union of
    /// aggregates interleaves, a window need not sort on a constant key, or on one equal
    /// to a key it sorts on.
    ///
    /// Reader partition p must then hold what partition p of `replaced` held, which the
    /// planner's read modes guarantee.
    pub fn standing_in(stage: u32, mode: ReadMode, replaced: &dyn ExecutionPlan) -> Self {
        let replaced = replaced.properties();
        let partitioning = match &replaced.partitioning {
            hash @ Partitioning::Hash(..) => hash.clone(),
            other => Partitioning::UnknownPartitioning(other.partition_count()),
        };
        Self::with(stage, mode, replaced.eq_properties.clone(), partitioning)
    }

    /// A reader presenting what [`Self::presented`] gave, decoded from a plan's bytes.
    pub fn presenting(
        stage: u32,
        mode: ReadMode,
        partitions: usize,
        schema: SchemaRef,
        presented: Presented,
    ) -> DfResult<Self> {
        if partitions == 0 {
            return Err(DataFusionError::Internal(
                "a shuffle reader needs at least one partition".into(),
            ));
        }
        let Presented {
            keys,
            constants,
            equal,
            orderings,
        } = presented;
        let mut properties = EquivalenceProperties::new(schema);
        for class in equal {
            if let Some((first, rest)) = class.split_first() {
                for other in rest {
                    properties.add_equal_conditions(Arc::clone(first), Arc::clone(other))?;
                }
            }
        }
        properties.add_constants(constants)?;
        properties.add_orderings(orderings);
        let partitioning = if keys.is_empty() {
            Partitioning::UnknownPartitioning(partitions)
        } else {
            Partitioning::Hash(keys, partitions)
        };
        Ok(Self::with(stage, mode, properties, partitioning))
    }

    /// What the reader presents beyond its schema, for encoding.
    pub fn presented(&self) -> Presented {
        let properties = &self.properties.eq_properties;
        Presented {
            keys: match &self.properties.partitioning {
                Partitioning::Hash(keys, _) => keys.clone(),
                _ => Vec::new(),
            },
            constants: properties.constants(),
            equal: properties
                .eq_group()
                .iter()
                .filter(|class| class.len() > 1)
                .map(|class| class.iter().cloned().collect())
                .collect(),
            orderings: properties.oeq_class().iter().cloned().collect(),
        }
    }

    /// The same reader, of another stage (a copied lineage's, renumbered).
    pub fn reading(&self, stage: u32) -> Self {
        Self {
            stage,
            mode: self.mode,
            properties: Arc::clone(&self.properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The stage whose output this reads.
    pub fn stage(&self) -> u32 {
        self.stage
    }

    pub fn mode(&self) -> ReadMode {
        self.mode
    }

    pub fn partitions(&self) -> usize {
        self.properties.partitioning.partition_count()
    }

    /// The blocks reader partition `partition` reads, with the worker holding each.
    fn blocks<'a>(
        &self,
        env: &'a ShuffleEnv,
        partition: usize,
    ) -> Result<Vec<(BlockKey, &'a MapOutputRef)>> {
        let outputs = env.inputs.get(&self.stage).ok_or_else(|| {
            Error::Internal(format!(
                "the task was given no locations for stage {}",
                self.stage
            ))
        })?;
        let key = |m: &MapOutputRef, reduce: u32| BlockKey {
            job: m.job,
            stage: m.stage,
            map_partition: m.partition,
            reduce_partition: reduce,
            attempt: m.attempt,
        };
        let own = partition as u32;
        let reduces = match self.mode {
            ReadMode::Gather if env.reads.start == own => {
                own..env
                    .reads
                    .end
                    .min(self.partitions() as u32)
                    .max(own.saturating_add(1))
            }
            _ => own..own.saturating_add(1),
        };
        Ok(match self.mode {
            ReadMode::Gather | ReadMode::Merge => (outputs.outputs.iter())
                .flat_map(|m| reduces.clone().map(move |r| (key(m, r), m)))
                .collect(),
            ReadMode::PerMap => {
                if partition >= outputs.partitions as usize {
                    return Err(Error::Internal(format!(
                        "stage {} has {} outputs, partition {partition} was asked for",
                        self.stage, outputs.partitions
                    )));
                }
                match outputs
                    .outputs
                    .binary_search_by_key(&(partition as u32), |m| m.partition)
                {
                    Ok(i) => vec![(key(&outputs.outputs[i], 0), &outputs.outputs[i])],
                    Err(_) => Vec::new(), // it wrote no rows
                }
            }
        })
    }
}

impl DisplayAs for ShuffleReaderExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShuffleReaderExec: stage={}, mode={:?}, partitions={}",
            self.stage,
            self.mode,
            self.partitions()
        )
    }
}

#[allow(deprecated)] // `with_new_children` must still be implemented in DataFusion 55.
impl ExecutionPlan for ShuffleReaderExec {
    fn name(&self) -> &str {
        "ShuffleReaderExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    /// A copy with metrics of its own, for another task running the same plan.
    fn reset_state(self: Arc<Self>) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.reading(self.stage)))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ShuffleReaderExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let env = context
            .session_config()
            .get_extension::<ShuffleEnv>()
            .ok_or_else(|| {
                DataFusionError::Internal(
                    "ShuffleReaderExec runs only inside a drove task (no ShuffleEnv)".into(),
                )
            })?;
        let blocks = self
            .blocks(&env, partition)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let metrics = ReadMetrics::new(&self.metrics, partition);
        let batch_size = context.session_config().batch_size();
        let external = |e: Error| DataFusionError::External(Box::new(e));
        if self.mode == ReadMode::Merge {
            let ordering = self.properties.output_ordering().ok_or_else(|| {
                DataFusionError::Internal("a merging shuffle reader presents no ordering".into())
            })?;
            // One read per map output, each kept in order, in batches of about the
            // target size that own their memory (the merge holds a batch of each, and
            // counts them).
            let streams = blocks
                .into_iter()
                .map(|(key, location)| {
                    let read = read_blocks(
                        &env,
                        self.stage,
                        vec![key],
                        location,
                        Connection::Own,
                        &metrics,
                    )
                    .map_err(external)
                    .boxed();
                    Box::pin(RecordBatchStreamAdapter::new(
                        self.schema(),
                        coalesced(read, self.schema(), batch_size)
                            .map(|batch| Ok(compact(&batch?)?)),
                    )) as SendableRecordBatchStream
                })
                .collect();
            let reservation = MemoryConsumer::new(format!("ShuffleMerge[{partition}]"))
                .register(context.memory_pool());
            return StreamingMergeBuilder::new()
                .with_streams(streams)
                .with_schema(self.schema())
                .with_expressions(ordering)
                .with_metrics(BaselineMetrics::new(&self.metrics, partition))
                .with_batch_size(batch_size)
                .with_reservation(reservation)
                .build();
        }
        // Blocks on this worker are read from its store, one after the other in one
        // read; the others are fetched with one Flight call per worker holding some
        // (and per BLOCKS_PER_TICKET_MAX blocks), so an all-to-all exchange costs calls
        // in proportion to the workers, not the map tasks, and a holder's empty blocks
        // cost it nothing on the wire. Up to FETCH_CONCURRENCY_MAX of these reads run
        // at once, each opened only when its turn comes and then read as it arrives:
        // every open stream is polled, so none can fill the connection's flow-control
        // window while another waits for data, and only what flow control admits waits
        // in memory. Batches of different reads interleave, which a gather does not
        // mind; a per-map reader reads one block.
        let mut reads: Vec<(Vec<BlockKey>, &MapOutputRef)> = Vec::new();
        let mut holders: BTreeMap<u64, usize> = BTreeMap::new();
        for (key, location) in blocks {
            let local = location.worker_id == env.local_worker;
            match holders.get(&location.worker_id) {
                Some(&i) if local || reads[i].0.len() < BLOCKS_PER_TICKET_MAX => {
                    reads[i].0.push(key)
                }
                _ => {
                    holders.insert(location.worker_id, reads.len());
                    reads.push((vec![key], location));
                }
            }
        }
        // A per-map read is one partition of a merge above (or of a cached table's
        // scan): the merge reads the partitions unevenly.
        let connection = match self.mode {
            ReadMode::PerMap => Connection::Own,
            _ => Connection::Shared,
        };
        let reads: Vec<BlockStream> = reads
            .into_iter()
            .map(|(keys, location)| {
                read_blocks(&env, self.stage, keys, location, connection, &metrics)
            })
            .collect();
        let read = futures::stream::iter(reads)
            .flatten_unordered(FETCH_CONCURRENCY_MAX)
            .map_err(external)
            .boxed();
        let output_rows = MetricBuilder::new(&self.metrics).output_rows(partition);
        let stream = coalesced(read, self.schema(), batch_size)
            .inspect_ok(move |batch| output_rows.add(batch.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }
}

/// A reader partition's counters.
#[derive(Clone)]
struct ReadMetrics {
    blocks_read: Count,
    fetch_calls: Count,
    local_bytes: Count,
    remote_bytes: Count,
}

impl ReadMetrics {
    fn new(metrics: &ExecutionPlanMetricsSet, partition: usize) -> Self {
        let metric = |name: &'static str| MetricBuilder::new(metrics).counter(name, partition);
        Self {
            blocks_read: metric("blocks_read"),
            fetch_calls: metric("fetch_calls"),
            local_bytes: metric("bytes_read_local"),
            remote_bytes: metric("bytes_read_remote"),
        }
    }
}

/// Which connection a remote read uses.
#[derive(Debug, Clone, Copy)]
enum Connection {
    /// The one the worker's reads from that peer share: for reads that are always
    /// polled (a gather).
    Shared,
    /// One of its own (see [`FlightPool::own_client`]).
    Own,
}

/// Reads `keys`, blocks of one map stage that `location`'s worker holds: from this
/// worker's store, or with one Flight call on `connection`, opened when the stream is
/// first polled. A block that cannot be read names its map output as lost, so that the
/// scheduler runs its producer again (and with it every output of that stage its
/// holder kept).
fn read_blocks(
    env: &Arc<ShuffleEnv>,
    stage: u32,
    keys: Vec<BlockKey>,
    location: &MapOutputRef,
    connection: Connection,
    metrics: &ReadMetrics,
) -> BlockStream {
    let (env, location, metrics) = (Arc::clone(env), location.clone(), metrics.clone());
    let lost = LostBlock {
        stage,
        map_partition: keys[0].map_partition,
        worker: location.worker_id,
    };
    let name_lost = move |e: Error| match e {
        Error::Fetch { addr, message, .. } => Error::Fetch {
            addr,
            message,
            lost: Some(lost),
        },
        other => other,
    };
    let open = async move {
        metrics.blocks_read.add(keys.len());
        if location.worker_id == env.local_worker {
            // A block that is gone or cannot be read back from its spill file is lost
            // like a remote one: its producer must run again.
            let addr = location.flight_addr.clone();
            let unreadable = move |key: BlockKey, message: String| Error::Fetch {
                addr: addr.clone(),
                message: format!("{key}: {message}"),
                lost: None,
            };
            let mut found = Vec::with_capacity(keys.len());
            for (key, block) in keys.iter().zip(env.store.get_many(&keys)) {
                let block = block.ok_or_else(|| unreadable(*key, "not on this worker".into()))?;
                env.local_read_bytes
                    .fetch_add(block.bytes, Ordering::Relaxed);
                metrics.local_bytes.add(block.bytes as usize);
                found.push((*key, block));
            }
            // Each block is opened once the one before it is read: a spilled block
            // starts a reader thread that reads ahead when opened.
            Ok::<BlockStream, Error>(
                futures::stream::iter(found)
                    .flat_map(move |(key, block)| {
                        let unreadable = unreadable.clone();
                        block
                            .stream()
                            .map_err(move |e| unreadable(key, e.to_string()))
                    })
                    .boxed(),
            )
        } else {
            let counter = Arc::clone(&env.remote_read_bytes);
            let remote_bytes = metrics.remote_bytes.clone();
            let on_bytes = move |n: u64| {
                counter.fetch_add(n, Ordering::Relaxed);
                remote_bytes.add(n as usize);
            };
            metrics.fetch_calls.add(1);
            env.count(FLIGHT_CALLS, 1);
            let addr = &location.flight_addr;
            let client = match connection {
                Connection::Shared => env.flight.client(addr)?,
                Connection::Own => env.flight.own_client(addr)?,
            };
            open_blocks(client, addr, &keys, &[], on_bytes).await
        }
    };
    open.try_flatten_stream().map_err(name_lost).boxed()
}

/// `input`'s rows in batches of about `target` rows. A wide exchange cuts every map
/// task's output into as many pieces as it has reduce partitions, so a reader gets
/// many tiny batches, and each operator above it pays its per-batch cost on every one
/// (DataFusion's own RepartitionExec coalesces for the same reason); a worker serving
/// many blocks in one Flight call would send each as a message of its own. Only small
/// batches are copied: one of more than an eighth of the target passes through as it
/// is (so a narrow exchange's large pieces cost no copy), and one block's batches keep
/// their order.
pub fn coalesced<E>(
    input: futures::stream::BoxStream<'static, std::result::Result<RecordBatch, E>>,
    schema: SchemaRef,
    target: usize,
) -> impl futures::Stream<Item = std::result::Result<RecordBatch, E>> + Send + 'static
where
    E: From<arrow::error::ArrowError> + Send + 'static,
{
    let target = target.max(1);
    let coalescer =
        BatchCoalescer::new(schema, target).with_biggest_coalesce_batch_size(Some(target / 8));
    // The state is the input (none once it ended) and the coalescer, or nothing once
    // an error ended the stream.
    futures::stream::unfold(Some((Some(input), coalescer)), |state| async move {
        let (mut input, mut coalescer) = state?;
        loop {
            if let Some(batch) = coalescer.next_completed_batch() {
                return Some((Ok(batch), Some((input, coalescer))));
            }
            let pushed = match input.as_mut()?.next().await {
                Some(Ok(batch)) => coalescer.push_batch(batch),
                Some(Err(e)) => return Some((Err(e), None)),
                None => {
                    input = None;
                    coalescer.finish_buffered_batch()
                }
            };
            if let Err(e) = pushed {
                return Some((Err(e.into()), None));
            }
        }
    })
}

/// `batch` copied into buffers of its own, so that its memory size is what its rows
/// take. A block's batches are slices of larger buffers (a Flight message, or the map
/// task's batch taken apart by partition), and an operator that holds them
/// unspillable and counts them, as a merge holds a batch and its key column of each
/// input, would count each whole buffer.
fn compact(batch: &RecordBatch) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let all = arrow::array::UInt32Array::from_iter_values(0..batch.num_rows() as u32);
    arrow::compute::take_record_batch(batch, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(map_partition: u32, attempt: u32) -> BlockKey {
        BlockKey {
            job: 7,
            stage: 2,
            map_partition,
            reduce_partition: 5,
            attempt,
        }
    }

    #[test]
    fn a_batch_ticket_names_its_blocks_in_order() {
        let keys = vec![key(3, 0), key(0, 2), key(9, 1)];
        assert_eq!(block_keys(&batch_ticket(&keys, &[]).ticket).unwrap(), keys);
        let mixed = vec![
            key(3, 0),
            BlockKey {
                reduce_partition: 6,
                ..key(3, 0)
            },
            key(9, 1),
        ];
        assert_eq!(
            block_keys(&batch_ticket(&mixed, &[]).ticket).unwrap(),
            mixed
        );
        assert_eq!(
            block_keys(&ticket(&key(4, 1), &[]).ticket).unwrap(),
            vec![key(4, 1)]
        );
    }

    #[test]
    fn malformed_and_oversized_batch_tickets_are_refused() {
        let refusal = |ticket: drove_proto::BlockTicket| {
            block_keys(&ticket.encode_to_vec()).unwrap_err().to_string()
        };
        let e = refusal(drove_proto::BlockTicket {
            more_map_partitions: vec![1, 2],
            more_attempts: vec![0],
            ..Default::default()
        });
        assert!(e.contains("they go in pairs"), "{e}");
        let e = refusal(drove_proto::BlockTicket {
            more_map_partitions: vec![1, 2],
            more_attempts: vec![0, 0],
            more_reduce_partitions: vec![4],
            ..Default::default()
        });
        assert!(e.contains("give one for each, or none"), "{e}");
        let many: Vec<BlockKey> = (0..=BLOCKS_PER_TICKET_MAX as u32)
            .map(|m| key(m, 0))
            .collect();
        let e = block_keys(&batch_ticket(&many, &[]).ticket)
            .unwrap_err()
            .to_string();
        assert!(e.contains("the most one call reads"), "{e}");
        let e = block_keys(b"\xff\xff").unwrap_err().to_string();
        assert!(e.contains("not a drove block ticket"), "{e}");
    }

    /// A reader reads the outputs its launch lists, in a gather and per map, and none
    /// of those left out for having no rows: their blocks are not even looked up (here
    /// they do not exist, and looking one up would fail the task as a lost block).
    #[tokio::test]
    async fn a_reader_skips_the_outputs_left_out_as_empty() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field};

        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let store = Arc::new(BlockStore::default());
        // Map tasks 0 and 2 wrote rows to reduce partition 0; task 1 wrote none.
        for (map, values) in [(0u32, vec![1i64, 2]), (2, vec![3])] {
            let mut writer = store.writer(Arc::clone(&schema), 1);
            let column = Arc::new(Int64Array::from(values));
            let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap();
            writer.push(0, batch).unwrap();
            writer.finish(map_output(map)).unwrap();
        }
        let ctx = task_context(store, 3, &[0, 2], 0..1);
        let read = |mode: ReadMode, partitions: usize, partition: usize| {
            let reader = ShuffleReaderExec::new(0, mode, partitions, Arc::clone(&schema));
            sorted_values(reader, partition, Arc::clone(&ctx))
        };
        assert_eq!(read(ReadMode::Gather, 1, 0).await, [1, 2, 3]);
        assert_eq!(read(ReadMode::PerMap, 3, 1).await, Vec::<i64>::new());
        assert_eq!(read(ReadMode::PerMap, 3, 2).await, [3]);
        let beyond = ShuffleReaderExec::new(0, ReadMode::PerMap, 4, Arc::clone(&schema));
        assert!(
            beyond.execute(3, Arc::clone(&ctx)).is_err(),
            "the stage has 3"
        );
    }

    /// The name of map task `map`'s output of stage 0 of job 1 (its first block).
    fn map_output(map: u32) -> BlockKey {
        BlockKey {
            job: 1,
            stage: 0,
            map_partition: map,
            reduce_partition: 0,
            attempt: 0,
        }
    }

    /// A task of job 1 on worker 7 whose stage 0, of `partitions` map tasks, wrote the
    /// outputs of map tasks `maps` into `store`, reading partitions `reads`.
    fn task_context(
        store: Arc<BlockStore>,
        partitions: u32,
        maps: &[u32],
        reads: std::ops::Range<u32>,
    ) -> Arc<TaskContext> {
        let outputs = (maps.iter())
            .map(|&partition| MapOutputRef {
                job: 1,
                stage: 0,
                partition,
                attempt: 0,
                worker_id: 7,
                flight_addr: String::new(),
            })
            .collect();
        let env = ShuffleEnv {
            job: 1,
            local_worker: 7,
            store,
            flight: Arc::default(),
            inputs: [(
                0,
                StageOutputs {
                    partitions,
                    outputs,
                },
            )]
            .into(),
            reads,
            local_read_bytes: AtomicU64::new(0),
            remote_read_bytes: Arc::default(),
            counters: Default::default(),
        };
        let config = datafusion::prelude::SessionConfig::new().with_extension(Arc::new(env));
        Arc::new(TaskContext::default().with_session_config(config))
    }

    /// The values of column 0 (an Int64) that `reader` reads for `partition`, sorted.
    async fn sorted_values(
        reader: ShuffleReaderExec,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Vec<i64> {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let batches: Vec<RecordBatch> = reader
            .execute(partition, ctx)
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut values: Vec<i64> = (batches.iter())
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        values.sort();
        values
    }

    /// A task the scheduler coalesced others into reads their partitions too, where
    /// its own partition is read; its run ends at the reader's last partition whatever
    /// the launch said.
    #[tokio::test]
    async fn a_coalesced_reader_reads_the_partitions_of_its_run() {
        use arrow::array::Int64Array;
        use arrow::datatypes::{DataType, Field};

        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let store = Arc::new(BlockStore::default());
        // Two map tasks, each writing value 10 * map + reduce to each of 4 partitions.
        for map in 0..2u32 {
            let mut writer = store.writer(Arc::clone(&schema), 4);
            for reduce in 0..4 {
                let column = Arc::new(Int64Array::from(vec![i64::from(10 * map + reduce)]));
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column]).unwrap();
                writer.push(reduce as usize, batch).unwrap();
            }
            writer.finish(map_output(map)).unwrap();
        }
        let read = |reads: std::ops::Range<u32>, mode: ReadMode, partition: usize| {
            let reader = ShuffleReaderExec::new(0, mode, 4, Arc::clone(&schema));
            sorted_values(
                reader,
                partition,
                task_context(Arc::clone(&store), 2, &[0, 1], reads),
            )
        };
        assert_eq!(read(1..3, ReadMode::Gather, 1).await, [1, 2, 11, 12]);
        assert_eq!(read(1..2, ReadMode::Gather, 1).await, [1, 11]);
        // Another partition than the task's own (none in a coalescing stage).
        assert_eq!(read(1..3, ReadMode::Gather, 3).await, [3, 13]);
        assert_eq!(read(2..99, ReadMode::Gather, 2).await, [2, 3, 12, 13]);
    }

    /// Tiny batches come out as batches of the target size, in order, with the rest
    /// in a last one; a large batch passes through; an error ends the stream.
    #[tokio::test]
    async fn a_reader_coalesces_tiny_batches() {
        use arrow::array::{AsArray, Int64Array};
        use arrow::datatypes::{DataType, Field, Int64Type};
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch = |from: i64, n: i64| {
            let values = Int64Array::from_iter_values(from..from + n);
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(values)]).unwrap()
        };
        let tiny: Vec<DfResult<RecordBatch>> = (0..100).map(|i| Ok(batch(i * 3, 3))).collect();
        let input = futures::stream::iter(tiny)
            .chain(futures::stream::iter([Ok(batch(300, 1000))]))
            .boxed();
        let out: Vec<RecordBatch> = coalesced(input, Arc::clone(&schema), 64)
            .try_collect()
            .await
            .unwrap();
        let sizes: Vec<usize> = out.iter().map(|b| b.num_rows()).collect();
        assert_eq!(sizes, [64, 64, 64, 64, 44, 1000]);
        let values: Vec<i64> = out
            .iter()
            .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
            .collect();
        assert_eq!(values, (0..1300).collect::<Vec<i64>>());

        let failing = futures::stream::iter([
            Ok(batch(0, 3)),
            Err(DataFusionError::Execution("the block is gone".into())),
            Ok(batch(3, 3)),
        ])
        .boxed();
        let out: Vec<DfResult<RecordBatch>> =
            coalesced(failing, Arc::clone(&schema), 64).collect().await;
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].as_ref().unwrap_err().to_string().contains("gone"));
    }
}
