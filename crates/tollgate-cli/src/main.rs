//! `tollgate`: process a JSONL of API requests as fast as the provider's
//! limits allow, run a mock provider, or simulate how limits shape
//! throughput and latency.

use std::ops::Range;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tollgate_cli::batch::{self, BatchConfig};
use tollgate_cli::mock::{self, MockConfig, Style};
use tollgate_cli::simulate;

/// Rate limits, applied: batch API calls, mock a provider, simulate.
///
/// Exit codes: 0 success; 1 some lines failed (batch); 2 bad arguments or
/// an I/O error; 130 interrupted by Ctrl-C (batch: what was in flight was
/// finished and written; run again to resume).
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
    /// Limits are learnt from the response headers unless given. Run again
    /// with the same output to send only the lines without a successful
    /// answer. Ctrl-C stops taking new lines, lets those in flight finish
    /// and writes them.
    Batch(BatchArgs),
    /// Run an OpenAI-compatible mock provider (POST /v1/chat/completions)
    /// that enforces requests and tokens per minute in one-second slices,
    /// as real providers do, and answers with their rate-limit headers.
    Mock {
        /// Requests per minute.
        #[arg(long, default_value_t = 600)]
        rpm: u64,
        /// Tokens per minute (prompt tokens plus max_tokens).
        #[arg(long, default_value_t = 100_000)]
        tpm: u64,
        /// Whose headers to answer with.
        #[arg(long, value_enum, default_value_t = Style::Openai)]
        style: Style,
        /// The port on 127.0.0.1 (0: any free one).
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// Milliseconds an answer takes, drawn from A..B.
        #[arg(long, default_value = "100..300", value_parser = parse_range)]
        latency_ms: Range<u64>,
    },
    /// Show how a rate limit and a concurrency limit shape throughput and
    /// latency: a "clone" service (1 job at a time, 1 request/s, 0.8 to
    /// 10.2 s of work) and a "tts" service (4 at a time, 5 requests/s, 0.2
    /// to 0.4 s), each fired at by 2 and then 5 users.
    Simulate {
        /// Jobs each user sends, one after another.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
        /// The seed of the work durations: the same seed, the same run.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Run on the real clock and print each job as it ends (the default
        /// virtual clock finishes in about a second).
        #[arg(long)]
        real_time: bool,
        /// Also draw when each job waited and ran, as an SVG file.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

/// The flags of `tollgate batch`.
#[derive(clap::Args, Debug)]
struct BatchArgs {
    /// The JSONL of request bodies, one JSON object a line (blank lines
    /// are skipped; others that are not objects are reported as errors).
    #[arg(long)]
    input: PathBuf,
    /// The JSONL of answers: {"line", "ok", "status", "response" or
    /// "error", "attempts", "latency_ms"}. Appended to; read first to
    /// resume.
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
    /// Attempts per line (429, 503 and 529 are retried).
    #[arg(long, default_value_t = 5)]
    max_attempts: u32,
    /// The environment variable holding the API key, sent as a bearer
    /// token (nothing is sent if it is unset).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    api_key_env: String,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl BatchArgs {
    fn into_config(self) -> BatchConfig {
        BatchConfig {
            input: self.input,
            output: self.output,
            url: self.url,
            rpm: self.rpm,
            tpm: self.tpm,
            max_in_flight: self.max_in_flight,
            max_attempts: self.max_attempts,
            api_key: std::env::var(&self.api_key_env).ok(),
            progress: !self.quiet,
        }
    }
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Simulate {
            jobs,
            seed,
            real_time,
            plot,
        } => run_simulate(jobs, seed, real_time, plot),
        command => multi_thread().and_then(|rt| rt.block_on(run(command))),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            eprintln!("tollgate: {message}");
            ExitCode::from(2)
        }
    }
}

fn multi_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

async fn run(command: Command) -> Result<u8, String> {
    match command {
        Command::Mock {
            rpm,
            tpm,
            style,
            port,
            latency_ms,
        } => {
            let config = MockConfig {
                rpm,
                tpm,
                style,
                latency_ms,
            };
            let (addr, serve) = mock::bind(config, port).await?;
            println!(
                "mock provider listening on http://{addr}/v1/chat/completions ({rpm} requests/min, {tpm} tokens/min, {style:?} headers); Ctrl-C stops it"
            );
            tokio::select! {
                served = serve => served.map_err(|e| e.to_string())?,
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(0)
        }
        Command::Batch(args) => {
            let config = args.into_config();
            let shutdown = async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("tollgate: interrupted; finishing the requests in flight");
                } else {
                    std::future::pending::<()>().await;
                }
            };
            let summary = batch::run(config, shutdown).await?;
            print!("{}", summary.report());
            Ok(u8::try_from(summary.exit_code()).unwrap_or(1))
        }
        Command::Simulate { .. } => Err("simulate runs on its own runtime".into()),
    }
}

fn run_simulate(
    jobs: usize,
    seed: u64,
    real_time: bool,
    plot: Option<PathBuf>,
) -> Result<u8, String> {
    if jobs == 0 {
        return Err("--jobs must be at least 1".into());
    }
    let runtime = if real_time {
        multi_thread()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?
    };
    let started = std::time::Instant::now();
    let scenarios = runtime.block_on(simulate::all(jobs, seed, real_time));
    println!(
        "{} on {} time, seed {seed}, {jobs} jobs per user:\n",
        if real_time { "ran" } else { "simulated" },
        if real_time { "real" } else { "virtual" }
    );
    print!("{}", simulate::table(&scenarios));
    if !real_time {
        println!(
            "\n(virtual time: {:.1} s simulated in {:.2} s)",
            scenarios
                .iter()
                .map(|s| s.wall())
                .sum::<Duration>()
                .as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    if let Some(path) = plot {
        std::fs::write(&path, simulate::svg(&scenarios))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("chart written to {}", path.display());
    }
    Ok(0)
}
