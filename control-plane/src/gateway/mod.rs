//! The LLM gateway: a desktop's only way to a model. An agent calls the
//! desktop door in its provider's own wire format with its desktop token;
//! the gateway authenticates it (before reading the body), picks the
//! provider serving the model, reserves the call against the task's and
//! project's budgets (`budget.rs`), forwards the body (`request.rs`: renamed
//! model and OpenAI's usage option only) with the provider's key, and streams
//! the answer back as it arrives, untouched, while `usage.rs` reads a copy.
//! When the answer ends (or the agent goes away, which drops the provider's
//! connection) the call is settled once and its usage batched to the log
//! (`recorder.rs`).
//!
//! **Invariant:** no provider key ever reaches a desktop: keys are sealed
//! in the state, opened only to set the upstream request's auth header,
//! and no answer header or body the gateway makes contains one.

mod budget;
mod errors;
mod forward;
mod recorder;
mod request;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

pub use budget::{Held, Ledger, Refusal};
pub use errors::{GatewayError, Kind};
pub use request::Endpoint;
pub use usage::UsageTap;

use crate::control::{ControlPlane, DesktopIdentity};
use crate::types::Wire;

/// The largest request body a call may send (Anthropic's own limit).
pub const MAX_BODY: usize = 32 << 20;

/// Open calls one desktop may have at once.
pub const DEFAULT_CALLS_PER_DESKTOP: u32 = 16;

/// How long a provider may take to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The gateway's shared state.
pub struct Gateway {
    control: Arc<ControlPlane>,
    client: reqwest::Client,
    ledger: Arc<Ledger>,
    recorder: recorder::Recorder,
}

impl Gateway {
    /// Starts the usage recorder; call within the server's runtime.
    pub fn start(control: Arc<ControlPlane>, calls_per_desktop: u32) -> Arc<Gateway> {
        let ledger = Ledger::new(calls_per_desktop);
        let client = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .expect("the HTTP client's settings are valid");
        Arc::new(Gateway {
            recorder: recorder::Recorder::start(control.clone(), ledger.clone()),
            control,
            client,
            ledger,
        })
    }

    /// The gateway's routes, for the desktop door.
    pub fn router(self: &Arc<Gateway>) -> Router {
        Router::new()
            .route("/v1/messages", post(messages))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/responses", post(responses))
            .route("/v1/models", get(models))
            .with_state(self.clone())
    }

    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The desktop a call's token stands for. Anthropic's SDKs send
    /// `x-api-key` (or `Authorization: Bearer` with an auth token), OpenAI's
    /// `Authorization: Bearer`.
    async fn authenticate(&self, headers: &HeaderMap) -> Result<DesktopIdentity, GatewayError> {
        let bearer = headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        let api_key = headers
            .get("x-api-key")
            .and_then(|value| value.to_str().ok());
        let Some(token) = api_key.or(bearer).map(str::trim) else {
            return Err(GatewayError::new(
                Kind::Authentication,
                "no credential: send this desktop's token as 'x-api-key' or 'Authorization: Bearer' (agents in a desktop find it in ANTHROPIC_AUTH_TOKEN and OPENAI_API_KEY)",
            ));
        };
        self.control
            .authorize_desktop(token)
            .await
            .map_err(|error| GatewayError::new(Kind::Authentication, error.message))
    }
}

async fn messages(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    forward::call(gateway, Endpoint::Messages, request).await
}

async fn chat_completions(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    forward::call(gateway, Endpoint::ChatCompletions, request).await
}

async fn responses(State(gateway): State<Arc<Gateway>>, request: Request) -> Response {
    forward::call(gateway, Endpoint::Responses, request).await
}

/// Every model a provider serves here, in Anthropic's list format when the
/// caller is an Anthropic SDK (it sends `anthropic-version`), else OpenAI's.
async fn models(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let wire = if headers.contains_key("anthropic-version") {
        Wire::Anthropic
    } else {
        Wire::OpenAi
    };
    if let Err(error) = gateway.authenticate(&headers).await {
        return error.into_response(wire);
    }
    let models: Vec<(String, String, u64)> = gateway.control.state.with_state(|state| {
        state
            .providers()
            .filter(|provider| provider.kind.wire() == wire)
            .flat_map(|provider| {
                provider.models.keys().map(|model| {
                    (
                        model.clone(),
                        provider.name.clone(),
                        provider.created_at_ms / 1000,
                    )
                })
            })
            .collect()
    });
    let body = match wire {
        Wire::Anthropic => {
            let data: Vec<_> = models
                .iter()
                .map(|(id, _, created)| {
                    json!({"type": "model", "id": id, "display_name": id, "created_at": rfc3339(*created)})
                })
                .collect();
            json!({
                "data": data,
                "has_more": false,
                "first_id": models.first().map(|m| &m.0),
                "last_id": models.last().map(|m| &m.0),
            })
        }
        Wire::OpenAi => {
            let data: Vec<_> = models
                .iter()
                .map(|(id, provider, created)| {
                    json!({"id": id, "object": "model", "created": created, "owned_by": provider})
                })
                .collect();
            json!({"object": "list", "data": data})
        }
    };
    axum::Json(body).into_response()
}

/// Seconds since the epoch as RFC 3339 (UTC).
fn rfc3339(seconds: u64) -> String {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(seconds);
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_796_256_000), "2026-12-03T00:00:00Z");
    }
}
