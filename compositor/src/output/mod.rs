//! The output: at each tick of the frame clock, what the windows show is
//! collected ([`surfaces`]) and handed to gpud ([`crate::gpu_output`]) as
//! uploads and one composition list; then frame callbacks and
//! presentation feedback go out. gpud going away and coming back is
//! [`gpud`]'s. The compositor never reads pixels back.

mod gpud;
mod surfaces;

use std::time::{Duration, Instant};

use flotilla_gpu::protocol::Rect;
use smithay::desktop::PopupManager;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::wayland_server::Resource;
use smithay::wayland::presentation::Refresh;

pub use gpud::GPU_RECONNECT;
use surfaces::{collect, copy_area, copy_rows, title_bar, DECORATION_KEY};

use crate::state::State;

impl State {
    /// Makes sure a frame happens at the next refresh boundary.
    pub(crate) fn schedule_frame(&mut self) {
        if self.clock.armed {
            return;
        }
        let delay =
            (self.clock.last + self.clock.period()).saturating_duration_since(Instant::now());
        let inserted =
            self.loop_handle
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

    /// One tick of the output clock: compose what changed, then let
    /// clients draw their next frame.
    pub(crate) fn frame(&mut self) {
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
