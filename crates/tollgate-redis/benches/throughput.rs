//! Decisions per second and latency of `RedisStore` against plain Redis
//! commands on the same server, in the same run: a `SET` loop and a
//! hand-written `INCR` + `EXPIRE` fixed window (one pipelined round trip).
//! One caller on the connection, then 64 concurrent callers sharing the
//! multiplexed connection. Also reads `INFO commandstats` to show at most
//! one round trip (one `EVALSHA`) per decision: fewer when concurrent
//! decisions share a call.
//!
//! `cargo bench -p tollgate-redis --bench throughput` (needs redis-server).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tollgate::store::{Decision, Store};
use tollgate::Quota;
use tollgate_redis::RedisStore;

const OPS: usize = 20_000;
const KEYS: usize = 1_000;

struct Row {
    name: String,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure<F, Fut>(name: &str, callers: usize, op: F) -> Row
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    // Warm up.
    for i in 0..200 {
        op(i).await;
    }
    let start = Instant::now();
    let per_caller = OPS / callers;
    let mut tasks = Vec::new();
    for c in 0..callers {
        let op = Arc::clone(&op);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_caller);
            for i in 0..per_caller {
                let t = Instant::now();
                op(c * per_caller + i).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(OPS);
    for task in tasks {
        all.extend(task.await.expect("caller"));
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Row {
        name: format!(
            "{name}, {callers} caller{}",
            if callers == 1 { "" } else { "s" }
        ),
        per_second: all.len() as f64 / elapsed.as_secs_f64(),
        p50: pick(0.50),
        p99: pick(0.99),
    }
}

/// Redis' own CPU time so far (user + system), in seconds.
fn server_cpu(server: &tollgate_redis::testing::RedisServer) -> f64 {
    let info = server.cli(&["INFO", "cpu"]);
    let field = |name: &str| -> f64 {
        info.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    field("used_cpu_user:") + field("used_cpu_sys:")
}

fn evalsha_calls(server: &tollgate_redis::testing::RedisServer) -> u64 {
    let info = server.cli(&["INFO", "commandstats"]);
    info.lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let server = tollgate_redis::testing::RedisServer::start();
    let client = redis::Client::open(server.url()).expect("client");
    let conn = ConnectionManager::new(client).await.expect("connect");
    let store = RedisStore::builder(server.url())
        .timeout(Duration::from_secs(1))
        .connect()
        .await
        .expect("store");
    let one = [Quota::per_second(1_000_000).expect("quota")];
    let three = [
        Quota::per_second(1_000_000).expect("quota"),
        Quota::per_second(10_000_000).expect("quota"),
        Quota::per_second(10_000_000).expect("quota"),
    ];
    let mut rows = Vec::new();
    for callers in [1, 64] {
        let c = conn.clone();
        rows.push(
            measure("SET", callers, move |i| {
                let mut c = c.clone();
                async move {
                    let _: () = redis::cmd("SET")
                        .arg(format!("set:{}", i % KEYS))
                        .arg("1")
                        .query_async(&mut c)
                        .await
                        .expect("SET");
                }
            })
            .await,
        );
        let c = conn.clone();
        rows.push(
            measure("INCR + EXPIRE window", callers, move |i| {
                let mut c = c.clone();
                async move {
                    let key = format!("win:{}", i % KEYS);
                    let (_count, _): (u64, u64) = redis::pipe()
                        .cmd("INCR")
                        .arg(&key)
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(60)
                        .query_async(&mut c)
                        .await
                        .expect("INCR");
                }
            })
            .await,
        );
        for (name, limits) in [
            ("RedisStore, 1 dimension", &one[..]),
            ("RedisStore, 3 dimensions", &three[..]),
        ] {
            let s = store.clone();
            let limits: Vec<Quota> = limits.to_vec();
            let before = evalsha_calls(&server);
            let cpu = server_cpu(&server);
            let row = measure(name, callers, move |i| {
                let s = s.clone();
                let limits = limits.clone();
                async move {
                    let costs = vec![1u64; limits.len()];
                    let key = format!("k{}", i % KEYS);
                    let d = s
                        .decide(&key, &limits, &costs, Duration::ZERO)
                        .await
                        .expect("decide");
                    assert!(matches!(d, Decision::Admit(_)));
                }
            })
            .await;
            let calls = evalsha_calls(&server) - before;
            let cpu = server_cpu(&server) - cpu;
            let decisions = OPS + 200;
            println!(
                "{}: {calls} EVALSHA for {decisions} decisions ({:.1} a call), \
                 {:.1} µs of Redis CPU a decision",
                row.name,
                decisions as f64 / calls as f64,
                cpu * 1e6 / decisions as f64
            );
            rows.push(row);
        }
    }
    println!();
    println!("| case | decisions/s | p50 | p99 | vs SET (same callers) |");
    println!("|---|---:|---:|---:|---:|");
    for chunk in rows.chunks(4) {
        let set = chunk[0].per_second;
        for row in chunk {
            println!(
                "| {} | {:.0} | {:.0} µs | {:.0} µs | {:.2}x |",
                row.name,
                row.per_second,
                row.p50.as_secs_f64() * 1e6,
                row.p99.as_secs_f64() * 1e6,
                row.per_second / set
            );
        }
    }
}
