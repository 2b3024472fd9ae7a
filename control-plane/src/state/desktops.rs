//! Applying desktop commands: placements (checked again on apply, so
//! nothing is overcommitted), pending reasons, migrations and node
//! reports (fenced by generation), and the indexes kept over desktops.

use crate::types::{
    Applied, Change, ChangeKind, CommandError, Desktop, DesktopIntent, DesktopReport, DesktopState,
    PendingReason, Placement,
};

use super::*;

impl State {
    /// Scheduler decisions, each checked again here.
    pub(super) fn place_desktops(
        &mut self,
        index: u64,
        placements: &[Placement],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let mut placed = 0;
        let mut refused = Vec::new();
        for placement in placements {
            match self.place_desktop(index, placement, changes) {
                Ok(()) => placed += 1,
                Err(refusal) => refused.push(PendingReason {
                    desktop_id: placement.desktop_id.clone(),
                    reason: refusal.to_string(),
                }),
            }
        }
        Ok(Applied::Placed { placed, refused })
    }

    /// Why desktops are still pending (changed reasons only).
    pub(super) fn set_pending_reasons(
        &mut self,
        index: u64,
        reasons: &[PendingReason],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        for PendingReason { desktop_id, reason } in reasons {
            let pending = self.desktops.get(desktop_id).is_some_and(|desktop| {
                desktop.node_id.is_none() && desktop.reason.as_ref() != Some(reason)
            });
            if pending {
                self.update_desktop(index, desktop_id, changes, |desktop| {
                    desktop.reason = Some(reason.clone());
                });
            }
        }
        Ok(Applied::Done)
    }

    /// Marks running desktops to be stopped and placed again elsewhere.
    pub(super) fn migrate_desktops(
        &mut self,
        index: u64,
        ids: &[String],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        for id in ids {
            let running_here = self.desktops.get(id).is_some_and(|desktop| {
                desktop.node_id.is_some() && desktop.intent == DesktopIntent::Run
            });
            if running_here {
                self.update_desktop(index, id, changes, |desktop| {
                    desktop.intent = DesktopIntent::Migrate;
                });
            }
        }
        Ok(Applied::Done)
    }

    /// A node agent's report of its desktops (fenced by generation).
    pub(super) fn report_desktops(
        &mut self,
        index: u64,
        now_ms: u64,
        node_id: &str,
        reports: &[DesktopReport],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        if !self.nodes.contains_key(node_id) {
            return Err(CommandError::NodeNotFound {
                id: node_id.to_owned(),
            });
        }
        for report in reports {
            self.apply_report(index, node_id, report, changes);
        }
        self.settle_drain(index, now_ms, node_id, changes);
        Ok(Applied::Done)
    }

    /// A desktop no task needs: forgotten at once if it runs nowhere, else
    /// stopped by its node first.
    pub(super) fn release_desktop(
        &mut self,
        index: u64,
        desktop_id: &str,
        changes: &mut Vec<Change>,
    ) {
        let Some(desktop) = self.desktops.get(desktop_id) else {
            return;
        };
        if desktop.node_id.is_none() {
            self.delete_desktop(index, desktop_id, changes);
        } else {
            self.update_desktop(index, desktop_id, changes, |desktop| {
                desktop.intent = DesktopIntent::Release;
            });
        }
    }

    pub(super) fn delete_desktop(
        &mut self,
        index: u64,
        desktop_id: &str,
        changes: &mut Vec<Change>,
    ) {
        if let Some(desktop) = self.desktops.remove(desktop_id) {
            self.unindex_desktop(&desktop);
            changes.push(Change {
                revision: index,
                kind: ChangeKind::DesktopDeleted {
                    id: desktop_id.to_owned(),
                },
            });
        }
    }

    /// Changes one desktop through `edit`, keeping the indexes in step.
    pub(super) fn update_desktop(
        &mut self,
        index: u64,
        desktop_id: &str,
        changes: &mut Vec<Change>,
        edit: impl FnOnce(&mut Desktop),
    ) {
        let Some(mut desktop) = self.desktops.remove(desktop_id) else {
            return;
        };
        self.unindex_desktop(&desktop);
        edit(&mut desktop);
        desktop.revision = index;
        self.index_desktop(&desktop);
        changes.push(desktop_put(index, &desktop));
        self.desktops.insert(desktop_id.to_owned(), desktop);
    }

    pub(super) fn index_desktop(&mut self, desktop: &Desktop) {
        match &desktop.node_id {
            Some(node_id) => {
                let allocation = self.allocations.entry(node_id.clone()).or_default();
                allocation.cpu_millis += desktop.resources.cpu_millis;
                allocation.memory_bytes += desktop.resources.memory_bytes;
                if let Some(gpu) = desktop.gpu {
                    let gpu = gpu as usize;
                    if allocation.gpu_memory_bytes.len() <= gpu {
                        allocation.gpu_memory_bytes.resize(gpu + 1, 0);
                    }
                    allocation.gpu_memory_bytes[gpu] += desktop.resources.gpu_memory_bytes;
                }
                allocation.desktops.insert(desktop.id.clone());
            }
            None if desktop.intent == DesktopIntent::Run => {
                self.pending.insert((desktop.sequence, desktop.id.clone()));
            }
            None => {}
        }
    }

    pub(super) fn unindex_desktop(&mut self, desktop: &Desktop) {
        match &desktop.node_id {
            Some(node_id) => {
                let allocation = self
                    .allocations
                    .get_mut(node_id)
                    .expect("a placed desktop's node has an allocation");
                allocation.cpu_millis -= desktop.resources.cpu_millis;
                allocation.memory_bytes -= desktop.resources.memory_bytes;
                if let Some(gpu) = desktop.gpu {
                    allocation.gpu_memory_bytes[gpu as usize] -= desktop.resources.gpu_memory_bytes;
                }
                allocation.desktops.remove(&desktop.id);
                if allocation.desktops.is_empty() {
                    self.allocations.remove(node_id);
                }
            }
            None => {
                self.pending.remove(&(desktop.sequence, desktop.id.clone()));
            }
        }
    }

    pub(super) fn place_desktop(
        &mut self,
        index: u64,
        placement: &Placement,
        changes: &mut Vec<Change>,
    ) -> Result<(), PlacementRefused> {
        let desktop = self
            .desktops
            .get(&placement.desktop_id)
            .ok_or(PlacementRefused::NoDesktop)?;
        if desktop.node_id.is_some() || desktop.intent != DesktopIntent::Run {
            return Err(PlacementRefused::NotPending);
        }
        let view = self
            .node_view(&placement.node_id)
            .ok_or(PlacementRefused::NoNode)?;
        let request = scheduler::DesktopRequest::from_desktop(desktop);
        scheduler::check_fit(&view, &request, placement.gpu.map(|gpu| gpu as usize))?;
        let node_id = placement.node_id.clone();
        let gpu = placement.gpu;
        self.update_desktop(index, &placement.desktop_id, changes, |desktop| {
            desktop.node_id = Some(node_id);
            desktop.gpu = gpu;
            desktop.generation = index;
            desktop.state = DesktopState::Pending;
            desktop.reason = None;
        });
        Ok(())
    }

    pub(super) fn apply_report(
        &mut self,
        index: u64,
        node_id: &str,
        report: &DesktopReport,
        changes: &mut Vec<Change>,
    ) {
        let Some(desktop) = self.desktops.get(&report.desktop_id) else {
            return;
        };
        // Fencing: only the node and generation it was placed with speak
        // for it.
        if desktop.node_id.as_deref() != Some(node_id) || desktop.generation != report.generation {
            return;
        }
        let ended = matches!(report.state, DesktopState::Stopped | DesktopState::Failed);
        match desktop.intent {
            DesktopIntent::Release if ended => {
                self.delete_desktop(index, &report.desktop_id, changes)
            }
            DesktopIntent::Migrate if ended => {
                let name = self.nodes[node_id].name.clone();
                self.update_desktop(index, &report.desktop_id, changes, |desktop| {
                    unplace(
                        desktop,
                        format!("stopped on {name} by a drain; placing it again"),
                    );
                });
            }
            _ if desktop.state != report.state || desktop.reason != report.reason => {
                self.update_desktop(index, &report.desktop_id, changes, |desktop| {
                    desktop.state = report.state;
                    desktop.reason = report.reason.clone();
                });
            }
            _ => {}
        }
    }
}

/// Why apply refused a placement the scheduler decided on an older state;
/// the text is recorded as the refusal's reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementRefused {
    #[error("the desktop no longer exists")]
    NoDesktop,
    #[error("the desktop is not pending")]
    NotPending,
    #[error("the node does not exist")]
    NoNode,
    #[error(transparent)]
    DoesNotFit(#[from] scheduler::FitError),
}

/// Takes a desktop off its node and back to the scheduler.
pub(super) fn unplace(desktop: &mut Desktop, reason: String) {
    desktop.node_id = None;
    desktop.gpu = None;
    desktop.generation = 0;
    desktop.intent = DesktopIntent::Run;
    desktop.state = DesktopState::Pending;
    desktop.reason = Some(reason);
}
