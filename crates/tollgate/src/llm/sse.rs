//! The usage a streamed answer reports, read from its server-sent events as
//! they pass: events may be split across chunks, and chunks across reads.

use serde_json::Value;

use super::TokenUsage;

/// The longest event kept while it is incomplete; a longer one is skipped
/// (usage events are small; a huge event is content, not usage).
const MAX_EVENT: usize = 64 * 1024;

/// Reads the usage of a stream of server-sent events, fed chunk by chunk
/// as they pass (nothing is held back or copied beyond the event being
/// read):
///
/// - OpenAI: `data:` chunks, the last with `usage` (when the request sets
///   `stream_options.include_usage`); `data: [DONE]` ends the stream;
/// - Anthropic: `message_start` (its `message.usage.input_tokens`) and
///   `message_delta` (`usage.output_tokens`, the running total).
///
/// ```
/// use tollgate::llm::{SseUsage, TokenUsage};
///
/// let mut sse = SseUsage::default();
/// sse.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\nda");
/// sse.feed(b"ta: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n");
/// sse.feed(b"data: [DONE]\n\n");
/// assert_eq!(sse.usage(), Some(TokenUsage { input_tokens: 9, output_tokens: 2 }));
/// ```
#[derive(Debug, Default)]
pub struct SseUsage {
    /// The current line, incomplete.
    line: Vec<u8>,
    /// The current event's data lines, joined.
    data: Vec<u8>,
    /// Whether the current event outgrew [`MAX_EVENT`] (skipped).
    skipping: bool,
    input: Option<u64>,
    output: Option<u64>,
}

impl SseUsage {
    /// Reads one more chunk of the stream.
    pub fn feed(&mut self, chunk: &[u8]) {
        // Most chunks are whole events of content: nothing before them
        // waits to be joined, they end an event, and name no usage. Those
        // are passed over in one search.
        if self.line.is_empty()
            && self.data.is_empty()
            && !self.skipping
            && chunk.ends_with(b"\n\n")
            && !names_usage(chunk)
        {
            return;
        }
        let mut rest = chunk;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(end);
            rest = tail.get(1..).unwrap_or_default();
            if self.line.is_empty() {
                self.line_done(line);
            } else {
                self.push_line(line);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            }
        }
        self.push_line(rest);
    }

    /// The usage seen so far: `None` until the stream has reported both
    /// counts (Anthropic reports input first, output as it goes).
    pub fn usage(&self) -> Option<TokenUsage> {
        Some(TokenUsage {
            input_tokens: self.input?,
            output_tokens: self.output?,
        })
    }

    /// What the stream reported of each count so far.
    pub fn partial(&self) -> (Option<u64>, Option<u64>) {
        (self.input, self.output)
    }

    fn push_line(&mut self, bytes: &[u8]) {
        if self.skipping || bytes.is_empty() {
            return;
        }
        if self
            .line
            .len()
            .saturating_add(self.data.len())
            .saturating_add(bytes.len())
            > MAX_EVENT
        {
            self.skip();
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn skip(&mut self) {
        self.skipping = true;
        self.line.clear();
        self.data.clear();
    }

    /// A whole line (without its `\n`).
    fn line_done(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The end of an event.
            // Only an event that names a usage is parsed: the others are
            // the answer's content, most of the stream.
            if !self.skipping && names_usage(&self.data) {
                let data = std::mem::take(&mut self.data);
                self.event(&data);
                // Its room is kept for the next event.
                self.data = data;
            }
            self.skipping = false;
            self.data.clear();
            return;
        }
        if self.skipping {
            return;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if self.data.len().saturating_add(value.len()) >= MAX_EVENT {
                self.skip();
                return;
            }
            if !self.data.is_empty() {
                self.data.push(b'\n');
            }
            self.data.extend_from_slice(value);
        }
        // `event:`, `id:`, `retry:` and comments say nothing of usage.
    }

    /// One event's data.
    fn event(&mut self, data: &[u8]) {
        if data == b"[DONE]" {
            return;
        }
        let Ok(value) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let count = |usage: &Value, names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| usage.get(*name).and_then(Value::as_u64))
        };
        // Anthropic: the input in `message_start`, the output's running
        // total in each `message_delta`.
        if let Some(usage) = value.get("message").and_then(|m| m.get("usage")) {
            if let Some(input) = count(usage, ["input_tokens", "prompt_tokens"]) {
                self.input = Some(input);
            }
            if let Some(output) = count(usage, ["output_tokens", "completion_tokens"]) {
                self.output = Some(self.output.map_or(output, |o| o.max(output)));
            }
        }
        if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
            if let Some(input) = count(usage, ["prompt_tokens", "input_tokens"]) {
                self.input = Some(input);
            }
            if let Some(output) = count(usage, ["completion_tokens", "output_tokens"]) {
                self.output = Some(self.output.map_or(output, |o| o.max(output)));
            }
        }
    }
}

/// Whether an event's data holds a usage object (`"usage": {`): OpenAI's
/// chunks carry `"usage":null` until the last.
fn names_usage(data: &[u8]) -> bool {
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"usage\""));
    USAGE.find_iter(data).any(|at| {
        let after = data.get(at.saturating_add(7)..).unwrap_or_default();
        let mut rest = after.iter().filter(|b| !b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.next() == Some(&b'{')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENAI: &str = concat!(
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29}}\n\n",
        "data: [DONE]\n\n",
    );

    const ANTHROPIC: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    fn fed_in(stream: &str, size: usize) -> SseUsage {
        let mut sse = SseUsage::default();
        for chunk in stream.as_bytes().chunks(size) {
            sse.feed(chunk);
        }
        sse
    }

    #[test]
    fn openai_chunks_with_include_usage_in_any_split() {
        for size in [1, 2, 3, 7, 16, 64, 1000] {
            assert_eq!(
                fed_in(OPENAI, size).usage(),
                Some(TokenUsage {
                    input_tokens: 19,
                    output_tokens: 10
                }),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn anthropic_events_in_any_split() {
        for size in [1, 5, 13, 100, 5000] {
            assert_eq!(
                fed_in(ANTHROPIC, size).usage(),
                Some(TokenUsage {
                    input_tokens: 25,
                    output_tokens: 15
                }),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn only_a_usage_object_is_read() {
        assert!(names_usage(br#"{"usage":{"prompt_tokens":1}}"#));
        assert!(names_usage(b"{\"usage\" :\n {\"prompt_tokens\":1}}"));
        assert!(!names_usage(br#"{"choices":[],"usage":null}"#));
        assert!(!names_usage(br#"{"content":"usage: {"}"#));
        assert!(names_usage(br#"{"usage":null,"x":{"usage":{}}}"#));
        // Whole events of content pass in one search; the usage event after
        // them is read, whole or in pieces.
        let mut sse = SseUsage::default();
        sse.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"usage\"}}],\"usage\":null}\n\n");
        sse.feed(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,");
        sse.feed(b"\"completion_tokens\":4}}\n\n");
        assert_eq!(
            sse.usage(),
            Some(TokenUsage {
                input_tokens: 3,
                output_tokens: 4
            })
        );
    }

    #[test]
    fn crlf_lines_and_multi_line_data() {
        let stream = "data: {\"choices\":[],\r\ndata: \"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\r\n\r\n";
        assert_eq!(
            fed_in(stream, 3).usage(),
            Some(TokenUsage {
                input_tokens: 4,
                output_tokens: 5
            })
        );
    }

    #[test]
    fn a_stream_cut_short_reports_what_it_saw() {
        let cut = &ANTHROPIC[..ANTHROPIC.find("event: message_delta").unwrap()];
        let sse = fed_in(cut, 10);
        assert_eq!(
            sse.usage(),
            Some(TokenUsage {
                input_tokens: 25,
                output_tokens: 1
            })
        );
        let sse = fed_in(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            4,
        );
        assert_eq!(sse.usage(), None);
        assert_eq!(sse.partial(), (None, None));
    }

    #[test]
    fn hostile_streams_are_read_in_bounded_memory() {
        let mut sse = SseUsage::default();
        let junk = vec![b'x'; 10_000];
        for _ in 0..100 {
            sse.feed(b"data: ");
            sse.feed(&junk);
        }
        assert!(
            sse.line.capacity() <= 2 * MAX_EVENT,
            "{}",
            sse.line.capacity()
        );
        sse.feed(b"\n\n");
        sse.feed(b"data: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n");
        assert_eq!(
            sse.usage(),
            Some(TokenUsage {
                input_tokens: 1,
                output_tokens: 2
            })
        );
        let mut sse = SseUsage::default();
        sse.feed(b"data: not json\n\ndata: {\"usage\":\"x\"}\n\n: comment\n\n");
        assert_eq!(sse.usage(), None);
    }
}
