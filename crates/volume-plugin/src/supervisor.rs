//! `s3vol serve`'s first process: a small supervisor that keeps the volumes' mounts alive when
//! the worker serving them crashes (panic, OOM kill, SIGKILL), and starts a new worker that
//! takes them over ([`handover`](crate::handover)).
//!
//! It binds the plugin socket (so Docker's calls wait in its backlog while a worker restarts),
//! starts the worker (this binary again, told where to find the supervisor), holds a
//! descriptor of each mount's `/dev/fuse` connection the worker reports, and hands them all
//! to the next worker. It does no I/O of its own: there is little in it to crash. SIGTERM and
//! SIGINT go to the worker, which uploads and unmounts; the supervisor then exits with the
//! worker's status. SIGHUP replaces the worker with a new one started from the binary's path
//! (an upgraded binary, if it was replaced), which takes the mounts over as after a crash.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::handover::{self, Message, SUPERVISOR_ENV};

/// More worker crashes than this within [`CRASH_WINDOW`] and the supervisor gives up (the
/// mounts end with it): a worker that cannot start is not helped by starting it again.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// Pause before starting the worker again (containers wait meanwhile; the crash limit stops a
/// worker that cannot start).
const RESTART_DELAY: Duration = Duration::from_millis(20);

/// What the supervisor holds for the next worker.
#[derive(Debug)]
struct Held {
    listener: OwnedFd,
    connections: Mutex<BTreeMap<String, OwnedFd>>,
}

/// The supervisor's socket, in the state folder (root only).
pub fn control_socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("worker.sock")
}

/// The pid file of the current worker (for tests and operators; the supervisor does not read
/// it).
pub fn worker_pid_path(state_dir: &Path) -> PathBuf {
    state_dir.join("worker.pid")
}

/// Run the supervisor: serve the plugin socket at `socket` through workers until SIGTERM or
/// SIGINT, or until workers keep crashing.
pub fn run(socket: &Path, state_dir: &Path) -> Result<(), String> {
    let listener = OwnedFd::from(crate::serve::bind_std(socket)?);
    crate::catalogue::create_state_dir(state_dir)?;
    let control_path = control_socket_path(state_dir);
    let control = bind_control(&control_path)?;
    let held = Arc::new(Held {
        listener,
        connections: Mutex::new(BTreeMap::new()),
    });
    std::thread::Builder::new()
        .name("s3vol-handover".into())
        .spawn({
            let held = held.clone();
            move || serve_workers(control, &held)
        })
        .map_err(|e| format!("cannot start the handover thread: {e}"))?;
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(supervise(&control_path, state_dir));
    let _ = std::fs::remove_file(&control_path);
    let _ = std::fs::remove_file(worker_pid_path(state_dir));
    let _ = std::fs::remove_file(socket);
    result
}

fn bind_control(path: &Path) -> Result<OwnedFd, String> {
    let fail = |e: std::io::Error| {
        format!(
            "cannot listen on the supervisor socket {}: {e}",
            path.display()
        )
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }
    let socket = handover::seqpacket_socket().map_err(fail)?;
    rustix::net::bind(&socket, &handover::unix_address(path).map_err(fail)?)
        .map_err(|e| fail(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    rustix::net::listen(&socket, 4).map_err(|e| fail(e.into()))?;
    Ok(socket)
}

/// Serve one worker at a time: give it what is held, then record what it reports until it
/// goes away.
fn serve_workers(control: OwnedFd, held: &Held) {
    loop {
        let worker = match rustix::net::accept(&control) {
            Ok(worker) => worker,
            Err(e) => {
                tracing::error!(error = %e, "the supervisor socket failed; a crashed worker's mounts can no longer be handed over");
                return;
            }
        };
        if let Err(e) = welcome(&worker, held) {
            tracing::error!(error = %e, "cannot hand the mounts to the new worker");
            continue;
        }
        loop {
            match handover::receive(&worker) {
                Ok(Some((Message::Hold { volume }, Some(connection)))) => {
                    held.connections.lock().unwrap().insert(volume, connection);
                }
                Ok(Some((Message::Release { volume }, _))) => {
                    held.connections.lock().unwrap().remove(&volume);
                }
                Ok(Some((other, _))) => {
                    tracing::warn!(?other, "unexpected message from the worker; ignored")
                }
                // The worker exited (or crashed): keep what it held for the next one.
                Ok(None) | Err(_) => break,
            }
        }
    }
}

fn welcome(worker: &OwnedFd, held: &Held) -> std::io::Result<()> {
    handover::send(worker, &Message::Listener, Some(&held.listener))?;
    let connections = held.connections.lock().unwrap();
    for (volume, connection) in connections.iter() {
        let message = Message::Held {
            volume: volume.clone(),
        };
        handover::send(worker, &message, Some(connection))?;
    }
    handover::send(worker, &Message::Ready, None)
}

fn start_worker(
    exe: &Path,
    control_path: &Path,
    state_dir: &Path,
) -> Result<tokio::process::Child, String> {
    let child = tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(SUPERVISOR_ENV, control_path)
        .spawn()
        .map_err(|e| format!("cannot start the worker: {e}"))?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(worker_pid_path(state_dir), format!("{pid}\n"));
    }
    Ok(child)
}

/// Why the supervisor stopped waiting for its worker.
enum Event {
    Exited(std::io::Result<std::process::ExitStatus>),
    Stop,
    Replace,
}

fn signal_worker(worker: &tokio::process::Child, signal: nix::sys::signal::Signal) {
    if let Some(pid) = worker.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
    }
}

async fn supervise(control_path: &Path, state_dir: &Path) -> Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    // The path, not /proc/self/exe: a binary replaced there (an upgrade) starts the next worker.
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find this program to start the worker: {e}"))?;
    let mut crashes: Vec<Instant> = Vec::new();
    loop {
        let mut worker = start_worker(&exe, control_path, state_dir)?;
        let event = tokio::select! {
            status = worker.wait() => Event::Exited(status),
            _ = term.recv() => Event::Stop,
            _ = int.recv() => Event::Stop,
            _ = hup.recv() => Event::Replace,
        };
        let status = match event {
            Event::Stop => {
                // Stopping: the worker uploads and unmounts, then we go.
                signal_worker(&worker, nix::sys::signal::Signal::SIGTERM);
                let status = worker.wait().await.map_err(|e| e.to_string())?;
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!("the worker stopped with {status}"))
                };
            }
            Event::Replace => {
                // As a crash would: what it was doing is sent again to the next worker, what
                // it had staged is taken over.
                tracing::info!("replacing the worker (SIGHUP); the new one takes the mounts over");
                signal_worker(&worker, nix::sys::signal::Signal::SIGKILL);
                let _ = worker.wait().await;
                continue;
            }
            Event::Exited(status) => status.map_err(|e| e.to_string())?,
        };
        if status.success() {
            return Ok(());
        }
        let now = Instant::now();
        crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
        crashes.push(now);
        if crashes.len() > MAX_CRASHES {
            return Err(format!(
                "the worker failed {} times within {} s (last: {status}); giving up, and its mounts end now",
                crashes.len(),
                CRASH_WINDOW.as_secs()
            ));
        }
        tracing::error!(%status, "the worker serving the volumes died; starting a new one, which takes the mounts over");
        tokio::select! {
            _ = tokio::time::sleep(RESTART_DELAY) => {}
            // No worker to stop; the mounts end with us.
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}
