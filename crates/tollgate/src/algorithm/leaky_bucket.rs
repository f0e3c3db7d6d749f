//! The leaky bucket ([`Algorithm::LeakyBucket`]): a level that drains one
//! unit per interval. It decides as GCRA does, for those who reason in
//! levels; the property tests in `tests.rs` hold the two equal.
//!
//! [`Algorithm::LeakyBucket`]: crate::Algorithm::LeakyBucket

use crate::{Quota, Snapshot};

use super::{trivial, Outcome, StateMachine};

/// A bucket that drains one unit per replenish interval. Its level is counted
/// in nanoseconds of draining (one unit is one interval), so it is exact. A
/// reservation pours in above the brim: it is due when the level has drained
/// back to where the cost fits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeakyBucket {
    interval: u64,
    capacity: u64,
    burst: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LeakyState {
    /// Units × interval; above `capacity` while reservations are outstanding.
    level: u128,
    /// When `level` was last brought up to date.
    updated: u64,
}

impl LeakyBucket {
    pub(crate) const fn new(quota: &Quota) -> Self {
        Self {
            interval: quota.interval_ns(),
            capacity: quota.capacity_ns(),
            burst: quota.burst_size(),
        }
    }

    fn drained(&self, state: &LeakyState, now: u64) -> LeakyState {
        let elapsed = now.saturating_sub(state.updated);
        LeakyState {
            level: state.level.saturating_sub(u128::from(elapsed)),
            updated: state.updated.max(now),
        }
    }

    /// The level at `now`, in units (floored).
    #[cfg(test)]
    pub(crate) fn level(&self, state: &LeakyState, now: u64) -> u128 {
        self.drained(state, now).level / u128::from(self.interval)
    }
}

impl LeakyBucket {
    /// The GCRA theoretical arrival time that makes the same decisions as
    /// `state` from `now` on.
    pub(crate) fn tat(&self, state: &LeakyState, now: u64) -> u64 {
        let state = self.drained(state, now);
        to_u64(u128::from(state.updated).saturating_add(state.level))
    }

    /// The state that makes the same decisions as `tat` from `now` on.
    pub(crate) fn at_tat(&self, tat: u64, now: u64) -> LeakyState {
        LeakyState {
            level: u128::from(tat.saturating_sub(now)),
            updated: now,
        }
    }
}

fn to_u64(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl StateMachine for LeakyBucket {
    type State = LeakyState;

    fn full(&self) -> LeakyState {
        LeakyState {
            level: 0,
            updated: 0,
        }
    }

    fn decide(
        &self,
        state: &LeakyState,
        now: u64,
        cost: u64,
        max_wait: u64,
    ) -> Outcome<LeakyState> {
        if let Some(outcome) = trivial(state, now, cost, self.burst) {
            return outcome;
        }
        let mut state = self.drained(state, now);
        let poured = state
            .level
            .saturating_add(u128::from(cost.saturating_mul(self.interval)));
        let wait = to_u64(poured.saturating_sub(u128::from(self.capacity)));
        if wait > max_wait {
            return Outcome::Deny { retry_after: wait };
        }
        state.level = poured;
        Outcome::Admit {
            state,
            due: now.saturating_add(wait),
        }
    }

    fn snapshot(&self, state: &LeakyState, now: u64) -> Snapshot {
        let state = self.drained(state, now);
        let spare = u128::from(self.capacity).saturating_sub(state.level);
        Snapshot::from_spare(
            self.burst,
            to_u64(spare),
            self.interval,
            to_u64(state.level),
        )
    }

    fn cancel(&self, state: &LeakyState, now: u64, cost: u64, _due: u64) -> (LeakyState, u64) {
        let cost_ns = cost.saturating_mul(self.interval);
        let mut state = self.drained(state, now);
        state.level = state.level.saturating_sub(u128::from(cost_ns));
        (state, cost_ns)
    }
}
