//! The `proc-receive` hook: how a push's ref updates leave `git receive-pack` and reach
//! the ledger. git runs the hook (a small process: the `flotilla git-hook proc-receive`
//! subcommand, or this crate's `flotilla-git-hook` binary in tests) after the pack is in
//! the repository; the hook hands the updates over a unix socket to the server that
//! spawned receive-pack, which checks the policy, asks the ledger, and answers per ref.
//!
//! - [`protocol`]: git's pkt-line conversation with the hook.
//! - [`wire`]: the JSON lines between the hook process and the server.
//! - [`client`]: the hook process's side, [`run_proc_receive_hook`].
//! - [`server`]: the server's side, [`HookServer`] and the [`PushRegistry`].

pub mod client;
pub mod protocol;
pub mod server;
pub mod wire;

pub use client::{run_proc_receive_hook, run_proc_receive_hook_from_env, HookError};
pub use server::{HookServer, HookServerError, PushContext, PushRegistration, PushRegistry};
pub use wire::{PUSH_ID_ENV, SOCKET_ENV};
