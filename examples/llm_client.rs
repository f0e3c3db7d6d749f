//! A producer and a fixed pool of workers sending chat completions through
//! the rate-limit middleware, with statistics at the end.
//!
//! ```text
//! cargo run --release -p tollgate-examples --example llm_client
//! cargo run --release -p tollgate-examples --example llm_client -- \
//!     --url http://localhost:8000/v1/chat/completions --requests 200 --workers 16
//! ```
//!
//! Without `--url` it starts a small OpenAI-compatible mock on loopback
//! that allows 600 requests a minute, enforced a second at a time (10 in
//! any second), and answers with `x-ratelimit-*` headers. The middleware is
//! given no limits: it learns them from the first answer, then paces every
//! worker together, so the run starts without a burst and sees no 429.
//!
//! The examples build reqwest without TLS, to keep the build lean: for an
//! `https` URL, enable one of reqwest's TLS features (`rustls`, say). The
//! bearer token is read from the variable `--api-key-env` names
//! (`OPENAI_API_KEY` by default), when it is set.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_reqwest::{RateLimitMiddleware, Usage};

struct Options {
    url: Option<String>,
    requests: usize,
    workers: usize,
    model: String,
    api_key_env: String,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        url: None,
        requests: 60,
        workers: 8,
        model: "gpt-4o-mini".to_owned(),
        api_key_env: "OPENAI_API_KEY".to_owned(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => options.url = Some(value()?),
            "--requests" => options.requests = value()?.parse().map_err(|e| format!("--requests: {e}"))?,
            "--workers" => {
                options.workers = value()?.parse().map_err(|e| format!("--workers: {e}"))?;
                if options.workers == 0 {
                    return Err("--workers: at least 1".into());
                }
            }
            "--model" => options.model = value()?,
            "--api-key-env" => options.api_key_env = value()?,
            other => {
                return Err(format!(
                    "unknown flag {other}; flags: --url URL --requests N --workers N --model NAME --api-key-env NAME"
                ))
            }
        }
    }
    Ok(options)
}

/// Attempts the built-in mock refused with 429 (retried by the middleware).
static MOCK_REFUSED: AtomicU64 = AtomicU64::new(0);

struct Outcome {
    status: Option<u16>,
    latency: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let url = match &options.url {
        Some(url) => url.clone(),
        None => {
            let addr = mock(600).await?;
            println!("mock provider on {addr}: 600 requests a minute, 10 in any second");
            format!("http://{addr}/v1/chat/completions")
        }
    };
    let client = Arc::new(
        ClientBuilder::new(reqwest::Client::new())
            .with(RateLimitMiddleware::new())
            .build(),
    );
    let api_key = std::env::var(&options.api_key_env).ok();
    println!(
        "{} chat completions, {} workers, to {url}\n",
        options.requests, options.workers
    );

    // The producer fills a short queue; the workers take from it.
    let (jobs, queue) = mpsc::channel::<usize>(options.workers);
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let outcomes = Arc::new(Mutex::new(Vec::with_capacity(options.requests)));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..options.workers {
        let (queue, outcomes, client) = (
            Arc::clone(&queue),
            Arc::clone(&outcomes),
            Arc::clone(&client),
        );
        let (url, model, api_key) = (url.clone(), options.model.clone(), api_key.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let job = queue.lock().await.recv().await;
                let Some(job) = job else { break };
                let began = Instant::now();
                let status = complete(&client, &url, &model, api_key.as_deref(), job).await;
                outcomes.lock().unwrap().push(Outcome {
                    status,
                    latency: began.elapsed(),
                });
            }
        }));
    }
    for job in 0..options.requests {
        jobs.send(job).await?;
    }
    drop(jobs);
    for worker in workers {
        worker.await?;
    }
    let elapsed = start.elapsed();
    report(&outcomes.lock().unwrap(), elapsed);
    if options.url.is_none() {
        println!(
            "the mock refused {} attempts with 429",
            MOCK_REFUSED.load(Ordering::Relaxed)
        );
    }
    Ok(())
}

/// One chat completion; settles the middleware's token estimate with the
/// usage the answer reports.
async fn complete(
    client: &ClientWithMiddleware,
    url: &str,
    model: &str,
    api_key: Option<&str>,
    job: usize,
) -> Option<u16> {
    let body = json!({
        "model": model,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": format!("Say the number {job} in French.")}]
    });
    let mut request = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = api_key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        Err(error) => {
            eprintln!("job {job}: {error}");
            return None;
        }
    };
    let status = response.status().as_u16();
    let usage = response.extensions().get::<Usage>().cloned();
    let body: Option<Value> = match response.bytes().await {
        Ok(bytes) => serde_json::from_slice(&bytes).ok(),
        Err(_) => None,
    };
    if let (Some(usage), Some(body)) = (usage, body) {
        usage.report_body(&body).await;
    }
    Some(status)
}

fn report(outcomes: &[Outcome], elapsed: Duration) {
    let ok = outcomes.iter().filter(|o| o.status == Some(200)).count();
    let refused = outcomes.iter().filter(|o| o.status == Some(429)).count();
    let failed = outcomes.len() - ok;
    let mut latencies: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    latencies.sort();
    let median = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let mean =
        latencies.iter().sum::<Duration>() / u32::try_from(latencies.len().max(1)).unwrap_or(1);
    println!("done:        {ok} ok, {failed} failed ({refused} answered 429)");
    println!("elapsed:     {:.2} s", elapsed.as_secs_f64());
    println!(
        "throughput:  {:.2} requests/s",
        outcomes.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency:     median {:.0} ms, mean {:.0} ms (queueing included)",
        median.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
}

/// A small OpenAI-compatible provider: `rpm` requests a minute, enforced a
/// second at a time; 80 to 200 ms per answer.
async fn mock(rpm: u64) -> std::io::Result<SocketAddr> {
    #[derive(Default)]
    struct Window {
        second: u64,
        count: u64,
        minute: std::collections::VecDeque<Instant>,
    }
    let start = Instant::now();
    let window = Arc::new(Mutex::new(Window::default()));
    let handler = move |body: String| {
        let window = Arc::clone(&window);
        async move {
            let now = Instant::now();
            let (admitted, remaining) = {
                let mut w = window.lock().unwrap();
                let second = (now - start).as_secs();
                if second != w.second {
                    w.second = second;
                    w.count = 0;
                }
                while w
                    .minute
                    .front()
                    .is_some_and(|t| now - *t >= Duration::from_secs(60))
                {
                    w.minute.pop_front();
                }
                let admitted = w.count < rpm / 60;
                if admitted {
                    w.count += 1;
                    w.minute.push_back(now);
                }
                (admitted, rpm.saturating_sub(w.minute.len() as u64))
            };
            let mut headers = HeaderMap::new();
            headers.insert("x-ratelimit-limit-requests", rpm.into());
            headers.insert("x-ratelimit-remaining-requests", remaining.into());
            headers.insert("x-ratelimit-reset-requests", "1s".parse().unwrap());
            if !admitted {
                MOCK_REFUSED.fetch_add(1, Ordering::Relaxed);
                headers.insert("retry-after-ms", 1000u64.into());
                return (StatusCode::TOO_MANY_REQUESTS, headers, String::new()).into_response();
            }
            let prompt = body.len() as u64 / 4;
            tokio::time::sleep(Duration::from_millis(80 + fastrand::u64(0..120))).await;
            let answer = json!({
                "choices": [{"message": {"role": "assistant", "content": "un"}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": 2}
            });
            (StatusCode::OK, headers, answer.to_string()).into_response()
        }
    };
    let app = Router::new().route("/v1/chat/completions", post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
