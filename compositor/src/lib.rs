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

pub mod control;
pub mod decoration;
pub mod gpu_output;
pub mod keymap;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use flotilla_gpu::protocol::{Format, Rect};
use smithay::backend::renderer::utils::{on_commit_buffer_handler, RendererSurfaceStateUserData};
use smithay::desktop::{PopupKind, PopupManager, Space, Window};
use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::output::{Mode as OutputMode, Output, PhysicalProperties, Subpixel};
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{EventLoop, Interest, Mode, PostAction};
use smithay::reexports::wayland_protocols::xdg::decoration::zv1::server::zxdg_toplevel_decoration_v1::Mode as DecorationMode;
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::wl_shm;
use smithay::reexports::wayland_server::protocol::{wl_buffer, wl_seat, wl_surface::WlSurface};
use smithay::reexports::wayland_server::{Client, Display, DisplayHandle, Resource};
use smithay::utils::{Serial, Transform};
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{
    get_parent, is_sync_subsurface, with_surface_tree_downward, CompositorClientState,
    CompositorHandler, CompositorState, TraversalAction,
};
use smithay::wayland::fractional_scale::{
    with_fractional_scale, FractionalScaleHandler, FractionalScaleManagerState,
};
use smithay::wayland::output::{OutputHandler, OutputManagerState};
use smithay::wayland::presentation::{PresentationState, Refresh};
use smithay::wayland::selection::primary_selection::{
    set_primary_focus, PrimarySelectionHandler, PrimarySelectionState,
};
use smithay::wayland::selection::data_device::{
    set_data_device_focus, ClientDndGrabHandler, DataDeviceHandler, DataDeviceState,
    ServerDndGrabHandler,
};
use smithay::wayland::selection::SelectionHandler;
use smithay::wayland::shell::xdg::decoration::{XdgDecorationHandler, XdgDecorationState};
use smithay::wayland::shell::xdg::{
    PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState,
};
use smithay::wayland::shm::{with_buffer_contents, ShmHandler, ShmState};
use smithay::wayland::socket::ListeningSocketSource;
use smithay::{
    delegate_compositor, delegate_data_device, delegate_fractional_scale, delegate_output,
    delegate_presentation, delegate_primary_selection, delegate_seat, delegate_shm,
    delegate_xdg_decoration, delegate_xdg_shell,
};

use gpu_output::{GpuOutput, SurfaceFrame};

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

/// How long the compositor waits for gpud to come back.
pub const GPU_RECONNECT: Duration = Duration::from_secs(60);

/// The output sizes the control socket accepts (even, for I420).
pub const MIN_OUTPUT: u32 = 64;
pub const MAX_OUTPUT: (u32, u32) = (7680, 4320);

pub struct State {
    display: DisplayHandle,
    started: Instant,
    space: Space<Window>,
    /// Toplevels in the order they appeared (the layout's order).
    order: Vec<Window>,
    layout: Layout,
    popups: PopupManager,
    output: Output,
    compositor_state: CompositorState,
    xdg_shell_state: XdgShellState,
    _decoration_state: XdgDecorationState,
    shm_state: ShmState,
    _output_manager_state: OutputManagerState,
    seat_state: SeatState<State>,
    data_device_state: DataDeviceState,
    _primary_selection_state: PrimarySelectionState,
    _fractional_scale_state: FractionalScaleManagerState,
    _presentation_state: PresentationState,
    _viewporter_state: smithay::wayland::viewporter::ViewporterState,
    clock_monotonic: smithay::utils::Clock<smithay::utils::Monotonic>,
    /// Frames shown, for presentation feedback's sequence.
    presented: u64,
    seat: Seat<State>,
    gpu: GpuOutput,
    keys: Keys,
    clock: FrameClock,
    /// The newest toplevel, focused once it has drawn.
    pending_focus: Option<WlSurface>,
    /// Window ids for the control socket, by toplevel surface.
    window_ids:
        std::collections::HashMap<smithay::reexports::wayland_server::backend::ObjectId, u32>,
    next_window_id: u32,
    /// Toplevels whose clients asked for server-side decorations (they
    /// get a title bar), by surface.
    decorated: std::collections::HashSet<smithay::reexports::wayland_server::backend::ObjectId>,
    /// Each title bar's last upload: (title, focused, width), by key.
    bars: std::collections::HashMap<u64, (String, bool, u32)>,
    /// What each control connection holds down: evdev keys and buttons.
    held: std::collections::HashMap<u64, (Vec<u32>, Vec<u32>)>,
    keymap: keymap::Keymap,
    pointer_at: (f64, f64),
    /// gpud failed: the compositor ends with this.
    gpu_failed: Option<anyhow::Error>,
    /// gpud's socket (reconnected to when gpud goes away).
    gpu_socket: PathBuf,
    /// Since when gpud has been gone (frames wait until it is back).
    gpu_lost: Option<Instant>,
    signal: smithay::reexports::calloop::LoopSignal,
}

/// Frames happen on the output's refresh boundaries, and only when
/// something asked for one (a commit, a window gone): an idle desktop
/// wakes nobody.
struct FrameClock {
    handle: smithay::reexports::calloop::LoopHandle<'static, State>,
    /// The output's refresh period.
    refresh: Duration,
    /// Someone watches the desktop's stream (the node agent says so):
    /// frames at the output's refresh; otherwise at most every
    /// [`UNWATCHED_PERIOD`].
    watched: bool,
    armed: bool,
    last: Instant,
    /// When the present run of back-to-back frames began.
    busy_since: Instant,
}

/// The shortest time between frames while nobody watches, once frames
/// have come back to back for [`ANIMATION_AFTER`]: an animation nobody
/// sees is paced at 10 a second (the agent's screenshots and the board's
/// thumbnails need no more). Start-up, a window opening, a burst of
/// typing run at the output's refresh.
pub const UNWATCHED_PERIOD: Duration = Duration::from_millis(100);
pub const ANIMATION_AFTER: Duration = Duration::from_secs(1);

impl FrameClock {
    fn period(&self) -> Duration {
        if self.watched || self.busy_since.elapsed() < ANIMATION_AFTER {
            self.refresh
        } else {
            self.refresh.max(UNWATCHED_PERIOD)
        }
    }

    /// A frame is being made now.
    fn frame_now(&mut self) {
        let now = Instant::now();
        // A pause longer than the slow pace ends a run of frames.
        if now.duration_since(self.last) > 2 * UNWATCHED_PERIOD {
            self.busy_since = now;
        }
        self.last = now;
    }
}

#[derive(Default)]
struct ClientState {
    compositor_state: CompositorClientState,
}

impl ClientData for ClientState {
    fn initialized(&self, _client_id: ClientId) {}
    fn disconnected(&self, _client_id: ClientId, reason: DisconnectReason) {
        tracing::debug!(?reason, "a client left");
    }
}

/// Runs the compositor until it fails (gpud gone, the socket taken).
pub fn run(options: &Options) -> anyhow::Result<()> {
    let mut event_loop: EventLoop<State> = EventLoop::try_new().context("create the event loop")?;
    let display: Display<State> = Display::new().context("create the Wayland display")?;
    let handle = display.handle();
    // The socket first: the session starts its apps as soon as it is
    // there, and their start-up (fonts, mostly) overlaps ours; a client
    // that connects early waits in the backlog until the loop runs.
    let socket = ListeningSocketSource::with_name(&options.socket_name)
        .with_context(|| format!("bind the Wayland socket {}", options.socket_name))?;
    // Compiling an xkb keymap takes milliseconds: the text keymap's on a
    // thread while the seat's compiles here (and gpud sets up on its own
    // thread: see GpuOutput::connect).
    let text_keymap = {
        let (layout, variant) = (
            options.keyboard_layout.clone(),
            options.keyboard_variant.clone(),
        );
        std::thread::spawn(move || keymap::Keymap::new(&layout, &variant))
    };
    let gpu = GpuOutput::connect(&options.gpu_socket)?;
    let mut seat_state = SeatState::new();
    let mut seat = seat_state.new_wl_seat(&handle, "seat0");
    let xkb = smithay::input::keyboard::XkbConfig {
        layout: &options.keyboard_layout,
        variant: &options.keyboard_variant,
        ..Default::default()
    };
    seat.add_keyboard(xkb, 400, 30).map_err(|error| {
        anyhow::anyhow!(
            "the keyboard's keymap (layout {:?}, variant {:?}): {error:?}",
            options.keyboard_layout,
            options.keyboard_variant
        )
    })?;
    seat.add_pointer();
    let text_keymap = text_keymap
        .join()
        .map_err(|_| anyhow::anyhow!("the keymap's set-up panicked"))??;
    let (width, height) = (gpu.width as i32, gpu.height as i32);

    let output = Output::new(
        "flotilla-1".to_owned(),
        PhysicalProperties {
            // As if at 96 DPI: clients that size fonts by DPI get sane ones.
            size: ((width * 254 / 960), (height * 254 / 960)).into(),
            subpixel: Subpixel::Unknown,
            make: "Flotilla".to_owned(),
            model: "gpud".to_owned(),
        },
    );
    let _global = output.create_global::<State>(&handle);
    let mode = OutputMode {
        size: (width, height).into(),
        refresh: options.refresh_mhz as i32,
    };
    output.change_current_state(
        Some(mode),
        Some(Transform::Normal),
        None,
        Some((0, 0).into()),
    );
    output.set_preferred(mode);
    let mut space = Space::default();
    space.map_output(&output, (0, 0));

    let clock = FrameClock {
        handle: event_loop.handle(),
        refresh: Duration::from_micros(1_000_000_000 / u64::from(options.refresh_mhz.max(1000))),
        watched: false,
        armed: false,
        // Long ago: the first frame is never held back.
        last: Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now),
        busy_since: Instant::now(),
    };
    let mut state = State {
        clock,
        display: handle.clone(),
        started: Instant::now(),
        space,
        order: Vec::new(),
        layout: options.layout,
        popups: PopupManager::default(),
        output,
        compositor_state: CompositorState::new::<State>(&handle),
        xdg_shell_state: XdgShellState::new::<State>(&handle),
        _decoration_state: XdgDecorationState::new::<State>(&handle),
        shm_state: ShmState::new::<State>(&handle, vec![]),
        _output_manager_state: OutputManagerState::new_with_xdg_output::<State>(&handle),
        seat_state,
        data_device_state: DataDeviceState::new::<State>(&handle),
        _primary_selection_state: PrimarySelectionState::new::<State>(&handle),
        _fractional_scale_state: FractionalScaleManagerState::new::<State>(&handle),
        _presentation_state: PresentationState::new::<State>(&handle, libc::CLOCK_MONOTONIC as u32),
        // Crops and scales are drawn by gpud (a scaled composition draw).
        _viewporter_state: smithay::wayland::viewporter::ViewporterState::new::<State>(&handle),
        clock_monotonic: smithay::utils::Clock::new(),
        presented: 0,
        seat,
        gpu,
        keys: Keys::default(),
        pending_focus: None,
        window_ids: std::collections::HashMap::new(),
        next_window_id: 1,
        decorated: std::collections::HashSet::new(),
        bars: std::collections::HashMap::new(),
        held: std::collections::HashMap::new(),
        keymap: text_keymap,
        pointer_at: (0.0, 0.0),
        gpu_failed: None,
        gpu_socket: options.gpu_socket.clone(),
        gpu_lost: None,
        signal: event_loop.get_signal(),
    };

    let loop_handle = event_loop.handle();
    loop_handle
        .insert_source(socket, |stream, _, state| {
            if let Err(error) = state
                .display
                .insert_client(stream, Arc::new(ClientState::default()))
            {
                tracing::warn!(%error, "cannot add a client");
            }
        })
        .map_err(|error| anyhow::anyhow!("watch the Wayland socket: {error}"))?;
    loop_handle
        .insert_source(
            Generic::new(display, Interest::READ, Mode::Level),
            |_, display, state| {
                // SAFETY: the display is not dropped while the loop runs.
                unsafe {
                    display.get_mut().dispatch_clients(state)?;
                }
                Ok(PostAction::Continue)
            },
        )
        .map_err(|error| anyhow::anyhow!("watch the display: {error}"))?;
    if let Some(path) = &options.control {
        let (calls, channel) = smithay::reexports::calloop::channel::channel::<control::Call>();
        control::serve(path, calls)
            .with_context(|| format!("serve the control socket {}", path.display()))?;
        loop_handle
            .insert_source(channel, |event, _, state| {
                if let smithay::reexports::calloop::channel::Event::Msg(call) = event {
                    let answer = state.execute(call.request, call.connection);
                    let _ = call.reply.send(answer);
                }
            })
            .map_err(|error| anyhow::anyhow!("watch the control socket: {error}"))?;
    }
    // No frame yet: gpud's set-up shows the background, and a frame now
    // would only wait for it, holding up the first clients' configures.
    state.watch_gpu_when_ready();
    eprintln!(
        "compositor: {}×{} on WAYLAND_DISPLAY={}",
        width, height, options.socket_name
    );
    let mut failed = None;
    event_loop
        .run(None, &mut state, |state| {
            if let Err(error) = state.display.flush_clients() {
                tracing::warn!(%error, "flush clients");
            }
            if let Some(error) = state.gpu_failed.take() {
                failed = Some(error);
            }
        })
        .context("run the event loop")?;
    match failed {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Maps protocol objects (surfaces) to the stable keys gpud resources use.
#[derive(Default)]
struct Keys {
    next: u64,
    keys: std::collections::HashMap<smithay::reexports::wayland_server::backend::ObjectId, u64>,
    uploaded: std::collections::HashMap<u64, smithay::backend::renderer::utils::CommitCounter>,
}

impl State {
    /// Makes sure a frame happens at the next refresh boundary.
    fn schedule_frame(&mut self) {
        if self.clock.armed {
            return;
        }
        let delay =
            (self.clock.last + self.clock.period()).saturating_duration_since(Instant::now());
        let inserted =
            self.clock
                .handle
                .insert_source(Timer::from_duration(delay), |_, _, state| {
                    // Until gpud's set-up is over a frame would block the
                    // loop waiting for it: look again shortly.
                    if state.gpu.setting_up() {
                        return TimeoutAction::ToDuration(Duration::from_millis(2));
                    }
                    state.clock.armed = false;
                    state.clock.frame_now();
                    state.frame();
                    TimeoutAction::Drop
                });
        match inserted {
            Ok(_) => self.clock.armed = true,
            Err(error) => tracing::error!(%error, "cannot schedule a frame"),
        }
    }

    /// Places every toplevel by the layout and tells each its size.
    fn arrange(&mut self) {
        let (width, height) = (self.gpu.width as i32, self.gpu.height as i32);
        let count = self.order.len();
        let tiled = self.layout == Layout::Tiled && count > 1;
        let left = width / 2;
        for (index, window) in self.order.clone().iter().enumerate() {
            let (x, y, w, h) = if !tiled {
                (0, 0, width, height)
            } else if index == 0 {
                (0, 0, left, height)
            } else {
                // The rest share the right half, top to bottom.
                let rows = (count - 1) as i32;
                let row = index as i32 - 1;
                let top = height * row / rows;
                let bottom = height * (row + 1) / rows;
                (left, top, width - left, bottom - top)
            };
            let Some(toplevel) = window.toplevel() else {
                continue;
            };
            // A decorated window's title bar takes the top of its tile.
            let (y, h) = if self.decorated.contains(&toplevel.wl_surface().id()) {
                let bar = decoration::TITLE_HEIGHT as i32;
                (y + bar, (h - bar).max(1))
            } else {
                (y, h)
            };
            toplevel.with_pending_state(|state| {
                state.size = Some((w, h).into());
                if tiled {
                    state.states.unset(xdg_toplevel::State::Maximized);
                    for edge in [
                        xdg_toplevel::State::TiledLeft,
                        xdg_toplevel::State::TiledRight,
                        xdg_toplevel::State::TiledTop,
                        xdg_toplevel::State::TiledBottom,
                    ] {
                        state.states.set(edge);
                    }
                } else {
                    state.states.set(xdg_toplevel::State::Maximized);
                    for edge in [
                        xdg_toplevel::State::TiledLeft,
                        xdg_toplevel::State::TiledRight,
                        xdg_toplevel::State::TiledTop,
                        xdg_toplevel::State::TiledBottom,
                    ] {
                        state.states.unset(edge);
                    }
                }
            });
            if toplevel.is_initial_configure_sent() {
                toplevel.send_pending_configure();
            }
            self.space.map_element(window.clone(), (x, y), false);
        }
        self.schedule_frame();
    }

    /// Keeps a popup inside the output: the positioner's constraint
    /// adjustments (slide, flip, resize) against the output's rectangle,
    /// in the popup's parent's coordinates.
    fn unconstrain(&self, popup: &PopupSurface) {
        let kind = PopupKind::Xdg(popup.clone());
        let Ok(root) = smithay::desktop::find_popup_root_surface(&kind) else {
            return;
        };
        let Some(window) = self
            .space
            .elements()
            .find(|w| w.toplevel().is_some_and(|t| t.wl_surface() == &root))
        else {
            return;
        };
        let Some(location) = self.space.element_location(window) else {
            return;
        };
        let mut target = smithay::utils::Rectangle::<i32, smithay::utils::Logical>::new(
            (0, 0).into(),
            (self.gpu.width as i32, self.gpu.height as i32).into(),
        );
        target.loc -= location;
        target.loc -= smithay::desktop::get_popup_toplevel_coords(&kind);
        popup.with_pending_state(|state| {
            state.geometry = state.positioner.get_unconstrained_geometry(target);
        });
    }

    /// Changes the output's size: gpud's scanout is remade, the output's
    /// mode changes (clients get wl_output events) and windows are
    /// arranged again.
    fn resize_output(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        self.gpu.resize(width, height)?;
        let mode = OutputMode {
            size: (width as i32, height as i32).into(),
            refresh: self
                .output
                .current_mode()
                .map_or(60_000, |mode| mode.refresh),
        };
        self.output
            .change_current_state(Some(mode), None, None, None);
        self.output.set_preferred(mode);
        self.arrange();
        Ok(())
    }

    /// Watches gpud's connection once its set-up (on a thread, talking on
    /// that connection) is over.
    fn watch_gpu_when_ready(&mut self) {
        let poll = Duration::from_millis(5);
        let timer =
            self.clock
                .handle
                .insert_source(Timer::from_duration(poll), move |_, _, state| {
                    if state.gpu_lost.is_some() {
                        // A reconnect watches its own connection.
                        return TimeoutAction::Drop;
                    }
                    if state.gpu.setting_up() {
                        return TimeoutAction::ToDuration(poll);
                    }
                    match state.gpu.ready() {
                        Ok(()) => state.watch_gpu(),
                        Err(error) => state.lose_gpu(error),
                    }
                    TimeoutAction::Drop
                });
        if let Err(error) = timer {
            tracing::warn!(%error, "gpud's connection is not watched");
        }
    }

    /// Notices gpud closing the connection while nothing is drawn (an
    /// idle desktop would otherwise find out only at its next frame).
    fn watch_gpu(&mut self) {
        let watched = self
            .gpu
            .watch()
            .map_err(anyhow::Error::from)
            .and_then(|stream| {
                self.clock
                    .handle
                    .insert_source(
                        Generic::new(stream, Interest::READ, Mode::Level),
                        |_, _, state| {
                            if state.gpu_lost.is_none() {
                                state.lose_gpu(anyhow::anyhow!("gpud closed the connection"));
                            }
                            Ok(PostAction::Remove)
                        },
                    )
                    .map_err(|error| anyhow::anyhow!("watch gpud's connection: {error}"))
            });
        if let Err(error) = watched {
            tracing::warn!(%error, "gpud's connection is not watched");
        }
    }

    /// gpud went away (the node agent restarting, say): keep the clients
    /// and try its socket again every 100 ms; give up (and end the
    /// desktop) after [`GPU_RECONNECT`].
    fn lose_gpu(&mut self, error: anyhow::Error) {
        if self.gpu_lost.is_none() {
            eprintln!("compositor: gpud went away ({error:#}); reconnecting");
            self.gpu_lost = Some(Instant::now());
        }
        let retry = self.clock.handle.insert_source(
            Timer::from_duration(Duration::from_millis(100)),
            |_, _, state| {
                state.reconnect_gpu();
                TimeoutAction::Drop
            },
        );
        if let Err(error) = retry {
            self.gpu_failed = Some(anyhow::anyhow!("cannot schedule a gpud reconnect: {error}"));
            self.signal.stop();
        }
    }

    fn reconnect_gpu(&mut self) {
        let (width, height) = (self.gpu.width, self.gpu.height);
        let connected = GpuOutput::connect(&self.gpu_socket).and_then(|mut gpu| {
            if (gpu.width, gpu.height) != (width, height) {
                gpu.resize(width, height)?;
            }
            Ok(gpu)
        });
        match connected {
            Ok(gpu) => {
                eprintln!("compositor: gpud is back");
                self.gpu = gpu;
                self.gpu_lost = None;
                self.watch_gpu_when_ready();
                // Every surface is new to this gpud: all of it is uploaded.
                self.schedule_frame();
            }
            Err(error) => {
                if self
                    .gpu_lost
                    .is_some_and(|since| since.elapsed() > GPU_RECONNECT)
                {
                    self.gpu_failed = Some(error.context(format!(
                        "gpud did not come back in {} s",
                        GPU_RECONNECT.as_secs()
                    )));
                    self.signal.stop();
                } else {
                    self.lose_gpu(error);
                }
            }
        }
    }

    /// One tick of the output clock: compose what changed, then let
    /// clients draw their next frame.
    fn frame(&mut self) {
        if self.gpu_lost.is_some() {
            return;
        }
        self.space.refresh();
        self.popups.cleanup();
        let mut surfaces = Vec::new();
        let mut buffers = std::collections::HashMap::new();
        let mut keys = std::mem::take(&mut self.keys);
        let mut live = std::collections::HashSet::new();
        let mut bar_pixels = std::collections::HashMap::new();
        for window in self.space.elements() {
            let Some(location) = self.space.element_location(window) else {
                continue;
            };
            let Some(toplevel) = window.toplevel() else {
                continue;
            };
            let geometry = window.geometry();
            if self.decorated.contains(&toplevel.wl_surface().id()) {
                if let Some(id) = self.window_ids.get(&toplevel.wl_surface().id()) {
                    let focused = self
                        .seat
                        .get_keyboard()
                        .and_then(|keyboard| keyboard.current_focus())
                        .is_some_and(|focus| &focus == toplevel.wl_surface());
                    let bar = title_bar(
                        toplevel,
                        u64::from(*id) | DECORATION_KEY,
                        (location.x, location.y),
                        geometry.size.w,
                        focused,
                        &mut self.bars,
                        &mut bar_pixels,
                    );
                    surfaces.extend(bar);
                }
            }
            let origin = (location.x - geometry.loc.x, location.y - geometry.loc.y);
            collect(
                toplevel.wl_surface(),
                origin,
                &mut keys,
                &mut live,
                &mut surfaces,
                &mut buffers,
            );
            for (popup, offset) in PopupManager::popups_for_surface(toplevel.wl_surface()) {
                let popup_geometry = popup.geometry();
                let at = (
                    location.x + offset.x - popup_geometry.loc.x,
                    location.y + offset.y - popup_geometry.loc.y,
                );
                collect(
                    popup.wl_surface(),
                    at,
                    &mut keys,
                    &mut live,
                    &mut surfaces,
                    &mut buffers,
                );
            }
        }
        keys.keys.retain(|_, key| live.contains(key));
        keys.uploaded.retain(|key, _| live.contains(key));
        self.keys = keys;
        self.bars
            .retain(|key, _| surfaces.iter().any(|surface| surface.key == *key));
        let mut copy = |key: u64, area: &Rect, out: &mut [u8]| -> bool {
            if let Some((pixels, width)) = bar_pixels.get(&key) {
                return copy_rows(pixels, *width, area, out);
            }
            let Some((buffer, width)) = buffers.get(&key) else {
                return false;
            };
            copy_area(buffer, *width, area, out)
        };
        match self.gpu.render(&mut surfaces, &mut copy) {
            Ok(_) => {}
            Err(error) => {
                self.lose_gpu(error);
                return;
            }
        }
        let elapsed = self.started.elapsed();
        let output = self.output.clone();
        // Everything composed is on this one output; gpud holds the frame
        // from now on, so it counts as presented now.
        let mut feedback = smithay::desktop::utils::OutputPresentationFeedback::new(&output);
        for window in self.space.elements() {
            window.take_presentation_feedback(
                &mut feedback,
                |_, _| Some(output.clone()),
                |_, _| smithay::reexports::wayland_protocols::wp::presentation_time::server::wp_presentation_feedback::Kind::empty(),
            );
            window.send_frame(&output, elapsed, Some(Duration::ZERO), |_, _| {
                Some(output.clone())
            });
        }
        self.presented += 1;
        feedback.presented(
            self.clock_monotonic.now(),
            Refresh::fixed(self.clock.period()),
            self.presented,
            smithay::reexports::wayland_protocols::wp::presentation_time::server::wp_presentation_feedback::Kind::empty(),
        );
    }
}

/// Keys of title bars: a window's id with the top bit set (surface keys
/// count up from 1 and never get there).
const DECORATION_KEY: u64 = 1 << 63;

/// `toplevel`'s title bar above `location` (the window's top left),
/// `width` wide: its damage is all of it when its title, focus or width
/// changed since it was last drawn (then its pixels go to `pixels`),
/// none otherwise.
fn title_bar(
    toplevel: &ToplevelSurface,
    key: u64,
    location: (i32, i32),
    width: i32,
    focused: bool,
    bars: &mut std::collections::HashMap<u64, (String, bool, u32)>,
    pixels: &mut std::collections::HashMap<u64, (Vec<u8>, u32)>,
) -> Option<SurfaceFrame> {
    let width = u32::try_from(width).ok().filter(|w| *w > 0)?;
    let title = smithay::wayland::compositor::with_states(toplevel.wl_surface(), |states| {
        let data = states
            .data_map
            .get::<smithay::wayland::shell::xdg::XdgToplevelSurfaceData>()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        data.title.clone().or_else(|| data.app_id.clone())
    })
    .unwrap_or_default();
    let height = decoration::TITLE_HEIGHT;
    let now = (title, focused, width);
    let damage = if bars.get(&key) == Some(&now) {
        Vec::new()
    } else {
        pixels.insert(key, (decoration::title_bar(width, &now.0, focused), width));
        bars.insert(key, now);
        vec![Rect {
            x: 0,
            y: 0,
            width,
            height,
        }]
    };
    Some(SurfaceFrame {
        key,
        x: location.0,
        y: location.1 - height as i32,
        width,
        height,
        source: Rect {
            x: 0,
            y: 0,
            width,
            height,
        },
        size: (width, height),
        format: Format::B8G8R8X8,
        opaque: true,
        damage,
    })
}

/// Copies `area` of `pixels` (rows of `width` × 4 bytes) into `out`
/// (rows of the same width).
fn copy_rows(pixels: &[u8], width: u32, area: &Rect, out: &mut [u8]) -> bool {
    let stride = width as usize * 4;
    for row in area.y as usize..(area.y + area.height) as usize {
        let start = row * stride + area.x as usize * 4;
        let end = start + area.width as usize * 4;
        if end > pixels.len() || end > out.len() {
            return false;
        }
        out[start..end].copy_from_slice(&pixels[start..end]);
    }
    true
}

/// Adds `root`'s surface tree (placed at `origin`) to `surfaces`, each
/// with its damage since it was last uploaded.
fn collect(
    root: &WlSurface,
    origin: (i32, i32),
    keys: &mut Keys,
    live: &mut std::collections::HashSet<u64>,
    surfaces: &mut Vec<SurfaceFrame>,
    buffers: &mut std::collections::HashMap<u64, (wl_buffer::WlBuffer, u32)>,
) {
    with_surface_tree_downward(
        root,
        origin,
        |_, states, location| {
            let Some(data) = states.data_map.get::<RendererSurfaceStateUserData>() else {
                return TraversalAction::SkipChildren;
            };
            match data.lock().unwrap_or_else(|p| p.into_inner()).view() {
                Some(view) => TraversalAction::DoChildren((
                    location.0 + view.offset.x,
                    location.1 + view.offset.y,
                )),
                None => TraversalAction::SkipChildren,
            }
        },
        |surface, states, location| {
            let Some(data) = states.data_map.get::<RendererSurfaceStateUserData>() else {
                return;
            };
            let data = data.lock().unwrap_or_else(|p| p.into_inner());
            let (Some(view), Some(buffer)) = (data.view(), data.buffer()) else {
                return;
            };
            let buffer: &wl_buffer::WlBuffer = buffer;
            let Ok((width, height, format)) =
                with_buffer_contents(buffer, |_, _, info| (info.width, info.height, info.format))
            else {
                return;
            };
            let format = match format {
                wl_shm::Format::Argb8888 => Format::B8G8R8A8,
                wl_shm::Format::Xrgb8888 => Format::B8G8R8X8,
                _ => return,
            };
            if width <= 0 || height <= 0 {
                return;
            }
            let id = surface.id();
            let next = &mut keys.next;
            let key = *keys.keys.entry(id).or_insert_with(|| {
                *next += 1;
                *next
            });
            live.insert(key);
            let commit = data.current_commit();
            let damage = match keys.uploaded.get(&key) {
                Some(seen) if *seen == commit => Vec::new(),
                seen => data
                    .damage_since(seen.copied())
                    .iter()
                    .filter_map(|r| {
                        let x = r.loc.x.max(0);
                        let y = r.loc.y.max(0);
                        let w = (r.loc.x + r.size.w).min(width) - x;
                        let h = (r.loc.y + r.size.h).min(height) - y;
                        (w > 0 && h > 0).then_some(Rect {
                            x: x as u32,
                            y: y as u32,
                            width: w as u32,
                            height: h as u32,
                        })
                    })
                    .collect(),
            };
            keys.uploaded.insert(key, commit);
            buffers.insert(key, (buffer.clone(), width as u32));
            // wp_viewporter: the crop (buffer pixels: buffer scale 1, no
            // transform) and the size on the output.
            let source = {
                let x = view.src.loc.x.max(0.0).round() as u32;
                let y = view.src.loc.y.max(0.0).round() as u32;
                Rect {
                    x,
                    y,
                    width: (view.src.size.w.round() as u32)
                        .clamp(1, (width as u32).saturating_sub(x).max(1)),
                    height: (view.src.size.h.round() as u32)
                        .clamp(1, (height as u32).saturating_sub(y).max(1)),
                }
            };
            let size = (view.dst.w.max(1) as u32, view.dst.h.max(1) as u32);
            // Opaque when the client says all of it is (foot does, with an
            // ARGB buffer): what is beneath is not drawn.
            let opaque = states
                .cached_state
                .get::<smithay::wayland::compositor::SurfaceAttributes>()
                .current()
                .opaque_region
                .as_ref()
                .is_some_and(|region| {
                    use smithay::wayland::compositor::RectangleKind;
                    let whole = smithay::utils::Rectangle::<i32, smithay::utils::Logical>::new(
                        (0, 0).into(),
                        view.dst,
                    );
                    region
                        .rects
                        .iter()
                        .all(|(kind, _)| matches!(kind, RectangleKind::Add))
                        && region
                            .rects
                            .iter()
                            .any(|(_, rect)| rect.contains_rect(whole))
                });
            surfaces.push(SurfaceFrame {
                opaque,
                key,
                x: location.0 + view.offset.x,
                y: location.1 + view.offset.y,
                width: width as u32,
                height: height as u32,
                source,
                size,
                format,
                damage,
            });
        },
        |_, _, _| true,
    );
}

/// Copies `area` of a client's shm buffer into `out` (rows of `width` × 4
/// bytes), every offset checked against the pool: a client that lies
/// about its buffer gets nothing copied.
fn copy_area(buffer: &wl_buffer::WlBuffer, width: u32, area: &Rect, out: &mut [u8]) -> bool {
    with_buffer_contents(buffer, |pointer, len, info| {
        let stride = info.stride.max(0) as usize;
        let row_bytes = area.width as usize * 4;
        for row in area.y as usize..(area.y + area.height) as usize {
            let Some(start) = (info.offset.max(0) as usize)
                .checked_add(row * stride)
                .and_then(|s| s.checked_add(area.x as usize * 4))
            else {
                return false;
            };
            let target = row * width as usize * 4 + area.x as usize * 4;
            if start + row_bytes > len || target + row_bytes > out.len() {
                return false;
            }
            // SAFETY: [start, start + row_bytes) lies within the client's
            // mapped pool of `len` bytes (checked above); the client may
            // change it concurrently, which changes only pixel values.
            let source = unsafe { std::slice::from_raw_parts(pointer.add(start), row_bytes) };
            out[target..target + row_bytes].copy_from_slice(source);
        }
        true
    })
    .unwrap_or(false)
}

impl CompositorHandler for State {
    fn compositor_state(&mut self) -> &mut CompositorState {
        &mut self.compositor_state
    }

    fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
        &client
            .get_data::<ClientState>()
            .expect("every client has our data")
            .compositor_state
    }

    fn commit(&mut self, surface: &WlSurface) {
        on_commit_buffer_handler::<Self>(surface);
        self.schedule_frame();
        if !is_sync_subsurface(surface) {
            let mut root = surface.clone();
            while let Some(parent) = get_parent(&root) {
                root = parent;
            }
            if let Some(window) = self
                .space
                .elements()
                .find(|w| w.toplevel().is_some_and(|t| t.wl_surface() == &root))
            {
                window.on_commit();
                if let Some(toplevel) = window.toplevel() {
                    if !toplevel.is_initial_configure_sent() {
                        toplevel.send_configure();
                    }
                }
            }
            let shows_something =
                smithay::backend::renderer::utils::with_renderer_surface_state(&root, |state| {
                    state.buffer().is_some()
                })
                .unwrap_or(false);
            if shows_something && self.pending_focus.as_ref() == Some(&root) {
                self.pending_focus = None;
                if let Some(keyboard) = self.seat.get_keyboard() {
                    keyboard.set_focus(
                        self,
                        Some(root),
                        smithay::utils::SERIAL_COUNTER.next_serial(),
                    );
                }
            }
        }
        self.popups.commit(surface);
        if let Some(PopupKind::Xdg(popup)) = self.popups.find_popup(surface) {
            if !popup.is_initial_configure_sent() {
                let _ = popup.send_configure();
            }
        }
    }
}

impl BufferHandler for State {
    fn buffer_destroyed(&mut self, _buffer: &wl_buffer::WlBuffer) {}
}

impl ShmHandler for State {
    fn shm_state(&self) -> &ShmState {
        &self.shm_state
    }
}

impl XdgShellHandler for State {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.xdg_shell_state
    }

    fn new_toplevel(&mut self, surface: ToplevelSurface) {
        surface.with_pending_state(|state| {
            state.states.set(xdg_toplevel::State::Activated);
            state.decoration_mode = Some(DecorationMode::ServerSide);
        });
        // Keyboard focus once it shows something: an enter before the
        // first configure crashes some clients (foot 1.13).
        self.pending_focus = Some(surface.wl_surface().clone());
        self.window_ids
            .insert(surface.wl_surface().id(), self.next_window_id);
        self.next_window_id += 1;
        let window = Window::new_wayland_window(surface);
        self.order.push(window.clone());
        self.space.map_element(window, (0, 0), true);
        self.arrange();
    }

    fn new_popup(&mut self, surface: PopupSurface, positioner: PositionerState) {
        surface.with_pending_state(|state| {
            state.geometry = positioner.get_geometry();
            state.positioner = positioner;
        });
        self.unconstrain(&surface);
        if let Err(error) = self.popups.track_popup(PopupKind::Xdg(surface)) {
            tracing::warn!(%error, "cannot track a popup");
        }
    }

    fn grab(&mut self, _surface: PopupSurface, _seat: wl_seat::WlSeat, _serial: Serial) {}

    fn popup_destroyed(&mut self, _surface: PopupSurface) {
        self.schedule_frame();
    }

    fn reposition_request(
        &mut self,
        surface: PopupSurface,
        positioner: PositionerState,
        token: u32,
    ) {
        surface.with_pending_state(|state| {
            state.geometry = positioner.get_geometry();
            state.positioner = positioner;
        });
        self.unconstrain(&surface);
        surface.send_repositioned(token);
    }

    fn title_changed(&mut self, _surface: ToplevelSurface) {
        // Its title bar is drawn again (if it has one).
        self.schedule_frame();
    }

    fn app_id_changed(&mut self, _surface: ToplevelSurface) {
        self.schedule_frame();
    }

    fn toplevel_destroyed(&mut self, surface: ToplevelSurface) {
        let gone: Vec<Window> = self
            .space
            .elements()
            .filter(|w| w.toplevel().is_some_and(|t| t == &surface))
            .cloned()
            .collect();
        for window in gone {
            self.space.unmap_elem(&window);
        }
        self.order
            .retain(|w| w.toplevel().is_some_and(|t| t != &surface));
        self.window_ids.remove(&surface.wl_surface().id());
        self.decorated.remove(&surface.wl_surface().id());
        self.arrange();
        self.schedule_frame();
    }
}

impl XdgDecorationHandler for State {
    fn new_decoration(&mut self, toplevel: ToplevelSurface) {
        toplevel
            .with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
        // It gets a title bar: its tile shrinks to make room.
        self.decorated.insert(toplevel.wl_surface().id());
        self.arrange();
    }

    fn request_mode(&mut self, toplevel: ToplevelSurface, _mode: DecorationMode) {
        // Always server side: the compositor draws the title.
        toplevel
            .with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
        if toplevel.is_initial_configure_sent() {
            toplevel.send_pending_configure();
        }
    }

    fn unset_mode(&mut self, toplevel: ToplevelSurface) {
        toplevel
            .with_pending_state(|state| state.decoration_mode = Some(DecorationMode::ServerSide));
        if toplevel.is_initial_configure_sent() {
            toplevel.send_pending_configure();
        }
    }
}

impl SeatHandler for State {
    type KeyboardFocus = WlSurface;
    type PointerFocus = WlSurface;
    type TouchFocus = WlSurface;

    fn seat_state(&mut self) -> &mut SeatState<State> {
        &mut self.seat_state
    }

    fn focus_changed(&mut self, seat: &Seat<Self>, focused: Option<&WlSurface>) {
        // Title bars show which window has the keyboard.
        self.schedule_frame();
        let client = focused.and_then(|surface| self.display.get_client(surface.id()).ok());
        set_data_device_focus(&self.display, seat, client.clone());
        set_primary_focus(&self.display, seat, client);
    }
}

impl SelectionHandler for State {
    type SelectionUserData = ();
}

impl DataDeviceHandler for State {
    fn data_device_state(&self) -> &DataDeviceState {
        &self.data_device_state
    }
}

impl PrimarySelectionHandler for State {
    fn primary_selection_state(&self) -> &PrimarySelectionState {
        &self._primary_selection_state
    }
}

impl FractionalScaleHandler for State {
    fn new_fractional_scale(&mut self, surface: WlSurface) {
        // One output at scale 1: clients draw at the output's pixels.
        smithay::wayland::compositor::with_states(&surface, |states| {
            with_fractional_scale(states, |scale| scale.set_preferred_scale(1.0));
        });
    }
}

impl ClientDndGrabHandler for State {}
impl ServerDndGrabHandler for State {}
impl OutputHandler for State {}

delegate_compositor!(State);
delegate_shm!(State);
delegate_xdg_shell!(State);
delegate_xdg_decoration!(State);
delegate_seat!(State);
delegate_data_device!(State);
delegate_output!(State);
delegate_primary_selection!(State);
delegate_fractional_scale!(State);
delegate_presentation!(State);
smithay::delegate_viewporter!(State);

/// The control socket's requests, executed on the compositor's loop.
impl State {
    fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    fn key(&mut self, code: u32, pressed: bool) {
        let Some(keyboard) = self.seat.get_keyboard() else {
            return;
        };
        let state = if pressed {
            smithay::backend::input::KeyState::Pressed
        } else {
            smithay::backend::input::KeyState::Released
        };
        let serial = smithay::utils::SERIAL_COUNTER.next_serial();
        let time = self.now_ms();
        keyboard.input::<(), _>(
            self,
            smithay::input::keyboard::Keycode::new(code + 8),
            state,
            serial,
            time,
            |_, _, _| smithay::input::keyboard::FilterResult::Forward,
        );
    }

    /// Taps `code`, with Shift around it if asked.
    fn tap(&mut self, code: u32, shift: bool) {
        if shift {
            self.key(keymap::LEFT_SHIFT, true);
        }
        self.key(code, true);
        self.key(code, false);
        if shift {
            self.key(keymap::LEFT_SHIFT, false);
        }
    }

    fn surface_under(
        &self,
        at: (f64, f64),
    ) -> Option<(
        WlSurface,
        smithay::utils::Point<f64, smithay::utils::Logical>,
    )> {
        let point: smithay::utils::Point<f64, smithay::utils::Logical> = at.into();
        self.space
            .element_under(point)
            .and_then(|(window, location)| {
                window
                    .surface_under(
                        point - location.to_f64(),
                        smithay::desktop::WindowSurfaceType::ALL,
                    )
                    .map(|(surface, offset)| (surface, (offset + location).to_f64()))
            })
    }

    fn focus_window(&mut self, window: &Window) {
        self.space.raise_element(window, true);
        if let (Some(keyboard), Some(toplevel)) = (self.seat.get_keyboard(), window.toplevel()) {
            let surface = toplevel.wl_surface().clone();
            keyboard.set_focus(
                self,
                Some(surface),
                smithay::utils::SERIAL_COUNTER.next_serial(),
            );
        }
    }

    fn window_id(&self, window: &Window) -> Option<u32> {
        let toplevel = window.toplevel()?;
        self.window_ids.get(&toplevel.wl_surface().id()).copied()
    }

    fn windows(&self) -> serde_json::Value {
        let focused = self
            .seat
            .get_keyboard()
            .and_then(|keyboard| keyboard.current_focus());
        let windows: Vec<serde_json::Value> = self
            .space
            .elements()
            .filter_map(|window| {
                let toplevel = window.toplevel()?;
                let (title, app_id) =
                    smithay::wayland::compositor::with_states(toplevel.wl_surface(), |states| {
                        states
                            .data_map
                            .get::<smithay::wayland::shell::xdg::XdgToplevelSurfaceData>()
                            .map(|data| {
                                let data = data.lock().unwrap_or_else(|p| p.into_inner());
                                (data.title.clone(), data.app_id.clone())
                            })
                            .unwrap_or_default()
                    });
                let location = self.space.element_location(window)?;
                let geometry = window.geometry();
                let popups: Vec<serde_json::Value> =
                    PopupManager::popups_for_surface(toplevel.wl_surface())
                        .map(|(popup, offset)| {
                            let size = popup.geometry().size;
                            serde_json::json!({
                                "x": location.x + offset.x,
                                "y": location.y + offset.y,
                                "width": size.w,
                                "height": size.h,
                            })
                        })
                        .collect();
                Some(serde_json::json!({
                    "id": self.window_id(window)?,
                    "title": title.unwrap_or_default(),
                    "app_id": app_id.unwrap_or_default(),
                    "x": location.x,
                    "y": location.y,
                    "width": geometry.size.w,
                    "height": geometry.size.h,
                    "focused": focused.as_ref() == Some(toplevel.wl_surface()),
                    "popups": popups,
                }))
            })
            .collect();
        serde_json::json!({
            "ok": true,
            "output": {"width": self.gpu.width, "height": self.gpu.height},
            "windows": windows,
        })
    }

    fn execute(&mut self, request: control::Request, connection: u64) -> serde_json::Value {
        use control::{KeyAction, Request};
        let ok = serde_json::json!({"ok": true});
        let fail = |message: String| serde_json::json!({"ok": false, "error": message});
        match request {
            Request::Windows => self.windows(),
            Request::Watched { watched } => {
                self.clock.watched = watched;
                serde_json::json!({
                    "ok": true,
                    "frame_period_us": self.clock.period().as_micros() as u64,
                })
            }
            Request::Focus { id } => {
                let window = self
                    .space
                    .elements()
                    .find(|window| self.window_id(window) == Some(id))
                    .cloned();
                match window {
                    Some(window) => {
                        self.focus_window(&window);
                        ok
                    }
                    None => fail(format!("no window {id}")),
                }
            }
            Request::Key { code, name, state } => {
                let (code, shift) = match (code, name) {
                    (Some(code), _) => (code, false),
                    (None, Some(name)) => match self.keymap.for_name(&name) {
                        Some(key) => key,
                        None => return fail(format!("no key {name:?} in the keymap")),
                    },
                    (None, None) => return fail("no key".to_owned()),
                };
                let held = &mut self.held.entry(connection).or_default().0;
                match state {
                    KeyAction::Press => {
                        if !held.contains(&code) {
                            held.push(code);
                        }
                        self.key(code, true);
                    }
                    KeyAction::Release => {
                        held.retain(|held| *held != code);
                        self.key(code, false);
                    }
                    KeyAction::Tap => self.tap(code, shift),
                }
                ok
            }
            Request::Text { text } => {
                let mut keys = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match self.keymap.for_char(c) {
                        Some(key) => keys.push(key),
                        None => {
                            return fail(format!(
                                "the keymap cannot type {c:?} (U+{:04X}); nothing was typed",
                                c as u32
                            ))
                        }
                    }
                }
                for (code, shift) in keys {
                    self.tap(code, shift);
                }
                ok
            }
            Request::Motion { x, y } => {
                let (width, height) = (f64::from(self.gpu.width), f64::from(self.gpu.height));
                if !(0.0..width).contains(&x) || !(0.0..height).contains(&y) {
                    return fail(format!("({x}, {y}) is outside the {width}×{height} output"));
                }
                self.pointer_at = (x, y);
                let focus = self.surface_under((x, y));
                if let Some(pointer) = self.seat.get_pointer() {
                    let event = smithay::input::pointer::MotionEvent {
                        location: (x, y).into(),
                        serial: smithay::utils::SERIAL_COUNTER.next_serial(),
                        time: self.now_ms(),
                    };
                    pointer.motion(self, focus, &event);
                    pointer.frame(self);
                }
                ok
            }
            Request::Button { button, state } => {
                let presses: &[bool] = match state {
                    KeyAction::Press => &[true],
                    KeyAction::Release => &[false],
                    KeyAction::Tap => &[true, false],
                };
                for &pressed in presses {
                    let held = &mut self.held.entry(connection).or_default().1;
                    if pressed {
                        if !held.contains(&button) {
                            held.push(button);
                        }
                        // Focus follows click.
                        let point: smithay::utils::Point<f64, smithay::utils::Logical> =
                            self.pointer_at.into();
                        if let Some((window, _)) = self.space.element_under(point) {
                            let window = window.clone();
                            self.focus_window(&window);
                        }
                    } else {
                        held.retain(|held| *held != button);
                    }
                    self.button(button, pressed);
                }
                ok
            }
            Request::Scroll { dx, dy } => {
                if let Some(pointer) = self.seat.get_pointer() {
                    let mut frame = smithay::input::pointer::AxisFrame::new(self.now_ms());
                    if dx != 0.0 {
                        frame = frame.value(smithay::backend::input::Axis::Horizontal, dx);
                    }
                    if dy != 0.0 {
                        frame = frame.value(smithay::backend::input::Axis::Vertical, dy);
                    }
                    pointer.axis(self, frame);
                    pointer.frame(self);
                }
                ok
            }
            Request::Output { width, height } => {
                let (old_width, old_height) = (self.gpu.width, self.gpu.height);
                match self.resize_output(width, height) {
                    Ok(()) => ok,
                    Err(error) => {
                        // gpud refused (its budget): back to the old size.
                        if let Err(again) = self.resize_output(old_width, old_height) {
                            tracing::error!(%again, "gpud failed");
                            self.gpu_failed = Some(again);
                            self.signal.stop();
                        }
                        fail(format!("cannot resize the output: {error:#}"))
                    }
                }
            }
            Request::ReleaseAll => {
                let (keys, buttons) = self.held.remove(&connection).unwrap_or_default();
                for code in keys {
                    self.key(code, false);
                }
                for button in buttons {
                    self.button(button, false);
                }
                ok
            }
        }
    }

    fn button(&mut self, button: u32, pressed: bool) {
        if let Some(pointer) = self.seat.get_pointer() {
            let event = smithay::input::pointer::ButtonEvent {
                serial: smithay::utils::SERIAL_COUNTER.next_serial(),
                time: self.now_ms(),
                button,
                state: if pressed {
                    smithay::backend::input::ButtonState::Pressed
                } else {
                    smithay::backend::input::ButtonState::Released
                },
            };
            pointer.button(self, &event);
            pointer.frame(self);
        }
    }
}
