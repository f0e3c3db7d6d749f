//! The middleware's metrics through the `metrics` facade (feature
//! `metrics`), read back from a debugging recorder: a provider that
//! refuses once, then answers. In process, on Tokio's paused clock.
#![cfg(feature = "metrics")]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{routing, Router};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tollgate_reqwest::{ProviderLimits, RateLimitMiddleware};

mod transport;

#[tokio::test(start_paused = true)]
async fn calls_refusals_retries_pauses_and_limits() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    let seen = Arc::new(AtomicU32::new(0));
    let app = Router::new().route(
        "/v1/chat/completions",
        routing::post({
            let seen = Arc::clone(&seen);
            move || async move {
                if seen.fetch_add(1, Ordering::Relaxed) == 0 {
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [("retry-after", "2")],
                        "slow down",
                    )
                        .into_response()
                } else {
                    "{}".into_response()
                }
            }
        }),
    );
    let url = format!("{}/v1/chat/completions", transport::register(app));
    let client = transport::client(
        RateLimitMiddleware::builder()
            .limits(ProviderLimits::new().requests_per_minute(600))
            .build(),
    );
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"model":"m","messages":[]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let seen = snapshotter.snapshot().into_vec();
    let value = |name: &str, label: Option<(&str, &str)>| {
        seen.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let endpoint = key.labels().any(|l| {
                l.key() == "endpoint"
                    && l.value().starts_with("http://provider-")
                    && l.value().ends_with(" (m)")
            });
            let labelled =
                label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v));
            (key.name() == name && endpoint && labelled).then_some(value)
        })
    };
    let counter = |name: &str, label: Option<(&str, &str)>| match value(name, label) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(counter("tollgate_client_calls_total", None), 1);
    assert_eq!(
        counter("tollgate_client_refusals_total", Some(("reason", "rate"))),
        1
    );
    assert_eq!(counter("tollgate_client_retries_total", None), 1);
    assert_eq!(counter("tollgate_client_paused_seconds_total", None), 2);
    assert_eq!(
        value("tollgate_client_limit", Some(("dimension", "requests"))),
        Some(&DebugValue::Gauge(600.0.into()))
    );

    // Models come from the bodies: 150 of them make at most 100 series,
    // the rest counted as `other`.
    for model in 0..150 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(format!(r#"{{"model":"m{model}","messages":[]}}"#))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let seen = snapshotter.snapshot().into_vec();
    let endpoints: Vec<String> = seen
        .iter()
        .filter(|(key, _, _, _)| key.key().name() == "tollgate_client_calls_total")
        .flat_map(|(key, _, _, _)| {
            key.key()
                .labels()
                .filter(|l| l.key() == "endpoint")
                .map(|l| l.value().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(endpoints.len(), 101, "{endpoints:?}");
    assert!(endpoints.iter().any(|e| e == "other"));
}
