//! The plugin's settings (`s3vol serve` flags and the managed plugin's env vars, product.md)
//! and how they combine with a volume's options into the S3 settings of that volume.

use std::path::PathBuf;
use std::time::Duration;

use common::BucketName;
use s3_backend::{CredentialsSource, PathStyle, S3Config};

use crate::options::VolumeSpec;

/// Settings of `s3vol serve`, shared by all volumes.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// Unix socket of the volume API.
    pub socket: PathBuf,
    /// Volumes are mounted at `<mount_root>/<name>` (the plugin's propagated mount).
    pub mount_root: PathBuf,
    /// Where the volume catalogue lives (outside the plugin's rootfs).
    pub state_dir: PathBuf,
    /// Chunk cache (`chunks/`) and each volume's staged writes (`volumes/<name>/`).
    pub cache_dir: PathBuf,
    /// Folder of the shared `credentials` file that `-o profile=NAME` picks from.
    pub config_dir: PathBuf,
    /// Endpoint of volumes without `-o endpoint`; `None`: AWS S3.
    pub endpoint_url: Option<String>,
    pub region: String,
    pub path_style: PathStyle,
    pub ca_bundle: Option<PathBuf>,
    pub default_bucket: Option<BucketName>,
    /// Hard cap of the disk chunk cache, all volumes together.
    pub cache_size: u64,
    /// Memory budget of cached chunks and read-ahead, all volumes together.
    pub memory_limit: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`); `None`: nowhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl PluginSettings {
    /// The `credentials` file of the config folder, when there is one.
    pub fn credentials_file(&self) -> Option<PathBuf> {
        Some(self.config_dir.join("credentials")).filter(|f| f.is_file())
    }

    /// The S3 settings of one volume: the plugin's, overridden by the volume's options.
    pub fn s3_config(&self, spec: &VolumeSpec) -> S3Config {
        let credentials = match &spec.profile {
            Some(name) => CredentialsSource::Profile {
                name: name.clone(),
                file: self.credentials_file(),
            },
            None => CredentialsSource::DefaultChain,
        };
        let mut config = S3Config::default()
            .region(spec.region.clone().unwrap_or_else(|| self.region.clone()))
            .path_style(spec.path_style.unwrap_or(self.path_style))
            .credentials(credentials)
            // Per attempt, as `s3vol mount` has it: long enough for an 8 MiB part on a slow
            // link. The checks behind Docker's calls are bounded separately (PROBE_TIMEOUT).
            .timeouts(Duration::from_secs(5), Duration::from_secs(30))
            .ca_bundle(self.ca_bundle.clone());
        config.endpoint_url = spec.endpoint.clone().or_else(|| self.endpoint_url.clone());
        config
    }

    pub fn mountpoint(&self, name: &str) -> PathBuf {
        self.mount_root.join(name)
    }

    /// Staged writes and recovered files of one volume.
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.cache_dir.join("volumes").join(name)
    }

    /// The disk tier of the chunk cache, shared by all volumes.
    pub fn chunk_dir(&self) -> PathBuf {
        self.cache_dir.join("chunks")
    }
}
