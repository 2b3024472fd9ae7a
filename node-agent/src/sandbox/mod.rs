//! The desktop sandbox, built directly from Linux namespaces and cgroups
//! (no container runtime): [`cgroup`] for limits, [`init`] for the
//! namespaces, the root filesystem and PID 1. The process runtime starts
//! `flotilla sandbox-init SPEC` in the desktop's cgroup when sandboxes are
//! on; [`SandboxSpec`] is what it reads.

pub mod cgroup;
pub mod init;
pub mod net;
pub mod netlink;
pub mod seccomp;
pub mod sys;
pub mod zygote;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Host uids of desktop `slot` start here; each desktop gets 65,536.
pub const UID_BASE: u32 = 1_000_000_000;
pub const UIDS_PER_DESKTOP: u32 = 65_536;
/// Desktops one node can hold uid ranges for.
pub const MAX_SLOTS: u32 = 4096;
/// The desktop user inside every sandbox.
pub const DESKTOP_UID: u32 = 1000;
pub const DESKTOP_USER: &str = "desktop";

/// A desktop's directory (`<data>/desktops/<id>-<generation>/`), shared by
/// the runtime that makes it, `sandbox-init` and `sandbox-exec` that run in
/// it, and the operator tunnel that reads it: the sandbox's spec
/// (written by the agent before the start) ...
pub const SPEC_FILE: &str = "spec.json";
/// ... its record for re-adoption (written by the agent once it started;
/// present while it runs) ...
pub const STATE_FILE: &str = "state.json";
/// ... its stdout and stderr (and its sandbox's own messages) ...
pub const LOG_FILE: &str = "log";
/// ... and the exit status its outer process writes when it ends.
pub const EXIT_STATUS_FILE: &str = "exit-status";

/// Everything `sandbox-init` needs, written by the agent as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub hostname: String,
    /// First host uid (and gid) of the desktop's range; root inside.
    pub uid_base: u32,
    pub uid_count: u32,
    pub desktop_uid: u32,
    pub user: String,
    /// An empty directory the new root is mounted on (in the sandbox's own
    /// mount namespace; the host never sees the mount).
    pub staging_dir: PathBuf,
    /// Writable, kept on the host's disk.
    pub home_dir: PathBuf,
    pub workspace_dir: PathBuf,
    pub resolv_conf: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A network namespace (an open descriptor the outer process inherits)
    /// to enter instead of a new, loopback-only one. It belongs to the
    /// host's user namespace, so the sandbox cannot reconfigure it.
    #[serde(default)]
    pub netns_fd: Option<i32>,
    /// The agent's lease: a file holding a CLOCK_MONOTONIC deadline in
    /// nanoseconds. When it passes, the sandbox stops itself (SIGTERM, then
    /// SIGKILL after `stop_grace_ms`), so a desktop never outlives its
    /// node's lease, even with the agent gone.
    #[serde(default)]
    pub lease_file: Option<PathBuf>,
    #[serde(default)]
    pub stop_grace_ms: u64,
    /// The host's merged-/usr links (`bin` → `usr/bin`, ...), recreated in
    /// the new root; read by [`host_usr_links`].
    #[serde(default)]
    pub usr_links: Vec<(String, String)>,
    /// A directory whose `usr/` is layered read-only over the host's `/usr`
    /// (overlayfs) in the sandbox.
    #[serde(default)]
    pub base_image: Option<PathBuf>,
    /// Host character devices under `/dev` granted to the desktop (bound
    /// at the same path in its `/dev`).
    #[serde(default)]
    pub devices: Vec<PathBuf>,
    /// The desktop's gpud socket directory on the host, bound at
    /// `/run/flotilla` (the socket: `/run/flotilla/gpu.sock`).
    #[serde(default)]
    pub gpu_dir: Option<PathBuf>,
    /// Host directories under `/etc` bound read-only at the same path in
    /// the generated `/etc` (`/etc/fonts` for a desktop session's apps).
    #[serde(default)]
    pub etc_binds: Vec<PathBuf>,
    /// The `flotilla` binary, bound read-only at
    /// `/run/flotilla-bin/flotilla` (the desktop session runs it).
    #[serde(default)]
    pub session_exe: Option<PathBuf>,
    /// The generated `/etc/gitconfig` (the desktop door's credential).
    #[serde(default)]
    pub gitconfig: Option<String>,
    /// Tests only: fail setup call number N on purpose (see
    /// [`sys::FailingSys`]); the agent never sets it.
    #[serde(default)]
    pub fail_at_step: Option<usize>,
}

/// Where a sandbox finds the `flotilla` binary (see
/// [`SandboxSpec::session_exe`]).
pub const SESSION_EXE: &str = "/run/flotilla-bin/flotilla";

/// The host's merged-/usr links among `/bin`, `/sbin`, `/lib*`.
pub fn host_usr_links() -> Vec<(String, String)> {
    ["bin", "sbin", "lib", "lib64", "lib32", "libx32"]
        .into_iter()
        .filter_map(|link| {
            let target = std::fs::read_link(std::path::Path::new("/").join(link)).ok()?;
            Some((link.to_owned(), target.to_string_lossy().into_owned()))
        })
        .collect()
}

/// A desktop's directories under `dir`: `home` and `workspace` owned by its
/// user, `root` (the staging mount point) and `dir` itself by its root, all
/// in the host range starting at `uid_base` (rootless: by the caller).
/// Returns (home, workspace, root).
pub fn make_desktop_dirs(
    dir: &std::path::Path,
    uid_base: u32,
) -> std::io::Result<(PathBuf, PathBuf, PathBuf)> {
    let (home, workspace, staging) = (dir.join("home"), dir.join("workspace"), dir.join("root"));
    let user = uid_base + DESKTOP_UID;
    for (path, owner) in [
        (dir, uid_base),
        (home.as_path(), user),
        (workspace.as_path(), user),
        (staging.as_path(), uid_base),
    ] {
        std::fs::create_dir_all(path)?;
        // Rootless, everything is ours already (and chown is not ours to do).
        if !init::rootless() {
            std::os::unix::fs::chown(path, Some(owner), Some(owner))?;
        }
    }
    Ok((home, workspace, staging))
}

impl SandboxSpec {
    /// Host uid range of `slot`.
    pub fn uid_base_for(slot: u32) -> u32 {
        UID_BASE + slot * UIDS_PER_DESKTOP
    }
}

/// A node option granting something to every sandbox that cannot be
/// granted as given.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the base image path is not UTF-8")]
    ImageNotUtf8,
    #[error("base image {0:?} must be an absolute path without ':', ',', '\\' or '..'")]
    ImagePath(String),
    #[error("base image {0:?} has no usr/ directory")]
    ImageWithoutUsr(String),
    #[error("device {} must be a path under /dev", .0.display())]
    DeviceOutsideDev(PathBuf),
    #[error("device {}: {source}", path.display())]
    Device {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a character device", .0.display())]
    NotACharacterDevice(PathBuf),
    #[error("device {} ({major}:{minor}) reaches the whole host ({what}); a desktop may not have it", path.display())]
    HostWideDevice {
        path: PathBuf,
        major: u32,
        minor: u32,
        what: &'static str,
    },
}

/// Character devices that act on the host as a whole, never granted to a
/// desktop however an operator asks: (major, minor or `None` for all).
const HOST_WIDE_DEVICES: &[(u32, Option<u32>, &str)] = &[
    (1, Some(1), "physical memory"),
    (1, Some(2), "kernel memory"),
    (1, Some(4), "I/O ports"),
    (1, Some(11), "the kernel log"),
    (4, None, "a virtual console"),
    (5, Some(1), "the system console"),
    (7, None, "console memory"),
    (10, Some(130), "the watchdog"),
    (10, Some(144), "NVRAM"),
    (10, Some(231), "hibernation snapshots"),
    (10, Some(236), "device-mapper control"),
    (202, None, "CPU model-specific registers"),
    (203, None, "CPUID"),
];

/// Checks a base image directory: absolute, a directory with a `usr/`, and
/// no character that would break overlayfs' mount options.
pub fn validate_base_image(path: &std::path::Path) -> Result<(), SandboxError> {
    let text = path.to_str().ok_or(SandboxError::ImageNotUtf8)?;
    if !path.is_absolute() || text.contains([':', ',', '\\']) || text.contains("..") {
        return Err(SandboxError::ImagePath(text.to_owned()));
    }
    if !path.join("usr").is_dir() {
        return Err(SandboxError::ImageWithoutUsr(text.to_owned()));
    }
    Ok(())
}

/// Checks a device grant: a character device directly under `/dev` (or a
/// subdirectory), named without `..`.
pub fn validate_device(path: &std::path::Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::FileTypeExt;
    if !path.starts_with("/dev/") || path.components().any(|c| c.as_os_str() == "..") {
        return Err(SandboxError::DeviceOutsideDev(path.to_owned()));
    }
    let metadata = std::fs::metadata(path).map_err(|source| SandboxError::Device {
        path: path.to_owned(),
        source,
    })?;
    if !metadata.file_type().is_char_device() {
        return Err(SandboxError::NotACharacterDevice(path.to_owned()));
    }
    use std::os::unix::fs::MetadataExt;
    let (major, minor) = (
        rustix::fs::major(metadata.rdev()),
        rustix::fs::minor(metadata.rdev()),
    );
    if let Some((_, _, what)) = HOST_WIDE_DEVICES
        .iter()
        .find(|(m, n, _)| *m == major && n.is_none_or(|n| n == minor))
    {
        return Err(SandboxError::HostWideDevice {
            path: path.to_owned(),
            major,
            minor,
            what,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn images_and_devices_are_checked() {
        let image = tempfile::tempdir().unwrap();
        assert!(validate_base_image(image.path()).is_err(), "no usr/");
        std::fs::create_dir(image.path().join("usr")).unwrap();
        assert!(validate_base_image(image.path()).is_ok());
        for bad in ["relative", "/a:b", "/a,b", "/a/../b"] {
            assert!(validate_base_image(Path::new(bad)).is_err(), "{bad}");
        }
        assert!(validate_device(Path::new("/dev/null")).is_ok());
        for bad in [
            "/etc/passwd",
            "/dev/../etc/passwd",
            "/dev",
            "/dev/no-such-device",
        ] {
            assert!(validate_device(Path::new(bad)).is_err(), "{bad}");
        }
        // A directory under /dev is not a device.
        assert!(validate_device(Path::new("/dev/pts")).is_err());
        // Devices that reach the whole host, when this host has them.
        for host_wide in ["/dev/kmsg", "/dev/mem", "/dev/console", "/dev/tty0"] {
            if Path::new(host_wide).exists() {
                let refused = validate_device(Path::new(host_wide)).unwrap_err();
                assert!(
                    matches!(refused, SandboxError::HostWideDevice { .. }),
                    "{host_wide}: {refused}"
                );
            }
        }
    }
}
