//! The scripts the scripted upstream plays, independent of any provider's wire
//! format: what the "model" says (thinking, text, tool calls, each as the chunks
//! it streams in), the usage it reports, how fast it speaks and how its stream
//! ends. The request's `model` field names the script; `anthropic.rs`,
//! `openai.rs` and `responses.rs` render it in each provider's format.
//!
//! Every figure is fixed, so a test can compare what a gateway metered with
//! [`expected_usage`].

use std::time::Duration;

/// Token counts as a script reports them, in Anthropic's terms: `input` is the
/// input that was neither read from nor written to the prompt cache. OpenAI's
/// `prompt_tokens` / `input_tokens` is `input + cache_read + cache_write`, its
/// `cached_tokens` is `cache_read`, its `cache_write_tokens` is `cache_write`;
/// `reasoning` is the part of `output` spent thinking (OpenAI's
/// `reasoning_tokens`; Anthropic counts it in `output_tokens` only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub reasoning: u64,
}

impl Usage {
    /// The whole prompt: OpenAI's `prompt_tokens` / `input_tokens`.
    pub fn prompt_total(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }
}

/// One piece of the answer, as the chunks it streams in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    /// Reasoning: Anthropic's `thinking` block (with its `signature`), the
    /// Responses API's `reasoning` item (as its summary); the Chat Completions
    /// API streams no reasoning, it only counts it.
    Thinking {
        chunks: Vec<String>,
        signature: String,
    },
    Text {
        chunks: Vec<String>,
    },
    /// A function call; `id` is the part after the provider's prefix
    /// (`toolu_`, `call_`, `fc_`). The argument chunks join into JSON.
    ToolCall {
        id: String,
        name: String,
        argument_chunks: Vec<String>,
    },
}

/// How a stream ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every event, the final usage and the provider's end marker.
    Complete,
    /// After this many content deltas, the provider's mid-stream failure
    /// (Anthropic's `error` event with an `overloaded_error`, a Chat
    /// Completions chunk `{"error":{...}}`, the Responses API's
    /// `response.failed`), then a clean end of the body: no final usage, no
    /// end marker. A request
    /// without `stream` gets the same error as an HTTP status (Anthropic 529
    /// `overloaded_error`, OpenAI 500 `server_error`).
    ErrorAfter(usize),
    /// After this many content deltas the connection is cut (the chunked body
    /// never terminates). A request without `stream` gets half its JSON body,
    /// then the cut.
    AbruptAfter(usize),
}

/// A scripted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub blocks: Vec<Block>,
    /// What the script reports when it completes. Scripts that end early report
    /// only what their provider sends first (Anthropic's `message_start`:
    /// input, cache and `output_tokens: 1`; OpenAI: nothing).
    pub usage: Usage,
    /// The pause before every body frame after the first.
    pub chunk_delay: Duration,
    pub ending: Ending,
}

/// What a model name asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Play {
    Script(Script),
    /// `script-status-<code>`: that HTTP status with the provider's error body.
    Status(u16),
}

/// The fixed scripts' names (parameterised ones, `script-slow-<ms>`,
/// `script-long-<n>`, `script-status-<code>`, are not listed); `GET /v1/models`
/// lists these.
pub const SCRIPT_NAMES: &[&str] = &[
    "script-text",
    "script-tools",
    "script-thinking",
    "script-cache",
    "script-error-midstream",
    "script-slow",
    "script-abrupt",
];

/// The default pause of `script-slow`.
pub const SLOW_DELAY: Duration = Duration::from_millis(50);

/// What `model` plays; `None` for a model the upstream does not know (it
/// answers 404 with the provider's not-found body).
pub fn play(model: &str) -> Option<Play> {
    let name = model.strip_prefix("script-")?;
    if let Some(code) = name.strip_prefix("status-") {
        let code: u16 = code.parse().ok()?;
        return (400..=599).contains(&code).then_some(Play::Status(code));
    }
    if let Some(count) = name.strip_prefix("long-") {
        return Some(Play::Script(long(count.parse().ok()?)));
    }
    if let Some(millis) = name.strip_prefix("slow-") {
        let delay = Duration::from_millis(millis.parse().ok()?);
        return Some(Play::Script(slow(delay)));
    }
    let script = match name {
        "text" => text(),
        "tools" => tools(),
        "thinking" => thinking(),
        "cache" => cache(),
        "error-midstream" => Script {
            ending: Ending::ErrorAfter(2),
            usage: usage(10, 5),
            ..text()
        },
        "slow" => slow(SLOW_DELAY),
        "abrupt" => Script {
            ending: Ending::AbruptAfter(2),
            usage: usage(10, 5),
            ..text()
        },
        _ => return None,
    };
    Some(Play::Script(script))
}

/// The script `model` plays, if it plays one (not a status).
pub fn script(model: &str) -> Option<Script> {
    match play(model)? {
        Play::Script(script) => Some(script),
        Play::Status(_) => None,
    }
}

/// The usage `model`'s script reports when it completes; `None` for statuses
/// and unknown models.
pub fn expected_usage(model: &str) -> Option<Usage> {
    script(model).map(|script| script.usage)
}

impl Script {
    /// All text blocks' chunks joined: the answer's text.
    pub fn text(&self) -> String {
        self.blocks
            .iter()
            .filter_map(|block| match block {
                Block::Text { chunks } => Some(chunks.concat()),
                _ => None,
            })
            .collect()
    }

    /// All thinking blocks' chunks joined.
    pub fn thinking(&self) -> String {
        self.blocks
            .iter()
            .filter_map(|block| match block {
                Block::Thinking { chunks, .. } => Some(chunks.concat()),
                _ => None,
            })
            .collect()
    }

    /// Each tool call as `(name, arguments JSON)`.
    pub fn tool_calls(&self) -> Vec<(String, String)> {
        self.blocks
            .iter()
            .filter_map(|block| match block {
                Block::ToolCall {
                    name,
                    argument_chunks,
                    ..
                } => Some((name.clone(), argument_chunks.concat())),
                _ => None,
            })
            .collect()
    }

    /// Whether the answer ends in a tool call (stop reason `tool_use` /
    /// `tool_calls`).
    pub fn calls_tools(&self) -> bool {
        self.blocks
            .iter()
            .any(|block| matches!(block, Block::ToolCall { .. }))
    }
}

fn usage(input: u64, output: u64) -> Usage {
    Usage {
        input,
        output,
        ..Usage::default()
    }
}

fn chunks(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| (*part).to_owned()).collect()
}

fn complete(blocks: Vec<Block>, usage: Usage) -> Script {
    Script {
        blocks,
        usage,
        chunk_delay: Duration::ZERO,
        ending: Ending::Complete,
    }
}

fn text() -> Script {
    complete(
        vec![Block::Text {
            chunks: chunks(&["Hello", " from", " the", " scripted", " upstream", "."]),
        }],
        usage(12, 6),
    )
}

fn slow(delay: Duration) -> Script {
    Script {
        chunk_delay: delay,
        ..text()
    }
}

fn tools() -> Script {
    complete(
        vec![
            Block::Text {
                chunks: chunks(&["I'll check", " the weather in Paris."]),
            },
            Block::ToolCall {
                id: "scripted01".to_owned(),
                name: "get_weather".to_owned(),
                argument_chunks: chunks(&[
                    "",
                    "{\"city\"",
                    ": \"Par",
                    "is\", \"unit\": ",
                    "\"celsius\"}",
                ]),
            },
        ],
        usage(85, 27),
    )
}

fn thinking() -> Script {
    complete(
        vec![
            Block::Thinking {
                chunks: chunks(&["The user", " wants a", " greeting;", " say hello."]),
                signature: "c2lnbmF0dXJlLXNjcmlwdC10aGlua2luZw==".to_owned(),
            },
            Block::Text {
                chunks: chunks(&["Hello", "!"]),
            },
        ],
        Usage {
            reasoning: 30,
            ..usage(20, 42)
        },
    )
}

fn cache() -> Script {
    complete(
        vec![Block::Text {
            chunks: chunks(&["Cached", " hello", "."]),
        }],
        Usage {
            cache_read: 2048,
            cache_write: 1024,
            ..usage(4, 3)
        },
    )
}

/// `n` text chunks `w0 `, `w1 `, ...: one output token each.
fn long(n: usize) -> Script {
    complete(
        vec![Block::Text {
            chunks: (0..n).map(|index| format!("w{index} ")).collect(),
        }],
        usage(16, n as u64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_choose_scripts() {
        for name in SCRIPT_NAMES {
            assert!(script(name).is_some(), "{name}");
        }
        assert_eq!(play("script-status-429"), Some(Play::Status(429)));
        assert_eq!(play("script-status-200"), None);
        assert_eq!(play("gpt-4o"), None);
        assert_eq!(play("script-nope"), None);
        assert_eq!(
            script("script-long-3").map(|s| s.text()),
            Some("w0 w1 w2 ".to_owned())
        );
        assert_eq!(expected_usage("script-long-3").map(|u| u.output), Some(3));
        assert_eq!(
            script("script-slow-7").map(|s| s.chunk_delay),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn tool_arguments_join_into_json() {
        let tools = script("script-tools").expect("a script");
        let (name, arguments) = &tools.tool_calls()[0];
        assert_eq!(name, "get_weather");
        let parsed: serde_json::Value = serde_json::from_str(arguments).expect("JSON");
        assert_eq!(parsed["city"], "Paris");
    }
}
