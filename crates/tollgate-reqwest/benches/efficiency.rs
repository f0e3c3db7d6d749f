//! Quota efficiency: for each kind of provider, how close to its allowed
//! rate the middleware runs, how many attempts are refused, and how many
//! calls are lost. Every provider is the tests' in-process mock (no
//! socket), every run on Tokio's paused clock: the figures are the same
//! run after run.
//!
//! `cargo bench -p tollgate-reqwest --bench efficiency [-- WORDS]`: the rows
//! whose name holds WORDS. `TOLLGATE_CALLS=1500` runs each scenario for
//! that many calls instead of 400: a learnt rate's cycles of growth and
//! refusal show over minutes, not seconds.

#[path = "../tests/mock/mod.rs"]
mod mock;
#[path = "../tests/transport/mod.rs"]
mod transport;

use std::sync::Arc;
use std::time::Duration;

use mock::{Host, Style, Tokens};
use serde_json::{json, Value};
use tokio::time::Instant;
use tollgate_reqwest::{RateLimitMiddleware, Usage};

fn body(max_tokens: u64) -> Value {
    json!({
        "model": "mock-1",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "Hello, please count to three."}]
    })
}

struct Row {
    provider: String,
    calls: usize,
    answered: usize,
    attempts: u64,
    refused: u64,
    share: f64,
}

/// Calls in every scenario, shared among its clients, unless
/// `TOLLGATE_CALLS` says otherwise.
const CALLS: usize = 400;
/// The `max_tokens` of every call.
const MAX_TOKENS: u64 = 60;

struct Scenario {
    name: &'static str,
    style: Style,
    rpm: u64,
    tpm: u64,
    clients: usize,
    /// The requests a minute become this, 10 s in.
    change_to: Option<u64>,
    tokens: Tokens,
    host: Host,
}

impl Scenario {
    fn new(
        name: &'static str,
        style: Style,
        rpm: u64,
        tpm: u64,
        clients: usize,
        change_to: Option<u64>,
    ) -> Self {
        Self {
            name,
            style,
            rpm,
            tpm,
            clients,
            change_to,
            tokens: Tokens::Bucket,
            host: Host::Provider,
        }
    }

    /// The mock at a host of no known provider.
    fn elsewhere(mut self) -> Self {
        self.host = Host::Unknown;
        self
    }

    /// The mock's tokens enforced in slices of one second.
    fn in_slices(mut self) -> Self {
        self.tokens = Tokens::Slices;
        self
    }
}

async fn run(s: &Scenario, headroom: f64, calls: usize) -> Row {
    let latency = Duration::from_millis(120);
    let (base, mock) = mock::start_with(s.rpm, s.tpm, s.style, (s.tokens, s.host), latency).await;
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let payload = Arc::new(body(MAX_TOKENS).to_string());
    let start = Instant::now();
    if let Some(to) = s.change_to {
        let mock = Arc::clone(&mock);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            mock.set_rpm(to);
        });
    }
    let mut tasks = Vec::new();
    for _ in 0..s.clients {
        let client = Arc::new(transport::client(
            RateLimitMiddleware::builder().headroom(headroom).build(),
        ));
        for _ in 0..calls / s.clients {
            let (client, url, payload) =
                (Arc::clone(&client), Arc::clone(&url), Arc::clone(&payload));
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(payload.to_string())
                    .send()
                    .await
                    .ok()?;
                let ok = response.status() == 200;
                let usage = response.extensions().get::<Usage>().cloned();
                let bytes = response.bytes().await.ok()?;
                if let (true, Some(usage)) = (ok, usage) {
                    let value: Value = serde_json::from_slice(&bytes).ok()?;
                    usage.report_body(&value).await;
                }
                ok.then_some(())
            }));
        }
    }
    let mut answered = 0;
    for task in tasks {
        if let Ok(Some(())) = task.await {
            answered += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let counts = mock.counts();
    // The allowed rate over the run: before and after a change, weighted.
    let allowed = match s.change_to {
        None => mock.allowed_rate(&body(MAX_TOKENS)),
        Some(to) => {
            let before = (s.rpm as f64 / 60.0) * 10.0;
            let after = (to as f64 / 60.0) * (elapsed - 10.0).max(0.0);
            (before + after) / elapsed
        }
    };
    let calls = calls / s.clients * s.clients;
    Row {
        provider: s.name.to_owned(),
        calls,
        answered,
        attempts: counts.ok + counts.limited,
        refused: counts.limited,
        share: calls as f64 / elapsed / allowed,
    }
}

fn main() {
    let one = |name, style, rpm, tpm| Scenario::new(name, style, rpm, tpm, 1, None);
    let scenarios = [
        one(
            "OpenAI headers, requests bind",
            Style::OpenAi,
            600,
            1_000_000,
        ),
        one("OpenAI headers, tokens bind", Style::OpenAi, 6_000, 36_000),
        // Tokens in slices of a second: 600 tokens hold 8 calls of 72, 96%
        // of the 8.33 allowed, whatever the client does.
        one(
            "OpenAI headers, tokens bind in one-second slices (96.0% at most)",
            Style::OpenAi,
            6_000,
            36_000,
        )
        .in_slices(),
        // 720 tokens a second: the slices hold 10 calls of 72 whole.
        one(
            "OpenAI headers, tokens bind in one-second slices that hold whole calls",
            Style::OpenAi,
            6_000,
            43_200,
        )
        .in_slices(),
        one("Anthropic headers", Style::Anthropic, 600, 1_000_000),
        one("IETF RateLimit headers", Style::Ietf, 600, 1_000_000),
        one(
            "Mistral headers (window in the name)",
            Style::Mistral,
            600,
            1_000_000,
        ),
        one(
            "remaining only (Azure), Retry-After",
            Style::RemainingOnly,
            600,
            1_000_000,
        ),
        one(
            "Azure's request limit of ten seconds, no reset",
            Style::AzureTenSeconds,
            600,
            1_000_000,
        ),
        // The same headers where nothing says whose they are: the window
        // is read from the answers.
        one(
            "a request limit of ten seconds, no reset, at an unknown host",
            Style::AzureTenSeconds,
            600,
            1_000_000,
        )
        .elsewhere(),
        one(
            "a minute's request limit stated without reset or window",
            Style::MinuteNoReset,
            600,
            1_000_000,
        ),
        one(
            "Groq's headers: requests a day, the minute's unstated",
            Style::GroqDaily,
            600,
            1_000_000,
        ),
        one(
            "OpenRouter's headers: the day's on answers, the minute's on refusals",
            Style::OpenRouter,
            600,
            1_000_000,
        ),
        one(
            "Gemini's refusals: no headers, the quota in the body",
            Style::Gemini,
            600,
            1_000_000,
        ),
        one("no headers, Retry-After only", Style::Bare, 600, 1_000_000),
        Scenario::new(
            "limit raised mid-run (600 to 1,200 rpm)",
            Style::OpenAi,
            600,
            100_000_000,
            1,
            Some(1_200),
        ),
        Scenario::new(
            "limit lowered mid-run (1,200 to 600 rpm)",
            Style::OpenAi,
            1_200,
            100_000_000,
            1,
            Some(600),
        ),
        Scenario::new(
            "2 clients, one key, no shared store",
            Style::OpenAi,
            600,
            1_000_000,
            2,
            None,
        ),
        Scenario::new(
            "4 clients, one key, no shared store",
            Style::OpenAi,
            600,
            1_000_000,
            4,
            None,
        ),
        Scenario::new(
            "remaining only, limit lowered mid-run (1,200 to 600 rpm)",
            Style::RemainingOnly,
            1_200,
            100_000_000,
            1,
            Some(600),
        ),
        Scenario::new(
            "Groq's headers, 2 clients, one key, no shared store",
            Style::GroqDaily,
            600,
            1_000_000,
            2,
            None,
        ),
        Scenario::new(
            "Gemini's refusals, 2 clients, one key, no shared store",
            Style::Gemini,
            600,
            1_000_000,
            2,
            None,
        ),
        Scenario::new(
            "no headers, 2 clients, one key, no shared store",
            Style::Bare,
            600,
            1_000_000,
            2,
            None,
        ),
        Scenario::new(
            "Groq's headers, 4 clients, one key, no shared store",
            Style::GroqDaily,
            600,
            1_000_000,
            4,
            None,
        ),
        Scenario::new(
            "no headers, 4 clients, one key, no shared store",
            Style::Bare,
            600,
            1_000_000,
            4,
            None,
        ),
        Scenario::new(
            "remaining only, 2 clients, one key, no shared store",
            Style::RemainingOnly,
            600,
            1_000_000,
            2,
            None,
        ),
        Scenario::new(
            "remaining only, 4 clients, one key, no shared store",
            Style::RemainingOnly,
            600,
            1_000_000,
            4,
            None,
        ),
    ];
    // `cargo bench ... --bench efficiency -- WORDS`: only the rows whose
    // name holds WORDS.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let only = only.join(" ");
    let calls = std::env::var("TOLLGATE_CALLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or(CALLS);
    println!("| provider | calls | lost | of the allowed rate | attempts refused |");
    println!("|---|---:|---:|---:|---:|");
    // The middleware's default headroom (5%), then the batch's (2%).
    for headroom in [0.05, 0.02] {
        for scenario in &scenarios {
            let name = format!("{}, {:.0}% headroom", scenario.name, 100.0 * headroom);
            if !name.contains(only.as_str()) {
                continue;
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("runtime");
            let row = runtime.block_on(run(scenario, headroom, calls));
            println!(
                "| {}, {:.0}% headroom | {} | {} | {:.1}% | {} of {} ({:.2}%) |",
                row.provider,
                100.0 * headroom,
                row.calls,
                row.calls - row.answered,
                100.0 * row.share,
                row.refused,
                row.attempts,
                100.0 * row.refused as f64 / row.attempts.max(1) as f64
            );
        }
    }
}
