//! What the benchmarks share: the open quotas, the request, the bare
//! service, tower_governor's layer and a call driven by hand.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use axum::body::Body;
use axum::extract::ConnectInfo;
use governor::clock::QuantaInstant;
use governor::middleware::NoOpMiddleware;
use http::{Request, Response};
use tollgate::Quota;
use tower::{service_fn, Service};
use tower_governor::governor::GovernorConfigBuilder;
use tower_governor::key_extractor::KeyExtractor as GovernorKey;
use tower_governor::GovernorLayer;

pub const OPEN: u64 = 1_000_000_000;

pub fn open_quota() -> Quota {
    Quota::per_second(OPEN).unwrap()
}

/// A request as axum hands it on: the peer's address in `ConnectInfo`,
/// where both tollgate's and tower_governor's peer-IP keys read it.
pub fn request() -> Request<Body> {
    let mut request = Request::new(Body::empty());
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40_000))));
    request
}

/// Drives one request through the service; every service here is ready at
/// once and answers at once.
pub fn call<S, B>(service: &mut S, request: Request<Body>) -> Response<B>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("the service is not ready"),
    }
    let mut future = pin!(service.call(request));
    match future.as_mut().poll(&mut cx) {
        // Every layer lets every request through to the handler.
        Poll::Ready(Ok(response)) if response.status().is_success() => response,
        Poll::Ready(Ok(response)) => panic!("answered {}", response.status()),
        _ => panic!("the service did not answer at once"),
    }
}

/// tower_governor, open: one request a nanosecond, bursts of a million.
pub fn governor<K: GovernorKey>(key: K) -> GovernorLayer<K, NoOpMiddleware<QuantaInstant>, Body> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .key_extractor(key)
        .finish()
        .unwrap();
    GovernorLayer::new(Arc::new(config))
}

pub fn bare() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone
{
    service_fn(|_: Request<Body>| async {
        let mut response = Response::new(Body::empty());
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        Ok::<_, Infallible>(response)
    })
}

/// tower_governor, open, keyed by peer IP and writing its `x-ratelimit-*`
/// headers on every response.
pub fn governor_with_headers() -> GovernorLayer<
    tower_governor::key_extractor::PeerIpKeyExtractor,
    governor::middleware::StateInformationMiddleware,
    Body,
> {
    let config = GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(1_000_000)
        .use_headers()
        .finish()
        .unwrap();
    GovernorLayer::new(Arc::new(config))
}

/// Serves `app` on a runtime thread of its own, on a loopback port;
/// returns its address and the runtime (dropping it stops the server).
pub fn serve(app: axum::Router) -> (SocketAddr, tokio::runtime::Runtime) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    (addr, runtime)
}

/// Sends `count` GET requests for `/` one after another on `sender`,
/// each answered with a success and its body read whole.
pub async fn send_hello(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>,
    count: u64,
) {
    use http_body_util::BodyExt;
    for _ in 0..count {
        sender.ready().await.unwrap();
        let request = http::Request::get("/")
            .header("host", "bench")
            .body(http_body_util::Empty::new())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        assert!(response.status().is_success());
        response.into_body().collect().await.unwrap();
    }
}

/// `count` keep-alive HTTP/1.1 connections to `addr`, without Nagle's
/// delay.
pub async fn connect(
    addr: SocketAddr,
    count: usize,
) -> Vec<hyper::client::conn::http1::SendRequest<http_body_util::Empty<hyper::body::Bytes>>> {
    let mut senders = Vec::new();
    for _ in 0..count {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake::<
            _,
            http_body_util::Empty<hyper::body::Bytes>,
        >(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
        tokio::spawn(connection);
        senders.push(sender);
    }
    senders
}

/// The hello-world axum app of the HTTP benches.
pub fn hello() -> axum::Router {
    axum::Router::new().route("/", axum::routing::get(|| async { "hello, world" }))
}

/// tollgate per peer IP at a quota that never denies, with or without
/// the `RateLimit` fields on success.
pub fn tollgate_per_ip(headers: bool) -> tollgate_tower::RateLimitLayer<tollgate_tower::PeerIp> {
    tollgate_tower::RateLimitLayer::builder(open_quota())
        .key(tollgate_tower::PeerIp::new())
        .headers_on_success(headers)
        .build()
        .unwrap()
}

/// The first, second and third quartiles of `values`.
pub fn quartiles(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: usize| values[(values.len() - 1) * q / 4];
    (at(1), at(2), at(3))
}

/// The rounds an interleaved benchmark runs: the first number among its
/// arguments (`cargo bench` passes `--bench`), or `default`.
pub fn rounds(default: usize) -> usize {
    std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .find_map(|a| a.parse().ok())
        .unwrap_or(default)
}

/// A lean HTTP/1.1 client connection, as load generators such as `wrk`
/// are: it writes a fixed request and reads the answer's head in place
/// (`httparse` over a reused buffer: no header map, no allocation), so
/// that on a machine the client shares with the server, the client's own
/// parsing of each header line takes as little of the cores as it can.
pub struct Lean {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
    filled: usize,
}

impl Lean {
    const REQUEST: &'static [u8] = b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n";

    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buffer: vec![0; 4096],
            filled: 0,
        }
    }

    /// Sends `count` requests one after another, each answered 200 with a
    /// body of a stated length.
    pub async fn send_hello(&mut self, count: u64) {
        use tokio::io::AsyncWriteExt;
        for _ in 0..count {
            self.stream.write_all(Self::REQUEST).await.unwrap();
            self.read_response().await;
        }
    }

    async fn read_response(&mut self) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut response = httparse::Response::new(&mut headers);
            let parsed = response.parse(&self.buffer[..self.filled]).unwrap();
            if let httparse::Status::Complete(head) = parsed {
                assert_eq!(response.code, Some(200), "a hello answered other than 200");
                let length: usize = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .expect("a hello answered without content-length");
                let end = head + length;
                while self.filled < end {
                    self.fill().await;
                }
                self.buffer.copy_within(end..self.filled, 0);
                self.filled -= end;
                return;
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        use tokio::io::AsyncReadExt;
        if self.filled == self.buffer.len() {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        let read = self
            .stream
            .read(&mut self.buffer[self.filled..])
            .await
            .unwrap();
        assert!(read > 0, "the server closed the connection");
        self.filled += read;
    }
}
