//! PID 1's setup: everything it does before starting the desktop's
//! command, as one sequence of named steps — private mounts, a tmpfs root
//! with the host's `/usr` read-only, a generated `/etc`, home and
//! workspace, `/tmp`, `/run`, a minimal `/dev`, then `pivot_root`, a fresh
//! `/proc`, the host's tree detached, the root read-only, the hostname,
//! loopback. Every call goes through [`Sys`]: the recording fake's tests
//! assert the exact call sequence, and a failure at any call stops setup
//! right there.

use std::path::{Path, PathBuf};

use crate::sandbox::sys::{Sys, SysResult};
use crate::sandbox::SandboxSpec;

/// The sequence, top to bottom; each step's comment says why it exists.
pub fn setup(sys: &mut dyn Sys, spec: &SandboxSpec) -> SysResult {
    let new_root = PathBuf::from(&spec.staging_dir);
    step_make_mounts_private(sys)?;
    step_mount_rootfs(sys, &new_root)?;
    step_mount_usr(sys, spec, &new_root)?;
    let etc = step_write_etc(sys, spec, &new_root)?;
    step_bind_host_etc(sys, spec, &etc)?;
    step_bind_home_and_workspace(sys, spec, &new_root)?;
    step_mount_tmp_and_run(sys, spec, &new_root)?;
    step_bind_gpu_socket(sys, spec, &new_root)?;
    step_bind_session_exe(sys, spec, &new_root)?;
    step_make_dev(sys, spec, &new_root)?;
    step_make_mount_points(sys, &new_root)?;
    step_pivot_root(sys, &new_root)?;
    step_mount_proc(sys)?;
    step_mask_proc(sys)?;
    step_detach_host_tree(sys)?;
    step_remount_root_read_only(sys)?;
    step_set_hostname(sys, spec)?;
    step_loopback_up(sys, spec)
}

/// How a host path is bound into the sandbox.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bind {
    /// Read-only (`/usr`, `/etc` files, the binary).
    ReadOnly,
    /// Writable data the desktop owns (home, workspace, the gpud socket's
    /// directory): no set-uid programs, no device nodes honoured.
    Data,
    /// A device node, as it is.
    Device,
}

/// Recursive bind of a host path at `target`, then restricted as `mode` says.
fn bind(sys: &mut dyn Sys, source: &Path, target: &Path, mode: Bind) -> SysResult {
    let source_text = source.to_string_lossy().into_owned();
    sys.mount(
        Some(&source_text),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    let restrict = match mode {
        Bind::ReadOnly => libc::MS_RDONLY,
        Bind::Data => libc::MS_NOSUID | libc::MS_NODEV,
        Bind::Device => return Ok(()),
    };
    {
        // Keep the flags the kernel locks for unprivileged remounts.
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_REC | restrict;
        let present = sys.statvfs_flags(target);
        for (vfs, ms) in [
            (libc::ST_NOSUID, libc::MS_NOSUID),
            (libc::ST_NODEV, libc::MS_NODEV),
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_RDONLY, libc::MS_RDONLY),
        ] {
            if present & vfs != 0 {
                flags |= ms;
            }
        }
        sys.mount(None, target, None, flags, None)?;
    }
    Ok(())
}

/// Our mounts stay ours: nothing mounted from here on propagates to the
/// host (or to other sandboxes), so nothing is left there to leak.
fn step_make_mounts_private(sys: &mut dyn Sys) -> SysResult {
    sys.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

/// The new root is a small tmpfs on the staging directory: nothing of the
/// host is in it unless a later step puts it there.
fn step_mount_rootfs(sys: &mut dyn Sys, new_root: &Path) -> SysResult {
    sys.mount(
        Some("tmpfs"),
        new_root,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=0755,size=16m"),
    )
}

/// The host OS, read-only: `/usr` (or a base image's `usr/` layered over
/// it, no upper layer: the image's files win, the rest is the host's) and
/// the merged-/usr links.
fn step_mount_usr(sys: &mut dyn Sys, spec: &SandboxSpec, new_root: &Path) -> SysResult {
    sys.mkdir(&new_root.join("usr"))?;
    match &spec.base_image {
        Some(image) => sys.mount(
            Some("overlay"),
            &new_root.join("usr"),
            Some("overlay"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            Some(&format!("lowerdir={}:/usr", image.join("usr").display())),
        )?,
        None => bind(
            sys,
            Path::new("/usr"),
            &new_root.join("usr"),
            Bind::ReadOnly,
        )?,
    }
    for (link, target) in &spec.usr_links {
        sys.symlink(target, &new_root.join(link))?;
    }
    Ok(())
}

/// A generated `/etc`: the desktop user and nobody else of the host's
/// accounts, its own hostname, the host's resolver. Returns its path.
fn step_write_etc(
    sys: &mut dyn Sys,
    spec: &SandboxSpec,
    new_root: &Path,
) -> Result<PathBuf, crate::sandbox::sys::SetupError> {
    let etc = new_root.join("etc");
    sys.mkdir(&etc)?;
    let uid = spec.desktop_uid;
    sys.write_file(
        &etc.join("passwd"),
        &format!(
            "root:x:0:0:root:/root:/bin/sh\n{user}:x:{uid}:{uid}:{user}:/home/{user}:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            user = spec.user
        ),
    )?;
    sys.write_file(
        &etc.join("group"),
        &format!(
            "root:x:0:\n{user}:x:{uid}:\nnogroup:x:65534:\n",
            user = spec.user
        ),
    )?;
    sys.write_file(
        &etc.join("hosts"),
        &format!(
            "127.0.0.1 localhost {0}\n::1 localhost {0}\n",
            spec.hostname
        ),
    )?;
    sys.write_file(&etc.join("hostname"), &format!("{}\n", spec.hostname))?;
    sys.write_file(&etc.join("resolv.conf"), &spec.resolv_conf)?;
    sys.write_file(
        &etc.join("nsswitch.conf"),
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;
    if let Some(gitconfig) = &spec.gitconfig {
        sys.write_file(&etc.join("gitconfig"), gitconfig)?;
    }
    Ok(etc)
}

/// Host configuration the desktop's apps read (fonts), read-only.
fn step_bind_host_etc(sys: &mut dyn Sys, spec: &SandboxSpec, etc: &Path) -> SysResult {
    for host in &spec.etc_binds {
        let Ok(relative) = host.strip_prefix("/etc") else {
            continue;
        };
        let target = etc.join(relative);
        sys.mkdir(&target)?;
        bind(sys, host, &target, Bind::ReadOnly)?;
    }
    Ok(())
}

/// Writable home and workspace, kept on the host's disk (they outlive
/// the sandbox; the agent removes or keeps them).
fn step_bind_home_and_workspace(
    sys: &mut dyn Sys,
    spec: &SandboxSpec,
    new_root: &Path,
) -> SysResult {
    let home = new_root.join("home").join(&spec.user);
    sys.mkdir(&home)?;
    bind(sys, &spec.home_dir, &home, Bind::Data)?;
    let workspace = new_root.join("workspace");
    sys.mkdir(&workspace)?;
    bind(sys, &spec.workspace_dir, &workspace, Bind::Data)
}

/// tmpfs `/tmp` and `/run` (with the desktop's XDG_RUNTIME_DIR, owned by
/// it): scratch space that goes with the sandbox.
fn step_mount_tmp_and_run(sys: &mut dyn Sys, spec: &SandboxSpec, new_root: &Path) -> SysResult {
    for dir in ["tmp", "run"] {
        let path = new_root.join(dir);
        sys.mkdir(&path)?;
        sys.mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV,
            Some("mode=1777"),
        )?;
    }
    let uid = spec.desktop_uid;
    let runtime_dir = new_root.join("run/user").join(uid.to_string());
    sys.mkdir(&runtime_dir)?;
    sys.chown(&runtime_dir, uid)
}

/// The desktop's gpud socket directory at `/run/flotilla`: its only way
/// to the GPU (no device node is ever bound for it).
fn step_bind_gpu_socket(sys: &mut dyn Sys, spec: &SandboxSpec, new_root: &Path) -> SysResult {
    if let Some(gpu_dir) = &spec.gpu_dir {
        let target = new_root.join("run/flotilla");
        sys.mkdir(&target)?;
        bind(sys, gpu_dir, &target, Bind::Data)?;
    }
    Ok(())
}

/// The flotilla binary, read-only, for the desktop session.
fn step_bind_session_exe(sys: &mut dyn Sys, spec: &SandboxSpec, new_root: &Path) -> SysResult {
    if let Some(exe) = &spec.session_exe {
        let dir = new_root.join("run/flotilla-bin");
        sys.mkdir(&dir)?;
        let target = dir.join("flotilla");
        sys.write_file(&target, "")?;
        bind(sys, exe, &target, Bind::ReadOnly)?;
    }
    Ok(())
}

/// A minimal `/dev`: the harmless host nodes bound (a user namespace
/// cannot mknod), the devices the spec grants (checked by the agent), a
/// private devpts, shm and the fd links. Nothing else appears there.
fn step_make_dev(sys: &mut dyn Sys, spec: &SandboxSpec, new_root: &Path) -> SysResult {
    let dev = new_root.join("dev");
    sys.mkdir(&dev)?;
    sys.mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        sys.write_file(&target, "")?;
        bind(sys, &Path::new("/dev").join(node), &target, Bind::Device)?;
    }
    for device in &spec.devices {
        let Ok(relative) = device.strip_prefix("/dev") else {
            continue;
        };
        let target = dev.join(relative);
        if let Some(parent) = target.parent() {
            sys.mkdir(parent)?;
        }
        sys.write_file(&target, "")?;
        bind(sys, device, &target, Bind::Device)?;
    }
    let pts = dev.join("pts");
    sys.mkdir(&pts)?;
    sys.mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    sys.symlink("pts/ptmx", &dev.join("ptmx"))?;
    let shm = dev.join("shm");
    sys.mkdir(&shm)?;
    sys.mount(
        Some("tmpfs"),
        &shm,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some("mode=1777"),
    )?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        sys.symlink(target, &dev.join(name))?;
    }
    Ok(())
}

/// Mount points made now, while the root is still writable from outside
/// it: `/proc` (mounted after the pivot) and root's home.
fn step_make_mount_points(sys: &mut dyn Sys, new_root: &Path) -> SysResult {
    sys.mkdir(&new_root.join("proc"))?;
    sys.mkdir(&new_root.join("root"))
}

/// `pivot_root` into the new root, the host's tree under `/.old-root`
/// until the next steps detach it; then the working directory is `/`.
fn step_pivot_root(sys: &mut dyn Sys, new_root: &Path) -> SysResult {
    let old = new_root.join(".old-root");
    sys.mkdir(&old)?;
    sys.pivot_root(new_root, &old)?;
    sys.chdir(Path::new("/"))
}

/// A fresh `/proc` of the sandbox's own pid namespace.
fn step_mount_proc(sys: &mut dyn Sys) -> SysResult {
    sys.mount(
        Some("proc"),
        Path::new("/proc"),
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
}

/// `/proc` files that describe or act on the host kernel as a whole, as
/// Docker's default masks them: hidden behind `/dev/null` (files) or an
/// empty read-only tmpfs (directories); the kernel's tunables read-only.
const PROC_MASKED_FILES: &[&str] = &[
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
];
const PROC_MASKED_DIRS: &[&str] = &["/proc/acpi", "/proc/asound", "/proc/scsi"];
const PROC_READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How many calls masking `/proc` makes on this host (what its kernel has):
/// the leak tests fail each of them.
pub fn proc_mask_calls() -> usize {
    let existing = |paths: &[&str]| paths.iter().filter(|p| Path::new(p).exists()).count();
    existing(PROC_MASKED_FILES) + existing(PROC_MASKED_DIRS) + 2 * existing(PROC_READ_ONLY)
}

/// Masks what [`PROC_MASKED_FILES`], [`PROC_MASKED_DIRS`] and
/// [`PROC_READ_ONLY`] name, where this kernel has it.
fn step_mask_proc(sys: &mut dyn Sys) -> SysResult {
    for file in PROC_MASKED_FILES.iter().map(Path::new) {
        if sys.exists(file) {
            sys.mount(Some("/dev/null"), file, None, libc::MS_BIND, None)?;
        }
    }
    for dir in PROC_MASKED_DIRS.iter().map(Path::new) {
        if sys.exists(dir) {
            sys.mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some("mode=0555,size=4k"),
            )?;
        }
    }
    for path in PROC_READ_ONLY.iter().map(Path::new) {
        if sys.exists(path) {
            bind(sys, path, path, Bind::ReadOnly)?;
        }
    }
    Ok(())
}

/// Drops the host's tree: nothing of it is reachable from here on.
fn step_detach_host_tree(sys: &mut dyn Sys) -> SysResult {
    sys.umount_detach(Path::new("/.old-root"))?;
    sys.rmdir(Path::new("/.old-root"))
}

/// The root itself read-only from here on (what must be writable has its
/// own mount).
fn step_remount_root_read_only(sys: &mut dyn Sys) -> SysResult {
    sys.mount(
        None,
        Path::new("/"),
        None,
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
        None,
    )
}

/// The desktop's own hostname, in its own uts namespace.
fn step_set_hostname(sys: &mut dyn Sys, spec: &SandboxSpec) -> SysResult {
    sys.sethostname(&spec.hostname)
}

/// Loopback up in a new network namespace. A prepared namespace has lo up
/// already (and is not ours to change: it belongs to the host's user
/// namespace).
fn step_loopback_up(sys: &mut dyn Sys, spec: &SandboxSpec) -> SysResult {
    if spec.netns_fd.is_none() {
        sys.loopback_up()?;
    }
    Ok(())
}
