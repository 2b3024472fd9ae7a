//! Who may use hosted git. On the client door ([`ClusterAuth`]): the
//! operator token (and other servers, with the cluster secret) as the HTTP
//! Basic password, for any repository. On the desktop door
//! ([`DesktopAuth`]): only a live desktop token, which fetches its task's
//! project's repositories and pushes only to its task's repository, where
//! `flotilla_git::policy` keeps it to `flotilla/<task>` branches.
//! A request is served only once this server knows the repository (a
//! read-index barrier if not yet) and its copy follows the committed refs.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::HeaderMap;
use flotilla_git::http::basic_password;
use flotilla_git::{Access as GitAccess, GitAuth, GitAuthError, Principal, RepoId, TaskId};

use super::GitSync;
use crate::control::{Access, Consistency, ControlPlane};
use crate::error::ErrorKind;
use crate::types::hosted_repo;

pub struct ClusterAuth {
    control: Arc<ControlPlane>,
    sync: Arc<GitSync>,
}

impl ClusterAuth {
    pub fn new(control: Arc<ControlPlane>, sync: Arc<GitSync>) -> ClusterAuth {
        ClusterAuth { control, sync }
    }
}

/// Refuses a repository this server does not know, even after asking the
/// leader (it may not have applied the creation yet).
async fn require_known(control: &ControlPlane, repo: &RepoId) -> Result<(), GitAuthError> {
    let known = || {
        control.state.with_state(|state| {
            state
                .repo(repo.project.as_str(), repo.repo.as_str())
                .is_some()
        })
    };
    if !known() {
        control
            .read_barrier(Consistency::Linearizable)
            .await
            .map_err(|error| GitAuthError::Unavailable(Box::new(error)))?;
    }
    if !known() {
        return Err(GitAuthError::NotFound {
            reason: format!("no repository {repo}: `flotilla repo create` makes one"),
        });
    }
    Ok(())
}

/// Serves this server's copy only once it follows the committed refs
/// (created, configured, at the log's values).
async fn converged(sync: &GitSync, repo: &RepoId) -> Result<(), GitAuthError> {
    sync.converge(repo.project.as_str(), repo.repo.as_str())
        .await
        .map_err(|error| GitAuthError::Unavailable(Box::new(error)))
}

#[async_trait]
impl GitAuth for ClusterAuth {
    async fn authorize(
        &self,
        headers: &HeaderMap,
        repo: &RepoId,
        _access: GitAccess,
    ) -> Result<Principal, GitAuthError> {
        let token = basic_password(headers).ok_or(GitAuthError::MissingCredentials)?;
        match self.control.authorize(Some(&token), Access::Operator) {
            Ok(()) => {}
            Err(error) if error.kind == ErrorKind::Unavailable => {
                return Err(GitAuthError::Unavailable(Box::new(error)))
            }
            Err(_) => return Err(GitAuthError::InvalidCredentials),
        }
        require_known(&self.control, repo).await?;
        // Not for a peer: it fetches objects by id, and waiting here on
        // this repository's catch-up (which may itself be fetching from
        // that peer) would be a lock cycle across servers.
        let peer = self
            .control
            .authorize(Some(&token), Access::Cluster)
            .is_ok();
        if peer {
            self.sync
                .store()
                .ensure(repo)
                .await
                .map_err(|error| GitAuthError::Unavailable(Box::new(error)))?;
            return Ok(Principal::Operator {
                name: "peer".to_owned(),
            });
        }
        converged(&self.sync, repo).await?;
        Ok(Principal::Operator {
            name: "operator".to_owned(),
        })
    }
}

/// The desktop door's git: desktop tokens only.
pub struct DesktopAuth {
    control: Arc<ControlPlane>,
    sync: Arc<GitSync>,
}

impl DesktopAuth {
    pub fn new(control: Arc<ControlPlane>, sync: Arc<GitSync>) -> DesktopAuth {
        DesktopAuth { control, sync }
    }
}

#[async_trait]
impl GitAuth for DesktopAuth {
    async fn authorize(
        &self,
        headers: &HeaderMap,
        repo: &RepoId,
        access: GitAccess,
    ) -> Result<Principal, GitAuthError> {
        let token = basic_password(headers).ok_or(GitAuthError::MissingCredentials)?;
        let identity = match self.control.authorize_desktop(&token).await {
            Ok(identity) => identity,
            Err(error) if error.kind == ErrorKind::Unavailable => {
                return Err(GitAuthError::Unavailable(Box::new(error)))
            }
            Err(_) => return Err(GitAuthError::InvalidCredentials),
        };
        let task_repo = self.control.state.with_state(|state| {
            state
                .task(&identity.task_id)
                .and_then(|task| task.repository.clone())
        });
        let Some((project, name)) = task_repo.as_deref().and_then(hosted_repo) else {
            return Err(GitAuthError::Forbidden {
                reason: format!(
                    "task {} has no hosted repository: set its repository to <project>/<repo>",
                    identity.task_id
                ),
            });
        };
        if repo.project.as_str() != project {
            return Err(GitAuthError::Forbidden {
                reason: format!(
                    "this desktop works in project {project}; {repo} is in another project"
                ),
            });
        }
        if access == GitAccess::Write && repo.repo.as_str() != name {
            return Err(GitAuthError::Forbidden {
                reason: format!(
                    "this desktop pushes only to its task's repository {project}/{name}"
                ),
            });
        }
        require_known(&self.control, repo).await?;
        converged(&self.sync, repo).await?;
        let task =
            TaskId::new(identity.task_id.clone()).map_err(|error| GitAuthError::Forbidden {
                reason: format!("task {}: {error}", identity.task_id),
            })?;
        Ok(Principal::Desktop {
            task,
            allowed_prefixes: Vec::new(),
        })
    }
}
