//! What a limiter knows at the moment of a decision.

use std::fmt;
use std::time::Duration;

/// The state of a limit as seen by one decision: how much the limit allows,
/// how much of it remains, when it is full again and, on a denial, when to
/// retry.
///
/// The same type serves both directions: a server writes its `RateLimit`
/// headers from a snapshot, and a client parses those headers back into one.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{ManualClock, Quota, RateLimiter};
///
/// let clock = ManualClock::new();
/// let limiter = RateLimiter::builder(Quota::per_second(10)?).clock(clock).build();
/// let snapshot = limiter.check(1)?;
/// assert_eq!(snapshot.limit(), 10);
/// assert_eq!(snapshot.remaining(), 9);
/// assert_eq!(snapshot.reset_after(), Duration::from_millis(100));
/// assert_eq!(snapshot.retry_after(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy)]
pub struct Snapshot {
    limit: u64,
    /// `remaining × unit_ns`, plus less than one unit: `remaining` is derived
    /// lazily, so that the GCRA admit path pays for no division that most
    /// callers never read. `unit_ns` is 1 for an exact count.
    spare: u64,
    unit_ns: u64,
    reset_after_ns: u64,
    /// `u64::MAX` for none: keeps the snapshot, and so every decision, small.
    retry_after_ns: u64,
}

const NO_RETRY: u64 = u64::MAX;

impl Snapshot {
    /// A snapshot from explicit values, for example parsed from response headers.
    ///
    /// `remaining` is clamped to `limit`.
    pub fn new(limit: u64, remaining: u64, reset_after: Duration) -> Self {
        Self::from_count(limit, remaining.min(limit), duration_to_nanos(reset_after))
    }

    /// The same snapshot, carrying a hint of when to retry.
    #[must_use]
    pub fn with_retry_after(self, retry_after: Duration) -> Self {
        self.retry_after_nanos(duration_to_nanos(retry_after))
    }

    #[inline]
    pub(crate) const fn from_spare(
        limit: u64,
        spare_ns: u64,
        interval_ns: u64,
        reset_after_ns: u64,
    ) -> Self {
        Self {
            limit,
            spare: spare_ns,
            unit_ns: interval_ns,
            reset_after_ns,
            retry_after_ns: NO_RETRY,
        }
    }

    #[inline]
    pub(crate) const fn from_count(limit: u64, remaining: u64, reset_after_ns: u64) -> Self {
        Self::from_spare(limit, remaining, 1, reset_after_ns)
    }

    #[inline]
    pub(crate) const fn retry_after_nanos(mut self, retry_after_ns: u64) -> Self {
        // A wait of u64::MAX ns (584 years) reads as one nanosecond less.
        self.retry_after_ns = if retry_after_ns == NO_RETRY {
            NO_RETRY - 1
        } else {
            retry_after_ns
        };
        self
    }

    /// How many units (requests, tokens) the limit admits at once when full:
    /// the quota's burst.
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// How many units could be admitted right now.
    pub fn remaining(&self) -> u64 {
        let remaining = if self.unit_ns <= 1 {
            self.spare
        } else {
            self.spare.checked_div(self.unit_ns).unwrap_or(0)
        };
        remaining.min(self.limit)
    }

    /// How long until the limit is full again, with nothing admitted meanwhile.
    pub const fn reset_after(&self) -> Duration {
        Duration::from_nanos(self.reset_after_ns)
    }

    /// On a denial, how long until the same cost would be admitted (given
    /// nothing else is admitted meanwhile). `None` on an admission, and for a
    /// cost that can never be admitted.
    pub const fn retry_after(&self) -> Option<Duration> {
        if self.retry_after_ns == NO_RETRY {
            None
        } else {
            Some(Duration::from_nanos(self.retry_after_ns))
        }
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.limit == other.limit
            && self.remaining() == other.remaining()
            && self.reset_after_ns == other.reset_after_ns
            && self.retry_after_ns == other.retry_after_ns
    }
}

impl Eq for Snapshot {}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("limit", &self.limit)
            .field("remaining", &self.remaining())
            .field("reset_after", &self.reset_after())
            .field("retry_after", &self.retry_after())
            .finish()
    }
}

/// Saturates at `u64::MAX` nanoseconds (about 584 years).
pub(crate) fn duration_to_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
