//! One line: sent through the rate-limit middleware, retried within its
//! attempts, its answer read up to a cap, and every outcome turned into a
//! record, or into nothing when the run stops before it is sent.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Response, Url};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_reqwest::retry_policies::policies::ExponentialBackoff;
use tollgate_reqwest::retry_policies::{Jitter, RetryDecision, RetryPolicy};
use tollgate_reqwest::{Attempts, Endpoint, RetryLater, TooLarge, Usage};

use super::resume;
use super::stall::Stall;
use super::stop::Stop;

/// A line of the input to send.
pub(crate) struct Line {
    /// 1-based, blank lines counted.
    pub(crate) number: u64,
    pub(crate) hash: [u8; 32],
    pub(crate) bytes: Vec<u8>,
}

/// What became of a line.
pub(crate) enum Outcome {
    /// A record to write.
    Answered(Answer),
    /// Not sent (or only refused) before the run stopped: no record; a
    /// rerun sends it.
    NotSent,
    /// On the wire when the grace ran out (or a second signal came): no
    /// record; a rerun sends it.
    Abandoned,
}

/// A finished line, for the writer and the summary.
pub(crate) struct Answer {
    pub(crate) record: Value,
    pub(crate) ok: bool,
    pub(crate) bad: bool,
    pub(crate) retries: u64,
    pub(crate) latency: Option<Duration>,
    pub(crate) endpoint: Option<Endpoint>,
}

/// What every line's task shares.
pub(crate) struct Context {
    pub(crate) client: ClientWithMiddleware,
    pub(crate) url: Url,
    pub(crate) auth: Option<HeaderValue>,
    pub(crate) max_attempts: u32,
    pub(crate) max_body: u64,
    pub(crate) stop: Stop,
    pub(crate) stall: Arc<Stall>,
    pub(crate) backoff: ExponentialBackoff,
}

/// Whether a line's request is on the wire (true from the moment the rate
/// limit admits it until its answer is read, or until it is refused), and
/// how many attempts went out.
#[derive(Clone)]
struct Wire(Arc<WireState>);

struct WireState {
    on: watch::Sender<bool>,
    attempts: std::sync::atomic::AtomicU32,
}

impl Wire {
    fn attempts(&self) -> u32 {
        self.0.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The error of a request the gate held back because the run is stopping.
#[derive(Debug)]
struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the run is stopping: the request was not sent")
    }
}

impl std::error::Error for Stopped {}

/// The error of a request the gate held back because the run gave up
/// after nothing but refusals.
#[derive(Debug)]
struct GaveUp(Duration);

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no answer but refusals for {} (--give-up-after): not sent; retry later",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for GaveUp {}

/// The last middleware before the network: once the run stops, or gives
/// up, nothing more goes out (not even a retry); it marks each line's
/// request as on the wire while it is, and counts every refusal.
pub(crate) struct Gate {
    pub(crate) stop: Stop,
    pub(crate) stall: Arc<Stall>,
}

#[async_trait::async_trait]
impl Middleware for Gate {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        if self.stop.is_stopped() {
            return Err(reqwest_middleware::Error::middleware(Stopped));
        }
        if self.stall.given_up() {
            return Err(reqwest_middleware::Error::middleware(GaveUp(
                self.stall.limit(),
            )));
        }
        let wire = extensions.get::<Wire>().cloned();
        if let Some(wire) = &wire {
            wire.0
                .attempts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            wire.0.on.send_replace(true);
        }
        let result = next.run(request, extensions).await;
        // A refusal is not an answer to keep: the middleware waits and
        // retries it, and until then the line is not on the wire.
        let refused = match &result {
            Ok(response) => {
                let refused = matches!(response.status().as_u16(), 429 | 503 | 529);
                if refused {
                    self.stall.refused();
                } else {
                    self.stall.answered();
                }
                refused
            }
            Err(_) => false,
        };
        if let (true, Some(wire)) = (refused || result.is_err(), &wire) {
            wire.0.on.send_replace(false);
        }
        result
    }
}

/// Sends a line and waits for its outcome. When the run stops, a line not
/// on the wire is dropped at once (its place in the rate limit given back);
/// one on the wire is waited for until the grace runs out. When the run
/// gives up (nothing but refusals for `--give-up-after`), a line not on
/// the wire ends at once as `retry_later`.
pub(crate) async fn run(context: &Context, line: Line) -> Outcome {
    let (number, hash) = (line.number, line.hash);
    let started = Instant::now();
    let (on, mut on_wire) = watch::channel(false);
    let wire = Wire(Arc::new(WireState {
        on,
        attempts: std::sync::atomic::AtomicU32::new(0),
    }));
    let send = send(context, line, wire.clone());
    tokio::pin!(send);
    loop {
        let off_wire = !*on_wire.borrow_and_update();
        tokio::select! {
            biased;
            outcome = &mut send => return outcome,
            () = context.stop.stopped() => break,
            () = context.stall.gave_up(), if off_wire => {
                let record = json!({
                    "line": number,
                    "input_sha256": resume::hex(&hash),
                    "ok": false,
                    "kind": "retry_later",
                    "error": GaveUp(context.stall.limit()).to_string(),
                    "attempts": wire.attempts(),
                    "latency_ms": millis(started.elapsed()),
                });
                return Outcome::Answered(Answer {
                    record,
                    ok: false,
                    bad: false,
                    retries: u64::from(wire.attempts().saturating_sub(1)),
                    latency: None,
                    endpoint: None,
                });
            }
            // On or off the wire: look again.
            changed = on_wire.changed() => {
                if changed.is_err() {
                    return send.await;
                }
            }
        }
    }
    let abandon = context.stop.abandon();
    tokio::pin!(abandon);
    loop {
        if !*on_wire.borrow_and_update() {
            return Outcome::NotSent;
        }
        tokio::select! {
            biased;
            outcome = &mut send => return outcome,
            changed = on_wire.changed() => {
                if changed.is_err() {
                    return Outcome::NotSent;
                }
            }
            () = &mut abandon => return Outcome::Abandoned,
        }
    }
}

/// Why an answer's body was not kept.
enum BodyError {
    TooLarge,
    Transport(reqwest::Error),
}

/// Reads a body up to `cap` bytes, and no further.
async fn read_body(response: &mut Response, cap: u64) -> Result<Vec<u8>, BodyError> {
    if response.content_length().is_some_and(|n| n > cap) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() as u64 + chunk.len() as u64 > cap {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Answers worth another attempt: 408 (the server timed out), 409 (a
/// conflict, which providers send when busy), 500, 502 and 504. Refusals
/// (429, 503, 529) are the rate-limit middleware's to retry.
fn transient(status: reqwest::StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 409 | 500 | 502 | 504)
}

/// The back-off before retrying a transport error, a timeout or a server
/// error: 500 ms × 2^(n-1), at most 30 s, jittered (`retry-policies`'
/// bounded jitter, as the middleware's own back-off).
pub(crate) fn backoff_policy() -> ExponentialBackoff {
    ExponentialBackoff::builder()
        .retry_bounds(Duration::from_millis(500), Duration::from_secs(30))
        .jitter(Jitter::Bounded)
        .base(2)
        .build_with_max_retries(u32::MAX)
}

/// How long to wait before the retry that follows `failures` failures.
fn backoff(policy: &ExponentialBackoff, failures: u32) -> Duration {
    let now = std::time::SystemTime::now();
    match policy.should_retry(now, failures.saturating_sub(1)) {
        RetryDecision::Retry { execute_after } => {
            execute_after.duration_since(now).unwrap_or_default()
        }
        RetryDecision::DoNotRetry => Duration::from_secs(30),
    }
}

/// An error with its causes, `outer: inner: innermost` (reqwest's own
/// message leaves out why a connection failed).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn send(context: &Context, line: Line, wire: Wire) -> Outcome {
    let started = Instant::now();
    let hash = resume::hex(&line.hash);
    let record = |fields: Value| {
        let mut record = json!({"line": line.number, "input_sha256": hash});
        if let (Value::Object(record), Value::Object(fields)) = (&mut record, fields) {
            record.extend(fields);
        }
        record
    };
    let model = match serde_json::from_slice::<Value>(&line.bytes) {
        Ok(Value::Object(body)) => body.get("model").and_then(Value::as_str).map(str::to_owned),
        Ok(_) => return bad(record, "the line is JSON but not an object"),
        Err(e) => return bad(record, &format!("the line is not JSON: {e}")),
    };
    let endpoint = Endpoint::new(&context.url, model.as_deref());
    let body = Bytes::from(line.bytes);
    let mut attempts: u32 = 0;
    let mut failures: u32 = 0;
    loop {
        let mut request = context
            .client
            .post(context.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .with_extension(wire.clone());
        if let Some(auth) = &context.auth {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let failure = match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                let took = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
                attempts = attempts.saturating_add(took);
                let usage = response.extensions().get::<Usage>().cloned();
                // A timeout, a conflict or a server error is retried like a
                // transport error, within the attempts; what it reserved of
                // the limit is given back.
                if transient(status) && attempts < context.max_attempts {
                    if let Some(usage) = usage {
                        usage.report(0, 0).await;
                    }
                    drop(response);
                    if context.stop.is_stopped() {
                        return Outcome::NotSent;
                    }
                    failures += 1;
                    tokio::time::sleep(backoff(&context.backoff, failures)).await;
                    continue;
                }
                let common = json!({
                    "status": status.as_u16(),
                    "attempts": attempts,
                    "latency_ms": millis(started.elapsed()),
                });
                match read_body(&mut response, context.max_body).await {
                    Ok(bytes) => {
                        let answer: Value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            Value::String(String::from_utf8_lossy(&bytes).into_owned())
                        });
                        if let Some(usage) = usage {
                            usage.report_body(&answer).await;
                        }
                        let ok = status.is_success();
                        let mut record = record(common);
                        if ok {
                            record["ok"] = json!(true);
                            record["response"] = answer;
                        } else {
                            record["ok"] = json!(false);
                            record["kind"] = json!("http");
                            record["error"] = answer;
                        }
                        let latency = started.elapsed();
                        return Outcome::Answered(Answer {
                            record,
                            ok,
                            bad: false,
                            retries: u64::from(attempts - 1),
                            latency: Some(latency),
                            endpoint: Some(endpoint),
                        });
                    }
                    Err(BodyError::TooLarge) => {
                        let mut record = record(common);
                        record["ok"] = json!(false);
                        record["kind"] = json!("body_too_large");
                        record["error"] = json!(format!(
                            "the answer's body is larger than --max-body ({} bytes); read no further",
                            context.max_body
                        ));
                        return Outcome::Answered(failed(record, attempts, endpoint));
                    }
                    Err(BodyError::Transport(error)) => {
                        let kind = if error.is_timeout() {
                            "timeout"
                        } else {
                            "transport"
                        };
                        (kind, format!("reading the answer: {}", chain(&error)))
                    }
                }
            }
            Err(error) => {
                if let reqwest_middleware::Error::Middleware(inner) = &error {
                    if inner.is::<Stopped>() {
                        return Outcome::NotSent;
                    }
                    if inner.is::<GaveUp>() {
                        let record = record(json!({
                            "ok": false,
                            "kind": "retry_later",
                            "error": error.to_string(),
                            "attempts": attempts,
                            "latency_ms": millis(started.elapsed()),
                        }));
                        return Outcome::Answered(failed(record, attempts, endpoint));
                    }
                    attempts = attempts.saturating_add(1);
                    let mut record = record(json!({
                        "ok": false,
                        "attempts": attempts,
                        "latency_ms": millis(started.elapsed()),
                        "error": error.to_string(),
                    }));
                    if let Some(later) = RetryLater::from_error(&error) {
                        record["kind"] = json!("retry_later");
                        record["retry_after_s"] = json!(later.wait().as_secs_f64());
                        if let Some(status) = later.status() {
                            record["status"] = json!(status.as_u16());
                        }
                    } else if inner.is::<TooLarge>() {
                        record["kind"] = json!("too_large");
                    } else {
                        record["kind"] = json!("transport");
                    }
                    return Outcome::Answered(failed(record, attempts, endpoint));
                }
                attempts = attempts.saturating_add(1);
                let kind = if error.is_timeout() {
                    "timeout"
                } else {
                    "transport"
                };
                match &error {
                    reqwest_middleware::Error::Reqwest(inner) => (kind, chain(inner)),
                    reqwest_middleware::Error::Middleware(_) => (kind, error.to_string()),
                }
            }
        };
        // A transport error or a timeout: retried within the attempts,
        // unless the run is stopping (a rerun sends the line).
        if context.stop.is_stopped() {
            return Outcome::NotSent;
        }
        if attempts >= context.max_attempts {
            let (kind, error) = failure;
            let record = record(json!({
                "ok": false,
                "kind": kind,
                "error": error,
                "attempts": attempts,
                "latency_ms": millis(started.elapsed()),
            }));
            return Outcome::Answered(failed(record, attempts, endpoint));
        }
        failures += 1;
        tokio::time::sleep(backoff(&context.backoff, failures)).await;
    }
}

fn failed(record: Value, attempts: u32, endpoint: Endpoint) -> Answer {
    Answer {
        record,
        ok: false,
        bad: false,
        retries: u64::from(attempts.saturating_sub(1)),
        latency: None,
        endpoint: Some(endpoint),
    }
}

fn bad(record: impl FnOnce(Value) -> Value, error: &str) -> Outcome {
    Outcome::Answered(Answer {
        record: record(json!({"ok": false, "kind": "bad_input", "error": error})),
        ok: false,
        bad: true,
        retries: 0,
        latency: None,
        endpoint: None,
    })
}
