//! The state machine store: the pure [`State`] held in memory, snapshots kept
//! in redb, and the change feed that watchers read.
//!
//! Applying does not write to disk: the Raft log is the durable record. A
//! snapshot is written to redb (fsynced) each time openraft builds or installs
//! one, and on start the state is rebuilt from that snapshot plus the
//! committed log after it, which openraft replays. Reads are served from
//! memory without touching disk.

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::state::State;
use crate::types::{
    Change, Entry, LogId, NodeId, ProposalResponse, StorageError, StoredMembership, TypeConfig,
    SNAPSHOT_SCHEMA_VERSION,
};

const SNAPSHOT_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshot");
const KEY_META: &str = "meta";
const KEY_DATA: &str = "data";

/// How many changes watchers can resume across. Older revisions are
/// compacted and a watcher asking for them is told to relist.
pub const RETAINED_CHANGES: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("open state database {path}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("read snapshot from {path}")]
    Read {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("snapshot in {path} is unreadable")]
    Decode {
        path: String,
        #[source]
        source: SnapshotDecodeError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotDecodeError {
    #[error("snapshot is not valid JSON of the expected shape")]
    Json(#[from] serde_json::Error),
    #[error("snapshot schema {found} is newer than this server understands ({supported}); upgrade this server")]
    NewerSchema { found: u32, supported: u32 },
}

/// What a snapshot's data holds.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    schema_version: u32,
    state: State,
}

fn decode_snapshot(bytes: &[u8]) -> Result<State, SnapshotDecodeError> {
    let file: SnapshotFile = serde_json::from_slice(bytes)?;
    if file.schema_version > SNAPSHOT_SCHEMA_VERSION {
        return Err(SnapshotDecodeError::NewerSchema {
            found: file.schema_version,
            supported: SNAPSHOT_SCHEMA_VERSION,
        });
    }
    Ok(file.state)
}

/// All changes made by one log entry.
#[derive(Debug)]
pub struct ChangeBatch {
    pub revision: u64,
    pub changes: Vec<Change>,
}

/// What the change feed broadcasts.
#[derive(Debug, Clone)]
pub enum Broadcast {
    Batch(Arc<ChangeBatch>),
    /// The state was replaced by a snapshot: watchers must relist.
    Reset {
        revision: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WatchError {
    #[error("revision {requested} is compacted; list again and watch from revision {current}")]
    Compacted { requested: u64, current: u64 },
    #[error("the server is shutting down")]
    Closed,
}

struct Inner {
    state: State,
    last_applied: Option<LogId>,
    last_membership: StoredMembership,
    recent: VecDeque<Arc<ChangeBatch>>,
    recent_change_count: usize,
    /// Watchers asking for changes after a revision below this must relist.
    compacted_through: u64,
    current_snapshot: Option<(SnapshotMeta<NodeId, openraft::BasicNode>, Vec<u8>)>,
}

/// Handle shared by the Raft core, the API and watchers.
pub struct SharedState {
    inner: RwLock<Inner>,
    feed: broadcast::Sender<Broadcast>,
}

impl SharedState {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `reader` against the current state.
    pub fn with_state<T>(&self, reader: impl FnOnce(&State) -> T) -> T {
        reader(&self.read().state)
    }

    pub fn last_applied_index(&self) -> u64 {
        self.read().last_applied.map_or(0, |log_id| log_id.index)
    }

    /// Every change batch from now on (level-triggered users re-read the
    /// state on each message and treat a lag as "something changed").
    pub fn subscribe(&self) -> broadcast::Receiver<Broadcast> {
        self.feed.subscribe()
    }

    /// Starts a watch that yields every change with a revision above
    /// `after_revision`.
    pub fn watch(self: &Arc<Self>, after_revision: u64) -> Result<Watcher, WatchError> {
        let inner = self.read();
        if after_revision < inner.compacted_through {
            return Err(WatchError::Compacted {
                requested: after_revision,
                current: inner.state.revision(),
            });
        }
        let backlog: VecDeque<Arc<ChangeBatch>> = inner
            .recent
            .iter()
            .filter(|batch| batch.revision > after_revision)
            .cloned()
            .collect();
        // Subscribing under the lock: no batch is missed or seen twice.
        let receiver = self.feed.subscribe();
        Ok(Watcher {
            shared: self.clone(),
            backlog,
            current: VecDeque::new(),
            receiver,
            delivered_revision: after_revision,
        })
    }
}

/// A resumable stream of changes.
pub struct Watcher {
    shared: Arc<SharedState>,
    backlog: VecDeque<Arc<ChangeBatch>>,
    current: VecDeque<Change>,
    receiver: broadcast::Receiver<Broadcast>,
    /// Every change up to this revision has been handed out.
    delivered_revision: u64,
}

impl Watcher {
    pub async fn next(&mut self) -> Result<Change, WatchError> {
        loop {
            if let Some(change) = self.current.pop_front() {
                if self.current.is_empty() {
                    self.delivered_revision = change.revision;
                }
                return Ok(change);
            }
            if let Some(batch) = self.backlog.pop_front() {
                self.current.extend(batch.changes.iter().cloned());
                continue;
            }
            match self.receiver.recv().await {
                Ok(Broadcast::Batch(batch)) => self.current.extend(batch.changes.iter().cloned()),
                Ok(Broadcast::Reset { revision }) => {
                    return Err(WatchError::Compacted {
                        requested: self.delivered_revision,
                        current: revision,
                    })
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Too slow for the live feed: catch up from the ring.
                    let resumed = self.shared.watch(self.delivered_revision)?;
                    *self = resumed;
                }
                Err(broadcast::error::RecvError::Closed) => return Err(WatchError::Closed),
            }
        }
    }
}

/// openraft's [`RaftStateMachine`].
#[derive(Clone)]
pub struct StateMachineStore {
    shared: Arc<SharedState>,
    database: Arc<Database>,
    snapshot_counter: Arc<AtomicU64>,
}

impl StateMachineStore {
    pub fn open(path: &Path) -> Result<StateMachineStore, StateStoreError> {
        let path_text = path.display().to_string();
        let database = Database::create(path).map_err(|source| StateStoreError::Open {
            path: path_text.clone(),
            source,
        })?;
        let read_error = |source: Box<dyn std::error::Error + Send + Sync>| StateStoreError::Read {
            path: path_text.clone(),
            source,
        };
        let setup = database.begin_write().map_err(|e| read_error(e.into()))?;
        setup
            .open_table(SNAPSHOT_TABLE)
            .map_err(|e| read_error(e.into()))?;
        setup.commit().map_err(|e| read_error(e.into()))?;

        let transaction = database.begin_read().map_err(|e| read_error(e.into()))?;
        let table = transaction
            .open_table(SNAPSHOT_TABLE)
            .map_err(|e| read_error(e.into()))?;
        let meta = table.get(KEY_META).map_err(|e| read_error(e.into()))?;
        let data = table.get(KEY_DATA).map_err(|e| read_error(e.into()))?;
        let mut inner = Inner {
            state: State::default(),
            last_applied: None,
            last_membership: StoredMembership::default(),
            recent: VecDeque::new(),
            recent_change_count: 0,
            compacted_through: 0,
            current_snapshot: None,
        };
        if let (Some(meta), Some(data)) = (meta, data) {
            let meta: SnapshotMeta<NodeId, openraft::BasicNode> =
                serde_json::from_slice(meta.value()).map_err(|source| StateStoreError::Decode {
                    path: path_text.clone(),
                    source: source.into(),
                })?;
            let data = data.value().to_vec();
            inner.state = decode_snapshot(&data).map_err(|source| StateStoreError::Decode {
                path: path_text.clone(),
                source,
            })?;
            inner.last_applied = meta.last_log_id;
            inner.last_membership = meta.last_membership.clone();
            inner.compacted_through = meta.last_log_id.map_or(0, |log_id| log_id.index);
            inner.current_snapshot = Some((meta, data));
        }
        drop(table);
        drop(transaction);
        let (feed, _) = broadcast::channel(1024);
        Ok(StateMachineStore {
            shared: Arc::new(SharedState {
                inner: RwLock::new(inner),
                feed,
            }),
            database: Arc::new(database),
            snapshot_counter: Arc::new(AtomicU64::new(0)),
        })
    }

    pub fn shared(&self) -> Arc<SharedState> {
        self.shared.clone()
    }

    fn persist_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError> {
        let fail = |error: Box<dyn std::error::Error>| StorageError::IO {
            source: StorageIOError::write_snapshot(
                Some(meta.signature()),
                AnyError::error(error.to_string()),
            ),
        };
        let write = || -> Result<(), Box<dyn std::error::Error>> {
            let meta_bytes = serde_json::to_vec(meta)?;
            let transaction = self.database.begin_write()?;
            {
                let mut table = transaction.open_table(SNAPSHOT_TABLE)?;
                table.insert(KEY_META, meta_bytes.as_slice())?;
                table.insert(KEY_DATA, data)?;
            }
            transaction.commit()?;
            Ok(())
        };
        write().map_err(fail)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (state, last_applied, last_membership) = {
            let inner = self.shared.read();
            (
                inner.state.clone(),
                inner.last_applied,
                inner.last_membership.clone(),
            )
        };
        let file = SnapshotFile {
            schema_version: SNAPSHOT_SCHEMA_VERSION,
            state,
        };
        let data = serde_json::to_vec(&file).map_err(|e| StorageError::IO {
            source: StorageIOError::write_snapshot(None, &e),
        })?;
        let counter = self.snapshot_counter.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match last_applied {
            Some(log_id) => format!("{}-{}-{counter}", log_id.leader_id.term, log_id.index),
            None => format!("0-0-{counter}"),
        };
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership,
            snapshot_id,
        };
        self.persist_snapshot(&meta, &data)?;
        self.shared.write().current_snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.shared.read();
        Ok((inner.last_applied, inner.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<ProposalResponse>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut inner = self.shared.write();
        for entry in entries {
            let index = entry.log_id.index;
            inner.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => ProposalResponse {
                    responses: Vec::new(),
                },
                EntryPayload::Membership(membership) => {
                    inner.last_membership = StoredMembership::new(Some(entry.log_id), membership);
                    ProposalResponse {
                        responses: Vec::new(),
                    }
                }
                EntryPayload::Normal(proposal) => {
                    let mut changes = Vec::new();
                    let mut responses = Vec::with_capacity(proposal.requests.len());
                    for request in &proposal.requests {
                        let (response, mut request_changes) = inner.state.apply(index, request);
                        changes.append(&mut request_changes);
                        responses.push(response);
                    }
                    if !changes.is_empty() {
                        let batch = Arc::new(ChangeBatch {
                            revision: index,
                            changes,
                        });
                        remember_batch(&mut inner, batch.clone());
                        // No receivers is fine: nobody is watching.
                        let _ = self.shared.feed.send(Broadcast::Batch(batch));
                    }
                    ProposalResponse { responses }
                }
            };
            responses.push(response);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachineStore {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let state = decode_snapshot(&data).map_err(|error| StorageError::IO {
            source: StorageIOError::read_snapshot(Some(meta.signature()), &error),
        })?;
        self.persist_snapshot(meta, &data)?;
        let mut inner = self.shared.write();
        let revision = state.revision();
        inner.state = state;
        inner.last_applied = meta.last_log_id;
        inner.last_membership = meta.last_membership.clone();
        inner.recent.clear();
        inner.recent_change_count = 0;
        inner.compacted_through = meta.last_log_id.map_or(0, |log_id| log_id.index);
        inner.current_snapshot = Some((meta.clone(), data));
        let _ = self.shared.feed.send(Broadcast::Reset { revision });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let inner = self.shared.read();
        Ok(inner
            .current_snapshot
            .as_ref()
            .map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(data.clone())),
            }))
    }
}

fn remember_batch(inner: &mut Inner, batch: Arc<ChangeBatch>) {
    inner.recent_change_count += batch.changes.len();
    inner.recent.push_back(batch);
    while inner.recent_change_count > RETAINED_CHANGES {
        let Some(oldest) = inner.recent.pop_front() else {
            break;
        };
        inner.recent_change_count -= oldest.changes.len();
        inner.compacted_through = oldest.revision;
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, RaftSnapshotBuilder};

    use super::*;
    use crate::types::{ClientRequest, Column, Command, Proposal, LOG_FORMAT_VERSION};

    fn entry(index: u64, title: &str) -> Entry {
        let request = ClientRequest {
            format: LOG_FORMAT_VERSION,
            request_id: format!("r{index}"),
            issued_at_ms: 0,
            command: Command::CreateTask {
                id: format!("t{index}"),
                title: title.to_owned(),
                description: String::new(),
                repository: None,
                column: Column::Backlog,
                resources: Default::default(),
            },
        };
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal {
                requests: vec![request],
            }),
        }
    }

    #[tokio::test]
    async fn watchers_resume_and_are_told_to_relist_after_a_snapshot_install() {
        let directory = tempfile::tempdir().expect("tempdir");
        let mut store = StateMachineStore::open(&directory.path().join("a.redb")).expect("open");
        let shared = store.shared();
        store
            .apply((1..=3).map(|index| entry(index, "a")))
            .await
            .expect("apply");

        // Resuming from 1 replays revisions 2 and 3, then goes live.
        let mut watcher = shared.watch(1).expect("revision 1 is retained");
        assert_eq!(watcher.next().await.expect("change").revision, 2);
        assert_eq!(watcher.next().await.expect("change").revision, 3);
        store.apply([entry(4, "a")]).await.expect("apply");
        assert_eq!(watcher.next().await.expect("change").revision, 4);

        // A snapshot from a server that moved further replaces the state.
        let mut other = StateMachineStore::open(&directory.path().join("b.redb")).expect("open");
        other
            .apply((1..=9).map(|index| entry(index, "b")))
            .await
            .expect("apply");
        let snapshot = other.build_snapshot().await.expect("build");
        store
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("install");
        assert!(matches!(
            watcher.next().await,
            Err(WatchError::Compacted { current: 9, .. })
        ));
        assert!(matches!(
            shared.watch(4),
            Err(WatchError::Compacted { requested: 4, .. })
        ));
        assert_eq!(shared.with_state(|state| state.task_count()), 9);

        // The installed snapshot survives a reopen.
        drop(store);
        let reopened = StateMachineStore::open(&directory.path().join("a.redb")).expect("reopen");
        assert_eq!(reopened.shared().last_applied_index(), 9);
        assert!(reopened.shared().watch(9).is_ok());
    }
}
