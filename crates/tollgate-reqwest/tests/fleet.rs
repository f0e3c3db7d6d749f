//! The client over a store as a network store would be: a rate learnt
//! from refusals through a store other processes share is the fleet's, not
//! one process' share of it (two clients, each its own middleware, over
//! one in-memory store that says two processes share it, as a Redis store
//! counts its fleet, against a provider that states no limit); and what an
//! answer teaches reaches the store in one operation (each a round trip to
//! Redis). In process, on the paused clock.

mod fleet_store;
mod mock;
mod transport;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_store::Fleet;
use mock::{Config, Host, Style};
use serde_json::json;
use tokio::time::Instant;
use tollgate::{DefaultClock, MemoryStore};
use tollgate_reqwest::RateLimitMiddleware;

/// `n` calls of `body` to `url` at once through `client`, each answered
/// 200: the task that waits for them all.
fn calls(
    client: Arc<reqwest_middleware::ClientWithMiddleware>,
    url: &str,
    body: &str,
    n: usize,
) -> tokio::task::JoinHandle<()> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url, body) = (Arc::clone(&client), url.to_owned(), body.to_owned());
            tokio::spawn(async move {
                let response = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            })
        })
        .collect();
    tokio::spawn(async move {
        for task in tasks {
            task.await.unwrap();
        }
    })
}

/// 600 calls from two clients over one store that says `sharers` share
/// it, against 600 a minute stated nowhere: the share of the allowed rate
/// and the attempts refused.
async fn two_clients(sharers: u32) -> (f64, u64) {
    let config = Config::new(600, 100_000_000)
        .dialect(Style::Bare)
        .latency(Duration::from_millis(120));
    let (base, provider) = mock::serve(config, Host::Provider);
    let url = Arc::new(format!("{base}/v1/chat/completions"));
    let store = Arc::new(MemoryStore::new(1_000, 4, DefaultClock::new()));
    let body = json!({"model": "m", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let fleet = Fleet {
            store: Arc::clone(&store),
            sharers,
            lessons: Arc::default(),
        };
        let client = Arc::new(transport::client(
            RateLimitMiddleware::builder()
                .headroom(0.02)
                .build_with_store(fleet),
        ));
        tasks.push(calls(client, &url, &body, 300));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let share = 600.0 / start.elapsed().as_secs_f64() / 10.0;
    (share, provider.counts().limited)
}

#[tokio::test(start_paused = true)]
async fn a_rate_learnt_through_a_shared_store_is_the_fleets() {
    // The store counts the key's answers: the rate learnt is the fleet's,
    // whether or not the store has counted its processes yet (a process
    // that took its own answers for the fleet's paced the two at 42% of
    // the provider's; its own times the fleet's size, at 69%).
    let (counted_one, refused_one) = two_clients(1).await;
    let (counted_two, refused_two) = two_clients(2).await;
    println!(
        "{:.1}% ({refused_one} refused), {:.1}% ({refused_two} refused)",
        100.0 * counted_one,
        100.0 * counted_two
    );
    // The same run, exactly, on virtual time.
    assert_eq!((counted_one, refused_one), (counted_two, refused_two));
    assert!(counted_two > 0.65, "{:.1}%", 100.0 * counted_two);
    assert!(refused_two <= 10, "{refused_two} refused");
}

/// Every answer of a provider that states requests and tokens with what
/// remains of each teaches the store in one adjustment at most (two caps
/// and a limit were up to six round trips to Redis an answer).
#[tokio::test(start_paused = true)]
async fn an_answer_teaches_the_store_in_one_adjustment() {
    for style in [Style::OpenAi, Style::Anthropic, Style::Ietf, Style::Bare] {
        let config = Config::new(600, 100_000_000)
            .dialect(style)
            .latency(Duration::from_millis(120));
        let (base, provider) = mock::serve(config, Host::Provider);
        let url = format!("{base}/v1/chat/completions");
        let lessons = Arc::new(AtomicU64::new(0));
        let fleet = Fleet {
            store: Arc::new(MemoryStore::new(1_000, 4, DefaultClock::new())),
            sharers: 1,
            lessons: Arc::clone(&lessons),
        };
        let client = Arc::new(transport::client(
            RateLimitMiddleware::builder().build_with_store(fleet),
        ));
        let body = json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        calls(client, &url, &body, 100).await.unwrap();
        let counts = provider.counts();
        let answers = counts.ok + counts.limited;
        let lessons = lessons.load(Ordering::Relaxed);
        assert!(answers >= 100, "{style:?}: {answers} answers");
        assert!(
            lessons <= answers,
            "{style:?}: {lessons} adjustments for {answers} answers"
        );
        println!("{style:?}: {lessons} adjustments for {answers} answers");
        if matches!(style, Style::OpenAi | Style::Anthropic) {
            // What remains is read at every answer: not one lesson fewer
            // than half of them (some answers leave the store as it is).
            assert!(lessons >= answers / 2, "{style:?}: {lessons} of {answers}");
        }
    }
}

/// Four processes over one store, joining 700 ms apart, against 6,000 a
/// minute stated nowhere: nothing lost, and per way of counting the
/// attempts, those refused and the per mille of the allowed rate. Exact on
/// virtual time.
///
/// Each process learnt a rate from its own busiest second, times the
/// fleet's size. One that joined late saw few answers (the others' calls
/// were queued in the store ahead of its own), learnt a rate far below
/// its part, and wrote it as the key's: the fleet ran at 72.1%, 60.4% and
/// 9.7% of the allowed rate. Now the store counts the key's answers, so
/// each process learns the fleet's busiest second, and a rate one process
/// writes is the one the others take. (With windows of a second, the
/// first refusal's `Retry-After: 1` pauses every call for a second: 81%
/// is what one process alone reaches in these 12 s too.)
#[tokio::test(start_paused = true)]
async fn processes_that_join_late_learn_the_fleets_rate() {
    let second = Duration::from_secs(1);
    for (counting, attempts_refused, permille) in [
        (mock::Counting::bucket(second), (1_224, 24), 873),
        (mock::Counting::sliding(second), (1_208, 8), 811),
        (mock::Counting::fixed(second), (1_208, 8), 811),
    ] {
        let config = Config::new(6_000, 100_000_000)
            .dialect(Style::Bare)
            .counting(counting)
            .latency(Duration::from_millis(120));
        let (base, provider) = mock::serve(config, Host::Provider);
        let url = format!("{base}/v1/chat/completions");
        let body = json!({"model": "m", "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}]})
        .to_string();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (i, store) in Fleet::shared(4).into_iter().enumerate() {
            let client = Arc::new(transport::client(
                RateLimitMiddleware::builder()
                    .headroom(0.02)
                    .build_with_store(store),
            ));
            let (url, body) = (url.clone(), body.clone());
            let join = Duration::from_millis(700) * u32::try_from(i).unwrap();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(join).await;
                calls(client, &url, &body, 300).await.unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let share = 1_200.0 / start.elapsed().as_secs_f64() / 100.0;
        let counts = provider.counts();
        println!(
            "{counting:?}: {} attempts, {} refused, {:.1}% of the allowed rate",
            counts.ok + counts.limited,
            counts.limited,
            100.0 * share
        );
        assert_eq!(counts.ok, 1_200, "{counting:?}: none lost");
        assert_eq!(
            (counts.ok + counts.limited, counts.limited),
            attempts_refused,
            "{counting:?}"
        );
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let measured = (share * 1000.0).round() as u32;
        assert_eq!(measured, permille, "{counting:?}: of the allowed rate");
    }
}

/// A process whose first refusal came while the fleet had no rate yet,
/// and whose next answer comes only after the others learnt one, takes
/// the fleet's rate: it does not learn a first rate of its own from that
/// lone answer and write it for all. Through Redis, four processes on a
/// fixed second read 2.2-2.8% of the allowed rate in one run of four: one
/// process's calls had all been refused and its retries queued behind the
/// others' for ten seconds; it learnt 54 a minute from its first answer,
/// and the fleet took it. Here a scripted provider stands for that queue:
/// process B's first call is refused, its retry answered 5 s later; A's
/// sixtieth call is refused, from which A learns the fleet's first rate.
#[tokio::test(start_paused = true)]
async fn a_process_that_hears_late_takes_the_fleets_rate() {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;

    #[derive(Default)]
    struct Heard {
        a: AtomicU64,
        b: AtomicU64,
    }
    async fn answer(
        axum::extract::State(heard): axum::extract::State<Arc<Heard>>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let refuse = || (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")]).into_response();
        let ok = || {
            axum::Json(json!({"choices": [], "usage":
                {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}))
            .into_response()
        };
        if headers.contains_key("x-process-b") {
            if heard.b.fetch_add(1, Ordering::SeqCst) == 0 {
                return refuse();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            return ok();
        }
        let n = heard.a.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if n == 60 {
            refuse()
        } else {
            ok()
        }
    }
    let heard = Arc::new(Heard::default());
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(answer))
        .with_state(Arc::clone(&heard));
    let url = format!("{}/v1/chat/completions", transport::register(app));
    let body = json!({"model": "m", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let mut stores = Fleet::shared(2).into_iter();
    let mut client = || {
        Arc::new(transport::client(
            RateLimitMiddleware::builder().build_with_store(stores.next().unwrap()),
        ))
    };
    let (a, b) = (client(), client());
    let start = Instant::now();
    let b_call = {
        let (url, body) = (url.clone(), body.clone());
        tokio::spawn(async move {
            let response = b
                .post(url.as_str())
                .header("x-process-b", "1")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            start.elapsed()
        })
    };
    calls(a, &url, &body, 1_000).await.unwrap();
    let b_heard = b_call.await.unwrap();
    let elapsed = start.elapsed();
    println!("B answered at {b_heard:?}; A's 1,000 calls done in {elapsed:?}");
    assert!(
        b_heard > Duration::from_secs(6),
        "B's answer came late: {b_heard:?}"
    );
    assert_eq!(heard.a.load(Ordering::SeqCst), 1_001, "A: one refusal");
    assert_eq!(heard.b.load(Ordering::SeqCst), 2, "B: one refusal");
    // A learnt its rate from its busiest second and kept it: its calls
    // end in the time that rate allows, not at the 54 a minute B's lone
    // answer would show.
    assert!(
        elapsed < Duration::from_secs(40),
        "A's calls took {elapsed:?}"
    );
}
