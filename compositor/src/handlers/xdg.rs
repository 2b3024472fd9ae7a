//! xdg-shell and xdg-decoration: toplevels come and go (the layout is
//! re-arranged, ids given for the control socket), popups are placed
//! inside the output, and decorations are always server side — a client
//! that asks gets the compositor's title bar and a tile that much
//! shorter.

use smithay::desktop::{PopupKind, Window};
use smithay::reexports::wayland_protocols::xdg::decoration::zv1::server::zxdg_toplevel_decoration_v1::Mode as DecorationMode;
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::protocol::wl_seat;
use smithay::reexports::wayland_server::Resource;
use smithay::utils::Serial;
use smithay::wayland::shell::xdg::decoration::XdgDecorationHandler;
use smithay::wayland::shell::xdg::{
    PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState,
};

use crate::state::State;

impl XdgShellHandler for State {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.xdg_shell_state
    }

    fn new_toplevel(&mut self, surface: ToplevelSurface) {
        surface.with_pending_state(|state| {
            state.states.set(xdg_toplevel::State::Activated);
            state.decoration_mode = Some(DecorationMode::ServerSide);
        });
        // A new window takes the keyboard only when no window has it (no
        // focus stealing: the terminal a desktop starts with keeps typing
        // when the browser opens after it; a click or a focus request
        // moves it). Given once it shows something: an enter before the
        // first configure crashes some clients (foot 1.13).
        let keyboard_taken = self
            .seat
            .get_keyboard()
            .is_some_and(|keyboard| keyboard.current_focus().is_some());
        if !keyboard_taken && self.pending_focus.is_none() {
            self.pending_focus = Some(surface.wl_surface().clone());
        }
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
        if self.pending_focus.as_ref() == Some(surface.wl_surface()) {
            self.pending_focus = None;
        }
        // The keyboard moves to the newest window left when the one that
        // had it (or was about to) goes.
        let had_keyboard = self.seat.get_keyboard().is_some_and(|keyboard| {
            keyboard
                .current_focus()
                .is_none_or(|focus| &focus == surface.wl_surface())
        });
        if had_keyboard && self.pending_focus.is_none() {
            if let Some(window) = self.order.last().cloned() {
                self.focus_window(&window);
            }
        }
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
