//! The plugin API through its router, with a fake mounter: Docker's wire format, the volume
//! lifecycle, mount-ID sets, concurrency, recovery from the catalogue and bad input.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use tower::ServiceExt;
use volume_plugin::api::router;
use volume_plugin::catalogue::Catalogue;
use volume_plugin::manager::VolumeManager;
use volume_plugin::mounter::{MountedVolume, Mounter};
use volume_plugin::options::VolumeSpec;
use volume_plugin::settings::PluginSettings;

/// Counts mounts instead of making them; buckets named `unreachable` fail the probe.
#[derive(Debug, Default, Clone)]
struct FakeMounter {
    live: Arc<AtomicUsize>,
    made: Arc<AtomicUsize>,
    /// Alive flag of every mount made, in order.
    mounts: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
    /// The most mounts live at once (two would mean two filesystems on one mountpoint).
    max_live: Arc<AtomicUsize>,
    /// How long an unmount takes (uploading what was written).
    unmount_ms: Arc<AtomicU64>,
    /// While set, unmounts fail as a mount in use does (EBUSY).
    busy: Arc<AtomicBool>,
    /// Mounts begun, and how long one takes (at least 20 ms).
    started: Arc<AtomicUsize>,
    mount_ms: Arc<AtomicU64>,
    /// Volumes with a live mount a crashed worker left, to be taken over; and those let go.
    left_live: Arc<Mutex<Vec<String>>>,
    abandoned: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug)]
struct FakeMount {
    alive: Arc<AtomicBool>,
    live: Arc<AtomicUsize>,
    unmount_ms: Arc<AtomicU64>,
    busy: Arc<AtomicBool>,
}

#[async_trait]
impl Mounter for FakeMounter {
    type Mounted = FakeMount;

    async fn probe(&self, spec: &VolumeSpec) -> Result<(), String> {
        if spec.bucket.as_str() == "unreachable" {
            return Err("endpoint http://127.0.0.1:1 refused the connection".into());
        }
        Ok(())
    }

    async fn mount(
        &self,
        name: &str,
        _spec: &VolumeSpec,
        mountpoint: &Path,
    ) -> Result<FakeMount, String> {
        // A live mount is taken over as it is; anything else needs a prepared mountpoint.
        let taken_over = {
            let mut left_live = self.left_live.lock().unwrap();
            let at = left_live.iter().position(|v| v == name);
            at.map(|at| left_live.remove(at)).is_some()
        };
        assert!(
            taken_over || mountpoint.is_dir(),
            "the manager prepares the mountpoint"
        );
        self.started.fetch_add(1, Ordering::SeqCst);
        // Long enough for concurrent calls to pile up behind a mount in progress.
        let ms = self.mount_ms.load(Ordering::SeqCst).max(20);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let alive = Arc::new(AtomicBool::new(true));
        self.mounts.lock().unwrap().push(alive.clone());
        self.made.fetch_add(1, Ordering::SeqCst);
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_live.fetch_max(live, Ordering::SeqCst);
        Ok(FakeMount {
            alive,
            live: self.live.clone(),
            unmount_ms: self.unmount_ms.clone(),
            busy: self.busy.clone(),
        })
    }

    fn takes_over(&self, name: &str) -> bool {
        self.left_live.lock().unwrap().iter().any(|v| v == name)
    }

    fn live_mounts(&self) -> Vec<String> {
        self.left_live.lock().unwrap().clone()
    }

    fn abandon_live_mount(&self, name: &str, _mountpoint: &Path) {
        self.left_live.lock().unwrap().retain(|v| v != name);
        self.abandoned.lock().unwrap().push(name.to_string());
    }
}

#[async_trait]
impl MountedVolume for FakeMount {
    fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    fn status(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("CacheHits".into(), json!(0));
        m
    }

    async fn unmount(self) -> Result<(), (Self, String)> {
        let ms = self.unmount_ms.load(Ordering::SeqCst).max(5);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if self.busy.load(Ordering::SeqCst) {
            return Err((self, "the mount is still in use".into()));
        }
        self.live.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

struct Plugin {
    dir: tempfile::TempDir,
    mounter: FakeMounter,
    manager: Arc<VolumeManager<FakeMounter>>,
}

fn settings(dir: &Path, default_bucket: Option<&str>) -> PluginSettings {
    PluginSettings {
        socket: dir.join("s3vol.sock"),
        mount_root: dir.join("mnt"),
        state_dir: dir.join("state"),
        cache_dir: dir.join("cache"),
        config_dir: dir.join("config"),
        endpoint_url: Some("http://127.0.0.1:7480".into()),
        region: "us-east-1".into(),
        path_style: Default::default(),
        ca_bundle: None,
        default_bucket: default_bucket.map(|b| b.parse().unwrap()),
        cache_size: 1 << 30,
        memory_limit: 64 << 20,
        metrics_addr: None,
    }
}

impl Plugin {
    fn new(default_bucket: Option<&str>) -> Self {
        Self::in_dir(tempfile::tempdir().unwrap(), default_bucket)
    }

    /// A plugin (re)started on the state of `dir`.
    fn in_dir(dir: tempfile::TempDir, default_bucket: Option<&str>) -> Self {
        let settings = settings(dir.path(), default_bucket);
        let catalogue = Catalogue::load(&settings.state_dir).unwrap();
        let mounter = FakeMounter::default();
        let manager = Arc::new(VolumeManager::new(
            mounter.clone(),
            Arc::new(settings),
            catalogue,
        ));
        Self {
            dir,
            mounter,
            manager,
        }
    }

    fn restart(self) -> Self {
        Self::in_dir(self.dir, None)
    }

    /// One call as Docker makes it: POST, JSON body, no Content-Type.
    async fn call(&self, endpoint: &str, body: &str) -> (StatusCode, Value) {
        let request = Request::post(endpoint)
            .header("Accept", "application/vnd.docker.plugins.v1.2+json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = router(self.manager.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{endpoint} answered non-JSON ({e}): {bytes:?}"));
        (status, value)
    }

    /// One call with any bytes as its body: the status and the raw answer.
    async fn call_raw(&self, endpoint: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = Request::post(endpoint).body(Body::from(body)).unwrap();
        let response = router(self.manager.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn ok(&self, endpoint: &str, body: Value) -> Value {
        let (status, reply) = self.call(endpoint, &body.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{endpoint} {body}: {reply}");
        assert!(reply.get("Err").is_none(), "{endpoint}: {reply}");
        reply
    }

    async fn err(&self, endpoint: &str, body: Value) -> String {
        let (status, reply) = self.call(endpoint, &body.to_string()).await;
        assert_ne!(
            status,
            StatusCode::OK,
            "{endpoint} {body} succeeded: {reply}"
        );
        reply["Err"]
            .as_str()
            .unwrap_or_else(|| panic!("no Err in {reply}"))
            .to_string()
    }

    async fn create(&self, name: &str, opts: Value) {
        self.ok("/VolumeDriver.Create", json!({"Name": name, "Opts": opts}))
            .await;
    }

    async fn mount(&self, name: &str, id: &str) -> String {
        let reply = self
            .ok("/VolumeDriver.Mount", json!({"Name": name, "ID": id}))
            .await;
        reply["Mountpoint"].as_str().unwrap().to_string()
    }

    async fn unmount(&self, name: &str, id: &str) {
        self.ok("/VolumeDriver.Unmount", json!({"Name": name, "ID": id}))
            .await;
    }

    async fn get(&self, name: &str) -> Value {
        self.ok("/VolumeDriver.Get", json!({"Name": name})).await["Volume"].clone()
    }

    fn catalogue_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("state/volumes.json")).unwrap_or_default()
    }

    fn stored_ids(&self, name: &str) -> BTreeSet<String> {
        let catalogue = Catalogue::load(&self.dir.path().join("state")).unwrap();
        catalogue.get(name).unwrap().mount_ids.clone()
    }

    fn live(&self) -> usize {
        self.mounter.live.load(Ordering::SeqCst)
    }

    fn made(&self) -> usize {
        self.mounter.made.load(Ordering::SeqCst)
    }
}

fn id(n: usize) -> String {
    format!("{n:064x}")
}

#[tokio::test]
async fn handshake_and_capabilities() {
    let plugin = Plugin::new(None);
    // Activate comes with an empty body.
    let (status, reply) = plugin.call("/Plugin.Activate", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(reply, json!({"Implements": ["VolumeDriver"]}));
    let reply = plugin.ok("/VolumeDriver.Capabilities", json!({})).await;
    assert_eq!(reply, json!({"Capabilities": {"Scope": "global"}}));
    let reply = plugin.ok("/VolumeDriver.List", json!({})).await;
    assert_eq!(reply, json!({"Volumes": []}));
}

#[tokio::test]
async fn create_get_list_with_status_and_created_at() {
    let plugin = Plugin::new(None);
    plugin
        .create(
            "data",
            json!({"bucket": "bkt1", "prefix": "team", "profile": "ops", "uid": "1000"}),
        )
        .await;
    let volume = plugin.get("data").await;
    assert_eq!(volume["Name"], "data");
    assert!(
        volume.get("Mountpoint").is_none(),
        "not mounted yet: {volume}"
    );
    let created = volume["CreatedAt"].as_str().unwrap();
    time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("CreatedAt {created:?} is not RFC 3339: {e}"));
    let status = &volume["Status"];
    assert_eq!(status["Bucket"], "bkt1");
    assert_eq!(status["Prefix"], "team/");
    assert_eq!(status["Endpoint"], "http://127.0.0.1:7480");
    assert_eq!(status["Profile"], "ops");
    assert_eq!(status["Mounts"], 0);
    assert_eq!(status["Mounted"], false);
    let list = plugin.ok("/VolumeDriver.List", json!({})).await;
    assert_eq!(list["Volumes"][0]["Name"], "data");
    assert_eq!(list["Volumes"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn null_opts_use_the_default_bucket_or_say_how_to_set_one() {
    let plugin = Plugin::new(Some("shared"));
    plugin.create("newvol", Value::Null).await;
    let status = plugin.get("newvol").await["Status"].clone();
    assert_eq!(
        (&status["Bucket"], &status["Prefix"]),
        (&json!("shared"), &json!("newvol/"))
    );

    let plugin = Plugin::new(None);
    let err = plugin
        .err(
            "/VolumeDriver.Create",
            json!({"Name": "newvol", "Opts": null}),
        )
        .await;
    assert!(
        err.contains("-o bucket=NAME") && err.contains("S3VOL_DEFAULT_BUCKET"),
        "{err}"
    );
    let err = plugin
        .err("/VolumeDriver.Get", json!({"Name": "newvol"}))
        .await;
    assert!(err.contains("no such volume"), "{err}");
}

#[tokio::test]
async fn create_errors_are_clear_and_create_nothing() {
    let plugin = Plugin::new(None);
    let err = plugin
        .err(
            "/VolumeDriver.Create",
            json!({"Name": "v", "Opts": {"bucket": "bkt", "regoin": "x"}}),
        )
        .await;
    assert!(
        err.contains("unknown option \"regoin\" (did you mean \"region\"?)"),
        "{err}"
    );
    let err = plugin
        .err(
            "/VolumeDriver.Create",
            json!({"Name": "v", "Opts": {"bucket": "bkt", "secret_key": "hunter2"}}),
        )
        .await;
    assert!(
        err.contains("profile=NAME") && !err.contains("hunter2"),
        "{err}"
    );
    let err = plugin
        .err(
            "/VolumeDriver.Create",
            json!({"Name": "v", "Opts": {"bucket": "unreachable"}}),
        )
        .await;
    assert!(
        err.contains("cannot create volume v") && err.contains("refused"),
        "{err}"
    );
    assert_eq!(
        plugin.ok("/VolumeDriver.List", json!({})).await["Volumes"],
        json!([])
    );
    assert!(!plugin.catalogue_text().contains("hunter2"));
}

#[tokio::test]
async fn creating_an_existing_name_keeps_the_first_options() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "first"})).await;
    let created = plugin.get("v").await["CreatedAt"].clone();
    plugin.create("v", json!({"bucket": "second"})).await;
    let volume = plugin.get("v").await;
    assert_eq!(volume["Status"]["Bucket"], "first");
    assert_eq!(volume["CreatedAt"], created);
}

#[tokio::test]
async fn mount_ids_share_one_mount_until_the_last_unmount() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    let first = plugin.mount("v", &id(1)).await;
    let second = plugin.mount("v", &id(2)).await;
    assert_eq!(first, second);
    assert_eq!(PathBuf::from(&first), plugin.dir.path().join("mnt/v"));
    assert_eq!((plugin.made(), plugin.live()), (1, 1));
    assert_eq!(plugin.stored_ids("v").len(), 2);
    let volume = plugin.get("v").await;
    assert_eq!(volume["Mountpoint"], first.as_str());
    assert_eq!(volume["Status"]["Mounts"], 2);
    assert_eq!(volume["Status"]["Mounted"], true);
    let path = plugin.ok("/VolumeDriver.Path", json!({"Name": "v"})).await;
    assert_eq!(path["Mountpoint"], first.as_str());

    plugin.unmount("v", &id(1)).await;
    assert_eq!(plugin.live(), 1, "one container still uses it");
    // Repeated and unknown IDs change nothing.
    plugin.unmount("v", &id(1)).await;
    plugin.unmount("v", &id(99)).await;
    assert_eq!(plugin.live(), 1);
    plugin.unmount("v", &id(2)).await;
    assert_eq!(plugin.live(), 0);
    assert!(plugin.stored_ids("v").is_empty());
    let path = plugin.ok("/VolumeDriver.Path", json!({"Name": "v"})).await;
    assert_eq!(path, json!({}));
    // Unmount of an unknown volume (Docker sends it after failed mounts) is tolerated too.
    plugin.unmount("gone", &id(3)).await;
}

#[tokio::test]
async fn remove_is_refused_while_mounted_and_forgets_only_the_volume() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    plugin.mount("v", &id(1)).await;
    let err = plugin
        .err("/VolumeDriver.Remove", json!({"Name": "v"}))
        .await;
    assert!(err.contains("in use by 1 mount"), "{err}");
    plugin.unmount("v", &id(1)).await;
    plugin
        .ok("/VolumeDriver.Remove", json!({"Name": "v"}))
        .await;
    assert!(!plugin.catalogue_text().contains("\"v\""));
    let err = plugin.err("/VolumeDriver.Get", json!({"Name": "v"})).await;
    assert!(err.contains("no such volume"), "{err}");
    // Removing again (or something never created) succeeds: Docker then forgets it too.
    plugin
        .ok("/VolumeDriver.Remove", json!({"Name": "v"}))
        .await;
    let err = plugin
        .err("/VolumeDriver.Mount", json!({"Name": "v", "ID": id(2)}))
        .await;
    assert!(err.contains("no such volume"), "{err}");
}

/// A mount that cannot go (a process outside Docker still uses it) stays the volume's mount:
/// the next Mount uses it instead of mounting a second filesystem over it, and Remove is
/// refused, keeping the volume, until the unmount works.
#[tokio::test]
async fn a_mount_still_in_use_stays_mounted_and_blocks_remove_until_it_is_free() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    let mountpoint = plugin.mount("v", &id(1)).await;
    plugin.mounter.busy.store(true, Ordering::SeqCst);

    let err = plugin
        .err("/VolumeDriver.Unmount", json!({"Name": "v", "ID": id(1)}))
        .await;
    assert!(err.contains("still in use"), "{err}");
    assert_eq!(plugin.live(), 1, "the mount goes on");
    let path = plugin.ok("/VolumeDriver.Path", json!({"Name": "v"})).await;
    assert_eq!(path["Mountpoint"], mountpoint.as_str());

    assert_eq!(plugin.mount("v", &id(2)).await, mountpoint);
    assert_eq!((plugin.made(), plugin.live()), (1, 1), "no second mount");
    let err = plugin
        .err("/VolumeDriver.Unmount", json!({"Name": "v", "ID": id(2)}))
        .await;
    assert!(err.contains("still in use"), "{err}");
    let err = plugin
        .err("/VolumeDriver.Remove", json!({"Name": "v"}))
        .await;
    assert!(err.contains("still in use"), "{err}");
    assert!(
        plugin.catalogue_text().contains("\"v\""),
        "the volume is kept"
    );

    plugin.mounter.busy.store(false, Ordering::SeqCst);
    plugin
        .ok("/VolumeDriver.Remove", json!({"Name": "v"}))
        .await;
    assert_eq!(plugin.live(), 0);
    assert!(!plugin.catalogue_text().contains("\"v\""));
}

/// A stop while another call holds a volume's turn (a mount waiting on a slow backend) still
/// unmounts the other volumes, within its limit: Docker kills the plugin 10 s after the stop.
#[tokio::test]
async fn a_shutdown_is_not_held_up_by_a_call_in_progress() {
    let plugin = Plugin::new(None);
    plugin.create("a", json!({"bucket": "bkt"})).await;
    plugin.create("slow", json!({"bucket": "bkt"})).await;
    plugin.mount("a", &id(1)).await;
    plugin.mounter.mount_ms.store(60_000, Ordering::SeqCst);
    let manager = plugin.manager.clone();
    let stuck = tokio::spawn(async move { manager.mount("slow", &id(2)).await });
    while plugin.mounter.started.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let started = std::time::Instant::now();
    plugin
        .manager
        .shutdown_within(Duration::from_millis(300))
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the shutdown waited {:?} for the slow mount",
        started.elapsed()
    );
    assert_eq!(plugin.live(), 0, "volume a was unmounted");
    stuck.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_mounts_and_unmounts_end_in_the_right_state() {
    let plugin = Arc::new(Plugin::new(None));
    plugin.create("v", json!({"bucket": "bkt"})).await;
    let calls = |range: std::ops::Range<usize>, mount: bool| {
        range
            .map(|n| {
                let plugin = plugin.clone();
                tokio::spawn(async move {
                    if mount {
                        plugin.mount("v", &id(n)).await;
                    } else {
                        plugin.unmount("v", &id(n)).await;
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    // 20 mounts at once: one filesystem mount, 20 IDs.
    futures::future::try_join_all(calls(0..20, true))
        .await
        .unwrap();
    assert_eq!((plugin.made(), plugin.live()), (1, 1));
    assert_eq!(plugin.stored_ids("v").len(), 20);
    // 10 unmounts and 10 new mounts interleaved: still mounted, 20 IDs.
    let mut mixed = calls(0..10, false);
    mixed.extend(calls(20..30, true));
    futures::future::try_join_all(mixed).await.unwrap();
    assert_eq!(plugin.live(), 1);
    let expected: BTreeSet<String> = (10..30).map(id).collect();
    assert_eq!(plugin.stored_ids("v"), expected);
    // All 20 unmounted at once: nothing mounted, no IDs.
    futures::future::try_join_all(calls(10..30, false))
        .await
        .unwrap();
    assert_eq!(plugin.live(), 0);
    assert!(plugin.stored_ids("v").is_empty());
}

#[tokio::test]
async fn a_restarted_plugin_keeps_its_catalogue_and_mounts_what_docker_holds() {
    let plugin = Plugin::new(Some("dflt"));
    plugin.create("busy", Value::Null).await;
    plugin.create("idle", json!({"bucket": "bkt"})).await;
    plugin.mount("busy", &id(1)).await;
    plugin.mount("busy", &id(2)).await;
    let created = plugin.get("busy").await["CreatedAt"].clone();

    // A new process on the same state (the default bucket setting is gone now).
    let plugin = plugin.restart();
    assert_eq!(plugin.live(), 0);
    // Get answers from the catalogue at once, before any mount is back.
    let volume = plugin.get("busy").await;
    assert_eq!(volume["CreatedAt"], created);
    assert_eq!(volume["Status"]["Bucket"], "dflt");
    assert_eq!(volume["Status"]["Prefix"], "busy/");
    assert_eq!(volume["Status"]["Mounts"], 2);
    assert_eq!(
        plugin.ok("/VolumeDriver.List", json!({})).await["Volumes"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    plugin.manager.restore_mounts().await;
    assert_eq!(
        (plugin.made(), plugin.live()),
        (1, 1),
        "only the volume Docker holds is mounted"
    );
    let path = plugin
        .ok("/VolumeDriver.Path", json!({"Name": "busy"}))
        .await;
    assert!(path["Mountpoint"].as_str().unwrap().ends_with("mnt/busy"));
    // The old IDs still count: the last one's Unmount unmounts.
    plugin.unmount("busy", &id(1)).await;
    plugin.unmount("busy", &id(2)).await;
    assert_eq!(plugin.live(), 0);
}

#[tokio::test]
async fn a_live_mount_left_by_a_crashed_worker_is_taken_over_or_let_go_when_unusable() {
    let plugin = Plugin::new(None);
    plugin.create("good", json!({"bucket": "bkt"})).await;
    plugin.create("bad", json!({"bucket": "bkt"})).await;
    plugin.mount("good", &id(1)).await;
    plugin.mount("bad", &id(2)).await;
    // The worker crashed with both mounts live; meanwhile the record of "bad" was changed
    // into options this s3vol cannot use (a newer version's, say).
    let catalogue = plugin.dir.path().join("state/volumes.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&catalogue).unwrap()).unwrap();
    for volume in state["volumes"].as_array_mut().unwrap() {
        if volume["name"] == "bad" {
            volume["options"]["bucket"] = json!("Not A Bucket");
        }
    }
    std::fs::write(&catalogue, serde_json::to_vec(&state).unwrap()).unwrap();
    let plugin = plugin.restart();
    *plugin.mounter.left_live.lock().unwrap() = vec!["good".into(), "bad".into()];
    plugin.manager.restore_mounts().await;
    assert!(plugin.mounter.left_live.lock().unwrap().is_empty());
    assert_eq!(*plugin.mounter.abandoned.lock().unwrap(), ["bad"]);
    assert_eq!(plugin.made(), 1, "the good one taken over");
    let err = plugin
        .err("/VolumeDriver.Mount", json!({"Name": "bad", "ID": id(3)}))
        .await;
    assert!(err.contains("options this s3vol cannot use"), "{err}");
}

#[tokio::test]
async fn a_mount_that_died_is_replaced_at_the_next_mount() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    plugin.mount("v", &id(1)).await;
    plugin.mounter.mounts.lock().unwrap()[0].store(false, Ordering::SeqCst);
    assert_eq!(plugin.get("v").await["Status"]["Mounted"], false);
    plugin.mount("v", &id(2)).await;
    assert_eq!((plugin.made(), plugin.live()), (2, 1));
    assert_eq!(plugin.get("v").await["Status"]["Mounted"], true);
}

#[tokio::test]
async fn malformed_requests_get_clean_errors() {
    let plugin = Plugin::new(None);
    let cases = [
        ("/VolumeDriver.Create", "{\"Name\": "),
        ("/VolumeDriver.Create", "[1, 2]"),
        ("/VolumeDriver.Mount", "{\"Name\": 5}"),
        ("/VolumeDriver.Get", "{}"),
        (
            "/VolumeDriver.Create",
            "{\"Name\": \"v\", \"Opts\": {\"bucket\": 7}}",
        ),
    ];
    for (endpoint, body) in cases {
        let (status, reply) = plugin.call(endpoint, body).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{endpoint} {body}: {reply}"
        );
        assert!(
            reply["Err"].as_str().unwrap().starts_with("malformed"),
            "{reply}"
        );
    }
    let (status, reply) = plugin.call("/VolumeDriver.Snapshot", "{}").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        reply["Err"].as_str().unwrap().contains("unknown endpoint"),
        "{reply}"
    );
}

#[tokio::test]
async fn odd_volume_names_are_refused_everywhere() {
    let plugin = Plugin::new(Some("dflt"));
    let long = "a".repeat(10_000);
    for name in ["../x", "a/b", "/etc", "", ".", "x\u{0}y", long.as_str()] {
        for endpoint in ["Create", "Get", "Mount", "Unmount", "Remove", "Path"] {
            let body = json!({"Name": name, "ID": id(1), "Opts": null});
            let err = plugin.err(&format!("/VolumeDriver.{endpoint}"), body).await;
            assert!(
                err.contains("invalid volume name"),
                "{endpoint} {name:?}: {err}"
            );
            assert!(
                err.len() < 400,
                "the error repeats a huge name: {} bytes",
                err.len()
            );
        }
    }
    assert_eq!(plugin.made(), 0);
    assert!(!plugin.dir.path().join("x").exists() && !plugin.dir.path().join("mnt/a").exists());
}

#[tokio::test]
async fn an_unmount_given_up_at_the_deadline_still_ends_before_the_next_mount() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    plugin.mount("v", &id(1)).await;
    // Uploads at unmount take long; Docker's deadline (here: 50 ms) gives the call up.
    plugin.mounter.unmount_ms.store(300, Ordering::SeqCst);
    let given_up = tokio::time::timeout(
        Duration::from_millis(50),
        plugin.manager.unmount("v", &id(1)),
    )
    .await;
    assert!(given_up.is_err(), "the unmount should still be running");
    // A new container now: its mount waits for the unmount instead of racing it.
    plugin.mount("v", &id(2)).await;
    assert_eq!(
        plugin.mounter.max_live.load(Ordering::SeqCst),
        1,
        "never two mounts at once"
    );
    assert_eq!((plugin.made(), plugin.live()), (2, 1));
}

/// A Mount given up at Docker's deadline still ends (a takeover cut short would leave the
/// live mount a crashed worker left served by nobody), and the next Mount uses its mount.
#[tokio::test]
async fn a_mount_given_up_at_the_deadline_still_ends_and_the_next_mount_uses_it() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    plugin.mounter.mount_ms.store(300, Ordering::SeqCst);
    let given_up =
        tokio::time::timeout(Duration::from_millis(50), plugin.manager.mount("v", &id(1))).await;
    assert!(given_up.is_err(), "the mount should still be running");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while plugin.made() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the mount never ended"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    plugin.mount("v", &id(2)).await;
    assert_eq!((plugin.made(), plugin.live()), (1, 1), "one mount, reused");
    assert_eq!(
        plugin.stored_ids("v").len(),
        1,
        "only the answered Mount's ID"
    );
}

#[tokio::test]
async fn mount_ids_left_from_before_a_restart_do_not_block_remove() {
    let plugin = Plugin::new(None);
    plugin.create("v", json!({"bucket": "bkt"})).await;
    plugin.mount("v", &id(1)).await;
    // The plugin went down; Docker's Unmount for id 1 never arrived.
    let plugin = plugin.restart();
    plugin.manager.restore_mounts().await;
    assert_eq!(plugin.live(), 1);
    // Docker removes only volumes no container uses: the old ID is stale.
    plugin
        .ok("/VolumeDriver.Remove", json!({"Name": "v"}))
        .await;
    assert_eq!(plugin.live(), 0);
    assert!(!plugin.catalogue_text().contains("\"v\""));
    // An ID given to this process still blocks it.
    plugin.create("w", json!({"bucket": "bkt"})).await;
    plugin.mount("w", &id(2)).await;
    let err = plugin
        .err("/VolumeDriver.Remove", json!({"Name": "w"}))
        .await;
    assert!(err.contains("in use"), "{err}");
}

/// In an order where Mount, Path, Get and Unmount meet volumes Create made, before Remove.
const ENDPOINTS: [&str; 9] = [
    "/Plugin.Activate",
    "/VolumeDriver.Capabilities",
    "/VolumeDriver.Create",
    "/VolumeDriver.Mount",
    "/VolumeDriver.Path",
    "/VolumeDriver.Get",
    "/VolumeDriver.List",
    "/VolumeDriver.Unmount",
    "/VolumeDriver.Remove",
];

/// A JSON value of the wrong type for any field (or, for a string field, any string).
fn any_json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A field as Docker sends it (a string: a few valid names, so calls reach the manager, or
/// anything), or a value of the wrong type.
fn field() -> impl Strategy<Value = Value> {
    prop_oneof![
        4 => prop_oneof![Just("v"), Just("w"), Just(""), Just("../x")].prop_map(Value::from),
        2 => any::<String>().prop_map(Value::from),
        1 => any_json_value(),
    ]
}

/// `Opts`: strings to strings (keys from the real options, or anything), null, or wrong types.
fn opts() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        prop::sample::select(volume_plugin::options::OPTION_NAMES).prop_map(String::from),
        any::<String>(),
    ];
    let value = prop_oneof![
        3 => prop_oneof![Just("bkt"), Just("1000"), Just("0755"), Just("true")].prop_map(Value::from),
        3 => any::<String>().prop_map(Value::from),
        1 => any_json_value(),
    ];
    prop_oneof![
        4 => prop::collection::btree_map(key, value, 0..4)
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        1 => any_json_value(),
    ]
}

/// A request body: any bytes, a JSON-ish body with every field optional and of any type, or
/// a JSON value that is not an object at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let object = (
        prop::option::weighted(0.9, field()),
        prop::option::of(opts()),
        prop::option::weighted(0.9, field()),
    )
        .prop_map(|(name, opts, id)| {
            let mut object = Map::new();
            for (key, value) in [("Name", name), ("Opts", opts), ("ID", id)] {
                if let Some(value) = value {
                    object.insert(key.into(), value);
                }
            }
            Value::Object(object).to_string().into_bytes()
        });
    prop_oneof![
        2 => any::<Vec<u8>>(),
        5 => object,
        1 => any_json_value().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// Every endpoint answers any body (no panic) with 200, 400, 404 or 500, and every error is
/// JSON with a non-empty `Err`.
#[test]
fn proptest_every_endpoint_answers_any_body_cleanly() {
    use proptest::test_runner::{Config, TestRunner};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // One plugin for all calls: later calls meet the volumes earlier ones created.
    let plugin = Plugin::new(Some("dflt"));
    for endpoint in ENDPOINTS {
        let mut runner = TestRunner::new(Config {
            cases: 96,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&body(), |body| {
            let shown = String::from_utf8_lossy(&body).into_owned();
            let (status, answer) = rt.block_on(plugin.call_raw(endpoint, body));
            prop_assert!(
                [
                    StatusCode::OK,
                    StatusCode::BAD_REQUEST,
                    StatusCode::NOT_FOUND,
                    StatusCode::INTERNAL_SERVER_ERROR
                ]
                .contains(&status),
                "{endpoint} {shown:?}: status {status}"
            );
            let reply: Value = serde_json::from_slice(&answer).map_err(|e| {
                TestCaseError::fail(format!("{endpoint} {shown:?}: non-JSON answer ({e})"))
            })?;
            if status != StatusCode::OK {
                let err = reply.get("Err").and_then(Value::as_str).unwrap_or("");
                prop_assert!(
                    !err.is_empty(),
                    "{endpoint} {shown:?}: {status} without an Err: {reply}"
                );
            }
            Ok(())
        });
        if let Err(e) = result {
            panic!("{endpoint}: {e}");
        }
    }
}
