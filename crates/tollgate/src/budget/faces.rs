//! The two common shapes of a [`KeyedBudget`]: one quota per key, and one
//! budget with no key.

use std::fmt;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

use super::keyed::{Grant, KeyedBudget, KeyedBuilder, LimiterKind, Stats};
use super::limits::Limits;
use super::memory::MemoryStore;
use super::store::{Denial, Store, SyncStore};
use crate::{Clock, Denied, Quota, Snapshot};

/// One quota per key (an IP address, an API key, a user id), with memory
/// bounded by construction: see [`MemoryStore`] for the cap and eviction.
///
/// A key may carry its own quota ([`set_quota`](Self::set_quota)). Keys need
/// `Hash + Eq + Clone`; they are not stored, only a keyed 64-bit
/// fingerprint of each.
///
/// ```
/// use std::net::IpAddr;
/// use tollgate::{KeyedLimiter, Quota};
///
/// let limiter = KeyedLimiter::new(Quota::per_second(2)?);
/// let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse()?, "192.0.2.2".parse()?);
/// assert!(limiter.check(&a, 1).is_ok());
/// assert!(limiter.check(&a, 1).is_ok());
/// assert!(limiter.check(&a, 1).is_err());
/// // Another key has its own quota.
/// assert_eq!(limiter.check(&b, 1)?.remaining(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct KeyedLimiter<K, S = MemoryStore> {
    inner: KeyedBudget<K, S>,
}

impl<K> KeyedLimiter<K, MemoryStore> {
    /// A limiter over the in-memory store, with the default cap of keys.
    pub fn new(quota: Quota) -> Self {
        Self::builder(quota).build()
    }

    /// A builder, to set the cap of keys or the clock.
    pub fn builder(quota: Quota) -> KeyedBuilder<Self> {
        KeyedBuilder::new(Limits::single(quota))
    }
}

impl<K> LimiterKind for KeyedLimiter<K, MemoryStore> {
    type Key = K;
    type Output<C: Clock> = KeyedLimiter<K, MemoryStore<C>>;
    fn wrap<C: Clock>(inner: KeyedBudget<K, MemoryStore<C>>) -> Self::Output<C> {
        KeyedLimiter { inner }
    }
}

impl<K, S> KeyedLimiter<K, S> {
    /// A limiter over `store`.
    pub fn with_store(quota: Quota, store: S) -> Self {
        Self {
            inner: KeyedBudget::with_store(Limits::single(quota), store),
        }
    }

    /// The quota every key has unless it carries its own.
    pub fn quota(&self) -> &Quota {
        self.inner.limits().quota(0)
    }

    /// The budget underneath.
    pub fn as_budget(&self) -> &KeyedBudget<K, S> {
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

impl<K: Hash + Eq + Clone, S: SyncStore<K>> KeyedLimiter<K, S> {
    /// Admits `cost` for `key` now, or denies it without spending.
    #[inline]
    pub fn check(&self, key: &K, cost: u64) -> Result<Snapshot, Denied> {
        self.inner.check_snapshot(key, &[cost])
    }

    /// Blocks the calling thread until `cost` is admitted for `key`; see
    /// [`KeyedBudget::acquire_blocking`].
    pub fn acquire_blocking(&self, key: &K, cost: u64) -> Result<Snapshot, Denied> {
        let grant = self.inner.acquire_blocking(key, &[cost])?;
        Ok(*grant.snapshot())
    }
}

impl<K, S> KeyedLimiter<K, S>
where
    K: Hash + Eq + Clone + Send + Sync,
    S: Store<K>,
{
    /// Gives `key` its own quota (a customer's tier, say), in the store,
    /// kept until cleared.
    pub async fn set_quota(&self, key: &K, quota: Quota) -> Result<(), Denied> {
        self.inner.set_limits(key, &Limits::single(quota)).await
    }

    /// Gives `key` the default quota again.
    pub async fn clear_quota(&self, key: &K) -> Result<(), Denied> {
        self.inner.clear_limits(key).await
    }

    /// The quota in force for `key`: its own (set or learnt) or the
    /// default.
    pub async fn quota_for(&self, key: &K) -> Result<Quota, Denied> {
        Ok(*self.inner.limits_for(key).await?.quota(0))
    }

    /// How long `key` stays paused from now (zero when it is not).
    pub async fn paused_for(&self, key: &K) -> Result<Duration, Denied> {
        self.inner.paused_for(key).await
    }

    /// Waits until `cost` is admitted for `key`; see
    /// [`KeyedBudget::acquire`].
    pub async fn acquire(&self, key: &K, cost: u64) -> Result<Snapshot, Denied> {
        let grant = self.inner.acquire(key, &[cost]).await?;
        Ok(*grant.snapshot())
    }

    /// Waits at most `max_wait`; see [`KeyedBudget::acquire_within`].
    pub async fn acquire_within(
        &self,
        key: &K,
        cost: u64,
        max_wait: Duration,
    ) -> Result<Snapshot, Denied> {
        let grant = self.inner.acquire_within(key, &[cost], max_wait).await?;
        Ok(*grant.snapshot())
    }

    /// [`acquire_within`](Self::acquire_within) at `quota` instead of the
    /// default, for this call only (a request's tier, say). The key's
    /// state is one whatever quota a call passes: it keeps the share of
    /// its burst it has spent (the time its limit needs to be full again),
    /// which refills at the quota of each call.
    pub async fn acquire_within_quota(
        &self,
        key: &K,
        quota: Quota,
        cost: u64,
        max_wait: Duration,
    ) -> Result<Snapshot, Denied> {
        let limits = Limits::single(quota);
        let grant = self
            .inner
            .acquire_within_limits(key, &limits, &[cost], max_wait)
            .await?;
        Ok(*grant.snapshot())
    }

    /// Admits now or denies, for any store.
    pub async fn try_acquire(&self, key: &K, cost: u64) -> Result<Snapshot, Denied> {
        let grant = self.inner.try_acquire(key, &[cost]).await?;
        Ok(*grant.snapshot())
    }

    /// Settles a cost admitted earlier for `key` with what was really used:
    /// what was reserved beyond it is refunded (and the waiters behind
    /// move up), what was used beyond it is charged; see
    /// [`KeyedBudget::settle`].
    pub async fn settle(&self, key: &K, reserved: u64, used: u64) -> Result<(), Denied> {
        let quota = self.quota_for(key).await?;
        let step = crate::snapshot::duration_to_nanos(quota.replenish_interval());
        let grant = Grant::new(&[reserved], &[step], Snapshot::from_count(0, 0, 0));
        self.inner.settle(key, grant, &[used]).await
    }

    /// Pulls `key`'s state toward what the other side reports; see
    /// [`KeyedBudget::observe`].
    pub async fn observe(&self, key: &K, snapshot: &Snapshot) -> Result<(), Denied> {
        self.inner.observe(key, 0, snapshot).await
    }

    /// Holds every caller of `key`; see [`KeyedBudget::pause_for`].
    pub async fn pause_for(&self, key: &K, hold: Duration) -> Result<(), Denied> {
        self.inner.pause_for(key, hold).await
    }

    /// Holds every caller of `key` until `until`.
    pub async fn pause_until(&self, key: &K, until: Instant) -> Result<(), Denied> {
        self.inner.pause_until(key, until).await
    }

    /// `key`'s limit now, spending nothing.
    pub async fn snapshot(&self, key: &K) -> Result<Snapshot, Denied> {
        let mut all = self.inner.snapshot(key).await?;
        Ok(all
            .pop()
            .unwrap_or_else(|| Snapshot::new(0, 0, Duration::ZERO)))
    }
}

impl<K: Hash + Eq + Clone, S: Store<K>> KeyedLimiter<K, S> {
    /// Admits `cost` for `key` now, or denies it, when the store answers
    /// without waiting (an in-memory store); `None` when the decision must
    /// be awaited ([`try_acquire`](Self::try_acquire)). For a layer that
    /// runs over any store and keeps its fast path where it has one.
    #[inline(always)]
    pub fn check_now(&self, key: &K, cost: u64) -> Option<Result<Snapshot, Denied>> {
        let result = match self.inner.store().check_now(key, self.quota(), cost)? {
            Ok(snapshot) => Ok(snapshot),
            Err(refusal) => Err(self.refused(cost, refusal)),
        };
        self.inner.count(&result, Duration::ZERO);
        Some(result)
    }

    /// [`check_now`](Self::check_now) at `quota` instead of the default,
    /// for this call only; see
    /// [`acquire_within_quota`](Self::acquire_within_quota).
    #[inline]
    pub fn check_now_quota(
        &self,
        key: &K,
        quota: &Quota,
        cost: u64,
    ) -> Option<Result<Snapshot, Denied>> {
        let result = match self.inner.store().check_now(key, quota, cost)? {
            Ok(snapshot) => Ok(snapshot),
            Err(refusal) => Err(self.refused(cost, refusal)),
        };
        self.inner.count(&result, Duration::ZERO);
        Some(result)
    }

    /// The denial of a refused [`check_now`](Self::check_now): off the
    /// admitting path.
    #[cold]
    #[inline(never)]
    fn refused(&self, cost: u64, denial: Denial) -> Denied {
        KeyedBudget::<K, S>::denied(self.inner.limits(), &[cost], denial)
    }

    /// What the limiter and its store count.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Acquires waiting now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting()
    }
}

impl<K, S: fmt::Debug> fmt::Debug for KeyedLimiter<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyedLimiter").field(&self.inner).finish()
    }
}

/// One budget of several dimensions, with no key: requests, input tokens
/// and output tokens per minute for one provider, say. Every call spends
/// from all of them at once; see [`KeyedBudget`], which this is with the
/// key `()`.
///
/// ```
/// use tollgate::{Budget, DeniedKind, Limits, Quota};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let budget = Budget::new(
///     Limits::builder()
///         .dimension("requests", Quota::per_minute(500)?)
///         .dimension("tokens", Quota::per_minute(30_000)?)
///         .build()?,
/// );
/// let grant = budget.acquire(&[1, 20_000]).await?;
/// budget.settle(grant, &[1, 12_000]).await?; // 8,000 tokens come back
///
/// let denied = budget.check(&[1, 20_000]).unwrap_err();
/// assert_eq!(denied.kind(), DeniedKind::RateLimited);
/// assert_eq!(denied.dimension(), Some("tokens"));
/// # Ok(())
/// # }
/// ```
pub struct Budget<S = MemoryStore> {
    inner: KeyedBudget<(), S>,
}

impl Budget<MemoryStore> {
    /// A budget over the in-memory store.
    pub fn new(limits: Limits) -> Self {
        Self::builder(limits).build()
    }

    /// A builder, to choose the clock. (A budget has one key, so the
    /// builder's `max_keys` changes nothing here.)
    pub fn builder(limits: Limits) -> KeyedBuilder<Self> {
        KeyedBuilder::new(limits).max_keys(1)
    }
}

impl LimiterKind for Budget<MemoryStore> {
    type Key = ();
    type Output<C: Clock> = Budget<MemoryStore<C>>;
    fn wrap<C: Clock>(inner: KeyedBudget<(), MemoryStore<C>>) -> Self::Output<C> {
        Budget { inner }
    }
}

impl<S> Budget<S> {
    /// A budget over `store`.
    pub fn with_store(limits: Limits, store: S) -> Self {
        Self {
            inner: KeyedBudget::with_store(limits, store),
        }
    }

    /// The budget's limits, as configured.
    pub fn limits(&self) -> &Limits {
        self.inner.limits()
    }

    /// The budget underneath, with the key `()`.
    pub fn as_keyed(&self) -> &KeyedBudget<(), S> {
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

impl<S: SyncStore<()>> Budget<S> {
    /// Admits `costs` now, one per dimension, or denies without spending.
    #[inline]
    pub fn check(&self, costs: &[u64]) -> Result<Grant, Denied> {
        self.inner.check(&(), costs)
    }

    /// Blocks the calling thread until `costs` are admitted; see
    /// [`KeyedBudget::acquire_blocking`].
    pub fn acquire_blocking(&self, costs: &[u64]) -> Result<Grant, Denied> {
        self.inner.acquire_blocking(&(), costs)
    }
}

impl<S: Store<()>> Budget<S> {
    /// The limits now in force: the configured ones, or those set or
    /// learnt by [`observe`](Self::observe), as the store holds them.
    pub async fn current_limits(&self) -> Result<Limits, Denied> {
        self.inner.limits_for(&()).await
    }

    /// Replaces the limits (same dimensions, in order), in the store.
    pub async fn set_limits(&self, limits: &Limits) -> Result<(), Denied> {
        self.inner.set_limits(&(), limits).await
    }

    /// How long the budget stays paused from now (zero when it is not).
    pub async fn paused_for(&self) -> Result<Duration, Denied> {
        self.inner.paused_for(&()).await
    }

    /// Waits until `costs` are admitted; see [`KeyedBudget::acquire`].
    pub async fn acquire(&self, costs: &[u64]) -> Result<Grant, Denied> {
        self.inner.acquire(&(), costs).await
    }

    /// Waits at most `max_wait`; see [`KeyedBudget::acquire_within`].
    pub async fn acquire_within(&self, costs: &[u64], max_wait: Duration) -> Result<Grant, Denied> {
        self.inner.acquire_within(&(), costs, max_wait).await
    }

    /// Admits now or denies, for any store.
    pub async fn try_acquire(&self, costs: &[u64]) -> Result<Grant, Denied> {
        self.inner.try_acquire(&(), costs).await
    }

    /// Settles a grant with the real usage; see [`KeyedBudget::settle`].
    pub async fn settle(&self, grant: Grant, actual: &[u64]) -> Result<(), Denied> {
        self.inner.settle(&(), grant, actual).await
    }

    /// Pulls one dimension toward what the other side reports; see
    /// [`KeyedBudget::observe`].
    pub async fn observe(&self, dimension: usize, snapshot: &Snapshot) -> Result<(), Denied> {
        self.inner.observe(&(), dimension, snapshot).await
    }

    /// Holds every caller; see [`KeyedBudget::pause_for`].
    pub async fn pause_for(&self, hold: Duration) -> Result<(), Denied> {
        self.inner.pause_for(&(), hold).await
    }

    /// Holds every caller until `until`.
    pub async fn pause_until(&self, until: Instant) -> Result<(), Denied> {
        self.inner.pause_until(&(), until).await
    }

    /// Every dimension now, spending nothing.
    pub async fn snapshot(&self) -> Result<Vec<Snapshot>, Denied> {
        self.inner.snapshot(&()).await
    }

    /// What the budget and its store count.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Acquires waiting now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting()
    }
}

impl<S: fmt::Debug> fmt::Debug for Budget<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Budget").field(&self.inner).finish()
    }
}
