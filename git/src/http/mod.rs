//! Git smart HTTP as an axum [`Router`]: `info/refs`, `git-upload-pack` and
//! `git-receive-pack` under `/git/{project}/{repo}` (with or without `.git`), served
//! by the real git ([`rpc`]). Every request is authorized by the caller's [`GitAuth`]
//! before its body is touched; a push's principal is registered for the
//! `proc-receive` hook under a fresh push id that travels in receive-pack's
//! environment.

pub mod auth;
pub mod error;
pub mod rpc;

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;

pub use auth::{basic_password, Access, GitAuth, GitAuthError};
pub use error::GitHttpError;
use rpc::{RpcCommand, Service};

use crate::hook::{PushContext, PushRegistry, PUSH_ID_ENV, SOCKET_ENV};
use crate::policy::Principal;
use crate::store::RepoStore;
use crate::types::RepoId;

/// Limits and paths of the HTTP side.
#[derive(Debug, Clone)]
pub struct GitHttpConfig {
    /// The most bytes (after gunzip) a fetch request may send: wants and haves only.
    pub upload_pack_body_limit: u64,
    /// The most bytes (after gunzip) a push may send: the pack.
    pub receive_pack_body_limit: u64,
    /// The hook socket receive-pack's hooks connect to.
    pub hook_socket: PathBuf,
}

impl GitHttpConfig {
    /// 64 MiB for fetch requests, 2 GiB for pushes.
    pub fn new(hook_socket: impl Into<PathBuf>) -> Self {
        Self {
            upload_pack_body_limit: 64 * 1024 * 1024,
            receive_pack_body_limit: 2 * 1024 * 1024 * 1024,
            hook_socket: hook_socket.into(),
        }
    }
}

/// What the handlers share.
pub struct GitHttp {
    pub store: Arc<RepoStore>,
    pub auth: Arc<dyn GitAuth>,
    pub registry: Arc<PushRegistry>,
    pub config: GitHttpConfig,
}

/// The routes, to nest or merge into the desktop door's router.
pub fn router(state: Arc<GitHttp>) -> Router {
    Router::new()
        .route("/git/{project}/{repo}/info/refs", get(info_refs))
        .route("/git/{project}/{repo}/git-upload-pack", post(upload_pack))
        .route("/git/{project}/{repo}/git-receive-pack", post(receive_pack))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct InfoRefsQuery {
    service: Option<String>,
}

async fn info_refs(
    State(state): State<Arc<GitHttp>>,
    Path((project, repo)): Path<(String, String)>,
    Query(query): Query<InfoRefsQuery>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let service =
            Service::from_query(query.service.as_deref().ok_or(GitHttpError::DumbProtocol)?)?;
        let (repo, _principal) = authorize(&state, &project, &repo, &headers, service).await?;
        let protocol = git_protocol(&headers);
        let protocol_v2 = service == Service::UploadPack
            && protocol
                .as_deref()
                .is_some_and(|value| value.split(':').any(|field| field == "version=2"));
        let command = RpcCommand {
            git: state.store.git(),
            service,
            repo_path: state.store.repo_path(&repo),
            env: protocol.map(|p| ("GIT_PROTOCOL", p)).into_iter().collect(),
        };
        command.advertise(protocol_v2).await
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

async fn upload_pack(
    State(state): State<Arc<GitHttp>>,
    Path((project, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    service_rpc(state, project, repo, headers, body, Service::UploadPack)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn receive_pack(
    State(state): State<Arc<GitHttp>>,
    Path((project, repo)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    service_rpc(state, project, repo, headers, body, Service::ReceivePack)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn service_rpc(
    state: Arc<GitHttp>,
    project: String,
    repo: String,
    headers: HeaderMap,
    body: Body,
    service: Service,
) -> Result<Response, GitHttpError> {
    let (repo, principal) = authorize(&state, &project, &repo, &headers, service).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if content_type != service.request_type() {
        return Err(GitHttpError::WrongContentType {
            expected: service.request_type(),
        });
    }
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .map(|value| value.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => {
            return Err(GitHttpError::UnsupportedEncoding {
                encoding: other.to_owned(),
            })
        }
    };
    let mut env = Vec::new();
    if let Some(protocol) = git_protocol(&headers) {
        env.push(("GIT_PROTOCOL", protocol));
    }
    let (limit, registration) = match service {
        Service::UploadPack => (state.config.upload_pack_body_limit, None),
        Service::ReceivePack => {
            let registration = state.registry.register(PushContext {
                repo: repo.clone(),
                principal,
            });
            env.push((
                SOCKET_ENV,
                state.config.hook_socket.to_string_lossy().into_owned(),
            ));
            env.push((PUSH_ID_ENV, registration.push_id().to_owned()));
            (state.config.receive_pack_body_limit, Some(registration))
        }
    };
    let command = RpcCommand {
        git: state.store.git(),
        service,
        repo_path: state.store.repo_path(&repo),
        env,
    };
    command.run(body, gzip, limit, registration).await
}

/// Validates the names, asks the caller's [`GitAuth`], then checks the repository
/// exists (after authorization, so existence is not revealed to strangers).
async fn authorize(
    state: &GitHttp,
    project: &str,
    repo: &str,
    headers: &HeaderMap,
    service: Service,
) -> Result<(RepoId, Principal), GitHttpError> {
    let repo = RepoId::from_url_segments(project, repo).map_err(GitHttpError::BadName)?;
    let access = match service {
        Service::UploadPack => Access::Read,
        Service::ReceivePack => Access::Write,
    };
    let principal = state.auth.authorize(headers, &repo, access).await?;
    if !state.store.exists(&repo) {
        return Err(GitHttpError::NotFound { repo });
    }
    Ok((repo, principal))
}

/// The `Git-Protocol` header if it looks like one (`version=2`, colon-separated
/// `key=value` fields); anything else is ignored, as git ignores unknown values.
fn git_protocol(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("git-protocol")?.to_str().ok()?;
    let plausible = value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b':' | b'.' | b'_' | b'-'));
    plausible.then(|| value.to_owned())
}
