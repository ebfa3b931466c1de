//! The chunk cache: fixed-size chunks of objects, in memory and on disk, in front of a store.
//!
//! A chunk is identified by (bucket, key, ETag, index), so a changed object (new ETag) never
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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use common::{ETag, ErrorKind, ObjectStore, StoreError, StoreResult};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::TryStreamExt;
use tokio::sync::oneshot;

pub use disk::DiskCache;

/// Identifies one chunk of one object version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    bucket: Arc<str>,
    key: Arc<str>,
    etag: Arc<str>,
    index: u64,
}

impl ChunkKey {
    pub fn new(bucket: &str, key: &str, etag: &ETag, index: u64) -> Self {
        Self {
            bucket: bucket.into(),
            key: key.into(),
            etag: etag.as_str().into(),
            index,
        }
    }

    fn with_index(&self, index: u64) -> Self {
        Self {
            index,
            ..self.clone()
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
    /// Hard cap of chunk bytes held in memory.
    pub memory_bytes: u64,
    /// Folder of the disk tier; `None` disables it.
    pub disk_dir: Option<PathBuf>,
    /// Hard cap of the disk tier.
    pub disk_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            chunk_size: 1 << 20,
            memory_bytes: 256 << 20,
            disk_dir: None,
            disk_bytes: 10 << 30,
        }
    }
}

impl CacheConfig {
    pub fn chunk_size(mut self, bytes: u64) -> Self {
        self.chunk_size = bytes.max(4096);
        self
    }

    pub fn memory_bytes(mut self, bytes: u64) -> Self {
        self.memory_bytes = bytes;
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

/// The chunk cache over a store `S`. Share it with `Arc`.
pub struct ChunkCache<S> {
    store: Arc<S>,
    config: CacheConfig,
    memory: moka::sync::Cache<ChunkKey, Bytes>,
    inflight: Mutex<HashMap<ChunkKey, ChunkFuture>>,
    disk: Option<DiskCache>,
    stats: CacheStats,
}

impl<S> fmt::Debug for ChunkCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChunkCache")
            .field("config", &self.config)
            .field("memory_bytes_used", &self.memory.weighted_size())
            .finish_non_exhaustive()
    }
}

impl<S: ObjectStore> ChunkCache<S> {
    pub fn new(store: Arc<S>, config: CacheConfig) -> std::io::Result<Self> {
        let disk = match &config.disk_dir {
            Some(dir) => Some(DiskCache::open(dir, config.disk_bytes)?),
            None => None,
        };
        let memory = moka::sync::Cache::builder()
            .max_capacity(config.memory_bytes)
            .weigher(|_k: &ChunkKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            // LRU, not TinyLFU: read-ahead inserts chunks just before they are read, and
            // TinyLFU's admission filter would refuse those one-time entries once full.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Ok(Self {
            store,
            config,
            memory,
            inflight: Mutex::new(HashMap::new()),
            disk,
            stats: CacheStats::default(),
        })
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    pub fn stats(&self) -> &CacheStats {
        &self.stats
    }

    pub fn disk(&self) -> Option<&DiskCache> {
        self.disk.as_ref()
    }

    /// Bytes of chunks held in memory now.
    pub fn memory_used(&self) -> u64 {
        self.memory.run_pending_tasks();
        self.memory.weighted_size()
    }

    /// Number of chunks of an object of `size` bytes.
    pub fn chunk_count(&self, size: u64) -> u64 {
        size.div_ceil(self.config.chunk_size)
    }

    fn key_of(&self, object: &ObjectVersion, index: u64) -> ChunkKey {
        ChunkKey::new(self.store.bucket(), &object.key, &object.etag, index)
    }

    fn chunk_range(&self, object: &ObjectVersion, index: u64) -> Range<u64> {
        let start = index * self.config.chunk_size;
        start..(start + self.config.chunk_size).min(object.size)
    }

    /// Read `len` bytes at `offset` of `object` (fewer at the end of the object).
    pub async fn read(
        self: &Arc<Self>,
        object: &ObjectVersion,
        offset: u64,
        len: u64,
    ) -> StoreResult<Bytes> {
        let end = offset.saturating_add(len).min(object.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let cs = self.config.chunk_size;
        let (first, last) = (offset / cs, (end - 1) / cs);
        if first == last {
            let chunk = self.chunk(object, first).await?;
            return Ok(chunk.slice((offset - first * cs) as usize..(end - first * cs) as usize));
        }
        // A read spanning chunks: fetch the missing ones in one request, then assemble.
        self.prefetch(object, first..last + 1);
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for index in first..=last {
            let chunk = self.chunk(object, index).await?;
            let from = offset.saturating_sub(index * cs) as usize;
            let to = ((end - index * cs) as usize).min(chunk.len());
            out.extend_from_slice(&chunk[from..to]);
        }
        Ok(out.freeze())
    }

    /// One whole chunk, from wherever it is.
    pub async fn chunk(self: &Arc<Self>, object: &ObjectVersion, index: u64) -> StoreResult<Bytes> {
        let key = self.key_of(object, index);
        if let Some(data) = self.memory.get(&key) {
            self.stats.memory_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(data);
        }
        let pending = self.inflight.lock().unwrap().get(&key).cloned();
        if let Some(pending) = pending {
            self.stats.joined_fetches.fetch_add(1, Ordering::Relaxed);
            return pending.await;
        }
        self.prefetch(object, index..index + 1);
        let pending = self.inflight.lock().unwrap().get(&key).cloned();
        match pending {
            Some(pending) => pending.await,
            // Finished between the two looks: it is in memory now (or was evicted at once
            // under a tiny budget, in which case fetch it directly).
            None => match self.memory.get(&key) {
                Some(data) => Ok(data),
                None => self.fetch_direct(object, index).await,
            },
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
    /// without waiting. Consecutive missing chunks share one ranged GET.
    pub fn prefetch(self: &Arc<Self>, object: &ObjectVersion, indices: Range<u64>) {
        let indices = indices.start..indices.end.min(self.chunk_count(object.size));
        let mut run: Vec<(u64, oneshot::Sender<StoreResult<Bytes>>)> = Vec::new();
        let mut runs = Vec::new();
        {
            let mut inflight = self.inflight.lock().unwrap();
            for index in indices {
                let key = self.key_of(object, index);
                if inflight.contains_key(&key) || self.memory.contains_key(&key) {
                    if !run.is_empty() {
                        runs.push(std::mem::take(&mut run));
                    }
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                let future = rx
                    .map(|r| {
                        r.unwrap_or_else(|_| {
                            Err(StoreError::new(
                                ErrorKind::Other,
                                "chunk fetch was cancelled",
                            ))
                        })
                    })
                    .boxed()
                    .shared();
                inflight.insert(key, future);
                run.push((index, tx));
            }
        }
        if !run.is_empty() {
            runs.push(run);
        }
        for run in runs {
            let cache = Arc::clone(self);
            let object = object.clone();
            tokio::spawn(async move { cache.fetch_run(&object, run).await });
        }
    }

    /// Fetch a run of consecutive chunks: each from disk if it is there, the rest with one
    /// ranged GET, handing out every chunk as soon as it is complete.
    async fn fetch_run(
        self: Arc<Self>,
        object: &ObjectVersion,
        run: Vec<(u64, oneshot::Sender<StoreResult<Bytes>>)>,
    ) {
        let base = self.key_of(object, 0);
        let mut missing = Vec::new();
        for (index, tx) in run {
            let key = base.with_index(index);
            let on_disk = match &self.disk {
                Some(disk) => {
                    let disk = disk.clone();
                    let k = key.clone();
                    tokio::task::spawn_blocking(move || disk.get(&k))
                        .await
                        .ok()
                        .flatten()
                }
                None => None,
            };
            match on_disk {
                Some(data)
                    if data.len() as u64
                        == self.chunk_range(object, index).end
                            - self.chunk_range(object, index).start =>
                {
                    self.stats.disk_hits.fetch_add(1, Ordering::Relaxed);
                    self.deliver(key, Ok(data), tx, false);
                }
                _ => missing.push((index, tx)),
            }
        }
        // Disk hits may have split the run; each consecutive stretch is one request.
        let mut stretch: Vec<(u64, oneshot::Sender<StoreResult<Bytes>>)> = Vec::new();
        for (index, tx) in missing {
            if stretch.last().is_some_and(|(last, _)| *last + 1 != index) {
                self.fetch_stretch(object, &base, std::mem::take(&mut stretch))
                    .await;
            }
            stretch.push((index, tx));
        }
        if !stretch.is_empty() {
            self.fetch_stretch(object, &base, stretch).await;
        }
    }

    async fn fetch_stretch(
        &self,
        object: &ObjectVersion,
        base: &ChunkKey,
        stretch: Vec<(u64, oneshot::Sender<StoreResult<Bytes>>)>,
    ) {
        let first = stretch[0].0;
        let last = stretch[stretch.len() - 1].0;
        let range = self.chunk_range(object, first).start..self.chunk_range(object, last).end;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let mut waiting: VecDeque<_> = stretch.into();
        let result: StoreResult<()> = async {
            let mut body = self
                .store
                .get_stream(&object.key, range.clone(), Some(&object.etag))
                .await?;
            let mut buf = BytesMut::new();
            while let Some(bytes) = body.try_next().await? {
                buf.extend_from_slice(&bytes);
                while let Some((index, _)) = waiting.front() {
                    let want = self.chunk_range(object, *index);
                    let want = (want.end - want.start) as usize;
                    if buf.len() < want {
                        break;
                    }
                    let data = buf.split_to(want).freeze();
                    let (index, tx) = waiting.pop_front().expect("checked");
                    self.stats.fetched_chunks.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .fetched_bytes
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    self.deliver(base.with_index(index), Ok(data), tx, true);
                }
            }
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(StoreError::new(
                    ErrorKind::Network,
                    format!(
                        "the object store sent fewer bytes than asked for {:?} (range {range:?})",
                        object.key
                    ),
                ))
            }
        }
        .await;
        // Every waiter gets an answer, so no chunk stays "in flight" forever.
        if let Err(err) = result {
            for (index, tx) in waiting {
                self.deliver(base.with_index(index), Err(err.clone()), tx, false);
            }
        }
    }

    /// Hand a fetched chunk (or the error) to its waiters and the caches.
    fn deliver(
        &self,
        key: ChunkKey,
        result: StoreResult<Bytes>,
        tx: oneshot::Sender<StoreResult<Bytes>>,
        to_disk: bool,
    ) {
        if let Ok(data) = &result {
            self.memory.insert(key.clone(), data.clone());
            if let (true, Some(disk)) = (to_disk, &self.disk) {
                let (disk, key, data) = (disk.clone(), key.clone(), data.clone());
                tokio::task::spawn_blocking(move || disk.put(&key, &data));
            }
        }
        // Remove after inserting, so a new reader finds the chunk in one place or the other.
        self.inflight.lock().unwrap().remove(&key);
        let _ = tx.send(result);
    }
}

#[cfg(test)]
mod tests;
