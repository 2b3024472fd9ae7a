//! The compositor's state: one [`State`] the event loop owns and every
//! handler borrows mutably, the per-client data smithay asks for, and the
//! surface → gpud resource keys. Only data here: what the state does is
//! in the modules named after each concern (`layout`, `output`, `input`,
//! `handlers`, `control`), as `impl State` blocks of their own.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use smithay::backend::renderer::utils::CommitCounter;
use smithay::desktop::{PopupManager, Space, Window};
use smithay::input::{Seat, SeatState};
use smithay::output::Output;
use smithay::reexports::calloop::{LoopHandle, LoopSignal};
use smithay::reexports::wayland_server::backend::{
    ClientData, ClientId, DisconnectReason, ObjectId,
};
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::reexports::wayland_server::DisplayHandle;
use smithay::wayland::compositor::{CompositorClientState, CompositorState};
use smithay::wayland::fractional_scale::FractionalScaleManagerState;
use smithay::wayland::output::OutputManagerState;
use smithay::wayland::presentation::PresentationState;
use smithay::wayland::selection::data_device::DataDeviceState;
use smithay::wayland::selection::primary_selection::PrimarySelectionState;
use smithay::wayland::shell::xdg::decoration::XdgDecorationState;
use smithay::wayland::shell::xdg::XdgShellState;
use smithay::wayland::shm::ShmState;
use smithay::wayland::viewporter::ViewporterState;

use crate::frame_clock::FrameClock;
use crate::gpu_output::GpuOutput;
use crate::keymap::Keymap;
use crate::options::Layout;

/// Everything one compositor holds: smithay's protocol states, the
/// windows, the seat, gpud's connection and the frame clock.
pub struct State {
    pub(crate) display: DisplayHandle,
    /// Timers and sources are added to the loop through this.
    pub(crate) loop_handle: LoopHandle<'static, State>,
    pub(crate) started: Instant,
    pub(crate) space: Space<Window>,
    /// Toplevels in the order they appeared (the layout's order).
    pub(crate) order: Vec<Window>,
    pub(crate) layout: Layout,
    pub(crate) popups: PopupManager,
    pub(crate) output: Output,
    pub(crate) compositor_state: CompositorState,
    pub(crate) xdg_shell_state: XdgShellState,
    pub(crate) _decoration_state: XdgDecorationState,
    pub(crate) shm_state: ShmState,
    pub(crate) _output_manager_state: OutputManagerState,
    pub(crate) seat_state: SeatState<State>,
    pub(crate) data_device_state: DataDeviceState,
    pub(crate) _primary_selection_state: PrimarySelectionState,
    pub(crate) _fractional_scale_state: FractionalScaleManagerState,
    pub(crate) _presentation_state: PresentationState,
    pub(crate) _viewporter_state: ViewporterState,
    pub(crate) clock_monotonic: smithay::utils::Clock<smithay::utils::Monotonic>,
    /// Frames shown, for presentation feedback's sequence.
    pub(crate) presented: u64,
    pub(crate) seat: Seat<State>,
    pub(crate) gpu: GpuOutput,
    pub(crate) keys: Keys,
    pub(crate) clock: FrameClock,
    /// The newest toplevel, focused once it has drawn.
    pub(crate) pending_focus: Option<WlSurface>,
    /// Window ids for the control socket, by toplevel surface.
    pub(crate) window_ids: HashMap<ObjectId, u32>,
    pub(crate) next_window_id: u32,
    /// Toplevels whose clients asked for server-side decorations (they
    /// get a title bar), by surface.
    pub(crate) decorated: HashSet<ObjectId>,
    /// Each title bar's last upload: (title, focused, width), by key.
    pub(crate) bars: HashMap<u64, (String, bool, u32)>,
    /// What each control connection holds down: evdev keys and buttons.
    pub(crate) held: HashMap<u64, (Vec<u32>, Vec<u32>)>,
    pub(crate) keymap: Keymap,
    pub(crate) pointer_at: (f64, f64),
    /// gpud failed: the compositor ends with this.
    pub(crate) gpu_failed: Option<anyhow::Error>,
    /// gpud's socket (reconnected to when gpud goes away).
    pub(crate) gpu_socket: PathBuf,
    /// Since when gpud has been gone (frames wait until it is back).
    pub(crate) gpu_lost: Option<Instant>,
    pub(crate) signal: LoopSignal,
}

/// What smithay keeps per client.
#[derive(Default)]
pub(crate) struct ClientState {
    pub(crate) compositor_state: CompositorClientState,
}

impl ClientData for ClientState {
    fn initialized(&self, _client_id: ClientId) {}
    fn disconnected(&self, _client_id: ClientId, reason: DisconnectReason) {
        tracing::debug!(?reason, "a client left");
    }
}

/// Maps protocol objects (surfaces) to the stable keys gpud resources use.
#[derive(Default)]
pub(crate) struct Keys {
    pub(crate) next: u64,
    pub(crate) keys: HashMap<ObjectId, u64>,
    pub(crate) uploaded: HashMap<u64, CommitCounter>,
}
