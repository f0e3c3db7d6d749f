//! The state of one limit behind the algorithm that runs it: lock-free for
//! GCRA, a short mutex for the others.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::algorithm::{Algorithm, Gcra, LeakyBucket, Outcome, StateMachine, TokenBucket, Window};
use crate::{Denied, DeniedKind, Quota, Snapshot};

pub(crate) enum Engine {
    Gcra { gcra: Gcra, tat: AtomicU64 },
    TokenBucket(Locked<TokenBucket>),
    LeakyBucket(Locked<LeakyBucket>),
    Window(Locked<Window>),
}

pub(crate) struct Locked<A: StateMachine> {
    algorithm: A,
    state: Mutex<A::State>,
}

impl<A: StateMachine> Locked<A> {
    fn new(algorithm: A) -> Self {
        let state = Mutex::new(algorithm.full());
        Self { algorithm, state }
    }

    fn with_state<R>(&self, f: impl FnOnce(&A, &mut A::State) -> R) -> R {
        // A panic cannot leave the state half-written: it is replaced whole.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&self.algorithm, &mut state)
    }

    fn decide(&self, now: u64, cost: u64, max_wait: u64) -> Result<(u64, Snapshot), Denied> {
        self.with_state(|algorithm, state| {
            let outcome = algorithm.decide(state, now, cost, max_wait);
            let answer = settle(algorithm, state, now, cost, outcome);
            if let Outcome::Admit { state: next, .. } = outcome {
                *state = next;
            }
            answer
        })
    }
}

/// Turns an outcome into the limiter's answer; the caller commits the state.
#[inline(always)]
fn settle<A: StateMachine>(
    algorithm: &A,
    state: &A::State,
    now: u64,
    cost: u64,
    outcome: Outcome<A::State>,
) -> Result<(u64, Snapshot), Denied> {
    match outcome {
        Outcome::Admit { state: next, due } => Ok((due, algorithm.snapshot(&next, now.max(due)))),
        Outcome::Deny { retry_after } => Err(Denied::new(
            DeniedKind::RateLimited,
            cost,
            algorithm
                .snapshot(state, now)
                .retry_after_nanos(retry_after),
        )),
        Outcome::Never => Err(Denied::new(
            DeniedKind::CostExceedsBurst,
            cost,
            algorithm.snapshot(state, now),
        )),
    }
}

impl Engine {
    pub(crate) fn new(quota: &Quota, algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Gcra => Self::Gcra {
                gcra: Gcra::new(quota),
                tat: AtomicU64::new(0),
            },
            Algorithm::TokenBucket => Self::TokenBucket(Locked::new(TokenBucket::new(quota))),
            Algorithm::LeakyBucket => Self::LeakyBucket(Locked::new(LeakyBucket::new(quota))),
            Algorithm::FixedWindow => Self::Window(Locked::new(Window::fixed(quota))),
            Algorithm::SlidingWindow => Self::Window(Locked::new(Window::sliding(quota))),
        }
    }

    /// Admits `cost` at `now`, or reserves a slot at most `max_wait` away.
    /// Answers with the instant the cost is due and the limit as it will be
    /// then.
    #[inline(always)]
    pub(crate) fn decide(
        &self,
        now: u64,
        cost: u64,
        max_wait: u64,
    ) -> Result<(u64, Snapshot), Denied> {
        match self {
            Self::Gcra { gcra, tat } => decide_gcra(gcra, tat, now, cost, max_wait),
            _ => self.decide_locked(now, cost, max_wait),
        }
    }

    /// Kept out of line so that the lock-free path stays small enough to
    /// inline into `check`.
    #[inline(never)]
    fn decide_locked(&self, now: u64, cost: u64, max_wait: u64) -> Result<(u64, Snapshot), Denied> {
        match self {
            Self::Gcra { gcra, tat } => decide_gcra(gcra, tat, now, cost, max_wait),
            Self::TokenBucket(locked) => locked.decide(now, cost, max_wait),
            Self::LeakyBucket(locked) => locked.decide(now, cost, max_wait),
            Self::Window(locked) => locked.decide(now, cost, max_wait),
        }
    }

    /// Gives back a reservation; answers how far later reservations move up.
    pub(crate) fn cancel(&self, now: u64, cost: u64, due: u64) -> u64 {
        match self {
            Self::Gcra { gcra, tat } => {
                let mut shift = 0;
                let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                    let (next, by) = gcra.cancel(&current, now, cost, due);
                    shift = by;
                    Some(next)
                });
                shift
            }
            Self::TokenBucket(locked) => locked.cancel(now, cost, due),
            Self::LeakyBucket(locked) => locked.cancel(now, cost, due),
            Self::Window(locked) => locked.cancel(now, cost, due),
        }
    }

    pub(crate) fn snapshot(&self, now: u64) -> Snapshot {
        match self {
            Self::Gcra { gcra, tat } => gcra.snapshot(&tat.load(Ordering::Relaxed), now),
            Self::TokenBucket(locked) => locked.snapshot(now),
            Self::LeakyBucket(locked) => locked.snapshot(now),
            Self::Window(locked) => locked.snapshot(now),
        }
    }
}

#[inline(always)]
fn decide_gcra(
    gcra: &Gcra,
    tat: &AtomicU64,
    now: u64,
    cost: u64,
    max_wait: u64,
) -> Result<(u64, Snapshot), Denied> {
    // Relaxed: the TAT guards no other memory; the CAS alone orders the
    // decisions.
    let mut current = tat.load(Ordering::Relaxed);
    loop {
        let outcome = gcra.decide(&current, now, cost, max_wait);
        if let Outcome::Admit { state, .. } = outcome {
            if state != current {
                if let Err(actual) =
                    tat.compare_exchange_weak(current, state, Ordering::Relaxed, Ordering::Relaxed)
                {
                    current = actual;
                    continue;
                }
            }
        }
        return settle(gcra, &current, now, cost, outcome);
    }
}

impl<A: StateMachine> Locked<A> {
    fn cancel(&self, now: u64, cost: u64, due: u64) -> u64 {
        self.with_state(|algorithm, state| {
            let (next, shift) = algorithm.cancel(state, now, cost, due);
            *state = next;
            shift
        })
    }

    fn snapshot(&self, now: u64) -> Snapshot {
        self.with_state(|algorithm, state| algorithm.snapshot(state, now))
    }
}
