//! How the provider tells its limits, in each provider's dialect.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

use crate::{Decision, Provider};

/// A provider's way of telling its limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as
    /// Go durations; `retry-after-ms` and `retry-after` on a refusal.
    OpenAi,
    /// `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`,
    /// resets in RFC 3339.
    Anthropic,
    /// IETF `RateLimit-Policy` and `RateLimit`.
    Ietf,
    /// Mistral's: the window in the header's name, no reset.
    Mistral,
    /// Azure's sparest: what remains, no limit, no reset.
    RemainingOnly,
    /// No rate-limit headers; a refusal says only `Retry-After` (whole
    /// seconds).
    Bare,
    /// Azure's request limit: `x-ratelimit-limit-requests` counts ten
    /// seconds (a sixth of the minute's), with what remains of it and no
    /// reset; enforced over any ten seconds.
    AzureTenSeconds,
    /// Gemini's: no rate-limit headers; a refusal's body is a Google error
    /// whose `QuotaFailure` names the minute's request quota and whose
    /// `RetryInfo` says when to come back.
    Gemini,
    /// OpenRouter's: the legacy `x-ratelimit-{limit,remaining,reset}` with
    /// the reset in epoch milliseconds, stating the day's requests (14,400,
    /// full at the next UTC midnight) on an answer and the minute's on a
    /// refusal, which has no `Retry-After`.
    OpenRouter,
    /// A minute's request limit stated as Azure states its ten seconds'
    /// (what remains, no reset): what a guess of ten seconds meets when it
    /// is wrong.
    MinuteNoReset,
    /// Groq's: `-requests` headers are the day's (14,400, time until full
    /// at that rate), `-tokens` the minute's; the minute's requests are
    /// enforced but not stated.
    GroqDaily,
}

impl Dialect {
    /// The domain of the provider whose ways a client must know to read
    /// this dialect right (Groq's day, Azure's ten seconds, Anthropic's
    /// output tokens counted as written), if any.
    pub fn domain(self) -> Option<&'static str> {
        match self {
            Self::GroqDaily => Some("groq.com"),
            Self::AzureTenSeconds => Some("openai.azure.com"),
            Self::Anthropic => Some("anthropic.com"),
            _ => None,
        }
    }
}

/// A day's requests, for the dialects that state a day.
const DAY: u64 = 14_400;

fn epoch_ms(at: SystemTime) -> u128 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// The headers of an answer or a refusal.
pub(crate) fn headers(provider: &Provider, d: &Decision) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in told(provider, d) {
        if let Ok(value) = HeaderValue::try_from(value) {
            h.append(HeaderName::from_static(name), value);
        }
    }
    h
}

/// What the dialect tells of a decision, header by header.
fn told(provider: &Provider, d: &Decision) -> Vec<(&'static str, String)> {
    let now = provider.epoch + d.now;
    let (rq, tk) = (d.requests, d.tokens);
    let at = |reset: Duration| tollgate::headers::rfc3339(now + reset);
    let dialect = provider.config.dialect;
    let mut h = vec![("date", httpdate::fmt_http_date(now))];
    h.extend(match dialect {
        Dialect::OpenAi => vec![
            ("x-ratelimit-limit-requests", rq.limit.to_string()),
            ("x-ratelimit-remaining-requests", rq.remaining.to_string()),
            (
                "x-ratelimit-reset-requests",
                format!("{}ms", rq.reset.as_millis()),
            ),
        ],
        Dialect::Anthropic => vec![
            ("anthropic-ratelimit-requests-limit", rq.limit.to_string()),
            (
                "anthropic-ratelimit-requests-remaining",
                rq.remaining.to_string(),
            ),
            ("anthropic-ratelimit-requests-reset", at(rq.reset)),
            ("anthropic-ratelimit-tokens-limit", tk.limit.to_string()),
            (
                "anthropic-ratelimit-tokens-remaining",
                tk.remaining.to_string(),
            ),
            ("anthropic-ratelimit-tokens-reset", at(tk.reset)),
        ],
        Dialect::Bare | Dialect::Gemini => vec![],
        Dialect::GroqDaily => {
            // Full again when what was spent refills at a day's rate (6 s a
            // request).
            let spent = provider.counts().ok.min(DAY);
            vec![
                ("x-ratelimit-limit-requests", DAY.to_string()),
                ("x-ratelimit-remaining-requests", (DAY - spent).to_string()),
                (
                    "x-ratelimit-reset-requests",
                    format!("{}s", spent.saturating_mul(6)),
                ),
            ]
        }
        // Requests over ten seconds (`Report::Slice`).
        Dialect::AzureTenSeconds => vec![
            ("x-ratelimit-limit-requests", rq.limit.to_string()),
            ("x-ratelimit-remaining-requests", rq.remaining.to_string()),
            ("x-ratelimit-remaining-tokens", tk.remaining.to_string()),
        ],
        // The day's on an answer (full at the next UTC midnight), the
        // minute's on a refusal.
        Dialect::OpenRouter if d.admitted => {
            let secs = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let midnight =
                SystemTime::UNIX_EPOCH + Duration::from_secs((secs / 86_400 + 1) * 86_400);
            let spent = provider.counts().ok;
            vec![
                ("x-ratelimit-limit", DAY.to_string()),
                (
                    "x-ratelimit-remaining",
                    DAY.saturating_sub(spent).to_string(),
                ),
                ("x-ratelimit-reset", epoch_ms(midnight).to_string()),
            ]
        }
        Dialect::OpenRouter => vec![
            ("x-ratelimit-limit", rq.limit.to_string()),
            ("x-ratelimit-remaining", "0".to_owned()),
            ("x-ratelimit-reset", epoch_ms(now + d.retry).to_string()),
        ],
        Dialect::MinuteNoReset => vec![
            ("x-ratelimit-limit-requests", rq.limit.to_string()),
            ("x-ratelimit-remaining-requests", rq.remaining.to_string()),
        ],
        Dialect::RemainingOnly => vec![
            ("x-ratelimit-remaining-requests", rq.remaining.to_string()),
            ("x-ratelimit-remaining-tokens", tk.remaining.to_string()),
        ],
        Dialect::Mistral => vec![
            ("x-ratelimit-limit-req-minute", rq.limit.to_string()),
            ("x-ratelimit-remaining-req-minute", rq.remaining.to_string()),
            ("x-ratelimit-limit-tokens-minute", tk.limit.to_string()),
            (
                "x-ratelimit-remaining-tokens-minute",
                tk.remaining.to_string(),
            ),
        ],
        Dialect::Ietf => vec![
            (
                "ratelimit-policy",
                format!("\"rpm\";q={};w=60, \"tpm\";q={};w=60", rq.limit, tk.limit),
            ),
            (
                "ratelimit",
                format!(
                    "\"rpm\";r={};t={}, \"tpm\";r={};t={}",
                    rq.remaining,
                    rq.reset.as_secs().max(1),
                    tk.remaining,
                    tk.reset.as_secs().max(1)
                ),
            ),
        ],
    });
    if matches!(dialect, Dialect::OpenAi | Dialect::GroqDaily) {
        // The minute's tokens, OpenAI's way (Groq's too).
        h.extend([
            ("x-ratelimit-limit-tokens", tk.limit.to_string()),
            ("x-ratelimit-remaining-tokens", tk.remaining.to_string()),
            (
                "x-ratelimit-reset-tokens",
                format!("{:.3}s", tk.reset.as_secs_f64()),
            ),
        ]);
    }
    if !d.admitted
        && !matches!(
            dialect,
            Dialect::Bare | Dialect::Gemini | Dialect::OpenRouter
        )
    {
        h.push(("retry-after-ms", d.retry.as_millis().max(1).to_string()));
    }
    if !d.admitted && !matches!(dialect, Dialect::Gemini | Dialect::OpenRouter) {
        // Whole seconds, rounded up: never sooner than the room.
        let secs = d.retry.as_nanos().div_ceil(1_000_000_000).max(1);
        h.push(("retry-after", secs.to_string()));
    }
    h
}

/// A refusal's body, in the dialect's shape.
pub(crate) fn refusal(provider: &Provider, d: &Decision) -> Value {
    match provider.config.dialect {
        // OpenAI's and Groq's refusals name the limit met.
        Dialect::OpenAi | Dialect::GroqDaily => {
            let (kind, label, limit) = if d.requests_refused {
                ("requests", "requests per minute (RPM)", d.requests.limit)
            } else {
                ("tokens", "tokens per minute (TPM)", d.tokens.limit)
            };
            json!({"error": {
                "message": format!(
                    "Rate limit reached for model `mock-1` in organization `org_mock` on {label}: Limit {limit}, Used {limit}, Requested 1. Please try again in {:.3}s.",
                    d.retry.as_secs_f64()
                ),
                "type": kind,
                "code": "rate_limit_exceeded",
            }})
        }
        Dialect::Gemini => json!({"error": {
            "code": 429,
            "message": "You exceeded your current quota, please check your plan and billing details.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model",
                    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                    "quotaDimensions": {"location": "global", "model": "mock-1"},
                    "quotaValue": d.requests.limit.to_string(),
                }]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                 "retryDelay": format!("{:.3}s", d.retry.as_secs_f64())},
            ],
        }}),
        _ => json!({"error": {"type": "rate_limit_exceeded", "message": "rate limit exceeded"}}),
    }
}
