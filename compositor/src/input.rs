//! Input injected from the control socket: keys through the seat's
//! keyboard (evdev codes, Shift around a tap when the keymap says so),
//! pointer motion, buttons and scrolling, and the surface under the
//! pointer. There is no input device: the node agent's requests are the
//! only source, executed on the compositor's loop.

use smithay::desktop::Window;
use smithay::reexports::wayland_server::protocol::wl_surface::WlSurface;
use smithay::utils::{Logical, Point};

use crate::keymap;
use crate::state::State;

impl State {
    pub(crate) fn now_ms(&self) -> u32 {
        self.started.elapsed().as_millis() as u32
    }

    pub(crate) fn key(&mut self, code: u32, pressed: bool) {
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
    pub(crate) fn tap(&mut self, code: u32, shift: bool) {
        if shift {
            self.key(keymap::LEFT_SHIFT, true);
        }
        self.key(code, true);
        self.key(code, false);
        if shift {
            self.key(keymap::LEFT_SHIFT, false);
        }
    }

    pub(crate) fn surface_under(&self, at: (f64, f64)) -> Option<(WlSurface, Point<f64, Logical>)> {
        let point: Point<f64, Logical> = at.into();
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

    pub(crate) fn focus_window(&mut self, window: &Window) {
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

    pub(crate) fn button(&mut self, button: u32, pressed: bool) {
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

    /// Moves the pointer to `(x, y)` (inside the output: checked by the
    /// caller), entering the surface under it.
    pub(crate) fn pointer_motion(&mut self, x: f64, y: f64) {
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
    }

    /// Focus follows click: the window under the pointer gets the
    /// keyboard and goes on top.
    pub(crate) fn focus_under_pointer(&mut self) {
        let point: Point<f64, Logical> = self.pointer_at.into();
        if let Some((window, _)) = self.space.element_under(point) {
            let window = window.clone();
            self.focus_window(&window);
        }
    }

    pub(crate) fn scroll(&mut self, dx: f64, dy: f64) {
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
    }
}
