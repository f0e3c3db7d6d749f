//! The direct limiter's `check` against governor's, timed in alternation:
//! each round times a batch of one, then a batch of the other (the order
//! swapped every round), so that the machine's drift, which moves a
//! criterion group by a fifth between runs here, falls on both alike. It
//! prints the median of the rounds' ratios, and their quartiles.
//!
//! ```text
//! cargo bench -p tollgate --bench paired
//! ```

#![allow(missing_docs)]

use std::hint::black_box;
use std::num::NonZeroU32;
use std::time::Instant;

use tollgate::{Quota, RateLimiter};

const ROUNDS: usize = 2_000;
const BATCH: u32 = 20_000;

/// Nanoseconds a call of `f`, over one batch.
fn batch(f: &impl Fn() -> bool) -> f64 {
    let start = Instant::now();
    for _ in 0..BATCH {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / f64::from(BATCH)
}

fn paired(name: &str, tollgate: impl Fn() -> bool, governor: impl Fn() -> bool) {
    // Warm both.
    for _ in 0..20 {
        batch(&tollgate);
        batch(&governor);
    }
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut t_sum, mut g_sum) = (0.0, 0.0);
    for round in 0..ROUNDS {
        let (t, g) = if round % 2 == 0 {
            let t = batch(&tollgate);
            (t, batch(&governor))
        } else {
            let g = batch(&governor);
            (batch(&tollgate), g)
        };
        t_sum += t;
        g_sum += g;
        ratios.push(t / g);
    }
    ratios.sort_by(f64::total_cmp);
    let at = |q: usize| ratios[ROUNDS * q / 4];
    println!(
        "{name:<12} tollgate {:>6.2} ns  governor {:>6.2} ns  ratio median {:.3}x (quartiles {:.3} - {:.3})",
        t_sum / ROUNDS as f64,
        g_sum / ROUNDS as f64,
        at(2),
        at(1),
        at(3),
    );
}

fn main() {
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f));
    if wanted("check_admit") {
        let open = 1_000_000_000;
        let tollgate = RateLimiter::new(Quota::per_second(u64::from(open)).unwrap());
        let governor = governor::RateLimiter::direct(governor::Quota::per_second(
            NonZeroU32::new(open).unwrap(),
        ));
        paired(
            "check_admit",
            || tollgate.check(1).is_ok(),
            || governor.check().is_ok(),
        );
    }
    if wanted("check_deny") {
        let tollgate = RateLimiter::new(Quota::per_hour(1).unwrap());
        let _ = tollgate.check(1);
        let governor =
            governor::RateLimiter::direct(governor::Quota::per_hour(NonZeroU32::new(1).unwrap()));
        let _ = governor.check();
        paired(
            "check_deny",
            || tollgate.check(1).is_err(),
            || governor.check().is_err(),
        );
    }
}
