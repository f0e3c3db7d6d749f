//! Instructions per request through each layer, counted by callgrind: a
//! figure that, unlike time on a shared machine, does not move with the
//! neighbours' load. Each stack runs `N` requests, driven by hand as in the
//! `layer` benchmark; the script beside it counts only the loop that sends
//! them, runs two counts under callgrind and divides the difference.
//!
//! ```text
//! bash crates/tollgate-tower/benches/instructions.sh
//! ```

#![allow(missing_docs)]

use std::hint::black_box;

use axum::body::Body;
use http::{Request, Response};
use tollgate_tower::{PeerIp, RateLimitLayer};
use tower::{Layer, Service};
use tower_governor::key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor};

mod common;
use common::{bare, call, governor, open_quota, request};

/// The stacks, by the names the script passes.
const STACKS: [&str; 9] = [
    "bare",
    "tower_governor_global",
    "tower_governor_per_ip",
    "tower_governor_per_ip_headers",
    "tollgate_global",
    "tollgate_per_ip",
    "tollgate_global_headers",
    "tollgate_per_ip_headers",
    "tollgate_per_ip_headers_draining",
];

/// Sends `n` requests: the one function callgrind counts (the script
/// passes `--toggle-collect`), so that set-up, the clock's calibration
/// among it, is not counted.
#[inline(never)]
fn run<S, B>(mut service: S, n: u64)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    for _ in 0..n {
        black_box(call(&mut service, request()));
    }
}

fn tollgate(per_ip: bool, headers: bool) -> RateLimitLayer<PeerIp> {
    RateLimitLayer::builder(open_quota())
        .headers_on_success(headers)
        .key(PeerIp::new())
        .max_keys(if per_ip { 1_000 } else { 1 })
        .build()
        .unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let stack = args.next().unwrap_or_default();
    let n: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100_000);
    match stack.as_str() {
        "bare" => run(bare(), n),
        "tower_governor_global" => run(governor(GlobalKeyExtractor).layer(bare()), n),
        "tower_governor_per_ip" => run(governor(PeerIpKeyExtractor).layer(bare()), n),
        "tower_governor_per_ip_headers" => run(common::governor_with_headers().layer(bare()), n),
        "tollgate_global" => run(
            RateLimitLayer::builder(open_quota())
                .headers_on_success(false)
                .build()
                .unwrap()
                .layer(bare()),
            n,
        ),
        "tollgate_global_headers" => run(RateLimitLayer::new(open_quota()).layer(bare()), n),
        "tollgate_per_ip" => run(tollgate(true, false).layer(bare()), n),
        "tollgate_per_ip_headers" => run(tollgate(true, true).layer(bare()), n),
        // A limit that every request drains by one (its clock stands
        // still): each response's `RateLimit` item differs from the one
        // before, so none is a clone of a value the thread wrote already.
        "tollgate_per_ip_headers_draining" => run(
            RateLimitLayer::builder(open_quota())
                .key(PeerIp::new())
                .max_keys(1_000)
                .clock(tollgate::ManualClock::new())
                .build()
                .unwrap()
                .layer(bare()),
            n,
        ),
        // Under `cargo bench` with no stack named: run each once, briefly,
        // so that the target stays working.
        "" => {
            for stack in STACKS {
                let status = std::process::Command::new(std::env::current_exe().unwrap())
                    .args([stack, "1000"])
                    .status()
                    .unwrap();
                assert!(status.success(), "{stack}");
            }
        }
        other => panic!("unknown stack {other:?}; one of {STACKS:?}"),
    }
}
