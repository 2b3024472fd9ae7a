//! Starting a desktop: take its network, make its sandbox directory and
//! spec (or its gpud socket for a plain process), create its cgroup, then
//! fork it — through the zygote, or as `flotilla sandbox-init SPEC` /
//! the plain command — and write its state file for re-adoption. Whatever
//! a failing step had taken is given back before the error is returned.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_gpu::service::DesktopGpu;

use super::adopt::SandboxState;
use super::handle::{process_start_ticks, Handle};
use super::{
    gpu_budget, owner_of, DesktopSpec, Phase, ProcessDesktop, ProcessRuntime, RuntimeError,
    SandboxSettings,
};
use crate::fsutil::write_atomically;
use crate::sandbox::cgroup::Limits;
use crate::sandbox::net::DesktopNet;
use crate::sandbox::{
    SandboxSpec, DESKTOP_UID, DESKTOP_USER, LOG_FILE, MAX_SLOTS, SPEC_FILE, STATE_FILE,
    UIDS_PER_DESKTOP,
};

/// A prepared sandbox: the command that runs it, its (slot, directory),
/// its gpud socket.
type Prepared = (Vec<String>, (u32, PathBuf), Option<DesktopGpu>);

impl ProcessRuntime {
    /// [`super::DesktopRuntime::start`].
    pub(super) fn start_desktop(&mut self, spec: &DesktopSpec) -> Result<(), RuntimeError> {
        if let Some(existing) = self.desktops.get(&spec.desktop_id) {
            if !existing.phase.ended() {
                return Err(RuntimeError::AlreadyRunning {
                    desktop_id: spec.desktop_id.clone(),
                });
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
                        // Appended to, so that capping it (`fsutil::cap_log`)
                        // by truncation leaves no hole.
                        let log = crate::fsutil::open_log(&sandbox.1.join(LOG_FILE)).ok();
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
                    .map_err(|source| RuntimeError::GpuSocket { source }),
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
                    Err(source) => {
                        if let Some((_, dir)) = &sandbox {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                        release_net(self, net);
                        return Err(RuntimeError::Cgroup { source });
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
        let procs_files: Vec<CString> = procs_paths
            .iter()
            .filter_map(|path| {
                use std::os::unix::ffi::OsStrExt;
                CString::new(path.as_os_str().as_bytes()).ok()
            })
            .collect();
        let netns_fd = net
            .as_ref()
            .and_then(|net| net.netns.as_ref().map(|fd| fd.as_raw_fd()));
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
                let request = crate::sandbox::zygote::Request {
                    spec: dir.join(SPEC_FILE),
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
            Err(source) => {
                if let Some(cgroup) = &cgroup {
                    let _ = cgroup.destroy(Duration::from_secs(1));
                }
                if let Some((_, dir)) = &sandbox {
                    let _ = std::fs::remove_dir_all(dir);
                }
                release_net(self, net);
                self.journal
                    .record(&self.node, &spec.desktop_id, spec.generation, "stopped");
                return Err(RuntimeError::Spawn {
                    program: self.command[0].clone(),
                    source,
                });
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
                // A session is `starting` until it can be used (see
                // `poll_desktops`); a plain command runs once started.
                phase: if self.session.is_some() && sandbox.is_some() && gpu.is_some() {
                    Phase::Starting
                } else {
                    Phase::Running
                },
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

    /// The command desktop `spec` runs.
    fn command_for(&self, spec: &DesktopSpec) -> Vec<String> {
        match &self.session {
            Some(session) => session.command(&spec.profile),
            None => self.command.clone(),
        }
    }

    fn free_slot(&self) -> Option<u32> {
        let used: BTreeSet<u32> = self
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
    ) -> Result<Prepared, RuntimeError> {
        let slot = self.free_slot().ok_or(RuntimeError::NoFreeSlot)?;
        let uid_base = SandboxSpec::uid_base_for(slot);
        let dir = settings
            .desktops_dir
            .join(format!("{}-{}", spec.desktop_id, spec.generation));
        // A failure leaves no directory behind.
        let fail = |step: &'static str, source: std::io::Error| {
            let _ = std::fs::remove_dir_all(&dir);
            RuntimeError::DesktopDir {
                step,
                dir: dir.clone(),
                source,
            }
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
        let door = net.zip(self.network.as_ref()).and_then(|(_, network)| {
            super::door::door_config(spec, &network.settings().desktop_endpoints())
        });
        let gitconfig = door.map(|(config, door_env)| {
            env.extend(door_env);
            config
        });
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
            netns_fd: net.and_then(|net| net.netns.as_ref().map(|fd| fd.as_raw_fd())),
            lease_file: settings.lease_file.clone(),
            stop_grace_ms: self.stop_grace.as_millis() as u64,
            usr_links: Vec::new(),
            base_image: settings.base_image.clone(),
            devices: settings.devices.clone(),
            gpu_dir: gpu.as_ref().map(|_| dir.join("gpu")),
            session_exe: settings.session_exe.clone(),
            etc_binds: settings.etc_binds.clone(),
            gitconfig,
            fail_at_step: settings.fail_at_step.and_then(|choose| choose(spec)),
        };
        let spec_path = dir.join(SPEC_FILE);
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
}

/// Joins the calling process to the cgroups whose `cgroup.procs` files are
/// given. Runs between fork and exec: only open/write/close.
fn join_cgroups(procs_files: &[CString]) -> std::io::Result<()> {
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
