//! Helpers for tests and benchmarks against real services.
//!
//! S3 tests read the endpoint and keys of the local Ceph RGW that `scripts/ceph-rgw start`
//! writes (`S3_TEST_ENDPOINT`, `S3_TEST_ACCESS_KEY`, `S3_TEST_SECRET_KEY`, `S3_TEST_REGION`;
//! `scripts/test` exports them). Without them an S3 test prints why and does nothing, unless
//! `S3VOL_REQUIRE_S3=1` (set by `scripts/test` and CI), where a missing endpoint fails the test,
//! so CI can never pass by skipping. Each test gets a bucket of its own.

pub mod fault_proxy;

use std::time::Duration;

use common::BucketName;
use rand::Rng;
use s3_backend::{CredentialsSource, S3Config, S3Store};

/// Where the test S3 server is and how to sign in.
#[derive(Debug, Clone)]
pub struct S3Env {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl S3Env {
    /// The test server from the environment; see the crate docs.
    pub fn from_env() -> Option<S3Env> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        match (var("S3_TEST_ENDPOINT"), var("S3_TEST_ACCESS_KEY"), var("S3_TEST_SECRET_KEY")) {
            (Some(endpoint), Some(access_key), Some(secret_key)) => Some(S3Env {
                endpoint,
                access_key,
                secret_key,
                region: var("S3_TEST_REGION").unwrap_or_else(|| "us-east-1".into()),
            }),
            _ if var("S3VOL_REQUIRE_S3").is_some_and(|v| v != "0") => panic!(
                "S3VOL_REQUIRE_S3 is set but S3_TEST_ENDPOINT/S3_TEST_ACCESS_KEY/S3_TEST_SECRET_KEY \
                 are not: start the test server with `scripts/ceph-rgw start` and \
                 `eval \"$(scripts/ceph-rgw env)\"`, or run `scripts/test`"
            ),
            _ => {
                eprintln!("skipping: no S3 test server (S3_TEST_ENDPOINT unset); run scripts/test");
                None
            }
        }
    }

    /// Static credentials of the test user.
    pub fn credentials(&self) -> CredentialsSource {
        CredentialsSource::Static {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            session_token: None,
        }
    }

    /// Client settings for the test server, with short timeouts.
    pub fn config(&self) -> S3Config {
        S3Config::with_endpoint(&self.endpoint)
            .region(&self.region)
            .credentials(self.credentials())
            .timeouts(Duration::from_secs(3), Duration::from_secs(30))
    }

    /// A store on a new, empty bucket named after `tag`.
    pub async fn new_bucket(&self, tag: &str) -> S3Store {
        let store = S3Store::new(&self.config(), &unique_bucket(tag))
            .await
            .expect("client");
        store.ensure_bucket(true).await.expect("create test bucket");
        store
    }
}

/// A bucket name no other test uses: `t-<tag>-<random>`.
pub fn unique_bucket(tag: &str) -> BucketName {
    let tag: String = tag
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let nonce: u64 = rand::rng().random();
    format!(
        "t-{}-{:012x}",
        tag.trim_matches('-'),
        nonce & 0xffff_ffff_ffff
    )
    .parse()
    .expect("valid bucket name")
}

/// Skip the rest of a test when no S3 server is configured (see [`S3Env::from_env`]).
#[macro_export]
macro_rules! require_s3 {
    () => {
        match $crate::S3Env::from_env() {
            Some(env) => env,
            None => return,
        }
    };
}

/// The runtime a [`TestMount`] serves its filesystem on.
fn mount_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// A real FUSE mount of a fresh bucket on the test S3 server, served by its own runtime, for
/// tests that use the mount with plain `std::fs` calls from the test thread. Unmounted (after
/// uploading what was written) when dropped.
#[derive(Debug)]
pub struct TestMount {
    pub store: std::sync::Arc<S3Store>,
    /// The mounted filesystem (its own client of the bucket).
    pub fs: std::sync::Arc<fuse_mount::Fs<S3Store>>,
    pub runtime: tokio::runtime::Runtime,
    handle: Option<fuse_mount::MountHandle>,
    mountpoint: tempfile::TempDir,
    pub local: tempfile::TempDir,
}

impl TestMount {
    /// Mount a new bucket (named after `tag`) with `prefix`; `configure` adjusts the settings.
    pub fn new(
        env: &S3Env,
        tag: &str,
        prefix: &str,
        configure: impl FnOnce(fuse_mount::FsConfig) -> fuse_mount::FsConfig,
    ) -> TestMount {
        Self::with_client(env, env.config(), tag, prefix, configure)
    }

    /// Like [`new`](Self::new), but the mount talks to S3 with `client` (another endpoint, such
    /// as a [`fault_proxy::FaultProxy`], or other timeouts). The helpers ([`object`](Self::object),
    /// [`put`](Self::put), `store`) still talk to the server directly.
    pub fn with_client(
        env: &S3Env,
        client: S3Config,
        tag: &str,
        prefix: &str,
        configure: impl FnOnce(fuse_mount::FsConfig) -> fuse_mount::FsConfig,
    ) -> TestMount {
        let runtime = mount_runtime();
        let store = runtime.block_on(env.new_bucket(tag));
        Self::of_bucket(runtime, store, client, tag, prefix, configure)
    }

    /// Another mount of this mount's bucket and `prefix`, as a second client (another host
    /// of a Swarm sharing one bucket) would have it.
    pub fn another(
        &self,
        env: &S3Env,
        prefix: &str,
        configure: impl FnOnce(fuse_mount::FsConfig) -> fuse_mount::FsConfig,
    ) -> TestMount {
        let runtime = mount_runtime();
        let bucket: BucketName = common::ObjectStore::bucket(self.store.as_ref())
            .parse()
            .unwrap();
        let store = runtime
            .block_on(S3Store::new(&env.config(), &bucket))
            .expect("client");
        Self::of_bucket(runtime, store, env.config(), "another", prefix, configure)
    }

    fn of_bucket(
        runtime: tokio::runtime::Runtime,
        store: S3Store,
        client: S3Config,
        tag: &str,
        prefix: &str,
        configure: impl FnOnce(fuse_mount::FsConfig) -> fuse_mount::FsConfig,
    ) -> TestMount {
        let store = std::sync::Arc::new(store);
        let bucket: BucketName = common::ObjectStore::bucket(store.as_ref()).parse().unwrap();
        let mount_store = std::sync::Arc::new(
            runtime
                .block_on(S3Store::new(&client, &bucket))
                .expect("client"),
        );
        let mountpoint = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        let config = configure(
            fuse_mount::FsConfig::new(local.path())
                .prefix(prefix)
                .ttls(Duration::from_millis(300), Duration::from_millis(300)),
        );
        let fs = std::sync::Arc::new(fuse_mount::Fs::new(mount_store, config).unwrap());
        let options = fuse_mount::MountOptions {
            fs_name: format!("s3vol-test:{tag}"),
            threads: 2,
            ..Default::default()
        };
        let handle = {
            let _guard = runtime.enter();
            fuse_mount::mount(fs.clone(), mountpoint.path(), &options).expect("mount")
        };
        TestMount {
            store,
            fs,
            runtime,
            handle: Some(handle),
            mountpoint,
            local,
        }
    }

    pub fn path(&self, rel: &str) -> std::path::PathBuf {
        self.mountpoint.path().join(rel)
    }

    /// The object's bytes as a plain S3 client sees them.
    pub fn object(&self, key: &str) -> Vec<u8> {
        use common::ObjectStore;
        self.runtime.block_on(async {
            let size = self.store.head(key).await.expect("object exists").size;
            self.store
                .get_range(key, 0..size, None)
                .await
                .unwrap()
                .to_vec()
        })
    }

    /// Every key under `prefix`, as a plain S3 client lists them (no delimiter).
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        use common::ObjectStore;
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            let mut token = None;
            loop {
                let params = common::ListParams::new(prefix).continuation_token(token);
                let page = self.store.list(&params).await.expect("list");
                keys.extend(page.objects.into_iter().map(|o| o.key));
                token = page.next_continuation_token;
                if token.is_none() {
                    return keys;
                }
            }
        })
    }

    pub fn metadata(&self, key: &str) -> common::UserMetadata {
        use common::ObjectStore;
        self.runtime
            .block_on(self.store.head(key))
            .expect("object exists")
            .user_metadata
    }

    pub fn put(&self, key: &str, body: &[u8], metadata: &common::UserMetadata) {
        use common::ObjectStore;
        self.runtime
            .block_on(
                self.store
                    .put(key, bytes::Bytes::copy_from_slice(body), metadata),
            )
            .unwrap();
    }

    /// Unmount now (uploading pending writes), returning any error; a mount still in use
    /// (`EBUSY`) stays mounted and can be unmounted again later.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        if let Some(handle) = self.handle.as_mut() {
            handle.unmount()?;
        }
        self.handle = None;
        Ok(())
    }
}

impl Drop for TestMount {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}
