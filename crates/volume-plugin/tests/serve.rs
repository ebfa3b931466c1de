//! `s3vol serve` as Docker drives it: HTTP over its real unix socket, real FUSE mounts on the
//! real Ceph RGW, and a SIGKILL followed by a restart that keeps the catalogue and brings the
//! mounts back.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ObjectStore;
use fuse_mount::is_mounted;
use integration_tests::{unique_bucket, S3Env};
use serde_json::{json, Value};

const S3VOL: &str = env!("CARGO_BIN_EXE_s3vol");

/// A running `s3vol serve` on folders of its own.
struct Server {
    child: Option<Child>,
    dir: PathBuf,
    /// Time from spawn until the socket accepted a connection.
    listening_after: Duration,
    /// Where the server serves its Prometheus metrics.
    metrics_addr: String,
}

impl Server {
    fn start(env: &S3Env, dir: &Path, default_bucket: &str) -> Self {
        let socket = dir.join("run/s3vol.sock");
        // Keys come from the config folder's credentials file, as in the managed plugin.
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::write(
            dir.join("config/credentials"),
            format!(
                "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
                env.access_key, env.secret_key
            ),
        )
        .unwrap();
        let metrics_addr = free_local_addr();
        let started = Instant::now();
        let child = Command::new(S3VOL)
            .arg("serve")
            .arg("--metrics-addr")
            .arg(&metrics_addr)
            .arg("--socket")
            .arg(&socket)
            .arg("--mount-root")
            .arg(dir.join("mnt"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .arg("--config-dir")
            .arg(dir.join("config"))
            .arg("--endpoint-url")
            .arg(&env.endpoint)
            .arg("--default-bucket")
            .arg(default_bucket)
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SHARED_CREDENTIALS_FILE")
            .env_remove("AWS_PROFILE")
            // Everything, to check that no credential reaches the log.
            .env("S3VOL_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap();
        let deadline = started + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "no socket after 10 s; log:\n{}",
                log(dir)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Never writable by others, whatever the umask (root:root 0660 in production).
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "socket mode {:o}", mode & 0o777);
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            listening_after: started.elapsed(),
            metrics_addr,
        }
    }

    /// One call as Docker makes it: POST with a JSON body and no Content-Type.
    fn call(&self, endpoint: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        let exchange = || -> std::io::Result<String> {
            let mut stream = UnixStream::connect(self.dir.join("run/s3vol.sock"))?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            write!(
                stream,
                "POST /VolumeDriver.{endpoint} HTTP/1.1\r\nHost: plugin\r\nAccept: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        };
        let response = exchange()
            .unwrap_or_else(|e| panic!("{endpoint}: {e}; server log:\n{}", log(&self.dir)));
        let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{endpoint}: not JSON ({e}): {body:?}"));
        (status, value)
    }

    fn ok(&self, endpoint: &str, body: Value) -> Value {
        let (status, reply) = self.call(endpoint, body.clone());
        assert_eq!(
            status,
            200,
            "{endpoint} {body}: {reply}\nlog:\n{}",
            log(&self.dir)
        );
        reply
    }

    fn err(&self, endpoint: &str, body: Value) -> String {
        let (status, reply) = self.call(endpoint, body.clone());
        assert_ne!(status, 200, "{endpoint} {body} succeeded: {reply}");
        reply["Err"].as_str().expect("an Err").to_string()
    }

    /// The metrics page, as a scraper gets it.
    fn metrics(&self) -> String {
        let mut stream = std::net::TcpStream::connect(&self.metrics_addr).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        response
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The worker serving the volumes under the supervisor (this server's process).
    fn worker_pid(&self) -> u32 {
        let path = volume_plugin::supervisor::worker_pid_path(&self.dir.join("state"));
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Crash of the whole plugin: SIGKILL of the supervisor, whose worker dies with it; no
    /// chance to unmount or save anything.
    fn kill(mut self) {
        let worker = self.worker_pid();
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        wait_until("the worker died with the supervisor", || {
            !Path::new(&format!("/proc/{worker}")).exists()
        });
    }

    /// Stop as Docker does (SIGTERM) and return whether it exited cleanly.
    fn stop(mut self) -> bool {
        self.terminate()
    }

    fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// A loopback address with a port nobody listens on right now.
fn free_local_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("serve.log")).unwrap_or_default()
}

fn id(n: u32) -> String {
    format!("{n:064x}")
}

fn store(env: &S3Env, rt: &tokio::runtime::Runtime, bucket: &str) -> s3_backend::S3Store {
    rt.block_on(s3_backend::S3Store::new(
        &env.config(),
        &bucket.parse().unwrap(),
    ))
    .unwrap()
}

/// How many files are in `dir` and its subfolders (0 if it does not exist).
fn files_below(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => files_below(&entry.path()),
            _ => 1,
        })
        .sum()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn volumes_mount_over_the_socket_and_their_files_are_objects() {
    let Some(env) = S3Env::from_env() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default_bucket = rt.block_on(env.new_bucket("serve-dflt"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    println!("listening {:?} after start", server.listening_after);

    // A bucket that does not exist yet: Create makes it (create_bucket defaults to true).
    let bucket = unique_bucket("serve-new").to_string();
    server.ok(
        "Create",
        json!({"Name": "web", "Opts": {"bucket": bucket, "prefix": "app", "uid": "1000"}}),
    );
    let volume = server.ok("Get", json!({"Name": "web"}))["Volume"].clone();
    assert_eq!(volume["Status"]["Bucket"], bucket.as_str());
    assert_eq!(volume["Status"]["Endpoint"], env.endpoint.as_str());
    let status = volume["Status"].to_string();
    assert!(!status.contains(&env.secret_key) && !status.contains(&env.access_key));

    let first = server.ok("Mount", json!({"Name": "web", "ID": id(1)}))["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let mountpoint = PathBuf::from(&first);
    assert_eq!(mountpoint, dir.path().join("mnt/web"));
    assert!(is_mounted(&mountpoint));
    std::fs::write(mountpoint.join("hello.txt"), b"from a container").unwrap();
    // uid=1000 owns what carries no owner of its own: the volume's root, for one.
    let meta = std::fs::metadata(&mountpoint).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1000);

    // A second container shares the mount; the first one leaving does not unmount it.
    let second = server.ok("Mount", json!({"Name": "web", "ID": id(2)}))["Mountpoint"].clone();
    assert_eq!(second, first.as_str());
    server.ok("Unmount", json!({"Name": "web", "ID": id(1)}));
    assert_eq!(
        std::fs::read(mountpoint.join("hello.txt")).unwrap(),
        b"from a container"
    );
    let err = server.err("Remove", json!({"Name": "web"}));
    assert!(err.contains("in use"), "{err}");
    // The volume's figures in Status, the process's in the metrics endpoint.
    let status = server.ok("Get", json!({"Name": "web"}))["Volume"]["Status"].clone();
    assert_eq!(status["Mounts"], 1);
    assert!(status["UploadedBytes"].as_u64().unwrap() >= 16, "{status}");
    assert!(status["StoreRequests"].as_u64().unwrap() >= 2, "{status}");
    let metrics = server.metrics();
    for expected in [
        "s3vol_volume_mounts{volume=\"web\"} 1",
        "s3vol_store_requests_total{op=\"put\",outcome=\"ok\"}",
        "s3vol_store_bytes_total{direction=\"upload\"}",
        "s3vol_fuse_operations_total{op=\"write\"}",
        "s3vol_store_request_seconds_bucket{le=",
        "s3vol_cache_bytes{tier=\"memory\"}",
        "s3vol_upload_parts_in_flight 0",
        // Every part buffer given back once the file is uploaded.
        "s3vol_write_buffer_bytes 0",
    ] {
        assert!(
            metrics.contains(expected),
            "{expected} missing from:\n{metrics}"
        );
    }
    server.ok("Unmount", json!({"Name": "web", "ID": id(2)}));
    assert!(!is_mounted(&mountpoint));

    // The file is a plain object under the volume's prefix.
    let objects = store(&env, &rt, &bucket);
    let body = rt
        .block_on(objects.get_range("app/hello.txt", 0..100, None))
        .unwrap();
    assert_eq!(&body[..], b"from a container");

    // A volume with no options lives under <name>/ in the default bucket.
    server.ok("Create", json!({"Name": "scratch", "Opts": null}));
    let scratch = server.ok("Mount", json!({"Name": "scratch", "ID": id(3)}))["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(Path::new(&scratch).join("a.txt"), b"default").unwrap();
    server.ok("Unmount", json!({"Name": "scratch", "ID": id(3)}));
    let body = rt
        .block_on(default_bucket.get_range("scratch/a.txt", 0..100, None))
        .unwrap();
    assert_eq!(&body[..], b"default");

    // cache=off: nothing of the volume's objects on the host's disk; a cached volume's
    // reads are kept there.
    let chunk_files = || files_below(&dir.path().join("cache/chunks"));
    let payload = vec![7u8; 3 << 20];
    for (name, cache) in [("private", "off"), ("cached", "on")] {
        server.ok("Create", json!({"Name": name, "Opts": {"cache": cache}}));
        let key = format!("{name}/blob");
        rt.block_on(default_bucket.put(&key, payload.clone().into(), &Default::default()))
            .unwrap();
        let before = chunk_files();
        let mnt = server.ok("Mount", json!({"Name": name, "ID": id(5)}))["Mountpoint"]
            .as_str()
            .unwrap()
            .to_string();
        assert_eq!(
            std::fs::read(Path::new(&mnt).join("blob")).unwrap(),
            payload
        );
        server.ok("Unmount", json!({"Name": name, "ID": id(5)}));
        if cache == "off" {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(chunk_files(), before, "cache=off wrote chunks to disk");
        } else {
            wait_until("the cached volume's chunks are on disk", || {
                chunk_files() > before
            });
        }
    }

    // metadata_ttl=0: a change another client makes shows at once (the default TTL, 1 s,
    // would show the first size again).
    server.ok(
        "Create",
        json!({"Name": "fresh", "Opts": {"metadata_ttl": "0"}}),
    );
    let fresh = server.ok("Mount", json!({"Name": "fresh", "ID": id(4)}))["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let size_of_n = || {
        std::fs::metadata(Path::new(&fresh).join("n.txt"))
            .unwrap()
            .len()
    };
    for body in ["1", "22"] {
        rt.block_on(default_bucket.put("fresh/n.txt", body.into(), &Default::default()))
            .unwrap();
        assert_eq!(size_of_n(), body.len() as u64);
    }
    server.ok("Unmount", json!({"Name": "fresh", "ID": id(4)}));

    // Remove forgets the volume and keeps its objects.
    server.ok("Remove", json!({"Name": "web"}));
    assert!(server
        .err("Get", json!({"Name": "web"}))
        .contains("no such volume"));
    assert!(rt.block_on(objects.head("app/hello.txt")).is_ok());
    assert!(server.stop(), "clean exit on SIGTERM");
    // Trace logging of everything above shows no credential.
    let log = log(dir.path());
    assert!(log.contains("Mount"), "the log has the calls: {log}");
    assert!(
        !log.contains(&env.access_key) && !log.contains(&env.secret_key),
        "{log}"
    );
}

#[test]
fn a_mount_waits_for_an_s3_server_that_is_not_up_yet() {
    use integration_tests::fault_proxy::{Fault, FaultProxy};
    let Some(env) = S3Env::from_env() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default_bucket = rt.block_on(env.new_bucket("serve-late"));
    let proxy = FaultProxy::start(&env.endpoint);
    let through_proxy = S3Env {
        endpoint: proxy.endpoint(),
        ..env.clone()
    };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&through_proxy, dir.path(), default_bucket.bucket());
    server.ok("Create", json!({"Name": "late", "Opts": null}));

    // The S3 server is down when Docker mounts the volume (a Compose stack starting it beside
    // the container, a host booting) and answers 8 s later (longer than the S3 client's own
    // retries last): the Mount waits for it.
    proxy.set(Fault::Down);
    let started = Instant::now();
    let (reply, waited) = std::thread::scope(|threads| {
        let mount = threads.spawn(|| {
            let reply = server.ok("Mount", json!({"Name": "late", "ID": id(1)}));
            (reply, started.elapsed())
        });
        std::thread::sleep(Duration::from_secs(8));
        proxy.set(Fault::None);
        mount.join().unwrap()
    });
    assert!(waited >= Duration::from_secs(8), "mounted after {waited:?}");
    let mountpoint = PathBuf::from(reply["Mountpoint"].as_str().unwrap());
    std::fs::write(mountpoint.join("f.txt"), b"written once it was up").unwrap();
    server.ok("Unmount", json!({"Name": "late", "ID": id(1)}));
    let body = rt
        .block_on(default_bucket.get_range("late/f.txt", 0..100, None))
        .unwrap();
    assert_eq!(&body[..], b"written once it was up");

    // One that stays down: the Mount fails within Docker's 30 s, saying which endpoint.
    proxy.set(Fault::Down);
    let started = Instant::now();
    let err = server.err("Mount", json!({"Name": "late", "ID": id(2)}));
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "answered in {:?}",
        started.elapsed()
    );
    assert!(err.contains(&proxy.endpoint()), "{err}");
    assert!(!is_mounted(&mountpoint));
}

#[test]
fn create_says_what_is_wrong_with_the_backend() {
    let Some(env) = S3Env::from_env() else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), "unused-default");
    let missing = unique_bucket("serve-missing").to_string();
    let err = server.err(
        "Create",
        json!({"Name": "v", "Opts": {"bucket": missing, "create_bucket": "false"}}),
    );
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );
    let err = server.err(
        "Create",
        json!({"Name": "v", "Opts": {"bucket": "any-bucket", "profile": "nobody"}}),
    );
    assert!(
        err.contains("no credentials") && err.contains("profile `nobody` was not defined"),
        "{err}"
    );
    let started = Instant::now();
    let err = server.err(
        "Create",
        json!({"Name": "v", "Opts": {"bucket": "any-bucket", "endpoint": "http://127.0.0.1:9"}}),
    );
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(28),
        "answered in {:?}",
        started.elapsed()
    );
    assert_eq!(server.ok("List", json!({}))["Volumes"], json!([]));
}

#[test]
fn a_killed_server_restarts_with_its_volumes_and_mounts() {
    let Some(env) = S3Env::from_env() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default_bucket = rt.block_on(env.new_bucket("serve-kill"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    server.ok("Create", json!({"Name": "db", "Opts": null}));
    server.ok("Create", json!({"Name": "idle", "Opts": null}));
    let mountpoint = dir.path().join("mnt/db");
    server.ok("Mount", json!({"Name": "db", "ID": id(7)}));
    std::fs::write(mountpoint.join("kept.txt"), b"closed before the crash").unwrap();
    let created = server.ok("Get", json!({"Name": "db"}))["Volume"]["CreatedAt"].clone();
    let old_pid = server.pid();
    server.kill();

    // What a running container sees after the crash: a dead FUSE mount.
    let dead = std::fs::metadata(&mountpoint).unwrap_err();
    assert_eq!(dead.raw_os_error(), Some(107), "ENOTCONN, got {dead}");

    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    assert_ne!(server.pid(), old_pid);
    println!(
        "restarted server listening after {:?}",
        server.listening_after
    );
    // Get and List answer from the catalogue at once.
    let volume = server.ok("Get", json!({"Name": "db"}))["Volume"].clone();
    assert_eq!(volume["CreatedAt"], created);
    assert_eq!(volume["Status"]["Mounts"], 1);
    assert_eq!(
        server.ok("List", json!({}))["Volumes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // The mount comes back at the same place, with the data.
    wait_until("the mount is restored", || {
        std::fs::read(mountpoint.join("kept.txt")).is_ok_and(|b| b == b"closed before the crash")
    });
    let path = server.ok("Path", json!({"Name": "db"}));
    assert_eq!(path["Mountpoint"], mountpoint.to_str().unwrap());
    // A new container on it, then both gone: unmounted.
    server.ok("Mount", json!({"Name": "db", "ID": id(8)}));
    server.ok("Unmount", json!({"Name": "db", "ID": id(7)}));
    server.ok("Unmount", json!({"Name": "db", "ID": id(8)}));
    assert!(!is_mounted(&mountpoint));
    assert!(server.stop());
}

#[test]
fn sigterm_uploads_and_unmounts_and_the_next_start_mounts_again() {
    let Some(env) = S3Env::from_env() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default_bucket = rt.block_on(env.new_bucket("serve-term"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    server.ok("Create", json!({"Name": "v", "Opts": null}));
    let mountpoint = dir.path().join("mnt/v");
    server.ok("Mount", json!({"Name": "v", "ID": id(1)}));
    std::fs::write(mountpoint.join("f.txt"), b"before stop").unwrap();
    assert!(server.stop(), "clean exit on SIGTERM");
    assert!(!is_mounted(&mountpoint), "unmounted on SIGTERM");
    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    wait_until("the mount is back", || is_mounted(&mountpoint));
    assert_eq!(
        std::fs::read(mountpoint.join("f.txt")).unwrap(),
        b"before stop"
    );
    server.ok("Unmount", json!({"Name": "v", "ID": id(1)}));
    assert!(server.stop());
}

/// The container's view of a worker crash: a loop that appends to a log, writes new files in
/// a directory made before the crashes and reads back a large file, while the worker serving
/// the mount is SIGKILLed twice, then replaced on SIGHUP. The supervisor hands the live mount
/// to the next worker: the loop sees a stall, no error, and every byte is in the bucket
/// afterwards.
#[test]
fn mounts_outlive_crashes_of_the_worker() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let Some(env) = S3Env::from_env() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default_bucket = rt.block_on(env.new_bucket("serve-handover"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    server.ok("Create", json!({"Name": "live", "Opts": null}));
    server.ok("Mount", json!({"Name": "live", "ID": id(1)}));
    let mountpoint = dir.path().join("mnt/live");
    let big = common::conformance::pattern(3 << 20, 7);
    std::fs::write(mountpoint.join("big.bin"), &big).unwrap();
    std::fs::create_dir(mountpoint.join("out")).unwrap();
    // A file open for writing across both crashes, written between them.
    let mut open_file = std::fs::File::create(mountpoint.join("out/open.txt")).unwrap();
    open_file.write_all(b"before the crashes;").unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let iterations = Arc::new(AtomicU64::new(0));
    let looper = std::thread::spawn({
        let (stop, iterations, mountpoint, big) = (
            stop.clone(),
            iterations.clone(),
            mountpoint.clone(),
            big.clone(),
        );
        move || -> Result<Duration, String> {
            let mut longest = Duration::ZERO;
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let mut log = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(mountpoint.join("log.txt"))
                    .map_err(|e| format!("open log, iteration {i}: {e}"))?;
                log.write_all(format!("line {i}\n").as_bytes())
                    .map_err(|e| format!("append, iteration {i}: {e}"))?;
                drop(log);
                let name = mountpoint.join(format!("out/f-{i}"));
                std::fs::write(&name, format!("file {i}"))
                    .map_err(|e| format!("write, iteration {i}: {e}"))?;
                let back = std::fs::read(&name).map_err(|e| format!("read back {i}: {e}"))?;
                if back != format!("file {i}").as_bytes() {
                    return Err(format!("f-{i} read back as {back:?}"));
                }
                if i % 10 == 0 {
                    let read = std::fs::read(mountpoint.join("big.bin"))
                        .map_err(|e| format!("read big.bin, iteration {i}: {e}"))?;
                    if read != big {
                        return Err(format!("big.bin read back wrong at iteration {i}"));
                    }
                }
                longest = longest.max(started.elapsed());
                i += 1;
                iterations.store(i, Ordering::Relaxed);
            }
            Ok(longest)
        }
    });
    // A large file written sequentially (a streaming multipart upload) across the crashes.
    let large = common::conformance::pattern(48 << 20, 9);
    let finish_large = Arc::new(AtomicBool::new(false));
    let large_writer = std::thread::spawn({
        let (finish, path, large) = (
            finish_large.clone(),
            mountpoint.join("out/large.bin"),
            large.clone(),
        );
        move || -> std::io::Result<()> {
            let mut file = std::fs::File::create(path)?;
            for piece in large.chunks(1 << 20) {
                file.write_all(piece)?;
                if !finish.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(40));
                }
            }
            // The upload of the whole file (taken over from its staging file) only after the
            // loop, whose longest iteration is the stall of a crash.
            while !finish.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            file.sync_all()
        }
    });
    let progressed = |what: &str| {
        let before = iterations.load(Ordering::Relaxed);
        wait_until(what, || iterations.load(Ordering::Relaxed) >= before + 20);
    };
    progressed("the loop runs");
    // Two crashes, then a replacement (SIGHUP to the supervisor, as for an upgrade).
    for crash in 1..=3 {
        let worker = server.worker_pid();
        let (pid, signal) = match crash {
            1 | 2 => (worker, nix::sys::signal::Signal::SIGKILL),
            _ => (server.pid(), nix::sys::signal::Signal::SIGHUP),
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
        wait_until("a new worker", || {
            std::fs::read_to_string(volume_plugin::supervisor::worker_pid_path(
                &dir.path().join("state"),
            ))
            .is_ok_and(|pid| pid.trim() != worker.to_string())
        });
        progressed(&format!("the loop goes on after crash {crash}"));
        if crash == 1 {
            open_file.write_all(b" between them;").unwrap();
        }
        assert!(is_mounted(&mountpoint), "never unmounted");
    }
    open_file.write_all(b" after them.").unwrap();
    drop(open_file);
    stop.store(true, Ordering::Relaxed);
    let longest = looper
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the loop failed: {e}\nlog:\n{}", log(dir.path())));
    finish_large.store(true, Ordering::Relaxed);
    large_writer
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("the large write failed: {e}\nlog:\n{}", log(dir.path())));
    let done = iterations.load(Ordering::Relaxed);
    println!("{done} iterations; longest (the stall of a crash): {longest:?}");
    assert!(
        log(dir.path()).matches("took over the live mount").count() == 3,
        "each new worker took the mount over:\n{}",
        log(dir.path())
    );
    server.ok("Unmount", json!({"Name": "live", "ID": id(1)}));
    assert!(!is_mounted(&mountpoint));

    // Every byte is in the bucket, as plain objects.
    let bucket = store(&env, &rt, default_bucket.bucket());
    let get = |key: &str| {
        rt.block_on(async {
            let meta = bucket.head(key).await.unwrap();
            bucket.get_range(key, 0..meta.size, None).await.unwrap()
        })
    };
    let expected_log: String = (0..done).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&get("live/log.txt")),
        expected_log,
        "the log holds every line once, in order; the plugin's log:\n{}",
        log(dir.path())
    );
    for i in 0..done {
        assert_eq!(
            get(&format!("live/out/f-{i}")),
            format!("file {i}").as_bytes()
        );
    }
    assert_eq!(
        get("live/out/open.txt"),
        b"before the crashes; between them; after them.".as_slice()
    );
    assert!(get("live/big.bin") == big);
    assert!(
        get("live/out/large.bin") == large,
        "the large file is whole"
    );
    let pending = rt.block_on(bucket.list_multipart_uploads("live/")).unwrap();
    assert!(pending.is_empty(), "multipart uploads left: {pending:?}");
    assert!(server.stop());
}

/// A plugin endpoint setting with a user and password in it stops the start with a line that
/// says so, and repeats neither: the start would log the endpoint, and every error would name
/// it.
#[test]
fn an_endpoint_setting_with_a_password_stops_the_start_without_repeating_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut out = Command::new(S3VOL)
        .arg("serve")
        .arg("--socket")
        .arg(dir.path().join("s3vol.sock"))
        .arg("--mount-root")
        .arg(dir.path().join("mnt"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"))
        .env("AWS_ENDPOINT_URL", "http://admin:hunter2@127.0.0.1:7480")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A start that is not stopped serves until killed: fail then, not hang.
    let deadline = Instant::now() + Duration::from_secs(30);
    while out.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = out.kill();
            let _ = out.wait();
            panic!("s3vol serve started with a password in AWS_ENDPOINT_URL");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = out.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "invalid AWS_ENDPOINT_URL: the endpoint URL must not hold a user or password"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!dir.path().join("s3vol.sock").exists(), "it did not start");
}

/// A mount detached from outside (`umount -l`, as docs/RELIABILITY.md advises for a dead one)
/// while a process still uses it is mounted anew at the next Mount, not handed out as the
/// empty folder the detach left (its session lives on for that process).
#[test]
fn a_mount_detached_from_outside_is_mounted_anew_at_the_next_mount() {
    let Some(env) = S3Env::from_env() else { return };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let default_bucket = rt.block_on(env.new_bucket("serve-detached"));
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&env, dir.path(), default_bucket.bucket());
    server.ok("Create", json!({"Name": "det"}));
    let mountpoint = server.ok("Mount", json!({"Name": "det", "ID": id(1)}))["Mountpoint"]
        .as_str()
        .unwrap()
        .to_string();
    let mountpoint = PathBuf::from(mountpoint);
    std::fs::write(mountpoint.join("f"), b"kept").unwrap();
    let held = std::fs::File::open(mountpoint.join("f")).unwrap();
    let out = Command::new("umount")
        .arg("-l")
        .arg(&mountpoint)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!is_mounted(&mountpoint));

    let again = server.ok("Mount", json!({"Name": "det", "ID": id(2)}))["Mountpoint"].clone();
    assert_eq!(again, mountpoint.to_str().unwrap());
    assert!(is_mounted(&mountpoint), "mounted anew");
    assert_eq!(std::fs::read(mountpoint.join("f")).unwrap(), b"kept");
    drop(held);
    server.ok("Unmount", json!({"Name": "det", "ID": id(1)}));
    server.ok("Unmount", json!({"Name": "det", "ID": id(2)}));
    assert!(!is_mounted(&mountpoint));
}
