//! The Raft log on disk (redb), with group commit.
//!
//! openraft hands us appends one at a time and lets us acknowledge them later
//! through [`LogFlushed`]. Appends go into an in-memory tail at once (so they
//! are readable when `append` returns, as openraft requires) and onto a
//! channel to one writer thread. The writer drains everything queued, writes
//! it in a single redb transaction and fsyncs once, then acknowledges the
//! whole batch: under load many client writes share one fsync.
//!
//! Every write (append, truncate, purge, vote, committed) goes through the
//! same ordered channel, so disk writes happen in exactly the order openraft
//! issued them. Votes wait for their fsync before `save_vote` returns.
//!
//! The in-memory tail holds every entry not yet purged; snapshots bound it
//! (openraft purges the log behind each snapshot).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig};

const LOG_TABLE: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META_TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";

#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("open raft log {path}")]
    Open {
        path: String,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("read raft log {path}")]
    Read {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("raft log {path} holds an entry at {index} that cannot be decoded (written by a newer server, or corrupt)")]
    Decode {
        path: String,
        index: u64,
        #[source]
        source: serde_json::Error,
    },
    #[error("start raft log writer thread")]
    Spawn(#[source] std::io::Error),
}

/// Shared between the store, its readers and the writer thread.
#[derive(Debug, Default)]
struct Tail {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

enum WriteOp {
    Append {
        entries: Vec<(u64, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    /// Delete entries at and after this index.
    Truncate(u64),
    /// Delete entries up to and including the log id, remember it.
    Purge(LogId),
    SaveVote {
        vote: Vec<u8>,
        done: oneshot::Sender<Result<(), Arc<WriteBatchError>>>,
    },
    SaveCommitted(Vec<u8>),
}

/// openraft's [`RaftLogStorage`] over redb.
pub struct LogStore {
    tail: Arc<Mutex<Tail>>,
    writer: mpsc::Sender<WriteOp>,
    writer_thread: Option<JoinHandle<()>>,
}

/// Cheap clone for replication tasks: reads the in-memory tail.
#[derive(Clone)]
pub struct LogReader {
    tail: Arc<Mutex<Tail>>,
}

impl LogStore {
    /// Opens (or creates) the log at `path` and starts its writer thread.
    pub fn open(path: &Path) -> Result<LogStore, LogStoreError> {
        let path_text = path.display().to_string();
        let database = Database::create(path).map_err(|source| LogStoreError::Open {
            path: path_text.clone(),
            source,
        })?;
        let tail = load_tail(&database, &path_text)?;
        let (writer, requests) = mpsc::channel();
        let writer_thread = std::thread::Builder::new()
            .name("raft-log-writer".to_owned())
            .spawn(move || run_writer(database, requests))
            .map_err(LogStoreError::Spawn)?;
        Ok(LogStore {
            tail: Arc::new(Mutex::new(tail)),
            writer,
            writer_thread: Some(writer_thread),
        })
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError> {
        self.writer.send(op).map_err(|_| {
            io_error(StorageIOError::write_logs(AnyError::error(
                "raft log writer thread has stopped",
            )))
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        lock_tail(&self.tail)
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it drained what is queued.
        let (sender, _) = mpsc::channel();
        drop(std::mem::replace(&mut self.writer, sender));
        if let Some(handle) = self.writer_thread.take() {
            let _ = handle.join();
        }
    }
}

fn lock_tail(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    // A panic while holding the lock leaves plain data, still consistent.
    tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_error(error: StorageIOError<NodeId>) -> StorageError {
    StorageError::IO { source: error }
}

fn load_tail(database: &Database, path: &str) -> Result<Tail, LogStoreError> {
    let read_error = |source: Box<dyn std::error::Error + Send + Sync>| LogStoreError::Read {
        path: path.to_owned(),
        source,
    };
    // Create the tables on first open so that reads below find them.
    let setup = database.begin_write().map_err(|e| read_error(e.into()))?;
    setup
        .open_table(LOG_TABLE)
        .map_err(|e| read_error(e.into()))?;
    setup
        .open_table(META_TABLE)
        .map_err(|e| read_error(e.into()))?;
    setup.commit().map_err(|e| read_error(e.into()))?;

    let transaction = database.begin_read().map_err(|e| read_error(e.into()))?;
    let log = transaction
        .open_table(LOG_TABLE)
        .map_err(|e| read_error(e.into()))?;
    let meta = transaction
        .open_table(META_TABLE)
        .map_err(|e| read_error(e.into()))?;
    let mut tail = Tail::default();
    for item in log.iter().map_err(|e| read_error(e.into()))? {
        let (key, value) = item.map_err(|e| read_error(e.into()))?;
        let index = key.value();
        let entry: Entry =
            serde_json::from_slice(value.value()).map_err(|source| LogStoreError::Decode {
                path: path.to_owned(),
                index,
                source,
            })?;
        tail.entries.insert(index, entry);
    }
    let decode_meta = |key: &str| -> Result<Option<Vec<u8>>, LogStoreError> {
        Ok(meta
            .get(key)
            .map_err(|e| read_error(e.into()))?
            .map(|value| value.value().to_vec()))
    };
    fn decode<T: serde::de::DeserializeOwned>(
        path: &str,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<T, LogStoreError> {
        serde_json::from_slice(&bytes).map_err(|source| LogStoreError::Read {
            path: path.to_owned(),
            source: format!("meta key {key}: {source}").into(),
        })
    }
    if let Some(bytes) = decode_meta(KEY_VOTE)? {
        tail.vote = Some(decode(path, KEY_VOTE, bytes)?);
    }
    if let Some(bytes) = decode_meta(KEY_COMMITTED)? {
        tail.committed = decode(path, KEY_COMMITTED, bytes)?;
    }
    if let Some(bytes) = decode_meta(KEY_PURGED)? {
        tail.last_purged = decode(path, KEY_PURGED, bytes)?;
    }
    Ok(tail)
}

/// The writer thread: drain, write one transaction, fsync, acknowledge.
fn run_writer(database: Database, requests: mpsc::Receiver<WriteOp>) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        while let Ok(more) = requests.try_recv() {
            batch.push(more);
        }
        let result = write_batch(&database, &batch).map_err(Arc::new);
        if let Err(error) = &result {
            tracing::error!(%error, "raft log write failed; the server cannot make progress");
        }
        for op in batch {
            match op {
                WriteOp::Append { callback, .. } => {
                    let outcome = result.clone().map_err(std::io::Error::other);
                    callback.log_io_completed(outcome);
                }
                WriteOp::SaveVote { done, .. } => {
                    let _ = done.send(result.clone());
                }
                WriteOp::Truncate(_) | WriteOp::Purge(_) | WriteOp::SaveCommitted(_) => {}
            }
        }
    }
}

/// Why a batch of log writes failed. Every op of the batch gets the same
/// error (shared, hence the `Arc` at the call site).
#[derive(Debug, thiserror::Error)]
pub enum WriteBatchError {
    #[error("begin a raft log transaction")]
    Begin(#[from] redb::TransactionError),
    #[error("open a raft log table")]
    Table(#[from] redb::TableError),
    #[error("write the raft log")]
    Write(#[from] redb::StorageError),
    #[error("encode the purge point")]
    Encode(#[from] serde_json::Error),
    #[error("commit (fsync) the raft log")]
    Commit(#[from] redb::CommitError),
}

fn write_batch(database: &Database, batch: &[WriteOp]) -> Result<(), WriteBatchError> {
    let transaction = database.begin_write()?;
    {
        let mut log = transaction.open_table(LOG_TABLE)?;
        let mut meta = transaction.open_table(META_TABLE)?;
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        log.insert(*index, bytes.as_slice())?;
                    }
                }
                WriteOp::Truncate(since) => {
                    log.retain_in(*since.., |_, _| false)?;
                }
                WriteOp::Purge(upto) => {
                    log.retain_in(..=upto.index, |_, _| false)?;
                    meta.insert(KEY_PURGED, serde_json::to_vec(&Some(*upto))?.as_slice())?;
                }
                WriteOp::SaveVote { vote, .. } => {
                    meta.insert(KEY_VOTE, vote.as_slice())?;
                }
                WriteOp::SaveCommitted(bytes) => {
                    meta.insert(KEY_COMMITTED, bytes.as_slice())?;
                }
            }
        }
    }
    // Durability::Immediate is redb's default: commit returns after fsync.
    transaction.commit()?;
    Ok(())
}

fn read_range<RB: RangeBounds<u64>>(tail: &Tail, range: RB) -> Vec<Entry> {
    let start = match range.start_bound() {
        Bound::Included(&start) => Bound::Included(start),
        Bound::Excluded(&start) => Bound::Excluded(start),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(&end) => Bound::Included(end),
        Bound::Excluded(&end) => Bound::Excluded(end),
        Bound::Unbounded => Bound::Unbounded,
    };
    tail.entries
        .range((start, end))
        .map(|(_, entry)| entry.clone())
        .collect()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&lock_tail(&self.tail), range))
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(read_range(&self.lock(), range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let tail = self.lock();
        let last_log_id = tail
            .entries
            .last_key_value()
            .map(|(_, entry)| entry.log_id)
            .or(tail.last_purged);
        Ok(LogState {
            last_purged_log_id: tail.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        LogReader {
            tail: self.tail.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(vote).map_err(|e| io_error(StorageIOError::write_vote(&e)))?;
        let (done, wait) = oneshot::channel();
        self.send(WriteOp::SaveVote { vote: bytes, done })?;
        match wait.await {
            Ok(Ok(())) => {
                self.lock().vote = Some(*vote);
                Ok(())
            }
            Ok(Err(error)) => Err(io_error(StorageIOError::write_vote(AnyError::new(&*error)))),
            Err(_) => Err(io_error(StorageIOError::write_vote(AnyError::error(
                "raft log writer thread has stopped",
            )))),
        }
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        let bytes =
            serde_json::to_vec(&committed).map_err(|e| io_error(StorageIOError::write_logs(&e)))?;
        self.lock().committed = committed;
        self.send(WriteOp::SaveCommitted(bytes))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut tail = self.lock();
            for entry in entries {
                let bytes = serde_json::to_vec(&entry)
                    .map_err(|e| io_error(StorageIOError::write_log_entry(entry.log_id, &e)))?;
                encoded.push((entry.log_id.index, bytes));
                tail.entries.insert(entry.log_id.index, entry);
            }
        }
        self.send(WriteOp::Append {
            entries: encoded,
            callback,
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.lock().entries.split_off(&log_id.index);
        self.send(WriteOp::Truncate(log_id.index))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut tail = self.lock();
            let kept = tail.entries.split_off(&(log_id.index + 1));
            tail.entries = kept;
            tail.last_purged = Some(log_id);
        }
        self.send(WriteOp::Purge(log_id))
    }
}
