//! Heartbeats, which hold the lease: each one reports what the runtime
//! observed and, acknowledged, grants desktops `ttl / 2` from its sending
//! (written to the lease file for the sandboxes, which stop themselves
//! when it passes). A lease regained after a lapse requires assignments
//! at least as new as the heartbeat's revision.

use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::node as pb;
use tonic::{Code, Status};

use super::register::register;
use super::{Shared, RETRY};

/// The file holding the lease's CLOCK_MONOTONIC deadline for sandboxes.
pub const LEASE_FILE: &str = "lease";

/// Writes the lease deadline for sandboxes (temporary file and rename).
fn write_lease(path: &std::path::Path, until: Instant) {
    let left = until.saturating_duration_since(Instant::now());
    let deadline = crate::clock::monotonic_ns() + left.as_nanos();
    let written = crate::fsutil::write_volatile(path, format!("{deadline}\n").as_bytes());
    if let Err(error) = written {
        tracing::warn!(%error, path = %path.display(), "cannot write the lease file");
    }
}

pub(super) async fn heartbeat_loop(shared: Arc<Shared>, registration: pb::RegisterRequest) {
    let mut timeout = Duration::from_secs(2);
    loop {
        let addr = shared.servers.pick();
        let desktops = shared
            .report
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let request = pb::HeartbeatRequest {
            node_id: shared.node_id.clone(),
            desktops,
        };
        let sent = Instant::now();
        let result = match shared.servers.client(&addr) {
            Ok(mut client) => {
                tokio::time::timeout(timeout, client.heartbeat(shared.servers.request(request)))
                    .await
                    .unwrap_or_else(|_| Err(Status::unavailable("heartbeat timed out")))
            }
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        };
        let pause = match result {
            Ok(response) => {
                shared.servers.succeeded(&addr);
                let response = response.into_inner();
                let ttl = Duration::from_millis(response.ttl_ms);
                timeout = (ttl / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
                let regained = {
                    let mut lease = shared.lease.lock().unwrap_or_else(|p| p.into_inner());
                    let lapsed = lease.until.is_none_or(|until| until <= sent);
                    if lapsed {
                        lease.required_revision = response.revision;
                    }
                    lease.until = Some(sent + ttl / 2);
                    if let Some(path) = &shared.lease_file {
                        write_lease(path, sent + ttl / 2);
                    }
                    lapsed
                };
                if regained {
                    tracing::info!(revision = response.revision, "lease granted");
                    shared.rewatch.notify_one();
                }
                Duration::from_millis(response.next_heartbeat_ms.max(20))
            }
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!("the control plane does not know this node; registering again");
                if let Err(error) = register(&shared, &registration).await {
                    tracing::error!(%error, "cannot register again");
                }
                RETRY
            }
            Err(status) => {
                tracing::debug!(server = %addr, error = %status.message(), "heartbeat failed");
                shared.servers.failed(&addr, &status);
                RETRY
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shared.heartbeat_now.notified() => {
                // Coalesce bursts of state changes into one report.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
