//! `tollgate batch --redis` across faults of Redis: killed for 5 s and
//! restarted empty, or paused for 1.5 s (`CLIENT PAUSE`). The store fails
//! open with what Redis last said (the limits learnt from the provider,
//! what was spent) and gives Redis back what it spent when it answers
//! again: the provider is not flooded, nothing is lost, the run exits 0.
//! On the real clock: the faults are injected at wall-clock instants, and
//! every bound is generous.

use std::time::Duration;

use tokio::sync::mpsc;
use tollgate_cli::batch::{self, BatchConfig, Output, Signal, Summary};
use tollgate_cli::mock::{self, MockConfig, Style};
use tollgate_redis::testing::RedisServer;

mod support;

const RPM: u64 = 1_200;

/// A mock provider of its own limits (in memory: Redis' faults are not
/// its), answering in 50 to 150 ms.
async fn start_mock() -> String {
    let config = MockConfig {
        rpm: RPM,
        tpm: 100_000_000,
        style: Style::Openai,
        latency_ms: 50..150,
        store: None,
        scripted: None,
    };
    let (addr, serve) = mock::bind_with(config, 0, false).await.unwrap();
    tokio::spawn(serve);
    format!("http://{addr}/v1/chat/completions")
}

/// Runs a batch of `lines` against a fresh mock through `redis`, while
/// `fault` runs on a thread of its own; answers the summary.
async fn batch_through<F>(name: &str, lines: usize, redis: RedisServer, fault: F) -> Summary
where
    F: FnOnce(RedisServer) -> RedisServer + Send + 'static,
{
    let url = start_mock().await;
    let dir = support::scratch("outage", name);
    let input = dir.join("in.jsonl");
    support::write_requests(&input, lines, 16, |i| format!("line {i}"));
    let output = dir.join("out.jsonl");
    let mut config = BatchConfig::new(input, Output::File(output.clone()), url.parse().unwrap());
    config.redis = Some(redis.url());
    config.timeout = Duration::from_secs(30);
    let fault = std::thread::spawn(move || fault(redis));
    let summary = batch::run(config, mpsc::unbounded_channel::<Signal>().1)
        .await
        .unwrap();
    let _redis = fault.join().unwrap();
    println!("{name}: {}", summary.report());
    // Every answer saved, once.
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().count(), lines, "{name}: records");
    let _ = std::fs::remove_dir_all(&dir);
    summary
}

fn assert_held(name: &str, summary: &Summary, lines: usize) {
    assert_eq!(
        (summary.ok, summary.failed, summary.left),
        (lines as u64, 0, 0),
        "{name}: nothing lost"
    );
    assert_eq!(summary.exit_code(), 0, "{name}");
    let attempts = summary.ok + summary.retries;
    assert!(
        summary.refused as f64 <= 0.02 * attempts as f64,
        "{name}: {} of {attempts} attempts refused",
        summary.refused
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_across_a_killed_redis_and_a_paused_one() {
    let lines = 300;
    let killed = batch_through("killed", lines, RedisServer::start(), |mut redis| {
        std::thread::sleep(Duration::from_secs(3));
        redis.kill();
        std::thread::sleep(Duration::from_secs(5));
        redis.restart();
        redis
    })
    .await;
    assert_held("killed for 5 s", &killed, lines);

    let lines = 200;
    let paused = batch_through("paused", lines, RedisServer::start(), |redis| {
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(redis.cli(&["CLIENT", "PAUSE", "1500", "ALL"]), "OK");
        redis
    })
    .await;
    assert_held("paused for 1.5 s", &paused, lines);
}
