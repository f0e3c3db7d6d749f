//! Two batch runs and two mock providers, all sharing one limit through
//! Redis: the mocks listen on one port (the kernel spreads connections
//! between them, as a provider's load balancer would) and enforce one
//! limit together; the two batches share one budget for the provider's
//! endpoint. Nothing is lost, and few attempts are refused. On the real
//! clock, with generous bounds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_cli::batch::{self, BatchConfig, Output, Signal};
use tollgate_cli::mock::{self, MockConfig, Style};
use tollgate_redis::testing::RedisServer;

mod support;

const RPM: u64 = 1_200;
const LINES: usize = 150;

fn scratch(name: &str) -> PathBuf {
    support::scratch("workers", name)
}

fn write_input(path: &Path, worker: usize) {
    support::write_requests(path, LINES, 20, |i| format!("worker {worker}, line {i}"));
}

async fn start_mock(redis: &str, port: u16) -> u16 {
    let config = MockConfig {
        rpm: RPM,
        tpm: 100_000_000,
        style: Style::Openai,
        latency_ms: 10..30,
        store: Some(mock::connect(redis).await.unwrap()),
        scripted: None,
    };
    let (addr, serve) = mock::bind_with(config, port, true).await.unwrap();
    tokio::spawn(serve);
    addr.port()
}

fn no_signals() -> mpsc::UnboundedReceiver<Signal> {
    mpsc::unbounded_channel().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_batches_and_two_mocks_share_one_limit() {
    let redis = RedisServer::start();
    let port = start_mock(&redis.url(), 0).await;
    assert_eq!(start_mock(&redis.url(), port).await, port);
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");

    let dir = scratch("run");
    let mut runs = Vec::new();
    for worker in 0..2 {
        let input = dir.join(format!("in{worker}.jsonl"));
        write_input(&input, worker);
        let mut config = BatchConfig::new(
            input,
            Output::File(dir.join(format!("out{worker}.jsonl"))),
            url.parse().unwrap(),
        );
        config.redis = Some(redis.url());
        config.timeout = Duration::from_secs(30);
        runs.push(tokio::spawn(batch::run(config, no_signals())));
    }
    let mut refused = 0;
    let mut attempts = 0;
    let mut elapsed = Duration::ZERO;
    for run in runs {
        let summary = run.await.unwrap().unwrap();
        println!("{}", summary.report());
        assert_eq!(
            (summary.ok, summary.failed, summary.left),
            (LINES as u64, 0, 0)
        );
        refused += summary.refused;
        attempts += summary.ok + summary.retries;
        elapsed = elapsed.max(summary.elapsed);
    }
    // Every answer saved, once.
    for worker in 0..2 {
        let text = std::fs::read_to_string(dir.join(format!("out{worker}.jsonl"))).unwrap();
        assert_eq!(text.lines().count(), LINES);
    }
    assert!(
        refused as f64 <= 0.005 * attempts as f64,
        "{refused} of {attempts} attempts refused"
    );
    // Together within the one limit: 300 calls at 20 a second take at
    // least 14 s (a burst of 20 goes at once); two budgets would take half.
    let floor =
        Duration::from_secs_f64((2 * LINES) as f64 / (RPM as f64 / 60.0)) - Duration::from_secs(1);
    assert!(
        elapsed >= floor,
        "{elapsed:?} is faster than the one limit allows"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
