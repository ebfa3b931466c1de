//! `s3vol`: the command line. Parses flags (clap) and hands plain settings to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use common::bytesize::ByteSize;
use s3_backend::S3Config;
use volume_plugin::mount::{self, MountParams};

#[derive(Debug, Parser)]
#[command(
    name = "s3vol",
    version,
    about = "Container volumes on S3-compatible object storage"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Mount a bucket (or a prefix of it) at a directory, without Docker.
    Mount(MountArgs),
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
    /// Hard cap of the disk chunk cache (e.g. 10GiB).
    #[arg(long, env = "S3VOL_CACHE_SIZE", default_value = "10GiB")]
    max_cache_size: ByteSize,
    /// Hard cap of memory for cached chunks and read-ahead (e.g. 512MiB).
    #[arg(long, env = "S3VOL_MEMORY_LIMIT", default_value = "512MiB")]
    memory_limit: ByteSize,
    /// Stay in the foreground until unmounted or stopped (SIGTERM/SIGINT unmount cleanly).
    #[arg(long)]
    foreground: bool,
    /// Log debug details (same as S3VOL_LOG=debug).
    #[arg(long)]
    debug: bool,
}

fn parse_octal(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("invalid mode {s:?}: use octal permissions such as 0644"))
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

fn init_logging(debug: bool) {
    let filter = if debug {
        tracing_subscriber::EnvFilter::new("debug")
    } else {
        tracing_subscriber::EnvFilter::try_from_env("S3VOL_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn mount_command(args: MountArgs) -> Result<(), String> {
    let (bucket, prefix) = mount::parse_target(&args.target)?;
    if !args.foreground {
        // Re-run ourselves in the foreground, in the background, with the same arguments.
        let forwarded: Vec<String> = std::env::args().skip(1).collect();
        return mount::run_background(forwarded, &args.cache.join("s3vol-mount.log"));
    }
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
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Command::Mount(args) = cli.command;
    init_logging(args.debug);
    match mount_command(args) {
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
