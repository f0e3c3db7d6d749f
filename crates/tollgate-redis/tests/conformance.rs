//! `RedisStore` against the core's store contract, on a real
//! `redis-server` and Redis' clock.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tollgate::store::conformance::Suite;
use tollgate_redis::testing::RedisServer;
use tollgate_redis::RedisStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_keeps_the_contract() {
    let server = RedisServer::start();
    let url = server.url();
    let n = AtomicU32::new(0);
    Suite::new(|| {
        // A fresh prefix for each check: a fresh, empty store.
        let prefix = format!("conformance{}", n.fetch_add(1, Ordering::Relaxed));
        let url = url.clone();
        async move {
            RedisStore::builder(url)
                .prefix(prefix)
                .timeout(Duration::from_secs(2))
                .limits_ttl(Duration::from_secs(2))
                .connect()
                .await
                .expect("connect to the test's redis-server")
        }
    })
    .slack(Duration::from_millis(250))
    .limits_ttl(Duration::from_secs(2))
    .run()
    .await;
    assert_eq!(server.cli(&["PING"]), "PONG");
}
