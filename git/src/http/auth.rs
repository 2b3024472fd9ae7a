//! Who may read or write a repository, decided by the caller before any request body
//! is read. The control plane implements [`GitAuth`] over its tokens; git sends the
//! token as the HTTP Basic password (any username), which [`basic_password`] extracts.

use async_trait::async_trait;
use axum::http::HeaderMap;
use base64::Engine;
use thiserror::Error;

use crate::policy::Principal;
use crate::types::RepoId;

/// What a request wants to do with a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Clone and fetch (`git-upload-pack`).
    Read,
    /// Push (`git-receive-pack`).
    Write,
}

/// Why a request is not allowed. The messages reach the person running git.
#[derive(Debug, Error)]
pub enum GitAuthError {
    /// No credentials: answered 401 with `WWW-Authenticate`, so git asks its
    /// credential helper and retries.
    #[error("authentication required: use a flotilla token as the password")]
    MissingCredentials,
    /// Credentials that are wrong or expired: 401, and git reports the failure.
    #[error("the token is not valid or has expired")]
    InvalidCredentials,
    /// A valid token without this access: 403.
    #[error("{reason}")]
    Forbidden { reason: String },
    /// No such repository (for this caller): 404.
    #[error("{reason}")]
    NotFound { reason: String },
    /// The authorizer itself failed: 503.
    #[error("cannot check credentials right now")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Decides whether a request may have `access` to `repo`, from its headers alone.
#[async_trait]
pub trait GitAuth: Send + Sync + 'static {
    async fn authorize(
        &self,
        headers: &HeaderMap,
        repo: &RepoId,
        access: Access,
    ) -> Result<Principal, GitAuthError>;
}

/// The password of an `Authorization: Basic` header, if there is one.
pub fn basic_password(headers: &HeaderMap) -> Option<String> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (_, password) = decoded.split_once(':')?;
    Some(password.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_password_whatever_the_username() {
        let mut headers = HeaderMap::new();
        assert_eq!(basic_password(&headers), None);
        let encoded = base64::engine::general_purpose::STANDARD.encode("x:tok:en");
        headers.insert(
            axum::http::header::AUTHORIZATION,
            format!("Basic {encoded}").parse().expect("header"),
        );
        assert_eq!(basic_password(&headers).as_deref(), Some("tok:en"));
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer abc".parse().expect("header"),
        );
        assert_eq!(basic_password(&headers), None);
    }
}
