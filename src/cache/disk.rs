//! The disk tier (`edge.cache_disk`): every object the memory store keeps is also written here,
//! and read back when memory no longer holds it, after a restart too.
//!
//! Storage is foyer's block engine on files under `PATH/store` (its own eviction, admission,
//! 64-bit checksum of every entry verified on read, and recovery of its index at start). Of its
//! hybrid cache only the disk side is used: writes go straight to the disk queue and reads load
//! from disk, since the moka store in front is the memory tier.
//!
//! Layout: one entry per URL (`o` + primary key) holding every variant's head (status, headers,
//! freshness, the wall-clock time it was stored, variant key, tags) and, up to [`CHUNK`] bytes,
//! its body; a larger body is stored as chunks of [`CHUNK`] bytes, one entry each (`c` + body
//! id + index), so that no entry outgrows a block. A chunk that is missing or of the wrong
//! length makes the whole object a miss: never a body with a hole.
//!
//! Purges reach disk through a ban list (`PATH/bans.json`, written and synced before a purge
//! answers): rules with a time, checked against each entry's store time as it is read, as
//! Varnish does; entries older than [`MAX_AGE`] are misses, so rules older than that go.
//!
//! Failures never stop the edge: a disk tier that cannot open (unwritable path, no room to
//! reserve) is logged and counted and the edge runs memory-only; a read error is a miss. A
//! write the disk fails costs only the disk copy, and never lets an older version of the same
//! URL back (see [`Disk::put`]).

use std::collections::VecDeque;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foyer::{
    BlockEngineConfig, DeviceBuilder, FsDeviceBuilder, HybridCache, HybridCacheBuilder, Load,
    PsyncIoEngineConfig, RecoverMode,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use metrics::{Counter, Gauge};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::entry::Entry;
use super::policy::Freshness;
use super::store::Object;
use crate::config::DiskConfig;
use crate::share::{Clients, Share};

/// The field an entry keeps apart from its others ([`Entry::surrogate_control`]).
const SURROGATE_CONTROL: HeaderName = HeaderName::from_static("surrogate-control");

/// Bodies up to this size are kept in their head entry; larger ones in chunks of this size.
pub(crate) const CHUNK: usize = 1 << 20;
/// foyer's unit of space and eviction: must hold the largest entry (a head with a whole
/// [`CHUNK`] inline, and its headers).
const BLOCK: usize = 4 << 20;
/// A disk entry stored longer ago than this is a miss; ban rules older than it are dropped.
const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Ban rules kept at most; when more come, the oldest go and everything stored before them
/// becomes a miss.
const MAX_BANS: usize = 10_000;
/// Bytes of writes queued for the disk at most; past it foyer drops writes (a cache may).
const QUEUE: usize = 64 << 20;

const MAGIC: &[u8; 4] = b"MRD1";

/// The disk tier's counters.
struct DiskMetrics {
    hits: Counter,
    misses: Counter,
    writes: Counter,
    written_bytes: Counter,
    read_bytes: Counter,
    read_errors: Counter,
    /// Chunk reads that waited for room in `read_memory`.
    read_waits: Counter,
    /// Chunk reads that waited for their client's share of it.
    client_waits: Counter,
    write_errors: Counter,
    dropped: Counter,
    banned: Counter,
    /// Writes given up because the disk made no progress (see [`STALL`]).
    behind: Counter,
    capacity: Gauge,
}

impl DiskMetrics {
    fn new(node: &str) -> DiskMetrics {
        crate::telemetry::prometheus();
        let n = || metrics::Label::new("node", node.to_string());
        DiskMetrics {
            hits: metrics::counter!("meridian_cache_disk_hits_total", vec![n()]),
            misses: metrics::counter!("meridian_cache_disk_misses_total", vec![n()]),
            writes: metrics::counter!("meridian_cache_disk_writes_total", vec![n()]),
            written_bytes: metrics::counter!("meridian_cache_disk_written_bytes_total", vec![n()]),
            read_bytes: metrics::counter!("meridian_cache_disk_read_bytes_total", vec![n()]),
            read_errors: metrics::counter!("meridian_cache_disk_errors_total", "node" => node.to_string(), "op" => "read"),
            read_waits: metrics::counter!("meridian_cache_disk_read_waits_total", vec![n()]),
            client_waits: metrics::counter!("meridian_cache_disk_client_waits_total", vec![n()]),
            write_errors: metrics::counter!("meridian_cache_disk_errors_total", "node" => node.to_string(), "op" => "write"),
            dropped: metrics::counter!("meridian_cache_disk_dropped_total", vec![n()]),
            banned: metrics::counter!("meridian_cache_disk_purged_total", vec![n()]),
            behind: metrics::counter!("meridian_cache_disk_write_drops_total", "node" => node.to_string(), "reason" => "disk_stalled"),
            capacity: metrics::gauge!("meridian_cache_disk_capacity_bytes", vec![n()]),
        }
    }
}

/// Counts a disk tier that could not open (the edge then runs memory-only).
pub(crate) fn count_open_error(node: &str) {
    crate::telemetry::prometheus();
    metrics::counter!("meridian_cache_disk_errors_total", "node" => node.to_string(), "op" => "open")
        .increment(1);
}

/// What a purge rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Rule {
    Url(String),
    Prefix(String),
    Tag(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ban {
    /// Unix milliseconds of the purge: entries stored at or before it are purged.
    at_ms: u64,
    rule: Rule,
}

/// The persisted ban list.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Bans {
    /// Entries stored at or before this (unix ms) are misses: rules before it were dropped.
    floor_ms: u64,
    bans: VecDeque<Ban>,
}

impl Bans {
    /// Whether an entry of `key` with `tags`, stored at `stored_ms`, has been purged.
    fn covers(&self, key: &str, tags: &[Box<str>], stored_ms: u64) -> bool {
        stored_ms <= self.floor_ms
            || self.bans.iter().rev().any(|b| {
                stored_ms <= b.at_ms
                    && match &b.rule {
                        Rule::Url(u) => u == key,
                        Rule::Prefix(p) => key.starts_with(p.as_str()),
                        Rule::Tag(t) => tags.iter().any(|x| **x == **t),
                    }
            })
    }

    /// Drops rules older than [`MAX_AGE`] and beyond [`MAX_BANS`], raising the floor.
    fn trim(&mut self, now_ms: u64) {
        let oldest = now_ms.saturating_sub(MAX_AGE.as_millis() as u64);
        self.floor_ms = self.floor_ms.max(oldest);
        while let Some(b) = self.bans.front() {
            if b.at_ms > self.floor_ms && self.bans.len() <= MAX_BANS {
                break;
            }
            self.floor_ms = self.floor_ms.max(b.at_ms);
            self.bans.pop_front();
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The ban list in force and the file it is kept in.
struct BanFile {
    bans: Mutex<Bans>,
    path: PathBuf,
    /// Held while the file is rewritten: a list never lands over a later one.
    writing: Mutex<()>,
}

impl BanFile {
    /// Whether an entry of `key` with `tags`, stored at `stored_ms`, has been purged.
    fn covers(&self, key: &str, tags: &[Box<str>], stored_ms: u64) -> bool {
        // The lock is never held across a panic point.
        let bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
        bans.covers(key, tags, stored_ms)
    }

    /// Records a purge so that it holds for entries on disk, across restarts: written and
    /// synced before this returns. A cluster purge issued at `issued_ms` that is already
    /// recorded (the same rule at or after that time: one heard again after a restart) is not
    /// written again.
    fn ban(&self, rule: Rule, issued_ms: Option<u64>) -> std::io::Result<()> {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        let text = {
            let mut bans = self.bans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = issued_ms {
                if bans.bans.iter().any(|b| b.at_ms >= t && b.rule == rule) {
                    return Ok(());
                }
            }
            let now = unix_ms(SystemTime::now());
            bans.bans.push_back(Ban { at_ms: now, rule });
            bans.trim(now);
            serde_json::to_vec(&*bans).map_err(std::io::Error::other)?
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

/// Read access to the chunks of bodies on disk, for responses that stream them.
#[derive(Clone)]
pub(crate) struct Chunks {
    cache: HybridCache<String, Vec<u8>>,
    read_bytes: Counter,
    read_errors: Counter,
    dropped: Counter,
    /// Room for the chunks responses hold (`cache_disk.read_memory`), in KiB: a chunk read
    /// for a response takes its size from here until the last of its bytes is dropped (once
    /// written to the client). Without it, clients that never read could make the edge hold
    /// a chunk (or two) per stream: four HTTP/2 connections of 256 such streams on an object
    /// on disk took it from 35 MB to 2.1 GB.
    held: Arc<tokio::sync::Semaphore>,
    /// The chunks each client holds of that room: a quarter of it, at least two (a response
    /// holds the chunk it is writing and the next one). Without it, one client's streams that
    /// never read (an HTTP/2 connection's 64) held all of it until `send_timeout` let them go,
    /// and every other client's reads from disk waited meanwhile.
    clients: Arc<Clients>,
    /// Reads that waited for room.
    held_waits: Counter,
}

/// A chunk read for a response, and its room in [`Chunks::held`] (and in its client's share of
/// it) until it is dropped.
struct Held {
    bytes: Vec<u8>,
    _room: tokio::sync::OwnedSemaphorePermit,
    _share: Option<Share>,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Chunks {
    /// The entry stored under `key` (a head or a chunk), read from disk or the write queue.
    async fn entry(&self, key: &String) -> Option<Vec<u8>> {
        let indexed = self.cache.storage().may_contains(key);
        let value = match self.cache.storage().load(key).await {
            Ok(Load::Entry { value, .. }) => value,
            Ok(Load::Piece { piece, .. }) => piece.value().clone(),
            Ok(_) => {
                if indexed {
                    // The index held it but it could not be read back: a checksum mismatch
                    // (corrupted or torn), or reclaimed meanwhile.
                    self.dropped.increment(1);
                }
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "disk read failed");
                self.read_errors.increment(1);
                return None;
            }
        };
        self.read_bytes.increment(value.len() as u64);
        Some(value)
    }

    /// Chunk `i` of body `id`, if it is on disk and whole (`want` bytes).
    async fn load(&self, id: u64, i: usize, want: usize) -> Option<Vec<u8>> {
        let value = self.entry(&chunk_key(id, i)).await?;
        if value.len() != want {
            self.dropped.increment(1);
            return None;
        }
        Some(value)
    }

    fn has(&self, id: u64, i: usize) -> bool {
        self.cache.storage().may_contains(&chunk_key(id, i))
    }

    /// Chunk `i` of body `id` for a response to `client` (none: a peer's request, which counts
    /// against the room alone): its room taken first (waited for while the chunks that client
    /// holds fill its share, then while the chunks all responses hold fill `read_memory`), kept
    /// until its bytes are dropped.
    async fn load_held(
        self,
        id: u64,
        i: usize,
        want: usize,
        client: Option<IpAddr>,
    ) -> Option<Bytes> {
        let share = match client {
            Some(addr) => Some(self.clients.take(addr, None).await?),
            None => None,
        };
        let kib = u32::try_from(want.div_ceil(1024)).unwrap_or(u32::MAX);
        let room = match self.held.clone().try_acquire_many_owned(kib) {
            Ok(room) => room,
            Err(_) => {
                self.held_waits.increment(1);
                // Never closed.
                self.held.clone().acquire_many_owned(kib).await.ok()?
            }
        };
        let bytes = self.load(id, i, want).await?;
        Some(Bytes::from_owner(Held {
            bytes,
            _room: room,
            _share: share,
        }))
    }
}

/// A body that lives on disk in chunks: a response reads only the chunks it sends.
#[derive(Clone)]
pub(crate) struct DiskBody {
    chunks: Chunks,
    id: u64,
    /// The body's length.
    pub(crate) len: u64,
    /// Set when a reader found a chunk missing or corrupted: the entry must go.
    broken: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for DiskBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskBody")
            .field("id", &self.id)
            .field("len", &self.len)
            .finish()
    }
}

impl DiskBody {
    fn new(chunks: Chunks, id: u64, len: u64) -> DiskBody {
        DiskBody {
            chunks,
            id,
            len,
            broken: Arc::default(),
        }
    }

    /// A reader of bytes `from..to` of this body, for `client` (see [`DiskTail::client`]).
    pub(crate) fn reader(&self, from: u64, to: u64, client: Option<IpAddr>) -> DiskTail {
        DiskTail {
            body: self.clone(),
            pos: from,
            end: to.min(self.len),
            pending: None,
            client,
        }
    }

    /// Whether a chunk was found missing or corrupted since this entry was read.
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    fn chunk_len(&self, i: usize) -> usize {
        let start = (i * CHUNK) as u64;
        (self.len - start).min(CHUNK as u64) as usize
    }
}

/// A body being written to disk in chunks as it arrives from the origin, so that an object
/// larger than memory never has to be held whole.
pub(crate) struct Spool {
    body: DiskBody,
    /// The chunk being filled.
    buf: Vec<u8>,
    /// Index of the next chunk to write.
    next: usize,
    /// Bytes written since the writer was last waited for.
    since: usize,
    written: u64,
}

impl Spool {
    /// Bytes already handed to the disk (readable from it).
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// The body on disk, for readers behind what is kept in memory.
    pub(crate) fn body(&self) -> DiskBody {
        self.body.clone()
    }
}

/// Why a reader of a body on disk fails: a chunk went missing (evicted) or failed its checks
/// after the response began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a chunk of the body could not be read from disk")]
pub(crate) struct ChunkMissing;

type ChunkLoad = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Bytes>> + Send>>;

/// Yields bytes `pos..end` of a body on disk, one chunk read at a time.
pub(crate) struct DiskTail {
    body: DiskBody,
    pos: u64,
    end: u64,
    pending: Option<(usize, ChunkLoad)>,
    /// Whose share of the read room its chunks take; none for a peer's request, or until the
    /// handler says (`Body::held_for`).
    pub(crate) client: Option<IpAddr>,
}

impl std::fmt::Debug for DiskTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTail")
            .field("body", &self.body)
            .field("pos", &self.pos)
            .field("end", &self.end)
            .finish()
    }
}

impl DiskTail {
    /// Bytes left to yield.
    pub(crate) fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }

    pub(crate) fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, ChunkMissing>>> {
        use std::task::Poll;
        if self.pos >= self.end {
            return Poll::Ready(None);
        }
        let i = (self.pos / CHUNK as u64) as usize;
        if self.pending.is_none() {
            let chunks = self.body.chunks.clone();
            let (id, want) = (self.body.id, self.body.chunk_len(i));
            let load = chunks.load_held(id, i, want, self.client);
            self.pending = Some((i, Box::pin(load)));
        }
        let Some((_, load)) = self.pending.as_mut() else {
            return Poll::Ready(Some(Err(ChunkMissing)));
        };
        let Poll::Ready(loaded) = std::future::Future::poll(load.as_mut(), cx) else {
            return Poll::Pending;
        };
        self.pending = None;
        let Some(chunk) = loaded else {
            // Never a body with a hole: the response is aborted, and the entry goes.
            self.body.broken.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(ChunkMissing)));
        };
        let start = (i * CHUNK) as u64;
        let from = (self.pos - start) as usize;
        let to = ((self.end - start) as usize).min(chunk.len());
        let piece = chunk.slice(from..to);
        self.pos += piece.len() as u64;
        Poll::Ready(Some(Ok(piece)))
    }
}

/// The disk tier of one edge.
pub(crate) struct Disk {
    cache: HybridCache<String, Vec<u8>>,
    bans: Arc<BanFile>,
    metrics: DiskMetrics,
    /// Reads of entries, shared with the responses that stream bodies from disk.
    reads: Chunks,
    /// Room for object heads (and the bodies inline in them) queued but not yet flushed, in
    /// KiB (see [`Disk::put`]).
    unflushed: Arc<tokio::sync::Semaphore>,
    /// Flushes the heads' room has seen complete: progress, for the wait for room.
    flushes: Arc<std::sync::atomic::AtomicU64>,
    /// Time the store took to open and recover its index.
    pub(crate) recovery: Duration,
}

/// How many bytes of object heads may wait for foyer's flushers at once. foyer drops what
/// does not fit its write buffer (16 MiB per flusher) or arrives past its queue's threshold,
/// silently but for its metrics: a burst of 300 fills of 1 MiB lost about 270 of their disk
/// copies before heads were paced.
const UNFLUSHED_KIB: usize = (BLOCK * 2) >> 10;

/// A disk that makes no progress for this long (no flush completes) is stalled: a write
/// waiting on it is given up and counted (`reason="disk_stalled"`), so that the requests whose
/// fills store objects never hang on a disk that hangs.
const STALL: Duration = if cfg!(test) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(5)
};

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("bans_path", &self.bans.path)
            .finish_non_exhaustive()
    }
}

/// Reserves the store's files' space up front (`fallocate`), so a filling filesystem cannot
/// fail its writes later. A filesystem without `fallocate` keeps sparse files (and a warning).
fn reserve(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let len = entry.metadata()?.len();
        if !entry.file_type()?.is_file() || len == 0 {
            continue;
        }
        let file = std::fs::OpenOptions::new().write(true).open(entry.path())?;
        // SAFETY: a valid open descriptor; mode 0 allocates without changing the file's size.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                tracing::warn!(path = %dir.display(), "the filesystem cannot reserve space (no fallocate): the disk tier's files stay sparse");
                return Ok(());
            }
            return Err(e);
        }
    }
    Ok(())
}

impl Disk {
    /// Opens (or creates) the disk tier and recovers what it held.
    pub(crate) async fn open(node: &str, cfg: &DiskConfig) -> Result<Disk, String> {
        let started = std::time::Instant::now();
        let store_dir = cfg.path.join("store");
        std::fs::create_dir_all(&store_dir)
            .map_err(|e| format!("cannot create {}: {e}", store_dir.display()))?;
        let bans_path = cfg.path.join("bans.json");
        let mut bans = match std::fs::read(&bans_path) {
            Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
                // A ban list that cannot be read could hide a purge: treat everything stored
                // so far as purged rather than serve it.
                tracing::warn!(path = %bans_path.display(), error = %e, "unreadable ban list: everything on disk counts as purged");
                Bans {
                    floor_ms: unix_ms(SystemTime::now()),
                    bans: VecDeque::new(),
                }
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Bans::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", bans_path.display())),
        };
        bans.trim(unix_ms(SystemTime::now()));
        let capacity = usize::try_from(cfg.size).unwrap_or(usize::MAX);
        let device = FsDeviceBuilder::new(&store_dir)
            .with_capacity(capacity)
            .build()
            .map_err(|e| format!("cannot open the store in {}: {e}", store_dir.display()))?;
        // No tombstone log (with the psync engine its flush panics in foyer 0.22.6): a removal
        // is written as a newer entry for the key that says "nothing here" (see `remove`),
        // which recovery keeps over the older one, and purges are bans.
        let engine = BlockEngineConfig::new(device)
            .with_block_size(BLOCK)
            .with_submit_queue_size_threshold(QUEUE);
        let cache: HybridCache<String, Vec<u8>> = HybridCacheBuilder::new()
            .with_name("meridian")
            .with_metrics_registry(Box::new(super::disk_metrics::FoyerRegistry::new(
                node, BLOCK,
            )))
            .memory(CHUNK * 2)
            .storage()
            .with_io_engine_config(PsyncIoEngineConfig::new())
            .with_engine_config(engine)
            .with_recover_mode(RecoverMode::Quiet)
            .build()
            .await
            .map_err(|e| format!("cannot open the store in {}: {e}", store_dir.display()))?;
        reserve(&store_dir).map_err(|e| {
            format!(
                "cannot reserve {} bytes in {}: {e}",
                cfg.size,
                store_dir.display()
            )
        })?;
        let metrics = DiskMetrics::new(node);
        metrics.capacity.set(cfg.size as f64);
        let recovery = started.elapsed();
        metrics::gauge!("meridian_cache_disk_recovery_seconds", "node" => node.to_string())
            .set(recovery.as_secs_f64());
        let held_kib = usize::try_from(cfg.read_memory >> 10)
            .unwrap_or(usize::MAX)
            .clamp(CHUNK >> 10, tokio::sync::Semaphore::MAX_PERMITS);
        let reads = Chunks {
            cache: cache.clone(),
            read_bytes: metrics.read_bytes.clone(),
            read_errors: metrics.read_errors.clone(),
            dropped: metrics.dropped.clone(),
            held: Arc::new(tokio::sync::Semaphore::new(held_kib)),
            clients: Clients::new(
                (held_kib / (CHUNK >> 10) / 4).max(2),
                metrics.client_waits.clone(),
            ),
            held_waits: metrics.read_waits.clone(),
        };
        Ok(Disk {
            cache,
            bans: Arc::new(BanFile {
                bans: Mutex::new(bans),
                path: bans_path,
                writing: Mutex::new(()),
            }),
            metrics,
            reads,
            unflushed: Arc::new(tokio::sync::Semaphore::new(UNFLUSHED_KIB)),
            flushes: Arc::default(),
            recovery,
        })
    }

    /// Writes every variant of `object` (stored under `key`). foyer drops what overflows its
    /// write buffer, so writes are paced: a chunked body waits for the writer every [`BLOCK`]
    /// bytes, and a head (with the bodies inline in it) takes room among the heads waiting to
    /// be flushed ([`UNFLUSHED_KIB`]), given back by a task of its own once a flush has taken
    /// it. The caller waits only while the disk is behind, and never past [`STALL`] without
    /// progress: then the write is given up and counted.
    pub(crate) async fn put(&self, key: &str, object: &Object) {
        let now = Instant::now();
        let now_wall = SystemTime::now();
        let mut head = Vec::new();
        head.extend_from_slice(MAGIC);
        put_u16(&mut head, object.variants().len() as u16);
        let mut chunked = Vec::new();
        for e in object.variants() {
            let stored = now_wall - now.saturating_duration_since(e.stored_at);
            encode_variant(&mut head, e, unix_ms(stored));
            if let Some(d) = &e.on_disk {
                // Its chunks are on disk already.
                put_u64(&mut head, d.len);
                head.push(1);
                put_u64(&mut head, d.id);
                continue;
            }
            let len = e.body.len();
            put_u64(&mut head, len as u64);
            if len <= CHUNK {
                head.push(0);
                head.extend_from_slice(&e.body);
            } else {
                let id = body_id();
                head.push(1);
                put_u64(&mut head, id);
                chunked.push((id, e.body.clone()));
            }
        }
        // Chunks first: a head is never readable before the chunks it names were written.
        let mut since = 0;
        for (id, body) in &chunked {
            for (i, c) in body.chunks(CHUNK).enumerate() {
                self.write(chunk_key(*id, i), c.to_vec());
                since += c.len();
                if since >= BLOCK {
                    if !self.flushed(key).await {
                        return;
                    }
                    since = 0;
                }
            }
        }
        if !chunked.is_empty() {
            // Every chunk must have reached the disk (foyer drops a write that overflows its
            // buffer or fails, and only logs it): otherwise the head is not written at all.
            if !self.flushed(key).await {
                return;
            }
            let chunks = self.chunks_handle();
            let whole = chunked
                .iter()
                .all(|(id, body)| (0..body.len().div_ceil(CHUNK)).all(|i| chunks.has(*id, i)));
            if !whole {
                tracing::warn!(
                    key,
                    "a chunked body did not reach the disk whole; not stored there"
                );
                self.metrics.write_errors.increment(1);
                return;
            }
        }
        let kib = u32::try_from(head.len().div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(UNFLUSHED_KIB as u32);
        let mut seen = self.flushes.load(Ordering::Relaxed);
        let room = loop {
            match tokio::time::timeout(STALL, self.unflushed.clone().acquire_many_owned(kib)).await
            {
                Ok(Ok(room)) => break room,
                // Never closed.
                Ok(Err(_)) => return,
                Err(_) => {
                    let now = self.flushes.load(Ordering::Relaxed);
                    if now == seen {
                        self.stalled(key);
                        return;
                    }
                    seen = now;
                }
            }
        };
        let k = object_key(key);
        // foyer only logs a write the disk failed (a full or failing disk). A head whose key
        // the disk did not hold before must be in its index once the flush is done, or it is
        // counted. A key held before keeps its older entry in the index when the write fails,
        // and that entry must not come back (as a hit once memory lets go of the newer one, or
        // after a restart): the head is read back once flushed, and if it is not this one, the
        // older entry is dropped from the index and banned.
        let new = !self.cache.storage().may_contains(&k);
        let replaced = (!new).then(|| fingerprint(&head));
        self.write(k.clone(), head);
        let (cache, flushes) = (self.cache.clone(), self.flushes.clone());
        let (reads, bans) = (self.reads.clone(), self.bans.clone());
        let errors = self.metrics.write_errors.clone();
        tokio::spawn(async move {
            cache.storage().wait().await;
            flushes.fetch_add(1, Ordering::Relaxed);
            drop(room);
            let reached = match replaced {
                None => cache.storage().may_contains(&k),
                Some(sum) => reads
                    .entry(&k)
                    .await
                    .is_some_and(|b| fingerprint(&b) == sum),
            };
            if reached {
                return;
            }
            // Debug, not warn: a failing disk fails every object stored, and foyer logs each
            // failed flush itself; the counter says how many.
            tracing::debug!(key = %&k[1..], "an object did not reach the disk; it stays in memory");
            errors.increment(1);
            if replaced.is_some() {
                cache.storage().delete(&k);
                let url = k[1..].to_string();
                let banned =
                    tokio::task::spawn_blocking(move || bans.ban(Rule::Url(url), None)).await;
                if let Ok(Err(e)) = banned {
                    tracing::warn!(key = %&k[1..], error = %e, "an older version on disk could not be banned; it may be served after a restart");
                }
            }
        });
    }

    /// Waits for what was queued to be written; false (counted) if the disk stalled.
    async fn flushed(&self, key: &str) -> bool {
        if tokio::time::timeout(STALL, self.cache.storage().wait())
            .await
            .is_ok()
        {
            return true;
        }
        self.stalled(key);
        false
    }

    fn stalled(&self, key: &str) {
        tracing::warn!(key, stall = ?STALL, "the disk made no progress; a write was given up (the object stays in memory)");
        self.metrics.behind.increment(1);
    }

    fn write(&self, key: String, value: Vec<u8>) {
        let n = value.len() as u64;
        if self.cache.storage_writer(key).insert(value).is_some() {
            self.metrics.writes.increment(1);
            self.metrics.written_bytes.increment(n);
        }
    }

    async fn load(&self, key: &String) -> Option<Vec<u8>> {
        self.reads.entry(key).await
    }

    fn chunks_handle(&self) -> Chunks {
        self.reads.clone()
    }

    /// The object stored under `key`, if the disk has it whole and unpurged. A body stored in
    /// chunks stays on disk (the entry refers to it); every chunk must be there.
    pub(crate) async fn get(&self, key: &str) -> Option<Object> {
        let k = object_key(key);
        let Some(head) = self.load(&k).await else {
            self.metrics.misses.increment(1);
            return None;
        };
        let now = Instant::now();
        let now_wall = SystemTime::now();
        let Some(variants) = decode(&Bytes::from(head)) else {
            tracing::warn!(key, "unreadable disk entry dropped");
            self.metrics.dropped.increment(1);
            self.remove(key);
            self.metrics.misses.increment(1);
            return None;
        };
        let mut out = Vec::new();
        let mut purged = false;
        for v in variants {
            if self.bans.covers(key, &v.entry.tags, v.stored_ms) {
                purged = true;
                continue;
            }
            let mut entry = match v.body {
                Stored::Inline(b) => v.entry.with_body(b),
                Stored::Chunks { id, len } => {
                    let n = len.div_ceil(CHUNK as u64) as usize;
                    let chunks = self.chunks_handle();
                    if !(0..n).all(|i| chunks.has(id, i)) {
                        // A chunk was evicted: the object is a miss, never served with a hole.
                        continue;
                    }
                    let mut e = v.entry;
                    e.on_disk = Some(Box::new(DiskBody::new(chunks, id, len)));
                    e
                }
            };
            let since = Duration::from_millis(unix_ms(now_wall).saturating_sub(v.stored_ms));
            entry.stored_at = now.checked_sub(since).unwrap_or(now);
            out.push(Arc::new(entry));
        }
        if purged {
            self.metrics.banned.increment(1);
        }
        if out.is_empty() {
            if purged {
                self.remove(key);
            }
            self.metrics.misses.increment(1);
            return None;
        }
        self.metrics.hits.increment(1);
        Some(Object::new(out))
    }

    /// Starts writing a body of `len` bytes (`u64::MAX` when not yet known) to disk in chunks
    /// as it arrives (see [`Spool`]).
    pub(crate) fn spool(&self, len: u64) -> Spool {
        Spool {
            body: DiskBody::new(self.chunks_handle(), body_id(), len),
            buf: Vec::with_capacity(CHUNK),
            next: 0,
            since: 0,
            written: 0,
        }
    }

    /// Appends `data` to a spooled body, writing each chunk as it completes (paced).
    pub(crate) async fn spool_push(&self, spool: &mut Spool, mut data: &[u8]) {
        while !data.is_empty() {
            let take = (CHUNK - spool.buf.len()).min(data.len());
            spool.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if spool.buf.len() == CHUNK {
                self.spool_chunk(spool).await;
            }
        }
    }

    async fn spool_chunk(&self, spool: &mut Spool) {
        let chunk = std::mem::replace(&mut spool.buf, Vec::with_capacity(CHUNK));
        let n = chunk.len();
        self.write(chunk_key(spool.body.id, spool.next), chunk);
        spool.next += 1;
        spool.written += n as u64;
        spool.since += n;
        if spool.since >= BLOCK {
            self.cache.storage().wait().await;
            spool.since = 0;
        }
    }

    /// Ends a spooled body of `len` bytes: the last chunk written, every chunk checked on disk.
    /// `None` (and a write error counted) if the body did not reach the disk whole.
    pub(crate) async fn spool_finish(&self, mut spool: Spool, len: u64) -> Option<DiskBody> {
        if !spool.buf.is_empty() {
            self.spool_chunk(&mut spool).await;
        }
        self.cache.storage().wait().await;
        let mut body = spool.body;
        body.len = len;
        body.broken = Arc::default();
        let whole = spool.written == len && (0..spool.next).all(|i| body.chunks.has(body.id, i));
        if !whole {
            tracing::warn!("a body spooled to disk did not reach it whole; not stored");
            self.metrics.write_errors.increment(1);
            return None;
        }
        Some(body)
    }

    /// Removes `key` from disk: writes an empty head over it, which stays removed across a
    /// restart (a plain delete would not: recovery would find the old entry). Its chunks go
    /// with eviction.
    pub(crate) fn remove(&self, key: &str) {
        let mut head = Vec::with_capacity(6);
        head.extend_from_slice(MAGIC);
        put_u16(&mut head, 0);
        self.write(object_key(key), head);
    }

    pub(crate) fn ban_url(&self, key: &str, issued_ms: Option<u64>) -> std::io::Result<()> {
        self.remove(key);
        self.bans.ban(Rule::Url(key.to_string()), issued_ms)
    }

    pub(crate) fn ban_prefix(&self, prefix: &str, issued_ms: Option<u64>) -> std::io::Result<()> {
        self.bans.ban(Rule::Prefix(prefix.to_string()), issued_ms)
    }

    pub(crate) fn ban_tag(&self, tag: &str, issued_ms: Option<u64>) -> std::io::Result<()> {
        self.bans.ban(Rule::Tag(tag.to_string()), issued_ms)
    }

    /// Writes what is queued and closes the store (a clean stop).
    pub(crate) async fn close(&self) {
        if let Err(e) = self.cache.close().await {
            tracing::warn!(error = %e, "closing the disk tier failed");
        }
    }
}

/// A head's fingerprint, to tell whether the disk holds this head or an older one.
fn fingerprint(head: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(head);
    h.finish()
}

fn object_key(key: &str) -> String {
    format!("o{key}")
}

fn chunk_key(id: u64, i: usize) -> String {
    format!("c{id:016x}.{i}")
}

/// A fresh id for a chunked body (its chunks' keys never collide with another body's).
fn body_id() -> u64 {
    let mut b = [0u8; 8];
    // cannot fail in practice (the system's random source); a clock-based id is unique enough.
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        return unix_ms(SystemTime::now()) ^ u64::from(std::process::id()) << 40;
    }
    u64::from_le_bytes(b)
}

fn put_u16(b: &mut Vec<u8>, v: u16) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}
fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}
fn put_opt(b: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => b.push(0),
        Some(v) => {
            b.push(1);
            put_bytes(b, v);
        }
    }
}

/// Appends one variant's head (everything but the body).
fn encode_variant(b: &mut Vec<u8>, e: &Entry, stored_ms: u64) {
    put_u16(b, e.status.as_u16());
    put_u64(b, stored_ms);
    let f = e.freshness();
    for d in [
        f.lifetime,
        f.initial_age,
        f.stale_while_revalidate,
        f.stale_if_error,
    ] {
        put_u64(b, d.as_millis() as u64);
    }
    b.push(u8::from(f.revalidate_strict) | u8::from(f.no_stale) << 1 | u8::from(f.no_cache) << 2);
    b.push(match e.target_https {
        None => 0,
        Some(false) => 1,
        Some(true) => 2,
    });
    put_opt(b, e.target_host.as_deref().map(str::as_bytes));
    // `Surrogate-Control`, kept apart from the fields in memory, goes with them on disk (a
    // name no stored field has), and apart again when read back.
    let surrogate = e.surrogate_control.as_deref();
    put_u32(
        b,
        (e.headers.len() + usize::from(surrogate.is_some())) as u32,
    );
    for (n, v) in e.headers.iter() {
        put_bytes(b, n.as_str().as_bytes());
        put_bytes(b, v.as_bytes());
    }
    if let Some(v) = surrogate {
        put_bytes(b, SURROGATE_CONTROL.as_str().as_bytes());
        put_bytes(b, v.as_bytes());
    }
    put_u32(b, e.vary.len() as u32);
    for (n, v) in e.vary.iter().zip(&e.vary_values) {
        put_bytes(b, n.as_str().as_bytes());
        put_opt(b, v.as_deref().map(str::as_bytes));
    }
    put_u32(b, e.tags.len() as u32);
    for t in &e.tags {
        put_bytes(b, t.as_bytes());
    }
}

enum Stored {
    Inline(Bytes),
    Chunks { id: u64, len: u64 },
}

struct Decoded {
    /// The variant, with an empty body and `stored_at` still to set.
    entry: Entry,
    stored_ms: u64,
    body: Stored,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Some(h)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
    fn opt_string(&mut self) -> Option<Option<String>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.string()?)),
            _ => None,
        }
    }
}

/// Reads a head entry; `None` if it is not one this version wrote whole. An inline body is a
/// slice of `buf`, not a copy.
fn decode(buf: &Bytes) -> Option<Vec<Decoded>> {
    let mut r = Reader { b: buf };
    if r.take(4)? != MAGIC {
        return None;
    }
    let n = r.u16()?;
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let status = StatusCode::from_u16(r.u16()?).ok()?;
        let stored_ms = r.u64()?;
        let mut ms = || r.u64().map(Duration::from_millis);
        let (lifetime, initial_age, swr, sie) = (ms()?, ms()?, ms()?, ms()?);
        let flags = r.u8()?;
        let target_https = match r.u8()? {
            0 => None,
            1 => Some(false),
            2 => Some(true),
            _ => return None,
        };
        let target_host = r.opt_string()?.map(Arc::from);
        let mut headers = HeaderMap::new();
        for _ in 0..r.u32()? {
            let name = HeaderName::from_bytes(r.bytes()?).ok()?;
            let value = HeaderValue::from_bytes(r.bytes()?).ok()?;
            headers.append(name, value);
        }
        let surrogate_control = headers.remove(SURROGATE_CONTROL).map(Box::new);
        let mut vary = Vec::new();
        let mut vary_values = Vec::new();
        for _ in 0..r.u32()? {
            vary.push(HeaderName::from_bytes(r.bytes()?).ok()?);
            vary_values.push(r.opt_string()?.map(String::into_boxed_str));
        }
        let mut tags = Vec::new();
        for _ in 0..r.u32()? {
            tags.push(r.string()?.into_boxed_str());
        }
        let len = r.u64()?;
        let body = match r.u8()? {
            0 => {
                let at = buf.len() - r.b.len();
                r.take(usize::try_from(len).ok()?)?;
                Stored::Inline(buf.slice(at..buf.len() - r.b.len()))
            }
            1 => Stored::Chunks { id: r.u64()?, len },
            _ => return None,
        };
        out.push(Decoded {
            entry: Entry {
                status,
                headers: super::entry::Fields::new(&headers),
                body: Bytes::new(),
                fresh: Freshness {
                    lifetime,
                    initial_age,
                    stale_while_revalidate: swr,
                    stale_if_error: sie,
                    revalidate_strict: flags & 1 != 0,
                    no_stale: flags & 2 != 0,
                    no_cache: flags & 4 != 0,
                }
                .into(),
                stored_at: Instant::now(),
                vary: vary.into(),
                vary_values: vary_values.into(),
                tags: tags.into(),
                target_host,
                target_https,
                surrogate_control,
                on_disk: None,
                residence: None,
            },
            stored_ms,
            body,
        });
    }
    r.b.is_empty().then_some(out)
}

/// For the `disk_head` fuzz target: any bytes read back as a head either fail to decode or
/// decode to variants that encode and decode to the same again.
pub(crate) fn check_decode(data: &[u8]) {
    let Some(first) = decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut again = Vec::new();
    again.extend_from_slice(MAGIC);
    put_u16(&mut again, first.len() as u16);
    for v in &first {
        encode_variant(&mut again, &v.entry, v.stored_ms);
        match &v.body {
            Stored::Inline(b) => {
                put_u64(&mut again, b.len() as u64);
                again.push(0);
                again.extend_from_slice(b);
            }
            Stored::Chunks { id, len } => {
                put_u64(&mut again, *len);
                again.push(1);
                put_u64(&mut again, *id);
            }
        }
    }
    let second = decode(&Bytes::from(again)).expect("a re-encoded head decodes");
    assert_eq!(first.len(), second.len());
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.stored_ms, b.stored_ms);
        assert_eq!(a.entry.status, b.entry.status);
        assert_eq!(a.entry.headers, b.entry.headers);
        assert_eq!(a.entry.freshness(), b.entry.freshness());
        assert_eq!(a.entry.vary, b.entry.vary);
        assert_eq!(a.entry.vary_values, b.entry.vary_values);
        assert_eq!(a.entry.tags, b.entry.tags);
        assert_eq!(a.entry.surrogate_control, b.entry.surrogate_control);
        assert_eq!(a.entry.target(), b.entry.target());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A burst of objects stored at once all reach the disk: heads are paced, not dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_stored_objects_all_reaches_the_disk() {
        let (_dir, disk) = open_for_test("disk-burst-test", 512 << 20).await;
        let disk = Arc::new(disk);
        const N: usize = 200;
        let object = Arc::new(Object::new(vec![Arc::new(Entry::for_test(
            Bytes::from(vec![b'x'; CHUNK - 4096]),
            Duration::from_secs(60),
        ))]));
        let mut puts = tokio::task::JoinSet::new();
        for i in 0..N {
            let (disk, object) = (disk.clone(), object.clone());
            puts.spawn(async move { disk.put(&format!("burst/{i}"), &object).await });
        }
        while puts.join_next().await.is_some() {}
        disk.cache.storage().wait().await;
        let mut missing = 0;
        for i in 0..N {
            if disk.get(&format!("burst/{i}")).await.is_none() {
                missing += 1;
            }
        }
        assert_eq!(missing, 0, "of {N} objects stored at once");
    }

    /// A disk that makes no progress never holds a store for longer than [`STALL`]: with the
    /// heads' room all taken and no flush completing, a write is given up and counted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_to_a_stalled_disk_is_given_up_in_time_and_counted() {
        let node = "disk-stall-test";
        let (_dir, disk) = open_for_test(node, 64 << 20).await;
        // What heads queued behind a hung flush would hold.
        let _held = disk
            .unflushed
            .clone()
            .acquire_many_owned(UNFLUSHED_KIB as u32)
            .await
            .unwrap();
        let object = Object::new(vec![Arc::new(Entry::for_test(
            Bytes::from_static(b"hello"),
            Duration::from_secs(60),
        ))]);
        let t = Instant::now();
        tokio::time::timeout(STALL * 3, disk.put("stalled", &object))
            .await
            .expect("a store waited on a stalled disk past its bound");
        assert!(t.elapsed() >= STALL, "it waited for progress first");
        assert!(disk.get("stalled").await.is_none());
        assert_eq!(write_drops(node, "disk_stalled"), 1.0);
    }

    /// A disk tier of `size` bytes in a fresh folder (kept while the folder lives).
    async fn open_for_test(node: &str, size: u64) -> (tempfile::TempDir, Disk) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = DiskConfig {
            path: dir.path().to_path_buf(),
            size,
            read_memory: crate::config::DEFAULT_DISK_READ_MEMORY,
        };
        let disk = Disk::open(node, &cfg).await.unwrap();
        (dir, disk)
    }

    /// `meridian_cache_disk_write_drops_total` of `node` whose reason contains `reason`.
    fn write_drops(node: &str, reason: &str) -> f64 {
        crate::telemetry::prometheus()
            .render()
            .lines()
            .filter(|l| {
                l.starts_with("meridian_cache_disk_write_drops_total")
                    && l.contains(&format!("node=\"{node}\""))
                    && l.contains(&format!("reason=\"{reason}"))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Writes foyer drops (its queue or write buffer full) are counted: a burst of 1 MiB
    /// entries far past the 64 MiB queue leaves some unwritten, and the count says how many.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_foyer_drops_are_counted() {
        let node = "disk-drops-test";
        let (_dir, disk) = open_for_test(node, 512 << 20).await;
        const N: usize = 300;
        for i in 0..N {
            disk.write(format!("burst/{i}"), vec![i as u8; CHUNK - 64]);
        }
        disk.cache.storage().wait().await;
        let mut missing = 0;
        for i in 0..N {
            if disk.load(&format!("burst/{i}")).await.is_none() {
                missing += 1;
            }
        }
        let dropped = write_drops(node, "");
        assert!(missing > 0, "the burst did not overflow foyer's queue");
        assert_eq!(dropped as usize, missing);
    }

    #[test]
    fn the_fuzz_seeds_decode() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/disk_head");
        for name in ["inline", "chunked", "two-variants", "removed"] {
            let data = std::fs::read(dir.join(name)).unwrap();
            assert!(decode(&Bytes::from(data)).is_some(), "{name}");
        }
    }

    #[test]
    fn bans_cover_what_was_stored_before_them() {
        let mut b = Bans::default();
        b.bans.push_back(Ban {
            at_ms: 1000,
            rule: Rule::Prefix("site/a".into()),
        });
        b.bans.push_back(Ban {
            at_ms: 2000,
            rule: Rule::Tag("t".into()),
        });
        assert!(b.covers("site/a/x", &[], 999));
        assert!(!b.covers("site/a/x", &[], 1001), "stored after the purge");
        assert!(!b.covers("site/b", &[], 500));
        assert!(b.covers("site/b", &["t".into()], 1500));
        b.trim(MAX_AGE.as_millis() as u64 + 1500);
        assert_eq!(b.bans.len(), 1, "the rule older than MAX_AGE went");
        assert!(b.covers("site/zzz", &[], 1400), "and raised the floor");
    }

    #[test]
    fn a_head_round_trips_and_a_torn_one_does_not_decode() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append(
            "x-b",
            HeaderValue::from_bytes(b"\xff\x01").unwrap_or(HeaderValue::from_static("b")),
        );
        let e = Entry {
            status: StatusCode::OK,
            headers: super::super::entry::Fields::new(&headers),
            body: Bytes::from_static(b"hello"),
            fresh: Freshness {
                lifetime: Duration::from_secs(60),
                initial_age: Duration::from_secs(2),
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::from_secs(5),
                revalidate_strict: true,
                no_stale: false,
                no_cache: true,
            }
            .into(),
            stored_at: Instant::now(),
            vary: Box::new([HeaderName::from_static("accept-encoding")]),
            vary_values: Box::new([Some("gzip".into())]),
            tags: Box::new(["a".into(), "b".into()]),
            target_host: Some("x.test".into()),
            target_https: Some(true),
            surrogate_control: Some(Box::new(HeaderValue::from_static("max-age=600"))),
            on_disk: None,
            residence: None,
        };
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        put_u16(&mut b, 1);
        encode_variant(&mut b, &e, 1234);
        put_u64(&mut b, 5);
        b.push(0);
        b.extend_from_slice(b"hello");
        let b = Bytes::from(b);
        let d = decode(&b).expect("decodes");
        assert_eq!(d.len(), 1);
        let v = &d[0];
        assert_eq!(v.stored_ms, 1234);
        assert_eq!(v.entry.headers, e.headers);
        assert_eq!(v.entry.freshness(), e.freshness());
        assert_eq!(v.entry.vary_values, e.vary_values);
        assert_eq!(v.entry.tags, e.tags);
        // Kept apart from the fields again, as in memory (clients never get it).
        assert_eq!(v.entry.surrogate_control, e.surrogate_control);
        assert_eq!(v.entry.target(), e.target());
        assert!(matches!(&v.body, Stored::Inline(x) if x == "hello"));
        for cut in 0..b.len() {
            assert!(
                decode(&b.slice(..cut)).is_none(),
                "a head cut at {cut} must not decode"
            );
        }
    }
}
