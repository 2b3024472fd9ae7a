//! The virtio-gpu control-queue wire format (virtio specification, "GPU
//! Device", control queue), byte-exact and little-endian, as gpud's guests
//! (desktop compositors) speak it over a Unix stream socket.
//!
//! # Framing
//! A Unix stream has no message boundaries, so each command travels as one
//! frame: a little-endian `u32` byte count, then that many bytes of the
//! command (`virtio_gpu_ctrl_hdr` first). Guest memory does not exist here:
//! a frame's file descriptors (`SCM_RIGHTS`, sent with the frame's first
//! byte) stand in for it. In `RESOURCE_ATTACH_BACKING` and
//! `RESOURCE_CREATE_BLOB`, memory entry *i* refers to descriptor *i* of its
//! frame (a memfd or a wl_shm pool), and its `addr` field is a byte offset
//! into that descriptor. Each response is framed the same way.
//!
//! [`decode`] checks everything the bytes can say on their own — sizes,
//! counts, ids that must not be zero, rectangles that must not overflow,
//! formats, scanout indexes — and answers a bad command with the spec's
//! error response, never a panic. Whether a resource or context *exists*
//! is the server's state, checked there.

//!
//! Here the types and constants; [`decode`] is `decode`'s, [`encode`] and
//! [`frame`] `encode`'s, [`build`] the command builders.

mod decode;
mod encode;

pub mod build;

pub use decode::decode;
pub use encode::{encode, encode_error, frame};

use std::fmt;

/// Command types (`enum virtio_gpu_ctrl_type`).
pub mod cmd {
    pub const GET_DISPLAY_INFO: u32 = 0x0100;
    pub const RESOURCE_CREATE_2D: u32 = 0x0101;
    pub const RESOURCE_UNREF: u32 = 0x0102;
    pub const SET_SCANOUT: u32 = 0x0103;
    pub const RESOURCE_FLUSH: u32 = 0x0104;
    pub const TRANSFER_TO_HOST_2D: u32 = 0x0105;
    pub const RESOURCE_ATTACH_BACKING: u32 = 0x0106;
    pub const RESOURCE_DETACH_BACKING: u32 = 0x0107;
    pub const GET_CAPSET_INFO: u32 = 0x0108;
    pub const GET_CAPSET: u32 = 0x0109;
    pub const RESOURCE_CREATE_BLOB: u32 = 0x010c;
    pub const CTX_CREATE: u32 = 0x0200;
    pub const CTX_DESTROY: u32 = 0x0201;
    pub const CTX_ATTACH_RESOURCE: u32 = 0x0202;
    pub const CTX_DETACH_RESOURCE: u32 = 0x0203;
    pub const SUBMIT_3D: u32 = 0x0207;
}

/// Response types.
pub mod resp {
    pub const OK_NODATA: u32 = 0x1100;
    pub const OK_DISPLAY_INFO: u32 = 0x1101;
    pub const OK_CAPSET_INFO: u32 = 0x1102;
    pub const OK_CAPSET: u32 = 0x1103;
    pub const ERR_UNSPEC: u32 = 0x1200;
    pub const ERR_OUT_OF_MEMORY: u32 = 0x1201;
    pub const ERR_INVALID_SCANOUT_ID: u32 = 0x1202;
    pub const ERR_INVALID_RESOURCE_ID: u32 = 0x1203;
    pub const ERR_INVALID_CONTEXT_ID: u32 = 0x1204;
    pub const ERR_INVALID_PARAMETER: u32 = 0x1205;
}

/// `VIRTIO_GPU_FLAG_FENCE`: answer only once the work is done, with the
/// fence id echoed.
pub const FLAG_FENCE: u32 = 1 << 0;
/// `VIRTIO_GPU_FLAG_INFO_RING_IDX`: `ring_idx` names the context's ring.
pub const FLAG_INFO_RING_IDX: u32 = 1 << 1;

/// `VIRTIO_GPU_MAX_SCANOUTS`.
pub const MAX_SCANOUTS: u32 = 16;
/// Largest width or height of a resource gpud accepts.
pub const MAX_DIMENSION: u32 = 16_384;
/// Most memory entries in one command.
pub const MAX_MEM_ENTRIES: u32 = 1_024;
/// Largest SUBMIT_3D command stream.
pub const MAX_SUBMIT_BYTES: u32 = 1 << 20;
/// Largest frame (a SUBMIT_3D with its stream, with room to spare).
pub const MAX_FRAME_BYTES: u32 = MAX_SUBMIT_BYTES + 4096;
/// Rings per context (`ring_idx` is below this).
pub const MAX_RINGS: u8 = 64;
/// Size of `virtio_gpu_ctrl_hdr`.
pub const HEADER_BYTES: usize = 24;

/// Pixel formats (`enum virtio_gpu_formats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    B8G8R8A8 = 1,
    B8G8R8X8 = 2,
    A8R8G8B8 = 3,
    X8R8G8B8 = 4,
    R8G8B8A8 = 67,
    X8B8G8R8 = 68,
    A8B8G8R8 = 121,
    R8G8B8X8 = 134,
}

impl Format {
    pub fn from_wire(value: u32) -> Option<Format> {
        Some(match value {
            1 => Format::B8G8R8A8,
            2 => Format::B8G8R8X8,
            3 => Format::A8R8G8B8,
            4 => Format::X8R8G8B8,
            67 => Format::R8G8B8A8,
            68 => Format::X8B8G8R8,
            121 => Format::A8B8G8R8,
            134 => Format::R8G8B8X8,
            _ => return None,
        })
    }

    /// B, G, R and alpha or padding, in that byte order: the formats
    /// composition and the I420 frame read (wl_shm's ARGB8888 and
    /// XRGB8888).
    pub fn is_bgra(self) -> bool {
        matches!(self, Format::B8G8R8A8 | Format::B8G8R8X8)
    }

    /// Every format here is 4 bytes a pixel.
    pub const BYTES_PER_PIXEL: u32 = 4;
}

/// `struct virtio_gpu_ctrl_hdr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    pub kind: u32,
    pub flags: u32,
    pub fence_id: u64,
    pub ctx_id: u32,
    pub ring_idx: u8,
}

impl Header {
    /// The header of the answer to a command with this header: same
    /// fence, context and ring, `FLAG_FENCE`/`FLAG_INFO_RING_IDX` echoed.
    pub fn answer(&self, kind: u32) -> Header {
        Header {
            kind,
            flags: self.flags & (FLAG_FENCE | FLAG_INFO_RING_IDX),
            fence_id: self.fence_id,
            ctx_id: self.ctx_id,
            ring_idx: self.ring_idx,
        }
    }
}

/// `struct virtio_gpu_rect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// Whether the rectangle lies within `width` × `height` (no overflow).
    pub fn within(&self, width: u32, height: u32) -> bool {
        self.x
            .checked_add(self.width)
            .is_some_and(|right| right <= width)
            && self
                .y
                .checked_add(self.height)
                .is_some_and(|bottom| bottom <= height)
    }

    /// Whether `x + width` and `y + height` fit in 32 bits.
    fn fits(&self) -> bool {
        self.x.checked_add(self.width).is_some() && self.y.checked_add(self.height).is_some()
    }
}

/// `struct virtio_gpu_mem_entry`, with `addr` an offset into the frame's
/// descriptor of the same index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemEntry {
    pub offset: u64,
    pub length: u32,
}

/// One decoded command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    GetDisplayInfo,
    ResourceCreate2d {
        resource_id: u32,
        format: Format,
        width: u32,
        height: u32,
    },
    ResourceUnref {
        resource_id: u32,
    },
    SetScanout {
        rect: Rect,
        scanout_id: u32,
        /// 0 disables the scanout.
        resource_id: u32,
    },
    ResourceFlush {
        rect: Rect,
        resource_id: u32,
    },
    TransferToHost2d {
        rect: Rect,
        offset: u64,
        resource_id: u32,
    },
    ResourceAttachBacking {
        resource_id: u32,
        entries: Vec<MemEntry>,
    },
    ResourceDetachBacking {
        resource_id: u32,
    },
    GetCapsetInfo {
        capset_index: u32,
    },
    GetCapset {
        capset_id: u32,
        capset_version: u32,
    },
    ResourceCreateBlob {
        resource_id: u32,
        blob_mem: u32,
        blob_flags: u32,
        blob_id: u64,
        size: u64,
        entries: Vec<MemEntry>,
    },
    CtxCreate {
        context_init: u32,
        debug_name: String,
    },
    CtxDestroy,
    CtxAttachResource {
        resource_id: u32,
    },
    CtxDetachResource {
        resource_id: u32,
    },
    Submit3d {
        commands: Vec<u8>,
    },
}

/// A command the bytes alone show to be bad: answer with `response`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The header as far as it could be read (for fence, context, ring).
    pub header: Header,
    /// One of the `resp::ERR_*` types.
    pub response: u32,
    pub reason: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (command {:#06x}): {}",
            error_name(self.response),
            self.header.kind,
            self.reason
        )
    }
}

impl std::error::Error for DecodeError {}

/// The spec's name of a response type.
pub fn error_name(response: u32) -> &'static str {
    match response {
        resp::ERR_OUT_OF_MEMORY => "ERR_OUT_OF_MEMORY",
        resp::ERR_INVALID_SCANOUT_ID => "ERR_INVALID_SCANOUT_ID",
        resp::ERR_INVALID_RESOURCE_ID => "ERR_INVALID_RESOURCE_ID",
        resp::ERR_INVALID_CONTEXT_ID => "ERR_INVALID_CONTEXT_ID",
        resp::ERR_INVALID_PARAMETER => "ERR_INVALID_PARAMETER",
        _ => "ERR_UNSPEC",
    }
}

/// One display mode of `OK_DISPLAY_INFO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DisplayMode {
    pub rect: Rect,
    pub enabled: bool,
    pub flags: u32,
}

/// A response's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    NoData,
    DisplayInfo(Box<[DisplayMode; MAX_SCANOUTS as usize]>),
    CapsetInfo {
        capset_id: u32,
        max_version: u32,
        max_size: u32,
    },
    Capset(Vec<u8>),
    /// One of `resp::ERR_*`.
    Error(u32),
}
