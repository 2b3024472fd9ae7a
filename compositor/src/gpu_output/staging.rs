//! The memory the compositor shares with gpud: a memfd it creates and
//! maps writable (never a client's pool), into which a surface's damaged
//! rows are copied and which gpud maps as the resource's backing.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::bail;

/// A writable shared mapping of a memfd (a resource's backing).
pub(super) struct Staging {
    pub(super) fd: OwnedFd,
    map: *mut u8,
    pub(super) len: usize,
}

// SAFETY: the mapping is owned by the value alone (like a Vec's buffer);
// nothing else refers to it, so moving it to another thread is sound.
unsafe impl Send for Staging {}

impl Staging {
    pub(super) fn new(len: usize) -> anyhow::Result<Staging> {
        Staging::map(len, 0)
    }

    /// One whose pages are already there (MAP_POPULATE): the first copy
    /// into it does not fault page by page (≈ 1,000 faults for a 4 MB
    /// window, milliseconds on a first frame).
    pub(super) fn populated(len: usize) -> anyhow::Result<Staging> {
        Staging::map(len, libc::MAP_POPULATE)
    }

    fn map(len: usize, flags: libc::c_int) -> anyhow::Result<Staging> {
        // SAFETY: memfd_create/ftruncate/mmap with checked results; the
        // mapping belongs to the value and is unmapped on drop.
        unsafe {
            let fd = libc::memfd_create(c"flotilla-surface".as_ptr(), libc::MFD_CLOEXEC);
            if fd < 0 {
                bail!("memfd_create: {}", std::io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0 {
                bail!("ftruncate: {}", std::io::Error::last_os_error());
            }
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | flags,
                fd.as_raw_fd(),
                0,
            );
            if map == libc::MAP_FAILED {
                bail!("mmap: {}", std::io::Error::last_os_error());
            }
            Ok(Staging {
                fd,
                map: map.cast(),
                len,
            })
        }
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping covers `len` bytes for the value's life.
        unsafe { std::slice::from_raw_parts_mut(self.map, self.len) }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: our mapping, unmapped once.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}
