//! Which answers are refusals: the middleware's policy of statuses.

use http::StatusCode;

/// What an answer's status means to the middleware.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// An answer to hand back (success or a final error): it spent its
    /// reservation.
    Done,
    /// Refused for rate: nothing was spent at the provider; every caller
    /// of the endpoint pauses for the wait asked, and the call is retried
    /// (bounded by `max_refusals`, not by the retry budget).
    RateLimited,
    /// The provider is overloaded (not this client's quota): the endpoint
    /// pauses as for a refusal, and the call is retried while attempts and
    /// the retry budget last.
    Overloaded,
}

/// Says what a status means: which answers are refusals for rate, which
/// say the provider is overloaded, and which are final.
///
/// The default, [`DefaultClassify`], takes 429 as a refusal for rate and
/// 503 and 529 (Anthropic's "overloaded") as overload. A closure
/// `Fn(StatusCode) -> Answer` is a classifier: a provider that answers its
/// dynamic rate limit with 503, say, can have 503 count as a refusal.
///
/// ```
/// use http::StatusCode;
/// use tollgate_reqwest::{Answer, DefaultClassify, RateLimitMiddleware, Classify};
///
/// let middleware = RateLimitMiddleware::builder()
///     .classify(|status: StatusCode| match status.as_u16() {
///         503 => Answer::RateLimited,
///         _ => DefaultClassify.classify(status),
///     })
///     .build();
/// ```
pub trait Classify: Send + Sync + 'static {
    /// What `status` means.
    fn classify(&self, status: StatusCode) -> Answer;
}

impl<F> Classify for F
where
    F: Fn(StatusCode) -> Answer + Send + Sync + 'static,
{
    fn classify(&self, status: StatusCode) -> Answer {
        self(status)
    }
}

/// 429 is a refusal for rate; 503 and 529 are overload; the rest is done.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultClassify;

impl Classify for DefaultClassify {
    fn classify(&self, status: StatusCode) -> Answer {
        match status.as_u16() {
            429 => Answer::RateLimited,
            503 | 529 => Answer::Overloaded,
            _ => Answer::Done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_reads_429_as_rate_and_503_529_as_overload() {
        let answer = |code: u16| DefaultClassify.classify(StatusCode::from_u16(code).unwrap());
        assert_eq!(answer(429), Answer::RateLimited);
        assert_eq!(answer(503), Answer::Overloaded);
        assert_eq!(answer(529), Answer::Overloaded);
        for code in [200, 201, 400, 401, 404, 408, 409, 500, 502] {
            assert_eq!(answer(code), Answer::Done, "{code}");
        }
    }
}
