//! The command line: flags parsed by clap, then checked once, before
//! anything is read or sent. Every flag's range is checked here; a value
//! out of range is an error naming the flag (exit 2), never a panic later.
//!
//! ```
//! use tollgate_cli::cli::{self, ArgsError, Job};
//!
//! let no_env = |_: &str| None;
//! let job = cli::parse(["tollgate", "mock", "--rpm", "600"], no_env).unwrap();
//! assert!(matches!(job, Job::Mock(..)));
//!
//! // A value out of range names its flag.
//! let Err(ArgsError::Invalid(message)) = cli::parse(["tollgate", "mock", "--rpm", "0"], no_env)
//! else {
//!     panic!("--rpm 0 is taken");
//! };
//! assert!(message.starts_with("--rpm 0"), "{message}");
//! ```

use std::ffi::OsString;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::batch::{self, BatchConfig, Output};
use crate::mock::{MockConfig, Scripted, Style};

/// Jobs per user in `simulate` at most.
pub const MAX_JOBS: usize = 1_000;
/// The mock's longest answer, in milliseconds.
pub const MAX_LATENCY_MS: u64 = 600_000;

/// Rate limits, applied: batch API calls, mock a provider, simulate.
///
/// Exit codes: 0 success; 1 some lines failed (batch); 2 bad arguments, an
/// I/O error or a failed write (batch: the message says how many answers
/// could not be saved); 129, 130, 143 stopped by SIGHUP, SIGINT, SIGTERM
/// (batch: what was answered is written; run again to resume).
#[derive(Parser, Debug)]
#[command(name = "tollgate", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send every line of a JSONL file (each a request body) to an API, as
    /// fast as its limits allow, and write each answer to an output JSONL.
    ///
    /// Limits are learnt from the response headers unless given. Each
    /// record carries the SHA-256 of its input line: run again with the
    /// same output to send only the lines whose content has no successful
    /// answer. SIGINT, SIGTERM or SIGHUP stops sending at once, lets the
    /// requests on the wire finish within --grace and writes them; a second
    /// signal quits at once.
    Batch(BatchArgs),
    /// Run an OpenAI-compatible mock provider (POST /v1/chat/completions)
    /// that enforces requests and tokens per minute in one-second slices,
    /// as real providers do, and answers with their rate-limit headers. A
    /// body with "stream": true is answered with server-sent events in the
    /// --style's shape: OpenAI's chunks (a usage chunk last when
    /// stream_options.include_usage is set) or Anthropic's events.
    Mock(MockArgs),
    /// Show how a rate limit and a concurrency limit shape throughput and
    /// latency: a "clone" service (1 job at a time, 1 request/s, 0.8 to
    /// 10.2 s of work) and a "tts" service (4 at a time, 5 requests/s, 0.2
    /// to 0.4 s), each fired at by 2 and then 5 users.
    Simulate(SimulateArgs),
}

/// The flags of `tollgate batch`.
#[derive(clap::Args, Debug)]
struct BatchArgs {
    /// The JSONL of request bodies, one JSON object a line (blank lines
    /// are skipped; others that are not objects are reported as errors).
    /// Read as the requests go out, so it may be of any size.
    #[arg(long)]
    input: PathBuf,
    /// The JSONL of answers: {"line", "input_sha256", "ok", "status",
    /// "response" or "kind" and "error", "attempts", "latency_ms"}.
    /// Appended to; a regular file is read first to resume. `-` writes to
    /// standard output (nothing to resume from).
    #[arg(long)]
    output: PathBuf,
    /// Where each body is POSTed (an OpenAI-compatible
    /// /v1/chat/completions, say).
    #[arg(long)]
    url: String,
    /// Requests per minute the API allows (else learnt from headers).
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute the API allows (else learnt from headers).
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
    /// Attempts per line that may end in an error: a transport error, a
    /// timeout, 408, 409, 500, 502, 504, or an overload (503, 529). A
    /// refusal for rate (429) is waited for as asked and retried without
    /// spending an attempt (up to 100 in a row).
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// How long one attempt may take, from connecting to the answer's last
    /// byte: `90s`, `10m`, `1h`.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
    /// How long connecting may take.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// After a signal or a failed write, how long the requests on the
    /// wire may take to finish (and be written).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    grace: Duration,
    /// How long to go on with no answer but refusals (429, 503, 529):
    /// then nothing more is sent, and each line not on the wire is
    /// recorded as `retry_later` (a rerun sends it).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    give_up_after: Duration,
    /// The largest answer body kept (`64MiB`, `500kB`, bytes); a larger one
    /// is recorded as an error, read no further.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    max_body: u64,
    /// The environment variable holding the API key, sent as a bearer
    /// token (nothing is sent if it is unset).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// Keep the budgets, learnt limits and pauses in Redis
    /// (`redis://host:6379/`), so that several batches calling one
    /// provider with one key share its limit.
    #[arg(long)]
    redis: Option<String>,
    /// Serve the run's metrics (Prometheus' text format) at GET /metrics
    /// on this address (`127.0.0.1:9090`; port 0: any free one).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

/// Where a mock listens and keeps its limits (its `Debug` hides the
/// Redis password).
pub struct MockPlace {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// Redis for the limits, if any.
    pub redis: Option<String>,
    /// Whether other mocks may listen on the same port.
    pub reuse_port: bool,
    /// Where to serve the metrics, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl std::fmt::Debug for MockPlace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockPlace")
            .field("port", &self.port)
            .field(
                "redis",
                &self.redis.as_deref().map(tollgate_redis::redact_url),
            )
            .field("reuse_port", &self.reuse_port)
            .field("metrics_addr", &self.metrics_addr)
            .finish()
    }
}

/// The flags of `tollgate mock`.
#[derive(clap::Args, Debug)]
struct MockArgs {
    /// Requests per minute.
    #[arg(long, default_value_t = 600)]
    rpm: u64,
    /// Tokens per minute (prompt tokens plus max_tokens).
    #[arg(long, default_value_t = 100_000)]
    tpm: u64,
    /// Whose headers to answer with (`bare`: none, only `Retry-After` on a
    /// refusal).
    #[arg(long, value_enum, default_value_t = Style::Openai)]
    style: Style,
    /// The port on 127.0.0.1 (0: any free one).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// Milliseconds an answer takes, drawn from A..B.
    #[arg(long, default_value = "100..300", value_parser = parse_range)]
    latency_ms: Range<u64>,
    /// Enforce the limits in Redis (`redis://host:6379/`), so that several
    /// mock instances enforce one limit together.
    #[arg(long)]
    redis: Option<String>,
    /// Let several mocks listen on the same --port (SO_REUSEPORT): the
    /// kernel spreads connections among them, as a load balancer would.
    #[arg(long)]
    reuse_port: bool,
    /// Serve the mock's metrics (Prometheus' text format) at GET /metrics
    /// on this address (`127.0.0.1:9090`; port 0: any free one).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Count as a provider that counts this way (the scripted provider of
    /// the workspace's tests and benchmarks): a bucket refilled
    /// continuously, a sliding window or a fixed window, each enforced
    /// over --slice. In this process only (not with --redis).
    #[arg(long, value_enum)]
    counting: Option<CountingArg>,
    /// The slice --counting enforces a minute's limit over (`1s`, `10s`):
    /// it holds the limit times the slice over a minute.
    #[arg(long, requires = "counting", value_parser = humantime::parse_duration)]
    slice: Option<std::time::Duration>,
    /// What --counting charges a call besides its prompt: its
    /// `max_tokens` (16 when absent), or the output written.
    #[arg(long, requires = "counting", value_enum, default_value_t = ChargeArg::MaxTokens)]
    charge: ChargeArg,
    /// The output tokens the --counting provider writes when `max_tokens`
    /// allows it (default: `max_tokens` in full).
    #[arg(long, requires = "counting")]
    writes: Option<u64>,
    /// How --counting tells a token `remaining`: exact, or rounded down to
    /// thousands (as Anthropic tells its tokens).
    #[arg(long, requires = "counting", value_enum, default_value_t = RoundingArg::Exact)]
    rounding: RoundingArg,
}

/// `tollgate mock --counting`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum CountingArg {
    /// A bucket holding a slice's worth, refilled continuously; `remaining`
    /// is a minute's bucket (close to the limit while calls are paced).
    Bucket,
    /// A slice's worth over any slice-long stretch; `remaining` counts the
    /// last 60 s.
    Sliding,
    /// A slice's worth in each slice of the clock; `remaining` counts this
    /// minute of the clock.
    Fixed,
}

/// `tollgate mock --charge`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ChargeArg {
    /// The body's `max_tokens` (16 when it names none).
    MaxTokens,
    /// The output written.
    Written,
}

/// `tollgate mock --rounding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum RoundingArg {
    /// As counted.
    Exact,
    /// Rounded down to thousands.
    Thousands,
}

/// The flags of `tollgate simulate`.
#[derive(clap::Args, Debug)]
pub struct SimulateArgs {
    /// Jobs each user sends, one after another.
    #[arg(long, default_value_t = 3)]
    pub jobs: usize,
    /// The seed of the work durations: the same seed, the same run.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Run on the real clock and print each job as it ends (the default
    /// virtual clock finishes in about a second).
    #[arg(long)]
    pub real_time: bool,
    /// Also draw when each job waited and ran, as an SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// What the command line asks for, checked.
#[derive(Debug)]
pub enum Job {
    /// `tollgate batch`.
    Batch(Box<BatchConfig>),
    /// `tollgate mock`, on a port of 127.0.0.1.
    Mock(MockConfig, MockPlace),
    /// `tollgate simulate`.
    Simulate(SimulateArgs),
}

/// Why the command line was not taken.
#[derive(Debug)]
pub enum ArgsError {
    /// clap's own: unknown flags, a value of the wrong type, or `--help` and
    /// `--version` (which print and exit 0).
    Parse(clap::Error),
    /// A value out of range, named with its flag.
    Invalid(String),
}

/// Parses and checks a command line (`args` starts with the program's
/// name); `env` reads an environment variable (the API key's).
pub fn parse<I, T>(args: I, env: impl Fn(&str) -> Option<OsString>) -> Result<Job, ArgsError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(ArgsError::Parse)?;
    let job = match cli.command {
        Command::Batch(args) => Job::Batch(Box::new(batch_config(args, env)?)),
        Command::Mock(args) => {
            for (flag, n) in [("--rpm", args.rpm), ("--tpm", args.tpm)] {
                if !(1..=batch::MAX_PER_MINUTE).contains(&n) {
                    return Err(ArgsError::Invalid(format!(
                        "{flag} {n}: give 1 to {} a minute",
                        batch::MAX_PER_MINUTE
                    )));
                }
            }
            if args.latency_ms.end > MAX_LATENCY_MS {
                return Err(ArgsError::Invalid(format!(
                    "--latency-ms {}..{}: at most {MAX_LATENCY_MS} ms",
                    args.latency_ms.start, args.latency_ms.end
                )));
            }
            let scripted = match args.counting {
                None => None,
                Some(counting) => {
                    let slice = args.slice.unwrap_or(std::time::Duration::from_secs(1));
                    if !(std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(60))
                        .contains(&slice)
                    {
                        return Err(ArgsError::Invalid(format!(
                            "--slice {}: give 100ms to 60s",
                            humantime::format_duration(slice)
                        )));
                    }
                    if args.redis.is_some() {
                        return Err(ArgsError::Invalid(
                            "--counting counts in this process: it cannot share a limit through --redis"
                                .to_owned(),
                        ));
                    }
                    Some(Scripted {
                        counting: match counting {
                            CountingArg::Bucket => tollgate_mock::Counting::bucket(slice),
                            CountingArg::Sliding => tollgate_mock::Counting::sliding(slice),
                            CountingArg::Fixed => tollgate_mock::Counting::fixed(slice),
                        },
                        charge: match args.charge {
                            ChargeArg::MaxTokens => tollgate_mock::Charge::MaxTokens,
                            ChargeArg::Written => tollgate_mock::Charge::Written,
                        },
                        writes: args.writes,
                        rounding: match args.rounding {
                            RoundingArg::Exact => tollgate_mock::Rounding::Exact,
                            RoundingArg::Thousands => tollgate_mock::Rounding::Thousands,
                        },
                    })
                }
            };
            let config = MockConfig {
                rpm: args.rpm,
                tpm: args.tpm,
                style: args.style,
                latency_ms: args.latency_ms,
                store: None,
                scripted,
            };
            Job::Mock(
                config,
                MockPlace {
                    port: args.port,
                    redis: args.redis,
                    reuse_port: args.reuse_port,
                    metrics_addr: args.metrics_addr,
                },
            )
        }
        Command::Simulate(args) => {
            if !(1..=MAX_JOBS).contains(&args.jobs) {
                return Err(ArgsError::Invalid(format!(
                    "--jobs {}: give 1 to {MAX_JOBS}",
                    args.jobs
                )));
            }
            Job::Simulate(args)
        }
    };
    Ok(job)
}

fn batch_config(
    args: BatchArgs,
    env: impl Fn(&str) -> Option<OsString>,
) -> Result<BatchConfig, ArgsError> {
    let invalid = ArgsError::Invalid;
    let url = reqwest::Url::parse(&args.url)
        .map_err(|e| invalid(format!("--url {:?}: {e}", args.url)))?;
    let api_key = match env(&args.api_key_env) {
        None => None,
        Some(key) => Some(key.into_string().map_err(|_| {
            invalid(format!(
                "the API key in {} is not UTF-8: a key is plain text",
                args.api_key_env
            ))
        })?),
    };
    let mut config = BatchConfig::new(args.input, Output::from_arg(&args.output), url);
    config.rpm = args.rpm;
    config.tpm = args.tpm;
    config.max_in_flight = args.max_in_flight;
    config.max_attempts = args.max_attempts;
    config.api_key = api_key;
    config.timeout = args.timeout;
    config.connect_timeout = args.connect_timeout;
    config.grace = args.grace;
    config.give_up_after = args.give_up_after;
    config.max_body = args.max_body;
    config.progress = !args.quiet;
    config.redis = args.redis;
    config.metrics_addr = args.metrics_addr;
    config
        .check()
        .map_err(|e| match e.strip_prefix("the API key") {
            Some(rest) => invalid(format!("the API key in {}{rest}", args.api_key_env)),
            None => invalid(e),
        })?;
    Ok(config)
}

/// `90s`, `10m`, `1h 30m`, `250ms`; a bare number is seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e} (write 30s, 10m, 1h)"))
}

/// Bytes, or a number with a unit: kB, MB, GB (powers of 1000) or KiB, MiB,
/// GiB (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: write a size as 65536, 500kB or 64MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "kB" | "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (B, kB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?}: too large"))
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (a, b) = text
        .split_once("..")
        .ok_or_else(|| format!("{text:?}: write a range as A..B, in milliseconds"))?;
    let a: u64 = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u64 = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a > b {
        return Err(format!("{text:?}: the start is after the end"));
    }
    Ok(a..b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65_536));
        assert_eq!(parse_size("500kB"), Ok(500_000));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert!(parse_size("18446744073709551615GiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("soon").is_err());
    }
}
