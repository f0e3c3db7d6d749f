//! An LLM gateway: an axum service in front of a provider that limits each
//! API key by requests, input tokens and output tokens a minute, charged
//! from what the model actually wrote, streamed or not.
//!
//! ```text
//! cargo run -p tollgate-examples --example llm_gateway             # a demo, then exit
//! cargo run -p tollgate-examples --example llm_gateway -- --serve --port 8080
//! cargo run -p tollgate-examples --example llm_gateway -- --upstream URL --redis redis://127.0.0.1:6379/
//! ```
//!
//! `POST /v1/chat/completions` is forwarded to `--upstream` (default: a
//! scripted OpenAI-compatible provider started in process on loopback,
//! whose model writes 250 tokens when `max_tokens` allows it), streamed
//! answers passed on chunk by chunk. Each `x-api-key` may make 20 requests,
//! send 2,000 input tokens and have 1,000 output tokens written a minute
//! (`tollgate_tower::llm::TokenLimitLayer`): a request is charged its
//! estimate at admission (its prompt, and its `max_tokens` of output) and
//! settled from the usage the answer reports as it passes. Budgets live in
//! memory, or in Redis with `--redis URL` (every replica then shares them).
//! The gateway's own calls upstream go through the client middleware
//! (`tollgate_reqwest::RateLimitMiddleware`), which keeps them under the
//! provider's limits.
//!
//! The demo sends one key's streamed calls (`max_tokens` 400, usage asked
//! for) and prints what each reported and what the key has left: each
//! reserves 400 output tokens and settles at the 250 written, so the third
//! call fits where the reservations alone (800 of 1,000 after two) would
//! have refused it; the fourth is refused, naming output tokens. The bearer token for a real upstream is read from
//! `OPENAI_API_KEY` when it is set.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{json, Value};
use tollgate::{MemoryStore, Quota, Store};
use tollgate_tower::llm::TokenLimitLayer;
use tollgate_tower::{HeaderKey, Key};

struct Options {
    upstream: Option<String>,
    redis: Option<String>,
    serve: bool,
    port: u16,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        upstream: None,
        redis: None,
        serve: false,
        port: 8080,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--upstream" => options.upstream = Some(value()?),
            "--redis" => options.redis = Some(value()?),
            "--serve" => options.serve = true,
            "--port" => {
                options.port = value()?
                    .parse()
                    .map_err(|e| format!("--port: {e} (0 to 65535)"))?;
            }
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --upstream URL --redis URL --serve --port P"
                ))
            }
        }
    }
    Ok(options)
}

/// Where the gateway forwards to, and how.
struct Upstream {
    url: String,
    client: ClientWithMiddleware,
    bearer: Option<String>,
}

/// Forwards a chat completion upstream and passes its answer on as it
/// comes: status, content type and body, chunk by chunk.
async fn forward(
    State(upstream): State<std::sync::Arc<Upstream>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut request = upstream
        .client
        .post(&upstream.url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(bearer) = &upstream.bearer {
        request = request.bearer_auth(bearer);
    } else if let Some(auth) = headers.get(header::AUTHORIZATION) {
        request = request.header(header::AUTHORIZATION, auth.clone());
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(error) => {
            let body = json!({"error": {"type": "upstream_error", "message": error.to_string()}});
            return (
                StatusCode::BAD_GATEWAY,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let content_type = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let mut response = Response::new(Body::from_stream(answer.bytes_stream()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// The gateway's app over `store`.
fn gateway<St: Store<Key> + Send + Sync + 'static>(
    store: St,
    upstream: Upstream,
) -> Result<(Router, TokenLimitLayer<HeaderKey, St>), Box<dyn std::error::Error>> {
    let tokens = TokenLimitLayer::builder()
        .requests(Quota::per_minute(20)?)
        .input_tokens(Quota::per_minute(2_000)?)
        .output_tokens(Quota::per_minute(1_000)?)
        .key(HeaderKey::new("x-api-key")?)
        .store(store)
        .build()?;
    let app = Router::new()
        .route("/v1/chat/completions", post(forward))
        .with_state(std::sync::Arc::new(upstream))
        .layer(tokens.clone());
    Ok((app, tokens))
}

/// The built-in upstream: a scripted provider on loopback allowing 600
/// requests and 1,000,000 tokens a minute, whose model writes 250 tokens.
async fn mock_upstream() -> Result<String, Box<dyn std::error::Error>> {
    let provider = tollgate_mock::Provider::new(
        tollgate_mock::Config::new(600, 1_000_000)
            .dialect(tollgate_mock::Dialect::OpenAi)
            .writes(250),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = provider.router();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/v1/chat/completions"))
}

/// One streamed call to the gateway: its status, the usage its events
/// reported, or the refusal's body and `Retry-After`.
async fn call(client: &reqwest::Client, addr: SocketAddr, key: &str) -> String {
    let body = json!({
        "model": "gpt-4o-mini",
        "max_tokens": 400,
        "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Write a short poem about rate limits."}],
    });
    let sent = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .header("x-api-key", key)
        .json(&body)
        .send()
        .await;
    let mut answer = match sent {
        Ok(answer) => answer,
        Err(error) => return format!("failed: {error}"),
    };
    let status = answer.status();
    if !status.is_success() {
        let retry = answer
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = answer.text().await.unwrap_or_default();
        let error: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        return format!(
            "{} refused on {}: \"{}\" (Retry-After: {})",
            status.as_u16(),
            error["error"]["dimension"].as_str().unwrap_or("-"),
            error["error"]["message"].as_str().unwrap_or(&text),
            retry.as_deref().unwrap_or("-"),
        );
    }
    let mut usage = tollgate::llm::SseUsage::default();
    let mut chunks = 0;
    while let Ok(Some(chunk)) = answer.chunk().await {
        usage.feed(&chunk);
        chunks += 1;
    }
    match usage.usage() {
        Some(u) => format!(
            "{} streamed in {chunks} chunks; usage: {} input, {} output tokens",
            status.as_u16(),
            u.input_tokens,
            u.output_tokens
        ),
        None => format!("{} streamed in {chunks} chunks; no usage", status.as_u16()),
    }
}

async fn run<St: Store<Key> + Send + Sync + 'static>(
    options: &Options,
    store: St,
    upstream: Upstream,
) -> Result<(), Box<dyn std::error::Error>> {
    let (app, tokens) = gateway(store, upstream)?;
    let port = if options.serve { options.port } else { 0 };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    if options.serve {
        println!("LLM gateway on http://{addr}/v1/chat/completions (x-api-key: 20 requests, 2000 input and 1000 output tokens a minute); Ctrl-C stops it");
        axum::serve(listener, app).await?;
        return Ok(());
    }
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let key = format!("demo-{}", std::process::id());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    println!("one key's streamed calls (max_tokens 400 each; the model writes 250):");
    for i in 1..=4 {
        let line = call(&client, addr, &key).await;
        let left = tokens
            .budget()
            .snapshot(&Key::from(key.as_bytes()))
            .await
            .map(|s| {
                format!(
                    "{} requests, {} input, {} output tokens left",
                    s[0].remaining(),
                    s[1].remaining(),
                    s[2].remaining()
                )
            })
            .unwrap_or_else(|e| format!("budget unknown: {e}"));
        println!("  call {i}: {line}\n          {left}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = match options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("llm_gateway: {message}");
            std::process::exit(2);
        }
    };
    let url = match &options.upstream {
        Some(url) => url.clone(),
        None => mock_upstream().await?,
    };
    println!("upstream: {url}");
    let upstream = Upstream {
        url,
        client: ClientBuilder::new(reqwest::Client::new())
            .with(tollgate_reqwest::RateLimitMiddleware::new())
            .build(),
        bearer: std::env::var("OPENAI_API_KEY").ok(),
    };
    match &options.redis {
        Some(url) => {
            let store = tollgate_redis::RedisStore::builder(url.as_str())
                .prefix("llm-gateway")
                .connect()
                .await?;
            println!("budgets in Redis ({store:?})");
            run(&options, store, upstream).await
        }
        None => {
            let store = MemoryStore::new(
                tollgate::DEFAULT_MAX_KEYS,
                3,
                tollgate::DefaultClock::default(),
            );
            run(&options, store, upstream).await
        }
    }
}
