//! Reading and writing `drove fs` chunks on workers over gRPC (the `Chunks` service on
//! a worker's Flight port): what clients and workers that copy chunks share.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drove_proto as pb;
use drove_proto::chunks_client::ChunksClient;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::tls::ClusterTls;

/// The bytes each message of a chunk write carries.
pub const WRITE_PIECE_BYTES: usize = 1 << 20;

/// Pieces of a read waiting for its reader, at most.
const READ_AHEAD: usize = 8;

/// A replica of a chunk: the worker that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub worker_id: u64,
    /// Its Flight address, where its chunks are served.
    pub addr: String,
    pub zone: String,
}

/// A chunk of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub id: u64,
    pub len: u64,
    pub crc32c: u32,
    pub replicas: Vec<Replica>,
    /// With TLS, what lets the certificate that listed it read it.
    pub grant: Vec<u8>,
}

/// A directory entry, or a file with its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsEntry {
    /// The name within the directory listed, or a file's path.
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    pub created_unix_ms: u64,
    pub replication: u32,
    pub chunk_bytes: u64,
    pub chunks: Vec<Chunk>,
}

impl From<pb::FsEntryInfo> for FsEntry {
    fn from(e: pb::FsEntryInfo) -> Self {
        Self {
            name: e.name,
            is_dir: e.is_dir,
            size: e.size,
            created_unix_ms: e.created_unix_ms,
            replication: e.replication,
            chunk_bytes: e.chunk_bytes,
            chunks: (e.chunks.into_iter())
                .map(|c| Chunk {
                    id: c.id,
                    len: c.len,
                    crc32c: c.crc32c,
                    grant: c.grant,
                    replicas: (c.replicas.into_iter())
                        .map(|r| Replica {
                            worker_id: r.worker_id,
                            addr: r.addr,
                            zone: r.zone,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// What a path names: a directory and its entries, or a file alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub is_dir: bool,
    pub entries: Vec<FsEntry>,
}

impl From<pb::FsListResponse> for Listing {
    fn from(listed: pb::FsListResponse) -> Self {
        Self {
            is_dir: listed.is_dir,
            entries: listed.entries.into_iter().map(FsEntry::from).collect(),
        }
    }
}

/// Where drove fs's namespace is asked: the coordinator, over gRPC or in its own
/// process.
#[async_trait::async_trait]
pub trait Namespace: Send + Sync + std::fmt::Debug {
    /// What `path` (a `drove://` path) names; `None` if nothing.
    async fn list(&self, path: &str) -> Result<Option<Listing>, String>;
}

/// The bytes of `drove://` files read, by whether the replica read was this
/// process's own worker's.
#[derive(Debug, Default)]
pub struct ReadBytes {
    pub local: AtomicU64,
    pub remote: AtomicU64,
}

impl ReadBytes {
    /// (local, remote) read since the previous take.
    pub fn take(&self) -> (u64, u64) {
        (
            self.local.swap(0, Ordering::Relaxed),
            self.remote.swap(0, Ordering::Relaxed),
        )
    }
}

/// Reads files' chunks from their replicas, its own worker's first.
#[derive(Debug, Clone)]
pub struct ChunkReader {
    pub clients: Arc<ChunkClients>,
    /// The Flight address of the worker this process is, if it is one.
    pub local_addr: Option<String>,
    pub read: Arc<ReadBytes>,
}

impl ChunkReader {
    pub fn new(clients: Arc<ChunkClients>, local_addr: Option<String>) -> Self {
        Self {
            clients,
            local_addr,
            read: Default::default(),
        }
    }

    /// Bytes `range` of `file` (at `path`), chunk after chunk, in pieces. Each chunk
    /// is read from one of its replicas, this worker's own first: a replica that fails
    /// (its worker is gone, or its copy is corrupt) is left for the next, from where
    /// the first stopped. A chunk read whole is checked against its checksum.
    pub fn read(
        &self,
        path: &str,
        file: &FsEntry,
        range: Range<u64>,
    ) -> impl Stream<Item = Result<bytes::Bytes, String>> + Send + 'static + use<> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let reader = self.clone();
        let path = path.to_string();
        let mut wanted = Vec::new();
        let mut start = 0u64;
        for chunk in &file.chunks {
            let end = start + chunk.len;
            if start < range.end && range.start < end {
                let from = range.start.max(start) - start;
                let to = range.end.min(end) - start;
                wanted.push((chunk.clone(), from..to));
            }
            start = end;
        }
        tokio::spawn(async move {
            for (chunk, part) in wanted {
                if let Err(e) = reader.read_chunk(&path, &chunk, part, &tx).await {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }

    /// Sends bytes `part` of `chunk` to `tx`, from its replicas in turn.
    async fn read_chunk(
        &self,
        path: &str,
        chunk: &Chunk,
        part: Range<u64>,
        tx: &mpsc::Sender<Result<bytes::Bytes, String>>,
    ) -> Result<(), String> {
        let whole = part.start == 0 && part.end == chunk.len;
        let mut at = part.start;
        let mut crc = 0u32;
        let mut errors = Vec::new();
        let mut replicas: Vec<&Replica> = chunk.replicas.iter().collect();
        replicas.sort_by_key(|r| Some(&r.addr) != self.local_addr.as_ref());
        for replica in replicas {
            // A replica that failed after its last byte leaves nothing to read.
            if at == part.end {
                break;
            }
            let local = Some(&replica.addr) == self.local_addr.as_ref();
            let counter = if local {
                &self.read.local
            } else {
                &self.read.remote
            };
            let read = async {
                let mut bytes = read_chunk(
                    &self.clients,
                    &replica.addr,
                    chunk.id,
                    at,
                    part.end - at,
                    &chunk.grant,
                )
                .await?;
                while let Some(piece) = bytes.next().await {
                    let mut piece = bytes::Bytes::from(piece?);
                    piece.truncate((part.end - at) as usize);
                    at += piece.len() as u64;
                    counter.fetch_add(piece.len() as u64, Ordering::Relaxed);
                    if whole {
                        crc = crc32c::crc32c_append(crc, &piece);
                    }
                    if tx.send(Ok(piece)).await.is_err() {
                        return Ok(());
                    }
                }
                Ok::<_, tonic::Status>(())
            };
            match read.await {
                Ok(()) if tx.is_closed() => return Ok(()),
                Ok(()) if at == part.end => break,
                // Cut short: the next replica goes on from there.
                Ok(()) => errors.push(format!("{}: it ended at byte {at}", replica.addr)),
                Err(e) => errors.push(format!("{}: {}", replica.addr, e.message())),
            }
        }
        if at != part.end {
            return Err(format!(
                "no replica of chunk {:016x} of drove://{path} could be read ({}); the file cannot be read until a worker that holds it returns",
                chunk.id,
                if errors.is_empty() {
                    "it has none".to_string()
                } else {
                    errors.join("; ")
                }
            ));
        }
        if whole && crc != chunk.crc32c {
            return Err(format!(
                "chunk {:016x} of drove://{path} came with CRC-32C {crc:08x}, not {:08x}; read it again",
                chunk.id, chunk.crc32c
            ));
        }
        Ok(())
    }
}

/// Chunk clients by worker address, each on a connection made once.
#[derive(Debug, Default)]
pub struct ChunkClients {
    peers: std::sync::Mutex<HashMap<String, ChunksClient<Channel>>>,
    tls: Option<Arc<ClusterTls>>,
}

impl ChunkClients {
    pub fn new(tls: Option<Arc<ClusterTls>>) -> Self {
        Self {
            peers: Default::default(),
            tls,
        }
    }

    /// The client for the worker at `addr` (HOST:PORT); connects lazily.
    pub fn client(&self, addr: &str) -> Result<ChunksClient<Channel>, String> {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = peers.get(addr) {
            return Ok(c.clone());
        }
        let channel = crate::net::endpoint(addr, self.tls.as_deref())?.connect_lazy();
        let client = ChunksClient::new(channel)
            .max_decoding_message_size(pb::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(pb::MAX_MESSAGE_BYTES);
        peers.insert(addr.to_string(), client.clone());
        Ok(client)
    }
}

/// Writes chunk `id` (all of `data`) to the worker at `addr`, with the coordinator's
/// `grant` for it (empty for a node, or without TLS): done once it is stored there,
/// synced.
pub async fn write_chunk(
    clients: &ChunkClients,
    addr: &str,
    id: u64,
    crc32c: u32,
    data: bytes::Bytes,
    grant: &[u8],
) -> Result<(), tonic::Status> {
    let grant = grant.to_vec();
    let mut client = clients
        .client(addr)
        .map_err(tonic::Status::invalid_argument)?;
    let len = data.len() as u64;
    let count = data.len().div_ceil(WRITE_PIECE_BYTES).max(1);
    let pieces = (0..count).map(move |i| {
        let from = i * WRITE_PIECE_BYTES;
        let to = (from + WRITE_PIECE_BYTES).min(data.len());
        let first = i == 0;
        pb::ChunkPiece {
            chunk_id: if first { id } else { 0 },
            len: if first { len } else { 0 },
            crc32c: if first { crc32c } else { 0 },
            data: data.slice(from..to).to_vec(),
            grant: if first { grant.clone() } else { Vec::new() },
        }
    });
    client.write_chunk(futures::stream::iter(pieces)).await?;
    Ok(())
}

/// Reads `length` bytes (0: to the end) of chunk `id` from `offset` on the worker at
/// `addr`, as the worker checked them, with the coordinator's `grant` for it (empty
/// for a node, or without TLS).
pub async fn read_chunk(
    clients: &ChunkClients,
    addr: &str,
    id: u64,
    offset: u64,
    length: u64,
    grant: &[u8],
) -> Result<impl Stream<Item = Result<Vec<u8>, tonic::Status>> + Send + 'static, tonic::Status> {
    let mut client = clients
        .client(addr)
        .map_err(tonic::Status::invalid_argument)?;
    let stream = client
        .read_chunk(pb::ReadChunkRequest {
            chunk_id: id,
            offset,
            length,
            grant: grant.to_vec(),
        })
        .await?
        .into_inner();
    Ok(stream.map(|piece| piece.map(|p| p.data)))
}

/// The CRC-32C of `data`, as chunks are checked with.
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}
