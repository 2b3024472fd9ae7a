//! Pull requests as the Raft state holds them: which branch lands on which,
//! the commits they were opened (and merged) at, and their state. What git
//! derives (the diff, whether it merges now) is computed on read by
//! `hosting::pulls` from the committed refs, never stored.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Where a pull request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    Open,
    Merged,
    Closed,
}

/// How a project's pull requests land on their base branch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MergeStyle {
    /// A merge commit with the base and the pull request as parents.
    #[default]
    MergeCommit,
    /// One commit on the base with the merged tree.
    Squash,
    /// The base moves to the pull request's head (only if it contains the base).
    FastForward,
}

/// A pull request of one repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullRequest {
    pub project: String,
    pub repo: String,
    /// 1, 2, ... per repository.
    pub number: u64,
    pub title: String,
    /// The task whose branch this is, if a task's.
    #[serde(default)]
    pub task_id: Option<String>,
    /// The branch that lands (short name, e.g. `flotilla/t1`).
    pub source: String,
    /// The branch it lands on (e.g. `main`).
    pub base: String,
    /// The source and base commits when it was opened.
    pub opened_head: String,
    pub opened_base: String,
    pub state: PullState,
    /// Once merged: the head that landed and the base's new commit.
    #[serde(default)]
    pub merged_head: Option<String>,
    #[serde(default)]
    pub merge_commit: Option<String>,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
    /// Revision of the last change to it.
    pub revision: u64,
}

impl PullRequest {
    /// The state's key: ordered by repository, then number.
    pub fn key(project: &str, repo: &str, number: u64) -> String {
        format!("{project}/{repo}#{number:012}")
    }

    /// Full ref names of the source and base branches.
    pub fn source_ref(&self) -> String {
        format!("refs/heads/{}", self.source)
    }

    pub fn base_ref(&self) -> String {
        format!("refs/heads/{}", self.base)
    }
}

/// Longest pull request title, in characters.
pub const MAX_PULL_TITLE_CHARS: usize = 256;
