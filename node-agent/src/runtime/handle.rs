//! The process a desktop runs as, and what /proc says about a process:
//! our own child (plain processes, sandboxes exec'd by the runtime) or a
//! sandbox watched through a pidfd (forked by the zygote, or adopted from
//! an earlier run of the agent), whose exit status comes from the file its
//! outer process writes.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Child;

use rustix::process::{Pid, Signal};

use super::Usage;
use crate::sandbox::EXIT_STATUS_FILE;

/// The process a desktop runs as: our child, or a sandbox an earlier run
/// of the agent started and this one re-adopted (or the zygote forked).
pub(super) enum Handle {
    Child(Child),
    Adopted {
        pid: libc::pid_t,
        /// Readable once the process has ended.
        pidfd: OwnedFd,
    },
}

/// How a desktop's process ended.
pub(super) struct Ended {
    pub(super) code: Option<i32>,
    pub(super) text: String,
}

/// Whether `pidfd` is readable (its process ended) within `timeout`.
fn pidfd_ended(pidfd: &OwnedFd, timeout: Option<&rustix::time::Timespec>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        pidfd,
        rustix::event::PollFlags::IN,
    )];
    rustix::event::poll(&mut fds, timeout).is_ok_and(|ready| ready > 0)
}

impl Handle {
    pub(super) fn pid(&self) -> libc::pid_t {
        match self {
            Handle::Child(child) => child.id() as libc::pid_t,
            Handle::Adopted { pid, .. } => *pid,
        }
    }

    /// `Some` once the process has ended. An adopted sandbox's status comes
    /// from the `exit-status` file its outer process writes in `dir`.
    pub(super) fn try_wait(&mut self, dir: Option<&Path>) -> std::io::Result<Option<Ended>> {
        match self {
            Handle::Child(child) => Ok(child.try_wait()?.map(|status| Ended {
                code: status.code(),
                text: status.to_string(),
            })),
            Handle::Adopted { pidfd, .. } => {
                let now = rustix::time::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                if !pidfd_ended(pidfd, Some(&now)) {
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
    pub(super) fn reap(&mut self) {
        match self {
            Handle::Child(child) => {
                let _ = child.wait();
            }
            Handle::Adopted { pidfd, .. } => {
                let second = rustix::time::Timespec {
                    tv_sec: 1,
                    tv_nsec: 0,
                };
                pidfd_ended(pidfd, Some(&second));
            }
        }
    }
}

/// Sends `signal` to the process group `leader` leads. Our own child is
/// not reaped yet, so its pid and group id cannot have been reused; an
/// adopted one was checked by start time and is watched through a pidfd.
pub(super) fn signal_group(leader: libc::pid_t, signal: Signal) {
    if let Some(leader) = Pid::from_raw(leader) {
        // A group that is already gone is what we wanted.
        let _ = rustix::process::kill_process_group(leader, signal);
    }
}

/// A pidfd for `pid` (no flags), to watch a process that is not our child.
pub(super) fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    let pid = Pid::from_raw(pid)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat`
/// field 22), or `None` if there is no such live process.
pub(super) fn process_start_ticks(pid: libc::pid_t) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is the state (field 3); a zombie has ended.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// CPU time and resident memory of one process, from /proc.
pub(super) fn process_usage(pid: u32) -> Usage {
    let ticks_per_second = match rustix::param::clock_ticks_per_second() {
        0 => 100,
        ticks => ticks,
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
