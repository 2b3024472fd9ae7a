//! Live desktop streams (issue 7): what turns gpud's I420 frames into
//! what a viewer's browser shows, and a viewer's keyboard and mouse into
//! compositor input.
//!
//! - [`frame`]: the binary message every encoded frame travels in, the
//!   same from the node agent up its tunnel and from the control plane to
//!   a viewer's WebSocket.
//! - [`encode`]: one H.264 encoder per watched desktop (openh264, no
//!   B-frames, IDR on request) and JPEG thumbnails.
//! - [`hub`]: one fan-out per desktop; each viewer has a small bounded
//!   queue that drops to the next keyframe when the viewer falls behind.
//! - [`input`]: what a viewer may send, checked, and turned into the
//!   compositor's control requests (browser key codes → evdev).

pub mod encode;
pub mod frame;
pub mod hub;
pub mod input;
