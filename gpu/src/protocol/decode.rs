//! Decoding a command frame: every check the bytes alone allow (exact
//! sizes, counts against bytes and descriptors, zero ids, scanout
//! indexes, overflowing rectangles, formats, dimensions, stream length,
//! flags, rings), each failure answered with the spec's `ERR_*`.

use super::*;

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
