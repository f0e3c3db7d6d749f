//! What an LLM API call costs: estimated from its request before it is
//! sent, and read from what its answer reports after (feature `llm`).
//!
//! Both sides of an LLM API use it: a client reserves the estimate and
//! settles it with the reported usage; a gateway charges a key the same
//! way. The usage is read from a JSON body ([`usage_of`]), or as the body
//! passes, chunk by chunk and without keeping it: from a JSON answer
//! ([`JsonUsage`]) or from a streamed answer's server-sent events
//! ([`SseUsage`]).
//!
//! ```
//! use serde_json::json;
//! use tollgate::llm::{usage_of, DefaultEstimator, TokenEstimator, TokenUsage};
//!
//! let request = json!({"model": "m", "max_tokens": 50,
//!     "messages": [{"role": "user", "content": "Say hello in French."}]});
//! let estimate = DefaultEstimator.estimate(&request);
//! assert_eq!(estimate.output_tokens, 50);
//!
//! let answer = json!({"usage": {"prompt_tokens": 12, "completion_tokens": 3}});
//! assert_eq!(usage_of(&answer), Some(TokenUsage { input_tokens: 12, output_tokens: 3 }));
//! ```

mod json;
mod sse;

pub use json::JsonUsage;
pub use sse::SseUsage;

use serde_json::Value;

/// A guess of a request's tokens, before the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens: what the request allows the model to
    /// write, which is what providers count against the limit up front.
    pub output_tokens: u64,
}

/// Guesses a request's tokens from its JSON body.
///
/// The guess is reserved before the call and settled afterwards with what
/// the response says was used, so it needs to be roughly right, not exact.
/// A closure `Fn(&serde_json::Value) -> Estimate` is an estimator.
pub trait TokenEstimator: Send + Sync + 'static {
    /// The guess for one request body.
    fn estimate(&self, body: &Value) -> Estimate;
}

impl<F> TokenEstimator for F
where
    F: Fn(&Value) -> Estimate + Send + Sync + 'static,
{
    fn estimate(&self, body: &Value) -> Estimate {
        self(body)
    }
}

/// The default guess: a token per 4 bytes of the body's text (every string
/// in `messages`, `prompt`, `input`, `system` and `tools` but a message's
/// `role`), plus 4 per message (its role and framing, as OpenAI counts);
/// output is `max_completion_tokens`, `max_tokens` or `max_output_tokens`
/// (else [`DEFAULT_OUTPUT_TOKENS`]), times `n`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultEstimator;

/// The output guessed for a request that sets no maximum.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1_024;

impl TokenEstimator for DefaultEstimator {
    fn estimate(&self, body: &Value) -> Estimate {
        let mut bytes = 0u64;
        let mut messages = 0u64;
        for field in ["messages", "prompt", "input", "system", "tools"] {
            if let Some(value) = body.get(field) {
                bytes = bytes.saturating_add(text_bytes(value, 0));
                if let Some(list) = value.as_array() {
                    messages = messages.saturating_add(list.len() as u64);
                }
            }
        }
        let input = bytes.div_ceil(4).saturating_add(messages.saturating_mul(4));
        let output = output_bound(body)
            .unwrap_or_else(|| DEFAULT_OUTPUT_TOKENS.saturating_mul(choices(body)));
        Estimate {
            input_tokens: input,
            output_tokens: output,
        }
    }
}

/// The most output a request body allows the model to write: its
/// `max_completion_tokens`, `max_tokens` or `max_output_tokens`, times its
/// `n` choices; `None` when it names no bound (the model writes what it
/// likes, and a client must learn what that is).
///
/// ```
/// use serde_json::json;
/// assert_eq!(tollgate::llm::output_bound(&json!({"max_tokens": 50, "n": 2})), Some(100));
/// assert_eq!(tollgate::llm::output_bound(&json!({"messages": []})), None);
/// ```
pub fn output_bound(body: &Value) -> Option<u64> {
    ["max_completion_tokens", "max_tokens", "max_output_tokens"]
        .iter()
        .find_map(|field| body.get(*field).and_then(Value::as_u64))
        .map(|bound| bound.saturating_mul(choices(body)))
}

/// The choices a request asks for (`n`, 1 to 128).
fn choices(body: &Value) -> u64 {
    body.get("n")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, 128)
}

/// The bytes of every string inside `value` (bounded in depth, so a
/// hostile body cannot recurse without end).
fn text_bytes(value: &Value, depth: usize) -> u64 {
    if depth > 32 {
        return 0;
    }
    match value {
        Value::String(s) => s.len() as u64,
        Value::Array(items) => items
            .iter()
            .map(|v| text_bytes(v, depth.saturating_add(1)))
            .fold(0, u64::saturating_add),
        // A message's role is counted in its 4 tokens of framing, as
        // OpenAI counts it.
        Value::Object(map) => map
            .iter()
            .filter(|(key, _)| key.as_str() != "role")
            .map(|(_, v)| text_bytes(v, depth.saturating_add(1)))
            .fold(0, u64::saturating_add),
        _ => 0,
    }
}

/// What an answer says a call used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUsage {
    /// Input (prompt) tokens.
    pub input_tokens: u64,
    /// Output (completion) tokens.
    pub output_tokens: u64,
}

/// The usage a JSON answer reports: OpenAI's `usage.prompt_tokens` and
/// `usage.completion_tokens`, or Anthropic's `usage.input_tokens` and
/// `usage.output_tokens`; `None` when it reports none.
pub fn usage_of(answer: &Value) -> Option<TokenUsage> {
    usage_in(answer.get("usage")?)
}

/// The counts of a `usage` object, in OpenAI's names or Anthropic's.
fn usage_in(usage: &Value) -> Option<TokenUsage> {
    let count = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| usage.get(*name).and_then(Value::as_u64))
    };
    Some(TokenUsage {
        input_tokens: count(["prompt_tokens", "input_tokens"])?,
        output_tokens: count(["completion_tokens", "output_tokens"])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_completion_bodies() {
        let body = json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Say hello in French."}
            ],
            "max_tokens": 50,
            "n": 2
        });
        let estimate = DefaultEstimator.estimate(&body);
        // "You are terse." + "Say hello in French." = 34 bytes; each
        // message's role is in its 4 tokens of framing.
        assert_eq!(estimate.input_tokens, 9 + 8);
        assert_eq!(estimate.output_tokens, 100);

        let bare = DefaultEstimator.estimate(&json!({"prompt": "abcd"}));
        assert_eq!(
            bare,
            Estimate {
                input_tokens: 1,
                output_tokens: DEFAULT_OUTPUT_TOKENS
            }
        );
        // Absurd values saturate, never overflow.
        let absurd = DefaultEstimator.estimate(&json!({"max_tokens": u64::MAX, "n": 99}));
        assert_eq!(absurd.output_tokens, u64::MAX);
    }
}
