//! The store's metrics through the `metrics` facade (feature `metrics`),
//! read back from a debugging recorder: calls to a real `redis-server`,
//! then the same server killed.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tollgate::store::{Decision, Store};
use tollgate::Quota;
use tollgate_redis::testing::RedisServer;
use tollgate_redis::{Fault, RedisStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_failures_the_circuit_and_fallbacks() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).unwrap();
    let mut server = RedisServer::start();
    let store = RedisStore::builder(server.url())
        .prefix("metered")
        .timeout(Duration::from_millis(200))
        .fault(Fault::FailOpen)
        .breaker_failures(2)
        .breaker_cool_down(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let limits = [Quota::per_second(100).unwrap()];
    for _ in 0..3 {
        let decision = store
            .decide("k", &limits, &[1], Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(decision, Decision::Admit(_)));
    }
    server.kill();
    for _ in 0..4 {
        let decision = store
            .decide("k", &limits, &[1], Duration::ZERO)
            .await
            .unwrap();
        assert!(matches!(decision, Decision::Admit(_)), "failing open");
    }
    let seen = snapshotter.snapshot().into_vec();
    let find = |name: &str, label: Option<(&str, &str)>| {
        seen.iter().find_map(|(key, _, _, value)| {
            let key = key.key();
            let labelled =
                label.is_none_or(|(k, v)| key.labels().any(|l| l.key() == k && l.value() == v));
            (key.name() == name
                && key
                    .labels()
                    .any(|l| l.key() == "prefix" && l.value() == "metered")
                && labelled)
                .then_some(value)
        })
    };
    let counter = |name: &str, label: Option<(&str, &str)>| match find(name, label) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?}"),
    };
    // Three answered, then two failures open the circuit; the last two
    // are not sent.
    match find("tollgate_store_call_seconds", Some(("op", "decide"))) {
        Some(DebugValue::Histogram(calls)) => assert_eq!(calls.len(), 5, "{calls:?}"),
        other => panic!("{other:?}"),
    }
    let failed = counter("tollgate_store_failures_total", Some(("kind", "redis")))
        + find("tollgate_store_failures_total", Some(("kind", "timeout"))).map_or(0, |v| match v {
            DebugValue::Counter(n) => *n,
            _ => 0,
        });
    assert_eq!(failed, 2);
    assert_eq!(
        counter("tollgate_store_failures_total", Some(("kind", "open"))),
        2
    );
    assert_eq!(counter("tollgate_store_fallback_decisions_total", None), 4);
    assert_eq!(
        find("tollgate_store_circuit_open", None),
        Some(&DebugValue::Gauge(1.0.into()))
    );
    assert_eq!(
        find("tollgate_store_fleet", None),
        Some(&DebugValue::Gauge(1.0.into()))
    );
}
