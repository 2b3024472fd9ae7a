//! The memory the compositor shares with gpud: a memfd it creates and
//! maps writable (never a client's pool), into which a surface's damaged
//! rows are copied and which gpud maps as the resource's backing.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::bail;
use memmap2::{MmapMut, MmapOptions};

/// A writable shared mapping of a memfd (a resource's backing).
pub(super) struct Staging {
    pub(super) fd: File,
    map: MmapMut,
    pub(super) len: usize,
}

impl Staging {
    pub(super) fn new(len: usize) -> anyhow::Result<Staging> {
        Staging::map(len, false)
    }

    /// One whose pages are already there (MAP_POPULATE): the first copy
    /// into it does not fault page by page (≈ 1,000 faults for a 4 MB
    /// window, milliseconds on a first frame).
    pub(super) fn populated(len: usize) -> anyhow::Result<Staging> {
        Staging::map(len, true)
    }

    fn map(len: usize, populate: bool) -> anyhow::Result<Staging> {
        // SAFETY: memfd_create with a constant name; the result is checked.
        let fd = unsafe {
            libc::memfd_create(
                c"flotilla-surface".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            bail!("memfd_create: {}", std::io::Error::last_os_error());
        }
        // SAFETY: a descriptor just made, owned by nothing else.
        let fd = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Err(error) = fd.set_len(len as u64) {
            bail!("ftruncate: {error}");
        }
        // gpud maps only memfds that cannot shrink under it.
        // SAFETY: fcntl(F_ADD_SEALS) on our own descriptor.
        if unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::F_ADD_SEALS,
                libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
            )
        } != 0
        {
            bail!("seal the memfd: {}", std::io::Error::last_os_error());
        }
        let mut options = MmapOptions::new();
        options.len(len);
        if populate {
            options.populate();
        }
        // SAFETY: a shared mapping of our own memfd, `len` bytes long (set
        // above); gpud maps it read-only, nothing else writes it.
        let map = match unsafe { options.map_mut(&fd) } {
            Ok(map) => map,
            Err(error) => bail!("mmap: {error}"),
        };
        Ok(Staging { fd, map, len })
    }

    pub(super) fn bytes(&mut self) -> &mut [u8] {
        &mut self.map
    }
}
