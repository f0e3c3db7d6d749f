//! The token budget layer in a real axum server on loopback, in front of
//! handlers that answer as LLM providers do (JSON with `usage`, OpenAI's
//! and Anthropic's server-sent events), hit over one keep-alive
//! connection. The budgets run on a `ManualClock`: every count is exact
//! however slowly the machine runs.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tollgate::{ManualClock, MemoryStore, Quota};
use tollgate_tower::llm::TokenLimitLayer;
use tollgate_tower::{HeaderKey, Key};

const KEY: &str = "key-1";

/// `what` tokens the handlers report: `usage_in` and `usage_out` fields of
/// the request (extra fields the estimate ignores).
fn counts(body: &Value) -> (u64, u64) {
    (
        body["usage_in"].as_u64().unwrap_or(0),
        body["usage_out"].as_u64().unwrap_or(0),
    )
}

fn event_stream(chunks: Vec<Bytes>, then_hang: bool) -> Response {
    let stream = async_stream(chunks, then_hang);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The chunks one by one, then the end, or no end at all.
fn async_stream(
    chunks: Vec<Bytes>,
    then_hang: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let ends = futures_util::stream::iter(chunks.into_iter().map(Ok));
    let hang = futures_util::stream::pending();
    futures_util::StreamExt::chain(
        ends,
        futures_util::StreamExt::take(hang, usize::from(then_hang)),
    )
}

/// OpenAI's chunks, with the usage chunk `include_usage` asks for, each
/// event split across two chunks.
fn openai_stream(input: u64, output: u64) -> Vec<Bytes> {
    let events = [
        json!({"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}).to_string(),
        json!({"choices":[{"index":0,"delta":{"content":"Bonjour"}}]}).to_string(),
        json!({"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}).to_string(),
        json!({"choices":[],"usage":{"prompt_tokens":input,"completion_tokens":output,"total_tokens":input+output}}).to_string(),
    ];
    let mut chunks = Vec::new();
    for event in events {
        let text = format!("data: {event}\n\n");
        let (a, b) = text.split_at(text.len() / 2);
        chunks.push(Bytes::from(a.to_owned()));
        chunks.push(Bytes::from(b.to_owned()));
    }
    chunks.push(Bytes::from_static(b"data: [DONE]\n\n"));
    chunks
}

/// Anthropic's events: `message_start` with the input, deltas, and
/// `message_delta` with the output written.
fn anthropic_stream(input: u64, output: u64) -> Vec<Bytes> {
    let start = json!({"type":"message_start","message":{"id":"msg_1","usage":{"input_tokens":input,"output_tokens":1}}});
    let delta = json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Bonjour"}});
    let end = json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":output}});
    vec![
        Bytes::from(format!("event: message_start\r\ndata: {start}\r\n\r\n")),
        Bytes::from(format!("event: content_block_delta\ndata: {delta}\n\n")),
        Bytes::from(format!("event: message_delta\ndata: {end}\n\n")),
        Bytes::from_static(b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
    ]
}

fn upstream() -> Router {
    Router::new()
        .route(
            "/json",
            post(|Json(body): Json<Value>| async move {
                let (input, output) = counts(&body);
                Json(json!({
                    "choices": [{"message": {"role": "assistant", "content": "Bonjour"}}],
                    "usage": {"prompt_tokens": input, "completion_tokens": output}
                }))
            }),
        )
        .route(
            "/openai-stream",
            post(|Json(body): Json<Value>| async move {
                let (input, output) = counts(&body);
                event_stream(openai_stream(input, output), false)
            }),
        )
        .route(
            "/anthropic-stream",
            post(|Json(body): Json<Value>| async move {
                let (input, output) = counts(&body);
                let hang = body["hang"].as_bool().unwrap_or(false);
                let mut chunks = anthropic_stream(input, output);
                if hang {
                    // message_start and one delta, then nothing more.
                    chunks.truncate(2);
                }
                event_stream(chunks, hang)
            }),
        )
        .route(
            "/fail",
            post(|| async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Json(json!({"error": {"message": "upstream failed"}})),
                )
            }),
        )
}

struct Gateway {
    addr: SocketAddr,
    layer: TokenLimitLayer<HeaderKey, MemoryStore<ManualClock>>,
}

/// Requests 10, input 1,000 and output 1,000 tokens a minute per key.
async fn gateway() -> Gateway {
    let layer = TokenLimitLayer::builder()
        .requests(Quota::per_minute(10).unwrap())
        .input_tokens(Quota::per_minute(1_000).unwrap())
        .output_tokens(Quota::per_minute(1_000).unwrap())
        .key(HeaderKey::new("x-api-key").unwrap())
        .store(MemoryStore::new(1_000, 3, ManualClock::new()))
        .max_request_bytes(64 * 1024)
        .build()
        .unwrap();
    let addr = serve(upstream().layer(layer.clone())).await;
    Gateway { addr, layer }
}

/// Serves `app` on a free loopback port.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

impl Gateway {
    /// What remains of each dimension for `key`: requests, input, output.
    async fn remaining(&self, key: &str) -> [u64; 3] {
        let snapshots = self
            .layer
            .budget()
            .snapshot(&Key::from(key.as_bytes()))
            .await
            .unwrap();
        [0, 1, 2].map(|d| snapshots[d].remaining())
    }
}

/// One keep-alive HTTP/1.1 connection: each answer is read (or dropped)
/// before the next request, so the server has settled it by then.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    async fn start(
        &mut self,
        path: &str,
        key: Option<&str>,
        body: Vec<u8>,
    ) -> http::Response<hyper::body::Incoming> {
        let mut request = Request::post(path)
            .header("host", "test")
            .header("content-type", "application/json");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        self.sender.ready().await.unwrap();
        self.sender
            .send_request(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
            .unwrap()
    }

    async fn post(&mut self, path: &str, key: Option<&str>, body: &Value) -> Answer {
        let response = self.start(path, key, body.to_string().into_bytes()).await;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

/// A chat request of 40 prompt bytes (10 tokens, and 4 for its message)
/// allowing `max_tokens`, the handler to report `input` and `output`.
fn chat(max_tokens: u64, input: u64, output: u64) -> Value {
    json!({
        "model": "m",
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x".repeat(40)}],
        "usage_in": input,
        "usage_out": output,
    })
}

#[tokio::test]
async fn json_answers_settle_to_their_reported_usage() {
    let gateway = gateway().await;
    let mut client = Client::connect(gateway.addr).await;
    // Each call reserves 14 input and 400 output tokens, and reports 20
    // and 100: what settles is the report, so seven calls fit in the
    // 1,000 output tokens where the reservations alone would allow two.
    for i in 1..=7u64 {
        let answer = client.post("/json", Some(KEY), &chat(400, 20, 100)).await;
        assert_eq!(answer.status, StatusCode::OK, "call {i}: {}", answer.body);
        assert_eq!(
            gateway.remaining(KEY).await,
            [10 - i, 1_000 - 20 * i, 1_000 - 100 * i],
            "after call {i}"
        );
    }
    // 300 left: 400 more do not fit.
    let refused = client.post("/json", Some(KEY), &chat(400, 20, 100)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let error: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(error["error"]["dimension"], "output_tokens", "{error}");
    assert_eq!(error["error"]["type"], "rate_limit_exceeded");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("output_tokens: this key's limit is 1000 every 60 s"),
        "{error}"
    );
    // 100 tokens more are due in 6 s.
    assert_eq!(refused.headers["retry-after"], "6");
    assert_eq!(
        refused.headers["ratelimit-policy"],
        r#""requests";q=10;w=60, "input_tokens";q=1000;w=60, "output_tokens";q=1000;w=60"#
    );
    assert_eq!(
        refused.headers["ratelimit"],
        r#""output_tokens";r=300;t=42"#
    );
    assert_eq!(refused.headers["content-type"], "application/json");
    // Nothing was spent by the refusal; another key is untouched.
    assert_eq!(gateway.remaining(KEY).await, [3, 860, 300]);
    assert_eq!(gateway.remaining("other").await, [10, 1_000, 1_000]);
}

#[tokio::test]
async fn openai_streams_settle_from_their_usage_chunk() {
    let gateway = gateway().await;
    let mut client = Client::connect(gateway.addr).await;
    let mut body = chat(300, 30, 250);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let answer = client.post("/openai-stream", Some(KEY), &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers["content-type"], "text/event-stream");
    // Passed whole and unchanged.
    let sent: String = openai_stream(30, 250)
        .iter()
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    assert_eq!(answer.body, sent);
    assert_eq!(gateway.remaining(KEY).await, [9, 970, 750]);
    // Charged beyond the reservation when the model wrote more than it.
    let answer = client
        .post("/openai-stream", Some(KEY), &{
            let mut more = chat(100, 14, 500);
            more["stream"] = json!(true);
            more
        })
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(gateway.remaining(KEY).await, [8, 956, 250]);
    // Spent by streamed usage: 300 more do not fit.
    let refused = client.post("/json", Some(KEY), &chat(300, 1, 1)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let error: Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(error["error"]["dimension"], "output_tokens");
}

#[tokio::test]
async fn anthropic_streams_settle_at_their_end_or_with_what_was_seen() {
    let gateway = gateway().await;
    let mut client = Client::connect(gateway.addr).await;
    let mut body = chat(500, 25, 120);
    body["stream"] = json!(true);
    let answer = client.post("/anthropic-stream", Some(KEY), &body).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.body.contains("message_stop"));
    assert_eq!(gateway.remaining(KEY).await, [9, 975, 880]);

    // A stream the client drops after `message_start` and one delta:
    // settled with what passed (input 40, output 1 so far), not the
    // 500 reserved.
    let mut body = chat(500, 40, 120);
    body["stream"] = json!(true);
    body["hang"] = json!(true);
    let response = client
        .start(
            "/anthropic-stream",
            Some(KEY),
            body.to_string().into_bytes(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("content_block_delta\ndata") {
        let frame = stream.frame().await.unwrap().unwrap();
        seen.extend_from_slice(frame.data_ref().unwrap());
    }
    drop(stream);
    drop(client);
    // The server notices the closed connection and drops the body: wait
    // for that event (bounded), then the counts are exact.
    let settled = [8, 935, 879];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while gateway.remaining(KEY).await != settled {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {:?}",
            gateway.remaining(KEY).await
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn failed_answers_give_the_tokens_back() {
    let gateway = gateway().await;
    let mut client = Client::connect(gateway.addr).await;
    let answer = client.post("/fail", Some(KEY), &chat(400, 1, 1)).await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(gateway.remaining(KEY).await, [9, 1_000, 1_000]);
}

#[tokio::test]
async fn requests_that_cannot_be_read_or_never_fit() {
    let gateway = gateway().await;
    let mut client = Client::connect(gateway.addr).await;
    // No key.
    let answer = client.post("/json", None, &chat(10, 1, 1)).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert!(answer.body.contains("x-api-key"), "{}", answer.body);
    // More output than a minute's limit: never admitted, so 413 and no
    // Retry-After.
    let answer = client.post("/json", Some(KEY), &chat(5_000, 1, 1)).await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(answer.headers.get("retry-after").is_none());
    let error: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(error["error"]["dimension"], "output_tokens");
    // A body that is not JSON goes to the upstream (which refuses it),
    // and costs the request alone.
    let response = client
        .start("/json", Some(KEY), b"{not json".to_vec())
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let _ = response.into_body().collect().await;
    assert_eq!(gateway.remaining(KEY).await, [9, 1_000, 1_000]);
    // A body over the limit of 64 KiB, on a connection of its own (the
    // server answers before reading the rest).
    let huge = chat(10, 1, 1)
        .to_string()
        .replacen("xxxx", &"x".repeat(70_000), 1);
    let mut own = Client::connect(gateway.addr).await;
    let response = own.start("/json", Some(KEY), huge.into_bytes()).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(gateway.remaining(KEY).await, [9, 1_000, 1_000]);
    // Absurd values saturate: a cost past any burst, never a panic.
    let answer = client
        .post(
            "/json",
            Some(KEY),
            &json!({"max_tokens": u64::MAX, "n": 128}),
        )
        .await;
    assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[test]
fn a_budget_needs_a_limit() {
    let error = TokenLimitLayer::builder().build().unwrap_err();
    assert!(error.to_string().contains("at least one limit"), "{error}");
    let error = TokenLimitLayer::builder()
        .requests(Quota::per_minute(1).unwrap())
        .max_request_bytes(0)
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("max_request_bytes"), "{error}");
}

/// Waits (bounded) until `read` gives `want`: a settlement over Redis
/// lands in the background after the answer's body has ended.
async fn settled<F, Fut>(read: F, want: [u64; 3])
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = [u64; 3]>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = read().await;
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {now:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn day(count: u64) -> Quota {
    Quota::new(count, Duration::from_secs(86_400)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_one_budget_through_redis() {
    let server = tollgate_redis::testing::RedisServer::start();
    // Two replicas of the gateway, each its own store on one Redis; a day's
    // limits, so that nothing refills while the test runs.
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let store = tollgate_redis::RedisStore::builder(server.url())
            .prefix("gateway")
            .connect()
            .await
            .unwrap();
        let layer = TokenLimitLayer::builder()
            .requests(day(100))
            .input_tokens(day(10_000))
            .output_tokens(day(1_000))
            .key(HeaderKey::new("x-api-key").unwrap())
            .store(store)
            .build()
            .unwrap();
        let addr = serve(upstream().layer(layer.clone())).await;
        replicas.push((Client::connect(addr).await, layer));
    }
    let read = |layer: TokenLimitLayer<HeaderKey, tollgate_redis::RedisStore>| async move {
        let s = layer
            .budget()
            .snapshot(&Key::from(KEY.as_bytes()))
            .await
            .unwrap();
        [s[0].remaining(), s[1].remaining(), s[2].remaining()]
    };
    // Calls alternate between the replicas: each reserves 400 output
    // tokens and settles at the 100 reported, streamed or not.
    for i in 1..=7u64 {
        let (client, layer) = &mut replicas[usize::try_from(i % 2).unwrap()];
        let mut body = chat(400, 20, 100);
        let path = if i % 2 == 0 {
            body["stream"] = json!(true);
            body["stream_options"] = json!({"include_usage": true});
            "/openai-stream"
        } else {
            "/json"
        };
        let answer = client.post(path, Some(KEY), &body).await;
        assert_eq!(answer.status, StatusCode::OK, "call {i}: {}", answer.body);
        let layer = layer.clone();
        settled(
            || read(layer.clone()),
            [100 - i, 10_000 - 20 * i, 1_000 - 100 * i],
        )
        .await;
    }
    // 300 left of the day, in both replicas' eyes: 400 more do not fit.
    for (client, _) in &mut replicas {
        let refused = client.post("/json", Some(KEY), &chat(400, 1, 1)).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        let error: Value = serde_json::from_str(&refused.body).unwrap();
        assert_eq!(error["error"]["dimension"], "output_tokens");
    }
}
