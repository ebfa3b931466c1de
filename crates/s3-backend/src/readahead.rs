//! Sequential read-ahead: one [`SequentialReader`] per open file notices sequential access and
//! fetches ahead of the reader into the chunk cache, with several ranged GETs in parallel.
//!
//! The window starts at `initial_window` on the first sequential read and doubles with each
//! further one, up to `max_window`. All sequential readers of caches sharing one set of tiers
//! share a quarter of the memory budget: each gets an equal part of it (so prefetched chunks are
//! not evicted before they are read, and eight readers under a small budget do not fetch eight
//! quarters of it ahead). It is cut into requests of
//! `request_size`, each its own GET, so a window of 64 MiB keeps 8 requests of 8 MiB in flight:
//! one reader is then limited by the backend's bandwidth, not one request's latency. A read at
//! another offset (a seek) drops the window to zero.
//!
//! Random reads of an object that fits in a quarter of the disk tier also fetch, in the
//! background and into the disk tier only, the rest of the `request_size` block around them.
//! Once [`FILL_AFTER_MISSES`] of one reader's random reads found their chunk nowhere, the
//! reader is taken for one that reads all over the file (a database, fio), and the whole
//! object is fetched into the disk tier in the background, `request_size` at a time, a few
//! requests at once ([`ChunkCache::fill_to_disk`]), until the reader is dropped. Either way
//! such a file ends up cached after at most its own size in transfers, and its random readers
//! then read from disk instead of waiting for a request each; the fill gets there at the
//! backend's bandwidth rather than one miss at a time. The read itself waits only for its own
//! chunk, and the memory tier keeps what is read (a first try that put the blocks in memory
//! evicted the chunks read again: docs/BENCHMARKS.md). Random reads of bigger objects, or
//! without a disk tier, fetch only what they need.
//!
//! Read-ahead keeps its chunks on disk as well as in memory, except on the first sequential
//! read of a big object in this process
//! ([`ChunkCache::keeps_on_disk_when_streamed`]): a scan must not cost a disk write per byte
//! nor push out of the disk tier what is read again.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use common::metrics::{metrics, GaugeShare};
use common::{ObjectStore, StoreResult};

use crate::cache::{ChunkCache, FillControl, ObjectVersion, Tier};

/// Random reads of one reader that must fetch their chunk before the reader fills the disk
/// tier with the whole object (when it fits in a quarter of it). Fewer would download a file
/// whole for a glance at a few places in it (`file`, a header, an index); 4 and 16 measured
/// the same for fio (docs/BENCHMARKS.md).
pub const FILL_AFTER_MISSES: u32 = 16;

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReadaheadConfig {
    pub initial_window: u64,
    pub max_window: u64,
    pub request_size: u64,
}

impl Default for ReadaheadConfig {
    fn default() -> Self {
        Self {
            initial_window: 1 << 20,
            max_window: 64 << 20,
            request_size: 8 << 20,
        }
    }
}

impl ReadaheadConfig {
    pub fn max_window(mut self, bytes: u64) -> Self {
        self.max_window = bytes;
        self
    }

    pub fn request_size(mut self, bytes: u64) -> Self {
        self.request_size = bytes;
        self
    }
}

/// Reads one object version for one open file handle.
#[derive(Debug)]
pub struct SequentialReader<S> {
    cache: Arc<ChunkCache<S>>,
    object: ObjectVersion,
    config: ReadaheadConfig,
    /// Where the next read starts if access is sequential.
    next_offset: u64,
    window: u64,
    /// This reader's window in the process metrics.
    window_metric: GaugeShare,
    /// Prefetch has been requested up to here.
    prefetched_to: u64,
    /// Counted in the cache's sequential readers (while the window is open).
    counted: bool,
    /// Where read-ahead keeps its chunks, decided at the first read-ahead.
    tier: Option<Tier>,
    /// Random reads that found their chunk in no tier (since the last fill ended).
    random_misses: u32,
    /// The fill of the disk tier with the object this reader started, stopped when the reader
    /// is dropped.
    fill: Option<Arc<FillControl>>,
}

impl<S: ObjectStore> SequentialReader<S> {
    pub fn new(cache: Arc<ChunkCache<S>>, object: ObjectVersion, config: ReadaheadConfig) -> Self {
        Self {
            cache,
            object,
            config,
            next_offset: 0,
            window: 0,
            window_metric: GaugeShare::new(&metrics().readahead_window_bytes, 0),
            prefetched_to: 0,
            counted: false,
            tier: None,
            random_misses: 0,
            fill: None,
        }
    }

    pub fn object(&self) -> &ObjectVersion {
        &self.object
    }

    /// The current read-ahead window in bytes (0 while access is random).
    pub fn window(&self) -> u64 {
        self.window
    }

    fn window_cap(&self) -> u64 {
        let chunk = self.cache.config().chunk_size;
        let readers = self
            .cache
            .sequential_readers()
            .load(Ordering::Relaxed)
            .max(1) as u64;
        self.config
            .max_window
            .min(self.cache.config().memory_bytes / 4 / readers)
            .max(chunk)
    }

    /// Read `len` bytes at `offset` (fewer at the end of the object).
    pub async fn read(&mut self, offset: u64, len: u64) -> StoreResult<Bytes> {
        self.advise(offset, len);
        self.cache.read(&self.object, offset, len).await
    }

    /// Note a read of `len` bytes at `offset` and start the read-ahead it calls for, without
    /// reading. Callers that serve several reads of one handle at once (FUSE sends them in
    /// parallel) advise under a lock and read through [`cache`](Self::cache) outside it.
    ///
    /// Access counts as sequential when a read starts near where the last one ended: up to
    /// 16 MiB ahead (reads skipped or still in flight) or up to the window behind (parallel
    /// reads arriving out of order).
    pub fn advise(&mut self, offset: u64, len: u64) {
        const MAX_FORWARD: u64 = 16 << 20;
        let end = offset.saturating_add(len).min(self.object.size);
        let behind = self.window.max(self.cache.config().chunk_size);
        let sequential = (offset >= self.next_offset && offset - self.next_offset <= MAX_FORWARD)
            || (offset < self.next_offset && self.next_offset - offset <= behind);
        self.set_counted(sequential);
        if sequential {
            if offset >= self.next_offset {
                let cap = self.window_cap();
                self.window = (self.window * 2).clamp(self.config.initial_window.min(cap), cap);
            }
        } else {
            self.window = 0;
            self.prefetched_to =
                end / self.cache.config().chunk_size * self.cache.config().chunk_size;
            self.prefetch_around_random_read(offset, end);
        }
        self.window_metric.set(self.window);
        self.next_offset = self.next_offset.max(end);
        if !sequential {
            self.next_offset = end;
        }
        if self.window > 0 {
            self.prefetch_ahead(self.next_offset);
        }
    }

    /// For a random read of `offset..end` of an object that fits in a quarter of the disk
    /// tier: fetch into the disk tier the `request_size` block around it, or, after
    /// [`FILL_AFTER_MISSES`] misses, the whole object.
    fn prefetch_around_random_read(&mut self, offset: u64, end: u64) {
        let config = self.cache.config();
        let chunk = config.chunk_size;
        if config.disk_dir.is_none()
            || self.object.size > config.disk_bytes / 4
            || self.object.size <= chunk
            || offset >= end
        {
            return;
        }
        if let Some(fill) = &self.fill {
            if !fill.ended() {
                return;
            }
            // Done, or failed, or the disk tier dropped chunks since: blocks again, and
            // another fill after as many misses again.
            self.fill = None;
            self.random_misses = 0;
        }
        if !self.cache.holds(&self.object, offset / chunk) {
            self.random_misses += 1;
        }
        if self.random_misses < FILL_AFTER_MISSES {
            self.prefetch_neighbourhood(offset, end);
            return;
        }
        let fill = Arc::new(FillControl::default());
        let block = self.config.request_size.max(chunk) / chunk;
        self.cache
            .fill_to_disk(&self.object, offset / chunk, block, fill.clone());
        self.fill = Some(fill);
    }

    /// Start fetching into the disk tier the `request_size` block around a random read of
    /// `offset..end`, all but the chunks the read needs (it fetches those itself, without
    /// waiting for the rest).
    fn prefetch_neighbourhood(&self, offset: u64, end: u64) {
        let chunk = self.cache.config().chunk_size;
        let block = self.config.request_size.max(chunk) / chunk * chunk;
        let first = offset / block * block / chunk;
        let last = ((offset / block + 1) * block)
            .min(self.object.size)
            .div_ceil(chunk);
        let (needed_from, needed_to) = (offset / chunk, end.div_ceil(chunk));
        self.cache.prefetch_to_disk(
            &self.object,
            [first..needed_from.max(first), needed_to.min(last)..last],
        );
    }

    /// The chunk cache this reader reads through.
    pub fn cache(&self) -> &Arc<ChunkCache<S>> {
        &self.cache
    }

    /// Request whole `request_size` pieces of the window that are not requested yet. Waiting
    /// until a whole piece is due keeps requests large: small reads must not each send a GET.
    fn prefetch_ahead(&mut self, end: u64) {
        let chunk = self.cache.config().chunk_size;
        let size = self.object.size;
        let request = self.config.request_size.min(self.window).max(chunk) / chunk * chunk;
        let target = end.saturating_add(self.window).min(size);
        let mut from = self.prefetched_to.max(end / chunk * chunk);
        let cache = &self.cache;
        let object = &self.object;
        let tier = *self.tier.get_or_insert_with(|| {
            if cache.keeps_on_disk_when_streamed(object) {
                Tier::MemoryAndDisk
            } else {
                Tier::MemoryOnly
            }
        });
        while from < target && (target - from >= request || target == size) {
            let to = (from + request).min(size);
            self.cache
                .prefetch(&self.object, from / chunk..to.div_ceil(chunk), tier);
            from = to;
        }
        self.prefetched_to = from;
    }
}

impl<S> SequentialReader<S> {
    /// Count this reader among the cache's sequential readers while its window is open.
    fn set_counted(&mut self, counted: bool) {
        if counted != self.counted {
            let readers = self.cache.sequential_readers();
            if counted {
                readers.fetch_add(1, Ordering::Relaxed);
            } else {
                readers.fetch_sub(1, Ordering::Relaxed);
            }
            self.counted = counted;
        }
    }
}

impl<S> Drop for SequentialReader<S> {
    fn drop(&mut self) {
        self.set_counted(false);
        if let Some(fill) = &self.fill {
            fill.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::CacheConfig;
    use common::conformance::pattern;
    use common::memory::{InMemoryStore, Op};
    use common::UserMetadata;
    use std::time::Duration;

    const CHUNK: u64 = 64 * 1024;

    async fn reader(
        size: usize,
        memory: u64,
    ) -> (Arc<InMemoryStore>, SequentialReader<InMemoryStore>) {
        reader_with(size, CacheConfig::default().memory_bytes(memory)).await
    }

    async fn reader_with(
        size: usize,
        cache: CacheConfig,
    ) -> (Arc<InMemoryStore>, SequentialReader<InMemoryStore>) {
        let store = Arc::new(InMemoryStore::new("b"));
        let put = store
            .put("f", pattern(size, 1), &UserMetadata::new())
            .await
            .unwrap();
        let cache = Arc::new(ChunkCache::new(store.clone(), cache.chunk_size(CHUNK)).unwrap());
        let object = ObjectVersion {
            key: "f".into(),
            etag: put.etag,
            size: size as u64,
        };
        let config = ReadaheadConfig {
            initial_window: CHUNK,
            max_window: 32 * CHUNK,
            request_size: 4 * CHUNK,
        };
        (store, SequentialReader::new(cache, object, config))
    }

    #[tokio::test]
    async fn sequential_reads_grow_the_window_and_use_few_large_requests() {
        let size = 256 * CHUNK as usize;
        let (store, mut r) = reader(size, 1 << 30).await;
        let body = pattern(size, 1);
        let mut windows = Vec::new();
        let mut offset = 0;
        while offset < size as u64 {
            let got = r.read(offset, 16 * 1024).await.unwrap();
            assert_eq!(
                got,
                body.slice(offset as usize..offset as usize + got.len())
            );
            offset += got.len() as u64;
            windows.push(r.window());
        }
        assert_eq!(windows[0], CHUNK);
        assert_eq!(*windows.last().unwrap(), 32 * CHUNK);
        assert!(
            windows.windows(2).all(|w| w[1] >= w[0]),
            "window only grows while sequential"
        );
        // 256 chunks in requests of up to 4 chunks each, plus the small first ones.
        let gets = store.request_count(Op::Get);
        assert!((64..=80).contains(&gets), "{gets} GETs");
    }

    #[tokio::test]
    async fn reads_arriving_slightly_out_of_order_keep_the_window() {
        let size = 256 * CHUNK as usize;
        let (store, mut r) = reader(size, 1 << 30).await;
        let body = pattern(size, 1);
        let piece = 32 * 1024u64;
        let mut offset = 0;
        while offset + 2 * piece <= size as u64 {
            // The second of each pair first, as parallel FUSE reads may arrive.
            for at in [offset + piece, offset] {
                let got = r.read(at, piece).await.unwrap();
                assert_eq!(got, body.slice(at as usize..(at + piece) as usize));
            }
            offset += 2 * piece;
        }
        assert_eq!(r.window(), 32 * CHUNK, "still sequential");
        let gets = store.request_count(Op::Get);
        assert!(gets <= 80, "{gets} GETs");
    }

    #[tokio::test]
    async fn random_reads_of_an_object_bigger_than_a_quarter_of_the_cache_fetch_only_what_they_need(
    ) {
        let size = 256 * CHUNK as usize;
        // 16 MiB object, 2 MiB cache (no disk tier).
        let (store, mut r) = reader(size, 32 * CHUNK).await;
        let body = pattern(size, 1);
        for i in [200u64, 3, 150, 77, 12] {
            let got = r.read(i * CHUNK + 5, 100).await.unwrap();
            assert_eq!(
                got,
                body.slice((i * CHUNK + 5) as usize..(i * CHUNK + 105) as usize)
            );
        }
        // The first read at 200 is not at the expected offset 0, so no read-ahead at all.
        assert_eq!(r.window(), 0);
        assert_eq!(store.request_count(Op::Get), 5);
    }

    #[tokio::test]
    async fn random_reads_of_a_small_object_fetch_their_block_into_the_disk_tier() {
        // 64 MiB object (reads more than 16 MiB apart are random), a 1 GiB disk tier; blocks
        // of 4 chunks (the request size).
        let size = 1024 * CHUNK as usize;
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheConfig::default()
            .memory_bytes(1 << 30)
            .disk(Some(dir.path().to_path_buf()), 1 << 30);
        let (store, mut r) = reader_with(size, cache).await;
        let body = pattern(size, 1);
        let check = |got: Bytes, at: u64| {
            assert_eq!(got, body.slice(at as usize..at as usize + got.len()));
        };
        // Each first read of a block: its own chunk, and the chunks before and after it in the
        // block, in one request each.
        for chunk in [901u64, 502] {
            check(
                r.read(chunk * CHUNK + 7, 100).await.unwrap(),
                chunk * CHUNK + 7,
            );
            assert_eq!(r.window(), 0, "random, no read-ahead");
        }
        // (The background requests may not all be sent yet.)
        assert!(store.request_count(Op::Get) <= 6);
        // Later reads in those blocks: hits.
        for chunk in [903u64, 500, 900, 503, 902, 501] {
            check(
                r.read(chunk * CHUNK + 9, 4096).await.unwrap(),
                chunk * CHUNK + 9,
            );
        }
        assert_eq!(store.request_count(Op::Get), 6);
        // A read across chunks 99 and 100: those two for the read, 96..99 in the background.
        check(
            r.read(100 * CHUNK - 50, 100).await.unwrap(),
            100 * CHUNK - 50,
        );
        check(r.read(97 * CHUNK, 10).await.unwrap(), 97 * CHUNK);
        assert_eq!(store.request_count(Op::Get), 8);
    }

    /// A reader of a 64 MiB object with a 1 GiB disk tier, and the object's bytes.
    async fn random_reader() -> (
        tempfile::TempDir,
        Arc<InMemoryStore>,
        SequentialReader<InMemoryStore>,
        Bytes,
    ) {
        let size = 1024 * CHUNK as usize;
        let dir = tempfile::tempdir().unwrap();
        let cache = CacheConfig::default()
            .memory_bytes(1 << 30)
            .disk(Some(dir.path().to_path_buf()), 1 << 30);
        let (store, r) = reader_with(size, cache).await;
        (dir, store, r, pattern(size, 1))
    }

    /// `n` chunks, each 52 chunks before the one before it, and 2 chunks into its block of 4
    /// (the request size): each read of them is random, and no two share a block.
    fn far_apart(n: u32) -> impl Iterator<Item = u64> {
        (0..n as u64).map(|i| 1002 - 52 * i)
    }

    /// The cache's fetched bytes once they stop growing (nothing fetched for 300 ms).
    async fn fetched_when_settled(cache: &ChunkCache<InMemoryStore>) -> u64 {
        let fetched = || cache.stats().fetched_bytes.load(Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let before = fetched();
            tokio::time::sleep(Duration::from_millis(300)).await;
            if fetched() == before || std::time::Instant::now() > deadline {
                return fetched();
            }
        }
    }

    #[tokio::test]
    async fn a_reader_missing_all_over_a_small_object_fills_the_disk_tier_with_it() {
        let (_dir, store, mut r, body) = random_reader().await;
        for chunk in far_apart(FILL_AFTER_MISSES) {
            let at = chunk * CHUNK + 3;
            let got = r.read(at, 4096).await.unwrap();
            assert_eq!(got, body.slice(at as usize..at as usize + 4096));
            assert_eq!(r.window(), 0, "random, no read-ahead");
        }
        // Every chunk was fetched once, in requests of 4 chunks (the request size) but the
        // reads' own, and into the disk tier, not memory.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while r.cache().stats().fetched_bytes.load(Ordering::Relaxed) < body.len() as u64
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fetched = fetched_when_settled(r.cache()).await;
        assert_eq!(
            fetched,
            body.len() as u64,
            "the object is not cached whole after the reader's {FILL_AFTER_MISSES} misses"
        );
        let chunks = r.cache().chunk_count(r.object().size);
        assert!((0..chunks).all(|i| r.cache().holds(r.object(), i)));
        let gets = store.request_count(Op::Get);
        let misses = FILL_AFTER_MISSES as u64;
        assert!(gets <= 256 + 2 * misses, "{gets} GETs");
        assert!(r.cache().memory_used() <= misses * CHUNK);
        // And a read anywhere now needs no request.
        for chunk in [0u64, 333, 1023] {
            let at = chunk * CHUNK + 11;
            let got = r.read(at, 100).await.unwrap();
            assert_eq!(got, body.slice(at as usize..at as usize + 100));
        }
        assert_eq!(store.request_count(Op::Get), gets);
    }

    #[tokio::test]
    async fn a_reader_with_few_misses_fetches_only_their_blocks_and_a_dropped_one_stops_filling() {
        let (_dir, store, mut r, _body) = random_reader().await;
        let mut chunks = far_apart(FILL_AFTER_MISSES);
        for chunk in chunks.by_ref().take(FILL_AFTER_MISSES as usize - 1) {
            r.read(chunk * CHUNK, 4096).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Hits do not count: a random read (2 chunks back) in the block of that miss.
            r.read((chunk - 2) * CHUNK, 4096).await.unwrap();
            assert_eq!(r.window(), 0, "random");
        }
        assert_eq!(
            fetched_when_settled(r.cache()).await,
            (FILL_AFTER_MISSES as u64 - 1) * 4 * CHUNK,
            "one miss short of the fill: the misses' blocks of 4 chunks, no more"
        );
        // The next miss starts the fill; dropping the reader (closing the file) stops it.
        r.read(chunks.next().unwrap() * CHUNK, 4096).await.unwrap();
        let cache = r.cache().clone();
        drop(r);
        let fetched = fetched_when_settled(&cache).await;
        let gets = store.request_count(Op::Get);
        assert!(
            fetched < 64 * 4 * CHUNK,
            "the fill went on after the reader was dropped: {fetched} bytes in {gets} GETs"
        );
    }

    #[tokio::test]
    async fn a_big_object_read_sequentially_fills_the_disk_tier_from_its_second_read_on() {
        let size = (crate::cache::SCAN_RESISTANT_ABOVE + 16 * CHUNK) as usize;
        let dir = tempfile::tempdir().unwrap();
        // A memory tier too small to hold the object: the second read fetches it again.
        let cache = CacheConfig::default()
            .memory_bytes(8 << 20)
            .disk(Some(dir.path().to_path_buf()), 1 << 30);
        let (store, mut first) = reader_with(size, cache).await;
        let body = pattern(size, 1);
        async fn read_through(r: &mut SequentialReader<InMemoryStore>, body: &Bytes) {
            let mut offset = 0;
            while offset < body.len() as u64 {
                // Reads of 4 chunks: bursts of deliveries stay within the 16 disk writes
                // that may queue.
                let got = r.read(offset, 4 * CHUNK).await.unwrap();
                assert_eq!(
                    got,
                    body.slice(offset as usize..offset as usize + got.len())
                );
                offset += got.len() as u64;
                // Let the disk writes keep up (they are skipped when many queue up).
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let disk_used =
            |r: &SequentialReader<InMemoryStore>| r.cache().disk().unwrap().used_bytes();
        read_through(&mut first, &body).await;
        let after_first = disk_used(&first);
        assert!(
            after_first < size as u64 / 4,
            "a first read keeps what it reads ahead in memory only: {after_first} bytes on disk"
        );
        // Read again through another cache on the same tiers (the volume mounted again).
        let again = ChunkCache::with_tiers(
            store,
            first.cache().config().clone(),
            first.cache().tiers().clone(),
        );
        let mut second = SequentialReader::new(
            Arc::new(again),
            first.object().clone(),
            first.config.clone(),
        );
        read_through(&mut second, &body).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after_second = disk_used(&second);
        assert!(
            after_second > size as u64 / 2,
            "the second read fills the disk tier: {after_second} bytes on disk"
        );
        // Small objects are kept on disk from their first read.
        let small = ObjectVersion {
            key: "small".into(),
            etag: first.object().etag.clone(),
            size: crate::cache::SCAN_RESISTANT_ABOVE,
        };
        assert!(first.cache().keeps_on_disk_when_streamed(&small));
    }

    #[tokio::test]
    async fn an_initial_window_above_the_cap_does_not_panic() {
        let (_store, r) = reader(10 * CHUNK as usize, 2 * CHUNK).await;
        let mut r = SequentialReader::new(
            r.cache.clone(),
            r.object.clone(),
            ReadaheadConfig::default(),
        );
        assert_eq!(r.read(0, 10).await.unwrap().len(), 10);
        assert!(r.window() <= CHUNK);
    }

    #[tokio::test]
    async fn sequential_readers_share_the_read_ahead_budget() {
        let size = 64 * CHUNK as usize;
        // A quarter of 32 chunks: 8 chunks of read-ahead for all readers together.
        let (_store, mut first) = reader(size, 32 * CHUNK).await;
        let mut second = SequentialReader::new(
            first.cache.clone(),
            first.object.clone(),
            first.config.clone(),
        );
        let mut offset = 0;
        while offset < 16 * CHUNK {
            first.read(offset, CHUNK).await.unwrap();
            second.read(offset, CHUNK).await.unwrap();
            offset += CHUNK;
        }
        assert_eq!(first.cache.sequential_readers().load(Ordering::Relaxed), 2);
        assert!(first.window() <= 4 * CHUNK, "{}", first.window());
        assert!(second.window() <= 4 * CHUNK, "{}", second.window());
        drop(second);
        while offset < 32 * CHUNK {
            first.read(offset, CHUNK).await.unwrap();
            offset += CHUNK;
        }
        assert_eq!(first.window(), 8 * CHUNK, "alone again: the whole quarter");
        // A seek closes the window and uncounts the reader.
        first.read(0, 10).await.unwrap();
        assert_eq!(first.cache.sequential_readers().load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn the_window_is_bounded_by_the_memory_budget() {
        let size = 128 * CHUNK as usize;
        let (_store, mut r) = reader(size, 8 * CHUNK).await;
        let mut offset = 0;
        while offset < size as u64 {
            offset += r.read(offset, CHUNK).await.unwrap().len() as u64;
            assert!(r.window() <= 2 * CHUNK, "window {}", r.window());
            assert!(r.cache.memory_used() <= 8 * CHUNK);
        }
    }
}
