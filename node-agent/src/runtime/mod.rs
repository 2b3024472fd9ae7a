//! How a node runs desktops. The agent's reconciler drives a
//! [`DesktopRuntime`]: start what is assigned, stop what is not, and poll
//! what each desktop does. [`ProcessRuntime`] runs each desktop as a plain
//! child process (its own process group, killed with the agent) or in a
//! namespace sandbox (`flotilla sandbox-init`), behind the same trait.
//!
//! Every start and every completed stop is appended to the runtime journal
//! (`desktop-events.jsonl` in the data directory) with a CLOCK_MONOTONIC
//! timestamp: operators can audit what ran when, and tests check from it
//! that no desktop ever ran on two nodes at once.
//!
//! The process runtime is cut by phase: [`build`] (options, cgroups, gpud,
//! network), [`adopt`] (sandboxes an earlier run left), [`start`],
//! [`observe`] (poll: how each desktop is doing, how it ended) and [`stop`]
//! (stop, forget, drop). [`handle`] is the process a desktop runs as and
//! [`journal`] the runtime journal; neither knows the others.

mod adopt;
mod build;
mod door;
mod handle;
mod journal;
mod observe;
pub use observe::MAX_LOG_BYTES;
mod start;
mod stop;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_gpu::service::{DesktopGpu, GpuService};

use crate::sandbox::cgroup::{Cgroup, CgroupError, Scope};
use crate::sandbox::net::{Egress, NetRecord, Network, NetworkError};

pub use journal::JOURNAL_FILE;

/// What the control plane asked this node to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopSpec {
    pub desktop_id: String,
    pub task_id: String,
    /// Fencing token of this placement.
    pub generation: u64,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    pub gpu_memory_bytes: u64,
    pub gpu: Option<u32>,
    /// What it may reach on the network (sandboxes with a network only).
    pub egress: Egress,
    /// Its own apps and keyboard (desktop sessions only).
    pub profile: Profile,
    /// Its credential for the servers' desktop door (git; empty: none).
    pub token: String,
    /// The hosted repository its task works on, `<project>/<repo>`
    /// (empty: none).
    pub repository: String,
}

/// A desktop's own apps and keyboard; each part empty: the node's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    /// Command lines, split on spaces.
    pub apps: Vec<String>,
    pub keyboard_layout: String,
    pub keyboard_variant: String,
}

/// How a desktop session is started: the session program and the node's
/// defaults, which a desktop's [`Profile`] overrides part by part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCommand {
    /// The session binary and its subcommand, as the sandbox runs it.
    pub program: Vec<String>,
    pub apps: Vec<String>,
    pub keyboard_layout: String,
    pub keyboard_variant: String,
}

impl SessionCommand {
    /// The command line of a desktop with `profile`.
    pub fn command(&self, profile: &Profile) -> Vec<String> {
        let mut command = self.program.clone();
        let apps = if profile.apps.is_empty() {
            &self.apps
        } else {
            &profile.apps
        };
        for app in apps {
            command.push("--app".to_owned());
            command.push(app.clone());
        }
        // A profile's layout comes with its own variant (or none).
        let (layout, variant) = if profile.keyboard_layout.is_empty() {
            (&self.keyboard_layout, &self.keyboard_variant)
        } else {
            (&profile.keyboard_layout, &profile.keyboard_variant)
        };
        for (flag, value) in [
            ("--keyboard-layout", layout),
            ("--keyboard-variant", variant),
        ] {
            if !value.is_empty() {
                command.push(flag.to_owned());
                command.push(value.clone());
            }
        }
        command
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed(String),
}

impl Phase {
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Stopping => "stopping",
            Phase::Stopped => "stopped",
            Phase::Failed(_) => "failed",
        }
    }

    pub fn ended(&self) -> bool {
        matches!(self, Phase::Stopped | Phase::Failed(_))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub pids: u32,
    /// gpud's ledger: the GPU it renders on (None: not attached), GPU
    /// memory charged now, and its budget.
    pub gpu_index: Option<u32>,
    pub gpu_charged_bytes: u64,
    pub gpu_budget_bytes: u64,
}

/// One desktop as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub desktop_id: String,
    pub generation: u64,
    pub phase: Phase,
    pub usage: Usage,
}

/// Why a desktop could not be started; whatever the start had taken (its
/// address, directory, cgroup) is given back first.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{desktop_id} is already running here")]
    AlreadyRunning { desktop_id: String },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("no free uid range for another sandbox")]
    NoFreeSlot,
    /// A step of making the desktop's directory (`create`, `write spec
    /// in`, ...), named in the message.
    #[error("{step} {}: {source}", dir.display())]
    DesktopDir {
        step: &'static str,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serve its gpud socket: {source}")]
    GpuSocket {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create its cgroup: {source}")]
    Cgroup {
        #[source]
        source: CgroupError,
    },
    #[error("cannot start {program:?}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// A way of running desktops on this host.
pub trait DesktopRuntime: Send {
    /// Starts `spec`; it shows up in [`DesktopRuntime::poll`] from now on.
    fn start(&mut self, spec: &DesktopSpec) -> Result<(), RuntimeError>;
    /// Begins stopping a desktop: politely, then by force after the grace
    /// period. Stopping an ended or unknown desktop does nothing.
    fn stop(&mut self, desktop_id: &str);
    /// Advances every desktop's lifecycle and says what each is doing.
    fn poll(&mut self) -> Vec<Observed>;
    /// Drops an ended desktop from the runtime's books.
    fn forget(&mut self, desktop_id: &str);
    /// Leaves what runs running when the runtime is dropped, for the next
    /// run of the agent to adopt (if the runtime can).
    fn leave_running(&mut self) {}
}

/// One desktop the process runtime runs (or ran: its record stays until
/// it is forgotten).
struct ProcessDesktop {
    generation: u64,
    handle: handle::Handle,
    phase: Phase,
    kill_at: Option<Instant>,
    /// Its cgroup, when the node has cgroup limits.
    cgroup: Option<Cgroup>,
    memory_limit: u64,
    /// Its sandbox slot (uid range) and directory, when sandboxed.
    sandbox: Option<(u32, PathBuf)>,
    /// Its network, when sandboxes have one; released when it ends.
    net: Option<NetRecord>,
    /// Its gpud socket, closed (and its GPU memory freed) when it ends.
    gpu: Option<DesktopGpu>,
}

/// gpud as the runtime uses it.
struct RuntimeGpu {
    service: Arc<GpuService>,
    /// The budget of a desktop that asked for no GPU memory: enough for
    /// its display (scanout, frame, a few windows).
    display_budget: u64,
}

/// A desktop's gpud budget: what it asked for, at least the display's.
fn gpu_budget(requested: u64, display_budget: u64) -> u64 {
    requested.max(display_budget)
}

/// The host uid and gid that own `path`.
fn owner_of(path: &Path) -> std::io::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.uid(), metadata.gid()))
}

/// How desktops are sandboxed.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// The `flotilla` binary (it runs `sandbox-init`).
    pub exe: PathBuf,
    /// Where each desktop's directory (home, workspace, staging root, log)
    /// lives.
    pub desktops_dir: PathBuf,
    /// Uid-range slots are handed out from here (0 for an agent; tests
    /// running side by side use distinct ranges).
    pub first_slot: u32,
    /// The agent's lease file (CLOCK_MONOTONIC deadline in ns): each
    /// sandbox ends itself when it passes, even with the agent gone.
    pub lease_file: Option<PathBuf>,
    /// Layered read-only over the host's `/usr` (see `SandboxSpec`).
    pub base_image: Option<PathBuf>,
    /// Host devices every desktop is granted.
    pub devices: Vec<PathBuf>,
    /// Where a destroyed desktop's home and workspace are kept (moved to
    /// `<kept_dir>/<id>-<generation>/`); `None`: removed.
    pub kept_dir: Option<PathBuf>,
    /// Start sandboxes through a zygote (a fork instead of an exec).
    pub zygote: bool,
    /// Tests only: which setup call (if any) a desktop's sandbox fails on
    /// purpose (`SandboxSpec::fail_at_step`). `None` in the agent.
    pub fail_at_step: Option<fn(&DesktopSpec) -> Option<usize>>,
    /// The `flotilla` binary bound into each sandbox for the desktop
    /// session (a copy under the data directory every sandbox can reach).
    pub session_exe: Option<PathBuf>,
    /// Host directories under `/etc` every sandbox sees read-only.
    pub etc_binds: Vec<PathBuf>,
}

/// Runs each desktop as `command` in its own process group, with the
/// desktop's id and resources in its environment. The children get
/// `PR_SET_PDEATHSIG`, so they never outlive the agent.
pub struct ProcessRuntime {
    node: String,
    command: Vec<String>,
    stop_grace: Duration,
    desktops: BTreeMap<String, ProcessDesktop>,
    journal: journal::Journal,
    cgroups: Option<Scope>,
    pids_limit: u64,
    sandbox: Option<SandboxSettings>,
    network: Option<Network>,
    /// Forks sandboxes without an exec, when it runs.
    zygote: Option<crate::sandbox::zygote::Zygote>,
    /// Sandboxes found running at start, adopted by `with_sandbox`.
    adopted: Vec<adopt::SandboxState>,
    /// Leave sandboxes running when dropped (for re-adoption).
    leave_running: bool,
    /// gpud, serving each desktop its own socket.
    gpu: Option<RuntimeGpu>,
    /// The agent's data directory (plain processes' gpud sockets).
    data_dir: PathBuf,
    /// Desktop sessions: each desktop's command from its profile.
    session: Option<SessionCommand>,
}

/// Removes a destroyed desktop's directory, first moving its home and
/// workspace to the kept directory when the node keeps them.
fn remove_desktop_dir(settings: Option<&SandboxSettings>, dir: &Path) {
    if let (Some(kept), Some(name)) = (settings.and_then(|s| s.kept_dir.as_ref()), dir.file_name())
    {
        let target = kept.join(name);
        let moved = std::fs::create_dir_all(&target).and_then(|()| {
            for part in ["home", "workspace"] {
                if dir.join(part).exists() {
                    std::fs::rename(dir.join(part), target.join(part))?;
                }
            }
            Ok(())
        });
        if let Err(error) = moved {
            tracing::warn!(dir = %dir.display(), %error, "cannot keep a desktop's files");
        }
    }
    if let Err(error) = std::fs::remove_dir_all(dir) {
        tracing::warn!(dir = %dir.display(), %error, "cannot remove a desktop's directory");
    }
}

impl DesktopRuntime for ProcessRuntime {
    fn start(&mut self, spec: &DesktopSpec) -> Result<(), RuntimeError> {
        self.start_desktop(spec)
    }

    fn stop(&mut self, desktop_id: &str) {
        self.stop_desktop(desktop_id)
    }

    fn poll(&mut self) -> Vec<Observed> {
        self.poll_desktops()
    }

    /// Sandboxes keep running (an agent that exits for an upgrade); the
    /// next run adopts them. Plain processes end with the agent anyway.
    fn leave_running(&mut self) {
        self.leave_running = self.sandbox.is_some();
    }

    fn forget(&mut self, desktop_id: &str) {
        self.forget_desktop(desktop_id)
    }
}
