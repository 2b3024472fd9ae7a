//! Who may use hosted git: the operator token (and other servers, with the
//! cluster secret) as the HTTP Basic password, for any repository. Desktop
//! tokens, scoped to one task's branches, come with the desktop door.

use std::sync::Arc;

use async_trait::async_trait;
use axum::http::HeaderMap;
use flotilla_git::http::basic_password;
use flotilla_git::{Access as GitAccess, GitAuth, GitAuthError, Principal, RepoId};

use crate::control::{Access, ControlPlane};
use crate::error::ErrorKind;

pub struct ClusterAuth {
    control: Arc<ControlPlane>,
}

impl ClusterAuth {
    pub fn new(control: Arc<ControlPlane>) -> ClusterAuth {
        ClusterAuth { control }
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
        let known = self.control.state.with_state(|state| {
            state
                .repo(repo.project.as_str(), repo.repo.as_str())
                .is_some()
        });
        if !known {
            return Err(GitAuthError::Forbidden {
                reason: format!("no repository {repo}: `flotilla repo create` makes one"),
            });
        }
        Ok(Principal::Operator {
            name: "operator".to_owned(),
        })
    }
}
