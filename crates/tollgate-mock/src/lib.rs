//! A scripted LLM provider: an OpenAI-compatible chat completions endpoint
//! under requests and tokens a minute, counted the way a chosen provider
//! counts them and told in its header dialect. One model, used by the
//! workspace's tests, its benchmarks and `tollgate mock`, so that the client
//! is measured against every way of counting, not one.
//!
//! What varies, as real providers differ:
//! - **how a dimension counts** ([`Counting`]): a bucket refilled
//!   continuously, a sliding window or a fixed window, enforced over slices
//!   of 1 s or 10 s, and what its `remaining` reports;
//! - **what a call is charged** ([`Charge`]): its prompt plus `max_tokens`
//!   (16 when the body names none), or plus the output actually written;
//! - **how `remaining` is told** ([`Rounding`]): exact, or rounded down to
//!   thousands as Anthropic rounds its tokens;
//! - **the dialect** ([`Dialect`]): OpenAI, Anthropic, IETF, Mistral,
//!   Azure, Gemini, OpenRouter, Groq, or no rate-limit headers at all.
//!
//! Time is Tokio's: on a paused clock every run is the same.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use tollgate_mock::{Config, Dialect, Provider};
//! let provider = Provider::new(Config::new(600, 100_000).dialect(Dialect::Anthropic));
//! let app: axum::Router = provider.router();
//! # drop(app);
//! # }
//! ```

pub mod answer;
mod dialect;
mod meter;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;
use tokio::time::Instant;

pub use dialect::Dialect;
pub use meter::{Counting, Enforce, Report};
use meter::{Meter, Told};

/// What a call is charged in tokens, besides its prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Charge {
    /// `max_tokens`, or [`Config::absent`] when the body names none: what
    /// OpenAI reserves.
    MaxTokens,
    /// The output actually written (Anthropic's output tokens).
    Written,
}

/// How a token `remaining` is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// As counted.
    Exact,
    /// Rounded down to thousands, as Anthropic tells its tokens.
    Thousands,
}

/// The provider's settings. [`Config::new`] gives a provider that counts
/// as OpenAI documents: requests in slices of a second, tokens from a
/// bucket holding a second's worth, both reported over the last minute.
#[derive(Clone, Debug)]
pub struct Config {
    /// Requests a minute.
    pub rpm: u64,
    /// Tokens a minute.
    pub tpm: u64,
    /// The header dialect.
    pub dialect: Dialect,
    /// How requests are counted.
    pub requests: Counting,
    /// How tokens are counted.
    pub tokens: Counting,
    /// What a call is charged.
    pub charge: Charge,
    /// How a token `remaining` is told.
    pub rounding: Rounding,
    /// The output tokens charged for a body without `max_tokens` under
    /// [`Charge::MaxTokens`], and written when [`Config::writes`] is `None`.
    pub absent: u64,
    /// The output tokens the model writes when `max_tokens` allows it;
    /// `None`: `max_tokens` in full (`absent` when the body names none).
    pub writes: Option<u64>,
    /// How long an admitted answer takes, drawn evenly from the range.
    pub latency: Range<Duration>,
}

impl Config {
    /// `rpm` requests and `tpm` tokens a minute, OpenAI's dialect, 120 ms
    /// answers.
    pub fn new(rpm: u64, tpm: u64) -> Self {
        let second = Duration::from_secs(1);
        Self {
            rpm,
            tpm,
            dialect: Dialect::OpenAi,
            requests: Counting {
                enforce: Enforce::Slices,
                slice: second,
                report: Report::Sliding,
            },
            tokens: Counting {
                enforce: Enforce::Bucket,
                slice: second,
                report: Report::Sliding,
            },
            charge: Charge::MaxTokens,
            rounding: Rounding::Exact,
            absent: 16,
            writes: None,
            latency: Duration::from_millis(120)..Duration::from_millis(120),
        }
    }

    /// The header dialect.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// Both dimensions counted as `counting`.
    pub fn counting(mut self, counting: Counting) -> Self {
        self.requests = counting;
        self.tokens = counting;
        self
    }

    /// Tokens counted as `counting`.
    pub fn tokens(mut self, counting: Counting) -> Self {
        self.tokens = counting;
        self
    }

    /// What a call is charged.
    pub fn charge(mut self, charge: Charge) -> Self {
        self.charge = charge;
        self
    }

    /// How a token `remaining` is told.
    pub fn rounding(mut self, rounding: Rounding) -> Self {
        self.rounding = rounding;
        self
    }

    /// The output the model writes when `max_tokens` allows it.
    pub fn writes(mut self, tokens: u64) -> Self {
        self.writes = Some(tokens);
        self
    }

    /// Every answer takes `latency`.
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency..latency;
        self
    }

    /// The tokens of a body as providers count them (OpenAI documents it):
    /// its messages' text, a token per 4 bytes rounded up, plus 4 a message
    /// for role and framing; and the output: (prompt, written, charged).
    pub fn tokens_of(&self, body: &Value) -> Tokens {
        let messages = body["messages"].as_array().map(Vec::as_slice);
        let messages = messages.unwrap_or_default();
        let text: u64 = messages
            .iter()
            .filter_map(|m| m["content"].as_str())
            .map(|s| s.len() as u64)
            .sum();
        let prompt = text
            .div_ceil(4)
            .saturating_add(4u64.saturating_mul(messages.len() as u64));
        let bound = body["max_tokens"].as_u64();
        let written = match (self.writes, bound) {
            (Some(writes), Some(bound)) => writes.min(bound),
            (Some(writes), None) => writes,
            (None, bound) => bound.unwrap_or(self.absent),
        };
        let output = match self.charge {
            Charge::MaxTokens => bound.unwrap_or(self.absent),
            Charge::Written => written,
        };
        Tokens {
            prompt,
            written,
            charged: prompt.saturating_add(output),
        }
    }
}

/// What a call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Its prompt's tokens.
    pub prompt: u64,
    /// The output the model writes.
    pub written: u64,
    /// What the limit is charged.
    pub charged: u64,
}

/// Calls admitted and refused so far.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Admitted.
    pub ok: u64,
    /// Refused with a 429.
    pub limited: u64,
}

/// The provider: share it (`Arc`) between its router and the test that
/// reads its counts.
#[derive(Debug)]
pub struct Provider {
    config: Config,
    /// Requests a minute: the provider may change it mid-run.
    rpm: AtomicU64,
    start: Instant,
    /// The wall-clock time the provider's clock started at, for `Date` and
    /// absolute resets: fixed, so that runs are the same.
    epoch: SystemTime,
    state: Mutex<Meters>,
}

#[derive(Debug, Default)]
struct Meters {
    requests: Meter,
    tokens: Meter,
    counts: Counts,
}

/// A decision: admitted or not, what the headers tell, and when a refused
/// call may come back.
struct Decision {
    admitted: bool,
    /// Which dimension refused, requests first.
    requests_refused: bool,
    retry: Duration,
    requests: Told,
    tokens: Told,
    now: Duration,
}

impl Provider {
    /// A provider under `config`; its clock starts now.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            rpm: AtomicU64::new(config.rpm),
            config,
            start: Instant::now(),
            epoch: SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000),
            state: Mutex::new(Meters::default()),
        })
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Requests a minute, now.
    pub fn rpm(&self) -> u64 {
        self.rpm.load(Ordering::Relaxed)
    }

    /// Changes the requests a minute, as a provider changing a tier does.
    pub fn set_rpm(&self, rpm: u64) {
        self.rpm.store(rpm, Ordering::Relaxed);
    }

    /// Calls admitted and refused so far.
    pub fn counts(&self) -> Counts {
        self.meters().counts
    }

    /// Calls a second the limits allow in the long run, for calls like
    /// `body`: the fewest of requests and tokens, each in whole calls a
    /// slice.
    pub fn allowed_rate(&self, body: &Value) -> f64 {
        let charged = self.config.tokens_of(body).charged.max(1);
        let rate = |limit: u64, counting: Counting, cost: u64| {
            let slice = counting.slice.as_secs_f64();
            let room = (limit as f64 * slice / 60.0).floor();
            match counting.enforce {
                // Whole calls a slice.
                Enforce::Slices | Enforce::Sliding => (room / cost as f64).floor() / slice,
                Enforce::Bucket => limit as f64 / 60.0 / cost as f64,
            }
        };
        let requests = rate(self.rpm(), self.requests_counting(), 1);
        let tokens = rate(self.config.tpm, self.config.tokens, charged);
        requests.min(tokens)
    }

    /// The axum app: `POST /v1/chat/completions` (also at `/v1/messages`,
    /// Anthropic's path).
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/messages", post(complete))
            .with_state(Arc::clone(self))
    }

    fn meters(&self) -> std::sync::MutexGuard<'_, Meters> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Azure tells, and enforces, its requests over ten seconds.
    fn requests_counting(&self) -> Counting {
        if self.config.dialect == Dialect::AzureTenSeconds {
            Counting {
                enforce: Enforce::Sliding,
                slice: Duration::from_secs(10),
                report: Report::Slice,
            }
        } else {
            self.config.requests
        }
    }

    fn decide(&self, tokens: Tokens) -> Decision {
        let now = Instant::now().saturating_duration_since(self.start);
        let rpm = self.rpm();
        let tpm = self.config.tpm;
        let requests_counting = self.requests_counting();
        let mut meters = self.meters();
        let by_requests = meters.requests.fits(requests_counting, rpm, now, 1);
        let by_tokens = meters
            .tokens
            .fits(self.config.tokens, tpm, now, tokens.charged);
        let admitted = by_requests.is_ok() && by_tokens.is_ok();
        if admitted {
            meters.requests.admit(requests_counting, rpm, now, 1);
            meters
                .tokens
                .admit(self.config.tokens, tpm, now, tokens.charged);
            meters.counts.ok = meters.counts.ok.saturating_add(1);
        } else {
            meters.counts.limited = meters.counts.limited.saturating_add(1);
        }
        let retry = by_requests
            .err()
            .unwrap_or_default()
            .max(by_tokens.err().unwrap_or_default());
        let requests = meters.requests.told(requests_counting, rpm, now);
        let mut told_tokens = meters.tokens.told(self.config.tokens, tpm, now);
        if self.config.rounding == Rounding::Thousands {
            told_tokens.remaining = told_tokens.remaining / 1000 * 1000;
        }
        Decision {
            admitted,
            requests_refused: by_requests.is_err(),
            retry,
            requests,
            tokens: told_tokens,
            now,
        }
    }
}

async fn complete(State(provider): State<Arc<Provider>>, Json(body): Json<Value>) -> Response {
    let tokens = provider.config.tokens_of(&body);
    let decision = provider.decide(tokens);
    let headers = dialect::headers(&provider, &decision);
    if !decision.admitted {
        let body = dialect::refusal(&provider, &decision);
        let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
        response.headers_mut().extend(headers);
        return response;
    }
    let latency = &provider.config.latency;
    let wait = if latency.start >= latency.end {
        latency.start
    } else {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(nanos(latency.start)..nanos(latency.end)))
    };
    tokio::time::sleep(wait).await;
    let shape = match provider.config.dialect {
        Dialect::Anthropic => answer::Shape::Anthropic,
        _ => answer::Shape::OpenAi,
    };
    let mut response = answer::respond(shape, &body, tokens.prompt, tokens.written);
    response.headers_mut().extend(headers);
    response
}
