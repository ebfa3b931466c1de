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
