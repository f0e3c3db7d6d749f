//! Budgets of several dimensions and keyed limiters: bounds, settling,
//! eviction, observation and pauses.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;
use tollgate::store::{Change, Decision, Denial, SyncStore};
use tollgate::{
    Budget, Clock, DeniedKind, KeyedBudget, KeyedLimiter, Limits, ManualClock, MemoryStore, Quota,
    Snapshot, Store,
};

fn llm_limits() -> Limits {
    Limits::builder()
        .dimension("requests", "500/min".parse().unwrap())
        .dimension("input_tokens", Quota::per_minute(30_000).unwrap())
        .dimension("output_tokens", Quota::per_minute(10_000).unwrap())
        .build()
        .unwrap()
}

fn remaining(budget: &Budget<MemoryStore<ManualClock>>) -> Vec<u64> {
    budget
        .as_keyed()
        .store()
        .read_now(&(), budget.limits().quotas())
        .snapshots
        .iter()
        .map(Snapshot::remaining)
        .collect()
}

fn manual_budget(limits: Limits) -> (Budget<MemoryStore<ManualClock>>, ManualClock) {
    let clock = ManualClock::new();
    let budget = Budget::builder(limits).clock(clock.clone()).build();
    (budget, clock)
}

#[test]
fn a_denial_in_one_dimension_spends_nothing_in_the_others() {
    let (budget, _clock) = manual_budget(llm_limits());
    budget.check(&[1, 1_000, 9_000]).unwrap();
    assert_eq!(remaining(&budget), [499, 29_000, 1_000]);

    let denied = budget.check(&[1, 5_000, 2_000]).unwrap_err();
    assert_eq!(denied.kind(), DeniedKind::RateLimited);
    assert_eq!(denied.dimension(), Some("output_tokens"));
    assert_eq!(denied.cost(), 2_000);
    // 1,000 output tokens are missing; 10,000 come per minute.
    assert_eq!(denied.retry_after(), Some(Duration::from_secs(6)));
    assert!(denied.to_string().contains("output_tokens"), "{denied}");
    assert_eq!(remaining(&budget), [499, 29_000, 1_000]);

    let never = budget.check(&[1, 40_000, 0]).unwrap_err();
    assert_eq!(never.kind(), DeniedKind::CostExceedsBurst);
    assert_eq!(never.dimension(), Some("input_tokens"));
    assert_eq!(remaining(&budget), [499, 29_000, 1_000]);

    let wrong = budget.check(&[1, 2]).unwrap_err();
    assert_eq!(wrong.kind(), DeniedKind::WrongDimensions);
    assert_eq!(remaining(&budget), [499, 29_000, 1_000]);
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_the_longest_among_the_dimensions() {
    let budget = Budget::new(llm_limits());
    budget.acquire(&[1, 30_000, 0]).await.unwrap();
    let start = Instant::now();
    // Requests are plentiful; 6,000 input tokens take 12 s to come back.
    budget.acquire(&[1, 6_000, 100]).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(12));
    assert_eq!(budget.stats().waits, 1);
    assert_eq!(budget.stats().waited, Duration::from_secs(12));
}

#[tokio::test(start_paused = true)]
async fn settling_refunds_and_charges() {
    let (budget, clock) = manual_budget(llm_limits());
    let grant = budget.acquire(&[1, 2_000, 4_000]).await.unwrap();
    assert_eq!(grant.costs(), [1, 2_000, 4_000]);
    assert_eq!(remaining(&budget), [499, 28_000, 6_000]);

    // The answer used fewer output tokens and more input tokens.
    budget.settle(grant, &[1, 2_500, 300]).await.unwrap();
    assert_eq!(remaining(&budget), [499, 27_500, 9_700]);

    // A refund never fills a dimension beyond its burst.
    let grant = budget.check(&[0, 0, 100]).unwrap();
    clock.advance(Duration::from_secs(60));
    budget.settle(grant, &[0, 0, 0]).await.unwrap();
    assert_eq!(remaining(&budget), [500, 30_000, 10_000]);

    // A charge beyond the burst makes later callers wait for it.
    let grant = budget.check(&[1, 1, 1]).unwrap();
    budget.settle(grant, &[1, 1, 15_000]).await.unwrap();
    let denied = budget.check(&[0, 0, 1]).unwrap_err();
    assert_eq!(denied.dimension(), Some("output_tokens"));
    // 5,000 tokens of debt plus the one asked: 5,001 × 6 ms.
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(30_006)));
}

#[test]
fn limits_are_validated() {
    use tollgate::LimitsErrorKind;
    let q = Quota::per_second(1).unwrap();
    let err = Limits::builder().build().unwrap_err();
    assert_eq!(err.kind(), LimitsErrorKind::Empty);
    let err = Limits::builder()
        .dimension("a", q)
        .dimension("a", q)
        .build()
        .unwrap_err();
    assert_eq!(err.kind(), LimitsErrorKind::Duplicate);
    assert_eq!(err.to_string(), r#"the dimension "a" is named twice"#);
    let mut many = Limits::builder();
    for i in 0..9 {
        many = many.dimension(format!("d{i}"), q);
    }
    assert_eq!(many.build().unwrap_err().kind(), LimitsErrorKind::TooMany);
}

#[tokio::test]
async fn limits_of_other_dimensions_are_refused() {
    let q = Quota::per_second(1).unwrap();
    let budget = KeyedBudget::<u8>::new(llm_limits());
    let err = budget.set_limits(&1, &Limits::single(q)).await.unwrap_err();
    assert_eq!(err.kind(), DeniedKind::WrongDimensions);
}

#[tokio::test]
async fn keys_carry_their_own_quota() {
    let clock = ManualClock::new();
    let limiter = KeyedLimiter::builder(Quota::per_second(2).unwrap())
        .clock(clock)
        .build();
    limiter
        .set_quota(&"gold", Quota::per_second(5).unwrap())
        .await
        .unwrap();
    assert_eq!(
        limiter.quota_for(&"gold").await.unwrap(),
        Quota::per_second(5).unwrap()
    );
    assert_eq!(limiter.check(&"gold", 1).unwrap().remaining(), 4);
    assert_eq!(limiter.check(&"free", 1).unwrap().remaining(), 1);
    assert_eq!(
        limiter.check(&"gold", 5).unwrap_err().kind(),
        DeniedKind::RateLimited
    );
    assert_eq!(
        limiter.check(&"free", 3).unwrap_err().kind(),
        DeniedKind::CostExceedsBurst
    );
    limiter.clear_quota(&"gold").await.unwrap();
    assert_eq!(
        limiter.quota_for(&"gold").await.unwrap(),
        Quota::per_second(2).unwrap()
    );
}

#[tokio::test(start_paused = true)]
async fn observe_never_grants_more_than_the_server_says_remains() {
    let clock = ManualClock::new();
    let budget = Budget::builder(Limits::single("100/min".parse().unwrap()))
        .clock(clock.clone())
        .build();
    budget.check(&[10]).unwrap();
    // The server has seen more traffic than we sent: 3 remain.
    let reported = Snapshot::new(100, 3, Duration::from_secs(40));
    budget.observe(0, &reported).await.unwrap();
    for _ in 0..3 {
        budget.check(&[1]).unwrap();
    }
    assert_eq!(
        budget.check(&[1]).unwrap_err().kind(),
        DeniedKind::RateLimited
    );

    // A report of more room than we know of changes nothing.
    let before = budget.snapshot().await.unwrap();
    budget
        .observe(0, &Snapshot::new(100, 100, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(budget.snapshot().await.unwrap(), before);

    // The server's limit changed: the rate is re-learnt, same period.
    clock.advance(Duration::from_secs(60));
    budget
        .observe(0, &Snapshot::new(60, 60, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        budget.current_limits().await.unwrap().quota(0),
        &"60/min".parse().unwrap()
    );
    for _ in 0..60 {
        budget.check(&[1]).unwrap();
    }
    let denied = budget.check(&[1]).unwrap_err();
    assert_eq!(denied.retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn a_pause_holds_every_waiter_and_releases_them_paced() {
    let budget = Arc::new(Budget::new(Limits::single("10/s".parse().unwrap())));
    budget.check(&[10]).unwrap();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let budget = Arc::clone(&budget);
        tasks.push(tokio::spawn(async move {
            budget.acquire(&[1]).await.unwrap();
            start.elapsed()
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(budget.waiting(), 5);
    // A 429 with Retry-After: 2 s.
    budget.pause_for(Duration::from_secs(2)).await.unwrap();
    // A caller arriving during the pause goes after those waiting.
    let late = {
        let budget = Arc::clone(&budget);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            budget.acquire(&[1]).await.unwrap();
            start.elapsed()
        })
    };
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap());
    }
    let late = late.await.unwrap();
    // Before the pause they were due at 100, 200, ... 500 ms; each moves
    // back by the 2 s pause, still 100 ms apart.
    let expected: Vec<Duration> = (1..=5)
        .map(|i| Duration::from_millis(2_000 + 100 * i))
        .collect();
    assert_eq!(times, expected);
    assert_eq!(late, Duration::from_millis(2_600));
    assert_eq!(budget.stats().pauses, 1);
}

/// 64 callers each see a 429 with `Retry-After: 1` and pause the key at
/// once: the pauses overlap, so the key is held one second, not 64. A
/// longer pause later extends the hold to its own end, and the waiters
/// move back by that extension only.
#[tokio::test(start_paused = true)]
async fn concurrent_pauses_take_the_longest_never_the_sum() {
    let limiter = Arc::new(KeyedLimiter::new("10/s".parse().unwrap()));
    let start = Instant::now();
    let pauses: Vec<_> = (0..64)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move { limiter.pause_for(&"api", Duration::from_secs(1)).await })
        })
        .collect();
    for pause in pauses {
        pause.await.unwrap().unwrap();
    }
    let first = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            limiter.acquire(&"api", 1).await.unwrap();
            start.elapsed()
        })
    };
    tokio::task::yield_now().await;
    // Half a second in, a pause of 2 s: it ends at 2.5 s, extending the
    // hold by 1.5 s; the waiter, due at 1 s, moves to 2.5 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    limiter
        .pause_for(&"api", Duration::from_secs(2))
        .await
        .unwrap();
    // A shorter one inside it changes nothing.
    limiter
        .pause_for(&"api", Duration::from_millis(300))
        .await
        .unwrap();
    let second = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            limiter.acquire(&"api", 1).await.unwrap();
            start.elapsed()
        })
    };
    assert_eq!(first.await.unwrap(), Duration::from_millis(2_500));
    assert_eq!(second.await.unwrap(), Duration::from_millis(2_600));
    assert_eq!(limiter.stats().pauses, 66);
}

#[tokio::test(start_paused = true)]
async fn a_pause_on_a_full_limit_lets_callers_out_one_by_one() {
    let limiter = Arc::new(KeyedLimiter::new("10/s".parse().unwrap()));
    limiter
        .pause_for(&"api", Duration::from_secs(1))
        .await
        .unwrap();
    let start = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move {
                limiter.acquire(&"api", 1).await.unwrap();
                start.elapsed().as_millis()
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap());
    }
    times.sort_unstable();
    assert_eq!(times, [1_000, 1_100, 1_200, 1_300]);
    // Another key is not paused.
    assert!(limiter.try_acquire(&"other", 1).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_gives_its_reservation_back() {
    let budget = Budget::new(llm_limits());
    budget.check(&[1, 30_000, 0]).unwrap();
    let waiter = budget.acquire(&[1, 3_000, 0]);
    let timed_out = tokio::time::timeout(Duration::from_secs(1), waiter).await;
    assert!(timed_out.is_err());
    assert_eq!(budget.waiting(), 0);
    // 1 s refilled 500 tokens; the 3,000 reserved came back.
    let snapshot = budget.snapshot().await.unwrap();
    assert_eq!(snapshot[1].remaining(), 500);
}

#[test]
fn a_flood_of_keys_stays_under_the_cap_and_spares_an_idle_key() {
    let clock = ManualClock::new();
    let limiter = KeyedLimiter::builder("100/min burst 10".parse().unwrap())
        .max_keys(10_000)
        .clock(clock.clone())
        .build();
    // A well-behaved key spends a little, then goes quiet.
    limiter.check(&u64::MAX, 3).unwrap();
    for key in 0..1_000_000u64 {
        limiter.check(&key, 1).unwrap();
        if key % 10_000 == 0 {
            clock.advance(Duration::from_millis(1));
            assert!(limiter.stats().entries <= 10_000);
        }
    }
    let stats = limiter.stats();
    assert!(stats.entries <= 10_000, "{stats:?}");
    assert!(stats.evictions > 900_000, "{stats:?}");
    assert_eq!(stats.admitted, 1_000_001);
    // The quiet key lost nothing it had: 7 left, or all 10 if forgotten.
    let left = limiter.check(&u64::MAX, 0).unwrap().remaining();
    assert!(left >= 7, "{left}");
    // A key never seen has its whole burst.
    assert_eq!(limiter.check(&(u64::MAX - 1), 10).unwrap().remaining(), 0);
}

#[test]
fn full_keys_are_dropped_without_loss() {
    let clock = ManualClock::new();
    let limiter = KeyedLimiter::builder("10/s".parse().unwrap())
        .max_keys(1_000)
        .clock(clock.clone())
        .build();
    for round in 0..50u64 {
        for key in 0..1_000u64 {
            limiter.check(&(round * 1_000 + key), 1).unwrap();
        }
        // Every key is full again a second later.
        clock.advance(Duration::from_secs(1));
    }
    let stats = limiter.stats();
    assert_eq!(stats.evictions, 0, "{stats:?}");
    assert!(stats.entries <= 1_000);
}

/// Admission times and costs per dimension, checked against
/// `burst + t / interval` over every interval between two admissions.
fn assert_bound(admitted: &[(u64, u64)], quota: &Quota, extra: impl Fn(u64, u64) -> u64) {
    let interval = quota.replenish_interval().as_nanos() as u64;
    let mut admitted = admitted.to_vec();
    admitted.sort_unstable();
    for i in 0..admitted.len() {
        let mut sum = 0;
        for j in i..admitted.len() {
            sum += admitted[j].1;
            let (a, b) = (admitted[i].0, admitted[j].0);
            let bound = quota.burst_size() + (b - a) / interval + extra(a, b);
            assert!(
                sum <= bound,
                "{sum} admitted in [{a}, {b}] ns, bound {bound}"
            );
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    Advance(u64),
    Decide { costs: [u64; 3], max_wait: u64 },
    GiveBackLast,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u64..400).prop_map(Step::Advance),
        (
            [0u64..4, 0u64..9, 0u64..7],
            prop_oneof![Just(0u64), 0u64..1_500]
        )
            .prop_map(|(costs, max_wait)| Step::Decide { costs, max_wait }),
        Just(Step::GiveBackLast),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Every dimension of a budget stays within its bound, with
    /// reservations and give-backs mixed in.
    #[test]
    fn every_dimension_keeps_its_bound(steps in proptest::collection::vec(step(), 1..120)) {
        let quotas: Vec<Quota> = vec![
            "4/40ns".parse().unwrap(),
            "8/240ns burst 10".parse().unwrap(),
            "6/300ns burst 7".parse().unwrap(),
        ];
        let clock = ManualClock::new();
        clock.set(1_000);
        let store = MemoryStore::new(1, 3, clock.clone());
        // (due, costs) of every admission; give-backs remove them.
        let mut admitted: Vec<(u64, [u64; 3])> = Vec::new();
        let mut pending: Vec<usize> = Vec::new();
        for step in steps {
            let now = clock.now();
            match step {
                Step::Advance(ns) => clock.advance(Duration::from_nanos(ns)),
                Step::Decide { costs, max_wait } => {
                    match store.decide_now(&(), &quotas, &costs, Duration::from_nanos(max_wait)) {
                        Decision::Admit(admit) => {
                            let due = now + admit.wait.as_nanos() as u64;
                            if due > now { pending.push(admitted.len()); }
                            admitted.push((due, costs));
                        }
                        Decision::Deny(Denial::RateLimited { dimension, snapshot }) => {
                            let wait = snapshot.retry_after().unwrap().as_nanos() as u64;
                            prop_assert!(wait > max_wait);
                            prop_assert!(costs[dimension] > 0);
                        }
                        Decision::Deny(Denial::CostExceedsBurst { dimension, .. }) => {
                            prop_assert!(costs[dimension] > quotas[dimension].burst_size());
                        }
                    }
                }
                Step::GiveBackLast => {
                    if let Some(i) = pending.pop() {
                        if admitted[i].0 > now {
                            let (_, costs) = admitted.remove(i);
                            <MemoryStore<ManualClock> as Store<()>>::give_back(&store, &(), &quotas, &costs);
                            pending.retain(|&p| p < i);
                        }
                    }
                }
            }
        }
        for (d, quota) in quotas.iter().enumerate() {
            let per_dim: Vec<(u64, u64)> = admitted.iter().map(|(t, c)| (*t, c[d])).filter(|(_, c)| *c > 0).collect();
            assert_bound(&per_dim, quota, |_, _| 0);
        }
    }

    /// Keys keep their bound under eviction: a key admits at most
    /// `burst + t / interval`, plus `burst` for each eviction in the
    /// interval.
    #[test]
    fn keys_keep_their_bound_under_eviction(
        ops in proptest::collection::vec((0u64..12, 1u64..4, 0u64..50), 1..300)
    ) {
        let quota: Quota = "5/100ns".parse().unwrap();
        let clock = ManualClock::new();
        clock.set(1_000);
        let store = MemoryStore::new(4, 1, clock.clone());
        let mut admitted: Vec<Vec<(u64, u64)>> = vec![Vec::new(); 12];
        // (time, evictions so far) after each operation.
        let mut evictions: Vec<(u64, u64)> = Vec::new();
        for (key, cost, advance) in ops {
            clock.advance(Duration::from_nanos(advance));
            let now = clock.now();
            if let Decision::Admit(_) = store.decide_now(&key, &[quota], &[cost], Duration::ZERO) {
                admitted[key as usize].push((now, cost));
            }
            let held = Store::<u8>::stats(&store);
            prop_assert!(held.entries <= 4);
            evictions.push((now, held.evictions));
        }
        let evicted_between = |a: u64, b: u64| {
            let before = evictions.iter().filter(|(t, _)| *t < a).map(|(_, e)| *e).max().unwrap_or(0);
            let upto = evictions.iter().filter(|(t, _)| *t <= b).map(|(_, e)| *e).max().unwrap_or(0);
            upto - before
        };
        for list in &admitted {
            assert_bound(list, &quota, |a, b| quota.burst_size() * evicted_between(a, b));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn adjust_changes_only_what_it_names() {
    let clock = ManualClock::new();
    let store = MemoryStore::new(10, 3, clock.clone());
    let limits = llm_limits();
    let key = "k";
    let read = || -> Vec<u64> {
        store
            .read_now(&key, limits.quotas())
            .snapshots
            .iter()
            .map(Snapshot::remaining)
            .collect()
    };
    store.adjust_now(
        &key,
        limits.quotas(),
        &[Change::Keep, Change::Charge(100), Change::AtMost(7)],
    );
    assert_eq!(read(), [500, 29_900, 7]);
    store.adjust_now(
        &key,
        limits.quotas(),
        &[Change::Keep, Change::Refund(50), Change::Keep],
    );
    assert_eq!(read(), [500, 29_950, 7]);
    store.adjust_now(
        &key,
        limits.quotas(),
        &[
            Change::HoldFor(Duration::from_secs(1)),
            Change::Keep,
            Change::Keep,
        ],
    );
    // Held: nothing for a second, then one.
    assert_eq!(read()[0], 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(read()[0], 1);
}

#[tokio::test(start_paused = true)]
async fn observing_a_dimension_the_budget_lacks_says_so() {
    let budget = Budget::new(llm_limits());
    let denied = budget
        .observe(5, &Snapshot::new(10, 1, Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(denied.kind(), DeniedKind::WrongDimensions);
    assert_eq!(
        denied.to_string(),
        "the budget has no dimension 5: its 3 dimensions are numbered from 0, \
         in the order they were defined"
    );
}

/// An estimate of 1,000 tokens settled at 100: the waiter queued behind it
/// moves forward by the 900 refunded, not waiting for tokens never spent.
#[tokio::test(start_paused = true)]
async fn a_refund_moves_the_waiters_forward() {
    let budget = Arc::new(Budget::new(Limits::single("1000/min".parse().unwrap())));
    let start = Instant::now();
    let grant = budget.acquire(&[1_000]).await.unwrap();
    let waiter = {
        let budget = Arc::clone(&budget);
        tokio::spawn(async move {
            budget.acquire(&[1_000]).await.unwrap();
            start.elapsed()
        })
    };
    tokio::task::yield_now().await;
    assert_eq!(budget.waiting(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    budget.settle(grant, &[100]).await.unwrap();
    // Due at 60 s; 900 tokens at 60 ms each come back: 6 s.
    assert_eq!(waiter.await.unwrap(), Duration::from_secs(6));
    // The limit agrees: the next 1,000 are due 60 s after the waiter's.
    let denied = budget.check(&[1_000]).unwrap_err();
    assert_eq!(denied.retry_after(), Some(Duration::from_secs(60)));
}

/// Three callers queue behind a spent limit; the first goes away: the
/// other two move up by its slot, and a newcomer queues after them.
#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_moves_those_behind_it_forward() {
    let limiter = Arc::new(KeyedLimiter::new("1/s".parse().unwrap()));
    limiter.acquire(&"k", 1).await.unwrap();
    let start = Instant::now();
    let spawn = |limiter: &Arc<KeyedLimiter<&'static str>>| {
        let limiter = Arc::clone(limiter);
        tokio::spawn(async move {
            limiter.acquire(&"k", 1).await.unwrap();
            start.elapsed()
        })
    };
    let first = spawn(&limiter);
    tokio::task::yield_now().await;
    let second = spawn(&limiter);
    tokio::task::yield_now().await;
    let third = spawn(&limiter);
    tokio::task::yield_now().await;
    assert_eq!(limiter.waiting(), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.abort();
    let newcomer = spawn(&limiter);
    assert_eq!(second.await.unwrap(), Duration::from_secs(1));
    assert_eq!(third.await.unwrap(), Duration::from_secs(2));
    assert_eq!(newcomer.await.unwrap(), Duration::from_secs(3));
    assert_eq!(limiter.waiting(), 0);
}

/// `n` tasks that each run `acquire` and answer how long after now it
/// returned.
fn spawn_timed<F, Fut>(n: usize, acquire: F) -> Vec<tokio::task::JoinHandle<Duration>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    (0..n)
        .map(|_| {
            let acquired = acquire();
            tokio::spawn(async move {
                acquired.await;
                start.elapsed()
            })
        })
        .collect()
}

/// When each task returned, earliest first.
async fn sorted_times(tasks: Vec<tokio::task::JoinHandle<Duration>>) -> Vec<Duration> {
    let mut times = Vec::new();
    for task in tasks {
        times.push(task.await.unwrap());
    }
    times.sort();
    times
}

/// A raised limit re-spaces the waiters already queued at the new rate; a
/// lowered one pushes them back.
#[tokio::test(start_paused = true)]
async fn a_changed_limit_re_spaces_the_queue() {
    let limiter = Arc::new(KeyedLimiter::new("1/s".parse().unwrap()));
    limiter.acquire(&"k", 1).await.unwrap();
    let tasks = spawn_timed(4, || {
        let limiter = Arc::clone(&limiter);
        async move {
            limiter.acquire(&"k", 1).await.unwrap();
        }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(limiter.waiting(), 4);
    // Due at 1, 2, 3, 4 s; at 0.5 s the limit doubles: what is left of
    // each wait halves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    limiter
        .set_quota(&"k", "2/s".parse().unwrap())
        .await
        .unwrap();
    let times = sorted_times(tasks).await;
    assert_eq!(times, [750, 1_250, 1_750, 2_250].map(Duration::from_millis));
    // Lowered again to 1/s: a newcomer queues behind what is spent.
    limiter
        .set_quota(&"k", "1/s".parse().unwrap())
        .await
        .unwrap();
    let denied = limiter.check(&"k", 1).unwrap_err();
    assert!(denied.retry_after().unwrap() > Duration::ZERO);
}

/// Raised twice, a limit re-spaces the queue both times, while another
/// dimension that never binds (a token limit far above what the calls
/// spend, or one so fast it is not counted in units) follows: it must not
/// hold the waiters where the first raise put them.
#[tokio::test(start_paused = true)]
async fn a_limit_raised_twice_re_spaces_the_queue_twice_beside_a_dimension_that_never_binds() {
    for tokens in ["6000/min burst 1", "1000000000/s"] {
        let limits = |requests: &str| {
            Limits::builder()
                .dimension("requests", requests.parse().unwrap())
                .dimension("tokens", tokens.parse().unwrap())
                .build()
                .unwrap()
        };
        let budget = Arc::new(KeyedBudget::<&str>::new(limits("60/min burst 1")));
        let tasks = spawn_timed(9, || {
            let budget = Arc::clone(&budget);
            async move {
                budget
                    .acquire_within(&"k", &[1, 1], Duration::from_secs(60))
                    .await
                    .unwrap();
            }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.waiting(), 8, "{tokens}: the first admitted at once");
        // Due at 1 s to 8 s; the rate doubles, then doubles again.
        budget
            .set_limits(&"k", &limits("120/min burst 1"))
            .await
            .unwrap();
        budget
            .set_limits(&"k", &limits("240/min burst 1"))
            .await
            .unwrap();
        let times = sorted_times(tasks).await;
        let expected: Vec<_> = (0..9).map(|k| Duration::from_millis(250 * k)).collect();
        assert_eq!(times, expected, "{tokens}");
    }
}

/// One `adjust` that gives one dimension a limit and leaves the other
/// alone re-spaces the queue as `set_limits` does; one of the wrong length
/// is refused.
#[tokio::test(start_paused = true)]
async fn one_adjustment_re_spaces_the_queue_like_set_limits() {
    let limits = Limits::builder()
        .dimension("requests", "60/min burst 1".parse().unwrap())
        .dimension("tokens", "6000/min burst 1".parse().unwrap())
        .build()
        .unwrap();
    let budget = Arc::new(KeyedBudget::<&str>::new(limits));
    let wrong = budget.adjust(&"k", &[Change::Keep]).await.unwrap_err();
    assert_eq!(wrong.kind(), DeniedKind::WrongDimensions);
    let tasks = spawn_timed(5, || {
        let budget = Arc::clone(&budget);
        async move {
            budget
                .acquire_within(&"k", &[1, 1], Duration::from_secs(60))
                .await
                .unwrap();
        }
    });
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert_eq!(budget.waiting(), 4, "the first admitted at once");
    // Due at 1 s to 4 s; the request rate doubles, the tokens capped at
    // far more than the waiters take.
    let doubled: Quota = "120/min burst 1".parse().unwrap();
    budget
        .adjust(&"k", &[Change::Limit(doubled), Change::AtMost(1_000)])
        .await
        .unwrap();
    let times = sorted_times(tasks).await;
    let expected: Vec<_> = (0..5).map(|k| Duration::from_millis(500 * k)).collect();
    assert_eq!(times, expected);
}

/// A waiter that a refund moves forward to now is still held by a pause
/// that begins in the same instant (as when a call is refused: its
/// reservation given back, everyone paused): no one goes before a pause
/// ends. (It went 50 ms before this pause's end: the pause moved
/// reservations back by its length, and this one was already due.)
#[tokio::test(start_paused = true)]
async fn a_refund_does_not_let_a_waiter_through_a_pause() {
    let budget = Arc::new(KeyedBudget::<&str>::new(Limits::single(
        "10/s burst 1".parse().unwrap(),
    )));
    let first = budget.acquire(&"k", &[1]).await.unwrap();
    let tasks = spawn_timed(3, || {
        let budget = Arc::clone(&budget);
        async move {
            budget.acquire(&"k", &[1]).await.unwrap();
        }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(budget.waiting(), 3, "due at 100, 200 and 300 ms");
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The first call is refused: its reservation comes back (the waiters
    // move up to 0, 100 and 200 ms) and everyone is paused for 100 ms.
    budget.settle(&"k", first, &[0]).await.unwrap();
    budget
        .pause_for(&"k", Duration::from_millis(100))
        .await
        .unwrap();
    let times = sorted_times(tasks).await;
    assert_eq!(
        times,
        [150, 200, 300].map(Duration::from_millis),
        "none before the pause ends at 150 ms"
    );
}

/// Calls settled lower than they reserved free their place in every
/// dimension, not only in the one refunded: a dimension they did not bind
/// (requests, one every 10 ms) was charged where the tokens put each
/// reservation, and follows the tokens back. Each call reserves a whole
/// burst of tokens (95, 9.5 s of them) and settles at 5 as soon as it is
/// admitted: the next goes 0.5 s later, not where the 95-token schedule
/// put its request (9.51 s, then 19.01 s).
#[tokio::test(start_paused = true)]
async fn a_refund_frees_the_place_in_every_dimension() {
    let limits = Limits::builder()
        .dimension(
            "requests",
            "6000/min".parse::<Quota>().unwrap().burst(1).unwrap(),
        )
        .dimension(
            "tokens",
            "600/min".parse::<Quota>().unwrap().burst(95).unwrap(),
        )
        .build()
        .unwrap();
    let budget = Arc::new(Budget::new(limits));
    let start = Instant::now();
    let first = budget.acquire(&[1, 95]).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..3 {
        let budget = Arc::clone(&budget);
        waiters.push(tokio::spawn(async move {
            let grant = budget.acquire(&[1, 95]).await.unwrap();
            let at = start.elapsed();
            budget.settle(grant, &[1, 5]).await.unwrap();
            at
        }));
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    budget.settle(first, &[1, 5]).await.unwrap();
    let mut admitted = Vec::new();
    for waiter in waiters {
        admitted.push(waiter.await.unwrap());
    }
    admitted.sort();
    assert_eq!(
        admitted,
        [500, 1_000, 1_500].map(Duration::from_millis),
        "each 0.5 s after the one before"
    );
}
