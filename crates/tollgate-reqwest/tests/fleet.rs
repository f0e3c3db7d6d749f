//! The client over a store as a network store would be: a rate learnt
//! from refusals through a store other processes share is the fleet's, not
//! one process' share of it (two clients, each its own middleware, over
//! one in-memory store that says two processes share it, as a Redis store
//! counts its fleet, against a provider that states no limit); and what an
//! answer teaches reaches the store in one operation (each a round trip to
//! Redis). In process, on the paused clock.

mod fleet_store;
mod mock;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_store::Fleet;
use mock::{Config, Host, Style};
use serde_json::json;
use tokio::time::Instant;
use tollgate::{DefaultClock, MemoryStore};
use tollgate_reqwest::RateLimitMiddleware;

/// `n` calls of `body` to `url` at once through `client`, each answered
/// 200: the task that waits for them all.
fn calls(
    client: Arc<reqwest_middleware::ClientWithMiddleware>,
    url: &str,
    body: &str,
    n: usize,
) -> tokio::task::JoinHandle<()> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body) = (Arc::clone(&client), url.to_owned(), body.to_owned());
            tokio::spawn(async move {
                let response = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            })
        })
        .collect();
    tokio::spawn(async move {
        for task in tasks {
            task.await.unwrap();
        }
    })
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
            lessons: Arc::default(),
        };
        let client = Arc::new(transport::client(
            RateLimitMiddleware::builder()
                .headroom(0.02)
                .build_with_store(fleet),
        ));
        tasks.push(calls(client, &url, &body, 300));
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

/// Every answer of a provider that states requests and tokens with what
/// remains of each teaches the store in one adjustment at most (two caps
/// and a limit were up to six round trips to Redis an answer).
#[tokio::test(start_paused = true)]
async fn an_answer_teaches_the_store_in_one_adjustment() {
    for style in [Style::OpenAi, Style::Anthropic, Style::Ietf, Style::Bare] {
        let config = Config::new(600, 100_000_000)
            .dialect(style)
            .latency(Duration::from_millis(120));
        let (base, provider) = mock::serve(config, Host::Provider);
        let url = format!("{base}/v1/chat/completions");
        let lessons = Arc::new(AtomicU64::new(0));
        let fleet = Fleet {
            store: Arc::new(MemoryStore::new(1_000, 4, DefaultClock::new())),
            sharers: 1,
            lessons: Arc::clone(&lessons),
        };
        let client = Arc::new(transport::client(
            RateLimitMiddleware::builder().build_with_store(fleet),
        ));
        let body = json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        calls(client, &url, &body, 100).await.unwrap();
        let counts = provider.counts();
        let answers = counts.ok + counts.limited;
        let lessons = lessons.load(Ordering::Relaxed);
        assert!(answers >= 100, "{style:?}: {answers} answers");
        assert!(
            lessons <= answers,
            "{style:?}: {lessons} adjustments for {answers} answers"
        );
        println!("{style:?}: {lessons} adjustments for {answers} answers");
        if matches!(style, Style::OpenAi | Style::Anthropic) {
            // What remains is read at every answer: not one lesson fewer
            // than half of them (some answers leave the store as it is).
            assert!(lessons >= answers / 2, "{style:?}: {lessons} of {answers}");
        }
    }
}
