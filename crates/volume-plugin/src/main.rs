//! `s3vol`: the command line. Parses flags (clap) and hands plain settings to the library.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::bytesize::ByteSize;
use s3_backend::PathStyle;
use s3_backend::S3Config;
use tracing_subscriber::filter::{EnvFilter, FilterExt, LevelFilter, Targets};
use tracing_subscriber::layer::{Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;
use volume_plugin::handover::{WorkerHandover, SUPERVISOR_ENV};
use volume_plugin::mount::{self, MountParams};
use volume_plugin::settings::PluginSettings;

#[derive(Debug, Parser)]
#[command(
    name = "s3vol",
    version,
    propagate_version = true,
    about = "Container volumes on S3-compatible object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Docker volume plugin: the volume API on a unix socket, one FUSE mount per
    /// volume in use. A small supervisor process keeps the mounts alive when the worker
    /// serving them crashes, and starts a new one; SIGHUP replaces the worker the same way
    /// (from the binary now at this path), SIGTERM uploads, unmounts and stops.
    Serve(ServeArgs),
    /// Mount a bucket (or a prefix of it) at a directory, without Docker.
    Mount(MountArgs),
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Unix socket of the volume API (Docker looks for `<plugin socket dir>/s3vol.sock`).
    #[arg(
        long,
        env = "S3VOL_SOCKET",
        default_value = "/run/docker/plugins/s3vol.sock"
    )]
    socket: PathBuf,
    /// Folder under which volumes are mounted, at `<root>/<volume name>` (in the managed
    /// plugin: its propagated mount).
    #[arg(long, env = "S3VOL_MOUNT_ROOT", default_value = "/var/lib/s3vol/mnt")]
    mount_root: PathBuf,
    /// Folder of the volume catalogue (keep it outside the plugin's rootfs).
    #[arg(long, env = "S3VOL_STATE_DIR", default_value = "/var/lib/s3vol/state")]
    state_dir: PathBuf,
    /// Folder of the chunk cache and of each volume's staged writes.
    #[arg(long, env = "S3VOL_CACHE_DIR", default_value = "/var/cache/s3vol")]
    cache_dir: PathBuf,
    /// Folder holding the AWS-format `credentials` file that `-o profile=NAME` picks from.
    #[arg(long, env = "S3VOL_CONFIG_DIR", default_value = "/etc/s3vol")]
    config_dir: PathBuf,
    /// S3 endpoint of volumes without `-o endpoint` (MinIO, Ceph RGW, ...); unset means AWS S3.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Region of volumes without `-o region`.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Path-style URLs: auto (when an endpoint is set), true or false.
    #[arg(long, env = "S3VOL_PATH_STYLE", default_value = "auto")]
    path_style: PathStyle,
    /// PEM file of extra CA certificates for self-signed endpoints; unset: the system's CAs
    /// only.
    #[arg(long, env = "AWS_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,
    /// Bucket of volumes created without `-o bucket`; each such volume is the prefix
    /// `<volume name>/` of it. Unset: every volume needs `-o bucket`.
    #[arg(long, env = "S3VOL_DEFAULT_BUCKET")]
    default_bucket: Option<String>,
    /// Hard cap of the disk chunk cache, all volumes together (e.g. 10GiB; 0 turns it off).
    /// Whatever the cap, the cache leaves 5% of its folder's filesystem free.
    #[arg(long, env = "S3VOL_CACHE_SIZE", default_value = "10GiB")]
    cache_size: ByteSize,
    /// Memory budget of cached chunks, read-ahead and write buffers, all volumes together
    /// (e.g. 512MiB).
    #[arg(long, env = "S3VOL_MEMORY_LIMIT", default_value = "512MiB")]
    memory_limit: ByteSize,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477); off when unset.
    #[arg(long, env = "S3VOL_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log debug details (same as S3VOL_LOG=debug).
    #[arg(long)]
    debug: bool,
}

#[derive(Debug, Args)]
struct MountArgs {
    /// Bucket to mount, optionally with a key prefix: `bucket` or `bucket/some/prefix`.
    #[arg(value_name = "BUCKET[/PREFIX]")]
    target: String,
    /// Empty directory to mount at.
    mountpoint: PathBuf,
    /// S3 endpoint URL (MinIO, Ceph RGW, ...); unset means AWS S3.
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    endpoint_url: Option<String>,
    /// Region of the bucket.
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    region: String,
    /// Always use path-style URLs (http://host/bucket/key). By default path-style is used
    /// whenever --endpoint-url is set.
    #[arg(long)]
    force_path_style: bool,
    /// Credentials profile; looked up in $S3VOL_CONFIG_DIR/credentials if that file exists,
    /// else in ~/.aws/credentials. Without it: the standard AWS chain (AWS_ACCESS_KEY_ID, ...).
    #[arg(long)]
    profile: Option<String>,
    /// Folder holding the `credentials` file for --profile.
    #[arg(long, env = "S3VOL_CONFIG_DIR", hide = true)]
    config_dir: Option<PathBuf>,
    /// Owner of files and directories that carry no uid metadata [default: your uid].
    #[arg(long)]
    uid: Option<u32>,
    /// Group of files and directories that carry no gid metadata [default: your gid].
    #[arg(long)]
    gid: Option<u32>,
    /// Permissions (octal) of files that carry no mode metadata.
    #[arg(long, default_value = "0644", value_parser = parse_octal)]
    file_mode: u32,
    /// Permissions (octal) of directories that carry no mode metadata.
    #[arg(long, default_value = "0755", value_parser = parse_octal)]
    dir_mode: u32,
    /// Mount read-only: writes fail with EROFS.
    #[arg(long)]
    read_only: bool,
    /// Let users other than the mounting one use the mount.
    #[arg(long)]
    allow_other: bool,
    /// Folder for the chunk cache and staged writes.
    #[arg(
        long,
        value_name = "DIR",
        env = "S3VOL_CACHE_DIR",
        default_value = "/var/cache/s3vol"
    )]
    cache: PathBuf,
    /// Hard cap of the disk chunk cache (e.g. 10GiB; 0 turns it off). Whatever the cap,
    /// the cache leaves 5% of its folder's filesystem free.
    #[arg(long, env = "S3VOL_CACHE_SIZE", default_value = "10GiB")]
    max_cache_size: ByteSize,
    /// Hard cap of memory for cached chunks, read-ahead and write buffers (e.g. 512MiB).
    #[arg(long, env = "S3VOL_MEMORY_LIMIT", default_value = "512MiB")]
    memory_limit: ByteSize,
    /// Seconds the attributes of a name (size, mode, whether it exists) are trusted before the
    /// store is asked again: how soon changes made by other clients show up. 0 asks every
    /// time; fractions are fine (0.5).
    #[arg(long, env = "S3VOL_METADATA_TTL", value_name = "SECONDS", default_value = "1", value_parser = parse_ttl)]
    metadata_ttl: Duration,
    /// Seconds a name found missing is trusted missing before the store is asked again.
    #[arg(long, env = "S3VOL_NEGATIVE_METADATA_TTL", value_name = "SECONDS", default_value = "1", value_parser = parse_ttl)]
    negative_metadata_ttl: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9477); off when unset.
    #[arg(long, env = "S3VOL_METRICS_ADDR", value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Stay in the foreground until unmounted or stopped (SIGTERM/SIGINT unmount cleanly).
    #[arg(long)]
    foreground: bool,
    /// Log debug details (same as S3VOL_LOG=debug).
    #[arg(long)]
    debug: bool,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    volume_plugin::options::parse_ttl(s)
}

fn parse_octal(s: &str) -> Result<u32, String> {
    volume_plugin::options::parse_mode("mode", s)
}

fn current_ids() -> (u32, u32) {
    // The mountpoint's parent is usually owned by the user; without libc, read /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let id = |field: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (id("Uid:"), id("Gid:"))
}

/// The credentials files this process may read keys from: `AWS_SHARED_CREDENTIALS_FILE` and
/// the `credentials` file of the config folder.
fn credentials_files(config_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(file) = config_dir.map(|d| d.join("credentials")) {
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files
}

/// Warn about each existing credentials file that group or others may read or write (whoever
/// reads it has the keys). Only a warning: refusing to start would break working setups over
/// a mode bit.
fn warn_about_open_credentials(files: &[PathBuf]) {
    for file in files {
        let Ok(metadata) = std::fs::metadata(file) else {
            continue;
        };
        if let Some(warning) = open_credentials_warning(file, metadata.permissions().mode()) {
            tracing::warn!("{warning}");
        }
    }
}

/// The warning for a credentials file of `mode`, if group or others have any access to it.
fn open_credentials_warning(file: &Path, mode: u32) -> Option<String> {
    (mode & 0o077 != 0).then(|| {
        format!(
            "the credentials file {} has mode {:03o}: users other than its owner can read or change the keys; `chmod 600 {}` fixes it",
            file.display(),
            mode & 0o777,
            file.display()
        )
    })
}

/// The AWS SDK's log targets print the access key ID (credential providers at info; signed
/// requests, resolved identities and Authorization headers at debug and trace). They are held
/// at these levels unless the filter names them, so no credential reaches a log line.
const QUIET_CREDENTIAL_LOGS: &[(&str, LevelFilter)] = &[
    ("aws_config", LevelFilter::WARN),
    ("aws_runtime", LevelFilter::INFO),
    ("aws_sigv4", LevelFilter::INFO),
    ("aws_smithy_runtime", LevelFilter::INFO),
    ("aws_smithy_http_client", LevelFilter::INFO),
    ("aws_sdk_s3", LevelFilter::INFO),
    ("aws_sdk_sts", LevelFilter::INFO),
    ("aws_sdk_sso", LevelFilter::INFO),
    ("aws_sdk_ssooidc", LevelFilter::INFO),
];

/// The holds of [`QUIET_CREDENTIAL_LOGS`] that `filter` keeps: all but those of targets it
/// names itself, as the very target of a plain `target=level` directive. Naming a module
/// inside one, another crate whose name starts the same (`aws_smithy_runtime_api`), or the
/// target within a span (`aws_sigv4[sign]=trace`) keeps the hold.
fn credential_holds(filter: &str) -> Vec<(&'static str, LevelFilter)> {
    let named: Vec<&str> = filter
        .split(',')
        .filter_map(|d| d.split_once('=').map(|(target, _)| target))
        .collect();
    QUIET_CREDENTIAL_LOGS
        .iter()
        .filter(|(target, _)| !named.contains(target))
        .copied()
        .collect()
}

const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];

/// The log filter of `S3VOL_LOG`: a level, or tracing directives (`target=level`, comma
/// separated), with the credential holds as a filter of their own, which no directive (not
/// even one that lets all of a span through) lifts. A bare word that is no level would be
/// taken for a target name and silence everything else (`warning`), so it is refused.
fn log_filter<S>(value: &str) -> Result<impl Filter<S>, String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let invalid = || {
        format!(
            "invalid S3VOL_LOG {value:?}: use error, warn, info, debug or trace (or directives such as info,fuse_mount=debug)"
        )
    };
    let bare_word =
        |d: &&str| !d.contains('=') && !LEVELS.contains(&d.trim().to_ascii_lowercase().as_str());
    if value.split(',').any(|d| bare_word(&d)) {
        return Err(invalid());
    }
    let wanted = EnvFilter::try_new(value).map_err(|_| invalid())?;
    let holds = Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(credential_holds(value));
    Ok(wanted.and(holds))
}

fn init_logging(debug: bool) -> Result<(), String> {
    let wanted = if debug {
        "debug".to_string()
    } else {
        std::env::var("S3VOL_LOG").unwrap_or_else(|_| "info".into())
    };
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // Docker's log (plugin output) and log files get no colour codes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(log_filter(&wanted)?);
    tracing_subscriber::registry().with(output).init();
    Ok(())
}

fn mount_command(args: MountArgs) -> Result<(), String> {
    let (bucket, prefix) = mount::parse_target(&args.target)?;
    if !args.foreground {
        // Re-run ourselves in the foreground, in the background, with the same arguments.
        let forwarded: Vec<String> = std::env::args().skip(1).collect();
        return mount::run_background(forwarded, &args.cache.join("s3vol-mount.log"));
    }
    // Here, not before going to the background: a background mount's parent prints only its
    // one-line error; the warning goes to the mount's log (or the terminal with --foreground).
    warn_about_open_credentials(&credentials_files(args.config_dir.as_deref()));
    let (uid, gid) = current_ids();
    let mut s3 = S3Config::default()
        .region(args.region)
        .credentials(mount::credentials(args.profile, args.config_dir))
        .path_style(mount::path_style(args.force_path_style))
        .timeouts(Duration::from_secs(5), Duration::from_secs(30))
        .ca_bundle(std::env::var_os("AWS_CA_BUNDLE").map(PathBuf::from));
    s3.endpoint_url = args.endpoint_url;
    mount::run_foreground(MountParams {
        bucket,
        prefix,
        mountpoint: args.mountpoint,
        s3,
        uid: args.uid.unwrap_or(uid),
        gid: args.gid.unwrap_or(gid),
        file_mode: args.file_mode,
        dir_mode: args.dir_mode,
        read_only: args.read_only,
        allow_other: args.allow_other,
        cache_dir: args.cache,
        max_cache_size: args.max_cache_size.0,
        memory_limit: args.memory_limit.0,
        metadata_ttl: args.metadata_ttl,
        negative_metadata_ttl: args.negative_metadata_ttl,
        metrics_addr: args.metrics_addr,
    })
}

fn serve_command(args: ServeArgs) -> Result<(), String> {
    // Checked now, not at the first volume's mount: the start logs the endpoint, and one
    // with a password in it must not get that far.
    if let Some(url) = &args.endpoint_url {
        s3_backend::s3::check_endpoint_url(url)
            .map_err(|e| format!("invalid AWS_ENDPOINT_URL: {e}"))?;
    }
    let default_bucket = match args.default_bucket {
        Some(name) => Some(
            name.parse()
                .map_err(|e| format!("invalid S3VOL_DEFAULT_BUCKET: {e}"))?,
        ),
        None => None,
    };
    let settings = PluginSettings {
        socket: args.socket,
        mount_root: args.mount_root,
        state_dir: args.state_dir,
        cache_dir: args.cache_dir,
        config_dir: args.config_dir,
        endpoint_url: args.endpoint_url,
        region: args.region,
        path_style: args.path_style,
        ca_bundle: args.ca_bundle,
        default_bucket,
        cache_size: args.cache_size.0,
        memory_limit: args.memory_limit.0,
        metrics_addr: args.metrics_addr,
    };
    // Volumes without a profile use the standard AWS chain; let it find the config folder's
    // credentials file (its [default] profile), as it would find ~/.aws/credentials.
    if std::env::var_os("AWS_SHARED_CREDENTIALS_FILE").is_none() {
        if let Some(file) = settings.credentials_file() {
            std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", file);
        }
    }
    let Some(supervisor) = std::env::var_os(SUPERVISOR_ENV) else {
        // The first process: supervise workers, which run this command again.
        return volume_plugin::supervisor::run(&settings.socket, &settings.state_dir);
    };
    // A worker dies with its supervisor, as every process of a managed plugin does when its
    // first one dies: a killed supervisor is a crash of the whole plugin, whose next start
    // mounts the volumes again. (A worker left running would hold the plugin socket.)
    if let Err(e) = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL) {
        tracing::warn!(error = %e, "cannot ask to be stopped with the supervisor");
    }
    warn_about_open_credentials(&credentials_files(Some(&settings.config_dir)));
    let handover = WorkerHandover::connect(Path::new(&supervisor))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("s3vol-worker")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?
        .block_on(volume_plugin::serve::serve(
            settings,
            Some(std::sync::Arc::new(handover)),
        ))
}

/// A managed plugin exports every declared setting, set or not: an empty value means unset
/// (an empty AWS_ACCESS_KEY_ID would otherwise stop the AWS credential chain).
fn drop_empty_settings() {
    let empty: Vec<_> = std::env::vars_os()
        .filter(|(name, value)| {
            value.is_empty()
                && name
                    .to_str()
                    .is_some_and(|n| n.starts_with("AWS_") || n.starts_with("S3VOL_"))
        })
        .map(|(name, _)| name)
        .collect();
    for name in empty {
        std::env::remove_var(name);
    }
}

/// glibc's malloc gives each thread its own arena (up to 8 per core), and each arena keeps the
/// 1–8 MiB chunk and part buffers freed into it. Two arenas bound that: 4 readers under a
/// 512 MiB budget peaked at 539 MiB RSS with glibc's defaults and at 408 MiB with two arenas, at
/// the same speed. (Holding the mmap threshold down saved more memory but made warm random
/// reads 2–4x slower: every large reply buffer became an mmap.) Tunables are read when a
/// process starts, so when they are not set, set them and start again in place (same pid). A
/// `GLIBC_TUNABLES` of the user's is kept.
fn restart_with_malloc_tunables() {
    use std::os::unix::process::CommandExt;
    const TUNABLES: &str = "GLIBC_TUNABLES";
    if std::env::var_os(TUNABLES).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(TUNABLES, "glibc.malloc.arena_max=2")
        .exec();
    // Only reached if the exec failed: run on with the defaults.
    eprintln!("s3vol: cannot restart with malloc settings ({error}); going on without them");
}

fn main() -> ExitCode {
    restart_with_malloc_tunables();
    drop_empty_settings();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => init_logging(args.debug).and_then(|()| serve_command(args)),
        Command::Mount(args) => init_logging(args.debug).and_then(|()| mount_command(args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A background child's parent prints the error; the log gets it too.
            if mount::reports_to_parent() {
                tracing::error!("{e}");
            } else {
                eprintln!("s3vol: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_log_setting_that_would_silence_the_log_is_refused() {
        for good in [
            "info",
            "WARN",
            "debug",
            "info,fuse_mount=debug",
            "s3_backend=trace",
        ] {
            assert!(
                log_filter::<tracing_subscriber::Registry>(good).is_ok(),
                "{good}"
            );
        }
        for bad in ["warning", "verbose", "info,verbose", "info=loud"] {
            let Err(err) = log_filter::<tracing_subscriber::Registry>(bad) else {
                panic!("{bad} accepted");
            };
            assert!(
                err.contains("use error, warn, info, debug or trace"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn the_sdk_targets_that_print_credentials_stay_held_unless_named_themselves() {
        let held =
            |filter: &str, target: &str| credential_holds(filter).iter().any(|(t, _)| *t == target);
        assert!(held("debug", "aws_smithy_runtime"));
        assert!(held(
            "info,aws_smithy_runtime_api=debug",
            "aws_smithy_runtime"
        ));
        assert!(held("aws_sdk_s3express=debug", "aws_sdk_s3"));
        assert!(held("info,aws_config::imds=debug", "aws_config"));
        assert!(held("aws_sigv4[sign]=trace", "aws_sigv4"));
        assert!(held("debug,aws_sigv4 =info", "aws_sigv4"));
        assert!(!held("info,aws_smithy_runtime=debug", "aws_smithy_runtime"));
        assert!(held("info,aws_smithy_runtime=debug", "aws_sigv4"));
    }

    /// What `S3VOL_LOG=value` lets through of `events` (target, and whether logged inside a
    /// span named `try_attempt`, as the SDK's requests are), at debug.
    fn logged(value: &str, events: &[(&str, bool)]) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().write(buf)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(log_filter(value).unwrap());
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for (target, in_span) in events {
                let span = in_span.then(|| tracing::info_span!("try_attempt").entered());
                match *target {
                    "aws_sigv4" => tracing::debug!(target: "aws_sigv4", "event of aws_sigv4"),
                    "s3_backend" => tracing::debug!(target: "s3_backend", "event of s3_backend"),
                    other => panic!("no event for {other}"),
                }
                drop(span);
            }
        });
        let out = captured.0.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn no_directive_lets_a_credential_printing_target_through_unnamed() {
        let events = [
            ("aws_sigv4", false),
            ("aws_sigv4", true),
            ("s3_backend", true),
        ];
        for value in [
            "debug",
            "trace",
            "info,[try_attempt]=trace",
            "debug,aws_sigv4[sign]=trace",
        ] {
            let out = logged(value, &events);
            assert!(!out.contains("event of aws_sigv4"), "{value}: {out}");
            assert!(out.contains("event of s3_backend"), "{value}: {out}");
        }
        let out = logged("info,aws_sigv4=debug", &events);
        assert_eq!(out.matches("event of aws_sigv4").count(), 2, "named: {out}");
    }

    #[test]
    fn credentials_open_to_group_or_others_are_warned_about() {
        let file = Path::new("/etc/s3vol/credentials");
        assert_eq!(open_credentials_warning(file, 0o100600), None);
        assert_eq!(open_credentials_warning(file, 0o100400), None);
        for mode in [0o100644, 0o100640, 0o100604, 0o100602, 0o100666] {
            let warning = open_credentials_warning(file, mode).expect("a warning");
            assert!(
                warning.contains("/etc/s3vol/credentials")
                    && warning.contains(&format!("{:03o}", mode & 0o777))
                    && warning.contains("chmod 600 /etc/s3vol/credentials"),
                "{warning}"
            );
        }
    }
}
