//! What the host offers and who this node is: capacity probes and the
//! node's stable identity in its data directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

const IDENTITY_FILE: &str = "node.json";
const LOCK_FILE: &str = "agent.lock";

/// Kept in `node.json`: the id survives restarts and renames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: String,
    pub name: String,
}

/// The agent's data directory, locked for the life of the process so two
/// agents never share one.
pub struct DataDir {
    pub path: PathBuf,
    _lock: File,
}

impl DataDir {
    pub fn open(path: &Path) -> anyhow::Result<DataDir> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .with_context(|| format!("create data directory {}", path.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.join(LOCK_FILE))
            .with_context(|| format!("open {}", path.join(LOCK_FILE).display()))?;
        let locked = rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive);
        if locked.is_err() {
            bail!(
                "{} is in use by another node agent (it holds {LOCK_FILE})",
                path.display()
            );
        }
        Ok(DataDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// This node's identity: read back, or created on first start. A name
    /// change keeps the id (the control plane renames the node).
    pub fn identity(&self, name: &str) -> anyhow::Result<Identity> {
        let file = self.path.join(IDENTITY_FILE);
        let identity = match fs::read(&file) {
            Ok(bytes) => {
                let identity: Identity = serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is corrupt; it holds this node's identity, so it is not replaced: fix or remove it",
                        file.display()
                    )
                })?;
                if identity.name == name {
                    return Ok(identity);
                }
                Identity {
                    node_id: identity.node_id,
                    name: name.to_owned(),
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Identity {
                node_id: uuid::Uuid::new_v4().to_string(),
                name: name.to_owned(),
            },
            Err(error) => return Err(error).with_context(|| format!("read {}", file.display())),
        };
        crate::fsutil::write_atomically(&file, &serde_json::to_vec_pretty(&identity)?)
            .with_context(|| format!("write {}", file.display()))?;
        Ok(identity)
    }
}

/// Online CPUs this process may use.
pub fn cpu_count() -> u64 {
    std::thread::available_parallelism().map_or(1, |count| count.get() as u64)
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn memory_bytes() -> anyhow::Result<u64> {
    let text = fs::read_to_string("/proc/meminfo").context("read /proc/meminfo")?;
    parse_meminfo_total(&text).context("/proc/meminfo has no readable MemTotal line")
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    match fields.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// Space available to unprivileged users under `path`.
pub fn disk_bytes(path: &Path) -> anyhow::Result<u64> {
    let stats = rustix::fs::statvfs(path)
        .map_err(std::io::Error::from)
        .with_context(|| format!("statvfs {}", path.display()))?;
    Ok(stats.f_bavail * stats.f_frsize)
}

/// A size or duration on the command line that does not parse; each
/// message says what would.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("{0:?} is not a size; use e.g. 2GiB, 512MiB or a byte count")]
    NotASize(String),
    #[error("unknown size unit {unit:?} in {text:?}; use KiB, MiB, GiB or TiB")]
    SizeUnit { unit: String, text: String },
    #[error("{0:?} is out of range")]
    SizeOutOfRange(String),
    #[error("{0:?} is not a duration; use e.g. 30s, 5m, 1h30m or 250ms")]
    NotADuration(String),
}

/// Parses a byte size: `2147483648`, `512MiB`, `2GiB`, `1TiB` (also `G`,
/// `GB` as binary units, as operators mean them).
pub fn parse_bytes(text: &str) -> Result<u64, ParseError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| ParseError::NotASize(text.to_owned()))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(ParseError::SizeUnit {
                unit: other.to_owned(),
                text: text.to_owned(),
            })
        }
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 / 2.0 {
        return Err(ParseError::SizeOutOfRange(text.to_owned()));
    }
    Ok(bytes as u64)
}

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`, `1h30m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, ParseError> {
    let bad = || ParseError::NotADuration(text.to_owned());
    let mut total_ms: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total_ms = value
            .checked_mul(factor)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(std::time::Duration::from_millis(total_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_parse_or_say_why_not() {
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("-1GiB").is_err());
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("2 furlongs").is_err());
        assert_eq!(parse_duration("1h30m").unwrap().as_secs(), 5400);
        assert_eq!(parse_duration("250ms").unwrap().as_millis(), 250);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24587712 kB\nMemFree:        1 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(24587712 * 1024));
        assert_eq!(parse_meminfo_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo_total("MemTotal: lots kB\n"), None);
        assert!(memory_bytes().unwrap() > 0);
    }

    #[test]
    fn identity_is_stable_and_the_directory_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDir::open(dir.path()).unwrap();
        let identity = first.identity("gpu-1").unwrap();
        assert!(
            DataDir::open(dir.path()).is_err(),
            "a second agent is refused"
        );
        drop(first);
        // Other tests fork children; one may briefly hold a copy of the
        // lock's descriptor between fork and exec.
        let again = (0..100)
            .find_map(|_| {
                DataDir::open(dir.path()).ok().or_else(|| {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    None
                })
            })
            .expect("the directory is free again once the first agent is gone");
        assert_eq!(again.identity("gpu-1").unwrap(), identity);
        let renamed = again.identity("gpu-one").unwrap();
        assert_eq!(renamed.node_id, identity.node_id);
        fs::write(dir.path().join(IDENTITY_FILE), b"{not json").unwrap();
        let error = again.identity("gpu-1").unwrap_err().to_string();
        assert!(error.contains("corrupt"), "{error}");
        assert!(disk_bytes(dir.path()).unwrap() > 0);
    }
}
