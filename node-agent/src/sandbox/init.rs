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

use crate::sandbox::SandboxSpec;

/// Exit status for "the sandbox could not be built".
pub const SETUP_FAILED: i32 = 125;

fn fail(step: &str, error: impl std::fmt::Display) -> ! {
    eprintln!("sandbox: {step}: {error}");
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
    let spec: SandboxSpec = match fs::read(spec_path)
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
    {
        Ok(spec) => spec,
        Err(error) => {
            eprintln!("sandbox: read {}: {error}", spec_path.display());
            return SETUP_FAILED;
        }
    };
    // Signals that end the desktop reach PID 1 directly (same process
    // group); the outer process only waits.
    block_stop_signals();
    let mut ready = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    check("pipe", unsafe {
        libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC)
    });
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWNET
        | libc::CLONE_NEWCGROUP;
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
    let maps = [
        (
            "uid_map",
            format!("0 {} {}\n", spec.uid_base, spec.uid_count),
        ),
        (
            "gid_map",
            format!("0 {} {}\n", spec.uid_base, spec.uid_count),
        ),
    ];
    for (file, map) in maps {
        let path = format!("/proc/{init}/{file}");
        if let Err(error) = fs::write(&path, map) {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(init, libc::SIGKILL) };
            eprintln!("sandbox: write {path}: {error}");
            return SETUP_FAILED;
        }
    }
    // SAFETY: one byte from a live buffer to our pipe; then close it.
    unsafe {
        libc::write(ready[1], b"1".as_ptr().cast(), 1);
        libc::close(ready[1]);
    }
    wait_forwarding_stops(init)
}

/// Waits for `init`, passing a stop signal on to the whole process group
/// until it ends: a stop that arrives while PID 1 is still being built
/// would otherwise reach nobody (pending signals are not inherited).
fn wait_forwarding_stops(init: libc::pid_t) -> i32 {
    // SAFETY: sigset manipulation on locals; sigtimedwait, waitpid and kill
    // with plain integers and valid pointers.
    unsafe {
        let set = signal_set(&[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD]);
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let mut stop = None;
        loop {
            let signal = libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout);
            if matches!(signal, libc::SIGTERM | libc::SIGINT | libc::SIGHUP) {
                stop = Some(signal);
            }
            let mut status = 0;
            if libc::waitpid(init, &mut status, libc::WNOHANG) == init {
                return exit_code(status);
            }
            if let Some(signal) = stop {
                // Our own group: us (blocked), the init process (blocked),
                // PID 1 (takes it) and the desktop.
                libc::kill(0, signal);
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
    // SAFETY: plain id syscalls.
    check("setresgid", unsafe { libc::setresgid(0, 0, 0) });
    // SAFETY: as above.
    check("setresuid", unsafe { libc::setresuid(0, 0, 0) });
    pid_one(spec)
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) {
    let source = source.map(cstring);
    let target_c = cstring(target);
    let fstype = fstype.map(cstring);
    let data = data.map(cstring);
    // SAFETY: every pointer is a valid C string or null for the call.
    let result = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast()),
        )
    };
    if result < 0 {
        fail(
            &format!("mount {}", target.display()),
            std::io::Error::last_os_error(),
        );
    }
}

/// Read-only bind of a host path (a directory or a file) at `target`.
fn bind(source: &Path, target: &Path, read_only: bool) {
    let source_text = source.to_string_lossy().into_owned();
    mount(
        Some(&source_text),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    );
    if read_only {
        // Keep the flags the kernel locks for unprivileged remounts.
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC;
        // SAFETY: statvfs into a zeroed struct with a valid path.
        let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
        let path = cstring(target);
        // SAFETY: as above.
        if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } == 0 {
            for (vfs, ms) in [
                (libc::ST_NOSUID, libc::MS_NOSUID),
                (libc::ST_NODEV, libc::MS_NODEV),
                (libc::ST_NOEXEC, libc::MS_NOEXEC),
            ] {
                if stats.f_flag & vfs != 0 {
                    flags |= ms;
                }
            }
        }
        mount(None, target, None, flags, None);
    }
}

fn make_dir(path: &Path) {
    if let Err(error) = fs::create_dir_all(path) {
        fail(&format!("mkdir {}", path.display()), error);
    }
}

fn write_file(path: &Path, text: &str) {
    if let Err(error) = fs::write(path, text) {
        fail(&format!("write {}", path.display()), error);
    }
}

fn symlink(target: &str, link: &Path) {
    if let Err(error) = std::os::unix::fs::symlink(target, link) {
        fail(&format!("symlink {}", link.display()), error);
    }
}

/// Builds the root filesystem under `new_root` (a fresh tmpfs).
fn build_root(spec: &SandboxSpec, new_root: &Path) {
    mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=16m"),
    );
    // The host OS, read-only: /usr and the merged-/usr links.
    make_dir(&new_root.join("usr"));
    bind(Path::new("/usr"), &new_root.join("usr"), true);
    for link in ["bin", "sbin", "lib", "lib64", "lib32", "libx32"] {
        let host = Path::new("/").join(link);
        if let Ok(target) = fs::read_link(&host) {
            symlink(&target.to_string_lossy(), &new_root.join(link));
        }
    }
    // A generated /etc.
    let etc = new_root.join("etc");
    make_dir(&etc);
    let uid = spec.desktop_uid;
    write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}:{user}:/home/{user}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            user = spec.user
        ),
    );
    write_file(
        &etc.join("group"),
        &format!(
            "root:x:0:\n{user}:x:{uid}:\nnogroup:x:65534:\n",
            user = spec.user
        ),
    );
    write_file(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1 localhost {0}\n::1 localhost {0}\n",
            spec.hostname
        ),
    );
    write_file(&etc.join("hostname"), &format!("{}\n", spec.hostname));
    write_file(&etc.join("resolv.conf"), &spec.resolv_conf);
    write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    );
    // Writable home and workspace, kept on the host's disk.
    let home = new_root.join("home").join(&spec.user);
    make_dir(&home);
    bind(&spec.home_dir, &home, false);
    let workspace = new_root.join("workspace");
    make_dir(&workspace);
    bind(&spec.workspace_dir, &workspace, false);
    // tmpfs /tmp and /run (with the desktop's XDG_RUNTIME_DIR).
    for dir in ["tmp", "run"] {
        let path = new_root.join(dir);
        make_dir(&path);
        mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        );
    }
    let runtime_dir = new_root.join("run/user").join(uid.to_string());
    make_dir(&runtime_dir);
    chown(&runtime_dir, uid);
    // A minimal /dev: bind the harmless host nodes (a user namespace cannot
    // mknod), a private devpts, shm.
    let dev = new_root.join("dev");
    make_dir(&dev);
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    );
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        write_file(&target, "");
        bind(&Path::new("/dev").join(node), &target, false);
    }
    let pts = dev.join("pts");
    make_dir(&pts);
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    );
    symlink("pts/ptmx", &dev.join("ptmx"));
    let shm = dev.join("shm");
    make_dir(&shm);
    mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    );
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, &dev.join(name));
    }
    make_dir(&new_root.join("proc"));
    make_dir(&new_root.join("root"));
}

fn chown(path: &Path, uid: u32) {
    let c_path = cstring(path);
    // SAFETY: chown with a valid C string.
    check(&format!("chown {}", path.display()), unsafe {
        libc::chown(c_path.as_ptr(), uid, uid)
    });
}

fn pid_one(spec: &SandboxSpec) -> ! {
    // Our mounts stay ours.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    );
    let new_root = PathBuf::from(&spec.staging_dir);
    build_root(spec, &new_root);
    // pivot_root into it and drop the host's tree.
    let old = new_root.join(".old-root");
    make_dir(&old);
    let (new_c, old_c) = (cstring(&new_root), cstring(&old));
    // SAFETY: pivot_root via syscall with two valid C strings.
    check("pivot_root", unsafe {
        libc::syscall(libc::SYS_pivot_root, new_c.as_ptr(), old_c.as_ptr()) as libc::c_int
    });
    std::env::set_current_dir("/").unwrap_or_else(|e| fail("chdir /", e));
    mount(
        Some("proc"),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    );
    let old_inside = cstring("/.old-root");
    // SAFETY: umount2 with a valid C string.
    check("detach the host root", unsafe {
        libc::umount2(old_inside.as_ptr(), libc::MNT_DETACH)
    });
    let _ = fs::remove_dir("/.old-root");
    // The root itself read-only from here on.
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    );
    let hostname = cstring(&spec.hostname);
    // SAFETY: sethostname with a valid buffer and its length.
    check("sethostname", unsafe {
        libc::sethostname(hostname.as_ptr(), spec.hostname.len())
    });
    loopback_up();
    let child = start_command(spec);
    supervise(child)
}

/// Brings `lo` up in the new network namespace.
fn loopback_up() {
    // SAFETY: a datagram socket, an ifreq naming "lo", two ioctls, close.
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check("socket", socket);
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        check(
            "read lo flags",
            libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request),
        );
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(
            "bring lo up",
            libc::ioctl(socket, libc::SIOCSIFFLAGS, &request),
        );
        libc::close(socket);
    }
}

/// Forks the desktop's command as the desktop user.
fn start_command(spec: &SandboxSpec) -> libc::pid_t {
    let program = cstring(&spec.command[0]);
    let args: Vec<CString> = spec.command.iter().map(cstring).collect();
    let mut arg_pointers: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_pointers.push(std::ptr::null());
    let home = format!("/home/{}", spec.user);
    let mut env: Vec<CString> = vec![
        cstring(format!("HOME={home}")),
        cstring(format!("USER={}", spec.user)),
        cstring(format!("LOGNAME={}", spec.user)),
        cstring("PATH=/usr/local/bin:/usr/bin:/bin"),
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
            check("setgroups", libc::setgroups(0, std::ptr::null()));
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
            libc::execvpe(
                program.as_ptr(),
                arg_pointers.as_ptr(),
                env_pointers.as_ptr(),
            );
        }
        fail(
            &format!("exec {:?}", spec.command[0]),
            std::io::Error::last_os_error(),
        );
    }
    child
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
