//! Checks the node agent makes before it touches the host, refusing with
//! one clear sentence (what, where, the fix) and creating nothing.
//!
//! Today: the data directory. A root sandbox runs as host uids of its own
//! range ("others" to every directory on the host), and the kernel walks
//! the desktop's root path with those ids when it mounts it, so every
//! directory above `<data>/desktops` must grant search (`o+x`). Debian's
//! homes are 0700 (`/root` too) and so is every `mktemp -d`: a data
//! directory under one would fail every desktop with `EACCES` at mount.
//!
//! A leaf: it uses nothing else of the crate.

use std::fs::{self, DirBuilder, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a data directory cannot serve sandboxes.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "the data directory {data_dir} is inside {blocking} (mode {mode:04o}), which desktops' \
         sandbox users cannot enter (every directory above a desktop must allow search by \
         others): choose a --data-dir outside it, such as /var/lib/flotilla/node-agent, or \
         allow it with `chmod o+x {blocking}`"
    )]
    NotTraversable {
        data_dir: PathBuf,
        blocking: PathBuf,
        mode: u32,
    },
    #[error("the data directory {data_dir} is inside {path}, which is not a directory")]
    NotADirectory { data_dir: PathBuf, path: PathBuf },
    #[error("cannot prepare the data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `data_dir` and its missing parents. With `for_sandboxes` (root
/// sandboxes will live under it) every existing directory above it must
/// allow search by others, checked before anything is created, and the
/// directories made here are `0711` (enter, not list); otherwise `0700`.
pub fn prepare_data_dir(data_dir: &Path, for_sandboxes: bool) -> Result<(), DataDirError> {
    let data_dir = std::path::absolute(data_dir).map_err(io_error(data_dir))?;
    // The part that exists, and what is missing below it (top down).
    let mut missing = Vec::new();
    let mut existing = data_dir.as_path();
    loop {
        match fs::metadata(existing) {
            Ok(_) => break,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                missing.push(existing.to_owned());
                existing = match existing.parent() {
                    Some(parent) => parent,
                    None => return Err(io_error(existing)(error)),
                };
            }
            Err(error) => return Err(io_error(existing)(error)),
        }
    }
    missing.reverse();
    if for_sandboxes {
        // Through symlinks: the kernel walks the real path.
        // The data directory itself is the agent's: opened below.
        let real = fs::canonicalize(existing).map_err(io_error(existing))?;
        let skip = usize::from(missing.is_empty() && real.is_dir());
        for path in real.ancestors().skip(skip) {
            check_searchable(&data_dir, path)?;
        }
    }
    let mode = if for_sandboxes { 0o711 } else { 0o700 };
    for dir in &missing {
        match DirBuilder::new().mode(mode).create(dir) {
            Ok(()) => {}
            // Another process made it meanwhile: it is checked below.
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(io_error(dir)(error)),
        }
        // The umask may have taken bits mkdir was given.
        fs::set_permissions(dir, Permissions::from_mode(mode)).map_err(io_error(dir))?;
    }
    if for_sandboxes {
        // The agent's own directory: it opens it (search only) for its
        // sandboxes, as it does `desktops/` below it.
        let metadata = fs::metadata(&data_dir).map_err(io_error(&data_dir))?;
        if !metadata.is_dir() {
            return Err(DataDirError::NotADirectory {
                path: data_dir.clone(),
                data_dir,
            });
        }
        let mode = metadata.permissions().mode();
        if mode & 0o011 != 0o011 {
            fs::set_permissions(&data_dir, Permissions::from_mode(mode | 0o011))
                .map_err(io_error(&data_dir))?;
        }
    }
    Ok(())
}

fn check_searchable(data_dir: &Path, path: &Path) -> Result<(), DataDirError> {
    let metadata = fs::metadata(path).map_err(io_error(path))?;
    if !metadata.is_dir() {
        return Err(DataDirError::NotADirectory {
            data_dir: data_dir.to_owned(),
            path: path.to_owned(),
        });
    }
    let mode = metadata.permissions().mode() & 0o7777;
    if mode & 0o001 == 0 {
        return Err(DataDirError::NotTraversable {
            data_dir: data_dir.to_owned(),
            blocking: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn dir_with_mode(parent: &Path, name: &str, mode: u32) -> PathBuf {
        let dir = parent.join(name);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, Permissions::from_mode(mode)).unwrap();
        dir
    }

    #[test]
    fn a_private_ancestor_is_refused_and_nothing_is_created() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), Permissions::from_mode(0o755)).unwrap();
        let home = dir_with_mode(root.path(), "home", 0o700);
        let data_dir = home.join(".local/share/flotilla/node-agent");
        let error = prepare_data_dir(&data_dir, true).unwrap_err();
        match &error {
            DataDirError::NotTraversable { blocking, mode, .. } => {
                assert_eq!(blocking, &fs::canonicalize(&home).unwrap());
                assert_eq!(*mode, 0o700);
            }
            other => panic!("wrong error: {other}"),
        }
        let text = error.to_string();
        assert!(
            text.contains("chmod o+x") && text.contains("--data-dir"),
            "{text}"
        );
        assert!(!home.join(".local").exists(), "nothing may be created");
    }

    #[test]
    fn a_symlink_is_judged_by_where_it_leads() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), Permissions::from_mode(0o755)).unwrap();
        let private = dir_with_mode(root.path(), "private", 0o700);
        let open = dir_with_mode(&private, "open", 0o755);
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(matches!(
            prepare_data_dir(&link.join("agent"), true),
            Err(DataDirError::NotTraversable { .. })
        ));
    }

    #[test]
    fn what_is_created_for_sandboxes_can_be_entered_not_listed() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), Permissions::from_mode(0o755)).unwrap();
        let data_dir = root.path().join("var/lib/flotilla/node-agent");
        prepare_data_dir(&data_dir, true).unwrap();
        for dir in data_dir.ancestors().take(4) {
            assert_eq!(mode(dir), 0o711, "{}", dir.display());
        }
        // An existing private data directory of its own is opened up.
        let own = dir_with_mode(root.path(), "own", 0o700);
        prepare_data_dir(&own, true).unwrap();
        assert_eq!(mode(&own), 0o711);
    }

    #[test]
    fn without_sandboxes_everything_is_private_and_nothing_is_checked() {
        let root = tempfile::tempdir().unwrap();
        let home = dir_with_mode(root.path(), "home", 0o700);
        let data_dir = home.join("a/b");
        prepare_data_dir(&data_dir, false).unwrap();
        assert_eq!(mode(&data_dir), 0o700);
        assert_eq!(mode(&home.join("a")), 0o700);
    }

    #[test]
    fn a_file_on_the_path_is_named() {
        let root = tempfile::tempdir().unwrap();
        fs::set_permissions(root.path(), Permissions::from_mode(0o755)).unwrap();
        let file = root.path().join("file");
        fs::write(&file, b"").unwrap();
        let error = prepare_data_dir(&file.join("agent"), true).unwrap_err();
        assert!(
            matches!(&error, DataDirError::NotADirectory { path, .. } if path.ends_with("file")),
            "{error}"
        );
    }
}
