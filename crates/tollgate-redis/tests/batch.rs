//! Concurrent decisions on one connection go to Redis together, in one
//! script call: each still decided exactly as alone, and a key Redis
//! cannot read fails alone. A real `redis-server`, on the real clock;
//! every assertion is a count, none a time.

use std::sync::Arc;

use tollgate::store::{Decision, Store};
use tollgate::{DeniedKind, KeyedLimiter, Quota};
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{Fault, RedisStore};

async fn store(server: &RedisServer) -> RedisStore {
    RedisStore::builder(server.url())
        .prefix("batch")
        .fault(Fault::FailClosed)
        .timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_decisions_are_each_exact() {
    let server = RedisServer::start();
    let limiter = Arc::new(KeyedLimiter::with_store(
        Quota::per_hour(10).unwrap(),
        store(&server).await,
    ));
    // 400 decisions at once over 8 keys of 10 an hour each.
    let mut tasks = Vec::new();
    for i in 0..400 {
        let limiter = Arc::clone(&limiter);
        tasks.push(tokio::spawn(async move {
            let key = format!("tenant-{}", i % 8);
            match limiter.try_acquire(&key, 1).await {
                Ok(_) => (i % 8, true),
                Err(denied) => {
                    assert_eq!(denied.kind(), DeniedKind::RateLimited, "{denied:?}");
                    (i % 8, false)
                }
            }
        }));
    }
    let mut admitted = [0u32; 8];
    for task in tasks {
        let (key, ok) = task.await.unwrap();
        admitted[key] += u32::from(ok);
    }
    assert_eq!(admitted, [10; 8], "exactly the burst of each key");
    let calls: u64 = server
        .cli(&["INFO", "commandstats"])
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .expect("EVALSHA counted");
    assert!(
        (1..=400).contains(&calls),
        "at most one call a decision: {calls}"
    );
    println!("400 decisions in {calls} script calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_redis_cannot_read_fails_alone() {
    let server = RedisServer::start();
    let store = store(&server).await;
    // Something else wrote a hash where one key's state lives.
    let bad = "tenant-bad".to_owned();
    server.cli(&["HSET", &store.redis_key(&bad), "x", "1"]);
    let limits = [Quota::per_hour(100).unwrap()];
    let mut tasks = Vec::new();
    for i in 0..60 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = if i % 3 == 0 {
                "tenant-bad".to_owned()
            } else {
                format!("tenant-{i}")
            };
            let result = store
                .decide(&key, &limits, &[1], std::time::Duration::ZERO)
                .await;
            (i % 3 == 0, result)
        }));
    }
    for task in tasks {
        match task.await.unwrap() {
            (true, Err(e)) => assert!(e.to_string().contains("WRONGTYPE"), "{e}"),
            (false, Ok(Decision::Admit(_))) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Nothing was written over the foreign value.
    assert_eq!(server.cli(&["TYPE", &store.redis_key(&bad)]), "hash");
}
