//! The messages between the hook process and the server, one JSON object per line
//! over the unix socket whose path the server put in the hook's environment. They are
//! shared by [`super::client`] and [`super::server`] and owned by neither.

use serde::{Deserialize, Serialize};

use super::protocol::{ProposedUpdate, RefReport};

/// The socket the hook connects to; set by the server in receive-pack's environment,
/// which git passes on to its hooks.
pub const SOCKET_ENV: &str = "FLOTILLA_GIT_HOOK_SOCKET";
/// The push this receive-pack serves: the key of the principal in the server's
/// [`super::PushRegistry`]. Unguessable, and valid only while the push runs.
pub const PUSH_ID_ENV: &str = "FLOTILLA_GIT_PUSH_ID";

/// The longest request line the server reads: thousands of ref updates fit; a local
/// process cannot make the server buffer without bound.
pub const MAX_REQUEST_BYTES: u64 = 4 * 1024 * 1024;

/// Hook → server: the push's updates, exactly as git listed them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookRequest {
    pub push_id: String,
    pub updates: Vec<ProposedUpdate>,
}

/// Server → hook: one report per update, in order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HookResponse {
    pub reports: Vec<RefReport>,
}
