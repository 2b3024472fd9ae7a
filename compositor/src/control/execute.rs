//! The control socket's requests executed on the compositor's loop
//! (which owns the seat, the windows and gpud's connection): each
//! [`Request`] becomes input ([`crate::input`]), a focus change, the
//! window list, a new output size or a frame pace, and one JSON answer.
//! The wire texts of the answers are the control socket's protocol.

use smithay::desktop::{PopupManager, Window};
use smithay::reexports::wayland_server::Resource;

use super::{KeyAction, Request};
use crate::state::State;

/// Why a request could not be carried out; its text is the answer's
/// `error` (the control socket's protocol).
#[derive(Debug, thiserror::Error)]
enum ExecuteError {
    #[error("no window {id}")]
    NoWindow { id: u32 },
    #[error("no key {name:?} in the keymap")]
    NoKeyNamed { name: String },
    #[error("no key")]
    NoKey,
    #[error("the keymap cannot type {character:?} (U+{:04X}); nothing was typed", u32::from(*character))]
    CannotType { character: char },
    #[error("({x}, {y}) is outside the {width}×{height} output")]
    OutsideOutput {
        x: f64,
        y: f64,
        width: f64,
        height: f64,
    },
    /// gpud refused the size (the desktop's budget); the old one is back.
    #[error("cannot resize the output: {0:#}")]
    Resize(#[source] anyhow::Error),
}

impl State {
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

    /// Carries out `request` from control connection `connection`; the
    /// answer is `{"ok":true,...}` or `{"ok":false,"error":...}`.
    pub(crate) fn execute(&mut self, request: Request, connection: u64) -> serde_json::Value {
        self.carry_out(request, connection)
            .unwrap_or_else(|error| serde_json::json!({"ok": false, "error": error.to_string()}))
    }

    fn carry_out(
        &mut self,
        request: Request,
        connection: u64,
    ) -> Result<serde_json::Value, ExecuteError> {
        let ok = Ok(serde_json::json!({"ok": true}));
        match request {
            Request::Windows => Ok(self.windows()),
            Request::Watched { watched } => {
                self.clock.watched = watched;
                Ok(serde_json::json!({
                    "ok": true,
                    "frame_period_us": self.clock.period().as_micros() as u64,
                }))
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
                    None => Err(ExecuteError::NoWindow { id }),
                }
            }
            Request::Key { code, name, state } => {
                let (code, shift) = match (code, name) {
                    (Some(code), _) => (code, false),
                    (None, Some(name)) => match self.keymap.for_name(&name) {
                        Some(key) => key,
                        None => return Err(ExecuteError::NoKeyNamed { name }),
                    },
                    (None, None) => return Err(ExecuteError::NoKey),
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
                        None => return Err(ExecuteError::CannotType { character: c }),
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
                    return Err(ExecuteError::OutsideOutput {
                        x,
                        y,
                        width,
                        height,
                    });
                }
                self.pointer_motion(x, y);
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
                        self.focus_under_pointer();
                    } else {
                        held.retain(|held| *held != button);
                    }
                    self.button(button, pressed);
                }
                ok
            }
            Request::Scroll { dx, dy } => {
                self.scroll(dx, dy);
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
                        Err(ExecuteError::Resize(error))
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
}

#[cfg(test)]
mod tests {
    use super::ExecuteError;

    #[test]
    fn refusals_answer_the_protocols_texts() {
        let text = |error: ExecuteError| error.to_string();
        assert_eq!(text(ExecuteError::NoWindow { id: 99 }), "no window 99");
        assert_eq!(
            text(ExecuteError::NoKeyNamed {
                name: "NoSuchKey".to_owned()
            }),
            r#"no key "NoSuchKey" in the keymap"#
        );
        assert_eq!(
            text(ExecuteError::CannotType { character: 'é' }),
            "the keymap cannot type 'é' (U+00E9); nothing was typed"
        );
        assert_eq!(
            text(ExecuteError::OutsideOutput {
                x: 10000.0,
                y: 1.0,
                width: 640.0,
                height: 480.0
            }),
            "(10000, 1) is outside the 640×480 output"
        );
        let refused = anyhow::anyhow!("ERR_OUT_OF_MEMORY").context("resize the scanout");
        assert_eq!(
            text(ExecuteError::Resize(refused)),
            "cannot resize the output: resize the scanout: ERR_OUT_OF_MEMORY"
        );
    }
}
