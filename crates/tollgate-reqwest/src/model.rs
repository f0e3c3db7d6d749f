//! What the middleware knows of one endpoint, and what each answer
//! changes in it.
//!
//! The middleware's loop admits a call, sends it, settles it and retries
//! it; it knows nothing of providers. Each answer goes to the endpoint's
//! [`Model`], which runs it through the learners and says what changed,
//! as one [`Change`] per dimension of the budget, which the loop applies
//! to the store in one operation:
//!
//! - **stated limits**: the per-minute limits the headers state (merged
//!   over the answers), or a refusal's message names, in force where
//!   stricter than those configured; what remains of them caps the budget;
//! - **inferred limits** (`infer`): a request limit inferred from what
//!   remains of it where the answers do not state it, and the window of one
//!   stated with neither reset nor window;
//! - **a learnt rate** (`adaptive`): where nothing states a request limit,
//!   a rate cut by each refusal and grown by each second without one;
//! - **the share** (`share`): this process's share of a limit other
//!   clients spend from too, read from how `remaining` falls;
//! - **costs** (`cost`): what calls without an output bound write, whether
//!   the provider charges a call's bound or what was written, and the
//!   bursts that hold the largest recent call.
//!
//! What a provider does that its answers do not show is in the `quirks`
//! table. The model is plain data under the endpoint's lock: no store, no
//! clock of its own, no await, so each learner is tested on its own.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;
use tollgate::headers::{RateLimitHeaders, Reading};
use tollgate::store::Change;
use tollgate::{Limits, Quota};

use crate::adaptive::Adaptive;
use crate::classify::Answer;
use crate::cost::{Charges, Falls, Lesson, Outputs, Recent};
use crate::infer::Inferred;
use crate::limits::{Dimension, Pacing, ProviderLimits};
use crate::middleware::Endpoint;
use crate::quirks::Quirks;
use crate::share::Share;
use crate::OutputCharge;

/// Refusals after which a provider's quirk that it charges what was
/// written is no longer taken.
const DOUBTED: u32 = 2;

/// What the model's answers depend on besides the endpoint: the
/// middleware's configuration and the store.
pub(crate) struct Setting<'a> {
    /// The limits the middleware was given.
    pub(crate) configured: &'a ProviderLimits,
    pub(crate) pacing: &'a Pacing,
    /// The budget's default limits: what the store holds for an endpoint
    /// given none of its own.
    pub(crate) defaults: &'a Limits,
    /// Whether the share is read from `remaining` (in memory only: through
    /// a store, the fleet spends from one budget).
    pub(crate) finds_share: bool,
    /// How many processes share the store (1 in memory).
    pub(crate) sharers: u32,
}

impl Setting<'_> {
    /// Whether an endpoint's request rate is learnt from its answers: it
    /// states no request limit, and none is configured.
    fn learns_rate(&self, heard: &ProviderLimits) -> bool {
        self.configured.requests().is_none() && heard.requests().is_none()
    }
}

/// One answer, as the model reads it.
pub(crate) struct Answered<'a> {
    pub(crate) answer: Answer,
    /// What paces: every header read but a request limit of a longer
    /// window than a minute (see [`paced`]).
    pub(crate) read: &'a RateLimitHeaders,
    /// A limit a minute that a refusal's message names.
    pub(crate) message: Option<(Dimension, u64)>,
    /// The tokens the call reserved.
    pub(crate) tokens: u64,
    /// The call's body named no output bound.
    pub(crate) unbounded: bool,
    /// When the attempt was sent.
    pub(crate) sent_at: Instant,
    pub(crate) now: Instant,
    /// The key's count of answers in a shared store, read as this one
    /// came (see `adaptive`), where it is read.
    pub(crate) counted: Option<Duration>,
    /// The key's request limit in a shared store, where it was read (see
    /// [`Model::adopt`]).
    pub(crate) in_store: Option<Quota>,
}

/// What an answer changed.
pub(crate) struct Learnt {
    /// For the store, one per dimension (all [`Change::Keep`]: nothing).
    pub(crate) changes: [Change; 4],
    /// A request rate is known now: calls no longer go in a slow start.
    pub(crate) rate_known: bool,
    /// The per-minute limits paced at, after the answer.
    pub(crate) paced: ProviderLimits,
}

/// What is known of one endpoint.
pub(crate) struct Model {
    quirks: Quirks,
    /// The per-minute limits the headers stated, merged over answers.
    heard: ProviderLimits,
    /// The limits in force: the configured ones, or stricter learnt ones
    /// (`None` until the first answer).
    in_force: Option<ProviderLimits>,
    /// Per dimension, whether its limit in `heard` is one a refusal's
    /// message named (until a header states it).
    from_message: [bool; 4],
    inferred: Inferred,
    /// A token limit inferred from `remaining` alone.
    inferred_tokens: Inferred,
    adaptive: Adaptive,
    share: Share,
    /// Per dimension, the largest cost of the recent calls: each burst
    /// holds at least that much.
    bursts: [u64; 4],
    recent: Recent,
    /// What the endpoint's calls without an output bound wrote lately.
    outputs: Outputs,
    /// What an unbounded call's output is charged, from `remaining`.
    falls: Falls,
    charges: Charges,
    /// Refusals for rate, no other client seen, while the provider's quirk
    /// said it charges what was written: from [`DOUBTED`] of them, what
    /// was written is not taken for the charge unless the answers show it.
    written_refused: u32,
    /// The limits last given to the store (`None`: its defaults).
    applied: Option<Limits>,
    /// When an answer last read the key's request limit in a shared store
    /// (see [`store_read_due`](Self::store_read_due)).
    store_read_at: Option<Instant>,
    /// The last request limits this process wrote to the store, newest
    /// last (see [`adopt`](Self::adopt)).
    written: VecDeque<Quota>,
}

/// How many of its last request limits a process knows for its own.
const WRITTEN: usize = 8;

impl Model {
    pub(crate) fn new(quirks: Quirks) -> Self {
        Self {
            quirks,
            heard: ProviderLimits::default(),
            in_force: None,
            from_message: [false; 4],
            inferred: Inferred::default(),
            inferred_tokens: Inferred::default(),
            adaptive: Adaptive::default(),
            share: Share::default(),
            bursts: [0; 4],
            recent: Recent::default(),
            outputs: Outputs::default(),
            falls: Falls::default(),
            charges: Charges::default(),
            written_refused: 0,
            applied: None,
            store_read_at: None,
            written: VecDeque::with_capacity(WRITTEN),
        }
    }

    /// The per-minute limits in force, once an answer came.
    pub(crate) fn in_force(&self) -> Option<ProviderLimits> {
        self.in_force
    }

    /// Whether the request rate is learnt from the answers.
    pub(crate) fn learns_rate(&self, cx: &Setting<'_>) -> bool {
        cx.learns_rate(&self.heard)
    }

    /// Whether a refusal ends the slow start: a rate is known, or is
    /// learnt from it. (Refused with nothing admitted, as where another
    /// client took the provider's room, no rate is: the window stays, or
    /// every call waiting would go at once when the pause ends.)
    pub(crate) fn refusal_ends_slow_start(&self, cx: &Setting<'_>) -> bool {
        !self.learns_rate(cx) || self.adaptive.per_minute().is_some()
    }

    /// Whether a request rate was learnt from refusals (or taken from the
    /// fleet).
    pub(crate) fn rate_learnt(&self) -> bool {
        self.adaptive.per_minute().is_some()
    }

    /// Whether an answer at `now` is to read the key's request limit in
    /// the shared store: once a rate is learnt, once a second; before, an
    /// answer that comes after the first refusal's episode ended with no
    /// rate learnt from it (this process's calls were all refused, and
    /// its retries queued behind the fleet's: the fleet may have learnt a
    /// rate meanwhile, see `adopt`).
    pub(crate) fn store_read_due(&mut self, now: Instant) -> bool {
        if !self.rate_learnt() {
            return self.adaptive.learning_first_rate() && self.episode_end(now).is_none();
        }
        if self
            .store_read_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1))
        {
            return false;
        }
        self.store_read_at = Some(now);
        true
    }

    /// When the refusal episode in force ends, if one is.
    pub(crate) fn episode_end(&self, now: Instant) -> Option<Instant> {
        self.adaptive.episode_end(now)
    }

    /// What to reserve for the output of a call without an output bound,
    /// once known: what such calls write, or what the provider charges
    /// them (see [`output_charged`](Self::output_charged)).
    pub(crate) fn output_estimate(&self, cx: &Setting<'_>) -> Option<u64> {
        Some(self.output_charged(self.outputs.estimate()?, cx))
    }

    /// What a call without an output bound that wrote `written` is
    /// charged: what the token `remaining` shows the provider charges such
    /// calls, where it says; else `written`. More than written is taken
    /// only where no other client spends from the limit (none in the
    /// store's fleet, none seen): others' spending shows in `remaining`
    /// too.
    fn output_charged(&self, written: u64, cx: &Setting<'_>) -> u64 {
        let alone = cx.sharers <= 1 && !self.share.others_seen();
        match self.falls.output() {
            Some(charged) if charged < written || alone => charged,
            _ => written,
        }
    }

    /// Takes one answer through every learner; says what changed.
    pub(crate) fn answered(
        &mut self,
        key: &Endpoint,
        cx: &Setting<'_>,
        a: &Answered<'_>,
    ) -> Learnt {
        let read = a.read;
        // What this process spent, where the answers are read for the
        // request limit (see `infer`).
        let read_for_limit = remaining_of_unstated(&read.requests).is_some()
            || limit_without_window(&read.requests).is_some();
        if a.answer == Answer::Done && read_for_limit {
            self.inferred.spent(a.now, 1);
        }
        if a.answer == Answer::Done && a.unbounded {
            self.falls.answered(a.sent_at, a.now, &read.tokens);
        }
        // A refusal of a process that sees no other client, where calls
        // were settled to what they wrote: the provider charges more.
        if a.answer == Answer::RateLimited
            && !self.share.others_seen()
            && self.trusts_written_quirk()
        {
            self.written_refused = self.written_refused.saturating_add(1);
            if !self.trusts_written_quirk() {
                tracing::info!(%key, "refused while settling calls to what they wrote: charged their bound from now on");
            }
        }
        let mut rate_known = self.stated(key, cx, a);
        rate_known |= self.infer(key, cx, a);
        self.infer_tokens(key, cx, a);
        self.adapt(key, cx, a);
        self.find_share(key, cx, a);
        // Last: the refusal that names a limit was one the learnt rate
        // and the share saw too.
        if let (Some((dimension, per_minute)), Answer::RateLimited) = (a.message, a.answer) {
            rate_known |= self.named(key, cx, dimension, per_minute);
        }
        let caps = self.caps(read);
        let (paced, changes) = self.changes(cx, &caps);
        Learnt {
            changes,
            rate_known,
            paced,
        }
    }

    /// A call of `costs` is about to be admitted; `raise` says, per
    /// dimension, where it exceeds the burst the store holds. Each burst
    /// holds the largest of the recent calls, raised at once for a larger
    /// one, lowered when those are all under half of it (not at every
    /// change: each is a round trip to the store). Where the store's burst
    /// is under the call's cost (limits written before this call was
    /// priced, or by another process), the limit is written again.
    ///
    /// `in_store` is the key's request limit as the store holds it: where
    /// another process of the fleet changed the learnt rate, this one
    /// takes it (see [`adopt`](Self::adopt)). The flag is true then.
    pub(crate) fn admitting(
        &mut self,
        cx: &Setting<'_>,
        (costs, raise): (&[u64; 4], [bool; 4]),
        in_store: &Quota,
        now: Instant,
    ) -> ([Change; 4], bool) {
        let adopted = self.adopt(cx, in_store, now);
        let largest = self.recent.push(*costs);
        for ((burst, &most), &cost) in self.bursts.iter_mut().zip(&largest).zip(costs) {
            if cost > *burst {
                *burst = cost;
            } else if most.saturating_mul(2) < *burst {
                *burst = most;
            }
        }
        let mut changes = self.changes(cx, &[None; 4]).1;
        if !raise.contains(&true) {
            return (changes, adopted);
        }
        // Only now: the limits are computed again, once per raise, not
        // at every admission.
        let (_, limits) = self.limits(cx);
        for (i, change) in changes.iter_mut().enumerate() {
            let quota = *limits.quota(i);
            // Only a limit this process paces at: an open one written
            // over another process's would lift it.
            let paced = cx.pacing.per_minute_of(&quota).is_some();
            if raise[i] && paced && matches!(change, Change::Keep | Change::AtMost(_)) {
                *change = Change::Limit(quota);
            }
        }
        (changes, adopted)
    }

    /// Through a store the fleet shares, the key's learnt request rate is
    /// one. Each process learns from its own answers and refusals, and
    /// writes what it learnt; where the store holds a rate other than the
    /// one this process last wrote (by more than a hundredth), another
    /// process wrote it: this one takes it, rather than writing its own
    /// back over it within the second. True when it did.
    fn adopt(&mut self, cx: &Setting<'_>, in_store: &Quota, now: Instant) -> bool {
        if cx.finds_share || !self.learns_rate(cx) {
            return false;
        }
        // A first rate being learnt rises answer by answer: what the store
        // holds then is this process's own, a step behind. So is any
        // limit it wrote lately: a read that crossed its own write. A
        // process whose first episode has no rate yet (its calls were all
        // refused, its next answer not come) wrote none: a rate in the
        // store is another's, learnt from more answers than its own.
        let own_first = self.adaptive.learning_first_rate() && self.adaptive.per_minute().is_some();
        if own_first || self.written.contains(in_store) {
            return false;
        }
        let Some(per_minute) = cx.pacing.per_minute_of(in_store) else {
            return false;
        };
        let near = |own: u64| per_minute.abs_diff(own).saturating_mul(100) <= own;
        if self.adaptive.per_minute().is_some_and(near) {
            return false;
        }
        self.adaptive.adopt(per_minute, now);
        true
    }

    /// A successful call's usage: learns what unbounded calls write and
    /// whether the bound is charged, and says what the call was charged.
    pub(crate) fn settled(
        &mut self,
        lesson: &Lesson,
        mut used: [u64; 4],
        bound: u64,
        charge: OutputCharge,
        cx: &Setting<'_>,
    ) -> [u64; 4] {
        if lesson.unbounded {
            self.outputs.record(used[3]);
            self.falls.prompt(used[2]);
            let charged = self.output_charged(used[3], cx);
            used[3] = charged;
            used[1] = used[2].saturating_add(charged);
            return used;
        }
        // A bounded call: charged its bound, unless the endpoint is known
        // to charge what was written.
        self.charges.answered(lesson.seen, used[2], bound);
        if let Some(read) = lesson.unstated {
            self.charges
                .answered_unstated(read, used[2], used[3], bound);
        }
        let written = match charge {
            OutputCharge::Learnt => self.charges.written() || self.trusts_written_quirk(),
            OutputCharge::Bound => false,
            OutputCharge::Written => true,
        };
        if !written && used[3] < bound {
            used[3] = bound;
            used[1] = used[2].saturating_add(bound);
        } else if lesson.unstated.is_some() {
            // The inferred token limit counted the call at its bound.
            self.inferred_tokens
                .settled_lower(bound.saturating_sub(used[3]));
        }
        used
    }

    /// Whether the provider's quirk that it charges what was written is
    /// taken: until refusals say otherwise (a provider at such a host that
    /// charges the bound after all, or a gateway in front).
    fn trusts_written_quirk(&self) -> bool {
        self.quirks.charges_written_output && self.written_refused < DOUBTED
    }

    /// The limits to pace at: those in force, at this process's share,
    /// with the learnt request rate where none is stated; and the budget's
    /// quotas for them.
    pub(crate) fn limits(&self, cx: &Setting<'_>) -> (ProviderLimits, Limits) {
        // The lower of the rate inferred from `remaining` and the one
        // learnt from refusals (the key's, counted by the store that the
        // fleet shares where it is shared).
        let adaptive = self.adaptive.per_minute();
        let learnt = match (self.inferred.per_minute(), adaptive) {
            (Some(inferred), Some(adaptive)) => Some(inferred.min(adaptive)),
            (inferred, adaptive) => inferred.or(adaptive),
        };
        let mut paced = self
            .in_force
            .unwrap_or(*cx.configured)
            .scaled(self.share.get());
        if paced.requests().is_none() {
            if let Some(per_minute) = learnt {
                paced = paced.requests_per_minute(per_minute);
            }
        }
        if paced.tokens().is_none() {
            if let Some(per_minute) = self.inferred_tokens.per_minute() {
                paced = paced.with(Dimension::Tokens, per_minute);
            }
        }
        let quotas = cx.pacing.limits(&paced, &self.bursts);
        (paced, quotas)
    }

    /// The store's changes: a dimension whose limit changed takes it (and
    /// its cap waits for the next answer: one change a dimension), the
    /// others their cap, if any.
    fn changes(
        &mut self,
        cx: &Setting<'_>,
        caps: &[Option<u64>; 4],
    ) -> (ProviderLimits, [Change; 4]) {
        let (paced, limits) = self.limits(cx);
        let applied = self.applied.as_ref().unwrap_or(cx.defaults);
        let mut changes = [Change::Keep; 4];
        for (i, change) in changes.iter_mut().enumerate() {
            let quota = *limits.quota(i);
            *change = if *applied.quota(i) != quota {
                if i == Dimension::Requests.index() {
                    if self.written.len() == WRITTEN {
                        self.written.pop_front();
                    }
                    self.written.push_back(quota);
                }
                Change::Limit(quota)
            } else if let Some(remaining) = caps[i] {
                Change::AtMost(remaining)
            } else {
                Change::Keep
            };
        }
        self.applied = Some(limits);
        (paced, changes)
    }

    /// What remains of each limit in force, as the answer states it. What
    /// remains of a limit nobody stated says nothing of the budget: its
    /// quota is open (a billion a second), and what remains of it would
    /// read as a second's debt.
    fn caps(&self, read: &RateLimitHeaders) -> [Option<u64>; 4] {
        let in_force = self.in_force.unwrap_or_default();
        let mut caps = [None; 4];
        for dimension in Dimension::ALL {
            if in_force.get(dimension).is_some() {
                caps[dimension.index()] = dimension.of(read).remaining;
            }
        }
        caps
    }

    /// The limits the headers state (learnt where none is configured, or
    /// where stricter). True when a request rate became known.
    fn stated(&mut self, key: &Endpoint, cx: &Setting<'_>, a: &Answered<'_>) -> bool {
        let mut stated = ProviderLimits::from_headers(a.read);
        let mut rate_known = false;
        // A request limit stated with no reset and no window in the
        // header's name: ten seconds' (Azure's), unless a refusal shows a
        // minute before the answers confirm them (see `infer`).
        if let Some((limit, remaining)) = limit_without_window(&a.read.requests) {
            if self.quirks.requests_count_ten_seconds {
                self.inferred.ten_seconds();
            }
            let changed = match a.answer {
                Answer::Done => self.inferred.stated(a.now, limit, remaining),
                Answer::RateLimited => self.inferred.refused(),
                _ => None,
            };
            if let Some(window) = changed {
                tracing::info!(%key, ?window, limit, "the request limit's window, from the answers");
            }
            rate_known = true;
            let window = self.inferred.window().as_secs().max(1);
            if let Some(per_window) = stated.requests() {
                stated = stated.requests_per_minute(per_window.saturating_mul(60) / window);
            }
        }
        for dimension in Dimension::ALL {
            if stated.get(dimension).is_some() {
                self.from_message[dimension.index()] = false;
            }
        }
        self.heard = self.heard.merged_with(&stated);
        let in_force = cx.configured.stricter(&self.heard);
        if self.in_force != Some(in_force) && !stated.is_empty() {
            tracing::info!(%key, limits = ?in_force, "rate limits learnt from the response headers");
        }
        self.in_force = Some(in_force);
        rate_known
    }

    /// A limit a minute that a refusal's message names, where no header
    /// states that dimension's (Groq's minute of requests, whose headers
    /// count a day's). True when it was taken.
    fn named(
        &mut self,
        key: &Endpoint,
        cx: &Setting<'_>,
        dimension: Dimension,
        per_minute: u64,
    ) -> bool {
        let from_message = &mut self.from_message[dimension.index()];
        if !*from_message && self.heard.get(dimension).is_some() {
            // The headers state it: theirs is the one read.
            return false;
        }
        *from_message = true;
        self.heard = self.heard.with(dimension, per_minute);
        let in_force = cx.configured.stricter(&self.heard);
        if self.in_force == Some(in_force) {
            return false;
        }
        self.in_force = Some(in_force);
        tracing::info!(%key, dimension = dimension.name(), per_minute, "a limit named by a refusal's message");
        true
    }

    /// Where the endpoint states what remains of its request limit but not
    /// the limit (and none is configured), infers the limit from it (see
    /// the `infer` module). True when it was.
    fn infer(&mut self, key: &Endpoint, cx: &Setting<'_>, a: &Answered<'_>) -> bool {
        let Some(remaining) = remaining_of_unstated(&a.read.requests) else {
            return false;
        };
        if a.answer != Answer::Done || !self.learns_rate(cx) {
            return false;
        }
        let Some(per_minute) = self.inferred.remaining(a.now, remaining) else {
            return false;
        };
        tracing::info!(%key, per_minute, "request limit inferred from what remains of it");
        true
    }

    /// Where the endpoint states what remains of its token limit but not
    /// the limit (and none is configured), infers the limit from it, each
    /// answer counting the tokens its call reserved (see the `infer`
    /// module).
    fn infer_tokens(&mut self, key: &Endpoint, cx: &Setting<'_>, a: &Answered<'_>) {
        let Some(remaining) = remaining_of_unstated(&a.read.tokens) else {
            return;
        };
        if a.answer != Answer::Done
            || cx.configured.tokens().is_some()
            || self.heard.tokens().is_some()
        {
            return;
        }
        self.inferred_tokens.spent(a.now, a.tokens);
        if let Some(per_minute) = self.inferred_tokens.remaining(a.now, remaining) {
            tracing::info!(%key, per_minute, "token limit inferred from what remains of it");
        }
    }

    /// Where the endpoint states no request limit (and none is
    /// configured), learns its rate from the answers: a refusal cuts it, a
    /// second without one grows it (see the `adaptive` module).
    fn adapt(&mut self, key: &Endpoint, cx: &Setting<'_>, a: &Answered<'_>) {
        if !self.learns_rate(cx) {
            return;
        }
        let changed = if a.answer == Answer::Done {
            if let Some(in_store) = &a.in_store {
                self.adopt(cx, in_store, a.now);
            }
            self.adaptive.admitted(a.now, a.counted, cx.sharers)
        } else if self.tokens_bind(cx, a.tokens) {
            // The token limit paced the calls, not the request rate: a
            // refusal is the token limit's, and cutting the request rate
            // below the token limit's pace would only slow the calls.
            None
        } else {
            // A first refusal where the fleet learnt a rate already: that
            // rate is cut, rather than one learnt anew from this process's
            // answers (few, where its calls queued behind the others').
            if let Some(in_store) = &a.in_store {
                self.adopt(cx, in_store, a.now);
            }
            let hold = a.read.retry_after.unwrap_or(Duration::from_secs(1));
            self.adaptive.refused(a.now, hold, cx.sharers)
        };
        if let Some(per_minute) = changed {
            tracing::debug!(%key, per_minute, "request rate learnt from the answers");
        }
    }

    /// Whether the token limit paced calls of `tokens` slower than the
    /// request limit did: then a refusal is the token limit's. Read from
    /// the limits paced at, where both are known.
    fn tokens_bind(&self, cx: &Setting<'_>, tokens: u64) -> bool {
        let (paced, _) = self.limits(cx);
        let (Some(per_minute), Some(requests)) = (paced.tokens(), paced.requests()) else {
            return false;
        };
        per_minute
            .checked_div(tokens)
            .is_some_and(|calls| calls < requests)
    }

    /// Reads this process's share of the endpoint's limits from how the
    /// provider's `remaining` falls against what it spent here (see the
    /// `share` module).
    fn find_share(&mut self, key: &Endpoint, cx: &Setting<'_>, a: &Answered<'_>) {
        if !cx.finds_share || self.learns_rate(cx) {
            return;
        }
        let limit = self.in_force.unwrap_or(*cx.configured).requests();
        let changed = match a.answer {
            Answer::RateLimited => {
                let hold = a.read.retry_after.unwrap_or(Duration::from_secs(1));
                self.share.refused(a.now, hold, limit)
            }
            Answer::Done => match ProviderLimits::requests_remaining(a.read) {
                Some((limit, remaining, reset)) => {
                    self.share.answered(a.now, limit, remaining, reset)
                }
                None => self.share.answered_blind(a.now),
            },
            _ => None,
        };
        if let Some(share) = changed {
            tracing::info!(%key, share, "other clients spend from this limit: pacing at a share of it");
        }
    }
}

/// What an answer says remains of a limit it does not state (see
/// `infer`).
/// What remains of a tokens limit that an answer does not state.
pub(crate) fn unstated_tokens(read: &RateLimitHeaders) -> Option<u64> {
    remaining_of_unstated(&read.tokens)
}

fn remaining_of_unstated(reading: &Reading) -> Option<u64> {
    match *reading {
        Reading {
            limit: None,
            remaining: Some(remaining),
            ..
        } => Some(remaining),
        _ => None,
    }
}

/// A request limit an answer states with neither reset nor window in the
/// header's name, and what remains of it (see `infer`).
fn limit_without_window(requests: &Reading) -> Option<(u64, u64)> {
    match *requests {
        Reading {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: None,
            window: None,
            ..
        } => Some((limit, remaining)),
        _ => None,
    }
}

/// A reset further than this away is not a minute's: every unit spent
/// leaves a minute's window (or refills it) within the minute.
const LONGER_THAN_A_MINUTE: Duration = Duration::from_secs(90);

/// What of an answer's headers paces calls: all of them but a request
/// limit that counts a longer window than a minute, whose budget is left
/// to the provider's refusals (the minute's rate then comes from the
/// refusals' headers or messages, or is learnt from them): Groq's
/// `x-ratelimit-*-requests`, which count a day; and the legacy trio
/// (`x-ratelimit-{limit,remaining,reset}`, `ratelimit-*`) where its reset
/// is over 90 s away (OpenRouter's day, ending at UTC midnight; GitHub's
/// hour). OpenAI's suffixed headers are not read so: its documentation
/// shows a minute's tokens full again in `6m0s`.
pub(crate) fn paced<'a>(
    quirks: Quirks,
    headers: &http::HeaderMap,
    all: &'a RateLimitHeaders,
) -> Cow<'a, RateLimitHeaders> {
    let legacy =
        headers.contains_key("x-ratelimit-reset") || headers.contains_key("ratelimit-reset");
    let longer = legacy
        && all
            .requests
            .reset
            .is_some_and(|reset| reset > LONGER_THAN_A_MINUTE);
    if !longer && !quirks.requests_count_a_day {
        return Cow::Borrowed(all);
    }
    let mut paced = all.clone();
    paced.requests = Reading::default();
    Cow::Owned(paced)
}
