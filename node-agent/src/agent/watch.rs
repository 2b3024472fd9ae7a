//! The assignment watch: a server stream from the leader carrying the
//! node's whole set of assignments on every change, re-opened from the
//! newest revision seen (or the lease's) after an error or a new lease.

use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::node as pb;
use tonic::Status;

use super::{Received, Shared, RETRY};

pub(super) async fn watch_loop(shared: Arc<Shared>) {
    loop {
        let addr = shared.servers.pick();
        let after_revision = {
            let lease = shared.lease.lock().unwrap_or_else(|p| p.into_inner());
            let received = shared
                .assignments
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map_or(0, |received| received.revision);
            lease.required_revision.max(received)
        };
        let request = pb::WatchAssignmentsRequest {
            node_id: shared.node_id.clone(),
            after_revision,
        };
        let stream = match shared.servers.client(&addr) {
            Ok(mut client) => tokio::time::timeout(
                Duration::from_secs(5),
                client.watch_assignments(shared.servers.request(request)),
            )
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("watch timed out"))),
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        };
        let mut stream = match stream {
            Ok(stream) => stream.into_inner(),
            Err(status) => {
                tracing::debug!(server = %addr, error = %status.message(), "watch failed");
                shared.servers.failed(&addr, &status);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        loop {
            tokio::select! {
                message = stream.message() => match message {
                    Ok(Some(assignments)) => {
                        tracing::debug!(revision = assignments.revision, desktops = assignments.desktops.len(), "assignments");
                        *shared.assignments.lock().unwrap_or_else(|p| p.into_inner()) = Some(Received {
                            revision: assignments.revision,
                            desktops: assignments.desktops,
                        });
                        shared.reconcile_now.notify_one();
                    }
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(server = %addr, error = %status.message(), "watch ended");
                        shared.servers.failed(&addr, &status);
                        break;
                    }
                },
                _ = shared.rewatch.notified() => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
