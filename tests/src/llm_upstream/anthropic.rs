//! Anthropic's Messages API (`POST /v1/messages`) as the real one answers: the
//! `Message` JSON, or with `stream: true` its server-sent events
//! (`message_start`, `content_block_start` / `_delta` / `_stop` with
//! `text_delta`, `input_json_delta`, `thinking_delta` and `signature_delta`,
//! `ping`, `message_delta` with the cumulative usage, `message_stop`, or
//! `error`), and its error bodies (`{"type":"error","error":{...}}`). Field
//! names follow anthropic-sdk-python's types and its streaming fixtures.

use axum::body::Bytes;
use serde_json::{json, Value};

use super::scripts::{Block, Ending, Script, Usage, SCRIPT_NAMES};
use super::wire::{sse, Call, Frame, Reply};

/// The answer to a Messages call that plays `script`.
pub fn reply(call: &Call, script: &Script) -> Reply {
    let headers = vec![("request-id", call.id("req_"))];
    if let Ending::ErrorAfter(_) = script.ending {
        if !call.stream {
            return error(call, 529, None);
        }
    }
    if !call.stream {
        return Reply::whole(script, &message(call, script), headers);
    }
    let request_id = call.id("req_");
    Reply::stream(
        script,
        frames(call, script),
        move |_| sse(Some("error"), &error_body(529, "Overloaded", &request_id)),
        headers,
    )
}

/// `GET /v1/models` asked by an Anthropic client: the fixed scripts, as
/// Anthropic's model list.
pub fn models() -> Value {
    let data: Vec<Value> = SCRIPT_NAMES
        .iter()
        .map(|name| {
            json!({
                "type": "model",
                "id": name,
                "display_name": name,
                "created_at": "2026-01-01T00:00:00Z",
            })
        })
        .collect();
    json!({
        "data": data,
        "has_more": false,
        "first_id": SCRIPT_NAMES.first(),
        "last_id": SCRIPT_NAMES.last(),
    })
}

/// `status` with Anthropic's error body for it; `message` overrides the usual text.
pub fn error(call: &Call, status: u16, message: Option<&str>) -> Reply {
    let request_id = call.id("req_");
    let mut headers = vec![("request-id", request_id.clone())];
    if status == 429 || status == 529 {
        headers.push(("retry-after", "1".to_owned()));
    }
    let message = message.unwrap_or_else(|| default_message(status));
    Reply::json(status, &error_body(status, message, &request_id), headers)
}

/// `{"type":"error","error":{"type":...,"message":...},"request_id":...}`.
pub fn error_body(status: u16, message: &str, request_id: &str) -> Value {
    json!({
        "type": "error",
        "error": { "type": error_type(status), "message": message },
        "request_id": request_id,
    })
}

/// The `error.type` Anthropic documents for each status.
fn error_type(status: u16) -> &'static str {
    match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

fn default_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid request",
        401 => "invalid x-api-key",
        403 => "Your API key does not have permission to use the specified resource.",
        404 => "Not found",
        413 => "Request exceeds the maximum allowed number of bytes.",
        429 => "Number of request tokens has exceeded your per-minute rate limit",
        529 => "Overloaded",
        _ => "Internal server error",
    }
}

fn stop_reason(script: &Script) -> &'static str {
    if script.calls_tools() {
        "tool_use"
    } else {
        "end_turn"
    }
}

/// `usage` as `message_start` and the `Message` carry it.
fn usage_json(usage: &Usage, output_tokens: u64) -> Value {
    json!({
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_read_input_tokens": usage.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": usage.cache_write,
            "ephemeral_1h_input_tokens": 0,
        },
        "output_tokens": output_tokens,
        "service_tier": "standard",
    })
}

fn tool_id(id: &str) -> String {
    format!("toolu_{id}")
}

/// The non-streaming `Message`.
fn message(call: &Call, script: &Script) -> Value {
    let content: Vec<Value> = script
        .blocks
        .iter()
        .map(|block| match block {
            Block::Thinking { chunks, signature } => json!({
                "type": "thinking",
                "thinking": chunks.concat(),
                "signature": signature,
            }),
            Block::Text { chunks } => json!({
                "type": "text",
                "text": chunks.concat(),
            }),
            Block::ToolCall {
                id,
                name,
                argument_chunks,
            } => json!({
                "type": "tool_use",
                "id": tool_id(id),
                "name": name,
                "input": serde_json::from_str::<Value>(&argument_chunks.concat())
                    .unwrap_or_else(|_| json!({})),
            }),
        })
        .collect();
    json!({
        "id": call.id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": call.model,
        "content": content,
        "stop_reason": stop_reason(script),
        "stop_sequence": null,
        "usage": usage_json(&script.usage, script.usage.output),
    })
}

/// The whole event stream of a script that completes.
fn frames(call: &Call, script: &Script) -> Vec<Frame> {
    let mut frames = vec![Frame::event(sse(
        Some("message_start"),
        &json!({
            "type": "message_start",
            "message": {
                "id": call.id("msg_"),
                "type": "message",
                "role": "assistant",
                "model": call.model,
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": usage_json(&script.usage, 1),
            },
        }),
    ))];
    for (index, block) in script.blocks.iter().enumerate() {
        let (start, deltas) = match block {
            Block::Thinking { chunks, signature } => {
                let mut deltas: Vec<Value> = chunks
                    .iter()
                    .map(|chunk| json!({ "type": "thinking_delta", "thinking": chunk }))
                    .collect();
                deltas.push(json!({ "type": "signature_delta", "signature": signature }));
                (
                    json!({ "type": "thinking", "thinking": "", "signature": "" }),
                    deltas,
                )
            }
            Block::Text { chunks } => (
                json!({ "type": "text", "text": "" }),
                chunks
                    .iter()
                    .map(|chunk| json!({ "type": "text_delta", "text": chunk }))
                    .collect(),
            ),
            Block::ToolCall {
                id,
                name,
                argument_chunks,
            } => (
                json!({ "type": "tool_use", "id": tool_id(id), "name": name, "input": {} }),
                argument_chunks
                    .iter()
                    .map(|chunk| json!({ "type": "input_json_delta", "partial_json": chunk }))
                    .collect(),
            ),
        };
        frames.push(Frame::event(sse(
            Some("content_block_start"),
            &json!({ "type": "content_block_start", "index": index, "content_block": start }),
        )));
        if index == 0 {
            frames.push(Frame::event(ping()));
        }
        for delta in deltas {
            frames.push(Frame::delta(sse(
                Some("content_block_delta"),
                &json!({ "type": "content_block_delta", "index": index, "delta": delta }),
            )));
        }
        frames.push(Frame::event(sse(
            Some("content_block_stop"),
            &json!({ "type": "content_block_stop", "index": index }),
        )));
    }
    let usage = &script.usage;
    frames.push(Frame::event(sse(
        Some("message_delta"),
        &json!({
            "type": "message_delta",
            "delta": { "stop_reason": stop_reason(script), "stop_sequence": null },
            "usage": {
                "input_tokens": usage.input,
                "cache_creation_input_tokens": usage.cache_write,
                "cache_read_input_tokens": usage.cache_read,
                "output_tokens": usage.output,
            },
        }),
    )));
    frames.push(Frame::event(sse(
        Some("message_stop"),
        &json!({ "type": "message_stop" }),
    )));
    frames
}

fn ping() -> Bytes {
    sse(Some("ping"), &json!({ "type": "ping" }))
}
