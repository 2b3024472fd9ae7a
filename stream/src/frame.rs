//! One encoded frame as a binary message: a 32-byte little-endian header
//! and the payload. The node agent sends one per tunnel message; the
//! control plane passes it unchanged as one binary WebSocket message.
//!
//! ```text
//! offset size
//!  0     1    kind: 1 = H.264 access unit (Annex B), 2 = JPEG image
//!  1     1    flags: bit 0 = keyframe (an IDR; a decoder may start here)
//!  2     2    reserved, 0
//!  4     4    width (pixels)
//!  8     4    height (pixels)
//! 12     4    reserved, 0
//! 16     8    sequence: gpud's frame number (grows; gaps are skipped frames)
//! 24     8    captured: when the agent read the frame from gpud, µs since
//!             the Unix epoch (the agent's clock)
//! 32     …    payload
//! ```

use thiserror::Error;

pub const HEADER_LEN: usize = 32;
/// Largest payload accepted (a 4K keyframe at high quality fits).
pub const MAX_PAYLOAD: usize = 8 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    H264,
    Jpeg,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub keyframe: bool,
    pub width: u32,
    pub height: u32,
    pub sequence: u64,
    pub captured_us: u64,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("a frame message is at least {HEADER_LEN} bytes, got {0}")]
    Short(usize),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("reserved bits are set")]
    Reserved,
    #[error("a frame payload is at most {MAX_PAYLOAD} bytes, got {0}")]
    TooLong(usize),
    #[error("a frame of {0}×{1} pixels")]
    Size(u32, u32),
}

impl Header {
    /// The message: this header, then `payload`.
    pub fn message(&self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.push(match self.kind {
            Kind::H264 => 1,
            Kind::Jpeg => 2,
        });
        out.push(u8::from(self.keyframe));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.width.to_le_bytes());
        out.extend_from_slice(&self.height.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.captured_us.to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Reads a message (from an agent: untrusted), returning the header
    /// and the payload.
    pub fn parse(message: &[u8]) -> Result<(Header, &[u8]), FrameError> {
        if message.len() < HEADER_LEN {
            return Err(FrameError::Short(message.len()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(message[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(message[at..at + 8].try_into().expect("8"));
        let kind = match message[0] {
            1 => Kind::H264,
            2 => Kind::Jpeg,
            other => return Err(FrameError::Kind(other)),
        };
        if message[1] & !1 != 0 || message[2] != 0 || message[3] != 0 || u32_at(12) != 0 {
            return Err(FrameError::Reserved);
        }
        let (width, height) = (u32_at(4), u32_at(8));
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            return Err(FrameError::Size(width, height));
        }
        let payload = &message[HEADER_LEN..];
        if payload.len() > MAX_PAYLOAD {
            return Err(FrameError::TooLong(payload.len()));
        }
        Ok((
            Header {
                kind,
                keyframe: message[1] & 1 == 1,
                width,
                height,
                sequence: u64_at(16),
                captured_us: u64_at(24),
            },
            payload,
        ))
    }
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_round_trips_and_bad_ones_are_refused() {
        let header = Header {
            kind: Kind::H264,
            keyframe: true,
            width: 1280,
            height: 800,
            sequence: 7,
            captured_us: 1_700_000_000_000_000,
        };
        let message = header.message(b"nal");
        assert_eq!(message.len(), HEADER_LEN + 3);
        assert_eq!(Header::parse(&message), Ok((header, &b"nal"[..])));

        assert_eq!(Header::parse(&message[..10]), Err(FrameError::Short(10)));
        let mut bad = message.clone();
        bad[0] = 9;
        assert_eq!(Header::parse(&bad), Err(FrameError::Kind(9)));
        let mut bad = message.clone();
        bad[1] = 2;
        assert_eq!(Header::parse(&bad), Err(FrameError::Reserved));
        let mut bad = message.clone();
        bad[4..8].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(Header::parse(&bad), Err(FrameError::Size(0, 800)));
    }
}
