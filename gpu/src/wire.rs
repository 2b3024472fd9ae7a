//! Frames over a Unix stream socket with descriptors: what gpud and its
//! guests both use (see [`crate::protocol`] for the framing).
//!
//! A frame is a little-endian `u32` length and that many bytes; its
//! descriptors travel as `SCM_RIGHTS` with its first byte. The reader
//! collects descriptors from every `recvmsg` of the frame, refuses frames
//! over [`MAX_FRAME_BYTES`] and more than [`MAX_FDS`] descriptors, and
//! takes every descriptor into an `OwnedFd` (closed unless used).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use crate::protocol::{MAX_FRAME_BYTES, MAX_MEM_ENTRIES};

/// Most descriptors one frame may carry.
pub const MAX_FDS: usize = MAX_MEM_ENTRIES as usize;
/// Descriptors one `recvmsg` can take (the kernel's SCM_MAX_FD is 253).
const FDS_PER_MESSAGE: usize = 253;

/// Sends one frame with `fds`.
pub fn send_frame(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    if fds.len() > FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many descriptors for one frame",
        ));
    }
    let mut framed = Vec::with_capacity(4 + bytes.len());
    framed.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    framed.extend_from_slice(bytes);
    let mut sent = 0;
    while sent < framed.len() {
        let rest = &framed[sent..];
        let with_fds = if sent == 0 { fds } else { &[] };
        let n = send_message(stream.as_raw_fd(), rest, with_fds)?;
        sent += n;
    }
    Ok(())
}

/// One `sendmsg` of `bytes` with `fds` as `SCM_RIGHTS`; returns the bytes
/// sent. (Also used over the node agent's `SOCK_SEQPACKET` zygote socket.)
pub fn send_message(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data pointing into live buffers for the call.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        if !fds.is_empty() {
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = space as _;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr().cast::<u8>(),
                libc::CMSG_DATA(header),
                fd_bytes,
            );
        }
        let n = libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// One `recvmsg` into `buffer`, collecting descriptors into `fds` (each
/// owned, close-on-exec); `Ok(0)` at EOF. A message cut short (bytes or
/// descriptors) is an error.
pub fn receive_message(
    socket: RawFd,
    buffer: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((FDS_PER_MESSAGE * std::mem::size_of::<RawFd>()) as u32) }
        as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr points into live buffers; received descriptors are
    // taken into OwnedFds exactly once (CLOEXEC set by the kernel).
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        let n = libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let count = ((*header).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for index in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(index));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
        if message.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a message was cut off",
            ));
        }
        Ok(n as usize)
    }
}

/// Reads exactly `buffer.len()` bytes (descriptors collected); `false` on a
/// clean EOF before the first byte.
fn read_exact(socket: RawFd, buffer: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<bool> {
    let mut read = 0;
    while read < buffer.len() {
        let n = receive_message(socket, &mut buffer[read..], fds)?;
        if n == 0 {
            if read == 0 {
                return Ok(false);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed mid-frame",
            ));
        }
        read += n;
        if fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many descriptors",
            ));
        }
    }
    Ok(true)
}

/// Reads one frame; `Ok(None)` when the peer closed between frames.
pub fn read_frame(stream: &UnixStream) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let socket = stream.as_raw_fd();
    let mut fds = Vec::new();
    let mut length = [0u8; 4];
    if !read_exact(socket, &mut length, &mut fds)? {
        return Ok(None);
    }
    let length = u32::from_le_bytes(length);
    if length > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a {length}-byte frame (at most {MAX_FRAME_BYTES})"),
        ));
    }
    let mut bytes = vec![0u8; length as usize];
    if length > 0 && !read_exact(socket, &mut bytes, &mut fds)? {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the peer closed mid-frame",
        ));
    }
    Ok(Some((bytes, fds)))
}
