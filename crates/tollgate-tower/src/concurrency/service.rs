//! [`ConcurrencyLimit`], the service a
//! [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer) makes.

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use tollgate::{ConcurrencyLimit as Limit, Permit};
use tower_service::Service;

use super::layer::{KeyedSlots, Shared, Slots};
use super::ResponseFuture;
use crate::key::{no_key, Global, KeyExtractor};
use crate::response::{
    is_grpc, AdmissionGuard, DefaultRejector, Rejection, RejectionKind, Rejector,
};
use crate::Key;

/// A service whose requests in flight are limited by a
/// [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
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

impl<S, K, R> ConcurrencyLimit<S, K, R> {
    pub(super) fn new(inner: S, shared: Arc<Shared<K, R>>) -> Self {
        Self { inner, shared }
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

impl<S: fmt::Debug, K, R> fmt::Debug for ConcurrencyLimit<S, K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The permit a request in flight holds; it is given back when the inner
/// service has answered (or the request is dropped), or, with
/// [`hold_for_body`](super::ConcurrencyBuilder::hold_for_body), when the
/// response's body ends or is dropped.
pub struct InFlight {
    held: Option<(Permit, Option<SlotRef>)>,
    for_body: bool,
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InFlight")
    }
}

impl AdmissionGuard for InFlight {
    fn on_response(self, _: &mut HeaderMap) {}

    fn keep_for_body(&mut self) -> Option<crate::Kept> {
        if !self.for_body {
            return None;
        }
        self.held.take().map(crate::Kept::new)
    }
}

/// A key's semaphore, taken from the map; dropping the last one removes
/// the key's entry.
struct SlotRef {
    key: Key,
    limit: Arc<Limit>,
    slots: Arc<KeyedSlots>,
}

impl Drop for SlotRef {
    fn drop(&mut self) {
        let mut map = self
            .slots
            .map
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Only the map and this reference hold the limit, and no permit is
        // out: nobody else is in flight or waiting for this key.
        let idle =
            Arc::strong_count(&self.limit) == 2 && self.limit.available() == self.slots.limit;
        if idle
            && map
                .get(&self.key)
                .is_some_and(|l| Arc::ptr_eq(l, &self.limit))
        {
            map.remove(&self.key);
        }
    }
}

fn slot(slots: &Arc<KeyedSlots>, key: Key) -> Option<SlotRef> {
    let mut map = slots.map.lock().unwrap_or_else(PoisonError::into_inner);
    let limit = match map.get(&key) {
        Some(limit) => Arc::clone(limit),
        None => {
            // The layer's build checked this limit: it cannot fail here.
            let limit = Arc::new(Limit::new(slots.limit).ok()?);
            map.insert(key.clone(), Arc::clone(&limit));
            limit
        }
    };
    Some(SlotRef {
        key,
        limit,
        slots: Arc::clone(slots),
    })
}

impl<K, R: Rejector> Shared<K, R> {
    pub(super) fn busy(&self, key: Option<Key>, grpc: bool) -> Response<Bytes> {
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

    pub(super) fn reject(&self, rejection: Rejection) -> Response<Bytes> {
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
        let (limit, slot) = match &shared.slots {
            Slots::Global(limit) => (limit.clone(), None),
            Slots::Keyed(keyed) => {
                let key = match shared.keys.read(&shared.key, &request) {
                    Ok(key) => key,
                    Err(error) => {
                        let grpc = is_grpc(&request);
                        return ResponseFuture::rejected(shared.reject(no_key(&error, grpc)));
                    }
                };
                match slot(keyed, key) {
                    Some(slot) => ((*slot.limit).clone(), Some(slot)),
                    None => {
                        let grpc = is_grpc(&request);
                        return ResponseFuture::rejected(shared.busy(None, grpc));
                    }
                }
            }
        };
        let for_body = shared.for_body;
        if let Some(permit) = limit.try_acquire() {
            let hold = InFlight {
                held: Some((permit, slot)),
                for_body,
            };
            return ResponseFuture::called(self.inner.call(request), Some(hold));
        }
        let grpc = is_grpc(&request);
        let key = slot.as_ref().map(|s| s.key.clone());
        let Some(max_wait) = shared.max_wait else {
            tracing::debug!(key = ?key, "too many requests in flight");
            return ResponseFuture::rejected(shared.busy(key, grpc));
        };
        let ready = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, ready);
        let shared = Arc::clone(&self.shared);
        let wait = Box::pin(async move {
            match limit.acquire_within(max_wait).await {
                Ok(permit) => Ok(InFlight {
                    held: Some((permit, slot)),
                    for_body,
                }),
                Err(_) => {
                    tracing::debug!(key = ?key, "no permit came free in time");
                    drop(slot);
                    Err(shared.busy(key, grpc))
                }
            }
        });
        ResponseFuture::waiting(wait, ready, request)
    }
}
