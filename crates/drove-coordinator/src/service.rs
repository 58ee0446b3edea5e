//! The coordinator's gRPC service.

use std::pin::Pin;

use drove_core::access::{Identity, Role};
use drove_core::scheduler::HeldOutput;
use drove_core::scheduler::{PRIORITY_MAX, PRIORITY_MIN};
use drove_core::{AttemptId, JobId};
use drove_exec::tables::{Format, TableSpec};
use drove_proto as pb;
use drove_proto::coordinator_server::{Coordinator as CoordinatorRpc, CoordinatorServer};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info_span};

use crate::auth::Credential;
use crate::planning::{JobOptions, Query};
use crate::state::{Coordinator, Registration, attempt_id};

/// A job's watchers get at most one update per this interval while it runs.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The gRPC server for a coordinator.
pub fn server(coordinator: Coordinator) -> CoordinatorServer<Service> {
    CoordinatorServer::new(Service { coordinator })
        .max_decoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
}

/// Implements the `Coordinator` gRPC service over a [`Coordinator`].
pub struct Service {
    coordinator: Coordinator,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Service {
    /// Who sent `request` (see [`Coordinator::identify`]), once this coordinator is
    /// confirmed to lead (see [`Coordinator::confirm_lead`]): every client request
    /// starts here.
    async fn identify<T>(&self, request: &Request<T>) -> Result<Identity, Status> {
        self.coordinator.confirm_lead().await?;
        Ok(self
            .coordinator
            .identify(Credential::of_grpc(request))
            .await?)
    }

    /// The job a request names, if it is this cluster's: a request that names another
    /// cluster (one whose coordinator restarted without its data directory) would
    /// otherwise reach a different job under the same id.
    fn job_of(&self, request: pb::JobRequest) -> Result<JobId, Status> {
        let job = JobId(request.job_id);
        let mine = self.coordinator.cluster_id();
        // A replicated coordinator that has not led yet does not know it (0).
        if request.cluster_id != 0 && mine != 0 && request.cluster_id != mine {
            return Err(Status::not_found(format!(
                "{job} is not this cluster's: the coordinator restarted without the data directory that held it"
            )));
        }
        Ok(job)
    }
}

/// The client certificate a request came with: it reaches a job's blocks and drove fs
/// chunks on the workers with grants made for it. A node needs none, and without TLS
/// nobody does.
fn reader_of<T>(request: &Request<T>) -> Option<String> {
    match Credential::certificate_of_grpc(request) {
        Credential::Certificate(name) => Some(name),
        _ => None,
    }
}

fn table_spec(t: pb::TableSpec) -> Result<TableSpec, Status> {
    let format = if t.format.is_empty() {
        None
    } else {
        Some(Format::parse(&t.format).map_err(|e| Status::invalid_argument(e.to_string()))?)
    };
    if t.name.is_empty() {
        return Err(Status::invalid_argument(format!(
            "the table at '{}' has no name",
            t.path
        )));
    }
    Ok(TableSpec {
        name: t.name,
        path: t.path.into(),
        format,
    })
}

#[tonic::async_trait]
impl CoordinatorRpc for Service {
    type WorkerSessionStream = BoxStream<pb::CoordinatorMessage>;
    type WatchJobStream = BoxStream<pb::JobStatus>;

    async fn worker_session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::WorkerSessionStream>, Status> {
        drove_exec::tls::require_node(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?.ok_or_else(|| {
            Status::invalid_argument("the worker session ended before registering")
        })?;
        let Some(pb::worker_message::Kind::Register(register)) = first.kind else {
            return Err(Status::invalid_argument(
                "a worker session must start with `register`",
            ));
        };
        let (tx, rx) = mpsc::channel(self.coordinator.config.worker_queue_max);
        let worker = self
            .coordinator
            .register_worker(
                Registration {
                    flight_addr: register.flight_addr,
                    slots: register.slots,
                    task_memory: register.task_memory_bytes,
                    node_id: register.node_id,
                    held_cluster_id: register.held_cluster_id,
                    zone: register.zone,
                    chunks: register.stores_chunks.then_some(register.chunks),
                    held: (register.held.into_iter())
                        .filter_map(|h| {
                            let AttemptId { task, attempt } = attempt_id(h.task.as_ref()?);
                            Some(HeldOutput {
                                task,
                                attempt,
                                rows: h.rows,
                                bytes: h.bytes,
                            })
                        })
                        .collect(),
                },
                tx,
            )
            .await?;
        let coordinator = self.coordinator.clone();
        tokio::spawn(
            async move {
                let (why, clean) = loop {
                    match inbound.message().await {
                        Ok(Some(pb::WorkerMessage {
                            kind: Some(pb::worker_message::Kind::Heartbeat(hb)),
                        })) => coordinator.heartbeat(worker, hb).await,
                        Ok(Some(pb::WorkerMessage {
                            kind: Some(pb::worker_message::Kind::Drain(_)),
                        })) => coordinator.drain(worker).await,
                        Ok(Some(other)) => debug!(?other, "ignoring an unexpected worker message"),
                        Ok(None) => break ("the worker closed its session".to_string(), true),
                        Err(e) => {
                            break (
                                format!("the worker's session failed: {}", e.message()),
                                false,
                            );
                        }
                    }
                };
                coordinator.worker_lost(worker, why, clean).await;
            }
            .instrument(info_span!("worker", %worker)),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let who = self.identify(&request).await?;
        let request = request.into_inner();
        let query = match request.query {
            Some(pb::submit_job_request::Query::Sql(sql)) => Query::Sql(sql),
            Some(pb::submit_job_request::Query::LogicalPlan(bytes)) => Query::LogicalPlan(bytes),
            Some(pb::submit_job_request::Query::PhysicalPlan(bytes)) => Query::PhysicalPlan(bytes),
            None => {
                return Err(Status::invalid_argument(
                    "the job has no query: send SQL or a logical plan",
                ));
            }
        };
        let tables = request
            .tables
            .into_iter()
            .map(table_spec)
            .collect::<Result<Vec<_>, _>>()?;
        if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&request.priority) {
            return Err(Status::invalid_argument(format!(
                "priority {} is out of range: give {PRIORITY_MIN} to {PRIORITY_MAX}",
                request.priority
            )));
        }
        let cache_as = (!request.cache_as.is_empty()).then_some(request.cache_as);
        let job = self
            .coordinator
            .submit(
                &who,
                request.name,
                query,
                tables,
                cache_as,
                JobOptions {
                    detached: request.detached,
                    priority: request.priority,
                    request: request.request_id,
                },
            )
            .await?;
        Ok(Response::new(pb::SubmitJobResponse {
            job_id: job.0,
            cluster_id: self.coordinator.cluster_id(),
        }))
    }

    async fn watch_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let who = self.identify(&request).await?;
        let reader = reader_of(&request);
        let job = self.job_of(request.into_inner())?;
        let (mut changes, watching, grant) = self.coordinator.subscribe(&who, job, reader).await?;
        let coordinator = self.coordinator.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // Watching until this ends: the job ended, or the client went away.
            let _watching = watching;
            loop {
                changes.borrow_and_update();
                let status = coordinator
                    .progress(job)
                    .await
                    .map(|s| pb::JobStatus {
                        cluster_id: coordinator.cluster_id(),
                        result_grant: grant.clone(),
                        ..s
                    })
                    .map_err(Status::from);
                let ended = match &status {
                    Ok(s) => s.state() != pb::JobState::Running,
                    Err(_) => true,
                };
                let sent = tokio::time::Instant::now();
                if tx.send(status).await.is_err() || ended {
                    break;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { break },
                    () = tx.closed() => break,
                }
                // At most one update per interval while the job runs, however often it
                // changes; its end goes out at once.
                let next = sent + WATCH_INTERVAL;
                while tokio::time::Instant::now() < next && *changes.borrow() {
                    tokio::select! {
                        () = tokio::time::sleep_until(next) => {}
                        changed = changes.changed() => if changed.is_err() { break },
                        () = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::JobStatus>, Status> {
        let who = self.identify(&request).await?;
        let job = self.job_of(request.into_inner())?;
        Ok(Response::new(self.coordinator.cancel(&who, job).await?))
    }

    async fn release_job(
        &self,
        request: Request<pb::JobRequest>,
    ) -> Result<Response<pb::ReleaseJobResponse>, Status> {
        let who = self.identify(&request).await?;
        let job = self.job_of(request.into_inner())?;
        self.coordinator.release(&who, job).await?;
        Ok(Response::new(pb::ReleaseJobResponse {}))
    }

    async fn uncache_table(
        &self,
        request: Request<pb::UncacheRequest>,
    ) -> Result<Response<pb::UncacheResponse>, Status> {
        let who = self.identify(&request).await?;
        let request = request.into_inner();
        let existed = self.coordinator.uncache(&who, &request.name).await?;
        if !existed && !request.if_exists {
            return Err(Status::not_found(format!(
                "no table '{}' is cached; `UNCACHE TABLE IF EXISTS {}` ignores that",
                request.name, request.name
            )));
        }
        Ok(Response::new(pb::UncacheResponse { existed }))
    }

    async fn cluster_status(
        &self,
        request: Request<pb::ClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatusResponse>, Status> {
        let who = self.identify(&request).await?;
        let with_tasks = request.into_inner().with_tasks;
        Ok(Response::new(
            self.coordinator.leader_status(&who, with_tasks).await?,
        ))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = self.identify(&request).await?;
        let request = request.into_inner();
        let role = Role::parse(&request.role).map_err(Status::invalid_argument)?;
        let (token, id) = (self.coordinator)
            .create_token(&who, request.tenant, role)
            .await?;
        Ok(Response::new(pb::CreateTokenResponse { token, id }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = self.identify(&request).await?;
        let id = request.into_inner().id;
        self.coordinator.revoke_token(&who, id).await?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let who = self.identify(&request).await?;
        let tokens = (self.coordinator.tokens(&who).await?.into_iter())
            .map(|(id, t)| pb::TokenInfo {
                id,
                tenant: t.tenant,
                role: t.role.name().to_string(),
                created_unix_ms: t.created_ms,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn fs_place(
        &self,
        request: Request<pb::FsPlaceRequest>,
    ) -> Result<Response<pb::FsPlaceResponse>, Status> {
        let who = self.identify(&request).await?;
        let reader = reader_of(&request);
        let r = request.into_inner();
        Ok(Response::new(
            self.coordinator.fs_place(&who, reader, r).await?,
        ))
    }

    async fn fs_commit(
        &self,
        request: Request<pb::FsCommitRequest>,
    ) -> Result<Response<pb::FsDone>, Status> {
        let who = self.identify(&request).await?;
        self.coordinator
            .fs_commit(&who, request.into_inner())
            .await?;
        Ok(Response::new(pb::FsDone {}))
    }

    async fn fs_list(
        &self,
        request: Request<pb::FsPathRequest>,
    ) -> Result<Response<pb::FsListResponse>, Status> {
        let who = self.identify(&request).await?;
        let reader = reader_of(&request);
        let path = request.into_inner().path;
        Ok(Response::new(
            self.coordinator.fs_list(&who, reader, path).await?,
        ))
    }

    async fn fs_mkdir(
        &self,
        request: Request<pb::FsPathRequest>,
    ) -> Result<Response<pb::FsDone>, Status> {
        let who = self.identify(&request).await?;
        let path = request.into_inner().path;
        self.coordinator.fs_mkdir(&who, path).await?;
        Ok(Response::new(pb::FsDone {}))
    }

    async fn fs_remove(
        &self,
        request: Request<pb::FsPathRequest>,
    ) -> Result<Response<pb::FsDone>, Status> {
        let who = self.identify(&request).await?;
        let r = request.into_inner();
        self.coordinator
            .fs_remove(&who, r.path, r.recursive)
            .await?;
        Ok(Response::new(pb::FsDone {}))
    }

    async fn fs_rename(
        &self,
        request: Request<pb::MetaFsRename>,
    ) -> Result<Response<pb::FsDone>, Status> {
        let who = self.identify(&request).await?;
        self.coordinator
            .fs_rename(&who, request.into_inner())
            .await?;
        Ok(Response::new(pb::FsDone {}))
    }
}
