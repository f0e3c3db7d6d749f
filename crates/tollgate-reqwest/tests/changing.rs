//! A provider that changes its request limit mid-run (a tier raised or
//! lowered), stating it in OpenAI's headers: the middleware follows it
//! both ways, the calls already queued included. In process, on Tokio's
//! paused clock: every figure is the same run after run.

mod mock;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use mock::Style;
use serde_json::json;
use tokio::time::Instant;
use tollgate_reqwest::RateLimitMiddleware;

const CALLS: usize = 400;

struct Run {
    /// When each call was answered, from the start.
    answered: Vec<Duration>,
    refused: u64,
    attempts: u64,
}

/// 400 calls, as many at once as the middleware lets through; at `at`
/// the provider's limit becomes `to` requests a minute.
async fn run(from: u64, to: u64, at: Duration) -> Run {
    let (base, mock) =
        mock::start(from, 100_000_000, Style::OpenAi, Duration::from_millis(50)).await;
    let client = Arc::new(transport::client(RateLimitMiddleware::new()));
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let start = Instant::now();
    let changer = {
        let mock = Arc::clone(&mock);
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            mock.set_rpm(to);
        })
    };
    let mut tasks = Vec::new();
    for _ in 0..CALLS {
        let (client, url) = (Arc::clone(&client), Arc::clone(&url));
        tasks.push(tokio::spawn(async move {
            let body = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
            let response = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "a call was lost");
            start.elapsed()
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        answered.push(task.await.unwrap());
    }
    changer.await.unwrap();
    answered.sort();
    let counts = mock.counts();
    Run {
        answered,
        refused: counts.limited,
        attempts: counts.ok + counts.limited,
    }
}

/// Calls answered a second over `from..to`.
fn rate(run: &Run, from: Duration, to: Duration) -> f64 {
    let n = run
        .answered
        .iter()
        .filter(|t| **t >= from && **t < to)
        .count();
    n as f64 / (to - from).as_secs_f64()
}

#[tokio::test(start_paused = true)]
async fn a_raised_limit_is_followed_at_once() {
    // 10 a second for 10 s, then 20.
    let run = run(600, 1_200, Duration::from_secs(10)).await;
    let before = rate(&run, Duration::from_secs(2), Duration::from_secs(10));
    let after = rate(&run, Duration::from_secs(12), Duration::from_secs(20));
    let per_second: Vec<usize> = (0..30)
        .map(|s| run.answered.iter().filter(|t| t.as_secs() == s).count())
        .collect();
    println!("per second: {per_second:?}");
    println!(
        "raised: {before:.2}/s then {after:.2}/s, {} of {} refused",
        run.refused, run.attempts
    );
    assert!((9.0..=10.0).contains(&before), "{before:.2} calls/s of 10");
    assert!((18.0..=20.0).contains(&after), "{after:.2} calls/s of 20");
    assert!(run.refused as f64 <= 0.02 * run.attempts as f64);
}

#[tokio::test(start_paused = true)]
async fn a_lowered_limit_is_followed_at_the_first_sign() {
    // 20 a second for 10 s, then 10.
    let run = run(1_200, 600, Duration::from_secs(10)).await;
    let before = rate(&run, Duration::from_secs(2), Duration::from_secs(10));
    let after = rate(&run, Duration::from_secs(14), Duration::from_secs(24));
    println!(
        "lowered: {before:.2}/s then {after:.2}/s, {} of {} refused",
        run.refused, run.attempts
    );
    assert!((18.0..=20.0).contains(&before), "{before:.2} calls/s of 20");
    assert!((9.0..=10.0).contains(&after), "{after:.2} calls/s of 10");
    assert!(
        run.refused as f64 <= 0.02 * run.attempts as f64,
        "{} of {} refused",
        run.refused,
        run.attempts
    );
}
