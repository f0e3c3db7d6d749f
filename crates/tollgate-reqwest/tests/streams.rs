//! A streamed answer settles itself from the usage its server-sent events
//! report, when its body ends or is dropped. Against a provider reached
//! in process (no socket), on Tokio's paused clock.

use axum::response::IntoResponse;
use axum::{routing, Router};
use futures_util::StreamExt;
use tollgate_reqwest::{Endpoint, OutputCharge, ProviderLimits, RateLimitMiddleware};

mod transport;

const OPENAI: &str = concat!(
    "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
    "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10}}\n\n",
    "data: [DONE]\n\n",
);

const ANTHROPIC_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n";
const ANTHROPIC_REST: &str =
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}\n\n";

/// Answers `/openai` and `/anthropic` with a stream of events, the latter
/// in two chunks with a pause between them that never ends.
fn provider() -> String {
    let app = Router::new()
        .route(
            "/openai",
            routing::post(|| async { ([("content-type", "text/event-stream")], OPENAI) }),
        )
        .route(
            "/anthropic",
            routing::post(|| async {
                let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
                    ANTHROPIC_START,
                )])
                .chain(futures_util::stream::once(async {
                    std::future::pending::<()>().await;
                    Ok(ANTHROPIC_REST)
                }));
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(chunks),
                )
                    .into_response()
            }),
        );
    transport::register_in(app, "stream")
}

/// Remaining tokens (all kinds) of the endpoint's budget now.
async fn tokens_left(middleware: &RateLimitMiddleware, url: &str) -> u64 {
    let endpoint = Endpoint::new(&url.parse().unwrap(), Some("m"));
    middleware.budget().snapshot(&endpoint).await.unwrap()[1].remaining()
}

/// Lets the settling task run.
async fn settled() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A client of the provider's `path`, with room for 100,000 tokens a
/// minute; answers the middleware, the response of one streamed call and
/// its URL.
async fn stream_call(path: &str) -> (RateLimitMiddleware, reqwest::Response, String) {
    let url = format!("{}{path}", provider());
    let middleware = RateLimitMiddleware::builder()
        .limits(
            ProviderLimits::new()
                .requests_per_minute(6_000)
                .tokens_per_minute(100_000),
        )
        // Settled to what was written, to show what the stream saw.
        .output_charge(OutputCharge::Written)
        .build();
    let client = transport::client(middleware.clone());
    let body = r#"{"model":"m","max_tokens":100,"stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (middleware, response, url)
}

#[tokio::test(start_paused = true)]
async fn a_stream_read_to_its_end_settles_from_its_usage() {
    let (middleware, response, url) = stream_call("/openai").await;
    assert_eq!(response.url().as_str(), url, "the URL is kept");
    let charged = tokens_left(&middleware, &url).await;
    let text = response.text().await.unwrap();
    assert_eq!(text, OPENAI, "the body passes whole");
    settled().await;
    // Estimated 105 (5 in, 100 out), used 29: 76 come back.
    assert_eq!(tokens_left(&middleware, &url).await, charged + 76);
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_early_settles_what_it_saw() {
    let (middleware, response, url) = stream_call("/anthropic").await;
    let charged = tokens_left(&middleware, &url).await;
    let mut chunks = response.bytes_stream();
    let first = chunks.next().await.unwrap().unwrap();
    assert_eq!(first, ANTHROPIC_START.as_bytes());
    drop(chunks);
    settled().await;
    // Seen: 25 in, 1 out so far; estimated 105.
    assert_eq!(tokens_left(&middleware, &url).await, charged + 79);
}
