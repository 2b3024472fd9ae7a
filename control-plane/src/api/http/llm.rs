//! The LLM gateway's operator side: providers
//! (`POST/GET /api/v1/llm/providers`, `DELETE /api/v1/llm/providers/{provider}`),
//! budgets (`PUT /api/v1/tasks/{id}/budget`, `PUT /api/v1/projects/{project}/budget`)
//! and usage (`GET /api/v1/usage`). A provider's key is sealed before it is
//! written and no answer carries it (`has_key` says whether there is one).
//! The calls themselves are on the desktop door (`crate::gateway`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::body::{JsonBody, Object};
use super::integer;
use super::{command_error, consistency, idempotency_key, query_error, validate_id, HttpState};
use crate::control::ControlPlane;
use crate::error::{ApiError, ErrorBody};
use crate::types::{
    valid_project_name, Applied, Budget, BudgetScope, Command, ModelRoute, Price, Project,
    Provider, ProviderKind, Task, UsageRow, UsageTotals,
};

/// Most models one provider may map.
const MAX_MODELS: usize = 256;
/// Longest model name.
const MAX_MODEL_CHARS: usize = 256;

pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/api/v1/llm/providers",
            post(add_provider).get(list_providers),
        )
        .route("/api/v1/llm/providers/{provider}", delete(remove_provider))
        .route("/api/v1/tasks/{id}/budget", put(set_task_budget))
        .route("/api/v1/projects/{project}/budget", put(set_project_budget))
        .route("/api/v1/usage", get(usage))
}

/// Prices in micro-dollars per million tokens (US$3 per million: 3000000),
/// which is pico-dollars per token.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceBody {
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, nullable)]
    input: Option<u64>,
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, nullable)]
    output: Option<u64>,
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, nullable)]
    cache_read: Option<u64>,
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 0, nullable)]
    cache_write: Option<u64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelBody {
    /// The name agents ask for.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$"
    )]
    name: String,
    /// The provider's name for it (default: the same).
    #[serde(default)]
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$",
        nullable
    )]
    upstream: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<PriceBody>, nullable)]
    price: Option<Object<PriceBody>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddProviderBody {
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]*$")]
    name: String,
    kind: ProviderKind,
    /// As the provider's SDK takes it: `https://api.anthropic.com`,
    /// `https://api.openai.com/v1`, `http://gpu-7:8000/v1`.
    #[schema(
        min_length = 1,
        max_length = 2048,
        pattern = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/-]*)?$"
    )]
    base_url: String,
    /// The provider's API key: sealed, never shown, never in a desktop.
    /// None for a local server that takes none.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 8192, pattern = "^[!-~]*$", nullable)]
    key: Option<String>,
    #[schema(value_type = Vec<ModelBody>, min_items = 1, max_items = 256)]
    models: Vec<Object<ModelBody>>,
}

/// A provider as clients see it: never its key.
#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    #[serde(flatten)]
    provider: Provider,
    has_key: bool,
}

#[derive(Serialize, ToSchema)]
pub struct ProviderList {
    providers: Vec<ProviderView>,
}

/// Limits; absent or null: none. PUT replaces the whole budget.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetBody {
    /// Input + output + cache tokens.
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, nullable)]
    max_tokens: Option<u64>,
    /// Nano-dollars (US$1: 1000000000).
    #[serde(default, deserialize_with = "integer::optional")]
    #[schema(minimum = 1, nullable)]
    max_cost_nanos: Option<u64>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Only this task's calls.
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9_-]*$")]
    task: Option<String>,
    /// Only this project's calls.
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]*$")]
    project: Option<String>,
    /// Only calls from this time on (wall-clock milliseconds; counted by
    /// the hour it falls in).
    #[serde(default, deserialize_with = "integer::query")]
    #[param(minimum = 0)]
    since_ms: Option<u64>,
    #[serde(default)]
    stale: bool,
}

#[derive(Serialize, ToSchema)]
pub struct UsageView {
    totals: UsageTotals,
    /// Per task and model, per hour, oldest first.
    rows: Vec<UsageRow>,
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

fn check_model_name(name: &str) -> Result<(), ApiError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_MODEL_CHARS
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/@+-".contains(c));
    if valid {
        return Ok(());
    }
    Err(ApiError::bad_request(
        "invalid_model",
        format!(
            "model name {name:?} must be 1-256 of A-Z a-z 0-9 . _ : / @ + -, starting alphanumeric"
        ),
    ))
}

/// A provider's base URL: http(s), a host, no credentials, query or fragment.
fn check_base_url(text: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        ApiError::bad_request(
            "invalid_url",
            format!(
                "base_url {text:?} {why}; e.g. https://api.anthropic.com or http://gpu-7:8000/v1"
            ),
        )
    };
    if text.len() > 2048 {
        return Err(bad("is longer than 2048 characters"));
    }
    let url = reqwest::Url::parse(text).map_err(|error| bad(&format!("is not a URL ({error})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must be http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not hold credentials (send the key as `key`)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    Ok(())
}

/// Add a model provider. Its key is sealed under the cluster secret.
#[utoipa::path(
    post,
    path = "/api/v1/llm/providers",
    request_body = AddProviderBody,
    responses((status = 201, body = ProviderView), (status = 409, body = ErrorBody))
)]
pub(super) async fn add_provider(
    State(control): State<Arc<ControlPlane>>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<AddProviderBody>,
) -> Result<(StatusCode, Json<ProviderView>), ApiError> {
    check_name("provider", &body.name)?;
    check_base_url(&body.base_url)?;
    if let Some(key) = &body.key {
        let printable =
            !key.is_empty() && key.len() <= 8192 && key.bytes().all(|b| b.is_ascii_graphic());
        if !printable || HeaderValue::from_str(key).is_err() {
            return Err(ApiError::bad_request(
                "invalid_key",
                "key must be 1-8192 printable ASCII characters without spaces",
            ));
        }
    }
    if body.models.is_empty() || body.models.len() > MAX_MODELS {
        return Err(ApiError::bad_request(
            "invalid_models",
            format!("a provider maps 1-{MAX_MODELS} models"),
        ));
    }
    let mut models = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for Object(model) in body.models {
        check_model_name(&model.name)?;
        if let Some(upstream) = &model.upstream {
            check_model_name(upstream)?;
        }
        if !seen.insert(model.name.clone()) {
            return Err(ApiError::bad_request(
                "invalid_models",
                format!("model {:?} is listed twice", model.name),
            ));
        }
        let price = model.price.map_or(Price::default(), |Object(price)| Price {
            input: price.input.unwrap_or(0),
            output: price.output.unwrap_or(0),
            cache_read: price.cache_read.unwrap_or(0),
            cache_write: price.cache_write.unwrap_or(0),
        });
        let upstream = model.upstream.unwrap_or_else(|| model.name.clone());
        models.insert(model.name, ModelRoute { upstream, price });
    }
    let sealed_key = body.key.as_deref().map(|key| {
        crate::seal::seal(
            control.cluster_secret(),
            &format!("provider:{}", body.name),
            key,
        )
    });
    let has_key = sealed_key.is_some();
    let command = Command::AddProvider {
        provider: Provider {
            name: body.name,
            kind: body.kind,
            base_url: body.base_url,
            models,
            created_at_ms: 0,
        },
        sealed_key,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    match control
        .write(request)
        .await?
        .outcome
        .map_err(command_error)?
    {
        Applied::Provider { provider } => Ok((
            StatusCode::CREATED,
            Json(ProviderView { provider, has_key }),
        )),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// Every model provider (never their keys).
#[utoipa::path(get, path = "/api/v1/llm/providers", params(super::ReadQuery), responses((status = 200, body = ProviderList)))]
pub(super) async fn list_providers(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<super::ReadQuery>, QueryRejection>,
) -> Result<Json<ProviderList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    control.read_barrier(consistency(query.stale)).await?;
    Ok(Json(control.state.with_state(|state| {
        ProviderList {
            providers: state
                .providers()
                .map(|provider| ProviderView {
                    has_key: state.provider_key(&provider.name).is_some(),
                    provider: provider.clone(),
                })
                .collect(),
        }
    })))
}

/// Remove a model provider (its key with it); calls to its models fail from then on.
#[utoipa::path(
    delete,
    path = "/api/v1/llm/providers/{provider}",
    params(("provider" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody))
)]
pub(super) async fn remove_provider(
    State(control): State<Arc<ControlPlane>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    check_name("provider", &provider)?;
    let request = control.request(
        Command::RemoveProvider { name: provider },
        idempotency_key(&headers)?,
    );
    control
        .write(request)
        .await?
        .outcome
        .map_err(command_error)?;
    Ok(StatusCode::NO_CONTENT)
}

fn budget(body: BudgetBody) -> Result<Budget, ApiError> {
    if body.max_tokens == Some(0) || body.max_cost_nanos == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_budget",
            "a limit is at least 1 (send null for none)",
        ));
    }
    Ok(Budget {
        max_tokens: body.max_tokens,
        max_cost_nanos: body.max_cost_nanos,
    })
}

/// Set a task's budget (replacing it); clears a refusal it caused.
#[utoipa::path(
    put,
    path = "/api/v1/tasks/{id}/budget",
    params(("id" = String, Path)),
    request_body = BudgetBody,
    responses((status = 200, body = Task))
)]
pub(super) async fn set_task_budget(
    State(control): State<Arc<ControlPlane>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<BudgetBody>,
) -> Result<Json<Task>, ApiError> {
    validate_id(&id)?;
    let command = Command::SetBudget {
        scope: BudgetScope::Task(id),
        budget: budget(body)?,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    match control
        .write(request)
        .await?
        .outcome
        .map_err(command_error)?
    {
        Applied::Task { task } => Ok(Json(task)),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// Set a project's budget (replacing it): every task of the project together.
#[utoipa::path(
    put,
    path = "/api/v1/projects/{project}/budget",
    params(("project" = String, Path)),
    request_body = BudgetBody,
    responses((status = 200, body = Project))
)]
pub(super) async fn set_project_budget(
    State(control): State<Arc<ControlPlane>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<BudgetBody>,
) -> Result<Json<Project>, ApiError> {
    check_name("project", &project)?;
    let command = Command::SetBudget {
        scope: BudgetScope::Project(project),
        budget: budget(body)?,
    };
    let request = control.request(command, idempotency_key(&headers)?);
    match control
        .write(request)
        .await?
        .outcome
        .map_err(command_error)?
    {
        Applied::Project { project } => Ok(Json(project)),
        other => Err(ApiError::internal(format!("unexpected result {other:?}"))),
    }
}

/// Model usage, per task and model per hour, with the totals.
#[utoipa::path(get, path = "/api/v1/usage", params(UsageQuery), responses((status = 200, body = UsageView)))]
pub(super) async fn usage(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageView>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    if let Some(task) = &query.task {
        validate_id(task)?;
    }
    if let Some(project) = &query.project {
        check_name("project", project)?;
    }
    control.read_barrier(consistency(query.stale)).await?;
    let rows: Vec<UsageRow> = control.state.with_state(|state| {
        state
            .usage_rows(query.since_ms.unwrap_or(0))
            .filter(|row| query.task.as_ref().is_none_or(|task| &row.task_id == task))
            .filter(|row| {
                query
                    .project
                    .as_ref()
                    .is_none_or(|project| row.project.as_ref() == Some(project))
            })
            .cloned()
            .collect()
    });
    let mut totals = UsageTotals::default();
    for row in &rows {
        totals.add(&row.usage);
    }
    Ok(Json(UsageView { totals, rows }))
}
