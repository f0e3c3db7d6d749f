//! A request limit inferred from `remaining` alone, for a provider that
//! states what remains of its limit but not the limit (Azure's sparest
//! answers).
//!
//! Over a window of a minute, what remains after an answer plus what this
//! process spent in the minute before it is the limit, when this process
//! is alone on the key, and less when others spend too (they spent the
//! difference). So each answer gives an estimate, and the limit taken is
//! the least estimate of the last minute: one answer is enough to know
//! it, a limit that falls is followed at the next answer, and one that
//! rises within a minute.
//!
//! Several processes on one key each infer the limit less what the others
//! spend: together they pace at the limit, and none needs to know how
//! many they are.
//!
//! What it cannot see: a provider that refills continuously (a token
//! bucket) gives back during the minute what was spent in it, and the
//! estimate is then too high; the refusals that follow are the adaptive
//! rate's to answer (see `adaptive`): the rate in force is the lower of
//! the two.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The window a `remaining` is assumed to count: the per-minute limits
/// providers state.
const WINDOW: Duration = Duration::from_secs(60);
/// At most this many answers are remembered (a limit above 100,000 a
/// minute is inferred from a sample of them: every estimate then counts
/// fewer own answers than were spent, and is lower, never higher).
const SAMPLES: usize = 100_000;

/// One endpoint's inferred request limit.
#[derive(Debug, Default)]
pub(crate) struct Inferred {
    /// When this process's answers (requests spent) came, oldest first.
    spent: VecDeque<Instant>,
    /// The estimates of the last minute that may still be the least one:
    /// each is less than every later one (a monotonic queue).
    estimates: VecDeque<(Instant, u64)>,
}

impl Inferred {
    /// The limit inferred, a minute, once an answer said what remains.
    pub(crate) fn per_minute(&self) -> Option<u64> {
        self.estimates.front().map(|&(_, estimate)| estimate.max(1))
    }

    /// An answer that spent one request here came at `now`, saying
    /// `remaining` (of a limit it does not state). Answers the limit
    /// inferred when it changed.
    pub(crate) fn answered(&mut self, now: Instant, remaining: u64) -> Option<u64> {
        let before = self.per_minute();
        if self.spent.len() == SAMPLES {
            self.spent.pop_front();
        }
        self.spent.push_back(now);
        while self
            .spent
            .front()
            .is_some_and(|&at| now.saturating_duration_since(at) >= WINDOW)
        {
            self.spent.pop_front();
        }
        let spent = u64::try_from(self.spent.len()).unwrap_or(u64::MAX);
        let estimate = remaining.saturating_add(spent);
        while self
            .estimates
            .back()
            .is_some_and(|&(_, last)| last >= estimate)
        {
            self.estimates.pop_back();
        }
        self.estimates.push_back((now, estimate));
        while self
            .estimates
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) >= WINDOW)
        {
            self.estimates.pop_front();
        }
        let after = self.per_minute();
        (after != before).then_some(after).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A provider's window of a minute, as the tests' mock keeps it: the
    /// requests admitted in the last minute.
    struct SlidingMinute {
        limit: u64,
        admitted: VecDeque<Instant>,
    }

    impl SlidingMinute {
        /// Admits one request at `at`: what remains after it.
        fn admit(&mut self, at: Instant) -> u64 {
            while self
                .admitted
                .front()
                .is_some_and(|&t| at.saturating_duration_since(t) >= WINDOW)
            {
                self.admitted.pop_front();
            }
            self.admitted.push_back(at);
            self.limit - self.admitted.len() as u64
        }
    }

    #[test]
    fn one_answer_tells_the_limit_of_a_process_alone() {
        let start = Instant::now();
        let mut provider = SlidingMinute {
            limit: 600,
            admitted: VecDeque::new(),
        };
        let mut inferred = Inferred::default();
        assert_eq!(inferred.per_minute(), None);
        let remaining = provider.admit(start);
        assert_eq!(inferred.answered(start, remaining), Some(600));
        // Five a second for three minutes: a minute on, the window gives
        // back what was spent a minute before, and remaining and the
        // minute's spending move together.
        for i in 1..900u32 {
            let at = start + Duration::from_millis(200) * i;
            let remaining = provider.admit(at);
            assert_eq!(inferred.answered(at, remaining), None, "{i}");
        }
        assert_eq!(inferred.per_minute(), Some(600));
    }

    #[test]
    fn others_spending_lower_the_estimate() {
        let start = Instant::now();
        let mut inferred = Inferred::default();
        // Another process spends as much as this one: remaining falls by
        // two an answer, and the estimate by one.
        inferred.answered(start, 598);
        for i in 1..10u64 {
            let at = start + Duration::from_millis(100 * i);
            inferred.answered(at, 598 - 2 * i);
        }
        assert_eq!(inferred.per_minute(), Some(590));
    }

    #[test]
    fn a_raised_limit_is_followed_within_a_minute_and_a_lowered_one_at_once() {
        let start = Instant::now();
        let mut inferred = Inferred::default();
        assert_eq!(inferred.answered(start, 599), Some(600));
        // The provider raises the limit to 1,200 after 10 s: the lower
        // estimates are the least until they are a minute old.
        let raised = start + Duration::from_secs(10);
        assert_eq!(inferred.answered(raised, 1_198), None);
        // A minute on, the first answer has left the window (it holds
        // the answers of 10 s and 60 s).
        assert_eq!(
            inferred.answered(start + Duration::from_secs(60), 1_198),
            Some(1_200)
        );
        // Then lowers it to 300: the next answer says so.
        let lowered = start + Duration::from_secs(61);
        assert_eq!(inferred.answered(lowered, 297), Some(300));
    }
}
