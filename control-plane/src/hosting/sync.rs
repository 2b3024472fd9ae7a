//! Keeps this server's bare repositories at the refs the cluster committed.
//! Level-triggered: on every repository change (and at start, and after a
//! lagged feed or a snapshot) a repository is brought to its committed refs
//! with one `update-ref` transaction; objects it lacks are fetched from a
//! peer first. Replaying is harmless: a ref already at its value is left.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use flotilla_git::{ObjectId, PeerRemote, RefName, RefUpdate, RepoId, RepoStore, StoreError};

use crate::control::ControlPlane;
use crate::raft::state_machine::Broadcast;
use crate::types::ChangeKind;

/// How long a failed catch-up waits before it tries again.
const RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("the state names a ref git cannot read: {0}")]
    Name(#[from] flotilla_git::NameError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no other server could give {repo} the objects {missing}")]
    NoPeerHasObjects { repo: RepoId, missing: String },
}

pub struct GitSync {
    control: Arc<ControlPlane>,
    store: Arc<RepoStore>,
    /// One catch-up at a time per repository.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl GitSync {
    pub fn new(control: Arc<ControlPlane>, store: Arc<RepoStore>) -> GitSync {
        GitSync {
            control,
            store,
            locks: Mutex::default(),
        }
    }

    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    pub fn store(&self) -> &Arc<RepoStore> {
        &self.store
    }

    /// The other servers' addresses.
    pub fn peers(&self) -> Vec<String> {
        let status = self.control.status();
        status
            .members
            .into_iter()
            .filter(|member| member.id != self.control.node_id)
            .map(|member| member.addr)
            .collect()
    }

    /// How a server authenticates to another's git door.
    pub fn peer_remote(&self, addr: &str, repo: &RepoId) -> PeerRemote {
        let credential = base64::engine::general_purpose::STANDARD
            .encode(format!("flotilla:{}", self.control.cluster_secret()));
        PeerRemote {
            url: format!("http://{addr}/git/{}/{}.git", repo.project, repo.repo),
            authorization: Some(format!("Basic {credential}")),
        }
    }

    /// Brings `project/name` to its committed refs (creating the bare
    /// repository if this server has none yet).
    pub async fn converge(&self, project: &str, name: &str) -> Result<(), SyncError> {
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks
                .entry(format!("{project}/{name}"))
                .or_default()
                .clone()
        };
        let _held = lock.lock().await;
        let Some(committed) = self
            .control
            .state
            .with_state(|state| state.repo(project, name).map(|repo| repo.refs.clone()))
        else {
            return Ok(());
        };
        let id = RepoId::new(project, name)?;
        self.store.ensure(&id).await?;
        let mut desired = BTreeMap::new();
        for (name, value) in committed {
            desired.insert(RefName::new(name)?, ObjectId::new(value)?);
        }
        let actual = self.store.list_refs(&id).await?;
        let names: HashSet<&RefName> = desired.keys().chain(actual.keys()).collect();
        let updates: Vec<RefUpdate> = names
            .into_iter()
            .filter(|name| desired.get(*name) != actual.get(*name))
            .map(|name| RefUpdate {
                name: name.clone(),
                old: actual.get(name).cloned(),
                new: desired.get(name).cloned(),
            })
            .collect();
        if updates.is_empty() {
            return Ok(());
        }
        tracing::info!(repo = %id, updates = updates.len(), "hosted git: moving refs to the committed values");
        match self.store.apply(&id, &updates).await {
            Err(StoreError::MissingObjects { .. }) => {
                let wanted: Vec<ObjectId> = updates.iter().filter_map(|u| u.new.clone()).collect();
                self.fetch_from_peers(&id, &wanted).await?;
                self.store.apply(&id, &updates).await?;
            }
            other => other?,
        }
        Ok(())
    }

    /// Fetches `ids` from the first peer that has them.
    pub async fn fetch_from_peers(&self, id: &RepoId, ids: &[ObjectId]) -> Result<(), SyncError> {
        for addr in self.peers() {
            match self
                .store
                .fetch_objects_from(id, &self.peer_remote(&addr, id), ids)
                .await
            {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::debug!(%error, peer = %addr, "peer could not give the objects")
                }
            }
        }
        Err(SyncError::NoPeerHasObjects {
            repo: id.clone(),
            missing: ids
                .iter()
                .map(ObjectId::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        })
    }

    /// Catches up every repository, then follows the change feed.
    pub async fn run(self: Arc<Self>) {
        let mut feed = self.control.state.subscribe();
        let mut dirty: HashSet<(String, String)> = self.all_repos();
        loop {
            let mut failed = HashSet::new();
            for (project, name) in dirty.drain() {
                if let Err(error) = self.converge(&project, &name).await {
                    tracing::warn!(%error, %project, repo = %name, "hosted git: catching up failed; retrying");
                    failed.insert((project, name));
                }
            }
            dirty = failed;
            let wait = async {
                if dirty.is_empty() {
                    std::future::pending::<()>().await
                } else {
                    tokio::time::sleep(RETRY).await
                }
            };
            tokio::select! {
                message = feed.recv() => match message {
                    Ok(Broadcast::Batch(batch)) => {
                        for change in &batch.changes {
                            if let ChangeKind::RepoPut { repo } = &change.kind {
                                dirty.insert((repo.project.clone(), repo.name.clone()));
                            }
                        }
                    }
                    Ok(Broadcast::Reset { .. }) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        dirty.extend(self.all_repos());
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                () = wait => {}
            }
        }
    }

    fn all_repos(&self) -> HashSet<(String, String)> {
        self.control.state.with_state(|state| {
            state
                .all_repos()
                .map(|repo| (repo.project.clone(), repo.name.clone()))
                .collect()
        })
    }
}
