//! The control plane's request logic, shared by the HTTP and gRPC doors:
//! writes that reach the leader from any server, linearizable and stale
//! reads, authentication, cluster status and membership changes.
//!
//! Writes sent to a follower are forwarded to the leader over gRPC (one hop;
//! the follower retries if leadership moved meanwhile). Clients therefore may
//! talk to any server. Every write carries a request id; retries reuse it and
//! the state machine applies it once.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flotilla_proto::cluster as pb;
use flotilla_proto::raft::raft_client::RaftClient;
use flotilla_proto::raft::{RaftPayload, ReadIndexRequest};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, ServerState};
use tonic::transport::Channel;

use crate::auth::{secrets_equal, sha256_hex, verify_desktop_token, with_bearer};
use crate::error::{ApiError, ErrorKind};
use crate::raft::network::{channel, MAX_MESSAGE_BYTES};
use crate::raft::proposer::{ProposeError, Proposer};
use crate::raft::SharedState;
use crate::types::{
    ClientRequest, ClientResponse, Command, DesktopIntent, NodeId, Raft, TokenKind,
    LOG_FORMAT_VERSION,
};

/// How long a write or read waits for a leader before answering 503.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between retries while no usable leader is known.
const LEADER_POLL: Duration = Duration::from_millis(250);
/// A learner this close to the leader's log is promoted to voter.
const PROMOTION_LAG: u64 = 16;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (read-index).
    Linearizable,
    /// This server's state as it is: cheap, possibly behind.
    Stale,
}

/// Who may do what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Operator,
    NodeJoin,
    ServerJoin,
    /// Another server of this cluster.
    Cluster,
}

/// Who holds a live desktop token: one placement of one task's desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopIdentity {
    pub desktop_id: String,
    pub task_id: String,
    pub generation: u64,
}

pub struct ControlPlane {
    pub node_id: NodeId,
    pub advertise_addr: String,
    pub cluster_id: String,
    pub raft: Raft,
    pub state: Arc<SharedState>,
    cluster_secret: String,
    proposer: Proposer,
    /// Becomes true when the server begins shutting down; long-lived
    /// streams end then.
    stopping: tokio::sync::watch::Sender<bool>,
    /// One HTTP/2 channel per peer for forwarded writes and read-index calls;
    /// a lazy channel reconnects by itself after a failure.
    peer_channels: Mutex<HashMap<String, Channel>>,
}

impl ControlPlane {
    pub fn new(
        node_id: NodeId,
        advertise_addr: String,
        cluster_id: String,
        cluster_secret: String,
        raft: Raft,
        state: Arc<SharedState>,
    ) -> ControlPlane {
        ControlPlane {
            stopping: tokio::sync::watch::Sender::new(false),
            proposer: Proposer::start(raft.clone()),
            peer_channels: Mutex::new(HashMap::new()),
            node_id,
            advertise_addr,
            cluster_id,
            raft,
            state,
            cluster_secret,
        }
    }

    fn peer_raft_client(&self, addr: &str) -> Result<RaftClient<Channel>, ApiError> {
        let mut channels = self
            .peer_channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match channels.get(addr) {
            Some(channel) => channel.clone(),
            None => {
                let channel =
                    channel(addr).map_err(|error| ApiError::internal(error.to_string()))?;
                channels.insert(addr.to_owned(), channel.clone());
                channel
            }
        };
        Ok(RaftClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    /// Ends every long-lived stream (watches, assignment streams).
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once [`ControlPlane::begin_shutdown`] was called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut receiver = self.stopping.subscribe();
        async move {
            let _ = receiver.wait_for(|stopping| *stopping).await;
        }
    }

    pub fn cluster_secret(&self) -> &str {
        &self.cluster_secret
    }

    /// Checks `token` grants `access`. The cluster secret also passes every
    /// check, so servers can act for a client they forward for.
    pub fn authorize(&self, token: Option<&str>, access: Access) -> Result<(), ApiError> {
        let Some(token) = token else {
            return Err(ApiError::unauthorized(
                "missing bearer token: send 'Authorization: Bearer <token>' (the operator token is in the data directory's operator.token)",
            ));
        };
        if secrets_equal(token, &self.cluster_secret) {
            return Ok(());
        }
        let wanted = match access {
            Access::Operator => TokenKind::Operator,
            Access::NodeJoin => TokenKind::NodeJoin,
            Access::ServerJoin => TokenKind::ServerJoin,
            Access::Cluster => {
                return Err(ApiError::unauthorized(
                    "this call is for servers of the cluster only",
                ))
            }
        };
        let hash = sha256_hex(token);
        match self.state.with_state(|state| state.token_kind(&hash)) {
            Some(kind) if kind == wanted => Ok(()),
            Some(_) => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "unauthorized",
                format!("this token cannot be used here; this call needs a {wanted:?} token"),
            )),
            None => Err(ApiError::unauthorized("invalid bearer token")),
        }
    }

    /// The placement a desktop token stands for, while it is the desktop's
    /// current one (a moved, released or removed desktop's token is dead). A server
    /// that has not applied the placement yet asks the leader first.
    pub async fn authorize_desktop(&self, token: &str) -> Result<DesktopIdentity, ApiError> {
        let Some((desktop_id, generation)) = verify_desktop_token(&self.cluster_secret, token)
        else {
            return Err(ApiError::unauthorized(
                "not a desktop token: the desktop door takes only the token of a running desktop",
            ));
        };
        let current = |control: &ControlPlane| {
            control.state.with_state(|state| {
                state
                    .desktop(&desktop_id)
                    .filter(|desktop| {
                        desktop.generation == generation && desktop.intent != DesktopIntent::Release
                    })
                    .map(|desktop| DesktopIdentity {
                        desktop_id: desktop.id.clone(),
                        task_id: desktop.task_id.clone(),
                        generation,
                    })
            })
        };
        if let Some(identity) = current(self) {
            return Ok(identity);
        }
        self.read_barrier(Consistency::Linearizable).await?;
        current(self).ok_or_else(|| {
            ApiError::unauthorized(
                "this desktop token has expired: its desktop was stopped or moved",
            )
        })
    }

    /// Builds a request for `command`, stamped now.
    pub fn request(&self, command: Command, request_id: Option<String>) -> ClientRequest {
        ClientRequest {
            format: LOG_FORMAT_VERSION,
            request_id: request_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
            issued_at_ms: now_ms(),
            command,
        }
    }

    /// Commits `request` through the leader, from any server.
    pub async fn write(&self, request: ClientRequest) -> Result<ClientResponse, ApiError> {
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            // The leader this attempt relied on, so a retry waits for another.
            let (attempt, tried_leader) = match self.proposer.propose(request.clone()).await {
                Ok(response) => return Ok(response),
                Err(ProposeError::NotLeader(Some((leader_id, leader)))) => (
                    self.forward_write(&leader.addr, &request).await,
                    Some(leader_id),
                ),
                Err(ProposeError::NotLeader(None)) => {
                    (Err(ApiError::unavailable("no leader is elected yet")), None)
                }
                Err(ProposeError::Failed(error)) => (Err(error), Some(self.node_id)),
            };
            match attempt {
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    self.wait_for_other_leader(tried_leader).await;
                }
                other => return other,
            }
        }
    }

    /// Applies a write forwarded by another server: leader only, no further
    /// forwarding.
    pub async fn write_as_leader(
        &self,
        request: ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        match self.proposer.propose(request).await {
            Ok(response) => Ok(response),
            Err(ProposeError::NotLeader(_)) => {
                Err(ApiError::unavailable("this server no longer leads; retry"))
            }
            Err(ProposeError::Failed(error)) => Err(error),
        }
    }

    async fn forward_write(
        &self,
        leader_addr: &str,
        request: &ClientRequest,
    ) -> Result<ClientResponse, ApiError> {
        let mut client = self.peer_raft_client(leader_addr)?;
        let json = serde_json::to_vec(request).map_err(|e| ApiError::internal(e.to_string()))?;
        let reply = client
            .forward_write(with_bearer(RaftPayload { json }, &self.cluster_secret))
            .await
            .map_err(|status| {
                ApiError::unavailable(format!(
                    "forwarding to leader at {leader_addr}: {}",
                    status.message()
                ))
            })?;
        let result: Result<ClientResponse, ApiError> =
            serde_json::from_slice(&reply.into_inner().json)
                .map_err(|e| ApiError::internal(format!("leader answered garbage: {e}")))?;
        result
    }

    /// Waits until a leader other than `tried` is known, or for a short
    /// while if none appears (then the caller simply tries again).
    async fn wait_for_other_leader(&self, tried: Option<NodeId>) {
        let mut metrics = self.raft.metrics();
        let _ = tokio::time::timeout(LEADER_POLL, async {
            loop {
                let leader = metrics.borrow_and_update().current_leader;
                if leader.is_some() && leader != tried {
                    return;
                }
                if metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Returns once a read served from this server's state would reflect
    /// every write acknowledged before the call.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        if consistency == Consistency::Stale {
            return Ok(());
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let (attempt, tried_leader) = match self.raft.ensure_linearizable().await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward))) => {
                    match forward.leader_id.zip(forward.leader_node) {
                        Some((leader_id, leader)) => (
                            self.follower_read_barrier(&leader.addr).await,
                            Some(leader_id),
                        ),
                        None => (Err(ApiError::unavailable("no leader is elected yet")), None),
                    }
                }
                Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(error))) => (
                    Err(ApiError::unavailable(format!(
                        "leader cannot reach a quorum: {error}"
                    ))),
                    Some(self.node_id),
                ),
                Err(RaftError::Fatal(fatal)) => (
                    Err(ApiError::unavailable(format!("raft stopped: {fatal}"))),
                    Some(self.node_id),
                ),
            };
            match attempt {
                Err(error) if error.is_retryable() && Instant::now() < deadline => {
                    self.wait_for_other_leader(tried_leader).await;
                }
                other => return other,
            }
        }
    }

    /// Read-index from the leader, then wait until this server applied it.
    async fn follower_read_barrier(&self, leader_addr: &str) -> Result<(), ApiError> {
        let mut client = self.peer_raft_client(leader_addr)?;
        let read_index = client
            .read_index(with_bearer(ReadIndexRequest {}, &self.cluster_secret))
            .await
            .map_err(|status| {
                ApiError::unavailable(format!("read index from leader: {}", status.message()))
            })?
            .into_inner()
            .read_index;
        self.raft
            .wait(Some(LEADER_WAIT))
            .applied_index_at_least(Some(read_index), "linearizable read")
            .await
            .map_err(|error| {
                ApiError::unavailable(format!("catching up with the leader: {error}"))
            })?;
        Ok(())
    }

    /// The leader's side of a follower's read: confirm leadership with a
    /// quorum and say which index the read must observe.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _)) => Ok(read_log_id.map_or(0, |log_id| log_id.index)),
            Err(error) => Err(ApiError::unavailable(format!(
                "this server cannot serve a read index: {error}"
            ))),
        }
    }

    pub fn status(&self) -> pb::ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| pb::Member {
                id: *id,
                addr: node.addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_owned(),
            })
            .collect();
        pb::ClusterStatus {
            leader: metrics.current_leader,
            term: metrics.current_term,
            members,
            cluster_id: self.cluster_id.clone(),
            node_id: self.node_id,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            last_applied: metrics.last_applied.map_or(0, |log_id| log_id.index),
            revision: self.state.with_state(|state| state.revision()),
            snapshot_index: metrics.snapshot.map_or(0, |log_id| log_id.index),
            purged_index: metrics.purged.map_or(0, |log_id| log_id.index),
        }
    }

    /// Whether `node_id` is a voter or learner in this server's view.
    pub fn is_member(&self, node_id: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let is_member = metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&node_id)
            .is_some();
        is_member
    }

    /// A membership client to the current leader, for forwarding.
    fn leader_cluster_client(
        &self,
    ) -> Result<pb::cluster_client::ClusterClient<Channel>, ApiError> {
        let leader = self
            .leader_addr()
            .ok_or_else(|| ApiError::unavailable("no leader is elected yet"))?;
        cluster_client(&leader)
    }

    pub fn leader_addr(&self) -> Option<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let leader = metrics.current_leader?;
        metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|node| node.addr.clone())
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// Adds a server as a learner (leader only; others forward). Idempotent
    /// for a server already in the cluster at the same address.
    pub async fn join(
        &self,
        request: pb::JoinRequest,
        token: &str,
    ) -> Result<pb::JoinReply, ApiError> {
        validate_addr(&request.addr)?;
        if request.node_id == 0 {
            return Err(ApiError::bad_request(
                "invalid_node_id",
                "node id must be at least 1",
            ));
        }
        if !self.is_leader() {
            let mut client = self.leader_cluster_client()?;
            let reply = client.join(with_bearer(request, token)).await?;
            return Ok(reply.into_inner());
        }
        let existing = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics
                .membership_config
                .membership()
                .get_node(&request.node_id)
                .cloned()
        };
        match existing {
            Some(node) if node.addr != request.addr => {
                return Err(ApiError::new(
                    ErrorKind::Conflict,
                    "node_id_taken",
                    format!(
                        "node id {} is already used by the server at {}; pick another --node-id or remove it first",
                        request.node_id, node.addr
                    ),
                ))
            }
            Some(_) => {}
            None => {
                self.raft
                    .add_learner(request.node_id, BasicNode::new(&request.addr), false)
                    .await
                    .map_err(|error| ApiError::unavailable(format!("add learner: {error}")))?;
            }
        }
        Ok(pb::JoinReply {
            cluster_id: self.cluster_id.clone(),
            cluster_secret: self.cluster_secret.clone(),
            status: Some(self.status()),
        })
    }

    /// Makes a caught-up learner a voter (leader only; others forward).
    pub async fn promote(&self, node_id: NodeId) -> Result<pb::ClusterStatus, ApiError> {
        if !self.is_leader() {
            let mut client = self.leader_cluster_client()?;
            let reply = client
                .promote(with_bearer(
                    pb::PromoteRequest { node_id },
                    &self.cluster_secret,
                ))
                .await?;
            return Ok(reply.into_inner());
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        if membership.voter_ids().any(|id| id == node_id) {
            return Ok(self.status());
        }
        if membership.get_node(&node_id).is_none() {
            return Err(ApiError::not_found(format!(
                "server {node_id} is not a member; join first"
            )));
        }
        let last_log_index = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()
            .and_then(|replication| replication.get(&node_id).cloned().flatten())
            .map_or(0, |log_id| log_id.index);
        if matched + PROMOTION_LAG < last_log_index {
            return Err(ApiError::new(
                ErrorKind::FailedPrecondition,
                "catching_up",
                format!("server {node_id} is catching up: it has {matched} of {last_log_index} log entries"),
            ));
        }
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await
            .map_err(|error| ApiError::unavailable(format!("promote server {node_id}: {error}")))?;
        Ok(self.status())
    }

    /// Removes a server from the cluster (leader only; others forward).
    /// The membership change that removes `node_id`, from the current
    /// membership.
    fn removal(&self, node_id: NodeId) -> Result<ChangeMembers<NodeId, BasicNode>, ApiError> {
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(ApiError::new(
                    ErrorKind::FailedPrecondition,
                    "last_voter",
                    format!(
                        "server {node_id} is the only voter; add another server before removing it"
                    ),
                ));
            }
            Ok(ChangeMembers::RemoveVoters(BTreeSet::from([node_id])))
        } else if membership.get_node(&node_id).is_some() {
            Ok(ChangeMembers::RemoveNodes(BTreeSet::from([node_id])))
        } else {
            Err(ApiError::not_found(format!(
                "server {node_id} is not a member of this cluster"
            )))
        }
    }

    pub async fn remove_member(
        &self,
        node_id: NodeId,
        token: &str,
    ) -> Result<pb::ClusterStatus, ApiError> {
        if !self.is_leader() {
            let mut client = self.leader_cluster_client()?;
            let reply = client
                .remove_member(with_bearer(pb::RemoveMemberRequest { node_id }, token))
                .await?;
            return Ok(reply.into_inner());
        }
        // A membership change still in flight (a join or promotion) makes
        // openraft refuse a new one: wait for it to settle, then decide
        // again from the membership it left.
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let change = self.removal(node_id)?;
            match self.raft.change_membership(change, false).await {
                Ok(_) => break,
                Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_),
                ))) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => {
                    return Err(ApiError::unavailable(format!(
                        "remove server {node_id}: {error}"
                    )))
                }
            }
        }
        Ok(self.status())
    }
}

pub fn cluster_client(
    addr: &str,
) -> Result<pb::cluster_client::ClusterClient<tonic::transport::Channel>, ApiError> {
    Ok(pb::cluster_client::ClusterClient::new(
        channel(addr).map_err(|error| ApiError::internal(error.to_string()))?,
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Checks a `host:port` a server advertises.
pub fn validate_addr(addr: &str) -> Result<(), ApiError> {
    let valid = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0));
    if valid {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "invalid_address",
            format!("{addr:?} is not a host:port address"),
        ))
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}
