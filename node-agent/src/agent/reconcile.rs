//! Reconciliation: the loop that makes the runtime match the assignments
//! while the lease holds (and stops everything when it does not, and at
//! shutdown), and [`Reconciler::step`], its core, tested alone against a
//! real process runtime.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_proto::node as pb;

use super::Shared;
use crate::runtime::{DesktopRuntime, DesktopSpec, Observed, Phase};

const RECONCILE_EVERY: Duration = Duration::from_millis(100);
/// How long an ended desktop that should run waits before starting again.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);

/// Makes the runtime match the assignments while the lease holds, and
/// stops everything when it does not.
pub(super) async fn reconcile_loop(
    shared: Arc<Shared>,
    mut runtime: Box<dyn DesktopRuntime>,
    stop_grace: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    leave_running: bool,
) {
    let mut reconciler = Reconciler::default();
    loop {
        let desired = desired(&shared);
        // A step may wait on the runtime (killing a cgroup, reaping): off
        // the async workers, so heartbeats never queue behind it.
        let report = tokio::task::block_in_place(|| {
            reconciler.step(runtime.as_mut(), desired.as_deref(), Instant::now())
        });
        let changed = {
            let mut current = shared.report.lock().unwrap_or_else(|p| p.into_inner());
            let changed = !same_states(&current, &report);
            *current = report;
            changed
        };
        if changed {
            shared.heartbeat_now.notify_one();
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONCILE_EVERY) => {}
            _ = shared.reconcile_now.notified() => {}
            _ = &mut stop => break,
        }
    }
    if leave_running {
        runtime.leave_running();
        return;
    }
    // Shutdown: stop everything, politely first.
    let deadline = Instant::now() + stop_grace + Duration::from_secs(1);
    loop {
        tokio::task::block_in_place(|| {
            reconciler.step(runtime.as_mut(), Some(&[]), Instant::now())
        });
        let running = runtime.poll().iter().any(|o| !o.phase.ended());
        if !running || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn same_states(a: &[pb::DesktopStatus], b: &[pb::DesktopStatus]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(a, b)| {
            a.desktop_id == b.desktop_id
                && a.generation == b.generation
                && a.state == b.state
                && a.reason == b.reason
        })
}

/// What should run now: `None` while the lease is not held or the
/// assignments predate it (then everything stops).
fn desired(shared: &Shared) -> Option<Vec<pb::Assignment>> {
    let lease = shared.lease.lock().unwrap_or_else(|p| p.into_inner());
    let valid = lease.until.is_some_and(|until| Instant::now() < until);
    if !valid {
        return None;
    }
    let assignments = shared.assignments.lock().unwrap_or_else(|p| p.into_inner());
    let received = assignments.as_ref()?;
    if received.revision < lease.required_revision {
        return None;
    }
    Some(received.desktops.clone())
}

/// The pure-ish core of reconciliation, separate from the loop so it can be
/// tested with any runtime.
pub struct Reconciler {
    /// Ended desktops that should run wait until then before restarting.
    restart_at: HashMap<String, Instant>,
    /// No lease: nothing may run. True at start (nothing runs yet, nothing
    /// to warn about).
    fenced: bool,
    /// A lease was held since this process started. Before the first one,
    /// sandboxes adopted from an earlier run are left alone: they still
    /// run under that run's lease, which they enforce themselves.
    leased_once: bool,
}

impl Default for Reconciler {
    fn default() -> Reconciler {
        Reconciler {
            restart_at: HashMap::new(),
            fenced: true,
            leased_once: false,
        }
    }
}

impl Reconciler {
    /// One pass. `desired` is `None` when nothing may run (no lease).
    /// Returns the report for the next heartbeat.
    pub fn step(
        &mut self,
        runtime: &mut dyn DesktopRuntime,
        desired: Option<&[pb::Assignment]>,
        now: Instant,
    ) -> Vec<pb::DesktopStatus> {
        self.leased_once |= desired.is_some();
        if !self.leased_once {
            return report(runtime.poll());
        }
        if desired.is_none() != self.fenced {
            self.fenced = desired.is_none();
            if self.fenced {
                tracing::warn!(
                    "no valid lease: stopping every desktop until the control plane answers again"
                );
            }
        }
        let wanted: HashMap<&str, &pb::Assignment> = desired
            .unwrap_or_default()
            .iter()
            .map(|assignment| (assignment.desktop_id.as_str(), assignment))
            .collect();
        let observed = runtime.poll();
        let mut present: HashMap<String, Observed> = HashMap::new();
        for desktop in observed {
            let assignment = wanted.get(desktop.desktop_id.as_str());
            let keep = assignment.is_some_and(|a| a.run && a.generation == desktop.generation);
            if !keep && !desktop.phase.ended() {
                tracing::info!(desktop = %desktop.desktop_id, generation = desktop.generation, "stopping");
                runtime.stop(&desktop.desktop_id);
            }
            let still_reported = assignment.is_some_and(|a| a.generation == desktop.generation);
            if desktop.phase.ended() && !still_reported {
                runtime.forget(&desktop.desktop_id);
                self.restart_at.remove(&desktop.desktop_id);
                continue;
            }
            if keep && desktop.phase.ended() {
                let backoff = if matches!(desktop.phase, Phase::Failed(_)) {
                    FAILURE_BACKOFF
                } else {
                    RESTART_BACKOFF
                };
                let at = *self
                    .restart_at
                    .entry(desktop.desktop_id.clone())
                    .or_insert(now + backoff);
                if at <= now {
                    runtime.forget(&desktop.desktop_id);
                    self.restart_at.remove(&desktop.desktop_id);
                    continue;
                }
            }
            present.insert(desktop.desktop_id.clone(), desktop);
        }
        for (id, assignment) in &wanted {
            if !assignment.run || present.contains_key(*id) {
                continue;
            }
            let spec = DesktopSpec {
                desktop_id: assignment.desktop_id.clone(),
                task_id: assignment.task_id.clone(),
                generation: assignment.generation,
                cpu_millis: assignment.cpu_millis,
                memory_bytes: assignment.memory_bytes,
                gpu_memory_bytes: assignment.gpu_memory_bytes,
                gpu: assignment.gpu,
                egress: match assignment.egress.parse() {
                    Ok(egress) => egress,
                    Err(error) => {
                        tracing::warn!(desktop = %id, %error, "cannot start");
                        continue;
                    }
                },
                profile: crate::runtime::Profile {
                    apps: assignment.apps.clone(),
                    keyboard_layout: assignment.keyboard_layout.clone(),
                    keyboard_variant: assignment.keyboard_variant.clone(),
                },
                token: assignment.desktop_token.clone(),
                repository: assignment.repository.clone(),
            };
            tracing::info!(desktop = %id, generation = assignment.generation, "starting");
            if let Err(error) = runtime.start(&spec) {
                tracing::warn!(desktop = %id, %error, "cannot start");
            }
        }
        report(runtime.poll())
    }
}

/// The heartbeat's view of what the runtime observed.
fn report(observed: Vec<Observed>) -> Vec<pb::DesktopStatus> {
    let mut report: Vec<pb::DesktopStatus> = observed
        .into_iter()
        .map(|desktop| pb::DesktopStatus {
            desktop_id: desktop.desktop_id,
            generation: desktop.generation,
            state: desktop.phase.as_str().to_owned(),
            reason: match desktop.phase {
                Phase::Failed(reason) => reason,
                _ => String::new(),
            },
            usage: Some(pb::DesktopUsage {
                cpu_usec: desktop.usage.cpu_usec,
                memory_bytes: desktop.usage.memory_bytes,
                pids: desktop.usage.pids,
                gpu_index: desktop.usage.gpu_index,
                gpu_charged_bytes: desktop.usage.gpu_charged_bytes,
                gpu_budget_bytes: desktop.usage.gpu_budget_bytes,
            }),
        })
        .collect();
    report.sort_by(|a, b| a.desktop_id.cmp(&b.desktop_id));
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::ProcessRuntime;

    fn assignment(id: &str, generation: u64, run: bool) -> pb::Assignment {
        pb::Assignment {
            desktop_id: id.to_owned(),
            task_id: "t".to_owned(),
            generation,
            run,
            cpu_millis: 250,
            memory_bytes: 1 << 30,
            gpu_memory_bytes: 0,
            gpu: None,
            egress: String::new(),
            apps: Vec::new(),
            keyboard_layout: String::new(),
            keyboard_variant: String::new(),
            desktop_token: String::new(),
            repository: String::new(),
        }
    }

    fn runtime(dir: &std::path::Path) -> ProcessRuntime {
        ProcessRuntime::new(
            "n1",
            dir,
            vec!["sleep".to_owned(), "1000".to_owned()],
            Duration::from_secs(5),
        )
        .unwrap()
    }

    fn settle(
        reconciler: &mut Reconciler,
        runtime: &mut ProcessRuntime,
        desired: Option<&[pb::Assignment]>,
        want: &[(&str, u64, &str)],
    ) {
        let mut last = Vec::new();
        for _ in 0..100 {
            last = reconciler.step(runtime, desired, Instant::now());
            let states: Vec<(&str, u64, &str)> = last
                .iter()
                .map(|s| (s.desktop_id.as_str(), s.generation, s.state.as_str()))
                .collect();
            if states == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("never reached {want:?}; last report {last:?}");
    }

    #[test]
    fn runs_what_is_assigned_and_stops_what_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = runtime(dir.path());
        let mut reconciler = Reconciler::default();
        let both = [assignment("a", 5, true), assignment("b", 6, true)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&both),
            &[("a", 5, "running"), ("b", 6, "running")],
        );
        // b is being drained: stopped and reported stopped while assigned.
        let draining = [assignment("a", 5, true), assignment("b", 6, false)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&draining),
            &[("a", 5, "running"), ("b", 6, "stopped")],
        );
        // Its assignment goes away: forgotten.
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&both[..1]),
            &[("a", 5, "running")],
        );
        // A new generation of a replaces the old one.
        let moved = [assignment("a", 9, true)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&moved),
            &[("a", 9, "running")],
        );
    }

    #[test]
    fn without_a_lease_everything_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut runtime = runtime(dir.path());
        let mut reconciler = Reconciler::default();
        let one = [assignment("a", 5, true)];
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&one),
            &[("a", 5, "running")],
        );
        settle(&mut reconciler, &mut runtime, None, &[]);
        // The lease comes back with the same assignment: it runs again.
        settle(
            &mut reconciler,
            &mut runtime,
            Some(&one),
            &[("a", 5, "running")],
        );
    }
}
