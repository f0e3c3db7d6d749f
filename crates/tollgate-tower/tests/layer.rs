//! The layers as tower services, on Tokio's paused clock.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tollgate::{ManualClock, Quota};
use tollgate_tower::{
    ConcurrencyLimitLayer, ConfigErrorKind, Duplicates, HeaderKey, Key, MissingKey, RateLimitLayer,
    Rejection, RejectionKind,
};
use tower::{service_fn, Layer, ServiceExt};

type Body = Full<Bytes>;

async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn get() -> Request<Body> {
    Request::new(Full::default())
}

async fn text<B>(response: Response<B>) -> String
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn wait_mode_shapes_requests_then_rejects_past_the_bound() {
    // 2 a second, burst 1: one now, then one every 500 ms.
    let layer = RateLimitLayer::builder("2/s burst 1".parse::<Quota>().unwrap())
        .wait_up_to(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(get()).await.unwrap();
            (response.status(), start.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    // The fourth's turn would come at 1.5 s: past the bound, rejected now.
    let rejected = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(rejected.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(rejected.headers()["retry-after"], "2");
    assert_eq!(start.elapsed(), Duration::ZERO);

    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let ms = Duration::from_millis;
    assert_eq!(
        done,
        [
            (StatusCode::OK, ms(0)),
            (StatusCode::OK, ms(500)),
            (StatusCode::OK, ms(1000)),
        ]
    );
    assert_eq!(layer.limiter().waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiting_request_gives_its_turn_back() {
    let layer = RateLimitLayer::builder("1/s".parse::<Quota>().unwrap())
        .wait_up_to(Duration::from_secs(5))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    assert_eq!(service.clone().oneshot(get()).await.unwrap().status(), 200);
    // Waits for its slot at 1 s, but is abandoned.
    let abandoned = tokio::spawn(service.clone().oneshot(get()));
    tokio::task::yield_now().await;
    assert_eq!(layer.limiter().waiting(), 1);
    abandoned.abort();
    let _ = abandoned.await;
    // The next request takes the freed slot at 1 s, not 2 s.
    let start = Instant::now();
    assert_eq!(service.oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test]
async fn keys_from_headers_missing_and_too_long() {
    let rejecting = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
        .key(HeaderKey::new("x-api-key").unwrap())
        .max_key_len(8)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = rejecting.layer(service_fn(ok));
    let with_key = |key: &str| {
        Request::builder()
            .header("x-api-key", key)
            .body(Full::default())
            .unwrap()
    };
    assert_eq!(
        service
            .clone()
            .oneshot(with_key("alice"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        service
            .clone()
            .oneshot(with_key("alice"))
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        service
            .clone()
            .oneshot(with_key("bob"))
            .await
            .unwrap()
            .status(),
        200
    );

    let missing = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    let rejection = missing.extensions().get::<Rejection>().unwrap().clone();
    assert_eq!(rejection.kind(), RejectionKind::NoKey);
    assert_eq!(text(missing).await, "the request has no x-api-key header\n");

    let long = service
        .clone()
        .oneshot(with_key("123456789"))
        .await
        .unwrap();
    assert_eq!(long.status(), StatusCode::BAD_REQUEST);
    assert!(text(long).await.contains("9 bytes long; at most 8"));

    // Counted against one shared key instead.
    let sharing = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
        .key(HeaderKey::new("x-api-key").unwrap())
        .on_missing_key(MissingKey::Global)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = sharing.layer(service_fn(ok));
    assert_eq!(service.clone().oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(service.clone().oneshot(get()).await.unwrap().status(), 429);
    assert_eq!(
        service
            .clone()
            .oneshot(with_key("carol"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn costs_by_closure_and_requests_that_can_never_fit() {
    let layer = RateLimitLayer::builder(Quota::per_minute(100).unwrap())
        .cost_fn(|request: &Request<Body>| {
            request
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
        })
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    let sized = |n: u64| {
        Request::builder()
            .header("content-length", n)
            .body(Full::default())
            .unwrap()
    };
    let response = service.clone().oneshot(sized(60)).await.unwrap();
    assert_eq!(response.headers()["ratelimit"], r#""default";r=40;t=36"#);
    let response = service.clone().oneshot(sized(50)).await.unwrap();
    assert_eq!(response.status(), 429);
    // 10 more units are needed, one every 600 ms.
    assert_eq!(response.headers()["retry-after"], "6");

    let never = service.clone().oneshot(sized(101)).await.unwrap();
    assert_eq!(never.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(never.headers().get("retry-after").is_none());
    assert_eq!(
        never.extensions().get::<Rejection>().unwrap().kind(),
        RejectionKind::CostTooLarge
    );
    assert_eq!(
        text(never).await,
        "this request costs 101, more than the limit of 100 ever admits at once\n"
    );
}

#[tokio::test]
async fn custom_rejections_keep_the_rate_limit_headers() {
    let layer = RateLimitLayer::builder(Quota::per_second(1).unwrap())
        .policy_name("burst")
        .headers_on_success(false)
        .reject_with(|rejection: &Rejection| {
            let body = format!(
                "{{\"error\":\"slow down\",\"retry_after_ms\":{}}}",
                rejection.retry_after().unwrap().as_millis()
            );
            Response::builder()
                .status(StatusCode::SERVICE_UNAVAILABLE)
                .header("content-type", "application/json")
                .header("retry-after", "60")
                .body(Bytes::from(body))
                .unwrap()
        })
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    let admitted = service.clone().oneshot(get()).await.unwrap();
    assert!(admitted.headers().get("ratelimit").is_none());
    assert!(admitted.headers().get("ratelimit-policy").is_none());

    let rejected = service.oneshot(get()).await.unwrap();
    assert_eq!(rejected.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The rejector's own Retry-After stands; the fields it left out are added.
    assert_eq!(rejected.headers()["retry-after"], "60");
    assert_eq!(rejected.headers()["ratelimit-policy"], r#""burst";q=1;w=1"#);
    assert_eq!(rejected.headers()["ratelimit"], r#""burst";r=0;t=1"#);
    let rejection = rejected.extensions().get::<Rejection>().unwrap();
    assert_eq!(rejection.request_key(), Some(&Key::global()));
    assert_eq!(
        text(rejected).await,
        r#"{"error":"slow down","retry_after_ms":1000}"#
    );

    assert!(RateLimitLayer::builder(Quota::per_second(1).unwrap())
        .policy_name("")
        .build()
        .is_err());
}

#[tokio::test]
async fn grpc_requests_get_grpc_answers() {
    let layer = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    let grpc = || {
        Request::builder()
            .header("content-type", "application/grpc+proto")
            .body(Full::default())
            .unwrap()
    };
    service.clone().oneshot(grpc()).await.unwrap();
    let rejected = service.oneshot(grpc()).await.unwrap();
    assert_eq!(rejected.status(), StatusCode::OK);
    let headers = rejected.headers();
    assert_eq!(headers["content-type"], "application/grpc");
    assert_eq!(headers["grpc-status"], "8");
    assert_eq!(headers["grpc-retry-pushback-ms"], "60000");
    assert_eq!(headers["retry-after"], "60");
    assert!(text(rejected).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn concurrency_wait_mode_serves_in_line_then_gives_up() {
    let layer = ConcurrencyLimitLayer::builder(1)
        .wait_up_to(Duration::from_millis(300))
        .build()
        .unwrap();
    let slow = service_fn(|_: Request<Body>| async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
    });
    let service = layer.layer(slow);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let service = service.clone();
        tasks.push(tokio::spawn(async move {
            let response = service.oneshot(get()).await.unwrap();
            (response.status(), start.elapsed())
        }));
        tokio::task::yield_now().await;
    }
    let mut done = Vec::new();
    for task in tasks {
        done.push(task.await.unwrap());
    }
    let ms = Duration::from_millis;
    // The first runs 0..200 ms, the second waits for it and runs
    // 200..400 ms; the third would start at 400 ms, past its 300 ms bound.
    assert_eq!(
        done,
        [
            (StatusCode::OK, ms(200)),
            (StatusCode::OK, ms(400)),
            (StatusCode::SERVICE_UNAVAILABLE, ms(300)),
        ]
    );
    assert_eq!(layer.in_flight(), 0);
    assert!(ConcurrencyLimitLayer::new(0).is_err());
}

#[tokio::test]
async fn a_key_header_sent_twice_is_refused_unless_told_which_copy() {
    let twice = || {
        Request::builder()
            .header("x-api-key", "alice")
            .header("x-api-key", "mallory")
            .body(Full::default())
            .unwrap()
    };
    // By default: 400, even where a missing key would fall back to the
    // global bucket.
    for missing in [MissingKey::Reject, MissingKey::Global] {
        let layer = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
            .key(HeaderKey::new("x-api-key").unwrap())
            .on_missing_key(missing)
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let response = layer.layer(service_fn(ok)).oneshot(twice()).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{missing:?}");
        assert_eq!(
            text(response).await,
            "the request carries the x-api-key header more than once\n"
        );
    }
    // Told which copy: keyed by it.
    for (duplicates, spent) in [(Duplicates::First, "alice"), (Duplicates::Last, "mallory")] {
        let layer = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
            .key(HeaderKey::new("x-api-key").unwrap().duplicates(duplicates))
            .clock(ManualClock::new())
            .build()
            .unwrap();
        let service = layer.layer(service_fn(ok));
        assert_eq!(
            service.clone().oneshot(twice()).await.unwrap().status(),
            200
        );
        let alone = |key: &str| {
            Request::builder()
                .header("x-api-key", key)
                .body(Full::default())
                .unwrap()
        };
        for key in ["alice", "mallory"] {
            let status = service.clone().oneshot(alone(key)).await.unwrap().status();
            let expected = if key == spent { 429 } else { 200 };
            assert_eq!(status, expected, "{duplicates:?}: {key}");
        }
    }
}

#[tokio::test]
async fn grpc_is_told_by_its_media_type_in_any_case() {
    let layer = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = layer.layer(service_fn(ok));
    assert_eq!(service.clone().oneshot(get()).await.unwrap().status(), 200);
    let with_type = |content_type: &str| {
        Request::builder()
            .header("content-type", content_type)
            .body(Full::default())
            .unwrap()
    };
    for grpc in [
        "APPLICATION/GRPC",
        "application/grpc+proto",
        "application/grpc; x=1",
    ] {
        let response = service.clone().oneshot(with_type(grpc)).await.unwrap();
        assert_eq!(response.status(), 200, "{grpc}: trailers-only gRPC answer");
        assert_eq!(response.headers()["grpc-status"], "8", "{grpc}");
    }
    for http in [
        "application/grpcx",
        "application/grpc-web",
        "application/json",
    ] {
        let response = service.clone().oneshot(with_type(http)).await.unwrap();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS, "{http}");
        assert!(response.headers().get("grpc-status").is_none(), "{http}");
    }
}

#[test]
fn bad_configuration_is_an_error_at_build_with_its_kind() {
    let quota = Quota::per_minute(1).unwrap();
    let kind = |error: tollgate_tower::ConfigError| error.kind();
    for builder in [
        RateLimitLayer::builder(quota).tier("", quota),
        RateLimitLayer::builder(quota).tier("é", quota),
        RateLimitLayer::builder(quota)
            .tier("pro", quota)
            .tier("pro", quota),
    ] {
        let error = builder.build().unwrap_err();
        assert!(error.to_string().contains("tier"), "{error}");
        assert_eq!(kind(error), ConfigErrorKind::PolicyName);
    }
    assert_eq!(
        kind(
            RateLimitLayer::builder(quota)
                .max_key_len(0)
                .build()
                .unwrap_err()
        ),
        ConfigErrorKind::Limit
    );
    assert_eq!(
        kind(
            RateLimitLayer::builder(quota)
                .max_keys(0)
                .build()
                .unwrap_err()
        ),
        ConfigErrorKind::Limit
    );
    assert_eq!(
        kind(
            RateLimitLayer::builder(quota)
                .policy_name("")
                .build()
                .unwrap_err()
        ),
        ConfigErrorKind::PolicyName
    );
    assert_eq!(
        kind(
            ConcurrencyLimitLayer::builder(1)
                .max_key_len(0)
                .build()
                .unwrap_err()
        ),
        ConfigErrorKind::Limit
    );
    let zero = ConcurrencyLimitLayer::new(0).unwrap_err();
    assert_eq!(zero.kind(), ConfigErrorKind::Limit);
    assert!(zero.to_string().contains('0'), "{zero}");
    assert_eq!(
        kind(HeaderKey::new("bad header").unwrap_err()),
        ConfigErrorKind::HeaderName
    );
    assert_eq!(
        kind(tollgate_tower::ClientIp::trusting(["not a network"]).unwrap_err()),
        ConfigErrorKind::Proxy
    );
}

#[test]
fn the_services_lend_and_give_back_what_they_wrap() {
    let layer = RateLimitLayer::new(Quota::per_minute(1).unwrap());
    let mut limited = layer.layer(String::from("inner"));
    assert_eq!(limited.get_ref(), "inner");
    limited.get_mut().push('!');
    assert_eq!(limited.into_inner(), "inner!");
    let layer = ConcurrencyLimitLayer::new(1).unwrap();
    let mut limited = layer.layer(String::from("inner"));
    assert_eq!(limited.get_ref(), "inner");
    limited.get_mut().push('!');
    assert_eq!(limited.into_inner(), "inner!");
}
