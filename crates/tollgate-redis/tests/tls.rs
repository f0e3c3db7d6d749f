//! `rediss://`: a real `redis-server` speaking TLS only, with a CA and
//! certificates this test makes. Trusting the CA connects and decides in
//! Redis; not trusting it, plain `redis://` to the TLS port, and a missing
//! client certificate where the server asks for one each fail at connect.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use tollgate::{DeniedKind, KeyedLimiter, Quota};
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{Fault, RedisStore, StoreErrorKind};

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as
/// PEM files in a directory of the test's own.
struct Certificates {
    dir: PathBuf,
    ca: String,
    client_certificate: String,
    client_key: String,
}

/// A leaf's parameters, with a name of its own (a leaf named like its CA
/// looks self-signed to OpenSSL).
fn named(names: Vec<String>, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
}

impl Certificates {
    fn make(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tollgate-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tollgate test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().unwrap();
        let server = named(
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            "127.0.0.1",
        )
        .signed_by(&server_key, &issuer)
        .unwrap();
        let client_key = KeyPair::generate().unwrap();
        let client = named(vec!["tollgate-client".to_owned()], "tollgate-client")
            .signed_by(&client_key, &issuer)
            .unwrap();

        std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        Self {
            dir,
            ca: ca.pem(),
            client_certificate: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn server(&self, require_client_certificate: bool) -> RedisServer {
        RedisServer::start_tls(
            &self.file("server.crt"),
            &self.file("server.key"),
            &self.file("ca.crt"),
            require_client_certificate,
        )
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn decides_in_redis(store: RedisStore) {
    let limiter = KeyedLimiter::with_store(Quota::per_hour(3).unwrap(), store.clone());
    let key = "tls-key".to_owned();
    for _ in 0..3 {
        limiter.try_acquire(&key, 1).await.unwrap();
    }
    let denied = limiter.try_acquire(&key, 1).await.unwrap_err();
    assert_eq!(denied.kind(), DeniedKind::RateLimited);
    let stats = store.redis_stats();
    assert_eq!((stats.failures, stats.fallbacks), (0, 0), "{stats:?}");
}

fn assert_url_is_tls(url: &str, path: &Path) {
    assert!(url.starts_with("rediss://"), "{url} ({})", path.display());
}

#[tokio::test]
async fn rediss_with_the_ca_decides_in_redis() {
    let certificates = Certificates::make("ok");
    let server = certificates.server(false);
    assert_url_is_tls(&server.url(), &certificates.dir);
    let store = RedisStore::builder(server.url())
        .tls_root_certificate(certificates.ca.clone())
        .fault(Fault::FailClosed)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect over TLS");
    decides_in_redis(store).await;
}

#[tokio::test]
async fn an_unknown_ca_fails_at_connect() {
    let certificates = Certificates::make("unknown-ca");
    let server = certificates.server(false);
    // The system's roots do not know the test's CA.
    let error = RedisStore::builder(server.url())
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("a certificate no root signed");
    assert_ne!(error.kind(), StoreErrorKind::Config, "{error}");
    assert!(error.to_string().contains("rediss://127.0.0.1:"), "{error}");
}

#[tokio::test]
async fn plain_redis_to_a_tls_port_fails_at_connect() {
    let certificates = Certificates::make("plain");
    let server = certificates.server(false);
    let plain = server.url().replacen("rediss://", "redis://", 1);
    let started = Instant::now();
    let error = RedisStore::builder(plain)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("plain text to a TLS port");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_ne!(error.kind(), StoreErrorKind::Config, "{error}");
}

#[tokio::test]
async fn certificates_for_a_plain_url_are_a_config_error() {
    let certificates = Certificates::make("config");
    let error = RedisStore::builder("redis://127.0.0.1:6379/")
        .tls_root_certificate(certificates.ca.clone())
        .connect()
        .await
        .expect_err("certificates without rediss://");
    assert_eq!(error.kind(), StoreErrorKind::Config, "{error}");
    assert!(error.to_string().contains("rediss://"), "{error}");
}

#[tokio::test]
async fn a_client_certificate_where_the_server_asks_for_one() {
    let certificates = Certificates::make("mtls");
    let server = certificates.server(true);
    let store = RedisStore::builder(server.url())
        .tls_root_certificate(certificates.ca.clone())
        .tls_client_certificate(
            certificates.client_certificate.clone(),
            certificates.client_key.clone(),
        )
        .fault(Fault::FailClosed)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect with a client certificate");
    decides_in_redis(store).await;

    let error = RedisStore::builder(server.url())
        .tls_root_certificate(certificates.ca.clone())
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("no client certificate");
    assert_ne!(error.kind(), StoreErrorKind::Config, "{error}");
}
