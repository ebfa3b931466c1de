//! The managed plugin's `config.json`, from typed structs (Docker's plugin config v1, see
//! docker/cli docs/extend/config.md). Field names are Docker's; Go decodes them
//! case-insensitively, but a misspelt *word* (`mount` for `mounts`) would be silently ignored,
//! which is why they are typed here and guarded by a golden test.

use serde::Serialize;

/// Where things live inside the plugin (its rootfs and its bind mounts).
pub mod paths {
    pub const BINARY: &str = "/usr/local/bin/s3vol";
    pub const SOCKET_NAME: &str = "s3vol.sock";
    pub const SOCKET: &str = "/run/docker/plugins/s3vol.sock";
    /// The propagated mount: volumes are mounted at `<MOUNT_ROOT>/<name>`, visible to Docker.
    pub const MOUNT_ROOT: &str = "/var/lib/s3vol/mnt";
    pub const STATE_DIR: &str = "/var/lib/s3vol/state";
    pub const CACHE_DIR: &str = "/var/lib/s3vol/cache";
    pub const CONFIG_DIR: &str = "/etc/s3vol";
}

/// Host folders bound into the plugin by default (settable with `docker plugin set s3vol
/// state.source=/srv/s3vol/state`, ...). They must exist before `docker plugin enable`.
pub mod host_defaults {
    pub const STATE_DIR: &str = "/var/lib/docker-plugins/s3vol/state";
    pub const CACHE_DIR: &str = "/var/lib/docker-plugins/s3vol/cache";
    pub const CONFIG_DIR: &str = "/etc/s3vol";
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    pub description: String,
    pub documentation: String,
    pub entrypoint: Vec<String>,
    pub workdir: String,
    pub interface: Interface,
    pub network: Network,
    pub propagated_mount: String,
    pub linux: Linux,
    pub mounts: Vec<Mount>,
    pub env: Vec<EnvVar>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Interface {
    pub types: Vec<String>,
    pub socket: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Network {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    pub capabilities: Vec<String>,
    pub allow_all_devices: bool,
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Device {
    pub name: String,
    pub description: String,
    pub path: String,
    pub settable: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Mount {
    pub name: String,
    pub description: String,
    pub source: String,
    pub destination: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub options: Vec<String>,
    pub settable: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvVar {
    pub name: String,
    pub description: String,
    /// Docker exports only variables that have a value; empty means unset (s3vol drops
    /// empty settings at start).
    pub value: String,
    pub settable: Vec<String>,
}

fn env(name: &str, value: &str, description: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        description: description.into(),
        value: value.into(),
        settable: vec!["value".into()],
    }
}

/// A fixed setting (paths inside the plugin): not settable.
fn fixed_env(name: &str, value: &str, description: &str) -> EnvVar {
    EnvVar {
        settable: vec![],
        ..env(name, value, description)
    }
}

fn bind(name: &str, source: &str, destination: &str, read_only: bool, description: &str) -> Mount {
    let mut options = vec!["rbind".to_string()];
    if read_only {
        options.push("ro".into());
    }
    Mount {
        name: name.into(),
        description: description.into(),
        source: source.into(),
        destination: destination.into(),
        kind: "bind".into(),
        options,
        settable: vec!["source".into()],
    }
}

/// s3vol's plugin config: every setting of product.md is a settable env var.
pub fn s3vol_config() -> PluginConfig {
    PluginConfig {
        description: "s3vol: volumes on S3, Ceph RGW and MinIO buckets (FUSE with a chunk cache)"
            .into(),
        documentation: "https://github.com/s3vol/s3vol".into(),
        entrypoint: vec![paths::BINARY.into(), "serve".into()],
        workdir: "/".into(),
        interface: Interface {
            types: vec!["docker.volumedriver/1.0".into()],
            socket: paths::SOCKET_NAME.into(),
        },
        // S3 endpoints need the host's network and DNS.
        network: Network {
            kind: "host".into(),
        },
        propagated_mount: paths::MOUNT_ROOT.into(),
        linux: Linux {
            // mount(2) of FUSE filesystems.
            capabilities: vec!["CAP_SYS_ADMIN".into()],
            allow_all_devices: false,
            devices: vec![Device {
                name: "fuse".into(),
                description: "FUSE device".into(),
                path: "/dev/fuse".into(),
                settable: vec!["path".into()],
            }],
        },
        mounts: vec![
            bind(
                "state",
                host_defaults::STATE_DIR,
                paths::STATE_DIR,
                false,
                "host folder of the volume catalogue (must exist)",
            ),
            bind(
                "cache",
                host_defaults::CACHE_DIR,
                paths::CACHE_DIR,
                false,
                "host folder of the chunk cache and staged writes (must exist)",
            ),
            bind(
                "config",
                host_defaults::CONFIG_DIR,
                paths::CONFIG_DIR,
                true,
                "host folder with the AWS-format `credentials` file (must exist)",
            ),
        ],
        env: vec![
            env("AWS_ENDPOINT_URL", "", "S3 endpoint (MinIO, Ceph RGW, ...); empty = AWS S3"),
            env("AWS_REGION", "us-east-1", "region"),
            env(
                "AWS_ACCESS_KEY_ID",
                "",
                "default access key (prefer the credentials file: docker plugin inspect shows this)",
            ),
            env(
                "AWS_SECRET_ACCESS_KEY",
                "",
                "default secret key (prefer the credentials file: docker plugin inspect shows this)",
            ),
            env(
                "AWS_CA_BUNDLE",
                "",
                "PEM file of extra CA certificates, e.g. /etc/s3vol/ca.pem in the config folder",
            ),
            env(
                "S3VOL_PATH_STYLE",
                "auto",
                "auto (path-style when an endpoint is set), true or false",
            ),
            env(
                "S3VOL_DEFAULT_BUCKET",
                "",
                "bucket of volumes created without -o bucket (each is the prefix <volume name>/)",
            ),
            env("S3VOL_CACHE_SIZE", "10GiB", "hard cap of the disk chunk cache"),
            env(
                "S3VOL_MEMORY_LIMIT",
                "512MiB",
                "hard cap of memory for cache, read-ahead and write buffers, all volumes together",
            ),
            env("S3VOL_LOG", "info", "error, warn, info, debug, trace (tracing filter syntax)"),
            env(
                "S3VOL_METRICS_ADDR",
                "",
                "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9477 (host network)",
            ),
            fixed_env("S3VOL_SOCKET", paths::SOCKET, "socket of the volume API"),
            fixed_env("S3VOL_MOUNT_ROOT", paths::MOUNT_ROOT, "the propagated mount"),
            fixed_env("S3VOL_STATE_DIR", paths::STATE_DIR, "the state bind mount"),
            fixed_env("S3VOL_CACHE_DIR", paths::CACHE_DIR, "the cache bind mount"),
            fixed_env("S3VOL_CONFIG_DIR", paths::CONFIG_DIR, "the config bind mount"),
        ],
    }
}

/// The config as Docker reads it.
pub fn to_json(config: &PluginConfig) -> String {
    let mut text = serde_json::to_string_pretty(config).expect("plain data serializes");
    text.push('\n');
    text
}
