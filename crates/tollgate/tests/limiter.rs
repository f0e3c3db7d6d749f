//! The direct limiter through its public API: virtual time, FIFO order,
//! cancellation, bounded waits, threads.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, task};
use tollgate::{Algorithm, DeniedKind, ManualClock, Quota, RateLimiter};

const ALL: [Algorithm; 5] = [
    Algorithm::Gcra,
    Algorithm::TokenBucket,
    Algorithm::LeakyBucket,
    Algorithm::FixedWindow,
    Algorithm::SlidingWindow,
];

fn quota(text: &str) -> Quota {
    text.parse().unwrap()
}

#[tokio::test(start_paused = true)]
async fn hundred_tasks_at_10_per_second_finish_fifo_100ms_apart() {
    let limiter = Arc::new(RateLimiter::new(quota("10/s burst 1")));
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..100u64 {
        let limiter = Arc::clone(&limiter);
        let tx = tx.clone();
        tokio::spawn(async move {
            limiter.acquire(1).await.unwrap();
            tx.send((i, start.elapsed())).unwrap();
        });
    }
    drop(tx);
    let mut finished = Vec::new();
    while let Some(done) = rx.recv().await {
        finished.push(done);
    }
    assert_eq!(finished.len(), 100);
    for (order, (i, at)) in finished.into_iter().enumerate() {
        assert_eq!(i, order as u64, "served out of order");
        assert_eq!(at, Duration::from_millis(100 * i), "task {i}");
    }
}

#[tokio::test(start_paused = true)]
async fn no_burst_at_start_up_with_a_burst_of_one() {
    let limiter = RateLimiter::new(quota("5/s burst 1"));
    let start = Instant::now();
    limiter.acquire(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert!(limiter.check(1).is_err());
    limiter.acquire(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_frees_its_slot_and_those_behind_move_up() {
    let limiter = RateLimiter::new(quota("10/s burst 1"));
    limiter.acquire(1).await.unwrap();
    let start = Instant::now();
    let mut second = task::spawn(limiter.acquire(1));
    let mut third = task::spawn(limiter.acquire(1));
    assert_pending!(second.poll());
    assert_pending!(third.poll());
    assert_eq!(limiter.waiting(), 2);

    drop(second);
    assert!(
        third.is_woken(),
        "the waiter behind was not told it moved up"
    );
    assert_eq!(limiter.waiting(), 1);

    tokio::time::advance(Duration::from_millis(99)).await;
    assert_pending!(third.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_ready!(third.poll()).unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));

    // The slot the dropped waiter held is free: the next is due at 200 ms.
    let mut fourth = task::spawn(limiter.acquire(1));
    assert_pending!(fourth.poll());
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_ready!(fourth.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_bounded_acquire_fails_at_once_with_retry_after() {
    let limiter = RateLimiter::new(quota("4/s burst 1"));
    limiter.acquire(1).await.unwrap();
    let start = Instant::now();
    let denied = limiter
        .acquire_within(1, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO, "it waited");
    assert_eq!(denied.kind(), DeniedKind::RateLimited);
    assert_eq!(denied.retry_after(), Some(Duration::from_millis(250)));
    assert_eq!(limiter.waiting(), 0, "a failed acquire reserved a slot");

    // Within the bound it waits, in line.
    limiter
        .acquire_within(1, Duration::from_millis(250))
        .await
        .unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn seed_three_per_one_and_a_half_seconds() {
    let limiter = RateLimiter::new(quota("3/1.5s"));
    let start = Instant::now();
    let mut times = Vec::new();
    for _ in 0..7 {
        limiter.acquire(1).await.unwrap();
        times.push(start.elapsed().as_millis());
    }
    assert_eq!(times, [0, 0, 0, 500, 1000, 1500, 2000]);
}

#[tokio::test(start_paused = true)]
async fn seed_llm_tokens_are_paced_at_100k_per_second() {
    let limiter = RateLimiter::new(quota("100000/s"));
    let start = Instant::now();
    let costs = [
        5_000u64, 30_000, 12_000, 30_000, 30_000, 8_000, 25_000, 30_000, 5_000,
    ];
    let mut spent = 0;
    for cost in costs {
        limiter.acquire(cost).await.unwrap();
        spent += cost;
        let due = Duration::from_micros(spent.saturating_sub(100_000) * 10);
        assert_eq!(
            start.elapsed(),
            due.max(Duration::ZERO),
            "after {spent} tokens"
        );
    }
    let never = limiter.acquire(100_001).await.unwrap_err();
    assert_eq!(never.kind(), DeniedKind::CostExceedsBurst);
    assert!(never.to_string().contains("100001"), "{never}");
}

#[tokio::test(start_paused = true)]
async fn every_algorithm_serves_waiters_in_order() {
    for algorithm in ALL {
        let limiter = Arc::new(
            RateLimiter::builder(quota("2/s"))
                .algorithm(algorithm)
                .build(),
        );
        let start = Instant::now();
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move {
                    limiter.acquire(1).await.unwrap();
                    start.elapsed()
                })
            })
            .collect();
        let mut times = Vec::new();
        for handle in handles {
            times.push(handle.await.unwrap());
        }
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "{algorithm:?}: {times:?}"
        );
        // Six at 2/s with a burst of 2: the last is due at 2 s; the sliding
        // window, which counts the sub-window it is unsure of, takes a tenth
        // of a window longer per window.
        let last = if algorithm == Algorithm::SlidingWindow {
            2200
        } else {
            2000
        };
        assert_eq!(
            times[5],
            Duration::from_millis(last),
            "{algorithm:?}: {times:?}"
        );
    }
}

#[test]
fn two_threads_admit_exactly_the_bound() {
    for algorithm in ALL {
        let clock = ManualClock::new();
        let limiter = Arc::new(
            RateLimiter::builder(quota("1000/s burst 50"))
                .algorithm(algorithm)
                .clock(clock.clone())
                .build(),
        );
        let hammer = |limiter: Arc<RateLimiter<ManualClock>>| {
            std::thread::spawn(move || (0..50_000).filter(|_| limiter.check(1).is_ok()).count())
        };
        let count = |limiter: &Arc<RateLimiter<ManualClock>>| {
            let a = hammer(Arc::clone(limiter));
            let b = hammer(Arc::clone(limiter));
            a.join().unwrap() + b.join().unwrap()
        };
        assert_eq!(count(&limiter), 50, "{algorithm:?}: the burst");
        // The buckets refill one unit per 1 ms interval; the windows free
        // the whole burst once the admissions leave the window (at 50 ms for
        // the fixed window, 55 ms for the sliding one, which counts the
        // sub-window it is unsure of).
        clock.advance(Duration::from_millis(49));
        let at_49ms = count(&limiter);
        clock.advance(Duration::from_millis(6));
        let at_55ms = count(&limiter);
        let expected = match algorithm {
            Algorithm::FixedWindow | Algorithm::SlidingWindow => (0, 50),
            _ => (49, 6),
        };
        assert_eq!((at_49ms, at_55ms), expected, "{algorithm:?}");
    }
}

#[test]
fn acquire_blocking_waits_in_line_on_a_manual_clock() {
    let clock = ManualClock::new();
    let limiter = RateLimiter::builder(quota("10/s burst 1"))
        .clock(clock.clone())
        .build();
    for i in 0..5u64 {
        limiter.acquire_blocking(1).unwrap();
        assert_eq!(clock.now_duration(), Duration::from_millis(100 * i));
    }
    assert_eq!(
        limiter.acquire_blocking(2).unwrap_err().kind(),
        DeniedKind::CostExceedsBurst
    );
}

#[test]
fn acquire_blocking_threads_share_one_queue() {
    let limiter = Arc::new(RateLimiter::builder(quota("1000/s burst 1")).build());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            std::thread::spawn(move || {
                for _ in 0..5 {
                    limiter.acquire_blocking(1).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(limiter.waiting(), 0);
}

#[test]
fn acquire_outside_a_runtime_is_an_error_not_a_panic() {
    let limiter = RateLimiter::builder(quota("1/s"))
        .clock(ManualClock::new())
        .build();
    let mut first = task::spawn(limiter.acquire(1));
    assert_ready!(first.poll()).unwrap();
    let mut second = task::spawn(limiter.acquire(1));
    let denied = assert_ready!(second.poll()).unwrap_err();
    assert_eq!(denied.kind(), DeniedKind::NoRuntime);
    assert_eq!(limiter.waiting(), 0, "the failed acquire kept its slot");
    // The slot it gave back is the next one.
    assert_eq!(
        limiter.check(1).unwrap_err().retry_after(),
        Some(Duration::from_secs(1))
    );
}

#[test]
fn a_cost_of_zero_reads_without_spending() {
    let limiter = RateLimiter::builder(quota("10/s"))
        .clock(ManualClock::new())
        .build();
    limiter.check(4).unwrap();
    let peek = limiter.check(0).unwrap();
    assert_eq!((peek.limit(), peek.remaining()), (10, 6));
    assert_eq!(limiter.snapshot(), peek);
    assert_eq!(limiter.check(6).unwrap().remaining(), 0);
}

#[test]
fn huge_costs_and_times_never_panic() {
    for algorithm in ALL {
        let clock = ManualClock::new();
        let limiter = RateLimiter::builder(quota("1/100000d"))
            .algorithm(algorithm)
            .clock(clock.clone())
            .build();
        let _ = limiter.check(u64::MAX);
        let _ = limiter.check(1);
        clock.advance(Duration::MAX);
        let _ = limiter.check(1);
        let _ = limiter.check(0).map(|s| s.remaining());
        let _ = limiter.acquire_blocking(1);
    }
}

trait NowDuration {
    fn now_duration(&self) -> Duration;
}

impl NowDuration for ManualClock {
    fn now_duration(&self) -> Duration {
        use tollgate::Clock;
        Duration::from_nanos(self.now())
    }
}

/// A clock near the end of time and a quota of one a nanosecond: every
/// algorithm answers, and a window that can never move on denies.
#[test]
fn every_algorithm_answers_at_the_end_of_time() {
    for algorithm in ALL {
        let clock = ManualClock::new();
        clock.set(u64::MAX - 2);
        let limiter = RateLimiter::builder(Quota::new(1, Duration::from_nanos(1)).unwrap())
            .algorithm(algorithm)
            .clock(clock.clone())
            .build();
        let mut admitted = 0;
        for _ in 0..4 {
            admitted += usize::from(limiter.check(1).is_ok());
            clock.advance(Duration::from_nanos(1));
        }
        assert!((1..=4).contains(&admitted), "{algorithm:?}: {admitted}");
        // Time cannot move past its end; the answer still comes.
        let _ = limiter.check(1);
    }
}

/// What every limiter has, on the direct one: 64 callers refused together
/// that each pause for one second hold it one second, not 64; then the
/// waiters leave one by one at the quota's rate, for every algorithm that
/// paces (the windows admit as their window allows).
#[tokio::test(start_paused = true)]
async fn concurrent_pauses_take_the_longest_and_release_paced() {
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::LeakyBucket,
    ] {
        let limiter = Arc::new(
            RateLimiter::builder(quota("10/s burst 10"))
                .algorithm(algorithm)
                .build(),
        );
        let start = Instant::now();
        let pauses: Vec<_> = (0..64)
            .map(|_| {
                let limiter = Arc::clone(&limiter);
                tokio::spawn(async move { limiter.pause_for(Duration::from_secs(1)).await })
            })
            .collect();
        for pause in pauses {
            pause.await.unwrap().unwrap();
        }
        assert_eq!(
            limiter.paused_for(),
            Duration::from_secs(1),
            "{algorithm:?}"
        );
        assert_eq!(limiter.stats().pauses, 64);
        assert_eq!(
            limiter.check(1).unwrap_err().retry_after(),
            Some(Duration::from_secs(1)),
            "{algorithm:?}"
        );
        let mut done = Vec::new();
        for _ in 0..3 {
            limiter.acquire(1).await.unwrap();
            done.push(start.elapsed().as_millis());
        }
        assert_eq!(done, [1000, 1100, 1200], "{algorithm:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_window_holds_every_decision_until_the_pause_ends() {
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        let limiter = RateLimiter::builder(quota("10/s"))
            .algorithm(algorithm)
            .build();
        limiter
            .pause_for(Duration::from_millis(1500))
            .await
            .unwrap();
        let denied = limiter.check(1).unwrap_err();
        assert_eq!(denied.retry_after(), Some(Duration::from_millis(1500)));
        let start = Instant::now();
        limiter.acquire(1).await.unwrap();
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(1500),
            "{algorithm:?}"
        );
    }
}

/// A reservation settled lower than reserved moves the waiter behind it
/// forward; one settled higher pushes later callers back.
#[tokio::test(start_paused = true)]
async fn settle_refunds_move_waiters_up_and_charges_push_back() {
    let limiter = Arc::new(RateLimiter::new(quota("10/s burst 10")));
    let start = Instant::now();
    limiter.acquire(10).await.unwrap(); // an estimate of 10
    let waiter = {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            limiter.acquire(5).await.unwrap();
            start.elapsed()
        })
    };
    tokio::task::yield_now().await;
    assert_eq!(limiter.waiting(), 1);
    limiter.settle(10, 2).await.unwrap(); // used 2: 8 come back
    assert_eq!(waiter.await.unwrap(), Duration::ZERO);
    // 2 + 5 spent; a charge of 20 more puts the limit 2.7 s in debt.
    limiter.settle(5, 25).await.unwrap();
    assert_eq!(
        limiter.check(1).unwrap_err().retry_after(),
        Some(Duration::from_millis(1800))
    );
}

#[tokio::test(start_paused = true)]
async fn observe_learns_a_lower_limit_and_set_quota_raises_it() {
    let limiter = RateLimiter::new(quota("10/s"));
    limiter
        .observe(&tollgate::Snapshot::new(5, 0, Duration::from_secs(1)))
        .await
        .unwrap();
    assert_eq!(limiter.current_quota(), quota("5/s"));
    assert_eq!(
        limiter.check(1).unwrap_err().retry_after(),
        Some(Duration::from_millis(200))
    );
    limiter.set_quota(quota("100/s")).await.unwrap();
    assert_eq!(limiter.current_quota(), quota("100/s"));
    limiter.clear_quota().await.unwrap();
    assert_eq!(limiter.current_quota(), quota("10/s"));
}

#[test]
fn the_direct_limiter_counts() {
    let limiter = RateLimiter::builder(quota("2/s"))
        .clock(ManualClock::new())
        .counted(true)
        .build();
    for _ in 0..3 {
        let _ = limiter.check(1);
    }
    limiter.acquire_blocking(1).unwrap();
    let stats = limiter.stats();
    assert_eq!((stats.admitted, stats.denied), (3, 1));
    assert_eq!((stats.waits, stats.waited), (1, Duration::from_millis(500)));
    // Not counted: waits only.
    let quiet = RateLimiter::builder(quota("2/s"))
        .clock(ManualClock::new())
        .build();
    for _ in 0..3 {
        let _ = quiet.check(1);
    }
    quiet.acquire_blocking(1).unwrap();
    let stats = quiet.stats();
    assert_eq!((stats.admitted, stats.denied, stats.waits), (0, 0, 1));
}

/// Counting holds on every path a decision takes: the lock-free one, the
/// general one while the limiter holds a limit of its own, an acquire
/// admitted at once, and the lock-free one again once the limit is cleared.
#[test]
fn counting_holds_on_every_path() {
    let clock = ManualClock::new();
    let limiter = RateLimiter::builder(quota("2/s"))
        .clock(clock.clone())
        .counted(true)
        .build();
    assert!(limiter.check(1).is_ok());
    tokio_test::block_on(limiter.set_quota(quota("1/s"))).unwrap();
    // A second of debt at the new rate: the next unit is a second away.
    assert!(limiter.check(1).is_err());
    clock.advance(Duration::from_secs(1));
    tokio_test::block_on(limiter.acquire(1)).unwrap();
    tokio_test::block_on(limiter.clear_quota()).unwrap();
    assert!(limiter.check(1).is_ok());
    assert!(limiter.check(1).is_err());
    clock.advance(Duration::from_secs(1));
    tokio_test::block_on(limiter.acquire(1)).unwrap();
    let stats = limiter.stats();
    assert_eq!((stats.admitted, stats.denied, stats.waits), (4, 2, 0));
}

/// Threads that count at once each count on a stripe of their own; the
/// sum is exact.
#[test]
fn counts_from_many_threads_add_up() {
    let limiter = Arc::new(
        RateLimiter::builder(quota("1000/s burst 1000"))
            .clock(ManualClock::new())
            .counted(true)
            .build(),
    );
    let threads: Vec<_> = (0..12)
        .map(|_| {
            let limiter = Arc::clone(&limiter);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let _ = limiter.check(1);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let stats = limiter.stats();
    assert_eq!((stats.admitted, stats.denied), (1000, 1400));
}

/// The keyed limiter blocks too, in the same queue as its async waiters.
#[test]
fn a_keyed_limiter_acquires_blocking_on_a_manual_clock() {
    let clock = ManualClock::new();
    let limiter = tollgate::KeyedLimiter::builder(quota("10/s burst 1"))
        .clock(clock.clone())
        .build();
    for i in 0..3u64 {
        limiter.acquire_blocking(&"a", 1).unwrap();
        limiter.acquire_blocking(&"b", 1).unwrap();
        assert_eq!(clock.now_duration(), Duration::from_millis(100 * i));
    }
    assert_eq!(
        limiter.acquire_blocking(&"a", 2).unwrap_err().kind(),
        DeniedKind::CostExceedsBurst
    );
}

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Check(u64),
    Settle(u64, u64),
    Observe(u64, u64),
    Pause(u64),
    SetQuota(u64),
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        (0u64..3_000).prop_map(Op::Advance),
        (0u64..12).prop_map(Op::Check),
        ((0u64..12), (0u64..30)).prop_map(|(r, u)| Op::Settle(r, u)),
        ((0u64..20), (0u64..20)).prop_map(|(l, r)| Op::Observe(l, r)),
        (0u64..2_000).prop_map(Op::Pause),
        (1u64..30).prop_map(Op::SetQuota),
    ]
}

proptest::proptest! {
    /// The buckets are GCRA written two other ways, changes included: any
    /// run of checks, settles, observations, pauses and new quotas gets
    /// the same answers from all three.
    #[test]
    fn the_buckets_answer_as_gcra_through_every_change(ops in proptest::collection::vec(op(), 1..60)) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let answers: Vec<Vec<String>> = [Algorithm::Gcra, Algorithm::TokenBucket, Algorithm::LeakyBucket]
            .into_iter()
            .map(|algorithm| {
                let clock = ManualClock::new();
                clock.set(1_000_000_000);
                let limiter = RateLimiter::builder(quota("10/s"))
                    .algorithm(algorithm)
                    .clock(clock.clone())
                    .build();
                let mut seen = Vec::new();
                for op in &ops {
                    let answer = match *op {
                        Op::Advance(ms) => {
                            clock.advance(Duration::from_millis(ms));
                            continue;
                        }
                        Op::Check(cost) => format!("{:?}", limiter.check(cost).map_err(|d| (d.kind(), d.retry_after()))),
                        Op::Settle(reserved, used) => format!("{:?}", runtime.block_on(limiter.settle(reserved, used)).is_ok()),
                        Op::Observe(limit, remaining) => {
                            let snapshot = tollgate::Snapshot::new(limit, remaining, Duration::from_secs(1));
                            format!("{:?}", runtime.block_on(limiter.observe(&snapshot)).is_ok())
                        }
                        Op::Pause(ms) => format!("{:?}", runtime.block_on(limiter.pause_for(Duration::from_millis(ms))).is_ok()),
                        Op::SetQuota(n) => format!(
                            "{:?}",
                            runtime.block_on(limiter.set_quota(Quota::per_second(n).unwrap())).is_ok()
                        ),
                    };
                    seen.push(format!("{answer} {:?}", limiter.snapshot()));
                }
                seen
            })
            .collect();
        proptest::prop_assert_eq!(&answers[0], &answers[1]);
        proptest::prop_assert_eq!(&answers[0], &answers[2]);
    }
}
