//! The outer process of a sandbox: it stays in the host's namespaces (and
//! the desktop's cgroup), clones PID 1 into the new ones, maps its ids,
//! then only waits — passing stops on and enforcing the node's lease — and
//! records how the sandbox ended. See the step list in [`super`].

use std::fs;
use std::path::Path;

use super::{
    block_stop_signals, check, decided_rootless, exit_code, pid1, stop_signals, EXIT_STATUS_PATH,
    INIT_PID_FILE, ROOTLESS, SETUP_FAILED,
};
use crate::sandbox::{SandboxSpec, EXIT_STATUS_FILE};

/// [`super::main`], with the network namespace descriptor at `netns_fd`
/// instead of the number the spec names (the zygote received it under
/// another).
pub fn run(spec_path: &Path, netns_fd: Option<i32>) -> i32 {
    let Some(spec) = step_read_spec(spec_path, netns_fd) else {
        return SETUP_FAILED;
    };
    step_block_stop_signals();
    let ready = step_ready_pipe();
    let flags = step_choose_network(&spec);
    let init = step_clone_pid_one(flags, &spec, ready);
    if step_write_id_maps(init, &spec).is_err() {
        return SETUP_FAILED;
    }
    step_publish_init_pid(spec_path, init);
    step_release_pid_one(ready);
    let status = step_wait_forwarding_stops(init, &spec);
    step_record_exit_status(spec_path, status);
    status
}

/// 1. The spec the agent wrote, with what this run decides once: where
///    the exit status goes, whether it is rootless (only answerable here,
///    in the host's user namespace) and the host's merged-/usr links.
fn step_read_spec(spec_path: &Path, netns_fd: Option<i32>) -> Option<SandboxSpec> {
    let mut spec: SandboxSpec = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("sandbox: read {}: {error}", spec_path.display());
            return None;
        }
    };
    if netns_fd.is_some() {
        spec.netns_fd = netns_fd;
    }
    let _ = EXIT_STATUS_PATH.set(spec_path.with_file_name(EXIT_STATUS_FILE));
    ROOTLESS.store(super::rootless(), std::sync::atomic::Ordering::Relaxed);
    if spec.usr_links.is_empty() {
        spec.usr_links = crate::sandbox::host_usr_links();
    }
    Some(spec)
}

/// 2. Signals that end the desktop reach PID 1 directly (same process
///    group); the outer process only waits, and passes them on.
fn step_block_stop_signals() {
    block_stop_signals();
}

/// 3. The pipe PID 1 reads one byte from once its id maps are written:
///    until then it is nobody in its user namespace.
fn step_ready_pipe() -> [libc::c_int; 2] {
    let mut ready = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check("pipe", unsafe {
        libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC)
    });
    ready
}

/// 4. The namespaces PID 1 gets. With a desktop network the agent's
///    prepared namespace is entered here (it belongs to the host's user
///    namespace, so nothing inside can reconfigure it) and inherited by
///    PID 1; without one PID 1 gets a new, loopback-only one.
fn step_choose_network(spec: &SandboxSpec) -> libc::c_int {
    let mut flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWCGROUP;
    match spec.netns_fd {
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
    flags
}

/// 5. One clone makes PID 1 in all its namespaces at once (fork-like: a
///    null stack, the child continues here and never returns). Raw
///    `clone`, as neither std nor rustix offers a fork with namespace
///    flags.
fn step_clone_pid_one(flags: libc::c_int, spec: &SandboxSpec, ready: [libc::c_int; 2]) -> i32 {
    // SAFETY: this process is single-threaded (entered before any thread
    // was started), so the child may run arbitrary code; a null stack makes
    // the raw clone behave like fork.
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
        pid1::pid_one(spec, ready[0]);
    }
    // SAFETY: closing our copy of the read end.
    unsafe { libc::close(ready[0]) };
    init
}

/// 6. Root: root inside maps to the desktop's own unprivileged range.
///    Rootless (a developer's laptop): only our own uid can be mapped, as
///    the desktop user; setgroups must be denied before the gid map. A
///    sandbox without maps is killed at once.
fn step_write_id_maps(init: libc::pid_t, spec: &SandboxSpec) -> Result<(), ()> {
    let maps: Vec<(&str, String)> = if decided_rootless() {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
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
            // SAFETY: kill(2) and waitpid on our own, unreaped child.
            unsafe {
                libc::kill(init, libc::SIGKILL);
                libc::waitpid(init, std::ptr::null_mut(), 0);
            }
            eprintln!("sandbox: write {path}: {error}");
            return Err(());
        }
    }
    Ok(())
}

/// 7. For `sandbox-exec`: where to find the sandbox's namespaces.
fn step_publish_init_pid(spec_path: &Path, init: libc::pid_t) {
    let _ = fs::write(spec_path.with_file_name(INIT_PID_FILE), format!("{init}\n"));
}

/// 8. PID 1 may go on: its maps are in place.
fn step_release_pid_one(ready: [libc::c_int; 2]) {
    // SAFETY: one byte from a live buffer to our pipe; then close it.
    unsafe {
        libc::write(ready[1], b"1".as_ptr().cast(), 1);
        libc::close(ready[1]);
    }
}

/// Reads the lease deadline (CLOCK_MONOTONIC ns); `None` if unreadable.
fn lease_deadline(path: &Path) -> Option<u128> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// 9. Waits for `init`, passing a stop signal on to the whole process
///    group until it ends: a stop that arrives while PID 1 is still being
///    built would otherwise reach nobody (pending signals are not
///    inherited). Ends the sandbox when the node's lease (if any) runs
///    out, so a desktop never outlives its node's lease, agent or not.
fn step_wait_forwarding_stops(init: libc::pid_t, spec: &SandboxSpec) -> i32 {
    const RESEND_NS: u128 = 50_000_000;
    const LEASE_CHECK_NS: u128 = 250_000_000;
    let mut lease_checked: u128 = 0;
    let mut lease_kill_at: Option<u128> = None;
    let set = stop_signals();
    // SAFETY: sigtimedwait, waitpid and kill with plain integers and
    // valid pointers to locals.
    unsafe {
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
            let now = crate::clock::monotonic_ns();
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

/// 10. For an agent that adopted this sandbox (it cannot wait for us).
fn step_record_exit_status(spec_path: &Path, status: i32) {
    let _ = fs::write(
        spec_path.with_file_name(EXIT_STATUS_FILE),
        format!("{status}\n"),
    );
}
