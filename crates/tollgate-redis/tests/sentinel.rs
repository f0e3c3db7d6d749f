//! Redis Sentinel: a master, its replica and a sentinel of the test's own
//! on loopback. The store finds the master through the sentinel; when the
//! master dies and the sentinel promotes the replica, decisions go to the
//! new master. Real clock, generous bounds.

use std::time::{Duration, Instant};

use tollgate::{DeniedKind, KeyedLimiter, Quota};
use tollgate_redis::testing::{RedisSentinel, RedisServer};
use tollgate_redis::{Fault, RedisStore, StoreErrorKind};

const NAME: &str = "tollgate-master";

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_the_master_sentinel_promotes() {
    let mut master = RedisServer::start();
    let port = master.port().to_string();
    let replica = RedisServer::start_with_args(&["--replicaof", "127.0.0.1", &port]);
    wait_for("the replica in sync", Duration::from_secs(20), || {
        replica
            .cli(&["INFO", "replication"])
            .contains("master_link_status:up")
    });
    let sentinel = RedisSentinel::start(NAME, master.port());
    wait_for(
        "the sentinel to know the replica",
        Duration::from_secs(30),
        || {
            sentinel
                .cli(&["SENTINEL", "replicas", NAME])
                .contains(&replica.port().to_string())
        },
    );

    let store = RedisStore::sentinel_builder([sentinel.url()], NAME)
        .prefix("sentinel")
        .fault(Fault::FailClosed)
        .timeout(Duration::from_millis(200))
        .breaker_failures(2)
        .breaker_cool_down(Duration::from_millis(200))
        .connect()
        .await
        .expect("connect through the sentinel");
    let limiter = KeyedLimiter::with_store(Quota::per_hour(1_000).unwrap(), store.clone());
    let key = "k".to_owned();
    limiter
        .try_acquire(&key, 1)
        .await
        .expect("decided in the master");
    assert_eq!(master.cli(&["EXISTS", &store.redis_key(&key)]), "1");

    master.kill();
    // Store failures until the sentinel promotes the replica, then the
    // store moves there by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failed = 0;
    loop {
        match limiter.try_acquire(&key, 1).await {
            Ok(_) => break,
            Err(denied) => {
                assert_eq!(denied.kind(), DeniedKind::StoreFailed, "{denied:?}");
                failed += 1;
            }
        }
        assert!(
            Instant::now() < deadline,
            "decisions never moved to the promoted master"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failed > 0, "the master's death was seen");
    // The replica is the master now, and holds what was decided (the
    // first admission, replicated, and the ones since).
    assert!(replica
        .cli(&["INFO", "replication"])
        .contains("role:master"));
    assert_eq!(replica.cli(&["EXISTS", &store.redis_key(&key)]), "1");
    let snapshot = limiter.snapshot(&key).await.unwrap();
    assert!(snapshot.remaining() < 1_000, "{snapshot:?}");
}

#[tokio::test]
async fn an_unknown_master_name_fails_at_connect() {
    let master = RedisServer::start();
    let sentinel = RedisSentinel::start(NAME, master.port());
    let error = RedisStore::sentinel_builder([sentinel.url()], "no-such-master")
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .expect_err("no master of that name");
    assert!(
        matches!(
            error.kind(),
            StoreErrorKind::Redis | StoreErrorKind::Timeout
        ),
        "{error}"
    );
    assert!(error.to_string().contains("no-such-master"), "{error}");
}
