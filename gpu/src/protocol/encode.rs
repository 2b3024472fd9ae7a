//! Encoding answers: a response's header (the command's fence, context
//! and ring echoed) and body, and the stream framing (`u32` length, then
//! the bytes) both directions use.

use super::*;

impl Header {
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        out.extend_from_slice(&self.fence_id.to_le_bytes());
        out.extend_from_slice(&self.ctx_id.to_le_bytes());
        out.push(self.ring_idx);
        out.extend_from_slice(&[0; 3]);
    }
}

impl Rect {
    pub(super) fn write(&self, out: &mut Vec<u8>) {
        for value in [self.x, self.y, self.width, self.height] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
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
