//! Fixed and sliding windows ([`Algorithm::FixedWindow`],
//! [`Algorithm::SlidingWindow`]): counts per slot of time, as many
//! providers count. A fixed window admits up to twice its limit across an
//! edge; a sliding one never more than the limit in any window-long
//! interval. Use them to mirror a provider that counts this way.
//!
//! [`Algorithm::FixedWindow`]: crate::Algorithm::FixedWindow
//! [`Algorithm::SlidingWindow`]: crate::Algorithm::SlidingWindow

use crate::{Quota, Snapshot};

use super::{trivial, Outcome, StateMachine};

/// How many sub-windows a sliding window counts in.
const SUB_WINDOWS: u64 = 10;
// The sub-windows of one window, plus the partly expired one before them.
const _: () = assert!(MAX_SPAN as u64 == SUB_WINDOWS + 1);
/// Slots held: the sub-windows of one window, plus the partly expired one.
const MAX_SPAN: usize = 11;

/// Fixed and sliding windows, as one mechanism: time is cut into slots, each
/// with a count, and a cost fits in a slot when the counts of the last `span`
/// slots (this one included) plus the cost stay within the limit.
///
/// A fixed window is one slot a window long, counted alone. A sliding window
/// is ten slots a tenth of a window long, counted with the one before them
/// (which lies partly outside the window): any window-long interval lies
/// within the eleven slots before its end, so no interval ever holds more
/// than the limit.
///
/// Reservations go into future slots, in order: the state is the counts of
/// the `span` slots ending at the latest slot anything went into (the
/// cursor), which may be in the future. Nothing is ever placed before the
/// cursor, which keeps waiters in FIFO order and every count exact.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    slot_ns: u64,
    span: usize,
    limit: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WindowState {
    /// The latest slot anything was placed in, or that time has reached.
    cursor: u64,
    /// Counts of the slots `cursor - span + 1 ..= cursor`, at `slot % span`.
    counts: [u64; MAX_SPAN],
}

impl Window {
    pub(crate) fn fixed(quota: &Quota) -> Self {
        Self {
            slot_ns: quota.capacity_ns().max(1),
            span: 1,
            limit: quota.burst_size(),
        }
    }

    pub(crate) fn sliding(quota: &Quota) -> Self {
        Self {
            slot_ns: quota.capacity_ns().div_ceil(SUB_WINDOWS).max(1),
            span: MAX_SPAN,
            limit: quota.burst_size(),
        }
    }

    fn index(&self, slot: u64) -> usize {
        // span ≤ MAX_SPAN, so the remainder fits in usize.
        usize::try_from(slot.checked_rem(self.span as u64).unwrap_or(0)).unwrap_or(0)
    }

    /// Moves the cursor forward to `slot`, clearing the slots it passes.
    fn advance(&self, state: &mut WindowState, slot: u64) {
        if slot <= state.cursor {
            return;
        }
        if slot.saturating_sub(state.cursor) >= self.span as u64 {
            state.counts = [0; MAX_SPAN];
        } else {
            let mut s = state.cursor;
            while s < slot {
                s = s.saturating_add(1);
                let i = self.index(s);
                state.counts[i] = 0;
            }
        }
        state.cursor = slot;
    }

    fn used(&self, state: &WindowState) -> u128 {
        state.counts[..self.span]
            .iter()
            .map(|&c| u128::from(c))
            .sum()
    }

    fn slot_of(&self, instant: u64) -> u64 {
        // slot_ns ≥ 1 by construction.
        instant.checked_div(self.slot_ns).unwrap_or(instant)
    }

    /// The last slot that starts at an instant a u64 can hold.
    fn last_slot(&self) -> u64 {
        self.slot_of(u64::MAX)
    }

    fn slot_start(&self, slot: u64) -> u64 {
        slot.saturating_mul(self.slot_ns)
    }
}

/// Changes outside a decision. A window counts units in slots, not a debt,
/// so a change lands in a slot: never before the cursor's, so that no count
/// is lowered where a later window could miss it.
impl Window {
    /// `n` more units spent now (even beyond the limit).
    pub(crate) fn charge(&self, state: &WindowState, now: u64, n: u64) -> WindowState {
        let mut next = *state;
        self.advance(&mut next, self.slot_of(now));
        let i = self.index(next.cursor);
        next.counts[i] = next.counts[i].saturating_add(n);
        next
    }

    /// At most `n` units of room left now: the rest is counted spent.
    pub(crate) fn at_most(&self, state: &WindowState, now: u64, n: u64) -> WindowState {
        let room = self.snapshot(state, now).remaining();
        if room <= n {
            return *state;
        }
        self.charge(state, now, room.saturating_sub(n))
    }

    /// Gives back `n` units of a reservation not yet due: taken from the
    /// slots from now's on, oldest first, so that no slot later than the
    /// reservation's own loses a count (the reservation sits at or after
    /// every slot this lowers).
    pub(crate) fn give_back(&self, state: &WindowState, now: u64, n: u64) -> WindowState {
        let mut next = *state;
        let now_slot = self.slot_of(now);
        self.advance(&mut next, now_slot);
        let oldest = next
            .cursor
            .saturating_sub((self.span as u64).saturating_sub(1))
            .max(now_slot);
        let mut left = n;
        let mut slot = oldest;
        while left > 0 && slot <= next.cursor {
            let i = self.index(slot);
            let taken = next.counts[i].min(left);
            next.counts[i] = next.counts[i].saturating_sub(taken);
            left = left.saturating_sub(taken);
            slot = slot.saturating_add(1);
        }
        next
    }

    /// The state under `self` of what `old` counted in `state`: the same
    /// counts when the slots are alike, else everything counted moves to
    /// now's slot (or the latest reserved one), so that nothing spent is
    /// forgotten.
    pub(crate) fn rescaled(&self, old: &Window, state: &WindowState, now: u64) -> WindowState {
        if old.slot_ns == self.slot_ns && old.span == self.span {
            return *state;
        }
        let mut view = *state;
        old.advance(&mut view, old.slot_of(now));
        let used = u64::try_from(old.used(&view)).unwrap_or(u64::MAX);
        let ahead = view.cursor > old.slot_of(now);
        let mut next = self.full();
        let slot = if ahead {
            self.slot_of(old.slot_start(view.cursor))
        } else {
            self.slot_of(now)
        };
        self.advance(&mut next, slot);
        let i = self.index(next.cursor);
        next.counts[i] = used;
        next
    }
}

impl StateMachine for Window {
    type State = WindowState;

    fn full(&self) -> WindowState {
        WindowState {
            cursor: 0,
            counts: [0; MAX_SPAN],
        }
    }

    fn decide(
        &self,
        state: &WindowState,
        now: u64,
        cost: u64,
        max_wait: u64,
    ) -> Outcome<WindowState> {
        if let Some(outcome) = trivial(state, now, cost, self.limit) {
            return outcome;
        }
        let now_slot = self.slot_of(now);
        let mut next = *state;
        self.advance(&mut next, now_slot);
        // At most `span` moves: after that every count is clear, and the
        // cost fits an empty window. At the end of time (the last slot a
        // u64 of nanoseconds can name) the cursor cannot move: no slot
        // will ever come, so the cost is denied for as long as can be said.
        while self.used(&next).saturating_add(u128::from(cost)) > u128::from(self.limit) {
            let Some(slot) = next
                .cursor
                .checked_add(1)
                .filter(|&s| s <= self.last_slot())
            else {
                return Outcome::Deny {
                    retry_after: u64::MAX,
                };
            };
            self.advance(&mut next, slot);
        }
        let due = if next.cursor == now_slot {
            now
        } else {
            self.slot_start(next.cursor)
        };
        let wait = due.saturating_sub(now);
        if wait > max_wait {
            return Outcome::Deny { retry_after: wait };
        }
        let i = self.index(next.cursor);
        next.counts[i] = next.counts[i].saturating_add(cost);
        Outcome::Admit { state: next, due }
    }

    fn snapshot(&self, state: &WindowState, now: u64) -> Snapshot {
        let now_slot = self.slot_of(now);
        let mut view = *state;
        self.advance(&mut view, now_slot);
        let used = self.used(&view);
        let remaining = if view.cursor > now_slot {
            0
        } else {
            u64::try_from(u128::from(self.limit).saturating_sub(used)).unwrap_or(0)
        };
        // Full again once the newest counted slot has left the window.
        let newest = (0..self.span as u64)
            .map(|back| view.cursor.saturating_sub(back))
            .take_while(|&slot| slot.saturating_add(self.span as u64) > view.cursor)
            .find(|&slot| view.counts[self.index(slot)] > 0);
        let reset_after = newest.map_or(0, |slot| {
            self.slot_start(slot.saturating_add(self.span as u64))
                .saturating_sub(now)
        });
        Snapshot::from_count(self.limit, remaining, reset_after)
    }

    fn cancel(&self, state: &WindowState, _now: u64, cost: u64, due: u64) -> (WindowState, u64) {
        // Later reservations keep their slots: moving them up could overfill
        // a window. The cost leaves its own slot if that is still counted.
        let mut next = *state;
        let slot = self.slot_of(due);
        if slot <= next.cursor && slot.saturating_add(self.span as u64) > next.cursor {
            let i = self.index(slot);
            next.counts[i] = next.counts[i].saturating_sub(cost);
        }
        (next, 0)
    }
}
