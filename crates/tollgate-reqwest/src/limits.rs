//! The four dimensions a call spends, and the quotas they are paced by.

use std::time::Duration;

use tollgate::headers::RateLimitHeaders;
use tollgate::{Limits, Quota};

/// The four dimensions a call spends. Their order is that of every cost
/// array and of the budget's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dimension {
    Requests,
    /// Input and output together (OpenAI's TPM).
    Tokens,
    InputTokens,
    OutputTokens,
}

impl Dimension {
    pub(crate) const ALL: [Self; 4] = [
        Self::Requests,
        Self::Tokens,
        Self::InputTokens,
        Self::OutputTokens,
    ];

    /// Its place in a cost array and in the budget's limits.
    pub(crate) const fn index(self) -> usize {
        self as usize
    }

    /// Its name in the budget's limits and in errors.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Tokens => "tokens",
            Self::InputTokens => "input_tokens",
            Self::OutputTokens => "output_tokens",
        }
    }

    /// What a response's headers read of it.
    pub(crate) const fn of(self, read: &RateLimitHeaders) -> tollgate::headers::Reading {
        match self {
            Self::Requests => read.requests,
            Self::Tokens => read.tokens,
            Self::InputTokens => read.input_tokens,
            Self::OutputTokens => read.output_tokens,
        }
    }
}

/// A limit of a dimension nobody set or told us: effectively none.
const OPEN: u64 = 1_000_000_000;

const MINUTE: Duration = Duration::from_secs(60);

/// Per-minute limits of a provider, as its documentation or your account
/// page gives them. Those left `None` are learnt from the response headers.
///
/// ```
/// use tollgate_reqwest::ProviderLimits;
///
/// let tier_one = ProviderLimits::new()
///     .requests_per_minute(500)
///     .input_tokens_per_minute(30_000)
///     .output_tokens_per_minute(8_000);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProviderLimits {
    per_minute: [Option<u64>; 4],
}

impl ProviderLimits {
    /// No limits: everything is learnt from the headers.
    pub const fn new() -> Self {
        Self {
            per_minute: [None; 4],
        }
    }

    /// Requests per minute (RPM).
    #[must_use]
    pub const fn requests_per_minute(mut self, n: u64) -> Self {
        self.per_minute[Dimension::Requests.index()] = Some(n);
        self
    }

    /// Tokens per minute, input and output together (OpenAI's TPM).
    #[must_use]
    pub const fn tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[Dimension::Tokens.index()] = Some(n);
        self
    }

    /// Input tokens per minute (Anthropic's ITPM).
    #[must_use]
    pub const fn input_tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[Dimension::InputTokens.index()] = Some(n);
        self
    }

    /// Output tokens per minute (Anthropic's OTPM).
    #[must_use]
    pub const fn output_tokens_per_minute(mut self, n: u64) -> Self {
        self.per_minute[Dimension::OutputTokens.index()] = Some(n);
        self
    }

    /// Requests per minute, if set or stated.
    pub fn requests(&self) -> Option<u64> {
        self.per_minute[Dimension::Requests.index()]
    }

    /// Tokens per minute, input and output together.
    pub fn tokens(&self) -> Option<u64> {
        self.per_minute[Dimension::Tokens.index()]
    }

    /// Input tokens per minute.
    pub fn input_tokens(&self) -> Option<u64> {
        self.per_minute[Dimension::InputTokens.index()]
    }

    /// Output tokens per minute.
    pub fn output_tokens(&self) -> Option<u64> {
        self.per_minute[Dimension::OutputTokens.index()]
    }

    /// Whether any limit is set.
    pub fn is_empty(&self) -> bool {
        self.per_minute.iter().all(Option::is_none)
    }

    pub(crate) fn with(mut self, dimension: Dimension, per_minute: u64) -> Self {
        self.per_minute[dimension.index()] = Some(per_minute);
        self
    }

    /// Every limit times `share` (at least 1), for a process that spends
    /// a share of them.
    pub(crate) fn scaled(&self, share: f64) -> Self {
        if share >= 1.0 {
            return *self;
        }
        let mut scaled = *self;
        for slot in scaled.per_minute.iter_mut().flatten() {
            // Below the limit, which is far below 2^53.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss
            )]
            let part = (*slot as f64 * share) as u64;
            *slot = part.max(1);
        }
        scaled
    }

    pub(crate) fn get(&self, dimension: Dimension) -> Option<u64> {
        self.per_minute[dimension.index()]
    }

    /// The per-minute limits a response's headers state.
    pub(crate) fn from_headers(read: &RateLimitHeaders) -> Self {
        let mut limits = Self::new();
        for dimension in Dimension::ALL {
            limits.per_minute[dimension.index()] = dimension.of(read).limit.filter(|&n| n > 0);
        }
        // IETF policies: the dimension is read from the policy's name
        // ("requests", "rpm", "tokens", "tpm", "input_tokens",
        // "output-tokens"...); a policy of another name counts as requests.
        // Headers of the dimension's own family take precedence.
        let mut from_policies = Self::new();
        for policy in &read.policies {
            let (Some(quota), Some(window)) = (policy.quota, policy.window) else {
                continue;
            };
            let secs = window.as_secs();
            if secs == 0 || quota == 0 {
                continue;
            }
            let per_minute = quota.saturating_mul(60) / secs;
            if per_minute == 0 {
                // Slower than one a minute (a daily quota): left to the
                // provider's refusals.
                continue;
            }
            let dimension = policy_dimension(&policy.name);
            let slot = &mut from_policies.per_minute[dimension.index()];
            *slot = Some(slot.map_or(per_minute, |old| old.min(per_minute)));
        }
        for (slot, from_policy) in limits.per_minute.iter_mut().zip(from_policies.per_minute) {
            *slot = slot.or(from_policy);
        }
        limits
    }

    /// A dimension's limit and what remains of it, as `read` states them
    /// both: in its own family's headers, or in an IETF policy of its name
    /// (its quota over its window).
    pub(crate) fn stated_with_remaining(
        read: &RateLimitHeaders,
        dimension: Dimension,
    ) -> Option<(u64, u64)> {
        let own = dimension.of(read);
        if let (Some(limit), Some(remaining)) = (own.limit, own.remaining) {
            return Some((limit, remaining));
        }
        read.policies
            .iter()
            .filter(|p| policy_dimension(&p.name) == dimension)
            .find_map(|p| p.quota.zip(p.remaining))
    }

    /// What `read` says of the request limit a minute: the limit, what
    /// remains and the time until full, from its own family's headers or
    /// from an IETF policy of requests over a minute; `None` where nothing
    /// says what remains.
    pub(crate) fn requests_remaining(
        read: &RateLimitHeaders,
    ) -> Option<(Option<u64>, u64, Option<Duration>)> {
        let own = &read.requests;
        if let Some(remaining) = own.remaining {
            return Some((own.limit, remaining, own.reset));
        }
        read.policies
            .iter()
            .filter(|p| policy_dimension(&p.name) == Dimension::Requests)
            .filter(|p| p.window == Some(Duration::from_secs(60)))
            .find_map(|p| Some((p.quota, p.remaining?, p.reset)))
    }

    /// Per dimension, the stricter of the two.
    pub(crate) fn stricter(&self, other: &Self) -> Self {
        let mut out = *self;
        for (slot, theirs) in out.per_minute.iter_mut().zip(other.per_minute) {
            *slot = match (*slot, theirs) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        out
    }
}

/// The dimension an IETF policy's name speaks of.
fn policy_dimension(name: &str) -> Dimension {
    let name = name.to_ascii_lowercase();
    if name.contains("input") {
        Dimension::InputTokens
    } else if name.contains("output") {
        Dimension::OutputTokens
    } else if name.contains("token") || name == "tpm" {
        Dimension::Tokens
    } else {
        Dimension::Requests
    }
}

/// How the middleware paces a per-minute limit: at `1 - headroom` of it,
/// one step at a time, so that a provider that enforces the minute in
/// slices of a second sees no burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Pacing {
    pub(crate) headroom: f64,
}

impl Pacing {
    /// The quota a per-minute limit is paced at. The burst is a twentieth
    /// of a second's worth, but no more than the headroom leaves in a
    /// second (a provider that enforces the limit over each second, or
    /// any second, admits a second's worth: paced calls and the burst
    /// must fit in it), or `min_burst` (the largest call) if more, and at
    /// least 1: calls leave evenly spaced.
    pub(crate) fn quota(&self, per_minute: Option<u64>, min_burst: u64) -> Quota {
        let Some(limit) = per_minute else {
            return open();
        };
        // An f64 holds the counts that matter here exactly enough.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let paced = ((limit as f64) * (1.0 - self.headroom)).floor().max(1.0) as u64;
        let spare = limit.saturating_sub(paced) / 60;
        let burst = (paced / 60 / 20).min(spare).max(min_burst).clamp(1, paced);
        Quota::new(paced, MINUTE)
            .and_then(|q| q.burst(burst))
            .unwrap_or_else(|_| open())
    }

    /// The per-minute limit that [`quota`](Self::quota) paces at `quota`
    /// (to within a request); `None` for an open quota.
    pub(crate) fn per_minute_of(&self, quota: &Quota) -> Option<u64> {
        if quota.count() >= OPEN || quota.period() < Duration::from_secs(1) {
            return None;
        }
        // One more than the paced count, so that pacing the answer again
        // gives the same count, not one less.
        #[allow(
            clippy::cast_precision_loss,
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss
        )]
        let per_minute = ((quota.count() + 1) as f64 * MINUTE.as_secs_f64()
            / quota.period().as_secs_f64()
            / (1.0 - self.headroom)) as u64;
        Some(per_minute)
    }

    pub(crate) fn limits(&self, per_minute: &ProviderLimits, bursts: &[u64; 4]) -> Limits {
        let mut builder = Limits::builder();
        for dimension in Dimension::ALL {
            let quota = self.quota(per_minute.get(dimension), bursts[dimension.index()]);
            builder = builder.dimension(dimension.name(), quota);
        }
        // Four distinct names and valid quotas: this cannot fail.
        builder.build().unwrap_or_else(|_| open_limits())
    }
}

fn open() -> Quota {
    Quota::per_second(OPEN).expect("a billion a second is a valid quota")
}

fn open_limits() -> Limits {
    Limits::single(open())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_quotas() {
        let pacing = Pacing { headroom: 0.05 };
        let requests = pacing.quota(Some(600), 1);
        assert_eq!((requests.count(), requests.burst_size()), (570, 1));
        assert_eq!(
            requests.replenish_interval(),
            Duration::from_nanos(105_263_158)
        );
        let tokens = pacing.quota(Some(60_000), 0);
        assert_eq!((tokens.count(), tokens.burst_size()), (57_000, 47));
        let tiny = pacing.quota(Some(1), 0);
        assert_eq!((tiny.count(), tiny.burst_size()), (1, 1));
        assert_eq!(pacing.quota(None, 5).burst_size(), OPEN);
        assert_eq!(pacing.per_minute_of(&pacing.quota(None, 1)), None);
        // Paced again, the limit read back from a quota gives that quota.
        for (headroom, limit) in [(0.05, 600), (0.02, 6_000), (0.02, 7_817), (0.3, 1)] {
            let pacing = Pacing { headroom };
            let quota = pacing.quota(Some(limit), 1);
            let read = pacing.per_minute_of(&quota);
            assert_eq!(pacing.quota(read, 1), quota, "{limit} at {headroom}");
        }
        // Paced calls and the burst fit in any second: at 98% of 100 a
        // second, a burst of 2 (a twentieth of a second's worth, 4, would
        // put 102 in a second).
        let narrow = Pacing { headroom: 0.02 }.quota(Some(6_000), 1);
        assert_eq!((narrow.count(), narrow.burst_size()), (5_880, 2));
        // A burst holds the largest call, but never more than the limit.
        assert_eq!(pacing.quota(Some(60_000), 400).burst_size(), 400);
        assert_eq!(pacing.quota(Some(100), 400).burst_size(), 95);
    }

    #[test]
    fn ietf_policies_by_name() {
        use tollgate::headers::parse;
        let read = parse(
            [(
                "ratelimit-policy",
                &br#""tokens";q=10000000;w=60, "requests";q=40;w=1, "output-tokens";q=600;w=10, "daily";q=100;w=86400"#[..],
            )],
            std::time::SystemTime::now(),
        );
        let limits = ProviderLimits::from_headers(&read);
        // "daily" is slower than one a minute: not paced.
        assert_eq!(limits.requests(), Some(2_400));
        assert_eq!(limits.tokens(), Some(10_000_000));
        assert_eq!(limits.output_tokens(), Some(3_600));
        assert_eq!(limits.input_tokens(), None);
    }

    #[test]
    fn what_remains_of_the_requests_in_either_family() {
        use tollgate::headers::parse;
        let now = std::time::SystemTime::now();
        let ietf = parse(
            [
                (
                    "ratelimit-policy",
                    &br#""rpm";q=600;w=60, "tpm";q=9000;w=60"#[..],
                ),
                ("ratelimit", &br#""rpm";r=598;t=1, "tpm";r=8000;t=7"#[..]),
            ],
            now,
        );
        assert_eq!(
            ProviderLimits::requests_remaining(&ietf),
            Some((Some(600), 598, Some(Duration::from_secs(1))))
        );
        // A policy over another window is not a minute's.
        let seconds = parse(
            [
                ("ratelimit-policy", &br#""rpm";q=10;w=1"#[..]),
                ("ratelimit", &br#""rpm";r=9;t=1"#[..]),
            ],
            now,
        );
        assert_eq!(ProviderLimits::requests_remaining(&seconds), None);
        let openai = parse(
            [
                ("x-ratelimit-limit-requests", &b"500"[..]),
                ("x-ratelimit-remaining-requests", &b"499"[..]),
                ("x-ratelimit-reset-requests", &b"120ms"[..]),
            ],
            now,
        );
        assert_eq!(
            ProviderLimits::requests_remaining(&openai),
            Some((Some(500), 499, Some(Duration::from_millis(120))))
        );
    }

    #[test]
    fn stricter_per_dimension() {
        let configured = ProviderLimits::new().requests_per_minute(100);
        let learnt = ProviderLimits::new()
            .requests_per_minute(500)
            .tokens_per_minute(10_000);
        let both = configured.stricter(&learnt);
        assert_eq!(both.get(Dimension::Requests), Some(100));
        assert_eq!(both.get(Dimension::Tokens), Some(10_000));
        assert_eq!(both.get(Dimension::InputTokens), None);
    }
}
