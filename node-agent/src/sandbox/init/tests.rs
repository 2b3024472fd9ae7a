//! PID 1's setup against the recording fake: the exact call sequence,
//! that a failure at any call stops it right there, and the variations
//! a spec makes (prepared network, base image, devices, gpud socket).
//! The real calls are checked from inside a sandbox by the `sandbox`
//! integration tests, which also fail a real sandbox at every call.

use std::path::PathBuf;

use super::setup;
use crate::sandbox::sys::Recorder;
use crate::sandbox::SandboxSpec;

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
        gitconfig: None,
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
    "mount - /d/root/home/desktop - [nosuid,nodev,remount,bind,rec] -",
    "mkdir /d/root/workspace",
    "mount /d/workspace /d/root/workspace - [bind,rec] -",
    "mount - /d/root/workspace - [nosuid,nodev,remount,bind,rec] -",
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
    "mount /dev/null /proc/kcore - [bind] -",
    "mount /dev/null /proc/keys - [bind] -",
    "mount /dev/null /proc/latency_stats - [bind] -",
    "mount /dev/null /proc/timer_list - [bind] -",
    "mount /dev/null /proc/timer_stats - [bind] -",
    "mount /dev/null /proc/sched_debug - [bind] -",
    "mount tmpfs /proc/acpi tmpfs [ro,nosuid,nodev,noexec] mode=0555,size=4k",
    "mount tmpfs /proc/asound tmpfs [ro,nosuid,nodev,noexec] mode=0555,size=4k",
    "mount tmpfs /proc/scsi tmpfs [ro,nosuid,nodev,noexec] mode=0555,size=4k",
    "mount /proc/bus /proc/bus - [bind,rec] -",
    "mount - /proc/bus - [ro,remount,bind,rec] -",
    "mount /proc/fs /proc/fs - [bind,rec] -",
    "mount - /proc/fs - [ro,remount,bind,rec] -",
    "mount /proc/irq /proc/irq - [bind,rec] -",
    "mount - /proc/irq - [ro,remount,bind,rec] -",
    "mount /proc/sys /proc/sys - [bind,rec] -",
    "mount - /proc/sys - [ro,remount,bind,rec] -",
    "mount /proc/sysrq-trigger /proc/sysrq-trigger - [bind,rec] -",
    "mount - /proc/sysrq-trigger - [ro,remount,bind,rec] -",
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
        [
            "mount overlay /d/root/usr overlay [ro,nosuid,nodev] lowerdir=/images/tools/usr:/usr"
                .to_owned(),
        ],
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
            "mount - /d/root/run/flotilla - [nosuid,nodev,remount,bind,rec] -".to_owned(),
        ],
    );
    assert_eq!(recorder.calls, expected);
}
