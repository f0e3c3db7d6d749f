//! Rate-limit header values: written as servers send them, and read as
//! providers send them ([`parse`]).
//!
//! One module for both faces, so that what the server layer writes is
//! exactly what the client middleware reads. It deals in header *values*
//! (text), not in any HTTP crate's types: the core crate has no HTTP.
//!
//! The fields are those of the IETF draft *RateLimit header fields for HTTP*
//! (draft-ietf-httpapi-ratelimit-headers), in Structured Field syntax:
//!
//! ```text
//! RateLimit-Policy: "default";q=100;w=60
//! RateLimit: "default";r=42;t=35
//! ```
//!
//! `q` is the quota (units per window), `w` the window in seconds, `r` the
//! units remaining and `t` the seconds until the limit is full again. The
//! legacy `X-RateLimit-Limit` / `-Remaining` / `-Reset` trio carries the
//! same numbers, `Reset` as delta seconds.
//!
//! ```
//! use std::time::Duration;
//! use tollgate::headers::{self, PolicyName};
//! use tollgate::{Quota, Snapshot};
//!
//! let name = PolicyName::new("per-ip")?;
//! let quota: Quota = "100/min".parse()?;
//! assert_eq!(headers::policy(&name, &quota), r#""per-ip";q=100;w=60"#);
//!
//! let snapshot = Snapshot::new(100, 42, Duration::from_millis(34_200));
//! assert_eq!(headers::rate_limit(&name, &snapshot), r#""per-ip";r=42;t=35"#);
//! assert_eq!(headers::retry_after_secs(Duration::from_millis(1)), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Quota, Snapshot};

mod parse;

pub use parse::{parse, Policy, RateLimitHeaders, Reading};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The name of a quota policy, as the `RateLimit-Policy` and `RateLimit`
/// fields carry it: a Structured Field string of printable ASCII.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PolicyName {
    name: Arc<str>,
    /// The name as a Structured Field string: quoted, `"` and `\` escaped.
    quoted: Arc<str>,
}

impl PolicyName {
    /// A policy name; printable ASCII (space to `~`), 1 to 64 characters.
    ///
    /// ```
    /// use tollgate::headers::PolicyName;
    /// assert!(PolicyName::new("per-key").is_ok());
    /// assert!(PolicyName::new("").is_err());
    /// assert!(PolicyName::new("tab\there").is_err());
    /// ```
    pub fn new(name: &str) -> Result<Self, PolicyNameError> {
        const MAX_LEN: usize = 64;
        if name.is_empty() || name.len() > MAX_LEN {
            return Err(PolicyNameError {
                message: format!(
                    "a rate-limit policy name has 1 to {MAX_LEN} characters; {name:?} has {}",
                    name.len()
                ),
            });
        }
        if let Some(bad) = name.chars().find(|c| !(' '..='~').contains(c)) {
            return Err(PolicyNameError {
                message: format!(
                    "a rate-limit policy name is printable ASCII (space to '~'); {name:?} holds {bad:?}"
                ),
            });
        }
        let mut quoted = String::with_capacity(name.len().saturating_add(2));
        quoted.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        Ok(Self {
            name: name.into(),
            quoted: quoted.into(),
        })
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

impl Default for PolicyName {
    /// `"default"`.
    fn default() -> Self {
        Self {
            name: "default".into(),
            quoted: "\"default\"".into(),
        }
    }
}

impl fmt::Debug for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl fmt::Display for PolicyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A policy name that cannot be written in a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyNameError {
    message: String,
}

impl fmt::Display for PolicyNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for PolicyNameError {}

/// Whole seconds, rounded up: what `Retry-After`, `t` and `w` carry.
pub fn ceil_secs(duration: Duration) -> u64 {
    let secs = duration.as_secs();
    if duration.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    }
}

/// The `Retry-After` value for a wait: whole seconds rounded up, and never
/// 0, since a limited client told 0 would retry at once and be limited again.
pub fn retry_after_secs(wait: Duration) -> u64 {
    ceil_secs(wait).max(1)
}

/// A quota as the quota and window of a `RateLimit-Policy` item: `q` units
/// per `w` whole seconds.
///
/// A period of whole seconds is written as it is. Any other period is
/// widened to the next whole second, and `q` scaled down to match (rounded
/// down, so the policy never promises more than the quota allows):
/// `"10/500ms"` is written `q=20;w=1`, `"1/1500ms"` is `q=1;w=2`.
pub fn quota_window(quota: &Quota) -> (u64, u64) {
    let period = quota.period();
    let window = ceil_secs(period).max(1);
    if period.subsec_nanos() == 0 {
        return (quota.count(), window);
    }
    let scaled = u128::from(quota.count())
        .saturating_mul(u128::from(window))
        .saturating_mul(NANOS_PER_SEC)
        .checked_div(period.as_nanos())
        .unwrap_or(0);
    (u64::try_from(scaled).unwrap_or(u64::MAX), window)
}

/// An instant as RFC 3339 in UTC, to the second (`2025-02-24T22:25:47Z`):
/// how Anthropic writes its resets, and what [`parse`] reads. An instant
/// before 1970 is written as 1970's first second, one past 9999 as
/// 9999's last.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_740_435_947);
/// assert_eq!(tollgate::headers::rfc3339(at), "2025-02-24T22:25:47Z");
/// ```
pub fn rfc3339(at: std::time::SystemTime) -> String {
    use std::time::{Duration, UNIX_EPOCH};
    // The last second of 9999: humantime writes four-digit years.
    let last = UNIX_EPOCH
        .checked_add(Duration::from_secs(253_402_300_799))
        .unwrap_or(UNIX_EPOCH);
    humantime::format_rfc3339_seconds(at.clamp(UNIX_EPOCH, last)).to_string()
}

/// The `RateLimit-Policy` item for a quota: `"name";q=100;w=60`.
pub fn policy(name: &PolicyName, quota: &Quota) -> String {
    let (q, w) = quota_window(quota);
    item(name, (";q=", q), (";w=", w))
}

/// The `RateLimit` item for a decision: `"name";r=42;t=35`, with `t` the
/// whole seconds (rounded up) until the limit is full again.
///
/// Servers write one on every response, so it is written without the
/// formatting machinery, into a string of exactly its length.
pub fn rate_limit(name: &PolicyName, snapshot: &Snapshot) -> String {
    let t = ceil_secs(snapshot.reset_after());
    item(name, (";r=", snapshot.remaining()), (";t=", t))
}

/// `"name";a=1;b=2`, allocated once at its exact length.
fn item(name: &PolicyName, a: (&str, u64), b: (&str, u64)) -> String {
    let len = name
        .quoted
        .len()
        .saturating_add(a.0.len())
        .saturating_add(b.0.len())
        .saturating_add(digits(a.1))
        .saturating_add(digits(b.1));
    let mut out = String::with_capacity(len);
    out.push_str(&name.quoted);
    for (label, n) in [a, b] {
        out.push_str(label);
        push_u64(&mut out, n);
    }
    out
}

fn digits(n: u64) -> usize {
    n.checked_ilog10()
        .and_then(|log| usize::try_from(log).ok())
        .map_or(1, |log| log.saturating_add(1))
}

fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_any_instant() {
        use std::time::{Duration, UNIX_EPOCH};
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        assert_eq!(rfc3339(at(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(at(951_782_400)), "2000-02-29T00:00:00Z");
        let before = UNIX_EPOCH.checked_sub(Duration::from_secs(1));
        if let Some(before) = before {
            assert_eq!(rfc3339(before), "1970-01-01T00:00:00Z");
        }
        assert_eq!(rfc3339(at(253_402_300_799)), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(at(300_000_000_000)), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn windows_of_whole_and_partial_seconds() {
        let q = |s: &str| quota_window(&s.parse::<Quota>().unwrap());
        assert_eq!(q("500/min"), (500, 60));
        assert_eq!(q("10/s"), (10, 1));
        assert_eq!(q("10/h"), (10, 3600));
        assert_eq!(q("10/500ms"), (20, 1));
        assert_eq!(q("1/1500ms"), (1, 2));
        assert_eq!(q("3/250ms"), (12, 1));
    }

    #[test]
    fn names_are_quoted_and_escaped() {
        let name = PolicyName::new(r#"a"b\c"#).unwrap();
        let quota = Quota::per_second(5).unwrap();
        assert_eq!(policy(&name, &quota), r#""a\"b\\c";q=5;w=1"#);
        assert!(PolicyName::new(&"x".repeat(65)).is_err());
        assert!(PolicyName::new("é").is_err());
        assert_eq!(PolicyName::default().as_str(), "default");
    }

    #[test]
    fn items_are_written_at_their_exact_length() {
        let name = PolicyName::default();
        for (remaining, reset_ms) in [(0, 0), (9, 1), (10, 10_000), (u64::MAX, u64::MAX)] {
            let snapshot = Snapshot::new(u64::MAX, remaining, Duration::from_millis(reset_ms));
            let item = rate_limit(&name, &snapshot);
            // A snapshot holds at most u64::MAX ns (584 years).
            let t = ceil_secs(Duration::from_millis(reset_ms)).min(18_446_744_074);
            assert_eq!(item, format!("\"default\";r={remaining};t={t}"));
            assert_eq!(item.len(), item.capacity());
        }
    }

    #[test]
    fn seconds_round_up_and_retry_is_never_zero() {
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_secs(Duration::from_secs(12)), 12);
        assert_eq!(ceil_secs(Duration::MAX), u64::MAX);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(11_001)), 12);
    }
}
