//! Starting a command as the desktop: forked, then in the child, in this
//! order, each step a syscall on buffers prepared before the fork — a
//! clean signal mask, no supplementary groups, the desktop user (which
//! leaves no capabilities: the user is not root and no ambient set is
//! raised), `no_new_privs`, rlimits, the seccomp filter, exec. PID 1 runs
//! the desktop's command this way and `sandbox-exec` an operator's.

use std::ffi::CString;

use super::{check, cstring, fail};
use crate::sandbox::{seccomp, SandboxSpec};

/// The desktop's PATH unless its spec sets one.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Forks `command` as the desktop user with the desktop's environment,
/// without privileges (no capabilities, `no_new_privs`, rlimits, the
/// seccomp filter). The child never returns.
pub(super) fn fork_as_desktop(
    spec: &SandboxSpec,
    command: &[String],
    rootless: bool,
) -> libc::pid_t {
    // Everything the child needs is made now: after the fork it only
    // makes syscalls.
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
    let filter = seccomp::filter().unwrap_or_else(|error| fail("seccomp", error));
    // SAFETY: single-threaded; the child only makes syscalls on prepared
    // buffers, then execs.
    let child = unsafe { libc::fork() };
    check("fork the desktop command", child);
    if child == 0 {
        step_unblock_signals();
        step_drop_groups(rootless);
        step_become_desktop_user(spec.desktop_uid);
        step_no_new_privs();
        step_limit_resources();
        step_seccomp(&filter);
        step_exec(&home_c, &program, &arg_pointers, &env_pointers, &command[0]);
    }
    child
}

/// The command starts with a clean signal mask (ours blocks the stops).
fn step_unblock_signals() {
    // SAFETY: sigemptyset on a local set, then sigprocmask with it.
    unsafe {
        let mut unblock: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut unblock);
        libc::sigprocmask(libc::SIG_SETMASK, &unblock, std::ptr::null_mut());
    }
}

/// No supplementary groups (rootless, setgroups is denied and there are
/// none to drop).
fn step_drop_groups(rootless: bool) {
    if !rootless {
        // SAFETY: setgroups with an empty list.
        check("setgroups", unsafe { libc::setgroups(0, std::ptr::null()) });
    }
}

/// The desktop user; as it is not root and no ambient capabilities are
/// raised, this also drops every capability. libc's wrappers, so the ids
/// are the whole process's.
fn step_become_desktop_user(uid: u32) {
    // SAFETY: plain id syscalls.
    check("setgid", unsafe { libc::setgid(uid) });
    // SAFETY: as above.
    check("setuid", unsafe { libc::setuid(uid) });
}

/// No exec may grant privileges again (setuid binaries, file
/// capabilities); seccomp without CAP_SYS_ADMIN needs it too.
fn step_no_new_privs() {
    if let Err(error) = rustix::thread::set_no_new_privs(true) {
        fail("no_new_privs", std::io::Error::from(error));
    }
}

/// No core dumps, at most 65,536 open files — never raised above what we
/// were given.
fn step_limit_resources() {
    for (resource, limit) in [(libc::RLIMIT_CORE, 0), (libc::RLIMIT_NOFILE, 65_536)] {
        let wanted = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        // SAFETY: setrlimit/getrlimit with pointers to locals.
        unsafe {
            if libc::setrlimit(resource, &wanted) != 0 {
                let mut current: libc::rlimit = std::mem::zeroed();
                libc::getrlimit(resource, &mut current);
                current.rlim_cur = current.rlim_cur.min(limit);
                libc::setrlimit(resource, &current);
            }
        }
    }
}

/// The seccomp filter ([`seccomp`]), last before exec so that nothing
/// above needs a syscall it denies.
fn step_seccomp(filter: &[libc::sock_filter]) {
    check("seccomp", seccomp::install(filter));
}

/// In the home directory, exec the command; a failed exec ends the child
/// with the step named.
fn step_exec(
    home: &CString,
    program: &CString,
    args: &[*const libc::c_char],
    env: &[*const libc::c_char],
    name: &str,
) -> ! {
    // SAFETY: the C strings and NULL-terminated pointer arrays were made
    // before the fork and outlive the calls.
    unsafe {
        libc::chdir(home.as_ptr());
        libc::execve(program.as_ptr(), args.as_ptr(), env.as_ptr());
    }
    fail(&format!("exec {name:?}"), std::io::Error::last_os_error())
}

/// `program` itself if it names a path, else the first executable of that
/// name in `search` (else `program`, for exec to report).
fn resolve_program(program: &str, search: &str) -> String {
    if program.contains('/') {
        return program.to_owned();
    }
    for dir in search.split(':').filter(|dir| !dir.is_empty()) {
        let candidate = format!("{dir}/{program}");
        if rustix::fs::access(candidate.as_str(), rustix::fs::Access::EXEC_OK).is_ok() {
            return candidate;
        }
    }
    program.to_owned()
}
