//! Outgoing Raft traffic: openraft's [`RaftNetwork`] over gRPC.
//!
//! Each peer gets one lazily connected HTTP/2 channel, reused for every RPC
//! (openraft keeps one client per target). Every request carries the cluster
//! secret. A transport failure is reported as `Unreachable`, so openraft backs
//! off instead of hammering a dead peer.

use std::time::Duration;

use flotilla_proto::raft::raft_client::RaftClient;
use flotilla_proto::raft::RaftPayload;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::Channel;

use crate::auth::with_bearer;
use crate::types::{NodeId, TypeConfig};

/// Largest gRPC message a server accepts or sends (snapshot chunks, batches).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// A peer address that is not a `host:port` tonic can dial.
#[derive(Debug, thiserror::Error)]
#[error("invalid server address {addr:?}: {source}")]
pub struct AddressError {
    addr: String,
    #[source]
    source: tonic::codegen::http::uri::InvalidUri,
}

/// Opens a lazily connected channel to `addr` (`host:port`).
pub fn channel(addr: &str) -> Result<Channel, AddressError> {
    let endpoint =
        Channel::from_shared(format!("http://{addr}")).map_err(|source| AddressError {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .connect_lazy())
}

pub fn raft_client(addr: &str) -> Result<RaftClient<Channel>, AddressError> {
    Ok(RaftClient::new(channel(addr)?)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Creates one [`PeerClient`] per Raft peer.
#[derive(Clone)]
pub struct NetworkFactory {
    pub cluster_secret: String,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient {
            target,
            client: raft_client(&node.addr).ok(),
            addr: node.addr.clone(),
            cluster_secret: self.cluster_secret.clone(),
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Option<RaftClient<Channel>>,
    cluster_secret: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl PeerClient {
    async fn call<Req, Resp, E>(
        &mut self,
        method: RaftMethod,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                format!(
                    "peer {} has an invalid address {:?}",
                    self.target, self.addr
                ),
            ))));
        };
        let json = serde_json::to_vec(request)
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        let message = with_bearer(RaftPayload { json }, &self.cluster_secret);
        let call = async {
            match method {
                RaftMethod::AppendEntries => client.append_entries(message).await,
                RaftMethod::Vote => client.vote(message).await,
                RaftMethod::InstallSnapshot => client.install_snapshot(message).await,
            }
        };
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Err(_) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    format!(
                        "peer {} at {} did not answer in time",
                        self.target, self.addr
                    ),
                ))))
            }
            Ok(Err(status)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    format!(
                        "peer {} at {}: {}: {}",
                        self.target,
                        self.addr,
                        status.code(),
                        status.message()
                    ),
                ))))
            }
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        result.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

#[derive(Clone, Copy)]
enum RaftMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftMethod::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftMethod::Vote, &rpc, &option).await
    }
}
