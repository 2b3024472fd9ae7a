//! Incoming gRPC: the servers' Raft transport and cluster API
//! ([`cluster`]) and the node agents' door ([`node`]). Every method
//! authenticates before it decodes a payload.

pub mod cluster;
pub mod node;
