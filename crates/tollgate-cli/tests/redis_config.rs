//! `--redis` misconfigured: `tollgate batch` and `tollgate mock` stop
//! before doing anything, exit 2 with a message that says what is wrong,
//! and never print the password. A real `redis-server` with a password.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tollgate_redis::testing::RedisServer;

const PASSWORD: &str = "pw-c0ffee-secret";

/// Runs the binary to its end (bounded), returning its code and stderr.
fn run(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(_status) = child.try_wait().unwrap() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("tollgate {args:?} did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(!stdout.contains(PASSWORD), "{stdout}");
    (output.status.code().unwrap_or(-1), stderr)
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-redis-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn batch_and_mock_exit_2_on_a_misconfigured_redis_without_showing_the_password() {
    let server = RedisServer::start_with_args(&["--requirepass", PASSWORD]);
    let port = server.port();
    let input = scratch("in.jsonl");
    std::fs::write(
        &input,
        "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
    )
    .unwrap();
    let output = scratch("out.jsonl");
    let cases = [
        (format!("redis://127.0.0.1:{port}/"), "NOAUTH"),
        (
            format!("redis://:{PASSWORD}-wrong@127.0.0.1:{port}/"),
            "WRONGPASS",
        ),
        (
            format!("redis://user:{PASSWORD}@127.0.0.1:1/"),
            "cannot connect",
        ),
    ];
    for (url, said) in &cases {
        let (code, stderr) = run(&[
            "batch",
            "--quiet",
            "--url",
            "http://127.0.0.1:9/v1/chat/completions",
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--redis",
            url,
        ]);
        assert_eq!(code, 2, "batch --redis {url}: {stderr}");
        assert!(stderr.contains(said), "{stderr}");
        assert!(stderr.contains("--redis"), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "password shown: {stderr}");
        assert!(!output.exists(), "nothing was written before the check");

        let (code, stderr) = run(&["mock", "--port", "0", "--redis", url]);
        assert_eq!(code, 2, "mock --redis {url}: {stderr}");
        assert!(stderr.contains(said), "{stderr}");
        assert!(!stderr.contains(PASSWORD), "password shown: {stderr}");
    }
}
