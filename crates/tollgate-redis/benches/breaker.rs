//! The store's circuit breaker against `failsafe`'s, on what every call
//! to Redis pays while Redis answers: asking whether a call may go, then
//! telling the breaker it succeeded. One thread, then two threads on one
//! breaker (a store shared by a runtime's workers). Rounds interleaved;
//! the median of each.
//!
//! ```text
//! cargo bench -p tollgate-redis --bench breaker [-- ROUNDS]
//! ```

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use failsafe::failure_policy::consecutive_failures;
use failsafe::{backoff, Config, StateMachine};

// The store's breaker, compiled into the bench (it is internal to the
// crate).
#[path = "../src/breaker.rs"]
#[allow(dead_code, unreachable_pub, unused_imports)]
mod breaker;
use breaker::Breaker;

const ITERATIONS: u32 = 2_000_000;

type Theirs = StateMachine<failsafe::failure_policy::ConsecutiveFailures<backoff::Constant>, ()>;

fn theirs() -> Theirs {
    Config::new()
        .failure_policy(consecutive_failures(
            5,
            backoff::constant(Duration::from_secs(1)),
        ))
        .build()
}

/// `threads` threads, each `ITERATIONS` calls of `call`: nanoseconds a
/// call, the slowest thread's.
fn time<T: Send + Sync + 'static>(shared: &Arc<T>, threads: usize, call: fn(&T) -> bool) -> f64 {
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let shared = Arc::clone(shared);
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut allowed = 0u32;
                for _ in 0..ITERATIONS {
                    allowed += u32::from(call(black_box(&shared)));
                }
                assert_eq!(allowed, ITERATIONS, "a closed breaker lets every call go");
                start.elapsed()
            })
        })
        .collect();
    let slowest = handles
        .into_iter()
        .map(|h| h.join().expect("a timing thread"))
        .max()
        .unwrap_or_default();
    slowest.as_nanos() as f64 / f64::from(ITERATIONS)
}

fn ours(breaker: &Breaker) -> bool {
    let allowed = breaker.allow();
    if allowed {
        breaker.success();
    }
    allowed
}

fn failsafe_call(breaker: &Theirs) -> bool {
    let allowed = breaker.is_call_permitted();
    if allowed {
        breaker.on_success();
    }
    allowed
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(9);
    let a_breaker = Arc::new(Breaker::new(5, Duration::from_secs(1)));
    let b_breaker = Arc::new(theirs());
    println!("| a call's breaker, closed (median of {rounds}) | tollgate-redis, ns | failsafe 1.3, ns | ratio |");
    println!("|---|---:|---:|---:|");
    for threads in [1, 2] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                a.push(time(&a_breaker, threads, ours));
                b.push(time(&b_breaker, threads, failsafe_call));
            } else {
                b.push(time(&b_breaker, threads, failsafe_call));
                a.push(time(&a_breaker, threads, ours));
            }
        }
        let (a, b) = (median(a), median(b));
        println!(
            "| {threads} thread{} | {a:.1} | {b:.1} | {:.2}x |",
            if threads == 1 { "" } else { "s" },
            b / a
        );
    }
}
