//! One module per command group of the `flotilla` binary. Client commands
//! (`task`, `cluster`, `node`, `capacity`, `gpu`, `desktop`) take a
//! [`crate::client::Client`] and print through [`crate::render`]; process
//! commands (`server`, `dev`, `node-agent`, `compositor`) run until stopped.
//! `main` owns the top-level command tree and only dispatches here.

pub mod capacity;
pub mod cluster;
pub mod compositor;
pub mod desktop;
pub mod dev;
pub mod gpu;
pub mod llm;
pub mod node;
pub mod node_agent;
pub mod pr;
mod process;
pub mod project;
pub mod server;
pub mod task;
