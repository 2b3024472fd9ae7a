//! Pull requests on this server's copy: what git says about one now (head,
//! base, whether it merges, the files it changes), its diff, and the merge
//! itself: `git merge-tree` and `commit-tree` here, the new commit's objects
//! copied to f peers (as a push's are), then one [`Command::MergePull`]
//! that moves the base only if neither branch moved meanwhile.

use std::sync::Arc;

use flotilla_git::pr::{self, FileDiff, Mergeability, PrError, Signature};
use flotilla_git::{ObjectId, RefName, RepoId};

use super::ledger::RaftLedger;
use super::sync::GitSync;
use crate::control::Consistency;
use crate::error::ApiError;
use crate::types::{Applied, Command, MergeStyle, PullRequest, PullState, RefChange};

/// Whether an open pull request lands now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// It merges without conflicts; `fast_forward`: the base is in it.
    Clean { fast_forward: bool },
    /// The base branch must be merged into it first: these files conflict.
    NeedsMerge { files: Vec<String> },
    /// Its head is already in the base.
    UpToDate,
}

/// A pull request as git sees it now.
#[derive(Debug, Clone)]
pub struct Live {
    /// The branches' committed commits (`None`: the branch is gone).
    pub head: Option<String>,
    pub base: Option<String>,
    /// Only for an open pull request whose branches both exist.
    pub merge: Option<Merge>,
    /// The files it changes (no hunks).
    pub files: Vec<FileDiff>,
}

pub struct Pulls {
    sync: Arc<GitSync>,
    ledger: Arc<RaftLedger>,
}

fn git_error(error: PrError) -> ApiError {
    ApiError::internal(format!("git: {error}"))
}

fn object(id: &str) -> Result<ObjectId, ApiError> {
    ObjectId::new(id)
        .map_err(|error| ApiError::internal(format!("the state holds {id:?}: {error}")))
}

impl Pulls {
    pub fn new(sync: Arc<GitSync>, ledger: Arc<RaftLedger>) -> Pulls {
        Pulls { sync, ledger }
    }

    fn repo_id(pull: &PullRequest) -> Result<RepoId, ApiError> {
        RepoId::new(&pull.project, &pull.repo).map_err(|e| ApiError::internal(e.to_string()))
    }

    /// The pull request's branches as committed, with this copy following.
    async fn branches(
        &self,
        pull: &PullRequest,
    ) -> Result<(RepoId, Option<String>, Option<String>), ApiError> {
        let repo = Self::repo_id(pull)?;
        self.sync
            .converge(&pull.project, &pull.repo)
            .await
            .map_err(|error| ApiError::unavailable(format!("bring {repo} up to date: {error}")))?;
        let (head, base) = self.sync.control().state.with_state(|state| {
            let refs = state.repo(&pull.project, &pull.repo).map(|repo| &repo.refs);
            (
                refs.and_then(|refs| refs.get(&pull.source_ref()).cloned()),
                refs.and_then(|refs| refs.get(&pull.base_ref()).cloned()),
            )
        });
        Ok((repo, head, base))
    }

    /// What git says about `pull` now.
    pub async fn live(&self, pull: &PullRequest) -> Result<Live, ApiError> {
        let (repo, head, base) = self.branches(pull).await?;
        let store = self.sync.store();
        // A merged pull request shows what it brought; others, what they would.
        let (diff_base, diff_head) = match (pull.state, &pull.merged_head) {
            (PullState::Merged, Some(merged)) => {
                (Some(pull.opened_base.clone()), Some(merged.clone()))
            }
            _ => (base.clone(), head.clone()),
        };
        let files = match (diff_base, diff_head) {
            (Some(b), Some(h)) => pr::diff(store, &repo, &object(&b)?, &object(&h)?)
                .await
                .map_err(git_error)?
                .into_iter()
                .map(|file| FileDiff {
                    hunks: Vec::new(),
                    ..file
                })
                .collect(),
            _ => Vec::new(),
        };
        let merge = match (pull.state, &head, &base) {
            (PullState::Open, Some(h), Some(b)) => {
                let (h, b) = (object(h)?, object(b)?);
                Some(
                    if h == b
                        || store
                            .is_ancestor(&repo, &h, &b)
                            .await
                            .map_err(|e| git_error(e.into()))?
                    {
                        Merge::UpToDate
                    } else {
                        match pr::mergeability(store, &repo, &b, &h)
                            .await
                            .map_err(git_error)?
                        {
                            Mergeability::Clean { .. } => Merge::Clean {
                                fast_forward: store
                                    .is_ancestor(&repo, &b, &h)
                                    .await
                                    .map_err(|e| git_error(e.into()))?,
                            },
                            Mergeability::Conflicts { files, .. } => Merge::NeedsMerge { files },
                        }
                    },
                )
            }
            _ => None,
        };
        Ok(Live {
            head,
            base,
            merge,
            files,
        })
    }

    /// The changes with hunks: `git diff base...head`.
    pub async fn diff(&self, pull: &PullRequest) -> Result<Vec<FileDiff>, ApiError> {
        let (repo, head, base) = self.branches(pull).await?;
        let (base, head) = match (pull.state, &pull.merged_head) {
            (PullState::Merged, Some(merged)) => {
                (Some(pull.opened_base.clone()), Some(merged.clone()))
            }
            _ => (base, head),
        };
        let (Some(base), Some(head)) = (base, head) else {
            return Err(ApiError::conflict(
                "a branch of this pull request no longer exists",
            ));
        };
        pr::diff(self.sync.store(), &repo, &object(&base)?, &object(&head)?)
            .await
            .map_err(git_error)
    }

    /// Merges an open pull request in `style`; answers the merged record.
    pub async fn merge(
        &self,
        pull: &PullRequest,
        style: MergeStyle,
        author: &Signature,
    ) -> Result<PullRequest, ApiError> {
        if pull.state != PullState::Open {
            return Err(ApiError::conflict(format!(
                "pull request #{} is {:?}, not open",
                pull.number, pull.state
            )));
        }
        let (repo, head, base) = self.branches(pull).await?;
        let (Some(head), Some(base)) = (head, base) else {
            return Err(ApiError::conflict(
                "a branch of this pull request no longer exists",
            ));
        };
        let target =
            RefName::new(pull.base_ref()).map_err(|e| ApiError::internal(e.to_string()))?;
        let git_style = match style {
            MergeStyle::MergeCommit => pr::MergeStyle::MergeCommit,
            MergeStyle::Squash => pr::MergeStyle::Squash,
            MergeStyle::FastForward => pr::MergeStyle::FastForward,
        };
        let message = format!(
            "Merge pull request #{} from {}\n\n{}\n",
            pull.number, pull.source, pull.title
        );
        let outcome = pr::merge(
            self.sync.store(),
            &repo,
            &target,
            &object(&base)?,
            &object(&head)?,
            git_style,
            author,
            &message,
        )
        .await
        .map_err(|error| match error {
            PrError::Conflicts { .. }
            | PrError::NotFastForward { .. }
            | PrError::NothingToMerge { .. } => ApiError::conflict(error.to_string()),
            other => git_error(other),
        })?;
        self.ledger
            .replicate(&repo, std::slice::from_ref(&outcome.commit))
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        let control = self.sync.control();
        let command = Command::MergePull {
            project: pull.project.clone(),
            repo: pull.repo.clone(),
            number: pull.number,
            head,
            change: RefChange {
                name: pull.base_ref(),
                old: Some(base),
                new: Some(outcome.commit.as_str().to_owned()),
            },
        };
        let response = control.write(control.request(command, None)).await?;
        let merged = match response.outcome {
            Ok(Applied::Pull { pull }) => pull,
            Ok(other) => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
            Err(error) => return Err(error.into()),
        };
        control.read_barrier(Consistency::Linearizable).await?;
        self.sync
            .converge(&pull.project, &pull.repo)
            .await
            .map_err(|error| ApiError::unavailable(error.to_string()))?;
        Ok(merged)
    }
}
