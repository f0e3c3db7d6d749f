//! A real `redis-server` shared by two stores (as by two processes), and
//! killed, restarted, flushed and slowed under them. On the real clock:
//! every bound is generous, none decides a result by sleeping.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate::{DeniedKind, KeyedLimiter, Quota};
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{Fault, RedisStore};

const TIMEOUT: Duration = Duration::from_millis(50);
/// What a decision may take beyond the store's timeout on a loaded machine.
const MARGIN: Duration = Duration::from_millis(150);

async fn store(server: &RedisServer, fault: Fault) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix("faults")
        .timeout(TIMEOUT)
        .fault(fault)
        .breaker_failures(3)
        .breaker_cool_down(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect")
}

fn limiter(store: RedisStore) -> KeyedLimiter<String, RedisStore> {
    KeyedLimiter::with_store(Quota::per_hour(10).unwrap(), store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_share_one_limit() {
    let server = RedisServer::start();
    // Two connections, as two replicas would have.
    let a = limiter(store(&server, Fault::FailClosed).await);
    let b = limiter(store(&server, Fault::FailClosed).await);
    let key = "client-1".to_owned();
    let mut admitted = 0;
    for i in 0..20 {
        let limiter = if i % 2 == 0 { &a } else { &b };
        match limiter.try_acquire(&key, 1).await {
            Ok(_) => admitted += 1,
            Err(denied) => {
                assert_eq!(denied.kind(), DeniedKind::RateLimited);
                let retry = denied.retry_after().unwrap();
                assert!(
                    retry <= Duration::from_secs(360) && retry > Duration::from_secs(355),
                    "{retry:?}"
                );
            }
        }
    }
    assert_eq!(admitted, 10, "one limit of 10 for both");
    // A pause set through one is seen by the other.
    a.pause_for(&"other".to_owned(), Duration::from_secs(30))
        .await
        .unwrap();
    let paused = b.paused_for(&"other".to_owned()).await.unwrap();
    assert!(paused > Duration::from_secs(29), "{paused:?}");
    // And a key's own quota.
    a.set_quota(&"gold".to_owned(), Quota::per_hour(100).unwrap())
        .await
        .unwrap();
    assert_eq!(
        b.quota_for(&"gold".to_owned()).await.unwrap(),
        Quota::per_hour(100).unwrap()
    );
    // Every key written has a TTL.
    let keys = server.cli(&["--scan", "--pattern", "faults:*"]);
    assert!(!keys.is_empty());
    for key in keys.lines() {
        let ttl: i64 = server.cli(&["PTTL", key]).parse().unwrap();
        assert!(ttl > 0, "{key} has no TTL ({ttl})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_is_transparent() {
    let server = RedisServer::start();
    let store = store(&server, Fault::FailClosed).await;
    let limiter = limiter(store.clone());
    let key = "k".to_owned();
    limiter.try_acquire(&key, 1).await.unwrap();
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]), "OK");
    limiter.try_acquire(&key, 1).await.unwrap();
    assert_eq!(limiter.snapshot(&key).await.unwrap().remaining(), 8);
    assert!(store.redis_stats().reloads >= 1);
    assert_eq!(store.redis_stats().failures, 0);
}

/// `FLUSHALL` forgets what was spent: the key starts full, so it admits
/// one burst more across the flush, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_mid_burst_starts_keys_afresh() {
    let server = RedisServer::start();
    let limiter = limiter(store(&server, Fault::FailClosed).await);
    let key = "k".to_owned();
    let mut admitted = 0;
    for i in 0..30 {
        if i == 15 {
            assert_eq!(server.cli(&["FLUSHALL"]), "OK");
        }
        if limiter.try_acquire(&key, 1).await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 20, "one burst before the flush, one after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_then_restarted_fails_open_and_recovers() {
    let mut server = RedisServer::start();
    let store = store(&server, Fault::FailOpen).await;
    let limiter = limiter(store.clone());
    let key = "k".to_owned();
    limiter.try_acquire(&key, 3).await.unwrap();
    server.kill();
    let mut admitted = 0;
    for _ in 0..20 {
        let start = Instant::now();
        if limiter.try_acquire(&key, 1).await.is_ok() {
            admitted += 1;
        }
        let took = start.elapsed();
        assert!(took < TIMEOUT + MARGIN, "a decision took {took:?}");
    }
    // Failing open: the in-process limit of 10 decides, knowing the 3
    // spent in Redis before it failed.
    assert_eq!(admitted, 7);
    let stats = store.redis_stats();
    assert!(stats.open, "{stats:?}");
    assert_eq!(stats.fallbacks, 20);
    assert!(stats.failures >= 3 && stats.failures < 20, "{stats:?}");

    server.restart();
    // Back once a probe gets through (the cool-down is 200 ms).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = store.redis_stats().fallbacks;
        let _ = limiter.try_acquire(&"probe".to_owned(), 1).await;
        if store.redis_stats().fallbacks == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recovered: {:?}",
            store.redis_stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!store.redis_stats().open);
    // The restarted Redis is empty: the key would start full there. The
    // first decision finds it so: it is decided here instead, where the
    // whole limit was spent, and the store gives Redis back what it knew,
    // so no burst follows.
    assert_eq!(limiter.snapshot(&key).await.unwrap().remaining(), 10);
    assert!(
        limiter.try_acquire(&key, 1).await.is_err(),
        "decided here, where the limit was spent"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.snapshot(&key).await.unwrap().remaining() > 0 {
        assert!(
            Instant::now() < deadline,
            "Redis was not given back the key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        limiter.try_acquire(&key, 1).await.is_err(),
        "no burst after the outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_closed_denies_with_a_store_failure() {
    let mut server = RedisServer::start();
    let limiter = limiter(store(&server, Fault::FailClosed).await);
    server.kill();
    for _ in 0..10 {
        let start = Instant::now();
        let denied = limiter.try_acquire(&"k".to_owned(), 1).await.unwrap_err();
        assert_eq!(denied.kind(), DeniedKind::StoreFailed);
        assert!(start.elapsed() < TIMEOUT + MARGIN);
    }
}

/// `DEBUG SLEEP` stalls the server: every decision still returns within
/// the timeout (plus scheduling), failing open meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowed_redis_costs_at_most_the_timeout() {
    let server = RedisServer::start();
    let store = store(&server, Fault::FailOpen).await;
    let limiter = limiter(store.clone());
    limiter.try_acquire(&"k".to_owned(), 1).await.unwrap();
    let mut sleeper = Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "DEBUG", "SLEEP", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Let the sleep begin: a PING from another connection now stalls.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slowest = Duration::ZERO;
    for _ in 0..10 {
        let start = Instant::now();
        let _ = limiter.try_acquire(&"k".to_owned(), 1).await;
        slowest = slowest.max(start.elapsed());
    }
    sleeper.wait().unwrap();
    assert!(slowest < TIMEOUT + MARGIN, "slowest decision {slowest:?}");
    assert!(
        store.redis_stats().fallbacks >= 1,
        "{:?}",
        store.redis_stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_failing_open_share_one_limit() {
    let mut server = RedisServer::start();
    // Three stores, as three processes would have: each counts the fleet.
    let mut stores = Vec::new();
    for _ in 0..3 {
        stores.push(store(&server, Fault::FailOpen).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while stores.iter().any(|s| s.redis_stats().fleet != 3) {
        assert!(Instant::now() < deadline, "the fleet was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What the store tells those that learn from what one process saw.
    for s in &stores {
        assert_eq!(tollgate::Store::<String>::sharers(s), 3);
    }
    let limiters: Vec<_> = stores
        .iter()
        .map(|s| KeyedLimiter::with_store(Quota::per_second(10).unwrap(), s.clone()))
        .collect();
    let key = "shared".to_owned();
    server.kill();
    let started = Instant::now();
    let mut admitted = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        for limiter in &limiters {
            if limiter.try_acquire(&key, 1).await.is_ok() {
                admitted += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The limit over the time, its burst included: 10 a second, 10 at once.
    let limit = 10.0 * elapsed + 10.0;
    eprintln!(
        "three processes, Redis down: {admitted} admitted in {elapsed:.2} s (limit {limit:.0})"
    );
    assert!(
        (admitted as f64) <= 1.2 * limit,
        "three processes admitted {admitted} in {elapsed:.2} s, more than 1.2 x {limit:.0}"
    );
    for store in &stores {
        let stats = store.redis_stats();
        assert!(stats.fallbacks > 0 && stats.fleet == 3, "{stats:?}");
    }
}

/// A rolling deploy that changes a key's limit: for a while, one process
/// passes 10 a second and another 100. The strictest passed within its
/// period applies to both (one key, one quota); once no process passes it
/// any more, the laxer one applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_two_quotas_the_strictest_applies() {
    let server = RedisServer::start();
    let old = store(&server, Fault::FailClosed).await;
    let new = store(&server, Fault::FailClosed).await;
    let strict = KeyedLimiter::with_store(Quota::per_second(10).unwrap(), old.clone());
    let lax = KeyedLimiter::with_store(Quota::per_second(100).unwrap(), new.clone());
    let key = "deployed".to_owned();
    let started = Instant::now();
    let (mut by_strict, mut by_lax) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(2) {
        if strict.try_acquire(&key, 1).await.is_ok() {
            by_strict += 1;
        }
        for _ in 0..5 {
            if lax.try_acquire(&key, 1).await.is_ok() {
                by_lax += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let limit = 10.0 * elapsed + 10.0;
    let together = (by_strict + by_lax) as f64;
    println!(
        "10/s and 100/s on one key: {by_strict} + {by_lax} in {elapsed:.2} s (10/s: {limit:.0})"
    );
    // The strict limit holds for its capacity (1 s) after the strict
    // process's last admission: starved that long by the other, it may
    // lapse for a moment, and the lax one admit a little more. Without the
    // rule the lax process alone would admit about 300.
    assert!(
        together <= 1.5 * limit,
        "{together} admitted, the strict limit allows {limit:.0}"
    );
    assert!(new.redis_stats().stricter > 0, "{:?}", new.redis_stats());
    assert_eq!(old.redis_stats().stricter, 0);

    // The old process is gone: after the strict limit's period (its
    // capacity, 1 s) the lax one applies. A cost of 50 never fits the
    // strict burst of 10; it fits the lax one once refilled.
    drop(strict);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lax.try_acquire(&key, 50).await {
            Ok(_) => break,
            Err(denied) => assert!(
                Instant::now() < deadline,
                "the strict limit never lapsed: {denied:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
