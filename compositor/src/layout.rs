//! Where windows go: toplevels placed by the [`Layout`] (maximised, or a
//! master/stack of tiles) with room for their title bars, popups kept
//! inside the output, and the output's size changed at the control
//! socket's request. Placement only; the frame that shows it is
//! [`crate::output`]'s.

use smithay::desktop::PopupKind;
use smithay::output::Mode as OutputMode;
use smithay::reexports::wayland_protocols::xdg::shell::server::xdg_toplevel;
use smithay::reexports::wayland_server::Resource;
use smithay::wayland::shell::xdg::PopupSurface;

use crate::decoration;
use crate::options::Layout;
use crate::state::State;

impl State {
    /// Places every toplevel by the layout and tells each its size.
    pub(crate) fn arrange(&mut self) {
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
    pub(crate) fn unconstrain(&self, popup: &PopupSurface) {
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
    pub(crate) fn resize_output(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
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
}
