//! The chunk cache: fixed-size chunks of objects, in memory and on disk, in front of a store.
//!
//! A chunk is identified by (source, key, ETag, index), where the source names the endpoint,
//! bucket and chunk size, so a changed object (new ETag) never
//! hits chunks of its old version, and every fetch is pinned to the ETag with `If-Match`, so the
//! bytes of one object version are never mixed with another's.
//!
//! Lookup order: memory tier (moka, weighted by bytes, capped by the memory budget), then the
//! chunk already being fetched by someone else (one request per missing chunk, however many
//! readers want it), then the disk tier, then the store. A fetch may cover a run of consecutive
//! chunks in one ranged GET (read-ahead does this); each chunk is handed out as soon as its bytes
//! have arrived.

mod disk;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use common::metrics::{metrics, TierLabels};
use common::{ETag, ErrorKind, ObjectStore, StoreError, StoreResult};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::TryStreamExt;
use tokio::sync::oneshot;

use crate::write_budget::WriteBudget;
pub use disk::DiskCache;

/// Where bytes `offset..end` of an object lie in its chunks of `chunk_size` bytes.
#[derive(Debug, Clone, Copy)]
struct ReadSpan {
    offset: u64,
    end: u64,
    chunk_size: u64,
}

impl ReadSpan {
    /// The `len` bytes at `offset` of an object of `size` bytes (fewer at its end); `None`
    /// when that is nothing.
    fn new(offset: u64, len: u64, size: u64, chunk_size: u64) -> Option<Self> {
        let end = offset.saturating_add(len).min(size);
        (offset < end).then_some(Self {
            offset,
            end,
            chunk_size,
        })
    }

    /// The indexes of the chunks the span touches.
    fn chunks(&self) -> std::ops::RangeInclusive<u64> {
        self.offset / self.chunk_size..=(self.end - 1) / self.chunk_size
    }

    /// The one chunk the span lies in, if it lies in one.
    fn single_chunk(&self) -> Option<u64> {
        let chunks = self.chunks();
        (chunks.start() == chunks.end()).then_some(*chunks.start())
    }

    /// The span's bytes within chunk `index` of `len` bytes, as a range of the chunk.
    fn within(&self, index: u64, len: usize) -> Range<usize> {
        let start = index * self.chunk_size;
        let from = (self.offset.saturating_sub(start) as usize).min(len);
        let to = ((self.end - start) as usize).min(len);
        from..to
    }

    /// The span's bytes out of `chunks`, the chunks it touches in order.
    fn assemble(&self, chunks: &[Bytes]) -> Bytes {
        let mut out = BytesMut::with_capacity((self.end - self.offset) as usize);
        for (index, chunk) in self.chunks().zip(chunks) {
            out.extend_from_slice(&chunk[self.within(index, chunk.len())]);
        }
        out.freeze()
    }
}

/// Identifies one chunk of one object version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    /// Endpoint, bucket and chunk size ([`ChunkCache`] builds it).
    source: Arc<str>,
    key: Arc<str>,
    etag: Arc<str>,
    index: u64,
}

impl ChunkKey {
    pub fn new(source: &str, key: &str, etag: &ETag, index: u64) -> Self {
        Self {
            source: source.into(),
            key: key.into(),
            etag: etag.as_str().into(),
            index,
        }
    }
}

/// One version of one object, as a reader holds it (from HEAD or a listing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub key: String,
    pub etag: ETag,
    pub size: u64,
}

/// Settings of the chunk cache.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Size of a chunk; reads and cache entries are aligned to it.
    pub chunk_size: u64,
    /// The memory budget (`--memory-limit`), of which the memory tier holds up to half (see
    /// [`memory_tier_bytes`](Self::memory_tier_bytes)); read-ahead in flight and upload
    /// buffers have their own shares.
    pub memory_bytes: u64,
    /// Folder of the disk tier; `None` disables it. A cache over shared tiers with `None`
    /// keeps nothing on their disk tier, only in their memory tier.
    pub disk_dir: Option<PathBuf>,
    /// Hard cap of the disk tier.
    pub disk_bytes: u64,
    /// Names the endpoint the objects come from (its URL), so tiers shared by volumes on
    /// different endpoints never mix objects that happen to share bucket, key and ETag.
    pub endpoint_id: String,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            memory_bytes: 256 << 20,
            disk_dir: None,
            disk_bytes: 10 << 30,
            endpoint_id: String::new(),
        }
    }
}

impl CacheConfig {
    /// The part of the memory budget the memory tier may fill: half. The rest is kept for data
    /// on its way in (read-ahead fetches in flight, a quarter of the budget for all readers
    /// together), on its way out ([`write_buffer_bytes`](Self::write_buffer_bytes), an eighth)
    /// and the HTTP client's and allocator's overhead (an eighth), so the whole stays within
    /// the budget (a tier of 3/4 was measured 4 MiB over a 256 MiB budget).
    pub fn memory_tier_bytes(&self) -> u64 {
        self.memory_bytes / 2
    }

    /// The part of the memory budget for upload part buffers, all files being written
    /// together: an eighth (a [`WriteBudget`](crate::write_budget::WriteBudget) of this size).
    pub fn write_buffer_bytes(&self) -> u64 {
        self.memory_bytes / 8
    }

    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(4096);
        self
    }

    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
        self
    }

    pub fn endpoint_id(mut self, id: impl Into<String>) -> Self {
        self.endpoint_id = id.into();
        self
    }

    pub fn disk(mut self, dir: Option<PathBuf>, max_bytes: u64) -> Self {
        self.disk_dir = dir;
        self.disk_bytes = max_bytes;
        self
    }
}

/// Counters of the cache's work, for metrics and tests.
#[derive(Debug, Default)]
pub struct CacheStats {
    pub memory_hits: AtomicU64,
    pub disk_hits: AtomicU64,
    /// Chunks that another reader was already fetching.
    pub joined_fetches: AtomicU64,
    /// Chunks fetched from the store.
    pub fetched_chunks: AtomicU64,
    /// Ranged GET requests sent.
    pub requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
}

type ChunkFuture = Shared<BoxFuture<'static, StoreResult<Bytes>>>;
type InflightMap = Arc<Mutex<HashMap<ChunkKey, ChunkFuture>>>;

/// Where a fetched chunk goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    MemoryAndDisk,
    /// A first sequential read of a big object (see [`ChunkCache::keeps_on_disk_when_streamed`]).
    MemoryOnly,
    /// For later (a neighbourhood of a random read): memory holds what is read now.
    DiskOnly,
}

/// Sequential reads of objects bigger than this fill the disk tier only from their second
/// read on ([`ChunkCache::keeps_on_disk_when_streamed`]).
pub const SCAN_RESISTANT_ABOVE: u64 = 64 << 20;
/// Object versions remembered as read sequentially once, by all caches sharing the tiers.
const STREAMED_REMEMBERED: u64 = 10_000;

/// Disk writes queued at most; beyond that a chunk is not written to disk (it is only a cache,
/// and an unbounded queue would hold chunk buffers outside the memory budget).
const MAX_PENDING_DISK_WRITES: usize = 16;
/// Background fetches into the disk tier at once ([`ChunkCache::prefetch_to_disk`]); more are
/// not started (they would only queue, holding memory).
const MAX_DISK_PREFETCHES: usize = 4;

/// Stops a [`ChunkCache::fill_to_disk`], and tells whether it has ended.
#[derive(Debug, Default)]
pub struct FillControl {
    stop: AtomicBool,
    ended: AtomicBool,
}

impl FillControl {
    /// Fetch no further block (those in flight finish).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// True once the fill sends no further request: done, stopped, or failed.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::Relaxed)
    }
}

/// The duty to answer the readers waiting for one chunk. Dropped unanswered (the fetching task
/// was cancelled or panicked), it answers with an error and clears the in-flight entry, so no
/// chunk stays "being fetched" forever.
struct Ticket {
    key: ChunkKey,
    tx: Option<oneshot::Sender<StoreResult<Bytes>>>,
    inflight: InflightMap,
}

impl Ticket {
    fn index(&self) -> u64 {
        self.key.index
    }

    fn answer(mut self, result: StoreResult<Bytes>) {
        // Remove first: a reader arriving now must find the chunk in memory or fetch anew.
        self.inflight.lock().unwrap().remove(&self.key);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(result);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.inflight.lock().unwrap().remove(&self.key);
            let _ = tx.send(Err(StoreError::new(
                ErrorKind::Other,
                "the chunk fetch was cancelled",
            )));
        }
    }
}

/// Where cached chunks are kept: the memory tier and the disk tier. One `CacheTiers` can back
/// the chunk caches of several volumes (the plugin's), so that all of them together stay within
/// one memory budget and one disk cap. Chunk keys name the bucket, key and ETag, so volumes
/// sharing tiers never read each other's chunks by mistake.
pub struct CacheTiers {
    memory: moka::sync::Cache<ChunkKey, Bytes>,
    disk: Option<DiskCache>,
    disk_writes: Arc<tokio::sync::Semaphore>,
    disk_prefetches: Arc<tokio::sync::Semaphore>,
    /// Big object versions read sequentially once: (source, key, ETag). Kept with the tiers,
    /// not a volume's cache, so that a volume mounted again (Docker unmounts a volume when its
    /// last container stops) still knows what it read.
    streamed: moka::sync::Cache<(Arc<str>, String, String), ()>,
    /// Sequential readers with a read-ahead window, over every cache sharing these tiers: they
    /// share the read-ahead part of the memory budget.
    sequential_readers: AtomicUsize,
    /// The memory budget's share for upload buffers, kept here so that every volume sharing
    /// the tiers shares it too.
    write_budget: WriteBudget,
}

impl fmt::Debug for CacheTiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheTiers")
            .field("memory_bytes_used", &self.memory.weighted_size())
            .field("disk", &self.disk)
            .finish_non_exhaustive()
    }
}

impl CacheTiers {
    /// Tiers sized by `config`'s memory budget and disk folder and cap (its chunk size is
    /// per cache, not per tier).
    pub fn new(config: &CacheConfig) -> std::io::Result<Self> {
        let disk = match &config.disk_dir {
            Some(dir) if config.disk_bytes > 0 => Some(DiskCache::open(dir, config.disk_bytes)?),
            Some(dir) => {
                // A cap of 0 turns the disk tier off (rather than writing chunks only to drop
                // them), and frees the space chunks of an earlier cap took.
                DiskCache::remove(dir)?;
                None
            }
            None => None,
        };
        let memory = moka::sync::Cache::builder()
            .max_capacity(config.memory_tier_bytes())
            .weigher(|_k: &ChunkKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            // LRU, not TinyLFU: read-ahead inserts chunks just before they are read, and
            // TinyLFU's admission filter would refuse those one-time entries once full.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Ok(Self {
            memory,
            disk,
            disk_writes: Arc::new(tokio::sync::Semaphore::new(MAX_PENDING_DISK_WRITES)),
            disk_prefetches: Arc::new(tokio::sync::Semaphore::new(MAX_DISK_PREFETCHES)),
            streamed: moka::sync::Cache::new(STREAMED_REMEMBERED),
            sequential_readers: AtomicUsize::new(0),
            write_budget: WriteBudget::new(config.write_buffer_bytes()),
        })
    }

    /// Bytes of chunks held in memory now.
    pub fn memory_used(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.weighted_size()
    }

    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// The memory for upload buffers of every volume sharing these tiers.
    pub fn write_budget(&self) -> &WriteBudget {
        &self.write_budget
    }

    /// Put the tiers' sizes into the process metrics (before they are read).
    pub fn publish_metrics(&self) {
        metrics().set_cache_bytes("memory", self.memory_used());
        metrics().set_cache_bytes("disk", self.disk.as_ref().map_or(0, DiskCache::used_bytes));
    }
}

/// The chunk cache over a store `S`. Share it with `Arc`.
pub struct ChunkCache<S> {
    store: Arc<S>,
    config: CacheConfig,
    /// The first part of this cache's chunk keys: endpoint, bucket, chunk size.
    source: Arc<str>,
    tiers: Arc<CacheTiers>,
    inflight: InflightMap,
    stats: CacheStats,
}

impl<S> fmt::Debug for ChunkCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCache")
            .field("config", &self.config)
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

impl<S> ChunkCache<S> {
    /// Readers reading sequentially with a read-ahead window, over every cache sharing these
    /// tiers (see [`crate::readahead`]).
    pub fn sequential_readers(&self) -> &AtomicUsize {
        &self.tiers.sequential_readers
    }
}

impl<S: ObjectStore> ChunkCache<S> {
    /// A cache with tiers of its own, sized by `config`.
    pub fn new(store: Arc<S>, config: CacheConfig) -> std::io::Result<Self> {
        let tiers = Arc::new(CacheTiers::new(&config)?);
        Ok(Self::with_tiers(store, config, tiers))
    }

    /// A cache keeping its chunks in `tiers`, which other caches may share (with other
    /// stores, endpoints or chunk sizes: all of them are part of the chunk keys).
    pub fn with_tiers(store: Arc<S>, config: CacheConfig, tiers: Arc<CacheTiers>) -> Self {
        let source = format!(
            "{}\u{0}{}\u{0}{}",
            config.endpoint_id,
            store.bucket(),
            config.chunk_size
        );
        Self {
            source: source.into(),
            store,
            config,
            tiers,
            inflight: Arc::new(Mutex::new(HashMap::new())),
            stats: CacheStats::default(),
        }
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    /// The disk tier this cache keeps chunks in: the tiers', unless its config has no disk
    /// folder (a volume with `cache=off` shares the memory tier of the others, not their disk).
    pub fn disk(&self) -> Option<&DiskCache> {
        self.tiers.disk().filter(|_| self.config.disk_dir.is_some())
    }

    /// The tiers this cache keeps its chunks in, to share with other caches.
    pub fn tiers(&self) -> &Arc<CacheTiers> {
        &self.tiers
    }

    /// Bytes of chunks held in memory now (by every cache sharing these tiers).
    pub fn memory_used(&self) -> u64 {
        self.tiers.memory_used()
    }

    /// Put the sizes of this cache's tiers into the process metrics.
    pub fn publish_metrics(&self) {
        self.tiers.publish_metrics();
    }

    /// Number of chunks of an object of `size` bytes.
    pub fn chunk_count(&self, size: u64) -> u64 {
        size.div_ceil(self.config.chunk_size)
    }

    fn key_of(&self, object: &ObjectVersion, index: u64) -> ChunkKey {
        ChunkKey::new(&self.source, &object.key, &object.etag, index)
    }

    fn chunk_range(&self, object: &ObjectVersion, index: u64) -> Range<u64> {
        let start = index
            .saturating_mul(self.config.chunk_size)
            .min(object.size);
        start
            ..start
                .saturating_add(self.config.chunk_size)
                .min(object.size)
    }

    /// Read `len` bytes at `offset` of `object` (fewer at the end of the object).
    pub async fn read(
        self: &Arc<Self>,
        object: &ObjectVersion,
        offset: u64,
        len: u64,
    ) -> StoreResult<Bytes> {
        let Some(span) = ReadSpan::new(offset, len, object.size, self.config.chunk_size) else {
            return Ok(Bytes::new());
        };
        if object.etag.as_str().trim_matches('"').is_empty() {
            // Without an ETag, versions cannot be told apart: caching could mix them.
            return self
                .store
                .get_range(&object.key, offset..span.end, None)
                .await;
        }
        let chunks = span.chunks();
        if let Some(index) = span.single_chunk() {
            if let Some(data) = self.part_from_disk(object, index, &span).await {
                return Ok(data);
            }
            let chunk = self.chunk(object, index).await?;
            return Ok(chunk.slice(span.within(index, chunk.len())));
        }
        // A read spanning chunks: fetch the missing ones in one request, then assemble.
        self.prefetch(
            object,
            *chunks.start()..chunks.end() + 1,
            Tier::MemoryAndDisk,
        );
        let mut got = Vec::with_capacity(chunks.clone().count());
        for index in chunks {
            got.push(self.chunk(object, index).await?);
        }
        Ok(span.assemble(&got))
    }

    /// The bytes of [`read`](Self::read), if a tier has them all and they need no waiting:
    /// chunks in the memory tier, or part of one chunk that only the disk tier has (read here,
    /// on the caller's thread, which may block on the disk). `None` otherwise, and nothing
    /// counted: the caller then reads with `read`.
    pub fn read_now(&self, object: &ObjectVersion, offset: u64, len: u64) -> Option<Bytes> {
        let span = ReadSpan::new(offset, len, object.size, self.config.chunk_size)?;
        if object.etag.as_str().trim_matches('"').is_empty() {
            return None;
        }
        let in_memory = |index: u64| {
            let range = self.chunk_range(object, index);
            self.tiers
                .memory
                .get(&self.key_of(object, index))
                .filter(|data| data.len() as u64 >= range.end - range.start)
        };
        let got: Option<Vec<Bytes>> = span.chunks().map(in_memory).collect();
        if let Some(got) = got {
            self.stats
                .memory_hits
                .fetch_add(got.len() as u64, Ordering::Relaxed);
            metrics()
                .cache_hits
                .get_or_create(&TierLabels { tier: "memory" })
                .inc_by(got.len() as u64);
            return Some(match span.single_chunk() {
                Some(index) => got[0].slice(span.within(index, got[0].len())),
                None => span.assemble(&got),
            });
        }
        let index = span.single_chunk()?;
        let (key, chunk_len, part) = self.disk_part(object, index, &span)?;
        let data = self.disk()?.get_part(&key, chunk_len, part)?;
        self.count_disk_hit();
        Some(data)
    }

    /// [`disk_part`](Self::disk_part), read off the runtime's workers.
    async fn part_from_disk(
        &self,
        object: &ObjectVersion,
        index: u64,
        span: &ReadSpan,
    ) -> Option<Bytes> {
        let (key, chunk_len, part) = self.disk_part(object, index, span)?;
        let disk = self.disk()?.clone();
        let data = tokio::task::spawn_blocking(move || disk.get_part(&key, chunk_len, part))
            .await
            .ok()
            .flatten()?;
        self.count_disk_hit();
        Some(data)
    }

    /// What the disk tier should answer of `span` in chunk `index`, when only the disk tier
    /// has the chunk (not in memory, not being fetched) and `span` wants less than all of it:
    /// the chunk's key, its length and the part wanted, to be read from the blocks of the
    /// chunk file that hold it and not kept in memory. A random reader of an object bigger
    /// than the memory tier would otherwise load a whole chunk from disk, check it and push
    /// another out of memory, for every small read.
    fn disk_part(
        &self,
        object: &ObjectVersion,
        index: u64,
        span: &ReadSpan,
    ) -> Option<(ChunkKey, usize, Range<usize>)> {
        let disk = self.disk()?;
        let chunk_len = {
            let range = self.chunk_range(object, index);
            (range.end - range.start) as usize
        };
        let part = span.within(index, chunk_len);
        let key = self.key_of(object, index);
        if part.len() >= chunk_len
            || self.tiers.memory.contains_key(&key)
            || self.inflight.lock().unwrap().contains_key(&key)
            || !disk.contains(&key)
        {
            return None;
        }
        Some((key, chunk_len, part))
    }

    fn count_disk_hit(&self) {
        self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
        metrics()
            .cache_hits
            .get_or_create(&TierLabels { tier: "disk" })
            .inc();
    }

    /// One whole chunk, from wherever it is.
    pub async fn chunk(self: &Arc<Self>, object: &ObjectVersion, index: u64) -> StoreResult<Bytes> {
        if index >= self.chunk_count(object.size) {
            return Err(StoreError::new(
                ErrorKind::InvalidRange,
                format!(
                    "chunk {index} is past the end of {:?} ({} bytes)",
                    object.key, object.size
                ),
            ));
        }
        let key = self.key_of(object, index);
        // A chunk is kept under its version's ETag, and fetched for a reader's idea of the
        // object's size: one that had the ETag with a stale, smaller size fetched the last
        // chunk short. A chunk shorter than this reader expects is not its chunk (a longer
        // one is: reads take only what they ask for).
        let range = self.chunk_range(object, index);
        let whole = |data: &Bytes| data.len() as u64 >= range.end - range.start;
        match self.tiers.memory.get(&key) {
            Some(data) if whole(&data) => {
                self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
                metrics()
                    .cache_hits
                    .get_or_create(&TierLabels { tier: "memory" })
                    .inc();
                return Ok(data);
            }
            Some(_) => self.tiers.memory.invalidate(&key),
            None => {}
        }
        let pending = self.inflight.lock().unwrap().get(&key).cloned();
        if let Some(pending) = pending {
            self.stats.joined_fetches.fetch_add(1, Ordering::Relaxed);
            let data = pending.await?;
            if !whole(&data) {
                return self.fetch_direct(object, index).await;
            }
            // A fetch for the disk tier only (prefetch_to_disk) left memory alone; what is
            // read now is kept there like any chunk read.
            if !self.tiers.memory.contains_key(&key) {
                self.tiers.memory.insert(key, data.clone());
                self.tiers.memory.run_pending_tasks();
            }
            return Ok(data);
        }
        self.prefetch(object, index..index + 1, Tier::MemoryAndDisk);
        let pending = self.inflight.lock().unwrap().get(&key).cloned();
        let data = match pending {
            Some(pending) => pending.await?,
            // Finished between the two looks: it is in memory now (or was evicted at once
            // under a tiny budget, in which case fetch it directly).
            None => match self.tiers.memory.get(&key) {
                Some(data) => data,
                None => return self.fetch_direct(object, index).await,
            },
        };
        if whole(&data) {
            Ok(data)
        } else {
            self.fetch_direct(object, index).await
        }
    }

    async fn fetch_direct(&self, object: &ObjectVersion, index: u64) -> StoreResult<Bytes> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.store
            .get_range(
                &object.key,
                self.chunk_range(object, index),
                Some(&object.etag),
            )
            .await
    }

    /// Start fetching the chunks of `indices` that are neither in memory nor being fetched,
    /// without waiting, into `tier` (memory, and disk unless `MemoryOnly`). Consecutive
    /// missing chunks share one ranged GET.
    pub fn prefetch(self: &Arc<Self>, object: &ObjectVersion, indices: Range<u64>, tier: Tier) {
        debug_assert!(tier != Tier::DiskOnly, "that is prefetch_to_disk");
        let runs = self.claim_runs(object, indices, |_| false);
        for run in runs {
            let cache = Arc::clone(self);
            let object = object.clone();
            tokio::spawn(async move { cache.fetch_run(&object, run, tier).await });
        }
    }

    /// Whether a sequential read of `object` keeps what it fetches on disk as well as in
    /// memory. Not the first such read (by any cache sharing these tiers, since they were
    /// made: a process) of an object over
    /// [`SCAN_RESISTANT_ABOVE`]: a big file read once (a backup, a video, a log) would cost
    /// a disk write per byte read, about a third of a cold read's time on the benchmark
    /// machine (docs/BENCHMARKS.md), and push out of the disk tier what is read again. From
    /// its second sequential read on, it is kept like any other. A cache without a disk
    /// folder keeps nothing on disk, and its reads do not count as first reads for the
    /// caches sharing its tiers that have one.
    pub fn keeps_on_disk_when_streamed(&self, object: &ObjectVersion) -> bool {
        if self.disk().is_none() {
            return false;
        }
        if object.size <= SCAN_RESISTANT_ABOVE {
            return true;
        }
        let version = (
            self.source.clone(),
            object.key.clone(),
            object.etag.as_str().to_owned(),
        );
        if self.tiers.streamed.contains_key(&version) {
            return true;
        }
        self.tiers.streamed.insert(version, ());
        false
    }

    /// Claim the chunks of `indices` that are neither in memory, nor being fetched, nor
    /// `skip`ped, as runs of consecutive chunks (one ranged GET each), registered in flight.
    fn claim_runs(
        &self,
        object: &ObjectVersion,
        indices: Range<u64>,
        skip: impl Fn(&ChunkKey) -> bool,
    ) -> Vec<Vec<Ticket>> {
        let indices = indices.start..indices.end.min(self.chunk_count(object.size));
        let mut run: Vec<Ticket> = Vec::new();
        let mut runs = Vec::new();
        let mut inflight = self.inflight.lock().unwrap();
        for index in indices {
            let key = self.key_of(object, index);
            if inflight.contains_key(&key) || self.tiers.memory.contains_key(&key) || skip(&key) {
                if !run.is_empty() {
                    runs.push(std::mem::take(&mut run));
                }
                continue;
            }
            run.push(self.new_ticket(&mut inflight, key));
        }
        if !run.is_empty() {
            runs.push(run);
        }
        runs
    }

    /// Register a fetch of chunk `key` in `inflight`, so readers of it wait for it.
    fn new_ticket(&self, inflight: &mut HashMap<ChunkKey, ChunkFuture>, key: ChunkKey) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let future = rx
            .map(|r| {
                r.unwrap_or_else(|_| {
                    Err(StoreError::new(
                        ErrorKind::Other,
                        "the chunk fetch was cancelled",
                    ))
                })
            })
            .boxed()
            .shared();
        inflight.insert(key.clone(), future);
        Ticket {
            key,
            tx: Some(tx),
            inflight: self.inflight.clone(),
        }
    }

    /// Start fetching, into the disk tier only, the chunks of `indices` that no tier has and
    /// nobody is fetching, without waiting: data that may be read soon, which must not push
    /// out of memory what is read now. Nothing without a disk tier, or while
    /// `MAX_DISK_PREFETCHES` such fetches run.
    pub fn prefetch_to_disk(
        self: &Arc<Self>,
        object: &ObjectVersion,
        ranges: impl IntoIterator<Item = Range<u64>>,
    ) {
        let Some(disk) = self.disk() else {
            return;
        };
        let Ok(permit) = self.tiers.disk_prefetches.clone().try_acquire_owned() else {
            return;
        };
        let runs: Vec<Vec<Ticket>> = ranges
            .into_iter()
            .flat_map(|range| self.claim_runs(object, range, |key| disk.contains(key)))
            .collect();
        if runs.is_empty() {
            return;
        }
        let cache = Arc::clone(self);
        let object = object.clone();
        tokio::spawn(async move {
            for run in runs {
                let _ = cache.fetch_stretch(&object, run, Tier::DiskOnly).await;
            }
            drop(permit);
        });
    }

    /// True when chunk `index` of `object` is in a tier or being fetched: a read of it waits
    /// for no new request.
    pub fn holds(&self, object: &ObjectVersion, index: u64) -> bool {
        let key = self.key_of(object, index);
        self.tiers.memory.contains_key(&key)
            || self.inflight.lock().unwrap().contains_key(&key)
            || self.disk().is_some_and(|disk| disk.contains(&key))
    }

    /// Fetch into the disk tier, in the background, every chunk of `object` that no tier has
    /// and nobody is fetching: blocks of `block` chunks, one ranged GET each, from the block
    /// of chunk `from` to the end and then from the start, as many at once as
    /// [`prefetch_to_disk`](Self::prefetch_to_disk) may run. They share that limit: while a
    /// fill runs, fetches of neighbourhoods find it taken and are skipped (a fill of this
    /// object fetches those blocks anyway). Ends early when `control` is stopped or a fetch
    /// fails (the object changed, the store is down), and then marks `control` ended. Nothing
    /// without a disk tier.
    pub fn fill_to_disk(
        self: &Arc<Self>,
        object: &ObjectVersion,
        from: u64,
        block: u64,
        control: Arc<FillControl>,
    ) {
        if self.disk().is_none() {
            control.ended.store(true, Ordering::Relaxed);
            return;
        }
        let cache = Arc::clone(self);
        let object = object.clone();
        tokio::spawn(async move {
            // Marks the fill ended however the task ends (the runtime shutting down too).
            struct Ended(Arc<FillControl>);
            impl Drop for Ended {
                fn drop(&mut self) {
                    self.0.ended.store(true, Ordering::Relaxed);
                }
            }
            let _ended = Ended(control.clone());
            let chunks = cache.chunk_count(object.size);
            let block = block.max(1);
            let first = from.min(chunks) / block * block;
            let starts = (first..chunks)
                .step_by(block as usize)
                .chain((0..first).step_by(block as usize));
            let failed = Arc::new(AtomicBool::new(false));
            for start in starts {
                let Ok(permit) = cache.tiers.disk_prefetches.clone().acquire_owned().await else {
                    break;
                };
                if control.stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                    break;
                }
                let Some(disk) = cache.disk() else {
                    break;
                };
                let runs =
                    cache.claim_runs(&object, start..start + block, |key| disk.contains(key));
                if runs.is_empty() {
                    continue;
                }
                let (cache, object, failed) = (cache.clone(), object.clone(), failed.clone());
                tokio::spawn(async move {
                    for run in runs {
                        if cache
                            .fetch_stretch(&object, run, Tier::DiskOnly)
                            .await
                            .is_err()
                        {
                            failed.store(true, Ordering::Relaxed);
                        }
                    }
                    drop(permit);
                });
            }
        });
    }

    /// Fetch a run of consecutive chunks: each from disk if it is there, the rest with one
    /// ranged GET, handing out every chunk as soon as it is complete.
    async fn fetch_run(self: Arc<Self>, object: &ObjectVersion, run: Vec<Ticket>, tier: Tier) {
        let mut missing = Vec::new();
        for ticket in run {
            let on_disk = match self.disk() {
                Some(disk) => {
                    let (disk, key) = (disk.clone(), ticket.key.clone());
                    tokio::task::spawn_blocking(move || disk.get(&key))
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            let want = self.chunk_range(object, ticket.index());
            match on_disk {
                Some(data) if data.len() as u64 == want.end - want.start => {
                    self.count_disk_hit();
                    self.deliver(ticket, Ok(data), false);
                }
                _ => missing.push(ticket),
            }
        }
        // Disk hits may have split the run; each consecutive stretch is one request.
        let mut stretch: Vec<Ticket> = Vec::new();
        for ticket in missing {
            if stretch
                .last()
                .is_some_and(|last| last.index() + 1 != ticket.index())
            {
                let _ = self
                    .fetch_stretch(object, std::mem::take(&mut stretch), tier)
                    .await;
            }
            stretch.push(ticket);
        }
        if !stretch.is_empty() {
            let _ = self.fetch_stretch(object, stretch, tier).await;
        }
    }

    /// Fetch a stretch of consecutive chunks with one ranged GET; the error, if any, went to
    /// the stretch's waiters too.
    async fn fetch_stretch(
        &self,
        object: &ObjectVersion,
        stretch: Vec<Ticket>,
        tier: Tier,
    ) -> StoreResult<()> {
        let first = stretch[0].index();
        let last = stretch[stretch.len() - 1].index();
        let range = self.chunk_range(object, first).start..self.chunk_range(object, last).end;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut waiting: VecDeque<Ticket> = stretch.into();
        let result: StoreResult<()> = async {
            let mut body = self.store.get_stream(&object.key, range.clone(), Some(&object.etag)).await?;
            // Each chunk gets a buffer of exactly its size: no regrowth copies, and evicting a
            // chunk frees its memory (a shared buffer would stay alive through its neighbours).
            let mut buf = BytesMut::new();
            while let Some(mut bytes) = body.try_next().await? {
                while !bytes.is_empty() {
                    let Some(ticket) = waiting.front() else {
                        return Err(StoreError::new(
                            ErrorKind::Network,
                            format!("the object store sent more bytes than asked for {:?} (range {range:?})", object.key),
                        ));
                    };
                    let want = self.chunk_range(object, ticket.index());
                    let want = (want.end - want.start) as usize;
                    if buf.capacity() < want {
                        buf.reserve(want - buf.len());
                    }
                    let take = (want - buf.len()).min(bytes.len());
                    buf.extend_from_slice(&bytes.split_to(take));
                    if buf.len() == want {
                        let data = std::mem::take(&mut buf).freeze();
                        let ticket = waiting.pop_front().expect("checked");
                        self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
                        metrics().cache_misses.inc();
                        self.stats.fetched_bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                        match tier {
                            Tier::MemoryAndDisk => self.deliver(ticket, Ok(data), true),
                            Tier::MemoryOnly => self.deliver(ticket, Ok(data), false),
                            Tier::DiskOnly => self.deliver_to_disk(ticket, data).await,
                        }
                    }
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(StoreError::new(
                    ErrorKind::Network,
                    format!("the object store sent fewer bytes than asked for {:?} (range {range:?})", object.key),
                ))
            }
        }
        .await;
        // Every waiter gets an answer, so no chunk stays "in flight" forever.
        if let Err(err) = &result {
            for ticket in waiting {
                self.deliver(ticket, Err(err.clone()), false);
            }
        }
        result
    }

    /// Hand a chunk fetched for later to its waiters (a read that came meanwhile) and the disk
    /// tier, not the memory tier.
    /// Written before it is answered: a reader coming meanwhile waits for the fetch rather
    /// than fetching the chunk again.
    async fn deliver_to_disk(&self, ticket: Ticket, data: Bytes) {
        if let Some(disk) = self.disk() {
            let (disk, key, bytes) = (disk.clone(), ticket.key.clone(), data.clone());
            let _ = tokio::task::spawn_blocking(move || disk.put(&key, &bytes)).await;
        }
        ticket.answer(Ok(data));
    }

    /// Hand a fetched chunk (or the error) to its waiters and the caches.
    fn deliver(&self, ticket: Ticket, result: StoreResult<Bytes>, to_disk: bool) {
        if let Ok(data) = &result {
            self.tiers.memory.insert(ticket.key.clone(), data.clone());
            // Evict now: moka batches evictions until dozens of writes are pending, which at
            // 1 MiB a chunk would hold tens of MiB over the budget.
            self.tiers.memory.run_pending_tasks();
            if let (true, Some(disk)) = (to_disk, self.disk()) {
                // Skip the disk when writes queue up (a slow disk must not hold memory).
                if let Ok(permit) = self.tiers.disk_writes.clone().try_acquire_owned() {
                    let (disk, key, data) = (disk.clone(), ticket.key.clone(), data.clone());
                    tokio::task::spawn_blocking(move || {
                        disk.put(&key, &data);
                        drop(permit);
                    });
                }
            }
        }
        ticket.answer(result);
    }
}

#[cfg(test)]
mod tests;
