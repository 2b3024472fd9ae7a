//! The gateway's own refusals, in the wire format of the endpoint that was
//! called, so an agent's SDK raises its usual typed error with our message.
//! Errors from the provider are not made here: they pass through unchanged.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::types::Wire;

/// What went wrong, as both wire formats name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Authentication,
    InvalidRequest,
    NotFound,
    TooLarge,
    /// Too many open calls for this desktop: retrying later helps.
    RateLimit,
    /// Over budget: retrying does not help (402, which SDKs do not retry).
    Budget,
    /// The provider could not be reached.
    BadGateway,
    Internal,
}

impl Kind {
    fn status(self) -> StatusCode {
        match self {
            Kind::Authentication => StatusCode::UNAUTHORIZED,
            Kind::InvalidRequest => StatusCode::BAD_REQUEST,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::RateLimit => StatusCode::TOO_MANY_REQUESTS,
            Kind::Budget => StatusCode::PAYMENT_REQUIRED,
            Kind::BadGateway => StatusCode::BAD_GATEWAY,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Anthropic's `error.type`.
    fn anthropic(self) -> &'static str {
        match self {
            Kind::Authentication => "authentication_error",
            Kind::InvalidRequest => "invalid_request_error",
            Kind::NotFound => "not_found_error",
            Kind::TooLarge => "request_too_large",
            Kind::RateLimit => "rate_limit_error",
            Kind::Budget => "billing_error",
            Kind::BadGateway | Kind::Internal => "api_error",
        }
    }

    /// OpenAI's `error.type` and `error.code`.
    fn openai(self) -> (&'static str, &'static str) {
        match self {
            Kind::Authentication => ("invalid_request_error", "invalid_api_key"),
            Kind::InvalidRequest => ("invalid_request_error", "invalid_request"),
            Kind::NotFound => ("invalid_request_error", "model_not_found"),
            Kind::TooLarge => ("invalid_request_error", "request_too_large"),
            Kind::RateLimit => ("rate_limit_error", "rate_limit_exceeded"),
            Kind::Budget => ("insufficient_quota", "budget_exceeded"),
            Kind::BadGateway => ("server_error", "provider_unreachable"),
            Kind::Internal => ("server_error", "internal_error"),
        }
    }
}

/// A refusal by the gateway itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GatewayError {
    pub kind: Kind,
    pub message: String,
}

impl GatewayError {
    pub fn new(kind: Kind, message: impl Into<String>) -> GatewayError {
        GatewayError {
            kind,
            message: message.into(),
        }
    }

    /// As `wire`'s SDKs expect an error body.
    pub fn into_response(self, wire: Wire) -> Response {
        let body = match wire {
            Wire::Anthropic => json!({
                "type": "error",
                "error": {"type": self.kind.anthropic(), "message": self.message},
            }),
            Wire::OpenAi => {
                let (kind, code) = self.kind.openai();
                json!({
                    "error": {"message": self.message, "type": kind, "param": null, "code": code},
                })
            }
        };
        let mut response = (self.kind.status(), axum::Json(body)).into_response();
        if self.kind == Kind::RateLimit {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        response
    }
}
