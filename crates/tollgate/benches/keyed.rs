//! Keyed limiters against governor's, in one run: `check` on one hot key
//! and over a million distinct keys, memory per key (from the resident set
//! of a fresh process per limiter and key type), and an acquire from a
//! budget of three dimensions.
//!
//! ```text
//! cargo bench -p tollgate --bench keyed
//! ```
//!
//! The memory figures are printed first, as a table; the timings follow.

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hash::Hash;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;
use std::process::Command;

use criterion::{criterion_group, Criterion};
use tollgate::{Budget, KeyedLimiter, Limits, Quota};

/// Fast enough that nothing in a benchmark run is ever denied.
const OPEN: u32 = 1_000_000_000;
const KEYS: u64 = 1_000_000;
/// Set in the child processes that measure memory.
const CHILD: &str = "TOLLGATE_BENCH_RSS";

fn tollgate_keyed<K>() -> KeyedLimiter<K> {
    KeyedLimiter::new(Quota::per_second(u64::from(OPEN)).unwrap())
}

fn governor_keyed<K: Hash + Eq + Clone>() -> governor::DefaultKeyedRateLimiter<K> {
    governor::RateLimiter::keyed(governor::Quota::per_second(NonZeroU32::new(OPEN).unwrap()))
}

/// 1,000 an hour: every check leaves a debt of 3.6 s, so every key stays
/// live (not full) for the whole run, and is admitted every time. With an
/// open quota tollgate would drop each key as full at once, and hold none.
fn tollgate_live<K>() -> KeyedLimiter<K> {
    KeyedLimiter::new(Quota::per_hour(1_000).unwrap())
}

fn governor_live<K: Hash + Eq + Clone>() -> governor::DefaultKeyedRateLimiter<K> {
    governor::RateLimiter::keyed(governor::Quota::per_hour(NonZeroU32::new(1_000).unwrap()))
}

/// The i-th key, spread over the key space.
fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

fn ip(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::try_from(i).unwrap_or(u32::MAX)))
}

fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_check_hot_key");
    let tollgate = tollgate_keyed::<u64>();
    group.bench_function("tollgate", |b| {
        b.iter(|| black_box(tollgate.check(black_box(&7), 1).is_ok()))
    });
    let governor = governor_keyed::<u64>();
    group.bench_function("governor", |b| {
        b.iter(|| black_box(governor.check_key(black_box(&7)).is_ok()))
    });
    group.finish();
}

fn million_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_check_1m_keys");
    // Both hold a million keys before the clock starts; each iteration
    // checks the next one, so nearly every check misses the CPU's caches.
    let tollgate = tollgate_live::<u64>();
    let governor = governor_live::<u64>();
    for i in 0..KEYS {
        let _ = tollgate.check(&key(i), 1);
        let _ = governor.check_key(&key(i));
    }
    group.bench_function("tollgate", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(tollgate.check(&key(i), 1).is_ok())
        })
    });
    group.bench_function("governor", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % KEYS;
            black_box(governor.check_key(&key(i)).is_ok())
        })
    });
    group.finish();
}

fn budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("budget_acquire_3_dimensions");
    let open = |n: u64| Quota::per_second(n).unwrap();
    let limits = Limits::builder()
        .dimension("requests", open(u64::from(OPEN)))
        .dimension("input_tokens", open(u64::from(OPEN)))
        .dimension("output_tokens", open(u64::from(OPEN)))
        .build()
        .unwrap();
    // As in the direct bench: criterion drives a current-thread runtime
    // with a `block_on` per iteration, which would swamp the figure.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let budget = runtime.block_on(async { Budget::new(limits) });
    group.bench_function("tollgate_acquire", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(budget.acquire(black_box(&[1, 12, 4])).await.is_ok()) })
    });
    group.bench_function("tollgate_check", |b| {
        b.iter(|| black_box(budget.check(black_box(&[1, 12, 4])).is_ok()))
    });
    // No peer spends three limits all or nothing; for scale, three of
    // governor's direct limiters checked one after another.
    let quota = governor::Quota::per_second(NonZeroU32::new(OPEN).unwrap());
    let three = [
        governor::RateLimiter::direct(quota),
        governor::RateLimiter::direct(quota),
        governor::RateLimiter::direct(quota),
    ];
    let costs = [1, 12, 4].map(|n| NonZeroU32::new(n).unwrap());
    group.bench_function("governor_three_check_n", |b| {
        b.iter(|| {
            black_box(
                three
                    .iter()
                    .zip(costs)
                    .all(|(limiter, cost)| matches!(limiter.check_n(cost), Ok(Ok(())))),
            )
        })
    });
    group.finish();
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Fills a tollgate limiter with a million keys: "bytes entries evicted".
fn fill_tollgate<K: Hash + Eq + Clone>(key: impl Fn(u64) -> K, before: u64) -> String {
    let limiter = tollgate_live::<K>();
    (0..KEYS).for_each(|i| drop(limiter.check(&key(i), 1)));
    let stats = limiter.stats();
    format!(
        "{:.1} {} {}",
        per_key(before),
        stats.entries,
        stats.evictions
    )
}

/// Fills a governor limiter with a million keys, reported the same way.
fn fill_governor<K: Hash + Eq + Clone>(key: impl Fn(u64) -> K, before: u64) -> String {
    let limiter = governor_live::<K>();
    (0..KEYS).for_each(|i| drop(limiter.check_key(&key(i))));
    format!("{:.1} {} 0", per_key(before), limiter.len())
}

/// Growth of the resident set since `before`, per key.
fn per_key(before: u64) -> f64 {
    rss().saturating_sub(before) as f64 / KEYS as f64
}

/// In a fresh child: fills one limiter with a million keys and prints the
/// growth of the resident set per key.
fn measure(which: &str) {
    let before = rss();
    let report = match which {
        "tollgate-u64" => fill_tollgate(key, before),
        "governor-u64" => fill_governor(key, before),
        "tollgate-ip" => fill_tollgate(ip, before),
        "governor-ip" => fill_governor(ip, before),
        other => format!("unknown {other}"),
    };
    println!("{report}");
}

fn memory_table() {
    let exe = std::env::current_exe().unwrap();
    println!("memory per key, a million distinct keys, from the resident set of a fresh process:");
    println!(
        "{:<14} {:>10} {:>10} {:>10}",
        "limiter", "bytes/key", "entries", "evicted"
    );
    for which in ["tollgate-u64", "governor-u64", "tollgate-ip", "governor-ip"] {
        let out = Command::new(&exe).env(CHILD, which).output().unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [bytes, entries, evicted] = fields[..] {
            println!("{which:<14} {bytes:>10} {entries:>10} {evicted:>10}");
        } else {
            println!("{which:<14} failed: {line}");
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = hot_key, million_keys, budget
}

fn main() {
    if let Ok(which) = std::env::var(CHILD) {
        measure(&which);
        return;
    }
    // `cargo test --benches` runs this with `--bench` absent: keep that quick.
    if std::env::args().any(|a| a == "--bench") {
        memory_table();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
