//! The control plane's doors: gRPC for servers and node agents
//! ([`grpc`]) and HTTP/JSON plus the board for people and the CLI
//! ([`http`]), and the desktops' own listener ([`desktop`]). Handlers check who is calling, validate what they are sent
//! and turn it into [`crate::control::ControlPlane`] reads and writes; they
//! hold no replicated state of their own.

pub mod desktop;
pub mod grpc;
pub mod http;
