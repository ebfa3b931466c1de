//! Mounting: serve an [`Fs`] at a mountpoint until the returned [`MountHandle`] is dropped or
//! unmounted, flushing written files first.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ObjectStore;
use fuser::{Config, MountOption, Session, SessionACL};

use crate::core::Fs;
use crate::fuse::FuseAdapter;

/// How to mount.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// Name shown as the mount's source (`s3vol:<bucket>/<prefix>`).
    pub fs_name: String,
    pub allow_other: bool,
    pub read_only: bool,
    /// FUSE worker threads reading requests (each request then runs as a tokio task).
    pub threads: usize,
}

/// How long [`MountHandle::unmount`] waits for the session to end once the mount is gone
/// from this namespace. Its last flush runs then (every file is closed, so there is little
/// to upload).
const SESSION_END_LIMIT: Duration = Duration::from_secs(10);

/// A live mount. Dropping it unmounts (after uploading what was written). Unmounting blocks
/// until the session thread has flushed on the tokio runtime: do it from a thread that is not
/// one of that runtime's workers (or on a multi-thread runtime with spare workers).
#[derive(Debug)]
pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    /// The mount's `/dev/fuse` connection (a duplicate of the session's descriptor).
    connection: OwnedFd,
    /// Taken over from another process: fuser did not mount it, so it does not unmount it.
    taken_over: bool,
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Whether the mount is still at its mountpoint in this mount namespace (not unmounted
    /// from outside, lazily or not). Reads `/proc/self/mountinfo` and never touches the mount
    /// itself: a `stat` of it would wait for this very server.
    pub fn is_mounted(&self) -> bool {
        let listed_as = match (self.mountpoint.parent(), self.mountpoint.file_name()) {
            (Some(parent), Some(name)) => std::fs::canonicalize(parent)
                .map(|parent| parent.join(name))
                .unwrap_or_else(|_| self.mountpoint.clone()),
            _ => self.mountpoint.clone(),
        };
        is_listed_mount(&listed_as)
    }

    /// A new descriptor of the mount's `/dev/fuse` connection. While any process holds one,
    /// the mount outlives the process serving it: requests wait, and another process can take
    /// it over ([`take_over`]).
    pub fn connection(&self) -> std::io::Result<OwnedFd> {
        self.connection.try_clone()
    }

    /// Unmount and wait until the session has ended (written files are uploaded first). A
    /// mount still in use (`EBUSY`: a process has a file open or its working folder in it)
    /// stays mounted and served by this handle: the error says why, and a later call can try
    /// again. (fuser's own unmount would drop the session, leaving the mount served by a
    /// thread nobody can reach.)
    pub fn unmount(&mut self) -> std::io::Result<()> {
        use nix::errno::Errno;
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        match nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()) {
            Ok(()) => {}
            // Unmounted from outside (`umount`, `fusermount3 -u`): the session ended with it.
            Err(Errno::EINVAL) if session.guard.is_finished() => {}
            // Not root: fuser unmounts its own mounts through `fusermount3 -u`.
            Err(Errno::EPERM) if !self.taken_over => return session.umount_and_join(),
            Err(e) => {
                self.session = Some(session);
                return Err(e.into());
            }
        }
        // Not `umount_and_join`: until the session thread has seen the unmount, fuser thinks
        // its mount is still there, and its unmount would fail (EINVAL). Once the thread has
        // ended, dropping fuser's mount finds it gone.
        //
        // The session ends when the kernel lets go of the filesystem, which is not at the
        // unmount when another mount namespace holds a copy of the mount (a container started
        // with `-v /var/lib/docker:/var/lib/docker`, say). Then the thread goes on serving
        // that copy, as `detach_within` leaves it, and this returns: waiting would wait until
        // that copy goes. Every file closed here was uploaded at its close.
        let deadline = Instant::now() + SESSION_END_LIMIT;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if session.guard.is_finished() {
            return session.join();
        }
        tracing::warn!(mountpoint = %self.mountpoint.display(), "unmounted here, but another mount namespace still has a copy of the mount: it is served until that copy goes");
        drop(session);
        Ok(())
    }

    /// True once the session ended (for example after `fusermount3 -u` from outside).
    pub fn is_finished(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.guard.is_finished())
    }

    /// Detach the mount and wait up to `limit` for its session to end; for shutdown, where
    /// waiting longer is not an option. Upload written files first ([`Fs::flush_all`]): the
    /// session does not end while another mount namespace still holds the filesystem (a
    /// container's bind mount of a volume), and then it ends only with the process, without
    /// its last flush. Returns whether the session ended.
    pub fn detach_within(mut self, limit: Duration) -> bool {
        let Some(session) = self.session.take() else {
            return true;
        };
        if let Err(e) = lazy_unmount(&self.mountpoint) {
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "cannot detach the mount");
        }
        let deadline = Instant::now() + limit;
        while !session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if session.guard.is_finished() {
            let _ = session.join();
            true
        } else {
            // Dropping it leaves the session thread serving whoever still uses the mount.
            drop(session);
            false
        }
    }
}

/// Shut a mount down when waiting long is not an option (SIGTERM): upload every written file,
/// open ones too, within `flush_limit` (`None`: no limit), then detach the mount and wait up to
/// `detach_limit` (and never past `flush_limit`) for its session to end. Upload first: a mount
/// still in use (a container's bind mount of a volume, a shell inside it) outlives the detach,
/// and its session then ends only with the process, without its last flush.
pub async fn flush_and_detach<S: ObjectStore>(
    fs: &Fs<S>,
    handle: MountHandle,
    flush_limit: Option<Duration>,
    detach_limit: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let flushed = match flush_limit {
        Some(limit) => tokio::time::timeout(limit, fs.flush_all())
            .await
            .unwrap_or_else(|_| {
                Err(crate::FsError::Local(format!(
                    "uploading took over {limit:?}"
                )))
            }),
        None => fs.flush_all().await,
    };
    let detach_limit = match flush_limit {
        Some(limit) => detach_limit.min(limit.saturating_sub(started.elapsed())),
        None => detach_limit,
    };
    let mountpoint = handle.mountpoint().to_path_buf();
    // Off the runtime's workers: the session's last flush runs on them.
    let ended = tokio::task::spawn_blocking(move || handle.detach_within(detach_limit))
        .await
        .unwrap_or(false);
    if !ended {
        tracing::warn!(mountpoint = %mountpoint.display(), "still in use after the detach: it goes away when its last user lets go, and fails with ENOTCONN once this process is gone");
    }
    flushed.map_err(|e| e.to_string())
}

/// Unmount `mountpoint` lazily (`umount -l`): it leaves the namespace now, and the filesystem
/// goes when its last user lets go. Clears dead mounts ("transport endpoint is not
/// connected") too.
pub fn lazy_unmount(mountpoint: &Path) -> std::io::Result<()> {
    nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).map_err(std::io::Error::from)
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            // Dropping the session leaves its thread serving whoever still uses the mount.
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "unmount failed");
        }
    }
}

/// Whether something is mounted at `path` (in this mount namespace).
pub fn is_mounted(path: &Path) -> bool {
    is_listed_mount(&std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// Whether `/proc/self/mountinfo` lists a mount at `path`, taken as it is.
fn is_listed_mount(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    // Field 5 of each line is the mount point.
    mounts.lines().any(|l| l.split(' ').nth(4) == path.to_str())
}

/// Check that `mountpoint` can take a mount: an existing, empty directory that is not already
/// a mount. The error says what is wrong.
pub fn check_mountpoint(mountpoint: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(mountpoint).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!("mountpoint {} does not exist; create it first", mountpoint.display()),
        std::io::ErrorKind::NotConnected => format!(
            "mountpoint {} is a dead FUSE mount (transport endpoint is not connected); clear it with `umount -l {}`",
            mountpoint.display(),
            mountpoint.display()
        ),
        _ => format!("cannot use mountpoint {}: {e}", mountpoint.display()),
    })?;
    if !meta.is_dir() {
        return Err(format!(
            "mountpoint {} is not a directory",
            mountpoint.display()
        ));
    }
    if is_mounted(mountpoint) {
        return Err(format!(
            "mountpoint {} is busy: something is already mounted there",
            mountpoint.display()
        ));
    }
    Ok(())
}

/// Mount `fs` at `mountpoint`, serving requests on the current tokio runtime.
pub fn mount<S: ObjectStore>(
    fs: Arc<Fs<S>>,
    mountpoint: &Path,
    options: &MountOptions,
) -> std::io::Result<MountHandle> {
    let config = session_config(options);
    let adapter = FuseAdapter::new(fs, tokio::runtime::Handle::current());
    let session = Session::new(adapter, mountpoint, &config)?;
    let connection = session.as_fd().try_clone_to_owned()?;
    Ok(MountHandle {
        session: Some(session.spawn()?),
        mountpoint: mountpoint.to_path_buf(),
        connection,
        taken_over: false,
    })
}

/// Serve `fs` on `connection`, the `/dev/fuse` connection of the live mount at `mountpoint`
/// whose serving process died (`fs` from [`Fs::take_over`]). The kernel kept every request
/// meanwhile; those the dead process had read but not answered are sent again (Linux 6.9 or
/// later), so no caller is left waiting.
pub fn take_over<S: ObjectStore>(
    fs: Arc<Fs<S>>,
    connection: OwnedFd,
    mountpoint: &Path,
    options: &MountOptions,
) -> std::io::Result<MountHandle> {
    let config = session_config(options);
    let acl = config.acl;
    match resend_unanswered(connection.as_fd()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "the kernel cannot send again the requests the old process left unanswered (it needs Linux 6.9 or later); their callers wait until killed");
        }
        // ENODEV and the like: the connection is gone (unmounted, aborted).
        Err(e) => return Err(e),
    }
    let adapter = FuseAdapter::new(fs, tokio::runtime::Handle::current());
    let session = Session::from_initialized_fd(adapter, connection.try_clone()?, acl, config);
    Ok(MountHandle {
        session: Some(session.spawn()?),
        mountpoint: mountpoint.to_path_buf(),
        connection,
        taken_over: true,
    })
}

/// Ask the kernel to queue again every request of the connection that was read but not
/// answered: the FUSE_NOTIFY_RESEND notification, a bare `fuse_out_header` with unique 0.
fn resend_unanswered(connection: BorrowedFd<'_>) -> std::io::Result<()> {
    const FUSE_NOTIFY_RESEND: i32 = 7;
    const HEADER_LEN: u32 = 16;
    let mut header = [0u8; HEADER_LEN as usize];
    header[0..4].copy_from_slice(&HEADER_LEN.to_ne_bytes());
    header[4..8].copy_from_slice(&FUSE_NOTIFY_RESEND.to_ne_bytes());
    nix::unistd::write(connection, &header)?;
    Ok(())
}

fn session_config(options: &MountOptions) -> Config {
    let mut mount_options = vec![
        MountOption::FSName(if options.fs_name.is_empty() {
            "s3vol".into()
        } else {
            options.fs_name.clone()
        }),
        MountOption::Subtype("s3vol".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::DefaultPermissions,
    ];
    if options.read_only {
        mount_options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        SessionACL::All
    } else {
        SessionACL::default()
    };
    config.n_threads = Some(options.threads.max(1));
    config
}
