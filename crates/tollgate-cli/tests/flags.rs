//! Every flag of every command, at its extremes: each value is taken or
//! refused with a message naming the flag, checked once before anything
//! runs, and none panics.

use std::ffi::OsString;

use proptest::prelude::*;
use tollgate_cli::cli::{self, ArgsError, Job};

const URL: &str = "http://127.0.0.1:9/v1/chat/completions";

fn no_env(_: &str) -> Option<OsString> {
    None
}

fn batch(extra: &[&str]) -> Result<Job, ArgsError> {
    let mut args = vec![
        "tollgate",
        "batch",
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
        "--url",
        URL,
    ];
    args.extend_from_slice(extra);
    cli::parse(args, no_env)
}

/// The message of a refusal, or a panic saying it was taken.
fn refused(result: Result<Job, ArgsError>) -> String {
    match result {
        Err(ArgsError::Invalid(message)) => message,
        Err(ArgsError::Parse(error)) => error.to_string(),
        Ok(job) => panic!("taken: {job:?}"),
    }
}

const EXTREMES: &[&str] = &[
    "0",
    "1",
    "-1",
    "",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "NaN",
    "1e999",
    "0x10",
    " 5",
    "5 years",
    "999999999999999999999h",
    "\u{0}",
];

#[test]
fn batch_flags_out_of_range_are_refused_by_name() {
    let cases: &[(&str, &str)] = &[
        ("--rpm", "0"),
        ("--rpm", "1000000001"),
        ("--rpm", "18446744073709551615"),
        ("--tpm", "0"),
        ("--tpm", "18446744073709551615"),
        ("--max-in-flight", "0"),
        ("--max-in-flight", "18446744073709551615"),
        ("--max-attempts", "0"),
        ("--max-attempts", "4294967295"),
        ("--timeout", "0s"),
        ("--timeout", "25h"),
        ("--timeout", "18446744073709551615"),
        ("--connect-timeout", "0"),
        ("--grace", "100000h"),
        ("--give-up-after", "0s"),
        ("--give-up-after", "500ms"),
        ("--give-up-after", "25h"),
        ("--max-body", "0"),
        ("--max-body", "5GiB"),
        ("--max-body", "18446744073709551615GiB"),
    ];
    for &(flag, value) in cases {
        let message = refused(batch(&[flag, value]));
        assert!(message.contains(flag), "{flag} {value}: {message}");
    }
    assert!(batch(&["--rpm", "1000000000", "--max-in-flight", "10000"]).is_ok());
    assert!(batch(&["--grace", "0s", "--timeout", "24h", "--max-body", "4GiB"]).is_ok());
    assert!(batch(&["--give-up-after", "1s"]).is_ok());
    assert!(batch(&["--give-up-after", "24h"]).is_ok());
}

#[test]
fn every_flag_at_every_extreme_is_taken_or_refused_without_a_panic() {
    const BATCH: &[&str] = &["batch", "--input", "i", "--output", "o", "--url", URL];
    let flags: &[(&[&str], &str)] = &[
        (BATCH, "--rpm"),
        (BATCH, "--tpm"),
        (BATCH, "--max-in-flight"),
        (BATCH, "--max-attempts"),
        (BATCH, "--timeout"),
        (BATCH, "--connect-timeout"),
        (BATCH, "--grace"),
        (BATCH, "--give-up-after"),
        (BATCH, "--max-body"),
        (BATCH, "--api-key-env"),
        (BATCH, "--metrics-addr"),
        (&["batch", "--input", "i", "--output", "o"], "--url"),
        (&["mock"], "--rpm"),
        (&["mock"], "--tpm"),
        (&["mock"], "--port"),
        (&["mock"], "--latency-ms"),
        (&["mock"], "--metrics-addr"),
        (&["simulate"], "--jobs"),
        (&["simulate"], "--seed"),
    ];
    for &(base, flag) in flags {
        for &value in EXTREMES.iter().chain(&["0..18446744073709551615", "5..1"]) {
            let mut args = vec!["tollgate"];
            args.extend_from_slice(base);
            args.extend_from_slice(&[flag, value]);
            // Taken or refused, never a panic.
            let _ = cli::parse(args, no_env);
        }
    }
    assert!(refused(cli::parse(
        ["tollgate", "simulate", "--jobs", "18446744073709551615"],
        no_env
    ))
    .contains("--jobs"));
    assert!(
        refused(cli::parse(["tollgate", "simulate", "--jobs", "0"], no_env)).contains("--jobs")
    );
    assert!(refused(cli::parse(["tollgate", "mock", "--rpm", "0"], no_env)).contains("--rpm"));
    assert!(refused(cli::parse(
        [
            "tollgate",
            "mock",
            "--latency-ms",
            "0..18446744073709551615"
        ],
        no_env
    ))
    .contains("--latency-ms"));
    // The scripted provider: a slice out of range, its flags without it,
    // and a limit shared through Redis it cannot keep.
    for (args, flag) in [
        (&["--counting", "fixed", "--slice", "0s"][..], "--slice"),
        (&["--counting", "fixed", "--slice", "1h"][..], "--slice"),
        (&["--charge", "written"][..], "--counting"),
        (
            &["--counting", "bucket", "--redis", "redis://127.0.0.1:6379/"][..],
            "--redis",
        ),
    ] {
        let argv = ["tollgate", "mock"].iter().chain(args).copied();
        assert!(refused(cli::parse(argv, no_env)).contains(flag), "{args:?}");
    }
    assert!(cli::parse(
        [
            "tollgate",
            "mock",
            "--counting",
            "sliding",
            "--slice",
            "10s",
            "--charge",
            "written",
            "--writes",
            "20",
            "--rounding",
            "thousands"
        ],
        no_env
    )
    .is_ok());
}

#[test]
fn the_url_and_the_key_are_checked_before_anything_is_sent() {
    for url in [
        "not a url",
        "ftp://127.0.0.1/x",
        "http://",
        "file:///etc/passwd",
    ] {
        let args = [
            "tollgate", "batch", "--input", "i", "--output", "o", "--url", url,
        ];
        let message = refused(cli::parse(args, no_env));
        assert!(message.contains("--url"), "{url}: {message}");
    }
    let with_key = |key: OsString| {
        let args = [
            "tollgate", "batch", "--input", "i", "--output", "o", "--url", URL,
        ];
        cli::parse(args, move |name| {
            (name == "OPENAI_API_KEY").then(|| key.clone())
        })
    };
    let message = refused(with_key("sk-a\nb".into()));
    assert!(message.contains("OPENAI_API_KEY"), "{message}");
    assert!(refused(with_key(OsString::new())).contains("empty"));
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        let message = refused(with_key(OsString::from_vec(vec![b's', b'k', 0xff])));
        assert!(message.contains("not UTF-8"), "{message}");
    }
    assert!(with_key("sk-proj-abc123".into()).is_ok());
    let https = [
        "tollgate",
        "batch",
        "--input",
        "i",
        "--output",
        "o",
        "--url",
        "https://api.openai.com/v1/chat/completions",
    ];
    assert!(
        cli::parse(https, no_env).is_ok(),
        "HTTPS with the default features"
    );
    let https = [
        "tollgate", "batch", "--input", "i", "--output", "o", "--url",
    ];
    let https = [&https[..], &["https://api.openai.com/v1/chat/completions"]].concat();
    assert!(
        cli::parse(https, no_env).is_ok(),
        "HTTPS with the default features"
    );
}

#[test]
fn input_and_output_the_same_file_is_refused() {
    let dir = std::env::temp_dir().join(format!("tollgate-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    std::fs::write(&input, "{}\n").unwrap();
    let same = dir.join(".").join("in.jsonl");
    let args = [
        "tollgate".into(),
        "batch".into(),
        "--input".into(),
        input.clone().into_os_string(),
        "--output".into(),
        same.into_os_string(),
        "--url".into(),
        URL.into(),
    ];
    let message = refused(cli::parse::<_, OsString>(args, no_env));
    assert!(message.contains("same file"), "{message}");
}

#[test]
fn the_binary_exits_2_naming_the_flag() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[
        "batch",
        "--input",
        "i",
        "--output",
        "o",
        "--url",
        URL,
        "--max-in-flight",
        "18446744073709551615",
    ]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--max-in-flight"), "{stderr}");
    let (code, stderr) = run(&["simulate", "--jobs", "18446744073709551615"]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("--jobs"), "{stderr}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any text for any batch flag: taken or refused, never a panic.
    #[test]
    fn any_value_of_any_batch_flag(
        flag in prop::sample::select(vec![
            "--rpm", "--tpm", "--max-in-flight", "--max-attempts", "--timeout",
            "--connect-timeout", "--grace", "--give-up-after", "--max-body", "--url",
            "--api-key-env",
        ]),
        value in "\\PC{0,40}",
    ) {
        let _ = batch(&[flag, &value]);
    }
}
