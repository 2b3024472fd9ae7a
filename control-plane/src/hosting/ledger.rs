//! [`RefLedger`] over Raft. A push's updates become one
//! [`Command::UpdateRefs`]; before it is proposed, f peers (a majority with
//! this server) fetch the push's objects from here (`/internal/git/fetch`),
//! so whichever majority commits the entry can serve them. The push is
//! acknowledged once the entry is committed and this server's copy follows.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use flotilla_git::{LedgerError, ObjectId, RefLedger, RefOutcome, RefUpdate, RepoId};
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};

use super::sync::{GitSync, SyncError};
use crate::control::{Access, ControlPlane};
use crate::error::ApiError;
use crate::types::{Command, CommandError, RefChange};

/// How long a peer may take to copy a push's objects.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// What a server asks a peer to copy before proposing refs.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    pub project: String,
    pub repo: String,
    /// The asking server's address (a member of the cluster).
    pub source: String,
    pub objects: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub(super) enum ReplicateError {
    #[error("only {got} of the {needed} other servers a majority needs stored the push's objects{}", last.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    TooFew {
        got: usize,
        needed: usize,
        last: Option<String>,
    },
}

pub struct RaftLedger {
    control: Arc<ControlPlane>,
    sync: Arc<GitSync>,
    client: reqwest::Client,
}

impl RaftLedger {
    pub fn new(control: Arc<ControlPlane>, sync: Arc<GitSync>) -> RaftLedger {
        RaftLedger {
            control,
            sync,
            client: reqwest::Client::new(),
        }
    }

    /// Has f peers fetch `objects` from this server (f = voters / 2).
    pub(super) async fn replicate(
        &self,
        repo: &RepoId,
        objects: &[ObjectId],
    ) -> Result<(), ReplicateError> {
        let status = self.control.status();
        let voters = status.members.iter().filter(|m| m.role == "voter").count();
        let needed = voters / 2;
        if needed == 0 || objects.is_empty() {
            return Ok(());
        }
        let body = FetchRequest {
            project: repo.project.to_string(),
            repo: repo.repo.to_string(),
            source: self.control.advertise_addr.clone(),
            objects: objects.iter().map(|id| id.as_str().to_owned()).collect(),
        };
        let mut asks: FuturesUnordered<_> = status
            .members
            .iter()
            .filter(|member| member.id != self.control.node_id && member.role == "voter")
            .map(|member| {
                let request = self
                    .client
                    .post(format!("http://{}/internal/git/fetch", member.addr))
                    .bearer_auth(self.control.cluster_secret())
                    .timeout(FETCH_TIMEOUT)
                    .json(&body)
                    .send();
                async move {
                    match request.await {
                        Ok(answer) if answer.status().is_success() => Ok(()),
                        Ok(answer) => Err(format!(
                            "{}: {}",
                            answer.status(),
                            answer.text().await.unwrap_or_default()
                        )),
                        Err(error) => Err(error.to_string()),
                    }
                }
            })
            .collect();
        let (mut got, mut last) = (0, None);
        while let Some(outcome) = asks.next().await {
            match outcome {
                Ok(()) => got += 1,
                Err(error) => last = Some(error),
            }
            if got >= needed {
                return Ok(());
            }
        }
        Err(ReplicateError::TooFew { got, needed, last })
    }
}

fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> LedgerError {
    LedgerError::Unavailable(Box::new(error))
}

#[async_trait]
impl RefLedger for RaftLedger {
    async fn compare_and_swap(
        &self,
        repo: &RepoId,
        updates: Vec<RefUpdate>,
    ) -> Result<Vec<RefOutcome>, LedgerError> {
        let objects: Vec<ObjectId> = updates.iter().filter_map(|u| u.new.clone()).collect();
        self.replicate(repo, &objects).await.map_err(unavailable)?;
        let changes = updates
            .iter()
            .map(|update| RefChange {
                name: update.name.as_str().to_owned(),
                old: update.old.as_ref().map(|id| id.as_str().to_owned()),
                new: update.new.as_ref().map(|id| id.as_str().to_owned()),
            })
            .collect();
        let command = Command::UpdateRefs {
            project: repo.project.to_string(),
            repo: repo.repo.to_string(),
            changes,
        };
        let response = self
            .control
            .write(self.control.request(command, None))
            .await
            .map_err(unavailable)?;
        match response.outcome {
            Ok(_) => {
                // A follower's state may not have applied the entry yet: wait
                // for it (read index), so this copy follows the new refs.
                self.control
                    .read_barrier(crate::control::Consistency::Linearizable)
                    .await
                    .map_err(unavailable)?;
                self.sync
                    .converge(repo.project.as_str(), repo.repo.as_str())
                    .await
                    .map_err(|error| match error {
                        SyncError::Store(store) => LedgerError::Apply(store),
                        other => unavailable(other),
                    })?;
                tracing::info!(%repo, revision = response.revision, "hosted git: push committed");
                Ok(vec![RefOutcome::Applied; updates.len()])
            }
            Err(CommandError::StaleRef { name, current }) => Ok(updates
                .iter()
                .map(|update| {
                    if update.name.as_str() == name {
                        RefOutcome::Stale {
                            current: current.as_deref().and_then(|id| ObjectId::new(id).ok()),
                        }
                    } else {
                        RefOutcome::NotApplied
                    }
                })
                .collect()),
            Err(other) => Err(unavailable(other)),
        }
    }
}

/// The servers' own routes (cluster secret only).
pub fn internal_routes(sync: Arc<GitSync>) -> Router {
    Router::new()
        .route("/internal/git/fetch", post(fetch_for_peer))
        .with_state(sync)
}

/// A peer's push: copy its objects here (fsynced by git) before it proposes.
async fn fetch_for_peer(
    State(sync): State<Arc<GitSync>>,
    headers: HeaderMap,
    Json(request): Json<FetchRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let control = sync.control();
    control.authorize(
        crate::api::http::session::session_token(&headers),
        Access::Cluster,
    )?;
    let bad = |message: String| ApiError::bad_request("invalid_body", message);
    let id = RepoId::new(&request.project, &request.repo).map_err(|e| bad(e.to_string()))?;
    if !sync.peers().contains(&request.source) {
        return Err(bad(format!(
            "{} is not another server of this cluster",
            request.source
        )));
    }
    let objects = request
        .objects
        .iter()
        .map(|id| ObjectId::new(id.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let store = sync.store();
    store
        .ensure(&id)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    store
        .fetch_objects_from(&id, &sync.peer_remote(&request.source, &id), &objects)
        .await
        .map_err(|e| ApiError::unavailable(format!("fetch from {}: {e}", request.source)))?;
    Ok(Json(serde_json::json!({ "ok": true })))
}
