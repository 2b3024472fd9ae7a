//! `cargo xtask dev`: the packages, a release build of `flotilla`, then `flotilla dev` in
//! place of this process (exec, not a child), so Ctrl-C and SIGTERM reach flotilla itself
//! and its exit status is the command's.

use std::fmt;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};

use crate::packages::{self, Need, PackageError};
use crate::project;

/// Why `flotilla dev` could not be started.
#[derive(Debug)]
pub enum DevError {
    Packages(PackageError),
    Build {
        status: Result<ExitStatus, io::Error>,
    },
    Exec {
        path: PathBuf,
        source: io::Error,
    },
}

impl fmt::Display for DevError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevError::Packages(packages_error) => write!(formatter, "{packages_error}"),
            DevError::Build { status: Ok(status) } => write!(
                formatter,
                "building flotilla failed ({status}); see cargo's output above"
            ),
            DevError::Build { status: Err(_) } => write!(formatter, "could not run cargo build"),
            DevError::Exec { path, .. } => write!(formatter, "could not start {}", path.display()),
        }
    }
}

impl std::error::Error for DevError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DevError::Packages(packages_error) => packages_error.source(),
            DevError::Build {
                status: Err(source),
            }
            | DevError::Exec { source, .. } => Some(source),
            DevError::Build { status: Ok(_) } => None,
        }
    }
}

/// Builds flotilla and becomes `flotilla dev <flotilla_args>`; returns only on failure.
pub fn run(flotilla_args: &[String]) -> DevError {
    if let Err(packages_error) = packages::ensure(&[Need::Build, Need::Desktops]) {
        return DevError::Packages(packages_error);
    }
    let workspace_root = project::workspace_root();
    let mut build = project::cargo(
        &workspace_root,
        &["build", "--release", "--bin", "flotilla"],
    );
    project::echo(&build);
    match build.status() {
        Ok(status) if status.success() => {}
        status => return DevError::Build { status },
    }
    let flotilla = project::target_dir(&workspace_root).join("release/flotilla");
    let mut flotilla_dev = Command::new(&flotilla);
    flotilla_dev.arg("dev").args(flotilla_args);
    project::echo(&flotilla_dev);
    // exec only returns when it failed.
    let source = flotilla_dev.exec();
    DevError::Exec {
        path: flotilla,
        source,
    }
}
