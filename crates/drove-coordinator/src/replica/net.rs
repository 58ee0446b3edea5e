//! Raft between coordinators over gRPC: the client that sends a peer Raft's messages,
//! and the `Raft` service that hands a peer's messages to the local Raft.

use std::time::Duration;

use drove_proto as pb;
use drove_proto::raft_client::RaftClient;
use drove_proto::raft_server::{Raft as RaftRpc, RaftServer};
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{Raft, Types, wire};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The least time an append or snapshot call gets, whatever Raft's heartbeat-sized
/// deadline: entries can hold a job's plans, megabytes, fsync'd on arrival.
const CALL_TIMEOUT_MIN: Duration = Duration::from_secs(10);

/// Room in one append request for what it holds besides its entries.
const APPEND_HEADROOM: usize = 1 << 20;

/// Makes a [`Peer`] per node Raft talks to, over mutual TLS with `tls` if given.
pub struct Network {
    pub tls: Option<std::sync::Arc<drove_exec::tls::ClusterTls>>,
}

impl RaftNetworkFactory<Types> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        let client = drove_exec::net::endpoint(&node.addr, self.tls.as_deref()).map(|e| {
            let channel = e.connect_timeout(CONNECT_TIMEOUT).connect_lazy();
            RaftClient::new(channel)
                .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(pb::MAX_MESSAGE_BYTES)
        });
        Peer { target, client }
    }
}

/// One peer coordinator, connected lazily.
pub struct Peer {
    target: u64,
    client: Result<RaftClient<Channel>, String>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

/// A failed call: a peer that does not answer is unreachable (Raft backs off); any
/// other failure is the network's.
fn failed<E: std::error::Error>(status: Status) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&status))
        }
        _ => RPCError::Network(NetworkError::new(&status)),
    }
}

fn malformed<E: std::error::Error>(
    e: wire::Malformed,
) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    RPCError::Network(NetworkError::new(&e))
}

impl Peer {
    fn client(&self) -> Result<RaftClient<Channel>, Unreachable> {
        self.client.clone().map_err(|e| {
            Unreachable::new(&std::io::Error::other(format!(
                "coordinator {} has a bad address: {e}",
                self.target
            )))
        })
    }
}

fn with_timeout<T>(message: T, option: &RPCOption) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(option.hard_ttl().max(CALL_TIMEOUT_MIN));
    request
}

impl RaftNetwork<Types> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<Types>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let entries: Vec<pb::RaftEntry> = rpc.entries.iter().map(wire::entry).collect();
        // A request over gRPC's message limit could never be sent: Raft sends fewer.
        let mut size = 0;
        let fit = entries
            .iter()
            .take_while(|e| {
                size += pb::Message::encoded_len(*e);
                size <= pb::MAX_MESSAGE_BYTES - APPEND_HEADROOM
            })
            .count();
        if fit < entries.len() {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(fit.max(1) as u64),
            ));
        }
        let message = pb::RaftAppendRequest {
            vote: Some(wire::vote(&rpc.vote)),
            prev_log_id: wire::opt_log_id(&rpc.prev_log_id),
            entries,
            leader_commit: wire::opt_log_id(&rpc.leader_commit),
        };
        let answer = (self
            .client()?
            .append_entries(with_timeout(message, &option))
            .await)
            .map_err(failed)?
            .into_inner();
        use pb::raft_append_response::Outcome;
        Ok(match answer.outcome {
            Some(Outcome::Success(_)) => AppendEntriesResponse::Success,
            Some(Outcome::PartialSuccess(p)) => {
                AppendEntriesResponse::PartialSuccess(wire::opt_log_id_from(&p.matching))
            }
            Some(Outcome::Conflict(_)) => AppendEntriesResponse::Conflict,
            Some(Outcome::HigherVote(v)) => {
                AppendEntriesResponse::HigherVote(wire::vote_from(Some(&v)).map_err(malformed)?)
            }
            None => {
                return Err(malformed(wire::Malformed(
                    "an append answer without its outcome",
                )));
            }
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<Types>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let message = pb::RaftSnapshotRequest {
            vote: Some(wire::vote(&rpc.vote)),
            meta: Some(wire::snapshot_meta(&rpc.meta)),
            offset: rpc.offset,
            data: rpc.data,
            done: rpc.done,
        };
        let answer = (self
            .client()?
            .install_snapshot(with_timeout(message, &option))
            .await)
            .map_err(failed)?
            .into_inner();
        Ok(InstallSnapshotResponse {
            vote: wire::vote_from(answer.vote.as_ref()).map_err(malformed)?,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let message = pb::RaftVoteRequest {
            vote: Some(wire::vote(&rpc.vote)),
            last_log_id: wire::opt_log_id(&rpc.last_log_id),
        };
        let answer = (self.client()?.vote(with_timeout(message, &option)).await)
            .map_err(failed)?
            .into_inner();
        Ok(VoteResponse {
            vote: wire::vote_from(answer.vote.as_ref()).map_err(malformed)?,
            vote_granted: answer.granted,
            last_log_id: wire::opt_log_id_from(&answer.last_log_id),
        })
    }
}

/// The `Raft` gRPC service: peers' messages to the local Raft.
pub struct Service {
    raft: Raft,
}

pub fn server(raft: Raft) -> RaftServer<Service> {
    RaftServer::new(Service { raft })
        .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(pb::MAX_MESSAGE_BYTES)
}

fn refused(e: impl std::fmt::Display) -> Status {
    Status::unavailable(e.to_string())
}

fn bad(e: wire::Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl RaftRpc for Service {
    async fn append_entries(
        &self,
        request: Request<pb::RaftAppendRequest>,
    ) -> Result<Response<pb::RaftAppendResponse>, Status> {
        drove_exec::tls::require_node(&request)?;
        let r = request.into_inner();
        let rpc = AppendEntriesRequest {
            vote: wire::vote_from(r.vote.as_ref()).map_err(bad)?,
            prev_log_id: wire::opt_log_id_from(&r.prev_log_id),
            entries: (r.entries.into_iter())
                .map(wire::entry_from)
                .collect::<Result<_, _>>()
                .map_err(bad)?,
            leader_commit: wire::opt_log_id_from(&r.leader_commit),
        };
        use pb::raft_append_response::Outcome;
        let outcome = match self.raft.append_entries(rpc).await.map_err(refused)? {
            AppendEntriesResponse::Success => Outcome::Success(pb::RaftBlank {}),
            AppendEntriesResponse::PartialSuccess(id) => {
                Outcome::PartialSuccess(pb::RaftPartialSuccess {
                    matching: wire::opt_log_id(&id),
                })
            }
            AppendEntriesResponse::Conflict => Outcome::Conflict(pb::RaftBlank {}),
            AppendEntriesResponse::HigherVote(v) => Outcome::HigherVote(wire::vote(&v)),
        };
        Ok(Response::new(pb::RaftAppendResponse {
            outcome: Some(outcome),
        }))
    }

    async fn vote(
        &self,
        request: Request<pb::RaftVoteRequest>,
    ) -> Result<Response<pb::RaftVoteResponse>, Status> {
        drove_exec::tls::require_node(&request)?;
        let r = request.into_inner();
        let rpc = VoteRequest {
            vote: wire::vote_from(r.vote.as_ref()).map_err(bad)?,
            last_log_id: wire::opt_log_id_from(&r.last_log_id),
        };
        let answer = self.raft.vote(rpc).await.map_err(refused)?;
        Ok(Response::new(pb::RaftVoteResponse {
            vote: Some(wire::vote(&answer.vote)),
            granted: answer.vote_granted,
            last_log_id: wire::opt_log_id(&answer.last_log_id),
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<pb::RaftSnapshotRequest>,
    ) -> Result<Response<pb::RaftSnapshotResponse>, Status> {
        drove_exec::tls::require_node(&request)?;
        let r = request.into_inner();
        let rpc = InstallSnapshotRequest {
            vote: wire::vote_from(r.vote.as_ref()).map_err(bad)?,
            meta: wire::snapshot_meta_from(&r.meta.unwrap_or_default()),
            offset: r.offset,
            data: r.data,
            done: r.done,
        };
        let answer = self.raft.install_snapshot(rpc).await.map_err(refused)?;
        Ok(Response::new(pb::RaftSnapshotResponse {
            vote: Some(wire::vote(&answer.vote)),
        }))
    }
}
