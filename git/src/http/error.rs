//! Every way a git HTTP request fails, and the response git shows for it: a 4xx/5xx
//! with a `text/plain` body, which git prints as `remote: <message>` (and, for a
//! 401, `WWW-Authenticate` so git asks its credential helper).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use thiserror::Error;

use super::auth::GitAuthError;
use crate::command::GitCommandError;
use crate::types::{NameError, RepoId};

#[derive(Debug, Error)]
pub enum GitHttpError {
    #[error("repository not found: {0}")]
    BadName(#[source] NameError),
    #[error("repository {repo} does not exist")]
    NotFound { repo: RepoId },
    #[error(transparent)]
    Auth(#[from] GitAuthError),
    #[error("dumb HTTP is not supported: use git >= 1.6.6, which speaks smart HTTP")]
    DumbProtocol,
    #[error("unknown git service {service:?}: use git-upload-pack or git-receive-pack")]
    UnknownService { service: String },
    #[error("expected Content-Type {expected}")]
    WrongContentType { expected: &'static str },
    #[error("unsupported Content-Encoding {encoding:?}: send gzip or nothing")]
    UnsupportedEncoding { encoding: String },
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read: {reason}")]
    BadBody { reason: String },
    #[error("git {service} refused the request: {stderr}")]
    GitRefused {
        service: &'static str,
        stderr: String,
    },
    #[error("the server could not run git {service}")]
    Spawn {
        service: &'static str,
        #[source]
        source: GitCommandError,
    },
}

impl GitHttpError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadName(_)
            | Self::NotFound { .. }
            | Self::Auth(GitAuthError::NotFound { .. }) => StatusCode::NOT_FOUND,
            Self::Auth(GitAuthError::MissingCredentials | GitAuthError::InvalidCredentials) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Auth(GitAuthError::Forbidden { .. }) | Self::DumbProtocol => {
                StatusCode::FORBIDDEN
            }
            Self::Auth(GitAuthError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnknownService { .. } | Self::BadBody { .. } | Self::GitRefused { .. } => {
                StatusCode::BAD_REQUEST
            }
            Self::WrongContentType { .. } | Self::UnsupportedEncoding { .. } => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Spawn { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for GitHttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "git request failed");
        } else {
            tracing::warn!(error = %self, "git request refused");
        }
        let mut response = (status, format!("{self}\n")).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"flotilla\""),
            );
        }
        response
    }
}
