//! The one error type the APIs answer with, mapped to HTTP statuses and gRPC
//! codes in one place so both doors say the same thing.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::types::CommandError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    /// The requested revision is no longer retained.
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    FailedPrecondition,
    /// No leader, no quorum, or the server is stopping: retry later.
    Unavailable,
    /// A server we called for the client (an upstream git host) failed.
    BadGateway,
    Internal,
}

/// An API failure: what kind, a stable machine code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

impl From<CommandError> for ApiError {
    /// A command the state refused, as the API answers it.
    fn from(error: CommandError) -> ApiError {
        let message = error.to_string();
        match error {
            CommandError::TaskNotFound { .. }
            | CommandError::NodeNotFound { .. }
            | CommandError::DesktopNotFound { .. }
            | CommandError::ProjectNotFound { .. }
            | CommandError::RepoNotFound { .. }
            | CommandError::PullNotFound { .. }
            | CommandError::BranchNotFound { .. }
            | CommandError::NotMirrored { .. }
            | CommandError::ProviderNotFound { .. } => ApiError::not_found(message),
            CommandError::SameBranch { .. } => ApiError::bad_request("invalid_branch", message),
            CommandError::TaskExists { .. }
            | CommandError::ProjectExists { .. }
            | CommandError::RepoExists { .. }
            | CommandError::StaleRef { .. }
            | CommandError::RefsNest { .. }
            | CommandError::PullNotOpen { .. }
            | CommandError::PullExists { .. }
            | CommandError::NodeNameTaken { .. }
            | CommandError::NodeDraining { .. }
            | CommandError::NodeNotDown { .. }
            | CommandError::NodeDown { .. }
            | CommandError::ProviderExists { .. }
            | CommandError::ModelTaken { .. } => {
                ApiError::new(ErrorKind::Conflict, "conflict", message)
            }
            CommandError::UnsupportedFormat { .. } => ApiError::internal(message),
        }
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            code: code.to_owned(),
            message: message.into(),
        }
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::BadRequest, code, message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Conflict, "conflict", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::NotFound, "not_found", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unavailable, "unavailable", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Unauthorized, "unauthorized", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorKind::Internal, "internal", message)
    }

    pub fn status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether retrying the same request (with the same idempotency key) may
    /// succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Unavailable
    }
}

/// The JSON body of every error: `{"error":{"code":"...","message":"..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.clone(),
                message: self.message.clone(),
            },
        };
        (self.status(), axum::Json(body)).into_response()
    }
}

impl From<ApiError> for tonic::Status {
    fn from(error: ApiError) -> tonic::Status {
        let code = match error.kind {
            ErrorKind::BadRequest
            | ErrorKind::PayloadTooLarge
            | ErrorKind::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorKind::Unauthorized => tonic::Code::Unauthenticated,
            ErrorKind::Forbidden => tonic::Code::PermissionDenied,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::Conflict => tonic::Code::AlreadyExists,
            ErrorKind::Gone => tonic::Code::OutOfRange,
            ErrorKind::FailedPrecondition => tonic::Code::FailedPrecondition,
            ErrorKind::Unavailable | ErrorKind::BadGateway => tonic::Code::Unavailable,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        tonic::Status::new(code, error.message)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> ApiError {
        let kind = match status.code() {
            tonic::Code::InvalidArgument => ErrorKind::BadRequest,
            tonic::Code::Unauthenticated => ErrorKind::Unauthorized,
            tonic::Code::PermissionDenied => ErrorKind::Forbidden,
            tonic::Code::NotFound => ErrorKind::NotFound,
            tonic::Code::AlreadyExists => ErrorKind::Conflict,
            tonic::Code::OutOfRange => ErrorKind::Gone,
            tonic::Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            tonic::Code::Internal => ErrorKind::Internal,
            _ => ErrorKind::Unavailable,
        };
        let code = match kind {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::FailedPrecondition => "failed_precondition",
            _ => "remote_error",
        };
        ApiError::new(kind, code, status.message().to_owned())
    }
}
