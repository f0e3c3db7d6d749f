//! What a failing Redis writes to the log: one line when it starts
//! failing and one when it is back, however many calls fail in between
//! (they are counted), and never the password. A real `redis-server`,
//! killed and restarted; real clock, generous bounds.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tollgate::{DeniedKind, KeyedLimiter, Quota};
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{Fault, RedisStore};

const PASSWORD: &str = "pw-51d2e0-secret";

/// Everything the log wrote, as text.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn lines(&self, level: &str) -> usize {
        self.text().lines().filter(|l| l.contains(level)).count()
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Fails closed `calls` times in a row, as fast as it can; returns the
/// refusals a second.
async fn fail(limiter: &KeyedLimiter<String, RedisStore>, calls: u64) -> f64 {
    let started = Instant::now();
    for i in 0..calls {
        let denied = limiter
            .try_acquire(&format!("k{}", i % 64), 1)
            .await
            .unwrap_err();
        assert_eq!(denied.kind(), DeniedKind::StoreFailed);
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// Decides until Redis answers again (bounded).
async fn until_back(limiter: &KeyedLimiter<String, RedisStore>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = "probe".to_owned();
    while limiter.try_acquire(&key, 1).await.is_err() {
        assert!(Instant::now() < deadline, "Redis did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn failing_closed_logs_once_per_change_of_state_and_counts_the_rest() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut server = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
        let store =
            RedisStore::builder(format!("redis://:{PASSWORD}@127.0.0.1:{}/", server.port()))
                .fault(Fault::FailClosed)
                .timeout(Duration::from_millis(50))
                .breaker_failures(3)
                .breaker_cool_down(Duration::from_millis(100))
                .connect()
                .await
                .expect("connect");
        let limiter =
            KeyedLimiter::with_store(Quota::per_second(1_000_000).unwrap(), store.clone());
        for i in 0..100 {
            limiter.try_acquire(&format!("k{i}"), 1).await.unwrap();
        }
        assert_eq!(captured.lines("WARN"), 0, "{}", captured.text());

        // Outage one: 100,000 calls fail.
        server.kill();
        let rate = fail(&limiter, 100_000).await;
        eprintln!("refusals a second while Redis is down: {rate:.0}");
        assert_eq!(
            captured.lines("WARN"),
            2,
            "one line from the store, one from the limiter: {}",
            captured.text()
        );
        server.restart();
        until_back(&limiter).await;
        assert_eq!(captured.lines("INFO"), 2, "{}", captured.text());

        // Outage two: the same lines again, once each.
        server.kill();
        fail(&limiter, 1_000).await;
        assert_eq!(captured.lines("WARN"), 4, "{}", captured.text());

        let stats = limiter.stats();
        assert!(
            stats.store_failures >= 101_000,
            "every failed call counted: {stats:?}"
        );
        assert!(
            store.redis_stats().failed_closed >= 101_000,
            "{:?}",
            store.redis_stats()
        );
        let text = captured.text();
        assert!(!text.contains(PASSWORD), "the password was logged: {text}");
        assert!(text.lines().count() < 20, "{text}");
    });
}
