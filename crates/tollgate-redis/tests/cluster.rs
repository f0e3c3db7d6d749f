//! Budgets of three dimensions for many keys in a 3-master Redis Cluster:
//! no `CROSSSLOT` (a key's dimensions share one hash tag), exact counts,
//! also for keys whose slot moved to another master mid-run (`MOVED`).

use std::time::Duration;

use tollgate::{KeyedBudget, Limits, Quota};
use tollgate_redis::testing::RedisCluster;
use tollgate_redis::{Fault, RedisStore};

const KEYS: usize = 120;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_across_slots_and_a_move() {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::cluster_builder(cluster.urls())
        .prefix("cluster")
        .timeout(Duration::from_secs(2))
        .fault(Fault::FailClosed)
        .connect()
        .await
        .expect("connect to the cluster");
    // Per day: nothing refills while the test runs, however long a loaded
    // machine makes the resharding take.
    let day = Duration::from_secs(86_400);
    let limits = Limits::builder()
        .dimension("requests", Quota::new(5, day).unwrap())
        .dimension("input", Quota::new(50, day).unwrap())
        .dimension("output", Quota::new(500, day).unwrap())
        .build()
        .unwrap();
    let budget = KeyedBudget::with_store(limits, store.clone());
    let keys: Vec<String> = (0..KEYS).map(|i| format!("tenant-{i}")).collect();
    for key in &keys {
        for _ in 0..3 {
            budget.try_acquire(key, &[1, 10, 100]).await.unwrap();
        }
    }
    // The keys are spread over every master.
    for i in 0..3 {
        let count: u64 = cluster.node(i).cli(&["DBSIZE"]).parse().unwrap();
        assert!(count > 0, "node {i} holds no key");
    }
    // Move a third of the first master's slots, with their keys: the
    // client still routes those keys to the first master, which answers
    // MOVED.
    let dbsize = |i: usize| -> u64 { cluster.node(i).cli(&["DBSIZE"]).parse().unwrap() };
    let before = (dbsize(0), dbsize(1));
    cluster.reshard(0, 1, 1_800);
    let after = (dbsize(0), dbsize(1));
    assert!(
        after.0 < before.0 && after.1 > before.1,
        "{before:?} then {after:?}"
    );
    for key in &keys {
        let remaining: Vec<u64> = budget
            .snapshot(key)
            .await
            .unwrap()
            .iter()
            .map(|s| s.remaining())
            .collect();
        assert_eq!(remaining, [2, 20, 200], "{key}");
        for _ in 0..2 {
            budget.try_acquire(key, &[1, 10, 100]).await.unwrap();
        }
        let denied = budget.try_acquire(key, &[1, 10, 100]).await.unwrap_err();
        assert_eq!(denied.kind(), tollgate::DeniedKind::RateLimited, "{key}");
    }
    let stats = store.redis_stats();
    assert_eq!(stats.failures, 0, "{stats:?}");
    assert_eq!(stats.fallbacks, 0);
}
