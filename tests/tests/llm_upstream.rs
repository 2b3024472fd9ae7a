//! The scripted upstream speaks the providers' real wire formats: the official
//! Python SDKs (`anthropic`, `openai`), pointed straight at it, parse every
//! script, streaming and not, into the text, thinking, tool calls and usage the
//! script says, raise their own error types where the real API would make them,
//! and the upstream records the exact bytes they sent (the matrix of scripts and
//! modes: `flotilla_tests::sdk_matrix`). Dropping a streaming client mid-way is
//! recorded as cancelled.

use std::time::Duration;

use flotilla_tests::llm_upstream::{Outcome, ScriptedUpstream};
use flotilla_tests::sdk_matrix::{check_all, run_direct, Api};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_parses_every_script() {
    check_all(Api::Anthropic, &run_direct(Api::Anthropic).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_parses_every_chat_completions_script() {
    check_all(Api::Chat, &run_direct(Api::Chat).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_parses_every_responses_script() {
    check_all(Api::Responses, &run_direct(Api::Responses).await);
}

fn anthropic_request(
    http: &reqwest::Client,
    upstream: &ScriptedUpstream,
    model: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("{}/v1/messages", upstream.base_url()))
        .header("x-api-key", "x")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({
            "model": model,
            "max_tokens": 16,
            "stream": true,
            "messages": [{ "role": "user", "content": "Hello" }],
        }))
}

#[tokio::test]
async fn a_client_going_away_mid_stream_is_recorded_as_cancelled() {
    let upstream = ScriptedUpstream::start().await;
    let http = reqwest::Client::new();
    let mut response = anthropic_request(&http, &upstream, "script-slow-100")
        .send()
        .await
        .expect("the upstream answers");
    assert_eq!(response.status(), 200);
    let first = response
        .chunk()
        .await
        .expect("read")
        .expect("a first chunk");
    assert!(first.starts_with(b"event: message_start\n"), "{first:?}");
    response
        .chunk()
        .await
        .expect("read")
        .expect("a second chunk");
    assert_eq!(upstream.requests()[0].outcome, Outcome::Pending);
    drop(response);
    let outcome = upstream
        .wait_for_outcome(0, Duration::from_secs(5))
        .await
        .expect("an outcome");
    assert_eq!(outcome, Outcome::ClientGone);
    assert_eq!(upstream.cancelled(), 1);

    // Read to the end, the same stream completes.
    let body = anthropic_request(&http, &upstream, "script-slow-5")
        .send()
        .await
        .expect("the upstream answers")
        .text()
        .await
        .expect("the whole stream");
    assert!(
        body.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{body}"
    );
    let outcome = upstream
        .wait_for_outcome(1, Duration::from_secs(5))
        .await
        .expect("an outcome");
    assert_eq!(outcome, Outcome::Completed);
    assert_eq!(upstream.cancelled(), 1);
}

/// The upstream's Chat Completions stream, as server-sent events.
async fn chat_events(upstream: &ScriptedUpstream, include_usage: bool) -> Vec<String> {
    let mut request = json!({
        "model": "script-cache",
        "stream": true,
        "messages": [{ "role": "user", "content": "Hello" }],
    });
    if include_usage {
        request["stream_options"] = json!({ "include_usage": true });
    }
    let body = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", upstream.base_url()))
        .bearer_auth("x")
        .json(&request)
        .send()
        .await
        .expect("the upstream answers")
        .text()
        .await
        .expect("the stream");
    assert!(body.ends_with("\n\n"), "{body}");
    body.split_terminator("\n\n").map(str::to_owned).collect()
}

#[tokio::test]
async fn chat_streams_carry_a_usage_chunk_only_when_asked() {
    let upstream = ScriptedUpstream::start().await;
    let plain = chat_events(&upstream, false).await;
    assert_eq!(plain.last().map(String::as_str), Some("data: [DONE]"));
    assert!(
        plain.iter().all(|event| !event.contains("usage")),
        "{plain:?}"
    );

    let with_usage = chat_events(&upstream, true).await;
    assert_eq!(with_usage.len(), plain.len() + 1);
    let chunks: Vec<Value> = with_usage[..with_usage.len() - 1]
        .iter()
        .map(|event| {
            let data = event.strip_prefix("data: ").expect("a data line");
            serde_json::from_str(data).expect("a JSON chunk")
        })
        .collect();
    let (last, rest) = chunks.split_last().expect("chunks");
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["prompt_tokens"], 4 + 2048 + 1024);
    assert_eq!(
        last["usage"]["prompt_tokens_details"]["cached_tokens"],
        2048
    );
    assert!(rest
        .iter()
        .all(|chunk| chunk["usage"].is_null() && chunk.get("usage").is_some()));
}

#[tokio::test]
async fn requests_are_checked_as_the_providers_check_them() {
    let upstream = ScriptedUpstream::start().await;
    let http = reqwest::Client::new();
    let base = upstream.base_url();

    let models: Value = http
        .get(format!("{base}/v1/models"))
        .bearer_auth("x")
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("JSON");
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["object"], "model");
    assert_eq!(models["data"][0]["id"], "script-text");
    let anthropic_models: Value = http
        .get(format!("{base}/v1/models"))
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .expect("models")
        .json()
        .await
        .expect("JSON");
    assert_eq!(anthropic_models["data"][0]["type"], "model");
    assert_eq!(anthropic_models["has_more"], false);

    let no_key = http
        .post(format!("{base}/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({ "model": "script-text", "max_tokens": 16, "messages": [] }))
        .send()
        .await
        .expect("an answer");
    assert_eq!(no_key.status(), 401);
    let body: Value = no_key.json().await.expect("JSON");
    assert_eq!(body["type"], "error");
    assert_eq!(body["error"]["type"], "authentication_error");

    let no_key = http
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({ "model": "script-text", "messages": [] }))
        .send()
        .await
        .expect("an answer");
    assert_eq!(no_key.status(), 401);
    let body: Value = no_key.json().await.expect("JSON");
    assert_eq!(body["error"]["type"], "invalid_request_error");

    let unknown = http
        .post(format!("{base}/v1/nothing"))
        .bearer_auth("x")
        .send()
        .await
        .expect("an answer");
    assert_eq!(unknown.status(), 404);
    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 5);
    assert_eq!(recorded[2].header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(recorded[4].path, "/v1/nothing");
    assert!(recorded.iter().all(|received| received.completed()));
}
