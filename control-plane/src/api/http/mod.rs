//! The HTTP/JSON API (`/api/v1`), its live change feed (server-sent events)
//! and its OpenAPI document, generated from these handlers.
//!
//! Every route but `/healthz` needs a bearer token. Request bodies are
//! size-limited, reject unknown fields, and every failure answers
//! `{"error":{"code","message"}}` with a 4xx/5xx status.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures::Stream;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::control::{Access, Consistency, ControlPlane};
use crate::error::{ApiError, ErrorBody, ErrorKind};
use crate::store::WatchError;
use crate::types::{
    Applied, Change, ClientResponse, Column, Command, CommandError, DesktopResources, DesktopState,
    Task,
};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
const MAX_TITLE_CHARS: usize = 200;
const MAX_DESCRIPTION_BYTES: usize = 64 * 1024;
const MAX_REPOSITORY_CHARS: usize = 512;
const MAX_ID_CHARS: usize = 128;

#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla control plane", version = "1"),
    paths(
        create_task,
        create_tasks,
        list_tasks,
        get_task,
        update_task,
        move_task,
        delete_task,
        cluster_status,
        remove_member,
        watch,
        crate::http_fleet::list_nodes,
        crate::http_fleet::node_status,
        crate::http_fleet::set_eligibility,
        crate::http_fleet::start_drain,
        crate::http_fleet::cancel_drain,
        crate::http_fleet::remove_node,
        crate::http_fleet::capacity,
        crate::http_fleet::list_desktops,
        crate::http_fleet::gpu_info,
        crate::http_exec::screenshot,
        crate::http_exec::input,
        crate::http_exec::exec,
        crate::http_exec::logs
    ),
    components(schemas(
        Task,
        Column,
        TaskList,
        TaskView,
        TaskDesktop,
        DesktopResources,
        ResourcesBody,
        CreateTaskBody,
        CreateTasksBody,
        CreatedTasks,
        UpdateTaskBody,
        MoveTaskBody,
        ClusterView,
        MemberView,
        ErrorBody,
        Change,
        crate::http_exec::ExecBody,
        crate::http_exec::ExecLine
    ))
)]
pub struct ApiDoc;

/// The HTTP routes, with authentication and body limits applied.
pub fn router(control: Arc<ControlPlane>) -> Router {
    let api = Router::new()
        .route("/api/v1/tasks", post(create_task).get(list_tasks))
        .route(
            "/api/v1/tasks/{id}",
            get(get_task).patch(update_task).delete(delete_task),
        )
        .route("/api/v1/tasks/batch", post(create_tasks))
        .route("/api/v1/tasks/{id}/move", post(move_task))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/members/{id}", delete(remove_member))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/openapi.json", get(openapi))
        .merge(crate::http_fleet::routes())
        .merge(crate::http_exec::routes())
        .merge(crate::http_stream::routes())
        .merge(crate::http_session::routes())
        .layer(axum::middleware::from_fn_with_state(
            control.clone(),
            require_operator,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(crate::http_session::static_routes())
        .merge(api)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(control)
}

async fn require_operator(
    State(control): State<Arc<ControlPlane>>,
    request: Request,
    next: Next,
) -> Response {
    // A bearer token, or the board's session cookie.
    let token = crate::http_session::session_token(request.headers());
    match control.authorize(token, Access::Operator) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

/// Answers paths no route matches, on the merged HTTP + gRPC router.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such API route; see /api/v1/openapi.json")
}

async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// Turns axum's body rejections into our error shape.
pub(crate) fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                ErrorKind::PayloadTooLarge,
                "payload_too_large",
                format!("request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        JsonRejection::JsonSyntaxError(error) => ApiError::bad_request(
            "invalid_json",
            format!("malformed JSON: {}", error.body_text()),
        ),
        JsonRejection::JsonDataError(error) => {
            ApiError::bad_request("invalid_body", error.body_text())
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

pub(crate) fn query_error(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", rejection.body_text())
}

pub(crate) fn validate_id(id: &str) -> Result<(), ApiError> {
    let valid = !id.is_empty()
        && id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_id",
            format!("{id:?} is not a valid id (1-{MAX_ID_CHARS} of A-Z a-z 0-9 - _)"),
        ))
    }
}

fn validate_title(title: &str) -> Result<String, ApiError> {
    let title = title.trim();
    if title.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_title",
            "title must not be empty",
        ));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::bad_request(
            "invalid_title",
            format!("title is longer than {MAX_TITLE_CHARS} characters"),
        ));
    }
    if title.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_title",
            "title must not contain control characters",
        ));
    }
    Ok(title.to_owned())
}

fn validate_description(description: &str) -> Result<(), ApiError> {
    if description.len() > MAX_DESCRIPTION_BYTES {
        return Err(ApiError::bad_request(
            "invalid_description",
            format!("description is longer than {MAX_DESCRIPTION_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn validate_repository(repository: &str) -> Result<(), ApiError> {
    if repository.is_empty()
        || repository.chars().count() > MAX_REPOSITORY_CHARS
        || repository
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(ApiError::bad_request(
            "invalid_repository",
            format!("repository must be 1-{MAX_REPOSITORY_CHARS} characters without spaces"),
        ));
    }
    Ok(())
}

pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= MAX_ID_CHARS)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                format!("Idempotency-Key must be 1-{MAX_ID_CHARS} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// Maps a command's outcome to an HTTP answer.
fn task_outcome(response: ClientResponse) -> Result<Task, ApiError> {
    match response.outcome {
        Ok(Applied::Task { task }) => Ok(task),
        Ok(other) => Err(ApiError::internal(format!(
            "unexpected result {other:?} for a task command"
        ))),
        Err(error) => Err(command_error(error)),
    }
}

pub(crate) fn command_error(error: CommandError) -> ApiError {
    let message = error.to_string();
    match error {
        CommandError::TaskNotFound { .. }
        | CommandError::NodeNotFound { .. }
        | CommandError::DesktopNotFound { .. } => ApiError::not_found(message),
        CommandError::TaskExists { .. }
        | CommandError::NodeNameTaken { .. }
        | CommandError::NodeDraining { .. }
        | CommandError::NodeNotDown { .. }
        | CommandError::NodeDown { .. } => ApiError::new(ErrorKind::Conflict, "conflict", message),
        CommandError::UnsupportedFormat { .. } => ApiError::internal(message),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskBody {
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    repository: Option<String>,
    /// Defaults to `backlog`.
    #[serde(default)]
    column: Option<Column>,
    /// What its desktop asks for; the server's default when absent.
    #[serde(default)]
    resources: Option<ResourcesBody>,
    /// Its desktop's apps and keyboard; the node's defaults when absent.
    #[serde(default)]
    profile: Option<crate::types::DesktopProfile>,
}

/// A desktop's resource request as clients send it (unknown fields are
/// refused here; the replicated type stays open to new fields).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    /// Millicores (a share: enforced by weight).
    cpu_millis: u64,
    memory_bytes: u64,
    #[serde(default)]
    gpu_memory_bytes: u64,
    #[serde(default)]
    needs_gpu: bool,
    /// Labels the node must carry.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// `none`, `control-plane` (the default) or `open`.
    #[serde(default)]
    egress: crate::types::Egress,
}

impl From<ResourcesBody> for DesktopResources {
    fn from(body: ResourcesBody) -> DesktopResources {
        DesktopResources {
            cpu_millis: body.cpu_millis,
            memory_bytes: body.memory_bytes,
            gpu_memory_bytes: body.gpu_memory_bytes,
            needs_gpu: body.needs_gpu,
            labels: body.labels,
            egress: body.egress,
            profile: crate::types::DesktopProfile::default(),
        }
    }
}

/// Checks a task body and turns it into its command.
fn create_task_command(control: &ControlPlane, body: CreateTaskBody) -> Result<Command, ApiError> {
    let title = validate_title(&body.title)?;
    validate_description(&body.description)?;
    if let Some(repository) = &body.repository {
        validate_repository(repository)?;
    }
    let mut resources = body
        .resources
        .map(DesktopResources::from)
        .unwrap_or_else(|| control.fleet.options.default_resources.clone());
    if let Some(profile) = body.profile {
        profile
            .validate()
            .map_err(|message| ApiError::bad_request("invalid_profile", message))?;
        resources.profile = profile;
    }
    resources
        .validate()
        .map_err(|message| ApiError::bad_request("invalid_resources", message))?;
    Ok(Command::CreateTask {
        id: uuid::Uuid::new_v4().to_string(),
        title,
        description: body.description,
        repository: body.repository,
        column: body.column.unwrap_or(Column::Backlog),
        resources,
    })
}

/// Create a task. Send `Idempotency-Key` to make retries safe.
#[utoipa::path(
    post,
    path = "/api/v1/tasks",
    request_body = CreateTaskBody,
    responses(
        (status = 201, body = Task),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
)]
async fn create_task(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: Result<Json<CreateTaskBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    let command = create_task_command(&control, body)?;
    let request = control.request(command, idempotency_key(&headers)?);
    let task = task_outcome(control.write(request).await?)?;
    Ok((StatusCode::CREATED, Json(task)))
}

/// Most tasks one batch may create.
pub const MAX_BATCH_TASKS: usize = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTasksBody {
    tasks: Vec<CreateTaskBody>,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedTasks {
    tasks: Vec<Task>,
}

/// Create up to 1000 tasks at once (a spec cloned across repositories).
/// All are checked before any is written; they are committed together.
/// With `Idempotency-Key: K`, task i uses the key `K.i`.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/batch",
    request_body = CreateTasksBody,
    responses(
        (status = 201, body = CreatedTasks),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody)
    )
)]
async fn create_tasks(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    body: Result<Json<CreateTasksBody>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedTasks>), ApiError> {
    let Json(body) = body.map_err(json_error)?;
    if body.tasks.is_empty() || body.tasks.len() > MAX_BATCH_TASKS {
        return Err(ApiError::bad_request(
            "invalid_batch",
            format!("send 1-{MAX_BATCH_TASKS} tasks"),
        ));
    }
    let key = idempotency_key(&headers)?;
    let commands = body
        .tasks
        .into_iter()
        .enumerate()
        .map(|(index, task)| {
            create_task_command(&control, task).map_err(|error| ApiError {
                message: format!("tasks[{index}]: {}", error.message),
                ..error
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let writes = commands.into_iter().enumerate().map(|(index, command)| {
        let request = control.request(command, key.as_ref().map(|key| format!("{key}.{index}")));
        control.write(request)
    });
    let mut tasks = Vec::new();
    for response in futures::future::join_all(writes).await {
        tasks.push(task_outcome(response?)?);
    }
    Ok((StatusCode::CREATED, Json(CreatedTasks { tasks })))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only tasks in this column.
    column: Option<Column>,
    /// Serve from this server's state without a quorum round-trip.
    #[serde(default)]
    stale: bool,
}

#[derive(Serialize, ToSchema)]
pub struct TaskList {
    /// Watch from this revision to follow changes after this list.
    revision: u64,
    tasks: Vec<Task>,
}

/// List tasks, ordered by column then position.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    params(ListQuery),
    responses((status = 200, body = TaskList), (status = 400, body = ErrorBody))
)]
async fn list_tasks(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<TaskList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    control.read_barrier(consistency(query.stale)).await?;
    let (revision, tasks) = control
        .state
        .with_state(|state| (state.revision(), state.tasks(query.column)));
    Ok(Json(TaskList { revision, tasks }))
}

pub(crate) fn consistency(stale: bool) -> Consistency {
    if stale {
        Consistency::Stale
    } else {
        Consistency::Linearizable
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    pub(crate) stale: bool,
}

/// Get one task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody))
)]
async fn get_task(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<TaskView>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    validate_id(&id)?;
    control.read_barrier(consistency(query.stale)).await?;
    control
        .state
        .with_state(|state| {
            let task = state.task(&id)?.clone();
            let desktop = task
                .desktop_id
                .as_deref()
                .and_then(|desktop_id| state.desktop(desktop_id))
                .map(|desktop| TaskDesktop {
                    id: desktop.id.clone(),
                    node: desktop
                        .node_id
                        .as_deref()
                        .and_then(|node_id| state.node(node_id))
                        .map(|node| node.name.clone()),
                    state: desktop.state,
                    reason: desktop.reason.clone(),
                });
            Some(TaskView { task, desktop })
        })
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no task with id {id:?}")))
}

/// A task with its desktop.
#[derive(Serialize, ToSchema)]
pub struct TaskView {
    #[serde(flatten)]
    task: Task,
    desktop: Option<TaskDesktop>,
}

#[derive(Serialize, ToSchema)]
pub struct TaskDesktop {
    id: String,
    /// Name of the node it is placed on; `null` while pending.
    node: Option<String>,
    state: DesktopState,
    reason: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTaskBody {
    title: Option<String>,
    description: Option<String>,
    /// `null` clears the repository; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    repository: Option<Option<String>>,
}

/// Distinguishes `"field": null` (Some(None)) from an absent field (None).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(deserializer).map(Some)
}

/// Change a task's title, description or repository.
#[utoipa::path(
    patch,
    path = "/api/v1/tasks/{id}",
    params(("id" = String, Path)),
    request_body = UpdateTaskBody,
    responses((status = 200, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn update_task(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<UpdateTaskBody>, JsonRejection>,
) -> Result<Json<Task>, ApiError> {
    validate_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let title = body.title.as_deref().map(validate_title).transpose()?;
    if let Some(description) = &body.description {
        validate_description(description)?;
    }
    if let Some(Some(repository)) = &body.repository {
        validate_repository(repository)?;
    }
    let command = Command::UpdateTask {
        id,
        title,
        description: body.description,
        repository: body.repository,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    Ok(Json(task_outcome(control.write(request).await?)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MoveTaskBody {
    column: Column,
    /// Index in the destination column; absent appends at the end.
    position: Option<u32>,
}

/// Move a task to a column (and position).
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/move",
    params(("id" = String, Path)),
    request_body = MoveTaskBody,
    responses((status = 200, body = Task), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn move_task(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<MoveTaskBody>, JsonRejection>,
) -> Result<Json<Task>, ApiError> {
    validate_id(&id)?;
    let Json(body) = body.map_err(json_error)?;
    let command = Command::MoveTask {
        id,
        column: body.column,
        position: body.position,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    Ok(Json(task_outcome(control.write(request).await?)?))
}

/// Delete a task.
#[utoipa::path(
    delete,
    path = "/api/v1/tasks/{id}",
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody))
)]
async fn delete_task(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    validate_id(&id)?;
    let request = control.request(Command::DeleteTask { id }, idempotency_key(&headers)?);
    match control.write(request).await?.outcome {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(error) => Err(command_error(error)),
    }
}

#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    leader: Option<u64>,
    term: u64,
    members: Vec<MemberView>,
    cluster_id: String,
    node_id: u64,
    last_log_index: u64,
    last_applied: u64,
    revision: u64,
    snapshot_index: u64,
    purged_index: u64,
}

#[derive(Serialize, ToSchema)]
pub struct MemberView {
    id: u64,
    addr: String,
    /// `voter` or `learner`.
    role: String,
}

impl From<flotilla_proto::cluster::ClusterStatus> for ClusterView {
    fn from(status: flotilla_proto::cluster::ClusterStatus) -> ClusterView {
        ClusterView {
            leader: status.leader,
            term: status.term,
            members: status
                .members
                .into_iter()
                .map(|member| MemberView {
                    id: member.id,
                    addr: member.addr,
                    role: member.role,
                })
                .collect(),
            cluster_id: status.cluster_id,
            node_id: status.node_id,
            last_log_index: status.last_log_index,
            last_applied: status.last_applied,
            revision: status.revision,
            snapshot_index: status.snapshot_index,
            purged_index: status.purged_index,
        }
    }
}

/// The cluster as this server sees it.
#[utoipa::path(get, path = "/api/v1/cluster", responses((status = 200, body = ClusterView)))]
async fn cluster_status(State(control): State<Arc<ControlPlane>>) -> Json<ClusterView> {
    Json(control.status().into())
}

/// Remove a server from the cluster.
#[utoipa::path(
    delete,
    path = "/api/v1/cluster/members/{id}",
    params(("id" = u64, Path)),
    responses((status = 200, body = ClusterView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn remove_member(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
) -> Result<Json<ClusterView>, ApiError> {
    let node_id: u64 = id.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("{id:?} is not a server id (a number)"),
        )
    })?;
    let status = control
        .remove_member(node_id, control.cluster_secret())
        .await?;
    Ok(Json(status.into()))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    /// Stream changes after this revision (default: the current one, so only
    /// new changes). `Last-Event-ID` overrides it when a browser reconnects.
    from: Option<u64>,
}

/// Live changes as server-sent events: `event: change`, `id: <revision>`,
/// `data: <Change JSON>`. Resumes from any revision still retained; older
/// ones answer 410 and the client lists again.
#[utoipa::path(
    get,
    path = "/api/v1/watch",
    params(WatchQuery),
    responses((status = 200, description = "text/event-stream of Change"), (status = 410, body = ErrorBody))
)]
async fn watch(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_last_event_id",
                        "Last-Event-ID must be a revision number",
                    )
                })?,
        ),
        None => None,
    };
    let from = last_event_id
        .or(query.from)
        .unwrap_or_else(|| control.state.with_state(|state| state.revision()));
    let watcher = control.state.watch(from).map_err(watch_error)?;
    let stream = futures::stream::unfold(Some(watcher), |watcher| async move {
        let mut watcher = watcher?;
        match watcher.next().await {
            Ok(change) => {
                let event = Event::default()
                    .event("change")
                    .id(change.revision.to_string())
                    .json_data(&change)
                    .unwrap_or_else(|_| Event::default().event("error"));
                Some((Ok(event), Some(watcher)))
            }
            Err(error) => {
                let api_error = watch_error(error);
                let event = Event::default()
                    .event("error")
                    .json_data(serde_json::json!({
                        "error": {"code": api_error.code, "message": api_error.message}
                    }))
                    .unwrap_or_else(|_| Event::default().event("error"));
                Some((Ok(event), None))
            }
        }
    });
    // Server shutdown ends the stream, so graceful shutdown is not held
    // open by watchers; they reconnect to another server with Last-Event-ID.
    let stream = futures::StreamExt::take_until(stream, control.stopped());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn watch_error(error: WatchError) -> ApiError {
    match error {
        WatchError::Compacted { .. } => {
            ApiError::new(ErrorKind::Gone, "compacted", error.to_string())
        }
        WatchError::Closed => ApiError::unavailable(error.to_string()),
    }
}
