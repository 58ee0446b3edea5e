//! Reading and writing `drove fs` chunks on workers over gRPC (the `Chunks` service on
//! a worker's Flight port): what clients and workers that copy chunks share.

use std::collections::HashMap;
use std::sync::Arc;

use drove_proto as pb;
use drove_proto::chunks_client::ChunksClient;
use futures::{Stream, StreamExt};
use tonic::transport::Channel;

use crate::tls::ClusterTls;

/// The bytes each message of a chunk write carries.
pub const WRITE_PIECE_BYTES: usize = 1 << 20;

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
