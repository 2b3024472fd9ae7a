//! gpud: the only process that opens a GPU. One Vulkan device per physical
//! GPU, shared by every desktop on the host through the virtio-gpu protocol
//! over a Unix socket, with every byte of GPU memory charged to a desktop.
//!
//! Not built yet: this crate is reserved so the workspace has its final shape.
