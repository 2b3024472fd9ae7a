//! The desktop's seccomp filter, installed right before it execs (and by
//! `sandbox-exec` before its command does): syscalls no desktop needs
//! answer EPERM, and so does every syscall made through a foreign
//! architecture or the x32 ABI; `clone`/`unshare` making a namespace
//! answer EPERM and `clone3` ENOSYS; everything else is allowed.
//!
//! The rules are a table ([`DENIED_SYSCALLS`]) compiled by `seccompiler`.
//! Two checks stay hand-written classic BPF in front of its program,
//! because seccompiler cannot express them: it kills the process on a
//! foreign architecture (SECCOMP_RET_KILL_PROCESS, where we answer EPERM)
//! and has no check for x32 syscall numbers (bit 30 set), which would
//! otherwise reach the x86-64 table under other numbers. Its own
//! architecture check, which follows ours, then always passes.
//!
//! Turning this into an allowlist (issue 18) is a change of table and of
//! the two actions in [`filter`]: [`MATCH_ACTION`] becomes `Allow` and
//! [`MISMATCH_ACTION`] `Errno(EPERM)`; the prefix stays as it is.
//!
//! A leaf: it uses nothing else of the crate.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

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
    // The mount table is the sandbox's, made before this filter: a desktop
    // changes none of it, and joins no other namespace.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("open_tree", libc::SYS_open_tree),
    ("move_mount", libc::SYS_move_mount),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("setns", libc::SYS_setns),
    // io_uring reaches much of the kernel around seccomp (Docker and
    // Google's kernels keep it off for untrusted code).
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
];

/// `clone` and `unshare` with any of these flags answer EPERM: a new user
/// namespace would give the desktop CAP_SYS_ADMIN and CAP_NET_ADMIN over
/// it, the usual road to a kernel privilege escalation; the others need
/// capabilities the desktop has not, or come with a user namespace.
pub const NAMESPACE_FLAGS: &[(&str, libc::c_int)] = &[
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
    ("CLONE_NEWNS", libc::CLONE_NEWNS),
    ("CLONE_NEWPID", libc::CLONE_NEWPID),
    ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
    ("CLONE_NEWTIME", 0x80),
];

/// The syscalls whose first argument is those flags.
const FLAG_SYSCALLS: &[libc::c_long] = &[libc::SYS_clone, libc::SYS_unshare];

/// What a listed syscall gets.
const MATCH_ACTION: SeccompAction = SeccompAction::Errno(libc::EPERM as u32);
/// What every other syscall (of the native ABI) gets.
const MISMATCH_ACTION: SeccompAction = SeccompAction::Allow;

/// The native architecture as seccomp's `struct seccomp_data` names it.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// x32 syscall numbers carry this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Why the filter could not be built (a bug: the table is ours).
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("this architecture has no seccomp filter: {source}")]
    Architecture {
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("compile the seccomp filter: {source}")]
    Compile {
        #[source]
        source: seccompiler::BackendError,
    },
}

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

/// The hand-written prefix: a foreign architecture or an x32 syscall
/// number answers EPERM (see the module doc for why seccompiler cannot),
/// and `clone3` answers ENOSYS: its flags are behind a pointer seccomp
/// cannot read, and ENOSYS (unlike EPERM) makes glibc fall back to
/// `clone`, whose flags the rules check (Docker's profile does the same).
fn abi_prefix() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
    let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
    // struct seccomp_data: nr at 0, arch at 4.
    vec![
        statement(LD_W_ABS, 4),
        jump(JEQ, AUDIT_ARCH, 1, 0),
        statement(RET, eperm),
        statement(LD_W_ABS, 0),
        jump(JGE, X32_SYSCALL_BIT, 0, 1),
        statement(RET, eperm),
        jump(JEQ, libc::SYS_clone3 as u32, 0, 1),
        statement(RET, enosys),
    ]
}

/// The rules: each listed syscall unconditionally; `clone` and `unshare`
/// when their flags hold any namespace flag (one rule per flag: a
/// syscall matches when any of its rules does).
fn rules() -> Result<BTreeMap<i64, Vec<SeccompRule>>, seccompiler::BackendError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED_SYSCALLS
        .iter()
        .map(|(_, number)| (*number, Vec::new()))
        .collect();
    for number in FLAG_SYSCALLS {
        let mut flagged = Vec::new();
        for (_, flag) in NAMESPACE_FLAGS {
            let flag = *flag as u64;
            let condition = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )?;
            flagged.push(SeccompRule::new(vec![condition])?);
        }
        rules.insert(*number, flagged);
    }
    Ok(rules)
}

/// The whole classic-BPF program: the ABI prefix, then seccompiler's
/// compilation of [`rules`].
pub fn filter() -> Result<Vec<libc::sock_filter>, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|source| SeccompError::Architecture { source })?;
    let compiled: BpfProgram = rules()
        .and_then(|rules| SeccompFilter::new(rules, MISMATCH_ACTION, MATCH_ACTION, arch))
        .and_then(BpfProgram::try_from)
        .map_err(|source| SeccompError::Compile { source })?;
    let mut program = abi_prefix();
    program.extend(
        compiled
            .iter()
            .map(|insn| jump(insn.code, insn.k, insn.jt, insn.jf)),
    );
    Ok(program)
}

/// Installs `filter` for this process and its children (needs
/// `no_new_privs`). Only a syscall: safe between fork and exec.
pub fn install(filter: &[libc::sock_filter]) -> libc::c_int {
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with a pointer to a live sock_fprog whose filter
    // outlives the call (the kernel copies it).
    unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &program as *const libc::sock_fprog,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a classic-BPF seccomp program (the instructions ours and
    /// seccompiler's use) on one `seccomp_data`; returns its verdict.
    fn run(program: &[libc::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        for (i, arg) in args.iter().enumerate() {
            data[16 + 8 * i..24 + 8 * i].copy_from_slice(&arg.to_ne_bytes());
        }
        let (mut accumulator, mut pc) = (0u32, 0usize);
        loop {
            let insn = program[pc];
            pc += 1;
            let code = u32::from(insn.code);
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    let at = insn.k as usize;
                    accumulator = u32::from_ne_bytes(data[at..at + 4].try_into().unwrap());
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => accumulator &= insn.k,
                c if c == libc::BPF_JMP | libc::BPF_JA => pc += insn.k as usize,
                c if c & 0x07 == libc::BPF_JMP => {
                    let taken = match c & 0xf0 {
                        op if op == libc::BPF_JEQ => accumulator == insn.k,
                        op if op == libc::BPF_JGE => accumulator >= insn.k,
                        op if op == libc::BPF_JGT => accumulator > insn.k,
                        op if op == libc::BPF_JSET => accumulator & insn.k != 0,
                        op => panic!("jump {op:#x} not modelled"),
                    };
                    pc += usize::from(if taken { insn.jt } else { insn.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return insn.k,
                c => panic!("instruction {c:#x} not modelled"),
            }
        }
    }

    const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

    #[test]
    fn every_listed_syscall_is_denied_and_every_other_allowed() {
        let program = filter().unwrap();
        let denied: Vec<u32> = DENIED_SYSCALLS.iter().map(|(_, n)| *n as u32).collect();
        let flagged: Vec<u32> = FLAG_SYSCALLS.iter().map(|n| *n as u32).collect();
        for nr in 0..1024u32 {
            if flagged.contains(&nr) || nr == libc::SYS_clone3 as u32 {
                continue; // below
            }
            let expected = if denied.contains(&nr) {
                EPERM
            } else {
                libc::SECCOMP_RET_ALLOW
            };
            for args in [[0; 6], [u64::MAX; 6], [1, 2, 3, 4, 5, 6]] {
                assert_eq!(
                    run(&program, AUDIT_ARCH, nr, args),
                    expected,
                    "syscall {nr}"
                );
            }
        }
    }

    #[test]
    fn namespaces_cannot_be_made_and_clone3_falls_back_to_clone() {
        let program = filter().unwrap();
        // What threads, fork and posix_spawn pass (glibc): allowed.
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        let spawn = (libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD) as u64;
        for nr in FLAG_SYSCALLS {
            for flags in [
                0,
                thread,
                spawn,
                libc::SIGCHLD as u64,
                libc::CLONE_FILES as u64,
            ] {
                let args = [flags, 0, 0, 0, 0, 0];
                assert_eq!(
                    run(&program, AUDIT_ARCH, *nr as u32, args),
                    libc::SECCOMP_RET_ALLOW,
                    "syscall {nr} flags {flags:#x}"
                );
            }
            // Any namespace flag, alone or among others: EPERM.
            for (name, flag) in NAMESPACE_FLAGS {
                for flags in [*flag as u64, *flag as u64 | thread, u64::MAX] {
                    let args = [flags, 0, 0, 0, 0, 0];
                    assert_eq!(
                        run(&program, AUDIT_ARCH, *nr as u32, args),
                        EPERM,
                        "syscall {nr} with {name}"
                    );
                }
            }
        }
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        for args in [[0; 6], [u64::MAX; 6]] {
            assert_eq!(
                run(&program, AUDIT_ARCH, libc::SYS_clone3 as u32, args),
                enosys
            );
        }
    }

    #[test]
    fn foreign_architectures_and_x32_get_eperm_not_a_kill() {
        let program = filter().unwrap();
        // i386 and x32-sized numbers: EPERM whatever the syscall.
        for arch in [0x4000_0003, 0, AUDIT_ARCH ^ 1] {
            for nr in [0, 1, 59, 246] {
                assert_eq!(run(&program, arch, nr, [0; 6]), EPERM, "arch {arch:#x}");
            }
        }
        for nr in [
            X32_SYSCALL_BIT,
            X32_SYSCALL_BIT | 1,
            X32_SYSCALL_BIT | 59,
            u32::MAX,
        ] {
            assert_eq!(run(&program, AUDIT_ARCH, nr, [0; 6]), EPERM, "nr {nr:#x}");
        }
    }

    #[test]
    fn the_program_is_the_prefix_then_seccompilers_compilation() {
        let program = filter().unwrap();
        let prefix = abi_prefix();
        assert!(program.len() > prefix.len());
        for (got, want) in program.iter().zip(&prefix) {
            assert_eq!(
                (got.code, got.jt, got.jf, got.k),
                (want.code, want.jt, want.jf, want.k)
            );
        }
        // Every listed syscall is compared against somewhere after it.
        for (name, number) in DENIED_SYSCALLS {
            assert!(
                program[prefix.len()..]
                    .iter()
                    .any(|insn| insn.k == *number as u32),
                "{name} is not in the filter"
            );
        }
    }
}
