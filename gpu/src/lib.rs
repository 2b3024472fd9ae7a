//! gpud: the only process that opens a GPU. One Vulkan device per physical
//! GPU, shared by every desktop on the host through the virtio-gpu protocol
//! over a Unix socket, with every byte of GPU memory charged to a desktop.
//!
//! [`enumerate`] lists the host's GPUs; [`device`] opens one logical device
//! per GPU with a capability report; [`protocol`] is the virtio-gpu
//! control-queue wire format guests speak, [`wire`] its framing with
//! descriptors; [`session`] is one guest's state and the [`session::Ledger`]
//! of GPU memory; [`compose`] the composition context type and its CPU
//! reference; [`render`] the Vulkan path (GPU buffers, compute shaders, the
//! fair render thread); [`server`] and [`service`] serve desktops on their
//! own sockets; [`guest`] is the guest library.

pub mod compose;
pub mod convert;
pub mod device;
pub mod enumerate;
pub mod guest;
#[cfg(feature = "nvml")]
pub mod nvml;
pub mod protocol;
pub mod render;
pub mod server;
pub mod service;
pub mod session;
pub mod wire;

pub use enumerate::{enumerate, GpuError, GpuInfo};
