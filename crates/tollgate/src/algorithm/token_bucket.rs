//! The token bucket ([`Algorithm::TokenBucket`]): a balance of tokens
//! refilled one per interval. It decides as GCRA does, for those who
//! reason in tokens; the property tests in `tests.rs` hold the two equal.
//!
//! [`Algorithm::TokenBucket`]: crate::Algorithm::TokenBucket

use crate::{Quota, Snapshot};

use super::{trivial, Outcome, StateMachine};

/// A bucket of tokens, counted in nanoseconds of refill (one token is one
/// replenish interval), so that it is exact with no fractions. A reservation
/// takes tokens the bucket does not have yet: the balance goes negative and
/// the reservation is due when refill has paid the debt back.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    interval: u64,
    capacity: u64,
    burst: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenState {
    /// Tokens × interval; negative while reservations are outstanding.
    balance: i128,
    /// When `balance` was last brought up to date.
    updated: u64,
}

impl TokenBucket {
    pub(crate) const fn new(quota: &Quota) -> Self {
        Self {
            interval: quota.interval_ns(),
            capacity: quota.capacity_ns(),
            burst: quota.burst_size(),
        }
    }

    /// The state refilled up to `now` (never backwards: a reading older than
    /// the last update refills nothing).
    fn refilled(&self, state: &TokenState, now: u64) -> TokenState {
        let elapsed = now.saturating_sub(state.updated);
        TokenState {
            balance: state
                .balance
                .saturating_add(i128::from(elapsed))
                .min(i128::from(self.capacity)),
            updated: state.updated.max(now),
        }
    }
}

impl TokenBucket {
    /// The GCRA theoretical arrival time that makes the same decisions as
    /// `state` from `now` on: how a change (a charge, a pause) is applied
    /// to a bucket exactly as to a TAT.
    pub(crate) fn tat(&self, state: &TokenState, now: u64) -> u64 {
        let state = self.refilled(state, now);
        let tat = i128::from(state.updated)
            .saturating_add(i128::from(self.capacity))
            .saturating_sub(state.balance);
        to_u64(tat)
    }

    /// The state that makes the same decisions as `tat` from `now` on.
    pub(crate) fn at_tat(&self, tat: u64, now: u64) -> TokenState {
        TokenState {
            balance: i128::from(self.capacity).saturating_sub(i128::from(tat.saturating_sub(now))),
            updated: now,
        }
    }
}

fn to_u64(n: i128) -> u64 {
    u64::try_from(n.max(0)).unwrap_or(u64::MAX)
}

impl StateMachine for TokenBucket {
    type State = TokenState;

    fn full(&self) -> TokenState {
        TokenState {
            balance: i128::from(self.capacity),
            updated: 0,
        }
    }

    fn decide(
        &self,
        state: &TokenState,
        now: u64,
        cost: u64,
        max_wait: u64,
    ) -> Outcome<TokenState> {
        if let Some(outcome) = trivial(state, now, cost, self.burst) {
            return outcome;
        }
        let mut state = self.refilled(state, now);
        let cost_ns = i128::from(cost.saturating_mul(self.interval));
        let wait = to_u64(cost_ns.saturating_sub(state.balance));
        if wait > max_wait {
            return Outcome::Deny { retry_after: wait };
        }
        state.balance = state.balance.saturating_sub(cost_ns);
        Outcome::Admit {
            state,
            due: now.saturating_add(wait),
        }
    }

    fn snapshot(&self, state: &TokenState, now: u64) -> Snapshot {
        let state = self.refilled(state, now);
        let reset_after = to_u64(i128::from(self.capacity).saturating_sub(state.balance));
        Snapshot::from_spare(
            self.burst,
            to_u64(state.balance),
            self.interval,
            reset_after,
        )
    }

    fn cancel(&self, state: &TokenState, now: u64, cost: u64, _due: u64) -> (TokenState, u64) {
        let cost_ns = cost.saturating_mul(self.interval);
        let mut state = self.refilled(state, now);
        state.balance = state
            .balance
            .saturating_add(i128::from(cost_ns))
            .min(i128::from(self.capacity));
        (state, cost_ns)
    }
}
