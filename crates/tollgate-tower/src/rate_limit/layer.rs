//! [`RateLimitLayer`] and its builder.

use std::convert::Infallible;
use std::fmt;
use std::future::{ready, Future};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use tollgate::headers::PolicyName;
use tollgate::store::{Change, Decision, Denial, DirectStore, StoreStats, SyncStore, View};
use tollgate::{Clock, DefaultClock, KeyedLimiter, MemoryStore, Quota, Snapshot, Store};
use tower_layer::Layer;

use super::service::RateLimit;
use super::tier::{Declared, Limit, Resolver, Tier, Tiers};
use crate::key::{Global, KeyFn, KeyRules, MissingKey};
use crate::meters::Meters;
use crate::response::{DefaultRejector, HeaderStyle, RejectFn, Rejection};
use crate::{ConfigError, ConfigErrorKind, Key};
use bytes::Bytes;
use http::Response;

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

/// The in-memory store of a [`RateLimitLayer`] (its default): every key's
/// limit in a [`MemoryStore`], and the [global key](Key::global) in a
/// [`DirectStore`], so that a layer with one limit decides without a lock
/// and without hashing. Both on the layer's [`LayerClock`].
pub struct LayerStore {
    keyed: MemoryStore<LayerClock>,
    global: DirectStore<LayerClock>,
}

impl LayerStore {
    fn new(quota: Quota, max_keys: usize, clock: LayerClock) -> Self {
        Self {
            keyed: MemoryStore::new(max_keys, 1, clock.clone()),
            global: DirectStore::new(quota, tollgate::Algorithm::Gcra, clock),
        }
    }

    /// Whether the decision goes to the global limit: the global key, in
    /// the one dimension a layer has.
    #[inline(always)]
    fn global(key: &Key, dimensions: usize) -> bool {
        dimensions == 1 && key.is_global()
    }
}

impl fmt::Debug for LayerStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerStore")
            .field("keyed", &self.keyed)
            .field("global", &self.global)
            .finish()
    }
}

impl Store<Key> for LayerStore {
    type Error = Infallible;

    fn decide(
        &self,
        key: &Key,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, Infallible>> + Send {
        ready(Ok(SyncStore::decide_now(
            self, key, limits, costs, max_wait,
        )))
    }

    fn adjust(
        &self,
        key: &Key,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl Future<Output = Result<(), Infallible>> + Send {
        SyncStore::adjust_now(self, key, limits, changes);
        ready(Ok(()))
    }

    fn read(
        &self,
        key: &Key,
        limits: &[Quota],
    ) -> impl Future<Output = Result<View, Infallible>> + Send {
        ready(Ok(SyncStore::read_now(self, key, limits)))
    }

    fn give_back(&self, key: &Key, limits: &[Quota], costs: &[u64]) {
        if Self::global(key, limits.len()) {
            Store::give_back(&self.global, key, limits, costs);
        } else {
            Store::give_back(&self.keyed, key, limits, costs);
        }
    }

    fn stats(&self) -> StoreStats {
        let keyed = Store::<Key>::stats(&self.keyed);
        let global = Store::<Key>::stats(&self.global);
        StoreStats::new(
            keyed.admitted.saturating_add(global.admitted),
            keyed.denied.saturating_add(global.denied),
            keyed.entries.saturating_add(global.entries),
            keyed.evictions,
        )
    }

    #[inline(always)]
    fn check_now(&self, key: &Key, quota: &Quota, cost: u64) -> Option<Result<Snapshot, Denial>> {
        Some(SyncStore::check_one(self, key, quota, cost))
    }
}

impl SyncStore<Key> for LayerStore {
    fn decide_now(
        &self,
        key: &Key,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Decision {
        if Self::global(key, limits.len().max(costs.len())) {
            SyncStore::decide_now(&self.global, key, limits, costs, max_wait)
        } else {
            SyncStore::decide_now(&self.keyed, key, limits, costs, max_wait)
        }
    }

    #[inline(always)]
    fn check_one(&self, key: &Key, quota: &Quota, cost: u64) -> Result<Snapshot, Denial> {
        if key.is_global() {
            SyncStore::check_one(&self.global, key, quota, cost)
        } else {
            SyncStore::check_one(&self.keyed, key, quota, cost)
        }
    }

    fn adjust_now(&self, key: &Key, limits: &[Quota], changes: &[Change]) {
        if Self::global(key, limits.len().max(changes.len())) {
            SyncStore::adjust_now(&self.global, key, limits, changes);
        } else {
            SyncStore::adjust_now(&self.keyed, key, limits, changes);
        }
    }

    fn read_now(&self, key: &Key, limits: &[Quota]) -> View {
        if Self::global(key, limits.len()) {
            SyncStore::read_now(&self.global, key, limits)
        } else {
            SyncStore::read_now(&self.keyed, key, limits)
        }
    }

    fn now(&self) -> u64 {
        self.global.clock().now()
    }

    fn wait_blocking(&self, duration: Duration) {
        self.global.clock().wait_blocking(duration);
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

pub(super) struct Shared<K, C, R, S> {
    pub(super) limiter: KeyedLimiter<Key, S>,
    pub(super) key: K,
    pub(super) cost: C,
    pub(super) rejector: R,
    pub(super) max_wait: Option<Duration>,
    pub(super) style: HeaderStyle,
    pub(super) keys: KeyRules,
    /// Shadow mode: decide and count, refuse and delay nothing.
    pub(super) shadow: bool,
    /// Requests shadow mode let through that the limit would have refused.
    pub(super) shadowed: std::sync::atomic::AtomicU64,
    /// The quotas by tier, and how a request's tier is found.
    pub(super) tiers: Tiers,
    /// The layer's policy's metrics (each tier has its own).
    pub(super) meters: Meters,
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
pub struct RateLimitLayer<K = Global, C = One, R = DefaultRejector, S = LayerStore> {
    shared: Arc<Shared<K, C, R, S>>,
}

impl<K, C, R, S> Clone for RateLimitLayer<K, C, R, S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, C, R, S> fmt::Debug for RateLimitLayer<K, C, R, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("quota", self.shared.limiter.quota())
            .field("max_wait", &self.shared.max_wait)
            .finish_non_exhaustive()
    }
}

impl LayerClock {
    fn default_clock() -> Self {
        Self(ClockKind::Default(DefaultClock::new()))
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

impl<K, C, R, S> RateLimitLayer<K, C, R, S> {
    fn from_builder(builder: RateLimitBuilder<K, C, R, S>) -> Self {
        let meters = Meters::new(&builder.policy_name.to_string());
        let style = HeaderStyle::new(
            builder.policy_name,
            &builder.quota,
            builder.on_success,
            builder.legacy,
        );
        let tiers = Tiers {
            limits: builder
                .tiers
                .into_iter()
                .map(|tier| Limit {
                    name: tier.name.to_string(),
                    meters: Meters::new(&tier.name.to_string()),
                    quota: tier.quota,
                    style: HeaderStyle::new(
                        tier.name,
                        &tier.quota,
                        builder.on_success,
                        builder.legacy,
                    ),
                })
                .collect(),
            resolver: builder.tier_of,
        };
        Self {
            shared: Arc::new(Shared {
                limiter: KeyedLimiter::with_store(builder.quota, builder.store),
                key: builder.key,
                cost: builder.cost,
                rejector: builder.rejector,
                max_wait: builder.max_wait,
                style,
                keys: builder.keys,
                shadow: builder.shadow,
                shadowed: std::sync::atomic::AtomicU64::new(0),
                tiers,
                meters,
            }),
        }
    }

    /// The limiter every clone shares, over the layer's store: its
    /// [`stats`](KeyedLimiter::stats), a key's
    /// [`snapshot`](KeyedLimiter::snapshot), or
    /// [`set_quota`](KeyedLimiter::set_quota) for a key of its own (the
    /// global limit is [`Key::global`]).
    pub fn limiter(&self) -> &KeyedLimiter<Key, S> {
        &self.shared.limiter
    }

    /// The requests that [shadow mode](RateLimitBuilder::shadow) let
    /// through though the limit would have refused them (0 when the mode
    /// is off).
    pub fn shadowed(&self) -> u64 {
        self.shared
            .shadowed
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<Svc, K, C, R, S> Layer<Svc> for RateLimitLayer<K, C, R, S> {
    type Service = RateLimit<Svc, K, C, R, S>;

    fn layer(&self, inner: Svc) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`RateLimitLayer`].
pub struct RateLimitBuilder<K = Global, C = One, R = DefaultRejector, S = LayerStore> {
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
    clock: LayerClock,
    store: S,
    shadow: bool,
    tiers: Vec<Declared>,
    tier_of: Option<Resolver>,
}

impl<K: fmt::Debug, C: fmt::Debug, R: fmt::Debug, S> fmt::Debug for RateLimitBuilder<K, C, R, S> {
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
            shadow: false,
            tiers: Vec::new(),
            tier_of: None,
            clock: LayerClock::default_clock(),
            store: LayerStore::new(
                quota,
                tollgate::DEFAULT_MAX_KEYS,
                LayerClock::default_clock(),
            ),
        }
    }
}

impl<K, C, R> RateLimitBuilder<K, C, R, LayerStore> {
    /// The most keys held at once (default [`tollgate::DEFAULT_MAX_KEYS`]);
    /// past it, the keys closest to full are forgotten first.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self.store = LayerStore::new(self.quota, max_keys.max(1), self.clock.clone());
        self
    }

    /// The limiter's clock (default: the [`DefaultClock`]); a
    /// [`ManualClock`](tollgate::ManualClock) makes tests exact.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = LayerClock(ClockKind::Given(Arc::new(clock)));
        self.store = LayerStore::new(self.quota, self.max_keys.max(1), self.clock.clone());
        self
    }

    /// Keeps the limit in `store` instead of in this process: a
    /// `tollgate_redis::RedisStore`, say, so that every replica of the
    /// service sharing it spends from one limit. A store that answers
    /// without waiting ([`Store::check_now`]) decides on the request's
    /// path; any other in the response future, one round trip each. A
    /// store that fails (and does not fail open) is answered 503 with
    /// `Retry-After`. The store has its own clock and bounds:
    /// [`clock`](Self::clock) and [`max_keys`](Self::max_keys) are not
    /// offered after it.
    pub fn store<S2: Store<Key>>(self, store: S2) -> RateLimitBuilder<K, C, R, S2> {
        self.with(|key, cost, rejector, _| (key, cost, rejector, store))
    }
}

impl<K, C, R, S> RateLimitBuilder<K, C, R, S> {
    fn with<K2, C2, R2, S2>(
        self,
        swap: impl FnOnce(K, C, R, S) -> (K2, C2, R2, S2),
    ) -> RateLimitBuilder<K2, C2, R2, S2> {
        let (key, cost, rejector, store) = swap(self.key, self.cost, self.rejector, self.store);
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
            store,
            shadow: self.shadow,
            tiers: self.tiers,
            tier_of: self.tier_of,
        }
    }

    /// What requests are counted against (default: [`Global`], one key).
    pub fn key<K2>(self, key: K2) -> RateLimitBuilder<K2, C, R, S> {
        self.with(|_, cost, rejector, store| (key, cost, rejector, store))
    }

    /// Keys requests by a closure; `None` means the request has no key.
    pub fn key_fn<F>(self, f: F) -> RateLimitBuilder<KeyFn<F>, C, R, S> {
        self.with(|_, cost, rejector, store| (KeyFn::new(f), cost, rejector, store))
    }

    /// What a request costs (default: [`One`]).
    pub fn cost<C2>(self, cost: C2) -> RateLimitBuilder<K, C2, R, S> {
        self.with(|key, _, rejector, store| (key, cost, rejector, store))
    }

    /// Costs requests by a closure (by route, by `content-length`...).
    pub fn cost_fn<F>(self, f: F) -> RateLimitBuilder<K, CostFn<F>, R, S> {
        self.with(|key, _, rejector, store| (key, CostFn(f), rejector, store))
    }

    /// Answers rejections with the given [`Rejector`](crate::Rejector).
    pub fn rejector<R2>(self, rejector: R2) -> RateLimitBuilder<K, C, R2, S> {
        self.with(|key, cost, _, store| (key, cost, rejector, store))
    }

    /// Answers rejections with a closure; the layer adds `Retry-After` and
    /// the `RateLimit` fields to its response where it set none.
    pub fn reject_with<F>(self, f: F) -> RateLimitBuilder<K, C, RejectFn<F>, S>
    where
        F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.with(|key, cost, _, store| (key, cost, RejectFn(f), store))
    }

    /// Wait mode: a request whose turn comes within `max_wait` waits for
    /// it (in line, first come first served) instead of being rejected;
    /// one whose turn is further away is rejected at once.
    #[must_use]
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// A tier: requests of this tier are limited at `quota` instead of the
    /// layer's, and their answers name the tier as the policy in the
    /// `RateLimit` fields. A request's tier is the [`Tier`] in its
    /// extensions (where an authentication layer in front puts it), or
    /// what [`tier_fn`](Self::tier_fn) says; a request of no tier, or of
    /// one not declared, has the layer's quota.
    ///
    /// A key has one budget whatever its tier: when its tier changes, it
    /// keeps the share of its burst it has spent (the time its limit
    /// needs to be full again), refilled at the new tier's rate. Over a
    /// `RedisStore`, a key passed a stricter quota within its period keeps
    /// it that long (one key, one quota): an upgrade applies within the
    /// lower tier's period.
    ///
    /// ```
    /// use axum::{routing::get, Router};
    /// use tollgate::Quota;
    /// use tollgate_tower::{HeaderKey, RateLimitLayer, Tier};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::builder(Quota::per_minute(60)?)
    ///     .key(HeaderKey::new("x-api-key")?)
    ///     .tier("free", Quota::per_minute(60)?)
    ///     .tier("pro", Quota::per_minute(600)?)
    ///     .build()?;
    /// // An authentication layer (outside) tells the tier.
    /// let app: Router = Router::new()
    ///     .route("/", get(|| async { "hello" }))
    ///     .layer(layer)
    ///     .layer(axum::middleware::map_request(|mut request: axum::extract::Request| async {
    ///         let pro = request.headers().contains_key("x-pro");
    ///         request.extensions_mut().insert(Tier::new(if pro { "pro" } else { "free" }));
    ///         request
    ///     }));
    /// # drop(app);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn tier(mut self, name: &str, quota: Quota) -> Self {
        match PolicyName::new(name) {
            Ok(name) if self.tiers.iter().any(|t| t.name == name) => {
                self.name_error = Some(ConfigError::with_kind(
                    ConfigErrorKind::PolicyName,
                    format!("the tier {name} is declared twice"),
                ));
            }
            Ok(name) => self.tiers.push(Declared { name, quota }),
            Err(e) => {
                self.name_error = Some(ConfigError::with_kind(
                    ConfigErrorKind::PolicyName,
                    format!("tier {name:?}: {e}"),
                ));
            }
        }
        self
    }

    /// Finds a request's tier from its headers and extensions, in place of
    /// the [`Tier`] extension (a plan header set by a gateway, say).
    #[must_use]
    pub fn tier_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(&http::HeaderMap, &http::Extensions) -> Option<Tier> + Send + Sync + 'static,
    {
        self.tier_of = Some(Arc::new(f));
        self
    }

    /// Shadow mode, to roll a limit out without refusing anyone: every
    /// request is decided and counted as if the limit were enforced, and
    /// every one goes through at once (none is refused, none waits, a
    /// store that fails refuses none). The answers carry the `RateLimit`
    /// fields as if enforced (where they are on); a request the limit
    /// would have refused is counted in [`RateLimitLayer::shadowed`] and
    /// in a `debug` event (target `tollgate_tower::shadow`), the first
    /// one also at `info`. As when enforced, a request that would have
    /// been refused spends nothing.
    ///
    /// ```
    /// use tollgate::Quota;
    /// use tollgate_tower::RateLimitLayer;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let trial = RateLimitLayer::builder(Quota::per_minute(600)?)
    ///     .shadow(true)
    ///     .build()?;
    /// assert_eq!(trial.shadowed(), 0);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
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

    /// The layer, or what is wrong with its configuration.
    pub fn build(mut self) -> Result<RateLimitLayer<K, C, R, S>, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::store::conformance;

    /// The layer's store under the suite's keys: each a key of the keyed
    /// store (the global key's `DirectStore` keeps the contract in
    /// `tollgate`'s own conformance tests, one key a store).
    struct ByName(LayerStore);

    impl Store<String> for ByName {
        type Error = Infallible;

        fn decide(
            &self,
            key: &String,
            limits: &[Quota],
            costs: &[u64],
            max_wait: Duration,
        ) -> impl Future<Output = Result<Decision, Infallible>> + Send {
            ready(Ok(SyncStore::decide_now(
                &self.0,
                &Key::from(key.as_str()),
                limits,
                costs,
                max_wait,
            )))
        }

        fn adjust(
            &self,
            key: &String,
            limits: &[Quota],
            changes: &[Change],
        ) -> impl Future<Output = Result<(), Infallible>> + Send {
            SyncStore::adjust_now(&self.0, &Key::from(key.as_str()), limits, changes);
            ready(Ok(()))
        }

        fn read(
            &self,
            key: &String,
            limits: &[Quota],
        ) -> impl Future<Output = Result<View, Infallible>> + Send {
            ready(Ok(SyncStore::read_now(
                &self.0,
                &Key::from(key.as_str()),
                limits,
            )))
        }

        fn give_back(&self, key: &String, limits: &[Quota], costs: &[u64]) {
            Store::give_back(&self.0, &Key::from(key.as_str()), limits, costs);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_layers_store_keeps_the_contract() {
        let quota = Quota::per_second(10).unwrap();
        let clock = LayerClock(ClockKind::Default(DefaultClock::new()));
        conformance::run(|| async { ByName(LayerStore::new(quota, 10_000, clock.clone())) }).await;
    }
}
