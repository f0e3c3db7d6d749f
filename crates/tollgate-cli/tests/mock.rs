//! `tollgate mock`'s limits and headers, driven in process (no socket) on
//! paused time, so every value is exact.

use axum::body::Body;
use axum::http::Request;
use tollgate_cli::mock::{self, MockConfig, Scripted, Style};
use tower::ServiceExt;

fn request(body: &'static str) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_mock_refuses_over_its_limits_with_headers() {
    let app = mock::app(MockConfig {
        rpm: 120,
        tpm: 1_000_000,
        style: Style::Openai,
        latency_ms: 0..0,
        store: None,
        scripted: None,
    })
    .unwrap();
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut statuses = Vec::new();
    let mut remaining = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let response = app.clone().oneshot(request(body)).await.unwrap();
        statuses.push(response.status().as_u16());
        remaining.push(response.headers()["x-ratelimit-remaining-requests"].clone());
        last = Some(response);
    }
    // 120 a minute is 2 a second: a burst of 2, then one each 500 ms.
    assert_eq!(statuses, [200, 200, 429]);
    // What remains of the minute falls by one a request admitted (as a
    // provider's does), not by the refused one.
    assert_eq!(remaining, ["119", "118", "118"]);
    let last = last.unwrap();
    let headers = last.headers();
    assert_eq!(headers["x-ratelimit-limit-requests"], "120");
    // Whole again when the newest admission leaves the minute.
    assert_eq!(headers["x-ratelimit-reset-requests"], "60000ms");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["retry-after-ms"], "500");
    assert!(headers.get("ratelimit").is_none(), "OpenAI style only");

    tokio::time::advance(std::time::Duration::from_millis(500)).await;
    let after = app.clone().oneshot(request(body)).await.unwrap();
    assert_eq!(after.status(), 200, "a slot again after 500 ms");

    let bad = app.oneshot(request("[1]")).await.unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test(start_paused = true)]
async fn the_bare_mock_says_only_retry_after() {
    let app = mock::app(MockConfig {
        rpm: 60,
        tpm: 1_000_000,
        style: Style::Bare,
        latency_ms: 0..0,
        store: None,
        scripted: None,
    })
    .unwrap();
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let ok = app.clone().oneshot(request(body)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let refused = app.oneshot(request(body)).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    for (name, _) in refused.headers() {
        let name = name.as_str();
        assert!(
            !name.contains("ratelimit") && name != "retry-after-ms",
            "{name} in a bare answer"
        );
    }
}

/// `--counting fixed --slice 10s`: the scripted provider, counting a
/// minute's 60 requests in slices of ten seconds (ten each), its answers
/// writing what `--writes` says.
#[tokio::test(start_paused = true)]
async fn the_scripted_mock_counts_as_it_is_told() {
    let app = mock::app(MockConfig {
        rpm: 60,
        tpm: 1_000_000,
        style: Style::Openai,
        latency_ms: 0..0,
        store: None,
        scripted: Some(Scripted {
            counting: tollgate_mock::Counting::fixed(std::time::Duration::from_secs(10)),
            charge: tollgate_mock::Charge::Written,
            writes: Some(3),
            rounding: tollgate_mock::Rounding::Exact,
        }),
    })
    .unwrap();
    let body = r#"{"model":"m","max_tokens":50,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut statuses = Vec::new();
    for _ in 0..11 {
        let response = app.clone().oneshot(request(body)).await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses[..10], [200; 10]);
    assert_eq!(statuses[10], 429, "a slice of ten seconds holds ten");
    let answer = app.clone().oneshot(request(body)).await.unwrap();
    assert_eq!(answer.headers()["retry-after"], "10");
    tokio::time::advance(std::time::Duration::from_secs(10)).await;
    let answer = app.oneshot(request(body)).await.unwrap();
    assert_eq!(answer.status(), 200, "the next slice");
    let bytes = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(value["usage"]["completion_tokens"], 3);
}

/// The events of a streamed answer, frame by frame, and the usage they
/// report.
async fn streamed(app: axum::Router, body: &'static str) -> (usize, String, Option<(u64, u64)>) {
    use http_body_util::BodyExt;
    let response = app.oneshot(request(body)).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut frames = 0;
    let mut text = String::new();
    let mut sse = tollgate::llm::SseUsage::default();
    while let Some(frame) = body.frame().await {
        let data = frame.unwrap().into_data().unwrap();
        sse.feed(&data);
        text.push_str(std::str::from_utf8(&data).unwrap());
        frames += 1;
    }
    let usage = sse.usage().map(|u| (u.input_tokens, u.output_tokens));
    (frames, text, usage)
}

#[tokio::test(start_paused = true)]
async fn the_mock_streams_in_its_style() {
    let config = |style| MockConfig {
        rpm: 600,
        tpm: 1_000_000,
        style,
        latency_ms: 0..0,
        store: None,
        scripted: None,
    };
    // 20 prompt bytes (5 tokens, 4 for the message) and max_tokens 40:
    // the mock writes its bound.
    const OPENAI: &str = r#"{"model":"m","max_tokens":40,"stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"xxxxxxxxxxxxxxxxxxxx"}]}"#;
    let app = mock::app(config(Style::Openai)).unwrap();
    let (frames, text, usage) = streamed(app, OPENAI).await;
    assert!(frames > 3, "streamed in {frames} frames");
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let (input, output) = usage.expect("a usage chunk");
    assert_eq!(output, 40);
    assert!(input > 0);

    // Without include_usage, no usage (as OpenAI does).
    const PLAIN: &str = r#"{"model":"m","max_tokens":40,"stream":true,"messages":[{"role":"user","content":"xxxxxxxxxxxxxxxxxxxx"}]}"#;
    let app = mock::app(config(Style::Openai)).unwrap();
    let (_, text, usage) = streamed(app, PLAIN).await;
    assert_eq!(usage, None, "{text}");

    // Anthropic's events, with their usage, whatever the request asks.
    let app = mock::app(config(Style::Anthropic)).unwrap();
    let (frames, text, usage) = streamed(app, PLAIN).await;
    assert!(frames > 3);
    for event in [
        "message_start",
        "content_block_delta",
        "message_delta",
        "message_stop",
    ] {
        assert!(
            text.contains(&format!("event: {event}\n")),
            "{event} in {text}"
        );
    }
    assert_eq!(usage.map(|u| u.1), Some(40));

    // The scripted provider streams too.
    let mut scripted = config(Style::Anthropic);
    scripted.scripted = Some(Scripted {
        counting: tollgate_mock::Counting::bucket(std::time::Duration::from_secs(1)),
        charge: tollgate_mock::Charge::Written,
        writes: Some(7),
        rounding: tollgate_mock::Rounding::Exact,
    });
    let app = mock::app(scripted).unwrap();
    let (_, text, usage) = streamed(app, PLAIN).await;
    assert!(text.contains("event: message_stop"), "{text}");
    assert_eq!(usage.map(|u| u.1), Some(7), "{text}");
}
