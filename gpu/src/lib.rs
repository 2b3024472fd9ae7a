//! gpud: the only process that opens a GPU. One Vulkan device per physical
//! GPU, shared by every desktop on the host through the virtio-gpu protocol
//! over a Unix socket, with every byte of GPU memory charged to a desktop.
//!
//! Built so far: [`enumerate`], which the node agent uses to report the
//! host's GPUs. The device service itself comes with the GPU issue.

pub mod enumerate;

pub use enumerate::{enumerate, GpuError, GpuInfo};
