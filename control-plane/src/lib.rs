//! Flotilla's control plane: the replicated state (openraft over redb), the
//! gRPC services servers and node agents speak, and the HTTP API the board
//! and CLI use, all on one port.

pub mod auth;
pub mod control;
pub mod datadir;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod http_exec;
pub mod http_fleet;
pub mod http_session;
pub mod http_stream;
pub mod network;
pub mod node_api;
pub mod proposer;
pub mod scheduler;
pub mod server;
pub mod state;
pub mod store;
pub mod tunnel;
pub mod types;
