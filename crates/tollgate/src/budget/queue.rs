//! The waiting acquires of each key in this process.
//!
//! A waiter has reserved its turn in the store and sleeps until it. When a
//! reservation ahead of it is given back (its caller went away) or settled
//! lower than reserved, the store moves the key's state (its TAT) earlier;
//! this queue moves the waiters behind it earlier by the same amount and
//! wakes them, so that they do not sleep past a turn that is free. A
//! grant settled higher than it reserved moves them later, as if it had
//! reserved what it used.
//!
//! Each waiter records, per dimension, when that dimension alone would
//! admit it (its *due*); it goes at the latest due (its *deadline*). The
//! dimension whose due is the deadline is the one that *binds* it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::limits::MAX_DIMENSIONS;
use super::store::Admit;

/// Every waiting acquire of a limiter, by key.
pub(crate) struct Queue<K> {
    waiters: Mutex<HashMap<K, Vec<Arc<Waiter>>>>,
    /// Waiters in the queue, read without the lock.
    len: AtomicUsize,
}

/// One waiting acquire.
pub(crate) struct Waiter {
    position: Mutex<Position>,
    notify: Notify,
    /// The thread of a blocking acquire, unparked when it moves.
    thread: Option<std::thread::Thread>,
}

#[derive(Clone, Copy)]
struct Position {
    /// Per dimension, when that dimension alone admits this waiter.
    dues: [Instant; MAX_DIMENSIONS],
    /// Per dimension, the interval (ns) its position is counted in.
    steps: [u64; MAX_DIMENSIONS],
    len: usize,
    /// The key's pause extensions this waiter accounts for. Dues minus
    /// `held` compare waiters that decided on either side of a pause.
    held: Duration,
}

impl Position {
    /// Whether `self` sits behind `other` in dimension `d`.
    fn behind(&self, other: &Self, d: usize) -> bool {
        let (Some(&mine), Some(&theirs)) = (self.dues.get(d), other.dues.get(d)) else {
            return false;
        };
        // mine - self.held > theirs - other.held, without subtracting.
        match (mine.checked_add(other.held), theirs.checked_add(self.held)) {
            (Some(a), Some(b)) => a > b,
            _ => false,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        self.dues.get(..self.len)?.iter().copied().max()
    }

    /// Re-spaces the position at new intervals; answers whether it moved.
    fn rescale(&mut self, now: Instant, intervals: &[u64]) -> bool {
        let Some(before) = self.deadline() else {
            return false;
        };
        let len = self.len;
        let mut binding = Vec::with_capacity(len);
        let mut changed = false;
        for d in 0..len {
            let (Some(&due), Some(&step), Some(&to)) =
                (self.dues.get(d), self.steps.get(d), intervals.get(d))
            else {
                break;
            };
            // A limit too fast for its debt to be counted in units never
            // holds a waiter back. Its due is wherever the other
            // dimensions put it (it may equal their deadline), so it is
            // never counted as binding.
            let unbounded = step <= super::transition::RESCALE_FROM_NS;
            binding.push(due == before && !unbounded);
            if to == 0 || unbounded || to == step {
                continue;
            }
            let ahead = due.saturating_duration_since(now).as_nanos();
            let scaled = ahead
                .saturating_mul(u128::from(to))
                .checked_div(u128::from(step))
                .unwrap_or(ahead);
            let scaled = Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX));
            if let (Some(slot), Some(new_due)) = (self.dues.get_mut(d), now.checked_add(scaled)) {
                changed |= *slot != new_due;
                *slot = new_due;
            }
            if let Some(slot) = self.steps.get_mut(d) {
                *slot = to;
            }
        }
        if !changed {
            return false;
        }
        // Where the binding dimensions now put it.
        let latest = binding
            .iter()
            .zip(&self.dues)
            .filter(|(binds, _)| **binds)
            .map(|(_, due)| *due)
            .max()
            .unwrap_or(before);
        // A dimension that does not bind must not hold the waiter later
        // than those that do: cap its due a nanosecond before their
        // deadline. (Equal to the deadline, the next change would count
        // it as binding and keep the waiter where it was.)
        let cap = latest
            .checked_sub(Duration::from_nanos(1))
            .unwrap_or(latest);
        for (binds, due) in binding.iter().zip(self.dues.iter_mut()) {
            if !binds {
                *due = (*due).min(cap);
            }
        }
        true
    }
}

impl Position {
    /// Moves the waiter earlier after a refund ahead of it, and answers
    /// how much its deadline moved.
    ///
    /// Per dimension:
    /// - refunded (`by[d]` not zero, at a rate slow enough to count):
    ///   earlier by the refund;
    /// - not refunded and binding: stays, since its own limit spaced the
    ///   queue;
    /// - not refunded and not binding: earlier by `ahead_moved`, what the
    ///   waiter ahead moved, because this dimension was charged when the
    ///   waiters ahead were admitted.
    fn refund(&mut self, by: &[Duration], ahead_moved: Duration) -> Duration {
        let Some(before) = self.deadline() else {
            return Duration::ZERO;
        };
        let len = self.len;
        for d in 0..len {
            let (Some(due), Some(&step)) = (self.dues.get_mut(d), self.steps.get(d)) else {
                break;
            };
            let binds = *due == before && step > super::transition::RESCALE_FROM_NS;
            let own = by.get(d).copied().unwrap_or_default();
            let counted = step > super::transition::RESCALE_FROM_NS && !own.is_zero();
            let move_by = if counted {
                own
            } else if binds {
                Duration::ZERO
            } else {
                ahead_moved
            };
            *due = due.checked_sub(move_by).unwrap_or(*due);
        }
        self.deadline().map_or(Duration::ZERO, |after| {
            before.saturating_duration_since(after)
        })
    }
}

impl Waiter {
    /// A waiter admitted by `admit`, decided at `now`, for `len` dimensions.
    pub(crate) fn new(now: Instant, admit: &Admit, len: usize) -> Arc<Self> {
        Self::with_thread(now, admit, len, None)
    }

    /// A waiter of a blocking acquire, on `thread`.
    pub(crate) fn blocking(
        now: Instant,
        admit: &Admit,
        len: usize,
        thread: std::thread::Thread,
    ) -> Arc<Self> {
        Self::with_thread(now, admit, len, Some(thread))
    }

    fn with_thread(
        now: Instant,
        admit: &Admit,
        len: usize,
        thread: Option<std::thread::Thread>,
    ) -> Arc<Self> {
        let mut dues = [now; MAX_DIMENSIONS];
        for (due, wait) in dues.iter_mut().zip(admit.place.dues()) {
            *due = now.checked_add(*wait).unwrap_or(now);
        }
        let wait_until = now.checked_add(admit.wait).unwrap_or(now);
        let len = len.clamp(1, MAX_DIMENSIONS);
        // The admission's wait is the latest due; a store that answered
        // no positions (or less) puts every dimension at the wait.
        let latest = dues.iter().take(len).copied().max().unwrap_or(now);
        if latest < wait_until {
            for due in dues.iter_mut().take(len) {
                *due = wait_until;
            }
        }
        let mut steps = [0u64; MAX_DIMENSIONS];
        for (step, given) in steps.iter_mut().zip(admit.place.steps()) {
            *step = u64::try_from(given.as_nanos()).unwrap_or(u64::MAX);
        }
        Arc::new(Self {
            position: Mutex::new(Position {
                dues,
                steps,
                len,
                held: admit.place.held(),
            }),
            notify: Notify::new(),
            thread,
        })
    }

    /// Tells the waiter it moved.
    fn wake(&self) {
        self.notify.notify_one();
        if let Some(thread) = &self.thread {
            thread.unpark();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Position> {
        self.position.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// When every dimension admits this waiter.
    pub(crate) fn deadline(&self) -> Instant {
        let position = *self.lock();
        position.deadline().unwrap_or_else(Instant::now)
    }

    /// The key's pause extensions this waiter accounts for.
    pub(crate) fn held(&self) -> Duration {
        self.lock().held
    }

    /// Holds this waiter back by a pause that began after its decision,
    /// which extended the key's pause by `extension`.
    pub(crate) fn hold_back(&self, extension: Duration) {
        let mut position = self.lock();
        let len = position.len;
        for due in position.dues.iter_mut().take(len) {
            *due = due.checked_add(extension).unwrap_or(*due);
        }
        position.held = position.held.saturating_add(extension);
    }

    /// Holds this waiter until `until` at least, in every dimension.
    pub(crate) fn not_before(&self, until: Instant) {
        let mut position = self.lock();
        let len = position.len;
        for due in position.dues.iter_mut().take(len) {
            *due = (*due).max(until);
        }
    }

    /// Resolves when the waiter was moved forward (or at once, if it was
    /// moved since the last call).
    pub(crate) async fn moved(&self) {
        self.notify.notified().await;
    }

    /// Moves dimension `d` forward by `by`; answers whether it moved.
    fn move_up(position: &mut Position, d: usize, by: Duration) -> bool {
        let Some(due) = position.dues.get_mut(d) else {
            return false;
        };
        match due.checked_sub(by) {
            Some(earlier) if !by.is_zero() => {
                *due = earlier;
                true
            }
            _ => false,
        }
    }
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Self {
            waiters: Mutex::new(HashMap::new()),
            len: AtomicUsize::new(0),
        }
    }
}

impl<K: Hash + Eq + Clone> Queue<K> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Vec<Arc<Waiter>>>> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waiters queued now, in every key.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Queues `waiter` for `key`.
    pub(crate) fn join(&self, key: &K, waiter: &Arc<Waiter>) {
        let mut waiters = self.lock();
        waiters
            .entry(key.clone())
            .or_default()
            .push(Arc::clone(waiter));
        self.len.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes `waiter` out of `key`'s queue: it was admitted.
    pub(crate) fn leave(&self, key: &K, waiter: &Arc<Waiter>) {
        let mut waiters = self.lock();
        Self::remove(&mut waiters, key, waiter, &self.len);
    }

    fn remove(
        waiters: &mut HashMap<K, Vec<Arc<Waiter>>>,
        key: &K,
        waiter: &Arc<Waiter>,
        len: &AtomicUsize,
    ) {
        if let Some(list) = waiters.get_mut(key) {
            if let Some(at) = list.iter().position(|w| Arc::ptr_eq(w, waiter)) {
                list.swap_remove(at);
                len.fetch_sub(1, Ordering::Relaxed);
            }
            if list.is_empty() {
                waiters.remove(key);
            }
        }
    }

    /// Takes `waiter` out of `key`'s queue, its reservation of `costs`
    /// (at `steps` nanoseconds a unit) given back: every waiter behind it
    /// in a dimension moves forward there by what it had reserved.
    pub(crate) fn cancelled(&self, key: &K, waiter: &Arc<Waiter>, costs: &[u64], steps: &[u64]) {
        let mut waiters = self.lock();
        Self::remove(&mut waiters, key, waiter, &self.len);
        let Some(list) = waiters.get(key) else {
            return;
        };
        let gone = *waiter.lock();
        for other in list {
            let mut position = other.lock();
            let mut moved = false;
            for (d, (&cost, &step)) in costs.iter().zip(steps).enumerate() {
                if cost != 0 && position.behind(&gone, d) {
                    let by = Duration::from_nanos(cost.saturating_mul(step));
                    moved |= Waiter::move_up(&mut position, d, by);
                }
            }
            drop(position);
            if moved {
                other.wake();
            }
        }
    }

    /// Re-spaces every waiter of `key` at new intervals (ns, per
    /// dimension; 0 leaves a dimension alone): the key's limits changed,
    /// and the store re-spaced what is spent the same way.
    ///
    /// A dimension that does not bind a waiter is never allowed to hold it
    /// later than the dimensions that do (every dimension is charged at
    /// the same instant, when the waiters ahead are admitted).
    pub(crate) fn rescaled(&self, key: &K, intervals: &[u64]) {
        if self.len() == 0 {
            return;
        }
        let now = Instant::now();
        let waiters = self.lock();
        let Some(list) = waiters.get(key) else {
            return;
        };
        for other in list {
            let mut position = other.lock();
            if position.rescale(now, intervals) {
                drop(position);
                other.wake();
            }
        }
    }

    /// Moves every waiter of `key` back by `charges` (at `steps`
    /// nanoseconds a unit): a grant admitted before them all was settled
    /// higher than it reserved, and the store charged the difference
    /// after them. Each waiter goes where it would have, had the grant
    /// reserved what it used.
    pub(crate) fn charged(&self, key: &K, charges: &[u64], steps: &[u64]) {
        if self.len() == 0 || charges.iter().all(|&charge| charge == 0) {
            return;
        }
        let waiters = self.lock();
        let Some(list) = waiters.get(key) else {
            return;
        };
        for other in list {
            let mut position = other.lock();
            let len = position.len;
            let mut moved = false;
            for (d, (&charge, &step)) in charges.iter().zip(steps).enumerate().take(len) {
                // A limit too fast for its debt to be counted in units
                // holds no one back.
                if charge == 0 || step <= super::transition::RESCALE_FROM_NS {
                    continue;
                }
                let by = Duration::from_nanos(charge.saturating_mul(step));
                if let Some(due) = position.dues.get_mut(d) {
                    if let Some(later) = due.checked_add(by) {
                        *due = later;
                        moved = true;
                    }
                }
            }
            drop(position);
            if moved {
                other.wake();
            }
        }
    }

    /// Moves every waiter of `key` forward by `refunds` (at `steps`
    /// nanoseconds a unit): a grant admitted before them all was settled
    /// lower than it reserved.
    pub(crate) fn refunded(&self, key: &K, refunds: &[u64], steps: &[u64]) {
        if self.len() == 0 {
            return;
        }
        let waiters = self.lock();
        let Some(list) = waiters.get(key) else {
            return;
        };
        let mut by = [Duration::ZERO; MAX_DIMENSIONS];
        for (slot, (&refund, &step)) in by.iter_mut().zip(refunds.iter().zip(steps)) {
            *slot = Duration::from_nanos(refund.saturating_mul(step));
        }
        // Settled as reserved: nothing moves.
        if by.iter().all(Duration::is_zero) {
            return;
        }
        // In the order they go, each moved by the refund and by what the
        // waiter ahead of it moved. (The settled grant, ahead of them all,
        // was already sent: it does not move.)
        let mut order: Vec<(Instant, &Arc<Waiter>)> =
            list.iter().map(|w| (w.deadline(), w)).collect();
        order.sort_by_key(|(deadline, _)| *deadline);
        let mut ahead_moved = Duration::ZERO;
        for (_, other) in order {
            ahead_moved = other.lock().refund(&by, ahead_moved);
            if !ahead_moved.is_zero() {
                other.wake();
            }
        }
    }
}
