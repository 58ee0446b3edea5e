//! The worker's Arrow Flight service: `do_get` serves shuffle blocks and results by
//! ticket, one block or several of one stage and reduce partition per call. Every
//! other Flight call is refused. With TLS, the cluster's nodes read any block, and a
//! client only those of the job its ticket's grant names, made for its certificate.

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use drove_exec::blocks::BlockStore;
use drove_exec::shuffle::{coalesced, decode_ticket};
use drove_exec::token::Granted;
use futures::{Stream, StreamExt, TryStreamExt};
use tonic::{Request, Response, Status, Streaming};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The rows of the batches a `do_get` sends (blocks' pieces are joined up to it).
const SERVED_BATCH_ROWS: usize = 8192;

/// The key that checks clients' grants, as the coordinator gave it at registration
/// (empty before).
pub type TicketKey = Arc<std::sync::RwLock<Vec<u8>>>;

/// The Flight server for a worker's block store.
pub fn server(store: Arc<BlockStore>, ticket_key: TicketKey) -> FlightServiceServer<BlockService> {
    FlightServiceServer::new(BlockService { store, ticket_key })
        .max_decoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
}

/// Serves blocks from a [`BlockStore`].
pub struct BlockService {
    store: Arc<BlockStore>,
    ticket_key: TicketKey,
}

/// Refuses a client (a peer without a node's certificate, over TLS) whose grant is
/// not for `what` and its certificate. Without TLS, anyone passes; so do the
/// cluster's nodes.
pub fn check_grant<T>(
    request: &Request<T>,
    ticket_key: &TicketKey,
    what: Granted,
    grant: &[u8],
) -> Result<(), Status> {
    let Some(chain) = request.peer_certs() else {
        return Ok(());
    };
    let cert = chain.first().map(|c| c.as_ref()).unwrap_or_default();
    if drove_exec::tls::is_node(cert) {
        return Ok(());
    }
    let reader = drove_exec::tls::client_name(cert).unwrap_or_default();
    let key = ticket_key.read().unwrap_or_else(|p| p.into_inner());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    if drove_exec::token::check_grant(&key, what, &reader, grant, now_ms) {
        return Ok(());
    }
    let named = match what {
        Granted::Job(job) => format!("a read of job {job}"),
        Granted::ChunkRead(chunk) => format!("a read of chunk {chunk:016x}"),
        Granted::ChunkWrite(chunk) => format!("a write of chunk {chunk:016x}"),
    };
    Err(Status::permission_denied(format!(
        "no grant gives certificate '{reader}' {named} (or its grant expired): clients reach blocks and chunks with the grants the coordinator gives them (drove does)"
    )))
}

fn refused<T>(call: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "a drove worker serves only do_get with a block ticket, not {call}"
    )))
}

#[tonic::async_trait]
impl FlightService for BlockService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let (keys, grant) = decode_ticket(&request.get_ref().ticket)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // Every block a ticket names is of its first block's job.
        check_grant(
            &request,
            &self.ticket_key,
            Granted::Job(keys[0].job),
            &grant,
        )?;
        tracing::debug!(blocks = keys.len(), first = %keys[0], "do_get");
        // Every block is looked up before the answer starts: a missing one fails the
        // call at once, naming it, rather than after the others were sent.
        let blocks = keys
            .iter()
            .zip(self.store.get_many(&keys))
            .map(|(key, block)| {
                block.ok_or_else(|| Status::not_found(format!("{key} is not on this worker")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let schema = Arc::clone(&blocks[0].schema);
        let batches =
            futures::stream::iter(keys.into_iter().zip(blocks)).flat_map(|(key, block)| {
                let failed = move |e: String| {
                    arrow_flight::error::FlightError::ExternalError(
                        format!("reading {key}: {e}").into(),
                    )
                };
                // A spilled block is read on a blocking thread, not this runtime.
                block
                    .stream()
                    .map(move |b| b.map_err(|e| failed(e.to_string())))
            });
        // The blocks a call names are small pieces of their map tasks'
        // outputs: sent as they are, each would be a message of its own.
        let batches = coalesced(batches.boxed(), Arc::clone(&schema), SERVED_BATCH_ROWS);
        let stream = FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(batches)
            .map_err(|e| Status::internal(format!("encoding blocks: {e}")));
        Ok(Response::new(stream.boxed()))
    }

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        refused("handshake")
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        refused("list_flights")
    }

    async fn get_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        refused("get_flight_info")
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        refused("poll_flight_info")
    }

    async fn get_schema(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        refused("get_schema")
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        refused("do_put")
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        refused("do_exchange")
    }

    async fn do_action(
        &self,
        _request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        refused("do_action")
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        refused("list_actions")
    }
}
