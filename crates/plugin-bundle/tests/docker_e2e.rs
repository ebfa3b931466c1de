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
        let name = format!("{name_tag}-{}", std::process::id());
        let _ = docker(&["rm", "-f", &name]);
        docker_ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "-v",
            &volume.mount("/data"),
            IMAGE,
            "sh",
            "-c",
            script,
        ]);
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
