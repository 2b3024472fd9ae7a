//! Observing desktops: each poll advances every desktop's lifecycle (an
//! ended one releases its cgroup, network and gpud socket and gets the
//! phase that says how it ended; a stopping one past its grace is killed)
//! and reports its phase and usage.

use std::path::Path;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use super::handle::{process_usage, signal_group, Ended};
use super::{Observed, Phase, ProcessDesktop, ProcessRuntime, Usage};
use crate::fsutil::read_tail;
use crate::sandbox::LOG_FILE;

/// The most a desktop's `log` grows to (its writes until the next poll
/// aside) before its last quarter is kept as `log.1` and it starts again.
pub const MAX_LOG_BYTES: u64 = 16 << 20;

impl ProcessRuntime {
    /// [`super::DesktopRuntime::poll`].
    pub(super) fn poll_desktops(&mut self) -> Vec<Observed> {
        let now = Instant::now();
        let mut observed = Vec::with_capacity(self.desktops.len());
        for (id, desktop) in &mut self.desktops {
            if !desktop.phase.ended() {
                let dir = desktop.sandbox.as_ref().map(|(_, dir)| dir.clone());
                match desktop.handle.try_wait(dir.as_deref()) {
                    Ok(Some(ended)) => {
                        // Whatever it left in its group (and cgroup) goes
                        // with it.
                        signal_group(desktop.handle.pid(), Signal::KILL);
                        let oom_killed = desktop
                            .cgroup
                            .as_ref()
                            .is_some_and(|cgroup| cgroup.usage().oom_kills > 0);
                        if let Some(cgroup) = desktop.cgroup.take() {
                            if let Err(error) = cgroup.destroy(Duration::from_secs(5)) {
                                tracing::warn!(desktop = %id, %error, "cannot remove its cgroup");
                            }
                        }
                        if let (Some(net), Some(network)) = (desktop.net.take(), &mut self.network)
                        {
                            network.release(&net);
                        }
                        // Its gpud session and socket go, and with them
                        // every byte of GPU memory it held.
                        desktop.gpu = None;
                        desktop.phase = ended_phase(desktop, &ended, dir.as_deref(), oom_killed);
                        self.journal
                            .record(&self.node, id, desktop.generation, "stopped");
                    }
                    Ok(None) => {
                        // A session is `running` once it can be used: gpud
                        // holds a frame it composed and its compositor
                        // answers on the control socket.
                        if desktop.phase == Phase::Starting {
                            let frame = self.gpu.as_ref().is_some_and(|gpu| {
                                gpu.service
                                    .wait_for_frame(id, None, Duration::ZERO)
                                    .is_some()
                            });
                            if frame && dir.as_deref().is_some_and(compositor_answers) {
                                desktop.phase = Phase::Running;
                                self.journal
                                    .record(&self.node, id, desktop.generation, "ready");
                            }
                        }
                        if let Some(dir) = &dir {
                            crate::fsutil::cap_log(&dir.join(LOG_FILE), MAX_LOG_BYTES);
                        }
                        if desktop.kill_at.is_some_and(|at| at <= now) {
                            signal_group(desktop.handle.pid(), Signal::KILL);
                            if let Some(cgroup) = &desktop.cgroup {
                                let _ = cgroup.kill_all(Duration::from_millis(100));
                            }
                            desktop.kill_at = None;
                        }
                    }
                    Err(error) => {
                        desktop.phase = Phase::Failed(format!("cannot wait for it: {error}"))
                    }
                }
            }
            let mut usage = match (&desktop.cgroup, desktop.phase.ended()) {
                (_, true) => Usage::default(),
                (Some(cgroup), false) => {
                    let usage = cgroup.usage();
                    Usage {
                        cpu_usec: usage.cpu_usec,
                        memory_bytes: usage.memory_bytes,
                        pids: usage.pids as u32,
                        ..Usage::default()
                    }
                }
                (None, false) => process_usage(desktop.handle.pid() as u32),
            };
            if let (Some(_), Some(gpu)) = (&desktop.gpu, &self.gpu) {
                if let Some((index, account)) = gpu.service.account(id) {
                    usage.gpu_index = Some(index);
                    usage.gpu_charged_bytes = account.charged_bytes;
                    usage.gpu_budget_bytes = account.budget_bytes;
                }
            }
            observed.push(Observed {
                desktop_id: id.clone(),
                generation: desktop.generation,
                phase: desktop.phase.clone(),
                usage,
            });
        }
        observed
    }
}

/// How a desktop that ended is reported: stopped if we stopped it, else
/// failed with the most telling reason (its sandbox could not be built,
/// the sandbox's last word, out of memory, its exit status).
fn ended_phase(
    desktop: &ProcessDesktop,
    ended: &Ended,
    dir: Option<&Path>,
    oom_killed: bool,
) -> Phase {
    let said = dir.and_then(sandbox_last_word);
    if desktop.phase == Phase::Stopping {
        Phase::Stopped
    } else if ended.code == Some(crate::sandbox::init::SETUP_FAILED) && desktop.sandbox.is_some() {
        Phase::Failed(format!(
            "the sandbox could not be built: {}",
            said.as_deref().unwrap_or("no message")
        ))
    } else if let Some(said) = said {
        Phase::Failed(format!("the desktop ended ({}): {said}", ended.text))
    } else if oom_killed {
        Phase::Failed(format!(
            "out of memory: killed at its {} MiB limit ({})",
            desktop.memory_limit >> 20,
            ended.text
        ))
    } else {
        Phase::Failed(format!("the desktop exited ({})", ended.text))
    }
}

/// The sandbox's own last word in its log (`sandbox: ...`), if it had one.
/// The log is written by the desktop too: untrusted, so made printable
/// and short.
fn sandbox_last_word(dir: &Path) -> Option<String> {
    let bytes = read_tail(&dir.join(LOG_FILE), 64 * 1024).ok()?;
    let log = String::from_utf8_lossy(&bytes).into_owned();
    log.lines()
        .rev()
        .find(|l| l.starts_with("sandbox:"))
        .map(|line| {
            line.chars()
                .take(300)
                .map(|c| if c.is_control() { '?' } else { c })
                .collect::<String>()
        })
}

/// Whether the compositor of the desktop in `dir` answers a `windows`
/// request on its control socket within a short wait (it is inside the
/// untrusted desktop: the answer is bounded and only its start is read;
/// one that stays silent costs each poll at most 2 × `WAIT` while it is
/// `starting`, and a slow one is simply asked again on the next poll).
fn compositor_answers(dir: &Path) -> bool {
    use std::io::{BufRead, BufReader, Read, Write};
    const WAIT: Duration = Duration::from_millis(100);
    let Ok(mut stream) = crate::fsutil::connect_in(&dir.join("gpu"), "control.sock") else {
        return false;
    };
    if stream.set_nonblocking(false).is_err() {
        return false;
    }
    let mut line = Vec::new();
    stream.set_read_timeout(Some(WAIT)).is_ok()
        && stream.set_write_timeout(Some(WAIT)).is_ok()
        && stream.write_all(b"{\"op\":\"windows\"}\n").is_ok()
        && BufReader::new(stream.take(64 * 1024))
            .read_until(b'\n', &mut line)
            .is_ok()
        && line.starts_with(b"{\"ok\":true")
}
