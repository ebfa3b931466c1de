//! An extra CA bundle makes a self-signed HTTPS endpoint trusted; without it the error names
//! the TLS failure and the setting that fixes it. The endpoint is `openssl s_server` on
//! loopback with a certificate made for the test (it answers every GET with a status page,
//! which is enough to tell "TLS worked" from "TLS failed").

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{ErrorKind, ListParams, ObjectStore};
use s3_backend::{CredentialsSource, S3Config, S3Store};

/// `openssl s_server`, stopped by its own pid when dropped.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    fn start(dir: &Path) -> Option<TlsServer> {
        // A CA, and a server certificate it signed (webpki refuses a CA certificate used
        // directly as a server's, so a bare self-signed one would not do).
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let steps: [&[&str]; 3] = [
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=s3vol-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "server.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
                "-out",
                "cert.pem",
            ],
        ];
        for args in steps {
            let made = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if !made.is_ok_and(|s| s.success()) {
                eprintln!("skipping: openssl could not make the test certificates");
                return None;
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("openssl")
            .args([
                "s_server",
                "-www",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("-cert")
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let server = TlsServer { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn list_error(config: &S3Config) -> common::StoreError {
    let store = S3Store::new(config, &"bucket".parse().unwrap())
        .await
        .unwrap();
    store.list(&ListParams::new("")).await.unwrap_err()
}

#[tokio::test]
async fn a_ca_bundle_makes_a_self_signed_endpoint_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = TlsServer::start(dir.path()) else {
        return;
    };
    let config = S3Config::with_endpoint(format!("https://127.0.0.1:{}", server.port))
        .credentials(CredentialsSource::Static {
            access_key_id: "k".into(),
            secret_access_key: "s".into(),
            session_token: None,
        })
        .max_attempts(1);

    let untrusted = list_error(&config).await;
    assert_eq!(untrusted.kind(), ErrorKind::Network, "{untrusted}");
    assert!(
        untrusted.to_string().contains("TLS handshake failed"),
        "{untrusted}"
    );
    assert!(
        untrusted.to_string().contains("AWS_CA_BUNDLE"),
        "{untrusted}"
    );

    // Trusted: TLS succeeds and the request reaches the server, which then answers with
    // something that is not S3 (its status page): any error but a TLS one.
    let trusted = list_error(&config.clone().ca_bundle(Some(dir.path().join("ca.pem")))).await;
    assert!(
        !trusted.to_string().contains("TLS handshake failed"),
        "{trusted}"
    );
    assert!(
        !trusted.to_string().to_lowercase().contains("certificate"),
        "{trusted}"
    );
}
