//! What `tollgate batch` is asked to do, and the checks made on it before
//! anything is sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::Url;

/// Requests or tokens per minute above this are no limit at all (the
/// client middleware treats a dimension nobody set as this open).
pub const MAX_PER_MINUTE: u64 = 1_000_000_000;
/// Requests in flight at most: each is a connection (a file descriptor).
pub const MAX_IN_FLIGHT: usize = 10_000;
/// Attempts per line at most.
pub const MAX_ATTEMPTS: u32 = 100;
/// The longest `--timeout`, `--connect-timeout` and `--grace`.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest `--max-body`: an answer is held in memory whole.
pub const MAX_BODY: u64 = 4 << 30;

/// Where the answers go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// A file, appended to; when it is a regular file, read first to resume.
    File(PathBuf),
    /// Standard output (`--output -`): nothing to resume from.
    Stdout,
}

impl Output {
    /// `-` is standard output; anything else a path.
    pub fn from_arg(arg: &Path) -> Self {
        if arg == Path::new("-") {
            Self::Stdout
        } else {
            Self::File(arg.to_owned())
        }
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Stdout => "standard output".into(),
        }
    }
}

/// What `tollgate batch` was asked to do. [`BatchConfig::new`] gives the
/// defaults; [`BatchConfig::check`] (called by [`run`](super::run) before
/// anything is read or sent) says what is out of range. Its `Debug`
/// hides the API key and the Redis password.
#[derive(Clone)]
pub struct BatchConfig {
    /// The JSONL of request bodies, read as it is sent.
    pub input: PathBuf,
    /// Where the answers go.
    pub output: Output,
    /// Where each body is POSTed.
    pub url: Url,
    /// Requests per minute, when known; else learnt from the headers.
    pub rpm: Option<u64>,
    /// Tokens per minute, when known; else learnt.
    pub tpm: Option<u64>,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// Attempts per line that may end in an error, the first included:
    /// transport errors, timeouts, 408 / 409 / 500 / 502 / 504 and
    /// overloads (503, 529) are retried within them. Refusals for rate
    /// (429) are waited for and retried without spending them.
    pub max_attempts: u32,
    /// The API key, sent as a bearer token, if any.
    pub api_key: Option<String>,
    /// How long one attempt may take, from connecting to the last byte of
    /// the answer.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// After a stop, how long the requests on the wire may take to finish.
    pub grace: Duration,
    /// How long the run goes on with no answer but refusals (429, 503,
    /// 529): after it, no request is sent again, and every line not on the
    /// wire ends as a `retry_later` record (a rerun sends it).
    pub give_up_after: Duration,
    /// The largest answer body kept, in bytes; a larger one is an error
    /// record, read no further.
    pub max_body: u64,
    /// Whether to draw a progress bar (on a terminal).
    pub progress: bool,
    /// Redis, to share the budgets with other batches (`redis://…`).
    pub redis: Option<String>,
    /// Where to serve the run's metrics (`GET /metrics`), if anywhere:
    /// [`crate::metrics::serve`] is started by the binary before the run.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for BatchConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchConfig")
            .field("input", &self.input)
            .field("output", &self.output)
            .field("url", &tollgate_redis::redact_url(self.url.as_str()))
            .field("rpm", &self.rpm)
            .field("tpm", &self.tpm)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_attempts", &self.max_attempts)
            .field("api_key", &self.api_key.as_ref().map(|_| "***"))
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("grace", &self.grace)
            .field("give_up_after", &self.give_up_after)
            .field("max_body", &self.max_body)
            .field("progress", &self.progress)
            .field(
                "redis",
                &self.redis.as_deref().map(tollgate_redis::redact_url),
            )
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

impl BatchConfig {
    /// The defaults: limits learnt, 64 in flight, 5 attempts, a 10 minute
    /// timeout (LLM answers can be slow), 10 s to connect, 30 s of grace,
    /// giving up after 10 minutes of nothing but refusals, bodies up to 64
    /// MiB, no key, no progress bar.
    pub fn new(input: impl Into<PathBuf>, output: Output, url: Url) -> Self {
        Self {
            input: input.into(),
            output,
            url,
            rpm: None,
            tpm: None,
            max_in_flight: 64,
            max_attempts: 5,
            api_key: None,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(30),
            give_up_after: Duration::from_secs(600),
            max_body: 64 << 20,
            progress: false,
            redis: None,
            metrics_addr: None,
        }
    }

    /// Every setting in range, or a message naming the flag at fault.
    pub fn check(&self) -> Result<(), String> {
        for (flag, value) in [("--rpm", self.rpm), ("--tpm", self.tpm)] {
            if let Some(n) = value {
                if !(1..=MAX_PER_MINUTE).contains(&n) {
                    return Err(format!(
                        "{flag} {n}: give a limit from 1 to {MAX_PER_MINUTE} a minute, or leave it out to learn it from the answers"
                    ));
                }
            }
        }
        if !(1..=MAX_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(format!(
                "--max-in-flight {}: give 1 to {MAX_IN_FLIGHT}",
                self.max_in_flight
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!(
                "--max-attempts {}: give 1 to {MAX_ATTEMPTS}",
                self.max_attempts
            ));
        }
        for (flag, value, least) in [
            ("--timeout", self.timeout, Duration::from_millis(1)),
            (
                "--connect-timeout",
                self.connect_timeout,
                Duration::from_millis(1),
            ),
            ("--grace", self.grace, Duration::ZERO),
            (
                "--give-up-after",
                self.give_up_after,
                Duration::from_secs(1),
            ),
        ] {
            if value < least || value > MAX_DURATION {
                return Err(format!(
                    "{flag} {}: give {} to 24h",
                    humantime::format_duration(value),
                    humantime::format_duration(least)
                ));
            }
        }
        if !(1..=MAX_BODY).contains(&self.max_body) {
            return Err(format!("--max-body {}: give 1 byte to 4GiB", self.max_body));
        }
        check_url(&self.url)?;
        if let Some(key) = &self.api_key {
            bearer(key)?;
        }
        if let Output::File(output) = &self.output {
            if same_file(&self.input, output) {
                return Err(format!(
                    "--input and --output are the same file ({}): the answers would be appended to the requests",
                    output.display()
                ));
            }
        }
        Ok(())
    }
}

/// Only HTTP(S) URLs with a host can be sent to (HTTPS with the `tls`
/// feature, on by default).
pub(crate) fn check_url(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "http" if url.host().is_some() => Ok(()),
        "https" if url.host().is_some() && cfg!(feature = "tls") => Ok(()),
        "https" if url.host().is_some() => Err(format!(
            "--url {url}: this build has no TLS (built without the `tls` feature); build it with the default features"
        )),
        _ => Err(format!(
            "--url {url}: give an http:// or https:// URL with a host, such as http://127.0.0.1:8000/v1/chat/completions"
        )),
    }
}

/// The `Authorization` value for a key, or why it cannot be one.
pub(crate) fn bearer(key: &str) -> Result<HeaderValue, String> {
    if key.is_empty() {
        return Err("the API key is empty: unset the variable to send no key".into());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
        "the API key holds a character a header cannot carry (a newline or another control character?)".to_owned()
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// Whether two paths name one file (both must exist to be one).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(a), std::fs::metadata(b)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}
