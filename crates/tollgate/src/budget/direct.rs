//! The store of a limiter with no key: one limit's state, lock-free for
//! GCRA, with the algorithm chosen at construction.

use std::fmt;
use std::future::{ready, Future};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::store::{Admit, Change, Decision, Denial, Store, StoreStats, SyncStore, View};
use super::transition;
use crate::algorithm::{
    Algorithm, Gcra, LeakyBucket, LeakyState, Outcome, StateMachine, TokenBucket, TokenState,
    Window, WindowState,
};
use crate::snapshot::duration_to_nanos;
use crate::{Clock, DefaultClock, Quota, Snapshot};

/// The store of a [`RateLimiter`](crate::RateLimiter): the state of one
/// limit of one dimension, with no key (every key is the same limit), run
/// by the [`Algorithm`] it was made with.
///
/// It keeps what the keyed stores keep (its state, a limit of its own set
/// or learnt, its pause) and decides without a lock for GCRA while it has
/// no limit of its own; the other algorithms hold a short lock. Changes
/// apply to a bucket exactly as to GCRA (the buckets and GCRA are one limit
/// written three ways). A window counts units in slots: a charge or an
/// `AtMost` lands in now's slot, a refund of a settled grant frees nothing
/// (the window cannot tell which slot held it), a waiter that goes away
/// gives its units back, and a pause holds every decision until it ends,
/// when the window admits as it would have.
///
/// It holds one dimension: a decision of more is an error.
pub struct DirectStore<C: Clock = DefaultClock> {
    /// The limit the lock-free path decides by.
    gcra: Gcra,
    quota: Quota,
    algorithm: Algorithm,
    locked: Option<Mutex<Locked>>,
    /// [`GENERAL`] while the store holds a limit of its own or runs an
    /// algorithm other than GCRA (decisions take the general path), and
    /// [`COUNTED`] when it counts: 0 is the lock-free path that counts
    /// nothing, decided by one load and one test.
    mode: AtomicU8,
    /// The limit of its own, set or learnt; also serializes changes.
    own: Mutex<Option<Quota>>,
    /// When the limit of its own lapses (the store's clock), and how long
    /// one lasts after it was last set.
    lapses: AtomicU64,
    limits_ttl: u64,
    /// When the pause ends, and its extensions added up.
    until: AtomicU64,
    held: AtomicU64,
    /// GCRA's state and the counts; the buckets' and windows' states are
    /// in `locked`.
    hot: PaddedTat,
    counts: Counts,
    clock: C,
}

/// A bit of [`DirectStore::mode`]: decisions take the general path.
const GENERAL: u8 = 1;
/// A bit of [`DirectStore::mode`]: decisions are counted.
const COUNTED: u8 = 2;

/// The TAT, on a cache line of its own, so that the read-mostly fields
/// beside it are not invalidated by every decision.
#[repr(align(128))]
#[derive(Default)]
struct PaddedTat {
    tat: AtomicU64,
}

/// Admissions and denials, counted on a stripe per live thread: a thread
/// that holds its stripe alone counts with a plain load and store (no
/// locked instruction, no line shared with another core), and threads
/// beyond [`STRIPES`] share stripes and count atomically.
///
/// `None` when the store was made without counting: a limiter's `check`
/// then costs no more than the decision.
#[derive(Default)]
struct Counts(Option<Box<[Stripe; STRIPES]>>);

const STRIPES: usize = 8;

#[repr(align(128))]
#[derive(Default)]
struct Stripe {
    admitted: AtomicU64,
    denied: AtomicU64,
}

/// A thread's stripe: the lowest one no live thread holds, given back
/// when the thread ends; past [`STRIPES`] live threads, one shared by
/// where the thread's data lies.
struct ThreadStripe {
    stripe: usize,
    alone: bool,
}

/// Stripes held by live threads, one bit each.
static HELD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl ThreadStripe {
    fn take() -> Self {
        let mut held = HELD.load(Ordering::Acquire);
        loop {
            let free = !held & ((1u64 << STRIPES) - 1);
            if free == 0 {
                let at = std::ptr::from_ref(&held) as usize;
                return Self {
                    stripe: (at >> 12) % STRIPES,
                    alone: false,
                };
            }
            let bit = free.trailing_zeros();
            // Acquire: the counts the stripe's last holder wrote are seen
            // before this thread adds to them.
            match HELD.compare_exchange_weak(
                held,
                held | (1u64 << bit),
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Self {
                        stripe: bit as usize,
                        alone: true,
                    }
                }
                Err(now) => held = now,
            }
        }
    }
}

impl Drop for ThreadStripe {
    fn drop(&mut self) {
        if self.alone {
            // Release: this thread's counts are seen by the next holder.
            HELD.fetch_and(!(1u64 << self.stripe), Ordering::Release);
        }
    }
}

thread_local! {
    static PLACE: ThreadStripe = ThreadStripe::take();
}

impl Counts {
    fn on() -> Self {
        Self(Some(Box::default()))
    }

    #[inline(always)]
    fn add(&self, pick: impl Fn(&Stripe) -> &AtomicU64) {
        if let Some(stripes) = &self.0 {
            Self::add_to(stripes, pick);
        }
    }

    #[inline(never)]
    fn add_to(stripes: &[Stripe; STRIPES], pick: impl Fn(&Stripe) -> &AtomicU64) {
        // A thread being torn down counts atomically on the first stripe.
        let (stripe, alone) = PLACE
            .try_with(|place| (place.stripe, place.alone))
            .unwrap_or((0, false));
        if let Some(stripe) = stripes.get(stripe) {
            let counter = pick(stripe);
            if alone {
                // Only this thread writes this stripe.
                let n = counter.load(Ordering::Relaxed);
                counter.store(n.wrapping_add(1), Ordering::Relaxed);
            } else {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[inline(always)]
    fn admitted(&self) {
        self.add(|stripe| &stripe.admitted);
    }

    #[inline(always)]
    fn denied(&self) {
        self.add(|stripe| &stripe.denied);
    }

    fn sum(&self) -> (u64, u64) {
        self.0
            .iter()
            .flat_map(|s| s.iter())
            .fold((0, 0), |(a, d), stripe| {
                (
                    a.saturating_add(stripe.admitted.load(Ordering::Relaxed)),
                    d.saturating_add(stripe.denied.load(Ordering::Relaxed)),
                )
            })
    }
}

#[derive(Clone, Copy)]
enum Locked {
    Token(TokenState),
    Leaky(LeakyState),
    Window(WindowState),
}

/// Why a [`DirectStore`] refused an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectStoreError {
    dimensions: usize,
}

impl fmt::Display for DirectStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a direct store holds one dimension, not {}",
            self.dimensions
        )
    }
}

impl std::error::Error for DirectStoreError {}

impl<C: Clock> DirectStore<C> {
    /// A full limit of `quota`, run by `algorithm`, on `clock`. It does
    /// not count its decisions ([`StoreStats::admitted`] and `denied` stay
    /// 0) unless [`counted`](Self::counted).
    pub fn new(quota: Quota, algorithm: Algorithm, clock: C) -> Self {
        let locked = match algorithm {
            Algorithm::Gcra => None,
            Algorithm::TokenBucket => Some(Locked::Token(TokenBucket::new(&quota).full())),
            Algorithm::LeakyBucket => Some(Locked::Leaky(LeakyBucket::new(&quota).full())),
            Algorithm::FixedWindow => Some(Locked::Window(Window::fixed(&quota).full())),
            Algorithm::SlidingWindow => Some(Locked::Window(Window::sliding(&quota).full())),
        };
        Self {
            gcra: Gcra::new(&quota),
            quota,
            algorithm,
            mode: AtomicU8::new(if locked.is_some() { GENERAL } else { 0 }),
            locked: locked.map(Mutex::new),
            own: Mutex::new(None),
            lapses: AtomicU64::new(0),
            limits_ttl: duration_to_nanos(crate::store::DEFAULT_LIMITS_TTL),
            until: AtomicU64::new(0),
            held: AtomicU64::new(0),
            hot: PaddedTat::default(),
            counts: Counts::default(),
            clock,
        }
    }

    /// The store, counting every decision it makes: each admission and
    /// denial costs a few nanoseconds more (a thread-local read and a
    /// store to a line of the thread's own).
    pub fn counted(mut self) -> Self {
        self.counts = Counts::on();
        *self.mode.get_mut() |= COUNTED;
        self
    }

    /// How long a limit of its own (set or learnt) lasts after it was
    /// last set; then the default applies again. A day unless told
    /// ([`DEFAULT_LIMITS_TTL`](crate::store::DEFAULT_LIMITS_TTL)), as in
    /// every store.
    pub fn with_limits_ttl(mut self, ttl: Duration) -> Self {
        self.limits_ttl = duration_to_nanos(ttl);
        self
    }

    /// The quota the store was made with.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The algorithm that runs the limit.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The clock the store reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    fn own(&self) -> MutexGuard<'_, Option<Quota>> {
        // Every update under this lock is a single store of a value.
        self.own.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_state(locked: &Mutex<Locked>) -> MutexGuard<'_, Locked> {
        // The state is replaced whole.
        locked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits `cost` now or refuses, answering the limit after it: the
    /// lock-free path of a limiter's `check`.
    #[inline(always)]
    pub(crate) fn check(&self, cost: u64) -> Result<Snapshot, Denial> {
        if self.mode.load(Ordering::Relaxed) == 0 {
            let now = self.clock.now();
            return self
                .admit_lock_free(now, cost)
                .map_err(|(tat, outcome)| self.refusal(&tat, now, outcome));
        }
        self.check_other(cost)
    }

    /// `check` of a store that counts, or takes the general path.
    #[inline(never)]
    fn check_other(&self, cost: u64) -> Result<Snapshot, Denial> {
        if self.mode.load(Ordering::Relaxed) & GENERAL != 0 {
            return self.check_general(cost);
        }
        let now = self.clock.now();
        match self.admit_lock_free(now, cost) {
            Ok(snapshot) => {
                self.counts.admitted();
                Ok(snapshot)
            }
            Err((tat, outcome)) => {
                self.counts.denied();
                Err(self.refusal(&tat, now, outcome))
            }
        }
    }

    /// Admits `cost` now on the lock-free path, or answers `None` (a
    /// refusal, or a store that takes the general path) counting nothing:
    /// an acquire's first try, before it decides with a wait.
    #[inline(always)]
    pub(crate) fn admit_now(&self, cost: u64) -> Option<Snapshot> {
        let mode = self.mode.load(Ordering::Relaxed);
        if mode & GENERAL != 0 {
            return None;
        }
        let snapshot = self.admit_lock_free(self.clock.now(), cost).ok()?;
        if mode & COUNTED != 0 {
            self.counts.admitted();
        }
        Some(snapshot)
    }

    /// GCRA on the TAT with one compare-and-swap: the admission's snapshot,
    /// or the TAT and outcome of a refusal; the caller counts.
    #[inline(always)]
    fn admit_lock_free(&self, now: u64, cost: u64) -> Result<Snapshot, (u64, Outcome<u64>)> {
        // Relaxed: the TAT guards no other memory; the CAS alone orders
        // the decisions.
        let mut current = self.hot.tat.load(Ordering::Relaxed);
        loop {
            let outcome = self.gcra.decide(&current, now, cost, 0);
            let Outcome::Admit { state, .. } = outcome else {
                return Err((current, outcome));
            };
            // A cost of 0 reads without writing. (A cost of 1 or more always
            // moves the TAT, but where it saturates at `u64::MAX`, where
            // writing the same value is harmless: testing the cost, which
            // is often a constant, spares a test of the state.)
            if cost != 0 {
                if let Err(actual) = self.hot.tat.compare_exchange_weak(
                    current,
                    state,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    current = actual;
                    continue;
                }
            }
            return Ok(self.gcra.snapshot(&state, now));
        }
    }

    #[inline(never)]
    fn check_general(&self, cost: u64) -> Result<Snapshot, Denial> {
        self.decide_general(self.quota, cost, 0).checked()
    }

    #[inline(always)]
    fn refusal(&self, tat: &u64, now: u64, outcome: Outcome<u64>) -> Denial {
        match outcome {
            Outcome::Deny { retry_after } => Denial::RateLimited {
                dimension: 0,
                snapshot: self.gcra.snapshot(tat, now).retry_after_nanos(retry_after),
            },
            _ => Denial::CostExceedsBurst {
                dimension: 0,
                snapshot: self.gcra.snapshot(tat, now),
            },
        }
    }

    /// The quota in force: the store's own, or `default`.
    fn in_force(&self, default: Quota) -> Quota {
        if self.mode.load(Ordering::Relaxed) & GENERAL != 0 {
            if let Some(own) = self.unlapsed(*self.own(), self.clock.now()) {
                return own;
            }
        }
        default
    }

    /// `own`, unless it lapsed by `now`.
    fn unlapsed(&self, own: Option<Quota>, now: u64) -> Option<Quota> {
        own.filter(|_| now < self.lapses.load(Ordering::Relaxed))
    }

    #[inline(never)]
    fn decide_general(&self, default: Quota, cost: u64, max_wait: u64) -> Decision {
        let quota = self.in_force(default);
        let held = self.held.load(Ordering::Relaxed);
        let decision = match &self.locked {
            None => {
                let now = self.clock.now();
                let mut current = self.hot.tat.load(Ordering::Relaxed);
                loop {
                    let mut next = current;
                    let decision = transition::decide(
                        std::slice::from_mut(&mut next),
                        &[quota],
                        &[cost],
                        now,
                        max_wait,
                        held,
                    );
                    if next != current {
                        if let Err(actual) = self.hot.tat.compare_exchange_weak(
                            current,
                            next,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        ) {
                            current = actual;
                            continue;
                        }
                    }
                    break decision;
                }
            }
            Some(locked) => {
                let mut state = Self::lock_state(locked);
                let now = self.clock.now();
                let step = quota.interval_ns();
                match &mut *state {
                    Locked::Token(s) => {
                        let bucket = TokenBucket::new(&quota);
                        decide_with(&bucket, s, [now, now], cost, max_wait, step)
                    }
                    Locked::Leaky(s) => {
                        let bucket = LeakyBucket::new(&quota);
                        decide_with(&bucket, s, [now, now], cost, max_wait, step)
                    }
                    Locked::Window(s) => {
                        // A window is held by deciding at the pause's end;
                        // later reservations keep their slots when one
                        // goes, so its waiters count no step.
                        let at = self.until.load(Ordering::Relaxed).max(now);
                        decide_with(&self.window(&quota), s, [now, at], cost, max_wait, 0)
                    }
                }
            }
        };
        let decision = match decision {
            Decision::Admit(mut admit) => {
                admit.place.set_held(Duration::from_nanos(held));
                Decision::Admit(admit)
            }
            other => other,
        };
        self.count(&decision);
        decision
    }

    fn count(&self, decision: &Decision) {
        match decision {
            Decision::Admit(_) => {
                self.counts.admitted();
            }
            _ => self.counts.denied(),
        }
    }

    fn window(&self, quota: &Quota) -> Window {
        match self.algorithm {
            Algorithm::FixedWindow => Window::fixed(quota),
            _ => Window::sliding(quota),
        }
    }

    /// The limit now, spending nothing.
    pub(crate) fn snapshot_now(&self) -> Snapshot {
        let mut view = SyncStore::<()>::read_now(self, &(), &[self.quota]);
        view.snapshots
            .pop()
            .unwrap_or_else(|| Snapshot::from_count(0, 0, 0))
    }

    /// Gives back `cost` reserved by a waiter that went away.
    pub(crate) fn give_back_now(&self, limits: &[Quota], cost: u64) {
        let default = limits.first().copied().unwrap_or(self.quota);
        let quota = self.in_force(default);
        let now = self.clock.now();
        match &self.locked {
            None => {
                let gcra = Gcra::new(&quota);
                let _ = self
                    .hot
                    .tat
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                        Some(gcra.cancel(&tat, now, cost, now).0)
                    });
            }
            Some(locked) => {
                let mut state = Self::lock_state(locked);
                *state = match *state {
                    Locked::Token(s) => {
                        Locked::Token(TokenBucket::new(&quota).cancel(&s, now, cost, now).0)
                    }
                    Locked::Leaky(s) => {
                        Locked::Leaky(LeakyBucket::new(&quota).cancel(&s, now, cost, now).0)
                    }
                    Locked::Window(s) => {
                        Locked::Window(self.window(&quota).give_back(&s, now, cost))
                    }
                };
            }
        }
    }
}

/// Decides with `algorithm` over `state` at `at` (now, or the end of a
/// pause), answering with waits from `now`; writes the state on an
/// admission only. `step` is a unit's width in the queue.
fn decide_with<A: StateMachine>(
    algorithm: &A,
    state: &mut A::State,
    [now, at]: [u64; 2],
    cost: u64,
    max_wait: u64,
    step: u64,
) -> Decision {
    let delay = at.saturating_sub(now);
    let outcome = match max_wait.checked_sub(delay) {
        Some(left) => algorithm.decide(state, at, cost, left),
        None => match algorithm.decide(state, at, cost, u64::MAX) {
            Outcome::Admit { due, .. } => Outcome::Deny {
                retry_after: due.saturating_sub(at),
            },
            outcome => outcome,
        },
    };
    match outcome {
        Outcome::Admit { state: next, due } => {
            *state = next;
            let due = due.max(at);
            Decision::Admit(Admit::single_dimension(
                algorithm.snapshot(&next, due),
                Duration::from_nanos(due.saturating_sub(now)),
                Duration::from_nanos(step),
            ))
        }
        Outcome::Deny { retry_after } => Decision::Deny(Denial::RateLimited {
            dimension: 0,
            snapshot: algorithm
                .snapshot(state, now)
                .retry_after_nanos(retry_after.saturating_add(delay)),
        }),
        Outcome::Never => Decision::Deny(Denial::CostExceedsBurst {
            dimension: 0,
            snapshot: algorithm.snapshot(state, now),
        }),
    }
}

impl<C: Clock, K: ?Sized> Store<K> for DirectStore<C> {
    type Error = DirectStoreError;

    fn decide(
        &self,
        key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> impl Future<Output = Result<Decision, Self::Error>> + Send {
        ready(
            single_dimension(limits.len().max(costs.len()))
                .map(|()| SyncStore::<K>::decide_now(self, key, limits, costs, max_wait)),
        )
    }

    fn adjust(
        &self,
        key: &K,
        limits: &[Quota],
        changes: &[Change],
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        ready(
            single_dimension(limits.len().max(changes.len()))
                .map(|()| SyncStore::<K>::adjust_now(self, key, limits, changes)),
        )
    }

    fn read(
        &self,
        key: &K,
        limits: &[Quota],
    ) -> impl Future<Output = Result<View, Self::Error>> + Send {
        ready(single_dimension(limits.len()).map(|()| SyncStore::<K>::read_now(self, key, limits)))
    }

    fn give_back(&self, _key: &K, limits: &[Quota], costs: &[u64]) {
        if let Some(&cost) = costs.first() {
            self.give_back_now(limits, cost);
        }
    }

    fn stats(&self) -> StoreStats {
        let full = self.snapshot_now().reset_after().is_zero();
        let (admitted, denied) = self.counts.sum();
        StoreStats::new(admitted, denied, u64::from(!full), 0)
    }

    #[inline(always)]
    fn check_now(&self, key: &K, quota: &Quota, cost: u64) -> Option<Result<Snapshot, Denial>> {
        Some(SyncStore::<K>::check_one(self, key, quota, cost))
    }
}

impl<C: Clock, K: ?Sized> SyncStore<K> for DirectStore<C> {
    fn decide_now(
        &self,
        _key: &K,
        limits: &[Quota],
        costs: &[u64],
        max_wait: Duration,
    ) -> Decision {
        let (Some(&quota), Some(&cost)) = (limits.first(), costs.first()) else {
            return Decision::Deny(Denial::CostExceedsBurst {
                dimension: 0,
                snapshot: Snapshot::from_count(0, 0, 0),
            });
        };
        self.decide_general(quota, cost, duration_to_nanos(max_wait))
    }

    #[inline(always)]
    fn check_one(&self, _key: &K, quota: &Quota, cost: u64) -> Result<Snapshot, Denial> {
        if *quota == self.quota {
            return self.check(cost);
        }
        self.decide_general(*quota, cost, 0).checked()
    }

    fn adjust_now(&self, _key: &K, limits: &[Quota], changes: &[Change]) {
        let (Some(&default), Some(&change)) = (limits.first(), changes.first()) else {
            return;
        };
        let mut own = self.own();
        let now = self.clock.now();
        *own = self.unlapsed(*own, now);
        let before = own.unwrap_or(default);
        let mut after = before;
        if let Some(set) = transition::own_limit(change, &before) {
            *own = set;
            after = set.unwrap_or(default);
            if set.is_some() {
                self.lapses
                    .store(now.saturating_add(self.limits_ttl), Ordering::Relaxed);
            }
        }
        let (until, extension) = match change {
            Change::HoldFor(hold) => transition::pause(
                self.until.load(Ordering::Relaxed),
                now,
                duration_to_nanos(hold),
            ),
            _ => (self.until.load(Ordering::Relaxed), 0),
        };
        // The TAT-like change every algorithm but the windows shares.
        let apply_tat = |tat: u64| {
            let tat = transition::rescale(tat, &before, &after, now);
            match change {
                Change::HoldFor(_) => transition::hold(tat, &after, now, until, extension),
                Change::Refund(n) => transition::refund(tat, &after, now, until, n),
                change => transition::apply(tat, &after, now, change),
            }
        };
        match &self.locked {
            None => {
                let _ = self
                    .hot
                    .tat
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                        Some(apply_tat(tat))
                    });
            }
            Some(locked) => {
                let mut state = Self::lock_state(locked);
                *state = match *state {
                    Locked::Token(s) => {
                        let tat = apply_tat(TokenBucket::new(&before).tat(&s, now));
                        Locked::Token(TokenBucket::new(&after).at_tat(tat, now))
                    }
                    Locked::Leaky(s) => {
                        let tat = apply_tat(LeakyBucket::new(&before).tat(&s, now));
                        Locked::Leaky(LeakyBucket::new(&after).at_tat(tat, now))
                    }
                    Locked::Window(s) => {
                        let window = self.window(&after);
                        let s = window.rescaled(&self.window(&before), &s, now);
                        Locked::Window(match change {
                            Change::Charge(n) => window.charge(&s, now, n),
                            Change::AtMost(n) | Change::Observe { remaining: n, .. } => {
                                window.at_most(&s, now, n)
                            }
                            _ => s,
                        })
                    }
                };
            }
        }
        self.until.store(until, Ordering::Relaxed);
        self.held.fetch_add(extension, Ordering::Relaxed);
        if own.is_some() || self.locked.is_some() {
            self.mode.fetch_or(GENERAL, Ordering::Relaxed);
        } else {
            self.mode.fetch_and(!GENERAL, Ordering::Relaxed);
        }
    }

    fn read_now(&self, _key: &K, limits: &[Quota]) -> View {
        let default = limits.first().copied().unwrap_or(self.quota);
        let quota = self.in_force(default);
        let now = self.clock.now();
        let snapshot = match &self.locked {
            None => Gcra::new(&quota).snapshot(&self.hot.tat.load(Ordering::Relaxed), now),
            Some(locked) => match *Self::lock_state(locked) {
                Locked::Token(s) => TokenBucket::new(&quota).snapshot(&s, now),
                Locked::Leaky(s) => LeakyBucket::new(&quota).snapshot(&s, now),
                Locked::Window(s) => self.window(&quota).snapshot(&s, now),
            },
        };
        View {
            limits: vec![quota],
            snapshots: vec![snapshot],
            paused_for: Duration::from_nanos(
                self.until.load(Ordering::Relaxed).saturating_sub(now),
            ),
            held: Duration::from_nanos(self.held.load(Ordering::Relaxed)),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    fn wait_blocking(&self, duration: Duration) {
        self.clock.wait_blocking(duration);
    }
}

/// One dimension, or the error.
fn single_dimension(dimensions: usize) -> Result<(), DirectStoreError> {
    if dimensions == 1 {
        Ok(())
    } else {
        Err(DirectStoreError { dimensions })
    }
}

impl<C: Clock + fmt::Debug> fmt::Debug for DirectStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectStore")
            .field("quota", &self.quota)
            .field("algorithm", &self.algorithm)
            .field("snapshot", &self.snapshot_now())
            .field("clock", &self.clock)
            .finish()
    }
}
