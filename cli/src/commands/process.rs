//! What the long-running commands (`server`, `dev`, `node-agent`) share:
//! logging to stderr, the shutdown signal and reading token files.

use std::path::Path;

use anyhow::Context;

/// Logs to stderr, filtered by `RUST_LOG` (default: info, openraft warn).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// The token in the file at `path` (surrounding whitespace trimmed);
/// `kind` names it in errors (`node-join`, `server-join`).
pub fn read_token_file(path: &Path, kind: &str) -> anyhow::Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("read the {kind} token from {}", path.display()))?
        .trim()
        .to_owned();
    if token.is_empty() {
        anyhow::bail!("{} is empty; it must hold a {kind} token", path.display());
    }
    Ok(token)
}
