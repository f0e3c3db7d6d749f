//! The transitions every [`Store`](crate::Store) computes: pure functions,
//! `now` in, state out, so that another store (a Lua script in Redis, say)
//! can reproduce them exactly and be checked against them.
//!
//! A key's state is, per dimension, a GCRA **theoretical arrival time**
//! (TAT, in nanoseconds on the store's clock; 0 or any instant at or before
//! now means "full"), and, per key, the instant its pause ends and the
//! sum of its pause extensions (`held`). Arithmetic saturates: no input
//! panics or loops.
//!
//! ```
//! use tollgate::store::transition;
//! use tollgate::store::{Decision, Denial};
//! use tollgate::Quota;
//!
//! let quota = Quota::per_second(2)?; // one unit every 500 ms, burst 2
//! let mut tats = [0u64];
//! let now = 1_000_000_000;
//! for _ in 0..2 {
//!     let decision = transition::decide(&mut tats, &[quota], &[1], now, 0, 0);
//!     assert!(matches!(decision, Decision::Admit(_)));
//! }
//! // The burst is spent: the third waits 500 ms, or is denied without one.
//! let decision = transition::decide(&mut tats, &[quota], &[1], now, 0, 0);
//! assert!(matches!(decision, Decision::Deny(Denial::RateLimited { dimension: 0, .. })));
//! assert_eq!(tats, [2_000_000_000]); // a denial writes nothing
//! # Ok::<(), tollgate::QuotaError>(())
//! ```

use std::time::Duration;

use super::limits::MAX_DIMENSIONS;
use super::store::{Admit, Change, Decision, Denial, QueuePlace};
use crate::algorithm::{Gcra, Outcome, StateMachine};
use crate::snapshot::duration_to_nanos;
use crate::{Quota, Snapshot};

/// Decides `costs` against `quotas` at `now`, over the TATs of a key's
/// dimensions (one per quota): admits in every dimension at the latest
/// instant any of them allows, if that is at most `max_wait` nanoseconds
/// away, writing the new TATs into `tats`; or denies, writing nothing.
///
/// Every dimension is charged at the same instant (the admission's), so
/// that no dimension counts an admission before it happens. A cost of 0
/// in a dimension reads it without spending; a cost over a dimension's
/// burst is [`Denial::CostExceedsBurst`]. `held` is the key's pause count, copied
/// into the answer.
pub fn decide(
    tats: &mut [u64],
    quotas: &[Quota],
    costs: &[u64],
    now: u64,
    max_wait: u64,
    held: u64,
) -> Decision {
    let n = tats
        .len()
        .min(quotas.len())
        .min(costs.len())
        .min(MAX_DIMENSIONS);
    let mut admit = Admit::now(Snapshot::from_count(0, 0, 0));
    admit.place = QueuePlace::new(Duration::from_nanos(held));
    // The instant every dimension admits: the latest of their earliest.
    let mut due = now;
    let mut blocking = None;
    for i in 0..n {
        let (Some(quota), Some(&tat), Some(&cost)) = (quotas.get(i), tats.get(i), costs.get(i))
        else {
            break;
        };
        let gcra = Gcra::new(quota);
        admit
            .place
            .set_step(i, Duration::from_nanos(gcra.interval()));
        match gcra.decide(&tat, now, cost, u64::MAX) {
            Outcome::Admit { due: at, .. } => {
                admit
                    .place
                    .set_due(i, Duration::from_nanos(at.saturating_sub(now)));
                if at > due {
                    due = at;
                    blocking = Some(i);
                }
            }
            Outcome::Never => {
                return Decision::Deny(Denial::CostExceedsBurst {
                    dimension: i,
                    snapshot: gcra.snapshot(&tat, now),
                })
            }
            // Never denied with an unbounded wait.
            Outcome::Deny { .. } => {}
        }
    }
    let wait = due.saturating_sub(now);
    if let Some(dimension) = blocking.filter(|_| wait > max_wait) {
        let (quota, tat) = (quotas.get(dimension), tats.get(dimension));
        if let (Some(quota), Some(tat)) = (quota, tat) {
            return Decision::Deny(Denial::RateLimited {
                dimension,
                snapshot: Gcra::new(quota).snapshot(tat, now).retry_after_nanos(wait),
            });
        }
    }
    let mut tightest: Option<Snapshot> = None;
    for ((tat, quota), &cost) in tats.iter_mut().zip(quotas).zip(costs).take(n) {
        let gcra = Gcra::new(quota);
        if cost != 0 {
            *tat = (*tat)
                .max(due)
                .saturating_add(cost.saturating_mul(gcra.interval()));
        }
        let snapshot = gcra.snapshot(tat, due);
        tightest = Some(match tightest {
            Some(t) if !tighter(&snapshot, &t) => t,
            _ => snapshot,
        });
    }
    admit.wait = Duration::from_nanos(wait);
    admit.snapshot = tightest.unwrap_or_else(|| Snapshot::from_count(0, 0, 0));
    Decision::Admit(admit)
}

/// Whether `a` has less room than `b`, relative to their limits: how
/// [`decide`] picks the tightest dimension's snapshot of an admission.
pub fn tighter(a: &Snapshot, b: &Snapshot) -> bool {
    let ratio = |x: &Snapshot, y: &Snapshot| {
        u128::from(x.remaining()).saturating_mul(u128::from(y.limit()))
    };
    ratio(a, b) < ratio(b, a)
}

/// One dimension's TAT after `change` at `now`, under `quota` (the limit in
/// force after the change: for [`Change::Observe`], the learnt one).
///
/// [`Change::HoldFor`] is the key's, not the dimension's: see [`pause`]
/// and [`hold`]; here it and the limit changes leave the TAT alone.
pub fn apply(tat: u64, quota: &Quota, now: u64, change: Change) -> u64 {
    let gcra = Gcra::new(quota);
    let (interval, capacity) = (gcra.interval(), gcra.capacity());
    match change {
        Change::Keep | Change::Limit(_) | Change::Unlimit | Change::HoldFor(_) => tat,
        Change::Charge(n) => tat.max(now).saturating_add(n.saturating_mul(interval)),
        Change::Refund(n) => tat.saturating_sub(n.saturating_mul(interval)),
        Change::AtMost(n) | Change::Observe { remaining: n, .. } => {
            // Room now is `capacity - debt`; at most n units of it may stay.
            let floor = now
                .saturating_add(capacity)
                .saturating_sub(n.saturating_mul(interval));
            if n >= gcra.burst() {
                tat
            } else {
                tat.max(floor)
            }
        }
    }
}

/// The fastest interval whose debt [`rescale`] counts in units: a limit
/// of a million a second or more never binds, and its debt is where the
/// other dimensions put its admissions, not what it spent.
pub const RESCALE_FROM_NS: u64 = 1_000;

/// One dimension's TAT when its limit changes from `old` to `new` at
/// `now`: what is spent (and reserved) stays spent, counted in units, so
/// the debt ahead of `now` is re-spaced at the new interval. A raised
/// limit brings the queued reservations closer; a lowered one pushes them
/// back. A full dimension stays full, and one whose old interval is at
/// most [`RESCALE_FROM_NS`] keeps its TAT. The re-spaced debt is rounded
/// up to a whole microsecond.
pub fn rescale(tat: u64, old: &Quota, new: &Quota, now: u64) -> u64 {
    let (from, to) = (old.interval_ns(), new.interval_ns());
    if tat <= now || from == to || from <= RESCALE_FROM_NS {
        return tat;
    }
    let debt = u128::from(tat.saturating_sub(now));
    // Rounded up to a whole microsecond, never in the caller's favour: a
    // store that counts in microseconds (Redis) computes the same TAT.
    let scaled = debt
        .saturating_mul(u128::from(to))
        .checked_div(u128::from(from))
        .map_or(debt, |_| {
            debt.saturating_mul(u128::from(to))
                .div_ceil(u128::from(from))
                .div_ceil(1_000)
                .saturating_mul(1_000)
        });
    now.saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX))
}

/// One dimension's TAT before and after [`rescale`], with its intervals and
/// capacity: what [`respace_followers`] reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Respaced {
    /// The TAT before the change.
    pub before: u64,
    /// The TAT re-spaced at the new interval.
    pub after: u64,
    /// The new interval, in nanoseconds.
    pub interval: u64,
    /// The old interval, in nanoseconds: at most [`RESCALE_FROM_NS`], the
    /// dimension never binds.
    pub old_interval: u64,
    /// The new limit's capacity (burst times interval), in nanoseconds.
    pub capacity: u64,
    /// Moved by a refund (its `after` is the refunded TAT), not re-spaced.
    pub refunded: bool,
}

impl Respaced {
    /// Its old interval was at most [`RESCALE_FROM_NS`]: it never binds.
    pub fn unbounded(&self) -> bool {
        self.old_interval <= RESCALE_FROM_NS
    }

    /// Re-spaced at a changed interval.
    fn moved(&self) -> bool {
        !self.unbounded() && self.after != self.before
    }
}

/// Every dimension's TAT after a changed limit: the re-spaced ones, and the
/// dimensions that did not place the last admission following them back.
///
/// When re-spacing brings the re-spaced dimensions' debt closer, the last
/// admission they allow (a TAT less one interval) moves closer by some
/// `shift`. A dimension whose limit is the same and which had room at that
/// admission (its TAT less its capacity before it) did not place it: its
/// debt is where the others put its admissions, so it moves back by the
/// same `shift` (to no earlier than that new last admission). A dimension
/// too fast to bind moves to at most that last admission. Left behind,
/// either would hold every later decision where the old spacing put it.
/// A dimension that placed the last admission (it had no room before it)
/// stays: its own limit spaced the queue.
///
/// A refund moves its dimension back too (its `after` is the refunded
/// TAT): then only a dimension too fast to bind that was refunded too
/// follows (its refund moves it by nothing; its TAT is where the others
/// put its admissions), and only where the refunded dimension had a queue
/// (a TAT ahead of `now`). A bounded dimension does not: from its TAT
/// alone, one whose own limit spaced the queue (a request limit with a
/// burst of one, say) looks like one the refunded dimension dragged, and
/// moved back it would admit beyond its limit. The waiters queued in the
/// process move by what their own positions say (see the budget's queue).
pub fn respace_followers(dimensions: &[Respaced], now: u64) -> [u64; MAX_DIMENSIONS] {
    let mut tats = [0u64; MAX_DIMENSIONS];
    for (slot, d) in tats.iter_mut().zip(dimensions) {
        *slot = d.after;
    }
    if !dimensions
        .iter()
        .any(|d| d.moved() && d.after < d.before && d.before > now)
    {
        return tats;
    }
    let last = |tat: u64, interval: u64| tat.saturating_sub(interval);
    let moved = || dimensions.iter().filter(|d| d.moved());
    let last_was = moved()
        .map(|d| last(d.before, d.old_interval))
        .max()
        .unwrap_or(0);
    let last_is = moved()
        .map(|d| last(d.after, d.interval))
        .max()
        .unwrap_or(0);
    let shift = last_was.saturating_sub(last_is);
    // A re-spacing moves every dimension's queue; a refund only its own.
    let respaced = dimensions.iter().any(|d| d.moved() && !d.refunded);
    for (slot, d) in tats.iter_mut().zip(dimensions) {
        let had_room = d.before.saturating_sub(d.capacity) < last_was;
        if respaced && !d.unbounded() && !d.moved() && had_room && d.before > last_is {
            *slot = d.before.saturating_sub(shift).max(last_is);
        }
    }
    let latest = tats
        .iter()
        .zip(dimensions)
        .filter(|(_, d)| !d.unbounded())
        .map(|(&tat, d)| last(tat, d.interval))
        .max()
        .unwrap_or(u64::MAX);
    // One too fast to bind follows when refunded too: its refund moves it
    // by nothing, and its TAT is where the others put its admissions.
    for (slot, d) in tats.iter_mut().zip(dimensions) {
        if d.unbounded() && (respaced || d.refunded) {
            *slot = (*slot).min(latest);
        }
    }
    tats
}

/// The limit learnt from what the other side states: `limit` over the
/// period of `quota` (the limit in force), when it is stated (non-zero),
/// differs from the burst in force, and makes a valid quota.
pub fn learn(quota: &Quota, limit: u64) -> Option<Quota> {
    if limit == 0 || limit == quota.burst_size() {
        return None;
    }
    Quota::new(limit, quota.period()).ok()
}

/// A dimension's own limit after `change`, where `in_force` is the limit
/// deciding it now: `Some(Some(quota))` when the change sets one (given,
/// or learnt by [`learn`]), `Some(None)` when it clears it (the default
/// applies again), `None` when it leaves the limit as it is.
pub fn own_limit(change: Change, in_force: &Quota) -> Option<Option<Quota>> {
    match change {
        Change::Limit(quota) => Some(Some(quota)),
        Change::Unlimit => Some(None),
        Change::Observe { limit, .. } => learn(in_force, limit).map(Some),
        _ => None,
    }
}

/// A key's pause that ends at `paused_until` (0: none), asked at `now` to
/// hold for `hold` nanoseconds more: answers the new end and by how much it
/// extends the pause in force (0 when one lasts longer already). Pauses
/// take the longest, never the sum.
pub fn pause(paused_until: u64, now: u64, hold: u64) -> (u64, u64) {
    let until = now.saturating_add(hold);
    let in_force = paused_until.max(now);
    let extension = until.saturating_sub(in_force);
    (in_force.max(until), extension)
}

/// One dimension's TAT when its key's pause now ends at `until`, having
/// been extended by `extension`: reservations already made move back by the
/// extension only, and the limit is empty when the pause ends but for one
/// unit, so that callers leave one by one.
pub fn hold(tat: u64, quota: &Quota, now: u64, until: u64, extension: u64) -> u64 {
    let gcra = Gcra::new(quota);
    let shifted = tat.max(now).saturating_add(extension);
    let empty = until
        .saturating_add(gcra.capacity())
        .saturating_sub(gcra.interval());
    shifted.max(empty)
}

/// One dimension's TAT after a refund of `n` while its key is paused until
/// `until`: it moves back, but not into the pause. Refusals that come
/// together are each refunded; were each to move the next admission
/// forward by an interval past the pause, the retries would all go when
/// it ends.
pub fn refund(tat: u64, quota: &Quota, now: u64, until: u64, n: u64) -> u64 {
    let back = apply(tat, quota, now, Change::Refund(n));
    if until <= now {
        return back;
    }
    back.max(tat.min(hold(0, quota, now, until, 0)))
}

/// One dimension at `now`, spending nothing.
pub fn snapshot(tat: u64, quota: &Quota, now: u64) -> Snapshot {
    Gcra::new(quota).snapshot(&tat, now)
}

/// A duration in the nanoseconds the transitions count in (saturating).
pub fn nanos(duration: Duration) -> u64 {
    duration_to_nanos(duration)
}
