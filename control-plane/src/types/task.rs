//! Cards: their columns, and what a card's desktop asks for (resources,
//! apps and keyboard, egress).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::*;

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
    /// What its agent's model calls used, as the gateway settled them.
    #[serde(default, skip_serializing_if = "UsageTotals::is_empty")]
    pub usage: UsageTotals,
    #[serde(default, skip_serializing_if = "Budget::is_unlimited")]
    pub budget: Budget,
    /// Why the gateway last refused its agent a model call (over budget);
    /// cleared when its budget changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub llm_refused: Option<String>,
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
/// Longest xkb layout or variant name.
pub const MAX_KEYBOARD_NAME: usize = 64;
/// Longest command line of an app, in characters.
pub const MAX_APP_CHARS: usize = 512;

impl DesktopProfile {
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty() && self.keyboard_layout.is_empty() && self.keyboard_variant.is_empty()
    }

    /// Refuses what a session could not start: too many apps, empty or
    /// overlong command lines, control characters, keyboard names that
    /// are not xkb names (checked again on the node, which also knows
    /// whether xkb has the layout).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.apps.len() > MAX_PROFILE_APPS {
            return Err(ValidationError::TooManyApps {
                count: self.apps.len(),
            });
        }
        for app in &self.apps {
            if app.trim().is_empty()
                || app.chars().count() > MAX_APP_CHARS
                || app.chars().any(char::is_control)
            {
                return Err(ValidationError::App { app: app.clone() });
            }
        }
        for (what, name) in [
            ("keyboard_layout", &self.keyboard_layout),
            ("keyboard_variant", &self.keyboard_variant),
        ] {
            if name.len() > MAX_KEYBOARD_NAME
                || !name.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '+' | '(' | ')' | ':')
                })
            {
                return Err(ValidationError::KeyboardName {
                    field: what,
                    name: name.clone(),
                });
            }
        }
        if self.keyboard_layout.is_empty() && !self.keyboard_variant.is_empty() {
            return Err(ValidationError::VariantWithoutLayout);
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
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.cpu_millis == 0 || self.cpu_millis > MAX_CPU_MILLIS {
            return Err(ValidationError::CpuMillis(self.cpu_millis));
        }
        if self.memory_bytes < (1 << 20) || self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(ValidationError::MemoryBytes(self.memory_bytes));
        }
        if self.gpu_memory_bytes > MAX_GPU_MEMORY_BYTES {
            return Err(ValidationError::GpuMemoryBytes(self.gpu_memory_bytes));
        }
        for (key, value) in &self.labels {
            validate_label(key, value)?;
        }
        self.profile.validate()
    }
}
