//! What a call without an output bound costs is learnt: against the
//! scripted provider (in process, paused clock), bodies without
//! `max_tokens` where tokens bind.

mod mock;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use mock::{Charge, Config, Counting, Enforce, Host, Report, Rounding, Style};
use serde_json::{json, Value};
use tokio::time::Instant;
use tollgate_reqwest::{RateLimitMiddleware, Usage};

fn unbounded() -> Value {
    json!({
        "model": "mock-1",
        "messages": [{"role": "user", "content": "Hello, please count to three."}]
    })
}

/// What 600 calls at once against a provider came to.
struct Ran {
    /// Of the allowed rate.
    share: f64,
    answered: usize,
    /// The output the last call answered reserved.
    last_reserved: u64,
    refused: u64,
}

/// 600 calls of `body` at once against `config` (120 ms answers), each
/// reporting its usage if `report`.
async fn six_hundred(config: Config, body: Value, report: bool) -> Ran {
    six_hundred_at(config, Host::Provider, body, report).await
}

/// [`six_hundred`] at a host as `host` says.
async fn six_hundred_at(config: Config, host: Host, body: Value, report: bool) -> Ran {
    six_hundred_with(config, host, body, report, 600).await
}

/// [`six_hundred_at`], at most `in_flight` calls at once (as `tollgate
/// batch` sends them: the others are not yet priced).
async fn six_hundred_with(
    config: Config,
    host: Host,
    body: Value,
    report: bool,
    in_flight: usize,
) -> Ran {
    let (base, provider) = mock::serve(config.latency(Duration::from_millis(120)), host);
    let client = Arc::new(transport::client(
        RateLimitMiddleware::builder().headroom(0.02).build(),
    ));
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let start = Instant::now();
    let slots = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let mut tasks = Vec::new();
    for _ in 0..600 {
        let (client, url, body) = (Arc::clone(&client), Arc::clone(&url), body.to_string());
        let slots = Arc::clone(&slots);
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.ok()?;
            let response = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .ok()?;
            let usage = response.extensions().get::<Usage>().cloned()?;
            let bytes = response.bytes().await.ok()?;
            let answer: Value = serde_json::from_slice(&bytes).ok()?;
            if report {
                assert!(usage.report_body(&answer).await);
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
    Ran {
        share: answered.len() as f64 / elapsed / provider.allowed_rate(&body),
        answered: answered.len(),
        last_reserved: last.unwrap_or(0),
        refused: provider.counts().limited,
    }
}

/// 600 calls of 12 prompt tokens and 20 written, where tokens allow 100 a
/// second; whether each caller reports its usage. Answers the share of
/// the allowed rate, the calls answered, the output reserved by the last
/// call and the attempts refused.
async fn run(style: Style, report: bool) -> (f64, usize, u64, u64) {
    let config = Config::new(12_000, 32 * 100 * 60)
        .dialect(style)
        .charge(Charge::Written)
        .writes(20);
    let ran = six_hundred(config, unbounded(), report).await;
    (ran.share, ran.answered, ran.last_reserved, ran.refused)
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

/// 600 calls without `max_tokens` (12 prompt tokens, 20 written, at most
/// `in_flight` at once) against a provider that charges `charged` tokens
/// of output for them, tokens a second allowing 100 calls, its
/// `remaining` reported as `report` says; checks that none is lost or
/// refused and that they went at more than `least` of the rate.
async fn charged_other_than_written(charged: u64, in_flight: usize, least: f64) {
    for report in [Report::Sliding, Report::Bucket] {
        let counting = Counting {
            enforce: Enforce::Bucket,
            slice: Duration::from_secs(1),
            report,
        };
        let mut config = Config::new(12_000, (12 + charged) * 100 * 60)
            .tokens(counting)
            .charge(Charge::MaxTokens)
            .writes(20);
        config.absent = charged;
        let ran = six_hundred_with(config, Host::Provider, unbounded(), true, in_flight).await;
        assert_eq!(ran.answered, 600, "{report:?}: none lost");
        assert!(
            ran.share > least,
            "{report:?}: {:.1}% of the rate",
            100.0 * ran.share
        );
        assert_eq!(ran.refused, 0, "{report:?}");
    }
}

/// A provider that charges a call without `max_tokens` 16 tokens of
/// output while the model writes 20 (a default bound of its own): how its
/// token `remaining` falls shows it, whether that counts the last minute
/// or a bucket refilled continuously (OpenAI's), and calls settle at 16
/// (those priced before it was read reserved 20). Settled at the 20
/// written, they went at 84% of the rate.
#[tokio::test(start_paused = true)]
async fn a_provider_that_charges_less_than_was_written_is_read_from_remaining() {
    charged_other_than_written(16, 600, 0.92).await;
}

/// A provider that charges a call without `max_tokens` 64 tokens of
/// output while the model writes 20 (a default bound larger than what is
/// written): reserved and settled at the 20 written, the calls overran
/// the limit. The token `remaining` shows the charge, and a process alone
/// on the key takes it for the calls priced after it: 64 calls at most in
/// flight, as `tollgate batch` sends them (calls already queued keep
/// what they reserved).
#[tokio::test(start_paused = true)]
async fn a_provider_that_charges_more_than_was_written_is_read_from_remaining() {
    charged_other_than_written(64, 64, 0.93).await;
}

/// A provider whose calls are never reported teaches nothing: calls go
/// on the prior, slowly, and none is lost or held for ever.
#[tokio::test(start_paused = true)]
async fn callers_that_never_report_usage_go_on_the_prior() {
    let (_, answered, reserved, _) = run(Style::OpenAi, false).await;
    assert_eq!(answered, 600);
    assert_eq!(reserved, 1_024);
}

/// 600 calls bounded at 60 output tokens, of which 20 are written, where
/// tokens allow 100 a second of what the provider charges: answers the
/// share of the allowed rate and the attempts refused.
async fn bounded(config: Config) -> (f64, u64) {
    bounded_at(config, Host::Provider).await
}

/// [`bounded`] at a host as `host` says.
async fn bounded_at(config: Config, host: Host) -> (f64, u64) {
    let body = json!({
        "model": "mock-1",
        "max_tokens": 60,
        "messages": [{"role": "user", "content": "Hello, please count to three."}]
    });
    let ran = six_hundred_at(config, host, body, true).await;
    assert_eq!(ran.answered, 600, "none lost");
    (ran.share, ran.refused)
}

/// What a bounded call is charged is learnt: a provider that charges the
/// bound (OpenAI) is never overrun by settling calls to what they wrote,
/// and one that charges what was written, and says so in an exact token
/// `remaining`, gets the rate of what it charges.
#[tokio::test(start_paused = true)]
async fn a_bounded_call_is_settled_to_what_the_provider_charges() {
    for style in [Style::OpenAi, Style::Ietf, Style::Mistral] {
        let charges_bound = Config::new(12_000, 72 * 100 * 60)
            .dialect(style)
            .charge(Charge::MaxTokens)
            .writes(20);
        let (share, refused) = bounded(charges_bound).await;
        assert!(refused <= 3, "{style:?}, bound charged: {refused} refused");
        assert!(
            share > 0.9,
            "{style:?}, bound charged: {:.1}%",
            100.0 * share
        );
        let charges_written = Config::new(12_000, 32 * 100 * 60)
            .dialect(style)
            .charge(Charge::Written)
            .writes(20);
        let (share, refused) = bounded(charges_written).await;
        assert!(
            refused <= 3,
            "{style:?}, written charged: {refused} refused"
        );
        // Charged the bound, 72 a call: 44% of the rate.
        assert!(
            share > 0.9,
            "{style:?}, written charged: {:.1}%",
            100.0 * share
        );
    }
}

/// A `remaining` rounded to thousands shows nothing of a call's charge:
/// at a host of no known provider, bounded calls stay charged their
/// bound, slower than the provider allows, and never refused; at
/// Anthropic's, whose output tokens count what was written (its
/// documentation), they are settled to what they wrote, until refusals
/// show the provider charges more.
#[tokio::test(start_paused = true)]
async fn a_rounded_remaining_leaves_the_bound_charged_but_at_anthropic() {
    let config = || {
        Config::new(12_000, 32 * 100 * 60)
            .dialect(Style::Anthropic)
            .rounding(Rounding::Thousands)
            .charge(Charge::Written)
            .writes(20)
    };
    let (share, refused) = bounded_at(config(), Host::Unknown).await;
    assert_eq!(refused, 0);
    assert!(share < 0.5, "unknown host: {:.1}%", 100.0 * share);
    let (share, refused) = bounded_at(config(), Host::Provider).await;
    assert!(refused <= 3, "anthropic.com: {refused} refused");
    assert!(share > 0.9, "anthropic.com: {:.1}%", 100.0 * share);
    // A provider at Anthropic's host that charges the bound after all:
    // its refusals overrule the host's rule, and calls are charged their
    // bound (taken on trust, 34% of the attempts were refused).
    let charges_bound = Config::new(12_000, 72 * 100 * 60)
        .dialect(Style::Anthropic)
        .rounding(Rounding::Thousands)
        .charge(Charge::MaxTokens)
        .writes(20);
    let (share, refused) = bounded_at(charges_bound, Host::Provider).await;
    println!(
        "anthropic.com, bound charged: {:.1}%, {refused} refused",
        100.0 * share
    );
    assert!(
        refused <= 4,
        "anthropic.com, bound charged: {refused} refused"
    );
    assert!(
        share > 0.9,
        "anthropic.com, bound charged: {:.1}%",
        100.0 * share
    );
}

/// Where answers state what remains of the tokens limit but not the limit
/// (Azure's sparest answers), a single answer shows nothing of a call's
/// charge; a run of them does where `remaining` counts a window: it falls
/// by what was written, and calls are settled to it. A bucket refilled at
/// the pace the calls go shows no fall: bounded calls stay charged their
/// bound there, slower than the provider allows, never refused. A
/// provider that charges the bound is never overrun.
#[tokio::test(start_paused = true)]
async fn a_remaining_alone_shows_what_is_charged_where_it_counts_a_window() {
    let second = Duration::from_secs(1);
    for counting in [
        Counting::bucket(second),
        Counting::sliding(second),
        Counting::fixed(second),
    ] {
        // Tokens allow 100 calls a second of what the provider charges.
        let config = |charged: u64, charge: Charge| {
            Config::new(12_000, charged * 100 * 60)
                .dialect(Style::RemainingOnly)
                .tokens(counting)
                .charge(charge)
                .writes(20)
        };
        let (share, refused) = bounded(config(72, Charge::MaxTokens)).await;
        assert!(refused <= 3, "{counting:?}, bound: {refused} refused");
        assert!(share > 0.9, "{counting:?}, bound: {:.1}%", 100.0 * share);
        let (share, refused) = bounded(config(32, Charge::Written)).await;
        assert!(refused <= 3, "{counting:?}, written: {refused} refused");
        if counting.report == Report::Bucket {
            // Charged the bound, 72 a call: 44% of the rate.
            assert!(share < 0.5, "{counting:?}, written: {:.1}%", 100.0 * share);
        } else {
            assert!(share > 0.85, "{counting:?}, written: {:.1}%", 100.0 * share);
        }
    }
}
