//! Python virtualenvs under the target directory, for the tools and clients the tests
//! take from PyPI (schemathesis for the contract, the LLM SDKs): `python3 -m venv`, then
//! pip installs the pinned packages. A marker file in the virtualenv lists what was
//! installed, so a second run with the same pins does nothing and a changed pin installs
//! again.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::project;

/// The file in a virtualenv naming the packages installed into it, one a line.
const MARKER: &str = "flotilla-packages.txt";

/// Why a virtualenv could not be made.
#[derive(Debug)]
pub enum PythonError {
    Spawn { command: String, source: io::Error },
    Failed { command: String },
    Io { path: PathBuf, source: io::Error },
}

impl fmt::Display for PythonError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PythonError::Spawn { command, .. } => write!(formatter, "could not run `{command}`"),
            PythonError::Failed { command } => write!(formatter, "`{command}` failed"),
            PythonError::Io { path, .. } => write!(formatter, "{}", path.display()),
        }
    }
}

impl std::error::Error for PythonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PythonError::Spawn { source, .. } | PythonError::Io { source, .. } => Some(source),
            PythonError::Failed { .. } => None,
        }
    }
}

/// The virtualenv `<target>/<name>` with `packages` (pip requirements such as
/// `openai==3.60.0`) installed, made or brought up to date when its marker differs.
pub fn venv(target: &Path, name: &str, packages: &[&str]) -> Result<PathBuf, PythonError> {
    let venv = target.join(name);
    let marker = venv.join(MARKER);
    let wanted = marker_text(packages);
    let python = venv.join("bin").join("python");
    if python.exists() && std::fs::read_to_string(&marker).is_ok_and(|text| text == wanted) {
        return Ok(venv);
    }
    let mut create = Command::new("python3");
    create.arg("-m").arg("venv").arg(&venv);
    run_checked(create)?;
    let mut install = Command::new(venv.join("bin").join("pip"));
    install
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages);
    run_checked(install)?;
    std::fs::write(&marker, wanted).map_err(|source| PythonError::Io {
        path: marker,
        source,
    })?;
    Ok(venv)
}

fn marker_text(packages: &[&str]) -> String {
    packages
        .iter()
        .map(|package| format!("{package}\n"))
        .collect()
}

fn run_checked(mut command: Command) -> Result<(), PythonError> {
    project::echo(&command);
    let status = command.status().map_err(|source| PythonError::Spawn {
        command: project::display(&command),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(PythonError::Failed {
            command: project::display(&command),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_lists_the_pins_in_order() {
        assert_eq!(
            marker_text(&["openai==1.0.0", "anthropic==2.0.0"]),
            "openai==1.0.0\nanthropic==2.0.0\n"
        );
    }
}
