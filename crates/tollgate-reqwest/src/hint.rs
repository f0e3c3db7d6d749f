//! What a refusal's body says: a wait, for providers that put none in the
//! headers (Google's `RetryInfo`, `"retryDelay": "26s"`, and messages such
//! as OpenAI's "Please try again in 5.289s", or "in 20ms", "in 1m30s");
//! and the limit it names: a message's, as OpenAI's and Groq's do ("on
//! requests per minute (RPM): Limit 30, Used 30, Requested 1"), which
//! Groq's headers leave out, or a Google `QuotaFailure`'s per-minute
//! quota (Gemini's, which sends no rate-limit headers).

use std::time::Duration;

use reqwest::{Response, ResponseBuilderExt};
use serde_json::Value;

use crate::limits::Dimension;

/// The largest body read for a hint. A larger one (or one of unknown
/// length) is left unread, so that a refusal handed back to the caller
/// keeps its whole body.
pub(crate) const MAX_BODY: u64 = 64 * 1024;

/// What a refusal's body says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct BodyHint {
    /// A wait hint.
    pub(crate) wait: Option<Duration>,
    /// A limit a minute the message names, and its dimension.
    pub(crate) per_minute: Option<(Dimension, u64)>,
}

/// Reads a refusal's body for what it says and hands back an equal
/// response (status, version, URL, headers, extensions and body).
pub(crate) async fn read(mut response: Response) -> (Response, BodyHint) {
    if response.content_length().is_none_or(|n| n > MAX_BODY) {
        return (response, BodyHint::default());
    }
    let status = response.status();
    let version = response.version();
    let url = response.url().clone();
    let headers = std::mem::take(response.headers_mut());
    let extensions = std::mem::take(response.extensions_mut());
    let Ok(bytes) = response.bytes().await else {
        // The body could not be read: there is nothing to hand back either.
        let mut empty = http::Response::new(Vec::new());
        *empty.status_mut() = status;
        *empty.headers_mut() = headers;
        return (Response::from(empty), BodyHint::default());
    };
    let hint = BodyHint::of(&bytes);
    let mut builder = http::Response::builder().status(status).version(version);
    if let Some(slot) = builder.headers_mut() {
        *slot = headers;
    }
    if let Some(slot) = builder.extensions_mut() {
        *slot = extensions;
    }
    // After the extensions, which it is kept in.
    let builder = builder.url(url);
    match builder.body(bytes.to_vec()) {
        Ok(rebuilt) => (Response::from(rebuilt), hint),
        Err(_) => (Response::from(http::Response::new(bytes.to_vec())), hint),
    }
}

impl BodyHint {
    /// What a body says, its JSON parsed once and its text lower-cased
    /// once. A wait hint: a JSON `retryDelay` anywhere, or a message
    /// saying "try again in …". A limit a minute: a Google
    /// `QuotaFailure`'s violation (`"quotaId":
    /// "GenerateRequestsPerMinutePerProjectPerModel"`, `"quotaValue":
    /// "15"`), or a message's `(RPM): Limit 30` (a minute's requests) or
    /// `(TPM): Limit 6000` (tokens), as OpenAI's and Groq's write them. A
    /// day's (`PerDay`, `RPD`, `TPD`) is not a minute's.
    pub(crate) fn of(bytes: &[u8]) -> Self {
        let json = serde_json::from_slice::<Value>(bytes).ok();
        let text = std::str::from_utf8(bytes).ok();
        let lower = text.map(str::to_ascii_lowercase);
        let wait = json
            .as_ref()
            .and_then(|json| find_retry_delay(json, 0))
            .or_else(|| {
                let label = "try again in ";
                let at = lower.as_deref()?.find(label)?;
                duration_prefix(text?.get(at + label.len()..)?)
            });
        let per_minute = json
            .as_ref()
            .and_then(|json| find_quota(json, 0))
            .or_else(|| named_in(lower.as_deref()?));
        Self { wait, per_minute }
    }
}

/// A limit a minute a lower-cased message names: `(rpm): limit 30`.
fn named_in(lower: &str) -> Option<(Dimension, u64)> {
    [
        ("(rpm): limit ", Dimension::Requests),
        ("(tpm): limit ", Dimension::Tokens),
    ]
    .into_iter()
    .find_map(|(label, dimension)| {
        let at = lower.find(label)?;
        let rest = lower.get(at + label.len()..)?;
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let limit: u64 = rest.get(..digits)?.parse().ok()?;
        (limit > 0).then_some((dimension, limit))
    })
}

/// A per-minute quota a Google `QuotaFailure` names, searched at most a
/// few levels deep: the dimension from its `quotaId`, the limit its
/// `quotaValue` (a string of digits, or a number).
fn find_quota(value: &Value, depth: usize) -> Option<(Dimension, u64)> {
    if depth > 6 {
        return None;
    }
    match value {
        Value::Object(map) => {
            let id = map.get("quotaId").and_then(Value::as_str);
            let limit = map.get("quotaValue").and_then(|v| match v {
                Value::String(text) => text.parse::<u64>().ok(),
                other => other.as_u64(),
            });
            if let (Some(id), Some(limit)) = (id, limit.filter(|&n| n > 0)) {
                let id = id.to_ascii_lowercase();
                let dimension = if id.contains("inputtoken") {
                    Some(Dimension::InputTokens)
                } else if id.contains("outputtoken") {
                    Some(Dimension::OutputTokens)
                } else if id.contains("token") {
                    Some(Dimension::Tokens)
                } else if id.contains("request") {
                    Some(Dimension::Requests)
                } else {
                    None
                };
                if let (Some(dimension), true) = (dimension, id.contains("perminute")) {
                    return Some((dimension, limit));
                }
            }
            map.values().find_map(|v| find_quota(v, depth + 1))
        }
        Value::Array(items) => items.iter().find_map(|v| find_quota(v, depth + 1)),
        _ => None,
    }
}

/// `retryDelay` in a JSON value, searched at most a few levels deep.
fn find_retry_delay(value: &Value, depth: usize) -> Option<Duration> {
    if depth > 6 {
        return None;
    }
    match value {
        Value::Object(map) => {
            if let Some(delay) = map.get("retryDelay").and_then(Value::as_str) {
                if let Some(wait) = duration_prefix(delay) {
                    return Some(wait);
                }
            }
            map.values().find_map(|v| find_retry_delay(v, depth + 1))
        }
        Value::Array(items) => items.iter().find_map(|v| find_retry_delay(v, depth + 1)),
        _ => None,
    }
}

/// A duration at the start of `text`: numbers (with a fraction) each
/// followed by `h`, `m`, `s` or `ms` (`5.289s`, `20ms`, `1m30s`, `26s`).
fn duration_prefix(text: &str) -> Option<Duration> {
    let bytes = text.as_bytes();
    let mut at = 0;
    let mut total = Duration::ZERO;
    let mut any = false;
    loop {
        let start = at;
        let digits = |mut at: usize| {
            while bytes.get(at).is_some_and(u8::is_ascii_digit) {
                at += 1;
            }
            at
        };
        at = digits(at);
        if at == start {
            break;
        }
        // A fraction is a dot followed by digits; a lone dot ends a sentence.
        if bytes.get(at) == Some(&b'.') && bytes.get(at + 1).is_some_and(u8::is_ascii_digit) {
            at = digits(at + 1);
        }
        let Some(number) = text.get(start..at).and_then(|n| n.parse::<f64>().ok()) else {
            break;
        };
        let rest = text.get(at..)?;
        let lower = rest.to_ascii_lowercase();
        let word = [
            (" milliseconds", 0.001),
            (" millisecond", 0.001),
            (" seconds", 1.0),
            (" second", 1.0),
            (" minutes", 60.0),
            (" minute", 60.0),
            (" hours", 3600.0),
            (" hour", 3600.0),
        ]
        .into_iter()
        .find(|(name, _)| lower.starts_with(name));
        let (unit, len) = if let Some((name, unit)) = word {
            (unit, name.len())
        } else if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            break;
        };
        let seconds = number * unit;
        if !seconds.is_finite() || !(0.0..=1e9).contains(&seconds) {
            return None;
        }
        total = total.saturating_add(Duration::from_secs_f64(seconds));
        any = true;
        at += len;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::BodyHint;
    use crate::limits::Dimension;
    use std::time::Duration;

    fn in_body(bytes: &[u8]) -> Option<Duration> {
        BodyHint::of(bytes).wait
    }

    fn limit_in_body(bytes: &[u8]) -> Option<(Dimension, u64)> {
        BodyHint::of(bytes).per_minute
    }

    #[test]
    fn reads_the_limit_a_message_names() {
        let groq = br#"{"error":{"message":"Rate limit reached for model `llama3-8b-8192` in organization `org_01` on requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 665ms. Visit https://console.groq.com/docs/rate-limits for more information.","type":"requests","code":"rate_limit_exceeded"}}"#;
        assert_eq!(limit_in_body(groq), Some((Dimension::Requests, 30)));
        assert_eq!(in_body(groq), Some(Duration::from_millis(665)));
        let tokens = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 5.289s."}}"#;
        assert_eq!(limit_in_body(tokens), Some((Dimension::Tokens, 30_000)));
        let gemini = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[
                {"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
                 "quotaId":"GenerateContentInputTokensPerModelPerMinute-FreeTier",
                 "quotaDimensions":{"location":"global","model":"gemini-2.0-flash"},
                 "quotaValue":"250000"}]},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#;
        assert_eq!(
            limit_in_body(gemini),
            Some((Dimension::InputTokens, 250_000))
        );
        assert_eq!(in_body(gemini), Some(Duration::from_secs(26)));
        let requests = br#"{"details":[{"violations":[{"quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier","quotaValue":15}]}]}"#;
        assert_eq!(limit_in_body(requests), Some((Dimension::Requests, 15)));
        for nothing in [
            &br#"{"violations":[{"quotaId":"GenerateRequestsPerDayPerProjectPerModel-FreeTier","quotaValue":"1500"}]}"#[..],
            br#"{"violations":[{"quotaId":"GenerateRequestsPerMinute","quotaValue":"soon"}]}"#,
            br#"{"violations":[{"quotaId":"SomethingPerMinute","quotaValue":"5"}]}"#,
            b"Rate limit reached on requests per day (RPD): Limit 14400, Used 14400",
            b"(RPM): Limit 0, Used 0",
            b"(RPM): Limit , Used 3",
            b"(RPM): Limit 99999999999999999999999",
            b"rate limited",
            &[0xff, 0xfe],
        ] {
            assert_eq!(limit_in_body(nothing), None);
        }
    }

    #[test]
    fn reads_the_hints_providers_send() {
        let google = br#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[
            {"@type":"type.googleapis.com/google.rpc.QuotaFailure"},
            {"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"26s"}]}}"#;
        assert_eq!(in_body(google), Some(Duration::from_secs(26)));
        let openai = br#"{"error":{"message":"Rate limit reached for gpt-4o in organization org-x on tokens per min (TPM): Limit 30000, Used 29000, Requested 1500. Please try again in 5.289s. Visit https://platform.openai.com/account/rate-limits to learn more.","type":"tokens","code":"rate_limit_exceeded"}}"#;
        assert_eq!(in_body(openai), Some(Duration::from_millis(5_289)));
        assert_eq!(
            in_body(b"Too many requests. Try again in 20ms"),
            Some(Duration::from_millis(20))
        );
        assert_eq!(
            in_body(b"please try again in 1m30s."),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            in_body(br#"{"retryDelay":"1.5s"}"#),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(
            in_body(b"Rate limit exceeded. Try again in 2 seconds."),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn says_nothing_when_the_body_does_not() {
        assert_eq!(in_body(b""), None);
        assert_eq!(in_body(b"{}"), None);
        assert_eq!(in_body(b"rate limited"), None);
        assert_eq!(in_body(b"try again in a while"), None);
        assert_eq!(in_body(br#"{"retryDelay":"soon"}"#), None);
        assert_eq!(in_body(b"try again in 1e999s"), None);
        assert_eq!(in_body(&[0xff, 0xfe, 0x00]), None);
        // Absurd: beyond 30 years is no hint.
        assert_eq!(in_body(b"try again in 99999999999999999999s"), None);
    }
}
