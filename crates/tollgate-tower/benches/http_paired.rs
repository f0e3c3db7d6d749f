//! Requests a second of a hello-world axum app on loopback, bare, with
//! tollgate per peer IP (the `RateLimit` fields on, as by default, and
//! off; each also with its answers turned back into axum's body, which
//! axum then does not box), with tower_governor per peer IP, and with two
//! controls that limit
//! nothing (a layer that passes the response on, and one that appends two
//! static header lines the size of the fields), interleaved finely: the servers run
//! side by side (one runtime thread each, idle but when driven) and each
//! round drives a short batch through each in turn, the order rotated
//! every round. A round's ratio to the bare app's batch beside it cancels
//! the machine's drift, which moves whole runs by a fifth or more here; the
//! median of the rounds' ratios is the figure.
//!
//! Two clients: hyper's (the default), which parses every answer into a
//! header map as an application would, and `lean`, which reads each
//! answer's head in place as load generators such as `wrk` do. Client and
//! servers share the machine's two cores, so the client's cost of each
//! header line it parses is charged to the app that sent it; the lean
//! client charges the least.
//!
//! ```text
//! cargo bench -p tollgate-tower --bench http_paired [-- ROUNDS] [lean] [APP...]
//! ```

#![allow(missing_docs)]

use std::time::Instant;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderName, HeaderValue};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use tollgate_tower::ResponseBody;
use tower::util::MapResponseLayer;
use tower::ServiceBuilder;
use tower_governor::key_extractor::PeerIpKeyExtractor;

mod common;

fn axum_body(response: http::Response<ResponseBody<Body>>) -> Response {
    response.map(Body::from)
}

fn identity(response: Response) -> Response {
    response
}

/// The names as constants, as the layer holds them: what the control
/// costs is the lines', not the parsing of their names.
const POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

fn two_static_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.append(
        POLICY,
        HeaderValue::from_static("\"default\";q=1000000000;w=1"),
    );
    headers.append(
        RATELIMIT,
        HeaderValue::from_static("\"default\";r=999999999;t=0"),
    );
    response
}
use common::{
    connect, governor, hello, quartiles, rounds, send_hello, serve, tollgate_per_ip, Lean,
};

const CONNECTIONS: usize = 16;
/// Requests a batch: about 50 ms of one app.
const BATCH: usize = 1_600;

/// One client connection of either kind.
enum Client {
    Hyper(SendRequest<Empty<Bytes>>),
    Lean(Lean),
}

impl Client {
    async fn connect(addr: std::net::SocketAddr, lean: bool) -> Vec<Self> {
        if lean {
            let mut clients = Vec::with_capacity(CONNECTIONS);
            for _ in 0..CONNECTIONS {
                clients.push(Self::Lean(Lean::connect(addr).await));
            }
            clients
        } else {
            connect(addr, CONNECTIONS)
                .await
                .into_iter()
                .map(Self::Hyper)
                .collect()
        }
    }

    async fn send_hello(&mut self, count: u64) {
        match self {
            Self::Hyper(sender) => send_hello(sender, count).await,
            Self::Lean(lean) => lean.send_hello(count).await,
        }
    }
}

/// Requests a second over one batch, each connection sending its share one
/// request after another; the connections come back for the next batch.
async fn batch(senders: Vec<Client>) -> (Vec<Client>, f64) {
    let start = Instant::now();
    let share = BATCH / senders.len();
    let count = senders.len();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            tokio::spawn(async move {
                sender.send_hello(share as u64).await;
                sender
            })
        })
        .collect();
    let mut senders = Vec::with_capacity(count);
    for task in tasks {
        senders.push(task.await.unwrap());
    }
    let rate = (share * count) as f64 / start.elapsed().as_secs_f64();
    (senders, rate)
}

fn main() {
    let rounds = rounds(120);
    let lean = std::env::args().skip(1).any(|a| a == "lean");
    let apps = [
        ("bare", hello()),
        (
            "tollgate_per_ip_headers",
            hello().layer(tollgate_per_ip(true)),
        ),
        ("tollgate_per_ip", hello().layer(tollgate_per_ip(false))),
        // The same two, their answers turned back into axum's body (which
        // axum then does not box).
        (
            "tollgate_per_ip_headers_axum_body",
            hello().layer(
                ServiceBuilder::new()
                    .map_response(axum_body)
                    .layer(tollgate_per_ip(true)),
            ),
        ),
        (
            "tollgate_per_ip_axum_body",
            hello().layer(
                ServiceBuilder::new()
                    .map_response(axum_body)
                    .layer(tollgate_per_ip(false)),
            ),
        ),
        (
            "tower_governor_per_ip",
            hello().layer(governor(PeerIpKeyExtractor)),
        ),
        // Two controls, no limit: a layer that passes the response on
        // untouched, and one that appends two static header lines as long
        // as the `RateLimit` fields of a full key (what writing, sending
        // and parsing two such lines costs here, whoever writes them).
        (
            "identity_map",
            hello().layer(MapResponseLayer::new(identity)),
        ),
        (
            "two_static_headers",
            hello().layer(MapResponseLayer::new(two_static_headers)),
        ),
    ];
    // Apps named among the arguments run alone beside the bare app (for
    // counting one app's instructions under callgrind).
    let named: Vec<String> = std::env::args().skip(1).collect();
    let some_named = apps.iter().any(|(name, _)| named.iter().any(|n| n == name));
    let servers: Vec<_> = apps
        .into_iter()
        .enumerate()
        .filter(|(i, (name, _))| *i == 0 || !some_named || named.iter().any(|n| n == name))
        .map(|(_, (name, app))| (name, serve(app)))
        .collect();
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        let mut senders = Vec::new();
        for (_, (addr, _)) in &servers {
            senders.push(Client::connect(*addr, lean).await);
        }
        // Warm every app.
        for slot in &mut senders {
            for _ in 0..5 {
                let (back, _) = batch(std::mem::take(slot)).await;
                *slot = back;
            }
        }
        let mut rates = vec![Vec::with_capacity(rounds); senders.len()];
        let start = Instant::now();
        for round in 0..rounds {
            for step in 0..senders.len() {
                let app = (round + step) % senders.len();
                let (back, rate) = batch(std::mem::take(&mut senders[app])).await;
                senders[app] = back;
                rates[app].push(rate);
            }
        }
        let elapsed = start.elapsed();
        println!(
            "{rounds} rounds of {BATCH} requests an app, {CONNECTIONS} connections, {} client, {:.1} s",
            if lean { "lean" } else { "hyper" },
            elapsed.as_secs_f64()
        );
        let (bare_q1, bare_median, bare_q3) = quartiles(rates[0].clone());
        println!(
            "{:<34} median {:>8.0} req/s (quartiles {:.0} - {:.0})",
            servers[0].0, bare_median, bare_q1, bare_q3
        );
        for (app, (name, _)) in servers.iter().enumerate().skip(1) {
            let ratios: Vec<f64> = rates[app]
                .iter()
                .zip(&rates[0])
                .map(|(rate, bare)| rate / bare)
                .collect();
            let (_, median, _) = quartiles(rates[app].clone());
            let (q1, ratio, q3) = quartiles(ratios);
            println!(
                "{name:<34} median {median:>8.0} req/s, vs bare in its round: median {ratio:.3}x (quartiles {q1:.3} - {q3:.3})"
            );
        }
    });
    drop(servers);
}
