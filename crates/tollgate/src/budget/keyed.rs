//! Budgets of several dimensions, per key, over any [`Store`].

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::limits::{Limits, MAX_DIMENSIONS};
use super::memory::{MemoryStore, DEFAULT_MAX_KEYS};
use super::queue::{Queue, Waiter};
use super::store::{Admit, Change, Decision, Denial, Store, SyncStore};
use crate::snapshot::duration_to_nanos;
use crate::{Clock, DefaultClock, Denied, DeniedKind, Quota, Snapshot};

/// A budget of one or more dimensions for every key: each key (an IP
/// address, an API key, an endpoint and model) spends from its own
/// [`Limits`], all dimensions at once.
///
/// - Admission is **all or nothing**: nothing is spent unless every
///   dimension admits, and a wait is the longest among them. A denial names
///   the dimension that blocked ([`Denied::dimension`]) and its cost.
/// - A [`Grant`] can be **settled** with the real usage: what was reserved
///   beyond it is refunded, what was used beyond it is charged. The LLM
///   pattern: reserve prompt + `max_tokens`, settle with the response's
///   `usage`.
/// - The state lives in a [`Store`]: the bounded [`MemoryStore`] by default
///   (see there for its cap and eviction), or a network store shared by
///   many replicas.
/// - A key may carry its own limits ([`set_limits`](Self::set_limits)), and
///   limits are learnt from what the other side reports
///   ([`observe`](Self::observe)); [`pause_for`](Self::pause_for) holds every
///   waiter of a key after a 429. All three live in the store, so that
///   every replica sharing a network store sees them.
/// - Waiting is first come, first served: a waiter that goes away, or a
///   grant settled lower than reserved, moves the reservations queued
///   behind it (in this process) forward.
///
/// Every dimension is a GCRA limit. Waiting acquires sleep on Tokio's
/// timer.
///
/// ```
/// use tollgate::{KeyedBudget, Limits, Quota};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let limits = Limits::builder()
///     .dimension("requests", Quota::per_minute(500)?)
///     .dimension("input_tokens", Quota::per_minute(30_000)?)
///     .dimension("output_tokens", Quota::per_minute(10_000)?)
///     .build()?;
/// let budget = KeyedBudget::new(limits);
///
/// // Reserve the prompt and the most the answer may cost...
/// let grant = budget.acquire(&"gpt-4o", &[1, 1_200, 4_000]).await?;
/// // ...and settle with what the answer really used.
/// budget.settle(&"gpt-4o", grant, &[1, 1_180, 350]).await?;
///
/// // 350 of 10,000 output tokens are spent: a whole 10,000 must wait.
/// let denied = budget.check(&"gpt-4o", &[1, 0, 10_000]).unwrap_err();
/// assert_eq!(denied.dimension(), Some("output_tokens"));
/// assert_eq!(denied.cost(), 10_000);
/// # Ok(())
/// # }
/// ```
pub struct KeyedBudget<K, S = MemoryStore> {
    store: S,
    limits: Limits,
    queue: Queue<K>,
    pauses: AtomicU64,
    waits: AtomicU64,
    waited_ns: AtomicU64,
    waiting: AtomicU64,
    /// Calls to the store that failed.
    store_failures: AtomicU64,
    /// Whether the last call to the store failed: the log says so once per
    /// change, not once per call.
    store_failing: AtomicBool,
    /// Its metrics, once named.
    #[cfg(feature = "metrics")]
    meters: Option<super::meters::Meters>,
}

/// Builds a [`KeyedBudget`], a [`KeyedLimiter`](crate::KeyedLimiter) or a
/// [`Budget`](crate::Budget) over the in-memory store: `F` is the kind.
#[must_use = "a builder does nothing until `build` is called"]
pub struct KeyedBuilder<F, C = DefaultClock> {
    limits: Limits,
    max_keys: usize,
    clock: C,
    face: PhantomData<fn() -> F>,
}

/// The kinds of limiter a [`KeyedBuilder`] builds: each is a face of one
/// [`KeyedBudget`].
pub trait LimiterKind {
    /// The key type.
    type Key;
    /// The limiter built over the in-memory store on clock `C`.
    type Output<C: Clock>;
    /// Wraps the budget.
    fn wrap<C: Clock>(budget: KeyedBudget<Self::Key, MemoryStore<C>>) -> Self::Output<C>;
}

impl<K> LimiterKind for KeyedBudget<K, MemoryStore> {
    type Key = K;
    type Output<C: Clock> = KeyedBudget<K, MemoryStore<C>>;
    fn wrap<C: Clock>(budget: KeyedBudget<K, MemoryStore<C>>) -> Self::Output<C> {
        budget
    }
}

impl<F, C: fmt::Debug> fmt::Debug for KeyedBuilder<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBuilder")
            .field("limits", &self.limits)
            .field("max_keys", &self.max_keys)
            .field("clock", &self.clock)
            .finish()
    }
}

impl<F: LimiterKind> KeyedBuilder<F> {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits,
            max_keys: DEFAULT_MAX_KEYS,
            clock: DefaultClock::new(),
            face: PhantomData,
        }
    }
}

impl<F: LimiterKind, C: Clock> KeyedBuilder<F, C> {
    /// The most keys held at once (default [`DEFAULT_MAX_KEYS`]); see
    /// [`MemoryStore`] for what happens at the cap.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys.max(1);
        self
    }

    /// The clock of the in-memory store (default: the [`DefaultClock`]).
    pub fn clock<D: Clock>(self, clock: D) -> KeyedBuilder<F, D> {
        KeyedBuilder {
            limits: self.limits,
            max_keys: self.max_keys,
            clock,
            face: PhantomData,
        }
    }

    /// The limiter, over the in-memory store; every key starts full.
    pub fn build(self) -> F::Output<C> {
        let store = MemoryStore::new(self.max_keys, self.limits.len(), self.clock);
        F::wrap(KeyedBudget::with_store(self.limits, store))
    }
}

/// What an acquire was granted: its costs and the tightest dimension's
/// snapshot. Hand it to `settle` once the real usage is known.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    costs: [u64; MAX_DIMENSIONS],
    /// Each dimension's replenish interval when it was granted, in
    /// nanoseconds: how far a refund moves the queue behind it.
    steps: [u64; MAX_DIMENSIONS],
    len: usize,
    snapshot: Snapshot,
}

impl Grant {
    /// A grant of `costs`, at `steps` nanoseconds a unit.
    pub(crate) fn new(costs: &[u64], steps: &[u64], snapshot: Snapshot) -> Self {
        let mut grant = Self {
            costs: [0; MAX_DIMENSIONS],
            steps: [0; MAX_DIMENSIONS],
            len: costs.len().min(MAX_DIMENSIONS),
            snapshot,
        };
        for (slot, cost) in grant.costs.iter_mut().zip(costs) {
            *slot = *cost;
        }
        for (slot, step) in grant.steps.iter_mut().zip(steps) {
            *slot = *step;
        }
        grant
    }

    /// The costs granted, one per dimension.
    pub fn costs(&self) -> &[u64] {
        self.costs.get(..self.len).unwrap_or(&[])
    }

    /// The dimension with the least room left, after the grant.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("costs", &self.costs())
            .field("snapshot", &self.snapshot)
            .finish()
    }
}

/// What a keyed limiter or budget counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Decisions that admitted or reserved.
    pub admitted: u64,
    /// Decisions that denied.
    pub denied: u64,
    /// Acquires that had to wait.
    pub waits: u64,
    /// The time those acquires waited, in total.
    pub waited: Duration,
    /// Acquires waiting now.
    pub waiting: u64,
    /// Entries the store holds: one per key and dimension that is not full
    /// (see [`StoreStats::entries`](crate::store::StoreStats::entries)).
    pub entries: u64,
    /// Entries evicted while not full, at the cap.
    pub evictions: u64,
    /// Pauses applied ([`KeyedBudget::pause_for`]).
    pub pauses: u64,
    /// Calls to the store that failed (each answered with
    /// [`DeniedKind::StoreFailed`](crate::DeniedKind::StoreFailed)). The
    /// log has one line when the store starts failing and one when it
    /// answers again, whatever the count.
    pub store_failures: u64,
}

impl<K> KeyedBudget<K, MemoryStore> {
    /// A budget over the in-memory store, with the default cap of keys.
    pub fn new(limits: Limits) -> Self {
        Self::builder(limits).build()
    }

    /// A builder, to set the cap of keys or the clock.
    pub fn builder(limits: Limits) -> KeyedBuilder<Self> {
        KeyedBuilder::new(limits)
    }
}

impl<K, S> KeyedBudget<K, S> {
    /// A budget over `store`.
    pub fn with_store(limits: Limits, store: S) -> Self {
        Self {
            store,
            limits,
            queue: Queue::default(),
            pauses: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            waited_ns: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            store_failing: AtomicBool::new(false),
            #[cfg(feature = "metrics")]
            meters: None,
        }
    }

    /// Counts its decisions under `policy` through the `metrics` facade
    /// (feature `metrics`): `tollgate_decisions_total{policy, outcome}`,
    /// `tollgate_refusals_by_dimension_total{policy, dimension}` and
    /// `tollgate_wait_seconds{policy}`. The handles are registered now,
    /// with the recorder installed now.
    #[cfg(feature = "metrics")]
    #[must_use]
    pub fn metrics(mut self, policy: &str) -> Self {
        self.meters = Some(super::meters::Meters::new(policy, &self.limits));
        self
    }

    /// Counts a decision that took `waited` (feature `metrics`, once named).
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    #[inline]
    pub(crate) fn count<T>(&self, result: &Result<T, Denied>, waited: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(meters) = &self.meters {
            match result {
                Ok(_) if waited < Duration::from_millis(1) => meters.admitted(),
                Ok(_) => meters.waited(waited),
                Err(denied) => match denied.kind() {
                    DeniedKind::RateLimited | DeniedKind::CostExceedsBurst => {
                        let dimension = denied
                            .dimension()
                            .and_then(|name| {
                                (0..self.limits.len()).find(|&d| self.limits.name(d) == name)
                            })
                            .unwrap_or(0);
                        meters.refused(dimension);
                    }
                    _ => meters.failed(),
                },
            }
        }
    }

    /// The limits every key has unless it carries its own.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Acquires waiting now.
    pub fn waiting(&self) -> usize {
        usize::try_from(self.waiting.load(Ordering::Relaxed)).unwrap_or(usize::MAX)
    }

    fn grant(costs: &[u64], admit: &Admit) -> Grant {
        let mut grant = Grant {
            costs: [0; MAX_DIMENSIONS],
            steps: [0; MAX_DIMENSIONS],
            len: costs.len().min(MAX_DIMENSIONS),
            snapshot: admit.snapshot,
        };
        for (slot, cost) in grant.costs.iter_mut().zip(costs) {
            *slot = *cost;
        }
        for (slot, step) in grant.steps.iter_mut().zip(admit.place.steps()) {
            *slot = duration_to_nanos(*step);
        }
        grant
    }

    /// A decision's grant and admission, or its refusal as the error.
    fn granted(
        limits: &Limits,
        costs: &[u64],
        decision: Decision,
    ) -> Result<(Grant, Admit), Denied> {
        match decision {
            Decision::Admit(admit) => Ok((Self::grant(costs, &admit), admit)),
            Decision::Deny(denial) => Err(Self::denied(limits, costs, denial)),
        }
    }

    /// Turns a denial into the error.
    #[cold]
    #[inline(never)]
    pub(crate) fn denied(limits: &Limits, costs: &[u64], denial: Denial) -> Denied {
        let dimension = denial.dimension();
        let cost = costs.get(dimension).copied().unwrap_or(0);
        let mut denied = Denied::new(denial.kind(), cost, *denial.snapshot());
        if limits.len() > 1 {
            if let Some(name) = limits.name_arc(dimension) {
                denied = denied.in_dimension(name);
            }
        }
        tracing::debug!(
            dimension = limits.name(dimension.min(limits.len().saturating_sub(1))),
            cost,
            retry_after = ?denied.retry_after(),
            "rate limited"
        );
        denied
    }

    #[cold]
    fn wrong_dimensions(limits: &Limits, costs: &[u64]) -> Denied {
        let snapshot = Snapshot::from_count(limits.len() as u64, 0, 0);
        Denied::new(DeniedKind::WrongDimensions, costs.len() as u64, snapshot)
    }

    /// A dimension's index that the budget does not have.
    #[cold]
    fn no_such_dimension(limits: &Limits, index: usize) -> Denied {
        let snapshot = Snapshot::from_count(limits.len() as u64, 0, 0);
        Denied::new(DeniedKind::WrongDimensions, 0, snapshot)
            .in_dimension(&Arc::from(index.to_string()))
    }
}

/// The synchronous paths of the in-memory stores.
impl<K: Hash + Eq + Clone, S: SyncStore<K>> KeyedBudget<K, S> {
    /// Admits `costs` for `key` now, in every dimension, or denies without
    /// spending anything.
    #[inline]
    pub fn check(&self, key: &K, costs: &[u64]) -> Result<Grant, Denied> {
        if costs.len() != self.limits.len() {
            return Err(Self::wrong_dimensions(&self.limits, costs));
        }
        let result = match self
            .store
            .decide_now(key, self.limits.quotas(), costs, Duration::ZERO)
        {
            Decision::Admit(admit) => Ok(Self::grant(costs, &admit)),
            Decision::Deny(denial) => Err(Self::denied(&self.limits, costs, denial)),
        };
        self.count(&result, Duration::ZERO);
        result
    }

    /// [`check`](Self::check), answering the tightest dimension's snapshot
    /// only: what a keyed limiter returns, with no grant to build.
    #[inline]
    pub(crate) fn check_snapshot(&self, key: &K, costs: &[u64]) -> Result<Snapshot, Denied> {
        if let ([quota], [cost]) = (self.limits.quotas(), costs) {
            let result = self
                .store
                .check_one(key, quota, *cost)
                .map_err(|denial| Self::denied(&self.limits, costs, denial));
            self.count(&result, Duration::ZERO);
            return result;
        }
        self.check(key, costs).map(|grant| grant.snapshot)
    }

    /// Blocks the calling thread until `costs` are admitted for `key`: the
    /// synchronous twin of [`acquire`](Self::acquire), in the same queue
    /// (first come, first served; a waiter that goes away or a refund
    /// moves it forward; a pause holds it). It waits on the store's clock,
    /// so a [`ManualClock`](crate::ManualClock) moves instead of sleeping.
    ///
    /// Do not call it on an async runtime's thread; await
    /// [`acquire`](Self::acquire) there.
    pub fn acquire_blocking(&self, key: &K, costs: &[u64]) -> Result<Grant, Denied> {
        #[cfg(feature = "metrics")]
        {
            let start = std::time::Instant::now();
            let result = self.acquire_blocking_uncounted(key, costs);
            self.count(&result, start.elapsed());
            result
        }
        #[cfg(not(feature = "metrics"))]
        self.acquire_blocking_uncounted(key, costs)
    }

    fn acquire_blocking_uncounted(&self, key: &K, costs: &[u64]) -> Result<Grant, Denied> {
        let limits = &self.limits;
        if costs.len() != limits.len() {
            return Err(Self::wrong_dimensions(limits, costs));
        }
        let decision = self
            .store
            .decide_now(key, limits.quotas(), costs, Duration::MAX);
        let (grant, admit) = Self::granted(limits, costs, decision)?;
        if admit.wait.is_zero() {
            return Ok(grant);
        }
        // Positions are instants; the wait is measured on the store's
        // clock from the decision on.
        let start = Instant::now();
        let start_clock = self.store.now();
        let waiter = Waiter::blocking(start, &admit, costs.len(), std::thread::current());
        let queued = QueuedWaiter::join(self, limits, key, &waiter, &grant);
        loop {
            let due = duration_to_nanos(waiter.deadline().saturating_duration_since(start));
            let elapsed = self.store.now().saturating_sub(start_clock);
            if elapsed < due {
                self.store
                    .wait_blocking(Duration::from_nanos(due.saturating_sub(elapsed)));
                continue;
            }
            let view = self.store.read_now(key, limits.quotas());
            if view.held > waiter.held() {
                waiter.hold_back(view.held.saturating_sub(waiter.held()));
                continue;
            }
            let until = start
                .checked_add(Duration::from_nanos(elapsed))
                .and_then(|now| now.checked_add(view.paused_for));
            if let (false, Some(until)) = (view.paused_for.is_zero(), until) {
                // Moved up into a pause in force (a refund): held to its end.
                waiter.not_before(until);
                continue;
            }
            break;
        }
        queued.admitted(self.store.now().saturating_sub(start_clock));
        Ok(grant)
    }
}

impl<K, S> KeyedBudget<K, S>
where
    K: Hash + Eq + Clone + Send + Sync,
    S: Store<K>,
{
    /// Waits until `costs` are admitted for `key`.
    ///
    /// The slot is reserved at once, in every dimension; dropping the
    /// future before it completes gives the reservation back, and moves
    /// the waiters queued behind it forward.
    pub async fn acquire(&self, key: &K, costs: &[u64]) -> Result<Grant, Denied> {
        self.acquire_within(key, costs, Duration::MAX).await
    }

    /// Admits `costs` now or denies, spending nothing on a denial: the
    /// asynchronous [`check`](Self::check), for any store.
    pub async fn try_acquire(&self, key: &K, costs: &[u64]) -> Result<Grant, Denied> {
        self.acquire_within(key, costs, Duration::ZERO).await
    }

    /// Like [`acquire`](Self::acquire), but fails at once, reserving
    /// nothing, when the slot is more than `max_wait` away. A pause that
    /// begins while it waits holds it longer; a waiter ahead of it going
    /// away, or a refund, moves it forward.
    pub async fn acquire_within(
        &self,
        key: &K,
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Grant, Denied> {
        self.acquire_within_limits(key, &self.limits, costs, max_wait)
            .await
    }

    /// [`acquire_within`](Self::acquire_within) with `limits` in place of
    /// the budget's defaults for this call (a request's tier, say): the
    /// key's state is the same whatever limits a call passes.
    pub(crate) async fn acquire_within_limits(
        &self,
        key: &K,
        limits: &Limits,
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Grant, Denied> {
        #[cfg(feature = "metrics")]
        {
            let start = Instant::now();
            let result = self
                .acquire_within_uncounted(key, limits, costs, max_wait)
                .await;
            self.count(&result, start.elapsed());
            result
        }
        #[cfg(not(feature = "metrics"))]
        self.acquire_within_uncounted(key, limits, costs, max_wait)
            .await
    }

    async fn acquire_within_uncounted(
        &self,
        key: &K,
        limits: &Limits,
        costs: &[u64],
        max_wait: Duration,
    ) -> Result<Grant, Denied> {
        if costs.len() != limits.len() {
            return Err(Self::wrong_dimensions(limits, costs));
        }
        let decision = self
            .store
            .decide(key, limits.quotas(), costs, max_wait)
            .await
            .map_err(|e| self.store_failed(costs, e))?;
        self.store_answered();
        let (grant, admit) = Self::granted(limits, costs, decision)?;
        if admit.wait.is_zero() {
            return Ok(grant);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            self.store.give_back(key, limits.quotas(), costs);
            return Err(Denied::new(
                DeniedKind::NoRuntime,
                costs.first().copied().unwrap_or(0),
                admit.snapshot,
            ));
        }
        let start = Instant::now();
        let waiter = Waiter::new(start, &admit, costs.len());
        let queued = QueuedWaiter::join(self, limits, key, &waiter, &grant);
        loop {
            let deadline = waiter.deadline();
            if tokio::time::timeout_at(deadline, waiter.moved())
                .await
                .is_ok()
            {
                // Moved forward (or back): wait for the new deadline.
                continue;
            }
            // Due. A pause that began after the decision (here or in
            // another process sharing the store) holds it longer.
            match self.store.read(key, limits.quotas()).await {
                Ok(view) if view.held > waiter.held() => {
                    waiter.hold_back(view.held.saturating_sub(waiter.held()));
                }
                // Due inside a pause in force: a refund moved it up after
                // the pause moved it back. No one goes before a pause ends.
                Ok(view) if !view.paused_for.is_zero() => {
                    match Instant::now().checked_add(view.paused_for) {
                        Some(until) => waiter.not_before(until),
                        None => break,
                    }
                }
                // The reservation stands; a store that cannot say whether
                // a pause began does not hold the caller longer.
                _ => break,
            }
        }
        queued.admitted(duration_to_nanos(start.elapsed()));
        Ok(grant)
    }

    /// Settles a grant with the real usage, one figure per dimension: what
    /// was reserved beyond it is refunded (and the waiters queued in this
    /// process move forward by it), what was used beyond it is charged
    /// (later callers wait for it, and the waiters queued in this process
    /// move back by it: each goes where it would have, had the grant
    /// reserved what it used).
    pub async fn settle(&self, key: &K, grant: Grant, actual: &[u64]) -> Result<(), Denied> {
        let limits = &self.limits;
        if actual.len() != limits.len() || grant.len != limits.len() {
            return Err(Self::wrong_dimensions(limits, actual));
        }
        let mut changes = [Change::Keep; MAX_DIMENSIONS];
        let mut refunds = [0u64; MAX_DIMENSIONS];
        let mut charges = [0u64; MAX_DIMENSIONS];
        for ((((change, refund), charge), &reserved), &used) in changes
            .iter_mut()
            .zip(refunds.iter_mut())
            .zip(charges.iter_mut())
            .zip(grant.costs())
            .zip(actual)
        {
            *change = match used.cmp(&reserved) {
                std::cmp::Ordering::Less => {
                    *refund = reserved.saturating_sub(used);
                    Change::Refund(*refund)
                }
                std::cmp::Ordering::Greater => {
                    *charge = used.saturating_sub(reserved);
                    Change::Charge(*charge)
                }
                std::cmp::Ordering::Equal => Change::Keep,
            };
        }
        let n = actual.len();
        self.store_adjust(key, changes.get(..n).unwrap_or(&[]))
            .await?;
        self.queue
            .refunded(key, refunds.get(..n).unwrap_or(&[]), &grant.steps);
        self.queue
            .charged(key, charges.get(..n).unwrap_or(&[]), &grant.steps);
        Ok(())
    }

    /// Applies one [`Change`] per dimension to `key`, in one store
    /// operation (one round trip to a network store): what several calls
    /// of [`set_limits`](Self::set_limits), [`at_most`](Self::at_most) and
    /// the like would do, at once. `changes` has one entry per dimension.
    /// A dimension given a limit ([`Change::Limit`] or [`Change::Unlimit`])
    /// re-spaces the waiters queued in this process, as `set_limits` does.
    ///
    /// ```
    /// use tollgate::store::Change;
    /// use tollgate::{KeyedBudget, Limits, Quota};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let limits = Limits::builder()
    ///     .dimension("requests", Quota::per_minute(60)?)
    ///     .dimension("tokens", Quota::per_minute(10_000)?)
    ///     .build()?;
    /// let budget = KeyedBudget::<&str>::new(limits);
    /// // The requests' own limit, and what the other side says remains of
    /// // the tokens, in one operation.
    /// let requests = Quota::per_minute(30)?;
    /// budget
    ///     .adjust(&"key", &[Change::Limit(requests), Change::AtMost(500)])
    ///     .await?;
    /// assert_eq!(budget.limits_for(&"key").await?.quota(0).count(), 30);
    /// assert!(budget.try_acquire(&"key", &[1, 600]).await.is_err());
    /// assert!(budget.try_acquire(&"key", &[1, 500]).await.is_ok());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn adjust(&self, key: &K, changes: &[Change]) -> Result<(), Denied> {
        if changes.len() != self.limits.len() {
            let zeros = [0u64; MAX_DIMENSIONS];
            let asked = zeros.get(..changes.len()).unwrap_or(&zeros);
            return Err(Self::wrong_dimensions(&self.limits, asked));
        }
        self.store_adjust(key, changes).await?;
        // The new intervals of the dimensions whose limit changed (0: the
        // others, which the queue leaves as they are).
        let mut respaced = [0u64; MAX_DIMENSIONS];
        let mut any = false;
        for ((slot, change), default) in respaced.iter_mut().zip(changes).zip(self.limits.quotas())
        {
            let quota = match change {
                Change::Limit(quota) => quota,
                Change::Unlimit => default,
                _ => continue,
            };
            *slot = duration_to_nanos(quota.replenish_interval());
            any = true;
        }
        if any {
            self.queue.rescaled(key, &respaced);
        }
        Ok(())
    }

    /// Takes what the other side reports for one dimension of `key` (from
    /// its response headers, say) and pulls the state in the store toward
    /// it:
    ///
    /// - the dimension never grants more than `snapshot.remaining()` until
    ///   it has refilled;
    /// - when `snapshot.limit()` is stated (non-zero) and differs from the
    ///   burst in force, the key's limit is re-learnt: the new limit over
    ///   the same period (a per-key limit, as with
    ///   [`set_limits`](Self::set_limits)).
    pub async fn observe(
        &self,
        key: &K,
        dimension: usize,
        snapshot: &Snapshot,
    ) -> Result<(), Denied> {
        let limits = &self.limits;
        if dimension >= limits.len() {
            return Err(Self::no_such_dimension(limits, dimension));
        }
        let mut changes = [Change::Keep; MAX_DIMENSIONS];
        if let Some(change) = changes.get_mut(dimension) {
            *change = Change::Observe {
                limit: snapshot.limit(),
                remaining: snapshot.remaining(),
            };
        }
        self.adjust(key, changes.get(..limits.len()).unwrap_or(&[]))
            .await
    }

    /// Caps what one dimension of `key` grants at `remaining` until it
    /// has refilled (what the other side says remains of it), and learns
    /// nothing else from it: [`observe`](Self::observe) without a limit.
    /// A caller that read the burst in force and passed it as the limit
    /// could race a change of that limit, and teach the store the old one.
    ///
    /// ```
    /// use tollgate::{KeyedBudget, Limits, Quota};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let budget = KeyedBudget::<&str>::new(Limits::single(Quota::per_hour(60)?));
    /// // The provider says 2 remain.
    /// budget.at_most(&"key", 0, 2).await?;
    /// assert!(budget.try_acquire(&"key", &[1]).await.is_ok());
    /// assert!(budget.try_acquire(&"key", &[1]).await.is_ok());
    /// assert!(budget.try_acquire(&"key", &[1]).await.is_err());
    /// // The limit itself is unchanged.
    /// assert_eq!(budget.limits_for(&"key").await?.quota(0).count(), 60);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn at_most(&self, key: &K, dimension: usize, remaining: u64) -> Result<(), Denied> {
        let limits = &self.limits;
        if dimension >= limits.len() {
            return Err(Self::no_such_dimension(limits, dimension));
        }
        let mut changes = [Change::Keep; MAX_DIMENSIONS];
        if let Some(change) = changes.get_mut(dimension) {
            *change = Change::AtMost(remaining);
        }
        self.adjust(key, changes.get(..limits.len()).unwrap_or(&[]))
            .await
    }

    /// Gives `key` its own limits (a customer's tier, say), in the store.
    /// They must have the default limits' dimensions, in the same order.
    /// What the key has spent stays spent, counted in units, and what is
    /// reserved is re-spaced at the new rate: a raised limit brings the
    /// waiters queued in this process closer, a lowered one pushes them
    /// back.
    ///
    /// Per-key limits are kept until cleared (in the in-memory store,
    /// outside its cap of keys; see the store for how long it keeps them).
    pub async fn set_limits(&self, key: &K, limits: &Limits) -> Result<(), Denied> {
        if !limits.same_dimensions(&self.limits) {
            let zeros = [0u64; MAX_DIMENSIONS];
            let asked = zeros.get(..limits.len()).unwrap_or(&zeros);
            return Err(Self::wrong_dimensions(&self.limits, asked));
        }
        let mut changes = [Change::Keep; MAX_DIMENSIONS];
        for (change, quota) in changes.iter_mut().zip(limits.quotas()) {
            *change = Change::Limit(*quota);
        }
        self.adjust(key, changes.get(..limits.len()).unwrap_or(&[]))
            .await
    }

    /// Gives `key` the default limits again.
    pub async fn clear_limits(&self, key: &K) -> Result<(), Denied> {
        let changes = [Change::Unlimit; MAX_DIMENSIONS];
        self.adjust(key, changes.get(..self.limits.len()).unwrap_or(&[]))
            .await
    }

    /// The limits in force for `key`, as the store holds them: its own
    /// (set or learnt), or the default.
    pub async fn limits_for(&self, key: &K) -> Result<Limits, Denied> {
        let view = self.read(key).await?;
        let mut limits = self.limits.clone();
        for (i, quota) in view.limits.iter().enumerate() {
            if quota != limits.quota(i) {
                limits = limits.with_quota(i, *quota);
            }
        }
        Ok(limits)
    }

    /// Holds every caller of `key` for `hold`: those waiting now (here and
    /// in every process sharing the store) and those that come meanwhile.
    /// When it ends they leave one by one at the quota's rate, never all at
    /// once. For a 429's `Retry-After`.
    ///
    /// Pauses that overlap take the longest, never the sum: many callers
    /// refused together and each pausing for `Retry-After: 1` hold the key
    /// one second.
    pub async fn pause_for(&self, key: &K, hold: Duration) -> Result<(), Denied> {
        let changes = [Change::HoldFor(hold); MAX_DIMENSIONS];
        self.adjust(key, changes.get(..self.limits.len()).unwrap_or(&[]))
            .await?;
        self.pauses.fetch_add(1, Ordering::Relaxed);
        tracing::info!(hold = ?hold, "paused every caller of a key");
        Ok(())
    }

    /// [`pause_for`](Self::pause_for) until `until` (on Tokio's clock).
    pub async fn pause_until(&self, key: &K, until: Instant) -> Result<(), Denied> {
        self.pause_for(key, until.saturating_duration_since(Instant::now()))
            .await
    }

    /// Every dimension of `key` now, spending nothing.
    pub async fn snapshot(&self, key: &K) -> Result<Vec<Snapshot>, Denied> {
        Ok(self.read(key).await?.snapshots)
    }

    /// How long `key` stays paused from now (zero when it is not).
    pub async fn paused_for(&self, key: &K) -> Result<Duration, Denied> {
        Ok(self.read(key).await?.paused_for)
    }

    async fn read(&self, key: &K) -> Result<super::store::View, Denied> {
        self.store
            .read(key, self.limits.quotas())
            .await
            .map_err(|e| self.store_failed(&[], e))
            .inspect(|_| self.store_answered())
    }

    async fn store_adjust(&self, key: &K, changes: &[Change]) -> Result<(), Denied> {
        self.store
            .adjust(key, self.limits.quotas(), changes)
            .await
            .map_err(|e| self.store_failed(&[], e))
            .inspect(|_| self.store_answered())
    }

    /// A denial for a failed store call, counted; logged only when the
    /// store was answering before.
    fn store_failed<E: std::error::Error + Send + Sync + 'static>(
        &self,
        costs: &[u64],
        error: E,
    ) -> Denied {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
        if !self.store_failing.load(Ordering::Relaxed)
            && !self.store_failing.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(
                error = %error,
                "rate limit store failed: calls are denied until it answers (logged once; see stats().store_failures)"
            );
        }
        let limits = &self.limits;
        let snapshot =
            Snapshot::from_count(limits.quotas().first().map_or(0, Quota::burst_size), 0, 0);
        Denied::store_failed(
            costs.first().copied().unwrap_or(0),
            snapshot,
            Arc::new(error),
        )
    }

    /// Notes that the store answered: logged when it was failing.
    fn store_answered(&self) {
        if self.store_failing.load(Ordering::Relaxed)
            && self.store_failing.swap(false, Ordering::Relaxed)
        {
            tracing::info!("rate limit store answers again");
        }
    }
}

impl<K: Hash + Eq + Clone, S: Store<K>> KeyedBudget<K, S> {
    /// What the limiter and its store count.
    pub fn stats(&self) -> Stats {
        let store = self.store.stats();
        Stats {
            admitted: store.admitted,
            denied: store.denied,
            waits: self.waits.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
            waiting: self.waiting.load(Ordering::Relaxed),
            entries: store.entries,
            evictions: store.evictions,
            pauses: self.pauses.load(Ordering::Relaxed),
            store_failures: self.store_failures.load(Ordering::Relaxed),
        }
    }
}

/// A waiter in its key's queue, counted among those waiting: when it is
/// dropped before it was admitted (it went away), it gives its reservation
/// back and moves those behind it forward.
struct QueuedWaiter<'a, K: Hash + Eq + Clone, S: Store<K>> {
    budget: &'a KeyedBudget<K, S>,
    /// The limits the reservation was made at.
    limits: &'a Limits,
    key: &'a K,
    waiter: &'a Arc<Waiter>,
    grant: &'a Grant,
    admitted: bool,
}

impl<'a, K: Hash + Eq + Clone, S: Store<K>> QueuedWaiter<'a, K, S> {
    /// Queues `waiter` for `key`, its reservation `grant`.
    fn join(
        budget: &'a KeyedBudget<K, S>,
        limits: &'a Limits,
        key: &'a K,
        waiter: &'a Arc<Waiter>,
        grant: &'a Grant,
    ) -> Self {
        budget.queue.join(key, waiter);
        budget.waiting.fetch_add(1, Ordering::Relaxed);
        Self {
            budget,
            limits,
            key,
            waiter,
            grant,
            admitted: false,
        }
    }

    /// The waiter's turn came after `waited_ns`: it leaves the queue with
    /// its reservation, and the wait is counted.
    fn admitted(mut self, waited_ns: u64) {
        self.admitted = true;
        let budget = self.budget;
        drop(self);
        budget.waits.fetch_add(1, Ordering::Relaxed);
        budget.waited_ns.fetch_add(waited_ns, Ordering::Relaxed);
    }
}

impl<K: Hash + Eq + Clone, S: Store<K>> Drop for QueuedWaiter<'_, K, S> {
    fn drop(&mut self) {
        self.budget.waiting.fetch_sub(1, Ordering::Relaxed);
        let queue = &self.budget.queue;
        if self.admitted {
            queue.leave(self.key, self.waiter);
            return;
        }
        self.budget
            .store
            .give_back(self.key, self.limits.quotas(), self.grant.costs());
        queue.cancelled(self.key, self.waiter, self.grant.costs(), &self.grant.steps);
    }
}

impl<K, S: fmt::Debug> fmt::Debug for KeyedBudget<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBudget")
            .field("limits", &self.limits)
            .field("store", &self.store)
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .finish()
    }
}
