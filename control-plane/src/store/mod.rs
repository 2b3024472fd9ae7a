//! Raft storage: the log ([`log`]) and the state machine with its snapshots
//! ([`state_machine`]), each in its own redb file.

pub mod log;
pub mod state_machine;

pub use log::{LogStore, LogStoreError};
pub use state_machine::{SharedState, StateMachineStore, StateStoreError, WatchError, Watcher};
