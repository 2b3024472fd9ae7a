//! gpud's connection over the compositor's life: watched once its set-up
//! (on a thread) is over, noticed when it closes, and reconnected every
//! 100 ms while the clients carry on — the node agent restarting with
//! `--leave-desktops-running` does not end the desktop. Only after
//! [`GPU_RECONNECT`] does the compositor give up and end.

use std::time::{Duration, Instant};

use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::timer::{TimeoutAction, Timer};
use smithay::reexports::calloop::{Interest, Mode, PostAction};

use crate::gpu_output::GpuOutput;
use crate::state::State;

/// How long the compositor waits for gpud to come back.
pub const GPU_RECONNECT: Duration = Duration::from_secs(60);

impl State {
    /// Watches gpud's connection once its set-up (on a thread, talking on
    /// that connection) is over.
    pub(crate) fn watch_gpu_when_ready(&mut self) {
        let poll = Duration::from_millis(5);
        let timer =
            self.loop_handle
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
                self.loop_handle
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
    pub(crate) fn lose_gpu(&mut self, error: anyhow::Error) {
        if self.gpu_lost.is_none() {
            eprintln!("compositor: gpud went away ({error:#}); reconnecting");
            self.gpu_lost = Some(Instant::now());
        }
        let retry = self.loop_handle.insert_source(
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
}
