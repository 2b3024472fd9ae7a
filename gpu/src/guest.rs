//! The guest side: what a desktop's compositor (and the tests) use to
//! speak to gpud — one command out, one answer back, descriptors attached.

use std::io;
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use crate::protocol::resp;
use crate::wire::{read_frame, send_frame};

pub struct Guest {
    stream: UnixStream,
}

/// An answer's response type.
pub fn answer_type(answer: &[u8]) -> u32 {
    answer.get(0..4).map_or(resp::ERR_UNSPEC, |b| {
        u32::from_le_bytes(b.try_into().unwrap())
    })
}

impl Guest {
    pub fn connect(path: &Path) -> io::Result<Guest> {
        Ok(Guest {
            stream: UnixStream::connect(path)?,
        })
    }

    /// Sends one command with `fds` and waits for its answer.
    pub fn call(&mut self, command: &[u8], fds: &[RawFd]) -> io::Result<Vec<u8>> {
        send_frame(&self.stream, command, fds)?;
        match read_frame(&self.stream)? {
            Some((answer, _)) => Ok(answer),
            None => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gpud closed the connection",
            )),
        }
    }

    /// The raw stream (tests send malformed frames with it).
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}
