//! `--metrics-addr`: the binary serves its metrics in Prometheus' text
//! format while it runs. The real binary on loopback, on the real clock;
//! what decides a result is the page it served.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::{
    batch_command, http, line, sample, scratch, wait_until, write_lines, Batch, Provider,
};

const BOUND: Duration = Duration::from_secs(60);

/// The address in a "metrics at http://ADDR/metrics" line.
fn metrics_addr(run: &mut Batch) -> String {
    let line = run.stderr_line("metrics at http://", BOUND);
    line.split("http://")
        .nth(1)
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap()
        .to_owned()
}

#[test]
fn batch_serves_the_middleware_and_line_metrics() {
    let provider = Provider::start();
    let dir = scratch("metrics-batch");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_lines(&input, &[line("ok", 1), line("ok", 2), line("hold", 3)]);
    let mut run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--metrics-addr", "127.0.0.1:0", "--rpm", "6000"],
    ));
    let addr = metrics_addr(&mut run);
    wait_until("the held line is on the wire", BOUND, || {
        provider.received() >= 3
    });
    let mut page = String::new();
    wait_until("two lines counted", BOUND, || {
        page = http(&addr, "GET /metrics HTTP/1.0\r\n\r\n");
        sample(&page, "tollgate_batch_lines_total", &[r#"outcome="ok""#]) == Some(2.0)
    });
    assert_eq!(
        sample(&page, "tollgate_client_calls_total", &["endpoint="]),
        Some(3.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "tollgate_client_limit", &[r#"dimension="requests""#]),
        Some(6000.0),
        "{page}"
    );
    provider.release();
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
}

#[test]
fn mock_serves_its_decisions() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(["mock", "--rpm", "1", "--latency-ms", "0..1", "--port"])
        .arg(port.to_string())
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = Batch::spawn(command);
    let addr = metrics_addr(&mut run);
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    let post = format!(
        "POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mock = format!("127.0.0.1:{port}");
    let mut answered = String::new();
    wait_until("the mock answers", BOUND, || {
        std::net::TcpStream::connect(&mock).is_ok()
    });
    for _ in 0..2 {
        answered.push_str(&http(&mock, &post));
    }
    let page = http(&addr, "GET /metrics HTTP/1.0\r\n\r\n");
    // One a minute: one admitted, the other refused.
    assert_eq!(
        sample(
            &page,
            "tollgate_decisions_total",
            &[r#"policy="requests""#, r#"outcome="admitted""#]
        ),
        Some(1.0),
        "{page}\n{answered}"
    );
    assert_eq!(
        sample(
            &page,
            "tollgate_decisions_total",
            &[r#"policy="requests""#, r#"outcome="refused""#]
        ),
        Some(1.0),
        "{page}"
    );
}
