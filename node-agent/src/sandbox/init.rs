//! `flotilla sandbox-init SPEC`: builds one desktop's sandbox and runs its
//! init. Entered from `main` before any thread exists, so `fork` is safe.
//!
//! Two processes:
//! 1. the **outer** process (host namespaces, already in the desktop's
//!    cgroup): clones PID 1 into new user, pid, mount, uts, ipc, net and
//!    cgroup namespaces at once, writes its uid/gid maps (root inside maps to
//!    the desktop's unprivileged host range), passes stop signals on, waits;
//! 2. **PID 1**, our init: makes the root filesystem and `pivot_root`s into
//!    it, sets the hostname, brings up loopback, then runs the desktop's
//!    command as the desktop user with `no_new_privs`, reaps zombies, forwards
//!    SIGTERM/SIGINT/SIGHUP, and when the command ends kills whatever is left
//!    and exits with its status (which ends the sandbox).
//!
//! Each step that fails writes one line naming the step to stderr and exits
//! with status 125; the agent reports it.

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sandbox::sys::{FailingSys, RealSys, Sys, SysResult};
use crate::sandbox::SandboxSpec;

/// Whether this runs without root: then the sandbox maps only the
/// caller's own uid (as the desktop user) and has no separate uid range.
/// Only meaningful in the host's user namespace (inside a fresh one the
/// euid reads as the overflow uid until mapped): `main` decides once.
pub fn rootless() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() != 0 }
}

/// `rootless()` as seen by `main` before it cloned.
static ROOTLESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn decided_rootless() -> bool {
    ROOTLESS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Exit status for "the sandbox could not be built".
pub const SETUP_FAILED: i32 = 125;

/// Where the outer process records how the sandbox ended.
static EXIT_STATUS_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn fail(step: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("sandbox: {step}: {error}");
    // For a watcher that is not our parent (the agent, through a pidfd).
    if let Some(path) = EXIT_STATUS_PATH.get() {
        let _ = fs::write(path, format!("{SETUP_FAILED}\n"));
    }
    // SAFETY: _exit ends the process without running atexit handlers, which
    // is what a forked child must do.
    unsafe { libc::_exit(SETUP_FAILED) }
}

fn check(step: &str, result: libc::c_int) {
    if result < 0 {
        fail(step, std::io::Error::last_os_error());
    }
}

fn cstring(text: impl AsRef<OsStr>) -> CString {
    CString::new(text.as_ref().as_bytes()).unwrap_or_else(|_| fail("path", "contains a NUL byte"))
}

/// Runs the sandbox described by the file at `spec_path`; returns the exit
/// status for the outer process.
pub fn main(spec_path: &Path) -> i32 {
    run(spec_path, None)
}

/// [`main`], with the network namespace descriptor at `netns_fd` instead
/// of the number the spec names (the zygote received it under another).
pub fn run(spec_path: &Path, netns_fd: Option<i32>) -> i32 {
    let mut spec: SandboxSpec = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("sandbox: read {}: {error}", spec_path.display());
            return SETUP_FAILED;
        }
    };
    if netns_fd.is_some() {
        spec.netns_fd = netns_fd;
    }
    let _ = EXIT_STATUS_PATH.set(spec_path.with_file_name(crate::runtime::EXIT_STATUS_FILE));
    ROOTLESS.store(rootless(), std::sync::atomic::Ordering::Relaxed);
    if spec.usr_links.is_empty() {
        spec.usr_links = crate::sandbox::host_usr_links();
    }
    // Signals that end the desktop reach PID 1 directly (same process
    // group); the outer process only waits.
    block_stop_signals();
    let mut ready = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check("pipe", unsafe {
        libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC)
    });
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP;
    match spec.netns_fd {
        // The agent's prepared namespace: entered here, inherited by PID 1.
        Some(fd) => {
            // SAFETY: setns and close on a descriptor the agent passed us.
            check("enter the desktop's network namespace", unsafe {
                libc::setns(fd, libc::CLONE_NEWNET)
            });
            // SAFETY: as above.
            unsafe { libc::close(fd) };
        }
        None => flags |= libc::CLONE_NEWNET,
    }
    // One clone makes PID 1 in all its namespaces at once (fork-like: a
    // null stack, the child continues here).
    // SAFETY: this process is single-threaded (entered before any thread was
    // started), so the child may run arbitrary code; a null stack makes the
    // raw clone behave like fork.
    let init = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    } as libc::pid_t;
    check("clone the sandbox's namespaces", init);
    if init == 0 {
        // SAFETY: closing our copy of the write end.
        unsafe { libc::close(ready[1]) };
        init_process(&spec, ready[0]);
    }
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(ready[0]) };
    // Root: root inside maps to the desktop's own unprivileged range.
    // Rootless (a developer's laptop): only our own uid can be mapped, as
    // the desktop user; setgroups must be denied before the gid map.
    let maps: Vec<(&str, String)> = if decided_rootless() {
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        vec![
            ("uid_map", format!("{} {uid} 1\n", spec.desktop_uid)),
            ("setgroups", "deny\n".to_owned()),
            ("gid_map", format!("{} {gid} 1\n", spec.desktop_uid)),
        ]
    } else {
        vec![
            (
                "uid_map",
                format!("0 {} {}\n", spec.uid_base, spec.uid_count),
            ),
            (
                "gid_map",
                format!("0 {} {}\n", spec.uid_base, spec.uid_count),
            ),
        ]
    };
    for (file, map) in maps {
        let path = format!("/proc/{init}/{file}");
        if let Err(error) = fs::write(&path, map) {
            // SAFETY: kill(2) and waitpid on our own child.
            unsafe {
                libc::kill(init, libc::SIGKILL);
                libc::waitpid(init, std::ptr::null_mut(), 0);
            }
            eprintln!("sandbox: write {path}: {error}");
            return SETUP_FAILED;
        }
    }
    // For `sandbox-exec`: where to find the sandbox's namespaces.
    let _ = fs::write(spec_path.with_file_name(INIT_PID_FILE), format!("{init}\n"));
    // SAFETY: one byte from a live buffer to our pipe; then close it.
    unsafe {
        libc::write(ready[1], b"1".as_ptr().cast(), 1);
        libc::close(ready[1]);
    }
    let status = wait_forwarding_stops(init, &spec);
    // For an agent that adopted this sandbox (it cannot wait for us).
    let _ = fs::write(
        spec_path.with_file_name(crate::runtime::EXIT_STATUS_FILE),
        format!("{status}\n"),
    );
    status
}

/// Reads the lease deadline (CLOCK_MONOTONIC ns); `None` if unreadable.
fn lease_deadline(path: &Path) -> Option<u128> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Waits for `init`, passing a stop signal on to the whole process group
/// until it ends: a stop that arrives while PID 1 is still being built
/// would otherwise reach nobody (pending signals are not inherited). Ends
/// the sandbox when the node's lease (if any) runs out.
fn wait_forwarding_stops(init: libc::pid_t, spec: &SandboxSpec) -> i32 {
    const RESEND_NS: u128 = 50_000_000;
    const LEASE_CHECK_NS: u128 = 250_000_000;
    let mut lease_checked: u128 = 0;
    let mut lease_kill_at: Option<u128> = None;
    // SAFETY: sigset manipulation on locals; sigtimedwait, waitpid and kill
    // with plain integers and valid pointers.
    unsafe {
        let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let mut stop = None;
        let mut last_sent: u128 = 0;
        loop {
            let signal = libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
            if stop.is_none() && matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
                stop = Some(signal);
            }
            let mut status = 0;
            if libc::waitpid(init, &mut status, libc::WNOHANG) == init {
                return exit_code(status);
            }
            let now = crate::runtime::monotonic_ns();
            if let Some(signal) = stop {
                // Our own group: us (blocked), the init process (blocked),
                // PID 1 (takes it) and the desktop. At most every 50 ms:
                // our own copy wakes us again, and re-sending at once
                // would flood the group with signals while it stops.
                if now.saturating_sub(last_sent) >= RESEND_NS {
                    libc::kill(0, signal);
                    last_sent = now;
                }
            }
            let check_lease = now.saturating_sub(lease_checked) >= LEASE_CHECK_NS;
            if check_lease {
                lease_checked = now;
            }
            if let (Some(path), true) = (&spec.lease_file, check_lease) {
                match lease_kill_at {
                    Some(at) if now >= at => {
                        // SIGKILL to a pid namespace's init ends all of it.
                        libc::kill(init, libc::SIGKILL);
                    }
                    Some(_) => {}
                    None => {
                        if lease_deadline(path).is_some_and(|deadline| now >= deadline) {
                            eprintln!("sandbox: the node's lease expired: stopping");
                            stop = Some(libc::SIGTERM);
                            lease_kill_at =
                                Some(now + u128::from(spec.stop_grace_ms.max(100)) * 1_000_000);
                        }
                    }
                }
            }
        }
    }
}

/// A signal set holding `signals`.
fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset on a local, zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signal in signals {
            libc::sigaddset(&mut set, signal);
        }
        set
    }
}

/// The exit status a shell would report for a `waitpid` status.
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn block_stop_signals() {
    // SAFETY: sigset manipulation on a local set, then sigprocmask.
    unsafe {
        let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// PID 1, just cloned into its namespaces: waits for its uid maps, becomes
/// root of its user namespace, then builds and runs the sandbox.
fn init_process(spec: &SandboxSpec, ready: libc::c_int) -> ! {
    // SAFETY: prctl with integer arguments.
    check("pdeathsig", unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0)
    });
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a live buffer.
    if unsafe { libc::read(ready, byte.as_mut_ptr().cast(), 1) } != 1 {
        fail("wait for uid maps", "the outer process went away");
    }
    if !decided_rootless() {
        // SAFETY: plain id syscalls.
        check("setresgid", unsafe { libc::setresgid(0, 0, 0) });
        // SAFETY: as above.
        check("setresuid", unsafe { libc::setresuid(0, 0, 0) });
    }
    // Rootless, PID 1 already is the desktop user, with every capability
    // in its new user namespace until it execs.
    pid_one(spec)
}

/// Read-only (or writable) recursive bind of a host path at `target`.
fn bind(sys: &mut dyn Sys, source: &Path, target: &Path, read_only: bool) -> SysResult {
    let source_text = source.to_string_lossy().into_owned();
    sys.mount(
        Some(&source_text),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    if read_only {
        // Keep the flags the kernel locks for unprivileged remounts.
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
        let present = sys.statvfs_flags(target);
        for (vfs, ms) in [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
        ] {
            if present & vfs != 0 {
                flags |= ms;
            }
        }
        sys.mount(None, target, None, flags, None)?;
    }
    Ok(())
}

/// Builds the root filesystem under `new_root` (a fresh tmpfs).
fn build_root(sys: &mut dyn Sys, spec: &SandboxSpec, new_root: &Path) -> SysResult {
    sys.mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=16m"),
    )?;
    // The host OS, read-only: /usr and the merged-/usr links.
    sys.mkdir(&new_root.join("usr"))?;
    match &spec.base_image {
        // An image's /usr layered over the host's, read-only (no upper
        // layer): the image's files win, the rest is the host's.
        Some(image) => sys.mount(
            Some("overlay"),
            &new_root.join("usr"),
            Some("overlay"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("lowerdir={}:/usr", image.join("usr").display())),
        )?,
        None => bind(sys, Path::new("/usr"), &new_root.join("usr"), true)?,
    }
    for (link, target) in &spec.usr_links {
        sys.symlink(target, &new_root.join(link))?;
    }
    // A generated /etc.
    let etc = new_root.join("etc");
    sys.mkdir(&etc)?;
    let uid = spec.desktop_uid;
    sys.write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}:{user}:/home/{user}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            user = spec.user
        ),
    )?;
    sys.write_file(
        &etc.join("group"),
        &format!(
            "root:x:0:\n{user}:x:{uid}:\nnogroup:x:65534:\n",
            user = spec.user
        ),
    )?;
    sys.write_file(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1 localhost {0}\n::1 localhost {0}\n",
            spec.hostname
        ),
    )?;
    sys.write_file(&etc.join("hostname"), &format!("{}\n", spec.hostname))?;
    sys.write_file(&etc.join("resolv.conf"), &spec.resolv_conf)?;
    sys.write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    // Host configuration the desktop's apps read (fonts), read-only.
    for host in &spec.etc_binds {
        let Ok(relative) = host.strip_prefix("/etc") else {
            continue;
        };
        let target = etc.join(relative);
        sys.mkdir(&target)?;
        bind(sys, host, &target, true)?;
    }
    // Writable home and workspace, kept on the host's disk.
    let home = new_root.join("home").join(&spec.user);
    sys.mkdir(&home)?;
    bind(sys, &spec.home_dir, &home, false)?;
    let workspace = new_root.join("workspace");
    sys.mkdir(&workspace)?;
    bind(sys, &spec.workspace_dir, &workspace, false)?;
    // tmpfs /tmp and /run (with the desktop's XDG_RUNTIME_DIR).
    for dir in ["tmp", "run"] {
        let path = new_root.join(dir);
        sys.mkdir(&path)?;
        sys.mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        )?;
    }
    let runtime_dir = new_root.join("run/user").join(uid.to_string());
    sys.mkdir(&runtime_dir)?;
    sys.chown(&runtime_dir, uid)?;
    // The desktop's gpud socket directory (its only way to the GPU).
    if let Some(gpu_dir) = &spec.gpu_dir {
        let target = new_root.join("run/flotilla");
        sys.mkdir(&target)?;
        bind(sys, gpu_dir, &target, false)?;
    }
    // The flotilla binary, read-only, for the desktop session.
    if let Some(exe) = &spec.session_exe {
        let dir = new_root.join("run/flotilla-bin");
        sys.mkdir(&dir)?;
        let target = dir.join("flotilla");
        sys.write_file(&target, "")?;
        bind(sys, exe, &target, true)?;
    }
    // A minimal /dev: bind the harmless host nodes (a user namespace cannot
    // mknod), a private devpts, shm.
    let dev = new_root.join("dev");
    sys.mkdir(&dev)?;
    sys.mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        sys.write_file(&target, "")?;
        bind(sys, &Path::new("/dev").join(node), &target, false)?;
    }
    // Device nodes the desktop's spec grants (checked by the agent).
    for device in &spec.devices {
        let Ok(relative) = device.strip_prefix("/dev") else {
            continue;
        };
        let target = dev.join(relative);
        if let Some(parent) = target.parent() {
            sys.mkdir(parent)?;
        }
        sys.write_file(&target, "")?;
        bind(sys, device, &target, false)?;
    }
    let pts = dev.join("pts");
    sys.mkdir(&pts)?;
    sys.mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    sys.symlink("pts/ptmx", &dev.join("ptmx"))?;
    let shm = dev.join("shm");
    sys.mkdir(&shm)?;
    sys.mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(target, &dev.join(name))?;
    }
    sys.mkdir(&new_root.join("proc"))?;
    sys.mkdir(&new_root.join("root"))?;
    Ok(())
}

/// Everything PID 1 does before starting the desktop's command: private
/// mounts, the new root, `pivot_root`, a fresh `/proc`, the host's tree
/// detached, the root read-only, the hostname, loopback.
pub fn setup(sys: &mut dyn Sys, spec: &SandboxSpec) -> SysResult {
    // Our mounts stay ours.
    sys.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    let new_root = PathBuf::from(&spec.staging_dir);
    build_root(sys, spec, &new_root)?;
    // pivot_root into it and drop the host's tree.
    let old = new_root.join(".old-root");
    sys.mkdir(&old)?;
    sys.pivot_root(&new_root, &old)?;
    sys.chdir(Path::new("/"))?;
    sys.mount(
        Some("proc"),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )?;
    sys.umount_detach(Path::new("/.old-root"))?;
    sys.rmdir(Path::new("/.old-root"))?;
    // The root itself read-only from here on.
    sys.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )?;
    sys.sethostname(&spec.hostname)?;
    if spec.netns_fd.is_none() {
        // A prepared namespace has lo up already (and is not ours to change).
        sys.loopback_up()?;
    }
    Ok(())
}

fn pid_one(spec: &SandboxSpec) -> ! {
    let built = match spec.fail_at_step {
        Some(fail_at) => setup(
            &mut FailingSys {
                real: RealSys,
                count: 0,
                fail_at,
            },
            spec,
        ),
        None => setup(&mut RealSys, spec),
    };
    if let Err(error) = built {
        fail(&error.step, error.error);
    }
    let child = start_command(spec);
    supervise(child)
}

/// Forks the desktop's command as the desktop user.
fn start_command(spec: &SandboxSpec) -> libc::pid_t {
    fork_as_desktop(spec, &spec.command, decided_rootless())
}

/// Forks `command` as the desktop user with the desktop's environment,
/// without privileges (no capabilities, `no_new_privs`, rlimits, the
/// seccomp filter). The child never returns.
fn fork_as_desktop(spec: &SandboxSpec, command: &[String], rootless: bool) -> libc::pid_t {
    // Looked up in the sandbox's PATH (execvpe would search this process's
    // own, inherited from the host).
    let search = spec.env.get("PATH").map_or(DEFAULT_PATH, String::as_str);
    let program = cstring(resolve_program(&command[0], search));
    let args: Vec<CString> = command.iter().map(cstring).collect();
    let mut arg_pointers: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_pointers.push(std::ptr::null());
    let home = format!("/home/{}", spec.user);
    let mut env: Vec<CString> = vec![
        cstring(format!("HOME={home}")),
        cstring(format!("USER={}", spec.user)),
        cstring(format!("LOGNAME={}", spec.user)),
        cstring(format!("PATH={DEFAULT_PATH}")),
        cstring(format!("XDG_RUNTIME_DIR=/run/user/{}", spec.desktop_uid)),
        cstring(format!("HOSTNAME={}", spec.hostname)),
    ];
    env.extend(spec.env.iter().map(|(k, v)| cstring(format!("{k}={v}"))));
    let mut env_pointers: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    env_pointers.push(std::ptr::null());
    let home_c = cstring(&home);
    let uid = spec.desktop_uid;
    let filter = seccomp_filter();
    // SAFETY: single-threaded; the child only makes syscalls on prepared
    // buffers, then execs.
    let child = unsafe { libc::fork() };
    check("fork the desktop command", child);
    if child == 0 {
        // SAFETY: the calls below take plain integers or the prepared C
        // strings and pointer arrays, which outlive them.
        unsafe {
            let mut unblock: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut unblock);
            libc::sigprocmask(libc::SIG_SETMASK, &unblock, std::ptr::null_mut());
            if !rootless {
                check("setgroups", libc::setgroups(0, std::ptr::null()));
            }
            check("setgid", libc::setgid(uid));
            check("setuid", libc::setuid(uid));
            check(
                "no_new_privs",
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            );
            for (resource, limit) in [(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, 65_536)] {
                let wanted = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(resource, &wanted) != 0 {
                    // Never raise above what we were given.
                    let mut current: libc::rlimit = std::mem::zeroed();
                    libc::getrlimit(resource, &mut current);
                    current.rlim_cur = current.rlim_cur.min(limit);
                    libc::setrlimit(resource, &current);
                }
            }
            check("seccomp", install_seccomp(&filter));
            libc::chdir(home_c.as_ptr());
            libc::execve(
                program.as_ptr(),
                arg_pointers.as_ptr(),
                env_pointers.as_ptr(),
            );
        }
        fail(
            &format!("exec {:?}", command[0]),
            std::io::Error::last_os_error(),
        );
    }
    child
}

/// The desktop's PATH unless its spec sets one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// `program` itself if it names a path, else the first executable of that
/// name in `search` (else `program`, for exec to report).
fn resolve_program(program: &str, search: &str) -> String {
    if program.contains('/') {
        return program.to_owned();
    }
    for dir in search.split(':').filter(|dir| !dir.is_empty()) {
        let candidate = format!("{dir}/{program}");
        let Ok(path) = CString::new(candidate.as_bytes()) else {
            continue;
        };
        // SAFETY: access(2) with a valid C string.
        if unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0 {
            return candidate;
        }
    }
    program.to_owned()
}

/// The file the outer process writes PID 1's host pid to.
pub const INIT_PID_FILE: &str = "init-pid";

/// `flotilla sandbox-exec DIR -- COMMAND...`: runs a command inside the
/// running sandbox whose directory is `DIR` (as `nsenter` would, then as
/// the desktop's command runs: its user, environment, no privileges,
/// seccomp), in the desktop's cgroup, and exits with the command's status.
/// Entered from `main` before any thread exists (`setns` into a user
/// namespace needs a single-threaded process).
pub fn exec_main(dir: &Path, command: &[String]) -> i32 {
    match enter(dir, command) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("sandbox-exec: {error}");
            SETUP_FAILED
        }
    }
}

fn enter(dir: &Path, command: &[String]) -> Result<i32, String> {
    if command.is_empty() || command[0].is_empty() {
        return Err("no command".to_owned());
    }
    let read = |name: &str| {
        fs::read(dir.join(name)).map_err(|e| format!("read {}: {e}", dir.join(name).display()))
    };
    let spec: SandboxSpec = serde_json::from_slice(&read("spec.json")?)
        .map_err(|e| format!("the sandbox's spec: {e}"))?;
    let state: serde_json::Value = serde_json::from_slice(&read("state.json")?)
        .map_err(|e| format!("the sandbox's state: {e}"))?;
    let outer = state["pid"].as_i64().unwrap_or(0);
    let init: libc::pid_t = String::from_utf8_lossy(&read(INIT_PID_FILE)?)
        .trim()
        .parse()
        .map_err(|e| format!("the sandbox's init pid: {e}"))?;
    // PID 1 must still be the sandbox's (its parent is the outer process).
    let status = fs::read_to_string(format!("/proc/{init}/status"))
        .map_err(|_| "the sandbox is not running".to_owned())?;
    let parent = status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|ppid| ppid.trim().parse::<i64>().ok());
    if parent != Some(outer) {
        return Err("the sandbox is not running".to_owned());
    }
    // Charged to the desktop like everything else it runs.
    for file in state["cgroup_procs"].as_array().into_iter().flatten() {
        if let Some(path) = file.as_str() {
            fs::write(path, "0").map_err(|e| format!("join the desktop's cgroup {path}: {e}"))?;
        }
    }
    let open = |what: &str| -> Result<std::os::fd::OwnedFd, String> {
        fs::File::open(format!("/proc/{init}/{what}"))
            .map(std::os::fd::OwnedFd::from)
            .map_err(|e| format!("open the sandbox's {what}: {e}"))
    };
    let root = open("root")?;
    let namespaces = [
        ("ns/net", libc::CLONE_NEWNET),
        ("ns/uts", libc::CLONE_NEWUTS),
        ("ns/ipc", libc::CLONE_NEWIPC),
        ("ns/cgroup", libc::CLONE_NEWCGROUP),
        ("ns/pid", libc::CLONE_NEWPID),
        ("ns/mnt", libc::CLONE_NEWNS),
    ];
    let fds: Vec<(std::os::fd::OwnedFd, libc::c_int)> = namespaces
        .iter()
        .map(|(what, kind)| open(what).map(|fd| (fd, *kind)))
        .collect::<Result<_, _>>()?;
    let user = open("ns/user")?;
    use std::os::fd::AsRawFd;
    let setns = |fd: &std::os::fd::OwnedFd, kind: libc::c_int, what: &str| {
        // SAFETY: setns on a namespace descriptor we opened.
        if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
            return Err(format!(
                "enter the sandbox's {what} namespace: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    };
    let rootless = rootless();
    // Root enters the rest first (the network namespace may belong to the
    // host's user namespace) and the user namespace last; rootless, the
    // user namespace is what grants the right to enter the rest.
    if rootless {
        setns(&user, libc::CLONE_NEWUSER, "user")?;
    }
    for ((fd, kind), (what, _)) in fds.iter().zip(namespaces) {
        setns(fd, *kind, what)?;
    }
    // The sandbox's root, as its processes see it.
    // SAFETY: fchdir/chroot/chdir on a descriptor we hold and constants.
    unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0
            || libc::chroot(c".".as_ptr()) != 0
            || libc::chdir(c"/".as_ptr()) != 0
        {
            return Err(format!(
                "enter the sandbox's root: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    if !rootless {
        setns(&user, libc::CLONE_NEWUSER, "user")?;
    }
    drop(fds);
    drop((root, user));
    // Stop signals go to the command; this process only waits.
    block_stop_signals();
    // The pid namespace applies to children: the command is one.
    let child = fork_as_desktop(&spec, command, rootless);
    Ok(wait_passing_stops(child))
}

/// Waits for `child`, passing SIGTERM/SIGINT/SIGHUP on to it.
fn wait_passing_stops(child: libc::pid_t) -> i32 {
    // SAFETY: sigset manipulation on locals; sigtimedwait, waitpid and kill
    // with plain integers and valid pointers.
    unsafe {
        let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        loop {
            let signal = libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
            if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
                libc::kill(child, signal);
            }
            let mut status = 0;
            if libc::waitpid(child, &mut status, libc::WNOHANG) == child {
                return exit_code(status);
            }
        }
    }
}

/// Syscalls no desktop needs; they answer EPERM.
pub const DENIED_SYSCALLS: &[(&str, libc::c_long)] = &[
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("acct", libc::SYS_acct),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("quotactl", libc::SYS_quotactl),
    ("fanotify_init", libc::SYS_fanotify_init),
];

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A classic-BPF seccomp program: foreign architectures and the x32 ABI
/// and every syscall in [`DENIED_SYSCALLS`] get EPERM; the rest is allowed.
pub fn seccomp_filter() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    // struct seccomp_data: nr at 0, arch at 4.
    let mut program = vec![
        statement(LD_W_ABS, 4),
        jump(JEQ, AUDIT_ARCH, 1, 0),
        statement(RET, eperm),
        statement(LD_W_ABS, 0),
        // x32 syscalls carry bit 30.
        jump(JGE, 0x4000_0000, 0, 1),
        statement(RET, eperm),
    ];
    for (_, number) in DENIED_SYSCALLS {
        program.push(jump(JEQ, *number as u32, 0, 1));
        program.push(statement(RET, eperm));
    }
    program.push(statement(RET, libc::SECCOMP_RET_ALLOW));
    program
}

/// Installs `filter` for this process and its children (needs
/// `no_new_privs`). Only a syscall: safe between fork and exec.
fn install_seccomp(filter: &[libc::sock_filter]) -> libc::c_int {
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with a pointer to a live sock_fprog.
    unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        )
    }
}

/// PID 1's loop: reap, forward stop signals, end with the command.
fn supervise(command: libc::pid_t) -> ! {
    // SAFETY: sigset manipulation on locals; sigtimedwait/waitpid/kill with
    // plain integers and valid pointers.
    unsafe {
        let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 100_000_000,
        };
        loop {
            let signal = libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
            if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
                libc::kill(command, signal);
            }
            loop {
                let mut status = 0;
                let reaped = libc::waitpid(-1, &mut status, libc::WNOHANG);
                if reaped <= 0 {
                    break;
                }
                if reaped == command {
                    // The session is over: nothing else may outlive it.
                    libc::kill(-1, libc::SIGKILL);
                    libc::_exit(exit_code(status));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::sys::Recorder;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            hostname: "dt-1".to_owned(),
            uid_base: 1_000_000_000,
            uid_count: 65_536,
            desktop_uid: 1000,
            user: "desktop".to_owned(),
            staging_dir: PathBuf::from("/d/root"),
            home_dir: PathBuf::from("/d/home"),
            workspace_dir: PathBuf::from("/d/workspace"),
            resolv_conf: String::new(),
            command: vec!["sh".to_owned()],
            env: Default::default(),
            netns_fd: None,
            lease_file: None,
            stop_grace_ms: 0,
            usr_links: vec![("bin".to_owned(), "usr/bin".to_owned())],
            base_image: None,
            devices: Vec::new(),
            gpu_dir: None,
            session_exe: None,
            etc_binds: Vec::new(),
            fail_at_step: None,
        }
    }

    /// The exact sequence PID 1 goes through (the recording fake of the
    /// syscall layer; the real calls are checked from inside a sandbox by
    /// the `sandbox` integration tests).
    const EXPECTED: &[&str] = &[
        "mount - / - [rec,private] -",
        "mount tmpfs /d/root tmpfs [nosuid,nodev] mode=0755,size=16m",
        "mkdir /d/root/usr",
        "mount /usr /d/root/usr - [bind,rec] -",
        "mount - /d/root/usr - [ro,remount,bind,rec] -",
        "symlink /d/root/bin -> usr/bin",
        "mkdir /d/root/etc",
        "write /d/root/etc/passwd",
        "write /d/root/etc/group",
        "write /d/root/etc/hosts",
        "write /d/root/etc/hostname",
        "write /d/root/etc/resolv.conf",
        "write /d/root/etc/nsswitch.conf",
        "mkdir /d/root/home/desktop",
        "mount /d/home /d/root/home/desktop - [bind,rec] -",
        "mkdir /d/root/workspace",
        "mount /d/workspace /d/root/workspace - [bind,rec] -",
        "mkdir /d/root/tmp",
        "mount tmpfs /d/root/tmp tmpfs [nosuid,nodev] mode=1777",
        "mkdir /d/root/run",
        "mount tmpfs /d/root/run tmpfs [nosuid,nodev] mode=1777",
        "mkdir /d/root/run/user/1000",
        "chown /d/root/run/user/1000 1000",
        "mkdir /d/root/dev",
        "mount tmpfs /d/root/dev tmpfs [nosuid,noexec] mode=0755,size=64k",
        "write /d/root/dev/null",
        "mount /dev/null /d/root/dev/null - [bind,rec] -",
        "write /d/root/dev/zero",
        "mount /dev/zero /d/root/dev/zero - [bind,rec] -",
        "write /d/root/dev/full",
        "mount /dev/full /d/root/dev/full - [bind,rec] -",
        "write /d/root/dev/random",
        "mount /dev/random /d/root/dev/random - [bind,rec] -",
        "write /d/root/dev/urandom",
        "mount /dev/urandom /d/root/dev/urandom - [bind,rec] -",
        "write /d/root/dev/tty",
        "mount /dev/tty /d/root/dev/tty - [bind,rec] -",
        "mkdir /d/root/dev/pts",
        "mount devpts /d/root/dev/pts devpts [nosuid,noexec] newinstance,ptmxmode=0666,mode=0620",
        "symlink /d/root/dev/ptmx -> pts/ptmx",
        "mkdir /d/root/dev/shm",
        "mount tmpfs /d/root/dev/shm tmpfs [nosuid,nodev] mode=1777",
        "symlink /d/root/dev/fd -> /proc/self/fd",
        "symlink /d/root/dev/stdin -> /proc/self/fd/0",
        "symlink /d/root/dev/stdout -> /proc/self/fd/1",
        "symlink /d/root/dev/stderr -> /proc/self/fd/2",
        "mkdir /d/root/proc",
        "mkdir /d/root/root",
        "mkdir /d/root/.old-root",
        "pivot_root /d/root /d/root/.old-root",
        "chdir /",
        "mount proc /proc proc [nosuid,nodev,noexec] -",
        "umount_detach /.old-root",
        "rmdir /.old-root",
        "mount - / - [ro,nosuid,nodev,remount,bind] -",
        "sethostname dt-1",
        "loopback_up",
    ];

    #[test]
    fn setup_makes_exactly_the_designed_calls_in_order() {
        let mut recorder = Recorder::default();
        setup(&mut recorder, &spec()).unwrap();
        assert_eq!(recorder.calls, EXPECTED);
    }

    #[test]
    fn a_failing_call_stops_setup_right_there() {
        for (step, expected) in EXPECTED.iter().enumerate() {
            let mut recorder = Recorder {
                fail_at: Some(step),
                ..Recorder::default()
            };
            let error = setup(&mut recorder, &spec()).unwrap_err();
            assert_eq!(recorder.calls.len(), step + 1, "nothing after step {step}");
            assert_eq!(error.step, *expected);
            assert_eq!(error.error.raw_os_error(), Some(libc::EIO));
        }
    }

    #[test]
    fn a_prepared_network_namespace_is_left_alone() {
        let mut recorder = Recorder::default();
        let spec = SandboxSpec {
            netns_fd: Some(3),
            ..spec()
        };
        setup(&mut recorder, &spec).unwrap();
        assert_eq!(recorder.calls, EXPECTED[..EXPECTED.len() - 1]);
    }

    #[test]
    fn a_base_image_is_layered_and_granted_devices_are_bound() {
        let mut recorder = Recorder::default();
        let spec = SandboxSpec {
            base_image: Some(PathBuf::from("/images/tools")),
            devices: vec![PathBuf::from("/dev/net/tun")],
            ..spec()
        };
        setup(&mut recorder, &spec).unwrap();
        let mut expected: Vec<String> = EXPECTED.iter().map(|call| call.to_string()).collect();
        // The overlay replaces the bind and its read-only remount of /usr.
        let usr = expected
            .iter()
            .position(|call| call.starts_with("mount /usr "))
            .unwrap();
        expected.splice(
            usr..usr + 2,
            ["mount overlay /d/root/usr overlay [ro,nosuid,nodev] lowerdir=/images/tools/usr:/usr"
                .to_owned()],
        );
        let tty = expected
            .iter()
            .position(|call| call.starts_with("mount /dev/tty "))
            .unwrap();
        expected.splice(
            tty + 1..tty + 1,
            [
                "mkdir /d/root/dev/net".to_owned(),
                "write /d/root/dev/net/tun".to_owned(),
                "mount /dev/net/tun /d/root/dev/net/tun - [bind,rec] -".to_owned(),
            ],
        );
        assert_eq!(recorder.calls, expected);
    }

    #[test]
    fn the_gpu_socket_directory_is_bound_at_run_flotilla() {
        let mut recorder = Recorder::default();
        let spec = SandboxSpec {
            gpu_dir: Some(PathBuf::from("/d/gpu")),
            ..spec()
        };
        setup(&mut recorder, &spec).unwrap();
        let mut expected: Vec<String> = EXPECTED.iter().map(|call| call.to_string()).collect();
        let runtime_dir = expected
            .iter()
            .position(|call| call == "chown /d/root/run/user/1000 1000")
            .unwrap();
        expected.splice(
            runtime_dir + 1..runtime_dir + 1,
            [
                "mkdir /d/root/run/flotilla".to_owned(),
                "mount /d/gpu /d/root/run/flotilla - [bind,rec] -".to_owned(),
            ],
        );
        assert_eq!(recorder.calls, expected);
    }

    #[test]
    fn the_seccomp_program_denies_every_listed_syscall() {
        let program = seccomp_filter();
        // Two instructions per denied syscall, the architecture and x32
        // checks, and the final allow.
        assert_eq!(program.len(), 6 + 2 * DENIED_SYSCALLS.len() + 1);
        for (name, number) in DENIED_SYSCALLS {
            assert!(
                program
                    .iter()
                    .any(|insn| insn.k == *number as u32 && insn.jf == 1),
                "{name} is not in the filter"
            );
        }
    }
}
