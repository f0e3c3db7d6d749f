//! What a call without an output bound costs is learnt: against the
//! scripted provider (in process, paused clock), bodies without
//! `max_tokens` where tokens bind.

mod mock;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use mock::{Charge, Config, Host, Style};
use serde_json::{json, Value};
use tokio::time::Instant;
use tollgate_reqwest::{RateLimitMiddleware, Usage};

fn unbounded() -> Value {
    json!({
        "model": "mock-1",
        "messages": [{"role": "user", "content": "Hello, please count to three."}]
    })
}

/// 600 calls of 12 prompt tokens and 20 written, where tokens allow 100 a
/// second; whether each caller reports its usage. Answers the share of
/// the allowed rate, the calls answered, the output reserved by the last
/// call and the attempts refused.
async fn run(style: Style, report: bool) -> (f64, usize, u64, u64) {
    let config = Config::new(12_000, 32 * 100 * 60)
        .dialect(style)
        .charge(Charge::Written)
        .writes(20)
        .latency(Duration::from_millis(120));
    let (base, provider) = mock::serve(config, Host::Provider);
    let client = Arc::new(transport::client(
        RateLimitMiddleware::builder().headroom(0.02).build(),
    ));
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..600 {
        let (client, url) = (Arc::clone(&client), Arc::clone(&url));
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(unbounded().to_string())
                .send()
                .await
                .ok()?;
            let usage = response.extensions().get::<Usage>().cloned()?;
            let bytes = response.bytes().await.ok()?;
            let body: Value = serde_json::from_slice(&bytes).ok()?;
            if report {
                assert!(usage.report_body(&body).await);
            }
            Some((Instant::now(), usage.estimate().output_tokens))
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        if let Some(done) = task.await.unwrap() {
            answered.push(done);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let last = answered.iter().max_by_key(|(at, _)| *at).map(|(_, o)| *o);
    let share = answered.len() as f64 / elapsed / provider.allowed_rate(&unbounded());
    (
        share,
        answered.len(),
        last.unwrap_or(0),
        provider.counts().limited,
    )
}

#[tokio::test(start_paused = true)]
async fn a_body_without_max_tokens_reserves_what_such_calls_write() {
    for style in [Style::OpenAi, Style::Anthropic] {
        let (share, answered, reserved, refused) = run(style, true).await;
        assert_eq!(answered, 600, "{style:?}: none lost");
        // Learnt from the first answers: 20 written, not the prior 1,024.
        assert_eq!(reserved, 20, "{style:?}");
        // On the prior, 12 + 1,024 a call: 3% of the rate.
        assert!(share > 0.90, "{style:?}: {:.1}% of the rate", 100.0 * share);
        assert!(refused <= 6, "{style:?}: {refused} refused");
    }
}

/// A provider whose calls are never reported teaches nothing: calls go
/// on the prior, slowly, and none is lost or held for ever.
#[tokio::test(start_paused = true)]
async fn callers_that_never_report_usage_go_on_the_prior() {
    let (_, answered, reserved, _) = run(Style::OpenAi, false).await;
    assert_eq!(answered, 600);
    assert_eq!(reserved, 1_024);
}
