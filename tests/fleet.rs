//! Two servers behind one limit: two axum servers on two loopback ports,
//! each with a `RateLimitLayer` whose limit is in one Redis, and a client
//! alternating between them. On the real clock; no result depends on a
//! sleep.

use std::time::Duration;

use axum::{routing::get, Router};
use tollgate::Quota;
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{Fault, RedisStore};
use tollgate_tower::{HeaderKey, RateLimitLayer};

/// One replica: its own connection to Redis, the fleet's prefix.
async fn replica(redis: &str, quota: Quota) -> String {
    let store = RedisStore::builder(redis)
        .prefix("fleet")
        .timeout(Duration::from_millis(500))
        .fault(Fault::FailClosed)
        .connect()
        .await
        .expect("connect to redis");
    let layer = RateLimitLayer::builder(quota)
        .key(HeaderKey::new("x-api-key").unwrap())
        .store(store)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_limit() {
    let redis = RedisServer::start();
    // Per hour: nothing refills while the test runs on a loaded machine.
    let quota: Quota = "5/hour".parse().unwrap();
    let servers = [
        replica(&redis.url(), quota).await,
        replica(&redis.url(), quota).await,
    ];
    // reqwest has rustls without a provider here (the binary's choice).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    let mut retry_after = Vec::new();
    for i in 0..12 {
        let response = client
            .get(&servers[i % 2])
            .header("x-api-key", "customer-1")
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        if let Some(value) = response.headers().get("retry-after") {
            retry_after.push(value.to_str().unwrap().parse::<u64>().unwrap());
        }
    }
    // Exactly the limit's count of 200s, whichever replica answered, then
    // 429s saying when the next one is due (one every 720 s).
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429, 429, 429, 429, 429]
    );
    assert_eq!(retry_after.len(), 7);
    for wait in retry_after {
        assert!((700..=720).contains(&wait), "Retry-After: {wait}");
    }
    // Another key has its own limit, on either replica.
    let other = client
        .get(&servers[1])
        .header("x-api-key", "customer-2")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(other.headers()["ratelimit"], "\"default\";r=4;t=720");
}
