//! One dimension of the provider's limit (requests or tokens): how it is
//! enforced, and what its `remaining` and reset tell.

use std::collections::VecDeque;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// How a dimension admits: the granularity providers enforce a minute's
/// limit at (OpenAI: "60,000 requests a minute may be enforced as 1,000 a
/// second").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforce {
    /// At most a slice's worth in each slice of the clock (`[0, 1 s)`,
    /// `[1 s, 2 s)`...): calls that do not divide it leave the rest unused.
    Slices,
    /// A bucket holding a slice's worth, refilled continuously.
    Bucket,
    /// At most a slice's worth in any slice-long stretch.
    Sliding,
}

/// What a dimension's `remaining` counts, and when its reset is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Report {
    /// A minute's bucket refilled continuously: what was spent and not yet
    /// refilled is missing; the reset is the time until it is full (as
    /// OpenAI and Anthropic document theirs). While calls are paced at the
    /// limit, `remaining` stays close to the limit.
    Bucket,
    /// What the last 60 s admitted; the reset is when the oldest of it
    /// leaves.
    Sliding,
    /// What this minute of the clock admitted; the reset is the minute's
    /// end.
    Fixed,
    /// What the last slice admitted, against a slice's worth (Azure's ten
    /// seconds); no reset.
    Slice,
}

/// A dimension's counting: how it admits, over what slice, and what it
/// reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counting {
    /// How calls are admitted.
    pub enforce: Enforce,
    /// The slice the minute's limit is enforced over (a slice holds
    /// `limit × slice / 60 s`); 1 s and 10 s are what providers use.
    pub slice: Duration,
    /// What `remaining` counts.
    pub report: Report,
}

impl Counting {
    /// A bucket refilled continuously, holding a slice's worth; reported as
    /// a minute's bucket.
    pub const fn bucket(slice: Duration) -> Self {
        Self {
            enforce: Enforce::Bucket,
            slice,
            report: Report::Bucket,
        }
    }

    /// A sliding window: a slice's worth over any slice; reported over the
    /// last minute.
    pub const fn sliding(slice: Duration) -> Self {
        Self {
            enforce: Enforce::Sliding,
            slice,
            report: Report::Sliding,
        }
    }

    /// A fixed window: a slice's worth in each slice of the clock; reported
    /// over the minute of the clock.
    pub const fn fixed(slice: Duration) -> Self {
        Self {
            enforce: Enforce::Slices,
            slice,
            report: Report::Fixed,
        }
    }
}

/// A dimension's state.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Admissions of the last minute: (when, amount), oldest first.
    log: VecDeque<(Duration, u64)>,
    /// The bucket's theoretical arrival time: when all that was spent is
    /// refilled.
    tat: Duration,
    /// The slice of the clock the last admission fell in, and what it holds.
    slice_index: u64,
    in_slice: u64,
}

/// What a dimension tells after a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Told {
    pub(crate) limit: u64,
    pub(crate) remaining: u64,
    pub(crate) reset: Duration,
}

fn per(limit: u64, span: Duration) -> u64 {
    // limit × span / 60 s, in whole units.
    let nanos = u128::from(limit).saturating_mul(span.as_nanos()) / MINUTE.as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX)
}

/// The time `amount` takes to refill at `limit` a minute.
fn refill(limit: u64, amount: u64) -> Duration {
    if limit == 0 {
        return MINUTE;
    }
    MINUTE.mul_f64(amount as f64 / limit as f64)
}

impl Meter {
    fn forget(&mut self, now: Duration) {
        while self
            .log
            .front()
            .is_some_and(|(at, _)| now.saturating_sub(*at) >= MINUTE)
        {
            self.log.pop_front();
        }
    }

    /// Whether `amount` fits now; if not, how long until it may.
    pub(crate) fn fits(
        &mut self,
        counting: Counting,
        limit: u64,
        now: Duration,
        amount: u64,
    ) -> Result<(), Duration> {
        self.forget(now);
        let room = per(limit, counting.slice);
        let slice_nanos = counting.slice.as_nanos().max(1);
        match counting.enforce {
            Enforce::Slices => {
                let index = u64::try_from(now.as_nanos() / slice_nanos).unwrap_or(u64::MAX);
                let used = if index == self.slice_index {
                    self.in_slice
                } else {
                    0
                };
                if used.saturating_add(amount) <= room {
                    return Ok(());
                }
                let next = Duration::from_nanos(
                    u64::try_from((u128::from(index) + 1) * slice_nanos).unwrap_or(u64::MAX),
                );
                Err(next.saturating_sub(now))
            }
            Enforce::Bucket => {
                let tat = self.tat.max(now) + refill(limit, amount);
                if tat <= now + counting.slice {
                    return Ok(());
                }
                Err(tat - (now + counting.slice))
            }
            Enforce::Sliding => {
                let within = |at: &Duration| now.saturating_sub(*at) < counting.slice;
                let mut used: u64 = self
                    .log
                    .iter()
                    .filter(|(at, _)| within(at))
                    .map(|(_, n)| n)
                    .sum();
                if used.saturating_add(amount) <= room {
                    return Ok(());
                }
                // Until enough of the stretch's admissions leave it.
                for (at, n) in self.log.iter().filter(|(at, _)| within(at)) {
                    used = used.saturating_sub(*n);
                    if used.saturating_add(amount) <= room {
                        return Err((*at + counting.slice).saturating_sub(now));
                    }
                }
                Err(counting.slice)
            }
        }
    }

    /// Records an admission of `amount` at `now`, after [`fits`](Self::fits).
    pub(crate) fn admit(&mut self, counting: Counting, limit: u64, now: Duration, amount: u64) {
        let slice_nanos = counting.slice.as_nanos().max(1);
        let index = u64::try_from(now.as_nanos() / slice_nanos).unwrap_or(u64::MAX);
        if index != self.slice_index {
            self.slice_index = index;
            self.in_slice = 0;
        }
        self.in_slice = self.in_slice.saturating_add(amount);
        self.tat = self.tat.max(now) + refill(limit, amount);
        self.log.push_back((now, amount));
    }

    /// What the dimension tells at `now`, as `report` counts.
    pub(crate) fn told(&mut self, counting: Counting, limit: u64, now: Duration) -> Told {
        self.forget(now);
        let (spent, reset) = match counting.report {
            Report::Slice => {
                let spent: u64 = self
                    .log
                    .iter()
                    .filter(|(at, _)| now.saturating_sub(*at) < counting.slice)
                    .map(|(_, n)| n)
                    .sum();
                let room = per(limit, counting.slice);
                return Told {
                    limit: room,
                    remaining: room.saturating_sub(spent),
                    reset: Duration::ZERO,
                };
            }
            Report::Bucket => {
                let owed = self.tat.saturating_sub(now);
                let spent = (owed.as_secs_f64() / 60.0 * limit as f64).ceil() as u64;
                (spent, owed)
            }
            Report::Sliding => {
                let spent = self.log.iter().map(|(_, n)| n).sum();
                let reset = self
                    .log
                    .front()
                    .map(|(at, _)| MINUTE.saturating_sub(now.saturating_sub(*at)))
                    .unwrap_or_default();
                (spent, reset)
            }
            Report::Fixed => {
                let minute = now.as_secs() / 60;
                let spent = self
                    .log
                    .iter()
                    .filter(|(at, _)| at.as_secs() / 60 == minute)
                    .map(|(_, n)| n)
                    .sum();
                let end = Duration::from_secs((minute + 1) * 60);
                (spent, end.saturating_sub(now))
            }
        };
        Told {
            limit,
            remaining: limit.saturating_sub(spent),
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn slices_hold_a_slices_worth_and_free_at_the_next() {
        let c = Counting::fixed(S);
        let mut m = Meter::default();
        for i in 0..10 {
            assert_eq!(m.fits(c, 600, ms(100 + i), 1), Ok(()));
            m.admit(c, 600, ms(100 + i), 1);
        }
        assert_eq!(m.fits(c, 600, ms(500), 1), Err(ms(500)));
        assert_eq!(m.fits(c, 600, ms(1000), 1), Ok(()));
        let told = m.told(c, 600, ms(1000));
        assert_eq!((told.remaining, told.reset), (590, ms(59_000)));
    }

    #[test]
    fn a_bucket_reports_what_is_not_yet_refilled() {
        let c = Counting::bucket(S);
        let mut m = Meter::default();
        for _ in 0..10 {
            assert_eq!(m.fits(c, 600, Duration::ZERO, 1), Ok(()));
            m.admit(c, 600, Duration::ZERO, 1);
        }
        // Full: one more refills in 100 ms.
        assert_eq!(m.fits(c, 600, Duration::ZERO, 1), Err(ms(100)));
        let told = m.told(c, 600, ms(500));
        assert_eq!((told.remaining, told.reset), (595, ms(500)));
    }

    #[test]
    fn a_sliding_window_frees_as_admissions_leave_it() {
        let c = Counting::sliding(S);
        let mut m = Meter::default();
        for i in 0..10 {
            m.admit(c, 600, ms(2000 + 50 * i), 1);
        }
        assert_eq!(m.fits(c, 600, ms(2600), 1), Err(ms(400)));
        assert_eq!(m.fits(c, 600, ms(3001), 1), Ok(()));
        let told = m.told(c, 600, ms(3001));
        assert_eq!((told.remaining, told.reset), (590, ms(60_000 - 1001)));
    }
}
