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
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tollgate_reqwest::retry_policies::policies::ExponentialBackoff;
use tollgate_reqwest::retry_policies::{Jitter, RetryDecision, RetryPolicy};
use tollgate_reqwest::{Attempts, Endpoint, RetryLater, TooLarge, Usage};

use super::record::{Kind, Record};
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
    Answered(Box<Answer>),
    /// Not sent (or only refused) before the run stopped: no record; a
    /// rerun sends it.
    NotSent,
    /// On the wire when the grace ran out (or a second signal came): no
    /// record; a rerun sends it.
    Abandoned,
}

/// A finished line, for the writer and the summary.
pub(crate) struct Answer {
    pub(crate) record: Record,
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
                let record = Record::new(number, &hash)
                    .failed(Kind::RetryLater, GaveUp(context.stall.limit()).to_string())
                    .took(wire.attempts(), started.elapsed());
                return Outcome::Answered(Box::new(Answer {
                    record,
                    bad: false,
                    retries: u64::from(wire.attempts().saturating_sub(1)),
                    latency: None,
                    endpoint: None,
                }));
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

/// The model a line's body names, or why the line cannot be sent.
fn model_of(bytes: &[u8]) -> Result<Option<String>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(body)) => Ok(body.get("model").and_then(Value::as_str).map(str::to_owned)),
        Ok(_) => Err("the line is JSON but not an object".to_owned()),
        Err(e) => Err(format!("the line is not JSON: {e}")),
    }
}

/// What one attempt came to.
enum Step {
    /// The line ends with this record of an answer read (its latency
    /// counted in the summary).
    Answered(Record),
    /// The line ends with this record.
    Done(Record),
    /// The run is stopping: the line was not answered.
    NotSent,
    /// Worth another attempt after a back-off: a transient answer (no
    /// record), or a failure that is the line's record once its attempts
    /// are spent.
    Again(Option<(Kind, String)>),
}

/// The attempts a line has sent, and its failures in a row.
#[derive(Default)]
struct Tries {
    attempts: u32,
    failures: u32,
}

async fn send(context: &Context, line: Line, wire: Wire) -> Outcome {
    let started = Instant::now();
    let base = Record::new(line.number, &line.hash);
    let model = match model_of(&line.bytes) {
        Ok(model) => model,
        Err(error) => return bad(base.failed(Kind::BadInput, error)),
    };
    let endpoint = Endpoint::new(&context.url, model.as_deref());
    let body = Bytes::from(line.bytes);
    let mut tries = Tries::default();
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
        let step = match request.send().await {
            Ok(response) => answered(context, response, &mut tries, &base, started).await,
            Err(error) => not_answered(&error, &mut tries, &base, started),
        };
        let (record, latency) = match step {
            Step::Answered(record) => (record, Some(started.elapsed())),
            Step::Done(record) => (record, None),
            Step::NotSent => return Outcome::NotSent,
            Step::Again(failure) => {
                if context.stop.is_stopped() {
                    return Outcome::NotSent;
                }
                let spent = tries.attempts >= context.max_attempts;
                match failure {
                    Some((kind, error)) if spent => (
                        base.clone()
                            .failed(kind, error)
                            .took(tries.attempts, started.elapsed()),
                        None,
                    ),
                    // Retried within the attempts, unless the run is
                    // stopping (a rerun sends the line).
                    _ => {
                        tries.failures += 1;
                        tokio::time::sleep(backoff(&context.backoff, tries.failures)).await;
                        continue;
                    }
                }
            }
        };
        return Outcome::Answered(Box::new(Answer {
            record,
            bad: false,
            retries: u64::from(tries.attempts.saturating_sub(1)),
            latency,
            endpoint: Some(endpoint),
        }));
    }
}

/// An answer came: read it, or retry a transient one within the attempts
/// (what it reserved of the limit given back).
async fn answered(
    context: &Context,
    mut response: Response,
    tries: &mut Tries,
    base: &Record,
    started: Instant,
) -> Step {
    let status = response.status();
    let took = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
    tries.attempts = tries.attempts.saturating_add(took);
    let usage = response.extensions().get::<Usage>().cloned();
    if transient(status) && tries.attempts < context.max_attempts {
        if let Some(usage) = usage {
            usage.report(0, 0).await;
        }
        return Step::Again(None);
    }
    let record = base
        .clone()
        .status(status.as_u16())
        .took(tries.attempts, started.elapsed());
    match read_body(&mut response, context.max_body).await {
        Ok(bytes) => {
            let answer: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            if let Some(usage) = usage {
                usage.report_body(&answer).await;
            }
            Step::Answered(if status.is_success() {
                record.answered(answer)
            } else {
                record.failed(Kind::Http, answer)
            })
        }
        Err(BodyError::TooLarge) => Step::Done(record.failed(
            Kind::BodyTooLarge,
            format!(
                "the answer's body is larger than --max-body ({} bytes); read no further",
                context.max_body
            ),
        )),
        Err(BodyError::Transport(error)) => Step::Again(Some((
            if error.is_timeout() {
                Kind::Timeout
            } else {
                Kind::Transport
            },
            format!("reading the answer: {}", chain(&error)),
        ))),
    }
}

/// No answer: the middleware ended the call (the run stopping or giving
/// up, a wait past what it takes, a cost past the limits), or the
/// connection failed or timed out (worth another attempt).
fn not_answered(
    error: &reqwest_middleware::Error,
    tries: &mut Tries,
    base: &Record,
    started: Instant,
) -> Step {
    let inner = match error {
        reqwest_middleware::Error::Middleware(inner) => inner,
        reqwest_middleware::Error::Reqwest(inner) => {
            tries.attempts = tries.attempts.saturating_add(1);
            let kind = if inner.is_timeout() {
                Kind::Timeout
            } else {
                Kind::Transport
            };
            return Step::Again(Some((kind, chain(inner))));
        }
    };
    if inner.is::<Stopped>() {
        return Step::NotSent;
    }
    if inner.is::<GaveUp>() {
        return Step::Done(
            base.clone()
                .failed(Kind::RetryLater, error.to_string())
                .took(tries.attempts, started.elapsed()),
        );
    }
    tries.attempts = tries.attempts.saturating_add(1);
    let record = base.clone();
    let record = if let Some(later) = RetryLater::from_error(error) {
        let record = record
            .failed(Kind::RetryLater, error.to_string())
            .retry_after(later.wait());
        match later.status() {
            Some(status) => record.status(status.as_u16()),
            None => record,
        }
    } else if inner.is::<TooLarge>() {
        record.failed(Kind::TooLarge, error.to_string())
    } else {
        record.failed(Kind::Transport, error.to_string())
    };
    Step::Done(record.took(tries.attempts, started.elapsed()))
}

fn bad(record: Record) -> Outcome {
    Outcome::Answered(Box::new(Answer {
        record,
        bad: true,
        retries: 0,
        latency: None,
        endpoint: None,
    }))
}
