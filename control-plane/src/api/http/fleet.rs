//! The fleet half of the HTTP API: nodes, capacity, desktops, cordon and
//! drain. Nodes are addressed by name (or id).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::HttpState;
use crate::api::http::body::JsonBody;
use crate::api::http::{command_error, consistency, idempotency_key, query_error, ReadQuery};
use crate::control::{now_ms, ControlPlane};
use crate::error::{ApiError, ErrorBody};
use crate::fleet::Fleet;
use crate::fleet::Usage;
use crate::state::State as FleetState;
use crate::types::Allocation;
use crate::types::{
    Applied, Command, Desktop, DesktopIntent, DesktopState, Drain, GpuCapabilities, Node,
    NodeStatus,
};

/// Default drain deadline, as Nomad's.
pub const DEFAULT_DRAIN_DEADLINE_SECS: u64 = 3600;
/// Longest drain deadline accepted (a week).
pub const MAX_DRAIN_DEADLINE_SECS: u64 = 7 * 24 * 3600;
/// Longest node name (or id) in a path.
pub const MAX_NAME_CHARS: usize = 64;

pub(crate) fn routes() -> Router<HttpState> {
    Router::new()
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(node_status).delete(remove_node))
        .route("/api/v1/nodes/{name}/eligibility", post(set_eligibility))
        .route(
            "/api/v1/nodes/{name}/drain",
            post(start_drain).delete(cancel_drain),
        )
        .route("/api/v1/capacity", get(capacity))
        .route("/api/v1/desktops", get(list_desktops))
        .route("/api/v1/gpus", get(gpu_info))
}

/// Capacity, allocation and what is free of one resource.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Amount {
    pub capacity: u64,
    pub allocated: u64,
    pub free: u64,
}

impl Amount {
    fn new(capacity: u64, allocated: u64) -> Amount {
        Amount {
            capacity,
            allocated,
            free: capacity.saturating_sub(allocated),
        }
    }

    fn add(&mut self, other: Amount) {
        self.capacity += other.capacity;
        self.allocated += other.allocated;
        self.free += other.free;
    }
}

/// One node in `node list`.
#[derive(Serialize, ToSchema)]
pub struct NodeSummary {
    pub id: String,
    pub name: String,
    /// `ready`, `down` or `initializing`.
    pub status: NodeStatus,
    /// `eligible` or `ineligible` for new desktops.
    pub eligibility: &'static str,
    pub draining: bool,
    pub drain: Option<Drain>,
    pub drained_at_ms: Option<u64>,
    pub desktops: Amount,
    pub cpu_millis: Amount,
    pub memory_bytes: Amount,
    pub gpu_memory_bytes: Amount,
    pub labels: std::collections::BTreeMap<String, String>,
    pub address: String,
    pub agent_version: String,
}

fn summary(node: &Node, allocation: Option<&Allocation>) -> NodeSummary {
    let gpu_capacity = node.gpus.iter().map(|gpu| gpu.memory_bytes).sum();
    let gpu_allocated = allocation.map_or(0, |a| a.gpu_memory_bytes.iter().sum());
    NodeSummary {
        id: node.id.clone(),
        name: node.name.clone(),
        status: node.status,
        eligibility: if node.eligible {
            "eligible"
        } else {
            "ineligible"
        },
        draining: node.drain.is_some(),
        drain: node.drain.clone(),
        drained_at_ms: node.drained_at_ms,
        desktops: Amount::new(
            u64::from(node.capacity.desktop_slots),
            allocation.map_or(0, |a| a.desktops.len() as u64),
        ),
        cpu_millis: Amount::new(
            node.capacity.cpu_millis,
            allocation.map_or(0, |a| a.cpu_millis),
        ),
        memory_bytes: Amount::new(
            node.capacity.memory_bytes,
            allocation.map_or(0, |a| a.memory_bytes),
        ),
        gpu_memory_bytes: Amount::new(gpu_capacity, gpu_allocated),
        labels: node.labels.clone(),
        address: node.address.clone(),
        agent_version: node.agent_version.clone(),
    }
}

/// One desktop as listed.
#[derive(Serialize, ToSchema)]
pub struct DesktopView {
    pub id: String,
    pub task: String,
    /// Node name; `null` while pending.
    pub node: Option<String>,
    pub state: DesktopState,
    pub intent: DesktopIntent,
    pub generation: u64,
    pub reason: Option<String>,
    pub gpu: Option<u32>,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu_memory_bytes: u64,
    /// Last reported use (only when the leader answers).
    pub usage: Option<Usage>,
}

fn desktop_view(state: &FleetState, desktop: &Desktop, usage: Option<Usage>) -> DesktopView {
    DesktopView {
        id: desktop.id.clone(),
        task: desktop.task_id.clone(),
        node: desktop
            .node_id
            .as_deref()
            .and_then(|id| state.node(id))
            .map(|node| node.name.clone()),
        state: desktop.state,
        intent: desktop.intent,
        generation: desktop.generation,
        reason: desktop.reason.clone(),
        gpu: desktop.gpu,
        cpu_millis: desktop.resources.cpu_millis,
        memory_bytes: desktop.resources.memory_bytes,
        gpu_memory_bytes: desktop.resources.gpu_memory_bytes,
        usage,
    }
}

fn find_node<'a>(state: &'a FleetState, name: &str) -> Result<&'a Node, ApiError> {
    state
        .node_by_name(name)
        .or_else(|| state.node(name))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no node named {name:?}; `flotilla node list` shows the nodes"
            ))
        })
}

fn validate_name(name: &str) -> Result<(), ApiError> {
    // Node names are `[a-z0-9-]`, ids UUIDs: both fit the API's id rule.
    if name.is_empty()
        || name.len() > MAX_NAME_CHARS
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("{name:?} is not a node name or id (1-{MAX_NAME_CHARS} of A-Z a-z 0-9 - _)"),
        ));
    }
    Ok(())
}

/// Every node with its capacity and allocation.
#[utoipa::path(
    get,
    path = "/api/v1/nodes",
    params(ReadQuery),
    responses((status = 200, body = Vec<NodeSummary>), (status = 400, body = ErrorBody))
)]
pub(crate) async fn list_nodes(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<Vec<NodeSummary>>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    control.read_barrier(consistency(query.stale)).await?;
    let mut nodes = control.state.with_state(|state| {
        state
            .nodes()
            .map(|node| summary(node, state.allocation(&node.id)))
            .collect::<Vec<_>>()
    });
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(nodes))
}

/// A node with its GPUs and desktops.
#[derive(Serialize, ToSchema)]
pub struct NodeDetail {
    #[serde(flatten)]
    pub node: NodeSummary,
    pub gpus: Vec<GpuDetail>,
    pub desktops_placed: Vec<DesktopView>,
    pub reserved: crate::types::NodeCapacity,
    pub disk_bytes: u64,
    pub registered_at_ms: u64,
    pub status_changed_at_ms: u64,
    /// When the leader last heard from it (only when the leader answers).
    pub last_heartbeat_ms: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct GpuDetail {
    #[serde(flatten)]
    pub gpu: crate::types::Gpu,
    pub allocation: Amount,
}

/// One node in detail.
#[utoipa::path(
    get,
    path = "/api/v1/nodes/{name}",
    params(("name" = String, Path), ReadQuery),
    responses((status = 200, body = NodeDetail), (status = 404, body = ErrorBody))
)]
pub(crate) async fn node_status(
    State(control): State<Arc<ControlPlane>>,
    State(fleet): State<Arc<Fleet>>,
    Path(name): Path<String>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<NodeDetail>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    validate_name(&name)?;
    control.read_barrier(consistency(query.stale)).await?;
    let node_id = control
        .state
        .with_state(|state| find_node(state, &name).map(|node| node.id.clone()))?;
    let usage = fleet.usage(&node_id);
    let last_heartbeat_ms = fleet.last_heartbeat_ms(&node_id);
    control.state.with_state(|state| {
        let node = find_node(state, &name)?;
        let allocation = state.allocation(&node.id);
        Ok(Json(NodeDetail {
            node: summary(node, allocation),
            gpus: node
                .gpus
                .iter()
                .enumerate()
                .map(|(index, gpu)| GpuDetail {
                    gpu: gpu.clone(),
                    allocation: Amount::new(
                        gpu.memory_bytes,
                        allocation
                            .and_then(|a| a.gpu_memory_bytes.get(index).copied())
                            .unwrap_or(0),
                    ),
                })
                .collect(),
            desktops_placed: state
                .node_desktops(&node.id)
                .into_iter()
                .map(|desktop| desktop_view(state, desktop, usage.get(&desktop.id).copied()))
                .collect(),
            reserved: node.reserved.clone(),
            disk_bytes: node.capacity.disk_bytes,
            registered_at_ms: node.registered_at_ms,
            status_changed_at_ms: node.status_changed_at_ms,
            last_heartbeat_ms,
        }))
    })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EligibilityBody {
    eligible: bool,
}

/// Cordon (`{"eligible": false}`) or uncordon a node.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{name}/eligibility",
    params(("name" = String, Path)),
    request_body = EligibilityBody,
    responses((status = 200, body = NodeSummary), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub(crate) async fn set_eligibility(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<EligibilityBody>,
) -> Result<Json<NodeSummary>, ApiError> {
    validate_name(&name)?;
    let id = control
        .state
        .with_state(|state| find_node(state, &name).map(|node| node.id.clone()))?;
    let command = Command::SetNodeEligibility {
        id,
        eligible: body.eligible,
    };
    node_outcome(&control, command, &headers).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainBody {
    /// Seconds until the remaining desktops are stopped (default 3600).
    #[serde(default, deserialize_with = "super::integer::optional")]
    #[schema(maximum = 604_800, nullable)]
    deadline_secs: Option<u64>,
    /// Stop everything now (deadline 0).
    #[serde(default)]
    force: bool,
    /// Desktops migrated at once (default 1).
    #[serde(default, deserialize_with = "super::integer::optional")]
    #[schema(minimum = 1, maximum = 4096, nullable)]
    max_parallel: Option<u32>,
}

/// Drain a node: it becomes ineligible and its desktops move elsewhere.
#[utoipa::path(
    post,
    path = "/api/v1/nodes/{name}/drain",
    params(("name" = String, Path)),
    request_body = DrainBody,
    responses((status = 200, body = NodeSummary), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub(crate) async fn start_drain(
    State(control): State<Arc<ControlPlane>>,
    State(fleet): State<Arc<Fleet>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    JsonBody { value: body, .. }: JsonBody<DrainBody>,
) -> Result<Json<NodeSummary>, ApiError> {
    validate_name(&name)?;
    let deadline_secs = if body.force {
        0
    } else {
        body.deadline_secs.unwrap_or(DEFAULT_DRAIN_DEADLINE_SECS)
    };
    if deadline_secs > MAX_DRAIN_DEADLINE_SECS {
        return Err(ApiError::bad_request(
            "invalid_deadline",
            format!("deadline must be at most {MAX_DRAIN_DEADLINE_SECS} seconds (a week)"),
        ));
    }
    let max_parallel = body.max_parallel.unwrap_or(1);
    if max_parallel == 0 || max_parallel > crate::api::grpc::node::MAX_DESKTOP_SLOTS {
        return Err(ApiError::bad_request(
            "invalid_max_parallel",
            format!(
                "max_parallel must be between 1 and {}",
                crate::api::grpc::node::MAX_DESKTOP_SLOTS
            ),
        ));
    }
    let id = control
        .state
        .with_state(|state| find_node(state, &name).map(|node| node.id.clone()))?;
    let command = Command::StartDrain {
        id,
        deadline_ms: now_ms() + deadline_secs * 1000,
        max_parallel,
    };
    let answer = node_outcome(&control, command, &headers).await;
    fleet.wake();
    answer
}

/// Cancel a node's drain; it stays ineligible until uncordoned.
#[utoipa::path(
    delete,
    path = "/api/v1/nodes/{name}/drain",
    params(("name" = String, Path)),
    responses((status = 200, body = NodeSummary), (status = 404, body = ErrorBody))
)]
pub(crate) async fn cancel_drain(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<NodeSummary>, ApiError> {
    validate_name(&name)?;
    let id = control
        .state
        .with_state(|state| find_node(state, &name).map(|node| node.id.clone()))?;
    node_outcome(&control, Command::CancelDrain { id }, &headers).await
}

/// Forget a node that is down (decommissioned).
#[utoipa::path(
    delete,
    path = "/api/v1/nodes/{name}",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
pub(crate) async fn remove_node(
    State(control): State<Arc<ControlPlane>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<axum::http::StatusCode, ApiError> {
    validate_name(&name)?;
    let id = control
        .state
        .with_state(|state| find_node(state, &name).map(|node| node.id.clone()))?;
    let request = control.request(Command::RemoveNode { id }, idempotency_key(&headers)?);
    match control.write(request).await?.outcome {
        Ok(_) => Ok(axum::http::StatusCode::NO_CONTENT),
        Err(error) => Err(command_error(error)),
    }
}

async fn node_outcome(
    control: &ControlPlane,
    command: Command,
    headers: &HeaderMap,
) -> Result<Json<NodeSummary>, ApiError> {
    let request = control.request(command, idempotency_key(headers)?);
    match control.write(request).await?.outcome {
        Ok(Applied::Node { node }) => {
            Ok(Json(control.state.with_state(|state| {
                summary(&node, state.allocation(&node.id))
            })))
        }
        Ok(other) => Err(ApiError::internal(format!(
            "unexpected result {other:?} for a node command"
        ))),
        Err(error) => Err(command_error(error)),
    }
}

#[derive(Serialize, ToSchema)]
pub struct CapacityView {
    pub nodes: Vec<NodeCapacityView>,
    /// Sum over nodes that are `ready`.
    pub total: Totals,
}

#[derive(Serialize, ToSchema, Default)]
pub struct Totals {
    pub cpu_millis: Amount,
    pub memory_bytes: Amount,
    pub gpu_memory_bytes: Amount,
    pub desktops: Amount,
    pub nodes: u64,
}

#[derive(Serialize, ToSchema)]
pub struct NodeCapacityView {
    pub name: String,
    pub status: NodeStatus,
    pub eligibility: &'static str,
    pub cpu_millis: Amount,
    pub memory_bytes: Amount,
    pub gpu_memory_bytes: Amount,
    pub desktops: Amount,
    pub gpus: Vec<GpuCapacityView>,
}

#[derive(Serialize, ToSchema)]
pub struct GpuCapacityView {
    pub index: u32,
    pub name: String,
    pub memory_bytes: Amount,
}

/// Capacity, allocation and free room per node, per GPU and in total.
#[utoipa::path(
    get,
    path = "/api/v1/capacity",
    params(ReadQuery),
    responses((status = 200, body = CapacityView))
)]
pub(crate) async fn capacity(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<CapacityView>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    control.read_barrier(consistency(query.stale)).await?;
    let view = control.state.with_state(|state| {
        let mut total = Totals::default();
        let mut nodes = Vec::new();
        for node in state.nodes() {
            let allocation = state.allocation(&node.id);
            let line = summary(node, allocation);
            if node.status == NodeStatus::Ready {
                total.cpu_millis.add(line.cpu_millis);
                total.memory_bytes.add(line.memory_bytes);
                total.gpu_memory_bytes.add(line.gpu_memory_bytes);
                total.desktops.add(line.desktops);
                total.nodes += 1;
            }
            nodes.push(NodeCapacityView {
                name: line.name,
                status: line.status,
                eligibility: line.eligibility,
                cpu_millis: line.cpu_millis,
                memory_bytes: line.memory_bytes,
                gpu_memory_bytes: line.gpu_memory_bytes,
                desktops: line.desktops,
                gpus: node
                    .gpus
                    .iter()
                    .enumerate()
                    .map(|(index, gpu)| GpuCapacityView {
                        index: gpu.index,
                        name: gpu.name.clone(),
                        memory_bytes: Amount::new(
                            gpu.memory_bytes,
                            allocation
                                .and_then(|a| a.gpu_memory_bytes.get(index).copied())
                                .unwrap_or(0),
                        ),
                    })
                    .collect(),
            });
        }
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        CapacityView { nodes, total }
    });
    Ok(Json(view))
}

#[derive(Serialize, ToSchema)]
pub struct DesktopList {
    pub revision: u64,
    pub desktops: Vec<DesktopView>,
}

/// Every desktop: where it should run and what its node says it does.
#[utoipa::path(
    get,
    path = "/api/v1/desktops",
    params(ReadQuery),
    responses((status = 200, body = DesktopList))
)]
pub(crate) async fn list_desktops(
    State(control): State<Arc<ControlPlane>>,
    query: Result<Query<ReadQuery>, QueryRejection>,
) -> Result<Json<DesktopList>, ApiError> {
    let Query(query) = query.map_err(query_error)?;
    control.read_barrier(consistency(query.stale)).await?;
    Ok(Json(control.state.with_state(|state| {
        DesktopList {
            revision: state.revision(),
            desktops: state
                .desktops()
                .map(|desktop| desktop_view(state, desktop, None))
                .collect(),
        }
    })))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GpuQuery {
    /// Only this node's GPUs (its name or id).
    #[param(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]*$")]
    pub node: Option<String>,
}

/// One desktop's GPU memory as gpud's ledger charges it.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GpuDesktopView {
    pub desktop: String,
    pub charged_bytes: u64,
    pub budget_bytes: u64,
}

/// One GPU of one node: what it is, what gpud opened, and its desktops.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GpuInfoView {
    pub node: String,
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub driver: String,
    pub memory_bytes: u64,
    pub cpu_implementation: bool,
    /// None: gpud could not open it (or does not run); the CPU renders.
    pub capabilities: Option<GpuCapabilities>,
    pub desktops: Vec<GpuDesktopView>,
    pub charged_bytes: u64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct GpuInfoList {
    pub gpus: Vec<GpuInfoView>,
    /// Desktops gpud serves on a node without a GPU (the CPU renders).
    pub cpu_rendered: Vec<GpuDesktopView>,
}

/// Each GPU's capabilities and, per desktop, the GPU memory gpud's
/// ledger charges it and its budget (as the node agents last reported;
/// answered by the leader, which holds the reports).
#[utoipa::path(
    get,
    path = "/api/v1/gpus",
    params(GpuQuery),
    responses((status = 200, body = GpuInfoList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
pub(crate) async fn gpu_info(
    State(control): State<Arc<ControlPlane>>,
    State(fleet): State<Arc<Fleet>>,
    headers: HeaderMap,
    query: Result<Query<GpuQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Query(query) = query.map_err(query_error)?;
    if let Some(name) = &query.node {
        validate_name(name)?;
    }
    if !control.is_leader() {
        // The usage reports live in the leader's memory.
        let path = match &query.node {
            Some(name) => format!("/api/v1/gpus?node={}", urlencode(name)),
            None => "/api/v1/gpus".to_owned(),
        };
        return crate::api::http::exec::forward_get(&control, &path, &headers).await;
    }
    control.read_barrier(consistency(false)).await?;
    let nodes: Vec<Node> = control.state.with_state(|state| match &query.node {
        Some(name) => find_node(state, name).map(|node| vec![node.clone()]),
        None => Ok(state.nodes().cloned().collect()),
    })?;
    let mut list = GpuInfoList {
        gpus: Vec::new(),
        cpu_rendered: Vec::new(),
    };
    for node in nodes {
        let mut usage: Vec<(String, Usage)> = fleet.usage(&node.id).into_iter().collect();
        usage.sort_by(|a, b| a.0.cmp(&b.0));
        let on = |index: Option<u32>| -> Vec<GpuDesktopView> {
            usage
                .iter()
                .filter(|(_, usage)| usage.gpu_index.is_some() && usage.gpu_index == index)
                .map(|(desktop, usage)| GpuDesktopView {
                    desktop: desktop.clone(),
                    charged_bytes: usage.gpu_charged_bytes,
                    budget_bytes: usage.gpu_budget_bytes,
                })
                .collect()
        };
        if node.gpus.is_empty() {
            list.cpu_rendered.extend(on(Some(0)));
        }
        for (position, gpu) in node.gpus.iter().enumerate() {
            let desktops = on(Some(position as u32));
            list.gpus.push(GpuInfoView {
                node: node.name.clone(),
                index: gpu.index,
                uuid: gpu.uuid.clone(),
                name: gpu.name.clone(),
                driver: gpu.driver.clone(),
                memory_bytes: gpu.memory_bytes,
                cpu_implementation: gpu.cpu_implementation,
                capabilities: gpu.capabilities.clone(),
                charged_bytes: desktops.iter().map(|d| d.charged_bytes).sum(),
                desktops,
            });
        }
    }
    Ok(Json(list).into_response())
}

/// Everything but RFC 3986's unreserved characters is escaped.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a node name for a query string.
pub(crate) fn urlencode(text: &str) -> String {
    utf8_percent_encode(text, QUERY_VALUE).to_string()
}
