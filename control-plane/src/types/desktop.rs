//! Desktops: intent (what should run) and observed state (what the node
//! reports), placements and their fencing generation.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;

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
