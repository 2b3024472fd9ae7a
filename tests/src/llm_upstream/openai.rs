//! OpenAI's Chat Completions API (`POST /v1/chat/completions`) as the real one
//! answers: the `chat.completion` JSON, or with `stream: true` its
//! `chat.completion.chunk` events (`data:` lines only; the content and
//! `tool_calls` deltas, the chunk with the `finish_reason`, then a usage chunk
//! with `choices: []` only when `stream_options.include_usage` was asked for,
//! then `data: [DONE]`); OpenAI's error bodies (`{"error":{...}}`, shared with
//! the Responses API); and the model list (`GET /v1/models`). Field names
//! follow openai-python's types and its recorded streams.

use serde_json::{json, Value};

use super::scripts::{Block, Ending, Script, Usage, SCRIPT_NAMES};
use super::wire::{sse, Call, Frame, Reply, CREATED};

/// The answer to a Chat Completions call that plays `script`.
pub fn reply(call: &Call, script: &Script) -> Reply {
    let headers = vec![("x-request-id", call.id("req_"))];
    if let Ending::ErrorAfter(_) = script.ending {
        if !call.stream {
            return error(call, 500, None);
        }
    }
    if !call.stream {
        return Reply::whole(script, &completion(call, script), headers);
    }
    Reply::stream(
        script,
        frames(call, script),
        |_| {
            sse(
                None,
                &json!({ "error": error_object(500, SERVER_ERROR_MESSAGE) }),
            )
        },
        headers,
    )
}

pub const SERVER_ERROR_MESSAGE: &str =
    "The server had an error while processing your request. Sorry about that!";

/// `status` with OpenAI's error body for it; `message` overrides the usual text.
pub fn error(call: &Call, status: u16, message: Option<&str>) -> Reply {
    let mut headers = vec![("x-request-id", call.id("req_"))];
    if status == 429 {
        headers.push(("retry-after", "1".to_owned()));
    }
    let message = message.unwrap_or_else(|| default_message(status));
    Reply::json(
        status,
        &json!({ "error": error_object(status, message) }),
        headers,
    )
}

/// 404 for a model the upstream does not play, as OpenAI words it.
pub fn model_not_found(call: &Call) -> Reply {
    let message = format!(
        "The model `{}` does not exist or you do not have access to it.",
        call.model
    );
    let mut body = json!({ "error": error_object(404, &message) });
    body["error"]["code"] = json!("model_not_found");
    Reply::json(404, &body, vec![("x-request-id", call.id("req_"))])
}

/// `{"message","type","param","code"}` for `status`.
pub fn error_object(status: u16, message: &str) -> Value {
    let (kind, code) = match status {
        401 => ("invalid_request_error", json!("invalid_api_key")),
        429 => ("requests", json!("rate_limit_exceeded")),
        500..=599 => ("server_error", Value::Null),
        _ => ("invalid_request_error", Value::Null),
    };
    json!({ "message": message, "type": kind, "param": null, "code": code })
}

fn default_message(status: u16) -> &'static str {
    match status {
        400 => "Invalid request.",
        401 => "Incorrect API key provided.",
        403 => "You are not allowed to sample from this model.",
        404 => "Not found.",
        429 => "Rate limit reached for requests. Please try again in 1s.",
        503 => "The engine is currently overloaded, please try again later.",
        _ => SERVER_ERROR_MESSAGE,
    }
}

/// `GET /v1/models`: the fixed scripts, as OpenAI's model list.
pub fn models() -> Value {
    let data: Vec<Value> = SCRIPT_NAMES
        .iter()
        .map(|name| json!({ "id": name, "object": "model", "created": CREATED, "owned_by": "flotilla-tests" }))
        .collect();
    json!({ "object": "list", "data": data })
}

/// Chat Completions' `usage`.
pub fn usage_json(usage: &Usage) -> Value {
    let prompt = usage.prompt_total();
    let mut prompt_details = json!({ "cached_tokens": usage.cache_read, "audio_tokens": 0 });
    if usage.cache_write > 0 {
        prompt_details["cache_write_tokens"] = json!(usage.cache_write);
    }
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": usage.output,
        "total_tokens": prompt + usage.output,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    })
}

fn finish_reason(script: &Script) -> &'static str {
    if script.calls_tools() {
        "tool_calls"
    } else {
        "stop"
    }
}

fn call_id(id: &str) -> String {
    format!("call_{id}")
}

/// The non-streaming `chat.completion`.
fn completion(call: &Call, script: &Script) -> Value {
    let tool_calls: Vec<Value> = script
        .blocks
        .iter()
        .filter_map(|block| match block {
            Block::ToolCall {
                id,
                name,
                argument_chunks,
            } => Some(json!({
                "id": call_id(id),
                "type": "function",
                "function": { "name": name, "arguments": argument_chunks.concat() },
            })),
            _ => None,
        })
        .collect();
    let text = script.text();
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() { Value::Null } else { json!(text) },
        "refusal": null,
        "annotations": [],
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = json!(tool_calls);
    }
    json!({
        "id": call.id("chatcmpl-"),
        "object": "chat.completion",
        "created": CREATED,
        "model": call.model,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": finish_reason(script),
        }],
        "usage": usage_json(&script.usage),
        "service_tier": "default",
        "system_fingerprint": "fp_scripted",
    })
}

/// A chunk with one choice carrying `delta` (and `finish_reason`).
fn chunk(call: &Call, delta: Value, finish_reason: Option<&str>) -> Value {
    let mut chunk = json!({
        "id": call.id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": call.model,
        "service_tier": "default",
        "system_fingerprint": "fp_scripted",
        "choices": [{
            "index": 0,
            "delta": delta,
            "logprobs": null,
            "finish_reason": finish_reason,
        }],
    });
    // With include_usage every chunk carries `usage`, null until the last.
    if call.include_usage {
        chunk["usage"] = Value::Null;
    }
    chunk
}

/// The whole stream of a script that completes.
fn frames(call: &Call, script: &Script) -> Vec<Frame> {
    let data = |value: Value| sse(None, &value);
    let mut frames = vec![Frame::event(data(chunk(
        call,
        json!({ "role": "assistant", "content": "", "refusal": null }),
        None,
    )))];
    let mut tool_index = 0;
    for block in &script.blocks {
        match block {
            // Chat Completions streams no reasoning; it is only counted.
            Block::Thinking { .. } => {}
            Block::Text { chunks } => {
                for text in chunks {
                    frames.push(Frame::delta(data(chunk(
                        call,
                        json!({ "content": text }),
                        None,
                    ))));
                }
            }
            Block::ToolCall {
                id,
                name,
                argument_chunks,
            } => {
                frames.push(Frame::event(data(chunk(
                    call,
                    json!({ "tool_calls": [{
                        "index": tool_index,
                        "id": call_id(id),
                        "type": "function",
                        "function": { "name": name, "arguments": "" },
                    }] }),
                    None,
                ))));
                for arguments in argument_chunks.iter().filter(|piece| !piece.is_empty()) {
                    frames.push(Frame::delta(data(chunk(
                        call,
                        json!({ "tool_calls": [{
                            "index": tool_index,
                            "function": { "arguments": arguments },
                        }] }),
                        None,
                    ))));
                }
                tool_index += 1;
            }
        }
    }
    frames.push(Frame::event(data(chunk(
        call,
        json!({}),
        Some(finish_reason(script)),
    ))));
    if call.include_usage {
        let mut last = chunk(call, json!({}), None);
        last["choices"] = json!([]);
        last["usage"] = usage_json(&script.usage);
        frames.push(Frame::event(data(last)));
    }
    frames.push(Frame::event("data: [DONE]\n\n".into()));
    frames
}
