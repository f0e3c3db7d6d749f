//! Why a limiter said no.

use std::fmt;
use std::sync::Arc;
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
#[derive(Clone, Debug)]
pub struct Denied {
    kind: DeniedKind,
    cost: u64,
    snapshot: Snapshot,
    /// Boxed, so that the common denial stays small and allocates nothing.
    detail: Option<Box<Detail>>,
}

#[derive(Clone, Debug, Default)]
struct Detail {
    dimension: Option<Arc<str>>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
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
    /// The number of costs does not match the number of dimensions of the
    /// budget (pass one cost per dimension, in the order they were
    /// defined), or a dimension's index is past the last one.
    WrongDimensions,
    /// The store that holds the limit's state failed (a network store that
    /// is unreachable, say); [`std::error::Error::source`] tells why.
    /// Nothing is known to have been spent.
    StoreFailed,
    /// Every permit of a concurrency limit is held, and none came free
    /// within the wait allowed.
    Busy,
}

impl Denied {
    pub(crate) const fn new(kind: DeniedKind, cost: u64, snapshot: Snapshot) -> Self {
        Self {
            kind,
            cost,
            snapshot,
            detail: None,
        }
    }

    /// The same denial, naming the dimension of a budget that blocked.
    pub(crate) fn in_dimension(mut self, name: &Arc<str>) -> Self {
        self.detail.get_or_insert_with(Box::default).dimension = Some(Arc::clone(name));
        self
    }

    /// A denial because the store failed.
    pub(crate) fn store_failed(
        cost: u64,
        snapshot: Snapshot,
        source: Arc<dyn std::error::Error + Send + Sync>,
    ) -> Self {
        let mut denied = Self::new(DeniedKind::StoreFailed, cost, snapshot);
        denied.detail = Some(Box::new(Detail {
            dimension: None,
            source: Some(source),
        }));
        denied
    }

    /// Why the cost was not admitted.
    pub const fn kind(&self) -> DeniedKind {
        self.kind
    }

    /// The cost that was asked for (in the blocking dimension, for a
    /// budget of several dimensions).
    pub const fn cost(&self) -> u64 {
        self.cost
    }

    /// For a budget of several dimensions, the name of the dimension that
    /// blocked (`"input_tokens"`, say); `None` for a single limit.
    pub fn dimension(&self) -> Option<&str> {
        self.detail.as_ref()?.dimension.as_deref()
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
            DeniedKind::CostExceedsBurst
            | DeniedKind::NoRuntime
            | DeniedKind::WrongDimensions
            | DeniedKind::StoreFailed
            | DeniedKind::Busy => None,
        }
    }
}

impl PartialEq for Denied {
    /// Compares what was decided; a store failure's source is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.cost == other.cost
            && self.snapshot == other.snapshot
            && self.dimension() == other.dimension()
    }
}

impl Eq for Denied {}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let limit = self.snapshot.limit();
        let dimension = self
            .dimension()
            .map(|name| format!(" of {name}"))
            .unwrap_or_default();
        match self.kind {
            DeniedKind::RateLimited => {
                write!(
                    f,
                    "rate limited: a cost of {}{dimension} does not fit in the {} of {limit} remaining",
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
                "a cost of {}{dimension} can never be admitted: the limit admits at most {limit} \
                 at once; raise the quota's burst or split the work",
                self.cost
            ),
            DeniedKind::WrongDimensions => match self.dimension() {
                Some(index) => write!(
                    f,
                    "the budget has no dimension {index}: its {limit} dimensions are \
                     numbered from 0, in the order they were defined"
                ),
                None => write!(
                    f,
                    "{} costs were given for a budget of {limit} dimensions; \
                     pass one cost per dimension, in the order they were defined",
                    self.cost
                ),
            },
            DeniedKind::Busy => write!(
                f,
                "all {limit} places of the concurrency limit are taken; \
                 wait longer, or retry later"
            ),
            DeniedKind::StoreFailed => {
                f.write_str("the rate limit's store failed")?;
                if let Some(source) = self.detail.as_ref().and_then(|d| d.source.as_ref()) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
            DeniedKind::NoRuntime => f.write_str(
                "acquire() had to wait but no Tokio runtime runs on this thread; \
                 await it inside a runtime, or call acquire_blocking()",
            ),
        }
    }
}

impl std::error::Error for Denied {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let source = self.detail.as_ref()?.source.as_ref()?;
        Some(&**source as &(dyn std::error::Error + 'static))
    }
}
