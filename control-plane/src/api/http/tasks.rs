//! Cards: create (one or a batch), list, read, update, move and delete.
//! Every body is checked here before it becomes a command; the state
//! machine checks again what depends on the state.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::JsonBody;
use super::{command_error, consistency, idempotency_key, query_error, validate_id, ReadQuery};
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorBody};
use crate::fleet::Fleet;
use crate::types::{
    Applied, ClientResponse, Column, Command, DesktopResources, DesktopState, Task,
};

use super::schemas::{MAX_REPOSITORY_CHARS, MAX_TITLE_CHARS};

pub(crate) const MAX_DESCRIPTION_CHARS: usize = 64 * 1024;

/// A title as sent (at most 200 characters, as the document says), kept
/// without its surrounding spaces.
fn validate_title(title: &str) -> Result<String, ApiError> {
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
    let title = title.trim();
    if title.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_title",
            "title must not be empty",
        ));
    }
    Ok(title.to_owned())
}

fn validate_description(description: &str) -> Result<(), ApiError> {
    if description.chars().count() > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::bad_request(
            "invalid_description",
            format!("description is longer than {MAX_DESCRIPTION_CHARS} characters"),
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

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTaskBody {
    #[schema(schema_with = super::schemas::title_schema)]
    title: String,
    #[serde(default)]
    #[schema(max_length = 65536)]
    description: String,
    #[serde(default)]
    #[schema(schema_with = super::schemas::repository_schema)]
    repository: Option<String>,
    /// Defaults to `backlog`.
    #[serde(default)]
    column: Option<Column>,
    /// What its desktop asks for; the server's default when absent.
    #[serde(default)]
    #[schema(value_type = Option<ResourcesBody>)]
    resources: Option<super::body::Object<ResourcesBody>>,
    /// Its desktop's apps and keyboard; the node's defaults when absent.
    #[serde(default)]
    #[schema(schema_with = super::schemas::profile_schema)]
    profile: Option<super::body::Object<crate::types::DesktopProfile>>,
}

/// A desktop's resource request as clients send it (unknown fields are
/// refused here; the replicated type stays open to new fields).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    /// Millicores (a share: enforced by weight).
    #[serde(deserialize_with = "super::integer::integer")]
    #[schema(minimum = 1, maximum = 1_024_000)]
    cpu_millis: u64,
    /// At least 1 MiB, at most 64 TiB.
    #[serde(deserialize_with = "super::integer::integer")]
    #[schema(minimum = 1_048_576, maximum = 70_368_744_177_664_u64)]
    memory_bytes: u64,
    /// At most 16 TiB.
    #[serde(default, deserialize_with = "super::integer::integer")]
    #[schema(maximum = 17_592_186_044_416_u64)]
    gpu_memory_bytes: u64,
    #[serde(default)]
    needs_gpu: bool,
    /// Labels the node must carry.
    #[serde(default)]
    #[schema(schema_with = super::schemas::labels_schema)]
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
fn create_task_command(fleet: &Fleet, body: CreateTaskBody) -> Result<Command, ApiError> {
    let title = validate_title(&body.title)?;
    validate_description(&body.description)?;
    if let Some(repository) = &body.repository {
        validate_repository(repository)?;
    }
    let mut resources = body
        .resources
        .map(|super::body::Object(resources)| DesktopResources::from(resources))
        .unwrap_or_else(|| fleet.default_resources());
    if let Some(super::body::Object(profile)) = body.profile {
        profile
            .validate()
            .map_err(|error| ApiError::bad_request("invalid_profile", error.to_string()))?;
        resources.profile = profile;
    }
    resources
        .validate()
        .map_err(|error| ApiError::bad_request("invalid_resources", error.to_string()))?;
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
pub(super) async fn create_task(
    State(control): State<Arc<ControlPlane>>,
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<CreateTaskBody>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let command = create_task_command(&fleet, body)?;
    let request = control.request(command, idempotency_key(&headers)?);
    let task = task_outcome(control.write(request).await?)?;
    Ok((StatusCode::CREATED, Json(task)))
}

/// Most tasks one batch may create.
pub const MAX_BATCH_TASKS: usize = 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTasksBody {
    #[schema(min_items = 1, max_items = 1000)]
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
pub(super) async fn create_tasks(
    State(control): State<Arc<ControlPlane>>,
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<CreateTasksBody>,
) -> Result<(StatusCode, Json<CreatedTasks>), ApiError> {
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
            create_task_command(&fleet, task).map_err(|error| ApiError {
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
#[into_params(parameter_in = Query)]
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
pub(super) async fn list_tasks(
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

/// Get one task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    params(("id" = String, Path), ReadQuery),
    responses((status = 200, body = TaskView), (status = 404, body = ErrorBody))
)]
pub(super) async fn get_task(
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
    #[schema(schema_with = super::schemas::nullable_title_schema)]
    title: Option<String>,
    #[schema(max_length = 65536, nullable)]
    description: Option<String>,
    /// `null` clears the repository; absent leaves it.
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = super::schemas::repository_schema)]
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
pub(super) async fn update_task(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<UpdateTaskBody>,
) -> Result<Json<Task>, ApiError> {
    validate_id(&id)?;
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
    #[serde(default, deserialize_with = "super::integer::optional")]
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
pub(super) async fn move_task(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<MoveTaskBody>,
) -> Result<Json<Task>, ApiError> {
    validate_id(&id)?;
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
pub(super) async fn delete_task(
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
