//! Decisions per second and latency of `RedisStore` against its peers on
//! the same server, through the same Rust client, in the same run:
//!
//! - a `SET` loop (the floor of any round trip);
//! - a fixed window, `INCR` + `EXPIRE` in one pipelined round trip;
//! - go-redis/redis_rate's GCRA: a Lua script written here from its
//!   published algorithm (`TIME`, `GET` the TAT, compare, `SET ... EX`);
//! - the same script in a `tokio::time::timeout`, the bound the store
//!   keeps on each call;
//! - `RedisStore::decide`, one dimension and three.
//!
//! One runtime worker; 40,000 decisions a row over 100,000 keys (each
//! decision admits and writes); one caller, then 64 concurrent callers
//! sharing the multiplexed connection; five rounds, the rows of a round
//! in turn, and the median of each row. The ratios to the peers are the
//! medians of each round's ratio (a row against the peer measured next
//! to it), which a machine's drift from round to round does not move. Each row starts on an empty
//! server (`FLUSHALL SYNC`): the keys a row leaves, and Redis expiring
//! them, would otherwise be charged to the rows after it. Also reads
//! `INFO commandstats` (at most one `EVALSHA` a decision), Redis' CPU a
//! decision, and this process' CPU a decision (Linux).
//!
//! `cargo bench -p tollgate-redis --bench throughput --features testing`
//! (needs redis-server); `-- --callers 1 --rounds 9` runs one count of
//! callers, and more rounds.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;
use tollgate::store::{Decision, Store};
use tollgate::Quota;
use tollgate_redis::RedisStore;

const OPS: usize = 40_000;
const KEYS: usize = 100_000;
const ROUNDS: usize = 5;

/// The value after `--name` among the bench's arguments.
fn option(name: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    let at = args.iter().position(|a| a == name)?;
    args.get(at + 1)?.parse().ok()
}

/// GCRA as go-redis/redis_rate publishes it, written from its algorithm:
/// the TAT in seconds (a float) since an epoch, `TIME` as the clock; a
/// denial writes nothing; the key expires when its limit is full again.
/// KEYS[1]: the key. ARGV: burst, rate, period (seconds), cost.
const REDIS_RATE: &str = r#"
local burst = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local period = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local interval = period / rate
local t = redis.call('TIME')
local now = (t[1] - 1483228800) + t[2] / 1000000
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - interval * burst
local diff = now - allow_at
if diff < 0 then
  return {0, 0, tostring(-diff), tostring(tat - now)}
end
local reset_after = new_tat - now
if reset_after > 0 then
  redis.call('SET', KEYS[1], new_tat, 'EX', math.ceil(reset_after))
end
return {cost, math.floor(diff / interval), '-1', tostring(reset_after)}
"#;

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

/// A row's key for decision `i`: spread over [`KEYS`] keys.
fn key_of(prefix: &str, i: usize) -> String {
    format!("{prefix}{}", (i.wrapping_mul(7_919)) % KEYS)
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

/// This process' CPU time so far (user + system), in seconds, where
/// `/proc` tells it (Linux).
fn own_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command's name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime, in clock ticks of 1/100 s.
    Some((ticks(11)? + ticks(12)?) / 100.0)
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
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// One measured row, with what Redis counted for it.
struct Measured {
    row: Row,
    calls_per_decision: Option<f64>,
    cpu_us: f64,
    client_cpu_us: Option<f64>,
}

async fn row(
    server: &tollgate_redis::testing::RedisServer,
    name: &str,
    callers: usize,
    op: impl Fn(usize) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync + 'static,
    scripted: bool,
) -> Measured {
    server.cli(&["FLUSHALL", "SYNC"]);
    let before = evalsha_calls(server);
    let cpu = server_cpu(server);
    let own = own_cpu();
    let row = measure(name, callers, op).await;
    let decisions = (OPS + 200) as f64;
    let calls = evalsha_calls(server) - before;
    Measured {
        row,
        calls_per_decision: scripted.then(|| calls as f64 / decisions),
        cpu_us: (server_cpu(server) - cpu) * 1e6 / decisions,
        client_cpu_us: own
            .zip(own_cpu())
            .map(|(before, after)| (after - before) * 1e6 / decisions),
    }
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
    let script = redis::Script::new(REDIS_RATE);
    let one = [Quota::per_second(1_000_000).expect("quota")];
    let three = [
        Quota::per_second(1_000_000).expect("quota"),
        Quota::per_second(10_000_000).expect("quota"),
        Quota::per_second(10_000_000).expect("quota"),
    ];
    // rounds[round] = rows in order
    let mut rounds: Vec<Vec<Measured>> = Vec::new();
    let rounds_wanted = option("--rounds").unwrap_or(ROUNDS).max(1);
    let callers_wanted: Vec<usize> = match option("--callers") {
        Some(n) => vec![n.max(1)],
        None => vec![1, 64],
    };
    for round in 0..rounds_wanted {
        let mut rows = Vec::new();
        for &callers in &callers_wanted {
            let c = conn.clone();
            rows.push(
                row(
                    &server,
                    "SET",
                    callers,
                    move |i| {
                        let mut c = c.clone();
                        Box::pin(async move {
                            let _: () = redis::cmd("SET")
                                .arg(key_of("set:", i))
                                .arg("1")
                                .query_async(&mut c)
                                .await
                                .expect("SET");
                        })
                    },
                    false,
                )
                .await,
            );
            let c = conn.clone();
            rows.push(
                row(
                    &server,
                    "fixed window (INCR + EXPIRE)",
                    callers,
                    move |i| {
                        let mut c = c.clone();
                        Box::pin(async move {
                            let key = key_of("win:", i);
                            let (_count, _): (u64, u64) = redis::pipe()
                                .cmd("INCR")
                                .arg(&key)
                                .cmd("EXPIRE")
                                .arg(&key)
                                .arg(60)
                                .query_async(&mut c)
                                .await
                                .expect("INCR");
                        })
                    },
                    false,
                )
                .await,
            );
            let (c, sc) = (conn.clone(), script.clone());
            rows.push(
                row(
                    &server,
                    "redis_rate's GCRA script",
                    callers,
                    move |i| {
                        let (mut c, sc) = (c.clone(), sc.clone());
                        Box::pin(async move {
                            let reply: (u64, u64, String, String) = sc
                                .key(key_of("rate:", i))
                                .arg(1_000_000)
                                .arg(1_000_000)
                                .arg(1)
                                .arg(1)
                                .invoke_async(&mut c)
                                .await
                                .expect("redis_rate");
                            assert_eq!(reply.0, 1, "admitted");
                        })
                    },
                    true,
                )
                .await,
            );
            // The same script with the bound on each call that the store
            // keeps (its timeout): what a bound costs a caller.
            let (c, sc) = (conn.clone(), script.clone());
            rows.push(
                row(
                    &server,
                    "redis_rate's GCRA script in a 1 s timeout",
                    callers,
                    move |i| {
                        let (mut c, sc) = (c.clone(), sc.clone());
                        Box::pin(async move {
                            let reply: (u64, u64, String, String) = tokio::time::timeout(
                                Duration::from_secs(1),
                                sc.key(key_of("rate:", i))
                                    .arg(1_000_000)
                                    .arg(1_000_000)
                                    .arg(1)
                                    .arg(1)
                                    .invoke_async(&mut c),
                            )
                            .await
                            .expect("in time")
                            .expect("redis_rate");
                            assert_eq!(reply.0, 1, "admitted");
                        })
                    },
                    true,
                )
                .await,
            );
            for (name, limits) in [
                ("RedisStore, 1 dimension", &one[..]),
                ("RedisStore, 3 dimensions", &three[..]),
            ] {
                let s = store.clone();
                let limits: Vec<Quota> = limits.to_vec();
                let prefix = format!("r{round}k");
                rows.push(
                    row(
                        &server,
                        name,
                        callers,
                        move |i| {
                            let s = s.clone();
                            let limits = limits.clone();
                            let key = key_of(&prefix, i);
                            Box::pin(async move {
                                let costs = vec![1u64; limits.len()];
                                let d = s
                                    .decide(&key, &limits, &costs, Duration::ZERO)
                                    .await
                                    .expect("decide");
                                assert!(matches!(d, Decision::Admit(_)));
                            })
                        },
                        true,
                    )
                    .await,
                );
            }
        }
        rounds.push(rows);
    }
    println!();
    println!("| case | decisions/s (median of {rounds_wanted}) | range | p50 | p99 | EVALSHA a decision | Redis CPU a decision | client CPU a decision | vs redis_rate | vs SET |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let per_callers = rounds[0].len() / callers_wanted.len();
    for (index, _) in rounds[0].iter().enumerate() {
        let mut rates: Vec<f64> = rounds.iter().map(|r| r[index].row.per_second).collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        let base = index - index % per_callers;
        // The median of the round-by-round ratios to the row at `peer`.
        let ratio_to = |peer: usize| {
            let mut v: Vec<f64> = rounds
                .iter()
                .map(|r| r[index].row.per_second / r[peer].row.per_second)
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let last = &rounds[rounds.len() / 2][index];
        println!(
            "| {} | {:.0} | {:.0}-{:.0} | {:.0} µs | {:.0} µs | {} | {:.1} µs | {} | {:.2}x | {:.2}x |",
            last.row.name,
            median,
            rates[0],
            rates[rates.len() - 1],
            last.row.p50.as_secs_f64() * 1e6,
            last.row.p99.as_secs_f64() * 1e6,
            last.calls_per_decision
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.3}")),
            last.cpu_us,
            last.client_cpu_us
                .map_or_else(|| "-".to_owned(), |c| format!("{c:.1} µs")),
            ratio_to(base + 2),
            ratio_to(base),
        );
    }
}
