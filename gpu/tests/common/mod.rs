//! Helpers the gpu tests share.

use std::os::fd::{FromRawFd, OwnedFd};

/// A memfd holding `bytes` (a guest's shared memory).
pub fn memfd(bytes: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create with a constant name; the result is checked and
    // owned; write from a live buffer.
    unsafe {
        let fd = libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(
            libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
            bytes.len() as isize
        );
        OwnedFd::from_raw_fd(fd)
    }
}
