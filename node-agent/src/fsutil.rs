//! Small file helpers the agent, the runtime, the operator tunnel and the
//! sandbox share: files other processes read while they change (the lease,
//! a sandbox's state) are replaced whole, and logs are read from their end.
//!
//! A leaf: it uses nothing else of the crate.

use std::fs::File;
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
