//! Turning a volume into a mount. The [`Mounter`] trait is what the volume manager needs; the
//! [`FuseMounter`] does it for real (S3 store + chunk cache + FUSE), tests use a fake.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::metered::{MeteredStore, StoreCounters};
use fuse_mount::{Fs, FsConfig, MountHandle, MountOptions};
use s3_backend::cache::{CacheConfig, CacheTiers};
use s3_backend::upload::UploadConfig;
use s3_backend::S3Store;
use serde_json::{json, Map, Value};

use crate::handover::WorkerHandover;
use crate::options::VolumeSpec;
use crate::settings::PluginSettings;

/// Makes and checks mounts of volumes.
#[async_trait]
pub trait Mounter: Send + Sync + std::fmt::Debug + 'static {
    type Mounted: MountedVolume;

    /// Check that the volume's endpoint answers and its credentials reach its bucket (creating
    /// the bucket when the spec allows). The error says exactly what failed.
    async fn probe(&self, spec: &VolumeSpec) -> Result<(), String>;

    /// Mount volume `name` at `mountpoint`, an existing empty folder.
    async fn mount(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mountpoint: &Path,
    ) -> Result<Self::Mounted, String>;

    /// Whether `mount` of volume `name` takes over a live mount that a crashed worker left at
    /// its mountpoint (which must then be left as it is, not cleared).
    fn takes_over(&self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// Volumes whose live mounts a crashed worker left (see [`takes_over`](Self::takes_over)).
    fn live_mounts(&self) -> Vec<String> {
        Vec::new()
    }

    /// Let go of the live mount of `name` a crashed worker left, instead of taking it over:
    /// its users get ENOTCONN instead of waiting, and the mountpoint is free again.
    fn abandon_live_mount(&self, name: &str, mountpoint: &Path) {
        let _ = (name, mountpoint);
    }

    /// Figures shared by all volumes (the cache tiers), for `Status`.
    fn shared_status(&self) -> Map<String, Value> {
        Map::new()
    }
}

/// A live mount of one volume.
#[async_trait]
pub trait MountedVolume: Send + Sync + std::fmt::Debug + 'static {
    /// False once the mount went away (unmounted from outside, session ended).
    fn is_alive(&self) -> bool;

    /// Figures of this mount for `Status` (cache hits, ...).
    fn status(&self) -> Map<String, Value>;

    /// Upload what was written, then unmount. A mount that cannot go (still in use) comes
    /// back with the reason, still mounted.
    async fn unmount(self) -> Result<(), (Self, String)>
    where
        Self: Sized;

    /// For the plugin's shutdown: upload what was written and detach, within `limit`, even
    /// when containers still use the mount. By default, [`unmount`](Self::unmount).
    async fn shutdown(self, limit: Duration) -> Result<(), String>
    where
        Self: Sized,
    {
        let _ = limit;
        self.unmount().await.map_err(|(_, e)| e)
    }
}

/// Mounts volumes with FUSE over S3, all sharing one set of cache tiers.
#[derive(Debug)]
pub struct FuseMounter {
    settings: Arc<PluginSettings>,
    tiers: Arc<CacheTiers>,
    /// Under the supervisor: the previous worker's live mounts, and where to report ours.
    handover: Option<Arc<WorkerHandover>>,
}

impl FuseMounter {
    pub fn new(settings: Arc<PluginSettings>) -> Result<Self, String> {
        let tiers = CacheTiers::new(&Self::shared_cache_config(&settings)).map_err(|e| {
            format!(
                "cannot open the chunk cache folder {}: {e}",
                settings.chunk_dir().display()
            )
        })?;
        Ok(Self {
            settings,
            tiers: Arc::new(tiers),
            handover: None,
        })
    }

    /// Take over the live mounts `handover` holds, and report new mounts to it.
    pub fn with_handover(mut self, handover: Arc<WorkerHandover>) -> Self {
        self.handover = Some(handover);
        self
    }

    fn shared_cache_config(settings: &PluginSettings) -> CacheConfig {
        CacheConfig::default()
            .memory_bytes(settings.memory_limit)
            .disk(Some(settings.chunk_dir()), settings.cache_size)
    }

    /// Put the shared cache's sizes into the process metrics.
    pub fn publish_metrics(&self) {
        self.tiers.publish_metrics();
    }

    /// Mount volume `name`, or take over `live`, the connection of its live mount that a
    /// crashed worker left.
    async fn mount_volume(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mountpoint: &Path,
        live: Option<std::os::fd::OwnedFd>,
    ) -> Result<FuseMount, String> {
        let endpoint = self.settings.s3_config(spec).endpoint_display();
        let store = if live.is_some() {
            // Containers are waiting on the live mount: no check of the bucket first (a
            // backend that is down fails their calls with EIO, as it would have anyway).
            self.store(spec).await?
        } else {
            within_probe_time("mounting", &spec.bucket, &endpoint, "the plugin", async {
                let store = self.store(spec).await?;
                // The bucket may have gone, or the keys changed, since the volume was created.
                wait_for_bucket(&store).await.map_err(|e| e.to_string())?;
                Ok(store)
            })
            .await?
        };
        let mut config = FsConfig::new(self.settings.volume_dir(name))
            .journal_inodes()
            .prefix(&spec.prefix)
            .owner(spec.uid.unwrap_or(0), spec.gid.unwrap_or(0))
            .modes(spec.file_mode, spec.dir_mode)
            .read_only(spec.read_only);
        if let Some(ttl) = spec.metadata_ttl {
            config.attr_ttl = ttl;
        }
        if let Some(ttl) = spec.negative_metadata_ttl {
            config.negative_ttl = ttl;
        }
        // One memory budget for every volume; `cache=off` keeps a volume's chunks off the disk.
        let mut cache = Self::shared_cache_config(&self.settings).endpoint_id(&endpoint);
        if !spec.cache {
            cache = cache.disk(None, 0);
        }
        config = config.cache(cache).shared_tiers(self.tiers.clone());
        // Every volume's upload buffers, cached or not, come out of the one memory budget.
        config = config.upload(UploadConfig::default().budget(self.tiers.write_budget().clone()));
        let store = Arc::new(MeteredStore::new(store));
        let counters = store.counters().clone();
        let fs = match live {
            Some(_) => Fs::take_over(store, config).await,
            None => Fs::new(store, config),
        };
        let fs = Arc::new(fs.map_err(|e| e.to_string())?);
        fs.recover_leftovers().await;
        let options = MountOptions {
            fs_name: format!("s3vol:{}/{}", spec.bucket, spec.prefix),
            // Containers run as any user; permissions are checked by the kernel against the
            // files' modes (default_permissions).
            allow_other: true,
            read_only: spec.read_only,
            threads: 4,
        };
        let handle = match live {
            Some(connection) => {
                let handle = fuse_mount::take_over(fs.clone(), connection, mountpoint, &options)
                    .map_err(|e| {
                        format!(
                            "cannot take over the mount at {}: {e}",
                            mountpoint.display()
                        )
                    })?;
                tracing::info!(
                    volume = name,
                    "took over the live mount a crashed worker left"
                );
                handle
            }
            None => fuse_mount::mount(fs.clone(), mountpoint, &options)
                .map_err(|e| format!("cannot mount at {}: {e}", mountpoint.display()))?,
        };
        if let Some(handover) = &self.handover {
            match handle.connection() {
                Ok(connection) => handover.hold(name, &connection),
                Err(e) => {
                    tracing::warn!(volume = name, error = %e, "cannot hand the mount to the supervisor; it would not survive a crash of this process")
                }
            }
        }
        Ok(FuseMount {
            handle: Some(handle),
            fs,
            counters,
            release: self
                .handover
                .clone()
                .map(|handover| (handover, name.to_string())),
        })
    }

    /// The live mount of `name` a crashed worker left, if it is still mounted at `mountpoint`
    /// (it may have been unmounted since); one that is gone is let go.
    fn take_live_mount(&self, name: &str, mountpoint: &Path) -> Option<std::os::fd::OwnedFd> {
        let handover = self.handover.as_ref()?;
        let connection = handover.take(name)?;
        if fuse_mount::is_mounted(mountpoint) {
            return Some(connection);
        }
        tracing::warn!(
            volume = name,
            "the mount the previous worker left was unmounted meanwhile; mounting anew"
        );
        handover.release(name);
        None
    }

    async fn store(&self, spec: &VolumeSpec) -> Result<S3Store, String> {
        let config = self.settings.s3_config(spec);
        S3Store::new(&config, &spec.bucket)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Longest a probe of the backend may take: Docker gives each call 30 s in all. (The store's
/// own limits allow a silent endpoint three attempts of 30 s.)
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a mount waits for an endpoint that does not answer yet, within the probe time.
const ENDPOINT_PATIENCE: Duration = Duration::from_secs(15);

/// The bucket of a volume being mounted, checked again every half second while the endpoint
/// fails in a way that passes (refused connections, 5xx, throttling), for up to
/// [`ENDPOINT_PATIENCE`]: a container started together with its S3 server (a MinIO service of
/// the same Compose file, a host booting) mounts once the server answers, instead of failing
/// to start. Any other answer (keys refused, bucket gone) is final at once.
async fn wait_for_bucket(store: &S3Store) -> common::StoreResult<()> {
    let deadline = tokio::time::Instant::now() + ENDPOINT_PATIENCE;
    let mut said = false;
    loop {
        match store.ensure_bucket(false).await {
            Err(e) if e.is_retryable() && tokio::time::Instant::now() < deadline => {
                if !std::mem::replace(&mut said, true) {
                    tracing::info!(error = %e, "the S3 endpoint does not answer yet; asking again every 0.5 s for up to {} s", ENDPOINT_PATIENCE.as_secs());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// `work` (a probe of `bucket` at `endpoint`), or an error that says which went unanswered
/// once [`PROBE_TIMEOUT`] has passed. `asker` names who could not reach it ("the plugin").
pub(crate) async fn within_probe_time<T>(
    what: &str,
    bucket: &common::BucketName,
    endpoint: &str,
    asker: &str,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "{what}: no answer from {endpoint} about bucket {bucket} within {} s; is the endpoint up and reachable from {asker}?",
                PROBE_TIMEOUT.as_secs()
            ))
        })
}

#[async_trait]
impl Mounter for FuseMounter {
    type Mounted = FuseMount;

    async fn probe(&self, spec: &VolumeSpec) -> Result<(), String> {
        let endpoint = self.settings.s3_config(spec).endpoint_display();
        within_probe_time(
            "checking the bucket",
            &spec.bucket,
            &endpoint,
            "the plugin",
            async {
                let store = self.store(spec).await?;
                store
                    .ensure_bucket(spec.create_bucket)
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await
    }

    async fn mount(
        &self,
        name: &str,
        spec: &VolumeSpec,
        mountpoint: &Path,
    ) -> Result<FuseMount, String> {
        let live = self.take_live_mount(name, mountpoint);
        let taking_over = live.is_some();
        let mounted = self.mount_volume(name, spec, mountpoint, live).await;
        if mounted.is_err() && taking_over {
            self.abandon_live_mount(name, mountpoint);
        }
        mounted
    }

    fn takes_over(&self, name: &str) -> bool {
        self.handover.as_ref().is_some_and(|h| h.holds(name))
    }

    fn live_mounts(&self) -> Vec<String> {
        self.handover
            .as_ref()
            .map(|h| h.held_volumes())
            .unwrap_or_default()
    }

    fn abandon_live_mount(&self, name: &str, mountpoint: &Path) {
        tracing::warn!(volume = name, mountpoint = %mountpoint.display(), "letting go of the mount the previous worker left; its users get ENOTCONN");
        if let Some(handover) = &self.handover {
            handover.take(name);
            handover.release(name);
        }
        let _ = fuse_mount::lazy_unmount(mountpoint);
    }

    fn shared_status(&self) -> Map<String, Value> {
        self.tiers.publish_metrics();
        let mut status = Map::new();
        status.insert("CacheMemoryBytes".into(), json!(self.tiers.memory_used()));
        if let Some(disk) = self.tiers.disk() {
            status.insert("CacheDiskBytes".into(), json!(disk.used_bytes()));
        }
        status
    }
}

/// A volume mounted with FUSE.
#[derive(Debug)]
pub struct FuseMount {
    handle: Option<MountHandle>,
    fs: Arc<Fs<MeteredStore<S3Store>>>,
    /// What this volume sent to and received from the store.
    counters: Arc<StoreCounters>,
    /// Under the supervisor: whom to tell when the mount ended, and the volume's name.
    release: Option<(Arc<WorkerHandover>, String)>,
}

impl FuseMount {
    /// The mount ended: the supervisor need not keep it alive any more.
    fn released(&self) {
        if let Some((handover, name)) = &self.release {
            handover.release(name);
        }
    }
}

#[async_trait]
impl MountedVolume for FuseMount {
    fn is_alive(&self) -> bool {
        // Still mounted too: after a `umount -l` from outside, the session lives on for
        // whoever still uses the detached mount, but the mountpoint is an empty folder.
        self.handle
            .as_ref()
            .is_some_and(|h| !h.is_finished() && h.is_mounted())
    }

    fn status(&self) -> Map<String, Value> {
        let stats = self.fs.cache_stats();
        let mut status = Map::new();
        let hits =
            stats.memory_hits.load(Ordering::Relaxed) + stats.disk_hits.load(Ordering::Relaxed);
        status.insert("CacheHits".into(), json!(hits));
        status.insert(
            "CacheMisses".into(),
            json!(stats.fetched_chunks.load(Ordering::Relaxed)),
        );
        let c = &self.counters;
        status.insert(
            "StoreRequests".into(),
            json!(c.requests.load(Ordering::Relaxed)),
        );
        status.insert(
            "StoreErrors".into(),
            json!(c.errors.load(Ordering::Relaxed)),
        );
        status.insert(
            "DownloadedBytes".into(),
            json!(c.downloaded_bytes.load(Ordering::Relaxed)),
        );
        status.insert(
            "UploadedBytes".into(),
            json!(c.uploaded_bytes.load(Ordering::Relaxed)),
        );
        status
    }

    async fn shutdown(mut self, limit: Duration) -> Result<(), String> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        // A session still held by a container does not end however long we wait; one nobody
        // holds ends within milliseconds of the detach.
        let result =
            fuse_mount::flush_and_detach(&self.fs, handle, Some(limit), Duration::from_secs(2))
                .await;
        self.released();
        result.map_err(|e| {
            format!("some written files could not be uploaded (kept in the recovery folder at the next start): {e}")
        })
    }

    async fn unmount(mut self) -> Result<(), (Self, String)> {
        let Some(mut handle) = self.handle.take() else {
            return Ok(());
        };
        let mountpoint = handle.mountpoint().to_path_buf();
        // Unmounting waits for the session's last uploads, which run on the runtime's workers.
        let unmounted = tokio::task::spawn_blocking(move || {
            let result = handle.unmount();
            (handle, result)
        })
        .await;
        match unmounted {
            Ok((_, Ok(()))) => {
                self.released();
                Ok(())
            }
            // Still in use: it goes on, served by this mount, and the supervisor keeps
            // holding it.
            Ok((handle, Err(e))) => {
                self.handle = Some(handle);
                let why = if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) {
                    format!(
                        "{} is still in use outside Docker (a process has a file open or its \
                         working folder in it): the volume stays mounted; stop that process, \
                         then remove the volume or mount it again",
                        mountpoint.display()
                    )
                } else {
                    format!("cannot unmount {}: {e}", mountpoint.display())
                };
                Err((self, why))
            }
            Err(e) => Err((
                self,
                format!("unmount of {} panicked: {e}", mountpoint.display()),
            )),
        }
    }
}
