//! A request rate learnt from refusals alone, for an endpoint that states
//! no limit of its own. It is AIMD (additive increase, multiplicative
//! decrease), as in AWS's adaptive retry mode and Netflix's concurrency
//! limits.
//!
//! # Before the first refusal
//!
//! Calls go in a window of calls in flight (the middleware's slow start):
//! it grows by half each round trip, then by an eighth after the first 60
//! answers. So the first refusal finds few calls sent past the limit, and
//! no call has reserved a turn at a guessed rate.
//!
//! # Refusals
//!
//! - A refusal opens an *episode* as long as the pause it asks for (at
//!   least a second). Refusals of calls sent before it are not counted
//!   again.
//! - The first refusal sets the first rate: [`CUT`] of the busiest
//!   second, the most answers the key got in one second. Answers that
//!   arrive until the pause ends can raise it (they lag the calls).
//! - Each later refusal cuts the rate in force by a tenth, or to [`CUT`]
//!   of the busiest second if that is lower (read over a second of
//!   answers at least: calls that just began or resumed read low). The
//!   first rate is not learnt again: the busiest second holds the
//!   provider's burst as well as its rate, and relearnt at each refusal
//!   it put the rate back over the limit.
//! - Calls wait out the episode before taking their turn, so they are
//!   paced at the rate in force when it ends.
//!
//! # Growth
//!
//! Each second without a refusal, the rate grows by [`GROWTH`] of the
//! level it was cut to. Growth is slow because a provider's burst hides a
//! small excess for many seconds, and the refusal that ends it pauses
//! every call. Over 150 s of a provider of 600 a minute, 1% a second ran
//! at 70% of its rate, 0.3% at 93%.
//!
//! Calls are paced evenly at the rate: the endpoint's budget carries it as
//! its request limit.
//!
//! # Through a shared store
//!
//! The rate is the key's, for the whole fleet:
//!
//! - The busiest second is the fleet's. Each answer is counted in the
//!   store, under a key of its own ([`COUNTER_PERIOD`]); two readings of
//!   the count say how many answers the fleet got between them, even
//!   while this process got none (its calls queued behind the others').
//!   A process's own busiest second times the fleet's size was far off:
//!   one that joined late learnt a rate far below its part and wrote it
//!   for all, and the fleet ran at 10-72% of the allowed rate
//!   (`tests/fleet.rs`). Where the store does not count, that estimate
//!   stands in.
//! - The rate one process writes is the one the others take (the model's
//!   `adopt`): a cut by one is not written over by another's growth
//!   within the second; a process that joins a fleet that learnt the rate
//!   takes it at its first call, at its first refusal, or at its first
//!   answer after that refusal (its calls may all have been refused, and
//!   its retries queued behind the others'), rather than learning it
//!   again from its own few answers.
//!
//! # Limits
//!
//! - Counting takes a round trip to the store per answer, for endpoints
//!   whose rate is learnt through a store; a first refusal takes one more.
//! - Each process keeps its own episodes and growth: between two of its
//!   writes, the key holds the last one written.
//! - Each episode lasts at least a second, so repeated refusals cut the
//!   rate at most once a second: two processes on a bucket whose answers
//!   give `remaining` but no limit (Azure's) took about four seconds and
//!   150 refusals to come down (the efficiency matrix).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tollgate::Quota;

/// After a refusal, the rate becomes this share of the most admitted in a
/// second lately.
const CUT: f64 = 0.9;
/// Each second without a refusal, the rate grows by this share of the
/// level it was last cut to.
const GROWTH: f64 = 0.003;
/// How far back answers are remembered, and how many at most.
const WINDOW: Duration = Duration::from_secs(3);
const SAMPLES: usize = 8192;
/// The lowest rate, a minute.
const FLOOR: f64 = 1.0;

/// When the last answers that were not refusals came, oldest first, over
/// the last [`WINDOW`] (at most [`SAMPLES`] of them); and, through a
/// shared store, the readings of the key's count of answers taken with
/// them.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    own: VecDeque<Instant>,
    /// When each reading was taken, and the count's level then (see
    /// [`Counted`]), in the order taken.
    fleet: VecDeque<(Instant, Duration)>,
}

/// How a shared store counts a key's answers: each adds a second to a
/// level that drains a second a second ([`COUNTER_PERIOD`]), so that
/// between two readings the fleet answered the rise plus the time between
/// them. Exact while the fleet answers more than once a second; slower,
/// the level empties and the count reads low (the process's own count
/// then stands in).
pub(crate) const COUNTER_PERIOD: Duration = Duration::from_secs(1);
/// The answers the count holds: a fleet answering this many more than one
/// a second, for 34 years, fills it.
const COUNTER_BURST: u64 = 1 << 30;

/// The quota a shared store counts a key's answers under (see
/// [`COUNTER_PERIOD`]).
pub(crate) fn counter_quota() -> Option<Quota> {
    Quota::with_period(COUNTER_PERIOD)
        .and_then(|quota| quota.burst(COUNTER_BURST))
        .ok()
}

impl Admitted {
    /// An answer that was not a refusal came at `now`; `level` is the
    /// key's count in a shared store, read as it came.
    pub(crate) fn push(&mut self, now: Instant, level: Option<Duration>) {
        self.own.push_back(now);
        trim(&mut self.own, now, |&t| t);
        if let Some(level) = level {
            // Readings taken at once may reach here out of order.
            let at = self.fleet.partition_point(|&(t, _)| t <= now);
            self.fleet.insert(at, (now, level));
            trim(&mut self.fleet, now, |&(t, _)| t);
        }
    }

    /// Forgets what is older than [`WINDOW`] at `now`: a process that got
    /// no answer for a while (its calls queued behind others') must not
    /// read its last busy second as the fleet's.
    pub(crate) fn forget(&mut self, now: Instant) {
        trim(&mut self.own, now, |&t| t);
        trim(&mut self.fleet, now, |&(t, _)| t);
    }

    /// How long the answers remembered span, first to last (the readings
    /// of the key's count, where it is read).
    pub(crate) fn extent(&self) -> Duration {
        let span = |first: Instant, last: Instant| last.saturating_duration_since(first);
        match (self.fleet.front(), self.fleet.back()) {
            (Some(&(first, _)), Some(&(last, _))) => span(first, last),
            _ => match (self.own.front(), self.own.back()) {
                (Some(&first), Some(&last)) => span(first, last),
                _ => Duration::ZERO,
            },
        }
    }

    /// The most answers within any one second, a minute's worth: the
    /// key's, where a shared store counts them, else this process's times
    /// `sharers`.
    pub(crate) fn peak_per_minute(&self, sharers: u32) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let own = busiest(&self.own, |&t| t, |first, last| (last + 1 - first) as f64);
        let peak = match self.fleet_peak() {
            Some(fleet) => fleet.max(own),
            None => own * f64::from(sharers.max(1)),
        };
        peak * 60.0
    }

    /// The key's most answers in a second, from the readings of its count
    /// (`None` where none was read). Two readings tell how many answers
    /// the fleet got between them (the rise, plus what drained
    /// meanwhile); the busiest second is at least:
    ///
    /// - the most between readings within a second of each other, and
    /// - the most a second between readings a second apart or just more:
    ///   where this process got no answer for a while (its calls queued
    ///   behind others'), the fleet's mean over that time, not this
    ///   process's lull.
    fn fleet_peak(&self) -> Option<f64> {
        if self.fleet.is_empty() {
            return None;
        }
        let between = |first: usize, last: usize| {
            let ((t0, from), (t1, to)) = (self.fleet[first], self.fleet[last]);
            let apart = t1.saturating_duration_since(t0);
            let answers = (to.as_secs_f64() - from.as_secs_f64() + apart.as_secs_f64())
                / COUNTER_PERIOD.as_secs_f64();
            (answers.round().max(0.0), apart)
        };
        // Within a second, counting the first reading's own answer.
        let within = busiest(
            &self.fleet,
            |&(t, _)| t,
            |first, last| between(first, last).0 + 1.0,
        );
        // A second apart or just more.
        let second = Duration::from_secs(1);
        let mut spanning = 0.0f64;
        let mut first = 0;
        for (last, &(t1, _)) in self.fleet.iter().enumerate() {
            while self
                .fleet
                .get(first + 1)
                .is_some_and(|&(t, _)| t1.saturating_duration_since(t) >= second)
            {
                first += 1;
            }
            let (answers, apart) = between(first, last);
            if apart >= second {
                spanning = spanning.max(answers / apart.as_secs_f64());
            }
        }
        Some(within.max(spanning))
    }
}

/// Drops what is older than [`WINDOW`] before `now`, and the oldest past
/// [`SAMPLES`].
fn trim<T>(samples: &mut VecDeque<T>, now: Instant, at: impl Fn(&T) -> Instant) {
    while samples.len() > SAMPLES
        || samples
            .front()
            .is_some_and(|first| now.saturating_duration_since(at(first)) > WINDOW)
    {
        samples.pop_front();
    }
}

/// The most `count(first, last)` over the samples of any one second, by
/// their indices (samples in time order, each taken `at`).
fn busiest<T>(
    samples: &VecDeque<T>,
    at: impl Fn(&T) -> Instant,
    count: impl Fn(usize, usize) -> f64,
) -> f64 {
    let (mut peak, mut start) = (0.0f64, 0usize);
    for (end, last) in samples.iter().enumerate() {
        while samples.get(start).is_some_and(|first| {
            at(last).saturating_duration_since(at(first)) >= Duration::from_secs(1)
        }) {
            start += 1;
        }
        peak = peak.max(count(start, end));
    }
    peak
}

/// One endpoint's learnt rate.
#[derive(Debug, Default)]
pub(crate) struct Adaptive {
    /// The last answers that were not refusals.
    admitted: Admitted,
    /// The rate in force, requests a minute; none until learnt.
    rate: Option<f64>,
    /// The rate the last cut set: growth is a share of it.
    cycle_floor: f64,
    /// The end of the refusal episode in force.
    episode_end: Option<Instant>,
    /// Whether answers still check the cut (until the episode's end).
    rechecking: bool,
    grown_at: Option<Instant>,
}

impl Adaptive {
    /// The rate in force, in whole requests a minute, once learnt.
    pub(crate) fn per_minute(&self) -> Option<u64> {
        // At least the floor, and far below u64::MAX.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.rate.map(|r| r.max(FLOOR) as u64)
    }

    /// Whether the first rate is being learnt: from the first refusal to
    /// the end of its episode.
    pub(crate) fn learning_first_rate(&self) -> bool {
        self.rechecking
    }

    /// When the episode in force ends, if one is.
    pub(crate) fn episode_end(&self, now: Instant) -> Option<Instant> {
        self.episode_end.filter(|&end| end > now)
    }

    /// An answer that was not a refusal came at `now`, the key's count in
    /// a shared store at `level` then, if read, with `sharers` processes
    /// sharing it. Answers the new rate when it changed.
    pub(crate) fn admitted(
        &mut self,
        now: Instant,
        level: Option<Duration>,
        sharers: u32,
    ) -> Option<u64> {
        self.admitted.push(now, level);
        if self.rechecking {
            // Answers of calls admitted before the first refusal, come
            // since: the first rate is what they show.
            if self.episode_end.is_none_or(|end| now >= end) {
                self.rechecking = false;
            }
            let seen = (CUT * self.admitted.peak_per_minute(sharers)).max(FLOOR);
            if self.rate.is_none_or(|rate| seen > rate) {
                self.rate = Some(seen);
                self.cycle_floor = seen;
                return self.per_minute();
            }
        }
        let rate = self.rate?;
        let since = now.saturating_duration_since(self.grown_at.unwrap_or(now));
        if since < Duration::from_secs(1) {
            return None;
        }
        self.rate = Some(rate + GROWTH * self.cycle_floor * since.as_secs_f64());
        self.grown_at = Some(now);
        self.per_minute()
    }

    /// The rate another process of the fleet set for the key (a cut, a
    /// first rate), taken at `now` in place of this one's: growth starts
    /// from it, and a first episode no longer learns.
    pub(crate) fn adopt(&mut self, per_minute: u64, now: Instant) {
        #[allow(clippy::cast_precision_loss)]
        let rate = per_minute as f64;
        self.rate = Some(rate);
        self.cycle_floor = rate;
        self.rechecking = false;
        self.grown_at = Some(self.episode_end(now).unwrap_or(now));
    }

    /// A refusal came at `now`, asking for a pause of `hold`, with
    /// `sharers` processes sharing the store. Answers the new rate when it
    /// was cut: once per episode.
    pub(crate) fn refused(&mut self, now: Instant, hold: Duration, sharers: u32) -> Option<u64> {
        if self.episode_end(now).is_some() {
            return None;
        }
        let end = now + hold.max(Duration::from_secs(1));
        self.episode_end = Some(end);
        // Only the first episode learns from the answers that follow it:
        // later ones cut the rate in force. (A second's count of answers
        // holds the provider's burst as well as its rate: learnt again at
        // each refusal, it put the rate back over the limit each time.)
        self.rechecking = self.rate.is_none();
        // Growth starts once the episode is over.
        self.grown_at = Some(end);
        let rate = self.rate?;
        // A busiest second read over less than a second of answers (calls
        // that just began, or resumed, or a process whose calls queued
        // behind others') reads low.
        self.admitted.forget(now);
        let seen = if self.admitted.extent() >= Duration::from_secs(1) {
            self.admitted.peak_per_minute(sharers)
        } else {
            0.0
        };
        let cut = (CUT * if seen > 0.0 { seen.min(rate) } else { rate }).max(FLOOR);
        self.rate = Some(cut);
        self.cycle_floor = cut;
        self.per_minute()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_rate_comes_from_the_answers_of_the_first_episode() {
        let start = Instant::now();
        let mut rate = Adaptive::default();
        assert_eq!(rate.admitted(start, None, 1), None, "nothing learnt yet");
        // A refusal before the others admitted with it have answered: no
        // guess, an episode of a second.
        assert_eq!(rate.refused(start, Duration::from_secs(1), 1), None);
        assert_eq!(
            rate.episode_end(start),
            Some(start + Duration::from_secs(1))
        );
        // Their answers set the rate as they come: ten in that second,
        // 540 a minute.
        for i in 1..10 {
            let learnt = rate.admitted(start + Duration::from_millis(120 + i), None, 1);
            assert_eq!(learnt, Some(54 * (i + 1)));
        }
        // After the episode, each second grows it by 0.3% of 540 (1.62).
        assert_eq!(
            rate.admitted(start + Duration::from_millis(1_500), None, 1),
            None
        );
        assert_eq!(
            rate.admitted(start + Duration::from_secs(2), None, 1),
            Some(541)
        );
        assert_eq!(
            rate.admitted(start + Duration::from_secs(4), None, 1),
            Some(544)
        );
    }

    #[test]
    fn a_refusal_cuts_the_rate_in_force_once_per_episode() {
        let start = Instant::now();
        let mut rate = Adaptive::default();
        rate.refused(start, Duration::from_secs(1), 1);
        for i in 0..10 {
            rate.admitted(start + Duration::from_millis(100 + 10 * i), None, 1);
        }
        assert_eq!(rate.per_minute(), Some(540));
        // Later, 10 answers in a second again (the rate has grown 0.3% of
        // 540 a second since the episode's end, to 542.4), then a refusal:
        // a tenth off the rate in force, the busiest second (600 a
        // minute) being above it.
        let later = start + Duration::from_millis(2_500);
        for i in 0..10 {
            rate.admitted(later + Duration::from_millis(50 * i), None, 1);
        }
        let refused_at = later + Duration::from_millis(600);
        assert_eq!(
            rate.refused(refused_at, Duration::from_secs(1), 1),
            Some(488)
        );
        // Refusals of calls sent before it change nothing.
        let echo = refused_at + Duration::from_millis(300);
        assert_eq!(rate.refused(echo, Duration::from_secs(1), 1), None);
        // Nor do the answers that follow: only the first episode learns
        // from them (a second's count holds the provider's burst too).
        for i in 0..20 {
            let at = refused_at + Duration::from_millis(100 + 20 * i);
            assert_eq!(rate.admitted(at, None, 1), None);
        }
        assert_eq!(rate.per_minute(), Some(488));
    }

    #[test]
    fn through_a_shared_store_the_first_rate_is_the_fleets() {
        // Four processes share the store; this one got 3 answers in the
        // second after its first refusal, the fleet 100: from the first
        // reading to the last the key's count rose by 98.1 s and 0.9 s
        // drained, 99 answers after the first.
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut rate = Adaptive::default();
        rate.refused(start, Duration::from_secs(1), 4);
        let mut learnt = None;
        for (i, level) in [(0, 50_000), (450, 97_550), (900, 148_100)] {
            learnt = rate.admitted(start + ms(i), Some(ms(level)), 4);
        }
        // 90% of the fleet's 100 a second (not 4 x 3 x 90%).
        assert_eq!(learnt, Some(5_400));
        // Counted alone, as before: this process's busiest second times
        // the fleet's size.
        let mut alone = Adaptive::default();
        alone.refused(start, Duration::from_secs(1), 4);
        for i in [0, 450, 900] {
            alone.admitted(start + ms(i), None, 4);
        }
        assert_eq!(alone.per_minute(), Some(648));
        // A count that reads low (a fleet slower than a second's drain)
        // never takes the rate under this process's own (2 in a second).
        let mut low = Adaptive::default();
        low.refused(start, Duration::from_secs(1), 4);
        for i in [0, 500, 1_000] {
            low.admitted(start + ms(i), Some(ms(10)), 4);
        }
        assert_eq!(low.per_minute(), Some(108));
    }

    #[test]
    fn a_lull_of_this_process_is_not_the_fleets() {
        // This process's answers came in two bursts 2.5 s apart (its calls
        // queued behind the others' between them); the fleet answered 90
        // a second throughout. A refusal then cuts the rate in force (6,000
        // a minute) to 90% of the fleet's 90 a second over the lull, not to
        // 90% of the few answers this process got in a second.
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut rate = Adaptive::default();
        rate.adopt(6_000, start);
        // The count rises 90 seconds a second and drains one: 89 a second.
        let reading = |at: u64| (start + ms(at), Some(ms(100_000 + 89 * at)));
        for at in [0, 10, 20, 30, 40, 2_500, 2_510, 2_520, 2_530, 2_540] {
            let (now, level) = reading(at);
            rate.admitted(now, level, 4);
        }
        let refused = rate.refused(start + ms(2_560), Duration::from_secs(1), 4);
        assert_eq!(refused, Some(4_860));
    }

    #[test]
    fn answers_of_long_ago_are_not_the_busiest_second() {
        // One answer, then none for 5 s (the calls queued behind other
        // processes'), then a refusal: the rate in force (6,000 a minute)
        // is cut by a tenth, not to 90% of that one answer a second.
        let start = Instant::now();
        let mut rate = Adaptive::default();
        rate.admitted(start, Some(Duration::from_secs(2)), 2);
        rate.adopt(6_000, start);
        let later = start + Duration::from_secs(5);
        assert_eq!(rate.refused(later, Duration::from_secs(1), 2), Some(5_400));
    }
}
