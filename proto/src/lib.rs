//! Wire types: the only crate whose types cross a process boundary.
//!
//! Compatibility policy: fields are only ever added, never renumbered or
//! re-typed; a removed field's number is reserved. Packages carry a version
//! (`flotilla.raft.v1`); an incompatible change is a new package served beside
//! the old one until every process speaks the new one. Raft payloads are
//! openraft's serde types (see `raft.proto`), versioned with the control
//! plane's log format.

/// Server-to-server Raft transport and write forwarding.
pub mod raft {
    tonic::include_proto!("flotilla.raft.v1");
}

/// Operator and membership API.
pub mod cluster {
    tonic::include_proto!("flotilla.cluster.v1");
}

/// Node-agent API: registration, heartbeats, assignments.
pub mod node {
    tonic::include_proto!("flotilla.node.v1");
}
