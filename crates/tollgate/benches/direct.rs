//! The direct limiter against its peers, in one run: `check` on the admit
//! and deny paths, on one thread and on two contending threads, and
//! `acquire().await` at a rate it never has to wait for.
//!
//! Each check is consumed as a user usually does, as `is_ok()`: tollgate
//! derives its snapshot's figures lazily and governor builds its `NotUntil`
//! only on a denial, so neither pays for what is not read.
//!
//! ```text
//! cargo bench -p tollgate --bench direct
//! ```

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tollgate::{Quota, RateLimiter, TokioClock};

/// Fast enough that nothing in a benchmark run is ever denied.
const OPEN: u32 = 1_000_000_000;

fn open_quota() -> Quota {
    Quota::per_second(u64::from(OPEN)).unwrap()
}

fn closed_quota() -> Quota {
    Quota::per_hour(1).unwrap()
}

fn governor_open() -> governor::DefaultDirectRateLimiter {
    governor::RateLimiter::direct(governor::Quota::per_second(NonZeroU32::new(OPEN).unwrap()))
}

fn governor_closed() -> governor::DefaultDirectRateLimiter {
    let limiter =
        governor::RateLimiter::direct(governor::Quota::per_hour(NonZeroU32::new(1).unwrap()));
    let _ = limiter.check();
    limiter
}

fn leaky_open() -> leaky_bucket::RateLimiter {
    leaky_bucket::RateLimiter::builder()
        .max(usize::MAX / 2)
        .initial(usize::MAX / 2)
        .refill(1)
        .interval(Duration::from_millis(1))
        .build()
}

fn leaky_closed() -> leaky_bucket::RateLimiter {
    leaky_bucket::RateLimiter::builder()
        .max(1)
        .initial(0)
        .refill(1)
        .interval(Duration::from_secs(3600))
        .build()
}

fn tollgate_closed() -> RateLimiter {
    let limiter = RateLimiter::new(closed_quota());
    let _ = limiter.check(1);
    limiter
}

fn check_one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("check_admit_1_thread");
    let limiter = RateLimiter::new(open_quota());
    group.bench_function("tollgate", |b| {
        b.iter(|| black_box(limiter.check(1).is_ok()))
    });
    let fast = RateLimiter::builder(open_quota())
        .clock(tollgate::FastClock::new())
        .build();
    group.bench_function("tollgate_fast_clock", |b| {
        b.iter(|| black_box(fast.check(1).is_ok()))
    });
    let tokio_clocked = RateLimiter::builder(open_quota())
        .clock(TokioClock::new())
        .build();
    group.bench_function("tollgate_tokio_clock", |b| {
        b.iter(|| black_box(tokio_clocked.check(1).is_ok()))
    });
    let governor = governor_open();
    group.bench_function("governor", |b| {
        b.iter(|| black_box(governor.check().is_ok()))
    });
    let leaky = leaky_open();
    group.bench_function("leaky_bucket", |b| {
        b.iter(|| black_box(leaky.try_acquire(1)))
    });
    group.finish();

    let mut group = c.benchmark_group("check_deny_1_thread");
    let limiter = tollgate_closed();
    group.bench_function("tollgate", |b| {
        b.iter(|| black_box(limiter.check(1).is_err()))
    });
    let governor = governor_closed();
    group.bench_function("governor", |b| {
        b.iter(|| black_box(governor.check().is_err()))
    });
    let leaky = leaky_closed();
    group.bench_function("leaky_bucket", |b| {
        b.iter(|| black_box(leaky.try_acquire(1)))
    });
    group.finish();
}

/// Two threads calling `op` `iters` times each, started together; the time
/// is the wall time of the slower, so one iteration is two concurrent calls.
fn two_threads<L: Send + Sync + 'static>(
    limiter: Arc<L>,
    iters: u64,
    op: fn(&L) -> bool,
) -> Duration {
    let barrier = Arc::new(Barrier::new(2));
    let worker = {
        let (limiter, barrier) = (Arc::clone(&limiter), Arc::clone(&barrier));
        std::thread::spawn(move || {
            barrier.wait();
            for _ in 0..iters {
                black_box(op(&limiter));
            }
        })
    };
    barrier.wait();
    let start = Instant::now();
    for _ in 0..iters {
        black_box(op(&limiter));
    }
    worker.join().unwrap();
    start.elapsed()
}

fn check_two_threads(c: &mut Criterion) {
    for (name, open) in [
        ("check_admit_2_threads", true),
        ("check_deny_2_threads", false),
    ] {
        let mut group = c.benchmark_group(name);
        let limiter = Arc::new(if open {
            RateLimiter::new(open_quota())
        } else {
            tollgate_closed()
        });
        group.bench_function("tollgate", |b| {
            b.iter_custom(|iters| two_threads(Arc::clone(&limiter), iters, |l| l.check(1).is_ok()))
        });
        let governor = Arc::new(if open {
            governor_open()
        } else {
            governor_closed()
        });
        group.bench_function("governor", |b| {
            b.iter_custom(|iters| two_threads(Arc::clone(&governor), iters, |l| l.check().is_ok()))
        });
        let leaky = Arc::new(if open { leaky_open() } else { leaky_closed() });
        group.bench_function("leaky_bucket", |b| {
            b.iter_custom(|iters| two_threads(Arc::clone(&leaky), iters, |l| l.try_acquire(1)))
        });
        group.finish();
    }
}

fn acquire_async(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("acquire_await");
    // Made on the runtime, as an application would: a multi-thread runtime
    // gets the fast clock.
    let limiter = runtime.block_on(async { RateLimiter::new(open_quota()) });
    group.bench_function("tollgate", |b| {
        b.to_async(&runtime)
            .iter(|| async { limiter.acquire(1).await.is_ok() })
    });
    let governor = governor_open();
    group.bench_function("governor_until_ready", |b| {
        b.to_async(&runtime)
            .iter(|| async { governor.until_ready().await })
    });
    let leaky = leaky_open();
    group.bench_function("leaky_bucket", |b| {
        b.to_async(&runtime)
            .iter(|| async { leaky.acquire(1).await })
    });
    group.finish();
}

/// What one clock read costs here, for reading the figures above.
fn clocks(c: &mut Criterion) {
    let mut group = c.benchmark_group("clock_read");
    let origin = Instant::now();
    group.bench_function("std_instant", |b| b.iter(|| black_box(origin.elapsed())));
    let fast = tollgate::FastClock::new();
    group.bench_function("tollgate_fast_clock", |b| {
        b.iter(|| black_box(tollgate::Clock::now(&fast)))
    });
    let tokio_clock = TokioClock::new();
    group.bench_function("tollgate_tokio_clock", |b| {
        b.iter(|| black_box(tollgate::Clock::now(&tokio_clock)))
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config();
    targets = check_one_thread, check_two_threads, acquire_async, clocks
}
criterion_main!(benches);
