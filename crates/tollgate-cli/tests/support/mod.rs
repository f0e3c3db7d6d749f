//! What the binary's tests share: scratch folders, inputs, records, a test
//! provider on loopback that answers, holds, hangs or floods as each line
//! asks, and the `tollgate` binary run as a child with its stderr read as
//! it comes.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use serde_json::{json, Value};
use tokio::sync::watch;

/// A fresh folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A request body that asks the test provider for `behaviour`.
pub fn line(behaviour: &str, n: usize) -> String {
    json!({
        "model": "test-1",
        "max_tokens": 5,
        "test": behaviour,
        "messages": [{"role": "user", "content": format!("Say {n}.")}]
    })
    .to_string()
}

/// Writes lines, each ended by a newline.
pub fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

/// Every parseable record of an output, in order.
pub fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|t| serde_json::from_str(t).ok())
        .collect()
}

/// Records by line number.
pub fn by_line(records: &[Value]) -> HashMap<u64, Vec<Value>> {
    let mut out: HashMap<u64, Vec<Value>> = HashMap::new();
    for record in records {
        out.entry(record["line"].as_u64().unwrap())
            .or_default()
            .push(record.clone());
    }
    out
}

/// Waits, polling, until `done` holds; fails the test after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A provider on 127.0.0.1 whose every answer is chosen by the body's
/// `test` field: `ok` (the default) answers at once; `slow` after `ms`;
/// `hold` once the test releases the held requests; `hang` never;
/// `flood` streams an endless body; `huge` announces a 10 GiB body;
/// `flaky` answers 500 the first time a content is seen, then 200;
/// `invalid` answers 400.
pub struct Provider {
    pub addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
}

#[derive(Default)]
struct Shared {
    received: AtomicU64,
    answered: AtomicU64,
    contents: Mutex<Vec<String>>,
    release: Mutex<Option<watch::Sender<bool>>>,
}

impl Provider {
    pub fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (release, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            release: Mutex::new(Some(release)),
            ..Shared::default()
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(answer))
            .with_state(Arc::clone(&shared));
        let addr = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, app).await });
            addr
        });
        Self {
            addr,
            shared,
            runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1/chat/completions", self.addr)
    }

    /// Requests that reached the provider.
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::SeqCst)
    }

    /// Answers the provider finished sending.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// The first message of every request received, in order.
    pub fn contents(&self) -> Vec<String> {
        self.shared.contents.lock().unwrap().clone()
    }

    /// Lets every held request, and those to come, be answered.
    pub fn release(&self) {
        if let Some(release) = &*self.shared.release.lock().unwrap() {
            release.send_replace(true);
        }
    }
}

async fn answer(State(shared): State<Arc<Shared>>, body: String) -> Response {
    shared.received.fetch_add(1, Ordering::SeqCst);
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let content = body["messages"][0]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    shared.contents.lock().unwrap().push(content.clone());
    match body["test"].as_str().unwrap_or("ok") {
        "hang" => std::future::pending::<()>().await,
        "slow" => {
            let ms = body["ms"].as_u64().unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        "hold" => {
            let release = shared
                .release
                .lock()
                .unwrap()
                .as_ref()
                .map(watch::Sender::subscribe);
            if let Some(mut release) = release {
                let _ = release.wait_for(|released| *released).await;
            }
        }
        "flood" => return Body::new(Endless { announced: None }).into_response(),
        "flaky" => {
            let seen = shared
                .contents
                .lock()
                .unwrap()
                .iter()
                .filter(|c| **c == content)
                .count();
            if seen == 1 {
                return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "try again")
                    .into_response();
            }
        }
        "refuse" => {
            return (
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "{\"error\":{\"message\":\"Rate limit reached\"}}",
            )
                .into_response()
        }
        "invalid" => {
            return (
                axum::http::StatusCode::BAD_REQUEST,
                "{\"error\":\"invalid\"}",
            )
                .into_response()
        }
        "huge" => {
            return Body::new(Endless {
                announced: Some(10 << 30),
            })
            .into_response()
        }
        _ => {}
    }
    shared.answered.fetch_add(1, Ordering::SeqCst);
    let answer = json!({
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}
    });
    ([("content-type", "application/json")], answer.to_string()).into_response()
}

/// A body that never ends, 64 KiB a frame.
struct Endless {
    announced: Option<u64>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        static CHUNK: [u8; 65_536] = [b'x'; 65_536];
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }

    fn size_hint(&self) -> SizeHint {
        self.announced
            .map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}

/// The `tollgate` binary running as a child, its stderr read line by line.
pub struct Batch {
    pub child: Child,
    stderr: mpsc::Receiver<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
    pub seen: Vec<String>,
}

/// `tollgate batch --quiet --url URL --input IN --output OUT` and `extra`.
pub fn batch_command(url: &str, input: &Path, output: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command
        .args(["batch", "--quiet", "--url", url, "--input"])
        .arg(input)
        .args(["--output", output])
        .args(extra)
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

impl Drop for Batch {
    /// A test that failed half-way leaves no process behind.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Batch {
    /// Runs the command, reading its stdout to the end as it comes.
    pub fn spawn(command: Command) -> Self {
        Self::spawn_with(command, true)
    }

    /// Runs the command; with `read_stdout` false, the reading end of its
    /// stdout is closed at once (a consumer that went away).
    pub fn spawn_with(mut command: Command, read_stdout: bool) -> Self {
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stdout = if read_stdout {
            Some(std::thread::spawn(move || {
                let mut text = String::new();
                let _ = std::io::Read::read_to_string(&mut { stdout }, &mut text);
                text
            }))
        } else {
            drop(stdout);
            None
        };
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            stderr: rx,
            stdout,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `text`.
    pub fn wait_for_stderr(&mut self, text: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        if self.seen.iter().any(|l| l.contains(text)) {
            return;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(text);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => panic!("no stderr line with {text:?}; saw {:?}", self.seen),
            }
        }
    }

    /// The first stderr line containing `text` (waiting for it).
    pub fn stderr_line(&mut self, text: &str, limit: Duration) -> String {
        self.wait_for_stderr(text, limit);
        self.seen
            .iter()
            .find(|l| l.contains(text))
            .cloned()
            .unwrap_or_default()
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the exit (killing the child and failing after `limit`);
    /// returns the status, stdout and the whole of stderr.
    pub fn finish(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "the batch did not exit within {limit:?}; stderr: {:?}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let stdout = self
            .stdout
            .take()
            .map(|reader| reader.join().unwrap())
            .unwrap_or_default();
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        (status, stdout, self.seen.join("\n"))
    }
}

/// A plain HTTP/1.0 request to `addr` (no client library): the answer's
/// body.
pub fn http(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The value of the Prometheus sample of `name` whose labels include
/// every one of `labels` (`key="value"`), in a `/metrics` page.
pub fn sample(page: &str, name: &str, labels: &[&str]) -> Option<f64> {
    page.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let matches =
            series.starts_with(&format!("{name}{{")) && labels.iter().all(|l| series.contains(l));
        matches.then(|| value.parse().ok()).flatten()
    })
}
