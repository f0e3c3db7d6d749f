//! An axum server with three limits: per client IP on every route, per API
//! key on the API, and a stricter one on the login route.
//!
//! ```text
//! cargo run -p tollgate-examples --example axum_server            # a demo, then exit
//! cargo run -p tollgate-examples --example axum_server -- --serve # keep serving on :3000
//! ```
//!
//! The demo sends requests to the server over loopback and prints what came
//! back: the statuses, `Retry-After` and the `RateLimit` fields.

use std::net::SocketAddr;

use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tollgate::Quota;
use tollgate_tower::{HeaderKey, PeerIp, RateLimitLayer};

fn app() -> Result<Router, Box<dyn std::error::Error>> {
    // Every route: 60 requests a minute per client address.
    let per_ip = RateLimitLayer::builder(Quota::per_minute(60)?)
        .key(PeerIp::new())
        .policy_name("per-ip")
        .build()?;
    // The API: 5 a second per API key, bursts of 5; no key, no entry (400).
    let per_api_key = RateLimitLayer::builder("5/s".parse()?)
        .key(HeaderKey::new("x-api-key")?)
        .policy_name("api")
        .build()?;
    // Login: 3 attempts a minute per address, on that route alone.
    let login = RateLimitLayer::builder(Quota::per_minute(3)?)
        .key(PeerIp::new())
        .policy_name("login")
        .build()?;

    let api = Router::new()
        .route("/api/data", get(|| async { "{\"data\":[1,2,3]}" }))
        .layer(per_api_key);
    Ok(Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/login", post(|| async { "welcome" }).route_layer(login))
        .merge(api)
        .layer(per_ip))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve_only = std::env::args().any(|a| a == "--serve");
    let bind = if serve_only {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    };
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(
        listener,
        app()?.into_make_service_with_connect_info::<SocketAddr>(),
    );
    if serve_only {
        println!("listening on http://{addr}  (try: curl -i -X POST http://{addr}/login)");
        server.await?;
        return Ok(());
    }
    tokio::spawn(async move { server.await });

    println!("POST /login, four times (3 a minute per address):");
    for _ in 0..4 {
        show(send(addr, "POST", "/login", None).await?);
    }
    println!("\nGET /api/data with x-api-key: alice, six times (5 a second per key):");
    for _ in 0..6 {
        show(send(addr, "GET", "/api/data", Some("alice")).await?);
    }
    println!("\nGET /api/data with x-api-key: bob (a key of its own):");
    show(send(addr, "GET", "/api/data", Some("bob")).await?);
    println!("\nGET /api/data without a key:");
    show(send(addr, "GET", "/api/data", None).await?);
    Ok(())
}

struct Answer {
    status: http::StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    api_key: Option<&str>,
) -> Result<Answer, Box<dyn std::error::Error>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if let Some(key) = api_key {
        request = request.header("x-api-key", key);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(Answer {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).trim().to_owned(),
    })
}

fn show(answer: Answer) {
    let header = |name: &str| {
        answer
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let retry = header("retry-after");
    let retry = if retry.is_empty() {
        String::new()
    } else {
        format!("  retry-after: {retry}")
    };
    println!(
        "  {}  ratelimit: {:<40}{retry}  {}",
        answer.status.as_u16(),
        header("ratelimit"),
        answer.body
    );
}
