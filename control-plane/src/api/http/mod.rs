//! The HTTP/JSON API (`/api/v1`), its live change feed (server-sent events)
//! and its OpenAPI document, generated from these handlers.
//!
//! Every route but `/healthz` needs a bearer token. Request bodies are
//! size-limited, reject unknown fields, and every failure answers
//! `{"error":{"code","message"}}` with a 4xx/5xx status.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRef, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};

pub use openapi::ApiDoc;

mod body;
pub mod cluster;
pub mod exec;
pub mod fleet;
pub mod input;
mod integer;
pub mod llm;
pub mod openapi;
pub mod projects;
pub mod pulls;
mod schemas;
pub mod session;
pub mod stream;
pub mod tasks;

use crate::control::{Access, Consistency, ControlPlane};
use crate::error::{ApiError, ErrorKind};
use crate::fleet::Fleet;
use crate::tunnel::Tunnels;
use crate::types::CommandError;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
pub(crate) const MAX_ID_CHARS: usize = 128;

/// What the HTTP handlers share: the control plane every door uses, and
/// the state only the HTTP door holds (streams, sign-in codes). Handlers
/// extract the part they need (`State<Arc<ControlPlane>>`, ...).
#[derive(Clone)]
pub struct HttpState {
    pub control: Arc<ControlPlane>,
    pub fleet: Arc<Fleet>,
    pub tunnels: Arc<Tunnels>,
    /// Pull requests on this server's git copies.
    pub pulls: Arc<crate::hosting::pulls::Pulls>,
    /// Imports and mirrors.
    pub upstreams: Arc<crate::hosting::upstream::Upstreams>,
    /// Live streams (hubs) and cached thumbnails, by desktop.
    pub streams: Arc<stream::Streams>,
    /// One-time sign-in codes for the board.
    pub logins: Arc<session::LoginCodes>,
}

impl HttpState {
    pub fn new(
        control: Arc<ControlPlane>,
        fleet: Arc<Fleet>,
        tunnels: Arc<Tunnels>,
        pulls: Arc<crate::hosting::pulls::Pulls>,
        upstreams: Arc<crate::hosting::upstream::Upstreams>,
    ) -> HttpState {
        HttpState {
            control,
            fleet,
            tunnels,
            pulls,
            upstreams,
            streams: Arc::default(),
            logins: Arc::default(),
        }
    }
}

impl FromRef<HttpState> for Arc<ControlPlane> {
    fn from_ref(state: &HttpState) -> Arc<ControlPlane> {
        state.control.clone()
    }
}

impl FromRef<HttpState> for Arc<Fleet> {
    fn from_ref(state: &HttpState) -> Arc<Fleet> {
        state.fleet.clone()
    }
}

impl FromRef<HttpState> for Arc<crate::hosting::pulls::Pulls> {
    fn from_ref(state: &HttpState) -> Arc<crate::hosting::pulls::Pulls> {
        state.pulls.clone()
    }
}

impl FromRef<HttpState> for Arc<crate::hosting::upstream::Upstreams> {
    fn from_ref(state: &HttpState) -> Arc<crate::hosting::upstream::Upstreams> {
        state.upstreams.clone()
    }
}

impl FromRef<HttpState> for Arc<Tunnels> {
    fn from_ref(state: &HttpState) -> Arc<Tunnels> {
        state.tunnels.clone()
    }
}

impl FromRef<HttpState> for Arc<stream::Streams> {
    fn from_ref(state: &HttpState) -> Arc<stream::Streams> {
        state.streams.clone()
    }
}

impl FromRef<HttpState> for Arc<session::LoginCodes> {
    fn from_ref(state: &HttpState) -> Arc<session::LoginCodes> {
        state.logins.clone()
    }
}

/// The HTTP routes, with authentication and body limits applied.
pub fn router(state: HttpState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/tasks",
            post(tasks::create_task).get(tasks::list_tasks),
        )
        .route(
            "/api/v1/tasks/{id}",
            get(tasks::get_task)
                .patch(tasks::update_task)
                .delete(tasks::delete_task),
        )
        .route("/api/v1/tasks/batch", post(tasks::create_tasks))
        .route("/api/v1/tasks/{id}/move", post(tasks::move_task))
        .route("/api/v1/cluster", get(cluster::cluster_status))
        .route(
            "/api/v1/cluster/members/{id}",
            delete(cluster::remove_member),
        )
        .route("/api/v1/watch", get(cluster::watch))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(fleet::routes())
        .merge(projects::routes())
        .merge(llm::routes())
        .merge(pulls::routes())
        .merge(exec::routes())
        .merge(stream::routes())
        .merge(session::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.control.clone(),
            require_operator,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(session::static_routes())
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn require_operator(
    State(control): State<Arc<ControlPlane>>,
    request: Request,
    next: Next,
) -> Response {
    // A bearer token, or the board's session cookie.
    let token = session::session_token(request.headers());
    match control.authorize(token, Access::Operator) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Answers paths no route matches, on the merged HTTP + gRPC router.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such API route; see /api/v1/openapi.json")
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Turns axum's body rejections into our error shape.
pub(crate) fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                "payload_too_large",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        JsonRejection::JsonSyntaxError(error) => ApiError::bad_request(
            "invalid_json",
            format!("malformed JSON: {}", error.body_text()),
        ),
        JsonRejection::JsonDataError(error) => {
            ApiError::bad_request("invalid_body", error.body_text())
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

pub(crate) fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

pub(crate) fn validate_id(id: &str) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!("{id:?} is not a valid id (1-{MAX_ID_CHARS} of A-Z a-z 0-9 - _)"),
        ))
    }
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= MAX_ID_CHARS)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1-{MAX_ID_CHARS} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

pub(crate) fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

pub(crate) fn command_error(error: CommandError) -> ApiError {
    ApiError::from(error)
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    #[serde(default)]
    pub(crate) stale: bool,
}
