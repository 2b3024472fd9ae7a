//! Projects and their hosted repositories:
//! `POST/GET /api/v1/projects`, `GET /api/v1/projects/{project}`,
//! `POST /api/v1/projects/{project}/repos`,
//! `GET /api/v1/projects/{project}/repos/{name}` (refs and the clone path).
//! A repository's bare copy appears on every server once its entry is
//! applied (`hosting::GitSync`); git reaches it at `/git/{project}/{name}.git`
//! with the operator token as the HTTP password.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::JsonBody;
use super::{command_error, consistency, idempotency_key, query_error, HttpState, ReadQuery};
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorBody};
use crate::hosting::upstream::{check_upstream_url, Upstreams};
use crate::types::{valid_project_name, Applied, ClientResponse, Command, Project, Repo, Upstream};

pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/projects", post(create_project).get(list_projects))
        .route("/api/v1/projects/{project}", get(get_project))
        .route("/api/v1/projects/{project}/repos", post(create_repo))
        .route("/api/v1/projects/{project}/repos/{name}", get(get_repo))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProjectBody {
    /// 1-64 of `A-Z a-z 0-9 - _`; part of every clone URL.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]*$")]
    id: String,
    /// New repositories' first branch (default `main`).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9][A-Za-z0-9_-]*$",
        nullable
    )]
    default_branch: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRepoBody {
    /// 1-64 of `A-Z a-z 0-9 - _`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]*$")]
    name: String,
    /// Import every branch and tag from this URL (http(s)://, git://,
    /// file://, no credentials in it); its default branch is then mirrored
    /// back there.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 2048, nullable)]
    upstream: Option<String>,
    /// The upstream's token (git's HTTP Basic password): kept sealed,
    /// never shown, never in a desktop.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 4096, nullable)]
    upstream_token: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    revision: u64,
    projects: Vec<Project>,
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    #[serde(flatten)]
    project: Project,
    repos: Vec<RepoView>,
}

/// A repository as clients see it.
#[derive(Serialize, ToSchema)]
pub struct RepoView {
    project: String,
    name: String,
    default_branch: String,
    /// Full ref name → commit (hex).
    refs: BTreeMap<String, String>,
    /// Path of the smart-HTTP remote on any server, e.g. `/git/p/r.git`.
    clone_path: String,
    /// Where it was imported from, and what its mirror last managed.
    upstream: Option<Upstream>,
    /// Whether the default branch has moved past what the upstream took.
    mirror_behind: bool,
}

impl From<&Repo> for RepoView {
    fn from(repo: &Repo) -> RepoView {
        RepoView {
            project: repo.project.clone(),
            name: repo.name.clone(),
            default_branch: repo.default_branch.clone(),
            refs: repo.refs.clone(),
            clone_path: format!("/git/{}/{}.git", repo.project, repo.name),
            upstream: repo.upstream.clone(),
            mirror_behind: repo.upstream.as_ref().is_some_and(|upstream| {
                upstream.pushed.as_ref()
                    != repo
                        .refs
                        .get(&format!("refs/heads/{}", repo.default_branch))
            }),
        }
    }
}

fn check_name(what: &str, name: &str) -> Result<(), ApiError> {
    if valid_project_name(name) {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_name",
        format!("{what} {name:?} is not 1-64 of A-Z a-z 0-9 - _"),
    ))
}

fn outcome(response: ClientResponse) -> Result<Applied, ApiError> {
    response.outcome.map_err(command_error)
}

/// Create a project. Send `Idempotency-Key` to make retries safe.
#[utoipa::path(
    post,
    path = "/api/v1/projects",
    request_body = CreateProjectBody,
    responses((status = 201, body = Project), (status = 409, body = ErrorBody))
)]
pub(super) async fn create_project(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<CreateProjectBody>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    check_name("project", &body.id)?;
    let default_branch = body.default_branch.unwrap_or_else(|| "main".to_owned());
    let branch_ok = valid_project_name(&default_branch) && !default_branch.starts_with(['-', '_']);
    if !branch_ok {
        return Err(ApiError::bad_request(
            "invalid_branch",
            format!("{default_branch:?} is not a branch name of 1-64 of A-Z a-z 0-9 - _, starting alphanumeric"),
        ));
    }
    let command = Command::CreateProject {
        id: body.id,
        default_branch,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    match outcome(control.write(request).await?)? {
        Applied::Project { project } => Ok((StatusCode::CREATED, Json(project))),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// Every project.
#[utoipa::path(get, path = "/api/v1/projects", params(ReadQuery), responses((status = 200, body = ProjectList)))]
pub(super) async fn list_projects(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<ProjectList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    control.read_barrier(consistency(query.stale)).await?;
    Ok(Json(control.state.with_state(|state| ProjectList {
        revision: state.revision(),
        projects: state.projects().cloned().collect(),
    })))
}

/// One project and its repositories.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}",
    params(("project" = String, Path), ReadQuery),
    responses((status = 200, body = ProjectView))
)]
pub(super) async fn get_project(
    State(control): State<Arc<ControlPlane>>,
    Path(project): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<ProjectView>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    check_name("project", &project)?;
    control.read_barrier(consistency(query.stale)).await?;
    control
        .state
        .with_state(|state| {
            let found = state.project(&project)?.clone();
            let repos = state.repos_of(&project).map(RepoView::from).collect();
            Some(ProjectView {
                project: found,
                repos,
            })
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no project {project:?}")))
}

/// Create a repository in a project (a bare repository on every server):
/// empty, or imported from `upstream` (its refs committed once a majority
/// of servers hold the objects; 502 if the upstream cannot be read).
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/repos",
    params(("project" = String, Path)),
    request_body = CreateRepoBody,
    responses((status = 201, body = RepoView), (status = 409, body = ErrorBody), (status = 502, body = ErrorBody))
)]
pub(super) async fn create_repo(
    State(control): State<Arc<ControlPlane>>,
    State(upstreams): State<Arc<Upstreams>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<CreateRepoBody>,
) -> Result<(StatusCode, Json<RepoView>), ApiError> {
    check_name("project", &project)?;
    check_name("repository", &body.name)?;
    if let Some(url) = &body.upstream {
        check_upstream_url(url)?;
    } else if body.upstream_token.is_some() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "upstream_token needs an upstream",
        ));
    }
    let sealed_credential = body.upstream_token.as_deref().map(|token| {
        crate::seal::seal(
            control.cluster_secret(),
            &Repo::key(&project, &body.name),
            token,
        )
    });
    let command = Command::CreateRepo {
        project: project.clone(),
        name: body.name.clone(),
        upstream: body.upstream.clone(),
        sealed_credential,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    let repo = match outcome(control.write(request).await?)? {
        Applied::Repo { repo } => repo,
        other => return Err(ApiError::internal(format!("unexpected result {other:?}"))),
    };
    let repo = match &body.upstream {
        Some(url) => {
            upstreams
                .import(&project, &body.name, url, body.upstream_token.as_deref())
                .await?
        }
        None => repo,
    };
    Ok((StatusCode::CREATED, Json(RepoView::from(&repo))))
}

/// One repository: its refs and where to clone it.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/repos/{name}",
    params(("project" = String, Path), ("name" = String, Path), ReadQuery),
    responses((status = 200, body = RepoView))
)]
pub(super) async fn get_repo(
    State(control): State<Arc<ControlPlane>>,
    Path((project, name)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<RepoView>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    check_name("project", &project)?;
    check_name("repository", &name)?;
    control.read_barrier(consistency(query.stale)).await?;
    control
        .state
        .with_state(|state| state.repo(&project, &name).map(RepoView::from))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no repository {project}/{name}")))
}
