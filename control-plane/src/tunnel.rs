//! Operator sessions into desktops (`desktop exec`, `desktop logs`),
//! carried over the tunnels node agents hold open to the leader.
//!
//! Node agents only dial out, so each keeps one `Tunnel` stream to the
//! leader (`node_api`). An operator's request opens a [`Session`]: the
//! leader sends the request down the node's tunnel and the agent streams
//! the session's output back up, which [`Tunnels::deliver`] routes to the
//! session. Dropping a session (the operator went away) tells the agent to
//! cancel it; a tunnel that closes ends all of its sessions with an error.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use flotilla_proto::node as pb;
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::ApiError;

/// Most output bytes one message up may carry (agents send 32 KiB of
/// command output; a stream's frame message is one message, and gRPC's
/// 4 MiB message limit bounds it).
pub const MAX_CHUNK_BYTES: usize = 3 << 20;
/// Requests queued for one node before new sessions are refused.
const DOWN_QUEUE: usize = 64;
/// Output chunks queued for one session (backpressure beyond that).
const SESSION_QUEUE: usize = 16;

/// What a session yields, in order; `Exit` or `Error` comes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
    Error(String),
}

type Down = mpsc::Sender<Result<pb::TunnelDown, Status>>;

struct NodeTunnel {
    /// Tells a closing tunnel from the one that replaced it.
    epoch: u64,
    down: Down,
}

struct SessionEntry {
    node_id: String,
    events: mpsc::Sender<SessionEvent>,
}

#[derive(Default)]
pub struct Tunnels {
    nodes: Mutex<HashMap<String, NodeTunnel>>,
    sessions: Mutex<HashMap<u64, SessionEntry>>,
    next: AtomicU64,
}

/// What an operator asked for.
pub enum Request {
    Exec {
        desktop_id: String,
        generation: u64,
        command: Vec<String>,
    },
    Logs {
        desktop_id: String,
        generation: u64,
        tail_bytes: u64,
    },
    Screenshot {
        desktop_id: String,
        generation: u64,
    },
    Input {
        desktop_id: String,
        generation: u64,
        request: String,
    },
    Stream {
        desktop_id: String,
        generation: u64,
        bitrate_bps: u32,
        max_fps: u32,
    },
    Thumbnail {
        desktop_id: String,
        generation: u64,
        max_width: u32,
    },
    InputSession {
        desktop_id: String,
        generation: u64,
    },
}

impl Tunnels {
    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers node `node_id`'s tunnel (replacing an older one); returns
    /// its epoch and the stream of requests to send down it.
    pub fn connect(&self, node_id: &str) -> (u64, mpsc::Receiver<Result<pb::TunnelDown, Status>>) {
        let (down, receiver) = mpsc::channel(DOWN_QUEUE);
        let epoch = self.next_id();
        let old = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node_id.to_owned(), NodeTunnel { epoch, down });
        if old.is_some() {
            self.fail_sessions(node_id, "the node agent reconnected");
        }
        (epoch, receiver)
    }

    /// The tunnel `epoch` of `node_id` closed: forget it (unless a newer
    /// one replaced it) and end its sessions.
    pub fn disconnect(&self, node_id: &str, epoch: u64) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if nodes.get(node_id).is_some_and(|t| t.epoch == epoch) {
            nodes.remove(node_id);
            drop(nodes);
            self.fail_sessions(node_id, "the node agent disconnected");
        }
    }

    fn fail_sessions(&self, node_id: &str, why: &str) {
        let failed: Vec<SessionEntry> = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let ids: Vec<u64> = sessions
                .iter()
                .filter(|(_, s)| s.node_id == node_id)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| sessions.remove(id)).collect()
        };
        for session in failed {
            let _ = session.events.try_send(SessionEvent::Error(why.to_owned()));
        }
    }

    /// Routes one message from node `node_id`'s agent to its session.
    /// Messages for sessions that ended (or were never this node's) are
    /// dropped; a malformed one is an error that closes the tunnel.
    pub async fn deliver(&self, node_id: &str, up: pb::TunnelUp) -> Result<(), Status> {
        let event = match up.event {
            Some(pb::tunnel_up::Event::Stdout(bytes)) => SessionEvent::Stdout(bytes),
            Some(pb::tunnel_up::Event::Stderr(bytes)) => SessionEvent::Stderr(bytes),
            Some(pb::tunnel_up::Event::ExitCode(code)) => SessionEvent::Exit(code),
            Some(pb::tunnel_up::Event::Error(message)) => {
                SessionEvent::Error(message.chars().take(1024).collect())
            }
            None => return Err(Status::invalid_argument("a tunnel message needs an event")),
        };
        if let SessionEvent::Stdout(bytes) | SessionEvent::Stderr(bytes) = &event {
            if bytes.len() > MAX_CHUNK_BYTES {
                return Err(Status::invalid_argument(format!(
                    "output chunks are at most {MAX_CHUNK_BYTES} bytes"
                )));
            }
        }
        let last = matches!(event, SessionEvent::Exit(_) | SessionEvent::Error(_));
        let events = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            match sessions.get(&up.session) {
                Some(session) if session.node_id == node_id => {
                    let events = session.events.clone();
                    if last {
                        sessions.remove(&up.session);
                    }
                    events
                }
                _ => return Ok(()),
            }
        };
        // A slow operator slows this node's tunnel: backpressure, no loss.
        let _ = events.send(event).await;
        Ok(())
    }

    /// Opens a session on node `node_id`.
    pub fn open(self: &Arc<Tunnels>, node_id: &str, request: Request) -> Result<Session, ApiError> {
        let down = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .map(|t| t.down.clone())
            .ok_or_else(|| {
                ApiError::unavailable("the desktop's node agent is not connected to the leader")
            })?;
        let id = self.next_id();
        let (events, receiver) = mpsc::channel(SESSION_QUEUE);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                SessionEntry {
                    node_id: node_id.to_owned(),
                    events,
                },
            );
        let request = match request {
            Request::Exec {
                desktop_id,
                generation,
                command,
            } => pb::tunnel_down::Request::Exec(pb::ExecRequest {
                desktop_id,
                generation,
                command,
            }),
            Request::Logs {
                desktop_id,
                generation,
                tail_bytes,
            } => pb::tunnel_down::Request::Logs(pb::LogsRequest {
                desktop_id,
                generation,
                tail_bytes,
            }),
            Request::Screenshot {
                desktop_id,
                generation,
            } => pb::tunnel_down::Request::Screenshot(pb::ScreenshotRequest {
                desktop_id,
                generation,
            }),
            Request::Input {
                desktop_id,
                generation,
                request,
            } => pb::tunnel_down::Request::Input(pb::InputRequest {
                desktop_id,
                generation,
                request,
            }),
            Request::Stream {
                desktop_id,
                generation,
                bitrate_bps,
                max_fps,
            } => pb::tunnel_down::Request::Stream(pb::StreamRequest {
                desktop_id,
                generation,
                bitrate_bps,
                max_fps,
            }),
            Request::Thumbnail {
                desktop_id,
                generation,
                max_width,
            } => pb::tunnel_down::Request::Thumbnail(pb::ThumbnailRequest {
                desktop_id,
                generation,
                max_width,
            }),
            Request::InputSession {
                desktop_id,
                generation,
            } => pb::tunnel_down::Request::InputSession(pb::InputSessionRequest {
                desktop_id,
                generation,
            }),
        };
        let session = Session {
            id,
            down: down.clone(),
            events: receiver,
            tunnels: Arc::clone(self),
            finished: false,
        };
        down.try_send(Ok(pb::TunnelDown {
            session: id,
            request: Some(request),
        }))
        .map_err(|_| ApiError::unavailable("the desktop's node agent is busy; retry"))?;
        Ok(session)
    }
}

/// One open session; dropping it before it finished cancels it.
pub struct Session {
    id: u64,
    down: Down,
    events: mpsc::Receiver<SessionEvent>,
    tunnels: Arc<Tunnels>,
    finished: bool,
}

impl Session {
    /// Sends one line to the running session (a stream's steering, an
    /// input session's requests).
    pub fn send_line(&self, line: Vec<u8>) -> Result<(), ApiError> {
        self.down
            .try_send(Ok(pb::TunnelDown {
                session: self.id,
                request: Some(pb::tunnel_down::Request::Stdin(line)),
            }))
            .map_err(|_| ApiError::unavailable("the desktop's node agent is busy; retry"))
    }

    /// The next event; `None` after the last one.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        if self.finished {
            return None;
        }
        let event = self.events.recv().await;
        match &event {
            Some(SessionEvent::Exit(_)) | Some(SessionEvent::Error(_)) | None => {
                self.finished = true
            }
            _ => {}
        }
        event.or(Some(SessionEvent::Error(
            "the session ended unexpectedly".to_owned(),
        )))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let removed = self
            .tunnels
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        if removed.is_some() && !self.finished {
            let _ = self.down.try_send(Ok(pb::TunnelDown {
                session: self.id,
                request: Some(pb::tunnel_down::Request::Cancel(true)),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(session: u64, event: pb::tunnel_up::Event) -> pb::TunnelUp {
        pb::TunnelUp {
            node_id: "n1".to_owned(),
            session,
            event: Some(event),
        }
    }

    fn exec() -> Request {
        Request::Exec {
            desktop_id: "dt-1".to_owned(),
            generation: 7,
            command: vec!["true".to_owned()],
        }
    }

    #[tokio::test]
    async fn a_session_gets_its_output_and_only_its_own() {
        let tunnels = Arc::new(Tunnels::default());
        assert!(tunnels.open("n1", exec()).is_err(), "no tunnel yet");
        let (_, mut down) = tunnels.connect("n1");
        let mut session = tunnels.open("n1", exec()).unwrap();
        let sent = down.recv().await.unwrap().unwrap();
        assert!(
            matches!(sent.request, Some(pb::tunnel_down::Request::Exec(ref e)) if e.generation == 7)
        );
        let id = sent.session;
        use pb::tunnel_up::Event;
        // Another node cannot write into this session.
        let mut foreign = up(id, Event::Stdout(b"forged".to_vec()));
        foreign.node_id = "n2".to_owned();
        tunnels.deliver("n2", foreign).await.unwrap();
        tunnels
            .deliver("n1", up(id, Event::Stdout(b"out".to_vec())))
            .await
            .unwrap();
        tunnels
            .deliver("n1", up(id, Event::ExitCode(3)))
            .await
            .unwrap();
        assert_eq!(
            session.next().await,
            Some(SessionEvent::Stdout(b"out".to_vec()))
        );
        assert_eq!(session.next().await, Some(SessionEvent::Exit(3)));
        assert_eq!(session.next().await, None);
        // Oversized and empty messages are refused.
        let big = up(id, Event::Stdout(vec![0; MAX_CHUNK_BYTES + 1]));
        assert!(tunnels.deliver("n1", big).await.is_err());
        let empty = pb::TunnelUp {
            node_id: "n1".to_owned(),
            session: id,
            event: None,
        };
        assert!(tunnels.deliver("n1", empty).await.is_err());
    }

    #[tokio::test]
    async fn dropping_a_session_cancels_it_and_a_lost_tunnel_fails_sessions() {
        let tunnels = Arc::new(Tunnels::default());
        let (epoch, mut down) = tunnels.connect("n1");
        let session = tunnels.open("n1", exec()).unwrap();
        let id = down.recv().await.unwrap().unwrap().session;
        drop(session);
        let cancel = down.recv().await.unwrap().unwrap();
        assert_eq!(cancel.session, id);
        assert_eq!(cancel.request, Some(pb::tunnel_down::Request::Cancel(true)));
        let mut session = tunnels.open("n1", exec()).unwrap();
        tunnels.disconnect("n1", epoch);
        assert!(matches!(session.next().await, Some(SessionEvent::Error(_))));
        assert!(tunnels.open("n1", exec()).is_err());
    }
}
