//! The records `tollgate batch` writes: one JSON object a line of input.
//!
//! ```text
//! {"line":3,"input_sha256":"9f…","ok":true,"status":200,"attempts":1,"latency_ms":412,"response":{…}}
//! {"line":4,"input_sha256":"2c…","ok":false,"kind":"retry_later","status":429,"attempts":3,"latency_ms":1830,"retry_after_s":61.0,"error":"…"}
//! ```
//!
//! `ok` is true for a success answer (its body in `response`); otherwise
//! `kind` says what went wrong and `error` what was said (a failed answer's
//! body, or a message). A rerun skips the lines whose record is `ok` or
//! `bad_input` ([`super::resume`]).

use std::time::Duration;

use serde::ser::{Serialize, SerializeStruct, Serializer};
use serde_json::Value;

/// What went wrong with a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The line is not a JSON object; a rerun skips it too.
    BadInput,
    /// The provider answered with a failure status (its body in `error`).
    Http,
    /// The answer's body was larger than `--max-body`.
    BodyTooLarge,
    /// The provider (or the run, after `--give-up-after`) asked for a
    /// wait past what the run takes: send it again later.
    RetryLater,
    /// The request can never fit the limits (its cost is past the burst).
    TooLarge,
    /// The connection failed.
    Transport,
    /// No answer within `--timeout`.
    Timeout,
}

impl Kind {
    /// The name written in the record, and counted in the metrics.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::BadInput => "bad_input",
            Self::Http => "http",
            Self::BodyTooLarge => "body_too_large",
            Self::RetryLater => "retry_later",
            Self::TooLarge => "too_large",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
        }
    }
}

/// One line's record. (Serialized by hand: the binary builds without
/// serde's derive macros, which would add a compiler of their own to its
/// first build.)
#[derive(Clone, Debug)]
pub(crate) struct Record {
    line: u64,
    input_sha256: String,
    ok: bool,
    kind: Option<Kind>,
    status: Option<u16>,
    attempts: Option<u32>,
    latency_ms: Option<u64>,
    retry_after_s: Option<f64>,
    response: Option<Value>,
    error: Option<Value>,
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl Serialize for Record {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut record = serializer.serialize_struct("Record", 10)?;
        record.serialize_field("line", &self.line)?;
        record.serialize_field("input_sha256", &self.input_sha256)?;
        record.serialize_field("ok", &self.ok)?;
        // Each field only where the record knows it.
        macro_rules! known {
            ($($name:ident),*) => {$(
                match &self.$name {
                    Some(value) => record.serialize_field(stringify!($name), value)?,
                    None => record.skip_field(stringify!($name))?,
                }
            )*};
        }
        known!(
            kind,
            status,
            attempts,
            latency_ms,
            retry_after_s,
            response,
            error
        );
        record.end()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Record {
    /// The record of line `line`, whose bytes hash to `hash`: not yet ok.
    pub(crate) fn new(line: u64, hash: &[u8; 32]) -> Self {
        Self {
            line,
            input_sha256: super::resume::hex(hash),
            ok: false,
            kind: None,
            status: None,
            attempts: None,
            latency_ms: None,
            retry_after_s: None,
            response: None,
            error: None,
        }
    }

    /// A success answer, and its body.
    pub(crate) fn answered(mut self, response: Value) -> Self {
        self.ok = true;
        self.response = Some(response);
        self
    }

    /// A failure of `kind`, and what was said of it.
    pub(crate) fn failed(mut self, kind: Kind, error: impl Into<Value>) -> Self {
        self.ok = false;
        self.kind = Some(kind);
        self.error = Some(error.into());
        self
    }

    /// The answer's status.
    pub(crate) fn status(mut self, status: u16) -> Self {
        self.status = Some(status);
        self
    }

    /// Attempts sent, and the time since the line was first sent.
    pub(crate) fn took(mut self, attempts: u32, latency: Duration) -> Self {
        self.attempts = Some(attempts);
        self.latency_ms = Some(millis(latency));
        self
    }

    /// The wait the provider asked for.
    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after_s = Some(wait.as_secs_f64());
        self
    }

    /// Whether the line succeeded.
    pub(crate) fn is_ok(&self) -> bool {
        self.ok
    }

    /// What went wrong, if anything.
    pub(crate) fn kind(&self) -> Option<Kind> {
        self.kind
    }

    /// The record as a line of the output, newline included.
    pub(crate) fn to_line(&self) -> Vec<u8> {
        // A record of strings, numbers and JSON values always serializes.
        let mut text = serde_json::to_vec(self).unwrap_or_default();
        text.push(b'\n');
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn records_carry_only_what_they_know() {
        let ok = Record::new(3, &[0xab; 32])
            .status(200)
            .took(1, Duration::from_millis(412))
            .answered(json!({"id": "x"}));
        let value: Value = serde_json::from_slice(&ok.to_line()).unwrap();
        assert_eq!(
            value,
            json!({"line": 3, "input_sha256": "ab".repeat(32), "ok": true, "status": 200,
                   "attempts": 1, "latency_ms": 412, "response": {"id": "x"}})
        );
        let later = Record::new(4, &[0; 32])
            .failed(Kind::RetryLater, "wait")
            .status(429)
            .took(3, Duration::from_millis(1_830))
            .retry_after(Duration::from_secs(61));
        let value: Value = serde_json::from_slice(&later.to_line()).unwrap();
        assert_eq!(value["kind"], "retry_later");
        assert_eq!(value["retry_after_s"], 61.0);
        assert!(value.get("response").is_none());
        let bad = Record::new(5, &[0; 32]).failed(Kind::BadInput, "not JSON");
        let value: Value = serde_json::from_slice(&bad.to_line()).unwrap();
        assert_eq!(
            value,
            json!({"line": 5, "input_sha256": "00".repeat(32), "ok": false,
                   "kind": "bad_input", "error": "not JSON"})
        );
        assert_eq!(Kind::BodyTooLarge.name(), "body_too_large");
    }
}
