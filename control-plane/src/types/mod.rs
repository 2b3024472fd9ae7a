//! The replicated data model: what a Raft log entry carries, what applying it
//! answers, and the entities the state machine holds.
//!
//! Log entries outlive the binary that wrote them, so every type here is
//! serialized with explicit, stable names. New commands and entity fields are
//! added as new variants and `#[serde(default)]` fields; nothing is renamed.

use std::collections::BTreeMap;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Format of [`ClientRequest`] written to the log. A server refuses entries
/// with a newer format than it understands instead of misapplying them.
pub const LOG_FORMAT_VERSION: u32 = 1;

/// Schema of the state-machine snapshot. Bumped on incompatible changes;
/// older snapshots are migrated on load, newer ones are refused.
pub const SNAPSHOT_SCHEMA_VERSION: u32 = 1;

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's type configuration for the control plane.
    pub TypeConfig:
        D = Proposal,
        R = ProposalResponse,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;

/// What one log entry carries: client writes committed together. Batching
/// many writes into one entry is the group commit: one fsync on each server
/// for the whole batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    pub requests: Vec<ClientRequest>,
}

/// The answers to a [`Proposal`], one per request, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProposalResponse {
    pub responses: Vec<ClientResponse>,
}

/// One client write: the command plus what makes a retry safe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// [`LOG_FORMAT_VERSION`] of the writer.
    pub format: u32,
    /// Chosen by the client and reused on every retry of the same write; the
    /// state machine applies a request id at most once.
    pub request_id: String,
    /// Wall-clock milliseconds stamped by the server that accepted the write,
    /// so applying stays deterministic on every replica.
    pub issued_at_ms: u64,
    pub command: Command,
}

/// Everything that changes replicated state. Imperative names; one variant per
/// change. New features add variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    CreateTask {
        id: String,
        title: String,
        #[serde(default)]
        description: String,
        #[serde(default)]
        repository: Option<String>,
        column: Column,
        /// Filled in by the accepting server with its default when the
        /// client asked for nothing specific.
        #[serde(default)]
        resources: DesktopResources,
    },
    UpdateTask {
        id: String,
        #[serde(default)]
        title: Option<String>,
        #[serde(default)]
        description: Option<String>,
        /// `Some(None)` clears the repository.
        #[serde(default)]
        repository: Option<Option<String>>,
    },
    MoveTask {
        id: String,
        column: Column,
        /// Index in the destination column; `None` appends at the end.
        #[serde(default)]
        position: Option<u32>,
    },
    DeleteTask {
        id: String,
    },
    /// A node agent announces itself (first start or restart): capacity,
    /// GPUs and labels are replaced; eligibility, drain and status persist.
    RegisterNode {
        registration: NodeRegistration,
    },
    /// Health transitions decided by the leader from heartbeats. A node
    /// marked down loses its desktops: they become pending again.
    SetNodeStatus {
        updates: Vec<NodeStatusUpdate>,
    },
    /// Cordon (`eligible: false`) or uncordon.
    SetNodeEligibility {
        id: String,
        eligible: bool,
    },
    /// Starts a drain (the node becomes ineligible) or replaces the running
    /// one's deadline.
    StartDrain {
        id: String,
        /// Wall-clock milliseconds; the rest of the desktops are stopped then.
        deadline_ms: u64,
        max_parallel: u32,
    },
    /// Cancels a drain; the node stays ineligible until uncordoned.
    CancelDrain {
        id: String,
    },
    /// Forgets a node that is down (decommissioned). A node whose agent
    /// comes back simply registers again.
    RemoveNode {
        id: String,
    },
    /// Scheduler decisions, many per entry. Each is checked again on apply
    /// and refused if it no longer fits, so nothing is ever overcommitted.
    PlaceDesktops {
        placements: Vec<Placement>,
    },
    /// Why desktops are still pending (only changed reasons are written).
    SetPendingReasons {
        reasons: Vec<PendingReason>,
    },
    /// Stop these desktops where they run and place them again elsewhere
    /// (drains).
    MigrateDesktops {
        ids: Vec<String>,
    },
    /// What a node agent says its desktops are doing. Reports for another
    /// node's or an older generation's desktop are ignored (fencing).
    ReportDesktops {
        node_id: String,
        reports: Vec<DesktopReport>,
    },
    /// Records the hash of an access token. Tokens themselves are never
    /// replicated.
    PutToken {
        token: TokenRecord,
    },
}

impl Command {
    /// Roughly how much work and log space this command is, in units of one
    /// simple command: batch commands count their items.
    pub fn weight(&self) -> usize {
        match self {
            Command::SetNodeStatus { updates } => updates.len().max(1),
            Command::PlaceDesktops { placements } => placements.len().max(1),
            Command::SetPendingReasons { reasons } => reasons.len().max(1),
            Command::MigrateDesktops { ids } => ids.len().max(1),
            Command::ReportDesktops { reports, .. } => reports.len().max(1),
            _ => 1,
        }
    }
}

/// What applying a [`ClientRequest`] answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientResponse {
    /// Log index of the entry that applied the request (the revision of its
    /// change); for a duplicate, the index of the first application.
    pub revision: u64,
    /// True when the request id had already been applied and this is the
    /// remembered answer.
    #[serde(default)]
    pub duplicate: bool,
    pub outcome: Result<Applied, CommandError>,
}

/// A successful command's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Applied {
    Task {
        task: Task,
    },
    Node {
        node: Node,
    },
    Deleted,
    Done,
    /// Result of [`Command::PlaceDesktops`].
    Placed {
        placed: u32,
        /// Placements refused on apply, with why.
        refused: Vec<PendingReason>,
    },
}

/// A command that was validly replicated but could not be applied to the
/// current state. Deterministic on every replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandError {
    #[error("no task with id {id:?}")]
    TaskNotFound { id: String },
    #[error("a task with id {id:?} already exists")]
    TaskExists { id: String },
    #[error("no node with id {id:?}")]
    NodeNotFound { id: String },
    #[error("no desktop with id {id:?}")]
    DesktopNotFound { id: String },
    #[error(
        "node {name:?} is draining; cancel the drain first (flotilla node drain --disable {name})"
    )]
    NodeDraining { name: String },
    #[error("node {name:?} is not down; only a down node can be removed (drain it and stop its agent first)")]
    NodeNotDown { name: String },
    #[error("another node already uses the name {name:?}")]
    NodeNameTaken { name: String },
    #[error("node {name:?} is down; a drain needs a node that can stop its desktops (they are placed elsewhere already)")]
    NodeDown { name: String },
    #[error("log entry format {found} is newer than this server understands ({supported}); upgrade this server")]
    UnsupportedFormat { found: u32, supported: u32 },
}

/// The board's columns, in order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Column {
    Backlog,
    Planning,
    Implementation,
    Review,
    Done,
}

impl Column {
    pub const ALL: [Column; 5] = [
        Column::Backlog,
        Column::Planning,
        Column::Implementation,
        Column::Review,
        Column::Done,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Column::Backlog => "backlog",
            Column::Planning => "planning",
            Column::Implementation => "implementation",
            Column::Review => "review",
            Column::Done => "done",
        }
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Column {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Column::ALL
            .into_iter()
            .find(|column| column.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown column {text:?}; expected one of backlog, planning, implementation, review, done"
                )
            })
    }
}

/// A card on the board.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Task {
    pub id: String,
    pub title: String,
    pub description: String,
    pub column: Column,
    /// Order within the column, 0-based, contiguous.
    pub position: u32,
    pub repository: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Revision of the last change to this task.
    pub revision: u64,
    /// What this task's desktop asks for.
    #[serde(default)]
    pub resources: DesktopResources,
    /// Its desktop while it is in planning, implementation or review.
    #[serde(default)]
    pub desktop_id: Option<String>,
}

/// What a desktop asks for. CPU is a share (millicores, enforced by
/// weight), memory a hard limit; GPU memory is charged to one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DesktopResources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    #[serde(default)]
    pub gpu_memory_bytes: u64,
    #[serde(default)]
    pub needs_gpu: bool,
    /// Labels the node must carry, with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What the desktop may reach on the network.
    #[serde(default)]
    pub egress: Egress,
    /// What runs in the desktop and how its keyboard types; the node's
    /// defaults where empty.
    #[serde(default, skip_serializing_if = "DesktopProfile::is_empty")]
    pub profile: DesktopProfile,
}

/// A desktop's profile: the apps its session starts and its keyboard.
/// Every field empty: the node's defaults (`--desktop-app`,
/// `--desktop-keyboard-layout`, `--desktop-keyboard-variant`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DesktopProfile {
    /// Programs the session starts and restarts, each a command line split
    /// on spaces (e.g. `"foot"`, `"chromium --ozone-platform=wayland"`);
    /// they replace the node's list.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<String>,
    /// An xkb layout, e.g. `fr`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyboard_layout: String,
    /// An xkb variant of it, e.g. `azerty`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub keyboard_variant: String,
}

/// Most apps a profile starts.
pub const MAX_PROFILE_APPS: usize = 8;

impl DesktopProfile {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.keyboard_layout.is_empty() && self.keyboard_variant.is_empty()
    }

    /// Refuses what a session could not start: too many apps, empty or
    /// overlong command lines, control characters, keyboard names that
    /// are not xkb names (checked again on the node, which also knows
    /// whether xkb has the layout).
    pub fn validate(&self) -> Result<(), String> {
        if self.apps.len() > MAX_PROFILE_APPS {
            return Err(format!(
                "a profile starts at most {MAX_PROFILE_APPS} apps, got {}",
                self.apps.len()
            ));
        }
        for app in &self.apps {
            if app.trim().is_empty() || app.len() > 512 || app.chars().any(char::is_control) {
                return Err(format!(
                    "app {app:?} must be a command line of 1-512 characters without control characters"
                ));
            }
        }
        for (what, name) in [
            ("keyboard_layout", &self.keyboard_layout),
            ("keyboard_variant", &self.keyboard_variant),
        ] {
            if name.len() > 64
                || !name.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '(' | ')' | ':')
                })
            {
                return Err(format!(
                    "{what} {name:?} must be an xkb name: up to 64 of letters, digits, '_', '-', '+', '(', ')', ':'"
                ));
            }
        }
        if self.keyboard_layout.is_empty() && !self.keyboard_variant.is_empty() {
            return Err("keyboard_variant needs a keyboard_layout".to_owned());
        }
        Ok(())
    }
}

/// A desktop's egress policy, enforced by its node (see the node agent's
/// `sandbox::net`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    /// Nothing beyond its own loopback.
    None,
    /// Only the control plane's endpoints that desktops use.
    #[default]
    ControlPlane,
    /// Anything outside the node through NAT, never other desktops.
    Open,
}

impl Egress {
    pub fn as_str(self) -> &'static str {
        match self {
            Egress::None => "none",
            Egress::ControlPlane => "control-plane",
            Egress::Open => "open",
        }
    }
}

impl Default for DesktopResources {
    /// Modest enough that a 2-core, 24 GiB machine runs several desktops.
    fn default() -> DesktopResources {
        DesktopResources {
            cpu_millis: 250,
            memory_bytes: 2 << 30,
            gpu_memory_bytes: 0,
            needs_gpu: false,
            labels: BTreeMap::new(),
            egress: Egress::default(),
            profile: DesktopProfile::default(),
        }
    }
}

/// Upper bounds that catch typos (a request in bytes where GiB was meant).
pub const MAX_CPU_MILLIS: u64 = 1_024_000;
pub const MAX_MEMORY_BYTES: u64 = 64 << 40;
pub const MAX_GPU_MEMORY_BYTES: u64 = 16 << 40;

impl DesktopResources {
    /// Refuses zero, absurd or malformed requests.
    pub fn validate(&self) -> Result<(), String> {
        if self.cpu_millis == 0 || self.cpu_millis > MAX_CPU_MILLIS {
            return Err(format!(
                "cpu_millis must be between 1 and {MAX_CPU_MILLIS}, got {}",
                self.cpu_millis
            ));
        }
        if self.memory_bytes < (1 << 20) || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(format!(
                "memory_bytes must be between 1 MiB and 64 TiB, got {}",
                self.memory_bytes
            ));
        }
        if self.gpu_memory_bytes > MAX_GPU_MEMORY_BYTES {
            return Err(format!(
                "gpu_memory_bytes must be at most 16 TiB, got {}",
                self.gpu_memory_bytes
            ));
        }
        for (key, value) in &self.labels {
            validate_label(key, value)?;
        }
        self.profile.validate()
    }
}

/// Label keys: 1–63 characters of `[A-Za-z0-9._/-]`, starting alphanumeric;
/// values: up to 63 of the same, possibly empty.
pub fn validate_label(key: &str, value: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/');
    if key.is_empty()
        || key.len() > 63
        || !key.chars().all(allowed)
        || !key.starts_with(|c: char| c.is_ascii_alphanumeric())
    {
        return Err(format!(
            "label key {key:?} must be 1-63 characters of letters, digits, '.', '_', '-', '/', starting with a letter or digit"
        ));
    }
    if value.len() > 63 || !value.chars().all(allowed) {
        return Err(format!(
            "label value {value:?} (key {key:?}) must be at most 63 characters of letters, digits, '.', '_', '-', '/'"
        ));
    }
    Ok(())
}

/// Node names: 1–63 characters of `[a-z0-9-]`, like a host name.
pub fn validate_node_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 63
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.starts_with('-')
    {
        return Err(format!(
            "node name {name:?} must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
        ));
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

/// Where a desktop should be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesktopIntent {
    /// Run on its node (or wait for one).
    #[default]
    Run,
    /// Stop on its node, then be placed again (drain).
    Migrate,
    /// Stop on its node, then be forgotten (task done or deleted).
    Release,
}

/// What a desktop is doing, as its node agent reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesktopState {
    /// Not placed yet, or placed and not picked up by its node.
    #[default]
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl DesktopState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesktopState::Pending => "pending",
            DesktopState::Starting => "starting",
            DesktopState::Running => "running",
            DesktopState::Stopping => "stopping",
            DesktopState::Stopped => "stopped",
            DesktopState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<DesktopState> {
        [
            DesktopState::Pending,
            DesktopState::Starting,
            DesktopState::Running,
            DesktopState::Stopping,
            DesktopState::Stopped,
            DesktopState::Failed,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// A task's sandboxed computer: where it should run (intent) and what its
/// node says it does (observed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Desktop {
    pub id: String,
    pub task_id: String,
    /// The node it is placed on; `None` while pending.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Index of the GPU on its node that it is charged to.
    #[serde(default)]
    pub gpu: Option<u32>,
    #[serde(default)]
    pub resources: DesktopResources,
    /// Fencing token: the log index of the placement. A node runs a desktop
    /// only for the generation it was handed; reports carry it back.
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub intent: DesktopIntent,
    #[serde(default)]
    pub state: DesktopState,
    /// Why it is pending or failed.
    #[serde(default)]
    pub reason: Option<String>,
    /// Order of arrival: pending desktops are placed oldest first.
    #[serde(default)]
    pub sequence: u64,
    #[serde(default)]
    pub created_at_ms: u64,
    #[serde(default)]
    pub revision: u64,
}

/// One scheduler decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub desktop_id: String,
    pub node_id: String,
    #[serde(default)]
    pub gpu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReason {
    pub desktop_id: String,
    pub reason: String,
}

/// A node agent's word on one desktop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesktopReport {
    pub desktop_id: String,
    pub generation: u64,
    pub state: DesktopState,
    #[serde(default)]
    pub reason: Option<String>,
}

/// Which door a token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Operator,
    NodeJoin,
    ServerJoin,
}

/// A token as the state machine keeps it: SHA-256 of the secret, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub kind: TokenKind,
    pub sha256_hex: String,
}

/// One change to replicated state, as watchers see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    /// Global revision: the log index of the entry that made the change.
    pub revision: u64,
    #[serde(flatten)]
    pub kind: ChangeKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeKind {
    TaskPut { task: Task },
    TaskDeleted { id: String },
    NodePut { node: Node },
    NodeDeleted { id: String },
    DesktopPut { desktop: Desktop },
    DesktopDeleted { id: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_checked() {
        let ok = DesktopProfile {
            apps: vec![
                "foot".to_owned(),
                "chromium --ozone-platform=wayland".to_owned(),
            ],
            keyboard_layout: "fr".to_owned(),
            keyboard_variant: "azerty".to_owned(),
        };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(DesktopProfile::default().validate(), Ok(()));
        for bad in [
            DesktopProfile {
                apps: vec!["x".to_owned(); MAX_PROFILE_APPS + 1],
                ..ok.clone()
            },
            DesktopProfile {
                apps: vec!["  ".to_owned()],
                ..ok.clone()
            },
            DesktopProfile {
                apps: vec!["foot\nrm".to_owned()],
                ..ok.clone()
            },
            DesktopProfile {
                keyboard_layout: "fr;rm".to_owned(),
                ..ok.clone()
            },
            DesktopProfile {
                keyboard_layout: String::new(),
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        // An empty profile is not written (older readers see nothing new).
        let json = serde_json::to_value(DesktopResources::default()).unwrap();
        assert!(json.get("profile").is_none(), "{json}");
    }
}
