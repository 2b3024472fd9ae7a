//! Re-adoption: every sandbox's `state.json` (outer pid and its start time
//! in ticks, uid slot, cgroup, network, gpud attachment) is written in its
//! directory when it starts, so that a restarted agent finds the sandboxes
//! still running, adopts each whose outer process is still the same (pid
//! and start time, then a pidfd to watch it) and removes the directories
//! of those that ended.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::handle::{pidfd_open, process_start_ticks, Handle};
use super::{remove_desktop_dir, Phase, ProcessDesktop, ProcessRuntime, SandboxSettings};
use crate::sandbox::net::NetRecord;
use crate::sandbox::STATE_FILE;

/// What the agent writes about a running sandbox, so that a restarted
/// agent can adopt it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SandboxState {
    pub(super) desktop_id: String,
    pub(super) generation: u64,
    pub(super) slot: u32,
    /// The outer `sandbox-init` process (leader of the desktop's process
    /// group) and its start time in clock ticks since boot, so a reused pid
    /// is never mistaken for it.
    pub(super) pid: libc::pid_t,
    pub(super) start_ticks: u64,
    pub(super) cgroup: Option<String>,
    /// The cgroup's `cgroup.procs` files (`sandbox-exec` joins them).
    #[serde(default)]
    pub(super) cgroup_procs: Vec<PathBuf>,
    pub(super) net: Option<NetRecord>,
    pub(super) memory_limit: u64,
    /// Its gpud attachment (GPU index, budget), re-made on adoption.
    #[serde(default)]
    pub(super) gpu: Option<(u32, u64)>,
}

impl ProcessRuntime {
    /// Runs every desktop in a namespace sandbox (`flotilla sandbox-init`).
    /// Sandboxes an earlier run of the agent left running are adopted (they
    /// show up in [`super::DesktopRuntime::poll`] as running); the
    /// directories of any that ended are removed. Call before
    /// `with_cgroups` and `with_network`, which keep what the adopted
    /// desktops use.
    pub fn with_sandbox(mut self, settings: SandboxSettings) -> std::io::Result<ProcessRuntime> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&settings.desktops_dir)?;
        for entry in std::fs::read_dir(&settings.desktops_dir)?.flatten() {
            let dir = entry.path();
            match adopt(&dir) {
                Some((state, handle)) => {
                    tracing::info!(desktop = %state.desktop_id, generation = state.generation, pid = state.pid, "re-adopted a running sandbox");
                    self.desktops.insert(
                        state.desktop_id.clone(),
                        ProcessDesktop {
                            generation: state.generation,
                            handle,
                            phase: Phase::Running,
                            kill_at: None,
                            cgroup: None,
                            memory_limit: state.memory_limit,
                            sandbox: Some((state.slot, dir)),
                            net: state.net.clone(),
                            gpu: None,
                        },
                    );
                    self.adopted.push(state);
                }
                None => {
                    tracing::info!(dir = %dir.display(), "removing an ended sandbox's directory");
                    remove_desktop_dir(Some(&settings), &dir);
                }
            }
        }
        // Sandboxes (unprivileged host uids) must traverse to their own
        // directories; listing stays root's.
        std::fs::set_permissions(
            &settings.desktops_dir,
            std::fs::Permissions::from_mode(0o711),
        )?;
        if let Some(parent) = settings.desktops_dir.parent() {
            let mode = std::fs::metadata(parent)?.permissions().mode();
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(mode | 0o011))?;
        }
        if settings.zygote {
            match crate::sandbox::zygote::Zygote::start(&settings.exe) {
                Ok(zygote) => self.zygote = Some(zygote),
                Err(error) => {
                    tracing::warn!(%error, "no sandbox zygote: each sandbox start execs flotilla")
                }
            }
        }
        self.sandbox = Some(settings);
        Ok(self)
    }
}

/// Adopts the sandbox whose directory is `dir` if its outer process is
/// still the one that was started (same pid and start time).
fn adopt(dir: &Path) -> Option<(SandboxState, Handle)> {
    let text = std::fs::read(dir.join(STATE_FILE)).ok()?;
    let state: SandboxState = serde_json::from_slice(&text).ok()?;
    if state.pid <= 1 || process_start_ticks(state.pid) != Some(state.start_ticks) {
        return None;
    }
    let pidfd = pidfd_open(state.pid)?;
    // The pid could have been reused between the check and pidfd_open.
    if process_start_ticks(state.pid) != Some(state.start_ticks) {
        return None;
    }
    let pid = state.pid;
    Some((state, Handle::Adopted { pid, pidfd }))
}
