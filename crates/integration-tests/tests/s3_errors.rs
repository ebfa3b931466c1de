//! Bad endpoints, keys, buckets and stalls give typed errors that say what to fix, in bounded
//! time, against the real Ceph RGW (and a silent TCP listener for the timeout).

use std::time::Duration;

use common::{ErrorKind, ObjectStore, UserMetadata};
use integration_tests::{require_s3, unique_bucket};
use s3_backend::{CredentialsSource, S3Config, S3Store};

/// Generous bound for "does not hang": far above the configured timeouts, far below forever.
const NO_HANG: Duration = Duration::from_secs(60);

async fn head_error(config: &S3Config, bucket: &str) -> common::StoreError {
    let store = S3Store::new(config, &bucket.parse().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(NO_HANG, store.head("any-key"))
        .await
        .expect("the request hung")
        .unwrap_err()
}

#[tokio::test]
async fn unreachable_endpoint_says_which_endpoint_and_why() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = S3Config::with_endpoint(format!("http://127.0.0.1:{port}"))
        .credentials(CredentialsSource::Static {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        })
        .max_attempts(2);
    let err = head_error(&config, "some-bucket").await;
    assert_eq!(err.kind(), ErrorKind::Network, "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("http://127.0.0.1:{port}")), "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(
        !text.to_lowercase().starts_with("dispatch failure"),
        "{text}"
    );
}

#[tokio::test]
async fn a_silent_server_times_out_with_a_timeout_error() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let config = S3Config::with_endpoint(format!("http://{addr}"))
        .credentials(CredentialsSource::Static {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        })
        .timeouts(Duration::from_secs(1), Duration::from_secs(1))
        .max_attempts(2);
    let err = head_error(&config, "some-bucket").await;
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn plain_http_sent_to_an_https_port_suggests_an_https_url() {
    // What MinIO (Go's HTTP server) answers to plain HTTP on its TLS port, byte for byte.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                .await;
        }
    });
    let config =
        S3Config::with_endpoint(format!("http://{addr}")).credentials(CredentialsSource::Static {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        });
    let err = head_error(&config, "some-bucket").await;
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("use an https:// URL"), "{err}");
}

#[tokio::test]
async fn a_wrong_access_key_names_the_access_key() {
    let env = require_s3!();
    let config = env.config().credentials(CredentialsSource::Static {
        access_key_id: "NOSUCHKEY0000000".into(),
        secret_access_key: env.secret_key.clone(),
        session_token: None,
    });
    let err = head_error(&config, "any-bucket").await;
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    assert!(err.to_string().contains("AWS_ACCESS_KEY_ID"), "{err}");
}

#[tokio::test]
async fn a_wrong_secret_key_names_the_secret_key() {
    let env = require_s3!();
    let store = env.new_bucket("wrong-secret").await;
    let config = env.config().credentials(CredentialsSource::Static {
        access_key_id: env.access_key.clone(),
        secret_access_key: "not-the-secret".into(),
        session_token: None,
    });
    // HEAD answers carry no error code, so use a request with a body.
    let bad = S3Store::new(&config, &store.bucket().parse().unwrap())
        .await
        .unwrap();
    let err = bad.list(&common::ListParams::new("")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
    assert!(err.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{err}");
}

#[tokio::test]
async fn a_missing_bucket_is_named_and_created_only_when_allowed() {
    let env = require_s3!();
    let bucket = unique_bucket("missing");
    let store = S3Store::new(&env.config(), &bucket).await.unwrap();
    let err = store.list(&common::ListParams::new("")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSuchBucket, "{err}");
    assert!(err.to_string().contains(bucket.as_str()), "{err}");
    let err = store.ensure_bucket(false).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSuchBucket, "{err}");
    assert!(err.to_string().contains("create_bucket"), "{err}");

    store.ensure_bucket(true).await.unwrap();
    store.ensure_bucket(false).await.unwrap();
    store.ensure_bucket(true).await.unwrap();
    store
        .put("k", "v".into(), &UserMetadata::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_named_profile_from_a_credentials_file_signs_requests() {
    let env = require_s3!();
    let store = env.new_bucket("profile").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("credentials");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = WRONG\naws_secret_access_key = WRONG\n\n\
             [team]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            env.access_key, env.secret_key
        ),
    )
    .unwrap();
    let config = env.config().credentials(CredentialsSource::Profile {
        name: "team".into(),
        file: Some(file.clone()),
    });
    let via_profile = S3Store::new(&config, &store.bucket().parse().unwrap())
        .await
        .unwrap();
    via_profile
        .put("p", "x".into(), &UserMetadata::new())
        .await
        .unwrap();
    assert_eq!(via_profile.head("p").await.unwrap().size, 1);

    let config = env.config().credentials(CredentialsSource::Profile {
        name: "default".into(),
        file: Some(file),
    });
    let wrong = S3Store::new(&config, &store.bucket().parse().unwrap())
        .await
        .unwrap();
    let err = wrong.list(&common::ListParams::new("")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AccessDenied, "{err}");
}

#[tokio::test]
async fn an_invalid_region_is_named_not_taken_for_a_missing_host() {
    let config = S3Config::default()
        .region("eu_west_1")
        .credentials(CredentialsSource::Static {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        })
        .max_attempts(1);
    let text = head_error(&config, "some-bucket").await.to_string();
    assert!(text.contains("the region is not valid"), "{text}");
    assert!(!text.contains("host name not found"), "{text}");
}

/// The bucket pasted into the endpoint URL (`http://host:port/bucket`) makes every request's
/// path wrong; the error says so rather than that the bucket does not exist.
#[tokio::test]
async fn an_endpoint_with_the_bucket_in_its_path_is_named() {
    let env = require_s3!();
    let bucket = unique_bucket("in-path");
    let store = S3Store::new(&env.config(), &bucket).await.unwrap();
    store.ensure_bucket(true).await.unwrap();
    let mut config = env.config();
    config.endpoint_url = Some(format!("{}/{bucket}", env.endpoint));
    let pasted = S3Store::new(&config, &bucket).await.unwrap();
    let text = pasted.ensure_bucket(true).await.unwrap_err().to_string();
    assert!(
        text.contains(&format!("the path /{bucket}")) && text.contains("server only"),
        "{text}"
    );
}
