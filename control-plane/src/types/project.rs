//! Projects and their hosted repositories, as the Raft state holds them.
//! A repository's refs live here: the log is the truth about every branch
//! and tag, and each server's bare copy on disk follows it (`hosting/`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A set of repositories and their settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    /// `[A-Za-z0-9_-]`, 1-64 characters; part of every clone URL.
    pub id: String,
    /// The branch new repositories start with and pull requests target.
    pub default_branch: String,
    /// How its pull requests merge unless a merge asks otherwise.
    #[serde(default)]
    pub merge_style: super::MergeStyle,
    pub created_at_ms: u64,
    /// What its tasks' model calls used.
    #[serde(default, skip_serializing_if = "super::UsageTotals::is_empty")]
    pub usage: super::UsageTotals,
    #[serde(default, skip_serializing_if = "super::Budget::is_unlimited")]
    pub budget: super::Budget,
}

/// A hosted git repository and its committed refs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Repo {
    pub project: String,
    pub name: String,
    pub default_branch: String,
    /// Every branch and tag: full ref name → object id (hex).
    #[serde(default)]
    pub refs: BTreeMap<String, String>,
    /// Pull requests opened so far (the last one's number).
    #[serde(default)]
    pub pulls_opened: u64,
    /// Where it was imported from; its default branch is mirrored there.
    #[serde(default)]
    pub upstream: Option<Upstream>,
    pub created_at_ms: u64,
}

/// An imported repository's upstream and how its mirror is doing. The
/// credential is not here: it is sealed apart (`State::upstream_credential`)
/// and never shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Upstream {
    /// Without credentials (refused in a URL).
    pub url: String,
    /// The default branch's commit the upstream last took (the import's at
    /// first); behind the branch: the mirror lags.
    #[serde(default)]
    pub pushed: Option<String>,
    /// Why the last push failed; cleared by the next success.
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub updated_at_ms: u64,
}

impl Repo {
    /// The state's key of a repository.
    pub fn key(project: &str, name: &str) -> String {
        format!("{project}/{name}")
    }
}

/// One compare-and-swap of a ref: `old` must be its committed value
/// (`None`: the ref must not exist); `new: None` deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Longest project id or repository name.
pub const MAX_PROJECT_NAME: usize = 64;

/// Project ids and repository names: 1-64 of `[A-Za-z0-9_-]`, so they are
/// safe as path segments on disk and in URLs.
pub fn valid_project_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_PROJECT_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The hosted repository a task's `repository` names, as
/// `(project, repo)`: `<project>/<repo>`, both valid names. Anything else
/// (an external URL) is not hosted here.
pub fn hosted_repo(repository: &str) -> Option<(&str, &str)> {
    let (project, repo) = repository.split_once('/')?;
    let repo = repo.strip_suffix(".git").unwrap_or(repo);
    (valid_project_name(project) && valid_project_name(repo)).then_some((project, repo))
}

/// Whether refs `a` and `b` cannot both exist (git stores refs as paths:
/// `refs/heads/x` and `refs/heads/x/y` collide).
pub fn refs_nest(a: &str, b: &str) -> bool {
    let nested = |outer: &str, inner: &str| {
        inner.len() > outer.len()
            && inner.starts_with(outer)
            && inner.as_bytes()[outer.len()] == b'/'
    };
    nested(a, b) || nested(b, a)
}
