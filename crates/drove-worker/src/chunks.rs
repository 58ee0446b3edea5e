//! The worker's replicas of `drove fs` chunks, in `--data-dir/chunks`, and the gRPC
//! service that writes and reads them.
//!
//! A chunk is one file, `<id>.chunk`: its bytes, then the CRC-32C of every 64 KiB
//! piece, then a trailer (a magic, the length, the whole chunk's CRC-32C and the
//! trailer's own). A write goes to a temporary file that is synced and renamed into
//! place only once every byte came and the checksum matched, so a chunk file is whole
//! or absent. Every read checks the pieces it reads; a corrupt replica is removed and
//! reported, and the reader goes to another.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use drove_exec::token::Granted;
use drove_proto as pb;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

/// The bytes each stored checksum covers.
pub const PIECE_BYTES: u64 = 64 << 10;
/// The bytes a read sends per message.
const SEND_BYTES: u64 = 1 << 20;
/// Messages of a read waiting for the network, at most.
const READ_AHEAD: usize = 4;
/// Chunk reads a worker serves at once, at most (each holds a blocking thread while
/// its reader reads); one more is refused, and its reader goes to another replica.
pub const READS_MAX: usize = 64;
/// A write whose next piece does not come for this long is given up, and what it
/// had written and reserved is freed.
const WRITE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
const MAGIC: &[u8; 8] = b"DROVECK1";
const TRAILER_BYTES: u64 = 24;

fn file_name(id: u64) -> String {
    format!("{id:016x}.chunk")
}

fn crc_bytes(len: u64) -> u64 {
    len.div_ceil(PIECE_BYTES) * 4
}

/// What changed since the coordinator last heard, for the next heartbeat.
#[derive(Debug, Default)]
pub struct ChunkReport {
    pub added: Vec<u64>,
    pub removed: Vec<u64>,
    pub corrupt: u64,
    /// Copies asked for that failed.
    pub copies_failed: Vec<u64>,
}

/// The chunks a worker keeps.
#[derive(Debug)]
pub struct ChunkStore {
    dir: PathBuf,
    /// Chunk lengths by id: the chunks stored whole.
    chunks: std::sync::Mutex<HashMap<u64, u64>>,
    /// Bytes stored plus those being written; at most `capacity`.
    used: AtomicU64,
    capacity: u64,
    report: std::sync::Mutex<ChunkReport>,
}

impl ChunkStore {
    /// Opens `dir` (made if missing): the chunks there count again, and what an
    /// interrupted write left is removed. At most `capacity` bytes are stored.
    pub fn open(dir: &Path, capacity: u64) -> Result<Self, String> {
        let fail = |what: &str, e: std::io::Error| {
            format!(
                "cannot {what} {}: {e}; pass --data-dir a directory this user can write",
                dir.display()
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| fail("create", e))?;
        let mut chunks = HashMap::new();
        let mut used = 0;
        for entry in std::fs::read_dir(dir).map_err(|e| fail("read", e))? {
            let entry = entry.map_err(|e| fail("read", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.ends_with(".tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(id) = name
                .strip_suffix(".chunk")
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
            else {
                continue;
            };
            match File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|f| trailer(&f))
            {
                Ok((len, _)) => {
                    used += len;
                    chunks.insert(id, len);
                }
                Err(why) => {
                    tracing::warn!(chunk = id, "removing a damaged chunk file: {why}");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            chunks: std::sync::Mutex::new(chunks),
            used: AtomicU64::new(used),
            capacity,
            report: Default::default(),
        })
    }

    fn chunks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self) -> std::sync::MutexGuard<'_, ChunkReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes stored (and reserved by writes under way), and the most that may be.
    pub fn usage(&self) -> (u64, u64) {
        (self.used.load(Ordering::Relaxed), self.capacity)
    }

    /// Every chunk stored, for registration.
    pub fn ids(&self) -> Vec<u64> {
        self.chunks().keys().copied().collect()
    }

    /// A stored chunk's length (0 if it is not stored).
    pub fn chunk_len(&self, id: u64) -> u64 {
        self.chunks().get(&id).copied().unwrap_or(0)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.chunks().contains_key(&id)
    }

    /// The path of a stored chunk's file (tests corrupt it).
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(file_name(id))
    }

    /// A copy this worker was asked for failed.
    pub fn copy_failed(&self, id: u64) {
        self.report().copies_failed.push(id);
    }

    /// What changed since the last call.
    pub fn take_report(&self) -> ChunkReport {
        std::mem::take(&mut *self.report())
    }

    /// Starts writing chunk `id` of `len` bytes whose CRC-32C is `crc`.
    pub fn writer(self: &Arc<Self>, id: u64, len: u64, crc: u32) -> Result<ChunkWriter, Status> {
        if len > drove_core::fs::CHUNK_MAX_BYTES {
            return Err(Status::invalid_argument(format!(
                "a chunk holds at most {} bytes, not {len}",
                drove_core::fs::CHUNK_MAX_BYTES
            )));
        }
        let need = len + crc_bytes(len) + TRAILER_BYTES;
        let reserved = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + need <= self.capacity).then_some(u + need)
            });
        if reserved.is_err() {
            return Err(Status::resource_exhausted(format!(
                "this worker's --data-max of {} is full",
                drove_core::human_bytes(self.capacity)
            )));
        }
        let tmp = self.dir.join(format!(
            "{id:016x}.{:016x}.tmp",
            drove_core::ids::random_id()
        ));
        let file = File::create(&tmp).map_err(|e| {
            self.used.fetch_sub(need, Ordering::Relaxed);
            Status::unavailable(format!("cannot create {}: {e}", tmp.display()))
        })?;
        Ok(ChunkWriter {
            store: Arc::clone(self),
            id,
            len,
            crc,
            need,
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            written: 0,
            whole: 0,
            piece: 0,
            piece_fill: 0,
            pieces: Vec::with_capacity(crc_bytes(len) as usize),
        })
    }

    /// Reads `length` bytes (0: to the end) of chunk `id` from `offset`, checking every
    /// piece it reads, and hands them to `out` up to 1 MiB at a time, until it returns
    /// false. A corrupt replica is removed, and the reader gets `DATA_LOSS`.
    fn read_into(
        &self,
        id: u64,
        offset: u64,
        length: u64,
        mut out: impl FnMut(Vec<u8>) -> bool,
    ) -> Result<(), Status> {
        let Some(len) = self.chunks().get(&id).copied() else {
            return Err(Status::not_found(format!(
                "this worker holds no chunk {id:016x}"
            )));
        };
        let end = if length == 0 {
            len
        } else {
            offset.saturating_add(length).min(len)
        };
        if offset > len {
            return Err(Status::out_of_range(format!(
                "chunk {id:016x} has {len} bytes; a read cannot start at {offset}"
            )));
        }
        let path = self.path(id);
        let file = match File::open(&path) {
            Ok(f) => f,
            // Gone from under the store: the replica is lost, like a corrupt one.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.corrupt(id, "its file is gone"));
            }
            Err(e) => {
                return Err(Status::unavailable(format!(
                    "cannot open {}: {e}",
                    path.display()
                )));
            }
        };
        let mut at = offset - offset % PIECE_BYTES;
        while at < end {
            let upto = (at + SEND_BYTES).min(len);
            let mut data = vec![0; (upto - at) as usize];
            let mut sums = vec![0; crc_bytes(upto - at) as usize];
            let read = file
                .read_exact_at(&mut data, at)
                .and_then(|()| file.read_exact_at(&mut sums, len + at / PIECE_BYTES * 4));
            if let Err(e) = read {
                return Err(self.corrupt(id, &format!("cannot read it: {e}")));
            }
            for (i, piece) in data.chunks(PIECE_BYTES as usize).enumerate() {
                let want = u32::from_le_bytes(sums[i * 4..i * 4 + 4].try_into().expect("4"));
                if crc32c::crc32c(piece) != want {
                    let start = at + i as u64 * PIECE_BYTES;
                    return Err(self.corrupt(id, &format!("bytes {start}.. fail their checksum")));
                }
            }
            let from = offset.max(at) - at;
            let to = end.min(upto) - at;
            data.truncate(to as usize);
            data.drain(..from as usize);
            if !out(data) {
                return Ok(());
            }
            at = upto;
        }
        Ok(())
    }

    /// Removes a corrupt replica and reports it.
    fn corrupt(&self, id: u64, why: &str) -> Status {
        // Counted once, however many readers found it.
        if self.remove(id) {
            tracing::warn!(
                chunk = format!("{id:016x}"),
                "corrupt replica removed: {why}"
            );
            self.report().corrupt += 1;
        }
        Status::data_loss(format!(
            "this worker's replica of chunk {id:016x} was corrupt ({why}); read another"
        ))
    }

    /// Removes a chunk (the coordinator freed it, or the replica is corrupt); false if
    /// it was not stored.
    pub fn remove(&self, id: u64) -> bool {
        let Some(len) = self.chunks().remove(&id) else {
            return false;
        };
        let _ = std::fs::remove_file(self.path(id));
        self.used
            .fetch_sub(len + crc_bytes(len) + TRAILER_BYTES, Ordering::Relaxed);
        self.report().removed.push(id);
        true
    }

    /// Checks one whole chunk (the scrubber): the bytes it read if it was whole, `None`
    /// if it was corrupt (and is now removed) or gone.
    pub fn scrub(&self, id: u64) -> Option<u64> {
        let mut bytes = 0;
        let result = self.read_into(id, 0, 0, |data| {
            bytes += data.len() as u64;
            true
        });
        result.ok().map(|()| bytes)
    }
}

/// Reads and checks a chunk file's trailer: its length and CRC-32C.
fn trailer(file: &File) -> Result<(u64, u32), String> {
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size < TRAILER_BYTES {
        return Err(format!("{size} bytes is too short for a chunk"));
    }
    let mut t = [0u8; TRAILER_BYTES as usize];
    let mut f = file;
    f.seek(SeekFrom::Start(size - TRAILER_BYTES))
        .and_then(|_| f.read_exact(&mut t))
        .map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(t[8..16].try_into().expect("8"));
    let crc = u32::from_le_bytes(t[16..20].try_into().expect("4"));
    let own = u32::from_le_bytes(t[20..24].try_into().expect("4"));
    if &t[..8] != MAGIC || crc32c::crc32c(&t[..20]) != own {
        return Err("its trailer is damaged".into());
    }
    if len + crc_bytes(len) + TRAILER_BYTES != size {
        return Err(format!(
            "its trailer says {len} bytes, which a {size}-byte file cannot hold"
        ));
    }
    Ok((len, crc))
}

/// A chunk being written; dropped unfinished, it leaves nothing behind.
#[derive(Debug)]
pub struct ChunkWriter {
    store: Arc<ChunkStore>,
    id: u64,
    len: u64,
    crc: u32,
    need: u64,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<File>>,
    written: u64,
    whole: u32,
    piece: u32,
    piece_fill: u64,
    pieces: Vec<u8>,
}

impl ChunkWriter {
    pub fn write(&mut self, mut data: &[u8]) -> Result<(), Status> {
        if self.written + data.len() as u64 > self.len {
            return Err(Status::invalid_argument(format!(
                "chunk {:016x} was announced with {} bytes, and more came",
                self.id, self.len
            )));
        }
        let file = self.file.as_mut().expect("open until finished");
        file.write_all(data).map_err(|e| {
            Status::unavailable(format!("cannot write {}: {e}", self.tmp.display()))
        })?;
        self.written += data.len() as u64;
        self.whole = crc32c::crc32c_append(self.whole, data);
        while !data.is_empty() {
            let take = ((PIECE_BYTES - self.piece_fill) as usize).min(data.len());
            self.piece = crc32c::crc32c_append(self.piece, &data[..take]);
            self.piece_fill += take as u64;
            data = &data[take..];
            if self.piece_fill == PIECE_BYTES {
                self.end_piece();
            }
        }
        Ok(())
    }

    fn end_piece(&mut self) {
        self.pieces.extend_from_slice(&self.piece.to_le_bytes());
        self.piece = 0;
        self.piece_fill = 0;
    }

    /// Checks the length and checksum, then stores the chunk durably.
    pub fn finish(mut self) -> Result<(), Status> {
        if self.written != self.len || self.whole != self.crc {
            return Err(Status::data_loss(format!(
                "chunk {:016x} came with {} of {} bytes and CRC-32C {:08x}, not {:08x}; send it again",
                self.id, self.written, self.len, self.whole, self.crc
            )));
        }
        if self.piece_fill > 0 {
            self.end_piece();
        }
        let mut t = Vec::with_capacity(TRAILER_BYTES as usize);
        t.extend_from_slice(MAGIC);
        t.extend_from_slice(&self.len.to_le_bytes());
        t.extend_from_slice(&self.crc.to_le_bytes());
        let own = crc32c::crc32c(&t);
        t.extend_from_slice(&own.to_le_bytes());
        let mut file = self.file.take().expect("open until finished");
        let path = self.store.path(self.id);
        let io = |e: std::io::Error| Status::unavailable(format!("cannot store chunk: {e}"));
        file.write_all(&self.pieces).map_err(io)?;
        file.write_all(&t).map_err(io)?;
        let file = file.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&self.tmp, &path).map_err(io)?;
        if let Err(e) = File::open(&self.store.dir).and_then(|d| d.sync_all()) {
            // Not durable, so not stored: the file goes, as the reservation does
            // (unless it replaced a copy the store holds already).
            if !self.store.contains(self.id) {
                let _ = std::fs::remove_file(&path);
            }
            return Err(io(e));
        }
        let before = self.store.chunks().insert(self.id, self.len);
        if before.is_some() {
            // The same chunk again (a retried write): one copy counts.
            self.store.used.fetch_sub(self.need, Ordering::Relaxed);
        } else {
            self.store.report().added.push(self.id);
        }
        self.need = 0;
        Ok(())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if self.need > 0 {
            self.file = None;
            let _ = std::fs::remove_file(&self.tmp);
            self.store.used.fetch_sub(self.need, Ordering::Relaxed);
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The gRPC service over a [`ChunkStore`]; with TLS, a client reaches a chunk only with
/// a grant for it that `ticket_key` checks.
pub fn server(
    store: Arc<ChunkStore>,
    ticket_key: crate::flight::TicketKey,
) -> pb::chunks_server::ChunksServer<ChunkService> {
    pb::chunks_server::ChunksServer::new(ChunkService {
        store,
        ticket_key,
        reads: Arc::new(tokio::sync::Semaphore::new(READS_MAX)),
    })
    .max_decoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
    .max_encoding_message_size(drove_proto::MAX_MESSAGE_BYTES)
}

pub struct ChunkService {
    store: Arc<ChunkStore>,
    ticket_key: crate::flight::TicketKey,
    reads: Arc<tokio::sync::Semaphore>,
}

/// Stores a chunk from a stream of pieces, the first of which names it.
pub async fn store_stream(
    store: &Arc<ChunkStore>,
    mut pieces: impl Stream<Item = Result<pb::ChunkPiece, Status>> + Unpin,
) -> Result<u64, Status> {
    let Some(first) = pieces.next().await.transpose()? else {
        return Err(Status::invalid_argument("a chunk write sent nothing"));
    };
    let id = first.chunk_id;
    let mut writer = store.writer(id, first.len, first.crc32c)?;
    let mut data = first.data;
    let idle = || {
        Status::deadline_exceeded(format!(
            "a write of chunk {id:016x} sent nothing for {WRITE_IDLE:?}; it was given up"
        ))
    };
    loop {
        let (w, result) = tokio::task::spawn_blocking(move || {
            let r = writer.write(&data);
            (writer, r)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        writer = w;
        result?;
        let next = tokio::time::timeout(WRITE_IDLE, pieces.next());
        match next.await.map_err(|_| idle())?.transpose()? {
            Some(piece) => data = piece.data,
            None => break,
        }
    }
    tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
    Ok(id)
}

/// Streams a stored chunk's bytes, checked, from a blocking reader.
pub fn read_stream(
    store: &Arc<ChunkStore>,
    request: pb::ReadChunkRequest,
) -> impl Stream<Item = Result<pb::ChunkPiece, Status>> + Send + 'static {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || {
        let send = |data| {
            let piece = pb::ChunkPiece {
                data,
                ..Default::default()
            };
            tx.blocking_send(Ok(piece)).is_ok()
        };
        if let Err(status) = store.read_into(request.chunk_id, request.offset, request.length, send)
        {
            let _ = tx.blocking_send(Err(status));
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl pb::chunks_server::Chunks for ChunkService {
    type ReadChunkStream = BoxStream<pb::ChunkPiece>;

    async fn write_chunk(
        &self,
        mut request: Request<Streaming<pb::ChunkPiece>>,
    ) -> Result<Response<pb::ChunkWritten>, Status> {
        // The first piece names the chunk and carries the grant, checked against the
        // request's certificate before anything is stored.
        let Some(first) = request.get_mut().message().await? else {
            return Err(Status::invalid_argument("a chunk write sent nothing"));
        };
        let what = Granted::ChunkWrite(first.chunk_id);
        crate::flight::check_grant(&request, &self.ticket_key, what, &first.grant)?;
        // Clients write new chunks only (workers copy chunks without this service): a
        // stored one is changed by nobody.
        if self.store.contains(first.chunk_id) {
            return Err(Status::already_exists(format!(
                "this worker holds chunk {:016x} already; write a new chunk",
                first.chunk_id
            )));
        }
        let pieces = futures::stream::iter([Ok(first)]).chain(request.into_inner());
        store_stream(&self.store, pieces).await?;
        Ok(Response::new(pb::ChunkWritten {}))
    }

    async fn read_chunk(
        &self,
        request: Request<pb::ReadChunkRequest>,
    ) -> Result<Response<Self::ReadChunkStream>, Status> {
        let r = request.get_ref();
        crate::flight::check_grant(
            &request,
            &self.ticket_key,
            Granted::ChunkRead(r.chunk_id),
            &r.grant,
        )?;
        let Ok(permit) = Arc::clone(&self.reads).try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "this worker serves {READS_MAX} chunk reads at once; read another replica, or again later"
            )));
        };
        let stream = read_stream(&self.store, request.into_inner());
        // The permit goes with the stream, and is given back when it ends.
        Ok(Response::new(Box::pin(stream.map(move |piece| {
            let _held = &permit;
            piece
        }))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(store: &Arc<ChunkStore>, id: u64, data: &[u8]) -> Result<(), Status> {
        let mut w = store.writer(id, data.len() as u64, crc32c::crc32c(data))?;
        for part in data.chunks(7777) {
            w.write(part)?;
        }
        w.finish()
    }

    fn read(store: &Arc<ChunkStore>, id: u64, offset: u64, length: u64) -> Result<Vec<u8>, Status> {
        let mut out = Vec::new();
        store.read_into(id, offset, length, |data| {
            out.extend(data);
            true
        })?;
        Ok(out)
    }

    #[test]
    fn chunks_are_whole_or_absent_and_reads_check_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ChunkStore::open(dir.path(), 10 << 20).unwrap());
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write(&store, 1, &data).unwrap();
        assert_eq!(read(&store, 1, 0, 0).unwrap(), data);
        assert_eq!(
            read(&store, 1, 70_000, 2_000_000).unwrap(),
            &data[70_000..2_070_000]
        );
        assert_eq!(read(&store, 1, 2_999_990, 100).unwrap(), &data[2_999_990..]);
        // A wrong checksum or length stores nothing.
        let mut w = store.writer(2, 3, 0).unwrap();
        w.write(b"abc").unwrap();
        assert_eq!(w.finish().unwrap_err().code(), tonic::Code::DataLoss);
        let w = store.writer(3, 3, crc32c::crc32c(b"abc")).unwrap();
        drop(w);
        assert!(!store.contains(2) && !store.contains(3));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary files"
        );
        // The capacity bounds what is stored.
        let err = store.writer(4, 8 << 20, 0).unwrap_err();
        assert!(err.message().contains("--data-max"), "{err}");
        // Reopened, the chunk counts again.
        let again = Arc::new(ChunkStore::open(dir.path(), 10 << 20).unwrap());
        assert_eq!(again.ids(), vec![1]);
        assert_eq!(store.take_report().added, vec![1]);
        // A flipped byte is found by the read that covers it, and the replica goes.
        let path = again.path(1);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1_500_000] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(
            read(&again, 1, 0, 1000).unwrap(),
            &data[..1000],
            "untouched piece"
        );
        let err = read(&again, 1, 1_400_000, 200_000).unwrap_err();
        assert_eq!(err.code(), tonic::Code::DataLoss);
        assert!(!again.contains(1) && !path.exists());
        let report = again.take_report();
        assert_eq!((report.removed, report.corrupt), (vec![1], 1));
    }

    #[test]
    fn a_damaged_file_is_dropped_when_the_store_opens() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ChunkStore::open(dir.path(), 1 << 20).unwrap());
        write(&store, 9, b"hello").unwrap();
        write(&store, 10, b"world").unwrap();
        assert!(store.scrub(9).is_some());
        let path = store.path(9);
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        std::fs::write(dir.path().join("000000000000000b.1.tmp"), b"partial").unwrap();
        let again = ChunkStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(again.ids(), vec![10]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
