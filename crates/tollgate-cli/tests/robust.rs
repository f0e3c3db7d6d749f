//! The `tollgate` binary against servers that hang, crawl or flood, under
//! signals, with outputs that cannot be written, and on inputs edited
//! between runs. Each test runs the real binary against a provider on
//! 127.0.0.1, on the real clock, with a bound on how long it may take;
//! what decides a result is what the binary wrote, never a sleep.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{
    batch_command, by_line, line, records, scratch, wait_until, write_lines, Batch, Provider,
};

const BOUND: Duration = Duration::from_secs(60);

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_server_that_never_answers_is_timed_out_and_retried_within_the_attempts() {
    let provider = Provider::start();
    let dir = scratch("hang");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let mut slow =
        json!({"test": "slow", "ms": 50, "messages": [{"role": "user", "content": "slow"}]});
    slow["model"] = json!("test-1");
    write_lines(
        &input,
        &[line("hang", 1), slow.to_string(), line("hang", 3)],
    );
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--timeout", "1s", "--max-attempts", "2"],
    ));
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let by_line = by_line(&records(&output));
    assert_eq!(by_line.len(), 3);
    for hung in [1, 3] {
        let record = &by_line[&hung][0];
        assert_eq!(record["ok"], false);
        assert_eq!(record["kind"], "timeout", "{record}");
        assert_eq!(record["attempts"], 2, "retried once within 2 attempts");
    }
    assert_eq!(
        by_line[&2][0]["ok"], true,
        "a slow answer within the timeout is kept"
    );
    // Two attempts for each hung line, one for the slow one.
    assert_eq!(provider.received(), 5);
}

#[test]
fn a_body_over_max_body_is_an_error_record_read_no_further() {
    let provider = Provider::start();
    let dir = scratch("flood");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_lines(&input, &[line("flood", 1), line("huge", 2), line("ok", 3)]);
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--max-body", "1MiB"],
    ));
    // An endless body: the run ends only because reading stops at the cap.
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let by_line = by_line(&records(&output));
    for too_large in [1, 2] {
        let record = &by_line[&too_large][0];
        assert_eq!(record["kind"], "body_too_large", "{record}");
        assert_eq!(record["status"], 200);
        assert_eq!(
            record["attempts"], 1,
            "not retried: it would be as large again"
        );
    }
    assert_eq!(by_line[&3][0]["ok"], true);
}

/// Lines held by the provider until released: the signal comes while some
/// are on the wire and the rest wait for their turn in the rate limit
/// (2 a second) or for a slot.
fn signal_stops_intake_and_records_what_was_on_the_wire(signal: &str, code: i32) {
    let provider = Provider::start();
    let dir = scratch(&format!("signal-{signal}"));
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let lines: Vec<String> = (1..=30).map(|n| line("hold", n)).collect();
    write_lines(&input, &lines);
    let mut run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--rpm", "120", "--max-in-flight", "8"],
    ));
    wait_until("two requests are on the wire", BOUND, || {
        provider.received() >= 2
    });
    run.signal(signal);
    run.wait_for_stderr("no new request is sent", BOUND);
    let on_the_wire = provider.received();
    provider.release();
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(code), "{stdout}{stderr}");
    assert_eq!(
        provider.received(),
        on_the_wire,
        "nothing sent after the signal: the lines waiting in the rate limit were cancelled"
    );
    assert!(
        on_the_wire < 8,
        "{on_the_wire} sent: some lines were still waiting"
    );
    let records = records(&output);
    assert_eq!(
        records.len() as u64,
        on_the_wire,
        "every answered line is recorded"
    );
    assert!(records.iter().all(|r| r["ok"] == true));
    let left = 30 - on_the_wire;
    assert!(
        stdout.contains(&format!(
            "{left} lines left to send (0 abandoned on the wire)"
        )),
        "{stdout}"
    );
}

#[test]
fn sigint_stops_intake_and_records_what_was_on_the_wire() {
    signal_stops_intake_and_records_what_was_on_the_wire("INT", 130);
}

#[test]
fn sigterm_stops_intake_and_records_what_was_on_the_wire() {
    signal_stops_intake_and_records_what_was_on_the_wire("TERM", 143);
}

#[test]
fn sighup_stops_intake_and_records_what_was_on_the_wire() {
    signal_stops_intake_and_records_what_was_on_the_wire("HUP", 129);
}

#[test]
fn a_second_signal_quits_at_once_after_writing_what_is_answered() {
    let provider = Provider::start();
    let dir = scratch("twice");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let mut lines = vec![line("ok", 1), line("ok", 2)];
    lines.extend((3..=10).map(|n| line("hold", n)));
    write_lines(&input, &lines);
    let mut run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        // Limits given: four in flight at once (a provider that states no
        // limits would see the calls ramp up).
        &["--rpm", "6000", "--max-in-flight", "4"],
    ));
    wait_until("two answered and four held", BOUND, || {
        records(&output).len() == 2 && provider.received() == 6
    });
    run.signal("INT");
    run.wait_for_stderr("no new request is sent", BOUND);
    run.signal("INT");
    // The default grace is 30 s: exiting well before it is the second
    // signal's doing.
    let started = std::time::Instant::now();
    let (status, stdout, stderr) = run.finish(BOUND);
    assert!(started.elapsed() < Duration::from_secs(20), "{stderr}");
    assert_eq!(status.code(), Some(130), "{stdout}{stderr}");
    assert!(stderr.contains("SIGINT again: quitting"), "{stderr}");
    assert_eq!(records(&output).len(), 2, "what was answered is written");
    assert!(
        stdout.contains("8 lines left to send (4 abandoned on the wire)"),
        "{stdout}"
    );
    assert_eq!(provider.received(), 6);
}

#[test]
fn the_grace_bounds_the_wait_for_what_is_on_the_wire() {
    let provider = Provider::start();
    let dir = scratch("grace");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_lines(
        &input,
        &(1..=6).map(|n| line("hang", n)).collect::<Vec<_>>(),
    );
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        // Limits given: no first call alone to learn them.
        &["--rpm", "6000", "--max-in-flight", "3", "--grace", "1s"],
    ));
    wait_until("three on the wire", BOUND, || provider.received() == 3);
    run.signal("TERM");
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(143), "{stdout}{stderr}");
    assert!(
        stdout.contains("6 lines left to send (3 abandoned on the wire)"),
        "{stdout}"
    );
    assert!(records(&output).is_empty());
}

#[test]
fn a_full_disk_stops_the_run_and_says_what_was_not_saved() {
    let provider = Provider::start();
    let dir = scratch("full");
    let input = dir.join("in.jsonl");
    write_lines(&input, &(1..=40).map(|n| line("ok", n)).collect::<Vec<_>>());
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        "/dev/full",
        &["--rpm", "600", "--max-in-flight", "2"],
    ));
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(2), "{stdout}{stderr}");
    let answered = provider.answered();
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(
        stderr.contains(&format!("{answered} answered lines could not be saved")),
        "{answered} answered: {stderr}"
    );
    assert!(
        answered < 10,
        "{answered} sent: intake went on after the failure"
    );
    assert!(
        stderr.contains(&format!("{} lines were not sent", 40 - answered)),
        "{stderr}"
    );
}

#[test]
fn a_closed_output_pipe_stops_the_run() {
    let provider = Provider::start();
    let dir = scratch("pipe");
    let input = dir.join("in.jsonl");
    write_lines(&input, &(1..=40).map(|n| line("ok", n)).collect::<Vec<_>>());
    let run = Batch::spawn_with(
        batch_command(
            &provider.url(),
            &input,
            "-",
            &["--rpm", "600", "--max-in-flight", "2"],
        ),
        false,
    );
    let (status, _, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot write standard output"), "{stderr}");
    assert!(stderr.contains("Broken pipe"), "{stderr}");
    assert!(provider.received() < 10, "{}", provider.received());
}

#[test]
fn standard_output_is_written_not_read() {
    let provider = Provider::start();
    let dir = scratch("stdout");
    let input = dir.join("in.jsonl");
    write_lines(&input, &[line("ok", 1), line("ok", 2)]);
    for output in ["-", "/dev/stdout"] {
        let run = Batch::spawn(batch_command(&provider.url(), &input, output, &[]));
        let (status, stdout, stderr) = run.finish(BOUND);
        assert_eq!(status.code(), Some(0), "{output}: {stderr}");
        let records: Vec<Value> = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(records.len(), 2, "{output}: {stdout}");
    }
    assert_eq!(provider.received(), 4, "no resume from a pipe");
}

#[test]
fn a_rerun_sends_exactly_the_lines_whose_content_has_no_settled_record() {
    let provider = Provider::start();
    let dir = scratch("content");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let out = output.to_str().unwrap();
    let first = vec![
        line("ok", 1),
        line("ok", 2),
        line("ok", 3),
        "{broken".to_owned(),
        line("ok", 5),
        line("ok", 5),
    ];
    write_lines(&input, &first);
    let (status, _, stderr) =
        Batch::spawn(batch_command(&provider.url(), &input, out, &[])).finish(BOUND);
    assert_eq!(status.code(), Some(1), "the broken line fails: {stderr}");
    assert_eq!(provider.received(), 5, "identical lines are sent once each");
    for record in records(&output) {
        let n = record["line"].as_u64().unwrap() as usize;
        assert_eq!(record["input_sha256"], sha256_hex(&first[n - 1]));
    }

    // Unchanged: nothing to send.
    let (status, stdout, _) =
        Batch::spawn(batch_command(&provider.url(), &input, out, &[])).finish(BOUND);
    assert_eq!(status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("lines: 6 (6 answered before)"), "{stdout}");
    assert_eq!(provider.received(), 5);

    // A line inserted at the top, one edited, the broken one fixed, one of
    // the twins removed.
    let second = vec![
        line("ok", 0),
        line("ok", 1),
        line("ok", 2),
        line("ok", 33),
        line("ok", 4),
        line("ok", 5),
    ];
    write_lines(&input, &second);
    let (status, stdout, _) =
        Batch::spawn(batch_command(&provider.url(), &input, out, &[])).finish(BOUND);
    assert_eq!(status.code(), Some(0), "{stdout}");
    let sent: Vec<String> = provider.contents().split_off(5);
    assert_eq!(sent.len(), 3, "{sent:?}");
    for content in ["Say 0.", "Say 33.", "Say 4."] {
        assert!(sent.contains(&content.to_owned()), "{content} in {sent:?}");
    }
    // Line 3's old answer, the broken line's and a twin's match nothing now.
    assert!(stdout.contains("lines: 6 (3 answered before)"), "{stdout}");
    assert!(
        stdout.contains("3 earlier records match no line"),
        "{stdout}"
    );
    // Each line of the input now has exactly one settled record of its
    // content, and the new ones carry their new line numbers.
    let records = records(&output);
    for (n, text) in second.iter().enumerate() {
        let hash = sha256_hex(text);
        let settled = records
            .iter()
            .filter(|r| r["input_sha256"] == hash.as_str() && r["ok"] == true)
            .count();
        assert!(settled >= 1, "line {}: {text}", n + 1);
    }
    let new = records
        .iter()
        .find(|r| r["input_sha256"] == sha256_hex(&second[0]).as_str())
        .unwrap();
    assert_eq!(new["line"], 1);
}

#[cfg(unix)]
#[test]
fn the_input_is_sent_as_it_is_read() {
    use std::io::Write;
    let provider = Provider::start();
    let dir = scratch("fifo");
    let (input, output) = (dir.join("in.fifo"), dir.join("out.jsonl"));
    let made = std::process::Command::new("mkfifo")
        .arg(&input)
        .status()
        .unwrap();
    assert!(made.success());
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &[],
    ));
    let mut writer = std::fs::OpenOptions::new()
        .write(true)
        .open(&input)
        .unwrap();
    writeln!(writer, "{}", line("ok", 1)).unwrap();
    writer.flush().unwrap();
    // The input is still open: the first line goes out before its end.
    wait_until("the first line is sent", BOUND, || provider.received() == 1);
    writeln!(writer, "{}", line("ok", 2)).unwrap();
    drop(writer);
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert_eq!(records(&output).len(), 2);
}

#[test]
fn a_server_error_is_retried_within_the_attempts_and_a_bad_request_is_not() {
    let provider = Provider::start();
    let dir = scratch("flaky");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_lines(
        &input,
        &[line("flaky", 1), line("invalid", 2), line("ok", 3)],
    );
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--max-attempts", "3"],
    ));
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let by_line = by_line(&records(&output));
    let flaky = &by_line[&1][0];
    assert_eq!(flaky["ok"], true, "{flaky}");
    assert_eq!(flaky["attempts"], 2, "one 500, then the answer");
    let invalid = &by_line[&2][0];
    assert_eq!(invalid["kind"], "http");
    assert_eq!(invalid["status"], 400);
    assert_eq!(invalid["attempts"], 1, "a 400 is final");
    assert_eq!(by_line[&3][0]["ok"], true);
    assert_eq!(provider.received(), 4);
}

/// A provider that refuses every call: after `--give-up-after` with no
/// other answer, nothing more is sent, every line ends as a `retry_later`
/// record, and the summary counts every refusal that came back.
#[test]
fn a_provider_that_refuses_forever_ends_in_bounded_time() {
    let provider = Provider::start();
    let dir = scratch("refuse-forever");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let lines: Vec<String> = (1..=12).map(|n| line("refuse", n)).collect();
    write_lines(&input, &lines);
    let run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--give-up-after", "3s", "--max-in-flight", "4"],
    ));
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let records = records(&output);
    assert_eq!(records.len(), 12, "every line is recorded: {records:?}");
    for record in &records {
        assert_eq!(record["kind"], "retry_later", "{record}");
        assert!(
            record["error"]
                .as_str()
                .unwrap()
                .contains("--give-up-after"),
            "{record}"
        );
    }
    let refused = provider.received();
    assert!(refused >= 1);
    assert!(
        stdout.contains(&format!("refused (429/503/529): {refused},")),
        "every refusal counted ({refused} came back): {stdout}"
    );
    assert!(stdout.contains("gave up after 3s"), "{stdout}");
}

/// Stopped by a signal while every call is refused: the summary counts
/// the refusals of the lines that were never answered.
#[test]
fn the_summary_after_a_signal_counts_every_refusal() {
    let provider = Provider::start();
    let dir = scratch("refuse-signal");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    let lines: Vec<String> = (1..=8).map(|n| line("refuse", n)).collect();
    write_lines(&input, &lines);
    let mut run = Batch::spawn(batch_command(
        &provider.url(),
        &input,
        output.to_str().unwrap(),
        &["--max-in-flight", "4"],
    ));
    wait_until("three refusals", BOUND, || provider.received() >= 3);
    run.signal("TERM");
    run.wait_for_stderr("no new request is sent", BOUND);
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(143), "{stdout}{stderr}");
    let refused = provider.received();
    assert!(
        stdout.contains(&format!("refused (429/503/529): {refused},")),
        "every refusal counted ({refused} came back): {stdout}"
    );
    assert!(records(&output).is_empty());
}

/// `https://` goes through rustls with its `ring` provider: the client
/// starts, and a port that refuses the connection is a transport error
/// record, not a failure to start.
#[test]
fn an_https_url_starts_the_tls_client() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = scratch("https");
    let (input, output) = (dir.join("in.jsonl"), dir.join("out.jsonl"));
    write_lines(&input, &[line("ok", 1)]);
    let run = Batch::spawn(batch_command(
        &format!("https://127.0.0.1:{port}/v1/chat/completions"),
        &input,
        output.to_str().unwrap(),
        &["--max-attempts", "1", "--rpm", "60"],
    ));
    let (status, stdout, stderr) = run.finish(BOUND);
    assert_eq!(status.code(), Some(1), "{stdout}{stderr}");
    let records = records(&output);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["kind"], "transport", "{}", records[0]);
}
