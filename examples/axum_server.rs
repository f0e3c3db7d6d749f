//! An axum server with three limits: per client IP on every route, per API
//! key on the API, and a stricter one on the login route.
//!
//! ```text
//! cargo run -p tollgate-examples --example axum_server            # a demo, then exit
//! cargo run -p tollgate-examples --example axum_server -- --serve # keep serving on :3000
//! cargo run --release -p tollgate-examples --example axum_server -- --load [SECONDS] [CONNECTIONS]
//! ```
//!
//! The demo sends requests to the server over loopback and prints what came
//! back: the statuses, `Retry-After` and the `RateLimit` fields; then the
//! `tollgate_` lines the server's `GET /metrics` serves (Prometheus' text
//! format, through `metrics-exporter-prometheus`; the layers count with
//! tollgate-tower's `metrics` feature).
//!
//! `--load` shows the layers shaping real traffic: a server whose handler
//! takes 40 ms, behind a global rate (150 a second, a request waits up to
//! 50 ms for its slot, else 429) and a global concurrency limit (4 in
//! flight, so at most 100 a second; a request waits up to 100 ms for its
//! turn, else 503), loaded over loopback by keep-alive connections for a few
//! seconds (3 and 48 by default; at most 60 and 256). Each connection sends
//! its next request as soon as an answer comes, or 50 ms after a refusal. It
//! prints the status counts, the latency percentiles of each status and the
//! rate admitted.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tollgate::Quota;
use tollgate_tower::{ConcurrencyLimitLayer, HeaderKey, PeerIp, RateLimitLayer};

/// The server; `metrics` renders what the layers counted. The recorder is
/// installed before the layers are built: they take their handles then.
fn app(
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<Router, Box<dyn std::error::Error>> {
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
        .layer(per_ip)
        // Outside the limits: a scraper is never refused.
        .merge(Router::new().route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        )))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "--load") {
        return load(&args[1..]).await;
    }
    let serve_only = args.iter().any(|a| a == "--serve");
    let bind = if serve_only {
        "127.0.0.1:3000"
    } else {
        "127.0.0.1:0"
    };
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let listener = tokio::net::TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(
        listener,
        app(metrics)?.into_make_service_with_connect_info::<SocketAddr>(),
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
    println!("\nGET /metrics, its tollgate_ lines (the waits' quantiles left out):");
    let page = send(addr, "GET", "/metrics", None).await?.body;
    let mut lines: Vec<&str> = page
        .lines()
        .filter(|l| l.starts_with("tollgate_") && !l.contains("quantile="))
        .collect();
    lines.sort_unstable();
    for line in lines {
        println!("  {line}");
    }
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

/// The server of `--load`: 40 ms of work a request, 150 a second and at
/// most 4 at once, both in wait mode with short bounds.
fn loaded_app() -> Result<Router, Box<dyn std::error::Error>> {
    let in_flight = ConcurrencyLimitLayer::builder(4)
        .wait_up_to(Duration::from_millis(100))
        .build()?;
    let rate = RateLimitLayer::builder("150/s burst 15".parse()?)
        .wait_up_to(Duration::from_millis(50))
        .policy_name("global")
        .build()?;
    Ok(Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(40)).await;
                "done"
            }),
        )
        // The rate is decided first, then the request waits for a place.
        .layer(in_flight)
        .layer(rate))
}

async fn load(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let number = |i: usize, default: u64, max: u64, what: &str| -> Result<u64, String> {
        match args.get(i) {
            None => Ok(default),
            Some(text) => match text.parse::<u64>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(format!("{what}: give 1 to {max}, not {text:?}")),
            },
        }
    };
    let seconds = number(0, 3, 60, "seconds")?;
    let connections = number(1, 48, 256, "connections")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = axum::serve(listener, loaded_app()?);
    tokio::spawn(async move { server.await });

    println!(
        "{connections} connections for {seconds} s (the next request at once, or 50 ms after a refusal)\n\
         to a handler of 40 ms behind 150 requests a second (waiting up to 50 ms, else 429)\n\
         and at most 4 in flight (waiting up to 100 ms, else 503):\n"
    );
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        tasks.push(tokio::spawn(async move { client(addr, end).await }));
    }
    let mut results: Vec<(u16, Duration)> = Vec::new();
    for task in tasks {
        results.extend(task.await?.map_err(|e| e.to_string())?);
    }
    let mut statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    statuses.sort_unstable();
    statuses.dedup();
    println!("status  count   share     p50      p90      p99");
    for status in statuses {
        let mut latencies: Vec<Duration> = results
            .iter()
            .filter(|r| r.0 == status)
            .map(|r| r.1)
            .collect();
        latencies.sort_unstable();
        let at = |q: f64| {
            let i = ((latencies.len() - 1) as f64 * q).round() as usize;
            format!("{:>5.1} ms", latencies[i].as_secs_f64() * 1e3)
        };
        println!(
            "{status}  {:>7}  {:>5.1}%  {}  {}  {}",
            latencies.len(),
            100.0 * latencies.len() as f64 / results.len() as f64,
            at(0.5),
            at(0.9),
            at(0.99)
        );
    }
    let admitted = results.iter().filter(|r| r.0 == 200).count();
    println!(
        "\n{} requests in {seconds} s; admitted {:.1} a second (the rate allows 150, the\n\
         concurrency 4 / 40 ms = 100)",
        results.len(),
        admitted as f64 / seconds as f64
    );
    Ok(())
}

/// One keep-alive connection sending until `end`: each answer's status and
/// latency.
async fn client(
    addr: SocketAddr,
    end: Instant,
) -> Result<Vec<(u16, Duration)>, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut out = Vec::new();
    while Instant::now() < end {
        let request = http::Request::get("/work")
            .header("host", "localhost")
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        out.push((status, started.elapsed()));
        if status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(out)
}
