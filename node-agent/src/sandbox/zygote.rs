//! The sandbox zygote: one small single-threaded `flotilla sandbox-zygote`
//! process per agent that forks sandboxes on request, so starting one
//! costs a `fork` of a small process instead of an `exec` of the 80 MB
//! `flotilla` binary (about 3 ms of a 5 ms start, measured).
//!
//! The agent talks to it over a `SOCK_SEQPACKET` socket pair (no path on
//! disk: only the agent can reach it). A request is one message: JSON
//! ([`Request`]) plus the descriptors it names (the desktop's log file and,
//! with a network, its namespace) as `SCM_RIGHTS`. The zygote forks; the
//! child joins the desktop's cgroups, takes the log as stdout and stderr,
//! leads its own process group and runs the sandbox's outer process
//! ([`super::init::run`]). The answer is the child's pid (or `-errno`).
//! The zygote reaps its children (and, as a subreaper, processes orphaned
//! inside them); the outer process writes its exit status to its
//! directory, and the agent watches it through a pidfd, as it watches
//! adopted sandboxes. When the agent goes away the zygote exits; its sandboxes
//! live on under their lease, for the next agent to adopt.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The descriptor number the zygote finds its socket at.
const SOCKET_FD: RawFd = 3;
/// Largest request (paths and cgroup files).
const MAX_REQUEST: usize = 64 * 1024;

/// One sandbox to start.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// `spec.json` in the desktop's directory.
    pub spec: PathBuf,
    /// `cgroup.procs` files to join before anything runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// Whether the second descriptor is a network namespace.
    pub netns: bool,
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Sends `bytes` and `fds` as one message.
fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    flotilla_gpu::wire::send_message(socket, bytes, fds).map(drop)
}

/// Receives one message and its descriptors; `Ok(None)` at EOF.
fn receive_with_fds(socket: RawFd) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buffer = vec![0u8; MAX_REQUEST];
    let mut fds = Vec::new();
    let received = flotilla_gpu::wire::receive_message(socket, &mut buffer, &mut fds)?;
    if received == 0 && fds.is_empty() {
        return Ok(None);
    }
    buffer.truncate(received);
    Ok(Some((buffer, fds)))
}

/// `flotilla sandbox-zygote`: serves requests on descriptor 3 until the
/// agent closes it. Entered from `main` before any thread exists.
pub fn zygote_main() -> i32 {
    // Sandbox processes orphaned inside a failing sandbox are reparented
    // here, not to the host's init, and reaped here too.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    loop {
        reap();
        let mut poll = libc::pollfd {
            fd: SOCKET_FD,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one live pollfd.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready <= 0 {
            continue;
        }
        let (bytes, fds) = match receive_with_fds(SOCKET_FD) {
            Ok(Some(message)) => message,
            // The agent went away; the sandboxes stay. Those it just
            // killed are reaped first (otherwise the host's init inherits
            // their zombies).
            Ok(None) => {
                for _ in 0..10 {
                    reap();
                    std::thread::sleep(Duration::from_millis(20));
                }
                return 0;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                eprintln!("sandbox-zygote: {error}");
                return 1;
            }
        };
        // The answer carries a pidfd of the new sandbox, opened here
        // before this loop can reap it: a sandbox that ends at once is
        // still the agent's to watch (its pid alone could be gone, or
        // reused, by the time the agent looked).
        let mut pidfd = None;
        let answer: i64 = match serde_json::from_slice::<Request>(&bytes) {
            Ok(request) if !fds.is_empty() && (fds.len() == 2) == request.netns => {
                match fork_sandbox(&request, &fds) {
                    Ok(pid) => {
                        // SAFETY: pidfd_open of our unreaped child.
                        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
                        if fd >= 0 {
                            // SAFETY: a fresh descriptor nobody else owns.
                            pidfd = Some(unsafe { OwnedFd::from_raw_fd(fd as i32) });
                            i64::from(pid)
                        } else {
                            -i64::from(
                                io::Error::last_os_error()
                                    .raw_os_error()
                                    .unwrap_or(libc::EIO),
                            )
                        }
                    }
                    Err(error) => -i64::from(error.raw_os_error().unwrap_or(libc::EIO)),
                }
            }
            _ => -i64::from(libc::EINVAL),
        };
        drop(fds);
        let passed: Vec<RawFd> = pidfd.iter().map(|fd| fd.as_raw_fd()).collect();
        if send_with_fds(SOCKET_FD, &answer.to_le_bytes(), &passed).is_err() {
            return 0;
        }
    }
}

/// Reaps ended children (its own and orphans it inherited as subreaper).
/// How a sandbox ended is written by its outer process, never here: the
/// agent may be removing the directory by then.
fn reap() {
    loop {
        // SAFETY: waitpid without a status pointer.
        let pid = unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
        if pid <= 0 {
            return;
        }
    }
}

/// Forks one sandbox's outer process.
fn fork_sandbox(request: &Request, fds: &[OwnedFd]) -> io::Result<libc::pid_t> {
    use std::os::unix::ffi::OsStrExt;
    let procs: Vec<std::ffi::CString> = request
        .cgroup_procs
        .iter()
        .filter_map(|path| std::ffi::CString::new(path.as_os_str().as_bytes()).ok())
        .collect();
    let log = fds[0].as_raw_fd();
    let netns = fds.get(1).map(|fd| fd.as_raw_fd());
    // SAFETY: this process is single-threaded, so the child may run
    // anything; it ends with _exit.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last_error());
    }
    if pid > 0 {
        return Ok(pid);
    }
    // The child: its own group, the desktop's cgroups, the log, then the
    // sandbox.
    // SAFETY: plain syscalls on descriptors and C strings we hold.
    unsafe {
        libc::close(SOCKET_FD);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        libc::setpgid(0, 0);
        for file in &procs {
            let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                libc::_exit(super::init::SETUP_FAILED);
            }
            libc::close(fd);
        }
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
        libc::dup2(null, 0);
        libc::dup2(log, 1);
        libc::dup2(log, 2);
    }
    let status = super::init::run(&request.spec, netns);
    // SAFETY: ends the child without unwinding into the zygote's loop.
    unsafe { libc::_exit(status) }
}

/// The agent's handle on its zygote.
pub struct Zygote {
    socket: OwnedFd,
    child: Child,
}

impl Zygote {
    /// Starts `exe sandbox-zygote`.
    pub fn start(exe: &Path) -> io::Result<Zygote> {
        use std::os::unix::process::CommandExt;
        let mut pair = [0; 2];
        // SAFETY: socketpair fills the two-element array.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        } != 0
        {
            return Err(last_error());
        }
        // SAFETY: two fresh descriptors nobody else owns.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let theirs_raw = theirs.as_raw_fd();
        let mut command = Command::new(exe);
        command.arg("sandbox-zygote");
        // SAFETY: dup2/fcntl between fork and exec are async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                if theirs_raw == SOCKET_FD {
                    if libc::fcntl(SOCKET_FD, libc::F_SETFD, 0) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(theirs_raw, SOCKET_FD) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        drop(theirs);
        let timeout = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a live timeval of its size.
        unsafe {
            libc::setsockopt(
                ours.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        Ok(Zygote {
            socket: ours,
            child,
        })
    }

    /// Starts one sandbox; returns its outer process's pid.
    pub fn spawn(
        &mut self,
        request: &Request,
        log: RawFd,
        netns: Option<RawFd>,
    ) -> io::Result<(libc::pid_t, OwnedFd)> {
        let bytes = serde_json::to_vec(request).map_err(io::Error::other)?;
        let mut fds = vec![log];
        fds.extend(netns);
        send_with_fds(self.socket.as_raw_fd(), &bytes, &fds)?;
        let (answer, mut pidfds) = receive_with_fds(self.socket.as_raw_fd())?
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "the zygote went away"))?;
        let answer: [u8; 8] = answer
            .as_slice()
            .try_into()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a malformed zygote answer"))?;
        match i64::from_le_bytes(answer) {
            pid if pid > 0 && pidfds.len() == 1 => {
                Ok((pid as libc::pid_t, pidfds.pop().expect("one")))
            }
            pid if pid > 0 => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the zygote's answer has no pidfd",
            )),
            error => Err(io::Error::from_raw_os_error((-error) as i32)),
        }
    }

    /// Whether the zygote process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // Closing our end ends it (its sandboxes stay).
        // SAFETY: shutdown on our own socket.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RDWR) };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
