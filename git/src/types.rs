//! The names this crate passes between its modules: repository ids, ref names,
//! object ids and ref updates. Each is validated once, where it is built, so the
//! store, the policy and the hook never see a name that could escape a directory or
//! smuggle an option into a git command line.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("{kind} {name:?} is not valid: use 1 to 64 of A-Z a-z 0-9 _ -")]
    Id { kind: &'static str, name: String },
    #[error("ref name {name:?} is not valid: {reason}")]
    RefName { name: String, reason: String },
    #[error(
        "object id {id:?} is not valid: expected 40 (sha1) or 64 (sha256) lowercase hex digits"
    )]
    ObjectId { id: String },
}

fn validate_id(kind: &'static str, name: &str) -> Result<(), NameError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(NameError::Id {
            kind,
            name: name.to_owned(),
        })
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                validate_id($kind, &name)?;
                Ok(Self(name))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(name: String) -> Result<Self, NameError> {
                Self::new(name)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A project's id, the first path segment of its repositories.
    ProjectId,
    "project id"
);
id_type!(
    /// A repository's name inside its project (without `.git`).
    RepoName,
    "repository name"
);
id_type!(
    /// A task's id; its desktop's branch is `refs/heads/flotilla/<task>`.
    TaskId,
    "task id"
);

/// One hosted repository: `<project>/<repo>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RepoId {
    pub project: ProjectId,
    pub repo: RepoName,
}

impl RepoId {
    pub fn new(project: &str, repo: &str) -> Result<Self, NameError> {
        Ok(Self {
            project: ProjectId::new(project)?,
            repo: RepoName::new(repo)?,
        })
    }

    /// From URL segments, where the repository may carry a `.git` suffix.
    pub fn from_url_segments(project: &str, repo: &str) -> Result<Self, NameError> {
        Self::new(project, repo.strip_suffix(".git").unwrap_or(repo))
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.repo)
    }
}

/// A full ref name (`refs/...`) that git's own rules accept (no `..`, no `@{`, no
/// control characters, no component starting with `.` or ending in `.lock`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RefName(String);

impl RefName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        let refuse = |reason: String| NameError::RefName {
            name: name.clone(),
            reason,
        };
        if !name.starts_with("refs/") {
            return Err(refuse("it must start with refs/".to_owned()));
        }
        // gix-validate already refuses `..`; the explicit check keeps that promise even
        // if its rules ever loosen.
        if name.contains("..") {
            return Err(refuse("it must not contain `..`".to_owned()));
        }
        gix_validate::reference::name(name.as_str().into())
            .map_err(|error| refuse(error.to_string()))?;
        Ok(Self(name))
    }

    /// `refs/heads/<branch>`.
    pub fn branch(branch: &str) -> Result<Self, NameError> {
        Self::new(format!("refs/heads/{branch}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The branch name if this is `refs/heads/<branch>`.
    pub fn branch_name(&self) -> Option<&str> {
        self.0.strip_prefix("refs/heads/")
    }

    /// The name git prints for it: the branch or tag without its namespace.
    pub fn short(&self) -> &str {
        self.0
            .strip_prefix("refs/heads/")
            .or_else(|| self.0.strip_prefix("refs/tags/"))
            .unwrap_or(&self.0)
    }

    /// Whether this ref is `prefix` itself or lies under `prefix/`.
    pub fn is_at_or_under(&self, prefix: &str) -> bool {
        let prefix = prefix.trim_end_matches('/');
        self.0 == prefix
            || self
                .0
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl TryFrom<String> for RefName {
    type Error = NameError;
    fn try_from(name: String) -> Result<Self, NameError> {
        Self::new(name)
    }
}

impl From<RefName> for String {
    fn from(name: RefName) -> String {
        name.0
    }
}

impl fmt::Display for RefName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A full object id in lowercase hex. The all-zero id is not an `ObjectId`: "no
/// object" is `None` wherever it can occur.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectId(String);

impl ObjectId {
    pub fn new(id: impl Into<String>) -> Result<Self, NameError> {
        let id = id.into();
        let valid = matches!(id.len(), 40 | 64)
            && id
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
            && !is_null_hex(&id);
        if valid {
            Ok(Self(id))
        } else {
            Err(NameError::ObjectId { id })
        }
    }

    /// Parses the hex git prints, where all zeros means "no object".
    pub fn parse_optional(id: &str) -> Result<Option<Self>, NameError> {
        if matches!(id.len(), 40 | 64) && is_null_hex(id) {
            Ok(None)
        } else {
            Self::new(id).map(Some)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The all-zero id of the same length, as git writes "no object".
    pub fn null_hex(like: Option<&ObjectId>) -> String {
        "0".repeat(like.map_or(40, |id| id.0.len()))
    }
}

fn is_null_hex(id: &str) -> bool {
    id.bytes().all(|byte| byte == b'0')
}

impl TryFrom<String> for ObjectId {
    type Error = NameError;
    fn try_from(id: String) -> Result<Self, NameError> {
        Self::new(id)
    }
}

impl From<ObjectId> for String {
    fn from(id: ObjectId) -> String {
        id.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One ref moving from `old` to `new`; `None` on either side means the ref does not
/// exist (creation when `old` is `None`, deletion when `new` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefUpdate {
    pub name: RefName,
    pub old: Option<ObjectId>,
    pub new: Option<ObjectId>,
}

impl RefUpdate {
    pub fn is_create(&self) -> bool {
        self.old.is_none()
    }

    pub fn is_delete(&self) -> bool {
        self.new.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet_only() {
        assert!(ProjectId::new("proj_1-A").is_ok());
        for bad in ["", "a/b", "..", "a.b", "a b", &"x".repeat(65), "ü"] {
            assert!(ProjectId::new(bad).is_err(), "{bad:?} accepted");
        }
        let repo = RepoId::from_url_segments("p", "r.git").expect("suffix stripped");
        assert_eq!(repo.to_string(), "p/r");
    }

    #[test]
    fn ref_names_follow_git_rules() {
        assert!(RefName::new("refs/heads/flotilla/t1/x").is_ok());
        for bad in [
            "refs/heads/a..b",
            "refs/heads/a b",
            "refs/heads/.hidden",
            "refs/heads/x.lock",
            "refs/heads/a@{1}",
            "HEAD",
            "heads/main",
            "refs/heads/a\nb",
            "refs/heads/",
        ] {
            assert!(RefName::new(bad).is_err(), "{bad:?} accepted");
        }
        let name = RefName::new("refs/heads/flotilla/t1/x").expect("valid");
        assert!(name.is_at_or_under("refs/heads/flotilla/t1"));
        assert!(name.is_at_or_under("refs/heads/flotilla/t1/"));
        assert!(!name.is_at_or_under("refs/heads/flotilla/t"));
    }

    #[test]
    fn object_ids_treat_zeros_as_absent() {
        let zeros = "0".repeat(40);
        assert_eq!(ObjectId::parse_optional(&zeros).expect("null"), None);
        assert!(ObjectId::new(zeros).is_err());
        assert!(ObjectId::new("A".repeat(40)).is_err());
        assert!(ObjectId::new("a".repeat(39)).is_err());
        assert!(ObjectId::parse_optional(&"a".repeat(40))
            .expect("valid")
            .is_some());
    }
}
