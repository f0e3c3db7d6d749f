//! The direct limiter: one limit shared by every thread and task that holds
//! it. It is the engine of every limiter (a [`KeyedBudget`]) over a store
//! with no key, the [`DirectStore`].

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{DirectStore, Grant, KeyedBudget, Limits, Stats};
use crate::snapshot::duration_to_nanos;
use crate::store::{Denial, SyncStore};
use crate::{Algorithm, Clock, DefaultClock, Denied, Quota, Snapshot};

/// One rate limit, shared by reference (put it in an
/// [`Arc`](std::sync::Arc) to share it between tasks).
///
/// - [`check`](Self::check) admits or denies at once, without waiting (for
///   GCRA, without a lock);
/// - [`acquire`](Self::acquire) reserves the next free slot and sleeps until
///   it is due: waiters are served in the order they arrive, with no polling
///   and no burst at start-up beyond the quota's burst; a waiter that goes
///   away, or a reservation settled lower, moves the waiters behind it up;
/// - [`acquire_within`](Self::acquire_within) does the same but fails at
///   once when the slot is further away than a maximum wait;
/// - [`acquire_blocking`](Self::acquire_blocking) is the synchronous twin;
/// - [`settle`](Self::settle), [`observe`](Self::observe),
///   [`pause_for`](Self::pause_for) and [`set_quota`](Self::set_quota) are
///   those of every limiter ([`KeyedBudget`] documents them), and
///   [`stats`](Self::stats) counts.
///
/// Every cost is in units of the quota: 1 for a request, or a number of
/// tokens. A cost larger than the burst can never be admitted and is an
/// immediate error; a cost of 0 reads the limit without spending.
///
/// ```
/// use tollgate::{Quota, RateLimiter};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RateLimiter::new(Quota::per_second(10)?.burst(1)?);
/// let start = tokio::time::Instant::now();
/// for _ in 0..3 {
///     limiter.acquire(1).await?;
/// }
/// // The first at once, then one every 100 ms.
/// assert_eq!(start.elapsed().as_millis(), 200);
/// # Ok(())
/// # }
/// ```
pub struct RateLimiter<C: Clock = DefaultClock> {
    inner: KeyedBudget<(), DirectStore<C>>,
}

impl RateLimiter {
    /// A GCRA limiter on the [`DefaultClock`].
    pub fn new(quota: Quota) -> Self {
        Self::builder(quota).build()
    }

    /// A builder, to choose the algorithm or the clock.
    ///
    /// ```
    /// use tollgate::{Algorithm, ManualClock, Quota, RateLimiter};
    ///
    /// let limiter = RateLimiter::builder("4/2s".parse()?)
    ///     .algorithm(Algorithm::LeakyBucket)
    ///     .clock(ManualClock::new())
    ///     .build();
    /// assert_eq!(limiter.quota().burst_size(), 4);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn builder(quota: Quota) -> Builder {
        Builder {
            quota,
            algorithm: Algorithm::default(),
            clock: DefaultClock::new(),
            counted: false,
        }
    }
}

/// Builds a [`RateLimiter`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder<C = DefaultClock> {
    quota: Quota,
    algorithm: Algorithm,
    clock: C,
    counted: bool,
}

impl<C: Clock> Builder<C> {
    /// The algorithm (default: [`Algorithm::Gcra`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The clock (default: the [`DefaultClock`]).
    pub fn clock<D: Clock>(self, clock: D) -> Builder<D> {
        Builder {
            quota: self.quota,
            algorithm: self.algorithm,
            clock,
            counted: self.counted,
        }
    }

    /// Whether [`stats`](RateLimiter::stats) counts admissions and denials
    /// (default: no). Counting costs every `check` a few nanoseconds (a
    /// thread-local read and a store to a line of the thread's own), which
    /// the default spares the hottest path; waits and pauses are counted
    /// either way.
    pub fn counted(mut self, counted: bool) -> Self {
        self.counted = counted;
        self
    }

    /// The limiter, full: its whole burst is available.
    pub fn build(self) -> RateLimiter<C> {
        let store = DirectStore::new(self.quota, self.algorithm, self.clock);
        let store = if self.counted { store.counted() } else { store };
        RateLimiter {
            inner: KeyedBudget::with_store(Limits::single(self.quota), store),
        }
    }
}

impl<C: Clock> RateLimiter<C> {
    /// Admits `cost` now, or denies it without waiting.
    ///
    /// A denial carries [`retry_after`](Denied::retry_after): how long until
    /// the same cost fits, if nothing else is admitted meanwhile.
    #[inline(always)]
    pub fn check(&self, cost: u64) -> Result<Snapshot, Denied> {
        let result = self
            .inner
            .store()
            .check(cost)
            .map_err(|why| refused(cost, why));
        self.inner.count(&result, Duration::ZERO);
        result
    }

    /// Waits until `cost` is admitted.
    ///
    /// The slot is reserved on the first poll, so concurrent callers are
    /// served in that order; dropping the future before it completes gives
    /// the slot back and moves the waiters behind it up. It fails only for
    /// a cost larger than the burst, or when it must wait outside a Tokio
    /// runtime.
    pub fn acquire(&self, cost: u64) -> impl Future<Output = Result<Snapshot, Denied>> + Send + '_ {
        self.acquire_within(cost, Duration::MAX)
    }

    /// Like [`acquire`](Self::acquire), but fails at once, reserving
    /// nothing, when the slot is more than `max_wait` away. The error's
    /// [`retry_after`](Denied::retry_after) says how far away it was.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tollgate::{DeniedKind, Quota, RateLimiter};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limiter = RateLimiter::new(Quota::per_second(1)?);
    /// limiter.acquire(1).await?;
    /// let late = limiter.acquire_within(1, Duration::from_millis(300)).await.unwrap_err();
    /// assert_eq!(late.kind(), DeniedKind::RateLimited);
    /// assert_eq!(late.retry_after(), Some(Duration::from_secs(1)));
    /// # Ok(())
    /// # }
    /// ```
    // Not an `async fn`: the signature promises `Send`.
    #[allow(clippy::manual_async_fn)]
    pub fn acquire_within(
        &self,
        cost: u64,
        max_wait: Duration,
    ) -> impl Future<Output = Result<Snapshot, Denied>> + Send + '_ {
        async move {
            // Admitted at once: no reservation to keep, no queue to join.
            if let Some(snapshot) = self.inner.store().admit_now(cost) {
                return Ok(snapshot);
            }
            let grant = self.inner.acquire_within(&(), &[cost], max_wait).await?;
            Ok(*grant.snapshot())
        }
    }

    /// Blocks the calling thread until `cost` is admitted: the synchronous
    /// twin of [`acquire`](Self::acquire), in the same queue. It waits on
    /// the limiter's clock: a [`ManualClock`](crate::ManualClock) moves to
    /// the slot instead of sleeping.
    ///
    /// Do not call it on an async runtime's thread; await
    /// [`acquire`](Self::acquire) there.
    pub fn acquire_blocking(&self, cost: u64) -> Result<Snapshot, Denied> {
        let grant = self.inner.acquire_blocking(&(), &[cost])?;
        Ok(*grant.snapshot())
    }

    /// Settles a cost admitted earlier with what was really used: what was
    /// reserved beyond it is refunded (and the waiters behind move up),
    /// what was used beyond it is charged (later callers wait for it). A
    /// window cannot tell which of its slots held the cost, so it charges
    /// but refunds nothing.
    pub async fn settle(&self, reserved: u64, used: u64) -> Result<(), Denied> {
        let step = match self.algorithm() {
            Algorithm::FixedWindow | Algorithm::SlidingWindow => 0,
            _ => duration_to_nanos(self.current_quota().replenish_interval()),
        };
        let grant = Grant::new(&[reserved], &[step], self.snapshot());
        self.inner.settle(&(), grant, &[used]).await
    }

    /// Pulls the limit toward what the other side reports (its response
    /// headers, say): it never grants more than `snapshot.remaining()`
    /// until it has refilled, and a stated `limit` other than the burst in
    /// force becomes this limiter's own (that count over the same period).
    pub async fn observe(&self, snapshot: &Snapshot) -> Result<(), Denied> {
        self.inner.observe(&(), 0, snapshot).await
    }

    /// Holds every caller for `hold`: those waiting now and those that come
    /// meanwhile; then they leave one by one at the quota's rate. Pauses
    /// that overlap take the longest, never the sum. For a 429's
    /// `Retry-After`.
    pub async fn pause_for(&self, hold: Duration) -> Result<(), Denied> {
        self.inner.pause_for(&(), hold).await
    }

    /// [`pause_for`](Self::pause_for) until `until` (on Tokio's clock).
    pub async fn pause_until(&self, until: Instant) -> Result<(), Denied> {
        self.inner.pause_until(&(), until).await
    }

    /// How long the limiter stays paused from now (zero when it is not).
    pub fn paused_for(&self) -> Duration {
        SyncStore::<()>::read_now(self.inner.store(), &(), &[*self.quota()]).paused_for
    }

    /// Gives the limiter a quota in place of the one it was built with:
    /// what is spent stays spent, counted in units, and the waiters are
    /// re-spaced at the new rate.
    pub async fn set_quota(&self, quota: Quota) -> Result<(), Denied> {
        self.inner.set_limits(&(), &Limits::single(quota)).await
    }

    /// The quota the limiter was built with, in force again.
    pub async fn clear_quota(&self) -> Result<(), Denied> {
        self.inner.clear_limits(&()).await
    }

    /// The quota in force: the one set or learnt, or the one it was built
    /// with.
    pub fn current_quota(&self) -> Quota {
        let view = SyncStore::<()>::read_now(self.inner.store(), &(), &[*self.quota()]);
        view.limits.first().copied().unwrap_or(*self.quota())
    }

    /// The limit now, spending nothing (the same as `check(0)`).
    pub fn snapshot(&self) -> Snapshot {
        self.inner.store().snapshot_now()
    }

    /// The quota this limiter was built with.
    pub fn quota(&self) -> &Quota {
        self.inner.store().quota()
    }

    /// The algorithm this limiter runs.
    pub fn algorithm(&self) -> Algorithm {
        self.inner.store().algorithm()
    }

    /// The clock this limiter reads.
    pub fn clock(&self) -> &C {
        self.inner.store().clock()
    }

    /// How many acquires are waiting for their slot.
    pub fn waiting(&self) -> usize {
        self.inner.waiting()
    }

    /// What the limiter counts: waits and pauses, and admissions and
    /// denials when it was built [`counted`](Builder::counted) (else 0).
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// The engine underneath: a [`KeyedBudget`] with the key `()`.
    pub fn as_budget(&self) -> &KeyedBudget<(), DirectStore<C>> {
        &self.inner
    }

    /// Counts its decisions under `policy` (feature `metrics`); see
    /// [`KeyedBudget::metrics`].
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn metrics(self, policy: &str) -> Self {
        Self {
            inner: self.inner.metrics(policy),
        }
    }
}

/// A refusal of `check` as the error: one dimension, nothing to name.
#[inline(always)]
fn refused(cost: u64, denial: Denial) -> Denied {
    Denied::new(denial.kind(), cost, *denial.snapshot())
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", self.quota())
            .field("algorithm", &self.algorithm())
            .field("snapshot", &self.snapshot())
            .field("waiting", &self.waiting())
            .finish()
    }
}
