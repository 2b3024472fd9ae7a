//! Small file helpers the agent, the runtime, the operator tunnel and the
//! sandbox share: files other processes read while they change (the lease,
//! a sandbox's state) are replaced whole, logs are read from their end, and
//! a socket in a directory a desktop can write is reached without following
//! what the desktop may have put there ([`connect_in`]).
//!
//! A leaf: it uses nothing else of the crate.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The last `bytes` bytes of the file at `path`.
pub fn read_tail(path: &Path, bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(bytes)))?;
    let mut tail = Vec::with_capacity(bytes.min(length) as usize);
    file.take(bytes).read_to_end(&mut tail)?;
    Ok(tail)
}

/// Replaces `path` with `bytes` through a temporary file (mode 0600) and a
/// rename, so a reader never sees half of it; the file and its directory
/// are synced, so after a crash `path` is the old bytes or the new ones.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, true)
}

/// As [`write_atomically`] without syncing: for a file that means nothing
/// after the host restarts (the lease: a CLOCK_MONOTONIC deadline), written
/// on every heartbeat.
pub fn write_volatile(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    replace(path, bytes, false)
}

fn replace(path: &Path, bytes: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temporary)?;
    file.write_all(bytes)?;
    if sync {
        file.sync_all()?;
    }
    std::fs::rename(&temporary, path)?;
    if sync {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            File::open(parent)?.sync_all()?;
        }
    }
    Ok(())
}

/// Connects to the Unix socket `name` in `dir`, a directory a desktop can
/// write (its compositor's `control.sock`): the name is opened without
/// following a symlink (`O_PATH | O_NOFOLLOW`), must be a socket, and is
/// connected through that descriptor, so root never reaches a host socket
/// or file the desktop pointed it at. Non-blocking: a full backlog is an
/// error (`WouldBlock`), not a wait.
pub fn connect_in(dir: &Path, name: &str) -> std::io::Result<std::os::unix::net::UnixStream> {
    use rustix::fs::{fstat, open, openat, FileType, Mode, OFlags};
    use rustix::net::{
        connect, socket_with, AddressFamily, SocketAddrUnix, SocketFlags, SocketType,
    };
    use std::os::fd::AsRawFd;
    if name.contains('/') {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let directory = open(dir, flags | OFlags::DIRECTORY, Mode::empty())?;
    let node = openat(&directory, name, flags, Mode::empty())?;
    let kind = FileType::from_raw_mode(fstat(&node)?.st_mode);
    if kind != FileType::Socket {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "{} is a {kind:?}, not a socket: refused (a desktop may have replaced it)",
                dir.join(name).display()
            ),
        ));
    }
    let socket = socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let through = SocketAddrUnix::new(format!("/proc/self/fd/{}", node.as_raw_fd()))?;
    connect(&socket, &through)?;
    Ok(std::os::unix::net::UnixStream::from(socket))
}

/// Opens (creating or emptying) a desktop's log for appending.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.set_len(0)?;
    Ok(file)
}

/// Keeps a log that a desktop appends to under `max` bytes: past it, its
/// last quarter becomes `<path>.1` and the log is emptied in place (the
/// desktop's descriptor appends at the new end: no hole). Failures are
/// logged; the desktop goes on.
pub fn cap_log(path: &Path, max: u64) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_file() || meta.len() <= max {
        return;
    }
    let rotated = path.with_extension("1");
    let result = read_tail(path, max / 4)
        .and_then(|tail| write_volatile(&rotated, &tail))
        .and_then(|()| {
            std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?
                .set_len(0)
        });
    if let Err(error) = result {
        tracing::warn!(path = %path.display(), %error, "cannot cap the desktop's log");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_is_reached_and_a_planted_symlink_or_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let host_socket = host.path().join("host.sock");
        let _host_listener = std::os::unix::net::UnixListener::bind(&host_socket).unwrap();
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("control.sock")).unwrap();
        assert!(connect_in(dir.path(), "control.sock").is_ok());
        // The desktop points the name at a host socket, or puts a file there.
        std::fs::remove_file(dir.path().join("control.sock")).unwrap();
        std::os::unix::fs::symlink(&host_socket, dir.path().join("control.sock")).unwrap();
        let refused = connect_in(dir.path(), "control.sock").unwrap_err();
        assert!(refused.to_string().contains("not a socket"), "{refused}");
        std::fs::write(dir.path().join("file.sock"), "x").unwrap();
        assert!(connect_in(dir.path(), "file.sock").is_err());
        assert!(connect_in(dir.path(), "../host/host.sock").is_err());
        assert!(connect_in(dir.path(), "missing.sock").is_err());
    }

    #[test]
    fn a_log_past_its_cap_keeps_its_last_quarter_and_starts_again() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut writer = open_log(&path).unwrap();
        writer.write_all(&[b'a'; 900]).unwrap();
        writer.write_all(&[b'z'; 300]).unwrap();
        cap_log(&path, 1000);
        assert_eq!(
            std::fs::read(path.with_extension("1")).unwrap(),
            vec![b'z'; 250]
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // The writer appends at the new end: no hole before its bytes.
        writer.write_all(b"next").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"next");
        cap_log(&path, 1000);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"next",
            "under the cap: untouched"
        );
    }
}
