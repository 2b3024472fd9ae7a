//! Start-up and the event loop: the Wayland socket bound first (the
//! session starts its apps as soon as it exists), gpud's connection and
//! display size taken, the seat, output and every global made, then the
//! loop's sources — the listening socket, the display, the control
//! socket's channel — and [`run`] until gpud is gone for good or the loop
//! fails. Start-up is ordered for the first frame; see each step.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use smithay::desktop::{PopupManager, Space};
use smithay::input::SeatState;
use smithay::output::{Mode as OutputMode, Output, PhysicalProperties, Subpixel};
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::{EventLoop, Interest, Mode, PostAction};
use smithay::reexports::wayland_server::Display;
use smithay::utils::Transform;
use smithay::wayland::compositor::CompositorState;
use smithay::wayland::fractional_scale::FractionalScaleManagerState;
use smithay::wayland::output::OutputManagerState;
use smithay::wayland::presentation::PresentationState;
use smithay::wayland::selection::data_device::DataDeviceState;
use smithay::wayland::selection::primary_selection::PrimarySelectionState;
use smithay::wayland::shell::xdg::decoration::XdgDecorationState;
use smithay::wayland::shell::xdg::XdgShellState;
use smithay::wayland::shm::ShmState;
use smithay::wayland::socket::ListeningSocketSource;
use smithay::wayland::viewporter::ViewporterState;

use crate::control;
use crate::frame_clock::FrameClock;
use crate::gpu_output::GpuOutput;
use crate::keymap::Keymap;
use crate::options::Options;
use crate::state::{ClientState, Keys, State};

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
        std::thread::spawn(move || Keymap::new(&layout, &variant))
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

    let clock = FrameClock::new(options.refresh_mhz);
    let mut state = State {
        clock,
        loop_handle: event_loop.handle(),
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
        _viewporter_state: ViewporterState::new::<State>(&handle),
        clock_monotonic: smithay::utils::Clock::new(),
        presented: 0,
        seat,
        gpu,
        keys: Keys::default(),
        pending_focus: None,
        window_ids: HashMap::new(),
        next_window_id: 1,
        decorated: HashSet::new(),
        bars: HashMap::new(),
        held: HashMap::new(),
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
