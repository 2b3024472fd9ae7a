//! The contract between git and the cluster: ref updates are compare-and-swaps the
//! control plane commits through Raft. This crate never writes a hosted ref any
//! other way; the hook asks the ledger, and every server applies what it committed.
//!
//! **Atomicity: per push.** A push's updates are one ledger entry: either every old
//! value matches and all of them apply, or none does. Git's default (each ref on its
//! own) is weaker, so per-push atomicity satisfies both plain and `--atomic` pushes;
//! one entry per push is one Raft round, and a push's branch and tag never land half.
//!
//! **Invariant: objects before refs.** An entry is proposed only after the objects it
//! names exist on f+1 servers (a majority of a 2f+1 cluster), so whichever majority
//! commits the entry, at least one of its members can serve the objects to the rest.
//! This server's copy is on disk when the ledger is called (receive-pack has moved the
//! pack out of quarantine, git fsyncs it, and the hook checks
//! [`RepoStore::objects_durable`]); the implementation copies the pack to f peers
//! ([`RepoStore::fetch_objects_from`], pointed at this server) before proposing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Mutex;

use crate::store::{RepoStore, StoreError};
use crate::types::{ObjectId, RefName, RefUpdate, RepoId};

/// What became of one update of a push, in the order the updates were given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefOutcome {
    /// Committed, and applied to this server's store.
    Applied,
    /// The ref's committed value is not the update's `old`: someone pushed first.
    Stale { current: Option<ObjectId> },
    /// Its own check passed, but another update of the same push was stale.
    NotApplied,
}

#[derive(Debug, Error)]
pub enum LedgerError {
    /// The cluster could not commit (no leader, no quorum, shutting down). The caller
    /// cannot know whether the entry will still commit.
    #[error("the cluster did not commit the ref update")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("apply the committed ref update to this server's copy")]
    Apply(#[source] StoreError),
    #[error("the ledger answered {got} outcomes for {expected} updates")]
    OutcomeCount { expected: usize, got: usize },
}

/// Compare-and-swap of refs, committed by the cluster.
///
/// Contract for implementations:
/// - one outcome per update, in order; all `Applied` or none (see the module doc);
/// - `Ok` only once the entry is committed *and* applied to this server's
///   [`RepoStore`] (so a fetch from this server right after the push sees it);
/// - before proposing, make the named objects durable on f+1 servers;
/// - every other server applies the committed entry with [`RepoStore::apply`],
///   fetching missing objects first.
#[async_trait]
pub trait RefLedger: Send + Sync + 'static {
    async fn compare_and_swap(
        &self,
        repo: &RepoId,
        updates: Vec<RefUpdate>,
    ) -> Result<Vec<RefOutcome>, LedgerError>;
}

/// One push the [`MemoryLedger`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedPush {
    pub repo: RepoId,
    pub updates: Vec<RefUpdate>,
}

/// A single-server ledger for tests and development: a mutex stands in for Raft, and
/// a commit is applied to the local store before it is acknowledged. It keeps the log
/// of committed pushes so a test can replay it on a "peer" store.
#[derive(Debug)]
pub struct MemoryLedger {
    store: Arc<RepoStore>,
    state: Mutex<MemoryLedgerState>,
}

#[derive(Debug, Default)]
struct MemoryLedgerState {
    refs: HashMap<RepoId, BTreeMap<RefName, ObjectId>>,
    log: Vec<CommittedPush>,
}

impl MemoryLedger {
    pub fn new(store: Arc<RepoStore>) -> Self {
        Self {
            store,
            state: Mutex::new(MemoryLedgerState::default()),
        }
    }

    /// Every push committed so far, oldest first.
    pub async fn committed(&self) -> Vec<CommittedPush> {
        self.state.lock().await.log.clone()
    }
}

#[async_trait]
impl RefLedger for MemoryLedger {
    async fn compare_and_swap(
        &self,
        repo: &RepoId,
        updates: Vec<RefUpdate>,
    ) -> Result<Vec<RefOutcome>, LedgerError> {
        // Holding the lock across the apply serialises pushes like a Raft log does.
        let mut state = self.state.lock().await;
        if !state.refs.contains_key(repo) {
            // The first push to a repository: its refs so far are what the store has.
            let refs = self
                .store
                .list_refs(repo)
                .await
                .map_err(LedgerError::Apply)?;
            state.refs.insert(repo.clone(), refs);
        }
        let refs = state.refs.get_mut(repo).expect("inserted above");
        let checks: Vec<Option<Option<ObjectId>>> = updates
            .iter()
            .map(|update| {
                let current = refs.get(&update.name).cloned();
                (current != update.old).then_some(current)
            })
            .collect();
        if checks.iter().any(Option::is_some) {
            return Ok(checks
                .into_iter()
                .map(|stale| match stale {
                    Some(current) => RefOutcome::Stale { current },
                    None => RefOutcome::NotApplied,
                })
                .collect());
        }
        self.store
            .apply(repo, &updates)
            .await
            .map_err(LedgerError::Apply)?;
        for update in &updates {
            match &update.new {
                Some(new) => refs.insert(update.name.clone(), new.clone()),
                None => refs.remove(&update.name),
            };
        }
        let outcomes = vec![RefOutcome::Applied; updates.len()];
        state.log.push(CommittedPush {
            repo: repo.clone(),
            updates,
        });
        Ok(outcomes)
    }
}
