//! The agent's end of the operator tunnel: one bidirectional gRPC stream
//! held open to the leader; each session that comes down it runs as its
//! own task in [`crate::tunnel`], and a cancel (or the stream ending)
//! aborts it, which kills its process group.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_proto::node as pb;
use tokio::sync::mpsc;
use tonic::Status;

use super::{Shared, RETRY};
use crate::tunnel::TunnelSettings;

/// Most operator sessions running at once on this node.
const MAX_SESSIONS: usize = 64;

/// Keeps a tunnel open to the leader and runs the operator sessions that
/// come down it (see `tunnel`).
pub(super) async fn tunnel_loop(shared: Arc<Shared>, operator: Arc<TunnelSettings>) {
    loop {
        let addr = shared.servers.pick();
        let (up, outgoing) = mpsc::channel(64);
        let hello = pb::TunnelUp {
            node_id: shared.node_id.clone(),
            session: 0,
            event: None,
        };
        let _ = up.try_send(hello);
        let opened = match shared.servers.client(&addr) {
            Ok(mut client) => tokio::time::timeout(
                Duration::from_secs(5),
                client.tunnel(
                    shared
                        .servers
                        .request(tokio_stream::wrappers::ReceiverStream::new(outgoing)),
                ),
            )
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("opening the tunnel timed out"))),
            Err(error) => Err(Status::invalid_argument(error.to_string())),
        };
        let mut down = match opened {
            Ok(down) => down.into_inner(),
            Err(status) => {
                tracing::debug!(server = %addr, error = %status.message(), "tunnel failed");
                shared.servers.failed(&addr, &status);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        tracing::debug!(server = %addr, "operator tunnel open");
        // Each session's task, and where lines sent to it later go.
        let mut sessions: HashMap<u64, (tokio::task::JoinHandle<()>, mpsc::Sender<Vec<u8>>)> =
            HashMap::new();
        loop {
            let message = match down.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    shared.servers.failed(&addr, &status);
                    break;
                }
            };
            sessions.retain(|_, (task, _)| !task.is_finished());
            let session = message.session;
            match message.request {
                // Aborting drops the session's process (its group is killed).
                Some(pb::tunnel_down::Request::Cancel(_)) => {
                    if let Some((task, _)) = sessions.remove(&session) {
                        task.abort();
                    }
                }
                Some(pb::tunnel_down::Request::Stdin(line)) => {
                    if let Some((_, stdin)) = sessions.get(&session) {
                        if stdin.try_send(line).is_err() {
                            tracing::warn!(
                                session,
                                "a session's input queue is full; dropped a line"
                            );
                        }
                    }
                }
                Some(request) if session != 0 && !sessions.contains_key(&session) => {
                    if sessions.len() >= MAX_SESSIONS {
                        let _ = up.try_send(pb::TunnelUp {
                            node_id: shared.node_id.clone(),
                            session,
                            event: Some(pb::tunnel_up::Event::Error(format!(
                                "this node runs {MAX_SESSIONS} operator sessions already"
                            ))),
                        });
                        continue;
                    }
                    let (operator, up) = (operator.clone(), up.clone());
                    let (stdin, lines) = mpsc::channel(256);
                    sessions.insert(
                        session,
                        (
                            tokio::spawn(async move {
                                crate::tunnel::run(&operator, session, request, &up, lines).await
                            }),
                            stdin,
                        ),
                    );
                }
                _ => tracing::warn!(session, "ignoring a malformed tunnel request"),
            }
        }
        for (task, _) in sessions.values() {
            task.abort();
        }
        tokio::time::sleep(RETRY).await;
    }
}
