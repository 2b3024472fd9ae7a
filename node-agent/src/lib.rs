//! The node agent: one per GPU host. Registers the host's capacity (CPU,
//! memory, disk, GPUs) with the control plane, heartbeats, watches the
//! desktops assigned to it and runs them behind a [`runtime::DesktopRuntime`],
//! reporting what they do.
//!
//! Today's runtime starts a plain child process per desktop
//! ([`runtime::ProcessRuntime`]); the namespace sandbox plugs in behind the
//! same trait.

pub mod agent;
pub mod host;
pub mod runtime;
pub mod sandbox;

pub use agent::{run, AgentOptions};
