//! The volume manager: the lifecycle behind the plugin API.
//!
//! - One mount per volume, shared by every Docker mount of it: each Docker mount has an ID,
//!   the volume keeps the *set* of IDs, and the filesystem is unmounted (after uploading what
//!   was written) only when the set becomes empty. Unknown and repeated IDs are harmless,
//!   because Docker sends both.
//! - Calls on one volume take turns (a per-volume async lock); calls on different volumes,
//!   and the catalogue reads behind Get and List, never wait for a slow mount.
//! - Every change is in the catalogue on disk before the call answers, so a restarted plugin
//!   knows its volumes and which of them Docker still has mounted, and mounts those again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::metrics::{metrics, VolumeLabels};
use serde_json::{json, Map, Value};

use crate::catalogue::{Catalogue, VolumeRecord};
use crate::mounter::{MountedVolume, Mounter};
use crate::options::{check_volume_name, VolumeSpec};
use crate::settings::PluginSettings;

/// A volume as the API reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    /// Set while the volume is mounted.
    pub mountpoint: Option<PathBuf>,
    pub created_at: String,
    pub status: Map<String, Value>,
}

/// The mount of one volume, if any; its lock makes calls on the volume take turns. Slots are
/// never dropped (a waiter may hold one), so one name always has one lock.
type Slot<M> = Arc<tokio::sync::Mutex<Option<<M as Mounter>::Mounted>>>;

/// A volume's turn: the lock of its slot, held across awaits and even by a spawned task.
type Turn<M> = tokio::sync::OwnedMutexGuard<Option<<M as Mounter>::Mounted>>;

/// Longest a call waits for its turn on a volume before answering with an error: Docker gives
/// a managed plugin's call 30 s in all.
const TURN_TIMEOUT: Duration = Duration::from_secs(25);
/// How long the shutdown gives each volume to upload and detach: Docker kills a plugin 10 s
/// after asking it to stop. What is not uploaded by then stays in the staging folder, and the
/// next start moves it to the recovery folder.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(8);

#[derive(Debug)]
pub struct VolumeManager<M: Mounter> {
    mounter: M,
    settings: Arc<PluginSettings>,
    catalogue: Mutex<Catalogue>,
    slots: Mutex<HashMap<String, Slot<M>>>,
    /// Volumes with a mount, readable without waiting for their turn (Get, Path, List).
    mounted: Arc<Mutex<HashSet<String>>>,
    /// Mount IDs Docker gave this process. IDs in the catalogue from before a restart may be
    /// stale (their Unmount can have come while the plugin was down).
    session_ids: Mutex<HashSet<(String, String)>>,
}

/// Publish the number of Docker mounts of `name` (0 removes nothing: the series stays at 0).
fn publish_mounts(name: &str, mounts: usize) {
    metrics()
        .volume_mounts
        .get_or_create(&VolumeLabels {
            volume: name.to_string(),
        })
        .set(mounts as i64);
}

fn no_such_volume(name: &str) -> String {
    format!("no such volume: {name}")
}

impl<M: Mounter> VolumeManager<M> {
    pub fn new(mounter: M, settings: Arc<PluginSettings>, catalogue: Catalogue) -> Self {
        for volume in catalogue.volumes() {
            publish_mounts(&volume.name, volume.mount_ids.len());
        }
        Self {
            mounter,
            settings,
            catalogue: Mutex::new(catalogue),
            slots: Mutex::new(HashMap::new()),
            mounted: Arc::default(),
            session_ids: Mutex::new(HashSet::new()),
        }
    }

    pub fn settings(&self) -> &PluginSettings {
        &self.settings
    }

    pub fn mounter(&self) -> &M {
        &self.mounter
    }

    fn record(&self, name: &str) -> Option<VolumeRecord> {
        self.catalogue.lock().unwrap().get(name).cloned()
    }

    fn slot(&self, name: &str) -> Slot<M> {
        self.slots
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// Wait for this volume's turn.
    async fn turn(&self, name: &str, call: &str) -> Result<Turn<M>, String> {
        tokio::time::timeout(TURN_TIMEOUT, self.slot(name).lock_owned())
            .await
            .map_err(|_| {
                format!(
                    "{call} of volume {name} gave up after {} s waiting for another call on it (a slow mount or unmount)",
                    TURN_TIMEOUT.as_secs()
                )
            })
    }

    fn spec_of(record: &VolumeRecord) -> Result<VolumeSpec, String> {
        VolumeSpec::parse(&record.name, &record.options, None).map_err(|e| {
            format!(
                "volume {} has options this s3vol cannot use: {e}",
                record.name
            )
        })
    }

    /// Create a volume: validate its options, check that its bucket is reachable (creating
    /// it when allowed), and record it. An existing name is not an error (Docker may repeat
    /// Create), and its options are left as they were.
    pub async fn create(
        &self,
        name: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<(), String> {
        check_volume_name(name)?;
        if self.record(name).is_some() {
            return Ok(());
        }
        let spec = VolumeSpec::parse(name, options, self.settings.default_bucket.as_ref())?;
        self.mounter
            .probe(&spec)
            .await
            .map_err(|e| format!("cannot create volume {name}: {e}"))?;
        let record = VolumeRecord {
            name: name.to_string(),
            options: spec.to_options(),
            created_at: now_rfc3339(),
            mount_ids: Default::default(),
        };
        self.catalogue.lock().unwrap().update(|volumes| {
            volumes.entry(name.to_string()).or_insert(record);
        })?;
        publish_mounts(name, 0);
        Ok(())
    }

    /// Forget a volume. Refused while containers have it mounted; the objects in the bucket
    /// are never touched. Removing an unknown volume succeeds (Docker then forgets it too).
    ///
    /// Docker only sends Remove when no container uses the volume, so mount IDs left from
    /// before a plugin restart (whose Unmount came while the plugin was down) are dropped
    /// here instead of blocking the removal forever.
    pub async fn remove(&self, name: &str) -> Result<(), String> {
        check_volume_name(name)?;
        let turn = self.turn(name, "Remove").await?;
        let Some(record) = self.record(name) else {
            return Ok(());
        };
        let live = {
            let session = self.session_ids.lock().unwrap();
            record
                .mount_ids
                .iter()
                .filter(|id| session.contains(&(name.to_string(), (*id).clone())))
                .count()
        };
        if live > 0 {
            return Err(format!(
                "volume {name} is in use by {live} mount(s); stop the containers using it first"
            ));
        }
        if !record.mount_ids.is_empty() {
            tracing::warn!(
                volume = name,
                stale = record.mount_ids.len(),
                "dropping mount IDs from before the plugin restarted: Docker no longer uses them"
            );
        }
        // Keep the turn until the record is gone: no Mount may slip in between.
        let _turn = self.unmount_in_turn(name, turn).await?;
        self.catalogue.lock().unwrap().update(|volumes| {
            volumes.remove(name);
        })?;
        let _ = metrics().volume_mounts.remove(&VolumeLabels {
            volume: name.to_string(),
        });
        // The mountpoint folder only; the staging folder may hold recovered data.
        let _ = std::fs::remove_dir(self.settings.mountpoint(name));
        tracing::info!(volume = name, "removed (its objects stay in the bucket)");
        Ok(())
    }

    /// Unmount (uploading what was written first) in a task that keeps the volume's turn, and
    /// hand the turn back: if the call is given up at Docker's deadline, the unmount still
    /// ends before any other call on the volume starts, so no second mount can race it. A
    /// mount that cannot go (still in use) is put back in its slot, still mounted.
    async fn unmount_in_turn(&self, name: &str, mut turn: Turn<M>) -> Result<Turn<M>, String> {
        let Some(mount) = turn.take() else {
            return Ok(turn);
        };
        let (mounted, name) = (self.mounted.clone(), name.to_string());
        let (result, turn) = tokio::spawn(async move {
            match mount.unmount().await {
                Ok(()) => {
                    mounted.lock().unwrap().remove(&name);
                    (Ok(()), turn)
                }
                Err((mount, e)) => {
                    *turn = Some(mount);
                    (Err(e), turn)
                }
            }
        })
        .await
        .map_err(|e| format!("the unmount crashed: {e}"))?;
        result.map(|()| turn)
    }

    /// Mount for Docker mount `id`: the first ID mounts the filesystem, later ones share it.
    pub async fn mount(self: &Arc<Self>, name: &str, id: &str) -> Result<PathBuf, String> {
        check_volume_name(name)?;
        check_mount_id(id)?;
        let turn = self.turn(name, "Mount").await?;
        let record = self.record(name).ok_or_else(|| no_such_volume(name))?;
        // In a task that keeps the turn, as an unmount does: a Mount given up at Docker's
        // deadline still ends, and the next call finds its mount. (Cut short, a takeover of
        // the live mount a crashed worker left would leave it served by nobody: its users
        // would wait forever.)
        let manager = self.clone();
        let (mountpoint, _turn) = tokio::spawn(async move {
            let mut turn = turn;
            (manager.ensure_mounted(&record, &mut turn).await, turn)
        })
        .await
        .map_err(|e| format!("the mount crashed: {e}"))?;
        let mountpoint = mountpoint?;
        let mounts = self.catalogue.lock().unwrap().update(|volumes| {
            volumes.get_mut(name).map_or(0, |v| {
                v.mount_ids.insert(id.to_string());
                v.mount_ids.len()
            })
        })?;
        // Only once saved: a Mount that failed gets no Unmount, so its ID must not block Remove.
        self.session_ids
            .lock()
            .unwrap()
            .insert((name.to_string(), id.to_string()));
        publish_mounts(name, mounts);
        Ok(mountpoint)
    }

    /// Drop Docker mount `id`; the last one unmounts (after uploading what was written).
    pub async fn unmount(&self, name: &str, id: &str) -> Result<(), String> {
        check_volume_name(name)?;
        let turn = self.turn(name, "Unmount").await?;
        self.session_ids
            .lock()
            .unwrap()
            .remove(&(name.to_string(), id.to_string()));
        if self.record(name).is_none() {
            return Ok(());
        }
        let remaining = self.catalogue.lock().unwrap().update(|volumes| {
            volumes.get_mut(name).map_or(0, |v| {
                v.mount_ids.remove(id);
                v.mount_ids.len()
            })
        })?;
        publish_mounts(name, remaining);
        if remaining == 0 && turn.is_some() {
            self.unmount_in_turn(name, turn).await?;
            tracing::info!(volume = name, "unmounted (no mounts left)");
        }
        Ok(())
    }

    /// The mountpoint while mounted.
    pub fn path(&self, name: &str) -> Result<Option<PathBuf>, String> {
        check_volume_name(name)?;
        self.record(name).ok_or_else(|| no_such_volume(name))?;
        Ok(self.current_mountpoint(name))
    }

    fn current_mountpoint(&self, name: &str) -> Option<PathBuf> {
        if !self.mounted.lock().unwrap().contains(name) {
            return None;
        }
        // A mount that ended (unmounted from outside) is not reported; while another call
        // holds the volume's turn, the last known state stands.
        let slot = self.slots.lock().unwrap().get(name).cloned()?;
        let alive = match slot.try_lock() {
            Ok(mount) => mount.as_ref().is_some_and(|m| m.is_alive()),
            Err(_) => true,
        };
        alive.then(|| self.settings.mountpoint(name))
    }

    /// A volume with its status. Answers from memory at once, never from the backend: Docker
    /// calls Get for every volume when it starts, and forgets those whose Get fails.
    pub fn get(&self, name: &str) -> Result<VolumeInfo, String> {
        check_volume_name(name)?;
        let record = self.record(name).ok_or_else(|| no_such_volume(name))?;
        Ok(self.info(&record, true))
    }

    pub fn list(&self) -> Vec<VolumeInfo> {
        let records: Vec<VolumeRecord> =
            self.catalogue.lock().unwrap().volumes().cloned().collect();
        records.iter().map(|r| self.info(r, false)).collect()
    }

    fn info(&self, record: &VolumeRecord, with_status: bool) -> VolumeInfo {
        let mountpoint = self.current_mountpoint(&record.name);
        let mut status = Map::new();
        if with_status {
            status = self.status(record, mountpoint.is_some());
        }
        VolumeInfo {
            name: record.name.clone(),
            mountpoint,
            created_at: record.created_at.clone(),
            status,
        }
    }

    /// What `docker volume inspect` shows: where the data is and how the mount is doing.
    /// Never a credential (only the profile's name).
    fn status(&self, record: &VolumeRecord, mounted: bool) -> Map<String, Value> {
        let mut status = Map::new();
        match Self::spec_of(record) {
            Ok(spec) => {
                let s3 = self.settings.s3_config(&spec);
                status.insert("Bucket".into(), json!(spec.bucket.as_str()));
                status.insert("Prefix".into(), json!(spec.prefix));
                status.insert("Endpoint".into(), json!(s3.endpoint_display()));
                status.insert("Region".into(), json!(s3.region));
                status.insert(
                    "Profile".into(),
                    json!(spec
                        .profile
                        .as_deref()
                        .unwrap_or("(plugin default credentials)")),
                );
                status.insert("ReadOnly".into(), json!(spec.read_only));
                status.insert("Cache".into(), json!(if spec.cache { "on" } else { "off" }));
            }
            Err(e) => {
                status.insert("Error".into(), json!(e));
            }
        }
        status.insert("Mounts".into(), json!(record.mount_ids.len()));
        status.insert("Mounted".into(), json!(mounted));
        let slot = self.slots.lock().unwrap().get(&record.name).cloned();
        if let Some(mounted) = slot.as_ref().and_then(|s| s.try_lock().ok()) {
            if let Some(mount) = mounted.as_ref() {
                status.extend(mount.status());
            }
        }
        status.extend(self.mounter.shared_status());
        status
    }

    /// Make sure the volume is mounted at its mountpoint: reuse a live mount, clear a dead one
    /// left by a crash (ENOTCONN) or a mount that ended, then mount.
    async fn ensure_mounted(
        &self,
        record: &VolumeRecord,
        mounted: &mut Option<M::Mounted>,
    ) -> Result<PathBuf, String> {
        let mountpoint = self.settings.mountpoint(&record.name);
        if mounted.as_ref().is_some_and(|m| m.is_alive()) {
            return Ok(mountpoint);
        }
        if let Some(dead) = mounted.take() {
            let _ = dead.unmount().await;
        }
        self.mounted.lock().unwrap().remove(&record.name);
        let spec = Self::spec_of(record).inspect_err(|_| {
            // A live mount a crashed worker left cannot be served with options this s3vol
            // cannot use: let it go, or its users would wait for it for good.
            if self.mounter.takes_over(&record.name) {
                self.mounter.abandon_live_mount(&record.name, &mountpoint);
            }
        })?;
        // A live mount a crashed worker left is taken over as it is.
        if !self.mounter.takes_over(&record.name) {
            // stat of a dead FUSE mount and fusermount3 block: keep them off the runtime's
            // workers.
            let prepared = mountpoint.clone();
            tokio::task::spawn_blocking(move || prepare_mountpoint(&prepared))
                .await
                .map_err(|e| format!("preparing {} crashed: {e}", mountpoint.display()))??;
        }
        let mount = self
            .mounter
            .mount(&record.name, &spec, &mountpoint)
            .await
            .map_err(|e| format!("cannot mount volume {}: {e}", record.name))?;
        tracing::info!(volume = %record.name, mountpoint = %mountpoint.display(), bucket = %spec.bucket, prefix = %spec.prefix, "mounted");
        *mounted = Some(mount);
        self.mounted.lock().unwrap().insert(record.name.clone());
        Ok(mountpoint)
    }

    /// After a start: mount again every volume that Docker still has mounted (IDs in the
    /// catalogue), so the next container start, `docker cp` or Path finds a working mount; a
    /// live mount a crashed worker left is taken over, or let go if its volume has no mounts
    /// (or no record) any more. Runs after the socket listens; volumes are restored in
    /// parallel.
    pub async fn restore_mounts(self: &Arc<Self>) {
        let mut names: Vec<String> = self
            .catalogue
            .lock()
            .unwrap()
            .volumes()
            .filter(|v| !v.mount_ids.is_empty())
            .map(|v| v.name.clone())
            .collect();
        for live in self.mounter.live_mounts() {
            if !names.contains(&live) {
                names.push(live);
            }
        }
        let tasks = names.into_iter().map(|name| {
            let manager = Arc::clone(self);
            async move {
                let Ok(mut mounted) = manager.turn(&name, "Restore").await else {
                    return;
                };
                let record = manager.record(&name).filter(|r| !r.mount_ids.is_empty());
                let Some(record) = record else {
                    if manager.mounter.takes_over(&name) {
                        let mountpoint = manager.settings.mountpoint(&name);
                        manager.mounter.abandon_live_mount(&name, &mountpoint);
                    }
                    return;
                };
                match manager.ensure_mounted(&record, &mut mounted).await {
                    Ok(_) => tracing::info!(volume = %name, mounts = record.mount_ids.len(), "restored the mount"),
                    // The IDs stay: the next Mount of the volume tries again.
                    Err(e) => tracing::error!(volume = %name, "cannot restore the mount: {e}"),
                }
            }
        });
        futures::future::join_all(tasks).await;
    }

    /// Before the plugin exits: upload what was written and unmount every volume. The mount
    /// IDs stay in the catalogue, so the next start mounts them again.
    pub async fn shutdown(&self) {
        self.shutdown_within(SHUTDOWN_LIMIT).await
    }

    /// [`shutdown`](Self::shutdown) within `limit`: all volumes at once, and a volume whose
    /// turn another call holds (a mount waiting on a slow backend, an unmount uploading) waits
    /// for it only as long as the limit lasts.
    pub async fn shutdown_within(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let slots: Vec<(String, Slot<M>)> = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        let stops = slots.into_iter().map(|(name, slot)| async move {
            let Ok(mut turn) = tokio::time::timeout_at(deadline, slot.lock_owned()).await else {
                tracing::error!(volume = %name, "not unmounted at shutdown: another call on it took the whole {limit:?}");
                return;
            };
            let Some(mount) = turn.take() else {
                return;
            };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match mount.shutdown(left).await {
                Ok(()) => tracing::info!(volume = %name, "unmounted for shutdown"),
                Err(e) => tracing::error!(volume = %name, "unmount at shutdown failed: {e}"),
            }
        });
        futures::future::join_all(stops).await;
    }
}

/// Docker's mount IDs are 64 hex characters; accept any short token, refuse junk.
fn check_mount_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 128 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err("invalid mount ID: Docker sends 64 hex characters".into());
    }
    Ok(())
}

/// Make `mountpoint` an empty folder ready for a mount, lazily unmounting whatever is left
/// there: a dead FUSE mount from a crashed plugin ("transport endpoint is not connected"),
/// or a stale one whose server is gone.
fn prepare_mountpoint(mountpoint: &Path) -> Result<(), String> {
    let stale = match std::fs::metadata(mountpoint) {
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => true,
        _ => fuse_mount::is_mounted(mountpoint),
    };
    if stale {
        tracing::warn!(mountpoint = %mountpoint.display(), "clearing a mount left behind");
        lazy_unmount(mountpoint)?;
    }
    std::fs::create_dir_all(mountpoint)
        .map_err(|e| format!("cannot create the mountpoint {}: {e}", mountpoint.display()))
}

fn lazy_unmount(mountpoint: &Path) -> Result<(), String> {
    fuse_mount::lazy_unmount(mountpoint).map_err(|e| {
        format!(
            "cannot clear the old mount at {}: {e}",
            mountpoint.display()
        )
    })
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
