//! Why a limiter said no.

use std::fmt;
use std::time::Duration;

use crate::Snapshot;

/// A cost the limiter did not admit, with the state of the limit and, where
/// waiting would help, how long to wait.
///
/// ```
/// use std::time::Duration;
/// use tollgate::{DeniedKind, ManualClock, Quota, RateLimiter};
///
/// let limiter = RateLimiter::builder(Quota::per_second(2)?).clock(ManualClock::new()).build();
/// limiter.check(2)?;
/// let denied = limiter.check(1).unwrap_err();
/// assert_eq!(denied.kind(), DeniedKind::RateLimited);
/// assert_eq!(denied.retry_after(), Some(Duration::from_millis(500)));
///
/// let never = limiter.check(3).unwrap_err();
/// assert_eq!(never.kind(), DeniedKind::CostExceedsBurst);
/// assert_eq!(never.retry_after(), None);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denied {
    kind: DeniedKind,
    cost: u64,
    snapshot: Snapshot,
}

/// Why a cost was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeniedKind {
    /// The limit has no room now (or, for an acquire with a maximum wait,
    /// not soon enough); [`Denied::retry_after`] says when it will.
    RateLimited,
    /// The cost is larger than the burst: no amount of waiting admits it.
    CostExceedsBurst,
    /// An `acquire` had to wait, but no Tokio runtime runs on this thread
    /// to wait on. Nothing was spent.
    NoRuntime,
}

impl Denied {
    pub(crate) const fn new(kind: DeniedKind, cost: u64, snapshot: Snapshot) -> Self {
        Self {
            kind,
            cost,
            snapshot,
        }
    }

    /// Why the cost was not admitted.
    pub const fn kind(&self) -> DeniedKind {
        self.kind
    }

    /// The cost that was asked for.
    pub const fn cost(&self) -> u64 {
        self.cost
    }

    /// The limit as seen by the decision.
    pub const fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// How long until the same cost would be admitted, if nothing else is
    /// admitted meanwhile; `None` when waiting cannot help.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self.kind {
            DeniedKind::RateLimited => self.snapshot.retry_after(),
            DeniedKind::CostExceedsBurst | DeniedKind::NoRuntime => None,
        }
    }
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self.snapshot.limit();
        match self.kind {
            DeniedKind::RateLimited => {
                write!(
                    f,
                    "rate limited: a cost of {} does not fit in the {} of {limit} remaining",
                    self.cost,
                    self.snapshot.remaining()
                )?;
                if let Some(retry) = self.snapshot.retry_after() {
                    write!(f, "; retry after {retry:.3?}")?;
                }
                Ok(())
            }
            DeniedKind::CostExceedsBurst => write!(
                f,
                "a cost of {} can never be admitted: the limit admits at most {limit} at once; \
                 raise the quota's burst or split the work",
                self.cost
            ),
            DeniedKind::NoRuntime => f.write_str(
                "acquire() had to wait but no Tokio runtime runs on this thread; \
                 await it inside a runtime, or call acquire_blocking()",
            ),
        }
    }
}

impl std::error::Error for Denied {}
