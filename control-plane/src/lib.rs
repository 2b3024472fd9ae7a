//! Flotilla's control plane: the replicated state (openraft over redb), the
//! fleet's leader loop, and the doors servers, node agents, the board and
//! the CLI reach it through (gRPC and HTTP on one port).
//!
//! Layering, bottom up (a module uses only those below it):
//! `types` → `state` / `scheduler` → `raft` → `control` → `fleet`,
//! `tunnel` → `api` → `server`.

pub mod api;
pub mod auth;
pub mod control;
pub mod datadir;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod hosting;
pub mod raft;
pub mod scheduler;
pub mod seal;
pub mod server;
pub mod state;
pub mod tunnel;
pub mod types;
