//! How to reach an S3 endpoint: plain settings, turned into an aws-sdk-s3 client in one place.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_credential_types::Credentials;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::config::{RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use common::{ErrorKind, StoreError, StoreResult};

/// Path-style (`http://host/bucket/key`) or virtual-host style (`http://bucket.host/key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathStyle {
    /// Path-style when a custom endpoint is set (Ceph RGW and MinIO usually need it),
    /// virtual-host style on AWS.
    #[default]
    Auto,
    Always,
    Never,
}

impl std::str::FromStr for PathStyle {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(PathStyle::Auto),
            "true" | "yes" | "1" | "on" => Ok(PathStyle::Always),
            "false" | "no" | "0" | "off" => Ok(PathStyle::Never),
            _ => Err(format!("invalid path style {s:?}: use auto, true or false")),
        }
    }
}

/// Where credentials come from.
#[derive(Clone, Default)]
pub enum CredentialsSource {
    /// The standard AWS chain: environment, shared credentials/config files (default profile or
    /// `AWS_PROFILE`), web identity, ECS and EC2 instance metadata.
    #[default]
    DefaultChain,
    /// A named profile of a shared credentials file (`~/.aws/credentials` when `file` is None).
    Profile { name: String, file: Option<PathBuf> },
    /// Keys given explicitly.
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
}

impl std::fmt::Debug for CredentialsSource {
    // Never print secrets, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DefaultChain => f.write_str("DefaultChain"),
            Self::Profile { name, file } => f
                .debug_struct("Profile")
                .field("name", name)
                .field("file", file)
                .finish(),
            Self::Static { access_key_id, .. } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .finish_non_exhaustive(),
        }
    }
}

/// Everything needed to talk to one S3 endpoint.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct S3Config {
    /// `None` means AWS S3.
    pub endpoint_url: Option<String>,
    pub region: String,
    pub path_style: PathStyle,
    pub credentials: CredentialsSource,
    /// Limit for establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Limit for one attempt of one request, until the answer's headers arrive (sending the
    /// request body counts). A response body that stops flowing is cut separately by the
    /// SDK's stalled-stream protection.
    pub request_timeout: Duration,
    /// Attempts per request, the first included; only retryable failures are retried.
    pub max_attempts: u32,
    /// PEM file with extra CA certificates trusted besides the system's (self-signed endpoints).
    pub ca_bundle: Option<PathBuf>,
}

/// Check an endpoint URL: `http://` or `https://` and a host, maybe a port and a path. No user
/// or password: the endpoint is named in every error message, and keys belong in the
/// credentials file.
pub fn check_endpoint_url(url: &str) -> Result<(), String> {
    let Some(rest) = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
    else {
        return Err(format!(
            "endpoint URL {url:?} must start with http:// or https://"
        ));
    };
    if rest.split('/').next().unwrap_or(rest).contains('@') {
        // Not repeated: it holds a password.
        return Err(
            "the endpoint URL must not hold a user or password: put the keys in a profile of \
             the credentials file, or in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                .into(),
        );
    }
    let parsed = url::Url::parse(url).map_err(|e| {
        format!("invalid endpoint URL {url:?} ({e}): use one such as http://127.0.0.1:7480")
    })?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!(
            "endpoint URL {url:?} has a query or fragment: give the server only, such as http://127.0.0.1:7480"
        ));
    }
    Ok(())
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            endpoint_url: None,
            region: "us-east-1".to_string(),
            path_style: PathStyle::Auto,
            credentials: CredentialsSource::DefaultChain,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_attempts: 3,
            ca_bundle: None,
        }
    }
}

impl S3Config {
    /// A config for a custom endpoint with explicit keys (tests, MinIO, Ceph RGW).
    pub fn with_endpoint(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: Some(endpoint_url.into()),
            ..Self::default()
        }
    }

    pub fn credentials(mut self, credentials: CredentialsSource) -> Self {
        self.credentials = credentials;
        self
    }

    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.region = region.into();
        self
    }

    pub fn timeouts(mut self, connect: Duration, request: Duration) -> Self {
        self.connect_timeout = connect;
        self.request_timeout = request;
        self
    }

    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    pub fn ca_bundle(mut self, path: Option<PathBuf>) -> Self {
        self.ca_bundle = path;
        self
    }

    pub fn path_style(mut self, style: PathStyle) -> Self {
        self.path_style = style;
        self
    }

    pub(crate) fn uses_path_style(&self) -> bool {
        match self.path_style {
            PathStyle::Auto => self.endpoint_url.is_some(),
            PathStyle::Always => true,
            PathStyle::Never => false,
        }
    }

    /// Whether uploads sign their bytes (SigV4 payload hash). Signing costs a SHA-256 of every
    /// byte on both ends (about a fifth of a 512 MiB write's time on a two-core machine running
    /// its own RGW: docs/BENCHMARKS.md) and only guards against bytes changed on the way. It is skipped where nothing can
    /// change them unseen: over TLS (AWS S3 and `https://` endpoints) and over loopback.
    /// A plain `http://` endpoint on another host keeps signed payloads.
    pub fn signs_payloads(&self) -> bool {
        let Some(url) = &self.endpoint_url else {
            return false;
        };
        match url.strip_prefix("http://") {
            Some(rest) => !is_loopback_host(rest),
            None => false,
        }
    }

    /// The path of the endpoint URL without its slashes (`""` for none): S3-compatible
    /// gateways served below a path have one.
    pub fn endpoint_path(&self) -> String {
        self.endpoint_url
            .as_deref()
            .and_then(|u| url::Url::parse(u).ok())
            .map(|u| u.path().trim_matches('/').to_string())
            .unwrap_or_default()
    }

    /// The endpoint as users know it, for error messages.
    pub fn endpoint_display(&self) -> String {
        self.endpoint_url
            .clone()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.region))
    }

    /// Build the aws-sdk-s3 client. Fails on settings that cannot work (unreadable CA bundle,
    /// bad endpoint URL); reaching the endpoint is checked by the first request.
    pub async fn build_client(&self) -> StoreResult<aws_sdk_s3::Client> {
        if let Some(url) = &self.endpoint_url {
            check_endpoint_url(url).map_err(StoreError::invalid_input)?;
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()))
            .http_client(self.http_client()?)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(self.connect_timeout)
                    .read_timeout(self.request_timeout)
                    .operation_attempt_timeout(self.request_timeout)
                    .build(),
            )
            // Standard mode retries only throttling, transient and timeout errors, with
            // exponential backoff and jitter.
            .retry_config(RetryConfig::standard().with_max_attempts(self.max_attempts));
        match &self.credentials {
            CredentialsSource::DefaultChain => {}
            CredentialsSource::Profile { name, file } => {
                // Only that profile: falling back to the rest of the chain (instance metadata,
                // ...) would hide "no such profile" behind an unrelated error.
                let mut provider = aws_config::profile::ProfileFileCredentialsProvider::builder()
                    .profile_name(name);
                if let Some(file) = file {
                    provider = provider.profile_files(
                        EnvConfigFiles::builder()
                            .with_file(EnvConfigFileKind::Credentials, file)
                            .build(),
                    );
                }
                loader = loader
                    .profile_name(name)
                    .credentials_provider(provider.build());
            }
            CredentialsSource::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                loader = loader.credentials_provider(Credentials::new(
                    access_key_id,
                    secret_access_key,
                    session_token.clone(),
                    None,
                    "s3vol",
                ));
            }
        }
        Ok(self.client_from(&loader.load().await))
    }

    /// The client for `sdk_config` (what the AWS loader found) with this configuration's
    /// endpoint, addressing and checksum settings.
    fn client_from(&self, sdk_config: &aws_config::SdkConfig) -> aws_sdk_s3::Client {
        let mut builder = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(self.uses_path_style())
            // Ceph RGW and older MinIO do not understand the SDK's default flexible checksums
            // (aws-chunked trailers). Data on the wire is protected by TCP/TLS; data in the disk
            // cache by the chunk cache's CRC32C.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        // Without an endpoint, s3vol talks to AWS S3 ("empty = AWS S3"), even when the
        // environment (AWS_ENDPOINT_URL_S3) or a profile (`endpoint_url`) names another one
        // for the SDK: error messages, addressing and payload signing follow what s3vol was
        // told, so the requests must go there too.
        builder.set_endpoint_url(self.endpoint_url.clone());
        aws_sdk_s3::Client::from_conf(builder.build())
    }

    fn http_client(&self) -> StoreResult<aws_smithy_runtime_api::client::http::SharedHttpClient> {
        let mut trust = TrustStore::default();
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::new(
                    ErrorKind::InvalidInput,
                    format!(
                        "cannot read the CA bundle {}: {e} (AWS_CA_BUNDLE)",
                        path.display()
                    ),
                )
            })?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(StoreError::invalid_input(format!(
                    "the CA bundle {} holds no PEM certificate (AWS_CA_BUNDLE)",
                    path.display()
                )));
            }
            trust = trust.with_pem_certificate(pem);
        }
        let tls_context = TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| StoreError::invalid_input(format!("bad TLS settings: {e}")))?;
        Ok(aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::AwsLc))
            .tls_context(tls_context)
            .build_https())
    }
}

/// Whether the authority at the start of `rest` (`host[:port][/path]`, maybe with user info)
/// names this machine: `localhost`, 127.0.0.0/8 or `[::1]`.
fn is_loopback_host(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_signed_only_over_plain_http_to_another_host() {
        assert!(!S3Config::default().signs_payloads());
        for url in [
            "https://s3.example.com",
            "http://127.0.0.1:9000",
            "http://127.0.0.2",
            "http://localhost:9000/",
            "http://LOCALHOST",
            "http://[::1]:9000",
            "http://user@127.0.0.1:80/path",
        ] {
            assert!(!S3Config::with_endpoint(url).signs_payloads(), "{url}");
        }
        for url in [
            "http://10.0.0.5:7480",
            "http://rgw.lan",
            "http://localhost.evil.example",
            "http://[::2]:9000",
            "http://127.0.0.1.nip.io",
        ] {
            assert!(S3Config::with_endpoint(url).signs_payloads(), "{url}");
        }
    }

    #[test]
    fn path_style_auto_follows_the_endpoint() {
        assert!(S3Config::with_endpoint("http://127.0.0.1:9000").uses_path_style());
        assert!(!S3Config::default().uses_path_style());
        assert!(S3Config::default()
            .path_style(PathStyle::Always)
            .uses_path_style());
        assert!(!S3Config::with_endpoint("http://x")
            .path_style(PathStyle::Never)
            .uses_path_style());
        assert_eq!("TRUE".parse::<PathStyle>(), Ok(PathStyle::Always));
        assert!("maybe"
            .parse::<PathStyle>()
            .unwrap_err()
            .contains("auto, true or false"));
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let creds = CredentialsSource::Static {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG".into(),
            session_token: Some("token-secret".into()),
        };
        let text = format!("{:?}", S3Config::default().credentials(creds));
        assert!(text.contains("AKIDEXAMPLE"));
        assert!(
            !text.contains("wJalrXUtnFEMI") && !text.contains("token-secret"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn without_an_endpoint_no_request_goes_to_one_the_sdk_found_elsewhere() {
        // What the AWS loader gives when AWS_ENDPOINT_URL_S3 or a profile's `endpoint_url`
        // names a server: here a listener that must never see a connection.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let elsewhere = format!("http://{}", listener.local_addr().unwrap());
        let config = S3Config::default()
            .credentials(CredentialsSource::Static {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "secret".into(),
                session_token: None,
            })
            .timeouts(Duration::from_millis(500), Duration::from_secs(2));
        let config = S3Config {
            max_attempts: 1,
            ..config
        };
        let sdk_config =
            aws_config::SdkConfig::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(&elsewhere)
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(
                        Credentials::new("AKIDEXAMPLE", "secret", None, None, "test"),
                    ),
                )
                .http_client(config.http_client().unwrap())
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_millis(500))
                        .operation_attempt_timeout(Duration::from_secs(2))
                        .build(),
                )
                .retry_config(RetryConfig::standard().with_max_attempts(1))
                .build();
        // The request fails one way or another (no network to AWS here); it must not reach
        // the listener.
        let _ = config
            .client_from(&sdk_config)
            .head_bucket()
            .bucket("b")
            .send()
            .await;
        assert!(
            listener.accept().is_err(),
            "a request went to {elsewhere}, an endpoint s3vol was not given"
        );
        // Given that endpoint, it goes there (the test's listener works).
        let given = S3Config {
            endpoint_url: Some(elsewhere.clone()),
            ..config.clone()
        };
        let _ = given
            .client_from(&sdk_config)
            .head_bucket()
            .bucket("b")
            .send()
            .await;
        assert!(listener.accept().is_ok(), "the listener saw no request");
    }

    #[tokio::test]
    async fn bad_endpoint_url_and_ca_bundle_are_refused_with_the_reason() {
        let err = S3Config::with_endpoint("127.0.0.1:9000")
            .build_client()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
        let err = S3Config::with_endpoint("http://AKIAKEY:very-secret@127.0.0.1:9000")
            .build_client()
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("user or password"), "{text}");
        assert!(!text.contains("very-secret"), "the secret repeated: {text}");
        let err = S3Config::with_endpoint("http://127.0.0.1:99999")
            .build_client()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid port"), "{err}");
        let err = S3Config::with_endpoint("http://127.0.0.1:9")
            .ca_bundle(Some("/nonexistent/ca.pem".into()))
            .build_client()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
