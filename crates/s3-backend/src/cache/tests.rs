use std::sync::Arc;

use common::conformance::pattern;
use common::failure::FailureStore;
use common::memory::{InMemoryStore, Op};
use common::{ErrorKind, ObjectStore, UserMetadata};
use proptest::prelude::*;

use super::*;

const CHUNK: u64 = 64 * 1024;

async fn object(store: &impl ObjectStore, key: &str, size: usize, seed: u8) -> ObjectVersion {
    let put = store
        .put(key, pattern(size, seed), &UserMetadata::new())
        .await
        .unwrap();
    ObjectVersion {
        key: key.into(),
        etag: put.etag,
        size: size as u64,
    }
}

fn cache<S: ObjectStore>(store: Arc<S>, config: CacheConfig) -> Arc<ChunkCache<S>> {
    Arc::new(ChunkCache::new(store, config).unwrap())
}

fn small_chunks() -> CacheConfig {
    CacheConfig::default()
        .chunk_size(CHUNK)
        .memory_bytes(64 << 20)
}

#[tokio::test]
async fn concurrent_misses_for_one_chunk_make_one_request() {
    let store = Arc::new(InMemoryStore::new("b"));
    let obj = object(&*store, "f", 3 * CHUNK as usize, 1).await;
    let cache = cache(store.clone(), small_chunks());
    let readers: Vec<_> = (0..32)
        .map(|_| {
            let (cache, obj) = (cache.clone(), obj.clone());
            tokio::spawn(async move { cache.read(&obj, 10, 100).await.unwrap() })
        })
        .collect();
    for r in readers {
        assert_eq!(
            r.await.unwrap(),
            pattern(3 * CHUNK as usize, 1).slice(10..110)
        );
    }
    assert_eq!(store.request_count(Op::Get), 1);
    // A second round is served from memory.
    cache.read(&obj, 0, CHUNK).await.unwrap();
    assert_eq!(store.request_count(Op::Get), 1);
}

#[tokio::test]
async fn a_read_across_chunks_is_one_request() {
    let store = Arc::new(InMemoryStore::new("b"));
    let obj = object(&*store, "f", 10 * CHUNK as usize, 2).await;
    let cache = cache(store.clone(), small_chunks());
    let got = cache.read(&obj, CHUNK / 2, 5 * CHUNK).await.unwrap();
    assert_eq!(
        got,
        pattern(10 * CHUNK as usize, 2)
            .slice((CHUNK / 2) as usize..(CHUNK / 2 + 5 * CHUNK) as usize)
    );
    assert_eq!(store.request_count(Op::Get), 1);
    assert_eq!(cache.stats().fetched_chunks.load(Ordering::Relaxed), 6);
}

#[tokio::test]
async fn a_changed_object_is_never_served_from_old_chunks() {
    let store = Arc::new(InMemoryStore::new("b"));
    let v1 = object(&*store, "f", 1000, 3).await;
    let cache = cache(store.clone(), small_chunks());
    assert_eq!(cache.read(&v1, 0, 1000).await.unwrap(), pattern(1000, 3));
    let v2 = object(&*store, "f", 1000, 4).await;
    assert_eq!(cache.read(&v2, 0, 1000).await.unwrap(), pattern(1000, 4));
    // Chunks of v1 not cached yet can no longer be read: the store refuses the old ETag.
    let v1_far = ObjectVersion {
        size: 10 * CHUNK,
        ..v1.clone()
    };
    let err = cache.read(&v1_far, 5 * CHUNK, 10).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::PreconditionFailed);
}

#[tokio::test]
async fn memory_stays_within_the_budget() {
    let store = Arc::new(InMemoryStore::new("b"));
    let obj = object(&*store, "f", 200 * CHUNK as usize, 5).await;
    let budget = 16 * CHUNK;
    let tier = small_chunks().memory_bytes(budget).memory_tier_bytes();
    let cache = cache(store.clone(), small_chunks().memory_bytes(budget));
    for i in 0..200 {
        cache.read(&obj, i * CHUNK, CHUNK).await.unwrap();
        assert!(
            cache.memory_used() <= tier,
            "{} > {tier}",
            cache.memory_used()
        );
    }
    assert!(
        cache.memory_used() > tier * 3 / 4,
        "{}",
        cache.memory_used()
    );
}

#[tokio::test]
async fn caches_sharing_tiers_stay_within_one_budget_and_keep_apart() {
    // Two volumes (two stores, same bucket name and key) on one set of tiers, as in the plugin.
    let budget = 16 * CHUNK;
    let config = small_chunks().memory_bytes(budget);
    let tiers = Arc::new(CacheTiers::new(&config).unwrap());
    let (store_a, store_b) = (
        Arc::new(InMemoryStore::new("b")),
        Arc::new(InMemoryStore::new("b")),
    );
    let obj_a = object(&*store_a, "f", 100 * CHUNK as usize, 1).await;
    let obj_b = object(&*store_b, "f", 100 * CHUNK as usize, 2).await;
    let a = Arc::new(ChunkCache::with_tiers(
        store_a.clone(),
        config.clone(),
        tiers.clone(),
    ));
    let b = Arc::new(ChunkCache::with_tiers(
        store_b.clone(),
        config.clone(),
        tiers.clone(),
    ));
    for i in 0..100 {
        let (got_a, got_b) = (
            a.read(&obj_a, i * CHUNK, CHUNK).await.unwrap(),
            b.read(&obj_b, i * CHUNK, CHUNK).await.unwrap(),
        );
        // Different content has different ETags: neither cache serves the other's chunks.
        assert_eq!(
            got_a,
            pattern(100 * CHUNK as usize, 1)
                .slice((i * CHUNK) as usize..((i + 1) * CHUNK) as usize)
        );
        assert_eq!(
            got_b,
            pattern(100 * CHUNK as usize, 2)
                .slice((i * CHUNK) as usize..((i + 1) * CHUNK) as usize)
        );
        assert!(
            tiers.memory_used() <= config.memory_tier_bytes(),
            "{} > the shared budget",
            tiers.memory_used()
        );
    }
    assert_eq!(a.memory_used(), b.memory_used(), "one memory tier for both");
    assert!(tiers.memory_used() > config.memory_tier_bytes() * 3 / 4);
}

#[tokio::test]
async fn shared_tiers_keep_endpoints_and_chunk_sizes_apart() {
    let tiers = Arc::new(CacheTiers::new(&small_chunks()).unwrap());
    // Same bucket, key and ETag (same bytes) on two endpoints; then another chunk size.
    let (one, two) = (
        Arc::new(InMemoryStore::new("b")),
        Arc::new(InMemoryStore::new("b")),
    );
    let obj = object(&*one, "f", 4 * CHUNK as usize, 3).await;
    assert_eq!(object(&*two, "f", 4 * CHUNK as usize, 3).await, obj);
    let on = |store: &Arc<InMemoryStore>, endpoint: &str, chunk: u64| {
        let config = small_chunks().endpoint_id(endpoint).chunk_size(chunk);
        Arc::new(ChunkCache::with_tiers(store.clone(), config, tiers.clone()))
    };
    on(&one, "http://one", CHUNK)
        .read(&obj, 0, 4 * CHUNK)
        .await
        .unwrap();
    let before = two.request_count(Op::Get);
    on(&two, "http://two", CHUNK)
        .read(&obj, 0, 4 * CHUNK)
        .await
        .unwrap();
    assert!(
        two.request_count(Op::Get) > before,
        "the second endpoint's chunks come from it"
    );
    // Half-size chunks of the same object: right bytes, not the bigger chunks' ranges.
    let half = on(&one, "http://one", CHUNK / 2);
    assert_eq!(
        half.read(&obj, CHUNK / 2, CHUNK).await.unwrap(),
        pattern(4 * CHUNK as usize, 3).slice((CHUNK / 2) as usize..(3 * CHUNK / 2) as usize)
    );
}

#[tokio::test]
async fn a_cache_without_a_disk_folder_shares_the_memory_tier_and_keeps_off_the_disk() {
    // The plugin's `cache=off` volume next to a cached one, on the same tiers.
    let dir = tempfile::tempdir().unwrap();
    let with_disk = small_chunks().disk(Some(dir.path().into()), 1 << 30);
    let tiers = Arc::new(CacheTiers::new(&with_disk).unwrap());
    let store = Arc::new(InMemoryStore::new("b"));
    let obj = object(&*store, "f", 64 * CHUNK as usize, 4).await;
    let uncached = Arc::new(ChunkCache::with_tiers(
        store.clone(),
        small_chunks(),
        tiers.clone(),
    ));
    assert!(uncached.disk().is_none());
    // Sequential, then random reads (enough misses to start a fill of the disk tier).
    uncached.read(&obj, 0, 32 * CHUNK).await.unwrap();
    for i in [
        60, 40, 50, 35, 45, 55, 33, 63, 38, 58, 42, 48, 52, 36, 61, 44, 57, 34,
    ] {
        assert_eq!(
            uncached.read(&obj, i * CHUNK + 7, 100).await.unwrap(),
            pattern(64 * CHUNK as usize, 4)
                .slice((i * CHUNK + 7) as usize..(i * CHUNK + 107) as usize)
        );
    }
    assert!(
        tiers.memory_used() > 0,
        "its chunks are in the shared memory tier"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        tiers.disk().unwrap().used_bytes(),
        0,
        "nothing of it on disk"
    );
    // A cache with the disk folder, on the same tiers, does use the disk.
    let cached = Arc::new(ChunkCache::with_tiers(
        store.clone(),
        with_disk,
        tiers.clone(),
    ));
    let other = object(&*store, "g", 8 * CHUNK as usize, 5).await;
    cached.read(&other, 0, 8 * CHUNK).await.unwrap();
    for _ in 0..100 {
        if tiers.disk().unwrap().used_bytes() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(tiers.disk().unwrap().used_bytes() > 0);
    // A big object streamed through the cache without a disk is not thereby read once
    // before for the one with a disk: its first streamed read still keeps off the disk.
    let big = ObjectVersion {
        size: SCAN_RESISTANT_ABOVE + 1,
        ..obj.clone()
    };
    for _ in 0..2 {
        assert!(!uncached.keeps_on_disk_when_streamed(&big));
    }
    assert!(!cached.keeps_on_disk_when_streamed(&big), "its first read");
    assert!(cached.keeps_on_disk_when_streamed(&big), "its second read");
}

#[tokio::test]
async fn the_disk_tier_serves_a_new_cache_without_requests() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new("b"));
    let obj = object(&*store, "f", 8 * CHUNK as usize, 6).await;
    let config = small_chunks().disk(Some(dir.path().into()), 1 << 30);
    let first = cache(store.clone(), config.clone());
    first.read(&obj, 0, 8 * CHUNK).await.unwrap();
    let requests = store.request_count(Op::Get);
    // Disk writes happen in the background: wait until they are all there.
    for _ in 0..100 {
        if first.disk().unwrap().used_bytes() >= 8 * CHUNK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(first);
    let second = cache(store.clone(), config);
    assert_eq!(
        second.read(&obj, 0, 8 * CHUNK).await.unwrap(),
        pattern(8 * CHUNK as usize, 6)
    );
    assert_eq!(store.request_count(Op::Get), requests);
    assert_eq!(second.stats().disk_hits.load(Ordering::Relaxed), 8);
}

#[tokio::test]
async fn a_small_read_of_a_chunk_only_on_disk_reads_its_blocks_and_leaves_memory_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new("b"));
    // Chunks of 256 KiB: four blocks of the disk tier each.
    let chunk = 4 * CHUNK;
    let obj = object(&*store, "f", 2 * chunk as usize, 9).await;
    let config = small_chunks()
        .chunk_size(chunk)
        .disk(Some(dir.path().into()), 1 << 30);
    let first = cache(store.clone(), config.clone());
    first.read(&obj, 0, 2 * chunk).await.unwrap();
    for _ in 0..100 {
        if first.disk().unwrap().used_bytes() >= 2 * chunk {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(first);
    let second = cache(store.clone(), config);
    let requests = store.request_count(Op::Get);
    let body = pattern(2 * chunk as usize, 9);
    for (offset, len) in [(chunk + 5, 4096), (100, 200_000), (2 * chunk - 10, 10)] {
        let got = second.read(&obj, offset, len).await.unwrap();
        assert_eq!(got, body.slice(offset as usize..(offset + len) as usize));
        let now = second.read_now(&obj, offset, len);
        assert_eq!(now, Some(got), "the same part, read at once");
    }
    assert_eq!(store.request_count(Op::Get), requests);
    assert_eq!(second.stats().disk_hits.load(Ordering::Relaxed), 6);
    assert_eq!(
        second.read_now(&obj, 0, chunk),
        None,
        "a whole chunk goes to memory"
    );
    assert_eq!(second.memory_used(), 0, "parts were kept in memory");
    // A read of a whole chunk loads it into memory, as before.
    second.read(&obj, 0, chunk).await.unwrap();
    assert_eq!(second.memory_used(), chunk);
}

#[tokio::test]
async fn reads_of_chunks_in_memory_are_answered_at_once_and_others_are_left_to_read() {
    let store = Arc::new(InMemoryStore::new("b"));
    let size = 5 * CHUNK as usize + 100;
    let obj = object(&*store, "f", size, 8).await;
    let cache = cache(store.clone(), small_chunks());
    assert_eq!(cache.read_now(&obj, 0, 10), None, "nothing read yet");
    cache.read(&obj, 0, 3 * CHUNK).await.unwrap();
    let body = pattern(size, 8);
    let spans = [
        (0, 10),
        (CHUNK - 5, 10),
        (10, 3 * CHUNK - 10),
        (2 * CHUNK, CHUNK),
    ];
    for (offset, len) in spans {
        let now = cache.read_now(&obj, offset, len);
        assert_eq!(
            now,
            Some(body.slice(offset as usize..(offset + len) as usize))
        );
    }
    let hits = cache.stats().memory_hits.load(Ordering::Relaxed);
    // A chunk not read yet, in part or among others; past the end; nothing counted for them.
    for (offset, len) in [(3 * CHUNK, 10), (2 * CHUNK, 2 * CHUNK), (size as u64, 10)] {
        assert_eq!(cache.read_now(&obj, offset, len), None);
    }
    assert_eq!(cache.stats().memory_hits.load(Ordering::Relaxed), hits);
    assert_eq!(store.request_count(Op::Get), 1);
    // The last chunk, of 100 bytes: a read past its end gets what there is.
    cache.read(&obj, 5 * CHUNK, 100).await.unwrap();
    let tail = cache.read_now(&obj, 5 * CHUNK + 10, 200);
    assert_eq!(tail, Some(body.slice(size - 90..)));
}

#[tokio::test]
async fn a_failed_fetch_is_reported_and_the_next_read_retries() {
    let store = Arc::new(FailureStore::new(InMemoryStore::new("b")));
    let obj = object(&*store, "f", 4 * CHUNK as usize, 7).await;
    let cache = cache(store.clone(), small_chunks());
    store.fail_next(Op::Get, ErrorKind::Network, 1);
    let err = cache.read(&obj, 0, 2 * CHUNK).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Network);
    assert_eq!(
        cache.read(&obj, 0, 2 * CHUNK).await.unwrap(),
        pattern(4 * CHUNK as usize, 7).slice(..2 * CHUNK as usize)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn proptest_reads_match_the_object(size in 0usize..300_000, reads in prop::collection::vec((0u64..320_000, 0u64..200_000), 1..12)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let store = Arc::new(InMemoryStore::new("b"));
            let obj = object(&*store, "f", size, 9).await;
            let cache = cache(store, CacheConfig::default().chunk_size(4096 * 4).memory_bytes(1 << 16));
            let body = pattern(size, 9);
            for (offset, len) in reads {
                let got = cache.read(&obj, offset, len).await.unwrap();
                let from = (offset as usize).min(size);
                let to = (offset.saturating_add(len) as usize).min(size);
                let want = body.slice(from..to.max(from));
                // What the memory tier still holds answers the same read at once.
                if let Some(now) = cache.read_now(&obj, offset, len) {
                    prop_assert_eq!(&now, &want);
                }
                prop_assert_eq!(got, want);
            }
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_disk_cap_of_zero_turns_the_disk_tier_off() {
    let store = Arc::new(InMemoryStore::new("b"));
    let dir = tempfile::tempdir().unwrap();
    let o = object(store.as_ref(), "k", 3 * CHUNK as usize, 4).await;
    // Chunks an earlier cap kept.
    let before = cache(
        store.clone(),
        small_chunks().disk(Some(dir.path().to_path_buf()), 1 << 30),
    );
    before.disk().unwrap().put(&before.key_of(&o, 0), b"chunk");
    assert!(before.disk().unwrap().used_bytes() > 0);
    drop(before);
    let c = cache(
        store.clone(),
        small_chunks().disk(Some(dir.path().to_path_buf()), 0),
    );
    assert!(c.disk().is_none());
    assert_eq!(
        c.read(&o, 0, o.size).await.unwrap(),
        pattern(o.size as usize, 4)
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "the old chunks are gone, and nothing was written"
    );
}

/// Chunks are kept under their version's ETag: a reader that had the ETag with a stale,
/// smaller size fetched the last chunk short, and a reader with the right size must not be
/// given that short chunk (its read would end early, or the bytes after shift).
#[tokio::test]
async fn a_chunk_fetched_short_for_a_stale_size_is_not_served_whole() {
    let store = Arc::new(InMemoryStore::new("b"));
    let size = 2 * CHUNK as usize;
    let obj = object(&*store, "f", size, 4).await;
    let cache = cache(store.clone(), small_chunks());
    let stale = ObjectVersion {
        size: CHUNK + 100,
        ..obj.clone()
    };
    assert_eq!(cache.read(&stale, CHUNK, CHUNK).await.unwrap().len(), 100);
    let whole = pattern(size, 4);
    assert_eq!(
        cache.read(&obj, CHUNK, CHUNK).await.unwrap(),
        whole.slice(CHUNK as usize..)
    );
    assert_eq!(cache.read(&obj, 0, size as u64).await.unwrap(), whole);
}
