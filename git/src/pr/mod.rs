//! Pull requests over the bare repository, with no working tree: what a pull request
//! changes ([`diff`]), whether it merges ([`mergeability`]), and the merge commit
//! itself ([`merge`]), returned as a [`crate::RefUpdate`] for the caller to commit
//! through the ledger.

pub mod diff;
pub mod merge;

use thiserror::Error;

use crate::command::GitCommandError;
use crate::store::StoreError;
use crate::types::{ObjectId, RepoId};

pub use diff::{diff, DiffLine, FileDiff, FileStatus, Hunk, LineKind};
pub use merge::{merge, mergeability, MergeOutcome, MergeStyle, Mergeability, Signature};

#[derive(Debug, Error)]
pub enum PrError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{step} in repository {repo}")]
    Git {
        repo: RepoId,
        step: &'static str,
        #[source]
        source: Box<GitCommandError>,
    },
    #[error("git printed something unexpected while {step} in repository {repo}: {detail}")]
    Parse {
        repo: RepoId,
        step: &'static str,
        detail: String,
    },
    #[error("{base} and {head} share no history in repository {repo}")]
    NoMergeBase {
        repo: RepoId,
        base: ObjectId,
        head: ObjectId,
    },
    #[error("the merge conflicts in {}: merge the base branch into the pull request and resolve them", files.join(", "))]
    Conflicts { files: Vec<String> },
    #[error("{base} is not an ancestor of {head}: a fast-forward is impossible; merge or squash instead")]
    NotFastForward { base: ObjectId, head: ObjectId },
    #[error("{head} is already contained in {base}: nothing to merge")]
    NothingToMerge { base: ObjectId, head: ObjectId },
}
