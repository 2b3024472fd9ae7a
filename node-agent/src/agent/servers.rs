//! Which control-plane server to talk to: any of the `--join` addresses
//! until one answers, then the leader (followed by the hint a follower
//! sends back). One lazily connected gRPC channel per address, rebuilt
//! after the connection dies; every request carries the node-join token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use flotilla_proto::node::node_agent_client::NodeAgentClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

const LEADER_METADATA: &str = "flotilla-leader";

/// Which servers to talk to, and which one leads.
pub(super) struct Servers {
    addrs: Vec<String>,
    next: AtomicUsize,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
    token: String,
}

impl Servers {
    pub(super) fn new(addrs: Vec<String>, token: String) -> Servers {
        Servers {
            addrs,
            next: AtomicUsize::new(0),
            leader: Mutex::new(None),
            channels: Mutex::new(HashMap::new()),
            token,
        }
    }

    pub(super) fn pick(&self) -> String {
        if let Some(leader) = self
            .leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            return leader;
        }
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.addrs.len();
        self.addrs[index].clone()
    }

    pub(super) fn client(&self, addr: &str) -> anyhow::Result<NodeAgentClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .with_context(|| format!("{addr:?} is not a HOST:PORT address"))?
                    .connect_timeout(Duration::from_secs(1))
                    .http2_keep_alive_interval(Duration::from_secs(1))
                    .keep_alive_timeout(Duration::from_secs(2))
                    .keep_alive_while_idle(true)
                    .tcp_nodelay(true)
                    .connect_lazy();
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(NodeAgentClient::new(channel))
    }

    pub(super) fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = format!("Bearer {}", self.token).parse() {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// Learns from a failed call: follow a leader hint, or try elsewhere.
    pub(super) fn failed(&self, addr: &str, status: &Status) {
        let hint = status
            .metadata()
            .get(LEADER_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        let mut leader = self.leader.lock().unwrap_or_else(|p| p.into_inner());
        match hint {
            Some(hint) if hint != addr => *leader = Some(hint),
            _ => {
                *leader = None;
                // A dead connection is rebuilt from scratch next time.
                if status.code() == Code::Unavailable {
                    self.channels
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(addr);
                }
            }
        }
    }

    pub(super) fn succeeded(&self, addr: &str) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr.to_owned());
    }
}
