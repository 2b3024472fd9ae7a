//! The system calls PID 1 makes to build a sandbox's root, behind a trait:
//! [`RealSys`] makes them; [`Recorder`] writes each one down instead (and
//! can be told to fail one), so tests assert the exact setup sequence and
//! what a failure at any step leaves undone. `SandboxSpec::fail_at_step`
//! wraps the real calls the same way ([`FailingSys`]) so the leak tests can
//! make a real sandbox fail at every step.

use std::ffi::{CString, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One failed step: what it was and why.
#[derive(Debug)]
pub struct SetupError {
    pub step: String,
    pub error: std::io::Error,
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.error)
    }
}

pub type SysResult = Result<(), SetupError>;

/// The calls that build a sandbox's root filesystem and identity.
pub trait Sys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> SysResult;
    /// `ST_*` flags of the filesystem at `path` (0 when unknown).
    fn statvfs_flags(&mut self, path: &Path) -> u64;
    /// Whether `path` exists (a question, not a step: it cannot fail).
    fn exists(&mut self, path: &Path) -> bool;
    fn mkdir(&mut self, path: &Path) -> SysResult;
    fn write_file(&mut self, path: &Path, text: &str) -> SysResult;
    fn symlink(&mut self, target: &str, link: &Path) -> SysResult;
    fn chown(&mut self, path: &Path, uid: u32) -> SysResult;
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult;
    fn chdir(&mut self, path: &Path) -> SysResult;
    fn umount_detach(&mut self, path: &Path) -> SysResult;
    fn rmdir(&mut self, path: &Path) -> SysResult;
    fn sethostname(&mut self, name: &str) -> SysResult;
    fn loopback_up(&mut self) -> SysResult;
}

fn step_error(step: String, error: std::io::Error) -> SetupError {
    SetupError { step, error }
}

fn cstring(text: impl AsRef<OsStr>, step: &str) -> Result<CString, SetupError> {
    CString::new(text.as_ref().as_bytes()).map_err(|_| {
        step_error(
            step.to_owned(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "contains a NUL byte"),
        )
    })
}

fn check(step: impl FnOnce() -> String, result: libc::c_int) -> SysResult {
    if result < 0 {
        Err(step_error(step(), std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Makes the calls.
pub struct RealSys;

impl Sys for RealSys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> SysResult {
        let step = format!("mount {}", target.display());
        let source = source.map(|s| cstring(s, &step)).transpose()?;
        let target_c = cstring(target, &step)?;
        let fstype = fstype.map(|s| cstring(s, &step)).transpose()?;
        let data = data.map(|s| cstring(s, &step)).transpose()?;
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
        check(|| step, result)
    }

    fn statvfs_flags(&mut self, path: &Path) -> u64 {
        rustix::fs::statvfs(path).map_or(0, |stats| stats.f_flag.bits())
    }

    fn exists(&mut self, path: &Path) -> bool {
        path.symlink_metadata().is_ok()
    }

    fn mkdir(&mut self, path: &Path) -> SysResult {
        std::fs::create_dir_all(path)
            .map_err(|error| step_error(format!("mkdir {}", path.display()), error))
    }

    fn write_file(&mut self, path: &Path, text: &str) -> SysResult {
        std::fs::write(path, text)
            .map_err(|error| step_error(format!("write {}", path.display()), error))
    }

    fn symlink(&mut self, target: &str, link: &Path) -> SysResult {
        std::os::unix::fs::symlink(target, link)
            .map_err(|error| step_error(format!("symlink {}", link.display()), error))
    }

    fn chown(&mut self, path: &Path, uid: u32) -> SysResult {
        let (owner, group) = (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(uid),
        );
        rustix::fs::chown(path, Some(owner), Some(group))
            .map_err(|error| step_error(format!("chown {}", path.display()), error.into()))
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult {
        rustix::process::pivot_root(new_root, put_old)
            .map_err(|error| step_error("pivot_root".to_owned(), error.into()))
    }

    fn chdir(&mut self, path: &Path) -> SysResult {
        std::env::set_current_dir(path)
            .map_err(|error| step_error(format!("chdir {}", path.display()), error))
    }

    fn umount_detach(&mut self, path: &Path) -> SysResult {
        rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)
            .map_err(|error| step_error(format!("detach {}", path.display()), error.into()))
    }

    fn rmdir(&mut self, path: &Path) -> SysResult {
        std::fs::remove_dir(path)
            .map_err(|error| step_error(format!("rmdir {}", path.display()), error))
    }

    fn sethostname(&mut self, name: &str) -> SysResult {
        rustix::system::sethostname(name.as_bytes())
            .map_err(|error| step_error("sethostname".to_owned(), error.into()))
    }

    fn loopback_up(&mut self) -> SysResult {
        // SAFETY: a datagram socket, an ifreq naming "lo", two ioctls, close.
        unsafe {
            let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            check(|| "socket".to_owned(), socket)?;
            let mut request: libc::ifreq = std::mem::zeroed();
            for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
                *slot = *byte as libc::c_char;
            }
            let result = check(
                || "read lo flags".to_owned(),
                libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request),
            )
            .and_then(|()| {
                request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
                check(
                    || "bring lo up".to_owned(),
                    libc::ioctl(socket, libc::SIOCSIFFLAGS, &request),
                )
            });
            libc::close(socket);
            result
        }
    }
}

/// Writes every call down as one line; fails call number `fail_at` (from
/// 0) with EIO, and every call after a failure (a correct caller makes
/// none).
#[derive(Debug, Default)]
pub struct Recorder {
    pub calls: Vec<String>,
    pub fail_at: Option<usize>,
}

impl Recorder {
    fn record(&mut self, call: String) -> SysResult {
        let index = self.calls.len();
        self.calls.push(call.clone());
        if self.fail_at.is_some_and(|at| index >= at) {
            return Err(step_error(
                call,
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }
}

/// Mount flags by name, for readable records.
pub fn flag_names(flags: libc::c_ulong) -> String {
    let names = [
        (libc::MS_RDONLY, "ro"),
        (libc::MS_NOSUID, "nosuid"),
        (libc::MS_NODEV, "nodev"),
        (libc::MS_NOEXEC, "noexec"),
        (libc::MS_REMOUNT, "remount"),
        (libc::MS_BIND, "bind"),
        (libc::MS_REC, "rec"),
        (libc::MS_PRIVATE, "private"),
    ];
    let found: Vec<&str> = names
        .iter()
        .filter(|(flag, _)| flags & flag != 0)
        .map(|(_, name)| *name)
        .collect();
    found.join(",")
}

impl Sys for Recorder {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> SysResult {
        self.record(format!(
            "mount {} {} {} [{}] {}",
            source.unwrap_or("-"),
            target.display(),
            fstype.unwrap_or("-"),
            flag_names(flags),
            data.unwrap_or("-")
        ))
    }

    fn statvfs_flags(&mut self, _path: &Path) -> u64 {
        0
    }

    /// Everything exists: the recorded sequence is the longest one.
    fn exists(&mut self, _path: &Path) -> bool {
        true
    }

    fn mkdir(&mut self, path: &Path) -> SysResult {
        self.record(format!("mkdir {}", path.display()))
    }

    fn write_file(&mut self, path: &Path, _text: &str) -> SysResult {
        self.record(format!("write {}", path.display()))
    }

    fn symlink(&mut self, target: &str, link: &Path) -> SysResult {
        self.record(format!("symlink {} -> {target}", link.display()))
    }

    fn chown(&mut self, path: &Path, uid: u32) -> SysResult {
        self.record(format!("chown {} {uid}", path.display()))
    }

    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult {
        self.record(format!(
            "pivot_root {} {}",
            new_root.display(),
            put_old.display()
        ))
    }

    fn chdir(&mut self, path: &Path) -> SysResult {
        self.record(format!("chdir {}", path.display()))
    }

    fn umount_detach(&mut self, path: &Path) -> SysResult {
        self.record(format!("umount_detach {}", path.display()))
    }

    fn rmdir(&mut self, path: &Path) -> SysResult {
        self.record(format!("rmdir {}", path.display()))
    }

    fn sethostname(&mut self, name: &str) -> SysResult {
        self.record(format!("sethostname {name}"))
    }

    fn loopback_up(&mut self) -> SysResult {
        self.record("loopback_up".to_owned())
    }
}

/// The real calls, except that call number `fail_at` fails with EIO
/// without being made (the leak tests' way to fail a real sandbox at any
/// step).
pub struct FailingSys {
    pub real: RealSys,
    pub count: usize,
    pub fail_at: usize,
}

impl FailingSys {
    fn next(&mut self, what: &str) -> SysResult {
        let index = self.count;
        self.count += 1;
        if index == self.fail_at {
            return Err(step_error(
                format!("{what} (step {index}, failed on purpose)"),
                std::io::Error::from_raw_os_error(libc::EIO),
            ));
        }
        Ok(())
    }
}

impl Sys for FailingSys {
    fn mount(
        &mut self,
        source: Option<&str>,
        target: &Path,
        fstype: Option<&str>,
        flags: libc::c_ulong,
        data: Option<&str>,
    ) -> SysResult {
        self.next("mount")?;
        self.real.mount(source, target, fstype, flags, data)
    }
    fn statvfs_flags(&mut self, path: &Path) -> u64 {
        self.real.statvfs_flags(path)
    }
    fn exists(&mut self, path: &Path) -> bool {
        self.real.exists(path)
    }
    fn mkdir(&mut self, path: &Path) -> SysResult {
        self.next("mkdir")?;
        self.real.mkdir(path)
    }
    fn write_file(&mut self, path: &Path, text: &str) -> SysResult {
        self.next("write")?;
        self.real.write_file(path, text)
    }
    fn symlink(&mut self, target: &str, link: &Path) -> SysResult {
        self.next("symlink")?;
        self.real.symlink(target, link)
    }
    fn chown(&mut self, path: &Path, uid: u32) -> SysResult {
        self.next("chown")?;
        self.real.chown(path, uid)
    }
    fn pivot_root(&mut self, new_root: &Path, put_old: &Path) -> SysResult {
        self.next("pivot_root")?;
        self.real.pivot_root(new_root, put_old)
    }
    fn chdir(&mut self, path: &Path) -> SysResult {
        self.next("chdir")?;
        self.real.chdir(path)
    }
    fn umount_detach(&mut self, path: &Path) -> SysResult {
        self.next("umount")?;
        self.real.umount_detach(path)
    }
    fn rmdir(&mut self, path: &Path) -> SysResult {
        self.next("rmdir")?;
        self.real.rmdir(path)
    }
    fn sethostname(&mut self, name: &str) -> SysResult {
        self.next("sethostname")?;
        self.real.sethostname(name)
    }
    fn loopback_up(&mut self) -> SysResult {
        self.next("loopback_up")?;
        self.real.loopback_up()
    }
}
