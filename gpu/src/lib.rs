//! gpud: the only process that opens a GPU. One Vulkan device per physical
//! GPU, shared by every desktop on the host through the virtio-gpu protocol
//! over a Unix socket, with every byte of GPU memory charged to a desktop.
//!
//! Built so far: [`enumerate`], which the node agent uses to report the
//! host's GPUs, [`device`] (one logical device per GPU with a capability
//! report), and [`protocol`], the virtio-gpu control-queue wire format
//! gpud's guests speak (decoding with validation, responses, framing). The
//! device service itself is still to come (issue 5).

pub mod compose;
pub mod convert;
pub mod device;
pub mod enumerate;
pub mod guest;
pub mod protocol;
pub mod render;
pub mod server;
pub mod session;
pub mod wire;

pub use enumerate::{enumerate, GpuError, GpuInfo};
