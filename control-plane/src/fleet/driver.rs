//! Runs the [`super::engine`] on the leader: the loop that wakes on a tick
//! or a nudge, the quorum check before any lease is granted or judged, and
//! the Raft writes of what the engine decided. Decisions live in the
//! engine; this file only sequences them and does the IO.
//!
//! The heartbeat handler only answers while this server's leadership is
//! confirmed by a quorum, so a deposed leader cannot extend a lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::ServerState;

use super::engine::{FleetError, ReportedDesktop};
use super::Fleet;
use crate::control::{now_ms, ControlPlane};
use crate::error::ApiError;
use crate::types::{Applied, Command};

/// How often the leader loop looks at the fleet when nothing wakes it.
const TICK: Duration = Duration::from_millis(50);

/// Answers UNAVAILABLE unless a quorum recently confirmed this server leads.
pub async fn confirm_leadership(control: &ControlPlane, fleet: &Fleet) -> Result<(), ApiError> {
    let term = control.raft.metrics().borrow().current_term;
    let fresh = || {
        let confirmed = fleet.confirmed.lock().unwrap_or_else(|p| p.into_inner());
        confirmed.is_some_and(|(at, confirmed_term)| {
            confirmed_term == term && at.elapsed() < fleet.leader_lease
        })
    };
    if fresh() {
        return Ok(());
    }
    // Single flight: a burst of heartbeats costs one quorum round.
    let _turn = fleet.confirming.lock().await;
    if fresh() {
        return Ok(());
    }
    let started = Instant::now();
    match control.raft.ensure_linearizable().await {
        Ok(_) => {
            *fleet.confirmed.lock().unwrap_or_else(|p| p.into_inner()) = Some((started, term));
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

/// Takes a heartbeat on the leader: extends the node's lease, marks it
/// ready, and commits state changes its reports carry.
pub async fn heartbeat(
    control: &ControlPlane,
    fleet: &Fleet,
    node_id: &str,
    reported: Vec<ReportedDesktop>,
) -> Result<HeartbeatAnswer, ApiError> {
    confirm_leadership(control, fleet).await?;
    let received = Instant::now();
    let outcome = control
        .state
        .with_state(|state| {
            fleet
                .engine()
                .heartbeat(state, node_id, &reported, received, now_ms())
        })
        .map_err(|error| match error {
            FleetError::UnknownNode(_) => ApiError::not_found(error.to_string()),
        })?;
    for command in outcome.commands {
        if let Command::SetNodeStatus { .. } = &command {
            tracing::info!(node_id, "node is ready");
        }
        control.write(control.request(command, None)).await?;
        fleet.wake();
    }
    Ok(HeartbeatAnswer {
        ttl: outcome.ttl,
        revision: control.state.with_state(|state| state.revision()),
    })
}

/// Runs for the life of the server; acts only while it leads.
pub async fn run_leader_loop(control: Arc<ControlPlane>, fleet: Arc<Fleet>) {
    loop {
        let _ = tokio::time::timeout(TICK, fleet.wake.notified()).await;
        let leading_term = {
            let metrics = control.raft.metrics();
            let metrics = metrics.borrow();
            (metrics.state == ServerState::Leader).then_some(metrics.current_term)
        };
        let (acting, newly) = {
            let mut engine = fleet.engine();
            let before = engine.leading_term();
            (
                engine.observe_leadership(leading_term),
                before != leading_term,
            )
        };
        if !acting {
            continue;
        }
        if newly {
            tracing::info!(term = leading_term, "leading the fleet");
        }
        if let Err(error) = confirm_leadership(&control, &fleet).await {
            tracing::debug!(%error, "leadership not confirmed; skipping this pass");
            continue;
        }
        if let Err(error) = mark_silent_nodes_down(&control, &fleet).await {
            tracing::warn!(%error, "marking silent nodes down");
        }
        if let Err(error) = drive_drains(&control, &fleet).await {
            tracing::warn!(%error, "advancing drains");
        }
        if let Err(error) = schedule_pending(&control, &fleet).await {
            fleet.engine().schedule_failed();
            tracing::warn!(%error, "scheduling pass failed");
        }
    }
}

async fn mark_silent_nodes_down(control: &ControlPlane, fleet: &Fleet) -> Result<(), ApiError> {
    let now = Instant::now();
    let command = control
        .state
        .with_state(|state| fleet.engine().mark_silent_nodes_down(state, now));
    let Some(command) = command else {
        return Ok(());
    };
    if let Command::SetNodeStatus { updates } = &command {
        for update in updates {
            let name = control.state.with_state(|state| {
                state
                    .node(&update.id)
                    .map_or_else(|| update.id.clone(), |node| node.name.clone())
            });
            tracing::warn!(node = %name, "no heartbeat within the lease; marking the node down");
        }
    }
    control.write(control.request(command, None)).await?;
    Ok(())
}

async fn drive_drains(control: &ControlPlane, fleet: &Fleet) -> Result<(), ApiError> {
    let now = now_ms();
    let command = control
        .state
        .with_state(|state| fleet.engine().drive_drains(state, now));
    if let Some(command) = command {
        control.write(control.request(command, None)).await?;
    }
    Ok(())
}

async fn schedule_pending(control: &ControlPlane, fleet: &Fleet) -> Result<(), ApiError> {
    let pass = control
        .state
        .with_state(|state| fleet.engine().schedule(state));
    let Some(pass) = pass else {
        return Ok(());
    };
    // The placement chunks commit concurrently.
    let writes = pass
        .placements
        .into_iter()
        .map(|command| control.write(control.request(command, None)));
    for response in futures::future::join_all(writes).await {
        if let Ok(Applied::Placed { refused, .. }) = &response?.outcome {
            if let Some(first) = refused.first() {
                tracing::warn!(
                    refused = refused.len(),
                    first = %first.reason,
                    "placements refused on apply (state moved meanwhile)"
                );
            }
        }
    }
    for command in pass.reasons {
        control.write(control.request(command, None)).await?;
    }
    Ok(())
}
