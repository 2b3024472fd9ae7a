//! Which git this server runs. The crate relies on `git merge-tree --write-tree`
//! (2.38) and the `proc-receive` hook (2.29), so a server refuses to start with an
//! older git rather than failing on the first merge.

use std::fmt;

use thiserror::Error;

use crate::command::{Git, GitCommandError};

/// The oldest git this crate works with: `merge-tree --write-tree` arrived in 2.38.
pub const MINIMUM_GIT_VERSION: GitVersion = GitVersion {
    major: 2,
    minor: 38,
    patch: 0,
};

/// A git release, as `git --version` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GitVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl fmt::Display for GitVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[derive(Debug, Error)]
pub enum VersionError {
    #[error("run `git --version`")]
    Run(#[source] GitCommandError),
    #[error("cannot read a git version from `{output}`")]
    Unparseable { output: String },
    #[error(
        "git {found} is too old: flotilla needs git >= {required} (for `git merge-tree --write-tree`); \
         install a newer git, e.g. `apt-get install -t bookworm-backports git` on Debian bookworm \
         or your distribution's git >= {required}"
    )]
    TooOld {
        found: GitVersion,
        required: GitVersion,
    },
}

/// Parses `git version 2.47.3`, `git version 2.39.2 (Apple Git-143)` or
/// `git version 2.45.1.windows.1`.
pub fn parse_git_version(output: &str) -> Result<GitVersion, VersionError> {
    let unparseable = || VersionError::Unparseable {
        output: output.trim().to_owned(),
    };
    let number = output
        .trim()
        .strip_prefix("git version ")
        .and_then(|rest| rest.split_whitespace().next())
        .ok_or_else(unparseable)?;
    let mut parts = number.split('.');
    let mut next = |required: bool| -> Result<u32, VersionError> {
        match parts.next() {
            Some(part) => {
                let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().map_err(|_| unparseable())
            }
            None if required => Err(unparseable()),
            None => Ok(0),
        }
    };
    Ok(GitVersion {
        major: next(true)?,
        minor: next(true)?,
        patch: next(false)?,
    })
}

/// Runs `git --version` and refuses a git older than [`MINIMUM_GIT_VERSION`].
pub async fn check_git_version(git: &Git) -> Result<GitVersion, VersionError> {
    let stdout = git
        .run(None, &["--version"], None)
        .await
        .map_err(VersionError::Run)?;
    let found = parse_git_version(&String::from_utf8_lossy(&stdout))?;
    require_version(found)
}

/// The pure half of [`check_git_version`].
pub fn require_version(found: GitVersion) -> Result<GitVersion, VersionError> {
    if found < MINIMUM_GIT_VERSION {
        return Err(VersionError::TooOld {
            found,
            required: MINIMUM_GIT_VERSION,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_git_prints() {
        let expect = |major, minor, patch| GitVersion {
            major,
            minor,
            patch,
        };
        assert_eq!(
            parse_git_version("git version 2.47.3\n").expect("plain"),
            expect(2, 47, 3)
        );
        assert_eq!(
            parse_git_version("git version 2.39.2 (Apple Git-143)").expect("apple"),
            expect(2, 39, 2)
        );
        assert_eq!(
            parse_git_version("git version 2.45.1.windows.1").expect("windows"),
            expect(2, 45, 1)
        );
        assert_eq!(
            parse_git_version("git version 2.50.0-rc1").expect("rc"),
            expect(2, 50, 0)
        );
        assert!(parse_git_version("hg version 6").is_err());
        assert!(parse_git_version("git version x.y").is_err());
    }

    #[test]
    fn refuses_git_older_than_2_38_and_says_what_to_install() {
        let old = parse_git_version("git version 2.30.2").expect("parse");
        let message = require_version(old).expect_err("too old").to_string();
        assert!(message.contains("2.30.2"), "{message}");
        assert!(message.contains("bookworm-backports"), "{message}");
        let minimum = parse_git_version("git version 2.38.0").expect("parse");
        assert_eq!(require_version(minimum).expect("new enough"), minimum);
    }

    #[tokio::test]
    async fn the_installed_git_is_new_enough() {
        let version = check_git_version(&Git::default())
            .await
            .expect("this crate's tests need git >= 2.38 on PATH (apt-get install git)");
        assert!(version >= MINIMUM_GIT_VERSION);
    }
}
