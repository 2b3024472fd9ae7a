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
    fn read(bytes: &[u8]) -> Header {
        let mut r = Reader(bytes);
        Header {
            kind: r.u32(),
            flags: r.u32(),
            fence_id: r.u64(),
            ctx_id: r.u32(),
            ring_idx: r.u8(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.fence_id.to_le_bytes());
        out.extend_from_slice(&self.ctx_id.to_le_bytes());
        out.push(self.ring_idx);
        out.extend_from_slice(&[0; 3]);
    }

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
    fn read(r: &mut Reader) -> Rect {
        Rect {
            x: r.u32(),
            y: r.u32(),
            width: r.u32(),
            height: r.u32(),
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        for value in [self.x, self.y, self.width, self.height] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }

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

/// Little-endian reads from a slice whose length was checked first.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split_at gave N bytes")
    }

    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn skip(&mut self, n: usize) {
        self.0 = &self.0[n..];
    }
}

/// Bytes of each fixed-size command, header included.
fn fixed_size(kind: u32) -> Option<usize> {
    Some(match kind {
        cmd::GET_DISPLAY_INFO | cmd::CTX_DESTROY => HEADER_BYTES,
        cmd::RESOURCE_CREATE_2D => HEADER_BYTES + 16,
        cmd::RESOURCE_UNREF
        | cmd::RESOURCE_DETACH_BACKING
        | cmd::GET_CAPSET_INFO
        | cmd::GET_CAPSET
        | cmd::CTX_ATTACH_RESOURCE
        | cmd::CTX_DETACH_RESOURCE => HEADER_BYTES + 8,
        cmd::SET_SCANOUT | cmd::RESOURCE_FLUSH => HEADER_BYTES + 24,
        cmd::TRANSFER_TO_HOST_2D => HEADER_BYTES + 32,
        cmd::CTX_CREATE => HEADER_BYTES + 72,
        // Variable: a fixed part then entries or a stream.
        cmd::RESOURCE_ATTACH_BACKING | cmd::SUBMIT_3D => HEADER_BYTES + 8,
        cmd::RESOURCE_CREATE_BLOB => HEADER_BYTES + 32,
        _ => return None,
    })
}

/// Decodes one command (a frame's bytes) that came with `fds` descriptors.
pub fn decode(bytes: &[u8], fds: usize) -> Result<(Header, Command), DecodeError> {
    if bytes.len() < HEADER_BYTES {
        let mut header = [0u8; HEADER_BYTES];
        header[..bytes.len()].copy_from_slice(bytes);
        return Err(DecodeError {
            header: Header::read(&header),
            response: resp::ERR_UNSPEC,
            reason: format!("{} bytes is shorter than a header", bytes.len()),
        });
    }
    let header = Header::read(bytes);
    let fail = |response: u32, reason: String| DecodeError {
        header,
        response,
        reason,
    };
    let invalid = |reason: String| fail(resp::ERR_INVALID_PARAMETER, reason);
    let Some(size) = fixed_size(header.kind) else {
        return Err(fail(
            resp::ERR_UNSPEC,
            format!("unknown command {:#06x}", header.kind),
        ));
    };
    if bytes.len() < size {
        return Err(invalid(format!(
            "{} bytes; this command needs {size}",
            bytes.len()
        )));
    }
    let variable = matches!(
        header.kind,
        cmd::RESOURCE_ATTACH_BACKING | cmd::SUBMIT_3D | cmd::RESOURCE_CREATE_BLOB
    );
    if !variable && bytes.len() != size {
        return Err(invalid(format!(
            "{} bytes; this command is exactly {size}",
            bytes.len()
        )));
    }
    if header.flags & !(FLAG_FENCE | FLAG_INFO_RING_IDX) != 0 {
        return Err(invalid(format!("unknown flags {:#x}", header.flags)));
    }
    if header.flags & FLAG_INFO_RING_IDX != 0 && header.ring_idx >= MAX_RINGS {
        return Err(invalid(format!("ring {} is out of range", header.ring_idx)));
    }
    let takes_fds = matches!(
        header.kind,
        cmd::RESOURCE_ATTACH_BACKING | cmd::RESOURCE_CREATE_BLOB
    );
    if !takes_fds && fds != 0 {
        return Err(invalid(format!(
            "{fds} descriptors sent with a command that takes none"
        )));
    }
    let context_command = matches!(
        header.kind,
        cmd::CTX_CREATE
            | cmd::CTX_DESTROY
            | cmd::CTX_ATTACH_RESOURCE
            | cmd::CTX_DETACH_RESOURCE
            | cmd::SUBMIT_3D
    );
    if context_command && header.ctx_id == 0 {
        return Err(fail(
            resp::ERR_INVALID_CONTEXT_ID,
            "context 0 is not a context".to_owned(),
        ));
    }
    let mut r = Reader(&bytes[HEADER_BYTES..]);
    let resource = |id: u32| {
        if id == 0 {
            Err(fail(
                resp::ERR_INVALID_RESOURCE_ID,
                "resource 0 is not a resource".to_owned(),
            ))
        } else {
            Ok(id)
        }
    };
    let entries = |r: &mut Reader, count: u32| -> Result<Vec<MemEntry>, DecodeError> {
        if count == 0 || count > MAX_MEM_ENTRIES {
            return Err(invalid(format!(
                "{count} memory entries; 1-{MAX_MEM_ENTRIES} allowed"
            )));
        }
        if r.0.len() != count as usize * 16 {
            return Err(invalid(format!(
                "{} bytes of memory entries for {count} entries",
                r.0.len()
            )));
        }
        if fds != count as usize {
            return Err(invalid(format!(
                "{count} memory entries but {fds} descriptors"
            )));
        }
        Ok((0..count)
            .map(|_| {
                let offset = r.u64();
                let length = r.u32();
                r.skip(4);
                MemEntry { offset, length }
            })
            .collect())
    };
    let command = match header.kind {
        cmd::GET_DISPLAY_INFO => Command::GetDisplayInfo,
        cmd::RESOURCE_CREATE_2D => {
            let resource_id = resource(r.u32())?;
            let format_value = r.u32();
            let (width, height) = (r.u32(), r.u32());
            let format = Format::from_wire(format_value)
                .ok_or_else(|| invalid(format!("unknown format {format_value}")))?;
            if width == 0 || height == 0 || width > MAX_DIMENSION || height > MAX_DIMENSION {
                return Err(invalid(format!(
                    "{width}×{height}; each side must be 1-{MAX_DIMENSION}"
                )));
            }
            Command::ResourceCreate2d {
                resource_id,
                format,
                width,
                height,
            }
        }
        cmd::RESOURCE_UNREF => Command::ResourceUnref {
            resource_id: resource(r.u32())?,
        },
        cmd::SET_SCANOUT => {
            let rect = Rect::read(&mut r);
            let scanout_id = r.u32();
            let resource_id = r.u32();
            if scanout_id >= MAX_SCANOUTS {
                return Err(fail(
                    resp::ERR_INVALID_SCANOUT_ID,
                    format!("scanout {scanout_id}; there are {MAX_SCANOUTS}"),
                ));
            }
            if !rect.fits() {
                return Err(invalid("the rectangle overflows".to_owned()));
            }
            Command::SetScanout {
                rect,
                scanout_id,
                resource_id,
            }
        }
        cmd::RESOURCE_FLUSH => {
            let rect = Rect::read(&mut r);
            let resource_id = resource(r.u32())?;
            if !rect.fits() {
                return Err(invalid("the rectangle overflows".to_owned()));
            }
            Command::ResourceFlush { rect, resource_id }
        }
        cmd::TRANSFER_TO_HOST_2D => {
            let rect = Rect::read(&mut r);
            let offset = r.u64();
            let resource_id = resource(r.u32())?;
            if !rect.fits() {
                return Err(invalid("the rectangle overflows".to_owned()));
            }
            Command::TransferToHost2d {
                rect,
                offset,
                resource_id,
            }
        }
        cmd::RESOURCE_ATTACH_BACKING => {
            let resource_id = resource(r.u32())?;
            let count = r.u32();
            Command::ResourceAttachBacking {
                resource_id,
                entries: entries(&mut r, count)?,
            }
        }
        cmd::RESOURCE_DETACH_BACKING => Command::ResourceDetachBacking {
            resource_id: resource(r.u32())?,
        },
        cmd::GET_CAPSET_INFO => Command::GetCapsetInfo {
            capset_index: r.u32(),
        },
        cmd::GET_CAPSET => Command::GetCapset {
            capset_id: r.u32(),
            capset_version: r.u32(),
        },
        cmd::RESOURCE_CREATE_BLOB => {
            let resource_id = resource(r.u32())?;
            let blob_mem = r.u32();
            let blob_flags = r.u32();
            let count = r.u32();
            let blob_id = r.u64();
            let size = r.u64();
            if size == 0 {
                return Err(invalid("a blob of 0 bytes".to_owned()));
            }
            Command::ResourceCreateBlob {
                resource_id,
                blob_mem,
                blob_flags,
                blob_id,
                size,
                entries: entries(&mut r, count)?,
            }
        }
        cmd::CTX_CREATE => {
            let length = r.u32();
            let context_init = r.u32();
            let name = r.take::<64>();
            if length > 64 {
                return Err(invalid(format!(
                    "a debug name of {length} bytes (64 at most)"
                )));
            }
            let debug_name = String::from_utf8_lossy(&name[..length as usize])
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            Command::CtxCreate {
                context_init,
                debug_name,
            }
        }
        cmd::CTX_DESTROY => Command::CtxDestroy,
        cmd::CTX_ATTACH_RESOURCE => Command::CtxAttachResource {
            resource_id: resource(r.u32())?,
        },
        cmd::CTX_DETACH_RESOURCE => Command::CtxDetachResource {
            resource_id: resource(r.u32())?,
        },
        cmd::SUBMIT_3D => {
            let length = r.u32();
            r.skip(4);
            if length == 0 || length > MAX_SUBMIT_BYTES {
                return Err(invalid(format!(
                    "a command stream of {length} bytes; 1-{MAX_SUBMIT_BYTES} allowed"
                )));
            }
            if r.0.len() != length as usize {
                return Err(invalid(format!(
                    "the stream says {length} bytes but {} follow",
                    r.0.len()
                )));
            }
            Command::Submit3d {
                commands: r.0.to_vec(),
            }
        }
        _ => unreachable!("fixed_size knows only these"),
    };
    Ok((header, command))
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

/// The bytes of the answer to a command with `request` as its header.
pub fn encode(request: &Header, response: &Response) -> Vec<u8> {
    let kind = match response {
        Response::NoData => resp::OK_NODATA,
        Response::DisplayInfo(_) => resp::OK_DISPLAY_INFO,
        Response::CapsetInfo { .. } => resp::OK_CAPSET_INFO,
        Response::Capset(_) => resp::OK_CAPSET,
        Response::Error(code) => *code,
    };
    let mut out = Vec::with_capacity(HEADER_BYTES + 16 * 24);
    request.answer(kind).write(&mut out);
    match response {
        Response::NoData | Response::Error(_) => {}
        Response::DisplayInfo(modes) => {
            for mode in modes.iter() {
                mode.rect.write(&mut out);
                out.extend_from_slice(&u32::from(mode.enabled).to_le_bytes());
                out.extend_from_slice(&mode.flags.to_le_bytes());
            }
        }
        Response::CapsetInfo {
            capset_id,
            max_version,
            max_size,
        } => {
            for value in [*capset_id, *max_version, *max_size, 0] {
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        Response::Capset(data) => out.extend_from_slice(data),
    }
    out
}

/// The answer to a command that could not be decoded.
pub fn encode_error(error: &DecodeError) -> Vec<u8> {
    encode(&error.header, &Response::Error(error.response))
}

/// Frames `bytes` for the stream: a little-endian `u32` length, then them.
pub fn frame(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + bytes.len());
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Builders of command bytes, for guests (the compositor) and tests.
pub mod build {
    use super::*;

    pub fn header(kind: u32, flags: u32, fence_id: u64, ctx_id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        Header {
            kind,
            flags,
            fence_id,
            ctx_id,
            ring_idx: 0,
        }
        .write(&mut out);
        out
    }

    fn words(mut out: Vec<u8>, values: &[u32]) -> Vec<u8> {
        for value in values {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out
    }

    pub fn get_display_info() -> Vec<u8> {
        header(cmd::GET_DISPLAY_INFO, 0, 0, 0)
    }

    pub fn resource_create_2d(
        resource_id: u32,
        format: Format,
        width: u32,
        height: u32,
    ) -> Vec<u8> {
        words(
            header(cmd::RESOURCE_CREATE_2D, 0, 0, 0),
            &[resource_id, format as u32, width, height],
        )
    }

    pub fn resource_unref(resource_id: u32) -> Vec<u8> {
        words(header(cmd::RESOURCE_UNREF, 0, 0, 0), &[resource_id, 0])
    }

    pub fn set_scanout(rect: Rect, scanout_id: u32, resource_id: u32) -> Vec<u8> {
        let mut out = header(cmd::SET_SCANOUT, 0, 0, 0);
        rect.write(&mut out);
        words(out, &[scanout_id, resource_id])
    }

    pub fn resource_flush(rect: Rect, resource_id: u32) -> Vec<u8> {
        let mut out = header(cmd::RESOURCE_FLUSH, 0, 0, 0);
        rect.write(&mut out);
        words(out, &[resource_id, 0])
    }

    pub fn transfer_to_host_2d(rect: Rect, offset: u64, resource_id: u32) -> Vec<u8> {
        let mut out = header(cmd::TRANSFER_TO_HOST_2D, 0, 0, 0);
        rect.write(&mut out);
        out.extend_from_slice(&offset.to_le_bytes());
        words(out, &[resource_id, 0])
    }

    pub fn attach_backing(resource_id: u32, entries: &[MemEntry]) -> Vec<u8> {
        let mut out = words(
            header(cmd::RESOURCE_ATTACH_BACKING, 0, 0, 0),
            &[resource_id, entries.len() as u32],
        );
        for entry in entries {
            out.extend_from_slice(&entry.offset.to_le_bytes());
            out = words(out, &[entry.length, 0]);
        }
        out
    }

    pub fn detach_backing(resource_id: u32) -> Vec<u8> {
        words(
            header(cmd::RESOURCE_DETACH_BACKING, 0, 0, 0),
            &[resource_id, 0],
        )
    }

    pub fn get_capset_info(index: u32) -> Vec<u8> {
        words(header(cmd::GET_CAPSET_INFO, 0, 0, 0), &[index, 0])
    }

    pub fn get_capset(capset_id: u32, version: u32) -> Vec<u8> {
        words(header(cmd::GET_CAPSET, 0, 0, 0), &[capset_id, version])
    }

    pub fn ctx_create(ctx_id: u32, context_init: u32, name: &str) -> Vec<u8> {
        let mut out = words(
            header(cmd::CTX_CREATE, 0, 0, ctx_id),
            &[name.len().min(64) as u32, context_init],
        );
        let mut padded = [0u8; 64];
        let length = name.len().min(64);
        padded[..length].copy_from_slice(&name.as_bytes()[..length]);
        out.extend_from_slice(&padded);
        out
    }

    pub fn ctx_destroy(ctx_id: u32) -> Vec<u8> {
        header(cmd::CTX_DESTROY, 0, 0, ctx_id)
    }

    pub fn ctx_attach_resource(ctx_id: u32, resource_id: u32) -> Vec<u8> {
        words(
            header(cmd::CTX_ATTACH_RESOURCE, 0, 0, ctx_id),
            &[resource_id, 0],
        )
    }

    pub fn ctx_detach_resource(ctx_id: u32, resource_id: u32) -> Vec<u8> {
        words(
            header(cmd::CTX_DETACH_RESOURCE, 0, 0, ctx_id),
            &[resource_id, 0],
        )
    }

    pub fn submit_3d(ctx_id: u32, fence_id: Option<u64>, commands: &[u8]) -> Vec<u8> {
        let flags = if fence_id.is_some() { FLAG_FENCE } else { 0 };
        let mut out = words(
            header(cmd::SUBMIT_3D, flags, fence_id.unwrap_or(0), ctx_id),
            &[commands.len() as u32, 0],
        );
        out.extend_from_slice(commands);
        out
    }
}
