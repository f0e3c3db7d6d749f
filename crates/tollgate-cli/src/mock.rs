//! `tollgate mock`: an OpenAI-compatible provider that enforces requests
//! and tokens per minute with tollgate-tower, and answers with rate-limit
//! headers in a provider's style.
//!
//! Limits are enforced in slices of a second, as providers do; the
//! headers' `remaining` counts what the last minute admitted (it falls by
//! one a request, as a provider's does), and their reset is until the
//! minute is whole again. Mocks sharing a limit through Redis do not see
//! each other's admissions: there `remaining` is the second's room, scaled
//! to a minute.
//!
//! ```
//! use tollgate_cli::mock::{self, MockConfig, Style};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), String> {
//! let config = MockConfig {
//!     rpm: 600,
//!     tpm: 100_000,
//!     style: Style::Openai,
//!     latency_ms: 0..1,
//!     store: None,
//!     scripted: None,
//! };
//! // Any free port of 127.0.0.1; POST /v1/chat/completions there.
//! let (addr, server) = mock::bind(config, 0).await?;
//! tokio::spawn(server);
//! assert!(addr.ip().is_loopback());
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{HeaderName, HeaderValue};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tollgate::{Quota, Snapshot, Store};
use tollgate_redis::RedisStore;
use tollgate_tower::{
    ConfigError, CostFn, DefaultRejector, Global, Key, One, RateLimitLayer, Rejection,
};

/// Which provider's rate-limit headers the mock answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Style {
    /// `x-ratelimit-limit-requests`, `-remaining-`, `-reset-` (Go durations).
    Openai,
    /// `anthropic-ratelimit-requests-limit`, `-remaining`, `-reset` (RFC 3339).
    Anthropic,
    /// IETF `RateLimit-Policy` and `RateLimit`.
    Ietf,
    /// No rate-limit headers at all: a refusal says only `Retry-After`, in
    /// whole seconds, as many providers do.
    Bare,
}

/// How the scripted provider (`--counting`) counts: a way of counting both
/// limits, and what a call is charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scripted {
    /// How requests and tokens are counted and enforced.
    pub counting: tollgate_mock::Counting,
    /// What a call is charged besides its prompt.
    pub charge: tollgate_mock::Charge,
    /// The output tokens the model writes when `max_tokens` allows it
    /// (`None`: `max_tokens` in full, 16 when the body names none).
    pub writes: Option<u64>,
    /// How a token `remaining` is told.
    pub rounding: tollgate_mock::Rounding,
}

/// The mock's settings.
#[derive(Clone, Debug)]
pub struct MockConfig {
    /// Requests per minute.
    pub rpm: u64,
    /// Tokens per minute (prompt + `max_tokens`).
    pub tpm: u64,
    /// The header style.
    pub style: Style,
    /// Milliseconds each answer takes, drawn evenly from the range.
    pub latency_ms: Range<u64>,
    /// Where the limits are enforced: in this process (`None`), or in
    /// Redis, so that several mocks enforce one limit together.
    pub store: Option<RedisStore>,
    /// Counted as a chosen provider counts (`tollgate-mock`'s scripted
    /// provider) in place of the server layer's limits: in this process
    /// only, without metrics of its own.
    pub scripted: Option<Scripted>,
}

/// Connects to the Redis at `url` for [`MockConfig::store`].
pub async fn connect(url: &str) -> Result<RedisStore, String> {
    RedisStore::builder(url)
        .prefix("tollgate-mock")
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .map_err(|e| format!("--redis: {e}"))
}

/// The tokens a request counts, as providers count them: prompt text / 4
/// (rounded up) plus 4 per message, and `max_tokens` (default 16) of output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Prompt tokens.
    pub prompt: u64,
    /// Output tokens allowed (and, in the mock, always written).
    pub output: u64,
}

impl Tokens {
    /// Counts a request body.
    pub fn of(body: &Value) -> Self {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let text: u64 = messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_str))
            .map(|s| s.len() as u64)
            .sum();
        let prompt = text.div_ceil(4).saturating_add(4 * messages.len() as u64);
        let output = body.get("max_tokens").and_then(Value::as_u64).unwrap_or(16);
        Self { prompt, output }
    }

    /// What the limit is charged: prompt and output.
    pub fn total(&self) -> u64 {
        self.prompt.saturating_add(self.output)
    }
}

type TokenCost = fn(&Request) -> u64;

fn token_cost(request: &Request) -> u64 {
    request
        .extensions()
        .get::<Tokens>()
        .map_or(1, Tokens::total)
}

/// A layer's global limit as it stands, wherever the layer keeps it.
trait Standing: Send + Sync {
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Option<Snapshot>> + Send + '_>>;
}

impl<C, S> Standing for RateLimitLayer<Global, C, DefaultRejector, S>
where
    C: Send + Sync,
    S: Store<Key> + 'static,
{
    fn snapshot(&self) -> Pin<Box<dyn Future<Output = Option<Snapshot>> + Send + '_>> {
        Box::pin(async move { self.limiter().snapshot(&Key::global()).await.ok() })
    }
}

struct Limits {
    config: MockConfig,
    requests: Box<dyn Standing>,
    tokens: Box<dyn Standing>,
    /// Wall-clock time at the mock's start, for `Date` and absolute resets.
    started: SystemTime,
    start: tokio::time::Instant,
    /// In one process (no shared store): what the last minute admitted.
    minute: Option<Mutex<Minute>>,
}

/// The requests and tokens admitted in the last minute, which is what a
/// provider's `remaining` counts: it falls by one a request and comes
/// back as the minute moves on.
#[derive(Default)]
struct Minute {
    admitted: VecDeque<(tokio::time::Instant, u64)>,
    tokens: u64,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Minute {
    fn admit(&mut self, now: tokio::time::Instant, tokens: u64) {
        self.admitted.push_back((now, tokens));
        self.tokens = self.tokens.saturating_add(tokens);
    }

    /// Requests and tokens admitted in the minute before `now`, and how
    /// long until the newest leaves it (the minute is whole again).
    fn spent(&mut self, now: tokio::time::Instant) -> (u64, u64, Duration) {
        while let Some(&(at, tokens)) = self.admitted.front() {
            if now.saturating_duration_since(at) < MINUTE {
                break;
            }
            self.admitted.pop_front();
            self.tokens = self.tokens.saturating_sub(tokens);
        }
        let full = self.admitted.back().map_or(Duration::ZERO, |&(at, _)| {
            MINUTE.saturating_sub(now.saturating_duration_since(at))
        });
        (self.admitted.len() as u64, self.tokens, full)
    }
}

/// What the headers say of a dimension.
struct Reported {
    remaining: u64,
    /// Until the limit is whole again.
    reset: Duration,
}

impl Reported {
    /// With a shared store the other mocks' admissions are not seen here:
    /// what remains of the second's slice, scaled to a minute.
    fn of_slice(per_minute: u64, snapshot: &Snapshot) -> Self {
        let slice = snapshot.limit().max(1);
        Self {
            remaining: per_minute.saturating_mul(snapshot.remaining()) / slice,
            reset: snapshot.reset_after(),
        }
    }
}

/// A per-minute limit as providers enforce it: in slices of a second. The
/// burst is a second's share, refilled continuously.
fn sliced(per_minute: u64, flag: &str) -> Result<Quota, String> {
    Quota::new(per_minute, Duration::from_secs(60))
        .and_then(|q| q.burst((per_minute / 60).max(1)))
        .map_err(|e| format!("{flag} {per_minute}: {e}"))
}

/// The mock as an axum app.
pub fn app(config: MockConfig) -> Result<Router, String> {
    if config.latency_ms.start > config.latency_ms.end {
        return Err(format!(
            "--latency-ms {}..{}: the range is empty",
            config.latency_ms.start, config.latency_ms.end
        ));
    }
    if let Some(scripted) = config.scripted {
        return scripted_app(&config, scripted);
    }
    let ietf = config.style == Style::Ietf;
    let requests = RateLimitLayer::builder(sliced(config.rpm, "--rpm")?)
        .policy_name("requests")
        .headers_on_success(ietf);
    let tokens = RateLimitLayer::builder(sliced(config.tpm, "--tpm")?)
        .policy_name("tokens")
        .headers_on_success(ietf)
        .cost_fn(token_cost as TokenCost);
    match config.store.clone() {
        Some(store) => {
            let prefixed = |name: &str| {
                store
                    .with_prefix(&format!("{}-{name}", store.prefix()))
                    .map_err(|e| e.to_string())
            };
            let requests = requests.store(prefixed("requests")?);
            let tokens = tokens.store(prefixed("tokens")?);
            router(config, requests.build(), tokens.build())
        }
        None => router(config, requests.build(), tokens.build()),
    }
}

/// The mock's routes behind its two layers, over whichever store they keep
/// their limits in.
fn router<S: Store<Key> + 'static>(
    config: MockConfig,
    requests: Result<RateLimitLayer<Global, One, DefaultRejector, S>, ConfigError>,
    tokens: Result<RateLimitLayer<Global, CostFn<TokenCost>, DefaultRejector, S>, ConfigError>,
) -> Result<Router, String> {
    let requests = requests.map_err(|e| e.to_string())?;
    let tokens = tokens.map_err(|e| e.to_string())?;
    // Alone (no store shared with other mocks): this process sees every
    // admission, and counts the minute itself.
    let alone = config.store.is_none();
    let limits = Arc::new(Limits {
        config,
        requests: Box::new(requests.clone()),
        tokens: Box::new(tokens.clone()),
        started: SystemTime::now(),
        start: tokio::time::Instant::now(),
        minute: alone.then(|| Mutex::new(Minute::default())),
    });
    Ok(Router::new()
        .route("/v1/chat/completions", post(complete))
        .layer(tokens)
        .layer(requests)
        .layer(middleware::from_fn_with_state(Arc::clone(&limits), headers))
        .layer(middleware::from_fn(count_tokens))
        .with_state(limits))
}

/// The scripted provider of `tollgate-mock`, counting as `scripted` says.
fn scripted_app(config: &MockConfig, scripted: Scripted) -> Result<Router, String> {
    if config.store.is_some() {
        return Err(
            "--counting counts in this process: it cannot share a limit through --redis".to_owned(),
        );
    }
    let dialect = match config.style {
        Style::Openai => tollgate_mock::Dialect::OpenAi,
        Style::Anthropic => tollgate_mock::Dialect::Anthropic,
        Style::Ietf => tollgate_mock::Dialect::Ietf,
        Style::Bare => tollgate_mock::Dialect::Bare,
    };
    let mut provider = tollgate_mock::Config::new(config.rpm, config.tpm)
        .dialect(dialect)
        .counting(scripted.counting)
        .charge(scripted.charge)
        .rounding(scripted.rounding);
    if let Some(writes) = scripted.writes {
        provider = provider.writes(writes);
    }
    let ms = Duration::from_millis;
    provider.latency = ms(config.latency_ms.start)..ms(config.latency_ms.end);
    Ok(tollgate_mock::Provider::new(provider).router())
}

/// Serves the mock on `port` (0: any free port) of loopback; returns the
/// address and the server's future.
pub async fn bind(
    config: MockConfig,
    port: u16,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    String,
> {
    bind_with(config, port, false).await
}

/// [`bind`], and with `reuse_port` several mocks may listen on one port
/// (`SO_REUSEPORT`, on Unix): the kernel spreads the connections among
/// them, as a load balancer spreads them among a provider's replicas.
/// With [`MockConfig::store`] in one Redis, they enforce one limit.
pub async fn bind_with(
    config: MockConfig,
    port: u16,
    reuse_port: bool,
) -> Result<
    (
        SocketAddr,
        impl std::future::Future<Output = std::io::Result<()>>,
    ),
    String,
> {
    let app = app(config)?;
    let cannot = |e: std::io::Error| format!("cannot listen on 127.0.0.1:{port}: {e}");
    let socket = tokio::net::TcpSocket::new_v4().map_err(cannot)?;
    socket.set_reuseaddr(true).map_err(cannot)?;
    if reuse_port {
        #[cfg(unix)]
        socket.set_reuseport(true).map_err(cannot)?;
        #[cfg(not(unix))]
        return Err("--reuse-port needs a Unix system".to_owned());
    }
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .map_err(cannot)?;
    let listener = socket.listen(1024).map_err(cannot)?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    Ok((addr, async move { axum::serve(listener, app).await }))
}

/// Reads the body, counts its tokens into the request's extensions, and
/// hands the request on. A body that is not a JSON object is answered 400.
async fn count_tokens(request: Request, next: Next) -> Response {
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, 1 << 20).await {
        Ok(bytes) => bytes,
        Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 1 MiB"),
    };
    let Ok(value) = serde_json::from_slice::<Value>(&bytes) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    if !value.is_object() {
        return error(StatusCode::BAD_REQUEST, "the body is not a JSON object");
    }
    parts.extensions.insert(Tokens::of(&value));
    parts.extensions.insert(Arc::new(value));
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error"}});
    json_response(status, &body)
}

async fn complete(State(limits): State<Arc<Limits>>, request: Request) -> Response {
    let tokens = request.extensions().get::<Tokens>().copied();
    let body = request.extensions().get::<Arc<Value>>().cloned();
    let (Some(tokens), Some(body)) = (tokens, body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not a JSON object");
    };
    let range = &limits.config.latency_ms;
    let latency = if range.is_empty() {
        range.start
    } else {
        fastrand::u64(range.clone())
    };
    tokio::time::sleep(Duration::from_millis(latency)).await;
    let shape = match limits.config.style {
        Style::Anthropic => tollgate_mock::answer::Shape::Anthropic,
        Style::Openai | Style::Ietf | Style::Bare => tollgate_mock::answer::Shape::OpenAi,
    };
    tollgate_mock::answer::respond(shape, &body, tokens.prompt, tokens.output)
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Adds the style's headers to every answer, from the limits' state now.
async fn headers(State(limits): State<Arc<Limits>>, request: Request, next: Next) -> Response {
    let cost = request
        .extensions()
        .get::<Tokens>()
        .map_or(0, Tokens::total);
    let mut response = next.run(request).await;
    let (Some(requests), Some(tokens)) = (
        limits.requests.snapshot().await,
        limits.tokens.snapshot().await,
    ) else {
        return response;
    };
    let rejection = response.extensions().get::<Rejection>();
    let retry_after = rejection.and_then(Rejection::retry_after);
    let admitted = rejection.is_none() && response.status().is_success();
    let config = &limits.config;
    let (requests, tokens) = match &limits.minute {
        Some(minute) => {
            let mut minute = minute.lock().unwrap_or_else(PoisonError::into_inner);
            let at = tokio::time::Instant::now();
            if admitted {
                minute.admit(at, cost);
            }
            let (spent_requests, spent_tokens, reset) = minute.spent(at);
            (
                Reported {
                    remaining: config.rpm.saturating_sub(spent_requests),
                    reset,
                },
                Reported {
                    remaining: config.tpm.saturating_sub(spent_tokens),
                    reset,
                },
            )
        }
        None => (
            Reported::of_slice(config.rpm, &requests),
            Reported::of_slice(config.tpm, &tokens),
        ),
    };
    let elapsed = limits.start.elapsed();
    let now = limits.started + elapsed;
    let headers = response.headers_mut();
    put(headers, "date", httpdate::fmt_http_date(now));
    if let (Some(wait), false) = (retry_after, config.style == Style::Bare) {
        put(
            headers,
            "retry-after-ms",
            wait.as_millis().max(1).to_string(),
        );
    }
    match config.style {
        Style::Ietf => {}
        Style::Bare => {
            headers.remove("ratelimit");
            headers.remove("ratelimit-policy");
        }
        Style::Openai => {
            headers.remove("ratelimit");
            headers.remove("ratelimit-policy");
            openai(headers, "requests", config.rpm, &requests);
            openai(headers, "tokens", config.tpm, &tokens);
        }
        Style::Anthropic => {
            headers.remove("ratelimit");
            headers.remove("ratelimit-policy");
            anthropic(headers, "requests", config.rpm, &requests, now);
            anthropic(headers, "tokens", config.tpm, &tokens, now);
        }
    }
    response
}

fn put(headers: &mut HeaderMap, name: &str, value: String) {
    if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
        headers.insert(name, value);
    }
}

fn openai(headers: &mut HeaderMap, what: &str, per_minute: u64, reported: &Reported) {
    put(
        headers,
        &format!("x-ratelimit-limit-{what}"),
        per_minute.to_string(),
    );
    put(
        headers,
        &format!("x-ratelimit-remaining-{what}"),
        reported.remaining.to_string(),
    );
    put(
        headers,
        &format!("x-ratelimit-reset-{what}"),
        format!("{}ms", reported.reset.as_millis()),
    );
}

fn anthropic(
    headers: &mut HeaderMap,
    what: &str,
    per_minute: u64,
    reported: &Reported,
    now: SystemTime,
) {
    put(
        headers,
        &format!("anthropic-ratelimit-{what}-limit"),
        per_minute.to_string(),
    );
    put(
        headers,
        &format!("anthropic-ratelimit-{what}-remaining"),
        reported.remaining.to_string(),
    );
    put(
        headers,
        &format!("anthropic-ratelimit-{what}-reset"),
        tollgate::headers::rfc3339(now + reported.reset),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let body = json!({"messages": [{"role": "user", "content": "abcdefgh"}], "max_tokens": 10});
        assert_eq!(
            Tokens::of(&body),
            Tokens {
                prompt: 6,
                output: 10
            }
        );
        assert_eq!(
            Tokens::of(&json!({})),
            Tokens {
                prompt: 0,
                output: 16
            }
        );
    }
}
