//! The direct limiter: one limit shared by every thread and task that holds it.

mod acquire;
mod engine;
mod waiters;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::Duration;

pub use acquire::Acquire;

use crate::snapshot::duration_to_nanos;
use crate::{Algorithm, Clock, DefaultClock, Denied, DeniedKind, Quota, Snapshot};
use engine::Engine;
use waiters::{ThreadWaker, Waiters};

/// One rate limit, shared by reference (put it in an [`Arc`] to share it
/// between tasks).
///
/// - [`check`](Self::check) admits or denies at once, without waiting;
/// - [`acquire`](Self::acquire) reserves the next free slot and sleeps until
///   it is due: waiters are served in the order they arrive, with no polling
///   and no burst at start-up beyond the quota's burst;
/// - [`acquire_within`](Self::acquire_within) does the same but fails at
///   once when the slot is further away than a maximum wait;
/// - [`acquire_blocking`](Self::acquire_blocking) is the synchronous twin.
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
    engine: Engine,
    quota: Quota,
    algorithm: Algorithm,
    clock: C,
    waiters: Mutex<Waiters>,
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
        }
    }

    /// The limiter, full: its whole burst is available.
    pub fn build(self) -> RateLimiter<C> {
        RateLimiter {
            engine: Engine::new(&self.quota, self.algorithm),
            quota: self.quota,
            algorithm: self.algorithm,
            clock: self.clock,
            waiters: Mutex::new(Waiters::default()),
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
        self.engine
            .decide(self.clock.now(), cost, 0)
            .map(|(_, snapshot)| snapshot)
    }

    /// Waits until `cost` is admitted.
    ///
    /// The slot is reserved on the first poll, so concurrent callers are
    /// served in that order; dropping the future before it completes gives
    /// the slot back and moves the waiters behind it up. It fails only for
    /// a cost larger than the burst, or when it must wait outside a Tokio
    /// runtime.
    pub fn acquire(&self, cost: u64) -> Acquire<'_, C> {
        Acquire::new(self, cost, u64::MAX)
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
    pub fn acquire_within(&self, cost: u64, max_wait: Duration) -> Acquire<'_, C> {
        Acquire::new(self, cost, duration_to_nanos(max_wait))
    }

    /// Blocks the calling thread until `cost` is admitted: the synchronous
    /// twin of [`acquire`](Self::acquire), in the same queue.
    ///
    /// Do not call it on an async runtime's thread; await
    /// [`acquire`](Self::acquire) there.
    pub fn acquire_blocking(&self, cost: u64) -> Result<Snapshot, Denied> {
        let mut reservation = match self.reserve(cost, u64::MAX)? {
            Ticket::Ready(snapshot) => return Ok(snapshot),
            Ticket::Wait(reservation) => reservation,
        };
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        loop {
            let now = self.clock.now();
            match self.take_if_due(reservation.id, now, &waker) {
                None => return Ok(reservation.taken(now)),
                Some(due) => self
                    .clock
                    .wait_blocking(Duration::from_nanos(due.saturating_sub(now))),
            }
        }
    }

    /// The limit now, spending nothing (the same as `check(0)`).
    pub fn snapshot(&self) -> Snapshot {
        self.engine.snapshot(self.clock.now())
    }

    /// The quota this limiter enforces.
    pub fn quota(&self) -> &Quota {
        &self.quota
    }

    /// The algorithm this limiter runs.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The clock this limiter reads.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// How many acquires are waiting for their slot.
    pub fn waiting(&self) -> usize {
        self.lock_waiters().len()
    }

    fn lock_waiters(&self) -> MutexGuard<'_, Waiters> {
        // Every update of the queue is complete before anything can panic.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits at once, or reserves a slot at most `max_wait` away.
    #[inline(always)]
    fn reserve(&self, cost: u64, max_wait: u64) -> Result<Ticket<'_, C>, Denied> {
        match self.engine.decide(self.clock.now(), cost, 0) {
            Ok((_, snapshot)) => Ok(Ticket::Ready(snapshot)),
            Err(denied) if denied.kind() != DeniedKind::RateLimited || max_wait == 0 => Err(denied),
            Err(_) => self.reserve_in_queue(cost, max_wait),
        }
    }

    #[inline(never)]
    fn reserve_in_queue(&self, cost: u64, max_wait: u64) -> Result<Ticket<'_, C>, Denied> {
        // Reserve under the queue's lock, so that the queue's order is the
        // order of the reservations.
        let mut waiters = self.lock_waiters();
        let now = self.clock.now();
        let (due, snapshot) = self.engine.decide(now, cost, max_wait)?;
        if due <= now {
            return Ok(Ticket::Ready(snapshot));
        }
        let id = waiters.insert(due, cost);
        Ok(Ticket::Wait(Reservation {
            limiter: self,
            id,
            active: true,
        }))
    }

    /// `None` once reservation `id` is due by `now` (it has left the queue,
    /// with its slot taken); else when it is due, and `waker` hears when it
    /// moves up.
    fn take_if_due(&self, id: u64, now: u64, waker: &Waker) -> Option<u64> {
        // A reservation leaves the queue only through its own guard, so it
        // is there until this takes it.
        self.lock_waiters().take_if_due(id, now, waker)
    }

    fn give_back(&self, id: u64) {
        let mut waiters = self.lock_waiters();
        if let Some((due, cost)) = waiters.remove(id) {
            let shift = self.engine.cancel(self.clock.now(), cost, due);
            waiters.move_up_after(id, shift);
        }
    }
}

impl<C: Clock> fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("quota", &self.quota)
            .field("algorithm", &self.algorithm)
            .field("snapshot", &self.snapshot())
            .field("waiting", &self.waiting())
            .finish()
    }
}

enum Ticket<'a, C: Clock> {
    Ready(Snapshot),
    Wait(Reservation<'a, C>),
}

/// A slot in the queue; dropped before it completes, it gives the slot back.
struct Reservation<'a, C: Clock> {
    limiter: &'a RateLimiter<C>,
    id: u64,
    active: bool,
}

impl<C: Clock> Reservation<'_, C> {
    /// The slot was taken (it left the queue in `take_if_due`); the guard
    /// no longer gives it back.
    fn taken(&mut self, now: u64) -> Snapshot {
        self.active = false;
        self.limiter.engine.snapshot(now)
    }
}

impl<C: Clock> Drop for Reservation<'_, C> {
    fn drop(&mut self) {
        if self.active {
            self.limiter.give_back(self.id);
        }
    }
}
