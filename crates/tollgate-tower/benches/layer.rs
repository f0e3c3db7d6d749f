//! The rate-limit layer's cost, against tower's `RateLimit` and
//! tower_governor, in one run:
//!
//! - `layer_overhead`: one request through a tower service stack, polled
//!   by hand (no runtime, no I/O), for the bare service and each layer.
//!   Requests are made outside the timing, responses dropped inside it. Each
//!   layer's overhead is its time less the bare service's.
//! - `layer_parts`: the key extraction and the keyed decision alone, and
//!   governor's keyed decision, to show what the per-IP path is made of.
//! - `http_hello`: requests a second of a hello-world axum app on loopback,
//!   served by one runtime thread and driven by 16 keep-alive connections
//!   from another: bare, with tollgate per IP and with tower_governor per
//!   IP, in turn, three rounds, so that the machine's drift cancels in the
//!   mean of each kind.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench layer
//! ```
//!
//! Every limiter is set so that nothing is ever denied: this measures the
//! cost of letting a request through, which is what every request pays.

#![allow(missing_docs)] // criterion_group! generates an undocumented function.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use criterion::{criterion_group, BatchSize, Bencher, Criterion, Throughput};
use http::{Request, Response};
use tollgate_tower::{Key, KeyExtractor, PeerIp, RateLimitLayer};
use tower::{Layer, Service};
use tower_governor::key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor};

mod common;
use common::{bare, call, governor, hello, open_quota, request, serve, tollgate_per_ip, OPEN};

/// Times one request through the service; requests are made outside the
/// timing, responses dropped inside it.
fn time<S, B>(b: &mut Bencher<'_>, service: &mut S)
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    b.iter_batched(request, |r| drop(call(service, r)), BatchSize::SmallInput);
}

fn overhead(c: &mut Criterion) {
    // tower's RateLimit makes its timer on creation: it needs a runtime.
    // The others are made outside it, as in a server on a multi-thread
    // runtime (inside a current-thread runtime, tollgate's default clock
    // follows Tokio's pausable clock instead of the CPU's counter).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("layer_overhead");
    group.bench_function("bare", |b| {
        let mut service = bare();
        time(b, &mut service);
    });
    group.bench_function("tower_limit_global", |b| {
        let _entered = runtime.enter();
        let mut service =
            tower::limit::RateLimitLayer::new(OPEN, Duration::from_secs(1)).layer(bare());
        time(b, &mut service);
    });
    group.bench_function("tower_governor_global", |b| {
        time(b, &mut governor(GlobalKeyExtractor).layer(bare()));
    });
    group.bench_function("tower_governor_per_ip", |b| {
        time(b, &mut governor(PeerIpKeyExtractor).layer(bare()));
    });
    group.bench_function("tower_governor_per_ip_headers", |b| {
        let mut service = common::governor_with_headers().layer(bare());
        time(b, &mut service);
    });
    for (name, per_ip, headers) in [
        ("tollgate_global", false, false),
        ("tollgate_per_ip", true, false),
        ("tollgate_global_headers", false, true),
        ("tollgate_per_ip_headers", true, true),
    ] {
        group.bench_function(name, |b| {
            let builder = RateLimitLayer::builder(open_quota()).headers_on_success(headers);
            if per_ip {
                time(
                    b,
                    &mut builder.key(PeerIp::new()).build().unwrap().layer(bare()),
                );
            } else {
                time(b, &mut builder.build().unwrap().layer(bare()));
            }
        });
    }
    group.finish();
}

/// The parts of the per-IP path, apart: what the layer cannot go below.
fn parts(c: &mut Criterion) {
    let mut group = c.benchmark_group("layer_parts");
    let request = request();
    let peer_ip = PeerIp::new();
    group.bench_function("extract_peer_ip", |b| {
        b.iter(|| black_box(peer_ip.extract(black_box(&request)).is_ok()));
    });
    let layer = RateLimitLayer::builder(open_quota())
        .key(PeerIp::new())
        .build()
        .unwrap();
    let limiter = layer.limiter();
    let key = Key::from(IpAddr::from([192, 0, 2, 7]));
    group.bench_function("keyed_check", |b| {
        b.iter(|| black_box(limiter.check(black_box(&key), 1).is_ok()));
    });
    let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
        std::num::NonZeroU32::new(1_000_000_000).unwrap(),
    ));
    let ip = IpAddr::from([192, 0, 2, 7]);
    group.bench_function("governor_keyed_check", |b| {
        b.iter(|| black_box(governor.check_key(black_box(&ip)).is_ok()));
    });
    group.finish();
}

const CONNECTIONS: u64 = 16;

/// Sends `total` requests over the connections, each one after another on
/// its connection; returns the time taken.
async fn drive(addr: SocketAddr, total: u64) -> Duration {
    let senders = common::connect(addr, CONNECTIONS as usize).await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut sender) in senders.into_iter().enumerate() {
        let share = total / CONNECTIONS + u64::from((i as u64) < total % CONNECTIONS);
        tasks.push(tokio::spawn(async move {
            common::send_hello(&mut sender, share).await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

fn http(c: &mut Criterion) {
    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("http_hello");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));
    // Bare, tollgate and tower_governor in turn, three rounds: the machine's
    // drift over the run (warm-up, the other core's load) falls on every
    // kind alike, and the mean of the rounds compares them.
    for round in 1..=3 {
        let apps: [(&str, Router); 3] = [
            ("bare", hello()),
            (
                "tollgate_per_ip_headers",
                hello().layer(tollgate_per_ip(true)),
            ),
            (
                "tower_governor_per_ip",
                hello().layer(governor(PeerIpKeyExtractor)),
            ),
        ];
        for (name, app) in apps {
            let (addr, server) = serve(app);
            group.bench_function(format!("round{round}/{name}"), |b| {
                b.iter_custom(|iters| client.block_on(drive(addr, iters)));
            });
            drop(server);
        }
    }
    group.finish();
}

criterion_group!(benches, overhead, parts, http);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
