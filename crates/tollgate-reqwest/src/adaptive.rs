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
//! - The first refusal sets the first rate: [`CUT`] of the most this
//!   process was admitted in one second. Answers that arrive until the
//!   pause ends can raise it (they lag the calls).
//! - Each later refusal cuts the rate in force by a tenth, or to [`CUT`]
//!   of the busiest second if that is lower. The busiest second is not
//!   learnt again: it holds the provider's burst as well as its rate, and
//!   relearnt at each refusal it put the rate back over the limit.
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
//! # Limits
//!
//! - The rate is this process's own. Through a shared store the model
//!   multiplies it by the fleet's size to get the key's. A process that
//!   the others crowded out of the shared budget learns a rate far below
//!   its part, and the key's strictest quota then slows the whole fleet
//!   (see the client's `benches/NOTES.md`). Counting the key's admissions
//!   in the store would give the fleet's busiest second instead.
//! - Each episode lasts at least a second, so repeated refusals cut the
//!   rate at most once a second: two processes on a bucket whose answers
//!   give `remaining` but no limit (Azure's) took about four seconds and
//!   150 refusals to come down (the efficiency matrix).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

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
/// the last [`WINDOW`] (at most [`SAMPLES`] of them).
#[derive(Debug, Default)]
pub(crate) struct Admitted(VecDeque<Instant>);

impl Admitted {
    /// An answer that was not a refusal came at `now`.
    pub(crate) fn push(&mut self, now: Instant) {
        self.0.push_back(now);
        while self.0.len() > SAMPLES
            || self
                .0
                .front()
                .is_some_and(|&t| now.saturating_duration_since(t) > WINDOW)
        {
            self.0.pop_front();
        }
    }

    /// The most answers remembered within any one second, a minute's worth.
    pub(crate) fn peak_per_minute(&self) -> f64 {
        let (mut peak, mut start) = (0usize, 0usize);
        for (end, &at) in self.0.iter().enumerate() {
            while self
                .0
                .get(start)
                .is_some_and(|&first| at.saturating_duration_since(first) >= Duration::from_secs(1))
            {
                start += 1;
            }
            peak = peak.max(end + 1 - start);
        }
        #[allow(clippy::cast_precision_loss)]
        let peak = peak as f64;
        peak * 60.0
    }
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

    /// When the episode in force ends, if one is.
    pub(crate) fn episode_end(&self, now: Instant) -> Option<Instant> {
        self.episode_end.filter(|&end| end > now)
    }

    /// An answer that was not a refusal came at `now`. Answers the new
    /// rate when it changed.
    pub(crate) fn admitted(&mut self, now: Instant) -> Option<u64> {
        self.admitted.push(now);
        if self.rechecking {
            // Answers of calls admitted before the first refusal, come
            // since: the first rate is what they show.
            if self.episode_end.is_none_or(|end| now >= end) {
                self.rechecking = false;
            }
            let seen = (CUT * self.admitted.peak_per_minute()).max(FLOOR);
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

    /// A refusal came at `now`, asking for a pause of `hold`. Answers the
    /// new rate when it was cut: once per episode.
    pub(crate) fn refused(&mut self, now: Instant, hold: Duration) -> Option<u64> {
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
        let seen = self.admitted.peak_per_minute();
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
        assert_eq!(rate.admitted(start), None, "nothing learnt yet");
        // A refusal before the others admitted with it have answered: no
        // guess, an episode of a second.
        assert_eq!(rate.refused(start, Duration::from_secs(1)), None);
        assert_eq!(
            rate.episode_end(start),
            Some(start + Duration::from_secs(1))
        );
        // Their answers set the rate as they come: ten in that second,
        // 540 a minute.
        for i in 1..10 {
            let learnt = rate.admitted(start + Duration::from_millis(120 + i));
            assert_eq!(learnt, Some(54 * (i + 1)));
        }
        // After the episode, each second grows it by 0.3% of 540 (1.62).
        assert_eq!(rate.admitted(start + Duration::from_millis(1_500)), None);
        assert_eq!(rate.admitted(start + Duration::from_secs(2)), Some(541));
        assert_eq!(rate.admitted(start + Duration::from_secs(4)), Some(544));
    }

    #[test]
    fn a_refusal_cuts_the_rate_in_force_once_per_episode() {
        let start = Instant::now();
        let mut rate = Adaptive::default();
        rate.refused(start, Duration::from_secs(1));
        for i in 0..10 {
            rate.admitted(start + Duration::from_millis(100 + 10 * i));
        }
        assert_eq!(rate.per_minute(), Some(540));
        // Later, 10 answers in a second again (the rate has grown 0.3% of
        // 540 a second since the episode's end, to 542.4), then a refusal:
        // a tenth off the rate in force, the busiest second (600 a
        // minute) being above it.
        let later = start + Duration::from_millis(2_500);
        for i in 0..10 {
            rate.admitted(later + Duration::from_millis(50 * i));
        }
        let refused_at = later + Duration::from_millis(600);
        assert_eq!(rate.refused(refused_at, Duration::from_secs(1)), Some(488));
        // Refusals of calls sent before it change nothing.
        let echo = refused_at + Duration::from_millis(300);
        assert_eq!(rate.refused(echo, Duration::from_secs(1)), None);
        // Nor do the answers that follow: only the first episode learns
        // from them (a second's count holds the provider's burst too).
        for i in 0..20 {
            let at = refused_at + Duration::from_millis(100 + 20 * i);
            assert_eq!(rate.admitted(at), None);
        }
        assert_eq!(rate.per_minute(), Some(488));
    }
}
