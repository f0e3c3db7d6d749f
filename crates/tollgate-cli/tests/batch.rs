//! `tollgate batch` against `tollgate mock`, in process on paused time, and
//! as processes on the real clock for a run killed half-way and resumed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tollgate_cli::batch::{self, BatchConfig};
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
    for text in std::fs::read_to_string(path).unwrap().lines() {
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

fn config(input: PathBuf, output: PathBuf, url: String) -> BatchConfig {
    BatchConfig {
        input,
        output,
        url,
        rpm: None,
        tpm: None,
        max_in_flight: 64,
        max_attempts: 5,
        api_key: None,
        progress: false,
    }
}

#[tokio::test(start_paused = true)]
async fn three_hundred_lines_at_600_rpm_none_lost_few_refused() {
    let dir = scratch("300");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, 303, &[50, 101, 202]);
    let (addr, serve) = mock::bind(
        MockConfig {
            rpm: 600,
            tpm: 1_000_000,
            style: Style::Openai,
            latency_ms: 100..300,
        },
        0,
    )
    .await
    .unwrap();
    tokio::spawn(serve);
    let url = format!("http://{addr}/v1/chat/completions");

    let summary = batch::run(config(input, output.clone(), url), std::future::pending())
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
    // 300 calls at 10 a second: the rate the mock allows, give or take
    // the first call's answer.
    let rate = summary.ok as f64 / summary.elapsed.as_secs_f64();
    assert!(rate >= 9.5, "{rate:.2} calls/s of 10");
    assert_eq!(
        summary.learnt,
        vec![(
            format!("http://{addr} (mock-1)"),
            tollgate_reqwest::ProviderLimits::new()
                .requests_per_minute(600)
                .tokens_per_minute(1_000_000)
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_run_resumes_without_answering_a_line_twice() {
    let dir = scratch("interrupted");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_input(&input, 120, &[]);
    let (addr, serve) = mock::bind(
        MockConfig {
            rpm: 600,
            tpm: 1_000_000,
            style: Style::Anthropic,
            latency_ms: 50..150,
        },
        0,
    )
    .await
    .unwrap();
    tokio::spawn(serve);
    let url = format!("http://{addr}/v1/chat/completions");

    // Ctrl-C after 5 s: what is in flight (at most 8 calls) finishes and
    // is written.
    let mut interrupted = config(input.clone(), output.clone(), url.clone());
    interrupted.max_in_flight = 8;
    let first = batch::run(interrupted, tokio::time::sleep(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(first.interrupted);
    assert_eq!(first.exit_code(), 130);
    assert!(
        (40..=70).contains(&first.ok),
        "{} answered before the stop",
        first.ok
    );
    assert_eq!(first.failed, 0);

    let second = batch::run(config(input, output.clone(), url), std::future::pending())
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

#[tokio::test(start_paused = true)]
async fn the_mock_refuses_over_its_limits_with_headers() {
    let (addr, serve) = mock::bind(
        MockConfig {
            rpm: 120,
            tpm: 1_000_000,
            style: Style::Openai,
            latency_ms: 0..0,
        },
        0,
    )
    .await
    .unwrap();
    tokio::spawn(serve);
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
        last = Some(response);
    }
    // 120 a minute is 2 a second: a burst of 2, then one each 500 ms.
    assert_eq!(statuses, [200, 200, 429]);
    let last = last.unwrap();
    let headers = last.headers();
    assert_eq!(headers["x-ratelimit-limit-requests"], "120");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(headers["retry-after-ms"], "500");
    assert!(headers.get("ratelimit").is_none(), "OpenAI style only");
    let bad = client
        .post(&url)
        .header("content-type", "application/json")
        .body("[1]")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}
