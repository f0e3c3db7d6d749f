//! Token budgets for an LLM gateway (feature `llm`): each key limited by
//! requests, input tokens and output tokens a minute, charged from what
//! the model actually wrote.
//!
//! [`TokenLimitLayer`] reads each request's body (an OpenAI or Anthropic
//! style JSON request), estimates its tokens with
//! [`tollgate::llm::DefaultEstimator`] (or an estimator of yours), and
//! charges the key's budget: one request, the prompt's tokens, and the
//! most the request allows the model to write. As the answer's body
//! passes, chunk by chunk and without being held back or copied, the layer
//! reads the usage it reports (a JSON `usage` object, or the usage events
//! of a server-sent-event stream) and settles the charge with it when the
//! body ends, or with what it saw when the body is dropped early.
//!
//! ```
//! use axum::{routing::post, Router};
//! use tollgate::Quota;
//! use tollgate_tower::{llm::TokenLimitLayer, HeaderKey};
//!
//! # fn app() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = TokenLimitLayer::builder()
//!     .requests(Quota::per_minute(20)?)
//!     .input_tokens(Quota::per_minute(2_000)?)
//!     .output_tokens(Quota::per_minute(1_000)?)
//!     .key(HeaderKey::new("x-api-key")?)
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/v1/chat/completions", post(|| async { "..." }))
//!     .layer(tokens);
//! # Ok(())
//! # }
//! ```
//!
//! # Refusals
//!
//! A request over a limit is answered 429 with `Retry-After`, a
//! `RateLimit-Policy` item for each dimension (`"requests";q=20;w=60,
//! "input_tokens";q=2000;w=60, "output_tokens";q=1000;w=60`), the
//! `RateLimit` item of the dimension that refused, and a JSON body in
//! OpenAI's error shape that names it:
//!
//! ```text
//! {"error":{"type":"rate_limit_exceeded","dimension":"output_tokens",
//!   "message":"output_tokens: this key's limit is 1000 a minute; retry in 12 s"}}
//! ```
//!
//! A request that could never fit (it asks for more output than a
//! minute's limit) is answered 413; a body larger than
//! [`max_request_bytes`](TokenLimitBuilder::max_request_bytes), 413; a
//! request without a key, 400; a failing store, 503. The
//! [`Rejection`] is in each refusal's extensions, with
//! its [`refused_dimension`](crate::Rejection::refused_dimension).
//!
//! # What is charged
//!
//! - At admission: 1 request; the estimate's input tokens; its output
//!   tokens (`max_tokens`, `max_completion_tokens` or `max_output_tokens`,
//!   times `n`; [`DEFAULT_OUTPUT_TOKENS`](tollgate::llm::DEFAULT_OUTPUT_TOKENS)
//!   when the request names no bound).
//! - When the answer's body ends: the usage it reported, in place of the
//!   estimate (what was reserved beyond it is given back, what was used
//!   beyond it is charged). A stream dropped early settles what its events
//!   reported so far, and the estimate for a count they had not reported.
//!   An answer that reports no usage keeps the estimate.
//! - An answer that is not a success (the upstream refused or failed), or
//!   an error from the inner service: the request only; its tokens are
//!   given back.
//!
//! The layer rebuilds the request from the bytes it read: its body type
//! must be buildable from `Bytes` (axum's `Body`, `http_body_util::Full`;
//! map hyper's `Incoming` into one first).
//!
//! Keys, stores and replicas work as for [`RateLimitLayer`](crate::RateLimitLayer):
//! pass a `tollgate_redis::RedisStore` to
//! [`store`](TokenLimitBuilder::store) to share the budgets of a fleet.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use serde_json::{json, Value};
use tollgate::headers::{policy, rate_limit, retry_after_secs, PolicyName};
use tollgate::llm::{DefaultEstimator, Estimate, JsonUsage, SseUsage, TokenEstimator};
use tollgate::{Denied, DeniedKind, Grant, KeyedBudget, Limits, MemoryStore, Quota, Store};
use tower_layer::Layer;
use tower_service::Service;

use crate::key::{Global, KeyExtractor};
use crate::{ConfigError, ConfigErrorKind, Key, Rejection, RejectionKind};

/// The largest request body read by default: 1 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 20;

/// The dimensions a token budget may have, in the order they are charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dimension {
    Requests,
    InputTokens,
    OutputTokens,
}

impl Dimension {
    const fn name(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
        }
    }

    /// What a call costs in this dimension.
    const fn cost(self, input_tokens: u64, output_tokens: u64) -> u64 {
        match self {
            Self::Requests => 1,
            Self::InputTokens => input_tokens,
            Self::OutputTokens => output_tokens,
        }
    }
}

/// Limits each key's requests, input tokens and output tokens, charged
/// from the answers' reported usage. See the [module](self).
pub struct TokenLimitLayer<K = Global, St = MemoryStore> {
    shared: Arc<Shared<K, St>>,
}

impl<K, St> Clone for TokenLimitLayer<K, St> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, St> fmt::Debug for TokenLimitLayer<K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimitLayer")
            .field("limits", self.shared.budget.limits())
            .finish_non_exhaustive()
    }
}

impl TokenLimitLayer {
    /// A builder: set at least one of the three limits.
    pub fn builder() -> TokenLimitBuilder {
        TokenLimitBuilder {
            limits: Vec::new(),
            key: Global,
            // Room for the three dimensions a budget may have.
            store: MemoryStore::new(
                tollgate::DEFAULT_MAX_KEYS,
                3,
                tollgate::DefaultClock::default(),
            ),
            estimator: Arc::new(DefaultEstimator),
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_wait: Duration::ZERO,
        }
    }
}

impl<K, St> TokenLimitLayer<K, St> {
    /// The budget every service of this layer charges.
    pub fn budget(&self) -> &KeyedBudget<Key, St> {
        &self.shared.budget
    }
}

/// Configures a [`TokenLimitLayer`].
pub struct TokenLimitBuilder<K = Global, St = MemoryStore> {
    limits: Vec<(Dimension, Quota)>,
    key: K,
    store: St,
    estimator: Arc<dyn TokenEstimator>,
    max_request_bytes: usize,
    max_wait: Duration,
}

impl<K, St> TokenLimitBuilder<K, St> {
    fn limit(mut self, dimension: Dimension, quota: Quota) -> Self {
        self.limits.retain(|(d, _)| *d != dimension);
        self.limits.push((dimension, quota));
        self
    }

    /// Requests a key may make (dimension `requests`).
    #[must_use]
    pub fn requests(self, quota: Quota) -> Self {
        self.limit(Dimension::Requests, quota)
    }

    /// Input (prompt) tokens a key may send (dimension `input_tokens`).
    #[must_use]
    pub fn input_tokens(self, quota: Quota) -> Self {
        self.limit(Dimension::InputTokens, quota)
    }

    /// Output tokens a key's calls may have written (dimension
    /// `output_tokens`).
    #[must_use]
    pub fn output_tokens(self, quota: Quota) -> Self {
        self.limit(Dimension::OutputTokens, quota)
    }

    /// How a request's key is read (default: one key for all, [`Global`]).
    pub fn key<K2>(self, key: K2) -> TokenLimitBuilder<K2, St> {
        TokenLimitBuilder {
            limits: self.limits,
            key,
            store: self.store,
            estimator: self.estimator,
            max_request_bytes: self.max_request_bytes,
            max_wait: self.max_wait,
        }
    }

    /// The store of the budgets (default: in memory, a million keys at
    /// most); a `tollgate_redis::RedisStore` shares them between replicas,
    /// a `MemoryStore` on a `ManualClock` makes tests exact.
    pub fn store<St2: Store<Key>>(self, store: St2) -> TokenLimitBuilder<K, St2> {
        TokenLimitBuilder {
            limits: self.limits,
            key: self.key,
            store,
            estimator: self.estimator,
            max_request_bytes: self.max_request_bytes,
            max_wait: self.max_wait,
        }
    }

    /// How a request's tokens are guessed before the call (default:
    /// [`DefaultEstimator`]).
    #[must_use]
    pub fn estimator(mut self, estimator: impl TokenEstimator) -> Self {
        self.estimator = Arc::new(estimator);
        self
    }

    /// The largest request body read (default 1 MiB); a larger one is
    /// answered 413.
    #[must_use]
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }

    /// How long a request may wait for room before it is refused (default:
    /// not at all).
    #[must_use]
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }
}

impl<K, St> TokenLimitBuilder<K, St> {
    /// The layer, or what is wrong: no limit set, a body limit of 0.
    pub fn build(self) -> Result<TokenLimitLayer<K, St>, ConfigError> {
        if self.limits.is_empty() {
            return Err(ConfigError::with_kind(
                ConfigErrorKind::Limit,
                "a token budget needs at least one limit: requests, input_tokens or output_tokens",
            ));
        }
        if self.max_request_bytes == 0 {
            return Err(ConfigError::with_kind(
                ConfigErrorKind::Limit,
                "max_request_bytes must be at least 1",
            ));
        }
        let mut limits = self.limits;
        limits.sort_by_key(|(d, _)| *d as u8);
        let mut builder = Limits::builder();
        for (dimension, quota) in &limits {
            builder = builder.dimension(dimension.name(), *quota);
        }
        let built = builder.build().map_err(|e| {
            ConfigError::with_kind(ConfigErrorKind::Limit, format!("token budget: {e}"))
        })?;
        let names = limits
            .iter()
            .map(|(d, _)| PolicyName::new(d.name()).expect("the dimensions' names are valid"))
            .collect::<Vec<_>>();
        let policies = limits
            .iter()
            .zip(&names)
            .map(|((_, quota), name)| policy(name, quota))
            .collect::<Vec<_>>()
            .join(", ");
        Ok(TokenLimitLayer {
            shared: Arc::new(Shared {
                budget: KeyedBudget::with_store(built, self.store),
                dimensions: limits.iter().map(|(d, _)| *d).collect(),
                quotas: limits.iter().map(|(_, q)| *q).collect(),
                names,
                policies: HeaderValue::try_from(policies)
                    .expect("policy items are printable ASCII"),
                key: self.key,
                estimator: self.estimator,
                max_request_bytes: self.max_request_bytes,
                max_wait: self.max_wait,
            }),
        })
    }
}

struct Shared<K, St> {
    budget: KeyedBudget<Key, St>,
    dimensions: Vec<Dimension>,
    quotas: Vec<Quota>,
    names: Vec<PolicyName>,
    /// The `RateLimit-Policy` field: one item per dimension.
    policies: HeaderValue,
    key: K,
    estimator: Arc<dyn TokenEstimator>,
    max_request_bytes: usize,
    max_wait: Duration,
}

/// A call's cost in each dimension of the budget, in their order: no
/// allocation on the request's path.
#[derive(Clone, Copy)]
struct Costs {
    each: [u64; 3],
    len: usize,
}

impl Costs {
    fn as_slice(&self) -> &[u64] {
        self.each.get(..self.len).unwrap_or(&[])
    }
}

impl<K, St> Shared<K, St> {
    fn costs(&self, input_tokens: u64, output_tokens: u64) -> Costs {
        let mut each = [0; 3];
        for (slot, dimension) in each.iter_mut().zip(&self.dimensions) {
            *slot = dimension.cost(input_tokens, output_tokens);
        }
        Costs {
            each,
            len: self.dimensions.len().min(3),
        }
    }
}

impl<S, K, St> Layer<S> for TokenLimitLayer<K, St> {
    type Service = TokenLimit<S, K, St>;

    fn layer(&self, inner: S) -> Self::Service {
        TokenLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service limited by a [`TokenLimitLayer`].
pub struct TokenLimit<S, K = Global, St = MemoryStore> {
    inner: S,
    shared: Arc<Shared<K, St>>,
}

impl<S: Clone, K, St> Clone for TokenLimit<S, K, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, St> fmt::Debug for TokenLimit<S, K, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The future of a [`TokenLimit`]'s answer.
pub type TokenFuture<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<TokenBody<B>>, E>> + Send>>;

impl<S, K, St, ReqBody, ResBody> Service<Request<ReqBody>> for TokenLimit<S, K, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    K: KeyExtractor<ReqBody>,
    St: Store<Key> + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TokenBody<ResBody>>;
    type Error = S::Error;
    type Future = TokenFuture<ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready is the one that is called.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = Arc::clone(&self.shared);
        Box::pin(serve(shared, inner, request))
    }
}

async fn serve<S, K, St, ReqBody, ResBody>(
    shared: Arc<Shared<K, St>>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<TokenBody<ResBody>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    K: KeyExtractor<ReqBody>,
    St: Store<Key> + Send + Sync + 'static,
    ReqBody: Body<Data = Bytes> + From<Bytes>,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let key = match shared.key.extract(&request) {
        Ok(key) => key,
        Err(error) => {
            let rejection = Rejection::new(RejectionKind::NoKey, error.status(), error.to_string());
            return Ok(refusal(&shared, rejection, "invalid_request_error", None));
        }
    };
    let (parts, body) = request.into_parts();
    let bytes = match http_body_util::Limited::new(body, shared.max_request_bytes)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let too_large = error.is::<http_body_util::LengthLimitError>();
            let (status, message) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the request body is larger than {} bytes",
                        shared.max_request_bytes
                    ),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {error}"),
                )
            };
            let rejection = Rejection::new(RejectionKind::CostTooLarge, status, message);
            return Ok(refusal(&shared, rejection, "invalid_request_error", None));
        }
    };
    let estimate = match serde_json::from_slice::<Value>(&bytes) {
        Ok(body) => shared.estimator.estimate(&body),
        // Not JSON: the upstream will say so; its bytes stand for the
        // prompt meanwhile.
        Err(_) => Estimate {
            input_tokens: (bytes.len() as u64).div_ceil(4),
            output_tokens: 0,
        },
    };
    let costs = shared.costs(estimate.input_tokens, estimate.output_tokens);
    let grant = match shared
        .budget
        .acquire_within(&key, costs.as_slice(), shared.max_wait)
        .await
    {
        Ok(grant) => grant,
        Err(denied) => return Ok(denied_response(&shared, &denied, key)),
    };
    let settle = Settle {
        budget: Arc::clone(&shared) as Arc<dyn Charge>,
        key,
        grant,
        estimate,
    };
    let request = Request::from_parts(parts, ReqBody::from(bytes));
    let response = match inner.call(request).await {
        Ok(response) => response,
        Err(error) => {
            settle.refund_tokens();
            return Err(error);
        }
    };
    let (mut parts, body) = response.into_parts();
    parts
        .headers
        .insert("ratelimit-policy", shared.policies.clone());
    let watch = if parts.status.is_success() {
        match media_type(&parts.headers) {
            Media::EventStream => Some(Watch::Sse(SseUsage::default())),
            Media::Json => Some(Watch::Json(JsonUsage::default())),
            Media::Other => None,
        }
    } else {
        None
    };
    let settle = match watch {
        Some(watch) => Some(Box::new(Watching { settle, watch })),
        None => {
            if parts.status.is_success() {
                // Nothing to read usage from: the estimate stands.
                settle.keep();
            } else {
                settle.refund_tokens();
            }
            None
        }
    };
    Ok(Response::from_parts(
        parts,
        TokenBody {
            body: Some(body),
            rejected: None,
            settle,
        },
    ))
}

enum Media {
    EventStream,
    Json,
    Other,
}

/// What an answer's `Content-Type` says it is, parameters aside.
fn media_type(headers: &http::HeaderMap) -> Media {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Media::Other;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("text/event-stream") {
        Media::EventStream
    } else if essence.eq_ignore_ascii_case("application/json")
        || essence
            .rsplit_once('+')
            .is_some_and(|(_, suffix)| suffix.eq_ignore_ascii_case("json"))
    {
        Media::Json
    } else {
        Media::Other
    }
}

/// The answer to a refused request: its status, the fields, and a JSON
/// body in OpenAI's error shape.
fn refusal<K, St, B>(
    shared: &Shared<K, St>,
    rejection: Rejection,
    kind: &str,
    rate: Option<String>,
) -> Response<TokenBody<B>> {
    let mut error = json!({
        "type": kind,
        "message": rejection.message(),
    });
    if let (Some(dimension), Some(map)) = (rejection.refused_dimension(), error.as_object_mut()) {
        map.insert("dimension".to_owned(), Value::from(dimension));
    }
    let body = json!({ "error": error }).to_string();
    let mut response = Response::new(TokenBody {
        body: None,
        rejected: Some(Bytes::from(body)),
        settle: None,
    });
    *response.status_mut() = rejection.status();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("ratelimit-policy", shared.policies.clone());
    if let Some(wait) = rejection.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    if let Some(rate) = rate.and_then(|r| HeaderValue::try_from(r).ok()) {
        headers.insert("ratelimit", rate);
    }
    response.extensions_mut().insert(rejection);
    response
}

fn denied_response<K, St, B>(
    shared: &Shared<K, St>,
    denied: &Denied,
    key: Key,
) -> Response<TokenBody<B>> {
    let index = denied
        .dimension()
        .and_then(|name| shared.dimensions.iter().position(|d| d.name() == name))
        .unwrap_or(0);
    let dimension = shared
        .dimensions
        .get(index)
        .copied()
        .unwrap_or(Dimension::Requests);
    let quota = shared.quotas.get(index);
    let limit = quota.map_or_else(String::new, |q| {
        let (count, window) = tollgate::headers::quota_window(q);
        format!("this key's limit is {count} every {window} s")
    });
    let (kind, status, message, code) = match denied.kind() {
        DeniedKind::RateLimited => {
            let wait = denied.retry_after().unwrap_or_default();
            (
                RejectionKind::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{}: {limit}; retry in {} s",
                    dimension.name(),
                    retry_after_secs(wait)
                ),
                "rate_limit_exceeded",
            )
        }
        DeniedKind::CostExceedsBurst => (
            RejectionKind::CostTooLarge,
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{}: the request needs {}, more than {limit}",
                dimension.name(),
                denied.cost()
            ),
            "request_too_large",
        ),
        _ => (
            RejectionKind::Unavailable,
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the rate limit could not be checked: {denied}"),
            "service_unavailable",
        ),
    };
    let mut rejection = Rejection::new(kind, status, message)
        .key(key)
        .dimension(dimension.name());
    let mut rate = None;
    if kind == RejectionKind::RateLimited {
        rejection = rejection
            .snapshot(*denied.snapshot())
            .retry_after_or(denied.retry_after().unwrap_or_default());
        rate = shared
            .names
            .get(index)
            .map(|name| rate_limit(name, denied.snapshot()));
    }
    refusal(shared, rejection, code, rate)
}

/// Settles a call's charge in its budget (the layer's shared state, with
/// its key extractor and store types forgotten).
trait Charge: Send + Sync + 'static {
    fn charge(self: Arc<Self>, key: Key, grant: Grant, input_tokens: u64, output_tokens: u64);
}

impl<K, St> Charge for Shared<K, St>
where
    K: Send + Sync + 'static,
    St: Store<Key> + Send + Sync + 'static,
{
    fn charge(self: Arc<Self>, key: Key, grant: Grant, input_tokens: u64, output_tokens: u64) {
        let actual = self.costs(input_tokens, output_tokens);
        if actual.as_slice() == grant.costs() {
            return;
        }
        let mut settle = Box::pin(async move {
            // A store that fails leaves the estimate charged.
            let _ = self.budget.settle(&key, grant, actual.as_slice()).await;
        });
        // A store that settles at once (in memory) does so before the body
        // is gone; one that waits (over the network) goes on in the
        // background, so that the body's end does not wait on it.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if settle.as_mut().poll(&mut cx).is_ready() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(settle);
        }
    }
}

/// The charge of one admitted call, until it is settled.
struct Settle {
    budget: Arc<dyn Charge>,
    key: Key,
    grant: Grant,
    estimate: Estimate,
}

impl Settle {
    fn settle(self, input_tokens: u64, output_tokens: u64) {
        self.budget
            .charge(self.key, self.grant, input_tokens, output_tokens);
    }

    /// The answer failed: the request counts, its tokens are given back.
    fn refund_tokens(self) {
        self.settle(0, 0);
    }

    /// No usage can be read: the estimate stands.
    fn keep(self) {
        let Estimate {
            input_tokens,
            output_tokens,
        } = self.estimate;
        self.settle(input_tokens, output_tokens);
    }
}

enum Watch {
    Sse(SseUsage),
    Json(JsonUsage),
}

/// A call whose answer's usage is being read.
struct Watching {
    settle: Settle,
    watch: Watch,
}

impl Watching {
    fn feed(&mut self, data: &[u8]) {
        match &mut self.watch {
            Watch::Sse(sse) => sse.feed(data),
            Watch::Json(json) => json.feed(data),
        }
    }

    /// Settles with what the body reported, the estimate standing for
    /// any count it did not report.
    fn finish(self) {
        let estimate = self.settle.estimate;
        let (input, output) = match &self.watch {
            Watch::Sse(sse) => sse.partial(),
            Watch::Json(json) => json.usage().map_or((None, None), |u| {
                (Some(u.input_tokens), Some(u.output_tokens))
            }),
        };
        self.settle.settle(
            input.unwrap_or(estimate.input_tokens),
            output.unwrap_or(estimate.output_tokens),
        );
    }
}

pin_project! {
    /// The body of a [`TokenLimit`]'s answer: the inner service's, watched
    /// for the usage it reports as it passes, or a refusal's.
    pub struct TokenBody<B> {
        #[pin]
        body: Option<B>,
        rejected: Option<Bytes>,
        settle: Option<Box<Watching>>,
    }

    impl<B> PinnedDrop for TokenBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(watching) = this.project().settle.take() {
                watching.finish();
            }
        }
    }
}

impl<B> fmt::Debug for TokenBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBody")
            .field("rejected", &self.rejected.is_some())
            .field("watching", &self.settle.is_some())
            .finish_non_exhaustive()
    }
}

impl<B: Body<Data = Bytes>> Body for TokenBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(body) = this.body.as_pin_mut() else {
            return Poll::Ready(this.rejected.take().map(|data| Ok(Frame::data(data))));
        };
        let frame = std::task::ready!(body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some(watching)) = (frame.data_ref(), this.settle.as_mut()) {
                    watching.feed(data);
                }
            }
            // The end, or an error that ends it: settled with what passed.
            Some(Err(_)) | None => {
                if let Some(watching) = this.settle.take() {
                    watching.finish();
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.rejected.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.body, &self.rejected) {
            (Some(body), _) => body.size_hint(),
            (None, Some(data)) => SizeHint::with_exact(data.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}
