//! [`ConcurrencyLimitLayer`] and its builder.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use tollgate::ConcurrencyLimit;
use tower_layer::Layer;

use super::service::ConcurrencyLimit as ConcurrencyLimitService;
use crate::key::{Global, KeyRules, MissingKey};
use crate::response::{DefaultRejector, RejectFn, Rejection};
use crate::{ConfigError, ConfigErrorKind, Key};

/// Limits how many requests are in flight at once, globally or per key:
/// see the [module](super) for the guide.
pub struct ConcurrencyLimitLayer<K = Global, R = DefaultRejector> {
    shared: Arc<Shared<K, R>>,
}

pub(super) struct Shared<K, R> {
    pub(super) limit: usize,
    pub(super) slots: Slots,
    pub(super) key: K,
    pub(super) rejector: R,
    pub(super) max_wait: Option<Duration>,
    pub(super) keys: KeyRules,
    /// Whether a permit is held until the response's body ends.
    pub(super) for_body: bool,
}

pub(super) enum Slots {
    Global(ConcurrencyLimit),
    Keyed(Arc<KeyedSlots>),
}

pub(super) struct KeyedSlots {
    pub(super) limit: usize,
    /// One limit per key with requests in flight or waiting; a key's entry
    /// goes when its last permit or waiter does, so the map holds no more
    /// keys than there are requests in the server.
    pub(super) map: Mutex<HashMap<Key, Arc<ConcurrencyLimit>>>,
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
            for_body: false,
        }
    }
}

impl<K, R> ConcurrencyLimitLayer<K, R> {
    /// How many requests are in flight now (for a per-key limit, in all).
    pub fn in_flight(&self) -> usize {
        match &self.shared.slots {
            Slots::Global(limit) => self.shared.limit.saturating_sub(limit.available()),
            Slots::Keyed(keyed) => {
                let map = keyed.map.lock().unwrap_or_else(PoisonError::into_inner);
                map.values()
                    .map(|l| keyed.limit.saturating_sub(l.available()))
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
    for_body: bool,
}

impl<K, R> fmt::Debug for ConcurrencyBuilder<K, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyBuilder")
            .field("limit", &self.limit)
            .field("per_key", &self.keyed)
            .field("max_wait", &self.max_wait)
            .field("hold_for_body", &self.for_body)
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
            for_body: self.for_body,
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
            for_body: self.for_body,
        }
    }

    /// Wait mode: a request waits up to `max_wait` for a permit, in line.
    #[must_use]
    pub fn wait_up_to(mut self, max_wait: Duration) -> Self {
        self.max_wait = Some(max_wait);
        self
    }

    /// Holds each request's permit until its response's body ends or is
    /// dropped, not only until the inner service answers (its headers):
    /// a long stream (server-sent events, a download) counts as in flight
    /// while it streams (default: off).
    ///
    /// Behind axum's `Router::layer` the body is boxed anyway; a response
    /// turned back into `axum::body::Body` with `Body::from` keeps the
    /// permit with it.
    #[must_use]
    pub fn hold_for_body(mut self, on: bool) -> Self {
        self.for_body = on;
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
        self.keys.check()?;
        // The core's limit checks the bounds; each key's is made alike.
        let global = ConcurrencyLimit::new(self.limit)
            .map_err(|e| ConfigError::with_kind(ConfigErrorKind::Limit, e.to_string()))?;
        let slots = if self.keyed {
            Slots::Keyed(Arc::new(KeyedSlots {
                limit: self.limit,
                map: Mutex::new(HashMap::new()),
            }))
        } else {
            Slots::Global(global)
        };
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(Shared {
                limit: self.limit,
                slots,
                key: self.key,
                rejector: self.rejector,
                max_wait: self.max_wait,
                keys: self.keys,
                for_body: self.for_body,
            }),
        })
    }
}

impl<S, K, R> Layer<S> for ConcurrencyLimitLayer<K, R> {
    type Service = ConcurrencyLimitService<S, K, R>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimitService::new(inner, Arc::clone(&self.shared))
    }
}
