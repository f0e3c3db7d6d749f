//! GCRA, the default algorithm: one `u64` of state (the instant the limit
//! is full again), decided without a lock. [`Algorithm::Gcra`] in the
//! public API; the token and leaky buckets make the same decisions.
//!
//! [`Algorithm::Gcra`]: crate::Algorithm::Gcra

use std::num::NonZeroU64;

use crate::{Quota, Snapshot};

use super::{trivial, Outcome, StateMachine};

/// The generic cell rate algorithm. Its state is the theoretical arrival time
/// (TAT): the instant at which the limit would be full again. A cost is
/// admitted when, after pushing the TAT forward by `cost × interval`, the
/// TAT is at most `capacity` ahead of now.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gcra {
    interval: u64,
    capacity: u64,
    /// Never 0 (a `Quota` refuses it): known to the compiler, so that a
    /// check of one unit against the burst folds away.
    burst: NonZeroU64,
}

impl Gcra {
    pub(crate) const fn new(quota: &Quota) -> Self {
        Self {
            interval: quota.interval_ns(),
            capacity: quota.capacity_ns(),
            burst: match NonZeroU64::new(quota.burst_size()) {
                Some(burst) => burst,
                None => NonZeroU64::MIN,
            },
        }
    }

    pub(crate) const fn interval(&self) -> u64 {
        self.interval
    }

    pub(crate) const fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) const fn burst(&self) -> u64 {
        self.burst.get()
    }
}

impl StateMachine for Gcra {
    /// The theoretical arrival time.
    type State = u64;

    fn full(&self) -> u64 {
        0
    }

    #[inline(always)]
    fn decide(&self, &tat: &u64, now: u64, cost: u64, max_wait: u64) -> Outcome<u64> {
        if let Some(outcome) = trivial(&tat, now, cost, self.burst.get()) {
            return outcome;
        }
        // cost ≤ burst, and capacity = burst × interval fits (checked by
        // `Quota`): neither the product nor the difference wraps (and the
        // difference needs no test for it on this, the hottest path).
        let cost_ns = cost.saturating_mul(self.interval);
        let tolerance = self.capacity.wrapping_sub(cost_ns);
        // The first instant the cost fits, `tat + cost_ns − capacity`,
        // reached without a sum that could overflow: a denial is decided
        // before the new TAT is computed, so it costs the fewest steps.
        let earliest = tat.saturating_sub(tolerance);
        if earliest <= now {
            return Outcome::Admit {
                state: tat.max(now).saturating_add(cost_ns),
                due: now,
            };
        }
        let wait = earliest.saturating_sub(now);
        if wait <= max_wait {
            Outcome::Admit {
                state: tat.saturating_add(cost_ns),
                due: earliest,
            }
        } else {
            Outcome::Deny { retry_after: wait }
        }
    }

    #[inline(always)]
    fn snapshot(&self, &tat: &u64, now: u64) -> Snapshot {
        let reset_after = tat.saturating_sub(now);
        let spare = self.capacity.saturating_sub(reset_after);
        Snapshot::from_spare(self.burst.get(), spare, self.interval, reset_after)
    }

    fn cancel(&self, &tat: &u64, _now: u64, cost: u64, _due: u64) -> (u64, u64) {
        let cost_ns = cost.saturating_mul(self.interval);
        (tat.saturating_sub(cost_ns), cost_ns)
    }
}
