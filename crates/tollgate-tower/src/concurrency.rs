//! The concurrency-limit layer: at most N requests in flight, globally or
//! per key.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::key::{Global, KeyExtractor};
use crate::layer::{no_key, KeyRules, MissingKey};
use crate::response::{
    is_grpc, DefaultRejector, Hold, RejectFn, Rejection, RejectionKind, Rejector,
};
use crate::{ConfigError, Key};

/// Limits how many requests are in flight at once: globally, or per key
/// (per client IP, per API key).
///
/// A request takes a permit when the service is called, and its response
/// future holds it until the inner service has answered: an idle
/// keep-alive connection holds none. Over the limit, a request is rejected
/// at once (503 Service Unavailable for a global limit, 429 Too Many
/// Requests for a per-key one; RESOURCE_EXHAUSTED for gRPC) or, in wait
/// mode, waits in line for a permit up to a bound. Permits are handed out
/// first come, first served.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use tollgate_tower::{ConcurrencyLimitLayer, PeerIp};
///
/// # fn app() -> Result<Router, tollgate_tower::ConfigError> {
/// let app = Router::new()
///     .route("/render", get(|| async { "done" }))
///     // At most 64 renders at once; a request waits up to 2 s for its turn.
///     .layer(ConcurrencyLimitLayer::builder(64).wait_up_to(Duration::from_secs(2)).build()?)
///     // At most 4 of them from any one client.
///     .layer(ConcurrencyLimitLayer::builder(4).key(PeerIp::new()).build()?);
/// # Ok(app)
/// # }
/// ```
pub struct ConcurrencyLimitLayer<K = Global, R = DefaultRejector> {
    shared: Arc<Shared<K, R>>,
}

struct Shared<K, R> {
    limit: usize,
    slots: Slots,
    key: K,
    rejector: R,
    max_wait: Option<Duration>,
    keys: KeyRules,
}

enum Slots {
    Global(Arc<Semaphore>),
    Keyed(Arc<KeyedSlots>),
}

struct KeyedSlots {
    limit: usize,
    /// One semaphore per key with requests in flight or waiting; a key's
    /// entry goes when its last permit or waiter does, so the map holds no
    /// more keys than there are requests in the server.
    map: Mutex<HashMap<Key, Arc<Semaphore>>>,
}

impl<K, R> Clone for ConcurrencyLimitLayer<K, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<K, R> fmt::Debug for ConcurrencyLimitLayer<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("limit", &self.shared.limit)
            .field("per_key", &matches!(self.shared.slots, Slots::Keyed(_)))
            .field("max_wait", &self.shared.max_wait)
            .finish()
    }
}

impl ConcurrencyLimitLayer {
    /// At most `limit` requests in flight in all, rejecting the rest.
    pub fn new(limit: usize) -> Result<Self, ConfigError> {
        Self::builder(limit).build()
    }

    /// A layer configured step by step.
    pub fn builder(limit: usize) -> ConcurrencyBuilder {
        ConcurrencyBuilder {
            limit,
            key: Global,
            keyed: false,
            rejector: DefaultRejector,
            max_wait: None,
            keys: KeyRules::default(),
        }
    }
}

impl<K, R> ConcurrencyLimitLayer<K, R> {
    /// How many requests are in flight now (for a per-key limit, in all).
    pub fn in_flight(&self) -> usize {
        match &self.shared.slots {
            Slots::Global(semaphore) => self
                .shared
                .limit
                .saturating_sub(semaphore.available_permits()),
            Slots::Keyed(keyed) => {
                let map = keyed.map.lock().unwrap_or_else(PoisonError::into_inner);
                map.values()
                    .map(|s| keyed.limit.saturating_sub(s.available_permits()))
                    .sum()
            }
        }
    }
}

/// Configures a [`ConcurrencyLimitLayer`].
pub struct ConcurrencyBuilder<K = Global, R = DefaultRejector> {
    limit: usize,
    key: K,
    keyed: bool,
    rejector: R,
    max_wait: Option<Duration>,
    keys: KeyRules,
}

impl<K, R> fmt::Debug for ConcurrencyBuilder<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyBuilder")
            .field("limit", &self.limit)
            .field("per_key", &self.keyed)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl<K, R> ConcurrencyBuilder<K, R> {
    /// Limits each key apart: at most `limit` requests in flight per key.
    pub fn key<K2>(self, key: K2) -> ConcurrencyBuilder<K2, R> {
        ConcurrencyBuilder {
            limit: self.limit,
            key,
            keyed: true,
            rejector: self.rejector,
            max_wait: self.max_wait,
            keys: self.keys,
        }
    }

    /// Answers rejections with a closure.
    pub fn reject_with<F>(self, f: F) -> ConcurrencyBuilder<K, RejectFn<F>>
    where
        F: Fn(&Rejection) -> Response<Bytes> + Send + Sync + 'static,
    {
        ConcurrencyBuilder {
            limit: self.limit,
            key: self.key,
            keyed: self.keyed,
            rejector: RejectFn(f),
            max_wait: self.max_wait,
            keys: self.keys,
        }
    }

    /// Wait mode: a request waits up to `max_wait` for a permit, in line.
    #[must_use]
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// What to do with a request that has no key (default: reject it).
    #[must_use]
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.keys.missing = missing;
        self
    }

    /// The longest key accepted, in bytes (default
    /// [`DEFAULT_MAX_KEY_LEN`](crate::DEFAULT_MAX_KEY_LEN)).
    #[must_use]
    pub fn max_key_len(mut self, bytes: usize) -> Self {
        self.keys.max_len = bytes;
        self
    }

    /// The layer, or what is wrong with its configuration.
    pub fn build(self) -> Result<ConcurrencyLimitLayer<K, R>, ConfigError> {
        if self.limit == 0 || self.limit > Semaphore::MAX_PERMITS {
            return Err(ConfigError::new(format!(
                "a concurrency limit is 1 to {} requests, not {}",
                Semaphore::MAX_PERMITS,
                self.limit
            )));
        }
        let slots = if self.keyed {
            Slots::Keyed(Arc::new(KeyedSlots {
                limit: self.limit,
                map: Mutex::new(HashMap::new()),
            }))
        } else {
            Slots::Global(Arc::new(Semaphore::new(self.limit)))
        };
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                limit: self.limit,
                slots,
                key: self.key,
                rejector: self.rejector,
                max_wait: self.max_wait,
                keys: self.keys,
            }),
        })
    }
}

impl<S, K, R> Layer<S> for ConcurrencyLimitLayer<K, R> {
    type Service = ConcurrencyLimit<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A service whose requests in flight are limited by a
/// [`ConcurrencyLimitLayer`].
pub struct ConcurrencyLimit<S, K = Global, R = DefaultRejector> {
    inner: S,
    shared: Arc<Shared<K, R>>,
}

impl<S: Clone, K, R> Clone for ConcurrencyLimit<S, K, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, K, R> fmt::Debug for ConcurrencyLimit<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The permit a request in flight holds; it is given back when the inner
/// service has answered (or the request is dropped).
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    _slot: Option<SlotRef>,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlight")
    }
}

impl Hold for InFlight {
    fn finish(self, _: &mut HeaderMap) {}
}

/// A key's semaphore, taken from the map; dropping the last one removes
/// the key's entry.
struct SlotRef {
    key: Key,
    semaphore: Arc<Semaphore>,
    slots: Arc<KeyedSlots>,
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        let mut map = self
            .slots
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map and this reference hold the semaphore, and no permit
        // is out: nobody else is in flight or waiting for this key.
        let idle = Arc::strong_count(&self.semaphore) == 2
            && self.semaphore.available_permits() == self.slots.limit;
        if idle
            && map
                .get(&self.key)
                .is_some_and(|s| Arc::ptr_eq(s, &self.semaphore))
        {
            map.remove(&self.key);
        }
    }
}

impl KeyedSlots {
    fn slot(self: &Arc<Self>, key: Key) -> SlotRef {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        let semaphore = Arc::clone(
            map.entry(key.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limit))),
        );
        SlotRef {
            key,
            semaphore,
            slots: Arc::clone(self),
        }
    }
}

impl<K, R: Rejector> Shared<K, R> {
    fn busy(&self, key: Option<Key>, grpc: bool) -> Response<Bytes> {
        let (status, message) = if key.is_some() {
            (
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests in flight from this client",
            )
        } else {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "the server has too many requests in flight",
            )
        };
        let mut rejection =
            Rejection::new(RejectionKind::TooManyInFlight, status, message).grpc(grpc);
        if let Some(key) = key {
            rejection = rejection.key(key);
        }
        self.reject(rejection)
    }

    fn reject(&self, rejection: Rejection) -> Response<Bytes> {
        let mut response = self.rejector.reject(&rejection);
        response.extensions_mut().insert(rejection);
        response
    }
}

impl<S, K, R, ReqB, ResB> Service<Request<ReqB>> for ConcurrencyLimit<S, K, R>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    K: KeyExtractor<ReqB>,
    R: Rejector,
    ReqB: Send + 'static,
{
    type Response = Response<crate::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, InFlight>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &*self.shared;
        let grpc = is_grpc(&request);
        let (semaphore, slot) = match &shared.slots {
            Slots::Global(semaphore) => (Arc::clone(semaphore), None),
            Slots::Keyed(keyed) => {
                let key = match shared.keys.read(&shared.key, &request) {
                    Ok(key) => key,
                    Err(error) => {
                        return ResponseFuture::rejected(shared.reject(no_key(&error, grpc)))
                    }
                };
                let slot = keyed.slot(key);
                (Arc::clone(&slot.semaphore), Some(slot))
            }
        };
        if let Ok(permit) = Arc::clone(&semaphore).try_acquire_owned() {
            let hold = InFlight {
                _permit: permit,
                _slot: slot,
            };
            return ResponseFuture::called(self.inner.call(request), hold);
        }
        let key = slot.as_ref().map(|s| s.key.clone());
        let Some(max_wait) = shared.max_wait else {
            tracing::debug!(key = ?key, "too many requests in flight");
            return ResponseFuture::rejected(shared.busy(key, grpc));
        };
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        let shared = Arc::clone(&self.shared);
        let wait = Box::pin(async move {
            match tokio::time::timeout(max_wait, semaphore.acquire_owned()).await {
                Ok(Ok(permit)) => Ok(InFlight {
                    _permit: permit,
                    _slot: slot,
                }),
                // Timed out (a semaphore of this layer is never closed).
                Ok(Err(_)) | Err(_) => {
                    tracing::debug!(key = ?key, "no permit came free in time");
                    drop(slot);
                    Err(shared.busy(key, grpc))
                }
            }
        });
        ResponseFuture::waiting(wait, ready, request)
    }
}
