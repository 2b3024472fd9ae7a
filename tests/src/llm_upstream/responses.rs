//! OpenAI's Responses API (`POST /v1/responses`) as the real one answers: the
//! `response` JSON, or with `stream: true` its named events, each with its
//! `sequence_number`: `response.created`, `response.in_progress`, per output
//! item `response.output_item.added` ... `.done` (a `reasoning` item's summary
//! parts and text deltas, a `message`'s `output_text` content part and deltas,
//! a `function_call`'s argument deltas), then `response.completed` with
//! `response.usage`; a failure mid-stream ends with `response.failed`. Field names
//! follow openai-python's `types/responses`.

use axum::body::Bytes;
use serde_json::{json, Value};

use super::openai::SERVER_ERROR_MESSAGE;
use super::scripts::{Block, Ending, Script, Usage};
use super::wire::{sse, Call, Frame, Reply, CREATED};

/// The answer to a Responses call that plays `script`.
pub fn reply(call: &Call, script: &Script) -> Reply {
    let headers = vec![("x-request-id", call.id("req_"))];
    if let Ending::ErrorAfter(_) = script.ending {
        if !call.stream {
            return super::openai::error(call, 500, None);
        }
    }
    let output: Vec<Value> = script
        .blocks
        .iter()
        .enumerate()
        .map(|(index, block)| done_item(call, index, block))
        .collect();
    if !call.stream {
        let body = response(call, "completed", output, Some(&script.usage));
        return Reply::whole(script, &body, headers);
    }
    let failing = call.clone();
    Reply::stream(
        script,
        frames(call, script, output),
        move |sequence_number| failed(&failing, sequence_number),
        headers,
    )
}

/// The terminal event of a response that failed mid-stream: `response.failed`
/// with the response's `status: "failed"` and its `error`.
fn failed(call: &Call, sequence_number: usize) -> Bytes {
    let mut response = response(call, "failed", Vec::new(), None);
    response["error"] = json!({ "code": "server_error", "message": SERVER_ERROR_MESSAGE });
    sse(
        Some("response.failed"),
        &json!({
            "type": "response.failed",
            "response": response,
            "sequence_number": sequence_number,
        }),
    )
}

/// The Responses API's `usage`.
pub fn usage_json(usage: &Usage) -> Value {
    let input = usage.prompt_total();
    json!({
        "input_tokens": input,
        "input_tokens_details": {
            "cached_tokens": usage.cache_read,
            "cache_write_tokens": usage.cache_write,
        },
        "output_tokens": usage.output,
        "output_tokens_details": { "reasoning_tokens": usage.reasoning },
        "total_tokens": input + usage.output,
    })
}

/// The `response` object in `status`.
fn response(call: &Call, status: &str, output: Vec<Value>, usage: Option<&Usage>) -> Value {
    json!({
        "id": call.id("resp_"),
        "object": "response",
        "created_at": CREATED,
        "status": status,
        "background": false,
        "completed_at": if status == "completed" { json!(CREATED + 1) } else { Value::Null },
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "model": call.model,
        "output": output,
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "reasoning": { "effort": null, "summary": null },
        "service_tier": "default",
        "store": true,
        "temperature": 1.0,
        "text": { "format": { "type": "text" }, "verbosity": "medium" },
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage.map(usage_json),
        "user": null,
        "metadata": {},
    })
}

fn item_id(call: &Call, index: usize, block: &Block) -> String {
    let prefix = match block {
        Block::Thinking { .. } => "rs_",
        Block::Text { .. } => "msg_",
        Block::ToolCall { .. } => "fc_",
    };
    format!("{}_{index}", call.id(prefix))
}

fn output_text(text: &str) -> Value {
    json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] })
}

/// Output item `index` as `response.output_item.done` and the final response carry it.
fn done_item(call: &Call, index: usize, block: &Block) -> Value {
    let id = item_id(call, index, block);
    match block {
        Block::Thinking { chunks, .. } => json!({
            "id": id,
            "type": "reasoning",
            "summary": [{ "type": "summary_text", "text": chunks.concat() }],
        }),
        Block::Text { chunks } => json!({
            "id": id,
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [output_text(&chunks.concat())],
        }),
        Block::ToolCall {
            id: call_id,
            name,
            argument_chunks,
        } => json!({
            "id": id,
            "type": "function_call",
            "status": "completed",
            "arguments": argument_chunks.concat(),
            "call_id": format!("call_{call_id}"),
            "name": name,
        }),
    }
}

/// The events of output item `index`, from `added` to `done`; `true` marks deltas.
fn item_events(call: &Call, index: usize, block: &Block, done: &Value) -> Vec<(Value, bool)> {
    let id = item_id(call, index, block);
    let mut events = Vec::new();
    let mut push = |kind: &str, fields: Value, delta: bool| {
        let mut event = json!({ "type": kind, "output_index": index });
        if let (Some(event), Value::Object(fields)) = (event.as_object_mut(), fields) {
            event.extend(fields);
        }
        events.push((event, delta));
    };
    let added = match block {
        Block::Thinking { .. } => json!({ "id": id, "type": "reasoning", "summary": [] }),
        Block::Text { .. } => json!({
            "id": id, "type": "message", "status": "in_progress", "role": "assistant", "content": [],
        }),
        Block::ToolCall { .. } => {
            let mut item = done.clone();
            item["status"] = json!("in_progress");
            item["arguments"] = json!("");
            item
        }
    };
    push(
        "response.output_item.added",
        json!({ "item": added }),
        false,
    );
    match block {
        Block::Thinking { chunks, .. } => {
            let part = |text: &str| json!({ "type": "summary_text", "text": text });
            let summary = |fields: Value| {
                let mut all = json!({ "item_id": id, "summary_index": 0 });
                if let (Some(all), Value::Object(fields)) = (all.as_object_mut(), fields) {
                    all.extend(fields);
                }
                all
            };
            let text = chunks.concat();
            push(
                "response.reasoning_summary_part.added",
                summary(json!({ "part": part("") })),
                false,
            );
            for chunk in chunks {
                push(
                    "response.reasoning_summary_text.delta",
                    summary(json!({ "delta": chunk })),
                    true,
                );
            }
            push(
                "response.reasoning_summary_text.done",
                summary(json!({ "text": text })),
                false,
            );
            push(
                "response.reasoning_summary_part.done",
                summary(json!({ "part": part(&text) })),
                false,
            );
        }
        Block::Text { chunks } => {
            let text = chunks.concat();
            let content = |fields: Value| {
                let mut all = json!({ "item_id": id, "content_index": 0 });
                if let (Some(all), Value::Object(fields)) = (all.as_object_mut(), fields) {
                    all.extend(fields);
                }
                all
            };
            push(
                "response.content_part.added",
                content(json!({ "part": output_text("") })),
                false,
            );
            for chunk in chunks {
                push(
                    "response.output_text.delta",
                    content(json!({ "delta": chunk, "logprobs": [] })),
                    true,
                );
            }
            push(
                "response.output_text.done",
                content(json!({ "text": text, "logprobs": [] })),
                false,
            );
            push(
                "response.content_part.done",
                content(json!({ "part": output_text(&text) })),
                false,
            );
        }
        Block::ToolCall {
            argument_chunks, ..
        } => {
            for chunk in argument_chunks.iter().filter(|piece| !piece.is_empty()) {
                push(
                    "response.function_call_arguments.delta",
                    json!({ "item_id": id, "delta": chunk }),
                    true,
                );
            }
            push(
                "response.function_call_arguments.done",
                json!({ "item_id": id, "arguments": argument_chunks.concat() }),
                false,
            );
        }
    }
    push("response.output_item.done", json!({ "item": done }), false);
    events
}

/// The whole stream of a script that completes, numbered from 0.
fn frames(call: &Call, script: &Script, output: Vec<Value>) -> Vec<Frame> {
    let mut events = vec![
        (
            json!({ "type": "response.created", "response": response(call, "in_progress", Vec::new(), None) }),
            false,
        ),
        (
            json!({ "type": "response.in_progress", "response": response(call, "in_progress", Vec::new(), None) }),
            false,
        ),
    ];
    for (index, (block, done)) in script.blocks.iter().zip(&output).enumerate() {
        events.extend(item_events(call, index, block, done));
    }
    events.push((
        json!({
            "type": "response.completed",
            "response": response(call, "completed", output, Some(&script.usage)),
        }),
        false,
    ));
    events
        .into_iter()
        .enumerate()
        .map(|(sequence_number, (mut event, delta))| {
            event["sequence_number"] = json!(sequence_number);
            let name = event["type"].as_str().unwrap_or_default().to_owned();
            let bytes = sse(Some(&name), &event);
            if delta {
                Frame::delta(bytes)
            } else {
                Frame::event(bytes)
            }
        })
        .collect()
}
