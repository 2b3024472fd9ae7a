//! Pull requests of a hosted repository:
//! `POST/GET /api/v1/projects/{project}/repos/{name}/pulls`,
//! `GET .../pulls/{number}` (the record and what git says now: head, base,
//! mergeability with the conflicting files, per-file counts),
//! `GET .../pulls/{number}/diff` (files and hunks),
//! `POST .../pulls/{number}/merge` and `.../close`.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use flotilla_git::pr::{FileDiff, FileStatus, LineKind, Signature};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::JsonBody;
use super::{command_error, consistency, idempotency_key, query_error, HttpState, ReadQuery};
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorBody};
use crate::hosting::pulls::{Merge, Pulls};
use crate::types::{
    valid_project_name, Applied, Command, MergeStyle, PullRequest, MAX_PULL_TITLE_CHARS,
};

pub(crate) fn routes() -> Router<HttpState> {
    let base = "/api/v1/projects/{project}/repos/{name}/pulls";
    Router::new()
        .route(base, post(open_pull).get(list_pulls))
        .route(&format!("{base}/{{number}}"), get(get_pull))
        .route(&format!("{base}/{{number}}/diff"), get(pull_diff))
        .route(&format!("{base}/{{number}}/merge"), post(merge_pull))
        .route(&format!("{base}/{{number}}/close"), post(close_pull))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenPullBody {
    #[schema(min_length = 1, max_length = 256)]
    title: String,
    /// The branch that lands (short name, e.g. `flotilla/t1`).
    #[schema(min_length = 1, max_length = 200)]
    source: String,
    /// The branch it lands on (default: the repository's default branch).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, nullable)]
    base: Option<String>,
    /// The task whose work this is.
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = "^[A-Za-z0-9_-]*$",
        nullable
    )]
    task_id: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct MergeBody {
    /// How it lands (default: the project's merge style).
    #[serde(default)]
    #[schema(nullable)]
    style: Option<MergeStyle>,
}

#[derive(Serialize, ToSchema)]
pub struct PullList {
    revision: u64,
    pulls: Vec<PullRequest>,
}

/// One changed file's counts.
#[derive(Serialize, ToSchema)]
pub struct FileStat {
    path: String,
    /// Where a renamed or copied file came from.
    old_path: Option<String>,
    /// added, deleted, modified, renamed, copied or type_changed.
    status: String,
    binary: bool,
    additions: u64,
    deletions: u64,
}

/// A pull request with what git says about it now.
#[derive(Serialize, ToSchema)]
pub struct PullView {
    #[serde(flatten)]
    pull: PullRequest,
    /// The source and base branches' committed commits (null: gone).
    head: Option<String>,
    base_commit: Option<String>,
    /// For an open pull request: `clean`, `needs_merge` (merge the base
    /// into it first: `conflicts` names the files) or `up_to_date`.
    mergeable: Option<String>,
    /// Whether a fast-forward merge is possible.
    fast_forward: bool,
    conflicts: Vec<String>,
    files: Vec<FileStat>,
}

#[derive(Serialize, ToSchema)]
pub struct DiffLineView {
    /// context, added or removed.
    kind: String,
    content: String,
    old_line: Option<u64>,
    new_line: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct HunkView {
    old_start: u64,
    old_lines: u64,
    new_start: u64,
    new_lines: u64,
    header: String,
    lines: Vec<DiffLineView>,
}

#[derive(Serialize, ToSchema)]
pub struct FileDiffView {
    #[serde(flatten)]
    stat: FileStat,
    hunks: Vec<HunkView>,
}

#[derive(Serialize, ToSchema)]
pub struct PullDiff {
    files: Vec<FileDiffView>,
}

fn stat(file: &FileDiff) -> FileStat {
    let status = match file.status {
        FileStatus::Added => "added",
        FileStatus::Deleted => "deleted",
        FileStatus::Modified => "modified",
        FileStatus::Renamed { .. } => "renamed",
        FileStatus::Copied { .. } => "copied",
        FileStatus::TypeChanged => "type_changed",
    };
    FileStat {
        path: file.path.clone(),
        old_path: file.old_path.clone(),
        status: status.to_owned(),
        binary: file.binary,
        additions: file.additions,
        deletions: file.deletions,
    }
}

fn check_repo(project: &str, name: &str) -> Result<(), ApiError> {
    for (what, value) in [("project", project), ("repository", name)] {
        if !valid_project_name(value) {
            return Err(ApiError::bad_request(
                "invalid_name",
                format!("{what} {value:?} is not 1-64 of A-Z a-z 0-9 - _"),
            ));
        }
    }
    Ok(())
}

/// A pull request number in a path: 1 or more, an OpenAPI int64.
fn pull_number(text: &str) -> Result<u64, ApiError> {
    match text.parse::<u64>() {
        Ok(number) if number >= 1 && number <= i64::MAX as u64 => Ok(number),
        _ => Err(ApiError::bad_request(
            "invalid_number",
            format!("pull request number {text:?} is not an integer from 1"),
        )),
    }
}

/// A branch name for a pull request: what git allows, under `refs/heads/`.
fn check_branch(branch: &str) -> Result<(), ApiError> {
    flotilla_git::RefName::branch(branch)
        .map(|_| ())
        .map_err(|error| ApiError::bad_request("invalid_branch", error.to_string()))
}

fn find(
    control: &ControlPlane,
    project: &str,
    name: &str,
    number: u64,
) -> Result<PullRequest, ApiError> {
    control
        .state
        .with_state(|state| state.pull(project, name, number).cloned())
        .ok_or_else(|| ApiError::not_found(format!("no pull request {project}/{name}#{number}")))
}

fn pull_answer(response: crate::types::ClientResponse) -> Result<PullRequest, ApiError> {
    match response.outcome.map_err(command_error)? {
        Applied::Pull { pull } => Ok(pull),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// Open a pull request of `source` onto `base` at their committed commits.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/repos/{name}/pulls",
    params(("project" = String, Path), ("name" = String, Path)),
    request_body = OpenPullBody,
    responses((status = 201, body = PullRequest), (status = 409, body = ErrorBody))
)]
pub(super) async fn open_pull(
    State(control): State<Arc<ControlPlane>>,
    Path((project, name)): Path<(String, String)>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<OpenPullBody>,
) -> Result<(StatusCode, Json<PullRequest>), ApiError> {
    check_repo(&project, &name)?;
    let title = body.title.trim().to_owned();
    if title.is_empty() || title.chars().count() > MAX_PULL_TITLE_CHARS {
        return Err(ApiError::bad_request(
            "invalid_title",
            format!("a title is 1-{MAX_PULL_TITLE_CHARS} characters"),
        ));
    }
    if let Some(task) = &body.task_id {
        let valid = !task.is_empty()
            && task.len() <= 128
            && task
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(ApiError::bad_request(
                "invalid_task",
                format!("task id {task:?} is not 1-128 of A-Z a-z 0-9 - _"),
            ));
        }
    }
    check_branch(&body.source)?;
    control.read_barrier(consistency(false)).await?;
    let (head, base, base_commit) = control
        .state
        .with_state(|state| {
            let repo = state.repo(&project, &name)?;
            let base = body
                .base
                .clone()
                .unwrap_or_else(|| repo.default_branch.clone());
            let head = repo
                .refs
                .get(&format!("refs/heads/{}", body.source))
                .cloned();
            let base_commit = repo.refs.get(&format!("refs/heads/{base}")).cloned();
            Some((head, base, base_commit))
        })
        .ok_or_else(|| ApiError::not_found(format!("no repository {project}/{name}")))?;
    check_branch(&base)?;
    let missing = |branch: &str| {
        ApiError::not_found(format!(
            "no branch {branch} in {project}/{name}: push it first"
        ))
    };
    let head = head.ok_or_else(|| missing(&body.source))?;
    let base_commit = base_commit.ok_or_else(|| missing(&base))?;
    let command = Command::OpenPull {
        project: project.clone(),
        repo: name.clone(),
        title,
        task_id: body.task_id,
        source: body.source,
        base,
        head,
        base_commit,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    let pull = pull_answer(control.write(request).await?)?;
    Ok((StatusCode::CREATED, Json(pull)))
}

/// A repository's pull requests, by number.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/repos/{name}/pulls",
    params(("project" = String, Path), ("name" = String, Path), ReadQuery),
    responses((status = 200, body = PullList))
)]
pub(super) async fn list_pulls(
    State(control): State<Arc<ControlPlane>>,
    Path((project, name)): Path<(String, String)>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<PullList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    check_repo(&project, &name)?;
    control.read_barrier(consistency(query.stale)).await?;
    control
        .state
        .with_state(|state| {
            state.repo(&project, &name)?;
            Some(PullList {
                revision: state.revision(),
                pulls: state.pulls_of(&project, &name).cloned().collect(),
            })
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no repository {project}/{name}")))
}

/// One pull request and what git says about it now.
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/repos/{name}/pulls/{number}",
    params(("project" = String, Path), ("name" = String, Path), ("number" = u64, Path)),
    responses((status = 200, body = PullView))
)]
pub(super) async fn get_pull(
    State(control): State<Arc<ControlPlane>>,
    State(pulls): State<Arc<Pulls>>,
    Path((project, name, number)): Path<(String, String, String)>,
) -> Result<Json<PullView>, ApiError> {
    check_repo(&project, &name)?;
    let number = pull_number(&number)?;
    control.read_barrier(consistency(false)).await?;
    let pull = find(&control, &project, &name, number)?;
    let live = pulls.live(&pull).await?;
    let (mergeable, fast_forward, conflicts) = match live.merge {
        Some(Merge::Clean { fast_forward }) => (Some("clean"), fast_forward, Vec::new()),
        Some(Merge::NeedsMerge { files }) => (Some("needs_merge"), false, files),
        Some(Merge::UpToDate) => (Some("up_to_date"), false, Vec::new()),
        None => (None, false, Vec::new()),
    };
    Ok(Json(PullView {
        pull,
        head: live.head,
        base_commit: live.base,
        mergeable: mergeable.map(str::to_owned),
        fast_forward,
        conflicts,
        files: live.files.iter().map(stat).collect(),
    }))
}

/// What a pull request changes: files and hunks (`git diff base...head`).
#[utoipa::path(
    get,
    path = "/api/v1/projects/{project}/repos/{name}/pulls/{number}/diff",
    params(("project" = String, Path), ("name" = String, Path), ("number" = u64, Path)),
    responses((status = 200, body = PullDiff), (status = 409, body = ErrorBody))
)]
pub(super) async fn pull_diff(
    State(control): State<Arc<ControlPlane>>,
    State(pulls): State<Arc<Pulls>>,
    Path((project, name, number)): Path<(String, String, String)>,
) -> Result<Json<PullDiff>, ApiError> {
    check_repo(&project, &name)?;
    let number = pull_number(&number)?;
    control.read_barrier(consistency(false)).await?;
    let pull = find(&control, &project, &name, number)?;
    let files = pulls.diff(&pull).await?;
    let kind = |kind: LineKind| match kind {
        LineKind::Context => "context",
        LineKind::Added => "added",
        LineKind::Removed => "removed",
    };
    Ok(Json(PullDiff {
        files: files
            .iter()
            .map(|file| FileDiffView {
                stat: stat(file),
                hunks: file
                    .hunks
                    .iter()
                    .map(|hunk| HunkView {
                        old_start: hunk.old_start,
                        old_lines: hunk.old_lines,
                        new_start: hunk.new_start,
                        new_lines: hunk.new_lines,
                        header: hunk.header.clone(),
                        lines: hunk
                            .lines
                            .iter()
                            .map(|line| DiffLineView {
                                kind: kind(line.kind).to_owned(),
                                content: line.content.clone(),
                                old_line: line.old_line,
                                new_line: line.new_line,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    }))
}

/// Merge an open pull request on the server (`git merge-tree`); the base
/// moves by compare-and-swap through Raft, so a base or head that moved
/// meanwhile is a 409.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/repos/{name}/pulls/{number}/merge",
    params(("project" = String, Path), ("name" = String, Path), ("number" = u64, Path)),
    request_body = MergeBody,
    responses((status = 200, body = PullRequest), (status = 409, body = ErrorBody))
)]
pub(super) async fn merge_pull(
    State(control): State<Arc<ControlPlane>>,
    State(pulls): State<Arc<Pulls>>,
    Path((project, name, number)): Path<(String, String, String)>,
    JsonBody { value: body, .. }: JsonBody<MergeBody>,
) -> Result<Json<PullRequest>, ApiError> {
    check_repo(&project, &name)?;
    let number = pull_number(&number)?;
    control.read_barrier(consistency(false)).await?;
    let pull = find(&control, &project, &name, number)?;
    let style = match body.style {
        Some(style) => style,
        None => control
            .state
            .with_state(|state| state.project(&project).map(|p| p.merge_style))
            .unwrap_or_default(),
    };
    let author = Signature {
        name: "Flotilla".to_owned(),
        email: "merge@flotilla.invalid".to_owned(),
    };
    Ok(Json(pulls.merge(&pull, style, &author).await?))
}

/// Close an open pull request without merging it.
#[utoipa::path(
    post,
    path = "/api/v1/projects/{project}/repos/{name}/pulls/{number}/close",
    params(("project" = String, Path), ("name" = String, Path), ("number" = u64, Path)),
    responses((status = 200, body = PullRequest), (status = 409, body = ErrorBody))
)]
pub(super) async fn close_pull(
    State(control): State<Arc<ControlPlane>>,
    Path((project, name, number)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<PullRequest>, ApiError> {
    check_repo(&project, &name)?;
    let number = pull_number(&number)?;
    let command = Command::ClosePull {
        project,
        repo: name,
        number,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    Ok(Json(pull_answer(control.write(request).await?)?))
}
