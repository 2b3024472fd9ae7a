//! Hosted git on this server: `flotilla-git`'s smart HTTP and hook, wired to
//! the cluster. Refs are Raft state ([`crate::types::Repo`]); this module
//! implements the crate's [`flotilla_git::RefLedger`] over Raft (`ledger.rs`),
//! keeps this server's bare copies at the committed refs (`sync.rs`), and
//! decides who may read and push (`auth.rs`).
//!
//! Layout: `<data dir>/git/<project>/<repo>.git`, the hook socket
//! `<data dir>/git-hook.sock` (mode 0600). The hook program is this binary
//! (`flotilla git-hook proc-receive`).
//!
//! **Architecture Invariant:** a push is acknowledged only once its ref
//! entry is committed and applied here, and the entry is proposed only once
//! a majority of servers hold its objects (this one and f peers that
//! fetched them).

mod auth;
mod ledger;
pub mod pulls;
mod sync;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use flotilla_git::{
    check_git_version, Git, GitHost, GitHostConfig, GitHttpConfig, HookProgram, RepoStore,
    StoreConfig,
};

use crate::control::ControlPlane;
pub use sync::GitSync;

/// Why hosted git could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostingError {
    #[error(transparent)]
    Version(#[from] flotilla_git::VersionError),
    #[error("find this program's path for the git hook")]
    CurrentExe(#[source] std::io::Error),
    #[error("start the git hook socket")]
    Hook(#[from] flotilla_git::hook::HookServerError),
}

/// Hosted git, alive as long as the server serves it.
pub struct Hosting {
    host: GitHost,
    control: Arc<ControlPlane>,
    pub sync: Arc<GitSync>,
    pub pulls: Arc<pulls::Pulls>,
    pub upstreams: Arc<upstream::Upstreams>,
}

impl Hosting {
    /// Checks git, prepares the store and the hook socket.
    pub async fn start(
        control: Arc<ControlPlane>,
        data_dir: &Path,
    ) -> Result<Hosting, HostingError> {
        let git = Git::new("git");
        let version = check_git_version(&git).await?;
        tracing::info!(%version, "hosted git: using the system git");
        let program = std::env::current_exe().map_err(HostingError::CurrentExe)?;
        let store = Arc::new(RepoStore::new(
            data_dir.join("git"),
            StoreConfig {
                git,
                default_branch: "main".to_owned(),
                hook: HookProgram {
                    program,
                    args: vec!["git-hook".to_owned(), "proc-receive".to_owned()],
                },
            },
        ));
        let sync = Arc::new(GitSync::new(control.clone(), store.clone()));
        let ledger = Arc::new(ledger::RaftLedger::new(control.clone(), sync.clone()));
        let ledger_for_pulls = ledger.clone();
        let auth = Arc::new(auth::ClusterAuth::new(control.clone(), sync.clone()));
        let host = GitHost::start(
            store,
            auth,
            ledger,
            GitHostConfig::new(GitHttpConfig::new(data_dir.join("git-hook.sock"))),
        )
        .await?;
        let pulls = Arc::new(pulls::Pulls::new(sync.clone(), ledger_for_pulls.clone()));
        let upstreams = Arc::new(upstream::Upstreams::new(
            sync.clone(),
            ledger_for_pulls,
            data_dir.join("git-import"),
        ));
        Ok(Hosting {
            host,
            control,
            sync,
            pulls,
            upstreams,
        })
    }

    /// `/git/{project}/{repo}/...` (smart HTTP) and the servers' own
    /// `/internal/git/fetch` (a peer asks this server to copy a push's
    /// objects before it proposes the refs).
    pub fn router(&self) -> Router {
        self.host
            .router()
            .merge(ledger::internal_routes(self.sync.clone()))
    }

    /// `/git/{project}/{repo}/...` for the desktop door: desktop tokens only.
    pub fn desktop_router(&self) -> Router {
        self.host.router_with(Arc::new(auth::DesktopAuth::new(
            self.control.clone(),
            self.sync.clone(),
        )))
    }
}
