//! Who may use hosted git: the operator token (and other servers, with the
//! cluster secret) as the HTTP Basic password, for any repository. Desktop
//! tokens, scoped to one task's branches, come with the desktop door.
//! A request is served only once this server knows the repository (a
//! read-index barrier if not yet) and its copy follows the committed refs.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::HeaderMap;
use flotilla_git::http::basic_password;
use flotilla_git::{Access as GitAccess, GitAuth, GitAuthError, Principal, RepoId};

use super::GitSync;
use crate::control::{Access, Consistency, ControlPlane};
use crate::error::ErrorKind;

pub struct ClusterAuth {
    control: Arc<ControlPlane>,
    sync: Arc<GitSync>,
}

impl ClusterAuth {
    pub fn new(control: Arc<ControlPlane>, sync: Arc<GitSync>) -> ClusterAuth {
        ClusterAuth { control, sync }
    }

    fn known(&self, repo: &RepoId) -> bool {
        self.control.state.with_state(|state| {
            state
                .repo(repo.project.as_str(), repo.repo.as_str())
                .is_some()
        })
    }
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
        // This server may not have applied the repository's creation yet:
        // ask the leader (read index) before saying it does not exist.
        if !self.known(repo) {
            self.control
                .read_barrier(Consistency::Linearizable)
                .await
                .map_err(|error| GitAuthError::Unavailable(Box::new(error)))?;
        }
        if !self.known(repo) {
            return Err(GitAuthError::Forbidden {
                reason: format!("no repository {repo}: `flotilla repo create` makes one"),
            });
        }
        // Serve this server's copy only once it follows the committed refs
        // (created, configured, at the log's values). Not for a peer: it
        // fetches objects by id, and waiting here on this repository's
        // catch-up (which may itself be fetching from that peer) would be
        // a lock cycle across servers.
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
        self.sync
            .converge(repo.project.as_str(), repo.repo.as_str())
            .await
            .map_err(|error| GitAuthError::Unavailable(Box::new(error)))?;
        Ok(Principal::Operator {
            name: "operator".to_owned(),
        })
    }
}
