//! The SDK matrix: the official Python SDKs (see [`crate::sdk`]) play every
//! script of the scripted upstream ([`crate::llm_upstream`]) in every mode
//! (`whole`, the SDK's `stream` helper, a `raw` stream), one Python program
//! per API, and print one JSON line per case: the text, thinking, tool calls,
//! usage and stop reason the SDK made of the answer, or the error class it
//! raised, with the exact bytes it sent. [`check`] compares a result with its
//! script; [`run_cases`] runs the matrix against any endpoint (the upstream
//! itself, or the gateway in front of it) and proves the upstream received
//! what the SDK sent: byte for byte, or, through the gateway, with only the
//! gateway's documented changes ([`Hop::Gateway`]).

use std::cell::RefCell;

use base64::Engine;
use serde_json::{json, Value};

use crate::llm_upstream::{expected_usage, script, ScriptedUpstream};
use crate::sdk;

/// The scripts that complete, each played streaming and not by every SDK.
pub const COMPLETE: &[&str] = &[
    "script-text",
    "script-tools",
    "script-thinking",
    "script-cache",
    "script-slow-5",
    "script-long-40",
];

/// The scripts and models that fail, each played streaming and not.
pub const FAILING: &[&str] = &[
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
API_KEY = os.environ["API_KEY"]
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
client = anthropic.Anthropic(base_url=BASE, api_key=API_KEY, max_retries=0,
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
client = openai.OpenAI(base_url=BASE + "/v1", api_key=API_KEY, max_retries=0,
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
client = openai.OpenAI(base_url=BASE + "/v1", api_key=API_KEY, max_retries=0,
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

/// The API a matrix run calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// Anthropic's Messages.
    Anthropic,
    /// OpenAI's Chat Completions.
    Chat,
    /// OpenAI's Responses.
    Responses,
}

impl Api {
    pub const ALL: [Api; 3] = [Api::Anthropic, Api::Chat, Api::Responses];

    /// Where its calls go, at the upstream and at the gateway alike.
    pub fn path(self) -> &'static str {
        match self {
            Api::Anthropic => "/v1/messages",
            Api::Chat => "/v1/chat/completions",
            Api::Responses => "/v1/responses",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Api::Anthropic => ANTHROPIC,
            Api::Chat => CHAT,
            Api::Responses => RESPONSES,
        }
    }

    /// The scripts also played as a `raw` stream (the SDK's plain iterator).
    fn raw_models(self) -> &'static [&'static str] {
        match self {
            Api::Anthropic => &[],
            Api::Chat => &[
                "script-text",
                "script-tools",
                "script-error-midstream",
                "script-abrupt",
            ],
            Api::Responses => &[
                "script-text",
                "script-tools",
                "script-thinking",
                "script-error-midstream",
                "script-abrupt",
            ],
        }
    }

    /// The whole matrix: every script `whole` and `stream`, then the `raw` ones.
    pub fn cases(self) -> Vec<(&'static str, &'static str)> {
        let mut cases: Vec<(&str, &str)> = COMPLETE
            .iter()
            .chain(FAILING)
            .flat_map(|model| [(*model, "whole"), (*model, "stream")])
            .collect();
        cases.extend(self.raw_models().iter().map(|model| (*model, "raw")));
        cases
    }
}

/// What lies between the SDK and the upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hop {
    /// Nothing: every call reaches the upstream as sent, byte for byte.
    Direct,
    /// The gateway, routing these models (its name, the upstream's name);
    /// any other model it answers itself (not forwarded). A routed call's
    /// body arrives as sent but for the gateway's two documented changes: the
    /// model renamed to the upstream's name, and a chat stream's
    /// `stream_options.include_usage` set; unchanged, it arrives byte for byte.
    Gateway(Vec<(String, String)>),
}

impl Hop {
    /// The gateway routing each of `models` under its own name.
    pub fn gateway(models: &[&str]) -> Hop {
        Hop::Gateway(
            models
                .iter()
                .map(|model| ((*model).to_owned(), (*model).to_owned()))
                .collect(),
        )
    }

    /// The model a call for `model` asks the upstream for; `None` when the
    /// call does not reach the upstream.
    pub fn upstream_model<'a>(&'a self, model: &'a str) -> Option<&'a str> {
        match self {
            Hop::Direct => Some(model),
            Hop::Gateway(routes) => routes
                .iter()
                .find(|(name, _)| name == model)
                .map(|(_, upstream)| upstream.as_str()),
        }
    }

    /// Whether `received` is what the upstream should get when the SDK sent
    /// `sent` to `api`.
    pub fn check_forwarded(
        &self,
        api: Api,
        sent: &[u8],
        received: &[u8],
    ) -> Result<(), ForwardError> {
        let changed = match self {
            Hop::Direct => None,
            Hop::Gateway(_) => {
                let mut body: Value = serde_json::from_slice(sent)
                    .map_err(|error| ForwardError::NotJson(error.to_string()))?;
                let model = body["model"].as_str().unwrap_or_default().to_owned();
                let upstream = self
                    .upstream_model(&model)
                    .ok_or_else(|| ForwardError::NotRouted(model.clone()))?;
                let mut changed = false;
                if upstream != model {
                    body["model"] = json!(upstream);
                    changed = true;
                }
                if api == Api::Chat
                    && body["stream"] == json!(true)
                    && body["stream_options"]["include_usage"] != json!(true)
                {
                    if !body["stream_options"].is_object() {
                        body["stream_options"] = json!({});
                    }
                    body["stream_options"]["include_usage"] = json!(true);
                    changed = true;
                }
                changed.then_some(body)
            }
        };
        let matches = match &changed {
            None => sent == received,
            Some(expected) => {
                serde_json::from_slice::<Value>(received).ok().as_ref() == Some(expected)
            }
        };
        if matches {
            return Ok(());
        }
        Err(ForwardError::Differs {
            received: String::from_utf8_lossy(received).into_owned(),
            wanted: changed.map_or_else(
                || String::from_utf8_lossy(sent).into_owned(),
                |body| body.to_string(),
            ),
        })
    }
}

/// Why the upstream did not receive what it should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// Through the gateway, the SDK's body is JSON; this one was not.
    NotJson(String),
    /// The gateway forwarded a model it does not route.
    NotRouted(String),
    /// `received` is not `wanted` (bytes, or JSON once changed).
    Differs { received: String, wanted: String },
}

impl std::fmt::Display for ForwardError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ForwardError::NotJson(error) => write!(formatter, "the SDK sent no JSON: {error}"),
            ForwardError::NotRouted(model) => {
                write!(formatter, "{model} is not routed, yet it was forwarded")
            }
            ForwardError::Differs { received, wanted } => {
                write!(formatter, "the upstream received {received}, not {wanted}")
            }
        }
    }
}

impl std::error::Error for ForwardError {}

/// Where a matrix run's SDK calls go.
pub struct Target<'a> {
    /// `http://HOST:PORT`: the Anthropic client's base URL; the OpenAI
    /// clients add `/v1`.
    pub base_url: String,
    pub api_key: String,
    /// The upstream the calls end at.
    pub upstream: &'a ScriptedUpstream,
    pub hop: Hop,
}

impl<'a> Target<'a> {
    /// `BASE_URL` and `API_KEY`, as the programs read them.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("BASE_URL".to_owned(), self.base_url.clone()),
            ("API_KEY".to_owned(), self.api_key.clone()),
        ]
    }

    /// The upstream itself.
    pub fn direct(upstream: &'a ScriptedUpstream) -> Target<'a> {
        Target {
            base_url: upstream.base_url(),
            api_key: "x".to_owned(),
            upstream,
            hop: Hop::Direct,
        }
    }
}

/// Runs the SDK program for `api` on `cases` against `target`; each case's
/// result, after checking it sent exactly one request, that each case the
/// hop forwards reached the upstream once, in order, at `api`'s path, and
/// that the upstream received what [`Hop::check_forwarded`] expects. The
/// upstream's requests from before the run are left out.
pub async fn run_cases(api: Api, cases: &[(&str, &str)], target: &Target<'_>) -> Vec<Value> {
    let before = target.upstream.requests().len();
    let script = format!("{HARNESS}\n{}", api.program());
    let mut env = target.env();
    env.push(("CASES".to_owned(), json!(cases).to_string()));
    let stdout = sdk::run_python_async(script, env)
        .await
        .expect("the SDK program runs");
    let results: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON line per case"))
        .collect();
    assert_eq!(results.len(), cases.len(), "{stdout}");
    for result in &results {
        assert_eq!(result["requests"], 1, "{result}");
    }
    let forwarded: Vec<&Value> = results
        .iter()
        .zip(cases)
        .filter(|(_, (model, _))| target.hop.upstream_model(model).is_some())
        .map(|(result, _)| result)
        .collect();
    let received = target.upstream.requests().split_off(before);
    assert_eq!(
        received.len(),
        forwarded.len(),
        "one upstream request per forwarded case: {stdout}"
    );
    for (result, request) in forwarded.into_iter().zip(&received) {
        let sent = base64::engine::general_purpose::STANDARD
            .decode(result["body"].as_str().expect("a body"))
            .expect("base64");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("POST", api.path()),
            "{}",
            result["case"]
        );
        if let Err(problem) = target.hop.check_forwarded(api, &sent, &request.body) {
            panic!("{}: {problem}", result["case"]);
        }
    }
    results
}

/// [`run_cases`] with `api`'s whole matrix against a fresh upstream.
pub async fn run_direct(api: Api) -> Vec<Value> {
    let upstream = ScriptedUpstream::start().await;
    run_cases(api, &api.cases(), &Target::direct(&upstream)).await
}

/// What the SDK must make of a case: the error class it raises, or (None) the
/// script's answer.
pub fn expected_error(api: Api, model: &str, mode: &str) -> Option<&'static str> {
    match (model, api, mode) {
        ("script-status-429", ..) => Some("RateLimitError"),
        ("script-status-500", ..) => Some("InternalServerError"),
        ("script-status-529", Api::Anthropic, _) => Some("OverloadedError"),
        ("script-status-529", ..) => Some("InternalServerError"),
        ("no-such-model", ..) => Some("NotFoundError"),
        // A stream cut after its headers: the Anthropic SDK lets httpx's
        // error through as it is (it wraps only errors before the answer).
        ("script-abrupt", Api::Anthropic, "stream") => Some("RemoteProtocolError"),
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
pub fn check(api: Api, result: &Value) -> Vec<String> {
    let case = result["case"].as_str().unwrap_or_default();
    let (model, mode) = case.split_once(' ').unwrap_or_default();
    let problems = RefCell::new(Vec::new());
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
        let sdk_error = !matches!(error, "RuntimeError" | "RemoteProtocolError");
        if sdk_error && !bases.contains(&json!("APIError")) {
            fail(format!("{error} is not an APIError: {bases:?}"));
        }
        match (model, api, mode) {
            // What streamed before the failure reached the client.
            ("script-error-midstream" | "script-abrupt", Api::Anthropic, "stream") => {
                expect("text events", &result["text_events"], json!(2));
            }
            ("script-error-midstream" | "script-abrupt", Api::Chat, "raw") => {
                expect("the text", &result["text"], json!("Hello from"));
            }
            ("script-abrupt", Api::Responses, "raw") => {
                let events = result["events"].as_array().map_or(0, Vec::len);
                expect(
                    "the last event",
                    &result["events"][events.saturating_sub(1)],
                    json!("response.output_text.delta"),
                );
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

/// [`check`] on every result; panics listing the problems and the results.
pub fn check_all(api: Api, results: &[Value]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_may_rename_the_model_and_ask_chat_streams_for_usage() {
        let hop = Hop::Gateway(vec![
            ("alias".to_owned(), "real".to_owned()),
            ("same".to_owned(), "same".to_owned()),
        ]);
        assert_eq!(hop.upstream_model("alias"), Some("real"));
        assert_eq!(hop.upstream_model("other"), None);
        assert_eq!(Hop::Direct.upstream_model("other"), Some("other"));
        let plain = br#"{"model":"same",  "stream":false}"#;
        assert_eq!(hop.check_forwarded(Api::Chat, plain, plain), Ok(()));
        // Unchanged: byte for byte, not merely the same JSON.
        let respaced = br#"{"model":"same","stream":false}"#;
        assert!(hop.check_forwarded(Api::Chat, plain, respaced).is_err());
        let renamed = br#"{"model":"alias","stream":true}"#;
        let forwarded =
            br#"{"model":"real","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(hop.check_forwarded(Api::Chat, renamed, forwarded), Ok(()));
        assert!(hop.check_forwarded(Api::Chat, renamed, renamed).is_err());
        assert!(hop
            .check_forwarded(Api::Responses, renamed, forwarded)
            .is_err());
        let responses = br#"{"model":"real","stream":true}"#;
        assert_eq!(
            hop.check_forwarded(Api::Responses, renamed, responses),
            Ok(())
        );
        assert!(Hop::Direct
            .check_forwarded(Api::Chat, renamed, forwarded)
            .is_err());
        let unrouted = br#"{"model":"other"}"#;
        assert!(hop.check_forwarded(Api::Chat, unrouted, unrouted).is_err());
    }
}
