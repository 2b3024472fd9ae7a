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

/// Replaces `path` with `bytes` through a temporary file and rename, so a
/// reader never sees half of it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}
