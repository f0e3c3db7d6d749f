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
    burst: u64,
}

impl Gcra {
    pub(crate) const fn new(quota: &Quota) -> Self {
        Self {
            interval: quota.interval_ns(),
            capacity: quota.capacity_ns(),
            burst: quota.burst_size(),
        }
    }

    pub(crate) const fn interval(&self) -> u64 {
        self.interval
    }

    pub(crate) const fn capacity(&self) -> u64 {
        self.capacity
    }

    pub(crate) const fn burst(&self) -> u64 {
        self.burst
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
        if let Some(outcome) = trivial(&tat, now, cost, self.burst) {
            return outcome;
        }
        // cost ≤ burst, and burst × interval fits (checked by `Quota`).
        let cost_ns = cost.saturating_mul(self.interval);
        let new_tat = tat.max(now).saturating_add(cost_ns);
        let earliest = new_tat.saturating_sub(self.capacity);
        if earliest <= now {
            return Outcome::Admit {
                state: new_tat,
                due: now,
            };
        }
        let wait = earliest.saturating_sub(now);
        if wait <= max_wait {
            Outcome::Admit {
                state: new_tat,
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
        Snapshot::from_spare(self.burst, spare, self.interval, reset_after)
    }

    fn cancel(&self, &tat: &u64, _now: u64, cost: u64, _due: u64) -> (u64, u64) {
        let cost_ns = cost.saturating_mul(self.interval);
        (tat.saturating_sub(cost_ns), cost_ns)
    }
}
