//! What the end-to-end tests share: a scratch directory, and a JSONL of
//! chat requests.

use std::path::{Path, PathBuf};

/// A fresh directory of the test's own, under the system's temporary one.
pub(crate) fn scratch(test: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-{test}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `lines` chat requests to `path`, the content of line `i` being
/// `content(i)`.
pub(crate) fn write_requests(
    path: &Path,
    lines: usize,
    max_tokens: u64,
    content: impl Fn(usize) -> String,
) {
    let lines: Vec<String> = (0..lines)
        .map(|i| {
            serde_json::json!({
                "model": "mock-1",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": content(i)}]
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}
