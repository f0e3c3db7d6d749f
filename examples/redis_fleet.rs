//! Two servers, one limit: two axum servers (two replicas of one app) on
//! two loopback ports, each rate-limiting per API key with the limit kept
//! in one Redis. A client alternates between them: together they admit
//! the limit's count, then answer 429 with `Retry-After`.
//!
//! ```sh
//! redis-server --port 6379 &        # any Redis will do
//! cargo run -p tollgate-examples --example redis_fleet -- redis://127.0.0.1:6379/
//! ```

use std::time::Duration;

use axum::{routing::get, Router};
use tollgate::Quota;
use tollgate_redis::{Fault, RedisStore};
use tollgate_tower::{HeaderKey, RateLimitLayer};

/// One replica: its own connection to Redis, the fleet's key prefix.
async fn replica(redis: &str, quota: Quota) -> Result<String, Box<dyn std::error::Error>> {
    let store = RedisStore::builder(redis)
        .prefix("redis-fleet-example")
        .timeout(Duration::from_millis(100))
        // While Redis fails, each replica limits on its own.
        .fault(Fault::FailOpen)
        .connect()
        .await?;
    let layer = RateLimitLayer::builder(quota)
        .key(HeaderKey::new("x-api-key")?)
        .store(store)
        .build()?;
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}/", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("redis_fleet: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let redis = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned());
    let quota: Quota = "5/min".parse()?;
    let servers = [replica(&redis, quota).await?, replica(&redis, quota).await?];
    println!("two replicas, one limit of {quota} per key in {redis}:");
    // A key of this run's own, so that a rerun starts from a full limit.
    let key = format!("example-{}", std::process::id());
    let client = reqwest::Client::new();
    for i in 0..8 {
        let server = &servers[i % 2];
        let response = client.get(server).header("x-api-key", &key).send().await?;
        let retry = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|v| format!(", Retry-After: {v} s"))
            .unwrap_or_default();
        println!(
            "  request {} to {server}: {}{retry}",
            i + 1,
            response.status()
        );
    }
    Ok(())
}
