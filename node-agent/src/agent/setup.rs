//! Setting the host up for desktops at start: which sandboxes are
//! possible (root, rootless user namespaces, or none), the desktop
//! session's binary, cgroups, gpud and the desktop network, each step
//! saying plainly what desktops get when it is not available. It builds
//! the runtime the reconciler drives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use flotilla_gpu::service::GpuService;

use super::heartbeat::LEASE_FILE;
use super::AgentOptions;
use crate::host::DataDir;
use crate::runtime::ProcessRuntime;
use crate::sandbox::net::NetworkSettings;

/// The runtime desktops run in, and what was set up for it.
pub(super) struct DesktopSetup {
    pub(super) runtime: ProcessRuntime,
    /// Desktops run in sandboxes (and read the lease file).
    pub(super) sandboxed: bool,
    pub(super) lease_file: PathBuf,
    /// The desktop network's host side, when it was set up.
    pub(super) network: Option<NetworkSettings>,
}

/// Builds the desktop runtime: sandboxes first (they adopt what an earlier
/// run left running), then cgroups, gpud and the network, which keep what
/// the adopted sandboxes use.
pub(super) fn desktop_runtime(
    options: &AgentOptions,
    data_dir: &DataDir,
    gpu_service: Option<&Arc<GpuService>>,
) -> anyhow::Result<DesktopSetup> {
    let sandboxed = sandboxes_possible(options);
    // The desktop session (compositor + apps) runs from a copy of this
    // binary that every sandbox can reach.
    let session_exe = if options.desktop_session && sandboxed && options.gpud {
        Some(session_binary(&data_dir.path).context("prepare the desktop session's binary")?)
    } else {
        if options.desktop_session {
            tracing::warn!(
                command = ?options.desktop_command,
                "a desktop session needs sandboxes and gpud: desktops run this command instead, with NO screen (no screenshots, streams or input)"
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
    let runtime = match cgroup_scope(options) {
        Some(scope) => runtime.with_cgroups(scope, options.pids_limit),
        None => runtime,
    };
    let runtime = match gpu_service {
        Some(service) => runtime.with_gpu(service.clone(), options.display_gpu_memory),
        None => runtime,
    };
    let mut runtime = runtime;
    let root = rustix::process::geteuid().is_root();
    let mut network_set_up = None;
    match (&options.network, sandboxed && root) {
        (Some(settings), true) => {
            let mut settings = settings.clone();
            if settings.control_plane.is_empty() {
                settings.control_plane = desktop_doors(&resolve_endpoints(&options.servers));
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
    Ok(DesktopSetup {
        runtime,
        sandboxed,
        lease_file,
        network: network_set_up,
    })
}

/// The cgroups desktops get, or `None` with a plain warning saying why
/// they run without limits.
fn cgroup_scope(options: &AgentOptions) -> Option<crate::sandbox::cgroup::Scope> {
    if !options.cgroups {
        tracing::warn!("--no-cgroups: desktops run without CPU, memory and pids limits");
        return None;
    }
    if !rustix::process::geteuid().is_root() {
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

/// The control-plane addresses, resolved (those that do not resolve are
/// left out with a warning).
/// The servers' desktop doors when not told: each client port + 1 (the
/// servers' default for `--desktop-listen`).
fn desktop_doors(servers: &[std::net::SocketAddr]) -> Vec<std::net::SocketAddr> {
    servers
        .iter()
        .filter_map(|server| {
            let port = server.port().checked_add(1)?;
            Some(std::net::SocketAddr::new(server.ip(), port))
        })
        .collect()
}

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

fn sandboxes_possible(options: &AgentOptions) -> bool {
    if !options.sandbox {
        tracing::warn!("--runtime process: desktops run as plain processes, not sandboxed");
        return false;
    }
    if rustix::process::geteuid().is_root() {
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
pub(super) fn enumerate_gpus(options: &AgentOptions) -> Vec<flotilla_gpu::GpuInfo> {
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
