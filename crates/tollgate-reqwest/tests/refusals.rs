//! How the middleware answers 429, 503 and 529: against a scripted server
//! reached in process (no socket), on Tokio's paused clock.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing;
use axum::Router;
use reqwest_middleware::ClientWithMiddleware;
use tokio::time::Instant;
mod transport;

use tollgate_reqwest::{
    Attempts, Classify, OutputCharge, ProviderLimits, RateLimitMiddleware, RetryLater, TooLarge,
    Usage,
};

/// A refusal's status and headers.
type Refusal = (u16, Vec<(&'static str, &'static str)>);

/// Answers each call with the next scripted refusal, then 200s; records
/// when each call arrived.
#[derive(Default)]
struct Script {
    refusals: Mutex<VecDeque<Refusal>>,
    arrivals: Mutex<Vec<Instant>>,
}

impl Script {
    /// When each call arrived, from `start`.
    fn since(&self, start: Instant) -> Vec<Duration> {
        self.arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|at| *at - start)
            .collect()
    }
}

async fn answer(State(script): State<Arc<Script>>) -> Response {
    script.arrivals.lock().unwrap().push(Instant::now());
    let next = script.refusals.lock().unwrap().pop_front();
    match next {
        Some((status, headers)) => {
            // `x-test-body` is the refusal's body, not a header.
            let body = headers
                .iter()
                .find(|(name, _)| *name == "x-test-body")
                .map_or("", |(_, body)| *body);
            let mut response =
                (StatusCode::from_u16(status).unwrap(), body.to_owned()).into_response();
            for (name, value) in headers.into_iter().filter(|(n, _)| *n != "x-test-body") {
                response.headers_mut().append(
                    HeaderName::from_static(name),
                    HeaderValue::from_static(value),
                );
            }
            response
        }
        None => "{}".into_response(),
    }
}

async fn serve(refusals: Vec<Refusal>) -> (String, Arc<Script>) {
    let script = Arc::new(Script::default());
    *script.refusals.lock().unwrap() = refusals.into();
    let app = Router::new()
        .route("/v1/chat/completions", routing::post(answer))
        .with_state(Arc::clone(&script));
    let base = transport::register(app);
    (format!("{base}/v1/chat/completions"), script)
}

fn client(middleware: RateLimitMiddleware) -> ClientWithMiddleware {
    transport::client(middleware)
}

async fn post(client: &ClientWithMiddleware, url: &str) -> reqwest_middleware::Result<u16> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await?;
    Ok(response.status().as_u16())
}

/// Limits known up front, so that calls are not held for a first answer.
fn paced() -> tollgate_reqwest::Builder {
    RateLimitMiddleware::builder().limits(ProviderLimits::new().requests_per_minute(6_000))
}

fn known() -> RateLimitMiddleware {
    paced().build()
}

#[tokio::test(start_paused = true)]
async fn a_429_pauses_every_caller_for_the_wait_asked_then_retries() {
    let (url, script) = serve(vec![(
        429,
        vec![("retry-after-ms", "1500"), ("retry-after", "9")],
    )])
    .await;
    let client = Arc::new(client(known()));
    let start = Instant::now();
    let first = {
        let (client, url) = (Arc::clone(&client), url.clone());
        tokio::spawn(async move { post(&client, &url).await.unwrap() })
    };
    // A second caller comes while the first is refused and paused.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = post(&client, &url).await.unwrap();
    assert_eq!(second, 200);
    assert_eq!(first.await.unwrap(), 200);

    let arrivals = script.since(start);
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    assert_eq!(arrivals[0], Duration::ZERO);
    // retry-after-ms wins over Retry-After; nobody is sent before it ends,
    // and the two callers leave paced (100 RPS at 95%: ~10.5 ms apart).
    // Exact on virtual time: the refused call retried at 1.501 s, the
    // second caller 10 ms after it.
    assert_eq!(
        arrivals,
        [0, 1_501, 1_511].map(Duration::from_millis),
        "{arrivals:?}"
    );
}

/// Refusals for rate are waited for and retried until the call succeeds:
/// they spend neither the attempts (2 here) nor the retry budget (none
/// here), only the bound on refusals in a row.
#[tokio::test(start_paused = true)]
async fn refusals_for_rate_are_retried_until_success_whatever_the_attempts() {
    let refusal = || (429, vec![("retry-after", "1")]);
    let (url, script) = serve((0..12).map(|_| refusal()).collect()).await;
    let client = client(paced().max_attempts(2).retry_ratio(0.0).build());
    let start = Instant::now();
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(13)));
    // Each refusal's second is taken (paced, a few ms after it ends).
    let arrivals = script.since(start);
    assert_eq!(arrivals.len(), 13);
    assert!(arrivals
        .windows(2)
        .all(|w| w[1] - w[0] >= Duration::from_secs(1)));

    // Bounded all the same: past `max_refusals` in a row, the refusal is
    // returned as it is.
    let (url, script) = serve((0..5).map(|_| refusal()).collect()).await;
    let bounded = self::client(paced().max_refusals(3).build());
    assert_eq!(post(&bounded, &url).await.unwrap(), 429);
    assert_eq!(script.arrivals.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn should_retry_false_is_obeyed() {
    let (url, script) = serve(vec![(
        429,
        vec![("x-should-retry", "false"), ("retry-after", "1")],
    )])
    .await;
    let client = client(known());
    assert_eq!(post(&client, &url).await.unwrap(), 429);
    assert_eq!(script.arrivals.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_over_the_ceiling_returns_at_once_with_the_wait() {
    let (url, _script) = serve(vec![(529, vec![("retry-after", "600")])]).await;
    let client = client(paced().max_wait(Duration::from_secs(60)).build());
    let start = Instant::now();
    let error = post(&client, &url).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let later = RetryLater::from_error(&error).expect("a typed wait");
    assert_eq!(later.wait(), Duration::from_secs(600));
    assert_eq!(later.status().map(|s| s.as_u16()), Some(529));
    assert!(error.to_string().contains("600.0 s"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn without_hints_back_off_grows_with_jitter_until_attempts_run_out() {
    let refusal = || (503, vec![]);
    let (url, script) = serve(vec![refusal(), refusal(), refusal(), refusal()]).await;
    let client = client(
        paced()
            .max_attempts(3)
            .backoff(Duration::from_secs(1), Duration::from_secs(60))
            .build(),
    );
    let start = Instant::now();
    // Three attempts, all refused: the last refusal is returned as it is,
    // and says how many attempts were made.
    let response = post_body(&client, &url, LARGE).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    let arrivals = script.since(start);
    assert_eq!(arrivals.len(), 3);
    let first_gap = arrivals[1] - arrivals[0];
    let second_gap = arrivals[2] - arrivals[1];
    // 1 s then 2 s, each jittered (retry-policies' bounded jitter) to
    // between half the base and the whole.
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(1_011)).contains(&first_gap),
        "{arrivals:?}"
    );
    assert!(
        (Duration::from_millis(500)..=Duration::from_millis(2_011)).contains(&second_gap),
        "{arrivals:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_limit_waits_for_its_reset() {
    let (url, script) = serve(vec![(
        429,
        vec![
            ("x-ratelimit-limit-tokens", "10000"),
            ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-tokens", "2.5s"),
            ("x-ratelimit-remaining-requests", "40"),
            ("x-ratelimit-reset-requests", "9s"),
        ],
    )])
    .await;
    let client = client(known());
    let start = Instant::now();
    assert_eq!(post(&client, &url).await.unwrap(), 200);
    let arrivals = script.arrivals.lock().unwrap().clone();
    assert_eq!(arrivals.len(), 2);
    // The exhausted dimension's reset, not the other's.
    let gap = arrivals[1] - start;
    // 2.5 s, and the paced slot after it (exact on virtual time).
    assert_eq!(gap, Duration::from_millis(2_589), "{gap:?}");
}

async fn post_body(
    client: &ClientWithMiddleware,
    url: &str,
    body: &str,
) -> reqwest_middleware::Result<reqwest::Response> {
    client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
}

const LARGE: &str = r#"{"model":"m","max_tokens":500,"messages":[{"role":"user","content":"hi"}]}"#;

/// A call estimated at 505 tokens against 1,200 a minute (paced at 1,140,
/// 19 a second): the next such call waits ~27 s, unless the first reports
/// that it used 16 and the provider charges what was written. A provider
/// that states nothing of its tokens is taken to charge the bound, as
/// OpenAI does: the 490 tokens not written stay charged.
#[tokio::test(start_paused = true)]
async fn reported_usage_gives_the_unused_estimate_back() {
    for (report, charge, expected) in [
        (false, OutputCharge::Written, 26_579),
        (true, OutputCharge::Written, 843),
        (true, OutputCharge::Learnt, 26_632),
        (true, OutputCharge::Bound, 26_632),
    ] {
        let (url, script) = serve(vec![]).await;
        let client = client(
            RateLimitMiddleware::builder()
                .limits(ProviderLimits::new().tokens_per_minute(1_200))
                .output_charge(charge)
                .build(),
        );
        let start = Instant::now();
        let first = post_body(&client, &url, LARGE).await.unwrap();
        let usage = first.extensions().get::<Usage>().cloned().unwrap();
        assert_eq!(usage.estimate().output_tokens, 500);
        if report {
            assert!(usage.report(6, 10).await);
            assert!(
                !usage.report(6, 10).await,
                "a second report changes nothing"
            );
        }
        post_body(&client, &url, LARGE).await.unwrap();
        let arrivals = script.arrivals.lock().unwrap().clone();
        let second = arrivals[1] - start;
        // Reported: the unused 490 output tokens come back and the second
        // call goes within the second; unreported, or charged the bound,
        // it waits for the whole estimate to refill (and the prompt's one
        // token more than estimated) (exact on virtual time).
        assert_eq!(
            second,
            Duration::from_millis(expected),
            "{charge:?}, reported: {report}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_larger_than_a_minute_of_tokens_is_refused_at_once() {
    let (url, script) = serve(vec![]).await;
    let client = client(
        RateLimitMiddleware::builder()
            .limits(ProviderLimits::new().output_tokens_per_minute(100))
            .build(),
    );
    let error = post_body(&client, &url, LARGE).await.unwrap_err();
    let reqwest_middleware::Error::Middleware(inner) = &error else {
        panic!("{error}")
    };
    let too_large = inner.downcast_ref::<TooLarge>().expect("TooLarge");
    assert_eq!(
        (too_large.dimension(), too_large.cost()),
        ("output_tokens", 500)
    );
    assert!(script.arrivals.lock().unwrap().is_empty());
}

/// A streamed body cannot be sent twice: its refusal is returned as it is,
/// though attempts remain (the endpoint is still paused for the others).
#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_not_retried() {
    let (url, script) = serve(vec![(429, vec![("retry-after", "1")])]).await;
    let client = client(known());
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = vec![Ok(b"{}")];
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(script.arrivals.lock().unwrap().len(), 1);
}

/// A provider that says how long to wait only in its body: OpenAI's
/// message, Google's `RetryInfo`. The call waits exactly that long.
#[tokio::test(start_paused = true)]
async fn a_wait_in_the_body_is_taken_when_the_headers_say_none() {
    let openai = r#"{"error":{"message":"Rate limit reached for gpt-4o on requests per min (RPM): Limit 3, Used 3, Requested 1. Please try again in 1.25s.","type":"requests","code":"rate_limit_exceeded"}}"#;
    let google = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}"#;
    let (url, script) = serve(vec![
        (429, vec![("x-test-body", openai)]),
        (429, vec![("x-test-body", google)]),
    ])
    .await;
    let client = client(known());
    let start = Instant::now();
    assert_eq!(post(&client, &url).await.unwrap(), 200);
    let arrivals = script.since(start);
    // Refused at 0, retried when 1.25 s were over (paced: +1 ms), refused
    // again, retried 7 s later.
    assert_eq!(arrivals.len(), 3, "{arrivals:?}");
    assert_eq!(arrivals[1], Duration::from_millis(1_251), "{arrivals:?}");
    assert_eq!(
        arrivals[2] - arrivals[1],
        Duration::from_millis(7_001),
        "{arrivals:?}"
    );
}

/// A refusal returned to the caller keeps its body whole, though the
/// middleware read it for a hint.
#[tokio::test(start_paused = true)]
async fn a_refusal_read_for_a_hint_keeps_its_body() {
    let body = r#"{"error":{"message":"Please try again in 900s."}}"#;
    let (url, _script) = serve(vec![(429, vec![("x-test-body", body)])]).await;
    let client = client(paced().max_wait(Duration::from_secs(60)).build());
    let error = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    let later = RetryLater::from_error(&error).unwrap();
    assert_eq!(later.wait(), Duration::from_secs(900));
    // With no retry at all, the refusal itself comes back, body and all
    // (read for a hint that it does not hold).
    let body = r#"{"error":{"message":"The engine is overloaded.","type":"server_error"}}"#;
    let (url, _script) = serve(vec![(503, vec![("x-test-body", body)])]).await;
    let client = self::client(paced().max_attempts(1).build());
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(
        response.url().as_str().ends_with("/v1/chat/completions"),
        "{}",
        response.url()
    );
    assert_eq!(response.text().await.unwrap(), body);
}

/// A `Retry-After` too large to count asks for longer than any wait: the
/// call returns at once as "retry later", and the others are paused for
/// the ceiling, not forever.
#[tokio::test(start_paused = true)]
async fn a_retry_after_too_large_to_count_is_longer_than_the_ceiling() {
    let (url, _script) = serve(vec![(
        429,
        vec![("retry-after", "99999999999999999999999999999999999")],
    )])
    .await;
    let middleware = RateLimitMiddleware::builder()
        .limits(ProviderLimits::new().requests_per_minute(6_000))
        .max_wait(Duration::from_secs(60))
        .build();
    let budget_view = middleware.clone();
    let client = client(middleware);
    let start = Instant::now();
    let error = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let later = RetryLater::from_error(&error).unwrap();
    assert_eq!(later.wait(), Duration::MAX);
    assert!(
        later.to_string().contains("longer than can be counted"),
        "{later}"
    );
    let endpoint = tollgate_reqwest::Endpoint::new(&url.parse().unwrap(), None);
    let paused = budget_view.budget().paused_for(&endpoint).await.unwrap();
    assert_eq!(paused, Duration::from_secs(60));
}

/// A back-off policy of one's own: a fixed wait, then giving up.
struct Fixed {
    wait: Duration,
    retries: u32,
}

impl tollgate_reqwest::retry_policies::RetryPolicy for Fixed {
    fn should_retry(
        &self,
        request_start_time: std::time::SystemTime,
        n_past_retries: u32,
    ) -> tollgate_reqwest::retry_policies::RetryDecision {
        use tollgate_reqwest::retry_policies::RetryDecision;
        if n_past_retries >= self.retries {
            RetryDecision::DoNotRetry
        } else {
            RetryDecision::Retry {
                execute_after: request_start_time + self.wait,
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_back_off_policy_of_ones_own_sets_the_wait_and_may_give_up() {
    let refusal = || (503, vec![]);
    let (url, script) = serve(vec![refusal(), refusal(), refusal(), refusal()]).await;
    let client = client(
        paced()
            .max_attempts(10)
            .backoff_policy(Fixed {
                wait: Duration::from_secs(3),
                retries: 1,
            })
            .build(),
    );
    let start = Instant::now();
    // One retry after 3 s; then the policy gives up, and the second 503
    // is returned as it is.
    let response = post_body(&client, &url, LARGE).await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
    let arrivals = script.since(start);
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1] - arrivals[0];
    assert!(
        (Duration::from_secs(3)..=Duration::from_millis(3_011)).contains(&gap),
        "{arrivals:?}"
    );
}

/// A provider that answers its rate limit with 503: classified as a
/// refusal for rate, its answers are waited for and retried past
/// `max_attempts` (which bounds overload, not refusals), as 429s are.
#[tokio::test(start_paused = true)]
async fn a_classifier_can_make_503_a_refusal_for_rate() {
    let busy = || (503, vec![("retry-after", "1")]);
    let builder = || paced().max_attempts(2);
    // By default, overload: two attempts, then the 503 as it is.
    let (url, script) = serve(vec![busy(), busy(), busy(), busy()]).await;
    let start = Instant::now();
    let default = client(builder().build());
    assert_eq!(post(&default, &url).await.unwrap(), 503);
    assert_eq!(script.since(start).len(), 2);
    // As a refusal: four refusals waited out, then the 200.
    let (url, script) = serve(vec![busy(), busy(), busy(), busy()]).await;
    let start = Instant::now();
    let classified = client(
        builder()
            .classify(|status: http::StatusCode| match status.as_u16() {
                503 => tollgate_reqwest::Answer::RateLimited,
                _ => tollgate_reqwest::DefaultClassify.classify(status),
            })
            .build(),
    );
    assert_eq!(post(&classified, &url).await.unwrap(), 200);
    let arrivals = script.since(start);
    assert_eq!(arrivals.len(), 5);
    // Each after the second asked for.
    for pair in arrivals.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_secs(1), "{arrivals:?}");
    }
}

/// A wait behind this process' own reservations is not one the provider
/// asked for: calls whose estimates queue them far beyond `max_wait` keep
/// their place and go as the calls ahead settle to what they really cost;
/// none returns `RetryLater`.
#[tokio::test(start_paused = true)]
async fn a_wait_behind_own_reservations_keeps_the_call_in_line() {
    let (url, script) = serve(vec![]).await;
    // 600 tokens a minute; a call is estimated at 95 (5 in, 90 out) and
    // costs 5: twenty estimates are 190 s of the limit, their cost 10 s.
    let client = client(
        RateLimitMiddleware::builder()
            .limits(
                ProviderLimits::new()
                    .requests_per_minute(6_000)
                    .tokens_per_minute(600),
            )
            .max_wait(Duration::from_secs(10))
            .output_charge(OutputCharge::Written)
            .build(),
    );
    let start = Instant::now();
    let calls = (0..20).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = post_body(
                &client,
                &url,
                r#"{"max_tokens":90,"messages":[{"role":"user","content":"x"}]}"#,
            )
            .await?;
            let usage = response.extensions().get::<Usage>().cloned().unwrap();
            assert!(usage.report(2, 3).await);
            Ok::<_, reqwest_middleware::Error>(start.elapsed())
        }
    });
    let done = futures_util::future::join_all(calls).await;
    let mut ends = Vec::new();
    for result in done {
        match result {
            Ok(end) => ends.push(end),
            Err(error) => panic!("a call was returned: {error}"),
        }
    }
    assert_eq!(script.arrivals.lock().unwrap().len(), 20);
    // Beyond `max_wait` (the first calls were reserved within it), and
    // never later than the estimates' own pace (95 tokens at 10 a second).
    let last = ends.iter().max().copied().unwrap();
    assert!(last > Duration::from_secs(10), "{ends:?}");
    assert!(last <= Duration::from_secs(19 * 95 / 10), "{ends:?}");
}

/// A pause the provider asked for longer than `max_wait` still returns
/// the calls that meet it, at once.
#[tokio::test(start_paused = true)]
async fn a_provider_pause_over_the_ceiling_returns_the_calls_that_meet_it() {
    let (url, script) = serve(vec![(429, vec![("retry-after", "600")])]).await;
    let middleware = paced().max_wait(Duration::from_secs(60)).build();
    let client = client(middleware);
    let first = post(&client, &url).await.unwrap_err();
    assert_eq!(
        RetryLater::from_error(&first).unwrap().wait(),
        Duration::from_secs(600)
    );
    let start = Instant::now();
    let second = post(&client, &url).await.unwrap_err();
    assert_eq!(start.elapsed(), Duration::ZERO);
    let later = RetryLater::from_error(&second).unwrap();
    assert_eq!(later.wait(), Duration::from_secs(600));
    assert_eq!(later.status(), None);
    assert_eq!(
        script.arrivals.lock().unwrap().len(),
        1,
        "the second was not sent"
    );
}
