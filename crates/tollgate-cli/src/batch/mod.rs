//! `tollgate batch`: every line of a JSONL file sent to an API as fast as
//! its limits allow, each answer written to an output JSONL as it comes.
//!
//! Every answer has been paid for, so none is lost:
//! - the input is read as lines are sent and the output written as answers
//!   come (memory stays flat whatever the input's size), each record
//!   flushed on its own line;
//! - every record carries the SHA-256 of its input line, and a rerun sends
//!   exactly the lines whose content has no settled record (see
//!   [`BatchConfig::output`]);
//! - every attempt has a timeout, and transport errors and timeouts are
//!   retried within the attempts;
//! - a [`Signal`] stops intake at once, drops the lines not yet on the wire
//!   (those waiting for their turn included), lets those on the wire finish
//!   within the grace and records them; a second signal quits at once;
//! - the first failed write stops the run the same way, and the error says
//!   how many answers could not be saved.
//!
//! Three lines against a mock provider on loopback, limits learnt from its
//! headers:
//!
//! ```
//! use tollgate_cli::{batch, cli, mock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = mock::MockConfig {
//!     rpm: 600,
//!     tpm: 100_000,
//!     style: mock::Style::Openai,
//!     latency_ms: 0..1,
//!     store: None,
//!     scripted: None,
//! };
//! let (addr, server) = mock::bind(config, 0).await?;
//! tokio::spawn(server);
//!
//! let dir = std::env::temp_dir().join(format!("tollgate-batch-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
//! let body = r#"{"model":"m","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
//! std::fs::write(&input, format!("{body}\n{body}\n{body}\n"))?;
//! let _ = std::fs::remove_file(&output);
//!
//! let url = format!("http://{addr}/v1/chat/completions");
//! let args = ["tollgate", "batch", "--input", input.to_str().unwrap()]
//!     .into_iter()
//!     .chain(["--output", output.to_str().unwrap(), "--url", &url]);
//! let cli::Job::Batch(config) = cli::parse(args, |_| None).map_err(|e| format!("{e:?}"))?
//! else {
//!     unreachable!("a batch command line");
//! };
//! // No signal will come: the channel's sender is dropped.
//! let (_, signals) = tokio::sync::mpsc::unbounded_channel();
//! let summary = batch::run(*config, signals).await?;
//! assert_eq!((summary.ok, summary.failed), (3, 0));
//! assert_eq!(std::fs::read_to_string(&output)?.lines().count(), 3);
//! std::fs::remove_dir_all(&dir)?;
//! # Ok(())
//! # }
//! ```

mod config;
mod line;
mod record;
mod resume;
mod stall;
mod stop;
mod summary;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest_middleware::ClientBuilder;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

use tollgate_redis::RedisStore;
use tollgate_reqwest::{Endpoint, ProviderLimits, RateLimitMiddleware};

pub use config::{
    BatchConfig, Output, MAX_ATTEMPTS, MAX_BODY, MAX_DURATION, MAX_IN_FLIGHT, MAX_PER_MINUTE,
};
pub use stop::Signal;
pub use summary::Summary;

use line::{Context, Gate, Line, Outcome};
use resume::Earlier;
use stall::Stall;
use stop::{Reason, Stop};

/// Lines read ahead of the requests, and records queued for the writer.
const QUEUE: usize = 1024;

/// What the input reader saw.
#[derive(Default)]
struct Read {
    lines: u64,
    already_done: u64,
    /// Lines read after intake stopped, without a settled record.
    left: u64,
    unmatched: u64,
}

/// The limits the middleware learnt for an endpoint, whatever its store.
type LimitsOf = Box<dyn Fn(&Endpoint) -> Option<ProviderLimits> + Send>;

/// What the writer managed.
struct Written {
    /// Records that could not be written after the first failure.
    unsaved: u64,
}

/// Why a run could not start, or stopped before its end. Each is exit 2.
#[derive(Debug)]
#[non_exhaustive]
pub enum BatchError {
    /// A flag's value cannot be used.
    Config(String),
    /// The input cannot be opened.
    Input(String),
    /// The output cannot be read (to resume from it) or opened.
    Output(String),
    /// `--redis`: Redis cannot be reached, or refused the credentials.
    Redis(tollgate_redis::StoreError),
    /// The HTTP client cannot start.
    Client(reqwest::Error),
    /// A task of the run ended without its result.
    Task(String),
    /// The run stopped at the first failed write.
    Write {
        /// The write's error.
        error: String,
        /// Answered lines whose records could not be saved.
        unsaved: u64,
        /// Lines not sent.
        left: u64,
        /// Lines answered.
        answered: u64,
    },
    /// The run stopped taking lines at a failed read of the input.
    Read {
        /// The read's error.
        error: String,
        /// Answered lines whose records could not be saved.
        unsaved: u64,
    },
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(message)
            | Self::Input(message)
            | Self::Output(message)
            | Self::Task(message) => f.write_str(message),
            Self::Redis(error) => write!(f, "--redis: {error}"),
            Self::Client(error) => write!(f, "cannot start the HTTP client: {error}"),
            Self::Write {
                error,
                unsaved,
                left,
                answered,
            } => write!(
                f,
                "{error}: stopped at the first failed write; {unsaved} answered lines could not be saved, {left} lines were not sent (of {answered} answered, {} were saved); run again once the output can be written",
                answered.saturating_sub(*unsaved),
            ),
            Self::Read { error, unsaved } => write!(
                f,
                "{error}: stopped taking lines; what was answered is saved ({unsaved} answered lines could not be saved); run again once the input can be read"
            ),
        }
    }
}

impl std::error::Error for BatchError {}

/// Runs the batch until every line has an outcome or a stop. `signals`
/// delivers the signals that stop it (the first stops intake, a second
/// quits at once); a closed channel means none will come.
///
/// Returns the summary, or an error (exit 2) when the configuration is out
/// of range, a file cannot be opened, or the output cannot be written or
/// the input read to its end: then the message says how many answers were
/// saved.
pub async fn run(
    config: BatchConfig,
    signals: mpsc::UnboundedReceiver<Signal>,
) -> Result<Summary, BatchError> {
    config.check().map_err(BatchError::Config)?;
    let auth = config
        .api_key
        .as_deref()
        .map(config::bearer)
        .transpose()
        .map_err(BatchError::Config)?;
    let input = File::open(&config.input)
        .map_err(|e| BatchError::Input(format!("cannot read {}: {e}", config.input.display())))?;
    // Redis is checked before the output is touched: a wrong URL or
    // password stops the run with nothing written.
    let store = connect(&config).await?;
    let (earlier, sink): (Earlier, Box<dyn Write + Send>) = match &config.output {
        Output::File(path) => (
            Earlier::read(path).map_err(BatchError::Output)?,
            Box::new(resume::open_output(path).map_err(BatchError::Output)?),
        ),
        Output::Stdout => (Earlier::default(), Box::new(std::io::stdout())),
    };
    let stop = Stop::new(config.grace);
    let stall = Arc::new(Stall::new(config.give_up_after));
    let (client, learnt_limits) = client(&config, store, &stop, &stall)?;
    let context = Arc::new(Context {
        client,
        url: config.url.clone(),
        auth,
        max_attempts: config.max_attempts,
        max_body: config.max_body,
        stop: stop.clone(),
        stall: Arc::clone(&stall),
        backoff: line::backoff_policy(),
    });
    let listener = tokio::spawn(listen(signals, stop.clone(), config.grace));

    let bar = progress_bar(config.progress, &config.input);
    let start = Instant::now();
    let (lines_tx, lines_rx) = mpsc::channel::<Line>(QUEUE);
    let reader = {
        let (stop, bar) = (stop.clone(), bar.clone());
        tokio::task::spawn_blocking(move || read_input(input, earlier, &lines_tx, &stop, &bar))
    };
    let (records_tx, records_rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let writer = {
        let (stop, output) = (stop.clone(), config.output.describe());
        tokio::task::spawn_blocking(move || write_records(sink, records_rx, &stop, &output))
    };
    let (outcomes_tx, outcomes_rx) = mpsc::channel::<Outcome>(config.max_in_flight);
    let (cancelled, (mut summary, endpoints)) = tokio::join!(
        dispatch(&context, lines_rx, outcomes_tx, config.max_in_flight),
        collect(outcomes_rx, records_tx, &bar, &stall),
    );
    let read = reader
        .await
        .map_err(|e| BatchError::Task(format!("the input reader failed: {e}")))?;
    let written = writer
        .await
        .map_err(|e| BatchError::Task(format!("the writer failed: {e}")))?;
    listener.abort();
    bar.finish_and_clear();

    summary.elapsed = start.elapsed();
    // Every refusal, those of lines that never got an answer included.
    summary.refused = stall.refusals();
    summary.gave_up = stall.given_up().then(|| stall.limit());
    summary.lines = read.lines;
    summary.already_done = read.already_done;
    summary.unmatched = read.unmatched;
    summary.left += cancelled + read.left;
    let mut learnt: Vec<_> = endpoints
        .into_iter()
        .filter_map(|e| learnt_limits(&e).map(|l| (e.to_string(), l)))
        .collect();
    learnt.sort_by(|a, b| a.0.cmp(&b.0));
    summary.learnt = learnt;
    finish(summary, stop.reason(), &written)
}

/// `--redis`'s store, connected (and its credentials checked), if given.
async fn connect(config: &BatchConfig) -> Result<Option<RedisStore>, BatchError> {
    let Some(url) = &config.redis else {
        return Ok(None);
    };
    RedisStore::builder(url.as_str())
        .prefix("tollgate-batch")
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .map(Some)
        .map_err(BatchError::Redis)
}

/// The HTTP client: the rate-limit middleware (over `store`, if given),
/// then the gate that stops sending when the run stops or gives up; and
/// how to read the limits the middleware learnt, for the summary.
fn client(
    config: &BatchConfig,
    store: Option<RedisStore>,
    stop: &Stop,
    stall: &Arc<Stall>,
) -> Result<(reqwest_middleware::ClientWithMiddleware, LimitsOf), BatchError> {
    let mut limits = ProviderLimits::new();
    if let Some(rpm) = config.rpm {
        limits = limits.requests_per_minute(rpm);
    }
    if let Some(tpm) = config.tpm {
        limits = limits.tokens_per_minute(tpm);
    }
    let builder = RateLimitMiddleware::builder()
        .limits(limits)
        .max_attempts(config.max_attempts)
        // A batch runs against one known provider for minutes: pace at 98%.
        .headroom(0.02);
    // rustls' cryptography: `ring`, which builds in seconds (reqwest's
    // default, aws-lc, compiles C for minutes). Installed for the process
    // unless one already is.
    #[cfg(feature = "tls")]
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(config.connect_timeout)
        .build()
        .map_err(BatchError::Client)?;
    let client = ClientBuilder::new(http);
    let (client, learnt_limits): (_, LimitsOf) = match store {
        None => {
            let middleware = builder.build();
            (
                client.with(middleware.clone()),
                Box::new(move |e| middleware.limits_for(e)),
            )
        }
        Some(store) => {
            let middleware = builder.build_with_store(store);
            (
                client.with(middleware.clone()),
                Box::new(move |e| middleware.limits_for(e)),
            )
        }
    };
    let client = client
        .with(Gate {
            stop: stop.clone(),
            stall: Arc::clone(stall),
        })
        .build();
    Ok((client, learnt_limits))
}

/// Stops the run on the first signal, and quits on the second.
async fn listen(mut signals: mpsc::UnboundedReceiver<Signal>, stop: Stop, grace: Duration) {
    while let Some(signal) = signals.recv().await {
        if stop.request(Reason::Signal(signal)) {
            eprintln!(
                "tollgate: {signal}: no new request is sent; those on the wire may finish within {} (a second signal quits at once)",
                humantime::format_duration(grace)
            );
        } else {
            eprintln!("tollgate: {signal} again: quitting, after writing what is answered");
            stop.quit();
        }
    }
}

/// Sends each line read as a slot of `max_in_flight` frees, until the
/// input ends or the run stops; answers how many lines read ahead were not
/// sent.
async fn dispatch(
    context: &Arc<Context>,
    mut lines: mpsc::Receiver<Line>,
    outcomes: mpsc::Sender<Outcome>,
    max_in_flight: usize,
) -> u64 {
    let stop = &context.stop;
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut cancelled: u64 = 0;
    loop {
        let line = tokio::select! {
            biased;
            () = stop.stopped() => break,
            line = lines.recv() => line,
        };
        let Some(line) = line else { break };
        let permit = tokio::select! {
            biased;
            () = stop.stopped() => { cancelled += 1; break }
            permit = Arc::clone(&slots).acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let (context, outcomes) = (Arc::clone(context), outcomes.clone());
        tokio::spawn(async move {
            let outcome = line::run(&context, line).await;
            let _ = outcomes.send(outcome).await;
            drop(permit);
        });
    }
    // Lines read ahead but not sent: the reader counts those after.
    lines.close();
    while lines.try_recv().is_ok() {
        cancelled += 1;
    }
    cancelled
}

/// Takes each line's outcome as it comes: its record to the writer, its
/// figures to the summary; answers the summary so far and the endpoints
/// that answered.
async fn collect(
    mut outcomes: mpsc::Receiver<Outcome>,
    records: mpsc::Sender<Vec<u8>>,
    bar: &ProgressBar,
    stall: &Stall,
) -> (Summary, HashSet<Endpoint>) {
    let mut summary = Summary::default();
    let mut endpoints = HashSet::new();
    while let Some(outcome) = outcomes.recv().await {
        let answer = match outcome {
            Outcome::Answered(answer) => answer,
            Outcome::NotSent => {
                summary.left += 1;
                crate::metrics::line("left");
                continue;
            }
            Outcome::Abandoned => {
                summary.left += 1;
                summary.abandoned += 1;
                crate::metrics::line("left");
                continue;
            }
        };
        crate::metrics::line(match answer.record.kind() {
            None => "ok",
            Some(kind) => kind.name(),
        });
        // The writer runs until this channel closes: it cannot be gone.
        let _ = records.send(answer.record.to_line()).await;
        if answer.record.is_ok() {
            summary.ok += 1;
        } else {
            summary.failed += 1;
        }
        summary.bad_lines += u64::from(answer.bad);
        summary.retries += answer.retries;
        if let Some(latency) = answer.latency {
            summary
                .latencies_ms
                .push(u32::try_from(latency.as_millis()).unwrap_or(u32::MAX));
        }
        if let Some(endpoint) = answer.endpoint {
            endpoints.insert(endpoint);
        }
        bar.inc(1);
        bar.set_message(format!(
            "failed {}, refused {}",
            summary.failed,
            stall.refusals()
        ));
    }
    (summary, endpoints)
}

/// The run's result: its summary, or why it stopped early.
fn finish(
    mut summary: Summary,
    reason: Option<Reason>,
    written: &Written,
) -> Result<Summary, BatchError> {
    match reason {
        None => Ok(summary),
        Some(Reason::Signal(signal)) => {
            summary.signal = Some(signal);
            Ok(summary)
        }
        Some(Reason::Write(error)) => Err(BatchError::Write {
            error,
            unsaved: written.unsaved,
            left: summary.left,
            answered: summary.ok + summary.failed,
        }),
        Some(Reason::Read(error)) => Err(BatchError::Read {
            error,
            unsaved: written.unsaved,
        }),
    }
}

/// Reads the input line by line as the requests go out, skipping the lines
/// an earlier run settled. Once intake stops it reads on, only counting the
/// lines left to send, unless told to quit.
fn read_input(
    input: File,
    mut earlier: Earlier,
    lines: &mpsc::Sender<Line>,
    stop: &Stop,
    bar: &ProgressBar,
) -> Read {
    let mut read = Read::default();
    let mut open = true;
    for (number, bytes) in (1u64..).zip(BufReader::with_capacity(1 << 16, input).split(b'\n')) {
        let bytes = match bytes {
            Ok(bytes) => bytes,
            Err(e) => {
                stop.request(Reason::Read(format!(
                    "cannot read line {number} of the input: {e}"
                )));
                return read;
            }
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        read.lines += 1;
        let hash = resume::hash(&bytes);
        if earlier.take(&hash) {
            read.already_done += 1;
            bar.inc(1);
            continue;
        }
        if open {
            let line = Line {
                number,
                hash,
                bytes,
            };
            if lines.blocking_send(line).is_ok() {
                continue;
            }
            open = false;
        }
        read.left += 1;
        if stop.is_quit() {
            return read;
        }
    }
    read.unmatched = earlier.untaken();
    read
}

/// Writes each record as it comes, flushed, so that a crash loses at most
/// the record being written (which a rerun sends again). The first failure
/// stops the run; every later record is still tried, and those that fail
/// too are counted.
fn write_records(
    mut sink: Box<dyn Write + Send>,
    mut records: mpsc::Receiver<Vec<u8>>,
    stop: &Stop,
    output: &str,
) -> Written {
    let mut unsaved: u64 = 0;
    while let Some(record) = records.blocking_recv() {
        if let Err(e) = sink.write_all(&record).and_then(|()| sink.flush()) {
            unsaved += 1;
            stop.request(Reason::Write(format!("cannot write {output}: {e}")));
        }
    }
    Written { unsaved }
}

/// A bar of lines settled (answered, failed, or answered before), sized by
/// counting the input's lines when it is a regular file.
fn progress_bar(enabled: bool, input: &Path) -> ProgressBar {
    if !enabled {
        return ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    }
    let len = std::fs::metadata(input)
        .ok()
        .filter(std::fs::Metadata::is_file)
        .and_then(|_| File::open(input).ok())
        .map(|file| {
            BufReader::with_capacity(1 << 16, file)
                .split(b'\n')
                .map_while(Result::ok)
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .count() as u64
        });
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    if let Ok(style) =
        ProgressStyle::with_template("{bar:30} {pos}/{len} done, {msg}, {per_sec}, ETA {eta}")
    {
        bar.set_style(style);
    }
    bar
}
