//! The store's metrics, through the `metrics` facade (feature `metrics`;
//! without it every method here is empty).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tollgate_store_call_seconds` | histogram | `store`, `prefix`, `op` | each call to Redis (`decide`, `adjust`, `read`), failed ones included |
//! | `tollgate_store_failures_total` | counter | `store`, `prefix`, `kind` | calls that failed: `timeout`, `open` (the circuit is open), `redis`, `reply`, ... |
//! | `tollgate_store_circuit_open` | gauge | `store`, `prefix` | 1 while the circuit is open (Redis is not asked), else 0 |
//! | `tollgate_store_fallback_decisions_total` | counter | `store`, `prefix` | decisions made in this process while Redis failed (fail open) |
//! | `tollgate_store_failed_closed_total` | counter | `store`, `prefix` | calls refused because Redis failed (fail closed) |
//! | `tollgate_store_stricter_quota_total` | counter | `store`, `prefix` | decisions made with a stricter quota another process passed for the key |
//! | `tollgate_store_fleet` | gauge | `store`, `prefix` | processes sharing the store, as last counted |
//!
//! `store` is `redis`; `prefix` the store's key prefix. The handles are
//! registered when the store connects, with the recorder installed then.

#[cfg(feature = "metrics")]
use metrics::{Counter, Gauge, Histogram};

use crate::StoreErrorKind;

/// The handles of one store.
pub(crate) struct Meters {
    #[cfg(feature = "metrics")]
    calls: [Histogram; 3],
    #[cfg(feature = "metrics")]
    prefix: String,
    #[cfg(feature = "metrics")]
    open: Gauge,
    #[cfg(feature = "metrics")]
    fallbacks: Counter,
    #[cfg(feature = "metrics")]
    failed_closed: Counter,
    #[cfg(feature = "metrics")]
    stricter: Counter,
    #[cfg(feature = "metrics")]
    fleet: Gauge,
}

/// A call's kind, as the `op` label names it.
#[derive(Clone, Copy)]
pub(crate) enum Op {
    Decide = 0,
    Adjust = 1,
    Read = 2,
}

impl Meters {
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn new(prefix: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            let labels = || [("store", "redis".to_owned()), ("prefix", prefix.to_owned())];
            let call = |op: &'static str| {
                let mut labels = labels().to_vec();
                labels.push(("op", op.to_owned()));
                metrics::histogram!("tollgate_store_call_seconds", &labels)
            };
            Self {
                calls: [call("decide"), call("adjust"), call("read")],
                prefix: prefix.to_owned(),
                open: metrics::gauge!("tollgate_store_circuit_open", &labels()),
                fallbacks: metrics::counter!("tollgate_store_fallback_decisions_total", &labels()),
                failed_closed: metrics::counter!("tollgate_store_failed_closed_total", &labels()),
                stricter: metrics::counter!("tollgate_store_stricter_quota_total", &labels()),
                fleet: metrics::gauge!("tollgate_store_fleet", &labels()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    #[cfg(feature = "metrics")]
    pub(crate) fn call(&self, op: Op, took: std::time::Duration) {
        self.calls[op as usize].record(took.as_secs_f64());
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn failure(&self, kind: StoreErrorKind) {
        #[cfg(feature = "metrics")]
        {
            let kind = match kind {
                StoreErrorKind::Config => "config",
                StoreErrorKind::Timeout => "timeout",
                StoreErrorKind::Open => "open",
                StoreErrorKind::Redis => "redis",
                StoreErrorKind::Reply => "reply",
                StoreErrorKind::Auth => "auth",
                StoreErrorKind::NotRedis => "not_redis",
            };
            metrics::counter!(
                "tollgate_store_failures_total",
                "store" => "redis",
                "prefix" => self.prefix.clone(),
                "kind" => kind
            )
            .increment(1);
        }
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn circuit_open(&self, open: bool) {
        #[cfg(feature = "metrics")]
        self.open.set(if open { 1.0 } else { 0.0 });
    }

    pub(crate) fn fallback(&self) {
        #[cfg(feature = "metrics")]
        self.fallbacks.increment(1);
    }

    pub(crate) fn failed_closed(&self) {
        #[cfg(feature = "metrics")]
        self.failed_closed.increment(1);
    }

    pub(crate) fn stricter(&self) {
        #[cfg(feature = "metrics")]
        self.stricter.increment(1);
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn fleet(&self, processes: u32) {
        #[cfg(feature = "metrics")]
        self.fleet.set(f64::from(processes));
    }
}
