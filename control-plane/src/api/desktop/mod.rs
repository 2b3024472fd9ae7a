//! The desktop door: its own listener, the only part of a server a desktop's
//! egress reaches. It takes desktop tokens only (never the operator token or
//! the cluster secret), authenticates before reading a body, and serves what
//! a desktop needs: hosted git, the LLM gateway (`/v1/...`), and the
//! runner's uplink as it lands. Raft and the operator API are not on it.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::timeout::TimeoutLayer;

use crate::gateway::Gateway;
use crate::hosting::Hosting;

/// The longest a desktop's request may take (a large clone or push fits).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The desktop door's routes.
pub fn router(hosting: &Hosting, gateway: &Arc<Gateway>) -> Router {
    hosting
        .desktop_router()
        .merge(gateway.router())
        .fallback(not_found)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": {
                "code": "not_found",
                "message": "the desktop door serves /git/<project>/<repo> and the LLM gateway (/v1/messages, /v1/chat/completions, /v1/responses, /v1/models) only",
            }
        })),
    )
        .into_response()
}
