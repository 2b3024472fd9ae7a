//! One Wayland compositor per desktop (`flotilla compositor`), inside the
//! desktop's sandbox: smithay's Wayland frontend with no renderer of its
//! own — every frame is composed by gpud ([`gpu_output`]).
//!
//! Globals: compositor, subcompositor, xdg-shell (toplevels maximised or
//! tiled, see [`Layout`]; popups kept inside the output), server-side
//! xdg-decoration (a title bar with the window's title, [`decoration`]), wl_shm, a seat with keyboard and pointer, data device
//! and primary selection, wl_output with xdg-output, fractional scale
//! (1.0), viewporter (crops and scales drawn by gpud) and
//! presentation-time. Rendering only on damage; frame callbacks
//! and presentation feedback after each composed frame. The control
//! socket ([`control`]) drives input, focus and the output's size.
//!
//! Modules by concern: `options` (what the command line says), `state`
//! (the one [`State`] the loop owns), `event_loop` (start-up and
//! [`run`]), `handlers` (the Wayland protocol handlers), `layout`
//! (where windows go), `input` (keys and pointer from the control
//! socket), `output` (each frame handed to gpud, gpud's reconnection),
//! `frame_clock` (when frames may happen).

pub mod control;
pub mod decoration;
mod event_loop;
mod frame_clock;
pub mod gpu_output;
mod handlers;
mod input;
pub mod keymap;
mod layout;
mod options;
mod output;
pub mod session;
mod state;

pub use event_loop::run;
pub use frame_clock::{ANIMATION_AFTER, UNWATCHED_PERIOD};
pub use options::{Layout, Options, MAX_OUTPUT, MIN_OUTPUT};
pub use output::GPU_RECONNECT;
pub use state::State;
