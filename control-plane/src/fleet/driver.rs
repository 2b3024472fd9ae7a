//! The leader's view of the fleet: node heartbeats (kept in the leader's
//! memory, never in the Raft log), down detection, drains and the
//! scheduling loop that commits placements in batches.
//!
//! Liveness is a lease. A heartbeat answer says how long it lasts (`ttl`);
//! the leader marks a node down `ttl` after it *received* the last
//! heartbeat, while the agent stops its desktops `ttl / 2` after it *sent*
//! it. A node cut off from the leader has therefore stopped everything
//! before its desktops are placed elsewhere, so a desktop never runs on two
//! nodes at once. The heartbeat handler only answers while this server's
//! leadership is confirmed by a quorum, so a deposed leader cannot extend a
//! lease. A new leader grants every node a fresh `ttl` before judging it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio::sync::Notify;

use crate::control::{now_ms, ControlPlane};
use crate::error::ApiError;
use crate::scheduler::{self, Decision, DesktopRequest, Strategy};
use crate::types::{
    Command, DesktopIntent, DesktopReport, DesktopResources, NodeStatus, NodeStatusUpdate,
    PendingReason, Placement,
};

/// Placements (or pending reasons) per log entry.
const PLACEMENTS_PER_ENTRY: usize = 1000;

/// How often the leader loop looks at the fleet when nothing wakes it.
const TICK: Duration = Duration::from_millis(50);

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

struct Liveness {
    /// Marked down when this passes without a heartbeat.
    deadline: Instant,
    last_heartbeat_ms: u64,
    usage: HashMap<String, Usage>,
}

/// Leader-side fleet bookkeeping, owned by the [`ControlPlane`].
pub struct Fleet {
    pub options: FleetOptions,
    liveness: Mutex<HashMap<String, Liveness>>,
    /// When a quorum last confirmed this server leads, and for how long
    /// that confirmation is trusted.
    confirmed: Mutex<Option<(Instant, u64)>>,
    leader_lease: Duration,
    /// One quorum check at a time; concurrent callers reuse its result.
    confirming: tokio::sync::Mutex<()>,
    wake: Notify,
}

impl Fleet {
    pub fn new(options: FleetOptions, election_timeout_min: Duration) -> Fleet {
        Fleet {
            options,
            liveness: Mutex::new(HashMap::new()),
            confirmed: Mutex::new(None),
            // No other leader can be elected sooner than an election
            // timeout after a quorum acknowledged us; half leaves margin for
            // clock-rate differences.
            leader_lease: election_timeout_min / 2,
            confirming: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, HashMap<String, Liveness>> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the leader loop (something it acts on changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Usage last reported for the desktops of `node_id` (leader only).
    pub fn usage(&self, node_id: &str) -> HashMap<String, Usage> {
        self.liveness()
            .get(node_id)
            .map(|liveness| liveness.usage.clone())
            .unwrap_or_default()
    }

    /// Wall-clock time of the last heartbeat this server took from
    /// `node_id` (leader only).
    pub fn last_heartbeat_ms(&self, node_id: &str) -> Option<u64> {
        self.liveness()
            .get(node_id)
            .map(|liveness| liveness.last_heartbeat_ms)
    }
}

/// Answers UNAVAILABLE unless a quorum recently confirmed this server leads.
pub async fn confirm_leadership(control: &ControlPlane) -> Result<(), ApiError> {
    let term = control.raft.metrics().borrow().current_term;
    let fresh = || {
        let confirmed = control
            .fleet
            .confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        confirmed.is_some_and(|(at, confirmed_term)| {
            confirmed_term == term && at.elapsed() < control.fleet.leader_lease
        })
    };
    if fresh() {
        return Ok(());
    }
    // Single flight: a burst of heartbeats costs one quorum round.
    let _turn = control.fleet.confirming.lock().await;
    if fresh() {
        return Ok(());
    }
    let started = Instant::now();
    match control.raft.ensure_linearizable().await {
        Ok(_) => {
            *control
                .fleet
                .confirmed
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some((started, term));
            Ok(())
        }
        Err(error) => Err(ApiError::unavailable(format!(
            "this server is not the confirmed leader: {error}"
        ))),
    }
}

/// What the heartbeat handler hands back to the agent.
pub struct HeartbeatAnswer {
    pub ttl: Duration,
    pub revision: u64,
}

/// One report line from an agent.
pub struct ReportedDesktop {
    pub report: DesktopReport,
    pub usage: Usage,
}

/// Takes a heartbeat on the leader: extends the node's lease, marks it
/// ready, and commits state changes its reports carry.
pub async fn heartbeat(
    control: &ControlPlane,
    node_id: &str,
    reported: Vec<ReportedDesktop>,
) -> Result<HeartbeatAnswer, ApiError> {
    confirm_leadership(control).await?;
    let received = Instant::now();
    let (status, node_count, changed) = control.state.with_state(|state| {
        let node = state.node(node_id).map(|node| node.status);
        // Only reports that change something are written; fencing is
        // checked again on apply.
        let changed: Vec<DesktopReport> = reported
            .iter()
            .filter(|line| {
                state
                    .desktop(&line.report.desktop_id)
                    .is_some_and(|desktop| {
                        let ours = desktop.node_id.as_deref() == Some(node_id)
                            && desktop.generation == line.report.generation;
                        let ended = matches!(
                            line.report.state,
                            crate::types::DesktopState::Stopped
                                | crate::types::DesktopState::Failed
                        );
                        ours && (desktop.state != line.report.state
                            || desktop.reason != line.report.reason
                            || (ended && desktop.intent != DesktopIntent::Run))
                    })
            })
            .map(|line| line.report.clone())
            .collect();
        (node, state.nodes().count(), changed)
    });
    let Some(status) = status else {
        return Err(ApiError::not_found(format!(
            "no node with id {node_id:?}; register first"
        )));
    };
    let ttl = control.fleet.options.heartbeat_ttl(node_count);
    control.fleet.liveness().insert(
        node_id.to_owned(),
        Liveness {
            deadline: received + ttl,
            last_heartbeat_ms: now_ms(),
            usage: reported
                .iter()
                .map(|line| (line.report.desktop_id.clone(), line.usage))
                .collect(),
        },
    );
    if status != NodeStatus::Ready {
        tracing::info!(node_id, from = status.as_str(), "node is ready");
        let command = Command::SetNodeStatus {
            updates: vec![NodeStatusUpdate {
                id: node_id.to_owned(),
                status: NodeStatus::Ready,
            }],
        };
        control.write(control.request(command, None)).await?;
        control.fleet.wake();
    }
    if !changed.is_empty() {
        let command = Command::ReportDesktops {
            node_id: node_id.to_owned(),
            reports: changed,
        };
        control.write(control.request(command, None)).await?;
        control.fleet.wake();
    }
    Ok(HeartbeatAnswer {
        ttl,
        revision: control.state.with_state(|state| state.revision()),
    })
}

/// Runs for the life of the server; acts only while it leads.
pub async fn run_leader_loop(control: Arc<ControlPlane>) {
    let mut leading_term = None;
    let mut idle_revision = None;
    loop {
        let _ = tokio::time::timeout(TICK, control.fleet.wake.notified()).await;
        let (state, term) = {
            let metrics = control.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state, metrics.current_term)
        };
        if state != ServerState::Leader {
            if leading_term.take().is_some() {
                control.fleet.liveness().clear();
            }
            continue;
        }
        if leading_term != Some(term) {
            // Heartbeats went to the old leader: everyone gets a full lease
            // from now before being judged.
            control.fleet.liveness().clear();
            leading_term = Some(term);
            idle_revision = None;
            tracing::info!(term, "leading the fleet");
        }
        if let Err(error) = confirm_leadership(&control).await {
            tracing::debug!(%error, "leadership not confirmed; skipping this pass");
            continue;
        }
        if let Err(error) = mark_silent_nodes_down(&control).await {
            tracing::warn!(%error, "marking silent nodes down");
        }
        if let Err(error) = drive_drains(&control).await {
            tracing::warn!(%error, "advancing drains");
        }
        match schedule_pending(&control, idle_revision).await {
            Ok(next_idle) => idle_revision = next_idle,
            Err(error) => {
                idle_revision = None;
                tracing::warn!(%error, "scheduling pass failed");
            }
        }
    }
}

async fn mark_silent_nodes_down(control: &ControlPlane) -> Result<(), ApiError> {
    let now = Instant::now();
    let (watched, ttl) = control.state.with_state(|state| {
        let watched: Vec<(String, String)> = state
            .nodes()
            .filter(|node| node.status != NodeStatus::Down)
            .map(|node| (node.id.clone(), node.name.clone()))
            .collect();
        (
            watched,
            control.fleet.options.heartbeat_ttl(state.nodes().count()),
        )
    });
    let mut updates = Vec::new();
    {
        let mut liveness = control.fleet.liveness();
        for (id, name) in watched {
            let entry = liveness.entry(id.clone()).or_insert_with(|| Liveness {
                deadline: now + ttl,
                last_heartbeat_ms: 0,
                usage: HashMap::new(),
            });
            if entry.deadline <= now {
                tracing::warn!(node = %name, "no heartbeat within the lease; marking the node down");
                liveness.remove(&id);
                updates.push(NodeStatusUpdate {
                    id,
                    status: NodeStatus::Down,
                });
            }
        }
    }
    if !updates.is_empty() {
        control
            .write(control.request(Command::SetNodeStatus { updates }, None))
            .await?;
    }
    Ok(())
}

/// Moves each draining node's desktops off it, `max_parallel` at a time;
/// past the deadline, all that are left at once.
async fn drive_drains(control: &ControlPlane) -> Result<(), ApiError> {
    let now = now_ms();
    let to_migrate: Vec<String> = control.state.with_state(|state| {
        let mut ids = Vec::new();
        for node in state.nodes() {
            let Some(drain) = &node.drain else { continue };
            let desktops = state.node_desktops(&node.id);
            let in_flight = desktops
                .iter()
                .filter(|desktop| desktop.intent == DesktopIntent::Migrate)
                .count();
            let room = if now >= drain.deadline_ms {
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
        ids
    });
    if !to_migrate.is_empty() {
        control
            .write(control.request(Command::MigrateDesktops { ids: to_migrate }, None))
            .await?;
    }
    Ok(())
}

/// One scheduling pass. Returns the revision at which nothing could be
/// placed, so the next pass can skip until the state changes.
async fn schedule_pending(
    control: &ControlPlane,
    idle_revision: Option<u64>,
) -> Result<Option<u64>, ApiError> {
    let batch = control.fleet.options.schedule_batch;
    let input = control.state.with_state(|state| {
        if state.pending_count() == 0 || Some(state.revision()) == idle_revision {
            return None;
        }
        let requests: Vec<(DesktopRequest, Option<String>)> = state
            .pending_desktops(batch)
            .into_iter()
            .map(|desktop| {
                (
                    DesktopRequest::from_desktop(desktop),
                    desktop.reason.clone(),
                )
            })
            .collect();
        Some((state.revision(), state.node_views(), requests))
    });
    let Some((revision, mut views, requests)) = input else {
        return Ok(idle_revision);
    };
    let (requests, old_reasons): (Vec<DesktopRequest>, Vec<Option<String>>) =
        requests.into_iter().unzip();
    let decisions = scheduler::place(&mut views, &requests, control.fleet.options.strategy);
    let mut placements = Vec::new();
    let mut reasons = Vec::new();
    for (decision, old_reason) in decisions.into_iter().zip(old_reasons) {
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
                if old_reason.as_ref() != Some(&reason) {
                    reasons.push(PendingReason { desktop_id, reason });
                }
            }
        }
    }
    let placed_any = !placements.is_empty();
    // One command per chunk: each fits one log entry (see the proposer's
    // weight limit); the chunks commit concurrently.
    let writes = placements.chunks(PLACEMENTS_PER_ENTRY).map(|chunk| {
        let command = Command::PlaceDesktops {
            placements: chunk.to_vec(),
        };
        control.write(control.request(command, None))
    });
    for response in futures::future::join_all(writes).await {
        if let Ok(crate::types::Applied::Placed { refused, .. }) = &response?.outcome {
            if let Some(first) = refused.first() {
                tracing::warn!(
                    refused = refused.len(),
                    first = %first.reason,
                    "placements refused on apply (state moved meanwhile)"
                );
            }
        }
    }
    for chunk in reasons.chunks(PLACEMENTS_PER_ENTRY) {
        let command = Command::SetPendingReasons {
            reasons: chunk.to_vec(),
        };
        control.write(control.request(command, None)).await?;
    }
    Ok(if placed_any { None } else { Some(revision) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_grows_with_the_fleet_as_nomads_does() {
        let options = FleetOptions::default();
        assert_eq!(options.heartbeat_ttl(3), Duration::from_secs(10));
        assert_eq!(options.heartbeat_ttl(125), Duration::from_secs(10));
        // 5,000 nodes heartbeating every ttl/4 at 50/s fleet-wide.
        assert_eq!(options.heartbeat_ttl(5_000), Duration::from_secs(400));
        let fast = FleetOptions {
            min_heartbeat_ttl: Duration::from_secs(2),
            max_heartbeats_per_second: 1_000,
            ..FleetOptions::default()
        };
        assert_eq!(fast.heartbeat_ttl(1_000), Duration::from_secs(4));
    }
}
