//! Rate limiting for the tokio ecosystem: quotas, algorithms and limiters,
//! synchronous and asynchronous, that run on virtual time in tests.
//!
//! This is tollgate's core: no HTTP. The server layer (`tollgate-tower`)
//! and the client middleware (`tollgate-reqwest`) are built on it.
//!
//! # Words
//!
//! - A **quota** is a rate (a count per period) and a **burst** (how many
//!   units may go at once when the limit is full). `"500/min"` admits 500 at
//!   once, then one every 120 ms, the **replenish interval**.
//! - A **cost** is what one call spends: 1 for a request, or a number of
//!   tokens. RPM and TPM are requests and tokens per minute.
//! - **GCRA** (the generic cell rate algorithm) is the default algorithm;
//!   see [`Algorithm`] for the others.
//! - Every decision answers with a [`Snapshot`]: `limit`, `remaining`,
//!   `reset_after` and, on a denial, `retry_after`.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tollgate::{Quota, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let limiter = RateLimiter::new("2/s burst 2".parse()?);
//!
//! // Non-blocking: admit or deny at once.
//! assert_eq!(limiter.check(1)?.remaining(), 1);
//! assert_eq!(limiter.check(1)?.remaining(), 0);
//! let denied = limiter.check(1).unwrap_err();
//! assert_eq!(denied.retry_after(), Some(Duration::from_millis(500)));
//!
//! // Async: wait for the slot (on virtual time here, so it returns at once).
//! let start = tokio::time::Instant::now();
//! limiter.acquire(1).await?;
//! assert_eq!(start.elapsed(), Duration::from_millis(500));
//! # Ok(())
//! # }
//! ```
//!
//! # Time
//!
//! Algorithms never read a clock; limiters read a [`Clock`] and pass the
//! reading on. The [`DefaultClock`] follows Tokio's paused time in
//! `#[tokio::test(start_paused = true)]` and reads the CPU's time-stamp
//! counter in production; [`ManualClock`] serves synchronous tests.

#![cfg_attr(docsrs, feature(doc_auto_cfg))]
#![warn(
    clippy::arithmetic_side_effects,
    clippy::cast_possible_truncation,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#![cfg_attr(
    test,
    allow(
        clippy::arithmetic_side_effects,
        clippy::cast_possible_truncation,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic
    )
)]

mod algorithm;
mod budget;
mod clock;
mod concurrency;
mod error;
pub mod headers;
mod limiter;
#[cfg(feature = "llm")]
pub mod llm;
mod quota;
mod snapshot;

pub use algorithm::Algorithm;
pub use budget::{
    Budget, Grant, KeyedBudget, KeyedBuilder, KeyedLimiter, LimiterKind, Limits, LimitsBuilder,
    LimitsError, LimitsErrorKind, Stats, DEFAULT_MAX_KEYS, MAX_DIMENSIONS,
};
pub use store::{MemoryStore, Store};

pub mod store {
    //! Where every limiter keeps its state: the [`Store`] contract, the
    //! in-memory stores, the pure transitions every store computes, and
    //! (with the `conformance` feature) the suite that checks a store
    //! against the whole contract.
    //!
    //! A store is driven by a limiter, but can be asked directly:
    //!
    //! ```
    //! use std::time::Duration;
    //! use tollgate::store::{Change, Decision, Denial, MemoryStore, SyncStore};
    //! use tollgate::{DefaultClock, Quota};
    //!
    //! let store = MemoryStore::new(1_000, 1, DefaultClock::new());
    //! let limits = [Quota::per_second(2)?];
    //! // Two at once, then a denial that says when to come back.
    //! let two = store.decide_now(&"key", &limits, &[2], Duration::ZERO);
    //! assert!(matches!(two, Decision::Admit(_)));
    //! match store.decide_now(&"key", &limits, &[1], Duration::ZERO) {
    //!     Decision::Deny(Denial::RateLimited { snapshot, .. }) => assert!(snapshot.retry_after().is_some()),
    //!     other => panic!("{other:?}"),
    //! }
    //! // Another key is untouched; what the other side says remains caps it.
    //! store.adjust_now(&"other", &limits, &[Change::AtMost(1)]);
    //! assert_eq!(store.read_now(&"other", &limits).snapshots[0].remaining(), 1);
    //! # Ok::<(), tollgate::QuotaError>(())
    //! ```
    //!
    //! # One engine
    //!
    //! Every limiter is one engine, [`KeyedBudget`](crate::KeyedBudget),
    //! over a store: it asks the store to decide, and keeps in this process
    //! only its queue of waiters (first come, first served; a waiter that
    //! goes away, a refund or a changed limit moves the others) and its
    //! counts of waits. [`KeyedLimiter`](crate::KeyedLimiter) and
    //! [`Budget`](crate::Budget) are its faces of one dimension and of no
    //! key; [`RateLimiter`](crate::RateLimiter) is it over a
    //! [`DirectStore`], a store with no key, lock-free for GCRA and able to
    //! run the other [`Algorithm`](crate::Algorithm)s. A store that answers
    //! at once ([`SyncStore`]: [`MemoryStore`], [`DirectStore`]) also gives
    //! its limiters a synchronous `check` and `acquire_blocking`; any other
    //! (a network store) is awaited.
    //!
    //! # What a store must do
    //!
    //! A store keeps, for every key: each dimension's GCRA state (the TAT,
    //! which also holds the reservations made), the key's own limits (set
    //! with [`Change::Limit`], learnt with [`Change::Observe`]) and its
    //! pause (when it ends, and its extensions added up). It implements
    //! [`Store`] so that:
    //!
    //! - [`Store::decide`] computes [`transition::decide`] over the key's
    //!   TATs and the limits in force, atomically, and writes nothing on a
    //!   denial;
    //! - [`Store::adjust`] applies every [`Change`] as [`transition::apply`],
    //!   [`transition::learn`], [`transition::rescale`] (a limit that
    //!   changes), [`transition::pause`] and [`transition::hold`] do,
    //!   atomically for all of a key's dimensions;
    //! - [`Store::read`] answers the key's limits in force, snapshots and
    //!   pause, writing nothing;
    //! - an entry that is full again (and has no limits of its own) carries
    //!   nothing and may be forgotten;
    //! - it reads its own clock, and no input makes it panic or loop.
    //!
    //! # Checking a store
    //!
    //! With the `conformance` feature, `conformance::run` runs the whole
    //! contract against a store, given a way to make a fresh one. Add to the
    //! store's tests:
    //!
    //! ```toml
    //! [dev-dependencies]
    //! tollgate = { version = "0.1", features = ["conformance"] }
    //! ```
    //!
    //! and call `tollgate::store::conformance::run(|| async { make_store() }).await`
    //! from a `#[tokio::test]`; it panics with the name of the first check
    //! that fails.

    #[cfg(feature = "conformance")]
    pub use crate::budget::conformance;
    pub use crate::budget::transition;
    pub use crate::budget::{
        Admit, Change, Decision, Denial, DirectStore, DirectStoreError, MemoryStore, QueuePlace,
        Store, StoreStats, SyncStore, View, DEFAULT_LIMITS_TTL,
    };
}
pub use clock::{Clock, DefaultClock, FastClock, ManualClock, TokioClock};
pub use concurrency::{
    AdaptiveLimit, AdaptivePermit, Aimd, ConcurrencyError, ConcurrencyLimit, ConcurrencyStats,
    Permit, MAX_PERMITS,
};
pub use error::{Denied, DeniedKind};
pub use limiter::{Builder, RateLimiter};
pub use quota::{Quota, QuotaError, QuotaErrorKind};
pub use snapshot::Snapshot;
