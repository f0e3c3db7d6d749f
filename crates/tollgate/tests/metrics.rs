//! Named limiters and budgets count their decisions through the `metrics`
//! facade (feature `metrics`), read back from a debugging recorder. On a
//! manual clock and Tokio's paused clock.
#![cfg(feature = "metrics")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tollgate::{Budget, KeyedLimiter, Limits, ManualClock, Quota, RateLimiter};

/// A counter's value in one reading of the recorder (reading empties it).
fn counters(snapshotter: &Snapshotter) -> Vec<(String, Vec<String>, u64)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => Some((
                key.key().name().to_owned(),
                key.key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect(),
                n,
            )),
            _ => None,
        })
        .collect()
}

fn value(seen: &[(String, Vec<String>, u64)], name: &str, labels: &[&str]) -> u64 {
    seen.iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|x| l.iter().any(|y| y == x)))
        .map_or(0, |(_, _, v)| *v)
}

#[tokio::test(start_paused = true)]
async fn named_faces_count_by_outcome_and_dimension() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (direct, keyed, budget, unnamed) = metrics::with_local_recorder(&recorder, || {
        let direct = RateLimiter::builder(Quota::per_second(2).unwrap())
            .clock(ManualClock::new())
            .build()
            .metrics("direct");
        let keyed = KeyedLimiter::new(Quota::per_second(1).unwrap()).metrics("keyed");
        let limits = Limits::builder()
            .dimension("requests", Quota::per_second(10).unwrap())
            .dimension("tokens", Quota::per_second(100).unwrap())
            .build()
            .unwrap();
        let budget = Budget::new(limits).metrics("llm");
        let unnamed = KeyedLimiter::new(Quota::per_second(1).unwrap());
        (direct, keyed, budget, unnamed)
    });
    for _ in 0..3 {
        let _ = direct.check(1);
    }
    keyed.acquire(&"a", 1).await.unwrap();
    keyed.acquire(&"a", 1).await.unwrap();
    assert!(keyed.check(&"a", 1).is_err());
    budget.check(&[1, 60]).unwrap();
    assert!(budget.check(&[1, 60]).is_err(), "tokens refuse");
    let _ = unnamed.check(&"a", 1);
    let _ = tokio::time::sleep(Duration::ZERO).await;

    let seen = counters(&snapshotter);
    let decisions = |policy: &str, outcome: &str| {
        value(
            &seen,
            "tollgate_decisions_total",
            &[&format!("policy={policy}"), &format!("outcome={outcome}")],
        )
    };
    assert_eq!(decisions("direct", "admitted"), 2);
    assert_eq!(decisions("direct", "refused"), 1);
    assert_eq!(decisions("keyed", "admitted"), 1);
    assert_eq!(decisions("keyed", "waited"), 1);
    assert_eq!(decisions("keyed", "refused"), 1);
    assert_eq!(decisions("llm", "admitted"), 1);
    assert_eq!(decisions("llm", "refused"), 1);
    assert_eq!(
        value(
            &seen,
            "tollgate_refusals_by_dimension_total",
            &["policy=llm", "dimension=tokens"]
        ),
        1
    );
    assert_eq!(
        value(
            &seen,
            "tollgate_refusals_by_dimension_total",
            &["policy=llm", "dimension=requests"]
        ),
        0
    );
    // Every decision above is counted once, and the refusals once more by
    // dimension; the unnamed limiter counts nothing.
    let total: u64 = seen.iter().map(|(_, _, v)| v).sum();
    assert_eq!(total, 3 + 3 + 2 + 3);
}
