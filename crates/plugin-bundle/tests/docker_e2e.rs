//! s3vol as a managed plugin in the real Docker Engine, on the real Ceph RGW: what users do
//! with `docker volume`, `docker run`, Compose and `docker plugin`.
//!
//! Needs a running Docker daemon, the test image `s3vol-test/busybox` (scripts/docker image),
//! the S3_TEST_* server and the s3vol binary to bundle in S3VOL_PLUGIN_BINARY; scripts/test
//! provides all of them and sets S3VOL_REQUIRE_DOCKER=1, so that a missing piece fails
//! instead of skipping. The plugin is installed once per run, as S3VOL_E2E_PLUGIN (default
//! `s3vol-e2e`), with its state, cache and config folders in S3VOL_E2E_DIR (default: a new
//! temp folder); the tests take turns, because some restart it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use common::ObjectStore;
use integration_tests::{unique_bucket, S3Env};
use plugin_bundle::install::{install, InstallPlan};

const IMAGE: &str = "s3vol-test/busybox:latest";

struct Fixture {
    plugin: String,
    env: S3Env,
    default_bucket: String,
    /// Host folders of the plugin (state, cache, config).
    dir: PathBuf,
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("docker runs")
}

/// Run docker; panic with its stderr on failure; return stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run docker, expecting failure; return stderr.
fn docker_err(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        !out.status.success(),
        "docker {} succeeded: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn required() -> bool {
    std::env::var_os("S3VOL_REQUIRE_DOCKER").is_some_and(|v| v == "1")
}

/// Why the Docker tests cannot run here, if they cannot.
fn missing_piece() -> Option<String> {
    if !docker(&["info"]).status.success() {
        return Some("no Docker daemon answers (scripts/docker start)".into());
    }
    if !docker(&["image", "inspect", IMAGE]).status.success() {
        return Some(format!("no test image {IMAGE} (scripts/docker image)"));
    }
    match std::env::var_os("S3VOL_PLUGIN_BINARY") {
        Some(b) if Path::new(&b).is_file() => None,
        _ => Some("S3VOL_PLUGIN_BINARY does not name the s3vol binary to bundle".into()),
    }
}

static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();
static TURN: Mutex<()> = Mutex::new(());

/// The installed plugin and this test's turn, or `None` (skip) when Docker tests cannot run.
fn plugin() -> Option<(&'static Fixture, MutexGuard<'static, ()>)> {
    let fixture = FIXTURE.get_or_init(|| {
        let env = S3Env::from_env()?;
        if let Some(why) = missing_piece() {
            assert!(!required(), "S3VOL_REQUIRE_DOCKER=1 but {why}");
            eprintln!("skipping Docker tests: {why}");
            return None;
        }
        let rt = tokio::runtime::Runtime::new().unwrap();
        let default_bucket = rt.block_on(env.new_bucket("e2e-dflt")).bucket().to_string();
        let dir = std::env::var_os("S3VOL_E2E_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("s3vol-e2e-{}", std::process::id())));
        let plugin = std::env::var("S3VOL_E2E_PLUGIN").unwrap_or_else(|_| "s3vol-e2e".into());
        std::fs::create_dir_all(dir.join("config")).unwrap();
        // Keys by reference: the config folder's credentials file, a default and a named profile.
        std::fs::write(
            dir.join("config/credentials"),
            format!(
                "[default]\naws_access_key_id = {k}\naws_secret_access_key = {s}\n\n[team]\naws_access_key_id = {k}\naws_secret_access_key = {s}\n",
                k = env.access_key,
                s = env.secret_key
            ),
        )
        .unwrap();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let plan = InstallPlan {
            binary: Some(std::env::var_os("S3VOL_PLUGIN_BINARY").unwrap().into()),
            bundle_dir: dir.join("bundle"),
            state_dir: dir.join("state"),
            cache_dir: dir.join("cache"),
            config_dir: dir.join("config"),
            settings: vec![
                format!("AWS_ENDPOINT_URL={}", env.endpoint),
                format!("S3VOL_DEFAULT_BUCKET={default_bucket}"),
            ],
            replace: true,
            ..InstallPlan::new(&plugin, &workspace)
        };
        install(&plan, &workspace).unwrap();
        Some(Fixture {
            plugin,
            env,
            default_bucket,
            dir,
        })
    });
    let guard = TURN.lock().unwrap_or_else(|e| e.into_inner());
    fixture.as_ref().map(|f| (f, guard))
}

impl Fixture {
    fn store(&self, bucket: &str) -> (tokio::runtime::Runtime, s3_backend::S3Store) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let store = rt
            .block_on(s3_backend::S3Store::new(
                &self.env.config(),
                &bucket.parse().unwrap(),
            ))
            .unwrap();
        (rt, store)
    }

    /// The object's bytes, read with a plain S3 client.
    fn object(&self, bucket: &str, key: &str) -> Vec<u8> {
        let (rt, store) = self.store(bucket);
        rt.block_on(store.get_range(key, 0..u64::MAX / 2, None))
            .unwrap_or_else(|e| panic!("{bucket}/{key}: {e}"))
            .to_vec()
    }

    fn object_exists(&self, bucket: &str, key: &str) -> bool {
        let (rt, store) = self.store(bucket);
        rt.block_on(store.head(key)).is_ok()
    }
}

/// The plugin's name (the fixture is set up before any test gets here).
fn plugin_name() -> &'static str {
    &FIXTURE
        .get()
        .and_then(Option::as_ref)
        .expect("the plugin is installed")
        .plugin
}

/// A volume removed at the end of the test, even when it fails.
struct Volume(String);

impl Volume {
    fn create(name_tag: &str, options: &[&str]) -> Self {
        let name = format!("{name_tag}-{}", std::process::id());
        let mut args = vec!["volume", "create", "-d", plugin_name()];
        for option in options {
            args.extend(["-o", option]);
        }
        args.push(&name);
        docker_ok(&args);
        Volume(name)
    }

    fn mount(&self, target: &str) -> String {
        format!("{}:{target}", self.0)
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// A detached container removed at the end of the test.
struct Container(String);

impl Container {
    fn start(name_tag: &str, volume: &Volume, script: &str) -> Self {
        Self::start_with(name_tag, volume, &[], script)
    }

    /// `start` with extra `docker run` options (`--restart always`, ...).
    fn start_with(name_tag: &str, volume: &Volume, options: &[&str], script: &str) -> Self {
        let name = format!("{name_tag}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        let mount = volume.mount("/data");
        let mut args = vec!["run", "-d", "--name", &name, "-v", &mount];
        args.extend(options);
        args.extend([IMAGE, "sh", "-c", script]);
        docker_ok(&args);
        Container(name)
    }

    fn exec(&self, script: &str) -> Output {
        docker(&["exec", &self.0, "sh", "-c", script])
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.0]);
    }
}

fn run(volume: &Volume, script: &str) -> String {
    docker_ok(&[
        "run",
        "--rm",
        "-v",
        &volume.mount("/data"),
        IMAGE,
        "sh",
        "-c",
        script,
    ])
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn containers_share_files_through_a_volume_and_s3_sees_the_same_bytes() {
    let Some((fx, _turn)) = plugin() else { return };
    let bucket = unique_bucket("e2e-share").to_string();
    let volume = Volume::create("share", &[&format!("bucket={bucket}"), "prefix=app"]);
    // One container writes, a second one reads.
    run(
        &volume,
        "echo hello from one > /data/hello.txt && mkdir -p /data/dir && \
         dd if=/dev/urandom of=/data/dir/blob bs=1M count=5 2>/dev/null && md5sum /data/dir/blob > /data/sum",
    );
    let seen = run(&volume, "cat /data/hello.txt && md5sum -c /data/sum");
    assert!(seen.contains("hello from one"), "{seen}");
    assert!(seen.contains("/data/dir/blob: OK"), "{seen}");
    // A plain S3 client reads the same bytes under the prefix.
    assert_eq!(fx.object(&bucket, "app/hello.txt"), b"hello from one\n");
    let blob = fx.object(&bucket, "app/dir/blob");
    assert_eq!(blob.len(), 5 << 20);
    let sum = String::from_utf8(fx.object(&bucket, "app/sum")).unwrap();
    let digest = hex::encode(<md5::Md5 as md5::Digest>::digest(&blob));
    assert!(
        sum.starts_with(&digest),
        "container's md5 {sum} vs S3's {digest}"
    );

    // inspect: Status with where the data is, and no secret anywhere.
    let inspect = docker_ok(&["volume", "inspect", &volume.0]);
    assert!(
        inspect.contains(&format!("\"Bucket\": \"{bucket}\"")),
        "{inspect}"
    );
    assert!(inspect.contains("\"Prefix\": \"app/\""), "{inspect}");
    assert!(inspect.contains(&fx.env.endpoint), "{inspect}");
    assert!(!inspect.contains(&fx.env.secret_key) && !inspect.contains(&fx.env.access_key));
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        ls.contains(&format!("{}:latest {}", plugin_name(), volume.0)),
        "{ls}"
    );

    // rm forgets the volume and keeps the objects.
    docker_ok(&["volume", "rm", &volume.0]);
    let ls = docker_ok(&["volume", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == volume.0), "{ls}");
    assert!(fx.object_exists(&bucket, "app/hello.txt"));
}

#[test]
fn two_containers_use_one_volume_and_one_stopping_leaves_the_other_working() {
    let Some((_fx, _turn)) = plugin() else { return };
    let volume = Volume::create("pair", &[]);
    let a = Container::start("pair-a", &volume, "echo a > /data/a; sleep 600");
    let b = Container::start("pair-b", &volume, "echo b > /data/b; sleep 600");
    wait_until("both wrote", Duration::from_secs(30), || {
        a.exec("test -f /data/a && test -f /data/b")
            .status
            .success()
    });
    docker_ok(&["rm", "-f", &b.0]);
    let out = a.exec("echo again > /data/c && cat /data/a /data/b /data/c");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a\nb\nagain\n");
}

#[test]
fn a_volume_made_by_docker_run_lives_in_the_default_bucket() {
    let Some((fx, _turn)) = plugin() else { return };
    let name = format!("implicit-{}", std::process::id());
    let volume = Volume(name.clone());
    docker_ok(&[
        "run",
        "--rm",
        "--volume-driver",
        plugin_name(),
        "-v",
        &volume.mount("/data"),
        IMAGE,
        "sh",
        "-c",
        "echo implicit > /data/f.txt",
    ]);
    assert_eq!(
        fx.object(&fx.default_bucket, &format!("{name}/f.txt")),
        b"implicit\n"
    );
}

#[test]
fn a_non_root_user_writes_with_uid_and_gid_options() {
    let Some((fx, _turn)) = plugin() else { return };
    let bucket = unique_bucket("e2e-user").to_string();
    let volume = Volume::create(
        "user",
        &[
            &format!("bucket={bucket}"),
            "uid=1000",
            "gid=1000",
            "profile=team",
        ],
    );
    let out = docker_ok(&[
        "run",
        "--rm",
        "--user",
        "1000:1000",
        "-v",
        &volume.mount("/data"),
        IMAGE,
        "sh",
        "-c",
        "echo mine > /data/u.txt && mkdir /data/d && stat -c '%u:%g' /data/u.txt /data/d",
    ]);
    assert_eq!(out, "1000:1000\n1000:1000\n");
    assert_eq!(fx.object(&bucket, "u.txt"), b"mine\n");
}

#[test]
fn compose_brings_a_stack_up_and_down_with_driver_opts() {
    let Some((fx, _turn)) = plugin() else { return };
    let bucket = unique_bucket("e2e-compose").to_string();
    let project = format!("s3vole2e{}", std::process::id());
    let dir = fx.dir.join("compose");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("docker-compose.yml"),
        format!(
            "version: \"3.7\"\nservices:\n  app:\n    image: {IMAGE}\n    command: [\"sh\", \"-c\", \"echo from compose > /data/c.txt\"]\n    volumes: [\"data:/data\"]\nvolumes:\n  data:\n    driver: {plugin}\n    driver_opts:\n      bucket: \"{bucket}\"\n      prefix: \"stack\"\n      uid: \"1000\"\n",
            plugin = plugin_name()
        ),
    )
    .unwrap();
    let compose = |args: &[&str]| {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&project)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("docker-compose runs")
    };
    let up = compose(&["up", "--exit-code-from", "app"]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let volume = format!("{project}_data");
    let inspect = docker_ok(&["volume", "inspect", &volume]);
    assert!(inspect.contains("\"Prefix\": \"stack/\""), "{inspect}");
    assert_eq!(fx.object(&bucket, "stack/c.txt"), b"from compose\n");
    let down = compose(&["down", "-v"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        !docker(&["volume", "inspect", &volume]).status.success(),
        "down -v removed it"
    );
    assert!(fx.object_exists(&bucket, "stack/c.txt"), "the objects stay");
}

#[test]
fn a_container_started_while_its_s3_server_is_starting_waits_for_it() {
    use integration_tests::fault_proxy::{Fault, FaultProxy};
    let Some((fx, _turn)) = plugin() else { return };
    // The volume's endpoint is a proxy to the RGW that can play a server not up yet.
    let proxy = FaultProxy::start(&fx.env.endpoint);
    let bucket = unique_bucket("e2e-late").to_string();
    let options = [
        format!("bucket={bucket}"),
        format!("endpoint={}", proxy.endpoint()),
    ];
    let volume = Volume::create("late", &[&options[0], &options[1]]);
    // Down at `docker run`, up 8 s later (a MinIO service of the same Compose stack still
    // starting): the container starts once it answers.
    proxy.set(Fault::Down);
    let started = Instant::now();
    let seen = std::thread::scope(|threads| {
        let container =
            threads.spawn(|| run(&volume, "echo up > /data/late.txt && cat /data/late.txt"));
        std::thread::sleep(Duration::from_secs(8));
        proxy.set(Fault::None);
        container.join().unwrap()
    });
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(seen.contains("up"), "{seen}");
    assert_eq!(fx.object(&bucket, "late.txt"), b"up\n");
}

#[test]
fn bad_options_and_an_unreachable_endpoint_are_explained() {
    let Some((_fx, _turn)) = plugin() else { return };
    let create = |options: &[&str]| {
        let mut args = vec!["volume", "create", "-d", plugin_name()];
        for option in options {
            args.extend(["-o", *option]);
        }
        args.push("bad-options");
        docker_err(&args)
    };
    let err = create(&["bucket=fine-bucket", "bukcet=typo"]);
    assert!(
        err.contains("unknown option \"bukcet\" (did you mean \"bucket\"?)"),
        "{err}"
    );
    let err = create(&["bucket=fine-bucket", "secret_key=hunter2"]);
    assert!(
        err.contains("profile=NAME") && !err.contains("hunter2"),
        "{err}"
    );
    let err = create(&["bucket=Not_A_Bucket"]);
    assert!(err.contains("invalid option bucket"), "{err}");
    let started = Instant::now();
    let err = create(&["bucket=fine-bucket", "endpoint=http://127.0.0.1:9"]);
    assert!(err.contains("127.0.0.1:9"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(!docker(&["volume", "inspect", "bad-options"])
        .status
        .success());
}

/// The pid of the plugin's process, from runc's state of the plugin container (Docker runs
/// managed plugins with runc, under this root).
fn plugin_pid() -> Option<u32> {
    let id = docker_ok(&["plugin", "inspect", "-f", "{{.Id}}", plugin_name()]);
    let out = Command::new("runc")
        .args([
            "--root",
            "/run/docker/runtime-runc/plugins.moby",
            "state",
            id.trim(),
        ])
        .output()
        .ok()?;
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    (state["status"] == "running")
        .then(|| state["pid"].as_u64())?
        .map(|p| p as u32)
}

fn plugin_enabled() -> bool {
    docker(&["plugin", "inspect", "-f", "{{.Enabled}}", plugin_name()])
        .stdout
        .starts_with(b"true")
}

#[test]
fn plugin_disable_set_enable_and_a_sigkill_keep_the_volumes() {
    let Some((_fx, _turn)) = plugin() else { return };
    let volume = Volume::create("lifecycle", &[]);
    run(&volume, "echo kept > /data/k.txt");

    // A plain disable is refused while volumes exist; -f goes ahead.
    let err = docker_err(&["plugin", "disable", plugin_name()]);
    assert!(err.contains("in use"), "{err}");
    docker_ok(&["plugin", "disable", "-f", plugin_name()]);
    docker_ok(&["plugin", "set", plugin_name(), "S3VOL_LOG=debug"]);
    docker_ok(&["plugin", "enable", plugin_name()]);
    let ls = docker_ok(&["volume", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == volume.0), "{ls}");
    assert_eq!(run(&volume, "cat /data/k.txt"), "kept\n");

    // Killed while a container has the volume mounted: Docker restarts the plugin, which
    // knows its volumes and mounts the busy one again, so new containers work.
    let holder = Container::start("holder", &volume, "sleep 600");
    let old_pid = plugin_pid().expect("the plugin runs");
    let killed = Command::new("kill")
        .args(["-KILL", &old_pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until(
        "Docker restarted the plugin",
        Duration::from_secs(60),
        || plugin_enabled() && plugin_pid().is_some_and(|pid| pid != old_pid),
    );
    let ls = docker_ok(&["volume", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == volume.0), "{ls}");
    // The restarted plugin mounts the volume the holder still has, by itself.
    wait_until(
        "the busy volume is mounted again",
        Duration::from_secs(30),
        || {
            docker_ok(&["volume", "inspect", "-f", "{{.Status.Mounted}}", &volume.0]).trim()
                == "true"
        },
    );
    assert_eq!(
        run(
            &volume,
            "cat /data/k.txt && echo new > /data/n.txt && cat /data/n.txt"
        ),
        "kept\nnew\n"
    );
    drop(holder);
}

#[test]
fn stopping_the_plugin_under_a_busy_container_uploads_its_open_file_in_time() {
    let Some((fx, _turn)) = plugin() else { return };
    let bucket = unique_bucket("e2e-stop").to_string();
    let volume = Volume::create("stop", &[&format!("bucket={bucket}")]);
    // The container keeps a file open with written data and never closes it.
    let holder = Container::start(
        "stop-holder",
        &volume,
        "exec 3>/data/open.txt; echo unsaved >&3; touch /data/ready; sleep 600",
    );
    wait_until("the holder wrote", Duration::from_secs(30), || {
        holder.exec("test -e /data/ready").status.success()
    });
    // Docker stops a plugin with SIGTERM and kills it 10 s later: the plugin must upload the
    // open file and let go before that, although the container still holds the mount.
    let started = Instant::now();
    docker_ok(&["plugin", "disable", "-f", plugin_name()]);
    let took = started.elapsed();
    eprintln!("plugin disable with a busy volume: {took:.1?}");
    assert!(
        took < Duration::from_secs(9),
        "the plugin needed Docker's SIGKILL ({took:?})"
    );
    assert_eq!(fx.object(&bucket, "open.txt"), b"unsaved\n");
    drop(holder);
    docker_ok(&["plugin", "enable", plugin_name()]);
    assert_eq!(run(&volume, "cat /data/open.txt"), "unsaved\n");
}

/// The worker serving the volumes: the child of the plugin's first process, the supervisor
/// (from the host, through /proc; no name patterns).
fn worker_pid() -> Option<u32> {
    let supervisor = plugin_pid()?;
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children")).ok()?;
    children.split_whitespace().next()?.parse().ok()
}

/// The number the loop of `a_container_..._survives_two_crashes_of_the_worker` has reached.
fn loop_count(container: &Container) -> u64 {
    let out = container.exec("cat /data/count 2>/dev/null");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

#[test]
fn a_container_reading_and_writing_in_a_loop_survives_two_crashes_of_the_worker() {
    let Some((fx, _turn)) = plugin() else { return };
    let bucket = unique_bucket("e2e-handover").to_string();
    let volume = Volume::create("handover", &[&format!("bucket={bucket}")]);
    // Appends to a log, writes a new file and reads it back, rereads a 2 MiB file; stops at
    // the first error, leaving what failed in /data/failed.
    let script = r#"
        fail() { echo "$1" > /data/failed; exit 1; }
        head -c 2097152 /dev/urandom > /data/big || fail "write big"
        sum=$(md5sum < /data/big)
        i=0
        while [ ! -e /data/stop ]; do
            echo "line $i" >> /data/log || fail "append $i"
            echo "file $i" > /data/f$i || fail "write f$i"
            [ "$(cat /data/f$i)" = "file $i" ] || fail "read back f$i"
            if [ $((i % 10)) = 0 ]; then
                [ "$(md5sum < /data/big)" = "$sum" ] || fail "reread big at $i"
            fi
            i=$((i + 1))
            echo $i > /data/count || fail "count $i"
        done
        echo "$sum" > /data/big.md5
    "#;
    let looper = Container::start("handover-loop", &volume, script);
    let progressed = |what: &str| -> Duration {
        let (started, before) = (Instant::now(), loop_count(&looper));
        wait_until(what, Duration::from_secs(60), || {
            loop_count(&looper) >= before + 20
        });
        started.elapsed()
    };
    progressed("the loop runs");
    for crash in 1..=2 {
        let worker = worker_pid().expect("the plugin's worker runs");
        let killed = Command::new("kill")
            .args(["-KILL", &worker.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        wait_until("a new worker", Duration::from_secs(30), || {
            worker_pid().is_some_and(|pid| pid != worker)
        });
        let took = progressed(&format!("the loop goes on after crash {crash}"));
        eprintln!("crash {crash}: 20 more iterations within {took:.1?} of the kill");
    }
    assert!(looper.exec("touch /data/stop").status.success());
    wait_until("the loop ends", Duration::from_secs(60), || {
        container_state(&looper.0, "Running") == "false"
    });
    let failed = looper.exec("cat /data/failed 2>/dev/null");
    assert_eq!(
        container_state(&looper.0, "ExitCode"),
        "0",
        "the loop failed: {}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let done: u64 = String::from_utf8_lossy(&fx.object(&bucket, "count"))
        .trim()
        .parse()
        .unwrap();
    drop(looper);
    // Every append and every file is in the bucket: nothing written was lost.
    let expected: String = (0..done).map(|i| format!("line {i}\n")).collect();
    assert_eq!(
        String::from_utf8_lossy(&fx.object(&bucket, "log")),
        expected
    );
    for i in 0..done {
        assert_eq!(
            fx.object(&bucket, &format!("f{i}")),
            format!("file {i}\n").as_bytes()
        );
    }
    eprintln!("{done} iterations, 2 worker crashes, 0 errors, 0 bytes lost");
}

// ---------------------------------------------------------------- reliability and load (#7)

/// No `docker` call of the load tests may take longer (the order of Docker's own timeout for a
/// call to a volume plugin).
const DOCKER_CALL_LIMIT: Duration = Duration::from_secs(60);

/// Many containers or volumes, removed with one `docker` call at the end of a test, even when
/// it fails (one call per name, as `Container` and `Volume` do, would take seconds for hundreds).
struct Batch {
    remove: &'static [&'static str],
    names: Vec<String>,
}

impl Batch {
    fn containers(names: &[String]) -> Self {
        Batch {
            remove: &["rm", "-f"],
            names: names.to_vec(),
        }
    }

    fn volumes(names: &[String]) -> Self {
        Batch {
            remove: &["volume", "rm", "-f"],
            names: names.to_vec(),
        }
    }

    /// The test removed them all itself: nothing left to do (and no `rm -f` of missing names,
    /// which asks every volume plugin about each).
    fn removed(mut self) {
        self.names.clear();
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.names.is_empty() {
            return;
        }
        let mut args = self.remove.to_vec();
        args.extend(self.names.iter().map(String::as_str));
        let _ = docker(&args);
    }
}

/// Run docker; how long it took and what it said.
fn docker_timed(args: &[&str]) -> (Duration, Output) {
    let started = Instant::now();
    let out = docker(args);
    (started.elapsed(), out)
}

/// `f(0..n)` on `threads` threads (thread t takes t, t + threads, ...); results in order.
fn in_parallel<T: Send>(n: usize, threads: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    std::thread::scope(|s| {
        let f = &f;
        let workers: Vec<_> = (0..threads.min(n))
            .map(|t| {
                s.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| (i, f(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for worker in workers {
            for (i, result) in worker.join().unwrap() {
                results[i] = Some(result);
            }
        }
    });
    results.into_iter().map(Option::unwrap).collect()
}

/// Asserts that every call (one per name) worked within `DOCKER_CALL_LIMIT`, naming those that
/// did not; returns the slowest call's time.
fn assert_calls_ok(what: &str, names: &[String], calls: &[(Duration, Output)]) -> Duration {
    let bad: Vec<String> = names
        .iter()
        .zip(calls)
        .filter(|(_, (took, out))| !out.status.success() || *took > DOCKER_CALL_LIMIT)
        .map(|(name, (took, out))| {
            format!(
                "{name}: {took:.1?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} `{what}` calls failed or took over {DOCKER_CALL_LIMIT:?}:\n{}",
        bad.len(),
        calls.len(),
        bad.join("\n")
    );
    calls
        .iter()
        .map(|(took, _)| *took)
        .max()
        .unwrap_or_default()
}

/// Like `wait_until`, for a check that says what is still wrong; the last answer is in the
/// panic message.
fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(why) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting until {what}: {why}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `docker inspect -f {{.State.<field>}}` of a container ("" if docker fails).
fn container_state(name: &str, field: &str) -> String {
    let format = format!("{{{{.State.{field}}}}}");
    let out = docker(&["inspect", "-f", &format, name]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `docker volume inspect -f {{.Status.<field>}}`.
fn volume_status(volume: &Volume, field: &str) -> String {
    let format = format!("{{{{.Status.{field}}}}}");
    docker_ok(&["volume", "inspect", "-f", &format, &volume.0])
        .trim()
        .to_string()
}

/// `scripts/docker <command>` of this repository; its output goes to the test's stderr.
fn scripts_docker(command: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/docker");
    let out = Command::new(&script)
        .arg(command)
        .output()
        .expect("scripts/docker runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/docker {command} failed: {said}"
    );
    eprint!("{said}");
}

/// Appends "<boot> <n>" to /data/log.txt every 0.2 s (boot: random per start of the container,
/// n: 1, 2, ...), and prints each line to stdout once its append (open, write, close, which
/// uploads) worked. A failed append is printed to stderr and stops the container; SIGTERM
/// stops it at once (sh as pid 1 would ignore it, and Docker would wait 10 s).
const APPENDER: &str = "trap 'exit 0' TERM; b=$(cut -c1-8 /proc/sys/kernel/random/uuid); n=0; \
     while :; do n=$((n+1)); \
     echo \"$b $n\" >> /data/log.txt || { echo \"append $b $n failed\" >&2; exit 1; }; \
     echo \"$b $n\"; sleep 0.2; done";

/// The lines of APPENDER's file or output, grouped by boot in order: (boot, [n, ...]).
fn appends_by_boot(text: &str) -> Vec<(String, Vec<u64>)> {
    let mut boots: Vec<(String, Vec<u64>)> = Vec::new();
    for line in text.lines() {
        let parsed = line
            .split_once(' ')
            .and_then(|(boot, n)| Some((boot, n.parse::<u64>().ok()?)));
        let Some((boot, n)) = parsed else {
            panic!("line {line:?} is not \"<boot> <n>\" in:\n{text}")
        };
        match boots.last_mut() {
            Some((last, ns)) if last == boot => ns.push(n),
            _ => boots.push((boot.to_string(), vec![n])),
        }
    }
    boots
}

/// 1, 2, ..., len: no append lost, none twice.
fn is_one_to_n(ns: &[u64]) -> bool {
    ns.iter().zip(1..).all(|(n, want)| *n == want)
}

#[test]
fn a_docker_daemon_restart_keeps_the_volume_and_its_container_resumes_appending() {
    let Some((fx, _turn)) = plugin() else { return };
    // Only a daemon this test run started may be restarted: scripts/test sets this when it
    // started dockerd itself. A developer's own daemon (and its containers) is left alone,
    // even with S3VOL_REQUIRE_DOCKER=1.
    if std::env::var("S3VOL_E2E_RESTART_DOCKER").as_deref() != Ok("1") {
        eprintln!(
            "skipping the Docker daemon restart: S3VOL_E2E_RESTART_DOCKER=1 is not set \
             (scripts/test sets it only when it started dockerd itself with scripts/docker)"
        );
        return;
    }
    let volume = Volume::create("restart", &[]);
    let key = |file: &str| format!("{}/{file}", volume.0);
    run(
        &volume,
        "head -c 3000000 /dev/urandom > /data/before.bin && md5sum /data/before.bin > /data/before.md5",
    );
    let before = fx.object(&fx.default_bucket, &key("before.bin"));
    assert_eq!(before.len(), 3_000_000);
    let writer = Container::start_with(
        "restart-writer",
        &volume,
        &["--restart", "always"],
        APPENDER,
    );
    let file_lines = || {
        let out = writer.exec("cat /data/log.txt");
        out.status
            .success()
            .then(|| appends_by_boot(&String::from_utf8_lossy(&out.stdout)))
    };
    wait_until(
        "the writer appended 10 lines",
        Duration::from_secs(30),
        || file_lines().is_some_and(|boots| boots.first().is_some_and(|(_, ns)| ns.len() >= 10)),
    );
    let first_start = container_state(&writer.0, "StartedAt");
    let before_restart = file_lines().unwrap();
    assert_eq!(before_restart.len(), 1, "{before_restart:?}");

    let t0 = Instant::now();
    scripts_docker("stop");
    let stopped = t0.elapsed();
    assert!(
        !docker(&["info"]).status.success(),
        "a Docker daemon still answers after scripts/docker stop: S3VOL_E2E_RESTART_DOCKER=1 \
         needs a daemon that scripts/docker started"
    );
    scripts_docker("start");
    let answering = t0.elapsed();
    wait_until(
        "the daemon enabled the plugin again",
        Duration::from_secs(60),
        plugin_enabled,
    );
    let enabled = t0.elapsed();
    wait_until(
        "the daemon started the writer again",
        Duration::from_secs(60),
        || {
            container_state(&writer.0, "Running") == "true"
                && container_state(&writer.0, "StartedAt") != first_start
        },
    );
    let running = t0.elapsed();
    // Lines of the second run in the file (as its container sees it).
    let second_run = || {
        file_lines()
            .and_then(|boots| boots.get(1).map(|(_, ns)| ns.len()))
            .unwrap_or(0)
    };
    wait_until(
        "the restarted writer appended a line",
        Duration::from_secs(30),
        || second_run() >= 1,
    );
    let resumed = t0.elapsed();
    wait_until(
        "the restarted writer appended 10 lines",
        Duration::from_secs(30),
        || second_run() >= 10,
    );
    eprintln!(
        "daemon restart: stopped after {stopped:.1?}, answering after {answering:.1?}, plugin \
         enabled after {enabled:.1?}, writer running after {running:.1?}, first new append \
         after {resumed:.1?}"
    );

    // Docker still has the volume, as the plugin's, and the test image.
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    let listed = format!("{}:latest {}", plugin_name(), volume.0);
    assert!(ls.lines().any(|l| l == listed), "{listed} not in:\n{ls}");
    assert!(docker(&["image", "inspect", IMAGE]).status.success());
    // The plugin saw the writer's unmount at shutdown and its mount at the restart: one mount.
    assert_eq!(volume_status(&volume, "Mounted"), "true");
    assert_eq!(volume_status(&volume, "Mounts"), "1");

    // Every append the writer reported (docker logs keeps both runs' output) is in the object,
    // read after the logs: the first run's lines, then the second run's, none lost or doubled.
    let logs = docker(&["logs", &writer.0]);
    assert!(
        logs.stderr.is_empty(),
        "the writer failed: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    let reported = appends_by_boot(&String::from_utf8_lossy(&logs.stdout));
    let stored_text = String::from_utf8(fx.object(&fx.default_bucket, &key("log.txt"))).unwrap();
    let stored = appends_by_boot(&stored_text);
    let boots = |b: &[(String, Vec<u64>)]| b.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
    assert_eq!(
        boots(&reported).len(),
        2,
        "two runs of the writer: {reported:?}"
    );
    assert_eq!(boots(&stored), boots(&reported), "{stored_text}");
    for ((boot, stored_ns), (_, reported_ns)) in stored.iter().zip(&reported) {
        assert!(
            is_one_to_n(stored_ns),
            "appends of run {boot} lost or doubled:\n{stored_text}"
        );
        assert!(
            stored_ns.len() >= reported_ns.len(),
            "run {boot} reported {} appends, the object has {}:\n{stored_text}",
            reported_ns.len(),
            stored_ns.len()
        );
    }
    // The first run's lines: all that were seen before the restart, and those it reported.
    let first_run = &stored[0].1;
    assert_eq!(stored[0].0, before_restart[0].0);
    assert!(
        first_run.len() >= before_restart[0].1.len(),
        "run {} had {} appends before the restart:\n{stored_text}",
        stored[0].0,
        before_restart[0].1.len()
    );
    assert!(
        first_run.len() <= reported[0].1.len() + 1,
        "run {} has appends it never reported:\n{stored_text}",
        stored[0].0
    );

    // The file from before the restart is intact, through the mount and in S3.
    assert_eq!(
        run(&volume, "md5sum -c /data/before.md5"),
        "/data/before.bin: OK\n"
    );
    assert!(fx.object(&fx.default_bucket, &key("before.bin")) == before);

    // Stale mount IDs do not keep the volume: with the writer gone, it can be removed.
    drop(writer);
    assert_eq!(volume_status(&volume, "Mounts"), "0");
    docker_ok(&["volume", "rm", &volume.0]);
}

#[test]
fn fifty_containers_started_at_once_share_one_volume() {
    const CONTAINERS: usize = 50;
    let Some((fx, _turn)) = plugin() else { return };
    let volume = Volume::create("fifty", &[]);
    let names: Vec<String> = (0..CONTAINERS)
        .map(|i| format!("fifty-{i}-{}", std::process::id()))
        .collect();
    let containers = Batch::containers(&names);
    let mount = volume.mount("/data");

    // All at once: one thread per `docker run -d`.
    let started = Instant::now();
    let runs = in_parallel(CONTAINERS, CONTAINERS, |i| {
        docker_timed(&[
            "run",
            "-d",
            "--name",
            &names[i],
            "-v",
            &mount,
            IMAGE,
            "sh",
            "-c",
            &format!("echo c{i} > /data/c{i} && exec sleep 600"),
        ])
    });
    let start_time = started.elapsed();
    let slowest = assert_calls_ok("docker run -d", &names, &runs);
    let mut inspect = vec!["inspect", "-f", "{{.Name}} {{.State.Running}}"];
    inspect.extend(names.iter().map(String::as_str));
    wait_for("all 50 containers run", Duration::from_secs(120), || {
        let states = docker_ok(&inspect);
        let not_running: Vec<&str> = states.lines().filter(|l| !l.ends_with(" true")).collect();
        match not_running.is_empty() {
            true => Ok(()),
            false => Err(not_running.join(", ")),
        }
    });
    let all_running = started.elapsed();
    eprintln!(
        "{CONTAINERS} containers on one volume: `docker run -d` all returned after \
         {start_time:.1?} (slowest call {slowest:.1?}), all running after {all_running:.1?}"
    );

    // A 51st container sees every file, with its content.
    let reader = Container::start("fifty-reader", &volume, "exec sleep 600");
    let expected: String = (0..CONTAINERS).map(|i| format!("c{i}\n")).collect();
    let read_all = format!(
        "for i in $(seq 0 {}); do cat /data/c$i 2>/dev/null || echo missing c$i; done",
        CONTAINERS - 1
    );
    wait_for(
        "a 51st container sees all 50 files",
        Duration::from_secs(30),
        || {
            let out = reader.exec(&read_all);
            let seen = String::from_utf8_lossy(&out.stdout);
            match seen == expected {
                true => Ok(()),
                false => Err(format!("it read:\n{seen}")),
            }
        },
    );
    // ... and so does S3.
    let (rt, store) = fx.store(&fx.default_bucket);
    wait_for("all 50 objects are in S3", Duration::from_secs(30), || {
        let wrong: Vec<String> = (0..CONTAINERS)
            .filter(|i| {
                let key = format!("{}/c{i}", volume.0);
                let got = rt.block_on(store.get_range(&key, 0..1 << 20, None));
                !got.is_ok_and(|bytes| *bytes == *format!("c{i}\n").as_bytes())
            })
            .map(|i| format!("c{i}"))
            .collect();
        match wrong.is_empty() {
            true => Ok(()),
            false => Err(format!("missing or wrong: {}", wrong.join(" "))),
        }
    });

    // Removing them all unmounts the volume and leaves no mount behind.
    drop(reader);
    let mut rm = vec!["rm", "-f"];
    rm.extend(names.iter().map(String::as_str));
    let (rm_time, out) = docker_timed(&rm);
    assert!(
        out.status.success() && rm_time < DOCKER_CALL_LIMIT,
        "docker rm -f of all took {rm_time:.1?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{CONTAINERS} containers removed in {rm_time:.1?}");
    assert_eq!(volume_status(&volume, "Mounts"), "0");
    assert_eq!(volume_status(&volume, "Mounted"), "false");
    docker_ok(&["volume", "rm", &volume.0]);
    containers.removed();
}

#[test]
fn five_hundred_volumes_are_created_listed_and_removed() {
    const VOLUMES: usize = 500;
    const THREADS: usize = 8;
    let Some((fx, _turn)) = plugin() else { return };
    // No `-o bucket`: each volume is a prefix of the plugin's default bucket, so creating one
    // makes no bucket (and no object).
    let names: Vec<String> = (0..VOLUMES)
        .map(|i| format!("many-{i}-{}", std::process::id()))
        .collect();
    let volumes = Batch::volumes(&names);

    let started = Instant::now();
    let creates = in_parallel(VOLUMES, THREADS, |i| {
        docker_timed(&["volume", "create", "-d", plugin_name(), &names[i]])
    });
    let create_time = started.elapsed();
    let slowest_create = assert_calls_ok("docker volume create", &names, &creates);

    let started = Instant::now();
    let ls = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    let list_time = started.elapsed();
    let listed: std::collections::HashMap<&str, &str> = ls
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(driver, name)| (name, driver)))
        .collect();
    let driver = format!("{}:latest", plugin_name());
    let wrong: Vec<&String> = names
        .iter()
        .filter(|n| listed.get(n.as_str()) != Some(&driver.as_str()))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {VOLUMES} volumes not listed with driver {driver}: {wrong:?}",
        wrong.len()
    );

    let some = [&names[0], &names[VOLUMES / 2], &names[VOLUMES - 1]];
    let mut inspect = vec!["volume", "inspect"];
    inspect.extend(some.iter().map(|n| n.as_str()));
    let inspected: serde_json::Value = serde_json::from_str(&docker_ok(&inspect)).unwrap();
    assert_eq!(inspected.as_array().map(Vec::len), Some(some.len()));
    for (volume, name) in inspected.as_array().unwrap().iter().zip(some) {
        assert_eq!(volume["Name"], **name);
        assert_eq!(volume["Driver"], driver.as_str());
        assert_eq!(
            volume["Status"]["Bucket"],
            fx.default_bucket.as_str(),
            "{volume}"
        );
        assert_eq!(volume["Status"]["Prefix"], format!("{name}/"), "{volume}");
        assert_eq!(volume["Status"]["Mounts"], 0, "{volume}");
    }

    let started = Instant::now();
    let removes = in_parallel(VOLUMES, THREADS, |i| {
        docker_timed(&["volume", "rm", &names[i]])
    });
    let remove_time = started.elapsed();
    let slowest_remove = assert_calls_ok("docker volume rm", &names, &removes);
    let ls = docker_ok(&["volume", "ls", "-q"]);
    let ours: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
    let left: Vec<&str> = ls.lines().filter(|l| ours.contains(l)).collect();
    assert!(left.is_empty(), "still listed after rm: {left:?}");
    eprintln!(
        "{VOLUMES} volumes from {THREADS} threads: created in {create_time:.1?} (slowest \
         {slowest_create:.1?}), listed in {list_time:.1?}, removed in {remove_time:.1?} \
         (slowest {slowest_remove:.1?})"
    );
    volumes.removed();
}
