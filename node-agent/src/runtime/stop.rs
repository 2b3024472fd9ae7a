//! Stopping desktops: SIGTERM to the desktop's process group, SIGKILL
//! after the grace (in [`super::observe`]); forgetting an ended one
//! removes its directory; dropping the runtime kills and cleans up every
//! desktop unless they are left running for the next run to adopt.

use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::handle::signal_group;
use super::{remove_desktop_dir, Phase, ProcessRuntime};

impl ProcessRuntime {
    /// [`super::DesktopRuntime::stop`].
    pub(super) fn stop_desktop(&mut self, desktop_id: &str) {
        let Some(desktop) = self.desktops.get_mut(desktop_id) else {
            return;
        };
        if desktop.phase.ended() || desktop.phase == Phase::Stopping {
            return;
        }
        signal_group(desktop.handle.pid(), Signal::TERM);
        desktop.phase = Phase::Stopping;
        desktop.kill_at = Some(Instant::now() + self.stop_grace);
    }

    /// [`super::DesktopRuntime::forget`].
    pub(super) fn forget_desktop(&mut self, desktop_id: &str) {
        if self
            .desktops
            .get(desktop_id)
            .is_some_and(|desktop| desktop.phase.ended())
        {
            if let Some(desktop) = self.desktops.remove(desktop_id) {
                if let Some((_, dir)) = desktop.sandbox {
                    remove_desktop_dir(self.sandbox.as_ref(), &dir);
                }
            }
        }
    }
}

impl Drop for ProcessRuntime {
    fn drop(&mut self) {
        if self.leave_running {
            tracing::info!(
                sandboxes = self.desktops.len(),
                "leaving sandboxes running for the next run to adopt"
            );
            return;
        }
        for (id, desktop) in &mut self.desktops {
            if !desktop.phase.ended() {
                signal_group(desktop.handle.pid(), Signal::KILL);
                if let Some(cgroup) = &desktop.cgroup {
                    let _ = cgroup.kill_all(Duration::from_secs(1));
                }
                desktop.handle.reap();
                self.journal
                    .record(&self.node, id, desktop.generation, "stopped");
            }
            if let Some(cgroup) = desktop.cgroup.take() {
                let _ = cgroup.destroy(Duration::from_secs(5));
            }
            if let (Some(net), Some(network)) = (desktop.net.take(), &mut self.network) {
                network.release(&net);
            }
            if let Some((_, dir)) = desktop.sandbox.take() {
                remove_desktop_dir(self.sandbox.as_ref(), &dir);
            }
        }
        if let Some(scope) = &self.cgroups {
            scope.remove_if_empty();
        }
    }
}
