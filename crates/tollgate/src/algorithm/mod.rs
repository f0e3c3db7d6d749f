//! The algorithms, as pure state transitions: each takes its state, `now`
//! (nanoseconds on the limiter's clock) and a cost, and answers with a new
//! state or a denial. None reads a clock or holds a lock; limiters do that.
//!
//! GCRA, the token bucket and the leaky bucket are one limit written three
//! ways and make identical decisions for identical input (a property test
//! holds them to it). The windows count the way providers often do.

mod gcra;
mod leaky_bucket;
mod token_bucket;
mod window;

pub(crate) use gcra::Gcra;
pub(crate) use leaky_bucket::{LeakyBucket, LeakyState};
pub(crate) use token_bucket::{TokenBucket, TokenState};
pub(crate) use window::{Window, WindowState};

use crate::Snapshot;

/// Which algorithm a limiter runs.
///
/// | algorithm | state | bound on what it admits in any interval of length `t` |
/// |---|---|---|
/// | [`Gcra`](Self::Gcra) (default) | one `u64`, lock-free | `burst + t / interval` |
/// | [`TokenBucket`](Self::TokenBucket) | tokens and a timestamp | the same, with the same decisions |
/// | [`LeakyBucket`](Self::LeakyBucket) | a level and a timestamp | the same, with the same decisions |
/// | [`FixedWindow`](Self::FixedWindow) | a count per window | `burst` per aligned window; `2 × burst` across a window edge |
/// | [`SlidingWindow`](Self::SlidingWindow) | counts of ten sub-windows | `burst` in any window-long interval |
///
/// Here `interval` is the quota's [replenish interval](crate::Quota::replenish_interval)
/// and a window lasts `burst × interval`: with the default burst, the
/// quota's period. Windows are aligned to the clock's origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// The generic cell rate algorithm: a theoretical arrival time that each
    /// admission pushes forward by `cost × interval`.
    #[default]
    Gcra,
    /// A bucket of `burst` tokens, refilled one per interval; a cost takes
    /// that many tokens.
    TokenBucket,
    /// A bucket that holds `burst` units and drains one per interval; a cost
    /// pours that many in.
    LeakyBucket,
    /// At most `burst` per window; the count starts again at each window's
    /// start. Simple, and what many providers publish, but it admits up to
    /// twice the burst around a window's edge.
    FixedWindow,
    /// At most `burst` in any window-long interval, counted over ten
    /// sub-windows. Where it is unsure (the oldest sub-window is partly out
    /// of the window) it counts the whole sub-window, so it never admits
    /// more than the bound, at the price of sometimes admitting a little less.
    SlidingWindow,
}

/// What a decision leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome<S> {
    /// Admitted at `due`: `now` when admitted at once, later for a
    /// reservation. `state` already accounts for the admission.
    Admit { state: S, due: u64 },
    /// Not within the allowed wait; the same cost fits `retry_after`
    /// nanoseconds from now.
    Deny { retry_after: u64 },
    /// The cost exceeds the burst and can never be admitted.
    Never,
}

/// The answers every algorithm shares: a cost of 0 reads without spending,
/// and a cost above the burst never fits.
#[inline(always)]
pub(crate) fn trivial<S: Copy>(state: &S, now: u64, cost: u64, burst: u64) -> Option<Outcome<S>> {
    if cost == 0 {
        Some(Outcome::Admit {
            state: *state,
            due: now,
        })
    } else if cost > burst {
        Some(Outcome::Never)
    } else {
        None
    }
}

/// A limit as a pure state machine.
pub(crate) trait StateMachine {
    type State: Copy + Send + 'static;

    /// The state of a limit that is full: nothing admitted yet.
    fn full(&self) -> Self::State;

    /// Admits `cost` at `now` if it fits, or else reserves the earliest slot
    /// that is at most `max_wait` away. With `max_wait == 0` this is a plain
    /// check. A cost of 0 is admitted without changing the state.
    fn decide(
        &self,
        state: &Self::State,
        now: u64,
        cost: u64,
        max_wait: u64,
    ) -> Outcome<Self::State>;

    /// The limit as seen at `now`, spending nothing.
    fn snapshot(&self, state: &Self::State, now: u64) -> Snapshot;

    /// Gives back a reservation of `cost` made for `due`. Returns the new
    /// state and how far (in nanoseconds) every later reservation moves up.
    fn cancel(&self, state: &Self::State, now: u64, cost: u64, due: u64) -> (Self::State, u64);
}

#[cfg(test)]
mod tests;
