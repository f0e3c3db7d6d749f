//! This process's share of a limit that other clients spend from too,
//! read from the provider's `remaining` against what this process spent.
//!
//! A provider's `remaining` counts every client of the key. Between two of
//! this process's answers, `remaining` fell by what everyone spent less
//! what refilled meanwhile, and this process knows what it spent itself:
//! `fell / spent_here` is at least how many clients spend alike (a refill
//! only makes it smaller). Readings are smoothed; from [`SEEN`] clients
//! the process paces at one over what it sees of the limit, below it at
//! the whole (where it sees fewer, it takes more at once). Without a store
//! shared between them, this is what keeps two or four processes on one
//! key from each pacing at the whole limit.
//!
//! - The first answer already tells something: what the window spent
//!   besides it (several processes starting together) sets the share
//!   until the first reading, two answers later.
//! - A reading across a refill, or a changed limit, says too little: a
//!   refill starts the next reading afresh, and so does a new limit.
//! - Each second the share grows by [`GROWTH`] of itself, up to what the
//!   last reading allows; where others were seen, a refusal cuts it to
//!   [`CUT`] of itself, once an episode.
//!
//! Only for the in-memory store: processes that share a store spend from
//! one budget already.
//!
//! What it cannot see: where a provider refills continuously and the key
//! is saturated, `remaining` hovers while everyone spends; a reading where
//! it fell by less than this process spent is a refill's and is not taken,
//! so the share holds where the earlier readings put it, and refusals cut
//! it. A store shared between the processes (Redis) needs no reading.

use std::time::Duration;

use tokio::time::Instant;

/// Answers of this process before the first reading (early: the others
/// are refused meanwhile), and between two later ones (enough to smooth
/// answers that come out of order).
const FIRST_SAMPLE: u64 = 2;
const SAMPLE: u64 = 6;
/// The clients seen (what `remaining` fell by over what this process
/// spent) from which the share falls: below it, the reading is taken as
/// noise (answers processed out of order, a refill).
const SEEN: f64 = 1.4;
/// The shortest reading: over less, answers that come together say
/// little.
const MIN_READING: Duration = Duration::from_millis(100);
/// At most this many processes starting together are read from the first
/// answer.
const STARTING: u64 = 16;
/// A reading under this (remaining fell by less than this process spent)
/// is a refill's, and is not taken.
const HIDDEN: f64 = 0.7;
/// How far each reading moves the clients seen toward it.
const SMOOTHING: f64 = 0.5;
/// Each second without a refusal, the share grows by this part of itself.
const GROWTH: f64 = 0.01;
/// A refusal within a stated limit cuts the share to this part of itself.
const CUT: f64 = 0.8;
/// The smallest share: 64 clients.
const FLOOR: f64 = 1.0 / 64.0;

#[derive(Debug)]
pub(crate) struct Share {
    share: f64,
    /// The most the last reading allows.
    bound: f64,
    /// The last reading.
    mark: Option<Mark>,
    /// Whether `remaining` counts requests: a provider that counts in
    /// other units (it falls faster than its limit allows) is not read.
    usable: bool,
    answers: u64,
    grown_at: Option<Instant>,
    episode_end: Option<Instant>,
    /// Whether a reading ever showed other clients.
    others: bool,
    /// Clients seen, readings smoothed.
    seen: Option<f64>,
}

/// Where a reading starts.
#[derive(Clone, Copy, Debug)]
struct Mark {
    at: Instant,
    limit: Option<u64>,
    remaining: u64,
    answers: u64,
}

impl Default for Share {
    fn default() -> Self {
        Self {
            share: 1.0,
            bound: 1.0,
            mark: None,
            usable: true,
            answers: 0,
            grown_at: None,
            episode_end: None,
            others: false,
            seen: None,
        }
    }
}

impl Share {
    /// The share in force: 1 when this process seems alone.
    pub(crate) fn get(&self) -> f64 {
        self.share
    }

    /// An answer that spent one request here, with the provider's
    /// `remaining` after it and the (per-minute) limit it states. Answers
    /// the new share when it changed.
    pub(crate) fn answered(
        &mut self,
        now: Instant,
        limit: Option<u64>,
        remaining: u64,
    ) -> Option<f64> {
        if !self.usable {
            return None;
        }
        self.answers += 1;
        let before = self.share;
        let mark = Mark {
            at: now,
            limit,
            remaining,
            answers: self.answers,
        };
        match self.mark {
            Some(last) if remaining <= last.remaining && last.limit == limit => {
                let spent_here = self.answers - last.answers;
                let sample = if self.seen.is_some() {
                    SAMPLE
                } else {
                    FIRST_SAMPLE
                };
                let elapsed = now.saturating_duration_since(last.at);
                if spent_here >= sample && elapsed >= MIN_READING {
                    let fell = last.remaining - remaining;
                    if !plausible(fell, elapsed, limit) {
                        tracing::info!(
                            fell,
                            ?elapsed,
                            limit,
                            "remaining falls faster than its limit allows: not counted in requests, not read for a share"
                        );
                        self.usable = false;
                        self.share = 1.0;
                        self.bound = 1.0;
                        return changed(before, self.share);
                    }
                    #[allow(clippy::cast_precision_loss)]
                    let reading = fell as f64 / spent_here as f64;
                    // Well under what this process spent itself: a
                    // refill hid the spending, and says nothing of others.
                    if reading >= HIDDEN {
                        self.read(reading);
                    }
                    self.mark = Some(mark);
                }
            }
            // The first answer: what the window spent besides it says how
            // many may be starting together, until the first reading
            // (a few at most: more is a past spend, or other units).
            None => {
                if let Some(spent) = limit.and_then(|l| l.checked_sub(remaining)) {
                    if (2..=STARTING).contains(&spent) {
                        #[allow(clippy::cast_precision_loss)]
                        let starting = spent as f64;
                        self.share = 1.0 / starting;
                    }
                }
                self.mark = Some(mark);
            }
            // `remaining` went up (a refill, a new window) or the limit
            // changed: start again from here.
            _ => self.mark = Some(mark),
        }
        self.grow(now);
        changed(before, self.share)
    }

    /// Takes one reading of the clients seen.
    fn read(&mut self, reading: f64) {
        let seen = match self.seen {
            Some(seen) => seen + SMOOTHING * (reading - seen),
            None => reading,
        };
        self.seen = Some(seen);
        if seen >= SEEN {
            // Others spend: this process's share is at most one of `seen`.
            self.others = true;
            self.bound = (1.0 / seen).max(FLOOR);
            self.share = self.bound;
        } else {
            // Alone, or nearly: back to that share at once.
            self.bound = 1.0;
            self.share = self.share.max((1.0 / seen.max(1.0)).min(1.0));
        }
    }

    /// A refusal, while this process paces within the stated limit. Cuts
    /// the share only where other clients were seen: a process alone
    /// keeps its rate (its refusals are the pacing's to answer).
    pub(crate) fn refused(&mut self, now: Instant, hold: Duration) -> Option<f64> {
        if !self.others || self.episode_end.is_some_and(|end| end > now) {
            return None;
        }
        let end = now + hold.max(Duration::from_secs(1));
        self.episode_end = Some(end);
        self.grown_at = Some(end);
        let before = self.share;
        self.share = (self.share * CUT).max(FLOOR);
        changed(before, self.share)
    }

    fn grow(&mut self, now: Instant) {
        let since = now.saturating_duration_since(self.grown_at.unwrap_or(now));
        if self.grown_at.is_none() || since >= Duration::from_secs(1) {
            if self.grown_at.is_some() {
                let grown = self.share * (1.0 + GROWTH * since.as_secs_f64());
                self.share = grown.min(self.bound).max(self.share.min(self.bound));
            }
            self.grown_at = Some(now);
        }
    }
}

/// Whether `remaining` falling by `fell` over `elapsed` can be requests
/// under a per-minute `limit`: at most four times its rate, and a
/// second's worth besides (a window's edge, a burst).
fn plausible(fell: u64, elapsed: Duration, limit: Option<u64>) -> bool {
    let Some(limit) = limit else {
        return true;
    };
    #[allow(clippy::cast_precision_loss)]
    let per_second = limit as f64 / 60.0;
    #[allow(clippy::cast_precision_loss)]
    let fell = fell as f64;
    fell <= per_second * (4.0 * elapsed.as_secs_f64() + 1.0)
}

/// The new share, when it moved by more than a hundredth.
fn changed(before: f64, after: f64) -> Option<f64> {
    ((after - before).abs() > 0.01 * before).then_some(after)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `answers` answers 100 ms apart from `start`, remaining falling by
    /// two each: another client spends as much as this one.
    fn two_alike(share: &mut Share, start: Instant, answers: u64) {
        for i in 0..answers {
            share.answered(
                start + Duration::from_millis(100 * i),
                Some(600),
                600 - 2 * (i + 1),
            );
        }
    }

    #[test]
    fn a_process_alone_keeps_the_whole_limit() {
        let start = Instant::now();
        let mut share = Share::default();
        // remaining falls by one an answer: this process spends it all.
        for i in 0..40u64 {
            let at = start + Duration::from_millis(100 * i);
            assert_eq!(share.answered(at, Some(600), 600 - i - 1), None);
        }
        assert!((share.get() - 1.0).abs() < f64::EPSILON);
        // A refill between answers changes nothing either.
        assert_eq!(
            share.answered(start + Duration::from_secs(5), Some(600), 590),
            None
        );
        assert!((share.get() - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn two_processes_spending_alike_take_half_each() {
        let start = Instant::now();
        let mut share = Share::default();
        // Each answer here, remaining fell by two: another spends as much.
        let mut learnt = None;
        for i in 0..5u64 {
            let at = start + Duration::from_millis(100 * i);
            learnt = share.answered(at, Some(600), 600 - 2 * (i + 1)).or(learnt);
        }
        assert_eq!(learnt, Some(0.5));
        // Two more come: readings move the share toward a quarter.
        let mut remaining = 590;
        for i in 0..40u64 {
            remaining -= 4;
            share.answered(
                start + Duration::from_millis(500 + 100 * i),
                Some(600),
                remaining,
            );
        }
        assert!((share.get() - 0.25).abs() < 0.005, "{}", share.get());
    }

    #[test]
    fn remaining_in_other_units_is_not_read() {
        let start = Instant::now();
        let mut share = Share::default();
        // 6,000 a minute, 100 a second, and remaining falls by 60 an
        // answer (a provider that counts its minute in seconds' slices):
        // six times what the limit allows. Read no further.
        for i in 0..40u64 {
            let at = start + Duration::from_millis(10 * i);
            assert_eq!(share.answered(at, Some(6_000), 6_000 - 60 * (i + 1)), None);
        }
        assert!((share.get() - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn a_refill_that_hides_the_spending_is_no_reading() {
        let start = Instant::now();
        let mut share = Share::default();
        // Two clients seen (the first reading, three answers in)...
        two_alike(&mut share, start, 3);
        assert!((share.get() - 0.5).abs() < 1e-9);
        // ...then the key saturated, refilled as fast as it is spent:
        // remaining falls by one every third answer. The share holds.
        let mut remaining = 594;
        for i in 0..60u64 {
            if i % 3 == 0 {
                remaining -= 1;
            }
            let at = start + Duration::from_millis(500 + 100 * i);
            assert_eq!(share.answered(at, Some(600), remaining), None, "{i}");
        }
        assert!((share.get() - 0.5).abs() < 1e-9, "{}", share.get());
    }

    #[test]
    fn a_changed_limit_is_no_reading() {
        let start = Instant::now();
        let mut share = Share::default();
        assert_eq!(share.answered(start, Some(1_200), 1_199), None);
        // The provider halves its limit: remaining falls by 600 at once.
        for i in 0..8u64 {
            let at = start + Duration::from_millis(100 * (i + 1));
            assert_eq!(share.answered(at, Some(600), 598 - i), None);
        }
        assert!((share.get() - 1.0).abs() < f64::EPSILON);
    }

    #[test]
    fn the_share_grows_back_when_the_others_stop() {
        let start = Instant::now();
        let mut share = Share::default();
        two_alike(&mut share, start, 5);
        assert!((share.get() - 0.5).abs() < 1e-9);
        // Alone again: remaining falls by one an answer. Each reading (six
        // answers) halves the way to one client seen. The first straddles
        // both phases: 8 fell over 6 answers, 1.33 seen, 1.67 smoothed.
        let mut at = start + Duration::from_millis(500);
        let mut remaining = 590;
        let mut alone = |n: usize, share: &mut Share| {
            for _ in 0..n {
                at += Duration::from_millis(200);
                remaining -= 1;
                share.answered(at, Some(600), remaining);
            }
        };
        alone(6, &mut share);
        assert!((share.get() - 0.6).abs() < 1e-9, "{}", share.get());
        // Then 1.0 seen: 1.33 smoothed, under the threshold of others: a
        // share of 0.75 at once.
        alone(6, &mut share);
        assert!((share.get() - 0.75).abs() < 1e-9, "{}", share.get());
        // Then the whole limit again, the last of it grown a second at a
        // time.
        alone(100, &mut share);
        assert!((share.get() - 1.0).abs() < f64::EPSILON, "{}", share.get());
    }

    #[test]
    fn a_refusal_cuts_once_an_episode_where_others_were_seen() {
        let start = Instant::now();
        let mut share = Share::default();
        // Alone: a refusal changes nothing.
        assert_eq!(share.refused(start, Duration::from_secs(1)), None);
        two_alike(&mut share, start, 5);
        let at = start + Duration::from_secs(3);
        assert_eq!(share.refused(at, Duration::from_secs(1)), Some(0.4));
        let echo = at + Duration::from_millis(300);
        assert_eq!(share.refused(echo, Duration::from_secs(1)), None);
        let later = at + Duration::from_secs(2);
        let cut = share.refused(later, Duration::from_secs(1)).unwrap();
        assert!((cut - 0.32).abs() < 1e-9);
    }
}
