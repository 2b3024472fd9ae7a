//! Incoming gRPC: the Raft transport between servers and the operator /
//! membership API. Every method authenticates before it decodes anything.

use std::sync::Arc;

use flotilla_proto::cluster as pb;
use flotilla_proto::cluster::cluster_server::{Cluster, ClusterServer};
use flotilla_proto::raft::raft_server::{Raft, RaftServer};
use flotilla_proto::raft::{RaftPayload, ReadIndexReply, ReadIndexRequest};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::auth::bearer_from_metadata;
use crate::control::{Access, ControlPlane};
use crate::error::ApiError;
use crate::raft::network::MAX_MESSAGE_BYTES;
use crate::types::{ClientRequest, NodeId, TypeConfig};

pub fn raft_service(control: Arc<ControlPlane>) -> RaftServer<RaftService> {
    RaftServer::new(RaftService { control })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub fn cluster_service(control: Arc<ControlPlane>) -> ClusterServer<ClusterService> {
    ClusterServer::new(ClusterService { control })
}

fn authorize<T>(
    control: &ControlPlane,
    request: &Request<T>,
    access: Access,
) -> Result<(), Status> {
    control
        .authorize(bearer_from_metadata(request.metadata()), access)
        .map_err(Status::from)
}

fn decode<T: DeserializeOwned>(payload: &RaftPayload) -> Result<T, Status> {
    serde_json::from_slice(&payload.json)
        .map_err(|error| Status::invalid_argument(format!("undecodable raft payload: {error}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftPayload>, Status> {
    let json = serde_json::to_vec(value)
        .map_err(|error| Status::internal(format!("encode raft reply: {error}")))?;
    Ok(Response::new(RaftPayload { json }))
}

pub struct RaftService {
    control: Arc<ControlPlane>,
}

#[tonic::async_trait]
impl Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        authorize(&self.control, &request, Access::Cluster)?;
        let rpc: AppendEntriesRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.control.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        authorize(&self.control, &request, Access::Cluster)?;
        let rpc: VoteRequest<NodeId> = decode(request.get_ref())?;
        // A server removed from the cluster keeps its old view and may keep
        // asking for votes; it has no say here.
        let candidate = rpc.vote.leader_id().voted_for();
        if let Some(candidate) = candidate {
            if !self.control.is_member(candidate) {
                return Err(Status::permission_denied(format!(
                    "server {candidate} is not a member of this cluster"
                )));
            }
        }
        encode(&self.control.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        authorize(&self.control, &request, Access::Cluster)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(request.get_ref())?;
        encode(&self.control.raft.install_snapshot(rpc).await)
    }

    async fn forward_write(
        &self,
        request: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        authorize(&self.control, &request, Access::Cluster)?;
        let client_request: ClientRequest = decode(request.get_ref())?;
        let result: Result<_, ApiError> = self.control.write_as_leader(client_request).await;
        encode(&result)
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        authorize(&self.control, &request, Access::Cluster)?;
        let read_index = self.control.read_index().await?;
        Ok(Response::new(ReadIndexReply { read_index }))
    }
}

pub struct ClusterService {
    control: Arc<ControlPlane>,
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize(&self.control, &request, Access::Operator)?;
        Ok(Response::new(self.control.status()))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinReply>, Status> {
        authorize(&self.control, &request, Access::ServerJoin)?;
        let token = bearer_from_metadata(request.metadata())
            .unwrap_or_default()
            .to_owned();
        let reply = self.control.join(request.into_inner(), &token).await?;
        Ok(Response::new(reply))
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize(&self.control, &request, Access::Cluster)?;
        let status = self.control.promote(request.into_inner().node_id).await?;
        Ok(Response::new(status))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorize(&self.control, &request, Access::Operator)?;
        let token = bearer_from_metadata(request.metadata())
            .unwrap_or_default()
            .to_owned();
        let status = self
            .control
            .remove_member(request.into_inner().node_id, &token)
            .await?;
        Ok(Response::new(status))
    }
}
