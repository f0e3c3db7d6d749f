//! What the middleware returns instead of a response.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// The provider asked for a wait longer than the middleware's ceiling
/// ([`Builder::max_wait`](crate::Builder::max_wait)): the call returns at
/// once, carrying the wait, instead of holding the caller.
///
/// It reaches the caller inside `reqwest_middleware::Error::Middleware`;
/// read it back with [`RetryLater::from_error`].
///
/// ```
/// use tollgate_reqwest::RetryLater;
///
/// # fn handle(result: Result<reqwest::Response, reqwest_middleware::Error>) {
/// match result {
///     Err(error) => match RetryLater::from_error(&error) {
///         Some(later) => println!("come back in {:?}", later.wait()),
///         None => println!("failed: {error}"),
///     },
///     Ok(response) => println!("{}", response.status()),
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryLater {
    wait: Duration,
    status: Option<StatusCode>,
    ceiling: Duration,
}

impl RetryLater {
    pub(crate) fn new(wait: Duration, status: Option<StatusCode>, ceiling: Duration) -> Self {
        Self {
            wait,
            status,
            ceiling,
        }
    }

    /// How long the provider asks to wait; `Duration::MAX` when it asked
    /// for more than can be represented.
    pub const fn wait(&self) -> Duration {
        self.wait
    }

    /// The status of the response that asked for the wait; `None` when a
    /// pause the provider asked for earlier (of this call's endpoint, in
    /// force when the call came) holds that long.
    pub const fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The error, if it is a `RetryLater` of this middleware.
    pub fn from_error(error: &reqwest_middleware::Error) -> Option<&Self> {
        match error {
            reqwest_middleware::Error::Middleware(error) => error.downcast_ref::<Self>(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

impl fmt::Display for RetryLater {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status {
            Some(status) => write!(f, "the provider answered {status} and asks for a wait of ")?,
            None => write!(f, "the provider paused this endpoint for ")?,
        }
        if self.wait == Duration::MAX {
            return write!(
                f,
                "longer than can be counted (beyond the ceiling of {:.1} s): retry later",
                self.ceiling.as_secs_f64()
            );
        }
        write!(
            f,
            "{:.1} s, longer than the ceiling of {:.1} s: retry later",
            self.wait.as_secs_f64(),
            self.ceiling.as_secs_f64()
        )
    }
}

impl std::error::Error for RetryLater {}

/// A call whose estimated cost is larger than a limit allows in a whole
/// minute: no wait would let it through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooLarge {
    pub(crate) dimension: String,
    pub(crate) cost: u64,
}

impl TooLarge {
    /// The dimension it does not fit (`"input_tokens"`, say).
    pub fn dimension(&self) -> &str {
        &self.dimension
    }

    /// The estimated cost in that dimension.
    pub const fn cost(&self) -> u64 {
        self.cost
    }
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "this call is estimated at {} {}, more than the limit allows in a minute",
            self.cost, self.dimension
        )
    }
}

impl std::error::Error for TooLarge {}
