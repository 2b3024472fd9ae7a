//! The scripted upstream speaks the providers' real wire formats: the official
//! Python SDKs (`anthropic`, `openai`), pointed straight at it, parse every
//! script, streaming and not, into the text, thinking, tool calls and usage the
//! script says, raise their own error types where the real API would make them,
//! and the upstream records the exact bytes they sent. Dropping a streaming
//! client mid-way is recorded as cancelled.

use std::time::Duration;

use base64::Engine;
use flotilla_tests::llm_upstream::{expected_usage, script, Outcome, ScriptedUpstream};
use flotilla_tests::sdk;
use serde_json::{json, Value};

/// The scripts that complete, each played streaming and not by every SDK.
const COMPLETE: &[&str] = &[
    "script-text",
    "script-tools",
    "script-thinking",
    "script-cache",
    "script-slow-5",
    "script-long-40",
];
/// The scripts and models that fail, each played streaming and not.
const FAILING: &[&str] = &[
    "script-error-midstream",
    "script-abrupt",
    "script-status-429",
    "script-status-500",
    "script-status-529",
    "no-such-model",
];

/// Runs each `(model, mode)` case once and prints one JSON line per case: the
/// error's class (and its bases) or null, the request count and the last
/// request's body as sent (base64), plus what the mode's `out` collected.
const HARNESS: &str = r#"
import base64, json, os
BASE = os.environ["BASE_URL"]
CASES = json.loads(os.environ["CASES"])
sent = []
def hook(request):
    sent.append(bytes(request.content))
def run_all(modes):
    for model, mode in CASES:
        before = len(sent)
        out = {"case": f"{model} {mode}", "error": None}
        try:
            modes[mode](model, out)
        except Exception as error:
            out["error"] = type(error).__name__
            out["error_bases"] = [c.__name__ for c in type(error).__mro__]
            out["message"] = str(error)[:300]
        out["requests"] = len(sent) - before
        out["body"] = base64.b64encode(sent[-1]).decode() if len(sent) > before else None
        print(json.dumps(out), flush=True)
"#;

const ANTHROPIC: &str = r#"
import anthropic
client = anthropic.Anthropic(base_url=BASE, api_key="x", max_retries=0,
    http_client=anthropic.DefaultHttpxClient(event_hooks={"request": [hook]}))
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
def summarize(message, out):
    out["text"] = "".join(b.text for b in message.content if b.type == "text")
    out["thinking"] = "".join(b.thinking for b in message.content if b.type == "thinking")
    out["signatures"] = [b.signature for b in message.content if b.type == "thinking"]
    out["tools"] = [[b.name, json.dumps(b.input)] for b in message.content if b.type == "tool_use"]
    u = message.usage
    out["usage"] = {"input": u.input_tokens, "output": u.output_tokens,
                    "cache_read": u.cache_read_input_tokens, "cache_write": u.cache_creation_input_tokens}
    out["stop"] = message.stop_reason
def whole(model, out):
    summarize(client.messages.create(model=model, max_tokens=1024, messages=MESSAGES, tools=TOOLS), out)
def stream(model, out):
    with client.messages.stream(model=model, max_tokens=1024, messages=MESSAGES, tools=TOOLS) as s:
        out["text_events"] = 0
        for event in s:
            out["text_events"] += event.type == "text"
        summarize(s.get_final_message(), out)
run_all({"whole": whole, "stream": stream})
"#;

const CHAT: &str = r#"
import openai
client = openai.OpenAI(base_url=BASE + "/v1", api_key="x", max_retries=0,
    http_client=openai.DefaultHttpxClient(event_hooks={"request": [hook]}))
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
def summarize(completion, out):
    message = completion.choices[0].message
    out["text"] = message.content or ""
    out["tools"] = [[t.function.name, t.function.arguments] for t in (message.tool_calls or [])]
    u = completion.usage
    out["usage"] = None if u is None else {"prompt": u.prompt_tokens, "output": u.completion_tokens,
        "cached": u.prompt_tokens_details.cached_tokens,
        "reasoning": u.completion_tokens_details.reasoning_tokens, "total": u.total_tokens}
    out["stop"] = completion.choices[0].finish_reason
def whole(model, out):
    summarize(client.chat.completions.create(model=model, messages=MESSAGES, tools=TOOLS), out)
def stream(model, out):
    with client.chat.completions.stream(model=model, messages=MESSAGES, tools=TOOLS,
                                        stream_options={"include_usage": True}) as s:
        for _ in s:
            pass
        summarize(s.get_final_completion(), out)
def raw(model, out):
    out["text"] = ""
    out["usage_chunks"] = 0
    for chunk in client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
        out["usage_chunks"] += chunk.usage is not None
        for choice in chunk.choices:
            out["text"] += choice.delta.content or ""
run_all({"whole": whole, "stream": stream, "raw": raw})
"#;

const RESPONSES: &str = r#"
import openai
client = openai.OpenAI(base_url=BASE + "/v1", api_key="x", max_retries=0,
    http_client=openai.DefaultHttpxClient(event_hooks={"request": [hook]}))
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
def summarize(response, out):
    out["text"] = response.output_text
    out["thinking"] = "".join(s.text for item in response.output if item.type == "reasoning" for s in item.summary)
    out["tools"] = [[i.name, i.arguments] for i in response.output if i.type == "function_call"]
    u = response.usage
    out["usage"] = {"prompt": u.input_tokens, "output": u.output_tokens,
        "cached": u.input_tokens_details.cached_tokens,
        "reasoning": u.output_tokens_details.reasoning_tokens, "total": u.total_tokens}
    out["stop"] = response.status
def whole(model, out):
    summarize(client.responses.create(model=model, input="What is the weather in Paris?", tools=TOOLS), out)
def stream(model, out):
    with client.responses.stream(model=model, input="What is the weather in Paris?", tools=TOOLS) as s:
        for _ in s:
            pass
        summarize(s.get_final_response(), out)
def raw(model, out):
    out["events"] = []
    out["sequence"] = []
    for event in client.responses.create(model=model, input="Hello", stream=True):
        out["events"].append(event.type)
        out["sequence"].append(event.sequence_number)
run_all({"whole": whole, "stream": stream, "raw": raw})
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Anthropic,
    Chat,
    Responses,
}

/// Every script in `modes`, and `extra` cases.
fn cases<'a>(modes: &[&'a str], extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut cases: Vec<(&str, &str)> = COMPLETE
        .iter()
        .chain(FAILING)
        .flat_map(|model| modes.iter().map(move |mode| (*model, *mode)))
        .collect();
    cases.extend_from_slice(extra);
    cases
}

/// Runs the SDK program for `api` against a fresh upstream for `cases`; each
/// case's result, after checking it sent exactly one request whose bytes the
/// upstream recorded exactly.
async fn run_cases(api: Api, cases: &[(&str, &str)]) -> Vec<Value> {
    let upstream = ScriptedUpstream::start().await;
    let program = match api {
        Api::Anthropic => ANTHROPIC,
        Api::Chat => CHAT,
        Api::Responses => RESPONSES,
    };
    let script = format!("{HARNESS}\n{program}");
    let env = [
        ("BASE_URL".to_owned(), upstream.base_url()),
        ("CASES".to_owned(), json!(cases).to_string()),
    ];
    let stdout = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        sdk::run_python(&script, &env)
    })
    .await
    .expect("the python thread")
    .expect("the SDK program runs");
    let results: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON line per case"))
        .collect();
    assert_eq!(results.len(), cases.len(), "{stdout}");
    let received = upstream.requests();
    assert_eq!(
        received.len(),
        cases.len(),
        "one request per case: {stdout}"
    );
    let path = match api {
        Api::Anthropic => "/v1/messages",
        Api::Chat => "/v1/chat/completions",
        Api::Responses => "/v1/responses",
    };
    for (result, request) in results.iter().zip(&received) {
        assert_eq!(result["requests"], 1, "{result}");
        let sent = base64::engine::general_purpose::STANDARD
            .decode(result["body"].as_str().expect("a body"))
            .expect("base64");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", path)
        );
        assert_eq!(
            request.body, sent,
            "the recorded body of {}",
            result["case"]
        );
    }
    results
}

/// What the SDK must make of a case: the error class it raises, or (None) the
/// script's answer.
fn expected_error(api: Api, model: &str, mode: &str) -> Option<&'static str> {
    match (model, api, mode) {
        ("script-status-429", ..) => Some("RateLimitError"),
        ("script-status-500", ..) => Some("InternalServerError"),
        ("script-status-529", Api::Anthropic, _) => Some("OverloadedError"),
        ("script-status-529", ..) => Some("InternalServerError"),
        ("no-such-model", ..) => Some("NotFoundError"),
        // The cut connection: the SDKs raise their connection error.
        ("script-abrupt", ..) => Some("APIConnectionError"),
        ("script-error-midstream", Api::Anthropic, "whole") => Some("OverloadedError"),
        // An `error` event: the status is 200, so the base class.
        ("script-error-midstream", Api::Anthropic, _) => Some("APIStatusError"),
        ("script-error-midstream", _, "whole") => Some("InternalServerError"),
        ("script-error-midstream", Api::Chat, _) => Some("APIError"),
        // `response.failed` is an event the SDK yields; its stream helper
        // then finds no `response.completed`.
        ("script-error-midstream", Api::Responses, "stream") => Some("RuntimeError"),
        _ => None,
    }
}

/// Compares one case's result with its script; the problems found.
fn check(api: Api, result: &Value) -> Vec<String> {
    let case = result["case"].as_str().unwrap_or_default();
    let (model, mode) = case.split_once(' ').unwrap_or_default();
    let problems = std::cell::RefCell::new(Vec::new());
    let fail = |problem: String| problems.borrow_mut().push(format!("{case}: {problem}"));
    let expect = |what: &str, actual: &Value, wanted: Value| {
        if *actual != wanted {
            fail(format!("{what} is {actual}, not {wanted}"));
        }
    };
    if let Some(error) = expected_error(api, model, mode) {
        expect("the error", &result["error"], json!(error));
        let bases = result["error_bases"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if error != "RuntimeError" && !bases.contains(&json!("APIError")) {
            fail(format!("{error} is not an APIError: {bases:?}"));
        }
        match (model, api, mode) {
            // What streamed before the failure reached the client.
            ("script-error-midstream", Api::Anthropic, "stream") => {
                expect("text events", &result["text_events"], json!(2));
            }
            ("script-error-midstream", Api::Chat, "raw") => {
                expect("the text", &result["text"], json!("Hello from"));
            }
            _ => {}
        }
        return problems.into_inner();
    }
    expect("the error", &result["error"], Value::Null);
    if model == "script-error-midstream" {
        // Responses, raw: the stream's last event says it failed.
        let events = result["events"].as_array().cloned().unwrap_or_default();
        expect(
            "the last event",
            events.last().unwrap_or(&Value::Null),
            json!("response.failed"),
        );
        return problems.into_inner();
    }
    let script = script(model).expect("a complete script");
    let usage = expected_usage(model).expect("usage");
    if mode == "raw" {
        match api {
            Api::Chat => {
                expect("the text", &result["text"], json!(script.text()));
                // No stream_options.include_usage: no usage chunk.
                expect("usage chunks", &result["usage_chunks"], json!(0));
            }
            _ => {
                let events = result["events"].as_array().cloned().unwrap_or_default();
                let numbers: Vec<Value> = (0..events.len()).map(|n| json!(n)).collect();
                expect("the sequence numbers", &result["sequence"], json!(numbers));
                expect("the first event", &events[0], json!("response.created"));
                expect(
                    "the last event",
                    events.last().unwrap_or(&Value::Null),
                    json!("response.completed"),
                );
            }
        }
        return problems.into_inner();
    }
    expect("the text", &result["text"], json!(script.text()));
    let tools: Vec<(String, Value)> = result["tools"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|tool| {
            let arguments = tool[1].as_str().unwrap_or_default();
            (
                tool[0].as_str().unwrap_or_default().to_owned(),
                parse(arguments),
            )
        })
        .collect();
    let wanted_tools: Vec<(String, Value)> = script
        .tool_calls()
        .into_iter()
        .map(|(name, arguments)| (name, parse(&arguments)))
        .collect();
    if tools != wanted_tools {
        fail(format!("tool calls {tools:?}, not {wanted_tools:?}"));
    }
    let calls_tools = script.calls_tools();
    match api {
        Api::Anthropic => {
            expect(
                "the thinking",
                &result["thinking"],
                json!(script.thinking()),
            );
            let signatures = if script.thinking().is_empty() {
                json!([])
            } else {
                json!(["c2lnbmF0dXJlLXNjcmlwdC10aGlua2luZw=="])
            };
            expect("the signatures", &result["signatures"], signatures);
            let stop = if calls_tools { "tool_use" } else { "end_turn" };
            expect("the stop reason", &result["stop"], json!(stop));
            expect(
                "the usage",
                &result["usage"],
                json!({
                    "input": usage.input,
                    "output": usage.output,
                    "cache_read": usage.cache_read,
                    "cache_write": usage.cache_write,
                }),
            );
        }
        Api::Chat | Api::Responses => {
            let stop = match (api, calls_tools) {
                (Api::Responses, _) => "completed",
                (_, true) => "tool_calls",
                (_, false) => "stop",
            };
            expect("the stop reason", &result["stop"], json!(stop));
            if api == Api::Responses {
                expect(
                    "the thinking",
                    &result["thinking"],
                    json!(script.thinking()),
                );
            }
            let prompt = usage.prompt_total();
            expect(
                "the usage",
                &result["usage"],
                json!({
                    "prompt": prompt,
                    "output": usage.output,
                    "cached": usage.cache_read,
                    "reasoning": usage.reasoning,
                    "total": prompt + usage.output,
                }),
            );
        }
    }
    problems.into_inner()
}

fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

fn check_all(api: Api, results: &[Value]) {
    let problems: Vec<String> = results
        .iter()
        .flat_map(|result| check(api, result))
        .collect();
    assert!(
        problems.is_empty(),
        "{}\n--- results\n{}",
        problems.join("\n"),
        results
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_sdk_parses_every_script() {
    let results = run_cases(Api::Anthropic, &cases(&["whole", "stream"], &[])).await;
    check_all(Api::Anthropic, &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_parses_every_chat_completions_script() {
    let raw = [
        ("script-text", "raw"),
        ("script-tools", "raw"),
        ("script-error-midstream", "raw"),
        ("script-abrupt", "raw"),
    ];
    let results = run_cases(Api::Chat, &cases(&["whole", "stream"], &raw)).await;
    check_all(Api::Chat, &results);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_parses_every_responses_script() {
    let raw = [
        ("script-text", "raw"),
        ("script-tools", "raw"),
        ("script-thinking", "raw"),
        ("script-error-midstream", "raw"),
        ("script-abrupt", "raw"),
    ];
    let results = run_cases(Api::Responses, &cases(&["whole", "stream"], &raw)).await;
    check_all(Api::Responses, &results);
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
        .map(|event| parse(event.strip_prefix("data: ").expect("a data line")))
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
