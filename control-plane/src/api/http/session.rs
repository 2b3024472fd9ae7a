//! The board in a browser: its static files, and signing in.
//!
//! - `GET /`, `/ui/app.js`, `/ui/style.css`: the board ([`flotilla_ui`]),
//!   no authentication (it holds no data; every call it makes is checked).
//! - `POST /api/v1/session` with `{"token": "flo_op_..."}` or
//!   `{"code": "..."}` (a one-time sign-in code) sets the session cookie
//!   `flotilla_session` (HttpOnly, SameSite=Strict, Path=/) — the operator
//!   token itself, so any server of the cluster accepts it and nothing is
//!   kept per session. Every API call and WebSocket accepts the cookie or
//!   a bearer token ([`session_token`]).
//! - `DELETE /api/v1/session` clears the cookie.
//! - `POST /api/v1/session/codes` (an operator) mints a one-time sign-in
//!   code, valid for 10 minutes on this server, answering
//!   `{"code","expires_in_secs","link":"/#login=CODE"}`. `flotilla dev`
//!   prints such a link.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use axum_extra::extract::cookie::{Cookie, SameSite};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::JsonBody;
use super::HttpState;
use crate::control::{Access, ControlPlane};
use crate::error::ApiError;

pub const COOKIE: &str = "flotilla_session";
/// How long a sign-in code is valid.
pub const CODE_TTL: Duration = Duration::from_secs(600);
/// Codes kept at once (older ones are forgotten first).
const MAX_CODES: usize = 64;

/// One-time sign-in codes of this server: code → (token, minted at).
#[derive(Default)]
pub struct LoginCodes {
    codes: Mutex<HashMap<String, (String, Instant)>>,
}

impl LoginCodes {
    /// A new code that signs in as `token`.
    pub fn issue(&self, token: &str) -> String {
        let code = crate::auth::random_hex(16);
        let mut codes = self.codes.lock().unwrap_or_else(|p| p.into_inner());
        codes.retain(|_, (_, at)| at.elapsed() < CODE_TTL);
        if codes.len() >= MAX_CODES {
            if let Some(oldest) = codes
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(code, _)| code.clone())
            {
                codes.remove(&oldest);
            }
        }
        codes.insert(code.clone(), (token.to_owned(), Instant::now()));
        code
    }

    /// The token of `code`, once.
    fn redeem(&self, code: &str) -> Option<String> {
        let (token, at) = self
            .codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(code)?;
        (at.elapsed() < CODE_TTL).then_some(token)
    }
}

/// The static board, outside the API's authentication.
pub(crate) fn static_routes() -> Router<HttpState> {
    let mut router = Router::new();
    for (path, content_type, body) in flotilla_ui::ASSETS {
        router = router.route(
            path,
            get(move || async move {
                (
                    [
                        (header::CONTENT_TYPE, content_type),
                        (header::CACHE_CONTROL, "no-cache"),
                    ],
                    body,
                )
            }),
        );
    }
    router.route("/api/v1/session", post(sign_in).delete(sign_out))
}

/// Operator routes (behind the API's authentication).
pub(crate) fn routes() -> Router<HttpState> {
    Router::new().route("/api/v1/session/codes", post(mint_code))
}

/// The credential of a request: its bearer token, else its session cookie.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(crate::auth::parse_bearer)
    {
        return Some(token);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == COOKIE)
        .and_then(|cookie| cookie.value_raw())
        .filter(|value| !value.is_empty())
}

/// How to sign in: with a token, or with a one-time code.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub(crate) enum SignIn {
    Token(TokenSignIn),
    Code(CodeSignIn),
}

/// Sign in with a token (`flo_op_...`).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenSignIn {
    token: String,
}

/// Sign in with a one-time code from `POST /api/v1/session/codes`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CodeSignIn {
    code: String,
}

/// A minted sign-in code.
#[derive(Serialize, ToSchema)]
pub(crate) struct MintedCode {
    code: String,
    expires_in_secs: u64,
    /// The board's address that signs in with it (`/#login=CODE`).
    link: String,
}

/// The session cookie: script cannot read it, other sites cannot send it.
fn session_cookie(value: &str) -> Cookie<'_> {
    Cookie::build((COOKIE, value))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .build()
}

fn set_cookie(cookie: &Cookie<'_>) -> HeaderValue {
    HeaderValue::from_str(&cookie.encoded().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("flotilla_session=; Path=/"))
}

/// Sign in: sets the session cookie (no credential needed to call it).
#[utoipa::path(
    post,
    path = "/api/v1/session",
    request_body = SignIn,
    responses(
        (status = 204, description = "signed in: the cookie is set"),
        (status = 401, description = "not a valid token, or the code is unknown, used or expired", body = crate::error::ErrorBody),
    )
)]
pub(crate) async fn sign_in(
    State(control): State<Arc<ControlPlane>>,
    State(logins): State<Arc<LoginCodes>>,
    body: Result<JsonBody<SignIn>, ApiError>,
) -> Result<Response, ApiError> {
    let body = body
        .map_err(|error| match error.code.as_str() {
            "invalid_body" => ApiError::bad_request(
                "invalid_body",
                "send exactly one of \"token\" and \"code\", a string",
            ),
            _ => error,
        })?
        .value;
    let token = match body {
        SignIn::Token(TokenSignIn { token }) => token,
        SignIn::Code(CodeSignIn { code }) => logins.redeem(&code).ok_or_else(|| {
            ApiError::unauthorized("this sign-in code is unknown, used or expired")
        })?,
    };
    // A token is printable ASCII without separators (it goes in a cookie).
    if token.is_empty()
        || token.len() > 256
        || !token
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
    {
        return Err(ApiError::unauthorized("that is not a Flotilla token"));
    }
    control.authorize(Some(&token), Access::Operator)?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&session_cookie(&token)));
    Ok(response)
}

/// Sign out: clears the session cookie.
#[utoipa::path(delete, path = "/api/v1/session", responses((status = 204, description = "the cookie is cleared")))]
pub(crate) async fn sign_out() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, {
        let mut cookie = session_cookie("");
        cookie.make_removal();
        set_cookie(&cookie)
    });
    response
}

/// Mint a one-time sign-in code for the caller's own credential.
#[utoipa::path(post, path = "/api/v1/session/codes", responses((status = 200, body = MintedCode)))]
pub(crate) async fn mint_code(
    State(_control): State<Arc<ControlPlane>>,
    State(logins): State<Arc<LoginCodes>>,
    headers: HeaderMap,
) -> Result<Json<MintedCode>, ApiError> {
    let token = session_token(&headers)
        .ok_or_else(|| ApiError::unauthorized("sign in first"))?
        .to_owned();
    let code = logins.issue(&token);
    Ok(Json(MintedCode {
        link: format!("/#login={code}"),
        code,
        expires_in_secs: CODE_TTL.as_secs(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_or_the_bearer_token_is_the_credential() {
        let mut headers = HeaderMap::new();
        assert_eq!(session_token(&headers), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; flotilla_session=flo_op_x; c=d"),
        );
        assert_eq!(session_token(&headers), Some("flo_op_x"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer flo_op_y"),
        );
        assert_eq!(session_token(&headers), Some("flo_op_y"));
    }

    #[test]
    fn a_code_signs_in_once() {
        let codes = LoginCodes::default();
        let code = codes.issue("flo_op_z");
        assert_eq!(codes.redeem("nope"), None);
        assert_eq!(codes.redeem(&code), Some("flo_op_z".to_owned()));
        assert_eq!(codes.redeem(&code), None);
    }
}
