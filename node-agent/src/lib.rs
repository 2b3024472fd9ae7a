//! The node agent: one per GPU host. Registers the host's capacity (CPU,
//! memory, disk, GPUs) with the control plane, heartbeats, watches the
//! desktops assigned to it and runs them behind a [`runtime::DesktopRuntime`],
//! reporting what they do.
//!
//! [`runtime::ProcessRuntime`] runs each desktop in a namespace sandbox
//! ([`sandbox`]) or, without one, as a plain child process; [`tunnel`] is
//! the node's end of the operator tunnel and serves `desktop exec`, `desktop
//! logs`, frames and input over it. [`clock`] and [`fsutil`] are leaves every
//! other module may use.

pub mod agent;
pub mod clock;
pub mod fsutil;
pub mod host;
pub mod preflight;
pub mod runtime;
pub mod sandbox;
#[cfg(test)]
mod test_support;
pub mod tunnel;

pub use agent::{run, AgentOptions};
