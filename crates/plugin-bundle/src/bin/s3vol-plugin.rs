//! `s3vol-plugin`: build the managed Docker plugin and install it into the local Docker.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use plugin_bundle::config::{host_defaults, s3vol_config, to_json};
use plugin_bundle::install::{install, InstallPlan};
use plugin_bundle::rootfs;

#[derive(Debug, Parser)]
#[command(
    name = "s3vol-plugin",
    version,
    about = "Build and install s3vol as a Docker managed plugin"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the plugin's config.json.
    Config,
    /// Assemble the plugin folder (config.json + rootfs/) around an s3vol binary, for
    /// `docker plugin create NAME DIR` (and `docker plugin push` to your registry).
    Bundle {
        /// The s3vol binary to bundle (e.g. target/release/s3vol).
        #[arg(long)]
        binary: PathBuf,
        /// Folder to create (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
    },
    /// Build the release binary, assemble the plugin, and create, configure and enable it in
    /// the local Docker.
    Install {
        /// Plugin name (`docker volume create -d NAME`, Compose `driver: NAME`).
        #[arg(long, default_value = "s3vol")]
        name: String,
        /// Bundle this s3vol binary instead of building the release binary.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Host folder of the volume catalogue.
        #[arg(long, default_value = host_defaults::STATE_DIR)]
        state_dir: PathBuf,
        /// Host folder of the chunk cache and staged writes.
        #[arg(long, default_value = host_defaults::CACHE_DIR)]
        cache_dir: PathBuf,
        /// Host folder holding the `credentials` file (bound read-only).
        #[arg(long, default_value = host_defaults::CONFIG_DIR)]
        config_dir: PathBuf,
        /// Replace an installed plugin of the same name (volumes stay known).
        #[arg(long)]
        replace: bool,
        /// Docker's limit for each call to the plugin, in seconds (docker plugin enable --timeout).
        #[arg(long)]
        timeout: Option<u32>,
        /// Plugin settings, e.g. AWS_ENDPOINT_URL=http://127.0.0.1:7480 S3VOL_DEFAULT_BUCKET=data.
        #[arg(value_name = "NAME=VALUE")]
        settings: Vec<String>,
    },
}

/// The workspace this binary was built from.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Config => {
            print!("{}", to_json(&s3vol_config()));
            Ok(())
        }
        Command::Bundle { binary, out } => rootfs::assemble(&binary, &out).map(|()| {
            println!(
                "plugin folder ready: docker plugin create s3vol {}",
                out.display()
            )
        }),
        Command::Install {
            name,
            binary,
            state_dir,
            cache_dir,
            config_dir,
            replace,
            timeout,
            settings,
        } => {
            let plan = InstallPlan {
                binary,
                state_dir,
                cache_dir,
                config_dir,
                settings,
                replace,
                enable_timeout: timeout,
                ..InstallPlan::new(&name, &workspace())
            };
            install(&plan, &workspace()).map(|()| {
                println!("plugin {name} installed and enabled: docker volume create -d {name} -o bucket=BUCKET VOLUME")
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("s3vol-plugin: {e}");
            ExitCode::FAILURE
        }
    }
}
