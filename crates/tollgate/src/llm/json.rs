//! The usage a JSON answer reports, read as its body passes: only the
//! top-level `usage` object is kept, never the body.

use serde_json::Value;

use super::{usage_in, TokenUsage};

/// The largest `usage` object kept (OpenAI's, with its details, is about
/// 300 bytes); a larger one is not read.
const MAX_USAGE: usize = 4 * 1024;

/// Reads the usage of a JSON answer fed chunk by chunk as it passes: a
/// scanner that follows the JSON's nesting and strings and keeps the bytes
/// of the top-level `usage` object alone, whatever the chunks' boundaries
/// and however large the rest of the body.
///
/// ```
/// use tollgate::llm::{JsonUsage, TokenUsage};
///
/// let mut json = JsonUsage::default();
/// json.feed(br#"{"choices":[{"message":{"content":"{\"usage\": 1}"}}],"us"#);
/// json.feed(br#"age":{"prompt_tokens":12,"completion_tokens":3}}"#);
/// assert_eq!(json.usage(), Some(TokenUsage { input_tokens: 12, output_tokens: 3 }));
/// ```
#[derive(Debug, Default)]
pub struct JsonUsage {
    /// Objects and arrays open around the current byte.
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// At the top level, the next string is a key.
    want_key: bool,
    /// The top-level key being read, or the last one read (its first
    /// bytes: only `usage` matters).
    key: [u8; 5],
    key_len: usize,
    key_long: bool,
    /// The value after `"usage":` is next.
    usage_next: bool,
    /// The `usage` object being kept, while its bytes pass.
    keeping: bool,
    kept: Vec<u8>,
    /// The last `usage` object read whole.
    done: Option<TokenUsage>,
    /// The body is not a JSON object: nothing more is read.
    foreign: bool,
}

impl JsonUsage {
    /// Reads one more chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        for &byte in chunk {
            if self.foreign {
                return;
            }
            self.step(byte);
        }
    }

    /// The usage the body reported, once its `usage` object has passed
    /// whole.
    pub fn usage(&self) -> Option<TokenUsage> {
        self.done
    }

    fn step(&mut self, byte: u8) {
        if self.keeping {
            if self.kept.len() < MAX_USAGE {
                self.kept.push(byte);
            } else {
                self.keeping = false;
                self.kept = Vec::new();
            }
        }
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if byte == b'\\' {
                self.escaped = true;
            } else if byte == b'"' {
                self.in_string = false;
            } else if self.depth == 1 && self.want_key {
                self.key_byte(byte);
            }
            return;
        }
        match byte {
            b'"' => {
                self.in_string = true;
                if self.depth == 1 && self.want_key {
                    self.key_len = 0;
                    self.key_long = false;
                }
            }
            b'{' | b'[' => {
                if self.depth == 0 && byte == b'[' {
                    self.foreign = true;
                    return;
                }
                if self.depth == 1 && self.usage_next && byte == b'{' {
                    self.keeping = true;
                    self.kept.clear();
                    self.kept.push(byte);
                }
                self.usage_next = false;
                self.depth = self.depth.saturating_add(1);
                if self.depth == 1 {
                    self.want_key = true;
                }
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 1 && self.keeping {
                    self.keeping = false;
                    let kept = std::mem::take(&mut self.kept);
                    if let Ok(usage) = serde_json::from_slice::<Value>(&kept) {
                        if let Some(usage) = usage_in(&usage) {
                            self.done = Some(usage);
                        }
                    }
                }
            }
            b':' if self.depth == 1 && self.want_key => {
                self.want_key = false;
                self.usage_next = !self.key_long && self.key.get(..self.key_len) == Some(b"usage");
            }
            b',' if self.depth == 1 => {
                self.want_key = true;
                self.usage_next = false;
            }
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ => {
                if self.depth == 0 {
                    self.foreign = true;
                }
                self.usage_next = false;
            }
        }
    }

    fn key_byte(&mut self, byte: u8) {
        match self.key.get_mut(self.key_len) {
            Some(slot) => {
                *slot = byte;
                self.key_len = self.key_len.saturating_add(1);
            }
            None => self.key_long = true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(body: &[u8], split: usize) -> Option<TokenUsage> {
        let mut json = JsonUsage::default();
        let (a, b) = body.split_at(split.min(body.len()));
        json.feed(a);
        json.feed(b);
        json.usage()
    }

    fn each_split(body: &str, expected: Option<TokenUsage>) {
        let body = body.as_bytes();
        for split in 0..=body.len() {
            assert_eq!(read(body, split), expected, "split at {split}");
        }
        // One byte at a time.
        let mut json = JsonUsage::default();
        for byte in body {
            json.feed(std::slice::from_ref(byte));
        }
        assert_eq!(json.usage(), expected, "byte by byte");
    }

    fn usage(input_tokens: u64, output_tokens: u64) -> Option<TokenUsage> {
        Some(TokenUsage {
            input_tokens,
            output_tokens,
        })
    }

    #[test]
    fn openai_chat_completion() {
        each_split(
            r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Bonjour !"},"finish_reason":"stop"}],"usage":{"prompt_tokens":13,"completion_tokens":4,"total_tokens":17,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            usage(13, 4),
        );
    }

    #[test]
    fn anthropic_message() {
        each_split(
            "{\n  \"id\": \"msg_1\",\n  \"type\": \"message\",\n  \"content\": [{\"type\": \"text\", \"text\": \"Bonjour\"}],\n  \"usage\": {\"input_tokens\": 21, \"output_tokens\": 5, \"cache_read_input_tokens\": 0}\n}",
            usage(21, 5),
        );
    }

    #[test]
    fn usage_in_content_or_nested_is_not_the_answers() {
        // A model that writes about usage, and a nested object named so.
        each_split(
            r#"{"choices":[{"message":{"content":"\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}"},"usage":{"prompt_tokens":2,"completion_tokens":2}}],"usage":{"prompt_tokens":7,"completion_tokens":8}}"#,
            usage(7, 8),
        );
        each_split(
            r#"{"choices":[{"usage":{"prompt_tokens":2,"completion_tokens":2}}]}"#,
            None,
        );
        // A key that only starts with "usage".
        each_split(
            r#"{"usage_extra":{"prompt_tokens":2,"completion_tokens":2}}"#,
            None,
        );
        // Escaped quotes in keys and values.
        each_split(
            r#"{"a\"b":"x\\","usage":{"input_tokens":3,"output_tokens":4}}"#,
            usage(3, 4),
        );
    }

    #[test]
    fn bodies_without_usage() {
        each_split(r#"{"error":{"message":"overloaded"}}"#, None);
        each_split(r#"[{"usage":{"input_tokens":3,"output_tokens":4}}]"#, None);
        each_split("not json at all", None);
        each_split(r#"{"usage":null}"#, None);
        each_split(r#"{"usage":{"input_tokens":3}}"#, None);
        // Cut short.
        each_split(r#"{"usage":{"input_tokens":3,"output_tokens":4"#, None);
    }

    #[test]
    fn a_huge_usage_object_is_not_kept() {
        let padding = "x".repeat(MAX_USAGE);
        let body =
            format!(r#"{{"usage":{{"input_tokens":3,"output_tokens":4,"pad":"{padding}"}}}}"#);
        assert_eq!(read(body.as_bytes(), 10), None);
        // A huge body elsewhere is passed over in bounded memory.
        let big = format!(
            r#"{{"choices":[{{"text":"{}"}}],"usage":{{"input_tokens":3,"output_tokens":4}}}}"#,
            "y".repeat(1 << 20)
        );
        let mut json = JsonUsage::default();
        for chunk in big.as_bytes().chunks(1000) {
            json.feed(chunk);
            assert!(json.kept.len() <= MAX_USAGE);
        }
        assert_eq!(json.usage(), usage(3, 4));
    }
}
