//! `flotilla sandbox-init SPEC`: builds one desktop's sandbox and runs its
//! init. Entered from `main` before any thread exists, so `fork` is safe.
//!
//! The jail sequence, step by step (each step is a function of that name,
//! called in this order; each says why it is there):
//!
//! **The outer process** ([`outer`]; host namespaces, already in the
//! desktop's cgroup, stop signals blocked since before exec):
//! 1. `step_read_spec` — the agent's [`crate::sandbox::SandboxSpec`] for this desktop;
//! 2. `step_block_stop_signals` — stops are forwarded, never fatal here;
//! 3. `step_ready_pipe` — PID 1 waits on it for its uid/gid maps;
//! 4. `step_choose_network` — enter the agent's prepared network namespace,
//!    or ask for a new (loopback-only) one;
//! 5. `step_clone_pid_one` — one `clone` into new user, pid, mount, uts,
//!    ipc, cgroup (and net) namespaces; the child runs [`pid1`];
//! 6. `step_write_id_maps` — root inside maps to the desktop's host range;
//! 7. `step_publish_init_pid` — for `sandbox-exec`;
//! 8. `step_release_pid_one` — PID 1 may go on;
//! 9. `step_wait_forwarding_stops` — until PID 1 ends, or the lease does;
//! 10. `step_record_exit_status` — for an agent that cannot `wait` for us.
//!
//! **PID 1** ([`pid1`]; our init, inside every new namespace):
//! 1. `step_die_with_outer` — PDEATHSIG: no sandbox without its outer process;
//! 2. `step_wait_for_id_maps`;
//! 3. `step_become_root` — root of its own user namespace;
//! 4. `step_build_root` — [`root::setup`]: the root filesystem, `pivot_root`,
//!    `/proc`, the host tree detached, `/` read-only, hostname, loopback;
//!    every call goes through [`super::sys::Sys`], so tests record the exact
//!    sequence and fail a real sandbox at any call (`fail_at_step`);
//! 5. `step_start_command` — [`desktop::fork_as_desktop`]: the desktop user,
//!    no capabilities, `no_new_privs`, rlimits, seccomp, exec;
//! 6. `step_reap_until_the_command_ends` — reap, forward SIGTERM/INT/HUP, and
//!    when the command ends kill the rest and exit with its status.
//!
//! Each step that fails writes one line naming the step to stderr and exits
//! with status 125 ([`SETUP_FAILED`]); the agent reports it.
//! `flotilla sandbox-exec` ([`exec`]) enters a running sandbox and starts
//! its command through the same [`desktop`] steps.

mod desktop;
mod exec;
mod outer;
mod pid1;
mod root;

use std::ffi::{CString, OsStr};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use exec::{exec_main, ExecError};
pub use outer::run;
pub use root::{proc_mask_calls, setup};

/// Whether this runs without root: then the sandbox maps only the
/// caller's own uid (as the desktop user) and has no separate uid range.
/// Only meaningful in the host's user namespace (inside a fresh one the
/// euid reads as the overflow uid until mapped): `main` decides once.
pub fn rootless() -> bool {
    !rustix::process::geteuid().is_root()
}

/// `rootless()` as seen by `main` before it cloned.
static ROOTLESS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn decided_rootless() -> bool {
    ROOTLESS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Exit status for "the sandbox could not be built".
pub const SETUP_FAILED: i32 = 125;

/// The file the outer process writes PID 1's host pid to.
pub const INIT_PID_FILE: &str = "init-pid";

/// Where the outer process records how the sandbox ended.
static EXIT_STATUS_PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Ends a failed step: its name and why on stderr (the agent reads the
/// last `sandbox:` line of the log), [`SETUP_FAILED`] as the status.
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

/// [`fail`]s `step` if a raw call returned an error.
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

/// The stop signals (and SIGCHLD), taken with `sigtimedwait`.
fn stop_signals() -> libc::sigset_t {
    signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD])
}

/// Blocks the stop signals (and SIGCHLD): this process takes them with
/// `sigtimedwait` and passes them on.
fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: sigprocmask with a live set and no old-set pointer.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
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

#[cfg(test)]
mod tests;
