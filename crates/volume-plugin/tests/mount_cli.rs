//! `s3vol mount` as users run it, against the real Ceph RGW: background start that returns once
//! the mount is ready, one-line errors with a non-zero exit for what users get wrong, and a
//! clean unmount on SIGTERM.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fuse_mount::is_mounted;
use integration_tests::S3Env;

const S3VOL: &str = env!("CARGO_BIN_EXE_s3vol");

fn s3vol(env: &S3Env, args: &[&str], cache: &Path) -> Command {
    s3vol_at(&env.endpoint, env, args, cache)
}

fn s3vol_at(endpoint: &str, env: &S3Env, args: &[&str], cache: &Path) -> Command {
    let mut cmd = Command::new(S3VOL);
    cmd.arg("mount")
        .args(args)
        .arg("--endpoint-url")
        .arg(endpoint)
        .arg("--cache")
        .arg(cache)
        .env("AWS_ACCESS_KEY_ID", &env.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
        .env_remove("AWS_PROFILE");
    cmd
}

/// A mount process of this test, killed (by its pid) if the test fails before it ends it,
/// and its mount then detached: a killed FUSE daemon leaves a dead mount behind otherwise.
struct MountProcess {
    child: std::process::Child,
    mountpoint: std::path::PathBuf,
}

impl MountProcess {
    fn id(&self) -> u32 {
        self.child.id()
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().unwrap()
    }
}

impl Drop for MountProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if is_mounted(&self.mountpoint) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}

/// `s3vol mount BUCKET MNT --foreground EXTRA...` as a child of the test, once it is mounted.
fn mount_foreground(
    env: &S3Env,
    bucket: &str,
    mnt: &Path,
    cache: &Path,
    extra: &[&str],
) -> MountProcess {
    let mut args = vec![bucket, mnt.to_str().unwrap(), "--foreground"];
    args.extend(extra);
    let child = s3vol(env, &args, cache)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = MountProcess {
        child,
        mountpoint: mnt.to_path_buf(),
    };
    wait_until("mounted", || is_mounted(mnt));
    child
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// stderr of a failed run: exactly one line, which must contain `hint`.
fn assert_one_line_error(out: &Output, hint: &str) {
    assert!(!out.status.success(), "expected failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line, got: {stderr}"
    );
    assert!(
        stderr.starts_with("s3vol: ") && stderr.contains(hint),
        "{stderr}"
    );
}

fn bucket(env: &S3Env, tag: &str) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(env.new_bucket(tag));
    common::ObjectStore::bucket(&store).to_string()
}

#[test]
fn background_mount_is_ready_when_the_command_returns_and_umount_ends_it() {
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-bg");
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = s3vol(
        &env,
        &[&format!("{bucket}/team"), mnt.path().to_str().unwrap()],
        cache.path(),
    )
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(mnt.path()), "mounted once the command returned");
    std::fs::write(mnt.path().join("f.txt"), b"via cli").unwrap();
    assert_eq!(std::fs::read(mnt.path().join("f.txt")).unwrap(), b"via cli");
    // A second mount on the busy mountpoint is refused with the reason.
    let busy = s3vol(&env, &[&bucket, mnt.path().to_str().unwrap()], cache.path())
        .output()
        .unwrap();
    assert_one_line_error(&busy, "busy");
    // So is a second mount of the same bucket and prefix elsewhere with the same --cache:
    // it would take the first one's staging files and uploads for a crash's leftovers.
    let elsewhere = tempfile::tempdir().unwrap();
    let shared = s3vol(
        &env,
        &[
            &format!("{bucket}/team"),
            elsewhere.path().to_str().unwrap(),
        ],
        cache.path(),
    )
    .output()
    .unwrap();
    assert_one_line_error(&shared, "give this mount its own --cache");
    assert!(!is_mounted(elsewhere.path()));
    let status = Command::new("umount").arg(mnt.path()).status().unwrap();
    assert!(status.success());
    wait_until("the mount is gone", || !is_mounted(mnt.path()));
    let log = std::fs::read_to_string(cache.path().join("s3vol-mount.log")).unwrap();
    assert!(log.contains("mounted"), "{log}");
}

#[test]
fn sigterm_unmounts_cleanly_and_keeps_every_written_file() {
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-term");
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut child = mount_foreground(&env, &bucket, mnt.path(), cache.path(), &[]);
    for i in 0..20 {
        std::fs::write(mnt.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    send_signal(child.id(), "TERM");
    let status = child.wait();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(mnt.path()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    for i in 0..20 {
        let got = rt
            .block_on(common::ObjectStore::get_range(
                &store,
                &format!("f{i}"),
                0..100,
                None,
            ))
            .unwrap();
        assert_eq!(&got[..], format!("file {i}").as_bytes());
    }
}

#[test]
fn sigterm_with_the_mount_in_use_uploads_open_files_and_exits() {
    use std::io::Write;
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-busy");
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut child = mount_foreground(&env, &bucket, mnt.path(), cache.path(), &[]);
    // A user of the mount that is not going away: a file open with unsaved data.
    let mut open = std::fs::File::create(mnt.path().join("open.txt")).unwrap();
    open.write_all(b"written, never closed").unwrap();
    send_signal(child.id(), "TERM");
    let status = child.wait();
    assert!(status.success(), "{status}");
    assert!(!is_mounted(mnt.path()), "detached");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    let got = rt
        .block_on(common::ObjectStore::get_range(
            &store,
            "open.txt",
            0..100,
            None,
        ))
        .unwrap();
    assert_eq!(&got[..], b"written, never closed");
    drop(open);
}

#[test]
fn the_metrics_endpoint_counts_what_the_mount_does() {
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-metrics");
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = mount_foreground(
        &env,
        &bucket,
        mnt.path(),
        cache.path(),
        &["--metrics-addr", &addr],
    );
    std::fs::write(mnt.path().join("m.bin"), vec![7u8; 3 << 20]).unwrap();
    // Read it twice through fresh opens: chunks come from the store, then from the cache.
    for _ in 0..2 {
        assert_eq!(
            std::fs::read(mnt.path().join("m.bin")).unwrap().len(),
            3 << 20
        );
    }
    let scrape = || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    };
    let text = scrape();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
    };
    assert!(value("s3vol_store_bytes_total{direction=\"upload\"}") >= (3 << 20) as f64);
    assert!(value("s3vol_fuse_operations_total{op=\"write\"}") >= 1.0);
    assert!(value("s3vol_fuse_operations_total{op=\"create\"}") >= 1.0);
    assert!(value("s3vol_cache_bytes{tier=\"disk\"}") >= 0.0);
    assert!(value("s3vol_store_request_seconds_count{op=\"get\"}") >= 1.0);
    send_signal(child.id(), "TERM");
    assert!(child.wait().success());
}

/// A child process of this test, killed (by its pid) when the test is done with it or fails.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program that writes the file named by its first argument into the one named by its
/// second, says `written`, and then holds it open until it is killed.
const HOLDING_WRITER: &str = "
import os, sys, time
data = open(sys.argv[1], 'rb').read()
fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
view = memoryview(data)
while view:
    view = view[os.write(fd, view[:1 << 20]):]
print('written', flush=True)
time.sleep(3600)
";

#[test]
fn sigkill_mid_write_leaves_the_old_version_and_the_next_start_cleans_up() {
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-kill");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    let old = common::conformance::pattern(2 << 20, 1);
    rt.block_on(common::ObjectStore::put(
        &store,
        "big",
        old.clone(),
        &Default::default(),
    ))
    .unwrap();
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mount = || mount_foreground(&env, &bucket, mnt.path(), cache.path(), &[]);
    let mut child = mount();
    let safe = common::conformance::pattern(3 << 20, 2);
    std::fs::write(mnt.path().join("safe"), &safe).unwrap();
    // 40 MiB over the old object, streaming as 8 MiB parts, never closed. Written by a
    // process of its own: while this one holds a file of the mount open, any other test of
    // this binary that runs a command forks it, and the close of the fork's copy at its exec
    // is a flush, which would upload the file half written.
    let new = common::conformance::pattern(40 << 20, 3);
    let source = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(source.path(), &new).unwrap();
    let mut writer = KilledOnDrop(
        Command::new("python3")
            .arg("-c")
            .arg(HOLDING_WRITER)
            .arg(source.path())
            .arg(mnt.path().join("big"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.0.stdout.take().unwrap()),
        &mut said,
    )
    .unwrap();
    assert_eq!(said, "written\n", "the writer could not write the file");
    let pending = || {
        rt.block_on(common::ObjectStore::list_multipart_uploads(&store, ""))
            .unwrap()
            .len()
    };
    // The writes return before the first part's upload has begun at the store, all the more
    // on a busy machine: kill once it has.
    let deadline = Instant::now() + Duration::from_secs(20);
    while pending() == 0 {
        assert!(
            Instant::now() < deadline,
            "the 40 MiB written never started a multipart upload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.child.kill().unwrap();
    child.wait();
    // Its descriptor closes on a dead mount now: no flush reaches anyone.
    drop(writer);

    let get = |key: &str| {
        let meta = rt.block_on(common::ObjectStore::head(&store, key)).unwrap();
        rt.block_on(common::ObjectStore::get_range(
            &store,
            key,
            0..meta.size,
            None,
        ))
        .unwrap()
    };
    let big = get("big");
    assert!(
        big == old,
        "the old version only, never a partial one: got {} bytes, new ones: {}",
        big.len(),
        big.starts_with(&new[..64])
    );
    assert!(get("safe") == safe, "what close acknowledged is all there");
    assert!(pending() >= 1, "the killed upload is still pending");

    // The dead mount answers ENOTCONN until it is cleared, as after any crash.
    let status = Command::new("umount").arg("-l").arg(mnt.path()).status();
    assert!(status.unwrap().success());
    let mut child = mount();
    assert_eq!(pending(), 0, "unfinished uploads aborted at the next start");
    let recovery = cache.path().join(format!("{bucket}-")).join("recovery");
    let kept: Vec<_> = std::fs::read_dir(&recovery)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert!(
        std::fs::read(&kept[0]).unwrap() == new,
        "written bytes kept"
    );
    assert!(std::fs::read(mnt.path().join("big")).unwrap() == old);
    send_signal(child.id(), "TERM");
    assert!(child.wait().success());
}

/// Peak resident memory of process `pid` so far (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib << 10
}

#[test]
fn eight_readers_under_a_small_memory_limit_stay_within_it() {
    const BUDGET: u64 = 64 << 20;
    const FILE: usize = 48 << 20;
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-mem");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    let bodies: Vec<_> = (0..8)
        .map(|i| common::conformance::pattern(FILE, 20 + i as u8))
        .collect();
    for (i, body) in bodies.iter().enumerate() {
        rt.block_on(common::ObjectStore::put(
            &store,
            &format!("f{i}"),
            body.clone(),
            &Default::default(),
        ))
        .unwrap();
    }
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut child = mount_foreground(
        &env,
        &bucket,
        mnt.path(),
        cache.path(),
        &["--memory-limit", "64MiB"],
    );
    let started = peak_rss(child.id());
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let path = mnt.path().join(format!("f{i}"));
            std::thread::spawn(move || std::fs::read(path).unwrap())
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        assert!(reader.join().unwrap() == bodies[i], "f{i} read back wrong");
    }
    let peak = peak_rss(child.id());
    eprintln!(
        "8 readers of 48 MiB, 64 MiB budget: peak RSS {} MiB (at start {} MiB)",
        peak >> 20,
        started >> 20
    );
    // The limit issue #4 and #7 hold the mount to: the budget plus 64 MiB for the runtime,
    // the HTTP client and the allocator.
    assert!(
        peak <= BUDGET + (64 << 20),
        "peak RSS {} MiB over the {} MiB budget + 64 MiB",
        peak >> 20,
        BUDGET >> 20
    );
    send_signal(child.id(), "TERM");
    assert!(child.wait().success());
}

#[test]
fn appending_to_a_big_file_under_a_small_memory_limit_stays_within_it() {
    const BUDGET: u64 = 64 << 20;
    const FILE: usize = 160 << 20;
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-append");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    let mut body = common::conformance::pattern(FILE, 7).to_vec();
    rt.block_on(common::ObjectStore::put(
        &store,
        "log",
        body.clone().into(),
        &Default::default(),
    ))
    .unwrap();
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut child = mount_foreground(
        &env,
        &bucket,
        mnt.path(),
        cache.path(),
        &["--memory-limit", "64MiB"],
    );
    let started = peak_rss(child.id());
    let stored = |len: usize| {
        rt.block_on(common::ObjectStore::get_range(
            &store,
            "log",
            0..len as u64,
            None,
        ))
        .unwrap()
    };
    // `>>`: the object's bytes stay in the store; the staging file holds only the new line.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(mnt.path().join("log"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"one more line\n").unwrap();
    let staged = staged_bytes_on_disk(cache.path());
    assert!(staged < 1 << 20, "the append staged {staged} bytes");
    drop(file);
    body.extend_from_slice(b"one more line\n");
    let got = stored(body.len());
    assert!(got[..] == body[..], "log stored wrong after the append");
    // Two parts: the 160 MiB the store copied from the old version, and the line.
    let etag = rt
        .block_on(common::ObjectStore::head(&store, "log"))
        .unwrap()
        .etag;
    assert!(etag.as_str().ends_with("-2\""), "{etag}");
    // An edit at the start needs the bytes: they come into the staging file in pieces.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.path().join("log"))
        .unwrap();
    std::io::Write::write_all(&mut file, b"EDIT").unwrap();
    drop(file);
    body[..4].copy_from_slice(b"EDIT");
    let got = stored(body.len());
    assert!(got[..] == body[..], "log stored wrong after the edit");
    let peak = peak_rss(child.id());
    eprintln!(
        "append to and edit of a 160 MiB file, 64 MiB budget: peak RSS {} MiB (at start {} MiB)",
        peak >> 20,
        started >> 20
    );
    // Before, the object was held in memory whole while it was copied there (160 MiB over
    // the budget).
    assert!(
        peak - started <= BUDGET,
        "RSS grew by {} MiB, more than the {} MiB budget",
        (peak - started) >> 20,
        BUDGET >> 20
    );
    send_signal(child.id(), "TERM");
    assert!(child.wait().success());
}

/// Bytes on disk (allocated blocks, not apparent size) of the staging files under `dir`.
fn staged_bytes_on_disk(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            total += staged_bytes_on_disk(&entry.path());
        } else if entry.path().extension().is_some_and(|e| e == "staging") {
            total += meta.blocks() * 512;
        }
    }
    total
}

#[test]
fn six_writers_under_a_small_memory_limit_stay_within_it() {
    const BUDGET: u64 = 64 << 20;
    const FILE: usize = 128 << 20;
    const WRITERS: usize = 6;
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-wmem");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut child = mount_foreground(
        &env,
        &bucket,
        mnt.path(),
        cache.path(),
        &["--memory-limit", "64MiB"],
    );
    let started = peak_rss(child.id());
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let path = mnt.path().join(format!("w{i}"));
            let body = common::conformance::pattern(FILE, 40 + i as u8);
            // In 1 MiB writes, as cp and dd do: each file could stream as it is written.
            std::thread::spawn(move || {
                let mut file = std::fs::File::create(path).unwrap();
                for piece in body.chunks(1 << 20) {
                    std::io::Write::write_all(&mut file, piece).unwrap();
                }
                file.sync_all().unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    let peak = peak_rss(child.id());
    eprintln!(
        "{WRITERS} writers of 128 MiB, 64 MiB budget: peak RSS {} MiB (at start {} MiB)",
        peak >> 20,
        started >> 20
    );
    for i in 0..WRITERS {
        let got = rt
            .block_on(common::ObjectStore::get_range(
                &store,
                &format!("w{i}"),
                0..FILE as u64,
                None,
            ))
            .unwrap();
        assert!(
            got == common::conformance::pattern(FILE, 40 + i as u8),
            "w{i} stored wrong"
        );
    }
    assert!(
        peak <= BUDGET + (64 << 20),
        "peak RSS {} MiB over the {} MiB budget + 64 MiB",
        peak >> 20,
        BUDGET >> 20
    );
    // What the budget covers, beyond the idle process. Without the write budget each file
    // holds up to 5 parts of 8 MiB: this debug build grew by 74 MiB, against 26 MiB with it.
    assert!(
        peak - started <= BUDGET,
        "RSS grew by {} MiB, more than the {} MiB budget",
        (peak - started) >> 20,
        BUDGET >> 20
    );
    send_signal(child.id(), "TERM");
    assert!(child.wait().success());
}

/// Signal our own child by pid (kill(1): the workspace forbids unsafe code).
fn send_signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

async fn s3_store(env: &S3Env, bucket: &str) -> s3_backend::S3Store {
    s3_backend::S3Store::new(&env.config(), &bucket.parse().unwrap())
        .await
        .unwrap()
}

#[test]
fn metadata_ttls_set_how_soon_other_clients_changes_show() {
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-ttl");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(s3_store(&env, &bucket));
    let put = |key: &str, body: &[u8]| {
        rt.block_on(common::ObjectStore::put(
            &store,
            key,
            bytes::Bytes::copy_from_slice(body),
            &Default::default(),
        ))
        .unwrap();
    };
    let delete = |key: &str| {
        rt.block_on(common::ObjectStore::delete(&store, key))
            .unwrap()
    };
    put("f", b"one");
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let ttl = |secs: &'static str| ["--metadata-ttl", secs, "--negative-metadata-ttl", secs];
    let _eager = mount_foreground(&env, &bucket, dirs[0].path(), dirs[1].path(), &ttl("0"));
    let _patient = mount_foreground(&env, &bucket, dirs[2].path(), dirs[3].path(), &ttl("60"));
    let (eager, patient) = (dirs[0].path(), dirs[2].path());
    let size = |dir: &Path, name: &str| std::fs::metadata(dir.join(name)).map(|m| m.len()).ok();
    assert_eq!((size(eager, "f"), size(patient, "f")), (Some(3), Some(3)));
    assert_eq!((size(eager, "g"), size(patient, "g")), (None, None));
    // Another client changes f, puts g and, later, deletes f.
    put("f", b"three");
    put("g", b"new");
    // Past the default TTL (1 s): the 60 s mount still trusts what it saw, the 0 s one asks.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!((size(eager, "f"), size(eager, "g")), (Some(5), Some(3)));
    assert_eq!((size(patient, "f"), size(patient, "g")), (Some(3), None));
    delete("f");
    assert_eq!(size(eager, "f"), None);
    assert_eq!(size(patient, "f"), Some(3));
}

/// An endpoint that takes connections and never answers fails the start after the probe's
/// 20 s, with a line that says so, rather than the store's error after three attempts of 30 s.
#[test]
fn a_silent_endpoint_fails_the_start_within_the_probe_time() {
    let Some(env) = S3Env::from_env() else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let out = s3vol_at(
        &endpoint,
        &env,
        &["silent-bucket", mnt.path().to_str().unwrap()],
        cache.path(),
    )
    .output()
    .unwrap();
    assert_one_line_error(
        &out,
        &format!("no answer from {endpoint} about bucket silent-bucket within 20 s; is the endpoint up and reachable from this machine?"),
    );
    assert!(!is_mounted(mnt.path()));
}

#[test]
fn what_users_get_wrong_fails_with_one_clear_line() {
    let Some(env) = S3Env::from_env() else { return };
    let bucket = bucket(&env, "cli-errors");
    let (mnt, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mountpoint = mnt.path().to_str().unwrap();

    let out = s3vol(&env, &["no-such-bucket-here", mountpoint], cache.path())
        .output()
        .unwrap();
    assert_one_line_error(&out, "does not exist");
    let out = s3vol(&env, &[&bucket, "/nonexistent/mountpoint"], cache.path())
        .output()
        .unwrap();
    assert_one_line_error(&out, "does not exist; create it first");
    let out = s3vol(&env, &["Bad_Bucket", mountpoint], cache.path())
        .output()
        .unwrap();
    assert_one_line_error(&out, "lowercase");
    let out = s3vol(
        &env,
        &[&bucket, mountpoint, "--metadata-ttl", "1h"],
        cache.path(),
    )
    .output()
    .unwrap();
    // A flag's value is checked by clap, which says so in its own words (and exits 2).
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("'--metadata-ttl <SECONDS>': use seconds from 0 to 86400"),
        "{stderr}"
    );
    let out = s3vol(&env, &[&bucket, mountpoint], cache.path())
        .env("AWS_SECRET_ACCESS_KEY", "wrong")
        .output()
        .unwrap();
    assert_one_line_error(&out, "AWS_SECRET_ACCESS_KEY");
    let out = s3vol(&env, &[&bucket, mountpoint], cache.path())
        .env("AWS_ACCESS_KEY_ID", "NOSUCHKEY")
        .output()
        .unwrap();
    assert_one_line_error(&out, "AWS_ACCESS_KEY_ID");
    let mut cmd = s3vol_at(
        "http://127.0.0.1:1",
        &env,
        &[&bucket, mountpoint],
        cache.path(),
    );
    let out = cmd.output().unwrap();
    assert_one_line_error(&out, "connection refused");
    let out = s3vol(&env, &[&bucket, mountpoint], Path::new("/proc/s3vol-cache"))
        .output()
        .unwrap();
    assert_one_line_error(&out, "pass --cache DIR");
    let out = s3vol(&env, &[&bucket, mountpoint], cache.path())
        .env("S3VOL_LOG", "warning")
        .output()
        .unwrap();
    assert_one_line_error(&out, "invalid S3VOL_LOG \"warning\"");
    assert!(!is_mounted(mnt.path()));
}

#[test]
fn help_explains_every_flag_with_its_default() {
    let out = Command::new(S3VOL)
        .args(["mount", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--endpoint-url",
        "--region",
        "--force-path-style",
        "--profile",
        "--uid",
        "--gid",
        "--file-mode",
        "--dir-mode",
        "--read-only",
        "--allow-other",
        "--cache",
        "--max-cache-size",
        "--memory-limit",
        "--metadata-ttl",
        "--negative-metadata-ttl",
        "--foreground",
        "--debug",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    assert!(
        help.contains("[default: 0644]") && help.contains("[default: us-east-1]"),
        "{help}"
    );
    for args in [
        &["--version"][..],
        &["mount", "--version"],
        &["serve", "--version"],
    ] {
        let version = Command::new(S3VOL).args(args).output().unwrap();
        let said = String::from_utf8_lossy(&version.stdout);
        assert!(
            version.status.success() && said.contains(env!("CARGO_PKG_VERSION")),
            "{args:?}: {said}"
        );
    }
}
