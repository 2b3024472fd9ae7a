//! Raft: the log store and the state-machine store (each in its own redb
//! file), the outgoing network to peers, and the proposer that batches
//! client writes into log entries.

// openraft's traits fix `StorageError` (large) as the error type; helpers
// that feed those traits return it as is.
#![allow(clippy::result_large_err)]

pub mod log_store;
pub mod network;
pub mod proposer;
pub mod state_machine;

pub use log_store::{LogStore, LogStoreError};
pub use state_machine::{SharedState, StateMachineStore, StateStoreError, WatchError, Watcher};
