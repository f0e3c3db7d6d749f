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
