//! Quotas: how many units a limit admits per period, and how many at once.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The largest capacity (burst × replenish interval) a quota may hold, in
/// nanoseconds: about 292 years. It keeps every sum of instants and
/// capacities inside `u64` and every signed balance inside `i64`.
const MAX_CAPACITY_NS: u64 = i64::MAX as u64;

/// A rate (a count per period) and a burst (how many units may be admitted at
/// once when the limit is full).
///
/// The burst defaults to the count, as in governor: `Quota::per_minute(500)`
/// admits 500 at once, then one every 120 ms. Every constructor validates its
/// input and returns an error that names it: a quota that exists is usable,
/// so nothing fails later.
///
/// ```
/// use std::time::Duration;
/// use tollgate::Quota;
///
/// let q = Quota::per_second(10)?.burst(20)?;
/// assert_eq!(q.replenish_interval(), Duration::from_millis(100));
/// assert_eq!(q, "10/s burst 20".parse()?);
/// assert_eq!(q.to_string(), "10/s burst 20");
///
/// let tokens: Quota = "100000/min".parse()?;
/// assert_eq!(tokens.burst_size(), 100_000);
///
/// let err = "0/s".parse::<Quota>().unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid quota "0/s": the count must be at least 1"#);
/// # Ok::<(), tollgate::QuotaError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: u64,
    period_ns: u64,
    burst: u64,
    interval_ns: u64,
}

impl Quota {
    /// One unit per nanosecond: a placeholder in arrays of quotas, never
    /// decided on.
    pub(crate) const UNIT: Self = Self {
        count: 1,
        period_ns: 1,
        burst: 1,
        interval_ns: 1,
    };

    /// `count` units per `period`, with a burst of `count`.
    ///
    /// The replenish interval (`period / count`) is rounded **up** to whole
    /// nanoseconds, so the limit never admits more than the quota says.
    pub fn new(count: u64, period: Duration) -> Result<Self, QuotaError> {
        let describe = || format!("{count} per {period:?}");
        if count == 0 {
            return Err(QuotaError::new(QuotaErrorKind::ZeroCount, describe()));
        }
        let period_ns = u64::try_from(period.as_nanos())
            .map_err(|_| QuotaError::new(QuotaErrorKind::TooLarge, describe()))?;
        if period_ns == 0 {
            return Err(QuotaError::new(QuotaErrorKind::ZeroPeriod, describe()));
        }
        if count > period_ns {
            return Err(QuotaError::new(
                QuotaErrorKind::IntervalTooSmall,
                describe(),
            ));
        }
        let interval_ns = period_ns.div_ceil(count);
        let quota = Self {
            count,
            period_ns,
            burst: count,
            interval_ns,
        };
        quota.check_capacity(describe)
    }

    /// `count` units per second.
    pub fn per_second(count: u64) -> Result<Self, QuotaError> {
        Self::new(count, Duration::from_secs(1))
    }

    /// `count` units per minute.
    pub fn per_minute(count: u64) -> Result<Self, QuotaError> {
        Self::new(count, Duration::from_secs(60))
    }

    /// `count` units per hour.
    pub fn per_hour(count: u64) -> Result<Self, QuotaError> {
        Self::new(count, Duration::from_secs(3600))
    }

    /// One unit per `period`, with a burst of one.
    pub fn with_period(period: Duration) -> Result<Self, QuotaError> {
        Self::new(1, period)
    }

    /// The same rate with another burst: how many units may be admitted at
    /// once when the limit is full. A cost larger than the burst can never be
    /// admitted.
    pub fn burst(self, burst: u64) -> Result<Self, QuotaError> {
        let describe = || format!("{self:?} burst {burst}");
        if burst == 0 {
            return Err(QuotaError::new(QuotaErrorKind::ZeroBurst, describe()));
        }
        Self { burst, ..self }.check_capacity(describe)
    }

    fn check_capacity(self, describe: impl FnOnce() -> String) -> Result<Self, QuotaError> {
        match self.burst.checked_mul(self.interval_ns) {
            Some(capacity) if capacity <= MAX_CAPACITY_NS => Ok(self),
            _ => Err(QuotaError::new(QuotaErrorKind::TooLarge, describe())),
        }
    }

    /// The count of the rate: `count` units per [`period`](Self::period).
    pub const fn count(&self) -> u64 {
        self.count
    }

    /// The period of the rate.
    pub const fn period(&self) -> Duration {
        Duration::from_nanos(self.period_ns)
    }

    /// How many units may be admitted at once when the limit is full.
    pub const fn burst_size(&self) -> u64 {
        self.burst
    }

    /// The time one unit takes to replenish: `period / count`, rounded up to
    /// whole nanoseconds.
    pub const fn replenish_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_ns)
    }

    pub(crate) const fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// `burst × replenish interval`: the time an empty limit takes to fill.
    /// Validated at construction to fit (see [`MAX_CAPACITY_NS`]).
    pub(crate) const fn capacity_ns(&self) -> u64 {
        // Checked in `check_capacity`; saturating keeps this total anyway.
        self.burst.saturating_mul(self.interval_ns)
    }
}

impl fmt::Debug for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quota(\"{self}\")")
    }
}

/// Writes the text form that [`FromStr`] reads back: `500/min`, `5/2s`,
/// `10/s burst 20`.
impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.count)?;
        write_period(f, self.period_ns)?;
        if self.burst != self.count {
            write!(f, " burst {}", self.burst)?;
        }
        Ok(())
    }
}

const UNITS: [(&str, u64); 7] = [
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("min", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

fn write_period(f: &mut fmt::Formatter<'_>, period_ns: u64) -> fmt::Result {
    for (name, unit_ns) in UNITS {
        if period_ns.checked_rem(unit_ns) == Some(0) {
            let amount = period_ns.checked_div(unit_ns).unwrap_or(period_ns);
            return if amount == 1 {
                f.write_str(name)
            } else {
                write!(f, "{amount}{name}")
            };
        }
    }
    // `ns` divides everything; this is never reached.
    write!(f, "{period_ns}ns")
}

fn unit_nanos(unit: &str) -> Option<u64> {
    let ns = match unit {
        "ns" | "nsec" | "nanosecond" | "nanoseconds" => 1,
        "us" | "µs" | "usec" | "microsecond" | "microseconds" => 1_000,
        "ms" | "msec" | "millisecond" | "milliseconds" => 1_000_000,
        "s" | "sec" | "secs" | "second" | "seconds" => 1_000_000_000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000_000_000,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000_000_000,
        "d" | "day" | "days" => 86_400_000_000_000,
        _ => return None,
    };
    Some(ns)
}

/// Parses `COUNT/PERIOD [burst N]`, where PERIOD is an optional amount (which
/// may have a fraction: `1.5s`) and a unit (`ns`, `us`, `ms`, `s`, `min` or
/// `m`, `h`, `d`, or their long names). `per` may stand for `/`, and `_`
/// may group digits: `100_000 per minute burst 5000`.
impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let syntax = || QuotaError::new(QuotaErrorKind::Syntax, input.to_owned());
        let text = input.trim().to_ascii_lowercase();
        let (rate, burst) = match text.split_once("burst") {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (text.as_str(), None),
        };
        let (count, period) = rate
            .split_once('/')
            .or_else(|| rate.split_once(" per "))
            .ok_or_else(syntax)?;
        let count = parse_integer(count).ok_or_else(syntax)?;
        let period_ns = parse_period(period.trim()).ok_or_else(|| {
            // An amount that parses but overflows is "too large", not garbage.
            if period_overflows(period.trim()) {
                QuotaError::new(QuotaErrorKind::TooLarge, input.to_owned())
            } else {
                syntax()
            }
        })?;
        let relabel = |e: QuotaError| QuotaError::new(e.kind, input.to_owned());
        let quota = Self::new(count, Duration::from_nanos(period_ns)).map_err(relabel)?;
        match burst {
            None => Ok(quota),
            Some(burst) => {
                let burst = burst.trim_start().trim_start_matches(['=', ':']);
                let burst = parse_integer(burst).ok_or_else(syntax)?;
                quota.burst(burst).map_err(relabel)
            }
        }
    }
}

fn parse_integer(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    if !text.as_bytes()[0].is_ascii_digit() {
        return None;
    }
    text.bytes()
        .filter(u8::is_ascii_digit)
        .try_fold(0u64, |n, d| {
            n.checked_mul(10)?
                .checked_add(u64::from(d.wrapping_sub(b'0')))
        })
}

/// Splits `1.5s` into (`1.5`, `s`).
fn split_amount(text: &str) -> (&str, &str) {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (amount, unit) = text.split_at(end);
    (amount, unit.trim())
}

fn parse_period(text: &str) -> Option<u64> {
    let (amount, unit) = split_amount(text);
    let unit_ns = unit_nanos(unit)?;
    if amount.is_empty() {
        return Some(unit_ns);
    }
    let (whole, fraction) = match amount.split_once('.') {
        Some((w, f)) => (w, f),
        None => (amount, ""),
    };
    let whole = if whole.is_empty() && !fraction.is_empty() {
        0
    } else {
        parse_integer(whole)?
    };
    let mut ns = whole.checked_mul(unit_ns)?;
    // Each fraction digit is worth a tenth of the one before it.
    let mut place = unit_ns;
    for digit in fraction.bytes() {
        if !digit.is_ascii_digit() {
            return None;
        }
        place = place.checked_div(10).unwrap_or(0);
        ns = ns.checked_add(u64::from(digit.wrapping_sub(b'0')).checked_mul(place)?)?;
    }
    Some(ns)
}

fn period_overflows(text: &str) -> bool {
    let (amount, unit) = split_amount(text);
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    unit_nanos(unit).is_some()
        && !whole.is_empty()
        && whole.bytes().all(|b| b.is_ascii_digit() || b == b'_')
        && fraction.bytes().all(|b| b.is_ascii_digit())
        && parse_period(text).is_none()
}

#[cfg(feature = "serde")]
impl serde::Serialize for Quota {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Quota {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Quota;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a quota such as \"500/min\" or \"10/s burst 20\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Quota, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A quota that cannot be built: its input and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaError {
    kind: QuotaErrorKind,
    input: String,
}

/// What is wrong with a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QuotaErrorKind {
    /// The count is 0.
    ZeroCount,
    /// The period is 0.
    ZeroPeriod,
    /// The burst is 0.
    ZeroBurst,
    /// More than one unit per nanosecond: the replenish interval would round
    /// to 0.
    IntervalTooSmall,
    /// The period, or burst × replenish interval, is too long to represent
    /// (more than about 292 years).
    TooLarge,
    /// The text is not of the form `COUNT/PERIOD [burst N]`.
    Syntax,
}

impl QuotaError {
    fn new(kind: QuotaErrorKind, input: String) -> Self {
        Self { kind, input }
    }

    /// What is wrong.
    pub const fn kind(&self) -> QuotaErrorKind {
        self.kind
    }

    /// The rejected input, as text.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for QuotaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid quota {:?}: ", self.input)?;
        f.write_str(match self.kind {
            QuotaErrorKind::ZeroCount => "the count must be at least 1",
            QuotaErrorKind::ZeroPeriod => "the period must be longer than 0",
            QuotaErrorKind::ZeroBurst => "the burst must be at least 1",
            QuotaErrorKind::IntervalTooSmall => {
                "more than one unit per nanosecond cannot be timed; use a longer period, or count in larger units"
            }
            QuotaErrorKind::TooLarge => {
                "the period, or burst × (period / count), is longer than about 292 years; use a shorter period or a smaller burst"
            }
            QuotaErrorKind::Syntax => {
                "expected COUNT/PERIOD [burst N], as in \"500/min\", \"5/2s\" or \"10/s burst 20\""
            }
        })
    }
}

impl std::error::Error for QuotaError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> Quota {
        text.parse().unwrap()
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(q("500/min"), Quota::per_minute(500).unwrap());
        assert_eq!(
            q("10/s burst 20"),
            Quota::per_second(10).unwrap().burst(20).unwrap()
        );
        assert_eq!(q("1000/h"), Quota::per_hour(1000).unwrap());
        assert_eq!(q("5/2s"), Quota::new(5, Duration::from_secs(2)).unwrap());
        assert_eq!(
            q("3/1.5s"),
            Quota::new(3, Duration::from_millis(1500)).unwrap()
        );
        assert_eq!(
            q(" 100_000 per Minute Burst=5000 "),
            Quota::per_minute(100_000).unwrap().burst(5000).unwrap()
        );
        assert_eq!(
            q("1/.5s"),
            Quota::with_period(Duration::from_millis(500)).unwrap()
        );
    }

    #[test]
    fn displays_what_it_parses() {
        for text in [
            "500/min",
            "10/s burst 20",
            "1000/h",
            "5/2s",
            "3/1500ms",
            "7/3d",
            "1/ns",
        ] {
            assert_eq!(q(text).to_string(), text);
        }
    }

    #[test]
    fn rejects_bad_input_naming_it() {
        let cases = [
            ("0/s", QuotaErrorKind::ZeroCount),
            ("10/0s", QuotaErrorKind::ZeroPeriod),
            ("10/s burst 0", QuotaErrorKind::ZeroBurst),
            ("2000000000/s", QuotaErrorKind::IntervalTooSmall),
            ("1/99999999999999999999d", QuotaErrorKind::TooLarge),
            ("1/300000d", QuotaErrorKind::TooLarge),
            ("1/s burst 18446744073709551615", QuotaErrorKind::TooLarge),
            ("", QuotaErrorKind::Syntax),
            ("ten per second", QuotaErrorKind::Syntax),
            ("10/fortnight", QuotaErrorKind::Syntax),
            ("10/s burst", QuotaErrorKind::Syntax),
            ("10/s burst -3", QuotaErrorKind::Syntax),
            ("-1/s", QuotaErrorKind::Syntax),
            ("1.5/s", QuotaErrorKind::Syntax),
            ("99999999999999999999/s", QuotaErrorKind::Syntax),
            ("1/1.2.3s", QuotaErrorKind::Syntax),
            ("_1/s", QuotaErrorKind::Syntax),
        ];
        for (text, kind) in cases {
            let err = text.parse::<Quota>().unwrap_err();
            assert_eq!(err.kind(), kind, "{text:?}: {err}");
            assert_eq!(err.input(), text);
            assert!(err.to_string().contains(&format!("{text:?}")), "{err}");
        }
    }

    #[test]
    fn numeric_constructors_reject_bad_input() {
        assert_eq!(
            Quota::per_second(0).unwrap_err().kind(),
            QuotaErrorKind::ZeroCount
        );
        assert_eq!(
            Quota::new(1, Duration::ZERO).unwrap_err().kind(),
            QuotaErrorKind::ZeroPeriod
        );
        assert_eq!(
            Quota::new(1, Duration::MAX).unwrap_err().kind(),
            QuotaErrorKind::TooLarge
        );
        assert_eq!(
            Quota::per_second(u64::MAX).unwrap_err().kind(),
            QuotaErrorKind::IntervalTooSmall
        );
        let err = Quota::per_second(10).unwrap().burst(u64::MAX).unwrap_err();
        assert_eq!(err.kind(), QuotaErrorKind::TooLarge);
        assert!(
            err.to_string().contains("burst 18446744073709551615"),
            "{err}"
        );
    }

    #[test]
    fn interval_rounds_up_so_the_rate_is_never_exceeded() {
        let quota = Quota::per_second(3).unwrap();
        assert_eq!(
            quota.replenish_interval(),
            Duration::from_nanos(333_333_334)
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(text in ".{0,40}") {
            let _ = text.parse::<Quota>();
        }

        #[test]
        fn display_round_trips(count in 1u64..1_000_000, period_ms in 1u64..10_000_000, extra in 0u64..1000) {
            let quota = Quota::new(count, Duration::from_millis(period_ms));
            if let Ok(quota) = quota {
                let quota = quota.burst(count + extra).unwrap();
                proptest::prop_assert_eq!(quota.to_string().parse::<Quota>().unwrap(), quota);
            }
        }
    }

    #[cfg(feature = "serde")]
    #[test]
    fn serde_uses_the_text_form() {
        let quota = q("10/s burst 20");
        assert_eq!(serde_json::to_string(&quota).unwrap(), r#""10/s burst 20""#);
        assert_eq!(
            serde_json::from_str::<Quota>(r#""10/s burst 20""#).unwrap(),
            quota
        );
        let err = serde_json::from_str::<Quota>(r#""0/s""#).unwrap_err();
        assert!(
            err.to_string().contains("the count must be at least 1"),
            "{err}"
        );
    }
}
