//! What a call that names no output bound costs, learnt from what such
//! calls of the endpoint reported writing: the reservation starts from the
//! estimator's prior and converges on a high quantile of the recent
//! outputs, so that a body without `max_tokens` is not held to a guess of
//! a thousand tokens for ever.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// Outputs remembered, the most recent.
const REMEMBERED: usize = 64;
/// Outputs seen before the learnt figure replaces the prior.
const LEARNT_FROM: usize = 3;

/// The recent outputs of an endpoint's unbounded calls.
#[derive(Debug, Default)]
pub(crate) struct Outputs {
    recent: VecDeque<u64>,
}

impl Outputs {
    /// An unbounded call reported writing `tokens`.
    pub(crate) fn record(&mut self, tokens: u64) {
        if self.recent.len() == REMEMBERED {
            self.recent.pop_front();
        }
        self.recent.push_back(tokens);
    }

    /// What to reserve for the output of an unbounded call: the 90th
    /// percentile of the recent outputs (what nine calls in ten stay
    /// under; the rest settle above it), once a few are known.
    pub(crate) fn estimate(&self) -> Option<u64> {
        if self.recent.len() < LEARNT_FROM {
            return None;
        }
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        // The smallest output at or above 90% of them.
        let at = (sorted.len() * 9).div_ceil(10).saturating_sub(1);
        sorted.get(at).copied()
    }
}

/// The calls of an endpoint that go on the prior while its outputs are
/// not yet known: a few, so that a batch does not reserve a thousand
/// tokens a call before the first answer says what calls write.
#[derive(Debug, Default)]
pub(crate) struct Learning {
    on_prior: AtomicUsize,
    changed: Notify,
}

/// How long a call waits for the first outputs before it goes on the
/// prior anyway (a caller that never reports usage teaches nothing).
const PATIENCE: Duration = Duration::from_secs(10);

/// One call on the prior, until its answer is dropped or reported.
#[derive(Debug)]
pub(crate) struct OnPrior(Arc<Learning>);

impl Drop for OnPrior {
    fn drop(&mut self) {
        self.0.on_prior.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Learning {
    /// An output was learnt: the calls waiting look again.
    pub(crate) fn learnt(&self) {
        self.changed.notify_waiters();
    }

    /// Waits until `known` answers an estimate (`Ok`), or a place on the
    /// prior frees (`Err` with the place), or `PATIENCE` passes (`Err`
    /// without one).
    pub(crate) async fn wait(
        self: &Arc<Self>,
        known: impl Fn() -> Option<u64>,
    ) -> Result<u64, Option<OnPrior>> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(estimate) = known() {
                return Ok(estimate);
            }
            let taken = self
                .on_prior
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < LEARNT_FROM).then_some(n + 1)
                });
            if taken.is_ok() {
                return Err(Some(OnPrior(Arc::clone(self))));
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prior_stands_until_three_outputs_are_known() {
        let mut outputs = Outputs::default();
        outputs.record(20);
        outputs.record(20);
        assert_eq!(outputs.estimate(), None);
        outputs.record(20);
        assert_eq!(outputs.estimate(), Some(20));
    }

    #[test]
    fn the_estimate_is_what_nine_calls_in_ten_stay_under() {
        let mut outputs = Outputs::default();
        for tokens in 1..=10 {
            outputs.record(tokens * 10);
        }
        assert_eq!(outputs.estimate(), Some(90));
        // Only the last 64 count: a provider whose answers grew shorter is
        // learnt again.
        for _ in 0..64 {
            outputs.record(5);
        }
        assert_eq!(outputs.estimate(), Some(5));
    }
}
