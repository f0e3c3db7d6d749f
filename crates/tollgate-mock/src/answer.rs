//! A chat completion's answer, whole or streamed, as the providers write
//! them: the mock's providers (this crate's and `tollgate mock`'s) answer
//! through here.
//!
//! A request with `"stream": true` is answered with server-sent events:
//! OpenAI's `chat.completion.chunk`s (ending with a chunk of `usage` when
//! the request sets `stream_options.include_usage`, then `data: [DONE]`),
//! or Anthropic's `message_start` … `message_delta` … `message_stop`.
//! Otherwise the answer is OpenAI's JSON chat completion.
//!
//! ```
//! use serde_json::json;
//! use tollgate_mock::answer::{events, Shape};
//!
//! let request = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}});
//! let events = events(Shape::OpenAi, &request, 12, 3);
//! let last_data = String::from_utf8(events[events.len() - 2].to_vec()).unwrap();
//! assert!(last_data.contains(r#""usage":{"completion_tokens":3,"prompt_tokens":12"#));
//! assert_eq!(&events[events.len() - 1][..], b"data: [DONE]\n\n");
//! ```

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The deltas a streamed answer is cut into at most.
const MAX_DELTAS: u64 = 16;

/// Whose events a streamed answer is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// OpenAI's chat completion chunks.
    OpenAi,
    /// Anthropic's message events.
    Anthropic,
}

/// Whether the request asks for a streamed answer.
pub fn streamed(request: &Value) -> bool {
    request.get("stream").and_then(Value::as_bool) == Some(true)
}

/// The text the model writes: "ok" once per written token, 64 at most.
fn words(written: u64) -> Vec<&'static str> {
    vec!["ok"; usize::try_from(written.clamp(1, 64)).unwrap_or(64)]
}

fn model(request: &Value) -> &str {
    request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("mock-1")
}

/// The answer to `request`, which read `prompt` tokens and wrote
/// `written`: JSON, or events in `shape` when the request streams.
pub fn respond(shape: Shape, request: &Value, prompt: u64, written: u64) -> Response {
    if !streamed(request) {
        return whole(request, prompt, written).into_response();
    }
    let chunks = events(shape, request, prompt, written);
    let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

/// OpenAI's JSON chat completion.
pub fn whole(request: &Value, prompt: u64, written: u64) -> axum::Json<Value> {
    axum::Json(json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion",
        "model": model(request),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": words(written).join(" ")},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": written,
            "total_tokens": prompt.saturating_add(written)
        }
    }))
}

/// A streamed answer's events, one chunk each.
pub fn events(shape: Shape, request: &Value, prompt: u64, written: u64) -> Vec<Bytes> {
    let words = words(written);
    let per_delta = words
        .len()
        .div_ceil(usize::try_from(MAX_DELTAS).unwrap_or(16))
        .max(1);
    let pieces: Vec<String> = words.chunks(per_delta).map(|c| c.join(" ") + " ").collect();
    match shape {
        Shape::OpenAi => openai(request, prompt, written, &pieces),
        Shape::Anthropic => anthropic(request, prompt, written, &pieces),
    }
}

fn openai(request: &Value, prompt: u64, written: u64, pieces: &[String]) -> Vec<Bytes> {
    let model = model(request);
    let include_usage = request
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    let chunk = |choices: Value, usage: Value| {
        let mut chunk = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": choices,
        });
        if include_usage {
            chunk["usage"] = usage;
        }
        Bytes::from(format!("data: {chunk}\n\n"))
    };
    let mut out = vec![chunk(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        Value::Null,
    )];
    for piece in pieces {
        out.push(chunk(
            json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]),
            Value::Null,
        ));
    }
    out.push(chunk(
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
        Value::Null,
    ));
    if include_usage {
        out.push(chunk(
            json!([]),
            json!({
                "prompt_tokens": prompt,
                "completion_tokens": written,
                "total_tokens": prompt.saturating_add(written)
            }),
        ));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

fn anthropic(request: &Value, prompt: u64, written: u64, pieces: &[String]) -> Vec<Bytes> {
    let event = |name: &str, data: Value| Bytes::from(format!("event: {name}\ndata: {data}\n\n"));
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant",
                "model": model(request), "content": [], "stop_reason": null,
                "usage": {"input_tokens": prompt, "output_tokens": 1}
            }}),
        ),
        event(
            "content_block_start",
            json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    for piece in pieces {
        out.push(event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    out.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.push(event(
        "message_delta",
        json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": written}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate::llm::{SseUsage, TokenUsage};

    fn read(events: &[Bytes]) -> Option<TokenUsage> {
        let mut sse = SseUsage::default();
        for event in events {
            sse.feed(event);
        }
        sse.usage()
    }

    #[test]
    fn streams_report_their_usage_as_the_providers_do() {
        let usage = Some(TokenUsage {
            input_tokens: 30,
            output_tokens: 200,
        });
        let asks = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert_eq!(read(&events(Shape::OpenAi, &asks, 30, 200)), usage);
        // Without include_usage, OpenAI reports none.
        let plain = json!({"stream": true});
        let chunks = events(Shape::OpenAi, &plain, 30, 200);
        assert_eq!(read(&chunks), None);
        assert!(chunks
            .iter()
            .all(|c| !String::from_utf8_lossy(c).contains("usage")));
        // Anthropic always does.
        assert_eq!(read(&events(Shape::Anthropic, &plain, 30, 200)), usage);
        // At most 16 deltas and the framing.
        assert!(events(Shape::Anthropic, &plain, 30, 5_000).len() <= 16 + 6);
    }
}
