//! This process's share of a provider limit that other clients also
//! spend from, found from the provider's `remaining`. It is used with the
//! in-memory store only: processes that share a store (Redis) already
//! spend from one budget.
//!
//! # The reading
//!
//! `remaining` counts every client of the key. Between two answers of
//! this process it fell by what everyone spent, less what was refilled.
//! This process knows what it spent itself, so a *reading* over a few
//! answers gives two figures:
//!
//! - `fell / spent_here`: how many clients spend as much as this one
//!   (*seen*; smoothed over readings);
//! - `fell / elapsed` over the limit's rate: how *full* the key is.
//!
//! # How the share moves
//!
//! - **First answer.** What the key spent besides this call (several
//!   processes starting together) sets a first share.
//! - **First reading that shows others** ([`SEEN`] clients or more): an
//!   even share of those seen, less [`PER_OTHER`] a process for the
//!   bunches that processes pacing apart make.
//! - **Room on the key** (full under [`READ_FULL`], counting one unit
//!   more than was seen): the share is raised at once in proportion to
//!   what this process spends. Every process does the same, so when one
//!   process finishes, the others take its room within a reading.
//! - **Over the limit** (full above 1): the share is cut at once to this
//!   process's part of the limit.
//! - **Once a second**, as in AIMD: a full key eases the share by
//!   [`EASE`] of itself; otherwise it grows by a fixed step, larger
//!   while the key has room. Larger shares give back more, so shares
//!   slowly even out.
//! - **A refusal** cuts the share to [`CUT`] of itself, once an episode.
//! - **The others left** (readings show one client again): the share
//!   grows back to the whole limit.
//!
//! Readings are taken over the first minute only ([`READING_FOR`]). After
//! that a minute's window gives back what was spent in it, and
//! `remaining` hovers; what remains of the limit then says how full the
//! key is. A reading across a refill or a changed limit is dropped.
//!
//! # Buckets
//!
//! A bucket refilled continuously (OpenAI's and Anthropic's documented
//! counting) hides what others spend: `remaining` falls by everyone's
//! spending less the refill. A bucket is told by its reset, which is the
//! time until full: what is missing at the limit's rate. Once every
//! answer's reset has agreed for a second, readings add the refill back.
//! A bucket that is nearly full shows only that there is room: the share
//! then grows by [`BUCKET_GROWTH`] a second until the bucket drains
//! enough to be read.
//!
//! # Without `remaining`
//!
//! A process whose answers never say what remains (a limit named in a
//! refusal's message, a `remaining` that counts a day) cannot read. When
//! refusals come back within a minute, its share is cut to [`CUT`] of
//! what the provider admitted it in a second (at most halved at once),
//! and it grows by a step a second.
//!
//! # Limits
//!
//! - Shares that start uneven stay uneven: nothing here evens them out
//!   faster than AIMD does.
//! - Past the first minute, a process whose others left while the key was
//!   full grows only while a twentieth of the limit remains free.
//! - Without a stated limit (Azure's `remaining` alone) a bucket cannot be
//!   told, and others on it are not seen.

use std::time::Duration;

use tokio::time::Instant;

use crate::adaptive::Admitted;

/// Whether an answer's `reset` is a bucket's: the time until full, what is
/// missing of the (per-minute) `limit` at its rate, within a unit, a
/// hundredth and the reset's resolution (whole seconds, or 50 ms). Answers
/// that resolution where it is. A full limit (`remaining` at `limit`)
/// says nothing: a bucket's reset is then 0, a window's anything.
pub(crate) fn bucket_reset(limit: u64, remaining: u64, reset: Duration) -> Option<f64> {
    if limit == 0 || remaining >= limit {
        return None;
    }
    #[allow(clippy::cast_precision_loss)]
    let unit = 60.0 / limit as f64;
    #[allow(clippy::cast_precision_loss)]
    let expected = (limit - remaining) as f64 * unit;
    // A reset in whole seconds (a timestamp's) is off by up to one.
    let resolution = if reset.subsec_nanos() == 0 { 1.0 } else { 0.05 };
    let off = (reset.as_secs_f64() - expected).abs();
    (off <= unit + 0.01 * expected + resolution).then_some(resolution)
}

/// Answers of this process before the first reading (early: the others
/// are refused meanwhile), and between two later ones (enough to smooth
/// answers that come out of order; few enough that a process with a small
/// share reads the room others leave within a second). The efficiency
/// matrix's four clients (bucket, sliding, fixed): 95.6%, 87.2%, 88.2% of
/// the rate with six, 92.9%, 87.6%, 90.2% with three.
const FIRST_SAMPLE: u64 = 2;
const SAMPLE: u64 = 3;
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
/// Each second without a refusal, the share grows by this much (a
/// quarter of the limit, by a hundredth of itself)...
const STEP: f64 = 0.0025;
/// ...and by this much where the key is less than [`ROOMY`] full.
const FAST_STEP: f64 = 0.0125;
/// Each second where others spend and the readings show the key at
/// least [`READ_FULL`], the share eases off by this part of itself.
const EASE: f64 = 0.02;
/// Readings are taken over this long from the first answer: a window of
/// a minute then starts giving back what was spent in it, as fast as it
/// is spent again, and `remaining` falls by what is spent less what
/// leaves the window (a reading says nothing of how many spend).
const READING_FOR: Duration = Duration::from_secs(60);
/// Past the readings, the part of the limit spent from which the key is
/// near full: where others spend, the share holds (growing would only
/// bring refusals).
const FULL: f64 = 0.95;
/// While readings are taken, everyone's rate over the limit's from which
/// the key is full: where others spend, the share eases off from here,
/// and room under it is claimed at once (see [`Share::claim`]).
const READ_FULL: f64 = 0.97;
/// Where a bucket is (nearly) full, no reading tells how much room the
/// key has: where others spend, the share grows by this factor a second,
/// until the bucket drains enough to be read again.
const BUCKET_GROWTH: f64 = 1.2;
/// Under this, the key has room (the others left or slowed): the share
/// grows fast.
const ROOMY: f64 = 0.5;
/// While readings are taken (they show the rate now, where what remains
/// shows the last minute's), the key has room under this.
const ROOMY_READ: f64 = 0.8;
/// Seen fewer than this many clients, after others were seen: they left.
const ALONE: f64 = 1.15;
/// A refusal within a stated limit cuts the share to this part of itself.
const CUT: f64 = 0.8;
/// Where others spend, a process paces at its even share less this part
/// for each other client seen (at most half): processes that pace apart
/// bunch now and then, the more of them the larger the bunch, and a
/// provider counting in slices of a second refuses it.
const PER_OTHER: f64 = 0.05;
/// A refusal of a process that saw no others, within [`TRIM_AFTER`] of
/// the last one, trims its pace to this part of itself, once an episode,
/// down to [`TRIM_FLOOR`]; each second the trim grows back by
/// [`TRIM_STEP`]. (One refusal is a change's or a transient's; refusals
/// that come back show a limit enforced below the stated one.)
const TRIM_CUT: f64 = 0.97;
const TRIM_FLOOR: f64 = 0.9;
const TRIM_STEP: f64 = 0.0003;
const TRIM_AFTER: Duration = Duration::from_secs(60);
/// After a refusal, readings do not raise the share back to an even one
/// for this long (nor claim room short of [`ROOMY_READ`]): the readings
/// right after a cut show the room it made. Longer holds every process
/// at its cut: the efficiency matrix's four clients on a bucket read
/// 83.2% of the rate over 12 s with 10 s, 96.3% with 2 s (97.7% and 99.0%
/// over 36 s), none more refused; 1 s read 93.5% and 93.8%.
const CALM: Duration = Duration::from_secs(2);
/// The smallest share: 64 clients.
const FLOOR: f64 = 1.0 / 64.0;
/// How long every answer's reset must agree with a bucket's before
/// `remaining` is read as one (and twice the resets' resolution more).
const BUCKET_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct Share {
    share: f64,
    /// What refusals took off a process that saw no others: the limit
    /// the provider enforces is below the one it states (it counts in
    /// slices a call's tokens do not fit whole, say). The share in force
    /// is `share * trim`.
    trim: f64,
    /// When the last refusal's episode began.
    refused_at: Option<Instant>,
    /// The share last answered, in force.
    applied: f64,
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
    /// The first answer, from which readings are taken for
    /// [`READING_FOR`].
    first_at: Option<Instant>,
    /// How full the key is, 0 to 1: everyone's rate over the limit's in
    /// the last reading, then how much of the limit the last answer showed
    /// spent.
    full: Option<f64>,
    /// Clients seen, readings smoothed.
    seen: Option<f64>,
    /// Whether an answer ever said what remains: a process that never
    /// reads `remaining` cannot tell others from a lower limit, and its
    /// refusals move its share as AIMD does.
    readable: bool,
    /// Where no answer says what remains, this process's last answers:
    /// the most the provider admitted it in a second is its share when
    /// refusals come back.
    admitted: Admitted,
    /// Since when every answer's reset has been what a bucket's would be
    /// (the time until full: what is spent over the limit's rate).
    bucket_since: Option<Instant>,
    /// Whether a reading was corrected for a bucket's refill yet.
    bucket_read: bool,
    /// Whether the last answer showed that bucket (nearly) full.
    bucket_full: bool,
    /// How finely the resets are told, in seconds.
    bucket_resolution: f64,
    /// A refusal within the stated limit came while the resets agreed
    /// with a bucket's: a window's crossing would not bring one, so the
    /// bucket is taken as shown.
    bucket_refused: bool,
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
            trim: 1.0,
            refused_at: None,
            applied: 1.0,
            mark: None,
            usable: true,
            answers: 0,
            grown_at: None,
            episode_end: None,
            others: false,
            seen: None,
            first_at: None,
            full: None,
            readable: false,
            admitted: Admitted::default(),
            bucket_since: None,
            bucket_read: false,
            bucket_full: false,
            bucket_resolution: 1.0,
            bucket_refused: false,
        }
    }
}

impl Share {
    /// The share in force: 1 when this process seems alone.
    pub(crate) fn get(&self) -> f64 {
        self.share * self.trim
    }

    /// Whether the readings show other clients spending from the limit.
    pub(crate) fn others_seen(&self) -> bool {
        self.others
    }

    /// An answer that spent one request here, with the provider's
    /// `remaining` after it, the (per-minute) limit it states and the time
    /// until that limit is full again. Answers the new share when it
    /// changed.
    pub(crate) fn answered(
        &mut self,
        now: Instant,
        limit: Option<u64>,
        remaining: u64,
        reset: Option<Duration>,
    ) -> Option<f64> {
        if !self.usable {
            return None;
        }
        self.vote_bucket(now, limit, remaining, reset);
        // A bucket (nearly) full: everyone spends under its refill, by how
        // much no reading can tell.
        self.bucket_full =
            self.bucket_read && limit.is_some_and(|limit| nearly_full(limit, remaining));
        if self.bucket_full {
            self.full = None;
        }
        self.readable = true;
        self.answers += 1;
        let first_at = *self.first_at.get_or_insert(now);
        if now.saturating_duration_since(first_at) >= READING_FOR {
            // No more readings: how full the key is comes from what
            // remains of the limit.
            self.mark = None;
            #[allow(clippy::cast_precision_loss)]
            if let Some(limit) = limit.filter(|&l| l > 0) {
                self.full = Some(1.0 - remaining.min(limit) as f64 / limit as f64);
            }
            self.grow(now);
            return self.changed();
        }
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
                        return self.changed();
                    }
                    let refilled = self.refilled(now, &last, elapsed);
                    if refilled > 0.0 && !self.bucket_read {
                        // The readings before this one missed the refill:
                        // they are not smoothed into the first right one.
                        self.bucket_read = true;
                        self.seen = None;
                    }
                    #[allow(clippy::cast_precision_loss)]
                    let spent = fell as f64 + refilled;
                    #[allow(clippy::cast_precision_loss)]
                    let reading = spent / spent_here as f64;
                    // Well under what this process spent itself: a
                    // refill hid the spending, and says nothing of others.
                    if reading >= HIDDEN {
                        self.read(now, reading, spent, elapsed, limit);
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
            // A bucket refilled faster than everyone spent: how full the
            // key is, from what the refill left.
            Some(last) if self.bucket_read && last.limit == limit => {
                let elapsed = now.saturating_duration_since(last.at);
                if elapsed >= MIN_READING {
                    let refilled = self.refilled(now, &last, elapsed);
                    #[allow(clippy::cast_precision_loss)]
                    let rose = remaining.saturating_sub(last.remaining) as f64;
                    #[allow(clippy::cast_precision_loss)]
                    if let (true, Some(limit)) = (refilled > 0.0, limit.filter(|&l| l > 0)) {
                        let spent = (refilled - rose).max(0.0);
                        let per_second = limit as f64 / 60.0;
                        self.full = Some(spent / elapsed.as_secs_f64() / per_second);
                        let spent_here = (self.answers - last.answers) as f64;
                        let own = spent_here / elapsed.as_secs_f64() / per_second;
                        self.claim(now, own, spent);
                    }
                    self.mark = Some(mark);
                }
            }
            // `remaining` went up (a refill, a new window) or the limit
            // changed: start again from here.
            _ => self.mark = Some(mark),
        }
        self.grow(now);
        self.changed()
    }

    /// Whether `remaining` is a bucket refilled continuously, as OpenAI
    /// and Anthropic document theirs: an answer's reset is the time until
    /// full, what is spent over the limit's rate. A window's reset is the
    /// time until it turns or its oldest spend leaves, which follows no
    /// such rule for long: every answer for [`BUCKET_FOR`] must agree.
    fn vote_bucket(
        &mut self,
        now: Instant,
        limit: Option<u64>,
        remaining: u64,
        reset: Option<Duration>,
    ) {
        let (Some(limit), Some(reset)) = (limit.filter(|&l| l > 0), reset) else {
            self.bucket_since = None;
            self.bucket_refused = false;
            return;
        };
        if remaining >= limit {
            // Full: a bucket's reset is 0, a window's anything.
            return;
        }
        if let Some(resolution) = bucket_reset(limit, remaining, reset) {
            self.bucket_since.get_or_insert(now);
            self.bucket_resolution = resolution;
        } else {
            self.bucket_since = None;
            self.bucket_refused = false;
        }
    }

    /// What a bucket refilled since `last`, where `remaining` is one and
    /// was then short of full by more than it could refill meanwhile (so
    /// that none of the refill was lost to a full bucket); 0 otherwise.
    /// Between two answers `remaining` fell by what everyone spent less
    /// this refill: without it, a bucket drained by two clients looks
    /// spent by one.
    fn refilled(&self, now: Instant, last: &Mark, elapsed: Duration) -> f64 {
        // Long enough that a window's reset, crossing a bucket's rule
        // once, has left it again.
        let needed = BUCKET_FOR + Duration::from_secs_f64(1.5 * self.bucket_resolution);
        let bucket = self.bucket_since.is_some_and(|since| {
            self.bucket_refused || now.saturating_duration_since(since) >= needed
        });
        let Some(limit) = last.limit.filter(|&l| l > 0) else {
            return 0.0;
        };
        #[allow(clippy::cast_precision_loss)]
        let refill = limit as f64 / 60.0 * elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let short = limit.saturating_sub(last.remaining) as f64;
        if bucket && short >= refill {
            refill
        } else {
            0.0
        }
    }

    /// Whether `remaining` is a window's, as far as the resets tell: they
    /// do not agree with a bucket's now, and no reading was corrected for
    /// a refill.
    fn windowed(&self) -> bool {
        self.bucket_since.is_none() && !self.bucket_read
    }

    /// Whether no refusal came within [`CALM`] of `now`.
    fn calm(&self, now: Instant) -> bool {
        self.refused_at
            .is_none_or(|at| now.saturating_duration_since(at) >= CALM)
    }

    /// Takes one reading at `now`: `spent` over `elapsed`, `reading` times
    /// what this process spent.
    fn read(
        &mut self,
        now: Instant,
        reading: f64,
        spent: f64,
        elapsed: Duration,
        limit: Option<u64>,
    ) {
        #[allow(clippy::cast_precision_loss)]
        if let Some(limit) = limit.filter(|&l| l > 0) {
            // How full: everyone's rate over the limit's.
            let per_second = limit as f64 / 60.0;
            self.full = Some(spent / elapsed.as_secs_f64() / per_second);
        }
        let seen = match self.seen {
            Some(seen) => seen + SMOOTHING * (reading - seen),
            None => reading,
        };
        self.seen = Some(seen);
        let used = (1.0 - PER_OTHER * (seen - 1.0)).max(0.5);
        let even = (used / seen).max(FLOOR);
        if seen >= SEEN && !self.others {
            // Others spend: from here on, an even share of those seen,
            // less room for the bunches of processes that pace apart.
            self.others = true;
            self.share = self.share.min(even);
        } else if seen >= SEEN && self.share < even && self.calm(now) && self.windowed() {
            // A first reading that saw more clients than there are (answers
            // out of order, a burst of the others) set the share too low:
            // it comes back up to the even share of those now seen, rather
            // than a step a second. Not right after a refusal, whose cut
            // the next reading would undo; nor where `remaining` may be a
            // bucket, whose readings the refill makes noisier.
            self.share = even;
        } else if seen < ALONE && self.others {
            // The others left: the share grows back (fast, where the key
            // has room).
            self.others = false;
        } else if seen < SEEN && !self.others {
            // Alone, or nearly, from the start: back to that share at
            // once.
            self.share = self.share.max((1.0 / seen.max(1.0)).min(1.0));
        }
        if let Some(full) = self.full {
            self.claim(now, full / reading, spent);
        }
    }

    /// Acts on a reading where others spend: `spent` units fell (refill
    /// added back), `own` is this process's rate over the limit's.
    ///
    /// With room on the key, the share rises at once to `own` scaled up
    /// to a full key. Every process does the same, so the key fills in
    /// one reading rather than a step a second. Over the limit, the share
    /// falls at once to `own` scaled down to the limit.
    fn claim(&mut self, now: Instant, own: f64, spent: f64) {
        let Some(full) = self.full.filter(|&full| full > 0.0 && spent >= 1.0) else {
            return;
        };
        if !self.others {
            return;
        }
        if full > 1.0 {
            self.share = self.share.min(own / full).max(FLOOR);
            return;
        }
        // A count is off by a unit: room is claimed as if one more unit
        // had been spent (a few answers apart at a low rate, the room a
        // reading shows is mostly that unit).
        let full = full * (spent + 1.0) / spent;
        // A bucket not yet told from a window hides its refill: what
        // seems room may be the refill. Right after a refusal, only a key
        // with plenty of room is claimed.
        let told = self.windowed() || self.bucket_read;
        if full >= READ_FULL || !told || !(self.calm(now) || full < ROOMY_READ) {
            return;
        }
        // Processes read at different times, and a later reading may
        // still show room an earlier one took: a claim at most doubles
        // the share (quadruples it where the key has plenty of room).
        let most = if full < ROOMY_READ { 4.0 } else { 2.0 };
        let claimed = (own * READ_FULL / full).min(most * self.share);
        self.share = self.share.max(claimed).min(1.0);
    }

    /// An answer that says nothing of what remains (a limit named by a
    /// refusal's message, or one whose `remaining` counts a day): the
    /// share and the trim grow back as time passes. Answers the new share
    /// when it changed.
    pub(crate) fn answered_blind(&mut self, now: Instant) -> Option<f64> {
        self.admitted.push(now, None);
        self.grow(now);
        self.changed()
    }

    /// A refusal, while this process paces within the stated limit. Cuts
    /// the share where other clients were seen, or where refusals come
    /// back to a process that never reads `remaining` (it cannot tell
    /// others from a limit enforced below the stated one, and AIMD
    /// answers both); a process alone that reads it trims its pace a
    /// little when refusals come back.
    ///
    /// `per_minute` is the request limit in force for the whole key: where
    /// refusals come back and nothing says what remains, the share is cut
    /// to at most [`CUT`] of what the provider was seen to admit this
    /// process in a second against it (several processes pacing at the
    /// whole limit each find theirs at once), and to [`CUT`] of itself.
    pub(crate) fn refused(
        &mut self,
        now: Instant,
        hold: Duration,
        per_minute: Option<u64>,
    ) -> Option<f64> {
        if self.episode_end.is_some_and(|end| end > now) {
            return None;
        }
        let end = now + hold.max(Duration::from_secs(1));
        self.episode_end = Some(end);
        self.grown_at = Some(end);
        if self.bucket_since.is_some() {
            self.bucket_refused = true;
        }
        let again = self
            .refused_at
            .is_some_and(|at| now.saturating_duration_since(at) < TRIM_AFTER);
        if self.others {
            self.share = (self.share * CUT).max(FLOOR);
        } else if again && !self.readable {
            #[allow(clippy::cast_precision_loss)]
            let seen = per_minute
                .filter(|&limit| limit > 0)
                .map(|limit| self.admitted.peak_per_minute(1) / limit as f64)
                .filter(|&seen| seen > 0.0)
                .unwrap_or(1.0);
            // At most halved at once: a second's count right after a
            // pause says less than it seems.
            self.share = (CUT * self.share.min(seen.max(self.share / 2.0))).max(FLOOR);
        } else if again {
            self.trim = (self.trim * TRIM_CUT).max(TRIM_FLOOR);
        }
        self.refused_at = Some(now);
        self.changed()
    }

    /// Whether readings are still taken at `now`: over the first minute
    /// from the first answer.
    fn reading(&self, now: Instant) -> bool {
        self.first_at
            .is_none_or(|first| now.saturating_duration_since(first) < READING_FOR)
    }

    /// The share, when it moved by more than a hundredth from the one last
    /// answered (and so put in force).
    fn changed(&mut self) -> Option<f64> {
        let share = self.get();
        let moved = (share - self.applied).abs() > 0.01 * self.applied;
        if moved {
            self.applied = share;
        }
        moved.then_some(share)
    }

    /// Once a second, where others were seen: while the readings show
    /// the key near full, the share eases off by a part of itself (every
    /// process reads the same key, and the larger shares give back more,
    /// so that the shares even out, as in AIMD), and past the readings it
    /// holds while little of the limit remains. Otherwise it grows by a
    /// step, the same for every process, a larger one where the key has
    /// room.
    fn grow(&mut self, now: Instant) {
        let Some(grown_at) = self.grown_at else {
            self.grown_at = Some(now);
            return;
        };
        let since = now.saturating_duration_since(grown_at);
        if since < Duration::from_secs(1) {
            return;
        }
        let seconds = since.as_secs_f64();
        let reading = self.reading(now);
        let share = match self.full {
            Some(full) if full >= READ_FULL && self.others && reading => {
                self.share * (1.0 - EASE).powf(seconds)
            }
            Some(full) if full >= FULL && self.others => self.share,
            None if self.bucket_full && self.others => self.share * BUCKET_GROWTH.powf(seconds),
            Some(full) if full < ROOMY || (reading && full < ROOMY_READ) => {
                self.share + FAST_STEP * seconds
            }
            _ => self.share + STEP * seconds,
        };
        self.share = share.clamp(FLOOR, 1.0);
        self.trim = (self.trim + TRIM_STEP * seconds).min(1.0);
        self.grown_at = Some(now);
    }
}

/// Whether a bucket of `limit` a minute with `remaining` left is short of
/// full by less than it refills over the shortest reading: a reading then
/// cannot tell what was spent from what was refilled.
fn nearly_full(limit: u64, remaining: u64) -> bool {
    #[allow(clippy::cast_precision_loss)]
    let refill = limit as f64 / 60.0 * MIN_READING.as_secs_f64();
    #[allow(clippy::cast_precision_loss)]
    let short = limit.saturating_sub(remaining) as f64;
    short < refill
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `answers` answers `apart` from `start`, remaining falling by two
    /// each: another client spends as much as this one.
    fn two_alike(share: &mut Share, start: Instant, apart: Duration, answers: u32) {
        for i in 0..answers {
            share.answered(
                start + apart * i,
                Some(600),
                600 - 2 * (u64::from(i) + 1),
                None,
            );
        }
    }

    /// 600 a minute is 10 a second: two answers 400 ms apart, remaining
    /// falling by two each, are a key half full.
    const HALF_FULL: Duration = Duration::from_millis(400);
    /// ...200 ms apart, at its limit...
    const AT_THE_LIMIT: Duration = Duration::from_millis(200);
    /// ...and 100 ms apart, twice full.
    const TWICE_FULL: Duration = Duration::from_millis(100);

    fn close(share: &Share, want: f64) {
        assert!(
            (share.get() - want).abs() < 1e-9,
            "{} != {want}",
            share.get()
        );
    }

    /// Four clients on a window of 6,000 a minute, the first readings
    /// showing six (answers out of order): the share comes back up to the
    /// even share of four as the readings settle, not a step a second
    /// from where the first reading put it (0.17 after four seconds).
    #[test]
    fn a_share_set_low_by_a_noisy_first_reading_comes_back_to_the_even_one() {
        let start = Instant::now();
        let mut share = Share::default();
        let apart = Duration::from_millis(100);
        let mut remaining = 6_000u64;
        for i in 0..40u32 {
            remaining -= if i < 8 { 6 } else { 4 };
            share.answered(start + apart * i, Some(6_000), remaining, None);
        }
        let even = (1.0 - PER_OTHER * 3.0) / 4.0;
        assert!(
            share.get() >= even - 0.01,
            "{} against an even {even}",
            share.get()
        );
    }

    /// A bucket of 6,000 a minute (100 a second, refilled continuously)
    /// drained by `clients` alike, each answering every 10.2 ms (98 a
    /// second): this process's answers over `seconds`, with the bucket's
    /// `remaining` and reset (the time until full) after each.
    fn bucket(share: &mut Share, start: Instant, clients: u32, seconds: u32) {
        let apart = Duration::from_micros(10_200);
        bucket_from(share, start, 6_000.0, (apart, clients), seconds * 98);
    }

    /// [`bucket`] from a level, `answers` of this process `apart`, each
    /// with `spent` spent by everyone: answers the level at the end.
    fn bucket_from(
        share: &mut Share,
        start: Instant,
        mut level: f64,
        (apart, spent): (Duration, u32),
        answers: u32,
    ) -> f64 {
        for i in 0..answers {
            level = (level + 100.0 * apart.as_secs_f64() - f64::from(spent)).min(6_000.0);
            let remaining = level.floor().max(0.0) as u64;
            let reset = Duration::from_millis(((6_000.0 - level) * 10.0).ceil() as u64);
            share.answered(start + apart * i, Some(6_000), remaining, Some(reset));
        }
        level
    }

    #[test]
    fn two_processes_draining_a_bucket_see_each_other() {
        // The refill hides half of what the other spends: without it, a
        // reading shows one client (96 a second fell, 98 spent here).
        let mut share = Share::default();
        bucket(&mut share, Instant::now(), 2, 5);
        assert!(share.others, "the other client was seen");
        assert!(
            (0.4..=0.5).contains(&share.get()),
            "about half: {}",
            share.get()
        );
        // Both then pace at their share, under the refill: the bucket
        // fills again, so the key has room and the share grows back
        // (before, the last reading's "full" held it easing off).
        let after_cut = share.get();
        let mut slower = Share::default();
        let start = Instant::now();
        let fast = Duration::from_micros(10_200);
        let level = bucket_from(&mut slower, start, 6_000.0, (fast, 2), 5 * 98);
        // Two answers of the other's for three of this one's: a refill of
        // 100 a second against 2 x 98 x 0.45.
        let slow = Duration::from_micros(22_700);
        let begin = start + Duration::from_secs(5);
        bucket_from(&mut slower, begin, level, (slow, 2), 200);
        assert!(
            slower.get() > after_cut,
            "grows back with room: {} after {after_cut}",
            slower.get()
        );
        assert!(slower.full.unwrap() < READ_FULL, "{:?}", slower.full);
        // Alone on the same bucket, nothing is seen.
        let mut alone = Share::default();
        bucket(&mut alone, Instant::now(), 1, 5);
        close(&alone, 1.0);
        assert!(!alone.others);
    }

    #[test]
    fn a_window_is_not_read_as_a_bucket() {
        // A minute's window: remaining falls by this process's spending
        // alone, and the reset is the time until the window turns, which
        // crosses a bucket's rule once and leaves it.
        let start = Instant::now();
        let mut share = Share::default();
        for i in 0..400u64 {
            let at = start + Duration::from_millis(100 * i);
            let reset = Duration::from_millis(60_000 - 100 * i);
            share.answered(at, Some(600), 600 - i - 1, Some(reset));
        }
        close(&share, 1.0);
        assert!(!share.others);
    }

    #[test]
    fn a_process_alone_keeps_the_whole_limit() {
        let start = Instant::now();
        let mut share = Share::default();
        // remaining falls by one an answer: this process spends it all.
        for i in 0..40u64 {
            let at = start + Duration::from_millis(100 * i);
            assert_eq!(share.answered(at, Some(600), 600 - i - 1, None), None);
        }
        close(&share, 1.0);
        // A refill between answers changes nothing either.
        assert_eq!(
            share.answered(start + Duration::from_secs(5), Some(600), 590, None),
            None
        );
        close(&share, 1.0);
        assert!(!share.others);
    }

    #[test]
    fn two_processes_spending_alike_start_at_an_even_share() {
        let start = Instant::now();
        let mut share = Share::default();
        // Three answers, remaining fell by two each: another spends as
        // much, the key at its limit. Half, less a twentieth for the
        // other's bunches.
        let mut learnt = None;
        for i in 0..3u32 {
            let at = start + AT_THE_LIMIT * i;
            learnt = share
                .answered(at, Some(600), 600 - 2 * (u64::from(i) + 1), None)
                .or(learnt);
        }
        assert_eq!(learnt, Some(0.475));
        // Four seen: a quarter, less three twentieths.
        let mut share = Share::default();
        for i in 0..3u64 {
            let at = start + Duration::from_millis(400 * i);
            share.answered(at, Some(600), 600 - 4 * (i + 1), None);
        }
        close(&share, 0.2125);
    }

    #[test]
    fn while_readings_show_the_key_full_the_share_eases_off() {
        let start = Instant::now();
        let mut share = Share::default();
        two_alike(&mut share, start, TWICE_FULL, 5);
        close(&share, 0.475);
        assert!(share.full.unwrap() >= READ_FULL);
        // The key at its limit from then on (not over it: the share is
        // then cut to this process's part of it at once): each second a
        // fiftieth less, until a reading shows room.
        // (The last reading was taken at 200 ms, 594 remaining.)
        for second in 1..=10u32 {
            let at = start + Duration::from_millis(200) + Duration::from_secs(second.into());
            share.answered(at, Some(600), 594 - 10 * u64::from(second), None);
        }
        close(&share, 0.475 * 0.98f64.powf(10.2));
    }

    #[test]
    fn readings_over_the_limit_cut_the_share_to_this_process_part_at_once() {
        let start = Instant::now();
        let mut share = Share::default();
        two_alike(&mut share, start, TWICE_FULL, 5);
        close(&share, 0.475);
        // From the last reading (200 ms, 594 remaining) to 1.2 s, twenty
        // spent over three answers of this process: everyone at twice the
        // limit, this process at 0.3 of it. It paces at half of that at
        // once (and eases off as the key is full, 1.2 s since the first
        // answer).
        let at = start + Duration::from_millis(1_200);
        share.answered(at, Some(600), 574, None);
        close(&share, 0.15 * (1.0 - EASE).powf(1.2));
    }

    #[test]
    fn a_key_with_room_lets_the_share_grow() {
        let start = Instant::now();
        let mut share = Share::default();
        two_alike(&mut share, start, HALF_FULL, 3);
        // Both spend at half the limit. The first reading saw four spent:
        // counted as five, the room it shows is too little to claim.
        close(&share, 0.475);
        // A key half full grows an eightieth of the limit each second
        // (10.8 s since the first answer); the readings of one answer a
        // second show this process spends too little to claim more.
        let mut remaining = 594;
        for second in 1..=10u32 {
            remaining -= 5;
            let at = start + Duration::from_millis(800) + Duration::from_secs(second.into());
            share.answered(at, Some(600), remaining, None);
        }
        close(&share, 0.475 + 10.8 * FAST_STEP);
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
            assert_eq!(
                share.answered(at, Some(6_000), 6_000 - 60 * (i + 1), None),
                None
            );
        }
        close(&share, 1.0);
        assert!(!share.usable);
    }

    #[test]
    fn a_refill_that_hides_the_spending_is_no_reading() {
        let start = Instant::now();
        let mut share = Share::default();
        // Two clients seen (the first reading, three answers in)...
        two_alike(&mut share, start, HALF_FULL, 3);
        let seen = share.seen;
        assert!(share.others);
        // ...then the key saturated, refilled as fast as it is spent:
        // remaining falls by one every third answer. No reading is taken:
        // the others are still counted.
        let mut remaining = 594;
        for i in 0..60u64 {
            if i % 3 == 0 {
                remaining -= 1;
            }
            let at = start + Duration::from_millis(1_000 + 100 * i);
            share.answered(at, Some(600), remaining, None);
        }
        assert_eq!(share.seen, seen);
        assert!(share.others);
    }

    #[test]
    fn a_changed_limit_is_no_reading() {
        let start = Instant::now();
        let mut share = Share::default();
        assert_eq!(share.answered(start, Some(1_200), 1_199, None), None);
        // The provider halves its limit: remaining falls by 600 at once.
        for i in 0..8u64 {
            let at = start + Duration::from_millis(100 * (i + 1));
            assert_eq!(share.answered(at, Some(600), 598 - i, None), None);
        }
        close(&share, 1.0);
    }

    #[test]
    fn the_share_grows_back_when_the_others_leave() {
        let start = Instant::now();
        let mut share = Share::default();
        two_alike(&mut share, start, AT_THE_LIMIT, 3);
        close(&share, 0.475);
        // Alone again: remaining falls by one an answer, five a second.
        // The first reading (three answers) shows the key half full, all
        // of it spent here: the room is taken at once, as if one more
        // unit had been spent (a key two thirds full).
        let mut at = start + Duration::from_millis(800);
        let mut remaining = 594;
        let mut alone = |n: usize, share: &mut Share| {
            for _ in 0..n {
                at += Duration::from_millis(200);
                remaining -= 1;
                share.answered(at, Some(600), remaining, None);
            }
        };
        alone(3, &mut share);
        close(&share, 0.75 * READ_FULL);
        // Each reading halves the way to one client seen: from 2, 1.5,
        // 1.25, 1.125, under 1.15 at the third.
        alone(3, &mut share);
        assert!(share.others);
        alone(3, &mut share);
        assert!(!share.others);
        alone(250, &mut share);
        close(&share, 1.0);
    }

    #[test]
    fn a_process_that_reads_nothing_takes_the_share_it_was_admitted() {
        let start = Instant::now();
        let mut share = Share::default();
        let every = Duration::from_millis(200);
        // Five answers a second, none saying what remains, of a key of
        // 600 a minute (ten a second).
        let mut at = start;
        for _ in 0..10 {
            assert_eq!(share.answered_blind(at), None);
            at += every;
        }
        // One refusal: a change's or a transient's, nothing cut.
        assert_eq!(share.refused(at, Duration::from_secs(1), Some(600)), None);
        at += Duration::from_secs(1);
        for _ in 0..10 {
            share.answered_blind(at);
            at += every;
        }
        // Again within a minute: the provider admitted half the key's
        // rate here, and the share is cut below it.
        let cut = share.refused(at, Duration::from_secs(1), Some(600));
        close(&share, 0.4);
        assert!(cut.is_some());
        // Once an episode.
        let echo = at + Duration::from_millis(300);
        assert_eq!(share.refused(echo, Duration::from_secs(1), Some(600)), None);
        // Never more than halved at once, whatever a second's count says.
        let mut alone = Share::default();
        alone.answered_blind(start);
        alone.refused(start, Duration::from_secs(1), Some(600));
        alone.refused(
            start + Duration::from_secs(2),
            Duration::from_secs(1),
            Some(600),
        );
        close(&alone, 0.4);
        // It grows back as answers come: a step a second.
        let end = at + Duration::from_secs(1);
        share.answered_blind(end + Duration::from_secs(10));
        close(&share, 0.4 + 10.0 * STEP);
    }

    #[test]
    fn a_refusal_cuts_once_an_episode_where_others_were_seen() {
        let start = Instant::now();
        let mut share = Share::default();
        // Alone: a refusal changes nothing.
        assert_eq!(share.refused(start, Duration::from_secs(1), None), None);
        two_alike(&mut share, start, AT_THE_LIMIT, 3);
        let at = start + Duration::from_secs(3);
        let cut = share.refused(at, Duration::from_secs(1), None).unwrap();
        assert!((cut - 0.38).abs() < 1e-9, "{cut}");
        let echo = at + Duration::from_millis(300);
        assert_eq!(share.refused(echo, Duration::from_secs(1), None), None);
        let later = at + Duration::from_secs(2);
        let cut = share.refused(later, Duration::from_secs(1), None).unwrap();
        assert!((cut - 0.304).abs() < 1e-9, "{cut}");
    }

    #[test]
    fn past_the_first_minute_what_remains_says_whether_to_grow() {
        let start = Instant::now();
        let mut share = Share::default();
        two_alike(&mut share, start, AT_THE_LIMIT, 3);
        close(&share, 0.475);
        // A minute in, the window gives back what it took and `remaining`
        // hovers: no reading is taken; with 5% of the limit left, the
        // share holds.
        let minute = start + Duration::from_secs(60);
        for i in 0..30u64 {
            let at = minute + Duration::from_secs(i);
            share.answered(at, Some(600), 30 - (i % 2), None);
        }
        close(&share, 0.475);
        assert!(!share.reading(minute));
        // A fifth of it left: a step a second (a second since the last
        // answer, then ten).
        let later = minute + Duration::from_secs(30);
        share.answered(later, Some(600), 120, None);
        share.answered(later + Duration::from_secs(10), Some(600), 120, None);
        close(&share, 0.475 + 11.0 * STEP);
        // The others left, most of it remains: a larger step, up to the
        // whole limit.
        let grown = share.get();
        share.answered(later + Duration::from_secs(12), Some(600), 400, None);
        close(&share, grown + 2.0 * FAST_STEP);
        share.answered(later + Duration::from_secs(60), Some(600), 500, None);
        close(&share, 1.0);
    }

    #[test]
    fn a_process_alone_trims_its_pace_when_refusals_come_back() {
        let start = Instant::now();
        let mut share = Share::default();
        for i in 0..10u64 {
            share.answered(
                start + Duration::from_millis(100 * i),
                Some(600),
                599 - i,
                None,
            );
        }
        // One refusal: a change's or a transient's, nothing trimmed.
        let first = start + Duration::from_secs(2);
        assert_eq!(share.refused(first, Duration::from_secs(1), None), None);
        // Another within the minute: the provider enforces less than it
        // states; 3% off, once an episode.
        let second = first + Duration::from_secs(20);
        assert_eq!(
            share.refused(second, Duration::from_secs(1), None),
            Some(0.97)
        );
        assert_eq!(
            share.refused(
                second + Duration::from_millis(500),
                Duration::from_secs(1),
                None
            ),
            None
        );
        // It grows back 0.03% a second from the episode's end: 100 s to
        // the whole.
        let end = second + Duration::from_secs(1);
        share.answered(end + Duration::from_secs(50), Some(600), 500, None);
        close(&share, 0.985);
        share.answered(end + Duration::from_secs(100), Some(600), 500, None);
        close(&share, 1.0);
        // Never below nine tenths.
        let mut at = end + Duration::from_secs(101);
        for _ in 0..20 {
            share.refused(at, Duration::from_secs(1), None);
            at += Duration::from_secs(2);
        }
        assert!((share.trim - TRIM_FLOOR).abs() < 1e-9, "{}", share.trim);
    }
}
