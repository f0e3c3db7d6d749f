//! A run that meets nothing but refusals: every refusal counted as it
//! comes, and, after `--give-up-after` with no other answer, the run gives
//! up on the lines it has not sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The answers a run met so far: when the last one that was not a refusal
/// came, and how many refusals came in all.
#[derive(Debug)]
pub(crate) struct Stall {
    start: Instant,
    /// Milliseconds from `start` to the last answer that was not a
    /// refusal (or to the start).
    last_answer_ms: AtomicU64,
    limit: Duration,
    refused: AtomicU64,
}

impl Stall {
    /// A run that gives up after `limit` of nothing but refusals.
    pub(crate) fn new(limit: Duration) -> Self {
        Self {
            start: Instant::now(),
            last_answer_ms: AtomicU64::new(0),
            limit,
            refused: AtomicU64::new(0),
        }
    }

    /// An answer that was not a refusal came.
    pub(crate) fn answered(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_answer_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// A refusal (429, 503, 529) came.
    pub(crate) fn refused(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far.
    pub(crate) fn refusals(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// How long the run gives up after.
    pub(crate) fn limit(&self) -> Duration {
        self.limit
    }

    /// When the run gives up unless another answer comes first.
    fn deadline(&self) -> Instant {
        let last = Duration::from_millis(self.last_answer_ms.load(Ordering::Relaxed));
        self.start
            .checked_add(last.saturating_add(self.limit))
            .unwrap_or_else(|| self.start + Duration::from_secs(86_400 * 365))
    }

    /// Whether the run has given up.
    pub(crate) fn given_up(&self) -> bool {
        Instant::now() >= self.deadline()
    }

    /// Completes once the run has given up.
    pub(crate) async fn gave_up(&self) {
        loop {
            let deadline = self.deadline();
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_limit_from_the_last_answer() {
        let stall = Stall::new(Duration::from_secs(10));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(4)).await;
        stall.answered();
        stall.refused();
        assert!(!stall.given_up());
        stall.gave_up().await;
        assert_eq!(start.elapsed(), Duration::from_secs(14));
        assert!(stall.given_up());
        assert_eq!(stall.refusals(), 1);
    }
}
