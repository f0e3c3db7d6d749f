//! [`RateLimitLayer`] and its builder.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tollgate::headers::PolicyName;
use tollgate::{
    Clock, DefaultClock, Denied, KeyedLimiter, MemoryStore, Quota, RateLimiter, Snapshot, Store,
};
use tower_layer::Layer;

use super::service::RateLimit;
use crate::key::{Global, KeyFn, KeyRules, MissingKey};
use crate::response::{DefaultRejector, HeaderStyle, RejectFn, Rejection};
use crate::{ConfigError, ConfigErrorKind, Key};
use bytes::Bytes;
use http::Response;

/// The keyed limiter of a [`RateLimitLayer`]: one quota per key, in memory.
pub type KeyedLayerLimiter = KeyedLimiter<Key, MemoryStore<LayerClock>>;

/// The limiter of a [`RateLimitLayer`] keyed by [`Global`]: one limit.
pub type GlobalLayerLimiter = RateLimiter<LayerClock>;

/// The clock of a layer's limiter: the [`DefaultClock`], read without an
/// indirect call on every request, or the one given to
/// [`RateLimitBuilder::clock`].
#[derive(Clone)]
pub struct LayerClock(ClockKind);

#[derive(Clone)]
enum ClockKind {
    Default(DefaultClock),
    Given(Arc<dyn Clock>),
}

impl fmt::Debug for LayerClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ClockKind::Default(clock) => clock.fmt(f),
            ClockKind::Given(_) => f.write_str("LayerClock(given)"),
        }
    }
}

impl Clock for LayerClock {
    #[inline]
    fn now(&self) -> u64 {
        match &self.0 {
            ClockKind::Default(clock) => clock.now(),
            ClockKind::Given(clock) => clock.now(),
        }
    }

    fn wait_blocking(&self, duration: Duration) {
        match &self.0 {
            ClockKind::Default(clock) => clock.wait_blocking(duration),
            ClockKind::Given(clock) => clock.wait_blocking(duration),
        }
    }
}

/// The limiter a [`RateLimitLayer`] decides with, as
/// [`RateLimitLayer::limiter`] lends it: read its statistics or snapshot,
/// or give a key a quota of its own (a paid tier, say).
///
/// A layer keyed by [`Global`] has one limit and needs no keys: it uses
/// the core's direct limiter, a lock-free `check` of a few nanoseconds.
#[derive(Debug)]
#[non_exhaustive]
pub enum LayerLimiter<'a> {
    /// Per key (every extractor but [`Global`]).
    Keyed(&'a KeyedLayerLimiter),
    /// One global limit.
    Global(&'a GlobalLayerLimiter),
    /// Over the store given to [`RateLimitBuilder::store`]: see
    /// [`stored`](Self::stored).
    Stored(&'a dyn StoredLimiter),
}

impl<'a> LayerLimiter<'a> {
    /// The keyed limiter, for a layer with keys.
    pub fn keyed(self) -> Option<&'a KeyedLayerLimiter> {
        match self {
            Self::Keyed(limiter) => Some(limiter),
            _ => None,
        }
    }

    /// The global limiter, for a layer keyed by [`Global`].
    pub fn global(self) -> Option<&'a GlobalLayerLimiter> {
        match self {
            Self::Global(limiter) => Some(limiter),
            _ => None,
        }
    }

    /// The keyed limiter over the store `S` given to
    /// [`RateLimitBuilder::store`] (every key, [`Global`]'s included, is
    /// decided there).
    pub fn stored<S: Store<Key> + 'static>(self) -> Option<&'a KeyedLimiter<Key, S>> {
        match self {
            Self::Stored(limiter) => limiter.as_any().downcast_ref(),
            _ => None,
        }
    }
}

/// A keyed limiter over a store of the user's (Redis, say), as a layer
/// holds it: its decisions are made in the response future, since the
/// store answers asynchronously.
pub trait StoredLimiter: Send + Sync + fmt::Debug {
    /// The quota every key has unless the store holds its own.
    fn quota(&self) -> &Quota;

    /// Admits `cost` for `key`, waiting at most `max_wait`.
    fn acquire_within<'a>(
        &'a self,
        key: &'a Key,
        cost: u64,
        max_wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Snapshot, Denied>> + Send + 'a>>;

    /// `key`'s limit now, spending nothing.
    fn snapshot<'a>(
        &'a self,
        key: &'a Key,
    ) -> Pin<Box<dyn Future<Output = Result<Snapshot, Denied>> + Send + 'a>>;

    /// The limiter itself, for [`LayerLimiter::stored`].
    fn as_any(&self) -> &dyn Any;
}

impl<S> StoredLimiter for KeyedLimiter<Key, S>
where
    S: Store<Key> + fmt::Debug + 'static,
{
    fn quota(&self) -> &Quota {
        KeyedLimiter::quota(self)
    }

    fn acquire_within<'a>(
        &'a self,
        key: &'a Key,
        cost: u64,
        max_wait: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Snapshot, Denied>> + Send + 'a>> {
        Box::pin(KeyedLimiter::acquire_within(self, key, cost, max_wait))
    }

    fn snapshot<'a>(
        &'a self,
        key: &'a Key,
    ) -> Pin<Box<dyn Future<Output = Result<Snapshot, Denied>> + Send + 'a>> {
        Box::pin(KeyedLimiter::snapshot(self, key))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

pub(super) enum Limiter {
    Keyed(KeyedLayerLimiter),
    Global(GlobalLayerLimiter),
    Stored(Arc<dyn StoredLimiter>),
}

/// What a synchronous check answers.
pub(super) enum Checked {
    Admitted(Snapshot),
    Denied(Denied),
    /// The store decides asynchronously: in the response future.
    Later,
}

impl Limiter {
    #[inline]
    pub(super) fn check(&self, key: &Key, cost: u64) -> Checked {
        let result = match self {
            Self::Global(limiter) => limiter.check(cost),
            Self::Keyed(limiter) => limiter.check(key, cost),
            Self::Stored(_) => return Checked::Later,
        };
        match result {
            Ok(snapshot) => Checked::Admitted(snapshot),
            Err(denied) => Checked::Denied(denied),
        }
    }

    pub(super) async fn acquire_within(
        &self,
        key: &Key,
        cost: u64,
        max: Duration,
    ) -> Result<Snapshot, Denied> {
        match self {
            Self::Global(limiter) => limiter.acquire_within(cost, max).await,
            Self::Keyed(limiter) => limiter.acquire_within(key, cost, max).await,
            Self::Stored(limiter) => limiter.acquire_within(key, cost, max).await,
        }
    }

    pub(super) fn quota(&self) -> &Quota {
        match self {
            Self::Global(limiter) => limiter.quota(),
            Self::Keyed(limiter) => limiter.quota(),
            Self::Stored(limiter) => limiter.quota(),
        }
    }

    pub(super) fn lend(&self) -> LayerLimiter<'_> {
        match self {
            Self::Global(limiter) => LayerLimiter::Global(limiter),
            Self::Keyed(limiter) => LayerLimiter::Keyed(limiter),
            Self::Stored(limiter) => LayerLimiter::Stored(&**limiter),
        }
    }
}

/// A request's cost: how many units of the limit it spends.
///
/// [`One`] (the default) charges 1 a request; a [`CostFn`] charges what a
/// closure says (by route, by declared body size).
pub trait RequestCost<B>: Send + Sync + 'static {
    /// The cost of one request.
    fn cost(&self, request: &Request<B>) -> u64;
}

/// Every request costs 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct One;

impl<B> RequestCost<B> for One {
    #[inline]
    fn cost(&self, _: &Request<B>) -> u64 {
        1
    }
}

/// A closure as a [`RequestCost`].
#[derive(Clone)]
pub struct CostFn<F>(F);

impl<F> fmt::Debug for CostFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CostFn")
    }
}

impl<B, F> RequestCost<B> for CostFn<F>
where
    F: Fn(&Request<B>) -> u64 + Send + Sync + 'static,
{
    fn cost(&self, request: &Request<B>) -> u64 {
        (self.0)(request)
    }
}

pub(super) struct Shared<K, C, R> {
    pub(super) limiter: Limiter,
    pub(super) key: K,
    pub(super) cost: C,
    pub(super) rejector: R,
    pub(super) max_wait: Option<Duration>,
    pub(super) style: HeaderStyle,
    pub(super) keys: KeyRules,
}

/// Rate-limits the requests of the service it wraps.
///
/// Each request is counted against its key's quota when the service is
/// *called* (`poll_ready` only asks the inner service). A request within
/// the limit goes through, and its response carries the `RateLimit-Policy`
/// and `RateLimit` fields. One over the limit is answered at once with 429
/// Too Many Requests, `Retry-After` (whole seconds, rounded up, never 0) and
/// the same fields; a gRPC call with HTTP 200 and `grpc-status: 8`
/// (RESOURCE_EXHAUSTED). In wait mode ([`RateLimitBuilder::wait_up_to`]) a
/// request whose turn comes within the bound waits for it instead.
///
/// Every clone of the layer, and every service it makes, shares one
/// limiter.
///
/// ```
/// use std::net::SocketAddr;
/// use axum::{routing::get, Router};
/// use tollgate::Quota;
/// use tollgate_tower::{PeerIp, RateLimitLayer};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let per_ip = RateLimitLayer::builder(Quota::per_minute(60)?)
///     .key(PeerIp::new())
///     .build()?;
/// let app = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(per_ip);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// // The peer's address reaches the layer through connect info.
/// let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>());
/// # drop(serve);
/// # Ok(())
/// # }
/// ```
pub struct RateLimitLayer<K = Global, C = One, R = DefaultRejector> {
    shared: Arc<Shared<K, C, R>>,
}

impl<K, C, R> Clone for RateLimitLayer<K, C, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, C, R> fmt::Debug for RateLimitLayer<K, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("quota", self.shared.limiter.quota())
            .field("max_wait", &self.shared.max_wait)
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// One global limit of the given quota, rejecting at once.
    pub fn new(quota: Quota) -> Self {
        Self::from_builder(RateLimitBuilder::new(quota))
    }

    /// A layer configured step by step.
    pub fn builder(quota: Quota) -> RateLimitBuilder {
        RateLimitBuilder::new(quota)
    }
}

impl<K: 'static, C, R> RateLimitLayer<K, C, R> {
    fn from_builder(builder: RateLimitBuilder<K, C, R>) -> Self {
        let clock = LayerClock(match builder.clock {
            Some(clock) => ClockKind::Given(clock),
            None => ClockKind::Default(DefaultClock::new()),
        });
        let global = std::any::TypeId::of::<K>() == std::any::TypeId::of::<Global>();
        let limiter = if let Some(stored) = builder.stored {
            Limiter::Stored(stored)
        } else if global {
            Limiter::Global(RateLimiter::builder(builder.quota).clock(clock).build())
        } else {
            Limiter::Keyed(
                KeyedLimiter::builder(builder.quota)
                    .max_keys(builder.max_keys)
                    .clock(clock)
                    .build(),
            )
        };
        let style = HeaderStyle::new(
            builder.policy_name,
            &builder.quota,
            builder.on_success,
            builder.legacy,
        );
        Self {
            shared: Arc::new(Shared {
                limiter,
                key: builder.key,
                cost: builder.cost,
                rejector: builder.rejector,
                max_wait: builder.max_wait,
                style,
                keys: builder.keys,
            }),
        }
    }
}

impl<K, C, R> RateLimitLayer<K, C, R> {
    /// The limiter every clone shares: its
    /// [`stats`](KeyedLimiter::stats), or
    /// [`set_quota`](KeyedLimiter::set_quota) for a key of its own.
    pub fn limiter(&self) -> LayerLimiter<'_> {
        self.shared.limiter.lend()
    }
}

impl<S, K, C, R> Layer<S> for RateLimitLayer<K, C, R> {
    type Service = RateLimit<S, K, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`RateLimitLayer`].
pub struct RateLimitBuilder<K = Global, C = One, R = DefaultRejector> {
    quota: Quota,
    key: K,
    cost: C,
    rejector: R,
    max_wait: Option<Duration>,
    policy_name: PolicyName,
    name_error: Option<ConfigError>,
    on_success: bool,
    legacy: bool,
    keys: KeyRules,
    max_keys: usize,
    clock: Option<Arc<dyn Clock>>,
    stored: Option<Arc<dyn StoredLimiter>>,
}

impl<K: fmt::Debug, C: fmt::Debug, R: fmt::Debug> fmt::Debug for RateLimitBuilder<K, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("quota", &self.quota)
            .field("key", &self.key)
            .field("cost", &self.cost)
            .field("rejector", &self.rejector)
            .field("max_wait", &self.max_wait)
            .field("policy_name", &self.policy_name)
            .finish_non_exhaustive()
    }
}

impl RateLimitBuilder {
    fn new(quota: Quota) -> Self {
        Self {
            quota,
            key: Global,
            cost: One,
            rejector: DefaultRejector,
            max_wait: None,
            policy_name: PolicyName::default(),
            name_error: None,
            on_success: true,
            legacy: false,
            keys: KeyRules::default(),
            max_keys: tollgate::DEFAULT_MAX_KEYS,
            clock: None,
            stored: None,
        }
    }
}

impl<K, C, R> RateLimitBuilder<K, C, R> {
    fn with<K2, C2, R2>(
        self,
        swap: impl FnOnce(K, C, R) -> (K2, C2, R2),
    ) -> RateLimitBuilder<K2, C2, R2> {
        let (key, cost, rejector) = swap(self.key, self.cost, self.rejector);
        RateLimitBuilder {
            quota: self.quota,
            key,
            cost,
            rejector,
            max_wait: self.max_wait,
            policy_name: self.policy_name,
            name_error: self.name_error,
            on_success: self.on_success,
            legacy: self.legacy,
            keys: self.keys,
            max_keys: self.max_keys,
            clock: self.clock,
            stored: self.stored,
        }
    }

    /// What requests are counted against (default: [`Global`], one key).
    pub fn key<K2>(self, key: K2) -> RateLimitBuilder<K2, C, R> {
        self.with(|_, cost, rejector| (key, cost, rejector))
    }

    /// Keys requests by a closure; `None` means the request has no key.
    pub fn key_fn<F>(self, f: F) -> RateLimitBuilder<KeyFn<F>, C, R> {
        self.with(|_, cost, rejector| (KeyFn::new(f), cost, rejector))
    }

    /// What a request costs (default: [`One`]).
    pub fn cost<C2>(self, cost: C2) -> RateLimitBuilder<K, C2, R> {
        self.with(|key, _, rejector| (key, cost, rejector))
    }

    /// Costs requests by a closure (by route, by `content-length`...).
    pub fn cost_fn<F>(self, f: F) -> RateLimitBuilder<K, CostFn<F>, R> {
        self.with(|key, _, rejector| (key, CostFn(f), rejector))
    }

    /// Answers rejections with the given [`Rejector`](crate::Rejector).
    pub fn rejector<R2>(self, rejector: R2) -> RateLimitBuilder<K, C, R2> {
        self.with(|key, cost, _| (key, cost, rejector))
    }

    /// Answers rejections with a closure; the layer adds `Retry-After` and
    /// the `RateLimit` fields to its response where it set none.
    pub fn reject_with<F>(self, f: F) -> RateLimitBuilder<K, C, RejectFn<F>>
    where
        F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.with(|key, cost, _| (key, cost, RejectFn(f)))
    }

    /// Wait mode: a request whose turn comes within `max_wait` waits for
    /// it (in line, first come first served) instead of being rejected;
    /// one whose turn is further away is rejected at once.
    #[must_use]
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// The policy's name in the `RateLimit` fields (default `"default"`):
    /// printable ASCII, 1 to 64 characters.
    #[must_use]
    pub fn policy_name(mut self, name: &str) -> Self {
        match PolicyName::new(name) {
            Ok(name) => self.policy_name = name,
            Err(e) => {
                self.name_error = Some(ConfigError::with_kind(
                    ConfigErrorKind::PolicyName,
                    e.to_string(),
                ));
            }
        }
        self
    }

    /// Whether admitted responses carry the `RateLimit` fields (default:
    /// yes). Rejections always carry them.
    #[must_use]
    pub fn headers_on_success(mut self, on: bool) -> Self {
        self.on_success = on;
        self
    }

    /// Whether to add the legacy `X-RateLimit-Limit`, `-Remaining` and
    /// `-Reset` (delta seconds) headers (default: no).
    #[must_use]
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy = on;
        self
    }

    /// What to do with a request that has no key (default: reject it).
    #[must_use]
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.keys.missing = missing;
        self
    }

    /// The longest key accepted, in bytes (default
    /// [`DEFAULT_MAX_KEY_LEN`](crate::DEFAULT_MAX_KEY_LEN)); a longer key counts as missing.
    #[must_use]
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.keys.max_len = bytes;
        self
    }

    /// The most keys held at once (default [`tollgate::DEFAULT_MAX_KEYS`]);
    /// past it, the keys closest to full are forgotten first.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// The limiter's clock (default: the [`DefaultClock`]); a
    /// [`ManualClock`](tollgate::ManualClock) makes tests exact.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// Keeps the limit in `store` instead of in this process: a
    /// `tollgate_redis::RedisStore`, say, so that every replica of the
    /// service sharing it spends from one limit. Each decision is then made
    /// in the response future, one round trip to the store; a store that
    /// fails (and does not fail open) is answered 503 with `Retry-After`.
    /// The layer's [`clock`](Self::clock) and
    /// [`max_keys`](Self::max_keys) do not apply: the store has its own.
    pub fn store<S>(mut self, store: S) -> Self
    where
        S: Store<Key> + fmt::Debug + 'static,
    {
        self.stored = Some(Arc::new(KeyedLimiter::with_store(self.quota, store)));
        self
    }

    /// The layer, or what is wrong with its configuration.
    pub fn build(mut self) -> Result<RateLimitLayer<K, C, R>, ConfigError>
    where
        K: 'static,
    {
        if let Some(error) = self.name_error.take() {
            return Err(error);
        }
        if self.max_keys == 0 {
            return Err(ConfigError::with_kind(
                ConfigErrorKind::Limit,
                "max_keys must be at least 1",
            ));
        }
        self.keys.check()?;
        Ok(RateLimitLayer::from_builder(self))
    }
}
