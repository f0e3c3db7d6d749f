//! The Lua scripts are a second implementation of the core's transitions:
//! random sequences of every store operation (decide, with and without a
//! wait, so reserve; charge, refund, at most, observe, set and clear
//! limits, pause; read) go through a `MemoryStore` and a `RedisStore` side
//! by side, at the same instants, and every answer must be the same.
//!
//! The Redis store reads its clock from a hash the test sets
//! (`Builder::clock_from_hash`), the memory store from a `ManualClock`:
//! both decide at the instant the test chooses, from today to near the end
//! of the range the scripts count exactly (2^51 microseconds). The quotas, waits
//! and learnt limits are whole microseconds, as Redis counts; limits of a
//! million a second or more (which Redis holds at a microsecond) are left
//! out. One `redis-server` for all cases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use proptest::prelude::*;
use tollgate::store::{Change, Decision, Denial, Store, View};
use tollgate::{ManualClock, MemoryStore, Quota, MAX_DIMENSIONS};
use tollgate_redis::testing::RedisServer;
use tollgate_redis::RedisStore;

const CLOCK: &str = "tollgate-test:clock";

fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// Quotas whose intervals and capacities are whole microseconds.
fn quota(index: usize) -> Quota {
    let quotas = [
        Quota::per_second(10).unwrap(),
        Quota::per_second(10).unwrap().burst(3).unwrap(),
        Quota::per_minute(120).unwrap(),
        Quota::new(4, Duration::from_secs(1))
            .unwrap()
            .burst(8)
            .unwrap(),
        Quota::per_hour(3_600).unwrap(),
        Quota::per_second(1_000).unwrap().burst(50).unwrap(),
    ];
    quotas[index % quotas.len()]
}

/// Limits a provider may state: each divides every period above in
/// microseconds, so the learnt interval is exact in both stores.
const STATED: [u64; 9] = [1, 2, 4, 5, 8, 10, 20, 25, 50];

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Decide {
        key: usize,
        costs: [u64; 3],
        max_wait_ms: u64,
    },
    Adjust {
        key: usize,
        changes: [Change; 3],
    },
    Read {
        key: usize,
    },
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        Just(Change::Keep),
        (0u64..12).prop_map(Change::Charge),
        (0u64..12).prop_map(Change::Refund),
        (0u64..12).prop_map(Change::AtMost),
        (0usize..STATED.len(), 0u64..60).prop_map(|(i, remaining)| Change::Observe {
            limit: STATED[i],
            remaining: remaining.min(STATED[i]),
        }),
        (0usize..6).prop_map(|i| Change::Limit(quota(i))),
        Just(Change::Unlimit),
        (0u64..5_000).prop_map(|ms| Change::HoldFor(Duration::from_millis(ms))),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..3_000).prop_map(Op::Advance),
        4 => (0usize..3, [0u64..6, 0u64..6, 0u64..6], prop_oneof![Just(0u64), 0u64..5_000])
            .prop_map(|(key, costs, max_wait_ms)| Op::Decide { key, costs, max_wait_ms }),
        2 => (0usize..3, [change(), change(), change()])
            .prop_map(|(key, changes)| Op::Adjust { key, changes }),
        1 => (0usize..3).prop_map(|key| Op::Read { key }),
    ]
}

/// Each key's default limits: keys 0 and 1 one dimension, key 2 three.
fn limits(key: usize, picks: [usize; 3]) -> Vec<Quota> {
    match key {
        0 => vec![quota(picks[0])],
        1 => vec![quota(picks[1])],
        _ => picks.iter().map(|&i| quota(i + 1)).collect(),
    }
}

/// The start of the clock: an hour from now, and near the end of what the
/// scripts count exactly (2^51 us, in 2041). Never before now: Redis
/// expires keys on its own clock (`PXAT`), so an instant in the past
/// would drop what a decision wrote.
fn start() -> impl Strategy<Value = u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    prop_oneof![
        Just(now + 3_600_000_000),
        Just((1u64 << 51) - 10_000_000_000)
    ]
}

async fn set_clock(conn: &mut redis::aio::MultiplexedConnection, us: u64) {
    let _: () = redis::cmd("HSET")
        .arg(CLOCK)
        .arg("s")
        .arg(us / 1_000_000)
        .arg("us")
        .arg(us % 1_000_000)
        .query_async(conn)
        .await
        .unwrap();
}

static CASE: AtomicU64 = AtomicU64::new(0);

/// The same duration. (Both stores round a re-spaced debt up to a whole
/// microsecond, so that Redis, which counts in microseconds, and the
/// memory store, in nanoseconds, agree exactly on whole-microsecond
/// instants and quotas.)
fn same_duration(memory: Duration, redis: Duration) -> bool {
    memory == redis
}

fn same_snapshot(memory: &tollgate::Snapshot, redis: &tollgate::Snapshot) -> bool {
    memory.limit() == redis.limit()
        && memory.remaining() == redis.remaining()
        && same_duration(memory.reset_after(), redis.reset_after())
        && match (memory.retry_after(), redis.retry_after()) {
            (Some(a), Some(b)) => same_duration(a, b),
            (a, b) => a == b,
        }
}

fn same_view(memory: &View, redis: &View) -> bool {
    memory.limits == redis.limits
        && memory.snapshots.len() == redis.snapshots.len()
        && memory
            .snapshots
            .iter()
            .zip(&redis.snapshots)
            .all(|(a, b)| same_snapshot(a, b))
        && same_duration(memory.paused_for, redis.paused_for)
        && memory.held == redis.held
}

fn same_decision(memory: &Decision, redis: &Decision) -> bool {
    match (memory, redis) {
        (Decision::Admit(a), Decision::Admit(b)) => {
            same_duration(a.wait, b.wait)
                && same_snapshot(&a.snapshot, &b.snapshot)
                && a.place.held() == b.place.held()
                && (0..MAX_DIMENSIONS).all(|d| {
                    a.place.step(d) == b.place.step(d)
                        && same_duration(a.place.due(d), b.place.due(d))
                })
        }
        (
            Decision::Deny(Denial::RateLimited {
                dimension: d,
                snapshot: s,
            }),
            Decision::Deny(Denial::RateLimited {
                dimension: e,
                snapshot: t,
            }),
        )
        | (
            Decision::Deny(Denial::CostExceedsBurst {
                dimension: d,
                snapshot: s,
            }),
            Decision::Deny(Denial::CostExceedsBurst {
                dimension: e,
                snapshot: t,
            }),
        ) => d == e && same_snapshot(s, t),
        _ => false,
    }
}

async fn run(start_us: u64, picks: [usize; 3], ops: Vec<Op>) -> Result<(), TestCaseError> {
    let server = server();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let redis = RedisStore::builder(server.url())
        .prefix(format!("diff{case}"))
        .timeout(Duration::from_secs(5))
        .clock_from_hash(CLOCK)
        .connect()
        .await
        .unwrap();
    let clock = ManualClock::new();
    let memory = MemoryStore::new(1_000, 3, clock.clone());
    let mut now_us = start_us;
    clock.set(now_us * 1_000);
    set_clock(&mut conn, now_us).await;
    let key_of = |key: usize| format!("key{key}");
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Advance(ms) => {
                now_us += ms * 1_000;
                clock.set(now_us * 1_000);
                set_clock(&mut conn, now_us).await;
            }
            Op::Decide {
                key,
                costs,
                max_wait_ms,
            } => {
                let limits = limits(key, picks);
                let costs = &costs[..limits.len()];
                let wait = Duration::from_millis(max_wait_ms);
                let name = key_of(key);
                let in_memory: Decision = memory.decide(&name, &limits, costs, wait).await.unwrap();
                let in_redis: Decision = redis.decide(&name, &limits, costs, wait).await.unwrap();
                prop_assert!(
                    same_decision(&in_memory, &in_redis),
                    "step {}: decide {} {:?} within {:?} at {} us:\n memory {:?}\n redis  {:?}",
                    step,
                    name,
                    costs,
                    wait,
                    now_us,
                    in_memory,
                    in_redis
                );
            }
            Op::Adjust { key, changes } => {
                let limits = limits(key, picks);
                let changes = &changes[..limits.len()];
                let name = key_of(key);
                memory.adjust(&name, &limits, changes).await.unwrap();
                redis.adjust(&name, &limits, changes).await.unwrap();
                let in_memory: View = memory.read(&name, &limits).await.unwrap();
                let in_redis: View = redis.read(&name, &limits).await.unwrap();
                prop_assert!(
                    same_view(&in_memory, &in_redis),
                    "step {}: after {:?} on {} at {} us:\n memory {:?}\n redis  {:?}",
                    step,
                    changes,
                    name,
                    now_us,
                    in_memory,
                    in_redis
                );
            }
            Op::Read { key } => {
                let limits = limits(key, picks);
                let name = key_of(key);
                let in_memory: View = memory.read(&name, &limits).await.unwrap();
                let in_redis: View = redis.read(&name, &limits).await.unwrap();
                prop_assert!(
                    same_view(&in_memory, &in_redis),
                    "step {}: read {} at {} us:\n memory {:?}\n redis  {:?}",
                    step,
                    name,
                    now_us,
                    in_memory,
                    in_redis
                );
            }
        }
    }
    prop_assert_eq!(
        redis.redis_stats().fallbacks,
        0,
        "every decision made in Redis"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_scripts_answer_as_the_memory_store(
        start_us in start(),
        picks in [0usize..6, 0usize..6, 0usize..6],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        runtime().block_on(run(start_us, picks, ops))?;
    }
}
