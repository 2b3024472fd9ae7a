//! `flotilla sandbox-exec DIR -- COMMAND...`: runs a command inside the
//! running sandbox whose directory is `DIR` (as `nsenter` would, then as
//! the desktop's command runs: its user, environment, no privileges,
//! seccomp), in the desktop's cgroup, and exits with the command's status.
//! Entered from `main` before any thread exists (`setns` into a user
//! namespace needs a single-threaded process).

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::desktop::fork_as_desktop;
use super::{block_stop_signals, exit_code, stop_signals, INIT_PID_FILE, SETUP_FAILED};
use crate::sandbox::{SandboxSpec, SPEC_FILE, STATE_FILE};

/// Why `sandbox-exec` could not start its command.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no command")]
    NoCommand,
    #[error("read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the sandbox's spec: {source}")]
    Spec {
        #[source]
        source: serde_json::Error,
    },
    #[error("the sandbox's state: {source}")]
    State {
        #[source]
        source: serde_json::Error,
    },
    #[error("the sandbox's init pid: {source}")]
    InitPid {
        #[source]
        source: std::num::ParseIntError,
    },
    #[error("the sandbox is not running")]
    NotRunning,
    #[error("join the desktop's cgroup {path}: {source}")]
    JoinCgroup {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("open the sandbox's {what}: {source}")]
    Open {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("enter the sandbox's {what} namespace: {source}")]
    Enter {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("enter the sandbox's root: {source}")]
    Root {
        #[source]
        source: std::io::Error,
    },
}

/// `sandbox-exec`'s `main`: the command's status, or [`SETUP_FAILED`]
/// with the reason on stderr.
pub fn exec_main(dir: &Path, command: &[String]) -> i32 {
    match enter(dir, command) {
        Ok(status) => status,
        Err(error) => {
            eprintln!("sandbox-exec: {error}");
            SETUP_FAILED
        }
    }
}

fn enter(dir: &Path, command: &[String]) -> Result<i32, ExecError> {
    if command.is_empty() || command[0].is_empty() {
        return Err(ExecError::NoCommand);
    }
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read(&path).map_err(|source| ExecError::Read { path, source })
    };
    let spec: SandboxSpec =
        serde_json::from_slice(&read(SPEC_FILE)?).map_err(|source| ExecError::Spec { source })?;
    let state: serde_json::Value =
        serde_json::from_slice(&read(STATE_FILE)?).map_err(|source| ExecError::State { source })?;
    let outer = state["pid"].as_i64().unwrap_or(0);
    let init: libc::pid_t = String::from_utf8_lossy(&read(INIT_PID_FILE)?)
        .trim()
        .parse()
        .map_err(|source| ExecError::InitPid { source })?;
    // PID 1 must still be the sandbox's (its parent is the outer process).
    let status =
        fs::read_to_string(format!("/proc/{init}/status")).map_err(|_| ExecError::NotRunning)?;
    let parent = status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|ppid| ppid.trim().parse::<i64>().ok());
    if parent != Some(outer) {
        return Err(ExecError::NotRunning);
    }
    // Charged to the desktop like everything else it runs.
    for file in state["cgroup_procs"].as_array().into_iter().flatten() {
        if let Some(path) = file.as_str() {
            fs::write(path, "0").map_err(|source| ExecError::JoinCgroup {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    let open = |what: &'static str| -> Result<OwnedFd, ExecError> {
        fs::File::open(format!("/proc/{init}/{what}"))
            .map(OwnedFd::from)
            .map_err(|source| ExecError::Open { what, source })
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
    let fds: Vec<(OwnedFd, libc::c_int)> = namespaces
        .iter()
        .map(|(what, kind)| open(what).map(|fd| (fd, *kind)))
        .collect::<Result<_, _>>()?;
    let user = open("ns/user")?;
    let setns = |fd: &OwnedFd, kind: libc::c_int, what: &'static str| {
        // SAFETY: setns on a namespace descriptor we opened.
        if unsafe { libc::setns(fd.as_raw_fd(), kind) } != 0 {
            return Err(ExecError::Enter {
                what,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    };
    let rootless = super::rootless();
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
    rustix::process::fchdir(&root)
        .and_then(|()| rustix::process::chroot("."))
        .and_then(|()| rustix::process::chdir("/"))
        .map_err(|error| ExecError::Root {
            source: error.into(),
        })?;
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
    let set = stop_signals();
    // SAFETY: sigtimedwait, waitpid and kill with plain integers and
    // valid pointers to locals.
    unsafe {
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
