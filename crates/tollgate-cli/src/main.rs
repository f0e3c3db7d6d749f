//! `tollgate`: process a JSONL of API requests as fast as the provider's
//! limits allow, run a mock provider, or simulate how limits shape
//! throughput and latency.

use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_cli::batch::{self, BatchConfig, Output, Signal};
use tollgate_cli::cli::{self, ArgsError, Job, MockPlace, SimulateArgs};
use tollgate_cli::mock::{self, MockConfig};
use tollgate_cli::simulate;

fn main() -> ExitCode {
    logs();
    let job = match cli::parse(std::env::args_os(), |name| std::env::var_os(name)) {
        Ok(job) => job,
        Err(ArgsError::Parse(error)) => error.exit(),
        Err(ArgsError::Invalid(message)) => {
            eprintln!("tollgate: {message}");
            return ExitCode::from(2);
        }
    };
    let result = match job {
        Job::Simulate(args) => run_simulate(args),
        Job::Batch(config) => multi_thread().and_then(|rt| rt.block_on(run_batch(*config))),
        Job::Mock(config, place) => {
            multi_thread().and_then(|rt| rt.block_on(run_mock(config, place)))
        }
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

/// Serves the metrics at `addr`, if given: before anything that counts is
/// built.
async fn metrics_at(addr: Option<std::net::SocketAddr>) -> Result<(), String> {
    if let Some(addr) = addr {
        let bound = tollgate_cli::metrics::serve(addr).await?;
        eprintln!("tollgate: metrics at http://{bound}/metrics");
    }
    Ok(())
}

async fn run_mock(mut config: MockConfig, place: MockPlace) -> Result<u8, String> {
    metrics_at(place.metrics_addr).await?;
    if let Some(url) = &place.redis {
        config.store = Some(mock::connect(url).await?);
    }
    let (rpm, tpm, style) = (config.rpm, config.tpm, config.style);
    let (addr, serve) = mock::bind_with(config, place.port, place.reuse_port).await?;
    println!(
        "mock provider listening on http://{addr}/v1/chat/completions ({rpm} requests/min, {tpm} tokens/min, {style:?} headers); Ctrl-C stops it"
    );
    tokio::select! {
        served = serve => served.map_err(|e| e.to_string())?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

async fn run_batch(config: BatchConfig) -> Result<u8, String> {
    let to_stdout = config.output == Output::Stdout;
    metrics_at(config.metrics_addr).await?;
    let signals = forward_signals()?;
    let summary = batch::run(config, signals)
        .await
        .map_err(|e| e.to_string())?;
    // With the records on standard output, the summary goes beside them.
    if to_stdout {
        eprint!("{}", summary.report());
    } else {
        print!("{}", summary.report());
    }
    Ok(u8::try_from(summary.exit_code()).unwrap_or(1))
}

/// SIGINT, SIGTERM and SIGHUP, as they come, for the batch to stop on.
fn forward_signals() -> Result<mpsc::UnboundedReceiver<Signal>, String> {
    let (tx, rx) = mpsc::unbounded_channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        for (kind, which) in [
            (SignalKind::interrupt(), Signal::Interrupt),
            (SignalKind::terminate(), Signal::Terminate),
            (SignalKind::hangup(), Signal::Hangup),
        ] {
            let mut stream = signal(kind).map_err(|e| format!("cannot listen for {which}: {e}"))?;
            let tx = tx.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if tx.send(which).is_err() {
                        break;
                    }
                }
            });
        }
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(Signal::Interrupt).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

fn run_simulate(args: SimulateArgs) -> Result<u8, String> {
    let SimulateArgs {
        jobs,
        seed,
        real_time,
        plot,
    } = args;
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

/// With `RUST_LOG` set (`info`, `tollgate_reqwest=debug,info`...), the
/// libraries' events go to stderr: limits learnt, pauses, refusals.
fn logs() {
    let Some(filter) = std::env::var_os("RUST_LOG") else {
        return;
    };
    let filter = filter.to_string_lossy();
    match filter.parse::<tracing_subscriber::filter::Targets>() {
        Ok(targets) => {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::util::SubscriberInitExt;
            let _ = tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                .with(targets)
                .try_init();
        }
        Err(e) => eprintln!("tollgate: RUST_LOG={filter}: {e} (no logs)"),
    }
}
