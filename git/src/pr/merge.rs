//! Merging a pull request on the server, without a working tree: `git merge-tree
//! --write-tree` computes the merged tree (or the conflicts), `git commit-tree`
//! makes the commit. Nothing here moves a ref: [`merge`] returns the
//! [`RefUpdate`] (compare-and-swap on the base's current commit) for the caller to
//! commit through the ledger, like any push.

use serde::{Deserialize, Serialize};

use super::PrError;
use crate::store::RepoStore;
use crate::types::{ObjectId, RefName, RefUpdate, RepoId};

/// How a pull request lands on its base branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MergeStyle {
    /// A commit with two parents, base then head.
    MergeCommit,
    /// One commit on top of base with the merged tree.
    Squash,
    /// The base branch moves to head; only when base is an ancestor of head.
    FastForward,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mergeability {
    Clean {
        tree: ObjectId,
    },
    Conflicts {
        files: Vec<String>,
        /// git's explanations, e.g. `CONFLICT (content): Merge conflict in f`.
        messages: Vec<String>,
    },
}

/// Author and committer of a merge commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeOutcome {
    /// The commit the base branch should point at.
    pub commit: ObjectId,
    /// `target: base → commit`, to compare-and-swap through the ledger.
    pub update: RefUpdate,
}

/// Whether `head` merges cleanly into `base`, and the merged tree if it does.
pub async fn mergeability(
    store: &RepoStore,
    repo: &RepoId,
    base: &ObjectId,
    head: &ObjectId,
) -> Result<Mergeability, PrError> {
    let path = store.existing_path(repo)?;
    let args = [
        "merge-tree",
        "--write-tree",
        "--name-only",
        "--messages",
        "-z",
        base.as_str(),
        head.as_str(),
    ];
    let git_error = |source| PrError::Git {
        repo: repo.clone(),
        step: "merge trees",
        source: Box::new(source),
    };
    let output = store
        .git()
        .output(Some(&path), &args, None)
        .await
        .map_err(git_error)?;
    let conflicted = match output.status.code() {
        Some(0) => false,
        Some(1) => true,
        _ => return Err(git_error(output.success(&args).expect_err("exit >1 fails"))),
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let parse_error = |detail: String| PrError::Parse {
        repo: repo.clone(),
        step: "reading merge-tree's output",
        detail,
    };
    let mut fields = stdout.split('\0');
    let tree = fields.next().unwrap_or_default();
    let tree = ObjectId::new(tree).map_err(|_| parse_error(format!("tree {tree:?}")))?;
    if !conflicted {
        return Ok(Mergeability::Clean { tree });
    }
    // `-z --name-only`: conflicted paths, an empty field, then per message
    // `<count>\0<path>...\0<type>\0<text>\0`.
    let files: Vec<String> = fields
        .by_ref()
        .take_while(|field| !field.is_empty())
        .map(str::to_owned)
        .collect();
    let mut messages = Vec::new();
    while let Some(count) = fields.next().filter(|field| !field.is_empty()) {
        let count: usize = count
            .parse()
            .map_err(|_| parse_error(format!("message path count {count:?}")))?;
        for _ in 0..count {
            fields.next();
        }
        let _kind = fields.next();
        if let Some(text) = fields.next() {
            messages.push(text.trim_end().to_owned());
        }
    }
    Ok(Mergeability::Conflicts { files, messages })
}

/// Makes the commit that lands `head` on `target` (currently at `base`), and the ref
/// update that moves `target` there. The caller commits the update through its
/// [`crate::RefLedger`]; a stale `base` is then refused like a stale push.
#[allow(clippy::too_many_arguments)]
pub async fn merge(
    store: &RepoStore,
    repo: &RepoId,
    target: &RefName,
    base: &ObjectId,
    head: &ObjectId,
    style: MergeStyle,
    author: &Signature,
    message: &str,
) -> Result<MergeOutcome, PrError> {
    let nothing = || PrError::NothingToMerge {
        base: base.clone(),
        head: head.clone(),
    };
    if base == head || store.is_ancestor(repo, head, base).await? {
        return Err(nothing());
    }
    let commit = match style {
        MergeStyle::FastForward => {
            if !store.is_ancestor(repo, base, head).await? {
                return Err(PrError::NotFastForward {
                    base: base.clone(),
                    head: head.clone(),
                });
            }
            head.clone()
        }
        MergeStyle::MergeCommit | MergeStyle::Squash => {
            let tree = match mergeability(store, repo, base, head).await? {
                Mergeability::Clean { tree } => tree,
                Mergeability::Conflicts { files, .. } => return Err(PrError::Conflicts { files }),
            };
            let parents: Vec<&ObjectId> = match style {
                MergeStyle::MergeCommit => vec![base, head],
                _ => vec![base],
            };
            commit_tree(store, repo, &tree, &parents, author, message).await?
        }
    };
    Ok(MergeOutcome {
        update: RefUpdate {
            name: target.clone(),
            old: Some(base.clone()),
            new: Some(commit.clone()),
        },
        commit,
    })
}

async fn commit_tree(
    store: &RepoStore,
    repo: &RepoId,
    tree: &ObjectId,
    parents: &[&ObjectId],
    author: &Signature,
    message: &str,
) -> Result<ObjectId, PrError> {
    let path = store.existing_path(repo)?;
    let mut command = store.git().command(Some(&path));
    for (variable, value) in [
        ("GIT_AUTHOR_NAME", &author.name),
        ("GIT_AUTHOR_EMAIL", &author.email),
        ("GIT_COMMITTER_NAME", &author.name),
        ("GIT_COMMITTER_EMAIL", &author.email),
    ] {
        command.env(variable, value);
    }
    let mut args = vec!["commit-tree", "--no-gpg-sign", tree.as_str()];
    for parent in parents {
        args.push("-p");
        args.push(parent.as_str());
    }
    args.extend(["-F", "-"]);
    let git_error = |source| PrError::Git {
        repo: repo.clone(),
        step: "create the merge commit",
        source: Box::new(source),
    };
    let stdout = store
        .git()
        .output_with(command, &args, Some(message.as_bytes()))
        .await
        .map_err(git_error)?
        .success(&args)
        .map_err(git_error)?;
    let line = String::from_utf8_lossy(&stdout).trim().to_owned();
    ObjectId::new(line.clone()).map_err(|_| PrError::Parse {
        repo: repo.clone(),
        step: "reading the new commit id",
        detail: line,
    })
}
