//! The node agent: one per GPU host. Registers the host's capacity (CPU,
//! memory, disk, GPUs) with the control plane, heartbeats, watches the
//! desktops assigned to it and runs them behind a [`runtime::DesktopRuntime`],
//! reporting what they do.
//!
//! [`runtime::ProcessRuntime`] runs each desktop in a namespace sandbox
//! ([`sandbox`]) or, without one, as a plain child process; [`operator`]
//! serves `desktop exec` and `desktop logs` over the agent's tunnel.

pub mod agent;
pub mod host;
pub mod operator;
pub mod runtime;
pub mod sandbox;

pub use agent::{run, AgentOptions};
