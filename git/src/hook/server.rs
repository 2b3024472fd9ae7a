//! The server's side of the hook: a unix-socket listener that takes a push's updates
//! from the hook process, finds who is pushing (the [`PushRegistry`] entry the HTTP
//! handler made before it spawned receive-pack), checks the [`crate::policy`], makes
//! sure the objects are here, and asks the [`RefLedger`] to compare-and-swap.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

use super::protocol::{ProposedUpdate, RefReport};
use super::wire::{HookRequest, HookResponse, MAX_REQUEST_BYTES};
use crate::ledger::{LedgerError, RefLedger, RefOutcome};
use crate::policy::{decide_push, Ancestry, Decision, Principal, RepoFacts};
use crate::store::RepoStore;
use crate::types::{NameError, ObjectId, RefName, RefUpdate, RepoId};

/// Who is pushing to which repository, for one receive-pack run.
#[derive(Debug, Clone)]
pub struct PushContext {
    pub repo: RepoId,
    pub principal: Principal,
}

/// The pushes in progress on this server, by push id.
#[derive(Debug, Default)]
pub struct PushRegistry {
    pushes: Mutex<HashMap<String, PushContext>>,
}

/// A registered push; dropping it forgets the push, so a hook can only act for a
/// receive-pack that is still running.
#[derive(Debug)]
pub struct PushRegistration {
    registry: Arc<PushRegistry>,
    push_id: String,
}

impl PushRegistration {
    pub fn push_id(&self) -> &str {
        &self.push_id
    }
}

impl Drop for PushRegistration {
    fn drop(&mut self) {
        self.registry
            .pushes
            .lock()
            .expect("the push registry lock is never held across a panic")
            .remove(&self.push_id);
    }
}

impl PushRegistry {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a push under a fresh random id.
    pub fn register(self: &Arc<Self>, context: PushContext) -> PushRegistration {
        let push_id = uuid::Uuid::new_v4().simple().to_string();
        self.pushes
            .lock()
            .expect("the push registry lock is never held across a panic")
            .insert(push_id.clone(), context);
        PushRegistration {
            registry: Arc::clone(self),
            push_id,
        }
    }

    pub fn lookup(&self, push_id: &str) -> Option<PushContext> {
        self.pushes
            .lock()
            .expect("the push registry lock is never held across a panic")
            .get(push_id)
            .cloned()
    }
}

#[derive(Debug, Error)]
pub enum HookServerError {
    #[error("remove the stale hook socket {path}")]
    RemoveStale {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listen on the hook socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restrict the hook socket {path} to this user")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What answering a hook needs.
pub struct HookDeps {
    pub store: Arc<RepoStore>,
    pub ledger: Arc<dyn RefLedger>,
    pub registry: Arc<PushRegistry>,
    /// How long a push waits for the ledger before its refs are refused as "unknown
    /// outcome". The ledger future is dropped then: implementations must be cancel-safe
    /// (a proposal already made may still commit).
    pub ledger_timeout: Duration,
}

/// The listening hook socket; dropping it stops accepting and removes the socket.
pub struct HookServer {
    socket_path: PathBuf,
    accept_task: JoinHandle<()>,
}

impl HookServer {
    /// Listens on `socket_path` (mode 0600; a stale socket from a previous run is
    /// replaced) and answers hooks until dropped.
    pub async fn bind(socket_path: &Path, deps: HookDeps) -> Result<Self, HookServerError> {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        if let Ok(metadata) = tokio::fs::symlink_metadata(socket_path).await {
            if metadata.file_type().is_socket() {
                tokio::fs::remove_file(socket_path)
                    .await
                    .map_err(|source| HookServerError::RemoveStale {
                        path: socket_path.to_owned(),
                        source,
                    })?;
            }
        }
        let listener = UnixListener::bind(socket_path).map_err(|source| HookServerError::Bind {
            path: socket_path.to_owned(),
            source,
        })?;
        tokio::fs::set_permissions(socket_path, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|source| HookServerError::Permissions {
                path: socket_path.to_owned(),
                source,
            })?;
        let deps = Arc::new(deps);
        let accept_task = tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let deps = Arc::clone(&deps);
                        tokio::spawn(async move {
                            if let Err(error) = answer_hook(stream, &deps).await {
                                tracing::warn!(%error, "a proc-receive hook connection failed");
                            }
                        });
                    }
                    Err(error) => {
                        tracing::warn!(%error, "accept on the hook socket failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Self {
            socket_path: socket_path.to_owned(),
            accept_task,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }
}

impl Drop for HookServer {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Best effort: a leftover socket is replaced by the next bind anyway.
        let _ = std::fs::remove_file(&self.socket_path);
    }
}

async fn answer_hook(stream: UnixStream, deps: &HookDeps) -> std::io::Result<()> {
    let (read_half, mut write_half) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read_half.take(MAX_REQUEST_BYTES))
        .read_line(&mut line)
        .await?;
    let request: HookRequest = serde_json::from_str(&line)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
    let response = decide_and_commit(deps, request).await;
    let mut answer = serde_json::to_vec(&response)
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
    answer.push(b'\n');
    write_half.write_all(&answer).await?;
    write_half.shutdown().await
}

/// Decides one push and, if the policy allows all of it, commits it through the
/// ledger. Always answers one report per update.
pub async fn decide_and_commit(deps: &HookDeps, request: HookRequest) -> HookResponse {
    let names: Vec<String> = request.updates.iter().map(|u| u.name.clone()).collect();
    let Some(push) = deps.registry.lookup(&request.push_id) else {
        return HookResponse {
            reports: refuse_all(
                &names,
                "unknown push: it ended or did not come through this server",
            ),
        };
    };
    let reports = match check_push(deps, &push, &request.updates).await {
        Err(reports) => reports,
        Ok(updates) => commit(deps, &push.repo, updates).await,
    };
    HookResponse { reports }
}

/// Parses, checks ancestry, applies the policy and checks the objects are here.
/// `Ok` carries the updates to propose; `Err` the reports refusing the push.
async fn check_push(
    deps: &HookDeps,
    push: &PushContext,
    proposed: &[ProposedUpdate],
) -> Result<Vec<RefUpdate>, Vec<RefReport>> {
    let names: Vec<String> = proposed.iter().map(|u| u.name.clone()).collect();
    let parsed: Vec<Result<RefUpdate, NameError>> = proposed.iter().map(parse_update).collect();
    if parsed.iter().any(Result::is_err) {
        let reasons = parsed
            .into_iter()
            .map(|update| update.err().map(|error| error.to_string()))
            .collect();
        return Err(all_or_nothing(&names, reasons));
    }
    let updates: Vec<RefUpdate> = parsed.into_iter().map(|u| u.expect("checked")).collect();
    let internal = |what: &str, error: &dyn std::fmt::Display| {
        tracing::warn!(repo = %push.repo, %error, "{what}");
        refuse_all(&names, &format!("{what}: {error}"))
    };
    let default_branch = deps
        .store
        .default_branch(&push.repo)
        .await
        .map_err(|error| internal("the server cannot read the default branch", &error))?;
    let mut with_ancestry = Vec::with_capacity(updates.len());
    for update in updates {
        let ancestry = match (&update.old, &update.new) {
            (Some(old), Some(new)) => match deps.store.is_ancestor(&push.repo, old, new).await {
                Ok(true) => Ancestry::FastForward,
                Ok(false) => Ancestry::Rewrite,
                Err(error) => return Err(internal("the server cannot check ancestry", &error)),
            },
            _ => Ancestry::NotApplicable,
        };
        with_ancestry.push((update, ancestry));
    }
    let existing_refs = deps
        .store
        .list_refs(&push.repo)
        .await
        .map_err(|error| internal("the server cannot list refs", &error))?
        .into_keys()
        .collect();
    let facts = RepoFacts {
        default_branch,
        existing_refs,
    };
    let decisions = decide_push(&push.principal, &facts, &with_ancestry);
    if decisions.iter().any(|d| matches!(d, Decision::Refuse(_))) {
        return Err(names
            .iter()
            .zip(decisions)
            .map(|(name, decision)| match decision {
                Decision::Refuse(reason) => RefReport::Ng {
                    name: name.clone(),
                    reason,
                },
                // decide_push refuses every update once one is refused; this arm is
                // only for the type.
                Decision::Allow => RefReport::Ng {
                    name: name.clone(),
                    reason: "not applied: another ref of this push was refused".to_owned(),
                },
            })
            .collect());
    }
    let updates: Vec<RefUpdate> = with_ancestry.into_iter().map(|(u, _)| u).collect();
    let new_ids: Vec<ObjectId> = updates.iter().filter_map(|u| u.new.clone()).collect();
    deps.store
        .objects_durable(&push.repo, &new_ids)
        .await
        .map_err(|error| internal("the pushed objects are not on this server", &error))?;
    Ok(updates)
}

async fn commit(deps: &HookDeps, repo: &RepoId, updates: Vec<RefUpdate>) -> Vec<RefReport> {
    let names: Vec<String> = updates.iter().map(|u| u.name.to_string()).collect();
    let proposal = deps.ledger.compare_and_swap(repo, updates.clone());
    let outcomes = match tokio::time::timeout(deps.ledger_timeout, proposal).await {
        Err(_) => {
            tracing::warn!(%repo, "the ledger did not answer a push in time");
            return refuse_all(
                &names,
                &format!(
                    "the cluster did not commit this push within {}s; fetch to see whether it landed, then push again",
                    deps.ledger_timeout.as_secs()
                ),
            );
        }
        Ok(Ok(outcomes)) if outcomes.len() == updates.len() => outcomes,
        Ok(Ok(outcomes)) => {
            let error = LedgerError::OutcomeCount {
                expected: updates.len(),
                got: outcomes.len(),
            };
            tracing::error!(%repo, %error, "the ledger broke its contract");
            return refuse_all(&names, &error.to_string());
        }
        Ok(Err(error)) => {
            tracing::warn!(%repo, %error, "the ledger refused a push");
            return refuse_all(
                &names,
                &format!("{error}; fetch to see whether it landed, then push again"),
            );
        }
    };
    updates
        .iter()
        .zip(outcomes)
        .map(|(update, outcome)| {
            let name = update.name.to_string();
            match outcome {
                RefOutcome::Applied => RefReport::Ok { name },
                RefOutcome::Stale { current } => RefReport::Ng {
                    reason: format!(
                        "fetch first: {} is at {} now, not {}; fetch, merge and push again",
                        update.name.short(),
                        describe(current.as_ref()),
                        describe(update.old.as_ref()),
                    ),
                    name,
                },
                RefOutcome::NotApplied => RefReport::Ng {
                    name,
                    reason: "not applied: another ref of this push was stale and pushes are all or nothing; fetch and push again".to_owned(),
                },
            }
        })
        .collect()
}

fn describe(id: Option<&ObjectId>) -> String {
    id.map_or_else(|| "nothing".to_owned(), |id| id.as_str()[..12].to_owned())
}

fn parse_update(proposed: &ProposedUpdate) -> Result<RefUpdate, NameError> {
    let name = RefName::new(proposed.name.clone())?;
    let old = ObjectId::parse_optional(&proposed.old)?;
    let new = ObjectId::parse_optional(&proposed.new)?;
    Ok(RefUpdate { name, old, new })
}

/// Reports for a push refused as a whole: the refused refs with their reasons, the
/// rest naming the first refused ref.
fn all_or_nothing(names: &[String], reasons: Vec<Option<String>>) -> Vec<RefReport> {
    let first = names
        .iter()
        .zip(&reasons)
        .find(|(_, reason)| reason.is_some())
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    names
        .iter()
        .zip(reasons)
        .map(|(name, reason)| RefReport::Ng {
            name: name.clone(),
            reason: reason.unwrap_or_else(|| {
                format!("not applied: {first} was refused in the same push and pushes are all or nothing")
            }),
        })
        .collect()
}

fn refuse_all(names: &[String], reason: &str) -> Vec<RefReport> {
    names
        .iter()
        .map(|name| RefReport::Ng {
            name: name.clone(),
            reason: reason.to_owned(),
        })
        .collect()
}
