//! The gRPC door node agents use: register, heartbeat, watch assignments.
//! Every field an agent sends is checked before it reaches the log.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::node as pb;
use flotilla_proto::node::node_agent_server::{NodeAgent, NodeAgentServer};
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status};

use crate::auth::bearer_from_metadata;
use crate::control::{Access, ControlPlane};
use crate::error::ApiError;
use crate::fleet::{self, Fleet, ReportedDesktop, Usage};
use crate::tunnel::Tunnels;
use crate::types::{
    validate_label, validate_node_name, Applied, Command, CommandError, DesktopIntent,
    DesktopReport, DesktopState, Gpu, GpuCapabilities, NodeCapacity, NodeRegistration, Repo,
};

/// Metadata key naming the leader's address on an UNAVAILABLE answer.
pub const LEADER_METADATA: &str = "flotilla-leader";
pub const MAX_DESKTOP_SLOTS: u32 = 4096;
const MAX_GPUS: usize = 64;
const MAX_LABELS: usize = 64;
const MAX_REPORTS: usize = 10_000;
const MAX_TEXT: usize = 256;
const MAX_REASON: usize = 1024;

pub fn node_service(
    control: Arc<ControlPlane>,
    fleet: Arc<Fleet>,
    tunnels: Arc<Tunnels>,
) -> NodeAgentServer<NodeService> {
    NodeAgentServer::new(NodeService {
        control,
        fleet,
        tunnels,
    })
}

type TunnelStream = Pin<Box<dyn Stream<Item = Result<pb::TunnelDown, Status>> + Send>>;

pub struct NodeService {
    control: Arc<ControlPlane>,
    fleet: Arc<Fleet>,
    tunnels: Arc<Tunnels>,
}

fn authorize<T>(control: &ControlPlane, request: &Request<T>) -> Result<(), Status> {
    control
        .authorize(bearer_from_metadata(request.metadata()), Access::NodeJoin)
        .map_err(Status::from)
}

fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message.into())
}

/// UNAVAILABLE with a pointer to the leader, for leader-only calls.
fn not_leader(control: &ControlPlane, error: ApiError) -> Status {
    let mut status = Status::unavailable(error.message);
    if let Some(addr) = control.leader_addr() {
        if let Ok(value) = MetadataValue::try_from(addr.as_str()) {
            status.metadata_mut().insert(LEADER_METADATA, value);
        }
    }
    status
}

pub fn validate_node_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(invalid(format!(
            "node_id {id:?} must be 1-64 characters of letters, digits and '-'"
        )));
    }
    Ok(())
}

fn text(field: &str, value: &str, max: usize) -> Result<String, Status> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{field} must be at most {max} bytes of printable text"
        )));
    }
    Ok(value.to_owned())
}

fn capacity(field: &str, capacity: Option<pb::Capacity>) -> Result<NodeCapacity, Status> {
    let capacity = capacity.unwrap_or_default();
    if capacity.desktop_slots > MAX_DESKTOP_SLOTS {
        return Err(invalid(format!(
            "{field}.desktop_slots must be at most {MAX_DESKTOP_SLOTS}"
        )));
    }
    if capacity.cpu_millis > crate::types::MAX_CPU_MILLIS * 64
        || capacity.memory_bytes > crate::types::MAX_MEMORY_BYTES * 64
    {
        return Err(invalid(format!("{field} is implausibly large")));
    }
    Ok(NodeCapacity {
        cpu_millis: capacity.cpu_millis,
        memory_bytes: capacity.memory_bytes,
        disk_bytes: capacity.disk_bytes,
        desktop_slots: capacity.desktop_slots,
    })
}

/// Checks a registration and turns it into the replicated form.
pub fn registration(
    request: pb::RegisterRequest,
    address: String,
) -> Result<NodeRegistration, Status> {
    validate_node_id(&request.node_id)?;
    validate_node_name(&request.name).map_err(|error| invalid(error.to_string()))?;
    if request.labels.len() > MAX_LABELS {
        return Err(invalid(format!("at most {MAX_LABELS} labels")));
    }
    for (key, value) in &request.labels {
        validate_label(key, value).map_err(|error| invalid(error.to_string()))?;
    }
    let capacity_value = capacity("capacity", request.capacity)?;
    if capacity_value.cpu_millis == 0
        || capacity_value.memory_bytes == 0
        || capacity_value.desktop_slots == 0
    {
        return Err(invalid(
            "capacity.cpu_millis, capacity.memory_bytes and capacity.desktop_slots must be above 0",
        ));
    }
    if request.gpus.len() > MAX_GPUS {
        return Err(invalid(format!("at most {MAX_GPUS} GPUs")));
    }
    let mut gpus = Vec::with_capacity(request.gpus.len());
    for (position, gpu) in request.gpus.into_iter().enumerate() {
        if gpu.index as usize != position {
            return Err(invalid("gpus must be listed in index order from 0"));
        }
        gpus.push(Gpu {
            index: gpu.index,
            name: text("gpu name", &gpu.name, MAX_TEXT)?,
            vendor_id: gpu.vendor_id,
            device_id: gpu.device_id,
            driver: text("gpu driver", &gpu.driver, MAX_TEXT)?,
            uuid: text("gpu uuid", &gpu.uuid, MAX_TEXT)?,
            memory_bytes: gpu.memory_bytes,
            cpu_implementation: gpu.cpu_implementation,
            capabilities: match gpu.capabilities {
                Some(c) => Some(GpuCapabilities {
                    api_version: text("gpu api_version", &c.api_version, 32)?,
                    queue_count: c.queue_count,
                    external_memory_fd: c.external_memory_fd,
                    dma_buf: c.dma_buf,
                    drm_format_modifiers: c.drm_format_modifiers,
                    memory_budget: c.memory_budget,
                    external_semaphore_fd: c.external_semaphore_fd,
                    external_fence_fd: c.external_fence_fd,
                    video_encode: c.video_encode,
                }),
                None => None,
            },
        });
    }
    Ok(NodeRegistration {
        id: request.node_id,
        name: request.name,
        labels: request.labels.into_iter().collect::<BTreeMap<_, _>>(),
        capacity: capacity_value,
        reserved: capacity("reserved", request.reserved)?,
        gpus,
        agent_version: text("agent_version", &request.agent_version, MAX_TEXT)?,
        address,
    })
}

fn report(status: pb::DesktopStatus) -> Result<ReportedDesktop, Status> {
    if status.desktop_id.is_empty() || status.desktop_id.len() > 128 {
        return Err(invalid("desktop_id must be 1-128 bytes"));
    }
    let state = DesktopState::parse(&status.state).ok_or_else(|| {
        invalid(format!(
            "unknown desktop state {:?}; expected pending, starting, running, stopping, stopped or failed",
            status.state
        ))
    })?;
    let reason = if status.reason.is_empty() {
        None
    } else {
        // Shown in operators' terminals: no control characters.
        let mut reason: String = status
            .reason
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        if reason.len() > MAX_REASON {
            let mut cut = MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        Some(reason)
    };
    let usage = status.usage.unwrap_or_default();
    Ok(ReportedDesktop {
        report: DesktopReport {
            desktop_id: status.desktop_id,
            generation: status.generation,
            state,
            reason,
        },
        usage: Usage {
            cpu_usec: usage.cpu_usec,
            memory_bytes: usage.memory_bytes,
            pids: usage.pids,
            gpu_index: usage.gpu_index,
            gpu_charged_bytes: usage.gpu_charged_bytes,
            gpu_budget_bytes: usage.gpu_budget_bytes,
        },
    })
}

/// The assignments of `node_id` as the agent sees them.
fn assignments(control: &ControlPlane, node_id: &str) -> pb::Assignments {
    control.state.with_state(|state| pb::Assignments {
        revision: state.revision(),
        desktops: state
            .node_desktops(node_id)
            .into_iter()
            .map(|desktop| pb::Assignment {
                desktop_id: desktop.id.clone(),
                task_id: desktop.task_id.clone(),
                generation: desktop.generation,
                run: desktop.intent == DesktopIntent::Run,
                cpu_millis: desktop.resources.cpu_millis,
                memory_bytes: desktop.resources.memory_bytes,
                gpu_memory_bytes: desktop.resources.gpu_memory_bytes,
                gpu: desktop.gpu,
                egress: desktop.resources.egress.as_str().to_owned(),
                apps: desktop.resources.profile.apps.clone(),
                keyboard_layout: desktop.resources.profile.keyboard_layout.clone(),
                keyboard_variant: desktop.resources.profile.keyboard_variant.clone(),
                desktop_token: crate::auth::desktop_token(
                    control.cluster_secret(),
                    &desktop.id,
                    desktop.generation,
                ),
                repository: state
                    .task_repo(&desktop.task_id)
                    .map(|repo| Repo::key(&repo.project, &repo.name))
                    .unwrap_or_default(),
            })
            .collect(),
    })
}

type AssignmentStream = Pin<Box<dyn Stream<Item = Result<pb::Assignments, Status>> + Send>>;

#[tonic::async_trait]
impl NodeAgent for NodeService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        authorize(&self.control, &request)?;
        let address = request
            .extensions()
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0.ip().to_string())
            .or_else(|| request.remote_addr().map(|addr| addr.ip().to_string()))
            .unwrap_or_default();
        let registration = registration(request.into_inner(), address)?;
        let name = registration.name.clone();
        let command = Command::RegisterNode { registration };
        let response = self
            .control
            .write(self.control.request(command, None))
            .await?;
        match response.outcome {
            Ok(Applied::Node { .. }) => {
                tracing::info!(node = %name, "node registered");
                self.fleet.wake();
                Ok(Response::new(pb::RegisterResponse {
                    revision: response.revision,
                }))
            }
            Ok(other) => Err(Status::internal(format!("unexpected answer {other:?}"))),
            Err(error @ CommandError::NodeNameTaken { .. }) => {
                Err(Status::already_exists(error.to_string()))
            }
            Err(error) => Err(Status::failed_precondition(error.to_string())),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        authorize(&self.control, &request)?;
        let request = request.into_inner();
        validate_node_id(&request.node_id)?;
        if request.desktops.len() > MAX_REPORTS {
            return Err(invalid(format!(
                "at most {MAX_REPORTS} desktops per heartbeat"
            )));
        }
        let reported = request
            .desktops
            .into_iter()
            .map(report)
            .collect::<Result<Vec<_>, _>>()?;
        if !self.control.is_leader() {
            return Err(not_leader(
                &self.control,
                ApiError::unavailable("heartbeats go to the leader"),
            ));
        }
        match fleet::driver::heartbeat(&self.control, &self.fleet, &request.node_id, reported).await
        {
            Ok(answer) => {
                let ttl_ms = answer.ttl.as_millis() as u64;
                Ok(Response::new(pb::HeartbeatResponse {
                    ttl_ms,
                    next_heartbeat_ms: next_heartbeat_ms(answer.ttl),
                    revision: answer.revision,
                }))
            }
            Err(error) if error.kind == crate::error::ErrorKind::Unavailable => {
                Err(not_leader(&self.control, error))
            }
            Err(error) => Err(error.into()),
        }
    }

    type WatchAssignmentsStream = AssignmentStream;
    type TunnelStream = TunnelStream;

    async fn tunnel(
        &self,
        request: Request<tonic::Streaming<pb::TunnelUp>>,
    ) -> Result<Response<TunnelStream>, Status> {
        authorize(&self.control, &request)?;
        if !self.control.is_leader() {
            return Err(not_leader(
                &self.control,
                ApiError::unavailable("tunnels go to the leader"),
            ));
        }
        let mut up = request.into_inner();
        let hello = up
            .message()
            .await?
            .ok_or_else(|| invalid("the tunnel closed before its hello"))?;
        validate_node_id(&hello.node_id)?;
        if hello.session != 0 || hello.event.is_some() {
            return Err(invalid("the first tunnel message is a hello: node_id only"));
        }
        let node_id = hello.node_id;
        let known = self
            .control
            .state
            .with_state(|state| state.node(&node_id).is_some());
        if !known {
            return Err(Status::not_found(format!(
                "no node with id {node_id:?}; register first"
            )));
        }
        let tunnels = self.tunnels.clone();
        let (epoch, down) = tunnels.connect(&node_id);
        let control = self.control.clone();
        tokio::spawn(async move {
            let stopped = control.stopped();
            tokio::pin!(stopped);
            loop {
                let message = tokio::select! {
                    message = up.message() => message,
                    _ = &mut stopped => break,
                    // A deposed leader lets go, so the agent finds the new one.
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if control.is_leader() { continue } else { break }
                    }
                };
                match message {
                    Ok(Some(message)) if message.node_id == node_id => {
                        if let Err(error) = tunnels.deliver(&node_id, message).await {
                            tracing::warn!(node = %node_id, %error, "closing a node's tunnel");
                            break;
                        }
                    }
                    Ok(Some(_)) => {
                        tracing::warn!(node = %node_id, "a tunnel message named another node: closing the tunnel");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            tunnels.disconnect(&node_id, epoch);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(down))))
    }

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Response<AssignmentStream>, Status> {
        authorize(&self.control, &request)?;
        let request = request.into_inner();
        validate_node_id(&request.node_id)?;
        if !self.control.is_leader() {
            return Err(not_leader(
                &self.control,
                ApiError::unavailable("assignments are served by the leader"),
            ));
        }
        let known = self
            .control
            .state
            .with_state(|state| state.node(&request.node_id).is_some());
        if !known {
            return Err(Status::not_found(format!(
                "no node with id {:?}; register first",
                request.node_id
            )));
        }
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(stream_assignments(
            self.control.clone(),
            request.node_id,
            request.after_revision,
            sender,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

/// Heartbeat every quarter lease, so three may be lost before the agent's
/// own half-lease fence trips.
fn next_heartbeat_ms(ttl: Duration) -> u64 {
    (ttl.as_millis() as u64 / 4).max(50)
}

/// Sends the node's whole assignment set now and whenever it changes,
/// never older than `after_revision`, until the agent hangs up or this
/// server stops leading.
async fn stream_assignments(
    control: Arc<ControlPlane>,
    node_id: String,
    after_revision: u64,
    sender: mpsc::Sender<Result<pb::Assignments, Status>>,
) {
    let mut feed = control.state.subscribe();
    let stopped = control.stopped();
    tokio::pin!(stopped);
    let mut last_sent: Option<Vec<pb::Assignment>> = None;
    loop {
        if !control.is_leader() {
            let _ = sender
                .send(Err(not_leader(
                    &control,
                    ApiError::unavailable("this server stopped leading"),
                )))
                .await;
            return;
        }
        let current = assignments(&control, &node_id);
        let caught_up = current.revision >= after_revision;
        if caught_up && last_sent.as_ref() != Some(&current.desktops) {
            last_sent = Some(current.desktops.clone());
            if sender.send(Ok(current)).await.is_err() {
                return;
            }
        }
        // Wake on any change (a lag is a change too) or every second to
        // re-check leadership and notice a closed stream.
        tokio::select! {
            received = feed.recv() => {
                if let Err(broadcast::error::RecvError::Closed) = received {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = sender.closed() => return,
            _ = &mut stopped => {
                let _ = sender.send(Err(Status::unavailable("the server is shutting down"))).await;
                return;
            }
        }
    }
}
