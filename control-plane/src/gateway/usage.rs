//! Usage read from a copy of the provider's answer as it passes. Streams are
//! server-sent events: the tap keeps only the line being received (so an
//! open stream costs a line, not the answer) and parses the `data:` lines
//! that can carry usage. Answers that do not stream are kept up to a bound
//! and parsed whole at the end.
//!
//! Token counts are normalised: `input_tokens` excludes cached input (OpenAI
//! counts cached tokens inside `prompt_tokens`/`input_tokens`; Anthropic
//! apart), so each kind is priced once.
//!
//! Hand-written rather than an SSE crate: the crates own the stream they
//! parse, and the gateway must forward the bytes untouched while it reads.

use serde_json::Value;

use super::request::Endpoint;
use crate::types::UsageTotals;

/// The longest line (or whole non-streamed answer) read for usage; longer
/// ones are forwarded but not parsed.
const MAX_PARSED: usize = 4 << 20;

/// Reads usage from one answer's bytes, as they pass.
#[derive(Debug)]
pub struct UsageTap {
    endpoint: Endpoint,
    streaming: bool,
    /// The current line (streaming) or the body so far (not streaming).
    buffer: Vec<u8>,
    /// The buffer passed `MAX_PARSED`; skip to the next line.
    overflowed: bool,
    usage: UsageTotals,
    /// Whether the answer said anything about usage.
    seen: bool,
}

impl UsageTap {
    pub fn new(endpoint: Endpoint, streaming: bool) -> UsageTap {
        UsageTap {
            endpoint,
            streaming,
            buffer: Vec::new(),
            overflowed: false,
            usage: UsageTotals::default(),
            seen: false,
        }
    }

    pub fn feed(&mut self, mut chunk: &[u8]) {
        if !self.streaming {
            self.keep(chunk);
            return;
        }
        while let Some(end) = chunk.iter().position(|byte| *byte == b'\n') {
            self.keep(&chunk[..end]);
            if !self.overflowed {
                let line = std::mem::take(&mut self.buffer);
                self.line(&line);
                self.buffer = line;
            }
            self.buffer.clear();
            self.overflowed = false;
            chunk = &chunk[end + 1..];
        }
        self.keep(chunk);
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.overflowed || self.buffer.len() + bytes.len() > MAX_PARSED {
            self.overflowed = true;
            self.buffer.clear();
        } else {
            self.buffer.extend_from_slice(bytes);
        }
    }

    /// What the answer used (as much as was seen when it was cut short).
    pub fn finish(mut self) -> (UsageTotals, bool) {
        if self.streaming {
            if !self.buffer.is_empty() && !self.overflowed {
                let line = std::mem::take(&mut self.buffer);
                self.line(&line);
            }
        } else if !self.overflowed {
            if let Ok(body) = serde_json::from_slice::<Value>(&self.buffer) {
                self.usage_object(body.get("usage"), true);
            }
        }
        (self.usage, self.seen)
    }

    /// Memory this tap holds now.
    pub fn held_bytes(&self) -> usize {
        self.buffer.capacity()
    }

    fn line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Cheap filter: most events are deltas without usage.
        if !contains(data, b"usage") {
            return;
        }
        let Ok(event) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match self.endpoint {
            Endpoint::Messages => match event.get("type").and_then(Value::as_str) {
                Some("message_start") => {
                    self.usage_object(event.get("message").and_then(|m| m.get("usage")), true)
                }
                // Cumulative: the last one holds the totals of what it names.
                Some("message_delta") => self.usage_object(event.get("usage"), false),
                _ => {}
            },
            Endpoint::ChatCompletions => self.usage_object(event.get("usage"), true),
            Endpoint::Responses => {
                if let Some(response) = event.get("response") {
                    self.usage_object(response.get("usage"), true);
                }
            }
        }
    }

    /// Reads a usage object. `whole`: it is a full account (fields it lacks
    /// are zero); otherwise only the fields it names are replaced.
    fn usage_object(&mut self, usage: Option<&Value>, whole: bool) {
        let Some(usage) = usage.filter(|usage| usage.is_object()) else {
            return;
        };
        let field = |name: &str| usage.get(name).and_then(Value::as_u64);
        let nested = |outer: &str, inner: &str| {
            usage
                .get(outer)
                .and_then(|details| details.get(inner))
                .and_then(Value::as_u64)
        };
        let set = |target: &mut u64, value: Option<u64>| match value {
            Some(value) => *target = value,
            None if whole => *target = 0,
            None => {}
        };
        match self.endpoint {
            Endpoint::Messages => {
                set(&mut self.usage.input_tokens, field("input_tokens"));
                set(&mut self.usage.output_tokens, field("output_tokens"));
                set(
                    &mut self.usage.cache_read_tokens,
                    field("cache_read_input_tokens"),
                );
                set(
                    &mut self.usage.cache_write_tokens,
                    field("cache_creation_input_tokens"),
                );
            }
            Endpoint::ChatCompletions | Endpoint::Responses => {
                let (input, output, details) = match self.endpoint {
                    Endpoint::ChatCompletions => (
                        "prompt_tokens",
                        "completion_tokens",
                        "prompt_tokens_details",
                    ),
                    _ => ("input_tokens", "output_tokens", "input_tokens_details"),
                };
                let cached = nested(details, "cached_tokens").unwrap_or(0);
                let input = field(input).map(|input| input.saturating_sub(cached));
                set(&mut self.usage.input_tokens, input);
                set(&mut self.usage.output_tokens, field(output));
                self.usage.cache_read_tokens = cached;
            }
        }
        self.seen = true;
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap_all(endpoint: Endpoint, streaming: bool, text: &str, split: usize) -> UsageTotals {
        let mut tap = UsageTap::new(endpoint, streaming);
        for chunk in text.as_bytes().chunks(split) {
            tap.feed(chunk);
        }
        tap.finish().0
    }

    #[test]
    fn anthropic_streams_count_message_start_and_the_last_delta() {
        let stream = concat!(
            "event: message_start\r\n",
            r#"data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"cache_creation_input_tokens":7,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
            "\r\n\r\nevent: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"usage"}}"#,
            "\n\nevent: message_delta\n",
            r#"data: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
            "\n\nevent: message_delta\n",
            r#"data: {"type":"message_delta","delta":{},"usage":{"output_tokens":42}}"#,
            "\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let expected = UsageTotals {
            calls: 0,
            input_tokens: 25,
            output_tokens: 42,
            cache_read_tokens: 100,
            cache_write_tokens: 7,
            cost_nanos: 0,
        };
        for split in [1, 3, 17, 4096] {
            assert_eq!(tap_all(Endpoint::Messages, true, stream, split), expected);
        }
    }

    #[test]
    fn openai_streams_and_bodies_count_cached_input_apart() {
        let chat = concat!(
            r#"data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}"#,
            "\n\n",
            r#"data: {"choices":[],"usage":{"prompt_tokens":30,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":10}}}"#,
            "\n\ndata: [DONE]\n\n",
        );
        let got = tap_all(Endpoint::ChatCompletions, true, chat, 5);
        assert_eq!(
            (got.input_tokens, got.output_tokens, got.cache_read_tokens),
            (20, 5, 10)
        );
        let responses = concat!(
            "event: response.completed\n",
            r#"data: {"type":"response.completed","response":{"usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":4},"output_tokens":3}}}"#,
            "\n\n",
        );
        let got = tap_all(Endpoint::Responses, true, responses, 7);
        assert_eq!(
            (got.input_tokens, got.output_tokens, got.cache_read_tokens),
            (5, 3, 4)
        );
        let body = r#"{"id":"x","usage":{"input_tokens":11,"output_tokens":2}}"#;
        let got = tap_all(Endpoint::Messages, false, body, 4);
        assert_eq!((got.input_tokens, got.output_tokens), (11, 2));
    }

    #[test]
    fn a_stream_cut_short_counts_what_was_seen_and_garbage_counts_nothing() {
        let cut = concat!(
            r#"data: {"type":"message_start","message":{"usage":{"input_tokens":8,"output_tokens":1}}}"#,
            "\n\ndata: {\"type\":\"content_blo",
        );
        let mut tap = UsageTap::new(Endpoint::Messages, true);
        tap.feed(cut.as_bytes());
        let (usage, seen) = tap.finish();
        assert!(seen);
        assert_eq!((usage.input_tokens, usage.output_tokens), (8, 1));
        let mut tap = UsageTap::new(Endpoint::Messages, true);
        tap.feed(b"data: {\"usage\": nonsense\n\n\xff\xfe usage\n");
        assert_eq!(tap.finish(), (UsageTotals::default(), false));
    }

    #[test]
    fn an_open_stream_holds_one_line() {
        let mut tap = UsageTap::new(Endpoint::Messages, true);
        let line = format!("data: {}\n\n", "x".repeat(1000));
        for _ in 0..1000 {
            tap.feed(line.as_bytes());
        }
        assert!(tap.held_bytes() < 4096, "{}", tap.held_bytes());
    }
}
