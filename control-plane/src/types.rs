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
    PutNode {
        node: Node,
    },
    DeleteNode {
        id: String,
    },
    PutDesktop {
        desktop: Desktop,
    },
    DeleteDesktop {
        id: String,
    },
    /// Records the hash of an access token. Tokens themselves are never
    /// replicated.
    PutToken {
        token: TokenRecord,
    },
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
    Task { task: Task },
    Deleted,
    Done,
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
}

/// A GPU host as the control plane knows it. The node-agent work fills in
/// capacity and health.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub revision: u64,
}

/// A task's sandboxed computer: where it should run (intent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Desktop {
    pub id: String,
    pub task_id: String,
    /// The node it is placed on; `None` while pending.
    #[serde(default)]
    pub node_id: Option<String>,
    #[serde(default)]
    pub revision: u64,
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
