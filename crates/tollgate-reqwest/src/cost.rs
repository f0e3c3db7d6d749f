//! What a call that names no output bound costs, learnt from what such
//! calls of the endpoint reported writing: the reservation starts from the
//! estimator's prior and converges on a high quantile of the recent
//! outputs, so that a body without `max_tokens` is not held to a guess of
//! a thousand tokens for ever. Where the provider states its token limit
//! and what remains of it, how that falls call after call says what it
//! charges such a call ([`Falls`]), and the reservation and the settlement
//! take it: where it is less than was written, and where it is more for a
//! process alone on the key (others' spending shows in `remaining` too).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tollgate::headers::Reading;

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

/// Answers of unbounded calls read before [`Falls`] says what they are
/// charged.
const FALLS_FROM: u64 = 20;
/// How long after its first reading a token `remaining` is read for what
/// calls are charged: after a minute, a window's `remaining` gets back
/// what was spent a minute before, which would read as calls charged
/// nothing.
const FALLS_FOR: Duration = Duration::from_secs(60);
/// The granularity of a rounded `remaining`.
const ROUNDED: u64 = 1_000;

/// What the provider charges for the output of a call that names no
/// output bound, read from its token `remaining`, less the calls' prompts
/// as reported. A provider may charge such a call less than the model
/// writes (a default bound of its own); reserved and settled at what was
/// written, each call would hold more of the limit than it spends.
///
/// - Where `remaining` counts a window (the last minute, or the clock's),
///   over the first minute after the endpoint's first answer: what it
///   lost, over the calls answered. The first answer is a call sent alone
///   (limits unknown), so every later answer's charge is in the fall;
///   calls answered after the latest reading but charged before it make
///   the figure higher, never lower.
/// - Where it is a bucket refilled continuously (OpenAI's, told from its
///   reset: the time until full is what is missing at the limit's rate),
///   a fall says nothing (the bucket refills what was spent); but what is
///   missing right after a call holds that call's charge: the least of it
///   over the answers, a bucket full before a call, is that call's charge.
///
/// Either way other clients spending from the limit make the figure
/// higher, never lower.
#[derive(Debug, Default)]
pub(crate) struct Falls {
    /// The first reading: when, and what remained.
    first: Option<(tokio::time::Instant, u64)>,
    /// Answers since the first reading.
    answers: u64,
    /// Readings whose reset matches a bucket's, less those that do not.
    bucket_votes: i64,
    /// The least missing from the limit right after an answer.
    least_missing: u64,
    /// Every reading so far a whole thousand (Anthropic rounds so): a
    /// fall is read once it is large enough for the rounding not to
    /// matter.
    rounded: bool,
    /// Prompt tokens the unbounded calls reported, and how many reported.
    inputs: (u64, u64),
    /// The output charged, once read.
    output: Option<u64>,
}

impl Falls {
    /// An unbounded call sent at `sent` answered at `now`, its answer
    /// stating `tokens` (a minute's limit and what remains of it; else
    /// nothing is read). A call sent before the first reading may have
    /// been charged before it: it is not counted.
    pub(crate) fn answered(
        &mut self,
        sent: tokio::time::Instant,
        now: tokio::time::Instant,
        tokens: &Reading,
    ) {
        let (Some(limit), Some(remaining)) = (tokens.limit, tokens.remaining) else {
            return;
        };
        if limit == 0 {
            return;
        }
        let missing = limit.saturating_sub(remaining);
        let Some((start, first)) = self.first else {
            self.first = Some((now, remaining));
            self.least_missing = missing;
            self.rounded = remaining % ROUNDED == 0;
            return;
        };
        if now.saturating_duration_since(start) >= FALLS_FOR || sent < start {
            return;
        }
        self.least_missing = self.least_missing.min(missing);
        self.rounded &= remaining % ROUNDED == 0;
        if let Some(reset) = tokens.reset.filter(|_| missing > 0) {
            let bucket = crate::share::bucket_reset(limit, remaining, reset).is_some();
            self.bucket_votes += if bucket { 1 } else { -1 };
        }
        self.answers = self.answers.saturating_add(1);
        let (sum, reported) = self.inputs;
        if self.answers < FALLS_FROM || reported == 0 {
            return;
        }
        let charge = if self.bucket_votes > 0 {
            self.least_missing
        } else {
            let Some(spent) = first.checked_sub(remaining) else {
                // More came back than went: the clock's window turned, or
                // the limit rose. Read what falls from here.
                self.first = Some((now, remaining));
                self.answers = 0;
                return;
            };
            if self.rounded && spent < ROUNDED.saturating_mul(50) {
                return;
            }
            spent.div_ceil(self.answers)
        };
        self.output = Some(charge.saturating_sub(sum / reported));
    }

    /// An unbounded call reported a prompt of `tokens`.
    pub(crate) fn prompt(&mut self, tokens: u64) {
        self.inputs.0 = self.inputs.0.saturating_add(tokens);
        self.inputs.1 = self.inputs.1.saturating_add(1);
    }

    /// What an unbounded call's output is charged, once read.
    pub(crate) fn output(&self) -> Option<u64> {
        self.output
    }
}

/// What a provider charges a call whose body bounds its output
/// (`max_tokens`), once the call is answered: see
/// [`Builder::output_charge`](crate::Builder::output_charge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputCharge {
    /// Learnt from the endpoint's answers (the default): the bound, until
    /// the tokens `remaining` shows that calls were charged less (one
    /// answer, where the limit is stated with it; a run of answers where
    /// only `remaining` is, and it counts a window); what was written at
    /// Anthropic's hosts (`anthropic.com`), whose output tokens count what
    /// the model wrote.
    #[default]
    Learnt,
    /// The bound, always (OpenAI reserves `max_tokens` against the limit).
    Bound,
    /// What was written, always: a settled call gives back the rest.
    Written,
}

/// Calls whose costs the bursts hold.
const RECENT_CALLS: usize = 16;

/// The largest cost of the endpoint's recent calls, per dimension: each
/// burst holds that much (a call larger than its burst would never be
/// admitted) and no more, so that the calls sent on a guess while the
/// costs were unknown (a thousand tokens of output each) leave no burst
/// behind them that lets many small calls go at once, past a provider's
/// slice of a second.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    costs: VecDeque<[u64; 4]>,
}

impl Recent {
    /// A call of `costs` is about to be admitted: answers the largest
    /// cost of it and the calls before it (what the bursts hold).
    pub(crate) fn push(&mut self, costs: [u64; 4]) -> [u64; 4] {
        if self.costs.len() == RECENT_CALLS {
            self.costs.pop_front();
        }
        self.costs.push_back(costs);
        let mut largest = [0u64; 4];
        for call in &self.costs {
            for (most, &cost) in largest.iter_mut().zip(call) {
                *most = (*most).max(cost);
            }
        }
        largest
    }
}

/// What a call's settlement learns from, besides its usage.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lesson {
    /// The body named no output bound: its output is learnt from.
    pub(crate) unbounded: bool,
    /// The tokens limit and what remained of it, as the call's answer
    /// stated them (exact, or rounded down as Anthropic rounds).
    pub(crate) seen: Option<(u64, u64)>,
    /// What remained of a tokens limit the answer did not state (Azure's
    /// sparest answers).
    pub(crate) unstated: Option<Unstated>,
}

/// What remained of a tokens limit an answer did not state.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Unstated {
    /// When the call was sent.
    pub(crate) sent: tokio::time::Instant,
    /// When its answer came.
    pub(crate) at: tokio::time::Instant,
    pub(crate) remaining: u64,
}

/// Whether the endpoint charges a call's output bound (`max_tokens`, as
/// OpenAI reserves it) or only what was written (as Anthropic counts its
/// output tokens). Until an answer shows otherwise, the bound: settled to
/// what was written, a call charged its bound would leave the budget
/// thinking there is room the provider does not have.
///
/// The evidence: right after the provider charged a call, what remains of
/// its tokens limit is at most the limit less that call's charge, whatever
/// way it counts (a bucket, a sliding or a fixed window), since the charge
/// is in it. An answer whose `remaining` is more than the limit less the
/// call's prompt and bound shows that the call was charged less than its
/// bound.
///
/// Where the answers state what remains but not the limit, a single
/// answer shows nothing (the limit could be larger by the difference).
/// Then a run of answers does ([`Stretch`]): where `remaining` counts a
/// window, it falls by exactly what the calls were charged.
#[derive(Debug, Default)]
pub(crate) struct Charges {
    written: bool,
    stretch: Option<Stretch>,
}

/// A run of answers whose `remaining` (of a limit not stated) is read for
/// what the calls were charged.
///
/// Where `remaining` counts a window (the last minute, or the clock's),
/// within a minute of a first reading, a later reading is less by at least
/// what this process's calls were charged between the two (more where
/// others spend too). A call sent after the first reading came, and
/// answered before the later call was sent, was charged between them,
/// whatever order the provider saw the calls in: only such calls are
/// counted. A fall clearly below the counted calls' bounds, and close to
/// what they wrote, shows that what was written is charged.
///
/// A bucket refilled continuously shows no fall at the pace the calls go
/// (it refills what they spend), and one drained faster than it refills
/// refuses: the fall must keep up with what was written over
/// [`STRETCH_CALLS`] counted calls, after [`STRETCH_SKIP`] answers that
/// the first calls' slow start may have sent faster than any pace. A
/// reading above the first (a refill, or a new window) starts another
/// stretch from it.
#[derive(Debug)]
struct Stretch {
    /// Answers read since the endpoint's first.
    answers: u64,
    /// The first reading: when its answer came, and what remained.
    first: Option<(tokio::time::Instant, u64)>,
    /// The calls sent since it came, in the order answered: when each was
    /// answered, what it wrote (with its prompt) and its bound (with
    /// its prompt).
    calls: VecDeque<Counted>,
}

#[derive(Clone, Copy, Debug)]
struct Counted {
    at: tokio::time::Instant,
    written: u64,
    bound: u64,
}

/// Answers before a stretch counts (its calls may go faster than the pace).
const STRETCH_SKIP: u64 = 5;
/// Calls a stretch counts before it concludes.
const STRETCH_CALLS: usize = 20;
/// Calls a stretch remembers (those answered, counted or not yet).
const STRETCH_KEPT: usize = 1024;
/// How long a stretch may last: a window gives back after a minute what it
/// counted.
const STRETCH_FOR: Duration = Duration::from_secs(60);

impl Charges {
    /// Whether the endpoint is known to charge only what was written.
    pub(crate) fn written(&self) -> bool {
        self.written
    }

    /// A bounded call's answer stated what remained of a tokens limit it
    /// did not state; the call was `input` tokens of prompt, wrote
    /// `output`, under a bound of `bound`.
    pub(crate) fn answered_unstated(
        &mut self,
        read: Unstated,
        input: u64,
        output: u64,
        bound: u64,
    ) {
        if self.written {
            return;
        }
        let Unstated {
            sent,
            at,
            remaining,
        } = read;
        let stretch = self.stretch.get_or_insert(Stretch {
            answers: 0,
            first: None,
            calls: VecDeque::new(),
        });
        stretch.answers = stretch.answers.saturating_add(1);
        let Some((since, first)) = stretch.first else {
            if stretch.answers > STRETCH_SKIP {
                stretch.restart(at, remaining);
            }
            return;
        };
        if remaining > first
            || at.saturating_duration_since(since) >= STRETCH_FOR
            || stretch.calls.len() >= STRETCH_KEPT
        {
            stretch.restart(at, remaining);
            return;
        }
        if sent >= since {
            stretch.calls.push_back(Counted {
                at,
                written: input.saturating_add(output.min(bound)),
                bound: input.saturating_add(bound),
            });
        }
        // The calls charged between the first reading and this one.
        let (mut written, mut bounds, mut counted) = (0u128, 0u128, 0usize);
        for call in stretch.calls.iter().filter(|call| call.at <= sent) {
            written += u128::from(call.written);
            bounds += u128::from(call.bound);
            counted += 1;
        }
        if counted < STRETCH_CALLS {
            return;
        }
        let fell = u128::from(first.saturating_sub(remaining));
        // What was written is clearly less than the bounds (by a fifth at
        // least); the fall is at least four fifths of it, and a tenth under
        // the bounds.
        if written * 5 <= bounds * 4 && fell * 5 >= written * 4 && fell * 10 <= bounds * 9 {
            self.written = true;
            self.stretch = None;
            return;
        }
        // Nothing shown: a fresh stretch from here.
        stretch.restart(at, remaining);
    }

    /// A bounded call's answer stated `seen` (limit, remaining); it was
    /// `input` tokens of prompt with an output bound of `bound`.
    pub(crate) fn answered(&mut self, seen: Option<(u64, u64)>, input: u64, bound: u64) {
        if let Some((limit, remaining)) = seen {
            if limit > 0 && remaining.saturating_add(input).saturating_add(bound) > limit {
                self.written = true;
            }
        }
    }
}

impl Stretch {
    /// A stretch from a reading of `remaining`, answered at `at`.
    fn restart(&mut self, at: tokio::time::Instant, remaining: u64) {
        self.first = Some((at, remaining));
        self.calls.clear();
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
    fn the_bound_is_charged_until_an_answer_shows_less() {
        let mut charges = Charges::default();
        // 12 of prompt, a bound of 60: 72 charged leaves 928 of 1,000.
        charges.answered(Some((1_000, 928)), 12, 60);
        assert!(!charges.written());
        // Others spent too: less remains, which shows nothing.
        charges.answered(Some((1_000, 500)), 12, 60);
        charges.answered(None, 12, 60);
        assert!(!charges.written());
        // 32 charged (20 written) leaves 968: more than the bound allows.
        charges.answered(Some((1_000, 968)), 12, 60);
        assert!(charges.written());
    }

    /// Calls of 12 tokens of prompt, writing 20 under a bound of 60, sent
    /// 10 ms apart, each answered after `latency(i)`, read in the order
    /// answered; the provider charges each call `charge` when it comes and
    /// answers what remains then, where `remaining` is `counted(spent, t)`.
    /// Answers whether the charge was taken for what was written.
    fn read_in_order(
        calls: u64,
        charge: u64,
        latency: impl Fn(u64) -> u64,
        counted: impl Fn(u64, Duration) -> u64,
    ) -> bool {
        let start = tokio::time::Instant::now();
        let mut answers: Vec<(Duration, Duration, u64)> = (0..calls)
            .map(|i| {
                let sent = Duration::from_millis(10 * i);
                let remaining = counted((i + 1) * charge, sent);
                (sent + Duration::from_millis(latency(i)), sent, remaining)
            })
            .collect();
        answers.sort_by_key(|&(at, sent, _)| (at, sent));
        let mut charges = Charges::default();
        for (at, sent, remaining) in answers {
            charges.answered_unstated(
                Unstated {
                    sent: start + sent,
                    at: start + at,
                    remaining,
                },
                12,
                20,
                60,
            );
        }
        charges.written()
    }

    const LIMIT: u64 = 1_000_000;

    #[test]
    fn a_window_that_falls_by_what_was_written_shows_it_charged() {
        // A minute's window: what remains falls by each call's charge.
        let window = |spent: u64, _| LIMIT - spent;
        assert!(read_in_order(40, 32, |_| 1, window));
        assert!(read_in_order(60, 32, |_| 25, window));
        // Answers out of order: every other call answered 40 ms late.
        let late = |i: u64| if i % 2 == 0 { 40 } else { 1 };
        assert!(read_in_order(100, 32, late, window));
        // Too few calls show nothing yet.
        assert!(!read_in_order(20, 32, |_| 1, window));
    }

    #[test]
    fn a_window_that_falls_by_the_bounds_never_shows_it() {
        let window = |spent: u64, _| LIMIT - spent;
        // In order, each reading is less by exactly the calls before it.
        assert!(!read_in_order(2_000, 72, |_| 1, window));
        assert!(!read_in_order(2_000, 72, |_| 25, window));
        // Out of order: a late answer's reading does not hold the charges
        // of the calls sent after it, though they were answered first.
        let late = |i: u64| if i % 2 == 0 { 40 } else { 1 };
        assert!(!read_in_order(2_000, 72, late, window));
        let later = |i: u64| if i % 7 == 0 { 30 } else { 1 };
        assert!(!read_in_order(2_000, 72, later, window));
        assert!(!read_in_order(2_000, 72, |i| 1 + (i * 37) % 90, window));
    }

    #[test]
    fn a_bucket_refilled_at_the_pace_shows_nothing() {
        // A minute's bucket refilled at 7,200 tokens a second: what 100
        // calls a second charged the bound spend; full to start.
        let bucket = |spent: u64, t: Duration| {
            let refilled = u64::try_from(t.as_millis()).unwrap_or(u64::MAX) * 72 / 10;
            (LIMIT + refilled).saturating_sub(spent).min(LIMIT - 72)
        };
        assert!(!read_in_order(2_000, 72, |_| 25, bucket));
        // Charged what was written, it stays full: nothing shown either.
        assert!(!read_in_order(2_000, 32, |_| 25, bucket));
    }

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
