//! The board: the web UI the control plane serves (Kanban, desktop views,
//! nodes), built without Node.js so a fresh machine needs no extra toolchain.
//!
//! Not built yet: this crate is reserved so the workspace has its final shape.
