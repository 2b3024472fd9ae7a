//! `flotilla-bench sandbox`: create → exec and destroy times of Flotilla's
//! sandbox beside bubblewrap and crun, in the same run, as root.
//!
//! Every system gets the same namespaces (user with a mapped range, pid,
//! mount, ipc, uts, net, cgroup where it supports it), a read-only `/usr`, a
//! fresh `/proc`, a minimal `/dev` and tmpfs `/tmp`, and runs
//! `sh -c 'echo ready; exec sleep 1000'`.
//! - create → exec: from spawning the sandbox to reading `ready` from the
//!   command's stdout;
//! - destroy: from sending SIGTERM to the sandbox until its process has
//!   exited and been reaped (for ours and bwrap the process group gets it;
//!   crun forwards it to the container).
//!
//! Cgroups are left out for all three (crun runs with `--cgroup-manager
//! disabled`), so the figures compare namespace and filesystem setup.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use std::os::fd::AsRawFd;

use flotilla_node_agent::sandbox::net::{Egress, Network, NetworkSettings};
use flotilla_node_agent::sandbox::zygote::{Request as ZygoteRequest, Zygote};
use flotilla_node_agent::sandbox::{SandboxSpec, UIDS_PER_DESKTOP};

use crate::{millis, percentile};

#[derive(clap::Args)]
pub struct SandboxArgs {
    #[arg(long, default_value_t = 200)]
    iterations: usize,
}

const SCRIPT: &str = "echo ready; exec sleep 1000";

struct Sample {
    start: Duration,
    destroy: Duration,
}

/// Spawns `command` in its own process group and times it.
fn measure(command: Command, group_signal: bool) -> anyhow::Result<Sample> {
    measure_after(command, group_signal, || {})
}

/// As [`measure`], running `spawned` right after the spawn (to close what
/// the child inherited).
fn measure_after(
    mut command: Command,
    group_signal: bool,
    spawned: impl FnOnce(),
) -> anyhow::Result<Sample> {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    // SAFETY: setpgid between fork and exec is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = command.spawn().context("spawn the sandbox")?;
    spawned();
    let mut stdout = child.stdout.take().context("stdout")?;
    let mut first = [0u8; 5];
    if let Err(error) = stdout.read_exact(&mut first) {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            let _ = child.kill();
            let _ = pipe.read_to_string(&mut stderr);
        }
        bail!("no 'ready' from the sandbox ({error}): {stderr}");
    }
    let start = started.elapsed();
    let stopping = Instant::now();
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on our unreaped child (or its group).
    unsafe { libc::kill(if group_signal { -pid } else { pid }, libc::SIGTERM) };
    child.wait().context("wait for the sandbox")?;
    Ok(Sample {
        start,
        destroy: stopping.elapsed(),
    })
}

/// Our sandbox; with `netns_fd`, entering a prepared network namespace
/// (veth, address, route: the node agent's path) instead of a new
/// loopback-only one.
/// Writes sandbox `index`'s spec (and makes its directories).
fn write_spec(dir: &Path, index: usize, netns_fd: Option<i32>) -> anyhow::Result<PathBuf> {
    let dir = dir.join(format!("ours-{index}"));
    let uid_base = SandboxSpec::uid_base_for(4090);
    flotilla_node_agent::sandbox::make_desktop_dirs(&dir, uid_base)?;
    let spec = SandboxSpec {
        hostname: format!("bench-{index}"),
        uid_base,
        uid_count: UIDS_PER_DESKTOP,
        desktop_uid: 1000,
        user: "desktop".to_owned(),
        staging_dir: dir.join("root"),
        home_dir: dir.join("home"),
        workspace_dir: dir.join("workspace"),
        resolv_conf: String::new(),
        command: vec!["sh".to_owned(), "-c".to_owned(), SCRIPT.to_owned()],
        env: Default::default(),
        netns_fd: None,
        lease_file: None,
        stop_grace_ms: 0,
        usr_links: Vec::new(),
        base_image: None,
        devices: Vec::new(),
        gpu_dir: None,
        session_exe: None,
        etc_binds: Vec::new(),
        gitconfig: None,
        fail_at_step: None,
    };
    let spec = SandboxSpec { netns_fd, ..spec };
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    Ok(spec_path)
}

fn flotilla_command(
    exe: &Path,
    dir: &Path,
    index: usize,
    netns_fd: Option<i32>,
) -> anyhow::Result<Command> {
    let spec_path = write_spec(dir, index, netns_fd)?;
    let mut command = Command::new(exe);
    command.arg("sandbox-init").arg(spec_path);
    if let Some(fd) = netns_fd {
        // SAFETY: fcntl on a descriptor we own, between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    Ok(command)
}

fn bwrap_command() -> Command {
    let mut command = Command::new("bwrap");
    command.args([
        "--unshare-user",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-net",
        "--unshare-cgroup",
        "--hostname",
        "bench",
        "--ro-bind",
        "/usr",
        "/usr",
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/sbin",
        "/sbin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--die-with-parent",
        "sh",
        "-c",
        SCRIPT,
    ]);
    command
}

/// The node agent's real path: a pooled network namespace and a fork from
/// the zygote (no exec of `flotilla`). Start: from taking the namespace to
/// reading `ready`; destroy: from SIGTERM to the outer process's end (its
/// pidfd) plus handing the veth to the release thread.
fn measure_zygote(
    zygote: &mut Zygote,
    network: &mut Network,
    dir: &Path,
    index: usize,
) -> anyhow::Result<Sample> {
    let started = Instant::now();
    let mut net = network.take(Egress::None).map_err(anyhow::Error::msg)?;
    let netns = net.netns.as_ref().map(|fd| fd.as_raw_fd());
    let spec = write_spec(dir, index, netns)?;
    let mut pipe = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: two fresh descriptors nobody else owns.
    let (read_end, write_end) = unsafe {
        (
            std::fs::File::from_raw_fd(pipe[0]),
            std::os::fd::OwnedFd::from_raw_fd(pipe[1]),
        )
    };
    let request = ZygoteRequest {
        spec,
        cgroup_procs: Vec::new(),
        netns: true,
    };
    let (pid, pidfd) = zygote.spawn(&request, write_end.as_raw_fd(), netns)?;
    drop(write_end);
    net.netns = None;
    let mut first = [0u8; 5];
    let mut reader = read_end;
    reader
        .read_exact(&mut first)
        .context("no 'ready' from the zygote's sandbox")?;
    let start = started.elapsed();
    let stopping = Instant::now();
    // SAFETY: kill(2) of the sandbox's group and a poll on its pidfd.
    unsafe {
        libc::kill(-pid, libc::SIGTERM);
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        libc::poll(&mut poll, 1, 10_000);
    }
    drop(pidfd);
    network.release(&net.record());
    Ok(Sample {
        start,
        destroy: stopping.elapsed(),
    })
}

/// An OCI bundle equivalent to the others: same namespaces, user mapping,
/// read-only /usr, /proc, /dev, /tmp.
fn crun_bundle(dir: &Path) -> anyhow::Result<PathBuf> {
    let bundle = dir.join("crun-bundle");
    let rootfs = bundle.join("rootfs");
    for sub in ["usr", "proc", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(sub))?;
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        let path = rootfs.join(link);
        if !path.exists() {
            std::os::unix::fs::symlink(target, path)?;
        }
    }
    let uid_base = SandboxSpec::uid_base_for(4091);
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 1000, "gid": 1000},
            "args": ["sh", "-c", SCRIPT],
            "env": ["PATH=/usr/bin:/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bench",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": uid_base, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": uid_base, "size": 65536}],
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                {"type": "mount"}, {"type": "user"}, {"type": "cgroup"}
            ]
        }
    });
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&config)?,
    )?;
    std::os::unix::fs::chown(&bundle, Some(uid_base), Some(uid_base))?;
    Ok(bundle)
}

fn crun_command(bundle: &Path, index: usize) -> Command {
    let mut command = Command::new("crun");
    command
        .args(["--cgroup-manager", "disabled", "run", "--bundle"])
        .arg(bundle)
        .arg(format!("flotilla-bench-{}-{index}", std::process::id()));
    command
}

fn summarize(name: &str, samples: &mut [Sample]) -> (Duration, Duration, Duration, Duration) {
    let mut starts: Vec<Duration> = samples.iter().map(|s| s.start).collect();
    let mut destroys: Vec<Duration> = samples.iter().map(|s| s.destroy).collect();
    starts.sort_unstable();
    destroys.sort_unstable();
    let figures = (
        percentile(&starts, 0.5),
        percentile(&starts, 0.99),
        percentile(&destroys, 0.5),
        percentile(&destroys, 0.99),
    );
    println!(
        "{name:<10} {:>9} {:>9} {:>11} {:>11}",
        millis(figures.0),
        millis(figures.1),
        millis(figures.2),
        millis(figures.3)
    );
    figures
}

pub fn run(args: SandboxArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the sandbox benchmark needs root (it maps uid ranges, as the node agent does)");
    }
    let exe = flotilla_tests::flotilla_bin();
    let dir = tempfile::tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    }
    let bundle = crun_bundle(dir.path())?;
    // The node agent's network: bridge, nft rules, a pool of namespaces.
    let settings = NetworkSettings {
        bridge: "flbench0".to_owned(),
        veth_prefix: "flb".to_owned(),
        nft_table: "flotilla_bench".to_owned(),
        subnet: std::net::Ipv4Addr::new(10, 87, 0, 0),
        control_plane: Vec::new(),
        pool_size: 4,
        ..Default::default()
    };
    let mut network = Network::start(settings.clone(), &[]).map_err(anyhow::Error::msg)?;
    let mut pooled = Vec::new();
    let mut zygote = Zygote::start(&exe)?;
    let mut zygoted = Vec::new();
    let mut ours = Vec::new();
    let mut bwrap = Vec::new();
    let mut crun = Vec::new();
    let mut crun_error = None;
    // Interleaved, so drift on a shared machine hits all three alike.
    for index in 0..args.iterations {
        ours.push(measure(
            flotilla_command(&exe, dir.path(), index, None)?,
            true,
        )?);
        let _ = std::fs::remove_dir_all(dir.path().join(format!("ours-{index}")));
        // Taking a namespace from the pool counts towards the start.
        let taking = Instant::now();
        let mut net = network.take(Egress::None).map_err(anyhow::Error::msg)?;
        let took = taking.elapsed();
        let fd = net.netns.as_ref().map(|fd| fd.as_raw_fd());
        let command = flotilla_command(&exe, dir.path(), index, fd)?;
        let mut sample = measure_after(command, true, || net.netns = None)?;
        sample.start += took;
        let destroying = Instant::now();
        network.release(&net.record());
        sample.destroy += destroying.elapsed();
        pooled.push(sample);
        zygoted.push(measure_zygote(
            &mut zygote,
            &mut network,
            dir.path(),
            index,
        )?);
        let _ = std::fs::remove_dir_all(dir.path().join(format!("ours-{index}")));
        bwrap.push(measure(bwrap_command(), true)?);
        if crun_error.is_none() {
            match measure(crun_command(&bundle, index), false) {
                Ok(sample) => crun.push(sample),
                Err(error) => crun_error = Some(error),
            }
        }
    }
    println!(
        "# Sandbox create → exec and destroy, {} iterations, ms (namespaces: user, pid, mount, ipc, uts, net, cgroup)",
        args.iterations
    );
    println!(
        "{:<10} {:>9} {:>9} {:>11} {:>11}",
        "system", "start p50", "start p99", "destroy p50", "destroy p99"
    );
    let ours = summarize("flotilla", &mut ours);
    let pooled = summarize("flot+veth", &mut pooled);
    let zygoted = summarize("flot+zyg", &mut zygoted);
    let bwrap = summarize("bwrap", &mut bwrap);
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64();
    println!("flotilla: a new loopback-only netns, as bwrap --unshare-net and crun make; flot+veth: a pooled netns with veth, address and route (the node agent's path)");
    println!(
        "flotilla / bwrap: start p50 {:.2}×, destroy p50 {:.2}× (goal: start p50 ≤ 0.5×)",
        ratio(ours.0, bwrap.0),
        ratio(ours.2, bwrap.2)
    );
    println!(
        "flot+veth / bwrap: start p50 {:.2}×, destroy p50 {:.2}×",
        ratio(pooled.0, bwrap.0),
        ratio(pooled.2, bwrap.2)
    );
    println!(
        "flot+zyg / bwrap: start p50 {:.2}×, destroy p50 {:.2}× (the node agent's path: pooled netns with veth, fork from the zygote)",
        ratio(zygoted.0, bwrap.0),
        ratio(zygoted.2, bwrap.2)
    );
    drop(zygote);
    drop(network);
    Network::remove_host_setup(&settings).map_err(anyhow::Error::msg)?;
    match crun_error {
        None => {
            let crun = summarize("crun", &mut crun);
            println!(
                "flotilla / crun: start p50 {:.2}×, destroy p50 {:.2}× (goal: start p50 ≤ 0.2×)",
                ratio(ours.0, crun.0),
                ratio(ours.2, crun.2)
            );
        }
        Some(error) => println!("crun: could not run here: {error:#}"),
    }
    Ok(())
}
