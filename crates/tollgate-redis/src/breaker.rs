//! The store's circuit breaker: after consecutive failures, calls stay
//! away from Redis for a cool-down, then one call probes it.
//!
//! The breaker bench compiles this file into itself.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const PROBING: u8 = 2;

/// Opens after `threshold` consecutive failures; after `cool_down` lets
/// one call probe; closes on a success.
///
/// Written here rather than taken from `failsafe` (the kept crate of
/// circuit breakers): a call through it while Redis answers costs 5.2 ns
/// against `failsafe` 1.3's 26.2 ns on one thread, and 5.6 ns against
/// 104.5 ns on two threads sharing it (`failsafe` takes a lock on each
/// call; `cargo bench -p tollgate-redis --bench breaker`, this machine,
/// medians of nine interleaved rounds). And
/// `failsafe`'s half-open state lets every call through, where a Redis
/// coming back is sent one probe.
pub(crate) struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    threshold: u32,
    cool_down: Duration,
    opened: Mutex<Instant>,
    /// Whether the last call failed: one log line per change.
    failing: AtomicBool,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            threshold,
            cool_down,
            opened: Mutex::new(Instant::now()),
            failing: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state.load(Ordering::Relaxed) != CLOSED
    }

    pub(crate) fn allow(&self) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => {
                let opened = *self.opened.lock().unwrap_or_else(PoisonError::into_inner);
                opened.elapsed() >= self.cool_down
                    && self
                        .state
                        .compare_exchange(OPEN, PROBING, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            }
            _ => false,
        }
    }

    /// A call succeeded; whether the store was failing until now.
    pub(crate) fn success(&self) -> bool {
        // Read before written: while Redis answers, every call's success
        // only reads these lines, which stay shared between the cores
        // (a store each call made them bounce: 85 ns a call on two
        // threads, see the breaker bench).
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        // Both are reset: a circuit that was open was failing too, and the
        // next failure must be logged again.
        let was_open = self.state.load(Ordering::Acquire) != CLOSED
            && self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED;
        let was_failing =
            self.failing.load(Ordering::Relaxed) && self.failing.swap(false, Ordering::Relaxed);
        if was_open || was_failing {
            tracing::info!("Redis answers again: the rate limit store is back");
        }
        was_open || was_failing
    }

    /// A call failed; whether the circuit opened (again) now.
    pub(crate) fn failure(&self, error: &impl std::fmt::Display) -> bool {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(%error, "the Redis rate limit store is failing");
        }
        let state = self.state.load(Ordering::Acquire);
        if state == PROBING || (state == CLOSED && failures >= self.threshold) {
            *self.opened.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now();
            if self.state.swap(OPEN, Ordering::AcqRel) == CLOSED {
                // The failure itself was logged when it began.
                tracing::debug!(
                    failures,
                    cool_down = ?self.cool_down,
                    "the Redis rate limit store keeps failing: circuit open"
                );
            }
            return true;
        }
        false
    }
}
