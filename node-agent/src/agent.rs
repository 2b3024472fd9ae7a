//! The agent's three loops: heartbeats (which hold the lease), the
//! assignment watch, and the reconciler that makes the runtime match the
//! assignments.
//!
//! Safety rule: desktops run only while the lease is valid — `ttl / 2`
//! after the *sending* of the last heartbeat the leader acknowledged — and
//! only from assignments at least as new as the heartbeat that (re)granted
//! the lease. The leader marks the node down only `ttl` after *receiving*
//! that heartbeat, so by the time a desktop is placed elsewhere this node
//! has stopped it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_proto::node as pb;
use flotilla_proto::node::node_agent_client::NodeAgentClient;
use tokio::sync::{mpsc, Notify};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::host::{self, DataDir};
use crate::runtime::{DesktopRuntime, DesktopSpec, Observed, Phase, ProcessRuntime};

const LEADER_METADATA: &str = "flotilla-leader";
const RECONCILE_EVERY: Duration = Duration::from_millis(100);
const RETRY: Duration = Duration::from_millis(200);
/// How long an ended desktop that should run waits before starting again.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Control-plane servers, `HOST:PORT`; any one will do.
    pub servers: Vec<String>,
    /// A node-join token.
    pub token: String,
    pub name: String,
    pub data_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Overrides of what the host probes find (tests, simulations).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub desktop_slots: u32,
    /// Held back for the host itself.
    pub reserve_cpu_millis: u64,
    pub reserve_memory_bytes: u64,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// What each desktop runs under the process runtime.
    pub desktop_command: Vec<String>,
    /// Enumerate GPUs with Vulkan.
    pub gpus: bool,
    /// Run gpud: serve every desktop a virtio-gpu socket on the host's
    /// GPUs (the CPU renders where there are none).
    pub gpud: bool,
    /// The GPU-memory budget of a desktop that asked for none (its
    /// display: scanout, frame, windows).
    pub display_gpu_memory: u64,
    /// The display size gpud offers each desktop.
    pub display_size: (u32, u32),
    /// Run each sandboxed desktop's session (compositor + apps) instead of
    /// `desktop_command`.
    pub desktop_session: bool,
    /// The session's apps (program and arguments, split at spaces).
    pub desktop_apps: Vec<String>,
    /// The desktops' keyboard: xkb layout and variant (empty: us).
    pub desktop_keyboard: (String, String),
    /// Limit each desktop with a cgroup (needs root and cgroup controllers).
    pub cgroups: bool,
    /// Most processes in one desktop.
    pub pids_limit: u64,
    /// Run desktops in namespace sandboxes (needs root); otherwise plain
    /// child processes.
    pub sandbox: bool,
    /// Give sandboxes a network (veth, NAT, egress policies); `None`: each
    /// has loopback only. Empty `control_plane` means the `--join`
    /// addresses.
    pub network: Option<crate::sandbox::net::NetworkSettings>,
    /// On shutdown leave sandboxes running for the next run to adopt.
    pub leave_desktops_running: bool,
    /// A directory whose `usr/` is layered over the host's `/usr` in every
    /// sandbox.
    pub base_image: Option<PathBuf>,
    /// Host character devices granted to every desktop.
    pub devices: Vec<PathBuf>,
    /// Keep each destroyed desktop's home and workspace under
    /// `<data>/kept/` instead of removing them.
    pub keep_desktop_files: bool,
    /// On shutdown also remove the desktop bridge and nftables table
    /// (`flotilla dev`, which leaves nothing on the host); a node agent
    /// keeps them for the desktops of its next run.
    pub remove_network_on_exit: bool,
}

impl AgentOptions {
    pub fn new(servers: Vec<String>, token: String, name: String, data_dir: PathBuf) -> Self {
        AgentOptions {
            servers,
            token,
            name,
            data_dir,
            labels: BTreeMap::new(),
            cpu_millis: None,
            memory_bytes: None,
            desktop_slots: 16,
            reserve_cpu_millis: 250,
            reserve_memory_bytes: 1 << 30,
            stop_grace: Duration::from_secs(10),
            desktop_command: vec!["sleep".to_owned(), "infinity".to_owned()],
            gpus: true,
            gpud: true,
            display_gpu_memory: 64 << 20,
            display_size: (1280, 800),
            desktop_session: false,
            desktop_keyboard: (String::new(), String::new()),
            desktop_apps: vec![
                "foot".to_owned(),
                "chromium --ozone-platform=wayland --no-first-run --no-sandbox".to_owned(),
            ],
            cgroups: true,
            pids_limit: 4096,
            sandbox: true,
            network: Some(crate::sandbox::net::NetworkSettings::default()),
            leave_desktops_running: false,
            remove_network_on_exit: false,
            base_image: None,
            devices: Vec::new(),
            keep_desktop_files: false,
        }
    }
}

/// Which servers to talk to, and which one leads.
struct Servers {
    addrs: Vec<String>,
    next: AtomicUsize,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    token: String,
}

impl Servers {
    fn pick(&self) -> String {
        if let Some(leader) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return leader;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        self.addrs[index].clone()
    }

    fn client(&self, addr: &str) -> anyhow::Result<NodeAgentClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .with_context(|| format!("{addr:?} is not a HOST:PORT address"))?
                    .connect_timeout(Duration::from_secs(1))
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(NodeAgentClient::new(channel))
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Learns from a failed call: follow a leader hint, or try elsewhere.
    fn failed(&self, addr: &str, status: &Status) {
        let hint = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        match hint {
            Some(hint) if hint != addr => *leader = Some(hint),
            _ => {
                *leader = None;
                // A dead connection is rebuilt from scratch next time.
                if status.code() == Code::Unavailable {
                    self.channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(addr);
                }
            }
        }
    }

    fn succeeded(&self, addr: &str) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_owned());
    }
}

#[derive(Default)]
struct Lease {
    /// Desktops may run until then.
    until: Option<Instant>,
    /// Assignments older than this revision predate the lease.
    required_revision: u64,
}

struct Received {
    revision: u64,
    desktops: Vec<pb::Assignment>,
}

struct Shared {
    /// Where sandboxes read the lease's deadline (when sandboxed).
    lease_file: Option<PathBuf>,
    node_id: String,
    servers: Servers,
    lease: Mutex<Lease>,
    assignments: Mutex<Option<Received>>,
    report: Mutex<Vec<pb::DesktopStatus>>,
    reconcile_now: Notify,
    heartbeat_now: Notify,
    rewatch: Notify,
}

/// Runs the agent until `shutdown` resolves; then stops every desktop.
pub async fn run(
    options: AgentOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if options.servers.is_empty() {
        bail!("--join needs at least one control-plane address");
    }
    if let Some(image) = &options.base_image {
        crate::sandbox::validate_base_image(image).map_err(anyhow::Error::msg)?;
    }
    for device in &options.devices {
        crate::sandbox::validate_device(device).map_err(anyhow::Error::msg)?;
    }
    let data_dir = DataDir::open(&options.data_dir)?;
    let identity = data_dir.identity(&options.name)?;
    let gpus = enumerate_gpus(&options);
    // gpud: every GPU opened once, shared by this node's desktops.
    let gpu_service = options.gpud.then(|| {
        let (width, height) = options.display_size;
        let service = flotilla_gpu::service::GpuService::open(&gpus, width, height);
        if service.on_gpu() {
            tracing::info!(
                gpus = service.gpus().len(),
                "gpud serves desktops on the host's GPUs"
            );
        } else {
            tracing::warn!("gpud renders on the CPU: no GPU could be opened");
        }
        Arc::new(service)
    });
    let registration = registration(
        &options,
        &identity.node_id,
        &data_dir,
        &gpus,
        gpu_service.as_deref(),
    )?;
    tracing::info!(
        node_id = %identity.node_id,
        name = %identity.name,
        cpu_millis = registration.capacity.as_ref().map_or(0, |c| c.cpu_millis),
        memory_bytes = registration.capacity.as_ref().map_or(0, |c| c.memory_bytes),
        gpus = registration.gpus.len(),
        "node agent starting"
    );
    let sandboxed = sandboxes_possible(&options);
    // The desktop session (compositor + apps) runs from a copy of this
    // binary that every sandbox can reach.
    let session_exe = if options.desktop_session && sandboxed && options.gpud {
        Some(session_binary(&data_dir.path).context("prepare the desktop session's binary")?)
    } else {
        if options.desktop_session {
            tracing::warn!(
                "--desktop-session needs sandboxes and gpud: desktops run --desktop-command"
            );
        }
        None
    };
    let session = session_exe
        .as_ref()
        .map(|_| crate::runtime::SessionCommand {
            program: vec![
                crate::sandbox::SESSION_EXE.to_owned(),
                "desktop-session".to_owned(),
            ],
            apps: options.desktop_apps.clone(),
            keyboard_layout: options.desktop_keyboard.0.clone(),
            keyboard_variant: options.desktop_keyboard.1.clone(),
        });
    let command = match &session {
        Some(session) => session.command(&crate::runtime::Profile::default()),
        None => options.desktop_command.clone(),
    };
    let runtime = ProcessRuntime::new(&options.name, &data_dir.path, command, options.stop_grace)
        .context("set up the desktop runtime")?;
    let runtime = match session {
        Some(session) => runtime.with_session(session),
        None => runtime,
    };
    let lease_file = data_dir.path.join(LEASE_FILE);
    // Sandboxes first: they adopt what an earlier run left running, and
    // the cgroups and network keep what those use.
    let runtime = if sandboxed {
        let settings = crate::runtime::SandboxSettings {
            exe: std::env::current_exe().context("find the flotilla binary for sandbox-init")?,
            desktops_dir: data_dir.path.join("desktops"),
            first_slot: 0,
            lease_file: Some(lease_file.clone()),
            base_image: options.base_image.clone(),
            devices: options.devices.clone(),
            kept_dir: options
                .keep_desktop_files
                .then(|| data_dir.path.join("kept")),
            zygote: true,
            fail_at_step: None,
            session_exe: session_exe.clone(),
            // The session's apps need the host's font configuration, and
            // Debian's chromium wrapper its flag directories.
            etc_binds: if session_exe.is_some() {
                ["/etc/fonts", "/etc/chromium", "/etc/chromium.d"]
                    .iter()
                    .map(PathBuf::from)
                    .filter(|path| path.is_dir())
                    .collect()
            } else {
                Vec::new()
            },
        };
        tracing::info!(
            "desktops run in namespace sandboxes (user, pid, mount, uts, ipc, net, cgroup)"
        );
        runtime
            .with_sandbox(settings)
            .context("prepare the sandboxes' directory")?
    } else {
        runtime
    };
    let runtime = match cgroup_scope(&options) {
        Some(scope) => runtime.with_cgroups(scope, options.pids_limit),
        None => runtime,
    };
    let runtime = match &gpu_service {
        Some(service) => runtime.with_gpu(service.clone(), options.display_gpu_memory),
        None => runtime,
    };
    let mut runtime = runtime;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut network_set_up = None;
    match (&options.network, sandboxed && root) {
        (Some(settings), true) => {
            let mut settings = settings.clone();
            if settings.control_plane.is_empty() {
                settings.control_plane = resolve_endpoints(&options.servers);
            }
            match runtime.add_network(settings.clone()) {
                Ok(()) => {
                    tracing::info!(
                        bridge = %settings.bridge,
                        subnet = %format!("{}/16", settings.subnet),
                        control_plane = ?settings.desktop_endpoints(),
                        "desktops get a network: veth on the bridge, NAT, egress policy per desktop (none, control-plane, open)"
                    );
                    network_set_up = Some(settings);
                }
                Err(error) => {
                    tracing::warn!(%error, "desktops get NO network (loopback only, as with egress policy none): the host side could not be set up")
                }
            }
        }
        (None, true) => tracing::warn!("--no-desktop-network: desktops have loopback only"),
        _ => {}
    }
    let shared = Arc::new(Shared {
        lease_file: sandboxed.then(|| lease_file.clone()),
        node_id: identity.node_id.clone(),
        servers: Servers {
            addrs: options.servers.clone(),
            next: AtomicUsize::new(0),
            leader: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            token: options.token.clone(),
        },
        lease: Mutex::new(Lease::default()),
        assignments: Mutex::new(None),
        report: Mutex::new(Vec::new()),
        reconcile_now: Notify::new(),
        heartbeat_now: Notify::new(),
        rewatch: Notify::new(),
    });
    register(&shared, &registration).await?;

    let heartbeats = tokio::spawn(heartbeat_loop(shared.clone(), registration));
    let watch = tokio::spawn(watch_loop(shared.clone()));
    let operator = crate::operator::OperatorSettings {
        node_id: identity.node_id.clone(),
        exe: std::env::current_exe().context("find the flotilla binary for sandbox-exec")?,
        desktops_dir: sandboxed.then(|| data_dir.path.join("desktops")),
        gpu: gpu_service.clone(),
    };
    let tunnel = tokio::spawn(tunnel_loop(shared.clone(), Arc::new(operator)));
    let (stop_sender, stop_receiver) = tokio::sync::oneshot::channel();
    let reconciler = tokio::spawn(reconcile_loop(
        shared.clone(),
        Box::new(runtime),
        options.stop_grace,
        stop_receiver,
        options.leave_desktops_running,
    ));
    shutdown.await;
    tracing::info!("shutting down: stopping desktops");
    heartbeats.abort();
    watch.abort();
    tunnel.abort();
    let _ = stop_sender.send(());
    let _ = reconciler.await;
    if let (Some(settings), true, false) = (
        &network_set_up,
        options.remove_network_on_exit,
        options.leave_desktops_running,
    ) {
        match crate::sandbox::net::Network::remove_host_setup(settings) {
            Ok(()) => {
                tracing::info!(bridge = %settings.bridge, "removed the desktop bridge and rules")
            }
            Err(error) => tracing::warn!(%error, "cannot remove the desktop bridge and rules"),
        }
    }
    drop(data_dir);
    Ok(())
}

/// The cgroups desktops get, or `None` with a plain warning saying why
/// they run without limits.
fn cgroup_scope(options: &AgentOptions) -> Option<crate::sandbox::cgroup::Scope> {
    if !options.cgroups {
        tracing::warn!("--no-cgroups: desktops run without CPU, memory and pids limits");
        return None;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::warn!("not running as root: desktops run without CPU, memory and pids limits (cgroups need root or delegation)");
        return None;
    }
    match crate::sandbox::cgroup::detect_host().and_then(|hierarchy| {
        let version = hierarchy.version();
        hierarchy.scope(&options.name).map(|scope| (scope, version))
    }) {
        Ok((scope, version)) => {
            tracing::info!(
                version,
                "desktops get cgroup limits (CPU weight, memory without swap, pids)"
            );
            Some(scope)
        }
        Err(error) => {
            tracing::warn!(%error, "desktops run without CPU, memory and pids limits");
            None
        }
    }
}

/// The file holding the lease's CLOCK_MONOTONIC deadline for sandboxes.
pub const LEASE_FILE: &str = "lease";

/// The control-plane addresses, resolved (those that do not resolve are
/// left out with a warning).
fn resolve_endpoints(servers: &[String]) -> Vec<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let mut endpoints = Vec::new();
    for server in servers {
        let address = server
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        match address.to_socket_addrs() {
            Ok(found) => endpoints.extend(found.filter(|a| a.is_ipv4())),
            Err(error) => {
                tracing::warn!(%server, %error, "cannot resolve a control-plane address for desktops")
            }
        }
    }
    endpoints.sort();
    endpoints.dedup();
    endpoints
}

/// Writes the lease deadline for sandboxes (temporary file and rename).
fn write_lease(path: &std::path::Path, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    let deadline = crate::runtime::monotonic_ns() + left.as_nanos();
    let written = crate::runtime::write_atomically(path, format!("{deadline}\n").as_bytes());
    if let Err(error) = written {
        tracing::warn!(%error, path = %path.display(), "cannot write the lease file");
    }
}

fn sandboxes_possible(options: &AgentOptions) -> bool {
    if !options.sandbox {
        tracing::warn!("--runtime process: desktops run as plain processes, not sandboxed");
        return false;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if !unprivileged_user_namespaces() {
        tracing::warn!("not root and this kernel refuses unprivileged user namespaces: desktops run as plain processes, NOT sandboxed (run as root, or allow them: sysctl kernel.unprivileged_userns_clone=1 / kernel.apparmor_restrict_unprivileged_userns=0)");
        return false;
    }
    tracing::warn!(
        "rootless sandboxes: desktops get their own user, pid, mount, uts, ipc, net and cgroup namespaces, but with REDUCED protection: every desktop maps to your own uid on the host (no uid range per desktop), no cgroup limits (no delegation), and loopback only (egress none)"
    );
    true
}

/// Whether this process may create a user namespace (with a mount
/// namespace in it): tried in a forked child.
fn unprivileged_user_namespaces() -> bool {
    // SAFETY: the child makes only raw syscalls (unshare, _exit) before
    // exiting, which is safe after fork in a multi-threaded process.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            let ok = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
        if child < 0 {
            return false;
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0) == child
            && libc::WIFEXITED(status)
            && libc::WEXITSTATUS(status) == 0
    }
}

/// A copy (or hard link) of this binary at `<data>/bin/flotilla`, readable
/// and executable by every sandbox's unprivileged uids, whatever the
/// permissions on the path to the original.
fn session_binary(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exe = std::env::current_exe().context("find the flotilla binary")?;
    let dir = data_dir.join("bin");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    let target = dir.join("flotilla");
    let temporary = dir.join("flotilla.new");
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(&exe, &temporary).is_err() {
        std::fs::copy(&exe, &temporary)
            .with_context(|| format!("copy {} to {}", exe.display(), temporary.display()))?;
    }
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&temporary, &target)?;
    Ok(target)
}

/// The host's GPUs (none when `--no-gpus` or without Vulkan).
fn enumerate_gpus(options: &AgentOptions) -> Vec<flotilla_gpu::GpuInfo> {
    if !options.gpus {
        return Vec::new();
    }
    match flotilla_gpu::enumerate() {
        Ok(gpus) => gpus,
        Err(error) => {
            tracing::warn!(%error, "no GPUs reported");
            Vec::new()
        }
    }
}

fn registration(
    options: &AgentOptions,
    node_id: &str,
    data_dir: &DataDir,
    gpus: &[flotilla_gpu::GpuInfo],
    gpu_service: Option<&flotilla_gpu::service::GpuService>,
) -> anyhow::Result<pb::RegisterRequest> {
    let host_cpu = host::cpu_count() * 1000;
    let host_memory = host::memory_bytes()?;
    let cpu_millis = options
        .cpu_millis
        .unwrap_or_else(|| host_cpu.saturating_sub(options.reserve_cpu_millis));
    let memory_bytes = options
        .memory_bytes
        .unwrap_or_else(|| host_memory.saturating_sub(options.reserve_memory_bytes));
    if cpu_millis == 0 || memory_bytes == 0 {
        bail!(
            "nothing is left for desktops: the host has {host_cpu} millicores and {host_memory} bytes, and {} / {} are reserved",
            options.reserve_cpu_millis,
            options.reserve_memory_bytes
        );
    }
    let capabilities = |position: usize| {
        let served = gpu_service?.gpus().get(position)?;
        served.info.as_ref()?;
        let c = served.capabilities.as_ref()?;
        Some(pb::GpuCapabilities {
            api_version: c.api_version.clone(),
            queue_count: c.queue_count,
            external_memory_fd: c.external_memory_fd,
            dma_buf: c.dma_buf,
            drm_format_modifiers: c.drm_format_modifiers,
            memory_budget: c.memory_budget,
            external_semaphore_fd: c.external_semaphore_fd,
            external_fence_fd: c.external_fence_fd,
            video_encode: c.video_encode,
        })
    };
    Ok(pb::RegisterRequest {
        node_id: node_id.to_owned(),
        name: options.name.clone(),
        labels: options.labels.clone().into_iter().collect(),
        capacity: Some(pb::Capacity {
            cpu_millis,
            memory_bytes,
            disk_bytes: host::disk_bytes(&data_dir.path)?,
            desktop_slots: options.desktop_slots,
        }),
        reserved: Some(pb::Capacity {
            cpu_millis: options.reserve_cpu_millis,
            memory_bytes: options.reserve_memory_bytes,
            disk_bytes: 0,
            desktop_slots: 0,
        }),
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(position, gpu)| pb::Gpu {
                index: gpu.index,
                name: gpu.name.clone(),
                vendor_id: gpu.vendor_id,
                device_id: gpu.device_id,
                driver: gpu.driver.clone(),
                uuid: gpu.uuid.clone(),
                memory_bytes: gpu.memory_bytes,
                cpu_implementation: gpu.cpu_implementation,
                capabilities: capabilities(position),
            })
            .collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Registers, retrying while the cluster is unreachable; refusals that a
/// retry cannot fix end the agent with the server's reason.
async fn register(shared: &Shared, registration: &pb::RegisterRequest) -> anyhow::Result<()> {
    loop {
        let addr = shared.servers.pick();
        let result = match shared.servers.client(&addr) {
            Ok(mut client) => {
                tokio::time::timeout(
                    Duration::from_secs(15),
                    client.register(shared.servers.request(registration.clone())),
                )
                .await
            }
            Err(error) => return Err(error),
        };
        match result {
            Ok(Ok(_)) => {
                tracing::info!(server = %addr, "registered");
                return Ok(());
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::AlreadyExists
                        | Code::Unauthenticated
                        | Code::PermissionDenied
                        | Code::FailedPrecondition
                ) =>
            {
                bail!(
                    "the control plane at {addr} refused this node: {}",
                    status.message()
                )
            }
            Ok(Err(status)) => {
                tracing::debug!(server = %addr, error = %status.message(), "register failed; retrying");
                shared.servers.failed(&addr, &status);
            }
            Err(_) => {
                tracing::debug!(server = %addr, "register timed out; retrying");
                shared
                    .servers
                    .failed(&addr, &Status::unavailable("timed out"));
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn heartbeat_loop(shared: Arc<Shared>, registration: pb::RegisterRequest) {
    let mut timeout = Duration::from_secs(2);
    loop {
        let addr = shared.servers.pick();
        let desktops = shared
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let request = pb::HeartbeatRequest {
            node_id: shared.node_id.clone(),
            desktops,
        };
        let sent = Instant::now();
        let result = match shared.servers.client(&addr) {
            Ok(mut client) => {
                tokio::time::timeout(timeout, client.heartbeat(shared.servers.request(request)))
                    .await
                    .unwrap_or_else(|_| Err(Status::unavailable("heartbeat timed out")))
            }
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        };
        let pause = match result {
            Ok(response) => {
                shared.servers.succeeded(&addr);
                let response = response.into_inner();
                let ttl = Duration::from_millis(response.ttl_ms);
                timeout = (ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
                let regained = {
                    let mut lease = shared.lease.lock().unwrap_or_else(|p| p.into_inner());
                    let lapsed = lease.until.is_none_or(|until| until <= sent);
                    if lapsed {
                        lease.required_revision = response.revision;
                    }
                    lease.until = Some(sent + ttl / 2);
                    if let Some(path) = &shared.lease_file {
                        write_lease(path, sent + ttl / 2);
                    }
                    lapsed
                };
                if regained {
                    tracing::info!(revision = response.revision, "lease granted");
                    shared.rewatch.notify_one();
                }
                Duration::from_millis(response.next_heartbeat_ms.max(20))
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!("the control plane does not know this node; registering again");
                if let Err(error) = register(&shared, &registration).await {
                    tracing::error!(%error, "cannot register again");
                }
                RETRY
            }
            Err(status) => {
                tracing::debug!(server = %addr, error = %status.message(), "heartbeat failed");
                shared.servers.failed(&addr, &status);
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shared.heartbeat_now.notified() => {
                // Coalesce bursts of state changes into one report.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

async fn watch_loop(shared: Arc<Shared>) {
    loop {
        let addr = shared.servers.pick();
        let after_revision = {
            let lease = shared.lease.lock().unwrap_or_else(|p| p.into_inner());
            let received = shared
                .assignments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(0, |received| received.revision);
            lease.required_revision.max(received)
        };
        let request = pb::WatchAssignmentsRequest {
            node_id: shared.node_id.clone(),
            after_revision,
        };
        let stream = match shared.servers.client(&addr) {
            Ok(mut client) => tokio::time::timeout(
                Duration::from_secs(5),
                client.watch_assignments(shared.servers.request(request)),
            )
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("watch timed out"))),
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        };
        let mut stream = match stream {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                tracing::debug!(server = %addr, error = %status.message(), "watch failed");
                shared.servers.failed(&addr, &status);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(assignments)) => {
                        tracing::debug!(revision = assignments.revision, desktops = assignments.desktops.len(), "assignments");
                        *shared.assignments.lock().unwrap_or_else(|p| p.into_inner()) = Some(Received {
                            revision: assignments.revision,
                            desktops: assignments.desktops,
                        });
                        shared.reconcile_now.notify_one();
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(server = %addr, error = %status.message(), "watch ended");
                        shared.servers.failed(&addr, &status);
                        break;
                    }
                },
                _ = shared.rewatch.notified() => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Most operator sessions running at once on this node.
const MAX_SESSIONS: usize = 64;

/// Keeps a tunnel open to the leader and runs the operator sessions that
/// come down it (see `operator`).
async fn tunnel_loop(shared: Arc<Shared>, operator: Arc<crate::operator::OperatorSettings>) {
    loop {
        let addr = shared.servers.pick();
        let (up, outgoing) = mpsc::channel(64);
        let hello = pb::TunnelUp {
            node_id: shared.node_id.clone(),
            session: 0,
            event: None,
        };
        let _ = up.try_send(hello);
        let opened = match shared.servers.client(&addr) {
            Ok(mut client) => tokio::time::timeout(
                Duration::from_secs(5),
                client.tunnel(
                    shared
                        .servers
                        .request(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
                ),
            )
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("opening the tunnel timed out"))),
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        };
        let mut down = match opened {
            Ok(down) => down.into_inner(),
            Err(status) => {
                tracing::debug!(server = %addr, error = %status.message(), "tunnel failed");
                shared.servers.failed(&addr, &status);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tracing::debug!(server = %addr, "operator tunnel open");
        // Each session's task, and where lines sent to it later go.
        let mut sessions: HashMap<u64, (tokio::task::JoinHandle<()>, mpsc::Sender<Vec<u8>>)> =
            HashMap::new();
        loop {
            let message = match down.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    shared.servers.failed(&addr, &status);
                    break;
                }
            };
            sessions.retain(|_, (task, _)| !task.is_finished());
            let session = message.session;
            match message.request {
                // Aborting drops the session's process (its group is killed).
                Some(pb::tunnel_down::Request::Cancel(_)) => {
                    if let Some((task, _)) = sessions.remove(&session) {
                        task.abort();
                    }
                }
                Some(pb::tunnel_down::Request::Stdin(line)) => {
                    if let Some((_, stdin)) = sessions.get(&session) {
                        if stdin.try_send(line).is_err() {
                            tracing::warn!(
                                session,
                                "a session's input queue is full; dropped a line"
                            );
                        }
                    }
                }
                Some(request) if session != 0 && !sessions.contains_key(&session) => {
                    if sessions.len() >= MAX_SESSIONS {
                        let _ = up.try_send(pb::TunnelUp {
                            node_id: shared.node_id.clone(),
                            session,
                            event: Some(pb::tunnel_up::Event::Error(format!(
                                "this node runs {MAX_SESSIONS} operator sessions already"
                            ))),
                        });
                        continue;
                    }
                    let (operator, up) = (operator.clone(), up.clone());
                    let (stdin, lines) = mpsc::channel(256);
                    sessions.insert(
                        session,
                        (
                            tokio::spawn(async move {
                                crate::operator::run(&operator, session, request, &up, lines).await
                            }),
                            stdin,
                        ),
                    );
                }
                _ => tracing::warn!(session, "ignoring a malformed tunnel request"),
            }
        }
        for (task, _) in sessions.values() {
            task.abort();
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Makes the runtime match the assignments while the lease holds, and
/// stops everything when it does not.
async fn reconcile_loop(
    shared: Arc<Shared>,
    mut runtime: Box<dyn DesktopRuntime>,
    stop_grace: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    leave_running: bool,
) {
    let mut reconciler = Reconciler::default();
    loop {
        let desired = desired(&shared);
        // A step may wait on the runtime (killing a cgroup, reaping): off
        // the async workers, so heartbeats never queue behind it.
        let report = tokio::task::block_in_place(|| {
            reconciler.step(runtime.as_mut(), desired.as_deref(), Instant::now())
        });
        let changed = {
            let mut current = shared.report.lock().unwrap_or_else(|p| p.into_inner());
            let changed = !same_states(&current, &report);
            *current = report;
            changed
        };
        if changed {
            shared.heartbeat_now.notify_one();
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shared.reconcile_now.notified() => {}
            _ = &mut stop => break,
        }
    }
    if leave_running {
        runtime.leave_running();
        return;
    }
    // Shutdown: stop everything, politely first.
    let deadline = Instant::now() + stop_grace + Duration::from_secs(1);
    loop {
        tokio::task::block_in_place(|| {
            reconciler.step(runtime.as_mut(), Some(&[]), Instant::now())
        });
        let running = runtime.poll().iter().any(|o| !o.phase.ended());
        if !running || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same_states(a: &[pb::DesktopStatus], b: &[pb::DesktopStatus]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.desktop_id == b.desktop_id
                && a.generation == b.generation
                && a.state == b.state
                && a.reason == b.reason
        })
}

/// What should run now: `None` while the lease is not held or the
/// assignments predate it (then everything stops).
fn desired(shared: &Shared) -> Option<Vec<pb::Assignment>> {
    let lease = shared.lease.lock().unwrap_or_else(|p| p.into_inner());
    let valid = lease.until.is_some_and(|until| Instant::now() < until);
    if !valid {
        return None;
    }
    let assignments = shared.assignments.lock().unwrap_or_else(|p| p.into_inner());
    let received = assignments.as_ref()?;
    if received.revision < lease.required_revision {
        return None;
    }
    Some(received.desktops.clone())
}

/// The pure-ish core of reconciliation, separate from the loop so it can be
/// tested with any runtime.
pub struct Reconciler {
    /// Ended desktops that should run wait until then before restarting.
    restart_at: HashMap<String, Instant>,
    /// No lease: nothing may run. True at start (nothing runs yet, nothing
    /// to warn about).
    fenced: bool,
    /// A lease was held since this process started. Before the first one,
    /// sandboxes adopted from an earlier run are left alone: they still
    /// run under that run's lease, which they enforce themselves.
    leased_once: bool,
}

impl Default for Reconciler {
    fn default() -> Reconciler {
        Reconciler {
            restart_at: HashMap::new(),
            fenced: true,
            leased_once: false,
        }
    }
}

impl Reconciler {
    /// One pass. `desired` is `None` when nothing may run (no lease).
    /// Returns the report for the next heartbeat.
    pub fn step(
        &mut self,
        runtime: &mut dyn DesktopRuntime,
        desired: Option<&[pb::Assignment]>,
        now: Instant,
    ) -> Vec<pb::DesktopStatus> {
        self.leased_once |= desired.is_some();
        if !self.leased_once {
            return report(runtime.poll());
        }
        if desired.is_none() != self.fenced {
            self.fenced = desired.is_none();
            if self.fenced {
                tracing::warn!(
                    "no valid lease: stopping every desktop until the control plane answers again"
                );
            }
        }
        let wanted: HashMap<&str, &pb::Assignment> = desired
            .unwrap_or_default()
            .iter()
            .map(|assignment| (assignment.desktop_id.as_str(), assignment))
            .collect();
        let observed = runtime.poll();
        let mut present: HashMap<String, Observed> = HashMap::new();
        for desktop in observed {
            let assignment = wanted.get(desktop.desktop_id.as_str());
            let keep = assignment.is_some_and(|a| a.run && a.generation == desktop.generation);
            if !keep && !desktop.phase.ended() {
                tracing::info!(desktop = %desktop.desktop_id, generation = desktop.generation, "stopping");
                runtime.stop(&desktop.desktop_id);
            }
            let still_reported = assignment.is_some_and(|a| a.generation == desktop.generation);
            if desktop.phase.ended() && !still_reported {
                runtime.forget(&desktop.desktop_id);
                self.restart_at.remove(&desktop.desktop_id);
                continue;
            }
            if keep && desktop.phase.ended() {
                let backoff = if matches!(desktop.phase, Phase::Failed(_)) {
                    FAILURE_BACKOFF
                } else {
                    RESTART_BACKOFF
                };
                let at = *self
                    .restart_at
                    .entry(desktop.desktop_id.clone())
                    .or_insert(now + backoff);
                if at <= now {
                    runtime.forget(&desktop.desktop_id);
                    self.restart_at.remove(&desktop.desktop_id);
                    continue;
                }
            }
            present.insert(desktop.desktop_id.clone(), desktop);
        }
        for (id, assignment) in &wanted {
            if !assignment.run || present.contains_key(*id) {
                continue;
            }
            let spec = DesktopSpec {
                desktop_id: assignment.desktop_id.clone(),
                task_id: assignment.task_id.clone(),
                generation: assignment.generation,
                cpu_millis: assignment.cpu_millis,
                memory_bytes: assignment.memory_bytes,
                gpu_memory_bytes: assignment.gpu_memory_bytes,
                gpu: assignment.gpu,
                egress: match assignment.egress.parse() {
                    Ok(egress) => egress,
                    Err(error) => {
                        tracing::warn!(desktop = %id, %error, "cannot start");
                        continue;
                    }
                },
                profile: crate::runtime::Profile {
                    apps: assignment.apps.clone(),
                    keyboard_layout: assignment.keyboard_layout.clone(),
                    keyboard_variant: assignment.keyboard_variant.clone(),
                },
            };
            tracing::info!(desktop = %id, generation = assignment.generation, "starting");
            if let Err(error) = runtime.start(&spec) {
                tracing::warn!(desktop = %id, %error, "cannot start");
            }
        }
        report(runtime.poll())
    }
}

/// The heartbeat's view of what the runtime observed.
fn report(observed: Vec<Observed>) -> Vec<pb::DesktopStatus> {
    let mut report: Vec<pb::DesktopStatus> = observed
        .into_iter()
        .map(|desktop| pb::DesktopStatus {
            desktop_id: desktop.desktop_id,
            generation: desktop.generation,
            state: desktop.phase.as_str().to_owned(),
            reason: match desktop.phase {
                Phase::Failed(reason) => reason,
                _ => String::new(),
            },
            usage: Some(pb::DesktopUsage {
                cpu_usec: desktop.usage.cpu_usec,
                memory_bytes: desktop.usage.memory_bytes,
                pids: desktop.usage.pids,
                gpu_index: desktop.usage.gpu_index,
                gpu_charged_bytes: desktop.usage.gpu_charged_bytes,
                gpu_budget_bytes: desktop.usage.gpu_budget_bytes,
            }),
        })
        .collect();
    report.sort_by(|a, b| a.desktop_id.cmp(&b.desktop_id));
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(id: &str, generation: u64, run: bool) -> pb::Assignment {
        pb::Assignment {
            desktop_id: id.to_owned(),
            task_id: "t".to_owned(),
            generation,
            run,
            cpu_millis: 250,
            memory_bytes: 1 << 30,
            gpu_memory_bytes: 0,
            gpu: None,
            egress: String::new(),
            apps: Vec::new(),
            keyboard_layout: String::new(),
            keyboard_variant: String::new(),
        }
    }

    fn runtime(dir: &std::path::Path) -> ProcessRuntime {
        ProcessRuntime::new(
            "n1",
            dir,
            vec!["sleep".to_owned(), "1000".to_owned()],
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn settle(
        reconciler: &mut Reconciler,
        runtime: &mut ProcessRuntime,
        desired: Option<&[pb::Assignment]>,
        want: &[(&str, u64, &str)],
    ) {
        let mut last = Vec::new();
        for _ in 0..100 {
            last = reconciler.step(runtime, desired, Instant::now());
            let states: Vec<(&str, u64, &str)> = last
                .iter()
                .map(|s| (s.desktop_id.as_str(), s.generation, s.state.as_str()))
                .collect();
            if states == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never reached {want:?}; last report {last:?}");
    }

    #[test]
    fn runs_what_is_assigned_and_stops_what_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = runtime(dir.path());
        let mut reconciler = Reconciler::default();
        let both = [assignment("a", 5, true), assignment("b", 6, true)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&both),
            &[("a", 5, "running"), ("b", 6, "running")],
        );
        // b is being drained: stopped and reported stopped while assigned.
        let draining = [assignment("a", 5, true), assignment("b", 6, false)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&draining),
            &[("a", 5, "running"), ("b", 6, "stopped")],
        );
        // Its assignment goes away: forgotten.
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&both[..1]),
            &[("a", 5, "running")],
        );
        // A new generation of a replaces the old one.
        let moved = [assignment("a", 9, true)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&moved),
            &[("a", 9, "running")],
        );
    }

    #[test]
    fn without_a_lease_everything_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = runtime(dir.path());
        let mut reconciler = Reconciler::default();
        let one = [assignment("a", 5, true)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&one),
            &[("a", 5, "running")],
        );
        settle(&mut reconciler, &mut runtime, None, &[]);
        // The lease comes back with the same assignment: it runs again.
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&one),
            &[("a", 5, "running")],
        );
    }
}
