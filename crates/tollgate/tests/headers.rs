//! Every vector of `tests/vectors/headers.json` (the project's shared
//! header vectors, and six more for the dialects of Mistral, Azure,
//! Together and IETF draft 7 that they lack), and arbitrary bytes, through
//! the header parser.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use serde_json::Value;
use tollgate::headers::{parse, Reading};

const VECTORS: &str = include_str!("vectors/headers.json");

fn http_date(text: &str) -> SystemTime {
    // The parser's own date reading is under test; derive the receipt time
    // independently, from the civil date in the text.
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = text.split([' ', ':']).collect();
    let day: i64 = parts[1].parse().unwrap();
    let month = months.iter().position(|m| *m == parts[2]).unwrap() as i64 + 1;
    let year: i64 = parts[3].parse().unwrap();
    let (h, m, s): (i64, i64, i64) = (
        parts[4].parse().unwrap(),
        parts[5].parse().unwrap(),
        parts[6].parse().unwrap(),
    );
    // Days from civil (proleptic Gregorian).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    SystemTime::UNIX_EPOCH + Duration::from_secs((days * 86_400 + h * 3600 + m * 60 + s) as u64)
}

fn check_reading(name: &str, dimension: &str, got: &Reading, want: &Value) {
    let want = want.as_object().unwrap();
    let field = |key: &str| want.get(key).map(|v| v.as_u64());
    if let Some(limit) = field("limit") {
        assert_eq!(got.limit, limit, "{name}: {dimension}.limit");
    }
    if let Some(remaining) = field("remaining") {
        assert_eq!(got.remaining, remaining, "{name}: {dimension}.remaining");
    }
    if let Some(reset) = field("reset_ms") {
        assert_eq!(
            got.reset,
            reset.map(Duration::from_millis),
            "{name}: {dimension}.reset"
        );
    }
    if let Some(window) = field("window_s") {
        assert_eq!(
            got.window,
            window.map(Duration::from_secs),
            "{name}: {dimension}.window"
        );
    }
}

#[test]
fn every_vector_reads_as_expected() {
    let all: Value = serde_json::from_str(VECTORS).unwrap();
    let received_at = http_date(all["received_at"].as_str().unwrap());
    let vectors = all["vectors"].as_array().unwrap();
    assert_eq!(vectors.len(), 47);
    for vector in vectors {
        let name = vector["name"].as_str().unwrap();
        let mut headers: Vec<(String, Vec<u8>)> = vector["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| {
                (
                    pair[0].as_str().unwrap().to_owned(),
                    pair[1].as_str().unwrap().as_bytes().to_vec(),
                )
            })
            .collect();
        if let Some(date) = vector.get("date").and_then(Value::as_str) {
            headers.push(("Date".to_owned(), date.as_bytes().to_vec()));
        }
        let read = parse(
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            received_at,
        );
        let expect = vector["expect"].as_object().unwrap();
        for (key, want) in expect {
            match key.as_str() {
                "requests" => check_reading(name, key, &read.requests, want),
                "tokens" => check_reading(name, key, &read.tokens, want),
                "input_tokens" => check_reading(name, key, &read.input_tokens, want),
                "output_tokens" => check_reading(name, key, &read.output_tokens, want),
                "retry_after_ms" => assert_eq!(
                    read.retry_after,
                    want.as_u64().map(Duration::from_millis),
                    "{name}: retry_after"
                ),
                "retry" => assert_eq!(read.should_retry, want.as_bool(), "{name}: retry"),
                "policies" => {
                    let want = want.as_array().unwrap();
                    assert_eq!(read.policies.len(), want.len(), "{name}: policies");
                    for (got, want) in read.policies.iter().zip(want) {
                        assert_eq!(got.name, want["name"].as_str().unwrap(), "{name}");
                        assert_eq!(got.quota, want["quota"].as_u64(), "{name}: quota");
                        assert_eq!(
                            got.window,
                            want["window_s"].as_u64().map(Duration::from_secs),
                            "{name}: window"
                        );
                        assert_eq!(got.remaining, want["remaining"].as_u64(), "{name}");
                        assert_eq!(
                            got.reset,
                            want["reset_ms"].as_u64().map(Duration::from_millis),
                            "{name}: reset"
                        );
                    }
                }
                other => {
                    panic!("{name}: the vector expects {other:?}, which this test does not read")
                }
            }
        }
    }
}

#[test]
fn what_the_server_layer_writes_reads_back() {
    use tollgate::headers::{self, PolicyName};
    use tollgate::{Quota, Snapshot};
    let name = PolicyName::new("per-ip").unwrap();
    let quota: Quota = "100/min".parse().unwrap();
    let snapshot = Snapshot::new(100, 42, Duration::from_millis(34_200));
    let policy = headers::policy(&name, &quota);
    let status = headers::rate_limit(&name, &snapshot);
    let read = parse(
        [
            ("RateLimit-Policy", policy.as_bytes()),
            ("RateLimit", status.as_bytes()),
        ],
        SystemTime::now(),
    );
    assert_eq!(read.policies.len(), 1);
    let p = &read.policies[0];
    assert_eq!(p.name, "per-ip");
    assert_eq!(
        (p.quota, p.window),
        (Some(100), Some(Duration::from_secs(60)))
    );
    assert_eq!(
        (p.remaining, p.reset),
        (Some(42), Some(Duration::from_secs(35)))
    );
}

const NAMES: &[&str] = &[
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "x-ratelimit-reset",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-requests-remaining",
    "ratelimit-policy",
    "ratelimit",
    "ratelimit-reset",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "date",
];

proptest! {
    /// Arbitrary bytes under every name the parser reads: never a panic,
    /// and what is read is within what the bytes could say.
    #[test]
    fn arbitrary_header_bytes_never_panic(
        headers in proptest::collection::vec(
            (0..NAMES.len(), proptest::collection::vec(any::<u8>(), 0..48)),
            0..12,
        ),
        texts in proptest::collection::vec(
            (0..NAMES.len(), "[0-9a-zA-Z .:;,=\"+\\-TZ]{0,40}"),
            0..12,
        ),
        seconds in 0u64..=u64::from(u32::MAX),
    ) {
        let received = SystemTime::UNIX_EPOCH + Duration::from_secs(seconds);
        let mut all: Vec<(&str, Vec<u8>)> = headers
            .into_iter()
            .map(|(i, v)| (NAMES[i], v))
            .collect();
        all.extend(texts.into_iter().map(|(i, t)| (NAMES[i], t.into_bytes())));
        let read = parse(all.iter().map(|(n, v)| (*n, v.as_slice())), received);
        // Every count read is written, in digits, in some header's value.
        let values: Vec<String> = all
            .iter()
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect();
        let readings = [read.requests, read.tokens, read.input_tokens, read.output_tokens];
        let counts = readings
            .iter()
            .flat_map(|r| [r.limit, r.remaining])
            .chain(read.policies.iter().flat_map(|p| [p.quota, p.remaining]))
            .flatten();
        for n in counts {
            let digits = n.to_string();
            prop_assert!(values.iter().any(|v| v.contains(&digits)), "{n} is in no header");
        }
    }
}

/// A `Retry-After` too large to count is no hint (as the vectors say), but
/// is flagged: the server asks for longer than any wait.
#[test]
fn a_retry_after_too_large_to_count_is_flagged() {
    use std::time::{Duration, SystemTime};
    use tollgate::headers::parse;
    let now = SystemTime::now();
    let read = parse(
        [("retry-after", &b"99999999999999999999999999999999999"[..])],
        now,
    );
    assert_eq!(read.retry_after, None);
    assert!(read.retry_after_too_long);
    let read = parse([("retry-after-ms", &b"99999999999999999999999"[..])], now);
    assert!(read.retry_after_too_long);
    // Leading zeros are no overflow.
    let read = parse([("retry-after", &b"0000000000000000000000000030"[..])], now);
    assert_eq!(read.retry_after, Some(Duration::from_secs(30)));
    assert!(!read.retry_after_too_long);
    // Malformed values are neither.
    for value in [&b"-5"[..], b"1e9", b"soon", b"1.", b""] {
        let read = parse([("retry-after", value)], now);
        assert_eq!(read.retry_after, None);
        assert!(!read.retry_after_too_long, "{value:?}");
    }
}
