//! Nodes as the cluster records them: capacity, GPUs, health, drains,
//! and what their desktops hold of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ValidationError;

/// Label keys: 1–63 characters of `[A-Za-z0-9._/-]`, starting alphanumeric;
/// values: up to 63 of the same, possibly empty.
pub fn validate_label(key: &str, value: &str) -> Result<(), ValidationError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if key.is_empty()
        || key.len() > 63
        || !key.chars().all(allowed)
        || !key.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(ValidationError::LabelKey {
            key: key.to_owned(),
        });
    }
    if value.len() > 63 || !value.chars().all(allowed) {
        return Err(ValidationError::LabelValue {
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Node names: 1–63 characters of `[a-z0-9-]`, like a host name.
pub fn validate_node_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.starts_with('-')
    {
        return Err(ValidationError::NodeName {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// What a node offers desktops: its host minus what is reserved for the
/// host itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NodeCapacity {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Free space under the node agent's data directory at registration.
    pub disk_bytes: u64,
    pub desktop_slots: u32,
}

/// One GPU as its node agent enumerated it (Vulkan physical device).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Gpu {
    pub index: u32,
    pub name: String,
    pub vendor_id: u32,
    pub device_id: u32,
    pub driver: String,
    pub uuid: String,
    /// Device-local memory.
    pub memory_bytes: u64,
    /// A CPU implementation such as lavapipe.
    pub cpu_implementation: bool,
    /// What gpud opened on it; None when gpud could not open it (the CPU
    /// renders for its desktops) or does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<GpuCapabilities>,
}

/// A GPU's capabilities as gpud opened it (`flotilla gpu info`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuCapabilities {
    /// `major.minor.patch` of the device's Vulkan API.
    pub api_version: String,
    pub queue_count: u32,
    pub external_memory_fd: bool,
    pub dma_buf: bool,
    pub drm_format_modifiers: bool,
    pub memory_budget: bool,
    pub external_semaphore_fd: bool,
    pub external_fence_fd: bool,
    pub video_encode: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    /// Registered; no heartbeat yet.
    #[default]
    Initializing,
    Ready,
    /// Silent past its heartbeat deadline.
    Down,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Initializing => "initializing",
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

/// A drain in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Drain {
    pub started_at_ms: u64,
    pub deadline_ms: u64,
    /// Desktops migrated at once.
    pub max_parallel: u32,
}

/// What a node agent registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Stable across restarts: kept in the agent's data directory.
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: NodeCapacity,
    pub reserved: NodeCapacity,
    pub gpus: Vec<Gpu>,
    pub agent_version: String,
    /// Where the agent reaches the control plane from (for people).
    pub address: String,
}

/// A GPU host as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub capacity: NodeCapacity,
    /// Held back for the host, already subtracted from `capacity`.
    #[serde(default)]
    pub reserved: NodeCapacity,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub status: NodeStatus,
    /// False once cordoned or drained.
    #[serde(default = "yes")]
    pub eligible: bool,
    #[serde(default)]
    pub drain: Option<Drain>,
    /// When the last drain finished (every desktop gone).
    #[serde(default)]
    pub drained_at_ms: Option<u64>,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub registered_at_ms: u64,
    #[serde(default)]
    pub status_changed_at_ms: u64,
    #[serde(default)]
    pub revision: u64,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatusUpdate {
    pub id: String,
    pub status: NodeStatus,
}

/// What the desktops placed on a node hold of it. A desktop holds its share
/// from placement until its node reports it stopped (or the node is down).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// GPU memory per GPU index.
    pub gpu_memory_bytes: Vec<u64>,
    pub desktops: std::collections::BTreeSet<String>,
}
