//! What `flotilla compositor` is told on its command line ([`Options`],
//! [`Layout`]) and the output sizes it accepts: plain data every other
//! module may read, depending on none of them.

use std::path::PathBuf;

/// How the compositor runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The Wayland socket's name in `$XDG_RUNTIME_DIR` (clients use it as
    /// `WAYLAND_DISPLAY`).
    pub socket_name: String,
    /// gpud's socket for this desktop.
    pub gpu_socket: PathBuf,
    /// Output refresh, millihertz.
    pub refresh_mhz: u32,
    /// The control socket (input, windows, focus); none without.
    pub control: Option<PathBuf>,
    /// How toplevels share the output.
    pub layout: Layout,
    /// The keyboard's xkb layout and variant (empty: `us`).
    pub keyboard_layout: String,
    pub keyboard_variant: String,
}

/// How toplevels share the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// Every toplevel fills the output; the focused one is on top.
    #[default]
    Maximized,
    /// One toplevel fills the output; with two they sit side by side;
    /// with more, the oldest keeps the left half and the others share the
    /// right half top to bottom.
    Tiled,
}

/// The output sizes the control socket accepts (even, for I420).
pub const MIN_OUTPUT: u32 = 64;
pub const MAX_OUTPUT: (u32, u32) = (7680, 4320);
