//! Where limiters get the time from.
//!
//! Algorithms never read a clock: limiters read one and hand the reading on.
//! A reading is a count of nanoseconds since the clock's own origin; only
//! differences between readings of one clock mean anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::snapshot::duration_to_nanos;

/// A monotonic source of time for limiters.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_millis(5));
/// assert_eq!(clock.now() - before, 5_000_000);
/// ```
pub trait Clock: Send + Sync {
    /// Nanoseconds since this clock's origin. Never decreases.
    fn now(&self) -> u64;

    /// Blocks the calling thread for up to `duration`, for
    /// [`RateLimiter::acquire_blocking`](crate::RateLimiter::acquire_blocking).
    /// It may return early (the limiter wakes a blocked thread with
    /// [`std::thread::Thread::unpark`] when its turn moves up) and callers
    /// re-check the time. The default parks the thread; a [`ManualClock`]
    /// advances itself instead, so synchronous tests never wait.
    fn wait_blocking(&self, duration: Duration) {
        std::thread::park_timeout(duration);
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> u64 {
        (**self).now()
    }
    fn wait_blocking(&self, duration: Duration) {
        (**self).wait_blocking(duration);
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> u64 {
        (**self).now()
    }
    fn wait_blocking(&self, duration: Duration) {
        (**self).wait_blocking(duration);
    }
}

/// Tokio's clock, [`tokio::time::Instant`]: it follows
/// `tokio::time::pause()` and `tokio::time::advance()` on the runtime that
/// reads it, so limiters run on virtual time in `#[tokio::test(start_paused = true)]`.
///
/// Outside a paused runtime it reads the operating system's monotonic clock
/// (about 30 ns a read on a typical virtual machine).
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> u64 {
        duration_to_nanos(tokio::time::Instant::now().saturating_duration_since(self.origin))
    }
}

/// A fast monotonic clock: the CPU's time-stamp counter where it is
/// invariant, read through [`quanta`] (about 10 ns a read, a third of the
/// operating system's clock), and the operating system's clock elsewhere.
///
/// It does not follow Tokio's paused time: tests on virtual time use
/// [`TokioClock`] or the [`DefaultClock`] created inside the test's runtime.
#[derive(Clone, Debug)]
pub struct FastClock {
    clock: quanta::Clock,
    origin: u64,
}

impl FastClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self { clock, origin }
    }
}

impl Default for FastClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for FastClock {
    #[inline(always)]
    fn now(&self) -> u64 {
        self.clock.delta_as_nanos(self.origin, self.clock.raw())
    }
}

/// The clock limiters use unless told otherwise: fast in production, virtual
/// in tests.
///
/// Created inside a current-thread Tokio runtime (the only kind whose time
/// can be paused, and the kind `#[tokio::test]` builds) it reads
/// [`TokioClock`], so `tokio::time::pause()` and `advance()` move it, even
/// when time is paused after the limiter was made. Anywhere else (a
/// multi-thread runtime, plain threads) it reads the [`FastClock`].
///
/// A limiter made outside any runtime and then used inside a paused one does
/// not see virtual time: make it inside the runtime, or give it a
/// [`TokioClock`] explicitly.
#[derive(Clone, Debug)]
pub struct DefaultClock {
    inner: DefaultInner,
}

#[derive(Clone, Debug)]
enum DefaultInner {
    Tokio(TokioClock),
    Fast(FastClock),
}

impl DefaultClock {
    /// Chooses as described on the type, from the runtime of the calling
    /// thread.
    pub fn new() -> Self {
        let pausable = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
        let inner = if pausable {
            DefaultInner::Tokio(TokioClock::new())
        } else {
            DefaultInner::Fast(FastClock::new())
        };
        Self { inner }
    }

    /// Whether this clock follows Tokio's (possibly paused) time.
    pub fn follows_tokio(&self) -> bool {
        matches!(self.inner, DefaultInner::Tokio(_))
    }
}

impl Default for DefaultClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for DefaultClock {
    #[inline(always)]
    fn now(&self) -> u64 {
        match &self.inner {
            DefaultInner::Fast(clock) => clock.now(),
            DefaultInner::Tokio(clock) => clock.now(),
        }
    }
}

/// A clock that moves only when told to, for synchronous tests.
///
/// Clones share one time. [`wait_blocking`](Clock::wait_blocking) advances
/// the clock by the requested duration instead of sleeping, so
/// `acquire_blocking` returns at once with the clock moved to its slot.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{ManualClock, Quota, RateLimiter};
///
/// let clock = ManualClock::new();
/// let limiter = RateLimiter::builder(Quota::per_second(2)?).clock(clock.clone()).build();
/// assert!(limiter.check(2).is_ok());
/// assert!(limiter.check(1).is_err());
/// clock.advance(Duration::from_millis(500));
/// assert!(limiter.check(1).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `duration` (saturating).
    pub fn advance(&self, duration: Duration) {
        let by = duration_to_nanos(duration);
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Sets the clock to `nanos` since its origin, if that is not earlier than
    /// now: a clock never goes back.
    pub fn set(&self, nanos: u64) {
        self.nanos.fetch_max(nanos, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.nanos.load(Ordering::Acquire)
    }

    fn wait_blocking(&self, duration: Duration) {
        self.advance(duration);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_clock_outside_a_runtime_is_fast() {
        assert!(!DefaultClock::new().follows_tokio());
    }

    #[test]
    fn default_clock_in_a_multi_thread_runtime_is_fast() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        assert!(!rt.block_on(async { DefaultClock::new().follows_tokio() }));
    }

    #[tokio::test(start_paused = true)]
    async fn default_clock_follows_paused_time() {
        let clock = DefaultClock::new();
        assert!(clock.follows_tokio());
        let start = clock.now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.now() - start, 3_000_000_000);
    }

    #[tokio::test]
    async fn default_clock_follows_time_paused_after_it_was_made() {
        let clock = DefaultClock::new();
        tokio::time::pause();
        let start = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now() - start, 1_500_000_000);
    }

    #[test]
    fn fast_clock_moves_forward() {
        let clock = FastClock::new();
        let a = clock.now();
        std::thread::yield_now();
        assert!(clock.now() >= a);
    }

    #[test]
    fn manual_clock_never_goes_back() {
        let clock = ManualClock::new();
        clock.set(10);
        clock.set(5);
        assert_eq!(clock.now(), 10);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now(), u64::MAX);
    }
}
