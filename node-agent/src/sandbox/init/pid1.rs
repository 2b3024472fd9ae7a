//! PID 1 of a sandbox, our init, just cloned into its namespaces: it
//! becomes root of its user namespace, builds the sandbox, starts the
//! desktop's command and reaps until it ends. See the step list in
//! [`super`].

use super::desktop::fork_as_desktop;
use super::root::setup;
use super::{check, decided_rootless, exit_code, fail, stop_signals};
use crate::sandbox::sys::{FailingSys, RealSys};
use crate::sandbox::SandboxSpec;

/// The sequence PID 1 goes through; never returns.
pub(super) fn pid_one(spec: &SandboxSpec, ready: libc::c_int) -> ! {
    step_die_with_outer();
    step_wait_for_id_maps(ready);
    step_become_root();
    step_build_root(spec);
    let command = step_start_command(spec);
    step_reap_until_the_command_ends(command)
}

/// 1. PID 1 dies with the outer process: the outer process is what the
///    agent watches, signals and adopts, so no sandbox may run without it.
fn step_die_with_outer() {
    let death_signal = Some(rustix::process::Signal::KILL);
    if let Err(error) = rustix::process::set_parent_process_death_signal(death_signal) {
        fail("pdeathsig", std::io::Error::from(error));
    }
}

/// 2. Until the outer process has written the uid/gid maps, this process
///    is nobody in its user namespace.
fn step_wait_for_id_maps(ready: libc::c_int) {
    let mut byte = [0u8; 1];
    // SAFETY: reading one byte into a live buffer.
    if unsafe { libc::read(ready, byte.as_mut_ptr().cast(), 1) } != 1 {
        fail("wait for uid maps", "the outer process went away");
    }
}

/// 3. Root of its own user namespace (and nothing on the host: root
///    inside maps to the desktop's unprivileged range). Rootless, PID 1
///    already is the desktop user, with every capability in its new user
///    namespace until it execs. libc's setres[ug]id (not a raw syscall)
///    so the ids are the whole process's.
fn step_become_root() {
    if !decided_rootless() {
        // SAFETY: plain id syscalls.
        check("setresgid", unsafe { libc::setresgid(0, 0, 0) });
        // SAFETY: as above.
        check("setresuid", unsafe { libc::setresuid(0, 0, 0) });
    }
}

/// 4. The sandbox's root filesystem and identity ([`setup`]). Through the
///    real calls, or — tests only, `fail_at_step` — through
///    [`FailingSys`], which fails call number N so the leak tests can
///    stop a real sandbox at every step.
fn step_build_root(spec: &SandboxSpec) {
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
}

/// 5. The desktop's command, forked as the desktop user without
///    privileges ([`fork_as_desktop`]).
fn step_start_command(spec: &SandboxSpec) -> libc::pid_t {
    fork_as_desktop(spec, &spec.command, decided_rootless())
}

/// 6. PID 1's loop: reap every orphan, forward stop signals to the
///    command, and when it ends kill whatever is left (nothing may outlive
///    the session) and exit with its status, which ends the sandbox.
fn step_reap_until_the_command_ends(command: libc::pid_t) -> ! {
    let set = stop_signals();
    // SAFETY: sigtimedwait/waitpid/kill with plain integers and valid
    // pointers to locals.
    unsafe {
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
                    libc::kill(-1, libc::SIGKILL);
                    libc::_exit(exit_code(status));
                }
            }
        }
    }
}
