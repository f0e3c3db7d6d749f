//! Instructions per `check` of the direct limiter and of governor's,
//! counted by callgrind: a figure that, unlike time on a shared machine,
//! does not move with the neighbours' load. Each case runs `N` checks; the
//! script beside it runs two counts under callgrind and divides the
//! difference, so set-up cancels out.
//!
//! ```text
//! bash crates/tollgate/benches/direct_instructions.sh
//! ```

#![allow(missing_docs)]

use std::hint::black_box;
use std::num::NonZeroU32;

use tollgate::{Quota, RateLimiter};

/// Runs `check` `n` times: the one function callgrind counts (the script
/// passes `--toggle-collect`), so that set-up, the clock's calibration
/// among it, is not counted.
#[inline(never)]
fn measured(n: u64, check: impl Fn() -> bool) {
    for _ in 0..n {
        black_box(check());
    }
}

/// The cases, by the names the script passes.
const CASES: [&str; 5] = [
    "nothing",
    "governor_admit",
    "tollgate_admit",
    "governor_deny",
    "tollgate_deny",
];

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let case = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    let open = 1_000_000_000;
    match case.as_str() {
        "nothing" => measured(n, || true),
        "governor_admit" => {
            let limiter = governor::RateLimiter::direct(governor::Quota::per_second(
                NonZeroU32::new(open).unwrap(),
            ));
            measured(n, || limiter.check().is_ok());
        }
        "tollgate_admit" => {
            let limiter = RateLimiter::new(Quota::per_second(u64::from(open)).unwrap());
            measured(n, || limiter.check(1).is_ok());
        }
        "governor_deny" => {
            let limiter = governor::RateLimiter::direct(governor::Quota::per_hour(
                NonZeroU32::new(1).unwrap(),
            ));
            let _ = limiter.check();
            measured(n, || limiter.check().is_err());
        }
        "tollgate_deny" => {
            let limiter = RateLimiter::new(Quota::per_hour(1).unwrap());
            let _ = limiter.check(1);
            measured(n, || limiter.check(1).is_err());
        }
        other => {
            eprintln!("unknown case {other:?}; one of {CASES:?}");
            std::process::exit(2);
        }
    }
}
