//! Data-path benchmark against a real S3 server (the local Ceph RGW in `scripts/bench-store`).
//!
//! Measures, in one run and with the same object, the plain S3 baseline next to s3vol's path:
//! - sequential read: one plain GET of the whole object vs the chunk cache with read-ahead
//!   (cold, reading in 128 KiB pieces as FUSE does);
//! - warm re-read: from the memory tier, and from the disk tier with a memory budget smaller
//!   than the object;
//! - upload: one plain PUT of the whole object vs the streaming multipart uploader;
//! - peak RSS growth during the reads, against the configured memory budget.
//!
//! Repeats each measurement and prints medians and ratios as a Markdown table.
//! Usage: `bench-store [SIZE_MIB] [REPEATS]` with `S3_TEST_*` set (see integration-tests docs).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{ObjectStore, UserMetadata};
use futures::TryStreamExt;
use integration_tests::S3Env;
use s3_backend::cache::{CacheConfig, ChunkCache, ObjectVersion};
use s3_backend::readahead::{ReadaheadConfig, SequentialReader};
use s3_backend::upload::{StreamingUpload, UploadConfig};
use s3_backend::S3Store;

const MIB: u64 = 1 << 20;
const READ_SIZE: u64 = 128 * 1024;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Samples RSS every 5 ms until dropped; reports the peak.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start() -> Self {
        let peak = Arc::new(AtomicU64::new(rss_bytes()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            peak,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

fn piece(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i).wrapping_mul(2_654_435_761) >> 7) as u8)
        .collect()
}

fn mib_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

async fn plain_get(store: &S3Store, key: &str, size: u64) -> f64 {
    let start = Instant::now();
    let mut stream = store.get_stream(key, 0..size, None).await.unwrap();
    let mut n = 0u64;
    while let Some(b) = stream.try_next().await.unwrap() {
        n += b.len() as u64;
    }
    assert_eq!(n, size);
    mib_s(size, start.elapsed())
}

async fn read_through(reader: &mut SequentialReader<S3Store>, size: u64) -> f64 {
    // Copy into a buffer as a FUSE reply does, so cached reads are not just slice clones.
    let mut user_buffer = vec![0u8; READ_SIZE as usize];
    let start = Instant::now();
    let mut offset = 0;
    while offset < size {
        let got = reader.read(offset, READ_SIZE).await.unwrap();
        assert!(!got.is_empty());
        user_buffer[..got.len()].copy_from_slice(&got);
        offset += got.len() as u64;
    }
    mib_s(size, start.elapsed())
}

fn new_reader(
    cache: &Arc<ChunkCache<S3Store>>,
    object: &ObjectVersion,
) -> SequentialReader<S3Store> {
    SequentialReader::new(cache.clone(), object.clone(), ReadaheadConfig::default())
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size_mib: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(512);
    let repeats: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let size = size_mib * MIB;
    let env = S3Env::from_env().expect("set S3_TEST_* (scripts/bench-store does)");
    let store = Arc::new(env.new_bucket("bench").await);
    let key = "bench/object.bin";

    // The object, written by the streaming uploader from generated data.
    let mut up = StreamingUpload::new(
        store.clone(),
        key,
        UserMetadata::new(),
        UploadConfig::default(),
    );
    let mut offset = 0;
    while offset < size {
        let len = (size - offset).min(MIB) as usize;
        up.write(&piece(offset, len)).await.unwrap();
        offset += len as u64;
    }
    up.finish().await.unwrap();
    let head = store.head(key).await.unwrap();
    let object = ObjectVersion {
        key: key.into(),
        etag: head.etag.clone(),
        size,
    };

    let budget = 256 * MIB;
    let (mut get, mut cold, mut warm_mem, mut warm_disk) = (vec![], vec![], vec![], vec![]);
    let mut peak_growth = 0u64;
    for _ in 0..repeats {
        get.push(plain_get(&store, key, size).await);

        // Cold read through the cache with read-ahead, memory budget 256 MiB.
        let base = rss_bytes();
        let sampler = RssSampler::start();
        let cache = Arc::new(
            ChunkCache::new(store.clone(), CacheConfig::default().memory_bytes(budget)).unwrap(),
        );
        cold.push(read_through(&mut new_reader(&cache, &object), size).await);
        drop(cache);
        peak_growth = peak_growth.max(sampler.finish().saturating_sub(base));

        // Warm from memory: a budget that holds the whole object; first pass fills it.
        let big = Arc::new(
            ChunkCache::new(store.clone(), CacheConfig::default().memory_bytes(size * 2)).unwrap(),
        );
        read_through(&mut new_reader(&big, &object), size).await;
        warm_mem.push(read_through(&mut new_reader(&big, &object), size).await);
        drop(big);

        // Warm from disk: budget 256 MiB in memory, the object in the disk tier.
        let dir = tempfile::tempdir().unwrap();
        let config = CacheConfig::default()
            .memory_bytes(budget)
            .disk(Some(dir.path().into()), 2 * size);
        // The first sequential read of a big object keeps it in memory only (scan resistance),
        // and disk writes are skipped while too many are queued: fill it in a few passes.
        let filling = Arc::new(ChunkCache::new(store.clone(), config.clone()).unwrap());
        for _ in 0..6 {
            read_through(&mut new_reader(&filling, &object), size).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            if filling.disk().unwrap().used_bytes() >= size {
                break;
            }
        }
        drop(filling);
        let cache = Arc::new(ChunkCache::new(store.clone(), config).unwrap());
        warm_disk.push(read_through(&mut new_reader(&cache, &object), size).await);
        assert_eq!(
            cache.stats().requests.load(Ordering::Relaxed),
            0,
            "warm disk read went to S3"
        );
    }

    let body: Bytes = piece(0, size as usize).into();
    let (mut put, mut upload) = (vec![], vec![]);
    for i in 0..repeats {
        let start = Instant::now();
        store
            .put(
                &format!("bench/put-{i}"),
                body.clone(),
                &UserMetadata::new(),
            )
            .await
            .unwrap();
        put.push(mib_s(size, start.elapsed()));
        store.delete(&format!("bench/put-{i}")).await.unwrap();

        let start = Instant::now();
        let mut up = StreamingUpload::new(
            store.clone(),
            format!("bench/up-{i}"),
            UserMetadata::new(),
            UploadConfig::default(),
        );
        for chunk in body.chunks(READ_SIZE as usize) {
            up.write(chunk).await.unwrap();
        }
        up.finish().await.unwrap();
        upload.push(mib_s(size, start.elapsed()));
        store.delete(&format!("bench/up-{i}")).await.unwrap();
    }

    let (get, cold, warm_mem, warm_disk, put, upload) = (
        median(get),
        median(cold),
        median(warm_mem),
        median(warm_disk),
        median(put),
        median(upload),
    );
    println!(
        "object {size_mib} MiB, {repeats} repetitions, medians; reads in {} KiB pieces\n",
        READ_SIZE / 1024
    );
    println!("| measurement | MiB/s | ratio to baseline |");
    println!("| --- | ---: | ---: |");
    println!("| plain GET (baseline for reads) | {get:.0} | 1.00 |");
    println!(
        "| cold sequential read, chunk cache + read-ahead | {cold:.0} | {:.2} |",
        cold / get
    );
    println!(
        "| warm re-read from memory | {warm_mem:.0} | {:.2} |",
        warm_mem / get
    );
    println!(
        "| warm re-read from disk tier | {warm_disk:.0} | {:.2} |",
        warm_disk / get
    );
    println!("| plain PUT (baseline for writes) | {put:.0} | 1.00 |");
    println!(
        "| streaming multipart upload (8 MiB parts, 4 in flight) | {upload:.0} | {:.2} |",
        upload / put
    );
    println!(
        "\npeak RSS growth during the cold read: {} MiB (memory budget {} MiB)",
        peak_growth / MIB,
        budget / MIB
    );
}
