//! What the token budget layer costs a streamed answer: the time to pass a
//! 1 MiB server-sent-event stream (OpenAI chunks of about 170 bytes, each
//! its own frame, a usage chunk last) through an axum app, with and
//! without `llm::TokenLimitLayer` in front of it, in the same run.
//!
//! Two ways through: over loopback (the app served by `axum::serve`, the
//! stream read by a hyper client on one keep-alive connection, both on
//! one thread), as a gateway passes it on; and in process (`oneshot`, the
//! body drained frame by frame), where nothing but the app is timed, the
//! bound no network path comes near. The arms run in turn, a batch each a
//! round (the order rotated every round); the figure is the median over
//! the rounds of each arm's time per stream, and of its ratio to the bare
//! app's in the same round.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench llm_stream --features llm [-- ROUNDS]
//! ```

#![allow(missing_docs)]

use std::time::Instant;

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tollgate::Quota;
use tollgate_tower::llm::TokenLimitLayer;
use tollgate_tower::HeaderKey;
use tower::ServiceExt;

/// Streams a batch.
const BATCH: usize = 20;
/// The stream's size.
const STREAM: usize = 1 << 20;

/// 1 MiB of OpenAI chunks, and the usage chunk, made once (each frame a
/// static `Bytes`, so that the app's own cost a frame stays small).
fn events() -> &'static [Bytes] {
    let mut out = Vec::new();
    let mut size = 0;
    let mut i = 0u64;
    while size < STREAM {
        let event = format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        );
        size += event.len();
        out.push(Bytes::from_static(
            Box::leak(event.into_boxed_str()).as_bytes(),
        ));
        i += 1;
    }
    out.push(Bytes::from_static(
        b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":6000}}\n\ndata: [DONE]\n\n",
    ));
    Box::leak(out.into_boxed_slice())
}

fn app(events: &'static [Bytes]) -> Router {
    Router::new().route(
        "/v1/chat/completions",
        post(move || async move {
            let stream =
                futures_util::stream::iter(events.iter().cloned().map(Ok::<_, std::io::Error>));
            (
                [("content-type", "text/event-stream")],
                Body::from_stream(stream),
            )
        }),
    )
}

fn request() -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("x-api-key", "k")
        .body(Body::from(
            r#"{"model":"m","max_tokens":8000,"stream":true,"messages":[{"role":"user","content":"hello"}]}"#,
        ))
        .unwrap()
}

/// A keep-alive connection to `app` served on loopback.
async fn connect(app: Router) -> SendRequest<Full<Bytes>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Nanoseconds a stream over the connection, over a batch.
async fn time_loopback(sender: &mut SendRequest<Full<Bytes>>) -> f64 {
    let start = Instant::now();
    for _ in 0..BATCH {
        let (parts, body) = request().into_parts();
        let body = axum::body::to_bytes(body, 1 << 16).await.unwrap();
        sender.ready().await.unwrap();
        let mut request = Request::from_parts(parts, Full::new(body));
        request
            .headers_mut()
            .insert("host", "bench".parse().unwrap());
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        drain(response.into_body()).await;
    }
    start.elapsed().as_nanos() as f64 / BATCH as f64
}

/// Reads a body to its end, frame by frame, as a proxy passes it on.
async fn drain<B: http_body::Body<Data = Bytes> + Unpin>(mut body: B)
where
    B::Error: std::fmt::Debug,
{
    let mut bytes = 0;
    while let Some(frame) = body.frame().await {
        bytes += frame.unwrap().into_data().map_or(0, |d| d.len());
    }
    assert!(bytes >= STREAM);
}

/// Nanoseconds a stream through `app` in process, over a batch.
async fn time(app: &Router) -> f64 {
    let start = Instant::now();
    for _ in 0..BATCH {
        let response = app.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), 200);
        drain(response.into_body()).await;
    }
    start.elapsed().as_nanos() as f64 / BATCH as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let events = events();
        let bare = app(events);
        let budget = || {
            TokenLimitLayer::builder()
                .requests(Quota::per_second(1_000_000).unwrap())
                .input_tokens(Quota::per_second(1_000_000_000).unwrap())
                .output_tokens(Quota::per_second(1_000_000_000).unwrap())
                .key(HeaderKey::new("x-api-key").unwrap())
                .build()
                .unwrap()
        };
        let limited = app(events).layer(budget());
        let mut bare_conn = connect(bare.clone()).await;
        let mut limited_conn = connect(limited.clone()).await;
        let names = ["bare axum app", "with TokenLimitLayer"];
        // Warm up.
        time(&bare).await;
        time(&limited).await;
        time_loopback(&mut bare_conn).await;
        time_loopback(&mut limited_conn).await;
        // [way][arm] times and ratios to the bare arm, round by round.
        let mut times = vec![vec![Vec::new(); 2]; 2];
        let mut ratios = vec![vec![Vec::new(); 2]; 2];
        for round in 0..rounds {
            let mut this = [[0.0; 2]; 2];
            for k in 0..2 {
                let arm = (k + round) % 2;
                this[0][arm] = if arm == 0 {
                    time_loopback(&mut bare_conn).await
                } else {
                    time_loopback(&mut limited_conn).await
                };
                this[1][arm] = time(if arm == 0 { &bare } else { &limited }).await;
            }
            for way in 0..2 {
                for arm in 0..2 {
                    times[way][arm].push(this[way][arm]);
                    ratios[way][arm].push(this[way][arm] / this[way][0]);
                }
            }
        }
        println!(
            "| a 1 MiB SSE stream ({} events, one a frame) | way | µs a stream (median of {rounds}) | vs bare |",
            events.len()
        );
        println!("|---|---|---:|---:|");
        for (way, way_name) in ["over loopback", "in process"].iter().enumerate() {
            for (arm, name) in names.iter().enumerate() {
                println!(
                    "| {name} | {way_name} | {:.0} | {:.3}x |",
                    median(&mut times[way][arm]) / 1000.0,
                    median(&mut ratios[way][arm]),
                );
            }
        }
    });
}
