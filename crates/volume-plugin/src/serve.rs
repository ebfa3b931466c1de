//! `s3vol serve`: the Docker volume plugin. Loads the catalogue, listens on the unix socket at
//! once (Docker gives a plugin about 9 s to listen, and calls Get for every volume when it
//! starts), then mounts again the volumes Docker still has mounted. SIGTERM/SIGINT upload what
//! was written, unmount, and keep the mount IDs for the next start.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use crate::api;
use crate::catalogue::Catalogue;
use crate::handover::WorkerHandover;
use crate::manager::VolumeManager;
use crate::mounter::FuseMounter;
use crate::settings::PluginSettings;

/// Mode of the plugin's socket: never writable by others.
const SOCKET_MODE: u32 = 0o660;

fn create_dir(what: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the {what} folder {}: {e}", dir.display()))
}

/// Bind the socket, replacing a stale socket file left by a previous run.
pub fn bind_std(socket: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    if let Some(dir) = socket.parent() {
        create_dir("socket", dir)?;
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Err(format!(
            "another plugin is already serving {}; stop it first",
            socket.display()
        ));
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot remove the old socket {}: {e}",
                socket.display()
            ))
        }
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    // Whoever can write to the socket can mount any bucket the plugin's keys reach: owner and
    // group only (root:root; Docker runs as root), whatever the umask made of it.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(SOCKET_MODE)).map_err(
        |e| {
            format!(
                "cannot set the mode of the socket {} to {SOCKET_MODE:o}: {e}",
                socket.display()
            )
        },
    )?;
    Ok(listener)
}

/// A tokio listener on `listener`.
fn async_listener(listener: std::os::unix::net::UnixListener) -> Result<UnixListener, String> {
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|e| format!("cannot serve the plugin socket: {e}"))
}

/// How long calls under way at a stop get to finish before the volumes are unmounted.
const CALLS_AT_STOP: Duration = Duration::from_secs(1);

/// Resolves at SIGTERM or SIGINT. The handlers are in place when this returns (not at the
/// first poll): a stop that comes while the plugin starts is not lost, and does not kill it
/// before it can upload.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
    let (mut term, mut int) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
    );
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("stopping: uploading written files and unmounting");
    })
}

/// Serve until SIGTERM/SIGINT. A worker under the [`supervisor`](crate::supervisor) gets the
/// socket and the previous worker's live mounts from it (`handover`).
pub async fn serve(
    settings: PluginSettings,
    handover: Option<Arc<WorkerHandover>>,
) -> Result<(), String> {
    let stop = shutdown_signal()?;
    let supervised = handover.is_some();
    create_dir("mount root", &settings.mount_root)?;
    create_dir("cache", &settings.cache_dir)?;
    let catalogue = Catalogue::load(&settings.state_dir)?;
    let settings = Arc::new(settings);
    let mut mounter = FuseMounter::new(settings.clone())?;
    if let Some(handover) = &handover {
        mounter = mounter.with_handover(handover.clone());
    }
    let manager = Arc::new(VolumeManager::new(mounter, settings.clone(), catalogue));
    // Metrics first: a bad address fails the start before Docker sees a socket.
    if let Some(addr) = settings.metrics_addr {
        let manager = manager.clone();
        crate::metrics_endpoint::start(addr, Arc::new(move || manager.mounter().publish_metrics()))
            .await?;
    }
    let listener = match handover.as_ref().and_then(|h| h.take_listener()) {
        Some(fd) => std::os::unix::net::UnixListener::from(fd),
        None => bind_std(&settings.socket)?,
    };
    let listener = async_listener(listener)?;
    tracing::info!(
        socket = %settings.socket.display(),
        volumes = manager.list().len(),
        endpoint = settings.endpoint_url.as_deref().unwrap_or("AWS S3"),
        "listening"
    );
    let restore = tokio::spawn({
        let manager = manager.clone();
        async move { manager.restore_mounts().await }
    });
    // Calls under way at the stop get a moment to answer, not their whole deadline: Docker
    // kills the plugin 10 s after asking it to stop, and the uploads below need that time.
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let server =
        axum::serve(listener, api::router(manager.clone())).with_graceful_shutdown(async move {
            stop.await;
            let _ = stopping.send(());
        });
    let calls_given_up = async {
        match stopped.await {
            Ok(()) => tokio::time::sleep(CALLS_AT_STOP).await,
            // The server ended without a stop (it failed): that branch answers.
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        served = server => served,
        () = calls_given_up => {
            tracing::warn!("calls still under way at the stop are given up");
            Ok(())
        }
    };
    // A restore still running would race the unmounts below.
    restore.abort();
    let _ = restore.await;
    manager.shutdown().await;
    if !supervised {
        // A supervisor owns the socket (and removes it when it exits).
        let _ = std::fs::remove_file(&settings.socket);
    }
    served.map_err(|e| format!("the API server failed: {e}"))
}
