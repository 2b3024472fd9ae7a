//! Flotilla's hosted git. Clients speak smart HTTP to any server; the server runs the
//! real `git` (`upload-pack` / `receive-pack --stateless-rpc`) on its own bare copy of
//! the repository. receive-pack stores the pack but writes no ref: every ref update
//! goes through the `proc-receive` hook to a [`RefLedger`] that the control plane
//! implements over Raft (compare-and-swap on the old value, acknowledged once
//! committed), and every server applies committed updates with [`RepoStore::apply`].
//!
//! Map:
//! - [`version`]: refuse a git too old for what follows.
//! - [`types`]: validated names (repository ids, refs, object ids) and [`RefUpdate`].
//! - [`store`]: the bare repositories on disk: create, configure, apply, fetch, fsck.
//! - [`policy`]: who may move which ref (pure).
//! - [`ledger`]: the compare-and-swap contract and the in-memory [`MemoryLedger`].
//! - [`hook`]: the `proc-receive` protocol, the hook process and the server's socket.
//! - [`http`]: the axum router.
//! - [`host`]: all of it wired together, [`GitHost`].
//! - [`pr`]: pull-request diffs, mergeability and merges without a working tree.
//!
//! **Architecture Invariant:** no code path here writes a hosted ref except
//! [`RepoStore::apply`], and nothing calls it but the ledger's commit path.

pub mod command;
pub mod hook;
pub mod host;
pub mod http;
pub mod ledger;
pub mod policy;
pub mod pr;
pub mod store;
pub mod types;
pub mod version;

pub use command::{Git, GitCommandError};
pub use hook::{run_proc_receive_hook, run_proc_receive_hook_from_env, HookError};
pub use host::{GitHost, GitHostConfig};
pub use http::{Access, GitAuth, GitAuthError, GitHttpConfig};
pub use ledger::{CommittedPush, LedgerError, MemoryLedger, RefLedger, RefOutcome};
pub use policy::{Decision, Principal};
pub use store::{HookProgram, PeerRemote, RepoStore, StoreConfig, StoreError};
pub use types::{NameError, ObjectId, ProjectId, RefName, RefUpdate, RepoId, RepoName, TaskId};
pub use version::{check_git_version, GitVersion, VersionError, MINIMUM_GIT_VERSION};
