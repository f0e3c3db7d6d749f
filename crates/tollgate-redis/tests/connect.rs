//! What connecting checks: a missing or wrong password, a user who may
//! not run scripts, nothing listening and a server that is not Redis each
//! fail at connect time with a clear error, and no message, log line or
//! `Debug` output shows the password. Real servers on loopback, real
//! clock; every bound is generous.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::{DeniedKind, KeyedLimiter, Quota};
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{redact_url, Fault, RedisStore, StoreError, StoreErrorKind};

/// The password of the test servers: a word that appears nowhere else.
const PASSWORD: &str = "pw-7f3a9c-secret";

fn protected() -> RedisServer {
    RedisServer::start_with_args(&["--requirepass", PASSWORD])
}

async fn connect(url: &str) -> Result<RedisStore, StoreError> {
    RedisStore::builder(url)
        .timeout(Duration::from_millis(200))
        .connect()
        .await
}

/// Every way an error can be shown, none with the password.
fn assert_hidden(error: &StoreError) {
    for shown in [error.to_string(), format!("{error:?}")] {
        assert!(!shown.contains(PASSWORD), "password shown: {shown}");
        assert!(
            !shown.contains("7f3a9c"),
            "part of the password shown: {shown}"
        );
    }
}

#[tokio::test]
async fn a_missing_password_fails_at_connect() {
    let server = protected();
    let error = connect(&server.url()).await.expect_err("no password given");
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
    let message = error.to_string();
    assert!(message.contains("NOAUTH"), "{message}");
    assert!(
        message.contains("redis://:PASSWORD@"),
        "says how: {message}"
    );
}

#[tokio::test]
async fn a_wrong_password_fails_at_connect_and_is_not_shown() {
    let server = protected();
    for url in [
        format!("redis://:{PASSWORD}-wrong@127.0.0.1:{}/", server.port()),
        format!(
            "redis://default:{PASSWORD}-wrong@127.0.0.1:{}/0",
            server.port()
        ),
    ] {
        let error = connect(&url).await.expect_err("wrong password");
        assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
        assert!(error.to_string().contains("WRONGPASS"), "{error}");
        assert!(error.to_string().contains(":***@127.0.0.1"), "{error}");
        assert_hidden(&error);
    }
}

#[tokio::test]
async fn the_right_password_decides_in_redis() {
    let server = protected();
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{}/", server.port());
    let store = RedisStore::builder(&url)
        .fault(Fault::FailClosed)
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect("connect with the password");
    assert!(!format!("{store:?}").contains(PASSWORD));
    let limiter = KeyedLimiter::with_store(Quota::per_hour(2).unwrap(), store.clone());
    let key = "k".to_owned();
    limiter.try_acquire(&key, 1).await.unwrap();
    limiter.try_acquire(&key, 1).await.unwrap();
    let denied = limiter.try_acquire(&key, 1).await.unwrap_err();
    assert_eq!(denied.kind(), DeniedKind::RateLimited);
    assert_eq!(store.redis_stats().fallbacks, 0);
    let exists = server.cli(&[
        "-a",
        PASSWORD,
        "--no-auth-warning",
        "EXISTS",
        &store.redis_key(&key),
    ]);
    assert_eq!(exists, "1", "the decisions were made in Redis");
}

#[tokio::test]
async fn a_user_who_may_not_run_scripts_fails_at_connect() {
    let server = RedisServer::start();
    let set = server.cli(&[
        "ACL",
        "SETUSER",
        "reader",
        "on",
        ">reader-pw-7f3a9c",
        "~*",
        "+@all",
        "-@scripting",
    ]);
    assert_eq!(set, "OK");
    let url = format!(
        "redis://reader:reader-pw-7f3a9c@127.0.0.1:{}/",
        server.port()
    );
    let error = connect(&url).await.expect_err("no scripting");
    assert_eq!(error.kind(), StoreErrorKind::Auth, "{error}");
    assert!(error.to_string().contains("NOPERM"), "{error}");
    assert!(error.to_string().contains("reader:***@"), "{error}");
    assert_hidden(&error);
}

#[tokio::test]
async fn nothing_listening_fails_at_connect() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/");
    let started = Instant::now();
    let error = connect(&url).await.expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            error.kind(),
            StoreErrorKind::Redis | StoreErrorKind::Timeout
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert_hidden(&error);
}

/// A server on loopback that answers every connection with `answer` (or
/// nothing, holding it open) and counts them.
fn not_redis(answer: Option<&'static [u8]>) -> (u16, Arc<Mutex<Vec<std::net::TcpStream>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&held);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            match answer {
                Some(answer) => {
                    let _ = stream.write_all(answer);
                    let _ = stream.flush();
                }
                None => kept.lock().unwrap().push(stream),
            }
        }
    });
    (port, held)
}

#[tokio::test]
async fn a_server_that_is_not_redis_fails_at_connect() {
    let (port, _held) = not_redis(Some(
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/");
    let started = Instant::now();
    let error = connect(&url).await.expect_err("an HTTP server");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(error.kind(), StoreErrorKind::NotRedis, "{error}");
    assert!(
        error.to_string().contains("did not answer as Redis does"),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert_hidden(&error);
}

#[tokio::test]
async fn a_silent_server_fails_at_connect_in_bounded_time() {
    let (port, _held) = not_redis(None);
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}/");
    let started = Instant::now();
    let error = connect(&url)
        .await
        .expect_err("a server that never answers");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            error.kind(),
            StoreErrorKind::Timeout | StoreErrorKind::NotRedis | StoreErrorKind::Redis
        ),
        "{error}"
    );
    assert_hidden(&error);
}

#[tokio::test]
async fn an_invalid_url_is_a_config_error_without_the_password() {
    for url in [
        format!("redis://:{PASSWORD}@127.0.0.1:notaport/"),
        format!("http://:{PASSWORD}@127.0.0.1:6379/"),
        format!("{PASSWORD}@localhost"),
    ] {
        let error = connect(&url).await.expect_err("invalid URL");
        assert_eq!(error.kind(), StoreErrorKind::Config, "{url}: {error}");
        assert_hidden(&error);
    }
}

#[test]
fn builders_and_urls_hide_the_password() {
    let url = format!("redis://app:{PASSWORD}@db.internal:6379/0");
    assert_eq!(redact_url(&url), "redis://app:***@db.internal:6379/0");
    assert_eq!(
        redact_url(&format!("rediss://:{PASSWORD}@db:6380/")),
        "rediss://:***@db:6380/"
    );
    // A password holding '@' or '/' hides whole.
    assert_eq!(
        redact_url(&format!("redis://u:{PASSWORD}@x@db:6379/")),
        "redis://u:***@db:6379/"
    );
    assert_eq!(redact_url("redis://db:6379/"), "redis://db:6379/");
    let builder = RedisStore::builder(&url).prefix("p");
    assert!(!format!("{builder:?}").contains(PASSWORD), "{builder:?}");
    let cluster = RedisStore::cluster_builder([url.clone(), url]);
    assert!(!format!("{cluster:?}").contains(PASSWORD), "{cluster:?}");
}
