//! A mock LLM provider, reached in process: an OpenAI-compatible chat completions
//! endpoint that enforces requests and tokens per minute the way providers
//! do: requests in slices of one second (a 600 RPM limit admits 10 in any
//! second of the clock), tokens from a bucket holding a second's worth and
//! refilled continuously (as Anthropic documents its token limits), or in
//! slices of one second too; and answers with OpenAI, Anthropic or IETF
//! rate-limit headers. Time is Tokio's, so it runs on paused time.
//!
//! Shared by several test files, each using part of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Style {
    OpenAi,
    Anthropic,
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
    /// reset; enforced over any ten seconds, not in slices of one.
    AzureTenSeconds,
    /// Gemini's: no rate-limit headers; a refusal's body is a Google
    /// error whose `QuotaFailure` names the minute's request quota and
    /// whose `RetryInfo` says when to come back.
    Gemini,
    /// OpenRouter's: the legacy `x-ratelimit-{limit,remaining,reset}`
    /// with the reset in epoch milliseconds, stating the day's requests
    /// (14,400, full at the next UTC midnight) on an answer and the
    /// minute's (full at the slice's end) on a refusal, which has no
    /// `Retry-After`.
    OpenRouter,
    /// A minute's request limit stated as Azure states its ten seconds'
    /// (`x-ratelimit-limit-requests`, what remains, no reset), enforced
    /// in slices of a second: what a guess of ten seconds meets when it
    /// is wrong.
    MinuteNoReset,
    /// Groq's: `-requests` headers are the day's (14,400, time until full
    /// at that rate), `-tokens` the minute's; the minute's requests are
    /// enforced but not stated.
    GroqDaily,
}

/// How the mock enforces its tokens a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tokens {
    /// A bucket of a second's worth, refilled continuously.
    Bucket,
    /// A second's worth in each second of the clock: calls that do not
    /// divide it leave the rest unused (8 calls of 72 in 600 tokens).
    Slices,
}

/// Where the mock answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Host {
    /// At a host of the provider its style imitates, where the middleware
    /// knows what the provider's headers count (Groq's, Azure's); any
    /// other style at a host of no known provider.
    Provider,
    /// At a host of no known provider, whatever its style.
    Unknown,
}

#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Counts {
    pub(crate) ok: u64,
    pub(crate) limited: u64,
}

pub(crate) struct Mock {
    /// Requests a minute: the provider may change it mid-run.
    rpm: std::sync::atomic::AtomicU64,
    tpm: u64,
    style: Style,
    tokens: Tokens,
    latency: Duration,
    start: Instant,
    /// The wall-clock time the mock's clock started at, for `Date` and
    /// absolute resets.
    epoch: SystemTime,
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    second: u64,
    requests_this_second: u64,
    tokens_this_second: u64,
    /// When the token bucket is full again (since the start), all that it
    /// lent paid back; it admits while that is at most a second away.
    tokens_tat: Duration,
    /// (when, tokens) of every admitted request in the last minute.
    minute: VecDeque<(Instant, u64)>,
    counts: Counts,
}

impl Mock {
    /// Requests a minute, now.
    pub(crate) fn rpm(&self) -> u64 {
        self.rpm.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the requests a minute, as a provider changing a tier does.
    pub(crate) fn set_rpm(&self, rpm: u64) {
        self.rpm.store(rpm, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn counts(&self) -> Counts {
        self.state.lock().unwrap().counts
    }

    /// Requests a second the limits allow, for requests costing `tokens`.
    pub(crate) fn allowed_rate(&self, tokens: u64) -> f64 {
        let by_requests = self.rpm() as f64 / 60.0;
        let by_tokens = self.tpm as f64 / 60.0 / tokens as f64;
        by_requests.min(by_tokens)
    }

    /// What the provider counts, as OpenAI documents it: the messages'
    /// text (a token per 4 bytes, rounded up) plus 4 tokens per message
    /// for its role and framing; and `max_tokens` of output (which the
    /// mock always writes in full).
    pub(crate) fn tokens_of(body: &Value) -> (u64, u64) {
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let text: usize = messages
            .iter()
            .filter_map(|m| m["content"].as_str())
            .map(str::len)
            .sum();
        let prompt = (text as u64).div_ceil(4) + 4 * messages.len() as u64;
        let output = body["max_tokens"].as_u64().unwrap_or(16);
        (prompt, output)
    }
}

pub(crate) async fn start(
    rpm: u64,
    tpm: u64,
    style: Style,
    latency: Duration,
) -> (String, Arc<Mock>) {
    start_with(rpm, tpm, style, (Tokens::Bucket, Host::Provider), latency).await
}

/// As [`start`], with the tokens enforced as `tokens` says, at `host`.
pub(crate) async fn start_with(
    rpm: u64,
    tpm: u64,
    style: Style,
    (tokens, host): (Tokens, Host),
    latency: Duration,
) -> (String, Arc<Mock>) {
    let mock = Arc::new(Mock {
        rpm: std::sync::atomic::AtomicU64::new(rpm),
        tpm,
        style,
        tokens,
        latency,
        start: Instant::now(),
        epoch: SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000),
        state: Mutex::new(Windows::default()),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(Arc::clone(&mock));
    // Groq's style answers at a host of Groq's, as Groq does: the
    // middleware knows its `-requests` headers count a day; Azure's at a
    // host of Azure's, where they count ten seconds.
    let base = match (style, host) {
        (Style::GroqDaily, Host::Provider) => super::transport::register_in(app, "groq.com"),
        (Style::AzureTenSeconds, Host::Provider) => {
            super::transport::register_in(app, "openai.azure.com")
        }
        _ => super::transport::register(app),
    };
    (base, mock)
}

async fn complete(State(mock): State<Arc<Mock>>, Json(body): Json<Value>) -> Response {
    let (prompt, output) = Mock::tokens_of(&body);
    let cost = prompt + output;
    let now = Instant::now();
    let elapsed = now - mock.start;
    let (admitted, requests_refused, until_next_second, headers) = {
        let mut state = mock.state.lock().unwrap();
        let second = elapsed.as_secs();
        if second != state.second {
            state.second = second;
            state.requests_this_second = 0;
            state.tokens_this_second = 0;
        }
        while state
            .minute
            .front()
            .is_some_and(|(at, _)| now - *at >= Duration::from_secs(60))
        {
            state.minute.pop_front();
        }
        let ten_seconds = state
            .minute
            .iter()
            .filter(|(at, _)| now - *at < Duration::from_secs(10))
            .count() as u64;
        let requests_admitted = if mock.style == Style::AzureTenSeconds {
            ten_seconds < mock.rpm() / 6
        } else {
            state.requests_this_second < mock.rpm() / 60
        };
        // One token's share of the bucket's second.
        let per_token = Duration::from_secs(60).div_f64(mock.tpm as f64);
        let tokens_tat = state.tokens_tat.max(elapsed) + per_token.mul_f64(cost as f64);
        let tokens_admitted = match mock.tokens {
            Tokens::Bucket => tokens_tat <= elapsed + Duration::from_secs(1),
            Tokens::Slices => state.tokens_this_second + cost <= mock.tpm / 60,
        };
        let admitted = requests_admitted && tokens_admitted;
        if admitted {
            state.requests_this_second += 1;
            state.tokens_this_second += cost;
            state.tokens_tat = tokens_tat;
            state.minute.push_back((now, cost));
            state.counts.ok += 1;
        } else {
            state.counts.limited += 1;
        }
        let used_requests = if mock.style == Style::AzureTenSeconds {
            ten_seconds + u64::from(admitted)
        } else {
            state.minute.len() as u64
        };
        let used_tokens: u64 = state.minute.iter().map(|(_, t)| t).sum();
        // Until the oldest admission leaves the minute.
        let reset = state
            .minute
            .front()
            .map(|(at, _)| Duration::from_secs(60).saturating_sub(now - *at))
            .unwrap_or_default();
        let until_next_second = Duration::from_secs(second + 1) - elapsed;
        (
            admitted,
            !requests_admitted,
            until_next_second,
            mock.headers(
                Used {
                    requests: used_requests,
                    tokens: used_tokens,
                    today: state.counts.ok,
                },
                reset,
                until_next_second,
                elapsed,
                admitted,
            ),
        )
    };
    if !admitted {
        let error = match mock.style {
            // OpenAI's and Groq's refusals name the limit met.
            Style::OpenAi | Style::GroqDaily => {
                let (kind, label, limit) = if requests_refused {
                    ("requests", "requests per minute (RPM)", mock.rpm())
                } else {
                    ("tokens", "tokens per minute (TPM)", mock.tpm)
                };
                json!({"error": {
                    "message": format!(
                        "Rate limit reached for model `mock-1` in organization `org_mock` on {label}: Limit {limit}, Used {limit}, Requested 1. Please try again in 1s."
                    ),
                    "type": kind,
                    "code": "rate_limit_exceeded",
                }})
            }
            Style::Gemini => json!({"error": {
                "code": 429,
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "status": "RESOURCE_EXHAUSTED",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_requests_per_model",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel",
                        "quotaDimensions": {"location": "global", "model": "mock-1"},
                        "quotaValue": mock.rpm().to_string(),
                    }]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                     "retryDelay": format!("{:.3}s", until_next_second.as_secs_f64())},
                ],
            }}),
            _ => json!({"error": {"type": "rate_limit_exceeded"}}),
        };
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(error)).into_response();
        response.headers_mut().extend(headers);
        return response;
    }
    tokio::time::sleep(mock.latency).await;
    let mut response = Json(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    }))
    .into_response();
    response.headers_mut().extend(headers);
    response
}

/// What the window counts, after a request: requests and tokens in it,
/// and requests admitted since the start (the day's, for Groq's style).
struct Used {
    requests: u64,
    tokens: u64,
    today: u64,
}

impl Mock {
    fn headers(
        &self,
        used: Used,
        reset: Duration,
        until_next_second: Duration,
        elapsed: Duration,
        admitted: bool,
    ) -> HeaderMap {
        let Used {
            requests: used_requests,
            tokens: used_tokens,
            today: spent_today,
        } = used;
        let mut headers = HeaderMap::new();
        let mut put = |name: &str, value: String| {
            headers.append(
                HeaderName::try_from(name).unwrap(),
                HeaderValue::try_from(value).unwrap(),
            );
        };
        let remaining_requests = self.rpm().saturating_sub(used_requests);
        let remaining_tokens = self.tpm.saturating_sub(used_tokens);
        let now = self.epoch + elapsed;
        put("date", httpdate::fmt_http_date(now));
        match self.style {
            Style::OpenAi => {
                put("x-ratelimit-limit-requests", self.rpm().to_string());
                put(
                    "x-ratelimit-remaining-requests",
                    remaining_requests.to_string(),
                );
                put(
                    "x-ratelimit-reset-requests",
                    format!("{}ms", reset.as_millis()),
                );
            }
            Style::Anthropic => {
                let at = tollgate::headers::rfc3339(now + reset);
                put("anthropic-ratelimit-requests-limit", self.rpm().to_string());
                put(
                    "anthropic-ratelimit-requests-remaining",
                    remaining_requests.to_string(),
                );
                put("anthropic-ratelimit-requests-reset", at.clone());
                put("anthropic-ratelimit-tokens-limit", self.tpm.to_string());
                put(
                    "anthropic-ratelimit-tokens-remaining",
                    remaining_tokens.to_string(),
                );
                put("anthropic-ratelimit-tokens-reset", at);
            }
            Style::Bare | Style::Gemini => {}
            Style::GroqDaily => {
                const DAY: u64 = 14_400;
                let spent = spent_today.min(DAY);
                put("x-ratelimit-limit-requests", DAY.to_string());
                put("x-ratelimit-remaining-requests", (DAY - spent).to_string());
                // Full again when what was spent refills at a day's rate
                // (6 s a request).
                put("x-ratelimit-reset-requests", format!("{}s", spent * 6));
            }
            Style::AzureTenSeconds => {
                put("x-ratelimit-limit-requests", (self.rpm() / 6).to_string());
                put(
                    "x-ratelimit-remaining-requests",
                    (self.rpm() / 6).saturating_sub(used_requests).to_string(),
                );
                put("x-ratelimit-remaining-tokens", remaining_tokens.to_string());
            }
            Style::OpenRouter => {
                let epoch_ms = |at: SystemTime| {
                    at.duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_millis()
                };
                if admitted {
                    const DAY: u64 = 14_400;
                    let secs = now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs();
                    let midnight =
                        SystemTime::UNIX_EPOCH + Duration::from_secs((secs / 86_400 + 1) * 86_400);
                    put("x-ratelimit-limit", DAY.to_string());
                    put(
                        "x-ratelimit-remaining",
                        DAY.saturating_sub(spent_today).to_string(),
                    );
                    put("x-ratelimit-reset", epoch_ms(midnight).to_string());
                } else {
                    put("x-ratelimit-limit", self.rpm().to_string());
                    put("x-ratelimit-remaining", "0".to_owned());
                    put(
                        "x-ratelimit-reset",
                        epoch_ms(now + until_next_second).to_string(),
                    );
                }
            }
            Style::MinuteNoReset => {
                put("x-ratelimit-limit-requests", self.rpm().to_string());
                put(
                    "x-ratelimit-remaining-requests",
                    remaining_requests.to_string(),
                );
            }
            Style::RemainingOnly => {
                put(
                    "x-ratelimit-remaining-requests",
                    remaining_requests.to_string(),
                );
                put("x-ratelimit-remaining-tokens", remaining_tokens.to_string());
            }
            Style::Mistral => {
                put("x-ratelimit-limit-req-minute", self.rpm().to_string());
                put(
                    "x-ratelimit-remaining-req-minute",
                    remaining_requests.to_string(),
                );
                put("x-ratelimit-limit-tokens-minute", self.tpm.to_string());
                put(
                    "x-ratelimit-remaining-tokens-minute",
                    remaining_tokens.to_string(),
                );
            }
            Style::Ietf => {
                put(
                    "ratelimit-policy",
                    format!("\"rpm\";q={};w=60, \"tpm\";q={};w=60", self.rpm(), self.tpm),
                );
                put(
                    "ratelimit",
                    format!(
                        "\"rpm\";r={remaining_requests};t={}, \"tpm\";r={remaining_tokens};t={}",
                        reset.as_secs().max(1),
                        reset.as_secs().max(1)
                    ),
                );
            }
        }
        if matches!(self.style, Style::OpenAi | Style::GroqDaily) {
            // The minute's tokens, OpenAI's way (Groq's too).
            put("x-ratelimit-limit-tokens", self.tpm.to_string());
            put("x-ratelimit-remaining-tokens", remaining_tokens.to_string());
            put(
                "x-ratelimit-reset-tokens",
                format!("{:.3}s", reset.as_secs_f64()),
            );
        }
        if !admitted && !matches!(self.style, Style::Bare | Style::Gemini | Style::OpenRouter) {
            // The slice frees at the next second.
            put(
                "retry-after-ms",
                until_next_second.as_millis().max(1).to_string(),
            );
        }
        if !admitted && !matches!(self.style, Style::Gemini | Style::OpenRouter) {
            put(
                "retry-after",
                until_next_second.as_secs().max(1).to_string(),
            );
        }
        headers
    }
}
