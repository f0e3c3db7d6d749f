//! Quota efficiency as a matrix: for each way a provider counts (bucket,
//! sliding or fixed window; slices of 1 s or 10 s; `max_tokens` or the
//! written output charged; `remaining` exact or rounded) and each header
//! dialect, with one, two and four clients, how close to the allowed rate
//! the middleware runs, how many attempts are refused and how many calls
//! are lost. Every provider is the workspace's scripted one
//! (`tollgate-mock`), reached in process (no socket).
//!
//! Each row runs over each store:
//! - **memory**: each client its own middleware and nothing shared, on
//!   Tokio's paused clock: the figures are the same run after run;
//! - **fleet** (rows of several clients only): each client its own
//!   middleware over one in-memory store that says the row's clients share
//!   it, as a Redis store counts its fleet: the Redis rows' logic on the
//!   paused clock, the same run after run;
//! - **redis**: each client its own middleware over one `redis-server` of
//!   the bench's own (`RedisStore`, one prefix a row), on the real clock
//!   (Redis keeps time): figures vary a little between runs.
//!
//! `cargo bench -p tollgate-reqwest --bench efficiency [-- WORDS]`: the rows
//! whose name holds WORDS (`memory`, `fleet` or `redis` choose a store).
//! `TOLLGATE_SECONDS=N` runs each row for N seconds of calls at the
//! allowed rate instead of 12. `TOLLGATE_FAULT=kill` kills the Redis a
//! third into each Redis row and starts it again, empty, 5 s later;
//! `TOLLGATE_FAULT=pause` pauses it for 1.5 s then (`CLIENT PAUSE`).

#[path = "../tests/fleet_store/mod.rs"]
mod fleet_store;
#[path = "../tests/mock/mod.rs"]
mod mock;
#[path = "../tests/transport/mod.rs"]
mod transport;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use mock::{Charge, Config, Counting, Host, Rounding, Style};
use serde_json::{json, Value};
use tokio::time::Instant;
use tollgate_redis::testing::RedisServer;
use tollgate_redis::RedisStore;
use tollgate_reqwest::{RateLimitMiddleware, Usage};

const SECOND: Duration = Duration::from_secs(1);

fn body(max_tokens: Option<u64>) -> Value {
    let mut body = json!({
        "model": "mock-1",
        "messages": [{"role": "user", "content": "Hello, please count to three."}]
    });
    if let Some(max_tokens) = max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// The calls a second every row allows.
const RATE: u64 = 100;

#[derive(Clone)]
struct Scenario {
    name: String,
    config: Config,
    clients: usize,
    max_tokens: Option<u64>,
    /// The requests a minute become this, a third of the way in.
    change_to: Option<u64>,
    host: Host,
}

struct Row {
    calls: usize,
    answered: usize,
    attempts: u64,
    refused: u64,
    share: f64,
}

fn dialect_name(style: Style) -> &'static str {
    match style {
        Style::OpenAi => "OpenAI",
        Style::Anthropic => "Anthropic",
        Style::Ietf => "IETF",
        Style::Mistral => "Mistral",
        Style::RemainingOnly => "remaining only (Azure)",
        Style::Bare => "no headers",
        Style::AzureTenSeconds => "Azure's ten seconds",
        Style::Gemini => "Gemini",
        Style::OpenRouter => "OpenRouter",
        Style::MinuteNoReset => "minute, no reset",
        Style::GroqDaily => "Groq (day)",
    }
}

fn counting_name(counting: Counting) -> String {
    let kind = match counting.report {
        mock::Report::Bucket => "bucket",
        mock::Report::Sliding => "sliding",
        mock::Report::Fixed => "fixed",
        mock::Report::Slice => "slice",
    };
    format!("{kind} {}s", counting.slice.as_secs())
}

const DIALECTS: [Style; 11] = [
    Style::OpenAi,
    Style::Anthropic,
    Style::Ietf,
    Style::Mistral,
    Style::RemainingOnly,
    Style::Bare,
    Style::AzureTenSeconds,
    Style::Gemini,
    Style::OpenRouter,
    Style::MinuteNoReset,
    Style::GroqDaily,
];

fn countings() -> [Counting; 4] {
    [
        Counting::bucket(SECOND),
        Counting::sliding(SECOND),
        Counting::fixed(SECOND),
        Counting::fixed(10 * SECOND),
    ]
}

/// Tokens of the matrix's prompt (29 bytes, one message).
const PROMPT: u64 = 12;

fn scenarios() -> Vec<Scenario> {
    let mut rows = Vec::new();
    let row = |name: String, config: Config| Scenario {
        name,
        config,
        clients: 1,
        max_tokens: Some(60),
        change_to: None,
        host: Host::Provider,
    };
    // Requests bind: every dialect, every counting.
    for dialect in DIALECTS {
        for counting in countings() {
            rows.push(row(
                format!(
                    "requests bind, {}, {}",
                    dialect_name(dialect),
                    counting_name(counting)
                ),
                Config::new(RATE * 60, 100_000_000)
                    .dialect(dialect)
                    .counting(counting),
            ));
        }
    }
    // Tokens bind: the dialects that tell tokens, and none; each counting;
    // `max_tokens` charged, or the 20 tokens written.
    for dialect in [
        Style::OpenAi,
        Style::Anthropic,
        Style::Ietf,
        Style::Mistral,
        Style::RemainingOnly,
        Style::Bare,
    ] {
        for counting in countings().into_iter().take(3) {
            for (charge, output) in [(Charge::MaxTokens, 60), (Charge::Written, 20)] {
                let mut config = Config::new(RATE * 120, (PROMPT + output) * RATE * 60)
                    .dialect(dialect)
                    .tokens(counting)
                    .charge(charge)
                    .writes(20);
                let mut name = format!(
                    "tokens bind, {}, {}, {} charged",
                    dialect_name(dialect),
                    counting_name(counting),
                    if charge == Charge::MaxTokens {
                        "max_tokens"
                    } else {
                        "output"
                    }
                );
                if dialect == Style::Anthropic {
                    config = config.rounding(Rounding::Thousands);
                    name.push_str(", remaining in thousands");
                }
                rows.push(row(name, config));
            }
        }
    }
    // Anthropic's rounded `remaining` at a host of no known provider:
    // nothing shows that what was written is charged, not the bound.
    let mut scenario = row(
        "tokens bind, Anthropic's headers at an unknown host, bucket 1s, output charged, remaining in thousands"
            .to_owned(),
        Config::new(RATE * 120, (PROMPT + 20) * RATE * 60)
            .dialect(Style::Anthropic)
            .tokens(countings()[0])
            .charge(Charge::Written)
            .writes(20)
            .rounding(Rounding::Thousands),
    );
    scenario.host = Host::Unknown;
    rows.push(scenario);
    // Bodies without `max_tokens`: the provider charges 16 or 64 (a
    // default bound of its own, less or more than the 20 written), or what
    // was written; the middleware must learn it.
    for dialect in [Style::OpenAi, Style::Anthropic, Style::Bare] {
        for (charge, output) in [
            (Charge::MaxTokens, 16),
            (Charge::MaxTokens, 64),
            (Charge::Written, 20),
        ] {
            let mut config = Config::new(RATE * 120, (PROMPT + output) * RATE * 60)
                .dialect(dialect)
                .charge(charge)
                .writes(20);
            config.absent = output;
            let charged = if charge == Charge::MaxTokens {
                output.to_string()
            } else {
                "output".to_owned()
            };
            let mut scenario = row(
                format!(
                    "tokens bind, no max_tokens, {}, {charged} charged",
                    dialect_name(dialect),
                ),
                config,
            );
            scenario.max_tokens = None;
            rows.push(scenario);
        }
        let mut scenario = row(
            format!("requests bind, no max_tokens, {}", dialect_name(dialect)),
            Config::new(RATE * 60, 100_000_000).dialect(dialect),
        );
        scenario.max_tokens = None;
        rows.push(scenario);
    }
    // Several clients of one key.
    for clients in [2, 4] {
        for dialect in [
            Style::OpenAi,
            Style::Anthropic,
            Style::Ietf,
            Style::RemainingOnly,
            Style::Bare,
            Style::Gemini,
            Style::GroqDaily,
        ] {
            for counting in countings().into_iter().take(3) {
                let mut scenario = row(
                    format!(
                        "{clients} clients, {}, {}",
                        dialect_name(dialect),
                        counting_name(counting)
                    ),
                    Config::new(RATE * 60, 100_000_000)
                        .dialect(dialect)
                        .counting(counting),
                );
                scenario.clients = clients;
                rows.push(scenario);
            }
        }
    }
    // Limits that change, and a dialect read without knowing its host.
    for (from, to) in [(RATE * 60, RATE * 120), (RATE * 120, RATE * 60)] {
        for dialect in [Style::OpenAi, Style::RemainingOnly, Style::Bare] {
            let mut scenario = row(
                format!(
                    "requests a minute {from} to {to}, {}",
                    dialect_name(dialect)
                ),
                Config::new(from, 100_000_000).dialect(dialect),
            );
            scenario.change_to = Some(to);
            rows.push(scenario);
        }
    }
    let mut scenario = row(
        "requests bind, Azure's ten seconds at an unknown host".to_owned(),
        Config::new(RATE * 60, 100_000_000).dialect(Style::AzureTenSeconds),
    );
    scenario.host = Host::Unknown;
    rows.push(scenario);
    rows
}

/// Runs `s` for `seconds` of calls at the allowed rate, its clients over
/// the Redis at `store` (its URL and the row's prefix; `None`: each its
/// own memory).
async fn run(s: &Scenario, seconds: u64, store: Shared<'_>) -> Row {
    let payload = body(s.max_tokens);
    let config = s.config.clone().latency(Duration::from_millis(120));
    let (base, provider) = mock::serve(config, s.host);
    let allowed_at_start = provider.allowed_rate(&payload);
    // Three slices at least, whatever `seconds` says.
    let slice = s.config.requests.slice.max(s.config.tokens.slice).as_secs();
    let seconds = seconds.max(3 * slice);
    let calls = usize::try_from(seconds).unwrap_or(1) * (allowed_at_start.round() as usize).max(1);
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let payload = Arc::new(payload.to_string());
    let start = Instant::now();
    let change_at = Duration::from_secs(seconds / 3);
    if let Some(to) = s.change_to {
        let provider = Arc::clone(&provider);
        tokio::spawn(async move {
            tokio::time::sleep(change_at).await;
            provider.set_rpm(to);
        });
    }
    let mut tasks = Vec::new();
    let mut fleet = match store {
        Shared::Fleet => fleet_store::Fleet::shared(u32::try_from(s.clients).unwrap_or(1)),
        _ => Vec::new(),
    };
    for _ in 0..s.clients {
        let builder = RateLimitMiddleware::builder().headroom(0.02);
        // Each client a process of its own: over Redis, its own store
        // (counted in the fleet) on the row's prefix.
        let middleware = match store {
            Shared::Redis(prefix) => {
                let store = RedisStore::builder(&prefix.0)
                    .prefix(prefix.1.as_str())
                    .connect()
                    .await
                    .expect("connect to the bench's redis-server");
                transport::client(builder.build_with_store(store))
            }
            Shared::Fleet => match fleet.pop() {
                Some(store) => transport::client(builder.build_with_store(store)),
                None => unreachable!("one handle per client"),
            },
            Shared::Nothing => transport::client(builder.build()),
        };
        let client = Arc::new(middleware);
        for _ in 0..calls / s.clients {
            let (client, url, payload) =
                (Arc::clone(&client), Arc::clone(&url), Arc::clone(&payload));
            tasks.push(tokio::spawn(async move {
                let response = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(payload.to_string())
                    .send()
                    .await
                    .map_err(|e| eprintln!("a call lost: {e}"))
                    .ok()?;
                let ok = response.status() == 200;
                let usage = response.extensions().get::<Usage>().cloned();
                let bytes = response.bytes().await.ok()?;
                if let (true, Some(usage)) = (ok, usage) {
                    let value: Value = serde_json::from_slice(&bytes).ok()?;
                    usage.report_body(&value).await;
                }
                ok.then_some(())
            }));
        }
    }
    let mut answered = 0;
    for task in tasks {
        if let Ok(Some(())) = task.await {
            answered += 1;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let counts = provider.counts();
    let calls = calls / s.clients * s.clients;
    // The allowed rate over the run, in the long run (a first slice's
    // burst can take a short run past 100%); before and after a change,
    // weighted.
    let allowed = match s.change_to {
        None => allowed_at_start,
        Some(to) => {
            let before = allowed_at_start * change_at.as_secs_f64();
            let after = (to as f64 / 60.0) * (elapsed - change_at.as_secs_f64()).max(0.0);
            (before + after) / elapsed
        }
    };
    Row {
        calls,
        answered,
        attempts: counts.ok + counts.limited,
        refused: counts.limited,
        share: calls as f64 / elapsed / allowed,
    }
}

/// What a row's clients share.
#[derive(Clone, Copy)]
enum Shared<'a> {
    /// Nothing: each its own memory.
    Nothing,
    /// One in-memory store that says the row's clients share it, as a
    /// Redis store counts its fleet: the Redis rows' logic on the paused
    /// clock.
    Fleet,
    /// The Redis at this URL, under this prefix.
    Redis(&'a (String, String)),
}

/// A fault of the Redis a row runs over.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Killed, then started again empty 5 s later.
    Kill,
    /// `CLIENT PAUSE` for 1.5 s.
    Pause,
}

impl Fault {
    fn from_env() -> Option<Self> {
        match std::env::var("TOLLGATE_FAULT").ok()?.as_str() {
            "kill" => Some(Self::Kill),
            "pause" => Some(Self::Pause),
            other => panic!("TOLLGATE_FAULT={other}: kill or pause"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Kill => ", Redis killed 5 s",
            Self::Pause => ", Redis paused 1.5 s",
        }
    }

    /// Brings the fault on `server` `at` from now, on a thread of its own;
    /// the thread ends when the server answers again.
    fn schedule(
        self,
        server: &Arc<Mutex<RedisServer>>,
        at: Duration,
    ) -> std::thread::JoinHandle<()> {
        let server = Arc::clone(server);
        std::thread::spawn(move || {
            std::thread::sleep(at);
            let lock = || {
                server
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            match self {
                Self::Kill => {
                    lock().kill();
                    std::thread::sleep(Duration::from_secs(5));
                    lock().restart();
                }
                Self::Pause => {
                    lock().cli(&["CLIENT", "PAUSE", "1500"]);
                }
            }
        })
    }
}

fn main() {
    // `cargo bench ... --bench efficiency -- WORDS`: only the rows whose
    // name holds WORDS.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let only = only.join(" ");
    let seconds = std::env::var("TOLLGATE_SECONDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|&n: &u64| n > 0)
        .unwrap_or(12);
    let fault = Fault::from_env();
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("| store | provider | calls | lost | of the allowed rate | attempts refused |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut redis: Option<(Arc<Mutex<RedisServer>>, tokio::runtime::Runtime)> = None;
    for store in ["memory", "fleet", "redis"] {
        for (n, scenario) in scenarios().iter().enumerate() {
            let name = format!("{store} | {}", scenario.name);
            // One client alone shares nothing: its fleet row would be its
            // memory row.
            if !name.contains(only.as_str()) || (store == "fleet" && scenario.clients == 1) {
                continue;
            }
            let row = if store != "redis" {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .start_paused(true)
                    .build()
                    .expect("runtime");
                let shared = if store == "fleet" {
                    Shared::Fleet
                } else {
                    Shared::Nothing
                };
                runtime.block_on(run(scenario, seconds, shared))
            } else {
                let (server, runtime) = redis.get_or_insert_with(|| {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("runtime");
                    (Arc::new(Mutex::new(RedisServer::start())), runtime)
                });
                let url = server
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .url();
                let store = (url, format!("efficiency-{n}"));
                let faulting = fault.map(|f| f.schedule(server, Duration::from_secs(seconds / 3)));
                let row = runtime.block_on(run(scenario, seconds, Shared::Redis(&store)));
                if let Some(faulting) = faulting {
                    faulting.join().expect("the fault's thread");
                }
                row
            };
            let fault_name = if store == "redis" {
                fault.map_or("", Fault::name)
            } else {
                ""
            };
            println!(
                "| {name}{fault_name} | {} | {} | {:.1}% | {} of {} ({:.2}%) |",
                row.calls,
                row.calls - row.answered,
                100.0 * row.share,
                row.refused,
                row.attempts,
                100.0 * row.refused as f64 / row.attempts.max(1) as f64
            );
        }
    }
}
