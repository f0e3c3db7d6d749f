//! `tollgate batch`: every line of a JSONL file sent to an API as fast as
//! its limits allow, each answer written to an output JSONL, resumable.

use std::collections::{BTreeSet, HashSet};
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tollgate_reqwest::{
    Attempts, Endpoint, ProviderLimits, RateLimitMiddleware, RetryLater, Usage,
};

/// What `tollgate batch` was asked to do.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// The JSONL of request bodies.
    pub input: PathBuf,
    /// The JSONL of answers; appended to, and read first to resume.
    pub output: PathBuf,
    /// Where each body is POSTed.
    pub url: String,
    /// Requests per minute, when known; else learnt from the headers.
    pub rpm: Option<u64>,
    /// Tokens per minute, when known; else learnt.
    pub tpm: Option<u64>,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Attempts per line, the first included.
    pub max_attempts: u32,
    /// The bearer token, if any.
    pub api_key: Option<String>,
    /// Whether to draw a progress bar (on a terminal).
    pub progress: bool,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Summary {
    /// Lines in the input (blank ones not counted).
    pub lines: u64,
    /// Lines already answered by an earlier run, skipped.
    pub already_done: u64,
    /// Lines answered successfully in this run.
    pub ok: u64,
    /// Lines that failed in this run (bad input, an error status, no answer).
    pub failed: u64,
    /// Of those, lines that were not a JSON object.
    pub bad_lines: u64,
    /// Attempts answered 429, 503 or 529 (retried, or returned).
    pub refused: u64,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Latency of each line answered in this run, queueing included.
    pub latencies: Vec<Duration>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
    /// Whether the run was interrupted (Ctrl-C) before every line was sent.
    pub interrupted: bool,
    /// The limits in force at the end, per endpoint and model.
    pub learnt: Vec<(String, ProviderLimits)>,
}

impl Summary {
    /// The process's exit code: 0 when every line has a successful answer,
    /// 1 when some failed, 130 when interrupted.
    pub fn exit_code(&self) -> i32 {
        if self.interrupted {
            130
        } else if self.failed > 0 {
            1
        } else {
            0
        }
    }

    /// The latency below which `q` (0 to 1) of the answers came.
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
        sorted.get(index).copied()
    }

    /// The summary printed at the end of a run.
    pub fn report(&self) -> String {
        let ms = |d: Option<Duration>| {
            d.map_or("-".into(), |d| format!("{:.0} ms", d.as_secs_f64() * 1e3))
        };
        let secs = self.elapsed.as_secs_f64();
        let mut out = String::new();
        out.push_str(&format!(
            "lines: {} ({} answered before), ok: {}, failed: {} ({} bad lines){}\n",
            self.lines,
            self.already_done,
            self.ok,
            self.failed,
            self.bad_lines,
            if self.interrupted {
                ", interrupted"
            } else {
                ""
            }
        ));
        out.push_str(&format!(
            "throughput: {:.2} requests/s over {:.1} s\n",
            if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            secs
        ));
        out.push_str(&format!(
            "latency: p50 {}, p90 {}, p99 {}\n",
            ms(self.percentile(0.5)),
            ms(self.percentile(0.9)),
            ms(self.percentile(0.99))
        ));
        out.push_str(&format!(
            "refused (429/503/529): {}, retries: {}\n",
            self.refused, self.retries
        ));
        for (endpoint, limits) in &self.learnt {
            out.push_str(&format!("limits for {endpoint}: {}\n", describe(limits)));
        }
        out
    }
}

fn describe(limits: &ProviderLimits) -> String {
    let parts: Vec<String> = [
        ("requests", limits.requests()),
        ("tokens", limits.tokens()),
        ("input tokens", limits.input_tokens()),
        ("output tokens", limits.output_tokens()),
    ]
    .iter()
    .filter_map(|(name, n)| n.map(|n| format!("{n} {name}/min")))
    .collect();
    if parts.is_empty() {
        "none stated".into()
    } else {
        parts.join(", ")
    }
}

/// One finished line, for the writer.
struct Answer {
    record: Value,
    ok: bool,
    bad: bool,
    refused: u64,
    retries: u64,
    latency: Option<Duration>,
    endpoint: Option<Endpoint>,
}

/// Lines of an earlier output that need no answer again: answered
/// successfully, or reported as bad input (which would fail the same way).
fn done_lines(output: &PathBuf) -> Result<HashSet<u64>, String> {
    let mut done = HashSet::new();
    let file = match File::open(output) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(done),
        Err(e) => return Err(format!("cannot read {}: {e}", output.display())),
    };
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| format!("cannot read {}: {e}", output.display()))?;
        // A line cut short by a crash is not JSON, and so not done.
        let Ok(record) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        let settled = record["ok"] == json!(true) || record["kind"] == json!("bad_input");
        if let (true, Some(n)) = (settled, record["line"].as_u64()) {
            done.insert(n);
        }
    }
    Ok(done)
}

/// Opens the output for appending, ending a line cut short by a crash so
/// that the next record starts on a line of its own.
fn open_output(output: &PathBuf) -> Result<File, String> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(output)
        .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))
            .and_then(|_| file.read_exact(&mut last))
            .map_err(|e| format!("cannot read {}: {e}", output.display()))?;
        if last[0] != b'\n' {
            file.write_all(b"\n")
                .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
        }
    }
    Ok(file)
}

/// Runs the batch until every line is answered or `shutdown` completes;
/// after `shutdown`, no new line is sent, those in flight finish, and
/// everything is written.
pub async fn run(
    config: BatchConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, String> {
    if config.max_in_flight == 0 {
        return Err("--max-in-flight must be at least 1".into());
    }
    let input = File::open(&config.input)
        .map_err(|e| format!("cannot read {}: {e}", config.input.display()))?;
    let done = done_lines(&config.output)?;
    let mut output = open_output(&config.output)?;

    // Count the lines to do, for the progress bar.
    let mut lines: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut summary = Summary::default();
    for (index, line) in BufReader::new(input).split(b'\n').enumerate() {
        let line = line.map_err(|e| format!("cannot read {}: {e}", config.input.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let number = index as u64 + 1;
        if done.contains(&number) {
            summary.already_done += 1;
        } else {
            lines.push((number, line));
        }
    }

    let mut limits = ProviderLimits::new();
    if let Some(rpm) = config.rpm {
        limits = limits.requests_per_minute(rpm);
    }
    if let Some(tpm) = config.tpm {
        limits = limits.tokens_per_minute(tpm);
    }
    let middleware = RateLimitMiddleware::builder()
        .limits(limits)
        .max_attempts(config.max_attempts)
        // A batch runs against one known provider for minutes: pace at 98%.
        .headroom(0.02)
        .build();
    let client = Arc::new(
        ClientBuilder::new(reqwest::Client::new())
            .with(middleware.clone())
            .build(),
    );

    let bar = progress_bar(config.progress, lines.len() as u64);
    let (answers, mut received) = mpsc::unbounded_channel::<Answer>();
    let slots = Arc::new(Semaphore::new(config.max_in_flight));
    let start = Instant::now();
    let config = Arc::new(config);

    let producer = async {
        let mut interrupted = false;
        tokio::pin!(shutdown);
        for (number, line) in lines {
            let permit = tokio::select! {
                permit = Arc::clone(&slots).acquire_owned() => permit,
                () = &mut shutdown => { interrupted = true; break; }
            };
            let Ok(permit) = permit else { break };
            let (client, config, answers) =
                (Arc::clone(&client), Arc::clone(&config), answers.clone());
            tokio::spawn(async move {
                let answer = send(&client, &config, number, &line).await;
                let _ = answers.send(answer);
                drop(permit);
            });
        }
        drop(answers);
        interrupted
    };

    let writer = async {
        let mut endpoints = BTreeSet::new();
        let mut result = Ok(());
        while let Some(answer) = received.recv().await {
            let mut text = answer.record.to_string();
            text.push('\n');
            // Written and flushed line by line: a crash loses at most the
            // line being written, which a resumed run sends again.
            if let Err(e) = output
                .write_all(text.as_bytes())
                .and_then(|()| output.flush())
            {
                result = Err(format!("cannot write {}: {e}", config.output.display()));
            }
            if answer.ok {
                summary.ok += 1;
            } else {
                summary.failed += 1;
            }
            summary.bad_lines += u64::from(answer.bad);
            summary.refused += answer.refused;
            summary.retries += answer.retries;
            summary.latencies.extend(answer.latency);
            if let Some(endpoint) = answer.endpoint {
                endpoints.insert(endpoint.to_string());
                if let Some(limits) = middleware.limits_for(&endpoint) {
                    summary
                        .learnt
                        .retain(|(name, _)| *name != endpoint.to_string());
                    summary.learnt.push((endpoint.to_string(), limits));
                }
            }
            bar.inc(1);
            bar.set_message(format!(
                "failed {}, refused {}",
                summary.failed, summary.refused
            ));
        }
        result
    };

    let (interrupted, written) = tokio::join!(producer, writer);
    bar.finish_and_clear();
    written?;
    let _ = output.sync_data();
    summary.interrupted = interrupted;
    summary.elapsed = start.elapsed();
    Ok(summary)
}

fn progress_bar(enabled: bool, len: u64) -> ProgressBar {
    if !enabled {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} done, {msg}, {per_sec}, ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}

/// Sends one line; never fails: every outcome becomes a record.
async fn send(
    client: &ClientWithMiddleware,
    config: &BatchConfig,
    number: u64,
    line: &[u8],
) -> Answer {
    let started = Instant::now();
    let body = match serde_json::from_slice::<Value>(line) {
        Ok(body) if body.is_object() => body,
        Ok(_) => return bad(number, "the line is JSON but not an object".into()),
        Err(e) => return bad(number, format!("the line is not JSON: {e}")),
    };
    let endpoint = reqwest::Url::parse(&config.url)
        .ok()
        .map(|url| Endpoint::new(&url, body.get("model").and_then(Value::as_str)));
    let mut request = client
        .post(&config.url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = &config.api_key {
        request = request.bearer_auth(key);
    }
    let result = request.send().await;
    let latency = started.elapsed();
    let latency_ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(response) => {
            let status = response.status();
            let attempts = response.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let usage = response.extensions().get::<Usage>().cloned();
            let bytes = response.bytes().await.unwrap_or_default();
            let answer: Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
            if let Some(usage) = usage {
                usage.report_body(&answer).await;
            }
            let retries = u64::from(attempts.saturating_sub(1));
            let refused_now = u64::from(matches!(status.as_u16(), 429 | 503 | 529));
            let ok = status.is_success();
            let mut record = json!({
                "line": number,
                "ok": ok,
                "status": status.as_u16(),
                "attempts": attempts,
                "latency_ms": latency_ms,
            });
            if ok {
                record["response"] = answer;
            } else {
                record["kind"] = json!("http");
                record["error"] = answer;
            }
            Answer {
                record,
                ok,
                bad: false,
                refused: retries + refused_now,
                retries,
                latency: Some(latency),
                endpoint,
            }
        }
        Err(error) => {
            let (kind, wait) = match RetryLater::from_error(&error) {
                Some(later) => ("retry_later", Some(later.wait().as_secs_f64())),
                None => ("transport", None),
            };
            let mut record = json!({
                "line": number,
                "ok": false,
                "kind": kind,
                "error": error.to_string(),
                "latency_ms": latency_ms,
            });
            if let Some(wait) = wait {
                record["retry_after_s"] = json!(wait);
            }
            Answer {
                record,
                ok: false,
                bad: false,
                refused: 0,
                retries: 0,
                latency: None,
                endpoint,
            }
        }
    }
}

fn bad(number: u64, error: String) -> Answer {
    Answer {
        record: json!({"line": number, "ok": false, "kind": "bad_input", "error": error}),
        ok: false,
        bad: true,
        refused: 0,
        retries: 0,
        latency: None,
        endpoint: None,
    }
}
