//! Reading rate-limit headers, as providers send them.
//!
//! The arithmetic here works on values bounded by their digits (at most 20
//! digits parsed as `u128`, twelve digits of fraction, four-digit years),
//! so it cannot overflow; what could is checked.
#![allow(clippy::arithmetic_side_effects)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What one dimension's headers say: each part `None` when absent or
/// malformed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// The limit (`x-ratelimit-limit-requests`, say).
    pub limit: Option<u64>,
    /// What remains of it now.
    pub remaining: Option<u64>,
    /// How long from the response until the limit is full again.
    pub reset: Option<Duration>,
    /// The window the limit counts, where the header's name says it
    /// (Mistral's `-minute`): `None` where it does not, and the limit is
    /// taken as a minute's unless its reset or the answers say otherwise.
    pub window: Option<Duration>,
}

impl Reading {
    /// Whether nothing was read.
    pub fn is_empty(&self) -> bool {
        self.limit.is_none() && self.remaining.is_none() && self.reset.is_none()
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// One IETF quota policy (`RateLimit-Policy`), with what `RateLimit` says
/// of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The policy's name.
    pub name: String,
    /// Units per window (`q`); `None` for a policy that `RateLimit` names
    /// but `RateLimit-Policy` does not.
    pub quota: Option<u64>,
    /// The window (`w`).
    pub window: Option<Duration>,
    /// Units remaining (`r`).
    pub remaining: Option<u64>,
    /// Until the quota resets (`t`).
    pub reset: Option<Duration>,
}

/// Everything a response's rate-limit headers say.
///
/// Read by [`parse`]; whatever is absent or malformed is `None` (or left out
/// of `policies`): never an error, never a panic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// Requests: `x-ratelimit-*-requests`, `anthropic-ratelimit-requests-*`,
    /// and the legacy `X-RateLimit-*` / `RateLimit-*` trio.
    pub requests: Reading,
    /// Tokens, input and output together (`x-ratelimit-*-tokens`,
    /// `anthropic-ratelimit-tokens-*`).
    pub tokens: Reading,
    /// Input tokens (`anthropic-ratelimit-input-tokens-*`).
    pub input_tokens: Reading,
    /// Output tokens (`anthropic-ratelimit-output-tokens-*`).
    pub output_tokens: Reading,
    /// The server's wait hint: `retry-after-ms` if usable, else
    /// `Retry-After` (seconds or HTTP-date; the longest of several).
    pub retry_after: Option<Duration>,
    /// A `Retry-After` or `retry-after-ms` that is a well-formed number too
    /// large to represent (more than 584 years): no hint in
    /// [`retry_after`](Self::retry_after), but the server asks for a wait
    /// longer than any a client would make.
    pub retry_after_too_long: bool,
    /// `x-should-retry`: `Some(false)` means do not retry.
    pub should_retry: Option<bool>,
    /// IETF policies, in the order `RateLimit-Policy` lists them.
    pub policies: Vec<Policy>,
}

/// Reads the rate-limit headers of a response.
///
/// `headers` are the response's (name, value) pairs in order; names are
/// matched without regard to case, and a name may repeat. Absolute times
/// (RFC 3339 resets, HTTP-dates, epoch seconds and milliseconds) are
/// measured against the response's `Date` header when it has a valid one,
/// else against `received_at`.
///
/// - Durations: Go style (`6m0s`, `12ms`, `2m59.56s`, `1h2m3.5s`), or bare
///   seconds (`55`, `1.5`). A bare `0` is Azure's "unknown" and is ignored;
///   `0s` is zero. Signs, spaces, upper-case units and two dots make a
///   value malformed.
/// - Repeated values: the smallest limit and remaining, the longest reset
///   and `Retry-After`.
/// - A reset in the past is zero; a `Retry-After` date in the past gives no
///   hint.
/// - Legacy resets: delta seconds, or epoch seconds (from 10^9) or epoch
///   milliseconds (from 10^12).
/// - Dialects: OpenAI's and Groq's `x-ratelimit-*-{requests,tokens}`
///   (Azure's `x-rate-limit-*` too); Mistral's windows in the name
///   (`x-ratelimit-*-{req,tokens}-minute`, `x-ratelimitbysize-*-minute`,
///   older `ratelimitbysize-*`; a month's or a day's limit is not a
///   minute's and is left out); Together's `x-tokenlimit-*`; Anthropic's
///   `anthropic-ratelimit-*`; IETF `RateLimit-Policy` / `RateLimit` (draft
///   10's lists, draft 7's dictionary, the earlier `RateLimit-Limit`
///   trio); the legacy `X-RateLimit-{Limit,Remaining,Reset}` (GitHub,
///   OpenRouter).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use tollgate::headers::parse;
///
/// let headers = [
///     ("x-ratelimit-limit-tokens", &b"150000"[..]),
///     ("x-ratelimit-remaining-tokens", b"149984"),
///     ("x-ratelimit-reset-tokens", b"6m0s"),
///     ("retry-after", b"garbage"),
/// ];
/// let read = parse(headers, SystemTime::now());
/// assert_eq!(read.tokens.remaining, Some(149_984));
/// assert_eq!(read.tokens.reset, Some(Duration::from_secs(360)));
/// assert_eq!(read.retry_after, None);
/// ```
pub fn parse<'a, I>(headers: I, received_at: SystemTime) -> RateLimitHeaders
where
    I: IntoIterator<Item = (&'a str, &'a [u8])>,
{
    let headers: Vec<(&str, &str)> = headers
        .into_iter()
        .filter_map(|(name, value)| Some((name, std::str::from_utf8(value).ok()?.trim())))
        .collect();
    let now = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("date"))
        .find_map(|(_, value)| httpdate::parse_http_date(value).ok())
        .unwrap_or(received_at);

    let mut out = RateLimitHeaders::default();
    let mut retry_after_ms: Option<Duration> = None;
    let mut retry_after: Option<Duration> = None;
    let mut policy_items = Vec::new();
    let mut status_items = Vec::new();

    for &(name, value) in &headers {
        let lower = name.to_ascii_lowercase();
        let lower = lower.as_str();
        if let Some(rest) = lower
            .strip_prefix("x-ratelimit-")
            // Azure writes some with a hyphen more.
            .or_else(|| lower.strip_prefix("x-rate-limit-"))
        {
            openai(&mut out, rest, value, now);
        } else if let Some(rest) = lower.strip_prefix("x-tokenlimit-") {
            // Together's token limits.
            match rest {
                "limit" => min(&mut out.tokens.limit, count(value)),
                "remaining" => min(&mut out.tokens.remaining, count(value)),
                _ => {}
            }
        } else if let Some(rest) = lower.strip_prefix("x-ratelimitbysize-") {
            // Mistral's token limits, the window in the name: only the
            // minute's count as per-minute.
            match rest {
                "limit-minute" => min(&mut out.tokens.limit, count(value)),
                "remaining-minute" => min(&mut out.tokens.remaining, count(value)),
                _ => {}
            }
            if rest.ends_with("-minute") {
                out.tokens.window = Some(MINUTE);
            }
        } else if let Some(rest) = lower.strip_prefix("ratelimitbysize-") {
            // Mistral's older token limits: reset in seconds.
            match rest {
                "limit" => min(&mut out.tokens.limit, count(value)),
                "remaining" => min(&mut out.tokens.remaining, count(value)),
                "reset" => max(&mut out.tokens.reset, legacy_reset(value, now)),
                _ => {}
            }
        } else if let Some(rest) = lower.strip_prefix("anthropic-ratelimit-") {
            anthropic(&mut out, rest, value, now);
        } else if let Some(rest) = lower.strip_prefix("ratelimit-") {
            match rest {
                "policy" => policy_items.extend(sf_list(value)),
                // The legacy trio of earlier drafts.
                "limit" => min(&mut out.requests.limit, count(value)),
                "remaining" => min(&mut out.requests.remaining, count(value)),
                "reset" => max(&mut out.requests.reset, legacy_reset(value, now)),
                _ => {}
            }
        } else {
            match lower {
                // Draft 10 lists named items (`"default";r=50;t=30`);
                // draft 7 wrote one dictionary (`limit=100, remaining=50,
                // reset=5`).
                "ratelimit" if value.starts_with('"') => status_items.extend(sf_list(value)),
                "ratelimit" => draft7(&mut out, value, now),
                "retry-after" => {
                    out.retry_after_too_long |= too_long(value, Duration::from_secs(1));
                    max(&mut retry_after, retry_after_value(value, now));
                }
                "retry-after-ms" => {
                    out.retry_after_too_long |= too_long(value, Duration::from_millis(1));
                    max(&mut retry_after_ms, millis(value));
                }
                "x-should-retry" => match value {
                    "true" => out.should_retry = Some(true),
                    "false" => out.should_retry = Some(false),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    out.retry_after = retry_after_ms.or(retry_after);
    out.policies = policies(policy_items, status_items);
    out
}

/// `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, Mistral's
/// `x-ratelimit-{limit,remaining}-{req,tokens}-minute` (a window other than
/// the minute is not a per-minute limit, and is left out), and the legacy
/// `x-ratelimit-{limit,remaining,reset}` for requests.
fn openai(out: &mut RateLimitHeaders, rest: &str, value: &str, now: SystemTime) {
    let (field, dimension) = match rest.split_once('-') {
        Some((field, "requests")) => (field, &mut out.requests),
        Some((field, "tokens")) => (field, &mut out.tokens),
        Some((field, "req-minute")) => {
            out.requests.window = Some(MINUTE);
            (field, &mut out.requests)
        }
        Some((field, "tokens-minute")) => {
            out.tokens.window = Some(MINUTE);
            (field, &mut out.tokens)
        }
        Some(_) => return,
        None => {
            // Legacy X-RateLimit-Limit / -Remaining / -Reset.
            match rest {
                "limit" => min(&mut out.requests.limit, count(value)),
                "remaining" => min(&mut out.requests.remaining, count(value)),
                "reset" => max(&mut out.requests.reset, legacy_reset(value, now)),
                _ => {}
            }
            return;
        }
    };
    match field {
        "limit" => min(&mut dimension.limit, count(value)),
        "remaining" => min(&mut dimension.remaining, count(value)),
        "reset" => max(&mut dimension.reset, go_duration(value)),
        _ => {}
    }
}

/// `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,reset}`.
fn anthropic(out: &mut RateLimitHeaders, rest: &str, value: &str, now: SystemTime) {
    let Some((dimension, field)) = rest.rsplit_once('-') else {
        return;
    };
    let dimension = match dimension {
        "requests" => &mut out.requests,
        "tokens" => &mut out.tokens,
        "input-tokens" => &mut out.input_tokens,
        "output-tokens" => &mut out.output_tokens,
        _ => return,
    };
    match field {
        "limit" => min(&mut dimension.limit, count(value)),
        "remaining" => min(&mut dimension.remaining, count(value)),
        "reset" => {
            let reset = rfc3339(value).map(|at| until(at, now).unwrap_or(Duration::ZERO));
            max(&mut dimension.reset, reset);
        }
        _ => {}
    }
}

/// Draft 7's `RateLimit: limit=100, remaining=50, reset=5`: requests,
/// reset in delta seconds.
fn draft7(out: &mut RateLimitHeaders, value: &str, now: SystemTime) {
    for member in value.split(',') {
        let Some((key, number)) = member.split_once('=') else {
            continue;
        };
        let number = number.trim();
        match key.trim() {
            "limit" => min(&mut out.requests.limit, count(number)),
            "remaining" => min(&mut out.requests.remaining, count(number)),
            "reset" => max(&mut out.requests.reset, legacy_reset(number, now)),
            _ => {}
        }
    }
}

fn min<T: Ord + Copy>(slot: &mut Option<T>, value: Option<T>) {
    if let Some(value) = value {
        *slot = Some(slot.map_or(value, |old| old.min(value)));
    }
}

fn max<T: Ord + Copy>(slot: &mut Option<T>, value: Option<T>) {
    if let Some(value) = value {
        *slot = Some(slot.map_or(value, |old| old.max(value)));
    }
}

/// A non-negative integer of ASCII digits that fits a `u64`.
fn count(value: &str) -> Option<u64> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// `digits[.digits]` as a number of `unit`s, exactly (no float rounding);
/// `None` if malformed or past `u64::MAX` nanoseconds.
fn decimal(value: &str, unit: Duration) -> Option<Duration> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty())
        || !digits(whole)
        || !digits(fraction)
        || (value.contains('.') && fraction.is_empty())
    {
        return None;
    }
    // Leading zeros say nothing; past 20 digits no count fits.
    let whole = whole.trim_start_matches('0');
    if whole.len() > 20 {
        return None;
    }
    let unit_ns = unit.as_nanos();
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Digits past the twelfth are below a nanosecond for any unit here.
    let (mut numerator, mut scale) = (0u128, 1u128);
    for b in fraction.bytes().take(12) {
        numerator = numerator * 10 + u128::from(b - b'0');
        scale *= 10;
    }
    let nanos = whole
        .checked_mul(unit_ns)?
        .checked_add(unit_ns * numerator / scale)?;
    u64::try_from(nanos).ok().map(Duration::from_nanos)
}

/// Whether `value` is a well-formed decimal number of `unit`s too large
/// for a [`Duration`] of `u64` nanoseconds.
fn too_long(value: &str, unit: Duration) -> bool {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = !whole.is_empty()
        && digits(whole)
        && digits(fraction)
        && !(value.contains('.') && fraction.is_empty());
    well_formed && decimal(value, unit).is_none()
}

/// A Go duration (`1h2m3.5s`, `12ms`) or bare seconds (`55`); a bare zero
/// is ignored (Azure's "unknown"). Read here, not by `humantime`, which
/// reads no fractions (`3.5s`, OpenAI's `1.2s` resets).
fn go_duration(value: &str) -> Option<Duration> {
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds = decimal(value, Duration::from_secs(1))?;
        return (!seconds.is_zero()).then_some(seconds);
    }
    let mut total = Duration::ZERO;
    let mut rest = value;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_len == 0 {
            return None;
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit = match unit {
            "h" => Duration::from_secs(3600),
            "m" => Duration::from_secs(60),
            "s" => Duration::from_secs(1),
            "ms" => Duration::from_millis(1),
            "us" | "µs" => Duration::from_micros(1),
            "ns" => Duration::from_nanos(1),
            _ => return None,
        };
        total = total.checked_add(decimal(number, unit)?)?;
        rest = after;
    }
    Some(total)
}

/// Milliseconds, whole or fractional (`retry-after-ms`).
fn millis(value: &str) -> Option<Duration> {
    decimal(value, Duration::from_millis(1))
}

/// `Retry-After`: delta seconds (whole or fractional) or an HTTP-date; a
/// date in the past gives no hint.
fn retry_after_value(value: &str, now: SystemTime) -> Option<Duration> {
    if value
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_digit() || b == b'.')
    {
        return decimal(value, Duration::from_secs(1));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    until(at, now).filter(|wait| !wait.is_zero())
}

/// A legacy reset: delta seconds, epoch seconds, or epoch milliseconds.
fn legacy_reset(value: &str, now: SystemTime) -> Option<Duration> {
    let n = count(value)?;
    let at = if n >= 1_000_000_000_000 {
        UNIX_EPOCH.checked_add(Duration::from_millis(n))?
    } else if n >= 1_000_000_000 {
        UNIX_EPOCH.checked_add(Duration::from_secs(n))?
    } else {
        return Some(Duration::from_secs(n));
    };
    Some(until(at, now).unwrap_or(Duration::ZERO))
}

/// How long from `now` until `at`; `None` if `at` is past.
fn until(at: SystemTime, now: SystemTime) -> Option<Duration> {
    at.duration_since(now).ok()
}

/// An RFC 3339 date-time: `2025-02-24T22:25:47Z`, `…47.250Z`, `…47+01:00`.
/// `humantime` reads the date and time in UTC; an offset other than `Z`
/// is taken off here (humantime reads only `Z` and `+00:00`).
fn rfc3339(value: &str) -> Option<SystemTime> {
    // RFC 3339 allows `t` and `z` in lower case; humantime reads upper.
    let value = value.to_ascii_uppercase();
    let (local, offset) = match value.strip_suffix('Z') {
        Some(local) => (local, "+00:00"),
        None => value.split_at_checked(value.len().checked_sub(6)?)?,
    };
    if !offset.starts_with(['+', '-']) || local.contains('Z') {
        return None;
    }
    let (h, m) = offset.get(1..)?.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    let shift = Duration::from_secs(h * 3600 + m * 60);
    // The date-time before the offset, read as UTC, then moved by it.
    let local = humantime::parse_rfc3339_weak(&format!("{local}Z")).ok()?;
    if offset.starts_with('-') {
        local.checked_add(shift)
    } else {
        local.checked_sub(shift)
    }
}

/// A Structured Field item of a list: a name (a string, or a token) and its
/// integer parameters.
struct Item {
    name: Option<String>,
    params: Vec<(String, Option<i64>)>,
}

/// A Structured Field list (RFC 9651), read with `sfv`: a field that is
/// not one is ignored whole, as the rate-limit draft asks of malformed
/// fields. Only what the rate-limit fields use is kept: string names and
/// integer parameters (other parameter values read as `None`; members
/// without a string name, and inner lists, have no name).
fn sf_list(value: &str) -> Vec<Item> {
    let Ok(list) = sfv::Parser::new(value).parse::<sfv::List>() else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|entry| match entry {
            sfv::ListEntry::Item(item) => Some(item),
            sfv::ListEntry::InnerList(_) => None,
        })
        .map(|item| Item {
            name: match &item.bare_item {
                sfv::BareItem::String(name) => Some(name.as_str().to_owned()),
                _ => None,
            },
            params: item
                .params
                .iter()
                .map(|(key, value)| {
                    let number = match value {
                        sfv::BareItem::Integer(n) => Some(i64::from(*n)),
                        _ => None,
                    };
                    (key.as_str().to_owned(), number)
                })
                .collect(),
        })
        .collect()
}

impl Item {
    /// A parameter as a non-negative integer: `Err` when present but not one.
    fn count(&self, key: &str) -> Result<Option<u64>, ()> {
        match self.params.iter().rev().find(|(k, _)| k == key) {
            None => Ok(None),
            Some((_, Some(n))) => u64::try_from(*n).map(Some).map_err(|_| ()),
            Some((_, None)) => Err(()),
        }
    }
}

/// Joins `RateLimit-Policy` items with the `RateLimit` items of the same
/// name. Items whose name is not a string, or with a malformed number, are
/// left out.
fn policies(policy_items: Vec<Item>, status_items: Vec<Item>) -> Vec<Policy> {
    let mut policies: Vec<Policy> = Vec::new();
    for item in policy_items {
        let Some(name) = item.name.clone() else {
            continue;
        };
        let (Ok(quota), Ok(window)) = (item.count("q"), item.count("w")) else {
            continue;
        };
        policies.push(Policy {
            name,
            quota,
            window: window.map(Duration::from_secs),
            remaining: None,
            reset: None,
        });
    }
    for item in status_items {
        let Some(name) = item.name.clone() else {
            continue;
        };
        let (Ok(remaining), Ok(reset)) = (item.count("r"), item.count("t")) else {
            continue;
        };
        let reset = reset.map(Duration::from_secs);
        match policies.iter_mut().find(|p| p.name == name) {
            Some(policy) => {
                policy.remaining = remaining;
                policy.reset = reset;
            }
            None => policies.push(Policy {
                name,
                quota: None,
                window: None,
                remaining,
                reset,
            }),
        }
    }
    policies
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64, millis: u64) -> Option<SystemTime> {
        Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
    }

    #[test]
    fn rfc3339_in_utc_and_at_an_offset() {
        // 2025-02-24T22:25:47Z.
        let utc = 1_740_435_947;
        for text in [
            "2025-02-24T22:25:47Z",
            "2025-02-24t22:25:47z",
            "2025-02-24 22:25:47Z",
            "2025-02-24T22:25:47+00:00",
            "2025-02-24T23:25:47+01:00",
            "2025-02-24T17:55:47-04:30",
            "2025-02-25T00:25:47+02:00",
        ] {
            assert_eq!(rfc3339(text), at(utc, 0), "{text}");
        }
        assert_eq!(rfc3339("2025-02-24T22:25:47.250Z"), at(utc, 250));
        assert_eq!(rfc3339("2025-02-24T23:25:47.5+01:00"), at(utc, 500));
    }

    #[test]
    fn rfc3339_that_is_not() {
        for text in [
            "",
            "Z",
            "2025-02-24",
            "2025-02-24T22:25:47",
            "2025-02-24T22:25:47+1:00",
            "2025-02-24T22:25:47+01",
            "2025-02-24T22:25:47+24:00",
            "2025-02-24T22:25:47+01:60",
            "2025-02-24T22:25:47+0a:00",
            "2025-02-30T22:25:47Z",
            "2025-13-01T22:25:47Z",
            "2025-02-24T24:00:00Z",
            "1969-12-31T23:59:59Z",
            "2025-02-24T22:25:47ZZ",
            "2025-02-24T22:25:47.2x0Z",
            "２025-02-24T22:25:47Z",
        ] {
            assert_eq!(rfc3339(text), None, "{text}");
        }
    }
}
