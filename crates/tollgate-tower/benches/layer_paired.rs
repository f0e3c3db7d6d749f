//! Time per request through each layer, interleaved finely: every stack is
//! built once, and each round times a short batch through each in turn
//! (the order rotated every round), so that the machine's drift, which
//! moves whole criterion runs by a fifth or more here, falls on every stack
//! alike. A stack's overhead in a round is its time per request less the
//! bare service's in the same round; the figure is the median over the
//! rounds, with the quartiles beside it. The requests of a batch are made
//! before its timing starts, the responses dropped inside it, as in the
//! `layer` benchmark.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench layer_paired [-- ROUNDS]
//! cargo bench -p tollgate-tower --bench layer_paired --features metrics [-- ROUNDS]
//! ```
//!
//! With the `metrics` feature a recorder is installed first (`metrics-util`'s
//! debugging recorder: a counter is an atomic add, as in Prometheus'
//! exporter), so that every decision is counted.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use axum::body::Body;
use http::{Request, Response};
use tollgate_tower::{PeerIp, RateLimitLayer};
use tower::{Layer, Service};
use tower_governor::key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor};

mod common;
use common::{bare, call, governor, open_quota, quartiles, request, rounds};

/// Requests a batch: a few tens of microseconds of one stack.
const BATCH: usize = 200;

/// One stack, type-erased: times a batch and answers nanoseconds a request.
type Timed = Box<dyn FnMut(&mut Vec<Request<Body>>) -> f64>;

fn timed<S, B>(mut service: S) -> Timed
where
    S: Service<Request<Body>, Response = Response<B>> + 'static,
    S::Error: std::fmt::Debug,
{
    Box::new(move |requests: &mut Vec<Request<Body>>| {
        let n = requests.len();
        let start = Instant::now();
        for request in requests.drain(..) {
            drop(black_box(call(&mut service, request)));
        }
        start.elapsed().as_nanos() as f64 / n as f64
    })
}

fn tollgate_global(headers: bool) -> RateLimitLayer {
    RateLimitLayer::builder(open_quota())
        .headers_on_success(headers)
        .build()
        .unwrap()
}

fn tollgate_per_ip(headers: bool) -> RateLimitLayer<PeerIp> {
    RateLimitLayer::builder(open_quota())
        .headers_on_success(headers)
        .key(PeerIp::new())
        .max_keys(1_000)
        .build()
        .unwrap()
}

fn main() {
    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        metrics::set_global_recorder(recorder).expect("the only recorder");
        println!("metrics: a recorder is installed; every decision is counted");
    }
    // Under `cargo bench` with no count: a short run.
    let rounds = rounds(200);
    let mut stacks: Vec<(&str, Timed)> = vec![
        ("bare", timed(bare())),
        (
            "tower_governor global",
            timed(governor(GlobalKeyExtractor).layer(bare())),
        ),
        (
            "tower_governor per IP",
            timed(governor(PeerIpKeyExtractor).layer(bare())),
        ),
        (
            "tower_governor per IP, headers",
            timed(common::governor_with_headers().layer(bare())),
        ),
        (
            "tollgate global",
            timed(tollgate_global(false).layer(bare())),
        ),
        (
            "tollgate per IP",
            timed(tollgate_per_ip(false).layer(bare())),
        ),
        (
            "tollgate global, fields",
            timed(tollgate_global(true).layer(bare())),
        ),
        (
            "tollgate per IP, fields",
            timed(tollgate_per_ip(true).layer(bare())),
        ),
    ];
    let count = stacks.len();
    let mut times = vec![Vec::with_capacity(rounds); count];
    let mut requests = Vec::with_capacity(BATCH);
    // A first round warms every stack (its key, its allocations) unrecorded.
    for round in 0..=rounds {
        let mut this = vec![0.0; count];
        for k in 0..count {
            let i = (k + round) % count;
            requests.extend((0..BATCH).map(|_| request()));
            this[i] = (stacks[i].1)(&mut requests);
        }
        if round > 0 {
            for (i, t) in this.into_iter().enumerate() {
                times[i].push(t);
            }
        }
    }
    let bare_times = times[0].clone();
    println!("{rounds} rounds of {BATCH} requests a stack, interleaved");
    println!(
        "{:34} {:>12} {:>14} {:>20}",
        "stack", "ns/request", "overhead (ns)", "overhead quartiles"
    );
    let mut overheads = Vec::with_capacity(count);
    for (i, (name, _)) in stacks.iter().enumerate() {
        let (_, median, _) = quartiles(times[i].clone());
        let over: Vec<f64> = times[i]
            .iter()
            .zip(&bare_times)
            .map(|(t, b)| t - b)
            .collect();
        let (q1, q2, q3) = quartiles(over);
        overheads.push(q2);
        println!(
            "{name:34} {median:12.1} {q2:14.1} {:>20}",
            format!("{q1:.1} - {q3:.1}")
        );
    }
    let ratio = |a: usize, b: usize| overheads[a] / overheads[b];
    println!();
    println!("tollgate's overhead / tower_governor's (medians):");
    println!("  global, no headers:              {:.2}x", ratio(4, 1));
    println!("  per IP, no headers:              {:.2}x", ratio(5, 2));
    println!("  per IP, fields / governor's headers: {:.2}x", ratio(7, 3));
    // Keep the stacks alive to the end, their state beside the figures.
    stacks.clear();
}
