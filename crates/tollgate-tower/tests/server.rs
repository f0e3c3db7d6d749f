//! The layers in real servers on loopback, hit over TCP by real clients.
//!
//! The limiters run on a `ManualClock`, so every header value is exact
//! however slowly the machine runs; nothing here sleeps.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, Semaphore};
use tollgate::{ManualClock, Quota};
use tollgate_tower::{ClientIp, ConcurrencyLimitLayer, Key, PeerIp, RateLimitLayer};

/// Serves the app on a free loopback port, with connect info.
async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// One keep-alive HTTP/1.1 connection from a chosen loopback address.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
            .to_str()
            .unwrap()
    }
}

impl Client {
    async fn connect(from: &str, to: SocketAddr) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket
            .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        let stream = socket.connect(to).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self { sender }
    }

    async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::get(path).header("host", "test");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.sender.ready().await.unwrap();
        let response = self
            .sender
            .send_request(request.body(Empty::new()).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

fn hello() -> Router {
    Router::new().route("/", get(|| async { "hello" }))
}

#[tokio::test]
async fn per_ip_limit_answers_exact_counts_and_headers() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(5).unwrap())
        .key(PeerIp::new())
        .legacy_headers(true)
        .clock(clock.clone())
        .build()
        .unwrap();
    let addr = serve(hello().layer(layer.clone())).await;

    let mut a = Client::connect("127.0.0.1", addr).await;
    let mut statuses = Vec::new();
    for i in 0..8u64 {
        let answer = a.get("/", &[]).await;
        statuses.push(answer.status.as_u16());
        assert_eq!(answer.header("ratelimit-policy"), r#""default";q=5;w=60"#);
        assert_eq!(answer.header("x-ratelimit-limit"), "5");
        if i < 5 {
            // Each admission leaves one less and pushes "full again" 12 s out.
            assert_eq!(answer.body, "hello");
            let used = i + 1;
            assert_eq!(
                answer.header("ratelimit"),
                format!("\"default\";r={};t={}", 5 - used, 12 * used)
            );
            assert_eq!(
                answer.header("x-ratelimit-remaining"),
                (5 - used).to_string()
            );
            assert_eq!(answer.header("x-ratelimit-reset"), (12 * used).to_string());
            assert!(answer.headers.get("retry-after").is_none());
        } else {
            assert_eq!(answer.header("retry-after"), "12");
            assert_eq!(answer.header("ratelimit"), r#""default";r=0;t=60"#);
            assert_eq!(answer.header("x-ratelimit-remaining"), "0");
            assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");
            assert!(
                answer.body.starts_with("too many requests"),
                "{}",
                answer.body
            );
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);

    // Retry-After rounds up, and is never 0 while limited.
    clock.advance(Duration::from_millis(500));
    assert_eq!(a.get("/", &[]).await.header("retry-after"), "12");
    clock.advance(Duration::from_millis(11_499));
    let answer = a.get("/", &[]).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), "1");
    clock.advance(Duration::from_millis(1));
    let answer = a.get("/", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit"), r#""default";r=0;t=60"#);

    // Another address has a bucket of its own.
    let mut b = Client::connect("127.0.0.2", addr).await;
    let answer = b.get("/", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit"), r#""default";r=4;t=12"#);

    let stats = layer.limiter().stats();
    assert_eq!((stats.admitted, stats.denied), (7, 5));
}

#[tokio::test]
async fn a_stricter_limit_on_one_route_lists_both_policies() {
    let clock = ManualClock::new();
    let strict = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
        .key(PeerIp::new())
        .policy_name("strict")
        .clock(clock.clone())
        .build()
        .unwrap();
    let per_ip = RateLimitLayer::builder(Quota::per_minute(10).unwrap())
        .key(PeerIp::new())
        .clock(clock)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/strict", get(|| async { "strict" }).route_layer(strict))
        .route("/", get(|| async { "hello" }))
        .layer(per_ip);
    let addr = serve(app).await;
    let mut client = Client::connect("127.0.0.1", addr).await;

    let first = client.get("/strict", &[]).await;
    assert_eq!(first.status, 200);
    let items: Vec<_> = first.headers.get_all("ratelimit").iter().collect();
    assert_eq!(items, [r#""strict";r=0;t=60"#, r#""default";r=9;t=6"#]);
    let policies: Vec<_> = first.headers.get_all("ratelimit-policy").iter().collect();
    assert_eq!(policies, [r#""strict";q=1;w=60"#, r#""default";q=10;w=60"#]);

    let second = client.get("/strict", &[]).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.header("retry-after"), "60");
    // Other routes are under the outer limit only.
    let other = client.get("/", &[]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("ratelimit"), r#""default";r=7;t=18"#);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_through_trusted_proxies() {
    let layer = RateLimitLayer::builder(Quota::per_minute(3).unwrap())
        .key(ClientIp::trusting(["127.0.0.2"]).unwrap())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let addr = serve(hello().layer(layer)).await;

    // An untrusted peer rotating X-Forwarded-For stays in its own bucket.
    let mut direct = Client::connect("127.0.0.1", addr).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let spoof = format!("203.0.113.{i}");
        statuses.push(
            direct
                .get("/", &[("x-forwarded-for", &spoof)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);

    // Through the trusted proxy, the client it names is keyed; spoofed
    // entries left of it change nothing.
    let mut proxy = Client::connect("127.0.0.2", addr).await;
    let mut statuses = Vec::new();
    for i in 0..5 {
        let chain = format!("10.9.9.{i}, 198.51.100.7");
        statuses.push(
            proxy
                .get("/", &[("x-forwarded-for", &chain)])
                .await
                .status
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    // Another client behind the same proxy has its own bucket, and the
    // proxy's own traffic is not counted against either.
    let other = proxy.get("/", &[("x-forwarded-for", "198.51.100.8")]).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("ratelimit"), r#""default";r=2;t=20"#);
}

#[tokio::test]
async fn clones_of_the_layer_share_one_limit() {
    let layer = RateLimitLayer::builder(Quota::per_minute(4).unwrap())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    // Two servers, each with its own clone of the layer.
    let first = serve(hello().layer(layer.clone())).await;
    let second = serve(hello().layer(layer.clone())).await;
    let mut a = Client::connect("127.0.0.1", first).await;
    let mut b = Client::connect("127.0.0.1", second).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(a.get("/", &[]).await.status.as_u16());
        statuses.push(b.get("/", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let limiter = layer.limiter();
    assert_eq!(
        limiter.snapshot(&Key::global()).await.unwrap().remaining(),
        0
    );
}

#[tokio::test]
async fn tonic_clients_see_resource_exhausted() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let (_reporter, health) = tonic_health::server::health_reporter();
    let layer = RateLimitLayer::builder(Quota::per_minute(2).unwrap())
        .key(PeerIp::new())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(incoming),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..2 {
        let reply = client
            .check(HealthCheckRequest::default())
            .await
            .expect("within the limit");
        let ratelimit = reply.metadata().get("ratelimit").unwrap();
        assert!(ratelimit.to_str().unwrap().starts_with("\"default\";r="));
    }
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .expect_err("over the limit");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().starts_with("too many requests"),
        "{}",
        status.message()
    );
    let metadata = status.metadata();
    assert_eq!(metadata.get("retry-after").unwrap(), "30");
    assert_eq!(metadata.get("grpc-retry-pushback-ms").unwrap(), "30000");
    assert_eq!(metadata.get("ratelimit").unwrap(), r#""default";r=0;t=60"#);
}

/// A handler that tells when it starts and finishes only when let go.
fn gated() -> (Router, mpsc::UnboundedReceiver<()>, Arc<Semaphore>) {
    let (entered, started) = mpsc::unbounded_channel();
    let gate = Arc::new(Semaphore::new(0));
    let handler_gate = Arc::clone(&gate);
    let app = Router::new().route(
        "/",
        get(move || {
            let entered = entered.clone();
            let gate = Arc::clone(&handler_gate);
            async move {
                entered.send(()).unwrap();
                gate.acquire().await.unwrap().forget();
                "done"
            }
        }),
    );
    (app, started, gate)
}

#[tokio::test]
async fn concurrency_limit_counts_requests_in_flight_not_connections() {
    let (app, mut started, gate) = gated();
    let layer = ConcurrencyLimitLayer::new(2).unwrap();
    let addr = serve(app.layer(layer.clone())).await;

    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(Client::connect("127.0.0.1", addr).await);
    }
    let mut third = clients.pop().unwrap();
    let mut running = Vec::new();
    for mut client in clients {
        running.push(tokio::spawn(async move {
            let answer = client.get("/", &[]).await;
            (client, answer.status)
        }));
        started.recv().await.unwrap();
    }
    assert_eq!(layer.in_flight(), 2);
    let busy = third.get("/", &[]).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(busy.headers.get("retry-after").is_none());

    gate.add_permits(2);
    let mut idle = Vec::new();
    for task in running {
        let (client, status) = task.await.unwrap();
        assert_eq!(status, 200);
        idle.push(client);
    }
    // Both connections are still open, idle: they hold no permit.
    assert_eq!(layer.in_flight(), 0);
    gate.add_permits(1);
    assert_eq!(third.get("/", &[]).await.status, 200);
    gate.add_permits(1);
    assert_eq!(idle[0].get("/", &[]).await.status, 200);
}

#[tokio::test]
async fn per_key_concurrency_limit() {
    let (app, mut started, gate) = gated();
    let layer = ConcurrencyLimitLayer::builder(1)
        .key(PeerIp::new())
        .build()
        .unwrap();
    let addr = serve(app.layer(layer.clone())).await;

    let mut first = Client::connect("127.0.0.1", addr).await;
    let running = tokio::spawn(async move { first.get("/", &[]).await.status });
    started.recv().await.unwrap();

    let mut same_ip = Client::connect("127.0.0.1", addr).await;
    let answer = same_ip.get("/", &[]).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(answer.body.contains("in flight"), "{}", answer.body);

    let mut other_ip = Client::connect("127.0.0.3", addr).await;
    let other = tokio::spawn(async move { other_ip.get("/", &[]).await.status });
    started.recv().await.unwrap();
    assert_eq!(layer.in_flight(), 2);

    gate.add_permits(2);
    assert_eq!(running.await.unwrap(), 200);
    assert_eq!(other.await.unwrap(), 200);
    assert_eq!(layer.in_flight(), 0);
}

/// Shadow mode: every request goes through and carries the fields as if
/// the limit were enforced; those it would have refused are counted, and
/// spend nothing.
#[tokio::test]
async fn shadow_mode_refuses_no_one_and_counts_who_would_be() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(3).unwrap())
        .key(PeerIp::new())
        .wait_up_to(Duration::from_secs(60))
        .shadow(true)
        .clock(clock.clone())
        .build()
        .unwrap();
    let addr = serve(hello().layer(layer.clone())).await;
    let mut a = Client::connect("127.0.0.1", addr).await;
    let mut fields = Vec::new();
    for _ in 0..6 {
        let answer = a.get("/", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, "hello");
        assert!(answer.headers.get("retry-after").is_none());
        fields.push(answer.header("ratelimit").to_owned());
    }
    assert_eq!(
        fields,
        [
            r#""default";r=2;t=20"#,
            r#""default";r=1;t=40"#,
            r#""default";r=0;t=60"#,
            r#""default";r=0;t=60"#,
            r#""default";r=0;t=60"#,
            r#""default";r=0;t=60"#,
        ]
    );
    assert_eq!(layer.shadowed(), 3);
    let stats = layer.limiter().stats();
    assert_eq!((stats.admitted, stats.denied), (3, 3));
    // Nothing spent by the three: the next unit is due 20 s after the third.
    clock.advance(Duration::from_secs(20));
    let answer = a.get("/", &[]).await;
    assert_eq!(answer.header("ratelimit"), r#""default";r=0;t=60"#);
    assert_eq!(layer.shadowed(), 3);
}

/// Tiers: an authentication layer in front tells each request's tier;
/// each tier has its quota and its policy name; a key keeps one budget
/// when its tier changes; no tier, or one not declared, has the layer's.
#[tokio::test]
async fn two_tiers_each_with_its_quota_and_policy() {
    use tollgate_tower::{HeaderKey, Tier};
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder(Quota::per_minute(2).unwrap())
        .clock(clock.clone())
        .key(HeaderKey::new("x-api-key").unwrap())
        .tier("free", Quota::per_minute(3).unwrap())
        .tier("pro", Quota::per_minute(30).unwrap())
        .build()
        .unwrap();
    let app = hello()
        .layer(layer.clone())
        .layer(axum::middleware::map_request(
            |mut request: axum::extract::Request| async move {
                let plan = request
                    .headers()
                    .get("x-plan")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Some(plan) = plan {
                    request.extensions_mut().insert(Tier::new(plan));
                }
                request
            },
        ));
    let addr = serve(app).await;
    let mut client = Client::connect("127.0.0.1", addr).await;
    let mut get = async |key: &str, plan: Option<&str>| {
        let mut headers = vec![("x-api-key", key)];
        if let Some(plan) = plan {
            headers.push(("x-plan", plan));
        }
        client.get("/", &headers).await
    };

    // Free: 3 a minute, under its own name.
    for left in [2, 1, 0] {
        let answer = get("a", Some("free")).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-policy"), r#""free";q=3;w=60"#);
        let spent = 3 - left;
        assert_eq!(
            answer.header("ratelimit"),
            format!(r#""free";r={left};t={}"#, 20 * spent)
        );
    }
    let answer = get("a", Some("free")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), "20");
    assert_eq!(answer.header("ratelimit"), r#""free";r=0;t=60"#);

    // Pro: 30 a minute.
    let answer = get("b", Some("pro")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit-policy"), r#""pro";q=30;w=60"#);
    assert_eq!(answer.header("ratelimit"), r#""pro";r=29;t=2"#);

    // "a" upgraded: it spent its whole free burst, the same share of the
    // pro burst, refilled at the pro rate (one unit in 2 s).
    let answer = get("a", Some("pro")).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), "2");
    clock.advance(Duration::from_secs(2));
    let answer = get("a", Some("pro")).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("ratelimit"), r#""pro";r=0;t=60"#);

    // No tier, or one not declared: the layer's quota and name.
    for plan in [None, Some("gold")] {
        let key = if plan.is_some() { "d" } else { "c" };
        let answer = get(key, plan).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("ratelimit-policy"), r#""default";q=2;w=60"#);
        assert_eq!(answer.header("ratelimit"), r#""default";r=1;t=30"#);
    }
}

/// A handler whose body streams until the test ends it: each request
/// hands the test the sender of its body's chunks.
fn streaming() -> (Router, mpsc::UnboundedReceiver<mpsc::Sender<Bytes>>) {
    let (senders, handed) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/",
        get(move || {
            let senders = senders.clone();
            async move {
                let (tx, rx) = mpsc::channel::<Bytes>(4);
                senders.send(tx).unwrap();
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv()
                        .await
                        .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
                });
                axum::body::Body::from_stream(stream)
            }
        }),
    );
    (app, handed)
}

/// Sends a GET and answers once the headers are in, the body still open.
async fn headers_only(
    addr: SocketAddr,
) -> (
    hyper::Response<hyper::body::Incoming>,
    hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::get("/")
        .header("host", "test")
        .body(Empty::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    (response, sender)
}

/// With `hold_for_body`, a streaming answer holds its permit until its
/// body ends, or until it is dropped; without, only until its headers.
#[tokio::test]
async fn a_permit_held_for_the_whole_body() {
    let (app, mut bodies) = streaming();
    let held = ConcurrencyLimitLayer::builder(1)
        .hold_for_body(true)
        .build()
        .unwrap();
    let addr = serve(app.layer(held.clone())).await;

    let (response, _keep) = headers_only(addr).await;
    assert_eq!(response.status(), 200);
    let body_a = bodies.recv().await.unwrap();
    body_a.send(Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(held.in_flight(), 1, "streaming: still in flight");
    let mut other = Client::connect("127.0.0.1", addr).await;
    let busy = other.get("/", &[]).await;
    assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);

    // The body ends: the permit goes with it.
    drop(body_a);
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "first");
    assert_eq!(held.in_flight(), 0);

    // A body dropped half-way (the client went away) gives it back too.
    let (response, keep) = headers_only(addr).await;
    let body_b = bodies.recv().await.unwrap();
    assert_eq!(held.in_flight(), 1);
    drop((response, keep));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while held.in_flight() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the permit was never given back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(body_b);

    // Without the option: in flight until the headers only.
    let (app, mut bodies) = streaming();
    let headers = ConcurrencyLimitLayer::new(1).unwrap();
    let addr = serve(app.layer(headers.clone())).await;
    let (response, _keep) = headers_only(addr).await;
    assert_eq!(response.status(), 200);
    let _body = bodies.recv().await.unwrap();
    assert_eq!(headers.in_flight(), 0);
}
