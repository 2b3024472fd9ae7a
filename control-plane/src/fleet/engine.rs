//! The fleet's decisions as pure functions: the replicated [`State`], the
//! leader's heartbeat leases and the time in, the [`Command`]s to commit
//! out. No IO, no clock reads, no locks, no async: the driver
//! ([`super::driver`]) owns the timers, the Raft writes and the logging,
//! and tests drive the engine with a fake clock (an `Instant` they advance
//! by hand) and assert the exact commands.
//!
//! Liveness is a lease. A heartbeat answer says how long it lasts (`ttl`);
//! the leader marks a node down `ttl` after it *received* the last
//! heartbeat, while the agent stops its desktops `ttl / 2` after it *sent*
//! it. A node cut off from the leader has therefore stopped everything
//! before its desktops are placed elsewhere, so a desktop never runs on two
//! nodes at once. A new leader grants every node a fresh `ttl` before
//! judging it (leases are leader memory, never in the Raft log).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::scheduler::{self, Decision, DesktopRequest, Strategy};
use crate::state::State;
use crate::types::{
    Command, DesktopIntent, DesktopReport, DesktopResources, DesktopState, NodeStatus,
    NodeStatusUpdate, PendingReason, Placement,
};

/// Placements (or pending reasons) per log entry (see the proposer's
/// weight limit: each command fits one entry).
pub const PLACEMENTS_PER_ENTRY: usize = 1000;

/// Fleet behaviour. Every server should run with the same options: the
/// leader's apply.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Shortest heartbeat lease. Grows with fleet size (see
    /// [`FleetOptions::heartbeat_ttl`]).
    pub min_heartbeat_ttl: Duration,
    /// Heartbeats per second the leader is willing to take from the whole
    /// fleet; bigger fleets get longer leases (Nomad's rule).
    pub max_heartbeats_per_second: u32,
    pub strategy: Strategy,
    /// What a task's desktop asks for when its creator said nothing.
    pub default_resources: DesktopResources,
    /// Pending desktops considered per scheduling pass.
    pub schedule_batch: usize,
}

impl Default for FleetOptions {
    fn default() -> FleetOptions {
        FleetOptions {
            min_heartbeat_ttl: Duration::from_secs(10),
            max_heartbeats_per_second: 50,
            strategy: Strategy::Binpack,
            default_resources: DesktopResources::default(),
            schedule_batch: 10_000,
        }
    }
}

impl FleetOptions {
    /// The lease for a fleet of `nodes`: long enough that the whole fleet
    /// heartbeating every `ttl / 4` stays under the rate limit.
    pub fn heartbeat_ttl(&self, nodes: usize) -> Duration {
        let rate = u64::from(self.max_heartbeats_per_second.max(1));
        let spread = Duration::from_millis(nodes as u64 * 4 * 1000 / rate);
        self.min_heartbeat_ttl.max(spread)
    }
}

/// Resource use a node agent reports for one desktop (leader memory only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Usage {
    pub cpu_usec: u64,
    pub memory_bytes: u64,
    pub pids: u32,
    /// gpud's ledger for it: the GPU it renders on (None: not attached),
    /// GPU memory charged now, and its budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_index: Option<u32>,
    pub gpu_charged_bytes: u64,
    pub gpu_budget_bytes: u64,
}

/// One report line from an agent.
#[derive(Debug, Clone)]
pub struct ReportedDesktop {
    pub report: DesktopReport,
    pub usage: Usage,
}

/// Why the engine refused a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("no node with id {0:?}; register first")]
    UnknownNode(String),
}

/// What a heartbeat decided: the lease to grant and what to commit.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatOutcome {
    pub ttl: Duration,
    /// In order: the node's return to `ready` (if it was not), then the
    /// desktop reports that change something.
    pub commands: Vec<Command>,
}

/// What one scheduling pass decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulePass {
    /// `PlaceDesktops` commands, one per log entry; independent of each
    /// other, so they may commit concurrently.
    pub placements: Vec<Command>,
    /// `SetPendingReasons` for desktops whose reason changed.
    pub reasons: Vec<Command>,
}

/// The leader's lease on one node.
#[derive(Debug, Clone)]
struct Lease {
    /// Marked down when this passes without a heartbeat.
    deadline: Instant,
    last_heartbeat_ms: u64,
    usage: HashMap<String, Usage>,
}

/// The leader's fleet memory and the decisions made from it.
#[derive(Debug)]
pub struct FleetEngine {
    options: FleetOptions,
    leases: HashMap<String, Lease>,
    /// The term this server leads in, if it leads.
    leading_term: Option<u64>,
    /// The revision at which the last pass could place nothing, so passes
    /// skip until the state changes.
    idle_revision: Option<u64>,
}

impl FleetEngine {
    pub fn new(options: FleetOptions) -> FleetEngine {
        FleetEngine {
            options,
            leases: HashMap::new(),
            leading_term: None,
            idle_revision: None,
        }
    }

    pub fn options(&self) -> &FleetOptions {
        &self.options
    }

    /// The term this server leads the fleet in, as last observed.
    pub fn leading_term(&self) -> Option<u64> {
        self.leading_term
    }

    /// Takes this server's Raft role. Returns whether it should act (it
    /// leads). Leases are dropped whenever leadership is gained anew or
    /// lost: heartbeats went to another leader meanwhile, so every node
    /// gets a full lease from now before it is judged.
    pub fn observe_leadership(&mut self, leading_term: Option<u64>) -> bool {
        if self.leading_term != leading_term {
            self.leases.clear();
            self.idle_revision = None;
            self.leading_term = leading_term;
        }
        leading_term.is_some()
    }

    /// A heartbeat received at `now` (wall clock `now_ms`): extends the
    /// node's lease and says what its reports change. Only reports that
    /// change something are written; fencing is checked again on apply.
    pub fn heartbeat(
        &mut self,
        state: &State,
        node_id: &str,
        reported: &[ReportedDesktop],
        now: Instant,
        now_ms: u64,
    ) -> Result<HeartbeatOutcome, FleetError> {
        let status = state
            .node(node_id)
            .map(|node| node.status)
            .ok_or_else(|| FleetError::UnknownNode(node_id.to_owned()))?;
        let changed: Vec<DesktopReport> = reported
            .iter()
            .filter(|line| report_changes_something(state, node_id, &line.report))
            .map(|line| line.report.clone())
            .collect();
        let ttl = self.options.heartbeat_ttl(state.nodes().count());
        self.leases.insert(
            node_id.to_owned(),
            Lease {
                deadline: now + ttl,
                last_heartbeat_ms: now_ms,
                usage: reported
                    .iter()
                    .map(|line| (line.report.desktop_id.clone(), line.usage))
                    .collect(),
            },
        );
        let mut commands = Vec::new();
        if status != NodeStatus::Ready {
            commands.push(Command::SetNodeStatus {
                updates: vec![NodeStatusUpdate {
                    id: node_id.to_owned(),
                    status: NodeStatus::Ready,
                }],
            });
        }
        if !changed.is_empty() {
            commands.push(Command::ReportDesktops {
                node_id: node_id.to_owned(),
                reports: changed,
            });
        }
        Ok(HeartbeatOutcome { ttl, commands })
    }

    /// Nodes whose lease ran out by `now`, as one `SetNodeStatus` to
    /// `down`. A node never heard from since this server began leading
    /// gets a lease starting now.
    pub fn mark_silent_nodes_down(&mut self, state: &State, now: Instant) -> Option<Command> {
        let ttl = self.options.heartbeat_ttl(state.nodes().count());
        let mut updates = Vec::new();
        for node in state.nodes().filter(|node| node.status != NodeStatus::Down) {
            let lease = self.leases.entry(node.id.clone()).or_insert_with(|| Lease {
                deadline: now + ttl,
                last_heartbeat_ms: 0,
                usage: HashMap::new(),
            });
            if lease.deadline <= now {
                self.leases.remove(&node.id);
                updates.push(NodeStatusUpdate {
                    id: node.id.clone(),
                    status: NodeStatus::Down,
                });
            }
        }
        (!updates.is_empty()).then_some(Command::SetNodeStatus { updates })
    }

    /// Moves each draining node's desktops off it, `max_parallel` at a
    /// time; past the deadline (wall clock `now_ms`), all that are left.
    pub fn drive_drains(&self, state: &State, now_ms: u64) -> Option<Command> {
        let mut ids = Vec::new();
        for node in state.nodes() {
            let Some(drain) = &node.drain else { continue };
            let desktops = state.node_desktops(&node.id);
            let in_flight = desktops
                .iter()
                .filter(|desktop| desktop.intent == DesktopIntent::Migrate)
                .count();
            let room = if now_ms >= drain.deadline_ms {
                usize::MAX
            } else {
                (drain.max_parallel as usize).saturating_sub(in_flight)
            };
            ids.extend(
                desktops
                    .iter()
                    .filter(|desktop| desktop.intent == DesktopIntent::Run)
                    .take(room)
                    .map(|desktop| desktop.id.clone()),
            );
        }
        (!ids.is_empty()).then_some(Command::MigrateDesktops { ids })
    }

    /// One scheduling pass over up to `schedule_batch` pending desktops.
    /// `None` when nothing is pending or nothing changed since a pass that
    /// placed nothing.
    pub fn schedule(&mut self, state: &State) -> Option<SchedulePass> {
        if state.pending_count() == 0 || Some(state.revision()) == self.idle_revision {
            return None;
        }
        let pending = state.pending_desktops(self.options.schedule_batch);
        let requests: Vec<DesktopRequest> = pending
            .iter()
            .map(|desktop| DesktopRequest::from_desktop(desktop))
            .collect();
        let mut views = state.node_views();
        let decisions = scheduler::place(&mut views, &requests, self.options.strategy);
        let mut placements = Vec::new();
        let mut reasons = Vec::new();
        for (decision, desktop) in decisions.into_iter().zip(&pending) {
            match decision {
                Decision::Placed {
                    desktop_id,
                    node_id,
                    gpu,
                } => placements.push(Placement {
                    desktop_id,
                    node_id,
                    gpu: gpu.map(|gpu| gpu as u32),
                }),
                Decision::Pending { desktop_id, reason } => {
                    if desktop.reason.as_ref() != Some(&reason) {
                        reasons.push(PendingReason { desktop_id, reason });
                    }
                }
            }
        }
        self.idle_revision = placements.is_empty().then_some(state.revision());
        Some(SchedulePass {
            placements: placements
                .chunks(PLACEMENTS_PER_ENTRY)
                .map(|chunk| Command::PlaceDesktops {
                    placements: chunk.to_vec(),
                })
                .collect(),
            reasons: reasons
                .chunks(PLACEMENTS_PER_ENTRY)
                .map(|chunk| Command::SetPendingReasons {
                    reasons: chunk.to_vec(),
                })
                .collect(),
        })
    }

    /// A pass's writes failed: the next pass must not skip.
    pub fn schedule_failed(&mut self) {
        self.idle_revision = None;
    }

    /// Usage last reported for the desktops of `node_id`.
    pub fn usage(&self, node_id: &str) -> HashMap<String, Usage> {
        self.leases
            .get(node_id)
            .map(|lease| lease.usage.clone())
            .unwrap_or_default()
    }

    /// Wall-clock time of the last heartbeat taken from `node_id`.
    pub fn last_heartbeat_ms(&self, node_id: &str) -> Option<u64> {
        self.leases
            .get(node_id)
            .map(|lease| lease.last_heartbeat_ms)
    }
}

/// Whether `report` from `node_id` says something the state does not know:
/// only the desktop's current node, at its current generation, may report,
/// and only a change of state or reason (or an end the intent did not ask
/// for) is worth a write.
fn report_changes_something(state: &State, node_id: &str, report: &DesktopReport) -> bool {
    state.desktop(&report.desktop_id).is_some_and(|desktop| {
        let ours =
            desktop.node_id.as_deref() == Some(node_id) && desktop.generation == report.generation;
        let ended = matches!(report.state, DesktopState::Stopped | DesktopState::Failed);
        ours && (desktop.state != report.state
            || desktop.reason != report.reason
            || (ended && desktop.intent != DesktopIntent::Run))
    })
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
