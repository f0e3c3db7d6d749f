//! The middleware: its builder, the loop each call goes through (price,
//! admit, send, learn, settle or retry), and what it asks of the store.
//! What an answer teaches is the endpoint's model's (`model`).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use serde_json::Value;
use tollgate::headers::RateLimitHeaders;
use tollgate::store::{Change, Decision};
use tollgate::{DeniedKind, Grant, KeyedBudget, MemoryStore, Quota, Store};

use retry_policies::policies::ExponentialBackoff;
use retry_policies::{Jitter, RetryDecision, RetryPolicy};

use crate::classify::{Answer, Classify, DefaultClassify};
use crate::estimate::{DefaultEstimator, TokenEstimator};
use crate::hint;
use crate::limits::{Dimension, Pacing, ProviderLimits};
use crate::model::{Model, Setting};
use crate::quirks::Quirks;
use crate::{Estimate, RetryLater, TooLarge, Usage};

/// How many times a call was sent, the last included: in every response's
/// extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempts(pub u32);

/// What a budget is kept per: the provider's endpoint and, when the JSON
/// body names one, the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    scheme: String,
    host: String,
    port: u16,
    model: Option<String>,
    /// The key that counts the endpoint's answers in a shared store (see
    /// [`counter`](Self::counter)), not its budget.
    counter: bool,
}

impl std::hash::Hash for Endpoint {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As the derived hash: a network store keys its state by it, so a
        // budget's key hashes as it always did.
        self.scheme.hash(state);
        self.host.hash(state);
        self.port.hash(state);
        self.model.hash(state);
        if self.counter {
            state.write_u8(1);
        }
    }
}

impl Endpoint {
    /// The scheme, host and port of the URL, with the model.
    pub fn new(url: &reqwest::Url, model: Option<&str>) -> Self {
        Self {
            scheme: url.scheme().to_owned(),
            host: url.host_str().unwrap_or_default().to_owned(),
            port: url.port_or_known_default().unwrap_or(0),
            // A model name longer than this is no model's: it is cut, so a
            // hostile body cannot grow the key without end.
            model: model.map(|m| m.chars().take(128).collect()),
            counter: false,
        }
    }

    /// The key under which a shared store counts this endpoint's answers
    /// (see `Shared::ask_fleet`).
    fn counter(&self) -> Self {
        Self {
            counter: true,
            ..self.clone()
        }
    }

    /// The model, when the body names one.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)?;
        if let Some(model) = &self.model {
            write!(f, " ({model})")?;
        }
        if self.counter {
            write!(f, " (answers)")?;
        }
        Ok(())
    }
}

/// Keeps the calls of a `reqwest_middleware` client under an LLM
/// provider's limits, per endpoint and model.
///
/// Each call waits its turn in a budget of requests, tokens, input tokens
/// and output tokens a minute, shared by every clone of the client; it
/// reserves one request and its estimated tokens, and settles to what it
/// used when the answer reports it (see [`Usage`]). Calls are spaced
/// evenly at 95% of each limit ([`Builder::headroom`]), never in a burst.
///
/// ```
/// use reqwest_middleware::ClientBuilder;
/// use tollgate_reqwest::RateLimitMiddleware;
///
/// # let _ = rustls::crypto::ring::default_provider().install_default();
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(RateLimitMiddleware::new())
///     .build();
/// ```
///
/// # Where the limits come from
///
/// With none configured, the first call to an endpoint goes alone, and
/// its answer's headers set the limits (`x-ratelimit-*`,
/// `anthropic-ratelimit-*`, the IETF `RateLimit` fields, and the other
/// dialects of the crate's tests); every later answer keeps them current,
/// and calls already waiting are re-spaced when a limit changes.
/// Configured limits ([`Builder::limits`]) apply where they are stricter.
///
/// Where the answers state less, the limit is learnt:
///
/// - only what remains (Azure's sparest headers): each limit, requests
///   and tokens, is inferred from it and what this process spent (for
///   tokens, what its calls reserved);
/// - no request limit at all: calls start in a window that grows with
///   each answer; the first refusal sets a rate of 90% of what the
///   provider admitted in a second, which then grows slowly while calls
///   succeed (AIMD);
/// - a limit named in a refusal's body ("Limit 30" in OpenAI's and
///   Groq's messages, Gemini's `QuotaFailure`) is taken for that
///   dimension.
///
/// A few providers count in ways their headers do not say: Groq's
/// `-requests` headers count a day, Azure OpenAI's request limit ten
/// seconds, Anthropic's output tokens what was written. The middleware
/// knows them by host; a legacy `x-ratelimit-reset` more than 90 s away
/// (OpenRouter's day) is left to the refusals in the same way.
///
/// # What a call costs
///
/// A call reserves its prompt (estimated) and its output bound
/// (`max_tokens` and its kin), and is settled to what the provider
/// charged: the bound, unless the answers show the provider charges what
/// was written ([`Builder::output_charge`]). A body with no output bound
/// reserves what such calls of the endpoint lately wrote (their 90th
/// percentile), or what the provider charges them where its token
/// `remaining` shows it: less, or (for a process alone on the key) more.
/// Calls priced before that charge was read keep what they reserved.
///
/// # Refusals
///
/// A 429, 503 or 529 pauses the endpoint for every caller, for the wait
/// the provider asks (`retry-after-ms`, `Retry-After`, a wait in the body,
/// the exhausted limit's reset; else jittered exponential back-off).
/// Pauses that overlap take the longest. The call is then retried if its
/// body can be cloned: after a 429 up to [`Builder::max_refusals`] times
/// in a row, after a 503 or 529 while [`Builder::max_attempts`] and the
/// retry budget last. `x-should-retry: false` is obeyed.
///
/// A wait the provider asks for beyond [`Builder::max_wait`] returns
/// [`RetryLater`] at once. A wait behind this process's own reservations
/// never does: the call keeps its place while they settle.
///
/// # Several processes
///
/// Without a shared store, each process reads how fast the provider's
/// `remaining` falls against what it spent itself, and paces at its share
/// of the limit once it sees others. With
/// [`Builder::build_with_store`] (a Redis store), the processes spend
/// from one budget, learnt limits and pauses included; a rate learnt from
/// refusals is the fleet's, from the answers the store counted for every
/// process, and what one process learns the others take.
pub struct RateLimitMiddleware<S = MemoryStore> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for RateLimitMiddleware<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for RateLimitMiddleware<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitMiddleware")
            .field("configured", &self.shared.configured)
            .field("max_attempts", &self.shared.settings.max_attempts)
            .field("max_wait", &self.shared.settings.max_wait)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared<S = MemoryStore> {
    pub(crate) budget: KeyedBudget<Endpoint, S>,
    configured: ProviderLimits,
    pacing: Pacing,
    endpoints: Mutex<HashMap<Endpoint, Arc<EndpointState>>>,
    estimator: Box<dyn TokenEstimator>,
    backoff: Box<dyn RetryPolicy + Send + Sync>,
    classify: Box<dyn Classify>,
    settings: Settings,
    calls: AtomicU64,
    retries: AtomicU64,
    /// Whether each endpoint's share is read from `remaining` (see the
    /// `share` module): with the in-memory store only.
    finds_share: bool,
}

/// What a shared store told of an endpoint's fleet, with an answer (see
/// `Shared::ask_fleet`).
#[derive(Default)]
struct Fleet {
    /// The level of the endpoint's count of answers.
    counted: Option<Duration>,
    /// The endpoint's request limit.
    in_store: Option<Quota>,
}

/// Answers over which the slow-start window grows by half each round trip.
const SLOW_START_QUICK: u64 = 60;
/// After those, the window grows by one place every this many answers.
/// Against a provider that states no limit and refills a bucket (the
/// efficiency matrix's no-header, Gemini, OpenRouter and Groq rows), one
/// place every second answer throughout sent up to 63 calls past the
/// limit in the round trip of the first refusal (5% of 1,200 calls).
const SLOW_START_LATE: u64 = 8;

/// What is known of one endpoint, and what its calls go through.
struct EndpointState {
    /// Held by the one call that goes alone until the limits are known.
    probe: tokio::sync::Mutex<()>,
    learnt: AtomicBool,
    /// What the provider does that its answers do not show.
    quirks: Quirks,
    /// What is known of the endpoint, under one lock (never held across
    /// an await).
    model: Mutex<Model>,
    /// Before the first refusal of such an endpoint: the calls allowed in
    /// flight, from 2, one more every second answer, then every eighth
    /// (TCP's slow start, gentler). Closed at the first refusal.
    window: Arc<tokio::sync::Semaphore>,
    window_answers: AtomicU64,
    /// Calls without an output bound, while what they write is unknown.
    learning: Arc<crate::cost::Learning>,
}

impl EndpointState {
    fn new(quirks: Quirks) -> Self {
        Self {
            probe: tokio::sync::Mutex::default(),
            learnt: AtomicBool::default(),
            quirks,
            model: Mutex::new(Model::new(quirks)),
            window: Arc::new(tokio::sync::Semaphore::new(2)),
            window_answers: AtomicU64::new(0),
            learning: Arc::default(),
        }
    }

    fn model(&self) -> std::sync::MutexGuard<'_, Model> {
        // Every update of the model is whole before anything can panic.
        self.model.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The most endpoints remembered; past it, the table is cleared (the
/// budgets' own state is bounded by the core's key cap).
const MAX_ENDPOINTS: usize = 10_000;

/// Configures a [`RateLimitMiddleware`].
pub struct Builder {
    configured: ProviderLimits,
    headroom: f64,
    estimator: Box<dyn TokenEstimator>,
    backoff: Box<dyn RetryPolicy + Send + Sync>,
    classify: Box<dyn Classify>,
    settings: Settings,
}

/// The back-off where the provider gives no wait: `base × 2^(attempt-1)`,
/// at most `cap`, jittered (`retry-policies`' bounded jitter: between half
/// of `base` and the whole).
fn exponential(base: Duration, cap: Duration) -> ExponentialBackoff {
    ExponentialBackoff::builder()
        .retry_bounds(base, cap)
        .jitter(Jitter::Bounded)
        .base(2)
        .build_with_max_retries(u32::MAX)
}

/// The longest back-off step [`Builder::backoff`] takes.
const MAX_BACKOFF: Duration = Duration::from_secs(24 * 3600);

/// How refusals are retried: the builder's choices, kept by the middleware.
#[derive(Clone, Copy, Debug)]
struct Settings {
    max_attempts: u32,
    max_refusals: u32,
    max_wait: Duration,
    retry_ratio: f64,
    output_charge: crate::cost::OutputCharge,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("configured", &self.configured)
            .field("headroom", &self.headroom)
            .field("max_attempts", &self.settings.max_attempts)
            .field("max_wait", &self.settings.max_wait)
            .finish_non_exhaustive()
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            configured: ProviderLimits::new(),
            headroom: 0.05,
            estimator: Box::new(DefaultEstimator),
            backoff: Box::new(exponential(Duration::from_secs(1), Duration::from_secs(60))),
            classify: Box::new(DefaultClassify),
            settings: Settings {
                max_attempts: 4,
                max_refusals: 100,
                max_wait: Duration::from_secs(300),
                retry_ratio: 0.2,
                output_charge: crate::cost::OutputCharge::Learnt,
            },
        }
    }
}

impl Builder {
    /// Limits known in advance (per endpoint and model); those left out are
    /// learnt from the headers, and learnt ones apply where stricter.
    #[must_use]
    pub fn limits(mut self, limits: ProviderLimits) -> Self {
        self.configured = limits;
        self
    }

    /// The share of each limit left unused (default 0.05): calls are paced
    /// at 95% of it, so that a provider that counts in slices of a second
    /// never sees more than its slice. Clamped to 0 to 0.9.
    #[must_use]
    pub fn headroom(mut self, headroom: f64) -> Self {
        self.headroom = if headroom.is_finite() {
            headroom.clamp(0.0, 0.9)
        } else {
            0.05
        };
        self
    }

    /// What the provider charges a call whose body bounds its output
    /// (`max_tokens`), which its reported usage settles to (default:
    /// [`OutputCharge::Learnt`]). Settled to what was written where the
    /// provider charges the bound, the budget would think it has room
    /// the provider does not; settled to the bound where the provider
    /// charges what was written, calls go at the pace of their bounds.
    ///
    /// [`OutputCharge::Learnt`]: crate::OutputCharge::Learnt
    #[must_use]
    pub fn output_charge(mut self, charge: crate::OutputCharge) -> Self {
        self.settings.output_charge = charge;
        self
    }

    /// How a call's tokens are guessed before it is sent (default:
    /// [`DefaultEstimator`]).
    #[must_use]
    pub fn estimator(mut self, estimator: impl TokenEstimator) -> Self {
        self.estimator = Box::new(estimator);
        self
    }

    /// Attempts per call that may end in an overload (503, 529), the first
    /// included (default 4; at least 1). Refusals for rate (429) do not
    /// count: see [`max_refusals`](Self::max_refusals).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.settings.max_attempts = attempts.max(1);
        self
    }

    /// Refusals for rate (429) of one call, in a row, before it is
    /// returned as it is (default 100; at least 1). A 429 asks the caller
    /// to wait, and the wait is taken (the endpoint is paused for everyone,
    /// then calls leave paced), so such retries spend neither
    /// [`max_attempts`](Self::max_attempts) nor the retry budget: a call is
    /// retried until it succeeds, the provider says stop
    /// (`x-should-retry: false`), the wait asked exceeds
    /// [`max_wait`](Self::max_wait), or this bound is reached.
    #[must_use]
    pub fn max_refusals(mut self, refusals: u32) -> Self {
        self.settings.max_refusals = refusals.max(1);
        self
    }

    /// The longest wait the provider may ask for (default 5 minutes): a
    /// longer `Retry-After`, or a longer pause in force, returns
    /// [`RetryLater`] at once. A wait that comes from this process' own
    /// reservations (the estimates of calls not yet answered) is not
    /// bounded by it: such a call keeps its place in line and moves
    /// forward as the calls ahead of it settle to what they cost, so no
    /// call is returned for an estimate of this process' own.
    #[must_use]
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.settings.max_wait = max_wait;
        self
    }

    /// The back-off when the provider gives no wait: `base × 2^(attempt-1)`,
    /// at most `cap`, jittered between half of `base` and the whole
    /// (default 1 s and 60 s; `cap` at least `base`, both at most a day).
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        let cap = cap.min(MAX_BACKOFF);
        self.backoff = Box::new(exponential(base.min(cap), cap));
        self
    }

    /// Any back-off policy of the `retry-policies` crate (or your own
    /// [`RetryPolicy`]), for when the provider gives no wait: asked with
    /// the number of attempts made before; `DoNotRetry` returns the
    /// provider's answer as it is. A wait it gives beyond
    /// [`max_wait`](Self::max_wait) returns [`RetryLater`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate_reqwest::retry_policies::policies::ExponentialBackoff;
    /// use tollgate_reqwest::RateLimitMiddleware;
    ///
    /// let middleware = RateLimitMiddleware::builder()
    ///     .backoff_policy(
    ///         ExponentialBackoff::builder()
    ///             .retry_bounds(Duration::from_millis(500), Duration::from_secs(8))
    ///             .build_with_max_retries(5),
    ///     )
    ///     .build();
    /// ```
    #[must_use]
    pub fn backoff_policy(mut self, policy: impl RetryPolicy + Send + Sync + 'static) -> Self {
        self.backoff = Box::new(policy);
        self
    }

    /// Which statuses are refusals for rate, which say the provider is
    /// overloaded, and which are final (default: [`DefaultClassify`], 429
    /// for rate, 503 and 529 overload).
    #[must_use]
    pub fn classify(mut self, classify: impl Classify) -> Self {
        self.classify = Box::new(classify);
        self
    }

    /// Retries allowed, as a share of calls made (default 0.2, plus 10):
    /// when a provider fails everything, the client does not triple its
    /// load with retries.
    #[must_use]
    pub fn retry_ratio(mut self, ratio: f64) -> Self {
        self.settings.retry_ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.2
        };
        self
    }

    /// The middleware, its budgets in this process.
    pub fn build(self) -> RateLimitMiddleware {
        let limits = self.pacing().limits(&self.configured, &[0; 4]);
        self.finish(KeyedBudget::builder(limits).build(), true)
    }

    /// The middleware, its budgets, learnt limits and pauses in `store`:
    /// a `tollgate_redis::RedisStore`, say, so that every process calling
    /// the provider with it stays under the one limit together.
    pub fn build_with_store<S: Store<Endpoint>>(self, store: S) -> RateLimitMiddleware<S> {
        let limits = self.pacing().limits(&self.configured, &[0; 4]);
        // Processes sharing the store spend from one budget: none needs to
        // find its share.
        self.finish(KeyedBudget::with_store(limits, store), false)
    }

    fn pacing(&self) -> Pacing {
        Pacing {
            headroom: self.headroom,
        }
    }

    fn finish<S>(
        self,
        budget: KeyedBudget<Endpoint, S>,
        finds_share: bool,
    ) -> RateLimitMiddleware<S> {
        let pacing = self.pacing();
        RateLimitMiddleware {
            shared: Arc::new(Shared {
                budget,
                configured: self.configured,
                pacing,
                endpoints: Mutex::new(HashMap::new()),
                estimator: self.estimator,
                backoff: self.backoff,
                classify: self.classify,
                settings: self.settings,
                calls: AtomicU64::new(0),
                retries: AtomicU64::new(0),
                finds_share,
            }),
        }
    }
}

impl Default for RateLimitMiddleware {
    fn default() -> Self {
        Self::new()
    }
}

impl RateLimitMiddleware {
    /// Learns every limit from the headers, with the defaults.
    pub fn new() -> Self {
        Builder::default().build()
    }

    /// A middleware configured step by step.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl<S> RateLimitMiddleware<S> {
    /// The per-minute limits in force for an endpoint, once known.
    pub fn limits_for(&self, endpoint: &Endpoint) -> Option<ProviderLimits> {
        let endpoints = self.shared.lock_endpoints();
        let state = endpoints.get(endpoint)?;
        let in_force = state.model().in_force();
        in_force
    }

    /// The budget every clone shares, keyed by endpoint: its statistics and
    /// snapshots.
    pub fn budget(&self) -> &KeyedBudget<Endpoint, S> {
        &self.shared.budget
    }
}

#[async_trait::async_trait]
impl<S: Store<Endpoint> + 'static> Middleware for RateLimitMiddleware<S> {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        Arc::clone(&self.shared)
            .call(request, extensions, next)
            .await
    }
}

impl<S> Shared<S> {
    fn lock_endpoints(&self) -> std::sync::MutexGuard<'_, HashMap<Endpoint, Arc<EndpointState>>> {
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self, key: &Endpoint) -> Arc<EndpointState> {
        let mut endpoints = self.lock_endpoints();
        if endpoints.len() >= MAX_ENDPOINTS && !endpoints.contains_key(key) {
            endpoints.clear();
        }
        let state = endpoints
            .entry(key.clone())
            .or_insert_with(|| Arc::new(EndpointState::new(Quirks::of(&key.host))));
        Arc::clone(state)
    }
}

/// A call, priced: its endpoint and what it reserves.
struct Priced {
    key: Endpoint,
    state: Arc<EndpointState>,
    estimate: Estimate,
    /// Requests, tokens, input tokens, output tokens.
    costs: [u64; 4],
    /// The body names no output bound: what it writes is learnt from.
    unbounded: bool,
    /// One of the few calls that teach what unbounded calls write.
    on_prior: Option<crate::cost::OnPrior>,
}

/// One attempt's answer, read.
struct Sent {
    grant: Grant,
    /// When the attempt was sent.
    sent_at: tokio::time::Instant,
    response: Response,
    answer: Answer,
    /// Every rate-limit header of the answer.
    all: RateLimitHeaders,
    /// What a refusal's body says (its wait, a limit its message names).
    said: hint::BodyHint,
}

/// One attempt's answer, as the endpoint's model is given it.
struct Heard<'a> {
    /// When the attempt was sent.
    sent_at: tokio::time::Instant,
    answer: Answer,
    /// Every rate-limit header of the answer.
    all: &'a RateLimitHeaders,
    response: &'a Response,
    /// What a refusal's body says.
    said: &'a hint::BodyHint,
}

/// What follows a refusal.
enum AfterRefusal {
    /// The wait was taken: send again.
    Retry,
    /// The call ends with this.
    Return(reqwest_middleware::Result<Response>),
}

/// The attempts of one call so far.
#[derive(Default)]
struct Tries {
    attempt: u32,
    /// Answers of 503 / 529, bounded by `max_attempts` and the retry
    /// budget.
    overloads: u32,
    /// Answers of 429 in a row, bounded by `max_refusals`.
    refusals: u32,
}

impl<S: Store<Endpoint> + 'static> Shared<S> {
    /// The loop: admits the call, sends it, settles it, and retries it
    /// after a refusal while the bounds allow. What each answer teaches is
    /// the endpoint's model's (see `model`).
    async fn call(
        self: Arc<Self>,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let mut call = self.price(&request).await;
        self.calls.fetch_add(1, Ordering::Relaxed);
        crate::meters::call(&call.key);
        let mut original = Some(request);
        let mut tries = Tries::default();
        loop {
            tries.attempt = tries.attempt.saturating_add(1);
            if tries.attempt > 1 {
                crate::meters::retry(&call.key);
            }
            let clone = original.as_ref().and_then(Request::try_clone);
            let (sending, can_retry) = match clone {
                Some(clone) => (clone, true),
                None => match original.take() {
                    Some(request) => (request, false),
                    None => unreachable!("the request is kept until it cannot be cloned"),
                },
            };
            let mut sent = self.send(&call, sending, extensions, next.clone()).await?;
            sent.response
                .extensions_mut()
                .insert(Attempts(tries.attempt));
            if sent.answer == Answer::Done {
                return Ok(self.done(&mut call, sent));
            }
            match self.refused(&call.key, sent, can_retry, &mut tries).await {
                AfterRefusal::Retry => {}
                AfterRefusal::Return(result) => return result,
            }
        }
    }

    /// The call's endpoint and costs. A body that names no output bound
    /// reserves what such calls wrote lately, once known, in place of the
    /// estimator's prior.
    async fn price(&self, request: &Request) -> Priced {
        let body: Option<Value> = request
            .body()
            .and_then(reqwest::Body::as_bytes)
            .and_then(|bytes| serde_json::from_slice(bytes).ok())
            .filter(Value::is_object);
        let model = body
            .as_ref()
            .and_then(|b| b.get("model"))
            .and_then(Value::as_str);
        let key = Endpoint::new(request.url(), model);
        let mut estimate = body
            .as_ref()
            .map(|b| self.estimator.estimate(b))
            .unwrap_or_default();
        let state = self.state(&key);
        let unbounded = body
            .as_ref()
            .is_some_and(|b| tollgate::llm::output_bound(b).is_none());
        let mut on_prior = None;
        if unbounded {
            let learnt = state
                .learning
                .wait(|| state.model().output_estimate(&self.setting()))
                .await;
            match learnt {
                Ok(learnt) => estimate.output_tokens = learnt,
                // One of the few calls that teach what such calls write:
                // it reserves its prompt, and is charged what it wrote
                // when it answers. Reserving a guess of a thousand tokens,
                // each would hold the calls behind it for seconds where
                // tokens are few, and drag their requests with it.
                Err(Some(place)) => {
                    estimate.output_tokens = 0;
                    on_prior = Some(place);
                }
                Err(None) => {}
            }
        }
        let costs = [
            1,
            estimate.input_tokens.saturating_add(estimate.output_tokens),
            estimate.input_tokens,
            estimate.output_tokens,
        ];
        Priced {
            key,
            state,
            estimate,
            costs,
            unbounded,
            on_prior,
        }
    }

    /// One attempt: waits for its turn, sends, and hands the answer to the
    /// endpoint's model. A transport error gives the turn back.
    async fn send(
        &self,
        call: &Priced,
        sending: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Sent> {
        let (key, state) = (&call.key, &*call.state);
        // Until an endpoint's limits are known, its calls go one by one.
        let probe = if self.configured.is_empty() && !state.learnt.load(Ordering::Acquire) {
            let guard = state.probe.lock().await;
            (!state.learnt.load(Ordering::Acquire)).then_some(guard)
        } else {
            None
        };
        // While a rate is being learnt from a refusal, calls wait for the
        // episode's end before taking their turn; before the first
        // refusal, they go in a window that grows by one with each answer
        // (see `adaptive`).
        let window = self.learning_gate(key, state).await;
        let grant = self.admit(key, state, &call.costs).await?;
        let sent_at = tokio::time::Instant::now();
        let response = match next.run(sending, extensions).await {
            Ok(response) => response,
            Err(error) => {
                // Not known to have reached the provider: give it back.
                let _ = self.budget.settle(key, grant, &[0; 4]).await;
                return Err(error);
            }
        };
        let all = tollgate::headers::parse(
            response
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes())),
            SystemTime::now(),
        );
        let answer = self.classify.classify(response.status());
        // A refusal's body may hold the wait it asks for, where the
        // headers do not, and a refusal for rate may name the limit it
        // met: read before the model takes the answer.
        let hinted = all.retry_after.is_some() || all.retry_after_too_long;
        let (response, said) = if answer != Answer::Done
            && all.should_retry != Some(false)
            && (!hinted || answer == Answer::RateLimited)
        {
            hint::read(response).await
        } else {
            (response, hint::BodyHint::default())
        };
        let heard = Heard {
            sent_at,
            answer,
            all: &all,
            response: &response,
            said: &said,
        };
        self.learn(call, &heard).await;
        state.learnt.store(true, Ordering::Release);
        drop(probe);
        if let Some(window) = window {
            self.slow_start(state, answer);
            drop(window);
        }
        Ok(Sent {
            grant,
            sent_at,
            response,
            answer,
            all,
            said,
        })
    }

    /// Hands an answer to the endpoint's model, and what it changed to the
    /// store, in one adjustment.
    async fn learn(&self, call: &Priced, heard: &Heard<'_>) {
        let (key, state) = (&call.key, &*call.state);
        let read = crate::model::paced(state.quirks, heard.response.headers(), heard.all);
        let fleet = self.ask_fleet(key, state, heard.answer).await;
        let answered = crate::model::Answered {
            answer: heard.answer,
            read: read.as_ref(),
            message: heard.said.per_minute,
            tokens: call.costs[1],
            unbounded: call.unbounded,
            sent_at: heard.sent_at,
            now: tokio::time::Instant::now(),
            counted: fleet.counted,
            in_store: fleet.in_store,
        };
        let learnt = state.model().answered(key, &self.setting(), &answered);
        crate::meters::limits(key, &learnt.paced);
        self.adjust(key, learnt.changes).await;
        if learnt.rate_known {
            state.window.close();
        }
    }

    /// What a store the fleet may share says of an endpoint whose rate is
    /// learnt from its answers (nothing in memory):
    ///
    /// - an answer is counted there: one decision on the endpoint's
    ///   counter key, whose level tells how many answers the fleet got
    ///   lately (see `adaptive`);
    /// - a refusal to a process that has learnt no rate yet, an answer
    ///   after that refusal's episode while none is, and an answer once a
    ///   second once one is, read the key's request limit there:
    ///   another process may have learnt or changed it (see the model's
    ///   `adopt`).
    ///
    /// Each is a round trip; nothing is read where the store fails.
    async fn ask_fleet(&self, key: &Endpoint, state: &EndpointState, answer: Answer) -> Fleet {
        let mut fleet = Fleet::default();
        if self.finds_share {
            return fleet;
        }
        // What to ask, under one lock of the model.
        let (learns, reads_limit) = {
            let setting = self.setting();
            let mut model = state.model();
            let reads_limit = match answer {
                // Once a second, the key's rate as the fleet last wrote
                // it: a process whose calls were all admitted long ago
                // would not read it otherwise.
                Answer::Done => model.store_read_due(tokio::time::Instant::now()),
                Answer::RateLimited => !model.rate_learnt(),
                _ => false,
            };
            (model.learns_rate(&setting), reads_limit)
        };
        if !learns {
            return fleet;
        }
        // Counted from the first answer, whatever the fleet's size now:
        // processes join it as they start, and the busiest second may be
        // the first.
        if answer == Answer::Done {
            if let Some(counter) = crate::adaptive::counter_quota() {
                let decided = self
                    .budget
                    .store()
                    .decide(&key.counter(), &[counter], &[1], Duration::ZERO)
                    .await;
                if let Ok(Decision::Admit(admit)) = decided {
                    fleet.counted = Some(admit.snapshot.reset_after());
                }
            }
        }
        if reads_limit {
            if let Ok(limits) = self.budget.limits_for(key).await {
                fleet.in_store = Some(*limits.quota(Dimension::Requests.index()));
            }
        }
        fleet
    }

    /// The slow-start window after an answer: it grows by one place every
    /// second answer (by half each round trip) for the first
    /// [`SLOW_START_QUICK`] answers, then one every
    /// [`SLOW_START_LATE`]th (by an eighth): the round trip that first
    /// meets the limit overshoots it by what the window grew in it, and a
    /// provider's burst lets a window grow well past the rate before the
    /// first refusal. A refusal closes it once a rate is known or learnt
    /// from it.
    fn slow_start(&self, state: &EndpointState, answer: Answer) {
        if answer != Answer::Done {
            if state.model().refusal_ends_slow_start(&self.setting()) {
                state.window.close();
            }
            return;
        }
        let answers = state.window_answers.fetch_add(1, Ordering::Relaxed);
        let every = if answers < SLOW_START_QUICK {
            2
        } else {
            SLOW_START_LATE
        };
        if answers % every == every - 1 {
            state.window.add_permits(1);
        }
    }

    /// A call answered: the estimate stays charged until the caller
    /// reports usage, or, for a stream of events, until the body ends.
    fn done(self: &Arc<Self>, call: &mut Priced, sent: Sent) -> Response {
        let Sent {
            grant,
            sent_at,
            mut response,
            all,
            ..
        } = sent;
        let read = crate::model::paced(call.state.quirks, response.headers(), &all);
        let lesson = crate::cost::Lesson {
            unbounded: call.unbounded,
            seen: ProviderLimits::stated_with_remaining(read.as_ref(), Dimension::Tokens),
            unstated: crate::model::unstated_tokens(read.as_ref()).map(|remaining| {
                crate::cost::Unstated {
                    sent: sent_at,
                    at: tokio::time::Instant::now(),
                    remaining,
                }
            }),
        };
        let usage = Usage::new(
            Arc::clone(self) as Arc<dyn SettleUsage>,
            call.key.clone(),
            grant,
            call.estimate,
            (lesson, call.on_prior.take()),
        );
        response.extensions_mut().insert(usage.clone());
        if crate::stream::is_event_stream(&response) {
            return crate::stream::watch(response, usage);
        }
        response
    }

    /// A refusal: nothing was spent at the provider. Settles the turn,
    /// pauses every caller of the endpoint for the wait it asks, and says
    /// whether the call goes again.
    async fn refused(
        &self,
        key: &Endpoint,
        sent: Sent,
        can_retry: bool,
        tries: &mut Tries,
    ) -> AfterRefusal {
        let Sent {
            grant,
            response,
            answer,
            all,
            said,
            ..
        } = sent;
        let status = response.status();
        crate::meters::refused(key, answer);
        if all.should_retry == Some(false) {
            let _ = self.budget.settle(key, grant, &[0; 4]).await;
            tracing::info!(%key, %status, "the provider says not to retry");
            return AfterRefusal::Return(Ok(response));
        }
        let hinted = all.retry_after.is_some() || all.retry_after_too_long;
        let body_hint = said.wait.filter(|_| !hinted);
        let Some(wait) = self.wait_for(&all, body_hint, tries.attempt) else {
            let _ = self.budget.settle(key, grant, &[0; 4]).await;
            tracing::info!(%key, %status, attempt = tries.attempt, "the back-off policy gives up: returned as it is");
            return AfterRefusal::Return(Ok(response));
        };
        // A refusal for rate that asks for less than a second keeps its
        // turn in the request dimension while calls wait theirs: a turn
        // given back moves the calls queued behind it up, into the same
        // refusal (a provider that asks for milliseconds answered each
        // call so once, in a storm that never ended). Otherwise, or with
        // none waiting, it is given back: the pause covers the provider's
        // window, and a lone retry goes when the provider said.
        let kept = u64::from(
            answer == Answer::RateLimited
                && wait < Duration::from_secs(1)
                && self.budget.waiting() > 0,
        );
        let _ = self.budget.settle(key, grant, &[kept, 0, 0, 0]).await;
        // A wait too long to count pauses the others for the ceiling only:
        // this call returns at once, they learn it for themselves.
        let pause = if wait == Duration::MAX {
            self.settings.max_wait
        } else {
            wait
        };
        let _ = self.budget.pause_for(key, pause).await;
        crate::meters::paused(key, pause);
        tracing::info!(%key, %status, ?wait, attempt = tries.attempt, "paused every caller of the endpoint");
        if wait > self.settings.max_wait {
            return AfterRefusal::Return(Err(reqwest_middleware::Error::middleware(
                RetryLater::new(wait, Some(status), self.settings.max_wait),
            )));
        }
        if !can_retry || !self.may_retry(key, answer, tries) {
            return AfterRefusal::Return(Ok(response));
        }
        AfterRefusal::Retry
    }

    /// Whether the bounds allow another attempt after this refusal. One
    /// for rate took the wait asked for: it spends neither attempts nor
    /// the retry budget, only the refusals allowed in a row.
    fn may_retry(&self, key: &Endpoint, answer: Answer, tries: &mut Tries) -> bool {
        if answer == Answer::RateLimited {
            tries.refusals = tries.refusals.saturating_add(1);
            if tries.refusals >= self.settings.max_refusals {
                let refusals = tries.refusals;
                tracing::warn!(%key, refusals, "refused for rate too many times in a row: returned as it is");
                return false;
            }
            return true;
        }
        tries.overloads = tries.overloads.saturating_add(1);
        tries.overloads < self.settings.max_attempts && self.take_retry()
    }

    /// Waits for the call's turn and reserves its whole estimate. A cost
    /// larger than a dimension's burst first raises that burst to it (a
    /// burst never holds less than the largest call), so the reservations
    /// queued behind are spaced by what each call really costs.
    async fn admit(
        &self,
        key: &Endpoint,
        state: &EndpointState,
        costs: &[u64; 4],
    ) -> reqwest_middleware::Result<Grant> {
        let max_wait = self.settings.max_wait;
        // A burst under the call's cost is raised before the decision;
        // one written over it meanwhile (by an answer priced on smaller
        // calls, or another process) is raised again, once.
        let mut tries = 0;
        let denied = loop {
            tries += 1;
            self.prepare(key, state, costs).await?;
            match self.budget.acquire_within(key, costs, max_wait).await {
                Ok(grant) => return Ok(grant),
                Err(denied) if denied.kind() == DeniedKind::RateLimited => break denied,
                Err(denied) if denied.kind() == DeniedKind::CostExceedsBurst && tries < 2 => {}
                Err(denied) => return Err(reqwest_middleware::Error::middleware(denied)),
            }
        };
        // Further than `max_wait`. A pause the provider asked for that
        // long returns the call, as documented; a wait that comes from
        // this process' own reservations (estimates not yet settled) does
        // not: the call takes its place in line, and moves forward as the
        // calls ahead of it settle to what they really cost.
        let paused = self.budget.paused_for(key).await.unwrap_or_default();
        if paused > max_wait {
            return Err(reqwest_middleware::Error::middleware(RetryLater::new(
                paused, None, max_wait,
            )));
        }
        tracing::debug!(%key, wait = ?denied.retry_after(), "queued behind this process' own reservations");
        self.budget
            .acquire(key, costs)
            .await
            .map_err(reqwest_middleware::Error::middleware)
    }

    /// Before a decision: reads the key's limits in the store, refuses a
    /// call larger than a minute's limit, and applies what the model
    /// changes for the call (a burst raised to its cost, a learnt rate
    /// another process wrote).
    async fn prepare(
        &self,
        key: &Endpoint,
        state: &EndpointState,
        costs: &[u64; 4],
    ) -> reqwest_middleware::Result<()> {
        let limits = self
            .budget
            .limits_for(key)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let mut raise = [false; 4];
        for (dimension, &cost) in Dimension::ALL.into_iter().zip(costs) {
            let quota = limits.quota(dimension.index());
            // A cost over a whole minute's limit never fits.
            if cost > quota.count() && quota.period() <= Duration::from_secs(60) {
                return Err(reqwest_middleware::Error::middleware(TooLarge {
                    dimension: dimension.name().to_owned(),
                    cost,
                }));
            }
            raise[dimension.index()] = cost > quota.burst_size();
        }
        let in_store = limits.quota(Dimension::Requests.index());
        let now = tokio::time::Instant::now();
        let (changes, adopted) =
            state
                .model()
                .admitting(&self.setting(), (costs, raise), in_store, now);
        if adopted {
            // The fleet knows the rate: no slow start.
            state.window.close();
        }
        self.adjust(key, changes).await;
        Ok(())
    }

    /// What the endpoints' models answer with: the configuration and the
    /// store.
    fn setting(&self) -> Setting<'_> {
        Setting {
            configured: &self.configured,
            pacing: &self.pacing,
            defaults: self.budget.limits(),
            finds_share: self.finds_share,
            sharers: self.budget.store().sharers(),
        }
    }

    /// Applies what the model changed to the store, in one operation.
    async fn adjust(&self, key: &Endpoint, changes: [Change; 4]) {
        if changes.iter().all(|c| *c == Change::Keep) {
            return;
        }
        let _ = self.budget.adjust(key, &changes).await;
    }

    /// Where the endpoint's rate is learnt from refusals: takes a place in
    /// the slow-start window while no rate is known (`None`: no window),
    /// then waits until the refusal episode in force, if any, ends.
    async fn learning_gate(
        &self,
        key: &Endpoint,
        state: &EndpointState,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if !state.model().learns_rate(&self.setting()) {
            return None;
        }
        // A closed window (the first refusal came) lets everyone through.
        let place = if state.window.is_closed() {
            None
        } else {
            Arc::clone(&state.window).acquire_owned().await.ok()
        };
        let end = state.model().episode_end(tokio::time::Instant::now());
        if let Some(end) = end {
            tracing::debug!(%key, "waiting out a refusal episode");
            tokio::time::sleep_until(end).await;
        }
        place
    }

    /// The wait a refusal asks for, by precedence: `retry-after-ms`, then
    /// `Retry-After` (both in `read.retry_after`; one too long to count is
    /// `Duration::MAX`), then a hint in the body, then the reset of an
    /// exhausted limit, then the back-off policy (`None` when it gives up).
    fn wait_for(
        &self,
        read: &RateLimitHeaders,
        body: Option<Duration>,
        attempt: u32,
    ) -> Option<Duration> {
        if let Some(wait) = read.retry_after {
            return Some(wait);
        }
        if read.retry_after_too_long {
            return Some(Duration::MAX);
        }
        if let Some(wait) = body {
            return Some(wait);
        }
        let exhausted = Dimension::ALL
            .iter()
            .map(|d| d.of(read))
            .filter(|r| r.remaining == Some(0))
            .filter_map(|r| r.reset)
            .max();
        if let Some(reset) = exhausted.filter(|r| !r.is_zero()) {
            return Some(reset);
        }
        // The back-off policy's, jittered so that callers refused together
        // do not come back together.
        let now = SystemTime::now();
        match self.backoff.should_retry(now, attempt.saturating_sub(1)) {
            RetryDecision::Retry { execute_after } => {
                Some(execute_after.duration_since(now).unwrap_or_default())
            }
            _ => None,
        }
    }

    /// Takes one retry from the retry budget: 10, plus a share of calls.
    fn take_retry(&self) -> bool {
        let calls = self.calls.load(Ordering::Relaxed);
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let allowed = 10 + (calls as f64 * self.settings.retry_ratio) as u64;
        let taken = self.retries.fetch_add(1, Ordering::Relaxed);
        if taken < allowed {
            true
        } else {
            self.retries.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!("the retry budget is spent: a refused call is returned as it is");
            false
        }
    }
}

/// Settles a call's usage with what it really used: what a [`Usage`]
/// holds, whatever the store.
pub(crate) trait SettleUsage: Send + Sync {
    fn settle_usage<'a>(
        &'a self,
        key: &'a Endpoint,
        grant: Grant,
        used: [u64; 4],
        lesson: crate::cost::Lesson,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;
}

impl<S: Store<Endpoint> + 'static> SettleUsage for Shared<S> {
    fn settle_usage<'a>(
        &'a self,
        key: &'a Endpoint,
        grant: Grant,
        used: [u64; 4],
        lesson: crate::cost::Lesson,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(async move {
            let state = self.state(key);
            let bound = grant.costs().get(3).copied().unwrap_or(0);
            let used = state.model().settled(
                &lesson,
                used,
                bound,
                self.settings.output_charge,
                &self.setting(),
            );
            if lesson.unbounded {
                state.learning.learnt();
            }
            let _ = self.budget.settle(key, grant, &used).await;
        })
    }
}

impl ProviderLimits {
    /// These limits, with those `newer` states replacing them.
    pub(crate) fn merged_with(&self, newer: &Self) -> Self {
        let mut out = *self;
        for dimension in Dimension::ALL {
            if let Some(n) = newer.get(dimension) {
                out = out.with(dimension, n);
            }
        }
        out
    }
}
