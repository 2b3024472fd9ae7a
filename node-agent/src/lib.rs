//! The node agent (one per GPU host): reports the node's capacity, watches the
//! desktops the control plane assigns to it, builds each one as a sandbox from
//! Linux namespaces and cgroups, and reports what actually runs.
//!
//! Not built yet: this crate is reserved so the workspace has its final shape.
