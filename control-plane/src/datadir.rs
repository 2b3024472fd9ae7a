//! A server's data directory: what is in it, and refusing to touch one that
//! is not ours.
//!
//! Layout:
//! - `flotilla-server.json`: format marker, node id, cluster id (written last
//!   at initialisation, so a directory without it holds nothing of ours)
//! - `cluster.secret`: the secret servers authenticate each other with (0600)
//! - `log.redb`, `state.redb`: Raft log; snapshots
//! - `operator.token`, `server-join.token`, `node-join.token` (0600, on the
//!   bootstrapping server only)

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

pub const META_FILE: &str = "flotilla-server.json";
pub const SECRET_FILE: &str = "cluster.secret";
pub const LOG_FILE: &str = "log.redb";
pub const STATE_FILE: &str = "state.redb";
pub const OPERATOR_TOKEN_FILE: &str = "operator.token";
pub const SERVER_JOIN_TOKEN_FILE: &str = "server-join.token";
pub const NODE_JOIN_TOKEN_FILE: &str = "node-join.token";

const FORMAT: &str = "flotilla-server-data";
const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("create data directory {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a flotilla data directory: it has files but no {META_FILE}; refusing to use it (pick an empty or new directory)")]
    Foreign { path: PathBuf },
    #[error("{path} is corrupt: {reason}; refusing to start (restore it from a backup, or remove the server from the cluster and start it with an empty directory)")]
    Corrupt { path: PathBuf, reason: String },
    #[error("data directory {path} belongs to node {found}, not node {requested}; pass --node-id {found} or use another directory")]
    WrongNode {
        path: PathBuf,
        found: NodeId,
        requested: NodeId,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    format: String,
    version: u32,
    node_id: NodeId,
    cluster_id: String,
}

/// An opened data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub path: PathBuf,
    /// Set once the directory belongs to a cluster.
    pub identity: Option<Identity>,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub cluster_secret: String,
}

impl DataDir {
    /// Opens `path` for node `node_id`, creating it if missing. Fails on a
    /// directory that holds someone else's files or another node's data.
    pub fn open(path: &Path, node_id: NodeId) -> Result<DataDir, DataDirError> {
        fs::create_dir_all(path).map_err(|source| DataDirError::Create {
            path: path.to_owned(),
            source,
        })?;
        let meta_path = path.join(META_FILE);
        if !meta_path.exists() {
            let has_files = fs::read_dir(path)
                .map_err(|source| DataDirError::Read {
                    path: path.to_owned(),
                    source,
                })?
                .next()
                .is_some();
            if has_files {
                return Err(DataDirError::Foreign {
                    path: path.to_owned(),
                });
            }
            return Ok(DataDir {
                path: path.to_owned(),
                identity: None,
            });
        }
        let text = fs::read_to_string(&meta_path).map_err(|source| DataDirError::Read {
            path: meta_path.clone(),
            source,
        })?;
        let meta: Meta = serde_json::from_str(&text).map_err(|error| DataDirError::Corrupt {
            path: meta_path.clone(),
            reason: error.to_string(),
        })?;
        if meta.format != FORMAT {
            return Err(DataDirError::Corrupt {
                path: meta_path,
                reason: format!("format is {:?}, expected {FORMAT:?}", meta.format),
            });
        }
        if meta.version > FORMAT_VERSION {
            return Err(DataDirError::Corrupt {
                path: meta_path,
                reason: format!(
                    "written by a newer server (layout {}, this server knows {FORMAT_VERSION})",
                    meta.version
                ),
            });
        }
        if meta.node_id != node_id {
            return Err(DataDirError::WrongNode {
                path: path.to_owned(),
                found: meta.node_id,
                requested: node_id,
            });
        }
        let secret_path = path.join(SECRET_FILE);
        let cluster_secret = fs::read_to_string(&secret_path)
            .map_err(|source| DataDirError::Read {
                path: secret_path.clone(),
                source,
            })?
            .trim()
            .to_owned();
        if cluster_secret.is_empty() {
            return Err(DataDirError::Corrupt {
                path: secret_path,
                reason: "the cluster secret is empty".to_owned(),
            });
        }
        Ok(DataDir {
            path: path.to_owned(),
            identity: Some(Identity {
                node_id,
                cluster_id: meta.cluster_id,
                cluster_secret,
            }),
        })
    }

    /// Makes this directory a member of a cluster. The marker file is
    /// written last, so a crash part-way leaves a directory that is retried.
    pub fn initialize(&mut self, identity: Identity) -> Result<(), DataDirError> {
        write_secret_file(&self.path.join(SECRET_FILE), &identity.cluster_secret)?;
        let meta = Meta {
            format: FORMAT.to_owned(),
            version: FORMAT_VERSION,
            node_id: identity.node_id,
            cluster_id: identity.cluster_id.clone(),
        };
        let text = serde_json::to_string_pretty(&meta).expect("meta serializes");
        write_atomically(&self.path.join(META_FILE), text.as_bytes())?;
        self.identity = Some(identity);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

/// Writes `contents` to `path` with mode 0600, replacing it atomically.
pub fn write_secret_file(path: &Path, contents: &str) -> Result<(), DataDirError> {
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
        file.write_all(contents.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(|source| DataDirError::Write {
        path: path.to_owned(),
        source,
    })
}

fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), DataDirError> {
    let temporary = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temporary, path)?;
        if let Some(parent) = path.parent() {
            fs::File::open(parent)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|source| DataDirError::Write {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_directory_is_refused_and_left_alone() {
        let directory = tempfile::tempdir().expect("tempdir");
        fs::write(directory.path().join("precious.txt"), "keep me").expect("write");
        let error = DataDir::open(directory.path(), 1).expect_err("must refuse");
        assert!(matches!(error, DataDirError::Foreign { .. }), "{error}");
        assert_eq!(
            fs::read_to_string(directory.path().join("precious.txt")).expect("read"),
            "keep me"
        );
    }

    #[test]
    fn identity_round_trips_and_node_id_is_checked() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut data_dir = DataDir::open(directory.path(), 3).expect("open empty");
        assert!(data_dir.identity.is_none());
        data_dir
            .initialize(Identity {
                node_id: 3,
                cluster_id: "c".into(),
                cluster_secret: "s3cret".into(),
            })
            .expect("initialize");
        let reopened = DataDir::open(directory.path(), 3).expect("reopen");
        assert_eq!(
            reopened.identity.expect("identity").cluster_secret,
            "s3cret"
        );
        let mode = fs::metadata(directory.path().join(SECRET_FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let error = DataDir::open(directory.path(), 4).expect_err("wrong node");
        assert!(matches!(error, DataDirError::WrongNode { found: 3, .. }));
    }

    #[test]
    fn garbled_marker_is_corrupt() {
        let directory = tempfile::tempdir().expect("tempdir");
        fs::write(directory.path().join(META_FILE), "{not json").expect("write");
        let error = DataDir::open(directory.path(), 1).expect_err("corrupt");
        assert!(matches!(error, DataDirError::Corrupt { .. }), "{error}");
    }
}
