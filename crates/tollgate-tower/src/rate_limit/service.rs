//! [`RateLimit`], the service a [`RateLimitLayer`](super::RateLimitLayer)
//! makes.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tollgate::{Denied, DeniedKind, KeyedLimiter, Store};
use tower_service::Service;

use super::layer::{LayerStore, RequestCost, Shared};
use super::{One, ResponseFuture};
use crate::key::{no_key, Global, KeyExtractor};
use crate::meters::Meters;
use crate::response::{
    is_grpc, Admitted, DefaultRejector, HeaderStyle, Rejection, RejectionKind, Rejector,
};
use crate::Key;

/// A service rate-limited by a [`RateLimitLayer`](super::RateLimitLayer).
pub struct RateLimit<S, K = Global, C = One, R = DefaultRejector, St = LayerStore> {
    inner: S,
    shared: Arc<Shared<K, C, R, St>>,
}

impl<S: Clone, K, C, R, St> Clone for RateLimit<S, K, C, R, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, C, R, St> fmt::Debug for RateLimit<S, K, C, R, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("quota", self.shared.limiter.quota())
            .finish_non_exhaustive()
    }
}

impl<S, K, C, R, St> RateLimit<S, K, C, R, St> {
    pub(super) fn new(inner: S, shared: Arc<Shared<K, C, R, St>>) -> Self {
        Self { inner, shared }
    }

    /// The limiter every clone shares.
    pub fn limiter(&self) -> &KeyedLimiter<Key, St> {
        &self.shared.limiter
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<K, C, R, St> Shared<K, C, R, St> {
    /// Shadow mode met a request the limit would have refused: counted,
    /// the first logged at `info`, each at `debug`.
    fn shadowed(&self, meters: &Meters, key: &Key, cost: u64, denied: &Denied) {
        meters.shadowed();
        let before = self
            .shadowed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if before == 0 {
            tracing::info!(
                target: "tollgate_tower::shadow",
                policy = %self.style.name,
                "shadow mode: the limit would refuse requests; they go through (counted in RateLimitLayer::shadowed)"
            );
        }
        tracing::debug!(
            target: "tollgate_tower::shadow",
            %key,
            cost,
            policy = %self.style.name,
            kind = ?denied.kind(),
            "shadow mode: would have been refused"
        );
    }
}

impl<K, C, R: Rejector, St> Shared<K, C, R, St> {
    pub(super) fn reject(&self, rejection: Rejection) -> Response<Bytes> {
        self.reject_in(&self.style, rejection)
    }

    /// A rejection, with the fields of `style` (the layer's, or a tier's).
    pub(super) fn reject_in(&self, style: &HeaderStyle, rejection: Rejection) -> Response<Bytes> {
        let mut response = self.rejector.reject(&rejection);
        style.write_rejection(&rejection, response.headers_mut());
        response.extensions_mut().insert(rejection);
        response
    }

    pub(super) fn denied(&self, denied: &Denied, key: Key, grpc: bool) -> Response<Bytes> {
        self.denied_in(&self.style, denied, key, grpc)
    }

    /// [`denied`](Self::denied), with the fields of `style`.
    pub(super) fn denied_in(
        &self,
        style: &HeaderStyle,
        denied: &Denied,
        key: Key,
        grpc: bool,
    ) -> Response<Bytes> {
        let rejection = match denied.kind() {
            DeniedKind::RateLimited => Rejection::new(
                RejectionKind::RateLimited,
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests: the rate limit is reached",
            ),
            DeniedKind::CostExceedsBurst => Rejection::new(
                RejectionKind::CostTooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "this request costs {}, more than the limit of {} ever admits at once",
                    denied.cost(),
                    denied.snapshot().limit()
                ),
            ),
            _ => {
                // Not logged here, request by request: the limiter logs
                // once when its store starts failing and once when it
                // answers again, and counts the failures in its stats.
                Rejection::new(
                    RejectionKind::Unavailable,
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the rate limiter is unavailable",
                )
            }
        };
        let rejection = rejection.grpc(grpc).key(key).snapshot(*denied.snapshot());
        let rejection = if rejection.kind() == RejectionKind::Unavailable {
            // A store that failed: try again in a second (the store's
            // circuit breaker decides when it is asked again).
            rejection.retry_after_or(std::time::Duration::from_secs(1))
        } else {
            rejection
        };
        self.reject_in(style, rejection)
    }
}

/// The key of requests that count against one shared key.
static GLOBAL: Key = Key::global();

impl<S, K, C, R, St, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, K, C, R, St>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    K: KeyExtractor<ReqB> + Send + Sync + 'static,
    C: RequestCost<ReqB>,
    R: Rejector,
    St: Store<Key> + 'static,
    ReqB: Send + 'static,
{
    type Response = Response<crate::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, Admitted>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &*self.shared;
        // The key is read in place and lent, not moved: a key moved
        // between frames right after it was written costs more than its
        // few words (the processor cannot forward the narrower stores that
        // wrote it to the wider loads that copy it).
        let read = shared.key.extract(&request);
        let key = match shared.keys.accepted(&read) {
            Ok(Some(key)) => key,
            Ok(None) => &GLOBAL,
            Err(error) if shared.shadow => {
                shared
                    .shadowed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(target: "tollgate_tower::shadow", %error, "shadow mode: would have been refused");
                return ResponseFuture::called(self.inner.call(request), None);
            }
            Err(error) => {
                let grpc = is_grpc(&request);
                return ResponseFuture::rejected(shared.reject(no_key(&error, grpc)));
            }
        };
        let cost = shared.cost.cost(&request);
        if let Some(tier) = shared.tiers.of(request.headers(), request.extensions()) {
            let key = key.clone();
            return self.call_in_tier(request, key, cost, tier);
        }
        // What an admission holds is chosen before the check, not after
        // it: with nothing to write on success the snapshot is never read,
        // and the copies of it that the check's answer would take are
        // never made.
        let refused = if shared.style.on_success {
            match shared.limiter.check_now(key, cost) {
                Some(Ok(snapshot)) => {
                    shared.meters.admitted();
                    let admitted = shared.style.admitted(&snapshot);
                    return ResponseFuture::called(self.inner.call(request), Some(admitted));
                }
                Some(Err(denied)) => Some(denied),
                None => None,
            }
        } else {
            match shared.limiter.check_now(key, cost) {
                Some(Ok(_)) => {
                    shared.meters.admitted();
                    return ResponseFuture::called(self.inner.call(request), None);
                }
                Some(Err(denied)) => Some(denied),
                None => None,
            }
        };
        let grpc = match refused {
            Some(denied) if shared.shadow => {
                shared.shadowed(&shared.meters, key, cost, &denied);
                let admitted = shared
                    .style
                    .on_success
                    .then(|| shared.style.admitted(denied.snapshot()));
                return ResponseFuture::called(self.inner.call(request), admitted);
            }
            Some(denied) => {
                let grpc = is_grpc(&request);
                let within = match (shared.max_wait, denied.retry_after()) {
                    (Some(max), Some(wait)) => wait <= max,
                    _ => false,
                };
                if !within {
                    tracing::debug!(%key, cost, "rate limited");
                    count_denied(&shared.meters, &denied);
                    return ResponseFuture::rejected(shared.denied(&denied, key.clone(), grpc));
                }
                grpc
            }
            // A store of the user's: decided in the response future.
            None => is_grpc(&request),
        };
        // Wait mode: take the service that is ready, leave a clone.
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        let key = key.clone();
        let shared = Arc::clone(&self.shared);
        let max = shared.max_wait.unwrap_or_default();
        let wait = Box::pin(async move {
            if shared.shadow {
                // Decided at once (the store's round trip, never a wait).
                return Ok(
                    match shared
                        .limiter
                        .acquire_within(&key, cost, Duration::ZERO)
                        .await
                    {
                        Ok(snapshot) => shared.style.admitted(&snapshot),
                        Err(denied) => {
                            shared.shadowed(&shared.meters, &key, cost, &denied);
                            shared.style.admitted(denied.snapshot())
                        }
                    },
                );
            }
            let start = tokio::time::Instant::now();
            match shared.limiter.acquire_within(&key, cost, max).await {
                Ok(snapshot) => {
                    count_admitted(&shared.meters, start);
                    Ok(shared.style.admitted(&snapshot))
                }
                Err(denied) => {
                    count_denied(&shared.meters, &denied);
                    Err(shared.denied(&denied, key, grpc))
                }
            }
        });
        ResponseFuture::waiting(wait, ready, request)
    }
}

impl<S, K, C, R: Rejector, St: Store<Key> + 'static> RateLimit<S, K, C, R, St> {
    /// A request of tier `tier` (an index into the layer's tiers): decided
    /// at the tier's quota, answered with its fields; otherwise as `call`.
    fn call_in_tier<ReqB, ResB>(
        &mut self,
        request: Request<ReqB>,
        key: Key,
        cost: u64,
        tier: usize,
    ) -> ResponseFuture<S, ReqB, Admitted>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        K: Send + Sync + 'static,
        C: Send + Sync + 'static,
        ReqB: Send + 'static,
    {
        let shared = &*self.shared;
        let Some(limit) = shared.tiers.limits.get(tier) else {
            return ResponseFuture::called(self.inner.call(request), None);
        };
        let refused = match shared.limiter.check_now_quota(&key, &limit.quota, cost) {
            Some(Ok(snapshot)) => {
                limit.meters.admitted();
                let admitted = limit.style.admitted(&snapshot);
                return ResponseFuture::called(self.inner.call(request), Some(admitted));
            }
            Some(Err(denied)) => Some(denied),
            None => None,
        };
        let grpc = is_grpc(&request);
        if let Some(denied) = refused {
            if shared.shadow {
                shared.shadowed(&limit.meters, &key, cost, &denied);
                let admitted = limit.style.admitted(denied.snapshot());
                return ResponseFuture::called(self.inner.call(request), Some(admitted));
            }
            let within = match (shared.max_wait, denied.retry_after()) {
                (Some(max), Some(wait)) => wait <= max,
                _ => false,
            };
            if !within {
                tracing::debug!(%key, cost, tier = %limit.name, "rate limited");
                count_denied(&limit.meters, &denied);
                return ResponseFuture::rejected(shared.denied_in(
                    &limit.style,
                    &denied,
                    key,
                    grpc,
                ));
            }
        }
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        let shared = Arc::clone(&self.shared);
        let max = if shared.shadow {
            Duration::ZERO
        } else {
            shared.max_wait.unwrap_or_default()
        };
        let wait = Box::pin(async move {
            let (quota, style, meters) = match shared.tiers.limits.get(tier) {
                Some(limit) => (limit.quota, &limit.style, &limit.meters),
                None => (*shared.limiter.quota(), &shared.style, &shared.meters),
            };
            let start = tokio::time::Instant::now();
            match shared
                .limiter
                .acquire_within_quota(&key, quota, cost, max)
                .await
            {
                Ok(snapshot) => {
                    count_admitted(meters, start);
                    Ok(style.admitted(&snapshot))
                }
                Err(denied) if shared.shadow => {
                    shared.shadowed(meters, &key, cost, &denied);
                    Ok(style.admitted(denied.snapshot()))
                }
                Err(denied) => {
                    count_denied(meters, &denied);
                    Err(shared.denied_in(style, &denied, key, grpc))
                }
            }
        });
        ResponseFuture::waiting(wait, ready, request)
    }
}

/// An admission after `start`: at once, or after a wait.
fn count_admitted(meters: &Meters, start: tokio::time::Instant) {
    let waited = start.elapsed();
    if waited < Duration::from_millis(1) {
        meters.admitted();
    } else {
        meters.waited(waited);
    }
}

/// A refusal, or a store that failed.
fn count_denied(meters: &Meters, denied: &Denied) {
    match denied.kind() {
        DeniedKind::RateLimited | DeniedKind::CostExceedsBurst => meters.refused(),
        _ => meters.failed(),
    }
}
