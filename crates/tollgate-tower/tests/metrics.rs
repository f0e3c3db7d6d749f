//! The layer's metrics through the `metrics` facade, read back from a
//! debugging recorder (feature `metrics`). In process, on a manual clock
//! and Tokio's paused clock.
#![cfg(feature = "metrics")]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tollgate::{ManualClock, Quota};
use tollgate_tower::{HeaderKey, RateLimitLayer, Tier};
use tower::{service_fn, Layer, ServiceExt};

type Body = Full<Bytes>;

async fn ok(_: Request<Body>) -> Result<Response<Body>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn request(key: &str, tier: Option<&'static str>) -> Request<Body> {
    let mut request = Request::builder()
        .header("x-api-key", key)
        .body(Full::default())
        .unwrap();
    if let Some(tier) = tier {
        request.extensions_mut().insert(Tier::new(tier));
    }
    request
}

/// A metric's name and labels.
type Named = (String, Vec<(String, String)>);

/// What the recorder holds, read once (reading empties it).
struct Seen(Vec<(Named, DebugValue)>);

impl Seen {
    fn read(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| {
                    let key = key.key();
                    let labels = key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    ((key.name().to_owned(), labels), value)
                })
                .collect(),
        )
    }

    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|((n, l), value)| {
            let same = n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v));
            same.then_some(value)
        })
    }

    /// A counter's value (0 when it was never registered).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            _ => 0,
        }
    }

    fn decisions(&self, policy: &str, outcome: &str) -> u64 {
        self.counter(
            "tollgate_decisions_total",
            &[("policy", policy), ("outcome", outcome)],
        )
    }

    fn histogram(&self, name: &str) -> Vec<f64> {
        match self.find(name, &[]) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            _ => Vec::new(),
        }
    }

    /// Every label value of every metric.
    fn label_values(&self) -> Vec<&str> {
        self.0
            .iter()
            .flat_map(|((_, labels), _)| labels.iter().map(|(_, v)| v.as_str()))
            .collect()
    }
}

#[tokio::test(start_paused = true)]
async fn decisions_by_policy_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let clock = ManualClock::new();
    let layer = metrics::with_local_recorder(&recorder, || {
        RateLimitLayer::builder(Quota::per_minute(2).unwrap())
            .policy_name("per-key")
            .key(HeaderKey::new("x-api-key").unwrap())
            .tier("pro", Quota::per_minute(3).unwrap())
            .clock(clock.clone())
            .build()
            .unwrap()
    });
    let service = layer.layer(service_fn(ok));
    let mut statuses = Vec::new();
    for (key, tier) in [
        ("a", None),
        ("a", None),
        ("a", None),
        ("b", Some("pro")),
        ("b", Some("pro")),
        ("b", Some("pro")),
        ("b", Some("pro")),
    ] {
        let response = service.clone().oneshot(request(key, tier)).await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 200, 200, 200, 429]);
    let seen = Seen::read(&snapshotter);
    assert_eq!(seen.decisions("per-key", "admitted"), 2);
    assert_eq!(seen.decisions("per-key", "refused"), 1);
    assert_eq!(seen.decisions("pro", "admitted"), 3);
    assert_eq!(seen.decisions("pro", "refused"), 1);
    assert_eq!(seen.decisions("per-key", "failed"), 0);
    // No key is a label.
    for value in seen.label_values() {
        assert!(value != "a" && value != "b", "{value}");
    }
}

#[tokio::test(start_paused = true)]
async fn waits_and_shadowed_requests() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (waiting, shadow) = metrics::with_local_recorder(&recorder, || {
        let waiting = RateLimitLayer::builder(Quota::per_second(1).unwrap())
            .policy_name("waits")
            .key(HeaderKey::new("x-api-key").unwrap())
            .wait_up_to(Duration::from_secs(5))
            .build()
            .unwrap();
        let shadow = RateLimitLayer::builder(Quota::per_minute(1).unwrap())
            .policy_name("trial")
            .key(HeaderKey::new("x-api-key").unwrap())
            .shadow(true)
            .build()
            .unwrap();
        (waiting, shadow)
    });
    let service = waiting.layer(service_fn(ok));
    for _ in 0..3 {
        let response = service.clone().oneshot(request("a", None)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let seen = Seen::read(&snapshotter);
    assert_eq!(seen.decisions("waits", "admitted"), 1);
    assert_eq!(seen.decisions("waits", "waited"), 2);
    // One after another: each waits a second for its turn.
    assert_eq!(seen.histogram("tollgate_wait_seconds"), [1.0, 1.0]);

    let service = shadow.layer(service_fn(ok));
    for _ in 0..3 {
        let response = service.clone().oneshot(request("a", None)).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let seen = Seen::read(&snapshotter);
    assert_eq!(seen.decisions("trial", "admitted"), 1);
    assert_eq!(seen.decisions("trial", "shadowed"), 2);
}
