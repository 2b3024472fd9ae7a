//! The one test double of the project: a scripted model provider. It speaks
//! the providers' real wire formats (Anthropic's Messages API, OpenAI's Chat
//! Completions and Responses APIs, streaming and not, their error bodies) on
//! 127.0.0.1, so that the LLM gateway's tests run real clients (the official
//! SDKs, see [`crate::sdk`]) through the real gateway against it.
//!
//! The request's `model` names the script (`scripts.rs`): `script-text`,
//! `script-tools`, `script-thinking`, `script-cache`, `script-error-midstream`,
//! `script-slow` / `script-slow-<ms>`, `script-abrupt`, `script-long-<n>`,
//! `script-status-<code>`; any other model is answered 404 with the provider's
//! not-found body. Every request is recorded as it arrived (method, path,
//! headers, the exact body bytes) with how its answer ended, so a test can
//! prove a gateway forwarded a body byte for byte, or that a client going away
//! cancelled the upstream call ([`Outcome::ClientGone`]).

mod anthropic;
mod openai;
mod responses;
mod scripts;
mod wire;

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use serde_json::Value;

pub use scripts::{
    expected_usage, play, script, Block, Ending, Play, Script, Usage, SCRIPT_NAMES, SLOW_DELAY,
};
use wire::{Call, Reply};

/// How the answer to a recorded request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still being sent.
    Pending,
    /// The whole body was handed to the connection.
    Completed,
    /// The client went away (the body was dropped) before the end.
    ClientGone,
    /// The script cut the connection on purpose (`script-abrupt`).
    Cut,
}

/// One request the upstream received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// In the order received, names lowercase.
    pub headers: Vec<(String, String)>,
    /// Exactly as received.
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

impl Received {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON, when it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn completed(&self) -> bool {
        self.outcome == Outcome::Completed
    }

    pub fn cancelled(&self) -> bool {
        self.outcome == Outcome::ClientGone
    }
}

type Record = Arc<Mutex<Vec<Received>>>;

/// The scripted upstream; serves until dropped.
pub struct ScriptedUpstream {
    addr: SocketAddr,
    record: Record,
    server: tokio::task::JoinHandle<()>,
}

impl ScriptedUpstream {
    /// Serves on a free port of 127.0.0.1 (on the current tokio runtime).
    pub async fn start() -> ScriptedUpstream {
        ScriptedUpstream::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind a free port on 127.0.0.1")
    }

    /// Serves on `addr` (port 0: a free one).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<ScriptedUpstream> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind the scripted upstream to {addr}"))?;
        let addr = listener.local_addr().context("the upstream's address")?;
        let record = Record::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(record.clone());
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                eprintln!("scripted upstream stopped: {error}");
            }
        });
        Ok(ScriptedUpstream {
            addr,
            record,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`: no trailing slash, no `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.record).clone()
    }

    /// How many answers the client abandoned before their end.
    pub fn cancelled(&self) -> usize {
        lock(&self.record)
            .iter()
            .filter(|received| received.cancelled())
            .count()
    }

    /// Waits until request `index` is no longer [`Outcome::Pending`].
    pub async fn wait_for_outcome(
        &self,
        index: usize,
        timeout: Duration,
    ) -> anyhow::Result<Outcome> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let outcome = lock(&self.record)
                .get(index)
                .map(|received| received.outcome);
            match outcome {
                Some(Outcome::Pending) | None if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Some(outcome) => return Ok(outcome),
                None => anyhow::bail!("the upstream never received request {index}"),
            }
        }
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn lock(record: &Record) -> std::sync::MutexGuard<'_, Vec<Received>> {
    record
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which API a request is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Messages,
    ChatCompletions,
    Responses,
}

async fn handle(
    State(record): State<Record>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let index = {
        let mut received = lock(&record);
        received.push(Received {
            method: method.to_string(),
            path: uri.path().to_owned(),
            query: uri.query().map(str::to_owned),
            headers: headers
                .iter()
                .map(|(name, value)| {
                    (
                        name.as_str().to_owned(),
                        String::from_utf8_lossy(value.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            outcome: Outcome::Pending,
        });
        received.len() - 1
    };
    let anthropic_client = headers.contains_key("anthropic-version");
    let reply = match (&method, uri.path()) {
        (&Method::POST, "/v1/messages") => model_call(Api::Messages, index, &headers, &body),
        (&Method::POST, "/v1/chat/completions") => {
            model_call(Api::ChatCompletions, index, &headers, &body)
        }
        (&Method::POST, "/v1/responses") => model_call(Api::Responses, index, &headers, &body),
        (&Method::GET, "/v1/models") if anthropic_client => {
            Reply::json(200, &anthropic::models(), Vec::new())
        }
        (&Method::GET, "/v1/models") => Reply::json(200, &openai::models(), Vec::new()),
        _ => {
            let call = bare_call(index);
            if anthropic_client {
                anthropic::error(&call, 404, Some("Not Found"))
            } else {
                let message = format!("Invalid URL ({method} {})", uri.path());
                openai::error(&call, 404, Some(&message))
            }
        }
    };
    respond(reply, record, index)
}

fn bare_call(index: usize) -> Call {
    Call {
        index,
        model: String::new(),
        stream: false,
        include_usage: false,
    }
}

/// Checks the request as the provider would (a key, a JSON body with a
/// `model`), then plays the model's script.
fn model_call(api: Api, index: usize, headers: &HeaderMap, body: &[u8]) -> Reply {
    let mut call = bare_call(index);
    let error = |call: &Call, status: u16, message: &str| match api {
        Api::Messages => anthropic::error(call, status, Some(message)),
        Api::ChatCompletions | Api::Responses => openai::error(call, status, Some(message)),
    };
    if api == Api::Messages {
        if !headers.contains_key("x-api-key") && !headers.contains_key("authorization") {
            return error(&call, 401, "x-api-key header is required");
        }
        if !headers.contains_key("anthropic-version") {
            return error(&call, 400, "anthropic-version: header is required");
        }
    } else if !headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("Bearer ") && value.len() > 7)
    {
        return error(
            &call,
            401,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(
            &call,
            400,
            "We could not parse the JSON body of your request. The API expects a JSON payload.",
        );
    };
    let Some(model) = request["model"].as_str() else {
        return match api {
            Api::Messages => error(&call, 400, "model: Field required"),
            _ => error(&call, 400, "you must provide a model parameter"),
        };
    };
    call.model = model.to_owned();
    call.stream = request["stream"] == Value::Bool(true);
    call.include_usage = request["stream_options"]["include_usage"] == Value::Bool(true);
    match (play(model), api) {
        (None, Api::Messages) => error(&call, 404, &format!("model: {model}")),
        (None, _) => openai::model_not_found(&call),
        (Some(Play::Status(status)), Api::Messages) => anthropic::error(&call, status, None),
        (Some(Play::Status(status)), _) => openai::error(&call, status, None),
        (Some(Play::Script(script)), Api::Messages) => anthropic::reply(&call, &script),
        (Some(Play::Script(script)), Api::ChatCompletions) => openai::reply(&call, &script),
        (Some(Play::Script(script)), Api::Responses) => responses::reply(&call, &script),
    }
}

/// The HTTP response for `reply`, its body played frame by frame; how it ends
/// is written into request `index`'s record.
fn respond(reply: Reply, record: Record, index: usize) -> Response {
    let whole = reply.frames.len() == 1 && !reply.abort;
    let length = reply.frames.iter().map(Bytes::len).sum::<usize>();
    let playback = Playback {
        frames: reply.frames.into(),
        delay: reply.delay,
        first: true,
        abort: reply.abort,
        guard: Some(Guard { record, index }),
    };
    let body = futures::stream::unfold(playback, Playback::next);
    let mut response = Response::new(Body::from_stream(body));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let response_headers = response.headers_mut();
    for (name, value) in reply.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response_headers.append(name, value);
        }
    }
    if whole {
        response_headers.insert("content-length", HeaderValue::from(length));
    }
    response
}

/// Writes how an answer ended into its record; dropped unfinished (the
/// connection went away and the server dropped the body) it writes
/// [`Outcome::ClientGone`].
struct Guard {
    record: Record,
    index: usize,
}

impl Guard {
    /// Writes `outcome`; the drop that follows finds it written and leaves it.
    fn finish(self, outcome: Outcome) {
        self.set(outcome);
    }

    fn set(&self, outcome: Outcome) {
        if let Some(received) = lock(&self.record).get_mut(self.index) {
            if received.outcome == Outcome::Pending {
                received.outcome = outcome;
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.set(Outcome::ClientGone);
    }
}

/// How long a body waits before it is cut (`script-abrupt`), so that the
/// frames before the cut reach the client.
const CUT_PAUSE: Duration = Duration::from_millis(20);

/// A body being played: the frames left, the pause before each after the first.
struct Playback {
    frames: VecDeque<Bytes>,
    delay: Duration,
    first: bool,
    abort: bool,
    guard: Option<Guard>,
}

impl Playback {
    async fn next(mut self) -> Option<(Result<Bytes, io::Error>, Playback)> {
        if !self.frames.is_empty() && !self.first && !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.first = false;
        if let Some(frame) = self.frames.pop_front() {
            // The last frame handed over completes the answer: with a
            // content-length the server stops polling once it has the bytes.
            if self.frames.is_empty() && !self.abort {
                if let Some(guard) = self.guard.take() {
                    guard.finish(Outcome::Completed);
                }
            }
            return Some((Ok(frame), self));
        }
        let guard = self.guard.take()?;
        if self.abort {
            // The server writes out what it holds only when the body waits;
            // cut at once, the frames before the cut (the headers too) would
            // be dropped with the connection.
            tokio::time::sleep(CUT_PAUSE).await;
        }
        guard.finish(if self.abort {
            Outcome::Cut
        } else {
            Outcome::Completed
        });
        self.abort.then(|| {
            let cut = io::Error::new(io::ErrorKind::ConnectionAborted, "scripted cut");
            (Err(cut), self)
        })
    }
}
