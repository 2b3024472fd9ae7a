//! The pieces assembled: a [`GitHost`] owns the hook socket and hands out the HTTP
//! router, so the control plane wires git in with one call and its own
//! [`GitAuth`] and [`RefLedger`].

use std::sync::Arc;
use std::time::Duration;

use axum::Router;

use crate::hook::server::HookDeps;
use crate::hook::{HookServer, HookServerError, PushRegistry};
use crate::http::{router, GitAuth, GitHttp, GitHttpConfig};
use crate::ledger::RefLedger;
use crate::store::RepoStore;

#[derive(Debug, Clone)]
pub struct GitHostConfig {
    pub http: GitHttpConfig,
    /// How long a push waits for the ledger to commit (default 60 s).
    pub ledger_timeout: Duration,
}

impl GitHostConfig {
    pub fn new(http: GitHttpConfig) -> Self {
        Self {
            http,
            ledger_timeout: Duration::from_secs(60),
        }
    }
}

/// Git hosting on this server. Keep it alive as long as its router serves: dropping
/// it closes the hook socket, after which pushes are refused.
pub struct GitHost {
    http: Arc<GitHttp>,
    hook_server: HookServer,
}

impl GitHost {
    /// Binds the hook socket and prepares the router.
    pub async fn start(
        store: Arc<RepoStore>,
        auth: Arc<dyn GitAuth>,
        ledger: Arc<dyn RefLedger>,
        config: GitHostConfig,
    ) -> Result<Self, HookServerError> {
        let registry = PushRegistry::new();
        let hook_server = HookServer::bind(
            &config.http.hook_socket,
            HookDeps {
                store: Arc::clone(&store),
                ledger,
                registry: Arc::clone(&registry),
                ledger_timeout: config.ledger_timeout,
            },
        )
        .await?;
        let http = Arc::new(GitHttp {
            store,
            auth,
            registry,
            config: config.http,
        });
        Ok(Self { http, hook_server })
    }

    /// The smart-HTTP routes (`/git/{project}/{repo}/...`).
    pub fn router(&self) -> Router {
        router(Arc::clone(&self.http))
    }

    /// The same routes for another door, deciding access with `auth` (the
    /// desktop door: desktop tokens only). Pushes share this host's hook.
    pub fn router_with(&self, auth: Arc<dyn GitAuth>) -> Router {
        router(Arc::new(GitHttp {
            store: Arc::clone(&self.http.store),
            auth,
            registry: Arc::clone(&self.http.registry),
            config: self.http.config.clone(),
        }))
    }

    pub fn store(&self) -> &Arc<RepoStore> {
        &self.http.store
    }

    pub fn hook_server(&self) -> &HookServer {
        &self.hook_server
    }
}
