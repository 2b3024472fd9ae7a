//! Raft storage: the log ([`log`]) and the state machine with its snapshots
//! ([`state_machine`]), each in its own redb file.

// openraft's traits fix `StorageError` (large) as the error type; helpers
// that feed those traits return it as is.
#![allow(clippy::result_large_err)]

pub mod log;
pub mod state_machine;

pub use log::{LogStore, LogStoreError};
pub use state_machine::{SharedState, StateMachineStore, StateStoreError, WatchError, Watcher};
