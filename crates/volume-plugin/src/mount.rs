//! `s3vol mount`: one bucket (or prefix) at one mountpoint, without Docker.
//!
//! Everything that can fail for a reason the user can fix (bad bucket name, busy or missing
//! mountpoint, unreachable endpoint, bad credentials, missing bucket) is checked before the
//! mount is reported ready, and reported as one line. Without `--foreground` the command starts
//! itself again in the foreground in the background and returns when that child reports ready
//! (or failed) on a pipe.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::metered::MeteredStore;
use common::BucketName;
use fuse_mount::{check_mountpoint, Fs, FsConfig, MountOptions};

use crate::mounter::within_probe_time;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use s3_backend::cache::CacheConfig;
use s3_backend::{CredentialsSource, PathStyle, S3Config, S3Store};

/// Environment variable telling a foreground child to report readiness on stdout.
const READY_PIPE_ENV: &str = "S3VOL_REPORT_READY";

/// Everything `s3vol mount` needs, parsed and validated.
#[derive(Debug, Clone)]
pub struct MountParams {
    pub bucket: BucketName,
    pub prefix: String,
    pub mountpoint: PathBuf,
    pub s3: S3Config,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub read_only: bool,
    pub allow_other: bool,
    pub cache_dir: PathBuf,
    pub max_cache_size: u64,
    pub memory_limit: u64,
    /// How long the attributes of a name, and a name found missing, are trusted.
    pub metadata_ttl: std::time::Duration,
    pub negative_metadata_ttl: std::time::Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Split `bucket[/prefix]`.
pub fn parse_target(target: &str) -> Result<(BucketName, String), String> {
    let (bucket, prefix) = target.split_once('/').unwrap_or((target, ""));
    let bucket = bucket.parse::<BucketName>().map_err(|e| e.to_string())?;
    if prefix.split('/').any(|segment| segment == "..") || prefix.contains('\0') {
        return Err(format!(
            "invalid prefix {prefix:?}: no '..' segments or NUL bytes"
        ));
    }
    Ok((bucket, prefix.to_string()))
}

/// Credentials for `--profile` (looked up in `$S3VOL_CONFIG_DIR/credentials` when that file
/// exists, else in the standard AWS files) or the standard chain.
pub fn credentials(profile: Option<String>, config_dir: Option<PathBuf>) -> CredentialsSource {
    match profile {
        None => CredentialsSource::DefaultChain,
        Some(name) => {
            let file = config_dir
                .map(|d| d.join("credentials"))
                .filter(|f| f.exists());
            CredentialsSource::Profile { name, file }
        }
    }
}

pub fn path_style(force: bool) -> PathStyle {
    if force {
        PathStyle::Always
    } else {
        PathStyle::Auto
    }
}

/// Whether this process was started by [`run_background`] (its parent reports errors).
pub fn reports_to_parent() -> bool {
    std::env::var_os(READY_PIPE_ENV).is_some()
}

/// Start `args` (this command with `--foreground`) in the background and wait for its report.
/// The background process logs to `log_file`, so it holds none of the caller's terminal or pipes.
pub fn run_background(mut args: Vec<String>, log_file: &std::path::Path) -> Result<(), String> {
    args.push("--foreground".into());
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the s3vol binary: {e}"))?;
    if let Some(dir) = log_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cannot_create_cache(dir, e))?;
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .map_err(|e| format!("cannot open the log file {}: {e}", log_file.display()))?;
    let mut child = Command::new(exe)
        .args(&args)
        .env(READY_PIPE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the mount process: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).ok();
    match line.trim_end() {
        "ready" => Ok(()),
        "" => {
            let status = child.wait().map_err(|e| e.to_string())?;
            Err(format!(
                "the mount process exited before the mount was ready ({status}); see {}",
                log_file.display()
            ))
        }
        error => Err(error.strip_prefix("error: ").unwrap_or(error).to_string()),
    }
}

/// Tell a waiting parent how the start went (no-op when not started by [`run_background`]).
fn report(result: &Result<(), String>) {
    if std::env::var_os(READY_PIPE_ENV).is_none() {
        return;
    }
    let mut out = std::io::stdout();
    let _ = match result {
        Ok(()) => writeln!(out, "ready"),
        Err(e) => writeln!(out, "error: {e}"),
    };
    let _ = out.flush();
}

/// Mount and serve until SIGTERM/SIGINT or an external unmount; upload written files before
/// the mount goes away.
pub fn run_foreground(params: MountParams) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-worker")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let started = runtime.block_on(start(&params));
    let (handle, fs, _folder) = match started {
        Ok(started) => {
            report(&Ok(()));
            started
        }
        Err(e) => {
            report(&Err(e.clone()));
            return Err(e);
        }
    };
    tracing::info!(mountpoint = %params.mountpoint.display(), bucket = %params.bucket, prefix = %params.prefix, "mounted");
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {
                    if handle.is_finished() {
                        break;
                    }
                }
            }
        }
    });
    // Unmounted from outside (`umount`): the session has ended and flushed already.
    if handle.is_finished() {
        tracing::info!("unmounted from outside");
        drop(runtime);
        return Ok(());
    }
    tracing::info!("unmounting: uploading written files first");
    let result = runtime.block_on(fuse_mount::flush_and_detach(
        &fs,
        handle,
        None,
        DETACH_LIMIT,
    ));
    drop(runtime);
    result.map_err(|e| {
        format!("some written files could not be uploaded; their data moves to the recovery folder at the next mount: {e}")
    })
}

/// How long an unmount waits for the session to end after detaching the mount.
const DETACH_LIMIT: Duration = Duration::from_secs(10);

/// The mount, its filesystem, and the lock on its folder (held until the process ends).
type Started = (
    fuse_mount::MountHandle,
    Arc<Fs<MeteredStore<S3Store>>>,
    Flock<std::fs::File>,
);

async fn start(params: &MountParams) -> Result<Started, String> {
    check_mountpoint(&params.mountpoint)?;
    let endpoint = params.s3.endpoint_display();
    let store = within_probe_time(
        "checking the bucket",
        &params.bucket,
        &endpoint,
        "this machine",
        async {
            let store = S3Store::new(&params.s3, &params.bucket)
                .await
                .map_err(|e| e.to_string())?;
            store
                .ensure_bucket(false)
                .await
                .map_err(|e| e.to_string())?;
            Ok(store)
        },
    )
    .await?;
    let volume_dir =
        params
            .cache_dir
            .join(format!("{}-{}", params.bucket, sanitize(&params.prefix)));
    let folder = hold_volume_dir(&volume_dir, params)?;
    let cache = CacheConfig::default()
        .memory_bytes(params.memory_limit)
        .disk(Some(volume_dir.join("chunks")), params.max_cache_size);
    let config = FsConfig::new(&volume_dir)
        .prefix(&params.prefix)
        .owner(params.uid, params.gid)
        .modes(params.file_mode, params.dir_mode)
        .read_only(params.read_only)
        .ttls(params.metadata_ttl, params.negative_metadata_ttl)
        .cache(cache);
    let fs =
        Arc::new(Fs::new(Arc::new(MeteredStore::new(store)), config).map_err(|e| e.to_string())?);
    fs.recover_leftovers().await;
    if let Some(addr) = params.metrics_addr {
        let fs = fs.clone();
        crate::metrics_endpoint::start(addr, Arc::new(move || fs.publish_cache_metrics())).await?;
    }
    let options = MountOptions {
        fs_name: format!("s3vol:{}/{}", params.bucket, params.prefix),
        allow_other: params.allow_other,
        read_only: params.read_only,
        threads: 4,
    };
    let handle = fuse_mount::mount(fs.clone(), &params.mountpoint, &options)
        .map_err(|e| format!("cannot mount at {}: {e}", params.mountpoint.display()))?;
    Ok((handle, fs, folder))
}

/// The error for a folder under `--cache` that cannot be made (an ordinary user and the
/// default /var/cache/s3vol, most often).
fn cannot_create_cache(dir: &Path, e: std::io::Error) -> String {
    format!(
        "cannot create {}: {e}; pass --cache DIR (or set S3VOL_CACHE_DIR) with a folder you can write to",
        dir.display()
    )
}

/// Lock `dir`, the mount's folder under `--cache`, for this process. A second mount sharing
/// it (the same bucket and prefix, or a prefix with the same folder name, at another
/// mountpoint) would take this one's staging files and uploads for a crash's leftovers, and
/// its files being written would fail at close. The lock goes with the process, also when it
/// is killed.
fn hold_volume_dir(dir: &Path, params: &MountParams) -> Result<Flock<std::fs::File>, String> {
    std::fs::create_dir_all(dir).map_err(|e| cannot_create_cache(dir, e))?;
    let path = dir.join("mount.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(mut lock) => {
            // Who holds it, for the message of the next one.
            let _ = lock.set_len(0);
            let _ = writeln!(lock, "{}", std::process::id());
            Ok(lock)
        }
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = std::io::Read::read_to_string(&mut file, &mut holder);
            Err(format!(
                "another s3vol mount (pid {}) of {}/{} uses the folder {}; give this mount its own --cache",
                holder.trim(),
                params.bucket,
                params.prefix,
                dir.display()
            ))
        }
        Err((_, e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

fn sanitize(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_bucket_and_prefix() {
        let (bucket, prefix) = parse_target("data/team/a").unwrap();
        assert_eq!((bucket.as_str(), prefix.as_str()), ("data", "team/a"));
        assert_eq!(parse_target("data").unwrap().1, "");
        assert!(parse_target("Data").unwrap_err().contains("lowercase"));
        assert!(parse_target("data/../x").unwrap_err().contains(".."));
    }
}
