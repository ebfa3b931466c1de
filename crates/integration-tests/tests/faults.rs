//! Faults of the backend and of the local disk, through a real FUSE mount over the real Ceph
//! RGW: the mount talks to S3 through a fault-injecting TCP proxy ([`FaultProxy`]) that takes
//! the backend down, stalls it or slows it, mid-read and mid-write. What must hold (issue #7,
//! docs/RELIABILITY.md): a failing operation returns EIO within the configured timeouts instead
//! of hanging, no read ever returns wrong bytes, nothing written is lost, and the same mount
//! works again once the backend is back, without a remount.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use common::conformance::pattern;
use integration_tests::fault_proxy::{Fault, FaultProxy};
use integration_tests::{S3Env, TestMount};

/// Settings of the mounts under test: short timeouts and two attempts per request, so that a
/// dead backend is reported within about ten seconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest any failing call may take: two attempts of (connect + request) with backoff,
/// or the SDK's stalled-stream grace period (5 s) plus one attempt, with room for a busy
/// machine. A hang would blow far past it.
const FAIL_WITHIN: Duration = Duration::from_secs(20);

fn faulty_mount(tag: &str) -> Option<(TestMount, FaultProxy)> {
    let env = S3Env::from_env()?;
    // RUST_LOG=... shows what the mount does (captured per test unless --nocapture).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let proxy = FaultProxy::start(&env.endpoint);
    let client = S3Env {
        endpoint: proxy.endpoint(),
        ..env.clone()
    }
    .config()
    .timeouts(CONNECT_TIMEOUT, REQUEST_TIMEOUT)
    .max_attempts(2);
    let mount = TestMount::with_client(&env, client, tag, "vol", |c| c);
    Some((mount, proxy))
}

fn assert_eio_in_time<T: std::fmt::Debug>(
    what: &str,
    started: Instant,
    result: std::io::Result<T>,
) {
    let elapsed = started.elapsed();
    let err = result.expect_err(what);
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{what}: {err}");
    assert!(elapsed < FAIL_WITHIN, "{what} took {elapsed:?}");
    eprintln!("{what}: EIO after {elapsed:.1?}");
}

#[test]
fn a_backend_gone_mid_read_and_mid_write_is_eio_in_time_and_the_mount_recovers() {
    let Some((m, proxy)) = faulty_mount("fault-down") else {
        return;
    };
    let data = pattern(48 << 20, 5);
    m.put("vol/big", &data, &Default::default());

    // A writer is half-way through a file when the backend goes.
    let written = pattern(20 << 20, 6);
    let mut out = fs::File::create(m.path("written")).unwrap();
    out.write_all(&written[..4 << 20]).unwrap();

    // Mid-read: a reader streams the file while the backend goes away under it.
    let reader = {
        let path = m.path("big");
        std::thread::spawn(move || {
            let mut file = fs::File::open(path).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            let mut read = 0usize;
            let started = Instant::now();
            loop {
                match file.read(&mut buf) {
                    Ok(0) => return (Ok(read), started),
                    Ok(n) => read += n,
                    Err(e) => return (Err(e), started),
                }
                if read == 4 << 20 {
                    // Give the main thread the moment to pull the plug.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    proxy.set(Fault::Down);
    let (result, _) = reader.join().unwrap();
    let err = result.expect_err("a read past what was cached must fail while the backend is down");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");

    // A fresh open and read of an uncached range while down: EIO (from the open's HEAD or
    // from the read), in time.
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let result = fs::File::open(m.path("big")).and_then(|f| f.read_exact_at(&mut buf, 40 << 20));
    assert_eio_in_time("open and read while down", started, result);

    // Mid-write: the rest goes to the staging file; fsync must report that S3 does not have it.
    out.write_all(&written[4 << 20..]).unwrap();
    let started = Instant::now();
    assert_eio_in_time("fsync while down", started, out.sync_all());

    // Back again: the same mount, no remount.
    proxy.set(Fault::None);
    let mut again = Vec::new();
    fs::File::open(m.path("big"))
        .unwrap()
        .read_to_end(&mut again)
        .unwrap();
    assert!(
        again == data,
        "the whole file, byte for byte, after the backend came back"
    );
    out.sync_all()
        .expect("fsync succeeds once the backend is back");
    drop(out);
    assert!(
        m.object("vol/written") == written,
        "nothing written was lost"
    );
    // No multipart upload is left behind by the failed attempts.
    let pending = m
        .runtime
        .block_on(common::ObjectStore::list_multipart_uploads(
            m.store.as_ref(),
            "",
        ))
        .unwrap();
    assert!(pending.is_empty(), "{pending:?}");
}

#[test]
fn a_stalled_backend_times_out_and_a_slow_one_never_returns_wrong_bytes() {
    let Some((m, proxy)) = faulty_mount("fault-stall") else {
        return;
    };
    let data = pattern(6 << 20, 7);
    m.put("vol/f", &data, &Default::default());
    let mut file = fs::File::open(m.path("f")).unwrap();

    // Stalled: connections are accepted and then nothing moves.
    proxy.set(Fault::Stall);
    let mut buf = vec![0u8; 64 << 10];
    let started = Instant::now();
    assert_eio_in_time("read while stalled", started, file.read_exact(&mut buf));
    let started = Instant::now();
    assert_eio_in_time(
        "listing while stalled",
        started,
        fs::read_dir(m.path("")).and_then(|d| d.collect::<Result<Vec<_>, _>>()),
    );

    // Slow (2 MiB/s per connection): slower, never wrong.
    proxy.set(Fault::Slow(2 << 20));
    let mut got = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut got).unwrap();
    assert!(got == data, "a slow backend gave wrong bytes");
    let small = pattern(300 << 10, 8);
    fs::write(m.path("small"), &small).unwrap();
    proxy.set(Fault::None);
    assert!(m.object("vol/small") == small);
}

#[test]
fn an_upload_the_backend_rejects_is_eio_and_the_data_is_kept_for_recovery() {
    let Some((m, _proxy)) = faulty_mount("fault-reject") else {
        return;
    };
    let precious = pattern(1 << 20, 9);
    let mut file = fs::File::create(m.path("precious")).unwrap();
    file.write_all(&precious).unwrap();
    // The bucket is removed under the mount (an operator's mistake, a lifecycle job).
    let bucket = common::ObjectStore::bucket(m.store.as_ref()).to_string();
    let env = S3Env::from_env().unwrap();
    m.runtime.block_on(async {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&env.endpoint)
            .region(aws_sdk_s3::config::Region::new(env.region.clone()))
            .force_path_style(true)
            .credentials_provider(aws_credential_types::Credentials::new(
                &env.access_key,
                &env.secret_key,
                None,
                None,
                "test",
            ))
            .build();
        aws_sdk_s3::Client::from_conf(config)
            .delete_bucket()
            .bucket(&bucket)
            .send()
            .await
            .expect("delete the empty bucket");
    });
    let err = file
        .sync_all()
        .expect_err("fsync must fail: the bucket is gone");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    // The last close fails too, and the bytes move to the recovery folder. The kernel sends
    // that release after close(2) has returned, so wait for it.
    drop(file);
    let recovery = m.local.path().join("recovery");
    let deadline = Instant::now() + FAIL_WITHIN;
    let kept = loop {
        let kept: Vec<_> = fs::read_dir(&recovery)
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if !kept.is_empty() || Instant::now() > deadline {
            break kept;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(kept[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("vol%precious."));
    assert!(fs::read(&kept[0]).unwrap() == precious, "every byte kept");
}

/// A small tmpfs, unmounted when dropped: a disk that fills up.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn new(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "s3vol-test"])
            .arg(dir.path())
            .status()
            .expect("mount(8)");
        assert!(status.success(), "mounting a tmpfs needs root");
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_corrupted_or_deleted_disk_cache_is_never_served() {
    use s3_backend::cache::{CacheConfig, ChunkCache, ObjectVersion};
    let Some(env) = S3Env::from_env() else { return };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let disk = SmallDisk::new("4m");
    let chunks = disk.0.path().join("chunks");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let store = std::sync::Arc::new(runtime.block_on(env.new_bucket("fault-disk")));
    let data = pattern(16 << 20, 11);
    let put = runtime
        .block_on(common::ObjectStore::put(
            store.as_ref(),
            "obj",
            data.clone(),
            &Default::default(),
        ))
        .unwrap();
    let object = ObjectVersion {
        key: "obj".into(),
        etag: put.etag,
        size: data.len() as u64,
    };
    // A 4 MiB memory budget and a disk cap far above the 4 MiB the disk really has.
    let config = CacheConfig::default()
        .memory_bytes(4 << 20)
        .disk(Some(chunks.clone()), 1 << 30);
    let read_all = |cache: &std::sync::Arc<ChunkCache<s3_backend::S3Store>>| {
        runtime.block_on(async {
            let mut out = Vec::new();
            for offset in (0..object.size).step_by(1 << 20) {
                out.extend_from_slice(&cache.read(&object, offset, 1 << 20).await.unwrap());
            }
            out
        })
    };

    // Full: the cache fills the 4 MiB but a twentieth of it, then deletes chunks to cache new
    // ones; reads stay right.
    let free = || {
        let stat = nix::sys::statvfs::statvfs(disk.0.path()).unwrap();
        stat.blocks_available() as u64 * stat.fragment_size() as u64
    };
    let floor = (4 << 20) / 20;
    let cache = std::sync::Arc::new(ChunkCache::new(store.clone(), config.clone()).unwrap());
    assert!(read_all(&cache) == data);
    assert!(
        read_all(&cache) == data,
        "second pass, from memory, disk and S3"
    );
    let disk_tier = cache.disk().unwrap();
    assert!(disk_tier.given_way() > 0, "the disk was expected to fill");
    assert!(disk_tier.used_bytes() <= 4 << 20);
    assert!(free() >= floor, "{} bytes free", free());
    // Another program takes all but 8 KiB of what the cache left free: the cache gives way.
    fs::write(
        disk.0.path().join("other"),
        vec![1u8; (free() - (8 << 10)) as usize],
    )
    .unwrap();
    assert!(free() < floor);
    assert!(read_all(&cache) == data, "third pass, the disk nearly full");
    wait_for_background_writes(&chunks);
    // (A write may still find the disk full, rarely: a chunk deleted for room while a reader
    // has it open keeps its blocks until closed. It is counted and skipped.)
    assert!(free() >= floor, "{} bytes free", free());
    fs::remove_file(disk.0.path().join("other")).unwrap();

    // Corrupted: flip a byte in the data of every chunk file; a new cache (empty memory) on
    // the same folder must detect each one and read it from S3 again. The byte is flipped in
    // place: rewriting a whole file on the full tmpfs could find no free page (ENOSPC).
    // Chunks the third pass read again are written in the background: wait until no write is
    // under way (a `.tmp` file counted here would be deleted, not read, by the next cache).
    wait_for_background_writes(&chunks);
    drop(cache);
    // Chunk files are named `<hash>.<chunk index>`.
    let mut corrupted_chunks = Vec::new();
    for path in files_under(&chunks)
        .into_iter()
        .filter(|p| !is_being_written(p))
    {
        let index: u64 = path.extension().unwrap().to_str().unwrap().parse().unwrap();
        corrupted_chunks.push(index);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let last = file.metadata().unwrap().len() - 1;
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, last).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], last).unwrap();
    }
    assert!(!corrupted_chunks.is_empty(), "chunks were cached on disk");
    let cache = std::sync::Arc::new(ChunkCache::new(store.clone(), config.clone()).unwrap());
    // The corrupted chunks first: other chunks written to the small disk before them could
    // take their room (the cache deletes chunks to keep a twentieth of the disk free).
    for &index in &corrupted_chunks {
        let offset = index << 20;
        let chunk = runtime
            .block_on(cache.read(&object, offset, 1 << 20))
            .unwrap();
        assert!(
            chunk[..] == data[offset as usize..][..chunk.len()],
            "corrupted chunk {index} was served"
        );
    }
    assert_eq!(
        cache.disk().unwrap().corrupt_dropped(),
        corrupted_chunks.len() as u64
    );
    assert!(read_all(&cache) == data, "a corrupted chunk was served");

    // Deleted while in use: misses, not errors. The chunks just read again are written to
    // the disk tier in the background, so files may appear while the folder is removed.
    for attempt in 1.. {
        match fs::remove_dir_all(&chunks) {
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempt < 100 => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            result => {
                result.unwrap();
                break;
            }
        }
    }
    assert!(read_all(&cache) == data);
    let cache = std::sync::Arc::new(ChunkCache::new(store, config).unwrap());
    assert!(read_all(&cache) == data);
}

#[test]
fn a_write_that_finds_the_disk_full_gets_room_from_the_cache_or_enospc() {
    use s3_backend::cache::CacheConfig;
    let Some(env) = S3Env::from_env() else { return };
    // Staging files and cached chunks share one 64 MiB disk; the cache's cap is far above it.
    let disk = SmallDisk::new("64m");
    let chunks = disk.0.path().join("chunks");
    let mount = TestMount::new(&env, "fault-room", "vol", |mut config| {
        config.staging_dir = disk.0.path().join("staging");
        config.cache(
            CacheConfig::default()
                .memory_bytes(8 << 20)
                .disk(Some(chunks.clone()), 1 << 30),
        )
    });
    let bytes_under = |dir: &std::path::Path| -> u64 {
        files_under(dir)
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    };
    // Reading 48 MiB fills the disk tier.
    let cached = pattern(48 << 20, 5);
    mount.put("vol/cached", &cached, &Default::default());
    assert!(fs::read(mount.path("cached")).unwrap() == cached);
    wait_for_background_writes(&chunks);
    let cached_bytes = bytes_under(&chunks);
    assert!(cached_bytes >= 24 << 20, "{cached_bytes} bytes cached");

    // A 56 MiB file does not fit beside them: the cache gives way to it.
    let written = pattern(56 << 20, 6);
    fs::write(mount.path("written"), &written).unwrap();
    assert!(mount.object("vol/written") == written);
    assert!(bytes_under(&chunks) < cached_bytes);

    // With nothing left to give, a write past the disk's end is ENOSPC (not EIO), and what
    // was written before it stays readable.
    let path = mount.path("too-big");
    let mut file = fs::File::create(&path).unwrap();
    let piece = pattern(1 << 20, 7);
    let error = (0..80)
        .find_map(|_| file.write_all(&piece).err())
        .expect("80 MiB fit on a 64 MiB disk");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    let mut first = vec![0u8; 1 << 20];
    fs::File::open(&path)
        .unwrap()
        .read_exact(&mut first)
        .unwrap();
    assert!(first == piece);
    // Removed while open: its bytes are not uploaded at the close.
    fs::remove_file(&path).unwrap();
    drop(file);
    drop(mount);
}

fn is_being_written(path: &std::path::Path) -> bool {
    path.extension().is_some_and(|e| e == "tmp")
}

/// Wait until the disk tier in `chunks` writes nothing more: no file being written, and the
/// same files twice in a row.
fn wait_for_background_writes(chunks: &std::path::Path) {
    let mut last = Vec::new();
    for _ in 0..100 {
        let mut now = files_under(chunks);
        now.sort();
        if now == last && !now.iter().any(|p| is_being_written(p)) {
            return;
        }
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}
