//! A limit inferred from `remaining` alone, for a provider that states
//! what remains of its limit but not the limit (Azure's sparest answers):
//! one for requests, one for tokens.
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
//!
//! Tokens are inferred as requests are, each answer counting the tokens
//! its call reserved (the call's bound, where it names one: what it was
//! charged comes with its usage, later). Once the endpoint is known to
//! charge what was written (see the `cost` module's `Charges`), a call's
//! usage takes back what it reserved over its charge. Until then, a
//! provider that charges less than the bound makes each estimate higher
//! by the difference, as a bucket does.
//!
//! The same answers tell the window of a request limit that a provider
//! states with no reset and no window in the header's name (Azure's
//! `x-ratelimit-limit-requests` counts ten seconds, not a minute): what
//! the provider counts is this process's last `limit - remaining`
//! answers, and the one before them, not counted, is younger than a
//! minute. Ten seconds is taken after three answers in a row show it,
//! and given up for good at a refusal.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// The window a `remaining` is assumed to count: the per-minute limits
/// providers state.
const WINDOW: Duration = Duration::from_secs(60);
/// At most this many answers are remembered (a limit above 100,000
/// answers a minute is inferred from a sample of them: every estimate
/// then counts less than was spent, and is lower, never higher).
const SAMPLES: usize = 100_000;

/// The window a stated limit counts where a refusal showed that ten
/// seconds were wrong.
const MINUTE: Duration = Duration::from_secs(60);
/// The window a stated limit is taken to count where nothing says it:
/// Azure's, the one provider known to state a request limit with neither
/// reset nor window (its deployment's requests a minute over six).
const TEN_SECONDS: Duration = Duration::from_secs(10);
/// Answers in a row that show ten seconds before they are kept for good.
const VOTES: u32 = 3;

/// One endpoint's inferred limit of one dimension; for requests, the
/// window of a request limit it states without one too.
#[derive(Debug)]
pub(crate) struct Inferred {
    /// When this process's answers came and what each spent, oldest
    /// first.
    spent: VecDeque<(Instant, u64)>,
    /// What [`spent`](Self::spent) adds up to.
    total: u64,
    /// The estimates of the last minute that may still be the least one:
    /// each is less than every later one (a monotonic queue).
    estimates: VecDeque<(Instant, u64)>,
    /// The window of a stated request limit whose header names none and
    /// that comes with no reset: ten seconds until a refusal shows
    /// otherwise (then a minute).
    window: Duration,
    /// Answers in a row that showed ten seconds.
    votes: u32,
    /// The window is known for good: the answers showed ten seconds, the
    /// provider is known to count them, or a refusal showed a minute.
    settled: bool,
}

impl Default for Inferred {
    fn default() -> Self {
        Self {
            spent: VecDeque::new(),
            total: 0,
            estimates: VecDeque::new(),
            window: TEN_SECONDS,
            votes: 0,
            settled: false,
        }
    }
}

impl Inferred {
    /// The limit inferred, a minute, once an answer said what remains.
    pub(crate) fn per_minute(&self) -> Option<u64> {
        self.estimates.front().map(|&(_, estimate)| estimate.max(1))
    }

    /// An answer that spent `amount` here came at `now` (one, for
    /// requests).
    pub(crate) fn spent(&mut self, now: Instant, amount: u64) {
        if self.spent.len() == SAMPLES {
            self.forget_oldest();
        }
        self.spent.push_back((now, amount));
        self.total = self.total.saturating_add(amount);
        while self
            .spent
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) >= WINDOW)
        {
            self.forget_oldest();
        }
    }

    /// A call counted by [`spent`](Self::spent) was settled `by` lower
    /// than it reserved (what it was charged came with its usage): the
    /// latest answer counted gives it back.
    pub(crate) fn settled_lower(&mut self, by: u64) {
        if let Some((_, amount)) = self.spent.back_mut() {
            let by = by.min(*amount);
            *amount -= by;
            self.total = self.total.saturating_sub(by);
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, amount)) = self.spent.pop_front() {
            self.total = self.total.saturating_sub(amount);
        }
    }

    /// An answer (its spending counted by [`spent`](Self::spent)) says
    /// `remaining` of a limit it does not state. Answers the limit inferred
    /// when it changed.
    pub(crate) fn remaining(&mut self, now: Instant, remaining: u64) -> Option<u64> {
        let before = self.per_minute();
        let estimate = remaining.saturating_add(self.total);
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

    /// The window of a request limit stated without one.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// An answer (its spending counted) says `remaining` of a request
    /// `limit` whose window nothing states. Under a sliding window, what
    /// the provider counts is this process's last `limit - remaining`
    /// answers (more where others spend too): the one before them was not
    /// counted, so the window is shorter than its age, which under a
    /// minute's window cannot be under a minute. Where that age is well
    /// under a minute and the counted ones span about ten seconds, answer
    /// after answer, the limit counts ten seconds: kept for good. Answers
    /// the window when it was settled so.
    pub(crate) fn stated(&mut self, now: Instant, limit: u64, remaining: u64) -> Option<Duration> {
        if self.settled {
            return None;
        }
        let counted = usize::try_from(limit.saturating_sub(remaining)).unwrap_or(usize::MAX);
        let n = self.spent.len();
        if counted == 0 || n <= counted {
            // Fewer answers here than the window holds: no sign.
            return None;
        }
        let age = |newest: usize| now.saturating_duration_since(self.spent[n - newest].0);
        let (inside, outside) = (age(counted), age(counted + 1));
        let ten = outside < MINUTE * 5 / 6
            && inside < TEN_SECONDS * 6 / 5
            && outside >= TEN_SECONDS * 4 / 5;
        self.votes = if ten { self.votes + 1 } else { 0 };
        if self.votes >= VOTES {
            self.settled = true;
            return Some(self.window);
        }
        None
    }

    /// The provider is known to count ten seconds (Azure's): kept through
    /// refusals (which others sharing the deployment cause too).
    pub(crate) fn ten_seconds(&mut self) {
        self.window = TEN_SECONDS;
        self.settled = true;
    }

    /// A refusal came. Where ten seconds were not yet shown, they were
    /// wrong: a minute from now on. Answers the window when it changed.
    pub(crate) fn refused(&mut self) -> Option<Duration> {
        self.votes = 0;
        if self.settled {
            return None;
        }
        self.window = MINUTE;
        self.settled = true;
        Some(self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One answer that spent here, saying what remains.
    fn answer(inferred: &mut Inferred, at: Instant, remaining: u64) -> Option<u64> {
        inferred.spent(at, 1);
        inferred.remaining(at, remaining)
    }

    #[test]
    fn a_call_settled_lower_counts_at_its_charge() {
        let start = Instant::now();
        let mut tokens = Inferred::default();
        // 1,000 a minute; two calls reserved 72 each and were charged 32
        // (the provider's window says so).
        tokens.spent(start, 72);
        tokens.settled_lower(40);
        assert_eq!(tokens.remaining(start, 968), Some(1_000));
        tokens.spent(start + Duration::from_secs(1), 72);
        tokens.settled_lower(40);
        // Counted at its bound, the second call would make it 1,040 (the
        // least estimate still 1,000); counted at its charge, 1,000 again,
        // and a minute after the first call, still 1,000.
        assert_eq!(tokens.remaining(start + Duration::from_secs(1), 936), None);
        let later = start + Duration::from_millis(60_500);
        tokens.spent(later, 72);
        tokens.settled_lower(40);
        assert_eq!(tokens.remaining(later, 936), None);
        assert_eq!(tokens.per_minute(), Some(1_000));
    }

    /// A provider's sliding window, as the tests' mock keeps it: the
    /// requests admitted in the last `window`.
    struct Sliding {
        limit: u64,
        window: Duration,
        admitted: VecDeque<Instant>,
    }

    impl Sliding {
        fn new(limit: u64, window: Duration) -> Self {
            Self {
                limit,
                window,
                admitted: VecDeque::new(),
            }
        }

        /// Admits one request at `at`: what remains after it.
        fn admit(&mut self, at: Instant) -> u64 {
            while self
                .admitted
                .front()
                .is_some_and(|&t| at.saturating_duration_since(t) >= self.window)
            {
                self.admitted.pop_front();
            }
            self.admitted.push_back(at);
            self.limit.saturating_sub(self.admitted.len() as u64)
        }
    }

    #[test]
    fn one_answer_tells_the_limit_of_a_process_alone() {
        let start = Instant::now();
        let mut provider = Sliding::new(600, WINDOW);
        let mut inferred = Inferred::default();
        assert_eq!(inferred.per_minute(), None);
        let remaining = provider.admit(start);
        assert_eq!(answer(&mut inferred, start, remaining), Some(600));
        // Five a second for three minutes: a minute on, the window gives
        // back what was spent a minute before, and remaining and the
        // minute's spending move together.
        for i in 1..900u32 {
            let at = start + Duration::from_millis(200) * i;
            let remaining = provider.admit(at);
            assert_eq!(answer(&mut inferred, at, remaining), None, "{i}");
        }
        assert_eq!(inferred.per_minute(), Some(600));
    }

    #[test]
    fn others_spending_lower_the_estimate() {
        let start = Instant::now();
        let mut inferred = Inferred::default();
        // Another process spends as much as this one: remaining falls by
        // two an answer, and the estimate by one.
        answer(&mut inferred, start, 598);
        for i in 1..10u64 {
            let at = start + Duration::from_millis(100 * i);
            answer(&mut inferred, at, 598 - 2 * i);
        }
        assert_eq!(inferred.per_minute(), Some(590));
    }

    #[test]
    fn a_raised_limit_is_followed_within_a_minute_and_a_lowered_one_at_once() {
        let start = Instant::now();
        let mut inferred = Inferred::default();
        assert_eq!(answer(&mut inferred, start, 599), Some(600));
        // The provider raises the limit to 1,200 after 10 s: the lower
        // estimates are the least until they are a minute old.
        let raised = start + Duration::from_secs(10);
        assert_eq!(answer(&mut inferred, raised, 1_198), None);
        // A minute on, the first answer has left the window (it holds
        // the answers of 10 s and 60 s).
        assert_eq!(
            answer(&mut inferred, start + Duration::from_secs(60), 1_198),
            Some(1_200)
        );
        // Then lowers it to 300: the next answer says so.
        let lowered = start + Duration::from_secs(61);
        assert_eq!(answer(&mut inferred, lowered, 297), Some(300));
    }

    /// Paces answers at `limit` every `every_window` of the provider's,
    /// each stating `limit` and what remains of its window; answers when
    /// the window was settled and to what.
    fn paced(
        inferred: &mut Inferred,
        provider: &mut Sliding,
        start: Instant,
        answers: u32,
        every_window: Duration,
    ) -> Option<(Instant, Duration)> {
        let every = every_window / u32::try_from(provider.limit).unwrap();
        let mut changed = None;
        for i in 0..answers {
            let at = start + every * i;
            let remaining = provider.admit(at);
            inferred.spent(at, 1);
            if let Some(window) = inferred.stated(at, provider.limit, remaining) {
                changed = changed.or(Some((at, window)));
            }
        }
        changed
    }

    #[test]
    fn ten_seconds_until_the_answers_confirm_them() {
        let start = Instant::now();
        // 100 a ten seconds' window, paced at it: an answer every 100 ms.
        let mut provider = Sliding::new(100, TEN_SECONDS);
        let mut inferred = Inferred::default();
        assert_eq!(inferred.window(), TEN_SECONDS);
        // 101 answers, to 10 s: the last shows the first out of the
        // window (the first sign); the next two confirm it.
        assert_eq!(
            paced(&mut inferred, &mut provider, start, 101, TEN_SECONDS),
            None
        );
        let then = start + Duration::from_millis(10_100);
        assert_eq!(
            paced(&mut inferred, &mut provider, then, 5, TEN_SECONDS),
            Some((then + Duration::from_millis(100), TEN_SECONDS))
        );
        // Kept for good: a refusal (another process's bunch) changes
        // nothing.
        assert_eq!(inferred.refused(), None);
        assert_eq!(inferred.window(), TEN_SECONDS);
    }

    #[test]
    fn a_refusal_before_the_answers_confirm_ten_seconds_means_a_minute() {
        let start = Instant::now();
        // A minute's limit of 100, paced as ten seconds': the window holds
        // every answer of this process, and no answer shows ten seconds.
        let mut provider = Sliding::new(100, MINUTE);
        let mut inferred = Inferred::default();
        assert_eq!(
            paced(&mut inferred, &mut provider, start, 100, TEN_SECONDS),
            None
        );
        assert_eq!(inferred.window(), TEN_SECONDS);
        // The 101st is refused: a minute, for good.
        assert_eq!(inferred.refused(), Some(MINUTE));
        assert_eq!(inferred.refused(), None);
        let later = start + Duration::from_secs(70);
        assert_eq!(
            paced(&mut inferred, &mut provider, later, 300, MINUTE),
            None
        );
        assert_eq!(inferred.window(), MINUTE);
    }

    #[test]
    fn a_provider_known_to_count_ten_seconds_keeps_them() {
        let start = Instant::now();
        let mut inferred = Inferred::default();
        inferred.ten_seconds();
        assert_eq!(inferred.refused(), None);
        let mut provider = Sliding::new(100, MINUTE);
        assert_eq!(
            paced(&mut inferred, &mut provider, start, 150, MINUTE),
            None
        );
        assert_eq!(inferred.window(), TEN_SECONDS);
    }

    #[test]
    fn a_minute_never_shows_ten_seconds() {
        let start = Instant::now();
        // Alone, at the minute's rate, for three minutes.
        let mut provider = Sliding::new(100, MINUTE);
        let mut inferred = Inferred::default();
        assert_eq!(
            paced(&mut inferred, &mut provider, start, 300, MINUTE),
            None
        );
        // Another process spending as much: what the window holds is
        // older still.
        let mut provider = Sliding::new(100, MINUTE);
        let mut inferred = Inferred::default();
        let every = Duration::from_millis(1_200);
        for i in 0..150u32 {
            let at = start + every * i;
            provider.admit(at - Duration::from_millis(600));
            let remaining = provider.admit(at);
            inferred.spent(at, 1);
            assert_eq!(inferred.stated(at, 100, remaining), None, "{i}");
        }
        // Nothing settled: a refusal would still mean a minute.
        assert_eq!(inferred.refused(), Some(MINUTE));
    }
}
