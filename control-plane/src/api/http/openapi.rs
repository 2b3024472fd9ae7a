//! The OpenAPI document (`/api/v1/openapi.json`): each handler's own
//! annotations, plus what every route shares, added here in one place so
//! that no route can forget it: the two credentials (bearer token, board
//! cookie), and the answers the middleware and extractors give before a
//! handler runs (401 without a credential, 400 for a bad path, query or
//! body, 413/415 for bodies, 503 without a leader or quorum).
//!
//! **Invariant:** every status a route can answer is in its document
//! (schemathesis `--checks all` runs against `flotilla dev` in CI).

use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::schemas::string;
use super::{cluster, exec, fleet, llm, projects, pulls, session, stream, tasks};
use crate::error::ErrorBody;
use crate::types::{Change, Column, DesktopResources, Task};

#[derive(OpenApi)]
#[openapi(
    info(title = "Flotilla control plane", version = "1"),
    modifiers(&CommonAnswers),
    paths(
        session::sign_in,
        session::sign_out,
        session::mint_code,
        stream::thumbnail,
        tasks::create_task,
        tasks::create_tasks,
        tasks::list_tasks,
        tasks::get_task,
        tasks::update_task,
        tasks::move_task,
        tasks::delete_task,
        cluster::cluster_status,
        cluster::remove_member,
        cluster::watch,
        fleet::list_nodes,
        fleet::node_status,
        fleet::set_eligibility,
        fleet::start_drain,
        fleet::cancel_drain,
        fleet::remove_node,
        fleet::capacity,
        fleet::list_desktops,
        fleet::gpu_info,
        projects::create_project,
        projects::list_projects,
        projects::get_project,
        projects::create_repo,
        projects::get_repo,
        pulls::open_pull,
        pulls::list_pulls,
        pulls::get_pull,
        pulls::pull_diff,
        pulls::merge_pull,
        pulls::close_pull,
        llm::add_provider,
        llm::list_providers,
        llm::remove_provider,
        llm::set_task_budget,
        llm::set_project_budget,
        llm::usage,
        exec::screenshot,
        exec::input,
        exec::exec,
        exec::logs
    ),
    components(schemas(
        Task,
        Column,
        tasks::TaskList,
        tasks::TaskView,
        tasks::TaskDesktop,
        DesktopResources,
        tasks::ResourcesBody,
        tasks::CreateTaskBody,
        tasks::CreateTasksBody,
        tasks::CreatedTasks,
        tasks::UpdateTaskBody,
        tasks::MoveTaskBody,
        cluster::ClusterView,
        cluster::MemberView,
        ErrorBody,
        Change,
        super::input::InputBody,
        super::input::InputRequest,
        super::input::KeyName,
        super::input::KeyAction,
        crate::types::Project,
        projects::CreateProjectBody,
        projects::CreateRepoBody,
        projects::ProjectList,
        projects::ProjectView,
        projects::RepoView,
        pulls::OpenPullBody,
        pulls::MergeBody,
        pulls::PullList,
        pulls::PullView,
        pulls::FileStat,
        pulls::FileDiffView,
        pulls::HunkView,
        pulls::DiffLineView,
        pulls::PullDiff,
        crate::types::PullRequest,
        crate::types::PullState,
        crate::types::MergeStyle,
        crate::types::Upstream,
        llm::PriceBody,
        llm::ModelBody,
        llm::AddProviderBody,
        llm::ProviderView,
        llm::ProviderList,
        llm::BudgetBody,
        llm::UsageView,
        crate::types::Provider,
        crate::types::ProviderKind,
        crate::types::ModelRoute,
        crate::types::Price,
        crate::types::Budget,
        crate::types::UsageTotals,
        crate::types::UsageRow,
        session::SignIn,
        session::TokenSignIn,
        session::CodeSignIn,
        session::MintedCode,
        exec::ExecBody,
        exec::ExecLine
    ))
)]
pub struct ApiDoc;

/// Path parameters as the handlers parse them: ids (`validate_id`), node
/// names or ids (`fleet::validate_name`), server ids and pull request
/// numbers (integers).
fn path_parameter_schema(path: &str, name: &str) -> Option<Schema> {
    let schema: Schema = match name {
        "id" if path.starts_with("/api/v1/cluster/members/") => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(0))
            .build()
            .into(),
        "number" => ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .build()
            .into(),
        "id" => string(1, super::MAX_ID_CHARS, "^[A-Za-z0-9_-]*$".to_owned()).into(),
        "provider" => string(
            1,
            crate::types::MAX_PROJECT_NAME,
            "^[A-Za-z0-9_-]*$".to_owned(),
        )
        .into(),
        "project" => string(
            1,
            crate::types::MAX_PROJECT_NAME,
            "^[A-Za-z0-9_-]*$".to_owned(),
        )
        .into(),
        "name" => string(
            1,
            super::fleet::MAX_NAME_CHARS,
            "^[A-Za-z0-9_-]*$".to_owned(),
        )
        .into(),
        _ => return None,
    };
    Some(schema)
}

/// Adds the shared credentials and answers to every operation.
struct CommonAnswers;

impl Modify for CommonAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(session::COOKIE))),
        );
        let required = [
            utoipa::openapi::security::SecurityRequirement::new::<_, [&str; 0], &str>("bearer", []),
            utoipa::openapi::security::SecurityRequirement::new::<_, [&str; 0], &str>("cookie", []),
        ];
        for (path, item) in openapi.paths.paths.iter_mut() {
            let has_path_params = path.contains('{');
            // Signing in and out is how a credential is obtained.
            let public = path == "/api/v1/session";
            for operation in [
                item.get.as_mut(),
                item.post.as_mut(),
                item.patch.as_mut(),
                item.put.as_mut(),
                item.delete.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                complete(operation, has_path_params, public);
                for parameter in operation.parameters.iter_mut().flatten() {
                    if parameter.parameter_in == ParameterIn::Path {
                        if let Some(schema) = path_parameter_schema(path, &parameter.name) {
                            parameter.schema = Some(schema.into());
                        }
                    }
                }
                if !public {
                    operation.security = Some(required.to_vec());
                }
            }
        }
    }
}

fn complete(operation: &mut Operation, has_path_params: bool, public: bool) {
    let has_query = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = operation.request_body.is_some();
    if !public {
        add(operation, "401", "no credential, or not a valid one");
    }
    if has_path_params || has_query || has_body {
        add(operation, "400", "a malformed path, query or body");
    }
    if has_path_params {
        add(operation, "404", "no such resource");
    }
    if has_body {
        add(operation, "413", "the body is over the size limit");
        add(operation, "415", "the body is not sent as JSON");
    }
    add(
        operation,
        "503",
        "no leader or quorum, or the server is stopping: retry",
    );
}

fn add(operation: &mut Operation, status: &str, description: &str) {
    operation
        .responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        });
}
