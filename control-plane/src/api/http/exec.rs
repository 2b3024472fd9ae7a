//! Operator access into running desktops, as `nomad alloc exec` and
//! `kubectl exec` give: run a command in a desktop's sandbox with its
//! output streamed back, or read the tail of its log. Authorised like
//! every operator call (the router's operator-token layer).
//!
//! - `POST /api/v1/desktops/{id}/exec` with `{"command": ["sh", "-c", ...]}`
//!   answers `application/x-ndjson`, one object per line:
//!   `{"stdout": "<base64>"}`, `{"stderr": "<base64>"}`, then exactly one of
//!   `{"exit_code": N}` or `{"error": "..."}`. No stdin, no terminal.
//! - `GET /api/v1/desktops/{id}/logs?tail=BYTES` answers the last `tail`
//!   bytes (default 64 KiB, at most 16 MiB) of the desktop's output as
//!   `application/octet-stream`.
//!
//! - `GET /api/v1/desktops/{id}/screenshot` answers the desktop's current
//!   frame as `image/png`, read from gpud on its node.
//! - `POST /api/v1/desktops/{id}/input` with one control request (a JSON
//!   object: `{"op":"text","text":"ls\n"}`, `{"op":"key","name":"Return"}`,
//!   ... — the compositor's control socket protocol) answers the
//!   compositor's `{"ok":true,...}`, or 400 `input_refused` with its error.
//!
//! Sessions ride the node agent's tunnel to the leader ([`crate::tunnel`]);
//! a follower forwards the request to the leader and streams its answer.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::JsonBody;
use super::input::InputBody;
use super::HttpState;
use crate::api::http::{query_error, validate_id};
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorKind};
use crate::tunnel::Tunnels;
use crate::tunnel::{Request, Session, SessionEvent};
use crate::types::{DesktopIntent, DesktopState};

/// Most arguments in one command, bytes in one argument, bytes in all.
pub const MAX_ARGS: usize = 256;
pub const MAX_ARG_CHARS: usize = 4096;
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
pub const DEFAULT_TAIL_BYTES: u64 = 64 * 1024;
pub const MAX_TAIL_BYTES: u64 = 16 << 20;
/// Marks a request a follower forwarded, so it is never forwarded twice.
pub(crate) const FORWARDED: &str = "x-flotilla-forwarded";

pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/desktops/{id}/exec", post(exec))
        .route("/api/v1/desktops/{id}/logs", get(logs))
        .route("/api/v1/desktops/{id}/screenshot", get(screenshot))
        .route("/api/v1/desktops/{id}/input", post(input))
}

/// Most bytes of a screenshot or an input answer collected from a node.
const MAX_COLLECTED: usize = 64 << 20;
/// Most bytes of one input request.
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// Runs `request` on `node_id` and collects its stdout; the node's error
/// (before or during) is `code`.
pub(crate) async fn collect(
    tunnels: &Arc<Tunnels>,
    node_id: &str,
    request: Request,
    code: &'static str,
) -> Result<Vec<u8>, ApiError> {
    let mut session = tunnels.open(node_id, request)?;
    let mut out = Vec::new();
    while let Some(event) = session.next().await {
        match event {
            SessionEvent::Stdout(bytes) => {
                if out.len() + bytes.len() > MAX_COLLECTED {
                    return Err(ApiError::new(
                        ErrorKind::FailedPrecondition,
                        code,
                        "the node's answer is too large",
                    ));
                }
                out.extend_from_slice(&bytes);
            }
            SessionEvent::Stderr(_) => {}
            SessionEvent::Exit(_) => return Ok(out),
            SessionEvent::Error(message) => {
                return Err(ApiError::new(ErrorKind::FailedPrecondition, code, message))
            }
        }
    }
    Err(ApiError::unavailable("the node's tunnel closed; retry"))
}

/// The desktop's current frame as a PNG.
#[utoipa::path(
    get,
    path = "/api/v1/desktops/{id}/screenshot",
    responses(
        (status = 200, description = "the frame", content_type = "image/png"),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn screenshot(
    State(control): State<Arc<ControlPlane>>,
    State(tunnels): State<Arc<Tunnels>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (node_id, generation) = running_desktop(&control, &id).await?;
    if !control.is_leader() {
        let path = format!("/api/v1/desktops/{id}/screenshot");
        return forward_get(&control, &path, &headers).await;
    }
    let png = collect(
        &tunnels,
        &node_id,
        Request::Screenshot {
            desktop_id: id,
            generation,
        },
        "screenshot_unavailable",
    )
    .await?;
    let mut response = Response::new(Body::from(png));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("image/png"));
    Ok(response)
}

/// Sends one input request to the desktop's compositor.
#[utoipa::path(
    post,
    path = "/api/v1/desktops/{id}/input",
    request_body(content = InputBody, description = "one control request, e.g. {\"op\":\"text\",\"text\":\"ls\\n\"}"),
    responses(
        (status = 200, description = "the compositor's answer"),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn input(
    State(control): State<Arc<ControlPlane>>,
    State(tunnels): State<Arc<Tunnels>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody { value, bytes: body }: JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    if body.len() > MAX_INPUT_BYTES {
        return Err(ApiError::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            format!("an input request is at most {MAX_INPUT_BYTES} bytes"),
        ));
    }
    let request = InputBody::from_value(value)
        .map_err(|error| ApiError::bad_request("invalid_body", error.to_string()))?;
    let (node_id, generation) = running_desktop(&control, &id).await?;
    if !control.is_leader() {
        let path = format!("/api/v1/desktops/{id}/input");
        return forward(&control, Method::POST, &path, &headers, body).await;
    }
    let answer = collect(
        &tunnels,
        &node_id,
        Request::Input {
            desktop_id: id,
            generation,
            // One line: serde_json writes no newlines.
            request: serde_json::to_string(&request)
                .map_err(|error| ApiError::internal(error.to_string()))?,
        },
        "input_unavailable",
    )
    .await?;
    // The compositor runs inside the (untrusted) desktop: its answer must
    // be one JSON object, and only its error text is passed on.
    let answer: serde_json::Value = serde_json::from_slice(&answer).map_err(|_| {
        ApiError::new(
            ErrorKind::FailedPrecondition,
            "input_unavailable",
            "the desktop's compositor answered something that is not JSON",
        )
    })?;
    if answer.get("ok") == Some(&serde_json::Value::Bool(true)) {
        return Ok(axum::Json(answer).into_response());
    }
    let message: String = answer
        .get("error")
        .and_then(|error| error.as_str())
        .unwrap_or("refused")
        .chars()
        .take(500)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    Err(ApiError::bad_request("input_refused", message))
}

/// What to run.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The program and its arguments, run as the desktop's user: 1-256
    /// strings of at most 4096 characters without NUL, the first not empty.
    #[schema(schema_with = command_schema)]
    pub command: Vec<String>,
}

/// One line of an exec answer.
#[derive(Serialize, Deserialize, ToSchema, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ExecLine {
    Stdout(String),
    Stderr(String),
    ExitCode(i32),
    Error(String),
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogsQuery {
    /// Bytes from the end of the log.
    #[serde(default, deserialize_with = "super::integer::query")]
    #[param(minimum = 1, maximum = 16_777_216)]
    pub tail: Option<u64>,
}

fn command_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    let argument = |min_length| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(min_length))
            .max_length(Some(MAX_ARG_CHARS))
            .pattern(Some("^[^\\u0000]*$"))
            .build()
    };
    let mut array = ArrayBuilder::new()
        .items(argument(0))
        .min_items(Some(1))
        .max_items(Some(MAX_ARGS))
        .build();
    array.prefix_items = vec![argument(1).into()];
    array
}

fn validate_command(command: &[String]) -> Result<(), ApiError> {
    let bad = |message: String| ApiError::bad_request("invalid_command", message);
    if command.is_empty() {
        return Err(bad("the command is empty".to_owned()));
    }
    if command.len() > MAX_ARGS {
        return Err(bad(format!("at most {MAX_ARGS} arguments")));
    }
    if command[0].is_empty() {
        return Err(bad("the program name is empty".to_owned()));
    }
    let mut total = 0;
    for argument in command {
        if argument.chars().count() > MAX_ARG_CHARS {
            return Err(bad(format!(
                "an argument is over {MAX_ARG_CHARS} characters"
            )));
        }
        if argument.contains('\0') {
            return Err(bad("an argument contains a NUL byte".to_owned()));
        }
        total += argument.len();
    }
    if total > MAX_COMMAND_BYTES {
        return Err(bad(format!(
            "the command is over {MAX_COMMAND_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The node and generation of running desktop `id`.
pub(crate) async fn running_desktop(
    control: &ControlPlane,
    id: &str,
) -> Result<(String, u64), ApiError> {
    validate_id(id)?;
    control
        .read_barrier(crate::api::http::consistency(false))
        .await?;
    control.state.with_state(|state| {
        let desktop = state
            .desktop(id)
            .ok_or_else(|| ApiError::not_found(format!("no desktop {id:?}")))?;
        match (&desktop.node_id, desktop.state, desktop.intent) {
            (Some(node_id), DesktopState::Running, DesktopIntent::Run) => {
                Ok((node_id.clone(), desktop.generation))
            }
            (_, DesktopState::Running, _) => Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                "not_running",
                format!("desktop {id} is being stopped"),
            )),
            _ => Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                "not_running",
                format!(
                    "desktop {id} is {}, not running",
                    serde_json::to_value(desktop.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                ),
            )),
        }
    })
}

/// The leader's address, to forward a request to; an error on the leader
/// itself or while there is none.
pub(crate) fn leader_to_forward_to(control: &ControlPlane) -> Result<String, ApiError> {
    control
        .leader_addr()
        .filter(|addr| *addr != control.advertise_addr)
        .ok_or_else(|| ApiError::unavailable("no leader; retry"))
}

/// [`forward`] of a GET.
pub(crate) async fn forward_get(
    control: &ControlPlane,
    path_and_query: &str,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    forward(control, Method::GET, path_and_query, headers, Bytes::new()).await
}

/// Sends the request on to the leader and streams its answer back.
pub(crate) async fn forward(
    control: &ControlPlane,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    if headers.contains_key(FORWARDED) {
        return Err(ApiError::unavailable(
            "forwarded to a server that is not the leader; retry",
        ));
    }
    let leader = leader_to_forward_to(control)?;
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, format!("http://{leader}{path_and_query}"))
        .header(FORWARDED, "1")
        .body(body);
    // The caller's credential, from its header or its session cookie
    // (the cookie is the operator token: every server accepts it).
    if let Some(token) = crate::api::http::session::session_token(headers) {
        request = request.bearer_auth(token);
    }
    for name in [header::CONTENT_TYPE, header::IF_NONE_MATCH] {
        if let Some(value) = headers.get(&name) {
            request = request.header(name, value.clone());
        }
    }
    let answer = request
        .send()
        .await
        .map_err(|error| ApiError::unavailable(format!("reach the leader: {error}")))?;
    let mut response = Response::builder().status(answer.status().as_u16());
    for name in [header::CONTENT_TYPE, header::ETAG, header::CACHE_CONTROL] {
        if let Some(value) = answer.headers().get(&name) {
            response = response.header(name, value.as_bytes());
        }
    }
    response
        .body(Body::from_stream(answer.bytes_stream()))
        .map_err(|error| ApiError::internal(error.to_string()))
}

/// Run a command in a running desktop.
#[utoipa::path(
    post,
    path = "/api/v1/desktops/{id}/exec",
    request_body = ExecBody,
    responses(
        (status = 200, description = "NDJSON lines of ExecLine", body = ExecLine, content_type = "application/x-ndjson"),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "the desktop is not running", body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn exec(
    State(control): State<Arc<ControlPlane>>,
    State(tunnels): State<Arc<Tunnels>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody {
        value: parsed,
        bytes: body,
    }: JsonBody<ExecBody>,
) -> Result<Response, ApiError> {
    validate_command(&parsed.command)?;
    let (node_id, generation) = running_desktop(&control, &id).await?;
    if !control.is_leader() {
        let path = format!("/api/v1/desktops/{id}/exec");
        return forward(&control, Method::POST, &path, &headers, body).await;
    }
    let session = tunnels.open(
        &node_id,
        Request::Exec {
            desktop_id: id,
            generation,
            command: parsed.command,
        },
    )?;
    let lines = futures::stream::unfold(session, |mut session| async move {
        let event = session.next().await?;
        let engine = base64::engine::general_purpose::STANDARD;
        let line = match event {
            SessionEvent::Stdout(bytes) => ExecLine::Stdout(engine.encode(bytes)),
            SessionEvent::Stderr(bytes) => ExecLine::Stderr(engine.encode(bytes)),
            SessionEvent::Exit(code) => ExecLine::ExitCode(code),
            SessionEvent::Error(message) => ExecLine::Error(message),
        };
        let mut text = serde_json::to_vec(&line).unwrap_or_default();
        text.push(b'\n');
        Some((
            Ok::<_, std::convert::Infallible>(Bytes::from(text)),
            session,
        ))
    });
    let mut response = Body::from_stream(lines).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// The tail of a running desktop's output (stdout and stderr).
#[utoipa::path(
    get,
    path = "/api/v1/desktops/{id}/logs",
    params(LogsQuery),
    responses(
        (status = 200, description = "the log's last bytes", content_type = "application/octet-stream"),
        (status = 400, body = crate::error::ErrorBody),
        (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "the desktop is not running", body = crate::error::ErrorBody),
        (status = 503, body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn logs(
    State(control): State<Arc<ControlPlane>>,
    State(tunnels): State<Arc<Tunnels>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let tail_bytes = query.tail.unwrap_or(DEFAULT_TAIL_BYTES);
    if tail_bytes == 0 || tail_bytes > MAX_TAIL_BYTES {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("tail must be 1..={MAX_TAIL_BYTES} bytes"),
        ));
    }
    let (node_id, generation) = running_desktop(&control, &id).await?;
    if !control.is_leader() {
        let path = format!("/api/v1/desktops/{id}/logs?tail={tail_bytes}");
        return forward(&control, Method::GET, &path, &headers, Bytes::new()).await;
    }
    let mut session = tunnels.open(
        &node_id,
        Request::Logs {
            desktop_id: id,
            generation,
            tail_bytes,
        },
    )?;
    // The first event decides the status: an error before any output is
    // the node's refusal.
    let first = session.next().await;
    if let Some(SessionEvent::Error(message)) = first {
        return Err(ApiError::new(
            ErrorKind::FailedPrecondition,
            "logs_unavailable",
            message,
        ));
    }
    let first = first.and_then(|event| match event {
        SessionEvent::Stdout(bytes) => Some(Bytes::from(bytes)),
        _ => None,
    });
    let rest = futures::stream::unfold(session, |mut session: Session| async move {
        loop {
            match session.next().await? {
                SessionEvent::Stdout(bytes) => {
                    return Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), session))
                }
                SessionEvent::Stderr(_) | SessionEvent::Exit(_) => continue,
                SessionEvent::Error(message) => {
                    return Some((Err(std::io::Error::other(message)), session))
                }
            }
        }
    });
    let stream = futures::StreamExt::chain(
        futures::stream::iter(first.map(Ok::<_, std::io::Error>)),
        rest,
    );
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_checked() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate_command(&args(&["sh", "-c", "true"])).is_ok());
        assert!(validate_command(&[]).is_err());
        assert!(validate_command(&args(&[""])).is_err());
        assert!(validate_command(&args(&["a\0b"])).is_err());
        assert!(validate_command(&vec!["x".to_owned(); MAX_ARGS + 1]).is_err());
        assert!(validate_command(&["x".repeat(MAX_ARG_CHARS + 1)]).is_err());
        assert!(validate_command(&vec!["x".repeat(MAX_ARG_CHARS); 17]).is_err());
        let line = serde_json::to_string(&ExecLine::ExitCode(3)).unwrap();
        assert_eq!(line, r#"{"exit_code":3}"#);
    }
}
