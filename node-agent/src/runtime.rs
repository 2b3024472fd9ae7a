//! How a node runs desktops. The agent's reconciler drives a
//! [`DesktopRuntime`]: start what is assigned, stop what is not, and poll
//! what each desktop does. [`ProcessRuntime`] runs each desktop as a plain
//! child process (its own process group, killed with the agent); the
//! namespace sandbox implements the same trait.
//!
//! Every start and every completed stop is appended to the runtime journal
//! (`desktop-events.jsonl` in the data directory) with a CLOCK_MONOTONIC
//! timestamp: operators can audit what ran when, and tests check from it
//! that no desktop ever ran on two nodes at once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use serde::Deserialize;

use flotilla_gpu::service::{DesktopGpu, GpuService};

use crate::sandbox::cgroup::{Cgroup, Limits, Scope};
use crate::sandbox::net::{DesktopNet, Egress, NetRecord, Network};
use crate::sandbox::{SandboxSpec, DESKTOP_UID, DESKTOP_USER, MAX_SLOTS, UIDS_PER_DESKTOP};

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

/// A way of running desktops on this host.
pub trait DesktopRuntime: Send {
    /// Starts `spec`; it shows up in [`DesktopRuntime::poll`] from now on.
    fn start(&mut self, spec: &DesktopSpec) -> Result<(), String>;
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

/// The process a desktop runs as: our child, or a sandbox an earlier run
/// of the agent started and this one re-adopted.
enum Handle {
    Child(Child),
    Adopted {
        pid: libc::pid_t,
        /// Readable once the process has ended.
        pidfd: std::os::fd::OwnedFd,
    },
}

/// How a desktop's process ended.
struct Ended {
    code: Option<i32>,
    text: String,
}

impl Handle {
    fn pid(&self) -> libc::pid_t {
        match self {
            Handle::Child(child) => child.id() as libc::pid_t,
            Handle::Adopted { pid, .. } => *pid,
        }
    }

    /// `Some` once the process has ended. An adopted sandbox's status comes
    /// from the `exit-status` file its outer process writes in `dir`.
    fn try_wait(&mut self, dir: Option<&Path>) -> std::io::Result<Option<Ended>> {
        match self {
            Handle::Child(child) => Ok(child.try_wait()?.map(|status| Ended {
                code: status.code(),
                text: status.to_string(),
            })),
            Handle::Adopted { pidfd, .. } => {
                use std::os::fd::AsRawFd;
                let mut poll = libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll(2) on one live pollfd without waiting.
                if unsafe { libc::poll(&mut poll, 1, 0) } <= 0 {
                    return Ok(None);
                }
                let code = dir
                    .and_then(|dir| std::fs::read_to_string(dir.join(EXIT_STATUS_FILE)).ok())
                    .and_then(|text| text.trim().parse::<i32>().ok());
                Ok(Some(Ended {
                    code,
                    text: code.map_or("exit status unknown".to_owned(), |code| {
                        format!("exit status: {code}")
                    }),
                }))
            }
        }
    }

    /// Waits for the process to end (up to a second for one that is not
    /// our child; its parent reaps it).
    fn reap(&mut self) {
        match self {
            Handle::Child(child) => {
                let _ = child.wait();
            }
            Handle::Adopted { pidfd, .. } => {
                use std::os::fd::AsRawFd;
                let mut poll = libc::pollfd {
                    fd: pidfd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: poll(2) on one live pollfd.
                unsafe { libc::poll(&mut poll, 1, 1000) };
            }
        }
    }
}

/// A sandboxed desktop's stdout and stderr (and its sandbox's own
/// messages), in its directory.
pub const LOG_FILE: &str = "log";
/// The file a sandbox's outer process writes its exit status to.
pub const EXIT_STATUS_FILE: &str = "exit-status";
/// A sandboxed desktop's record in its directory, for re-adoption.
const STATE_FILE: &str = "state.json";

/// What the agent writes about a running sandbox, so that a restarted
/// agent can adopt it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxState {
    desktop_id: String,
    generation: u64,
    slot: u32,
    /// The outer `sandbox-init` process (leader of the desktop's process
    /// group) and its start time in clock ticks since boot, so a reused pid
    /// is never mistaken for it.
    pid: libc::pid_t,
    start_ticks: u64,
    cgroup: Option<String>,
    /// The cgroup's `cgroup.procs` files (`sandbox-exec` joins them).
    #[serde(default)]
    cgroup_procs: Vec<PathBuf>,
    net: Option<NetRecord>,
    memory_limit: u64,
    /// Its gpud attachment (GPU index, budget), re-made on adoption.
    #[serde(default)]
    gpu: Option<(u32, u64)>,
}

struct ProcessDesktop {
    generation: u64,
    handle: Handle,
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

/// A prepared sandbox: the command that runs it, its (slot, directory),
/// its gpud socket.
type Prepared = (Vec<String>, (u32, PathBuf), Option<DesktopGpu>);

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
    journal: Journal,
    cgroups: Option<Scope>,
    pids_limit: u64,
    sandbox: Option<SandboxSettings>,
    network: Option<Network>,
    /// Forks sandboxes without an exec, when it runs.
    zygote: Option<crate::sandbox::zygote::Zygote>,
    /// Sandboxes found running at start, adopted by `with_sandbox`.
    adopted: Vec<SandboxState>,
    /// Leave sandboxes running when dropped (for re-adoption).
    leave_running: bool,
    /// gpud, serving each desktop its own socket.
    gpu: Option<RuntimeGpu>,
    /// The agent's data directory (plain processes' gpud sockets).
    data_dir: PathBuf,
    /// Desktop sessions: each desktop's command from its profile.
    session: Option<SessionCommand>,
}

impl ProcessRuntime {
    pub fn new(
        node: &str,
        data_dir: &Path,
        command: Vec<String>,
        stop_grace: Duration,
    ) -> std::io::Result<ProcessRuntime> {
        if command.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the desktop command is empty",
            ));
        }
        Ok(ProcessRuntime {
            node: node.to_owned(),
            command,
            stop_grace,
            desktops: BTreeMap::new(),
            journal: Journal::open(&data_dir.join(JOURNAL_FILE))?,
            cgroups: None,
            pids_limit: 4096,
            sandbox: None,
            network: None,
            zygote: None,
            adopted: Vec::new(),
            leave_running: false,
            gpu: None,
            data_dir: data_dir.to_owned(),
            session: None,
        })
    }

    /// Serves every desktop a gpud socket on `service` (in a sandbox at
    /// `/run/flotilla/gpu.sock`; `FLOTILLA_GPU_SOCKET` says where), with
    /// its requested GPU memory as budget, or `display_budget` if it asked
    /// for less. Adopted sandboxes get their socket back (a new session:
    /// gpud's state did not survive the agent).
    pub fn with_gpu(mut self, service: Arc<GpuService>, display_budget: u64) -> ProcessRuntime {
        for state in &self.adopted {
            let (Some((index, budget)), Some(desktop)) =
                (state.gpu, self.desktops.get_mut(&state.desktop_id))
            else {
                continue;
            };
            let Some((_, dir)) = &desktop.sandbox else {
                continue;
            };
            let attached = owner_of(&dir.join("home")).and_then(|owner| {
                service.attach(
                    &state.desktop_id,
                    Some(index),
                    budget,
                    &dir.join("gpu"),
                    Some(owner),
                )
            });
            match attached {
                Ok(gpu) => desktop.gpu = Some(gpu),
                Err(error) => {
                    tracing::warn!(desktop = %state.desktop_id, %error, "cannot re-open its gpud socket")
                }
            }
        }
        self.gpu = Some(RuntimeGpu {
            service,
            display_budget,
        });
        self
    }

    /// Runs every desktop in a namespace sandbox (`flotilla sandbox-init`).
    /// Sandboxes an earlier run of the agent left running are adopted (they
    /// show up in [`DesktopRuntime::poll`] as running); the directories of
    /// any that ended are removed. Call before `with_cgroups` and
    /// `with_network`, which keep what the adopted desktops use.
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

    /// Gives every sandbox its own network (see [`crate::sandbox::net`]):
    /// sets the host side up and keeps the networks of adopted desktops.
    pub fn add_network(
        &mut self,
        settings: crate::sandbox::net::NetworkSettings,
    ) -> Result<(), String> {
        let keep: Vec<NetRecord> = self.adopted.iter().filter_map(|s| s.net.clone()).collect();
        self.network = Some(Network::start(settings, &keep)?);
        Ok(())
    }

    fn remove_desktop_dir(&self, dir: &Path) {
        remove_desktop_dir(self.sandbox.as_ref(), dir);
    }

    fn free_slot(&self) -> Option<u32> {
        let used: std::collections::BTreeSet<u32> = self
            .desktops
            .values()
            .filter_map(|desktop| desktop.sandbox.as_ref().map(|(slot, _)| *slot))
            .collect();
        let first = self
            .sandbox
            .as_ref()
            .map_or(0, |settings| settings.first_slot);
        (first..MAX_SLOTS).find(|slot| !used.contains(slot))
    }

    /// Makes the desktop's directories and spec; returns the command that
    /// runs it and its (slot, directory).
    fn prepare_sandbox(
        &self,
        settings: &SandboxSettings,
        spec: &DesktopSpec,
        net: Option<&DesktopNet>,
    ) -> Result<Prepared, String> {
        let slot = self
            .free_slot()
            .ok_or("no free uid range for another sandbox")?;
        let uid_base = SandboxSpec::uid_base_for(slot);
        let dir = settings
            .desktops_dir
            .join(format!("{}-{}", spec.desktop_id, spec.generation));
        // A failure leaves no directory behind.
        let fail = |what: &str, error: std::io::Error| {
            let _ = std::fs::remove_dir_all(&dir);
            format!("{what} {}: {error}", dir.display())
        };
        let _ = std::fs::remove_dir_all(&dir);
        let (home, workspace, staging) =
            crate::sandbox::make_desktop_dirs(&dir, uid_base).map_err(|e| fail("create", e))?;
        let resolv_conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut env: BTreeMap<String, String> = [
            ("FLOTILLA_DESKTOP_ID".to_owned(), spec.desktop_id.clone()),
            ("FLOTILLA_TASK_ID".to_owned(), spec.task_id.clone()),
            (
                "FLOTILLA_GENERATION".to_owned(),
                spec.generation.to_string(),
            ),
        ]
        .into();
        if let (Some(net), Some(network)) = (net, &self.network) {
            env.insert("FLOTILLA_EGRESS".to_owned(), net.egress.as_str().to_owned());
            env.insert(
                "FLOTILLA_DESKTOP_ADDRESS".to_owned(),
                net.address.to_string(),
            );
            let endpoints: Vec<String> = network
                .settings()
                .desktop_endpoints()
                .iter()
                .map(|endpoint| endpoint.to_string())
                .collect();
            env.insert("FLOTILLA_CONTROL_PLANE".to_owned(), endpoints.join(","));
        }
        // gpud's socket for this desktop, owned by its user.
        let gpu = match &self.gpu {
            Some(gpu) => {
                let attached = owner_of(&home).and_then(|owner| {
                    gpu.service.attach(
                        &spec.desktop_id,
                        spec.gpu,
                        gpu_budget(spec.gpu_memory_bytes, gpu.display_budget),
                        &dir.join("gpu"),
                        Some(owner),
                    )
                });
                Some(attached.map_err(|e| fail("serve gpud's socket in", e))?)
            }
            None => None,
        };
        if gpu.is_some() {
            env.insert(
                "FLOTILLA_GPU_SOCKET".to_owned(),
                format!("/run/flotilla/{}", flotilla_gpu::service::SOCKET_NAME),
            );
        }
        let sandbox_spec = SandboxSpec {
            hostname: spec.desktop_id.clone(),
            uid_base,
            uid_count: UIDS_PER_DESKTOP,
            desktop_uid: DESKTOP_UID,
            user: DESKTOP_USER.to_owned(),
            staging_dir: staging,
            home_dir: home,
            workspace_dir: workspace,
            resolv_conf,
            command: self.command_for(spec),
            env,
            netns_fd: net.and_then(|net| {
                use std::os::fd::AsRawFd;
                net.netns.as_ref().map(|fd| fd.as_raw_fd())
            }),
            lease_file: settings.lease_file.clone(),
            stop_grace_ms: self.stop_grace.as_millis() as u64,
            usr_links: Vec::new(),
            base_image: settings.base_image.clone(),
            devices: settings.devices.clone(),
            gpu_dir: gpu.as_ref().map(|_| dir.join("gpu")),
            session_exe: settings.session_exe.clone(),
            etc_binds: settings.etc_binds.clone(),
            fail_at_step: settings.fail_at_step.and_then(|choose| choose(spec)),
        };
        let spec_path = dir.join("spec.json");
        let json = serde_json::to_vec_pretty(&sandbox_spec)
            .map_err(|e| fail("encode the spec for", std::io::Error::other(e)))?;
        std::fs::write(&spec_path, json).map_err(|e| fail("write spec in", e))?;
        let command = vec![
            settings.exe.display().to_string(),
            "sandbox-init".to_owned(),
            spec_path.display().to_string(),
        ];
        Ok((command, (slot, dir), gpu))
    }

    /// Puts every desktop in its own cgroup under `scope`, limited to its
    /// CPU share, memory (no swap) and `pids_limit` processes. Cgroups an
    /// earlier run of the agent left are killed and removed first (the
    /// process runtime cannot re-adopt desktops).
    /// Desktops run `session`, each with its profile's apps and keyboard.
    pub fn with_session(mut self, session: SessionCommand) -> ProcessRuntime {
        self.session = Some(session);
        self
    }

    /// The command desktop `spec` runs.
    fn command_for(&self, spec: &DesktopSpec) -> Vec<String> {
        match &self.session {
            Some(session) => session.command(&spec.profile),
            None => self.command.clone(),
        }
    }

    pub fn with_cgroups(mut self, scope: Scope, pids_limit: u64) -> ProcessRuntime {
        for state in &self.adopted {
            let (Some(name), Some(desktop)) =
                (&state.cgroup, self.desktops.get_mut(&state.desktop_id))
            else {
                continue;
            };
            match scope.open(name) {
                Ok(cgroup) => desktop.cgroup = Some(cgroup),
                Err(error) => {
                    tracing::warn!(desktop = %state.desktop_id, %error, "cannot reopen its cgroup")
                }
            }
        }
        let kept: std::collections::BTreeSet<&str> = self
            .adopted
            .iter()
            .filter_map(|state| state.cgroup.as_deref())
            .collect();
        for name in scope.existing() {
            if kept.contains(name.as_str()) {
                continue;
            }
            match scope
                .open(&name)
                .and_then(|cgroup| cgroup.destroy(Duration::from_secs(5)))
            {
                Ok(()) => tracing::info!(cgroup = %name, "removed a cgroup left by an earlier run"),
                Err(error) => {
                    tracing::warn!(cgroup = %name, %error, "cannot remove a leftover cgroup")
                }
            }
        }
        self.cgroups = Some(scope);
        self.pids_limit = pids_limit;
        self
    }
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

/// Adopts the sandbox whose directory is `dir` if its outer process is
/// still the one that was started (same pid and start time).
fn adopt(dir: &Path) -> Option<(SandboxState, Handle)> {
    let text = std::fs::read(dir.join(STATE_FILE)).ok()?;
    let state: SandboxState = serde_json::from_slice(&text).ok()?;
    if state.pid <= 1 || process_start_ticks(state.pid) != Some(state.start_ticks) {
        return None;
    }
    // SAFETY: pidfd_open with a pid and no flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, state.pid, 0) } as libc::c_int;
    if fd < 0 {
        return None;
    }
    use std::os::fd::FromRawFd;
    // SAFETY: a fresh descriptor nobody else owns.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // The pid could have been reused between the check and pidfd_open.
    if process_start_ticks(state.pid) != Some(state.start_ticks) {
        return None;
    }
    let pid = state.pid;
    Some((state, Handle::Adopted { pid, pidfd }))
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22), or `None` if there is no such live process.
fn process_start_ticks(pid: libc::pid_t) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is the state (field 3); a zombie has ended.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The last `bytes` bytes of the file at `path`.
pub fn read_tail(path: &Path, bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(bytes)))?;
    let mut tail = Vec::with_capacity(bytes.min(length) as usize);
    file.take(bytes).read_to_end(&mut tail)?;
    Ok(tail)
}

/// Replaces `path` with `bytes` through a temporary file and rename, so a
/// reader never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// Joins the calling process to the cgroups whose `cgroup.procs` files are
/// given. Runs between fork and exec: only open/write/close.
fn join_cgroups(procs_files: &[std::ffi::CString]) -> std::io::Result<()> {
    for file in procs_files {
        // SAFETY: open/write/close on a NUL-terminated path prepared before
        // the fork; all three are async-signal-safe.
        unsafe {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
        }
    }
    Ok(())
}

impl DesktopRuntime for ProcessRuntime {
    fn start(&mut self, spec: &DesktopSpec) -> Result<(), String> {
        if let Some(existing) = self.desktops.get(&spec.desktop_id) {
            if !existing.phase.ended() {
                return Err(format!("{} is already running here", spec.desktop_id));
            }
        }
        // Everything taken here is given back if a later step fails.
        let mut net = match (&self.sandbox, &mut self.network) {
            (Some(_), Some(network)) => Some(network.take(spec.egress)?),
            _ => None,
        };
        let release_net = |runtime: &mut ProcessRuntime, net: Option<DesktopNet>| {
            if let (Some(net), Some(network)) = (net, &mut runtime.network) {
                network.release(&net.record());
            }
        };
        let prepared = match &self.sandbox {
            Some(settings) => {
                self.prepare_sandbox(settings, spec, net.as_ref())
                    .map(|(argv, sandbox, gpu)| {
                        // The desktop's stdout and stderr (`desktop logs`).
                        let log = std::fs::File::create(sandbox.1.join(LOG_FILE)).ok();
                        (argv, Some(sandbox), log, gpu)
                    })
            }
            None => match &self.gpu {
                Some(gpu) => gpu
                    .service
                    .attach(
                        &spec.desktop_id,
                        spec.gpu,
                        gpu_budget(spec.gpu_memory_bytes, gpu.display_budget),
                        &self
                            .data_dir
                            .join("gpu")
                            .join(format!("{}-{}", spec.desktop_id, spec.generation)),
                        None,
                    )
                    .map(|gpu| (self.command_for(spec), None, None, Some(gpu)))
                    .map_err(|error| format!("cannot serve its gpud socket: {error}")),
                None => Ok((self.command_for(spec), None, None, None)),
            },
        };
        let (argv, sandbox, log, gpu) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                release_net(self, net);
                return Err(error);
            }
        };
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env("FLOTILLA_DESKTOP_ID", &spec.desktop_id)
            .env("FLOTILLA_TASK_ID", &spec.task_id)
            .env("FLOTILLA_GENERATION", spec.generation.to_string())
            .env("FLOTILLA_CPU_MILLIS", spec.cpu_millis.to_string())
            .env("FLOTILLA_MEMORY_BYTES", spec.memory_bytes.to_string())
            .stdin(Stdio::null());
        if let (None, Some(gpu)) = (&sandbox, &gpu) {
            command.env("FLOTILLA_GPU_SOCKET", &gpu.socket);
        }
        match log
            .as_ref()
            .and_then(|log| Some((log.try_clone().ok()?, log.try_clone().ok()?)))
        {
            Some((stdout, stderr)) => command.stdout(stdout).stderr(stderr),
            None => command.stdout(Stdio::null()).stderr(Stdio::null()),
        };
        let cgroup = match &self.cgroups {
            Some(scope) => {
                let limits = Limits {
                    cpu_millis: spec.cpu_millis,
                    cpu_max_millis: None,
                    memory_bytes: spec.memory_bytes,
                    pids: self.pids_limit,
                };
                let name = format!("{}-{}", spec.desktop_id, spec.generation);
                match scope.create(&name, &limits) {
                    Ok(cgroup) => Some(cgroup),
                    Err(error) => {
                        if let Some((_, dir)) = &sandbox {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                        release_net(self, net);
                        return Err(format!("cannot create its cgroup: {error}"));
                    }
                }
            }
            None => None,
        };
        let sandboxed = sandbox.is_some();
        let procs_paths: Vec<PathBuf> = match (&self.cgroups, &cgroup) {
            (Some(scope), Some(cgroup)) => scope.procs_files(cgroup.name()),
            _ => Vec::new(),
        };
        let procs_files: Vec<std::ffi::CString> = match (&self.cgroups, &cgroup) {
            (Some(scope), Some(cgroup)) => scope
                .procs_files(cgroup.name())
                .into_iter()
                .filter_map(|path| {
                    use std::os::unix::ffi::OsStringExt;
                    std::ffi::CString::new(path.into_os_string().into_vec()).ok()
                })
                .collect(),
            _ => Vec::new(),
        };
        let netns_fd = net.as_ref().and_then(|net| {
            use std::os::fd::AsRawFd;
            net.netns.as_ref().map(|fd| fd.as_raw_fd())
        });
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (prctl, setpgid, fcntl, sigprocmask, open/write/close);
        // nothing allocates or takes locks: the paths were prepared above.
        unsafe {
            command.pre_exec(move || {
                // A sandbox outlives the agent (the next run adopts it; its
                // lease file ends it if none does); a plain process does not.
                if !sandboxed && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if sandboxed {
                    // sandbox-init's outer processes must not die of a stop
                    // signal before its PID 1 has finished the desktop: the
                    // mask survives exec, PID 1 takes the signals with
                    // sigtimedwait, the desktop's command gets a clean mask.
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::sigemptyset(&mut set);
                    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                        libc::sigaddset(&mut set, signal);
                    }
                    libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                if let Some(fd) = netns_fd {
                    // The namespace descriptor, kept open across exec for
                    // sandbox-init (its number is in the spec).
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                join_cgroups(&procs_files)
            });
        }
        self.journal
            .record(&self.node, &spec.desktop_id, spec.generation, "started");
        let spawned = match (&mut self.zygote, &sandbox, &log) {
            // The zygote forks the sandbox: no exec of this binary.
            (Some(zygote), Some((_, dir)), Some(log)) => {
                use std::os::fd::AsRawFd;
                let request = crate::sandbox::zygote::Request {
                    spec: dir.join("spec.json"),
                    cgroup_procs: procs_paths.clone(),
                    netns: netns_fd.is_some(),
                };
                // The zygote opened the pidfd before it could reap the
                // sandbox: one that ended at once is still watched.
                zygote
                    .spawn(&request, log.as_raw_fd(), netns_fd)
                    .map(|(pid, pidfd)| Handle::Adopted { pid, pidfd })
            }
            _ => command.spawn().map(Handle::Child),
        };
        let handle = match spawned {
            Ok(handle) => handle,
            Err(error) => {
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.destroy(Duration::from_secs(1));
                }
                if let Some((_, dir)) = &sandbox {
                    let _ = std::fs::remove_dir_all(dir);
                }
                release_net(self, net);
                self.journal
                    .record(&self.node, &spec.desktop_id, spec.generation, "stopped");
                return Err(format!("cannot start {:?}: {error}", self.command[0]));
            }
        };
        // The sandbox holds its network namespace from here on.
        if let Some(net) = &mut net {
            net.netns = None;
        }
        let net = net.map(|net| net.record());
        if let Some((slot, dir)) = &sandbox {
            let state = SandboxState {
                desktop_id: spec.desktop_id.clone(),
                generation: spec.generation,
                slot: *slot,
                pid: handle.pid(),
                start_ticks: process_start_ticks(handle.pid()).unwrap_or(0),
                cgroup: cgroup.as_ref().map(|cgroup| cgroup.name().to_owned()),
                cgroup_procs: procs_paths,
                net: net.clone(),
                memory_limit: spec.memory_bytes,
                gpu: gpu
                    .as_ref()
                    .zip(self.gpu.as_ref())
                    .map(|(attached, runtime)| {
                        (
                            attached.gpu_index,
                            gpu_budget(spec.gpu_memory_bytes, runtime.display_budget),
                        )
                    }),
            };
            let written = serde_json::to_vec(&state)
                .map_err(std::io::Error::other)
                .and_then(|json| write_atomically(&dir.join(STATE_FILE), &json));
            if let Err(error) = written {
                tracing::warn!(desktop = %spec.desktop_id, %error, "cannot write its state file: a restarted agent will not adopt it");
            }
        }
        self.desktops.insert(
            spec.desktop_id.clone(),
            ProcessDesktop {
                generation: spec.generation,
                handle,
                phase: Phase::Running,
                kill_at: None,
                cgroup,
                memory_limit: spec.memory_bytes,
                sandbox,
                net,
                gpu,
            },
        );
        Ok(())
    }

    fn stop(&mut self, desktop_id: &str) {
        let Some(desktop) = self.desktops.get_mut(desktop_id) else {
            return;
        };
        if desktop.phase.ended() || desktop.phase == Phase::Stopping {
            return;
        }
        signal_group(desktop.handle.pid(), libc::SIGTERM);
        desktop.phase = Phase::Stopping;
        desktop.kill_at = Some(Instant::now() + self.stop_grace);
    }

    fn poll(&mut self) -> Vec<Observed> {
        let now = Instant::now();
        let mut observed = Vec::with_capacity(self.desktops.len());
        for (id, desktop) in &mut self.desktops {
            if !desktop.phase.ended() {
                let dir = desktop.sandbox.as_ref().map(|(_, dir)| dir.as_path());
                match desktop.handle.try_wait(dir) {
                    Ok(Some(ended)) => {
                        // Whatever it left in its group (and cgroup) goes
                        // with it.
                        signal_group(desktop.handle.pid(), libc::SIGKILL);
                        let oom_killed = desktop
                            .cgroup
                            .as_ref()
                            .is_some_and(|cgroup| cgroup.usage().oom_kills > 0);
                        if let Some(cgroup) = desktop.cgroup.take() {
                            if let Err(error) = cgroup.destroy(Duration::from_secs(5)) {
                                tracing::warn!(desktop = %id, %error, "cannot remove its cgroup");
                            }
                        }
                        if let (Some(net), Some(network)) = (desktop.net.take(), &mut self.network)
                        {
                            network.release(&net);
                        }
                        // Its gpud session and socket go, and with them
                        // every byte of GPU memory it held.
                        desktop.gpu = None;
                        // The sandbox's own last word, if it had one.
                        let said =
                            dir.and_then(|dir| read_tail(&dir.join(LOG_FILE), 64 * 1024).ok())
                                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                                .and_then(|log| {
                                    // Written by the desktop too: untrusted, so
                                    // printable and short.
                                    log.lines().rev().find(|l| l.starts_with("sandbox:")).map(
                                        |line| {
                                            line.chars()
                                                .take(300)
                                                .map(|c| if c.is_control() { '?' } else { c })
                                                .collect::<String>()
                                        },
                                    )
                                });
                        desktop.phase = if desktop.phase == Phase::Stopping {
                            Phase::Stopped
                        } else if ended.code == Some(crate::sandbox::init::SETUP_FAILED)
                            && desktop.sandbox.is_some()
                        {
                            Phase::Failed(format!(
                                "the sandbox could not be built: {}",
                                said.as_deref().unwrap_or("no message")
                            ))
                        } else if let Some(said) = said {
                            Phase::Failed(format!("the desktop ended ({}): {said}", ended.text))
                        } else if oom_killed {
                            Phase::Failed(format!(
                                "out of memory: killed at its {} MiB limit ({})",
                                desktop.memory_limit >> 20,
                                ended.text
                            ))
                        } else {
                            Phase::Failed(format!("the desktop exited ({})", ended.text))
                        };
                        self.journal
                            .record(&self.node, id, desktop.generation, "stopped");
                    }
                    Ok(None) => {
                        if desktop.kill_at.is_some_and(|at| at <= now) {
                            signal_group(desktop.handle.pid(), libc::SIGKILL);
                            if let Some(cgroup) = &desktop.cgroup {
                                let _ = cgroup.kill_all(Duration::from_millis(100));
                            }
                            desktop.kill_at = None;
                        }
                    }
                    Err(error) => {
                        desktop.phase = Phase::Failed(format!("cannot wait for it: {error}"))
                    }
                }
            }
            let mut usage = match (&desktop.cgroup, desktop.phase.ended()) {
                (_, true) => Usage::default(),
                (Some(cgroup), false) => {
                    let usage = cgroup.usage();
                    Usage {
                        cpu_usec: usage.cpu_usec,
                        memory_bytes: usage.memory_bytes,
                        pids: usage.pids as u32,
                        ..Usage::default()
                    }
                }
                (None, false) => process_usage(desktop.handle.pid() as u32),
            };
            if let (Some(_), Some(gpu)) = (&desktop.gpu, &self.gpu) {
                if let Some((index, account)) = gpu.service.account(id) {
                    usage.gpu_index = Some(index);
                    usage.gpu_charged_bytes = account.charged_bytes;
                    usage.gpu_budget_bytes = account.budget_bytes;
                }
            }
            observed.push(Observed {
                desktop_id: id.clone(),
                generation: desktop.generation,
                phase: desktop.phase.clone(),
                usage,
            });
        }
        observed
    }

    /// Sandboxes keep running (an agent that exits for an upgrade); the
    /// next run adopts them. Plain processes end with the agent anyway.
    fn leave_running(&mut self) {
        self.leave_running = self.sandbox.is_some();
    }

    fn forget(&mut self, desktop_id: &str) {
        if self
            .desktops
            .get(desktop_id)
            .is_some_and(|desktop| desktop.phase.ended())
        {
            if let Some(desktop) = self.desktops.remove(desktop_id) {
                if let Some((_, dir)) = desktop.sandbox {
                    self.remove_desktop_dir(&dir);
                }
            }
        }
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        if self.leave_running {
            tracing::info!(
                sandboxes = self.desktops.len(),
                "leaving sandboxes running for the next run to adopt"
            );
            return;
        }
        for (id, desktop) in &mut self.desktops {
            if !desktop.phase.ended() {
                signal_group(desktop.handle.pid(), libc::SIGKILL);
                if let Some(cgroup) = &desktop.cgroup {
                    let _ = cgroup.kill_all(Duration::from_secs(1));
                }
                desktop.handle.reap();
                self.journal
                    .record(&self.node, id, desktop.generation, "stopped");
            }
            if let Some(cgroup) = desktop.cgroup.take() {
                let _ = cgroup.destroy(Duration::from_secs(5));
            }
            if let (Some(net), Some(network)) = (desktop.net.take(), &mut self.network) {
                network.release(&net);
            }
            if let Some((_, dir)) = desktop.sandbox.take() {
                remove_desktop_dir(self.sandbox.as_ref(), &dir);
            }
        }
        if let Some(scope) = &self.cgroups {
            scope.remove_if_empty();
        }
    }
}

fn signal_group(leader: libc::pid_t, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals the group the process
    // leads (it called setpgid(0, 0)). Our own child is not reaped yet, so
    // its pid and group id cannot have been reused; an adopted one was
    // checked by start time and is watched through a pidfd.
    unsafe {
        libc::kill(-leader, signal);
    }
}

/// CPU time and resident memory of one process, from /proc.
fn process_usage(pid: u32) -> Usage {
    let ticks_per_second = {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if ticks > 0 {
            ticks as u64
        } else {
            100
        }
    };
    let cpu_usec = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the parenthesised command name; utime and stime
            // are the 14th and 15th fields overall.
            let after = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 1_000_000 / ticks_per_second)
        })
        .unwrap_or(0);
    let memory_bytes = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096);
    Usage {
        cpu_usec,
        memory_bytes,
        pids: 1,
        ..Usage::default()
    }
}

pub const JOURNAL_FILE: &str = "desktop-events.jsonl";
/// The journal is rotated to `.1` beyond this size.
const JOURNAL_MAX_BYTES: u64 = 16 << 20;

/// One journal line.
#[derive(Debug, Serialize)]
struct JournalEntry<'a> {
    node: &'a str,
    desktop: &'a str,
    generation: u64,
    event: &'a str,
    monotonic_ns: u128,
}

struct Journal {
    path: PathBuf,
    file: Option<File>,
}

impl Journal {
    fn open(path: &Path) -> std::io::Result<Journal> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Journal {
            path: path.to_owned(),
            file: Some(file),
        })
    }

    fn record(&mut self, node: &str, desktop: &str, generation: u64, event: &str) {
        let entry = JournalEntry {
            node,
            desktop,
            generation,
            event,
            monotonic_ns: monotonic_ns(),
        };
        let Ok(mut line) = serde_json::to_vec(&entry) else {
            return;
        };
        line.push(b'\n');
        if let Some(file) = &mut self.file {
            if let Err(error) = file.write_all(&line) {
                tracing::warn!(%error, path = %self.path.display(), "cannot write the runtime journal");
            }
            if file
                .metadata()
                .is_ok_and(|meta| meta.len() > JOURNAL_MAX_BYTES)
            {
                let _ = std::fs::rename(&self.path, self.path.with_extension("jsonl.1"));
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .ok();
            }
        }
    }
}

/// CLOCK_MONOTONIC in nanoseconds: comparable across processes on a host.
pub fn monotonic_ns() -> u128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u128 * 1_000_000_000 + now.tv_nsec as u128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_overrides_the_nodes_session_part_by_part() {
        let session = SessionCommand {
            program: vec!["session".to_owned()],
            apps: vec!["foot".to_owned(), "chromium --x".to_owned()],
            keyboard_layout: "de".to_owned(),
            keyboard_variant: "nodeadkeys".to_owned(),
        };
        assert_eq!(
            session.command(&Profile::default()).join(" "),
            "session --app foot --app chromium --x --keyboard-layout de --keyboard-variant nodeadkeys"
        );
        // Its own apps replace the node's; its layout comes with its own
        // variant (none here), not the node's.
        let profile = Profile {
            apps: vec!["zed".to_owned()],
            keyboard_layout: "fr".to_owned(),
            keyboard_variant: String::new(),
        };
        assert_eq!(
            session.command(&profile).join(" "),
            "session --app zed --keyboard-layout fr"
        );
    }

    fn spec(id: &str, generation: u64) -> DesktopSpec {
        DesktopSpec {
            profile: Profile::default(),
            desktop_id: id.to_owned(),
            task_id: "t".to_owned(),
            generation,
            cpu_millis: 250,
            memory_bytes: 1 << 30,
            gpu_memory_bytes: 0,
            gpu: None,
            egress: Egress::default(),
        }
    }

    fn wait_for(runtime: &mut ProcessRuntime, id: &str, phase: &str) -> Observed {
        for _ in 0..200 {
            if let Some(observed) = runtime
                .poll()
                .into_iter()
                .find(|observed| observed.desktop_id == id && observed.phase.as_str() == phase)
            {
                return observed;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{id} never became {phase}");
    }

    #[test]
    fn starts_stops_and_journals_processes() {
        let dir = tempfile::tempdir().unwrap();
        let command = vec!["sleep".to_owned(), "1000".to_owned()];
        let mut runtime =
            ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(5)).unwrap();
        runtime.start(&spec("d1", 7)).unwrap();
        assert!(runtime.start(&spec("d1", 7)).is_err(), "no double start");
        let running = wait_for(&mut runtime, "d1", "running");
        assert_eq!(running.generation, 7);
        runtime.stop("d1");
        wait_for(&mut runtime, "d1", "stopped");
        runtime.forget("d1");
        assert!(runtime.poll().is_empty());
        let journal = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
        let events: Vec<serde_json::Value> = journal
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0]["event"], "started");
        assert_eq!(events[1]["event"], "stopped");
        assert!(events[1]["monotonic_ns"].as_u64() > events[0]["monotonic_ns"].as_u64());
    }

    #[test]
    fn a_desktop_that_ignores_sigterm_is_killed_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "trap '' TERM; sleep 1000 & wait".to_owned(),
        ];
        let mut runtime =
            ProcessRuntime::new("n1", dir.path(), command, Duration::from_millis(200)).unwrap();
        runtime.start(&spec("d1", 1)).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        runtime.stop("d1");
        wait_for(&mut runtime, "d1", "stopped");
    }

    /// The host's cgroups for a test, or `None` (with a message) when this
    /// is not root on a host with cgroup controllers.
    fn test_scope(test: &str) -> Option<Scope> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping: needs root");
            return None;
        }
        match crate::sandbox::cgroup::detect_host() {
            Ok(hierarchy) => Some(
                hierarchy
                    .scope(&format!("{test}-{}", std::process::id()))
                    .unwrap(),
            ),
            Err(error) if std::env::var_os("FLOTILLA_REQUIRE_NETNS").is_none() => {
                eprintln!("skipping: {error}");
                None
            }
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn a_memory_hog_is_oom_killed_and_reported() {
        let Some(scope) = test_scope("oom") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let command = vec![
            "sh".to_owned(),
            "-c".to_owned(),
            "x=aaaaaaaa; while true; do x=\"$x$x\"; done".to_owned(),
        ];
        let mut runtime = ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(1))
            .unwrap()
            .with_cgroups(scope.clone(), 64);
        let mut small = spec("hog", 1);
        small.memory_bytes = 32 << 20;
        runtime.start(&small).unwrap();
        let failed = wait_for(&mut runtime, "hog", "failed");
        assert!(
            matches!(&failed.phase, Phase::Failed(reason) if reason.contains("out of memory")),
            "{failed:?}"
        );
        assert!(scope.existing().is_empty(), "its cgroup is gone");
        drop(runtime);
        scope.remove_if_empty();
    }

    #[test]
    fn a_fork_bomb_is_held_by_the_pids_limit() {
        let Some(scope) = test_scope("pids") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        // bash retries a failed fork for a while, so the bomb sits at the
        // limit long enough to be seen there.
        let command = vec![
            "bash".to_owned(),
            "-c".to_owned(),
            "i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done 2>/dev/null; wait"
                .to_owned(),
        ];
        let mut runtime = ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(1))
            .unwrap()
            .with_cgroups(scope.clone(), 32);
        runtime.start(&spec("bomb", 1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut most = 0;
        loop {
            let observed = runtime.poll();
            let pids = observed.first().map_or(0, |o| o.usage.pids);
            most = most.max(pids);
            assert!(pids <= 32, "{pids} processes despite a limit of 32");
            if most == 32 || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(most, 32, "the bomb filled its limit and no more");
        runtime.stop("bomb");
        wait_for(&mut runtime, "bomb", "stopped");
        assert!(
            scope.existing().is_empty(),
            "every process and the cgroup are gone"
        );
        drop(runtime);
        scope.remove_if_empty();
    }

    #[test]
    fn an_exiting_desktop_is_reported_failed_and_a_bad_command_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = ProcessRuntime::new(
            "n1",
            dir.path(),
            vec!["false".to_owned()],
            Duration::from_secs(1),
        )
        .unwrap();
        runtime.start(&spec("d1", 1)).unwrap();
        let failed = wait_for(&mut runtime, "d1", "failed");
        assert!(matches!(failed.phase, Phase::Failed(reason) if reason.contains("exit")));
        let mut missing = ProcessRuntime::new(
            "n1",
            dir.path(),
            vec!["/nonexistent/desktop".to_owned()],
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(missing.start(&spec("d2", 1)).is_err());
    }
}
