//! A guest's memory: the descriptor ranges RESOURCE_ATTACH_BACKING
//! names, mapped read-only after checking each is a memfd sealed against
//! shrinking (`F_SEAL_SHRINK`) that holds its range, and
//! TRANSFER_TO_HOST_2D's copy of exactly the transferred rectangle out of
//! them. The seal is what makes the mapping safe: a guest that could
//! shrink its file under gpud would turn gpud's next read into a SIGBUS
//! that takes the node agent (and every desktop on the node) down.

use std::os::fd::{AsRawFd, OwnedFd};

use super::Resource;
use crate::protocol::{resp, Format, MemEntry, Rect};

/// Why a memory entry was not mapped.
#[derive(Debug, thiserror::Error)]
pub enum BackingError {
    #[error("fstat: {0}")]
    Stat(#[source] std::io::Error),
    #[error("a backing must be a memfd or shared-memory file")]
    NotAFile,
    #[error("a backing must be a memfd sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    #[error("{length} bytes at offset {offset} lie outside a {size}-byte file")]
    OutsideFile { length: u32, offset: u64, size: u64 },
    #[error("an empty memory entry")]
    Empty,
    #[error("mmap: {0}")]
    Map(#[source] std::io::Error),
}

/// A guest's memory for a resource: a mapped descriptor range (memmap2
/// maps from the page the range starts in and unmaps on drop).
pub(super) struct Backing {
    map: memmap2::Mmap,
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Maps `length` bytes at `offset` of `fd`, read-only, after checking the
/// descriptor is a memfd sealed against shrinking that holds them.
pub(super) fn map_entry(fd: &OwnedFd, entry: &MemEntry) -> Result<Backing, BackingError> {
    // SAFETY: fstat into a zeroed struct on a descriptor we hold.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(BackingError::Stat(std::io::Error::last_os_error()));
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(BackingError::NotAFile);
    }
    // Sealed now means sealed for good: a seal cannot be removed.
    // SAFETY: fcntl(F_GET_SEALS) on a descriptor we hold.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 || seals & libc::F_SEAL_SHRINK == 0 {
        return Err(BackingError::NotSealed);
    }
    let size = stat.st_size as u64;
    entry
        .offset
        .checked_add(u64::from(entry.length))
        .filter(|end| *end <= size)
        .ok_or(BackingError::OutsideFile {
            length: entry.length,
            offset: entry.offset,
            size,
        })?;
    if entry.length == 0 {
        return Err(BackingError::Empty);
    }
    // SAFETY: a read-only shared mapping of a range checked above to lie
    // within a file sealed against shrinking, so it stays within it. The
    // guest may write the file meanwhile, which changes only the pixel
    // values gpud copies, never a bound.
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(entry.offset)
            .len(entry.length as usize)
            .map(fd)
    }
    .map_err(BackingError::Map)?;
    Ok(Backing { map })
}

/// Copies `rect` of the guest's backing (rows of the resource's stride,
/// starting `offset` bytes in) into the resource's host pixels.
pub(super) fn transfer(resource: &mut Resource, rect: Rect, offset: u64) -> Result<(), u32> {
    let stride = resource.stride();
    let bpp = Format::BYTES_PER_PIXEL as usize;
    let row_bytes = rect.width as usize * bpp;
    // The backing as one logical byte range: entries in order.
    let total: usize = resource.backing.iter().map(Backing::len).sum();
    for row in 0..rect.height as usize {
        let source = (offset as usize)
            .checked_add(row * stride)
            .ok_or(resp::ERR_INVALID_PARAMETER)?;
        let end = source
            .checked_add(row_bytes)
            .filter(|end| *end <= total)
            .ok_or(resp::ERR_INVALID_PARAMETER)?;
        let target = (rect.y as usize + row) * stride + rect.x as usize * bpp;
        copy_from_backing(
            &resource.backing,
            source,
            &mut resource.storage.bytes_mut()[target..target + (end - source)],
        );
    }
    Ok(())
}

/// Copies `out.len()` bytes starting `start` bytes into the concatenated
/// backing entries (the caller checked the range).
fn copy_from_backing(backing: &[Backing], mut start: usize, out: &mut [u8]) {
    let mut written = 0;
    for entry in backing {
        let bytes = entry.bytes();
        if start >= bytes.len() {
            start -= bytes.len();
            continue;
        }
        let take = (bytes.len() - start).min(out.len() - written);
        out[written..written + take].copy_from_slice(&bytes[start..start + take]);
        written += take;
        start = 0;
        if written == out.len() {
            return;
        }
    }
}
