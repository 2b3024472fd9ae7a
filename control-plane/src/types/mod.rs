//! The replicated data model: what a Raft log entry carries, what applying it
//! answers, and the entities the state machine holds.
//!
//! Log entries outlive the binary that wrote them, so every type here is
//! serialized with explicit, stable names. New commands and entity fields are
//! added as new variants and `#[serde(default)]` fields; nothing is renamed.

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod desktop;
mod llm;
mod node;
mod project;
mod pull;
mod task;

pub use desktop::*;
pub use llm::*;
pub use node::*;
pub use project::*;
pub use pull::*;
pub use task::*;

/// Why a field a client or node agent sent was refused; each message says
/// what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("label key {key:?} must be 1-63 characters of letters, digits, '.', '_', '-', '/', starting with a letter or digit")]
    LabelKey { key: String },
    #[error("label value {value:?} (key {key:?}) must be at most 63 characters of letters, digits, '.', '_', '-', '/'")]
    LabelValue { key: String, value: String },
    #[error(
        "node name {name:?} must be 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
    )]
    NodeName { name: String },
    #[error("a profile starts at most {MAX_PROFILE_APPS} apps, got {count}")]
    TooManyApps { count: usize },
    #[error("app {app:?} must be a command line of 1-512 characters without control characters")]
    App { app: String },
    #[error("{field} {name:?} must be an xkb name: up to 64 of letters, digits, '_', '-', '+', '(', ')', ':'")]
    KeyboardName { field: &'static str, name: String },
    #[error("keyboard_variant needs a keyboard_layout")]
    VariantWithoutLayout,
    #[error("cpu_millis must be between 1 and {MAX_CPU_MILLIS}, got {0}")]
    CpuMillis(u64),
    #[error("memory_bytes must be between 1 MiB and 64 TiB, got {0}")]
    MemoryBytes(u64),
    #[error("gpu_memory_bytes must be at most 16 TiB, got {0}")]
    GpuMemoryBytes(u64),
}

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
    CreateProject {
        id: String,
        default_branch: String,
    },
    CreateRepo {
        project: String,
        name: String,
        /// An import's upstream URL, and its credential sealed under the
        /// cluster secret (`crate::seal`).
        #[serde(default)]
        upstream: Option<String>,
        #[serde(default)]
        sealed_credential: Option<String>,
    },
    /// What the mirror of an imported repository last managed.
    RecordMirror {
        project: String,
        repo: String,
        pushed: Option<String>,
        error: Option<String>,
    },
    /// A push: every change's `old` must match, or none applies.
    UpdateRefs {
        project: String,
        repo: String,
        changes: Vec<RefChange>,
    },
    /// Sets how a project's pull requests merge.
    SetProjectMergeStyle {
        id: String,
        merge_style: MergeStyle,
    },
    /// Opens a pull request of `source` onto `base`, both at the commits
    /// given (checked against the committed refs).
    OpenPull {
        project: String,
        repo: String,
        title: String,
        #[serde(default)]
        task_id: Option<String>,
        source: String,
        base: String,
        head: String,
        base_commit: String,
    },
    ClosePull {
        project: String,
        repo: String,
        number: u64,
    },
    /// Lands an open pull request: the base's compare-and-swap to the merge
    /// commit and the record's `merged`, in one entry. `head` must still be
    /// the source branch's commit.
    MergePull {
        project: String,
        repo: String,
        number: u64,
        head: String,
        change: RefChange,
    },
    /// Adds a model provider; its key sealed under the cluster secret
    /// (`crate::seal`, purpose `provider:<name>`).
    AddProvider {
        provider: Provider,
        #[serde(default)]
        sealed_key: Option<String>,
    },
    RemoveProvider {
        name: String,
    },
    SetBudget {
        scope: BudgetScope,
        budget: Budget,
    },
    /// Settled model calls, many per entry (the gateway batches them).
    RecordUsage {
        records: Vec<UsageRecord>,
    },
}

/// What a budget limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum BudgetScope {
    Task(String),
    Project(String),
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
            Command::UpdateRefs { changes, .. } => changes.len().max(1),
            Command::RecordUsage { records } => records.len().max(1),
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
    Project {
        project: Project,
    },
    Repo {
        repo: Repo,
    },
    Pull {
        pull: PullRequest,
    },
    Provider {
        provider: Provider,
    },
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
    #[error("no project {id:?}")]
    ProjectNotFound { id: String },
    #[error("a project {id:?} already exists")]
    ProjectExists { id: String },
    #[error("no repository {project}/{name}")]
    RepoNotFound { project: String, name: String },
    #[error("a repository {project}/{name} already exists")]
    RepoExists { project: String, name: String },
    /// A push lost a race: `name` is at `current` now (fetch first).
    #[error("{name} is at {} now: fetch first", current.as_deref().unwrap_or("nothing"))]
    StaleRef {
        name: String,
        current: Option<String>,
    },
    #[error("{name} cannot exist beside {other} (git stores refs as paths)")]
    RefsNest { name: String, other: String },
    #[error("no pull request {project}/{repo}#{number}")]
    PullNotFound {
        project: String,
        repo: String,
        number: u64,
    },
    #[error("pull request {project}/{repo}#{number} is {state:?}, not open")]
    PullNotOpen {
        project: String,
        repo: String,
        number: u64,
        state: PullState,
    },
    #[error("pull request #{number} already proposes {branch} onto {base}")]
    PullExists {
        number: u64,
        branch: String,
        base: String,
    },
    #[error("{project}/{name} was not imported: it has no upstream to mirror")]
    NotMirrored { project: String, name: String },
    #[error("no branch {name} in this repository")]
    BranchNotFound { name: String },
    #[error("a pull request needs two different branches; {name} was given twice")]
    SameBranch { name: String },
    #[error("no model provider {name:?}")]
    ProviderNotFound { name: String },
    #[error("a model provider {name:?} already exists (remove it first to change it)")]
    ProviderExists { name: String },
    #[error("model {model:?} is already served by provider {provider:?}; an agent's model name must pick one provider")]
    ModelTaken { model: String, provider: String },
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
    ProjectPut { project: Project },
    RepoPut { repo: Repo },
    PullPut { pull: PullRequest },
    ProviderPut { provider: Provider },
    ProviderDeleted { name: String },
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
