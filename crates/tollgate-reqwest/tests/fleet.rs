//! A rate learnt from refusals through a store other processes share: the
//! fleet's, not one process' share of it. Two clients, each its own
//! middleware, over one in-memory store that says two processes share it
//! (as a Redis store counts its fleet), against a provider that states no
//! limit (429 and `Retry-After` only); in process, on the paused clock.

mod mock;
mod transport;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mock::{Config, Host, Style};
use serde_json::json;
use tokio::time::Instant;
use tollgate::store::{Change, Decision, StoreStats, View};
use tollgate::{DefaultClock, MemoryStore, Quota, Store};
use tollgate_reqwest::{Endpoint, RateLimitMiddleware};

/// One store, shared by `sharers` processes as far as it says.
struct Fleet {
    store: Arc<MemoryStore>,
    sharers: u32,
}

impl Store<Endpoint> for Fleet {
    type Error = Infallible;

    fn decide(
        &self,
        key: &Endpoint,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, Infallible>> + Send {
        self.store.decide(key, limits, costs, max_wait)
    }

    fn adjust(
        &self,
        key: &Endpoint,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl Future<Output = Result<(), Infallible>> + Send {
        self.store.adjust(key, limits, changes)
    }

    fn read(
        &self,
        key: &Endpoint,
        limits: &[Quota],
    ) -> impl Future<Output = Result<View, Infallible>> + Send {
        self.store.read(key, limits)
    }

    fn give_back(&self, key: &Endpoint, limits: &[Quota], costs: &[u64]) {
        self.store.give_back(key, limits, costs);
    }

    fn stats(&self) -> StoreStats {
        Store::<Endpoint>::stats(&*self.store)
    }

    fn sharers(&self) -> u32 {
        self.sharers
    }
}

/// 600 calls from two clients over one store that says `sharers` share
/// it, against 600 a minute stated nowhere: the share of the allowed rate
/// and the attempts refused.
async fn two_clients(sharers: u32) -> (f64, u64) {
    let config = Config::new(600, 100_000_000)
        .dialect(Style::Bare)
        .latency(Duration::from_millis(120));
    let (base, provider) = mock::serve(config, Host::Provider);
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let store = Arc::new(MemoryStore::new(1_000, 4, DefaultClock::new()));
    let body = json!({"model": "m", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let fleet = Fleet {
            store: Arc::clone(&store),
            sharers,
        };
        let client = Arc::new(transport::client(
            RateLimitMiddleware::builder()
                .headroom(0.02)
                .build_with_store(fleet),
        ));
        for _ in 0..300 {
            let (client, url, body) = (Arc::clone(&client), Arc::clone(&url), body.clone());
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }));
        }
    }
    for task in tasks {
        task.await.unwrap();
    }
    let share = 600.0 / start.elapsed().as_secs_f64() / 10.0;
    (share, provider.counts().limited)
}

#[tokio::test(start_paused = true)]
async fn a_rate_learnt_through_a_shared_store_is_the_fleets() {
    let (alone, _) = two_clients(1).await;
    let (fleet, refused) = two_clients(2).await;
    // Taken for one process' rate, a rate learnt from a half of the
    // answers paced the two at 42% of the provider's; counted as the
    // fleet's, at 69% (73% while a refused attempt gave its turn back;
    // short of the 90% the client aims at: see the efficiency notes).
    assert!(alone < 0.5, "counted as one: {:.1}%", 100.0 * alone);
    assert!(fleet > 0.65, "counted as two: {:.1}%", 100.0 * fleet);
    assert!(
        fleet > alone + 0.2,
        "{:.1}% against {:.1}%",
        100.0 * fleet,
        100.0 * alone
    );
    assert!(refused <= 10, "{refused} refused");
}
