//! Helpers the gpu tests share.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A memfd holding `bytes` (a guest's shared memory), sealed against
/// shrinking as gpud requires.
pub fn memfd(bytes: &[u8]) -> OwnedFd {
    let fd = unsealed_memfd(bytes);
    // SAFETY: fcntl on a descriptor we own.
    let sealed = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    assert_eq!(sealed, 0);
    fd
}

/// A memfd holding `bytes` that its holder may still shrink.
pub fn unsealed_memfd(bytes: &[u8]) -> OwnedFd {
    // SAFETY: memfd_create with a constant name; the result is checked and
    // owned; write from a live buffer.
    unsafe {
        let fd = libc::memfd_create(
            c"guest".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        );
        assert!(fd >= 0);
        assert_eq!(
            libc::write(fd, bytes.as_ptr().cast(), bytes.len()),
            bytes.len() as isize
        );
        OwnedFd::from_raw_fd(fd)
    }
}

/// A renderer on Vulkan device 0 (lavapipe here); None, with a note, on a
/// machine without Vulkan unless FLOTILLA_REQUIRE_VULKAN is set (CI sets
/// it, so nothing skips there).
#[allow(dead_code)]
pub fn renderer() -> Option<std::sync::Arc<flotilla_gpu::render::Renderer>> {
    use flotilla_gpu::device::{Device, Selector};
    use flotilla_gpu::render::Renderer;
    use std::sync::Arc;
    match Device::open(&Selector::Index(0)) {
        Ok(device) => Some(Arc::new(
            Renderer::new(Arc::new(device)).expect("build the renderer"),
        )),
        Err(error) if std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none() => {
            eprintln!("skipping the GPU half: {error}");
            None
        }
        Err(error) => panic!("{error}"),
    }
}
