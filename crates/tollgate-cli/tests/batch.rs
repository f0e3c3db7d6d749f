//! `tollgate batch` against `tollgate mock` over loopback, on the real
//! clock: in process for a whole run and a run stopped by a signal, and as
//! processes for a run killed half-way and resumed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;
use tollgate_cli::batch::{self, BatchConfig, Output, Signal};
use tollgate_cli::mock::{self, MockConfig, Style};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `count` chat completion bodies, with the lines in `bad` replaced by
/// garbage (1-based).
fn write_input(path: &Path, count: usize, bad: &[usize]) {
    let mut text = String::new();
    for line in 1..=count {
        if bad.contains(&line) {
            text.push_str(if line % 2 == 0 {
                "[\"an array\"]\n"
            } else {
                "{not json\n"
            });
        } else {
            let body = json!({
                "model": "mock-1",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": format!("Say {line}.")}]
            });
            text.push_str(&format!("{body}\n"));
        }
    }
    std::fs::write(path, text).unwrap();
}

/// Every parseable output record, by line number.
fn records(path: &Path) -> HashMap<u64, Vec<Value>> {
    let mut by_line: HashMap<u64, Vec<Value>> = HashMap::new();
    for text in std::fs::read_to_string(path).unwrap_or_default().lines() {
        if let Ok(record) = serde_json::from_str::<Value>(text) {
            by_line
                .entry(record["line"].as_u64().unwrap())
                .or_default()
                .push(record);
        }
    }
    by_line
}

fn successes(records: &[Value]) -> usize {
    records.iter().filter(|r| r["ok"] == json!(true)).count()
}

fn config(input: PathBuf, output: PathBuf, url: &str) -> BatchConfig {
    BatchConfig::new(input, Output::File(output), url.parse().unwrap())
}

/// No signal will come.
fn no_signals() -> mpsc::UnboundedReceiver<Signal> {
    mpsc::unbounded_channel().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_lines_at_6000_rpm_none_lost_few_refused() {
    let dir = scratch("300");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, 303, &[50, 101, 202]);
    let (addr, serve) = mock::bind(
        MockConfig {
            rpm: 6_000,
            tpm: 10_000_000,
            style: Style::Openai,
            latency_ms: 10..30,
            store: None,
            scripted: None,
        },
        0,
    )
    .await
    .unwrap();
    tokio::spawn(serve);
    let url = format!("http://{addr}/v1/chat/completions");

    let summary = batch::run(config(input, output.clone(), &url), no_signals())
        .await
        .unwrap();
    println!("{}", summary.report());
    assert_eq!((summary.lines, summary.ok, summary.failed), (303, 300, 3));
    assert_eq!(summary.bad_lines, 3);
    let attempts = summary.ok + summary.retries;
    assert!(
        summary.refused as f64 <= 0.005 * attempts as f64,
        "{} of {attempts} attempts refused",
        summary.refused
    );
    assert_eq!(summary.exit_code(), 1, "bad lines fail the run");

    let by_line = records(&output);
    assert_eq!(by_line.len(), 303, "every line has a record");
    for (line, records) in &by_line {
        assert_eq!(records.len(), 1, "line {line} answered once");
        let bad = [50, 101, 202].contains(line);
        assert_eq!(successes(records), usize::from(!bad), "line {line}");
        if bad {
            assert_eq!(records[0]["kind"], "bad_input");
        } else {
            assert_eq!(records[0]["response"]["usage"]["completion_tokens"], 20);
        }
    }
    // 300 calls at 100 a second at most: the rate the mock allows, less
    // what a loaded machine costs (the exact pacing is measured in
    // BENCHMARKS.md).
    let rate = summary.ok as f64 / summary.elapsed.as_secs_f64();
    assert!((70.0..=140.0).contains(&rate), "{rate:.2} calls/s of 100");
    assert_eq!(
        summary.learnt,
        vec![(
            format!("http://{addr} (mock-1)"),
            tollgate_reqwest::ProviderLimits::new()
                .requests_per_minute(6_000)
                .tokens_per_minute(10_000_000)
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_without_answering_a_line_twice() {
    let dir = scratch("interrupted");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, 120, &[]);
    let (addr, serve) = mock::bind(
        MockConfig {
            rpm: 1_200,
            tpm: 10_000_000,
            style: Style::Anthropic,
            latency_ms: 20..60,
            store: None,
            scripted: None,
        },
        0,
    )
    .await
    .unwrap();
    tokio::spawn(serve);
    let url = format!("http://{addr}/v1/chat/completions");

    // Ctrl-C once 20 lines are written: what is on the wire (at most 8
    // calls) finishes and is written; the rest is not sent.
    let mut interrupted = config(input.clone(), output.clone(), &url);
    interrupted.max_in_flight = 8;
    let (signal, signals) = mpsc::unbounded_channel();
    let watched = output.clone();
    tokio::spawn(async move {
        while records(&watched).values().count() < 20 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = signal.send(Signal::Interrupt);
    });
    let first = batch::run(interrupted, signals).await.unwrap();
    assert_eq!(first.signal, Some(Signal::Interrupt));
    assert_eq!(first.exit_code(), 130);
    assert!(
        (20..=40).contains(&first.ok),
        "{} answered before the stop",
        first.ok
    );
    assert_eq!(first.failed, 0);
    assert_eq!(first.ok + first.left, 120, "every line answered or left");
    assert_eq!(records(&output).len() as u64, first.ok);

    let second = batch::run(config(input, output.clone(), &url), no_signals())
        .await
        .unwrap();
    assert_eq!(second.already_done, first.ok);
    assert_eq!(first.ok + second.ok, 120);
    assert_eq!(second.exit_code(), 0);
    let by_line = records(&output);
    assert_eq!(by_line.len(), 120);
    assert!(by_line.values().all(|r| r.len() == 1 && successes(r) == 1));
}

/// The binary, killed with SIGKILL mid-run (no chance to flush or finish),
/// then run again on the same output: every line answered exactly once.
#[test]
fn a_killed_run_resumes_without_answering_a_line_twice() {
    let dir = scratch("killed");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, 40, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let (addr, serve) = mock::bind(
            MockConfig {
                // 20 a second: the run takes two seconds.
                rpm: 1_200,
                tpm: 10_000_000,
                style: Style::Ietf,
                latency_ms: 20..60,
                store: None,
                scripted: None,
            },
            0,
        )
        .await
        .unwrap();
        tokio::spawn(serve);
        addr
    });
    let url = format!("http://{addr}/v1/chat/completions");
    let batch = |out: &Path| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        command
            .args(["batch", "--quiet", "--url", &url, "--input"])
            .arg(&input)
            .arg("--output")
            .arg(out)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };

    let mut child = batch(&output).spawn().unwrap();
    // Kill it once some, but not all, lines are written.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let written = std::fs::read_to_string(&output).map_or(0, |t| t.lines().count());
        if written >= 5 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch wrote nothing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = records(&output).len();
    assert!(
        (5..40).contains(&before),
        "{before} lines written before the kill"
    );

    let resumed = batch(&output).output().unwrap();
    assert_eq!(
        resumed.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&resumed.stdout),
        String::from_utf8_lossy(&resumed.stderr)
    );
    let by_line = records(&output);
    assert_eq!(by_line.len(), 40);
    for (line, records) in &by_line {
        assert_eq!(successes(records), 1, "line {line}: {records:?}");
    }
    drop(runtime);
}
