//! The leader's fleet: heartbeat leases, down detection, drains and the
//! scheduling loop. Decisions are the pure [`engine`]; [`driver`] runs
//! them on the leader (timers, quorum checks, Raft writes). [`Fleet`] is
//! the handle the doors share: the node API feeds it heartbeats, the HTTP
//! API reads usage from it and wakes it.

pub mod driver;
pub mod engine;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

pub use engine::{FleetEngine, FleetOptions, ReportedDesktop, Usage};

/// Leader-side fleet bookkeeping: the engine behind a lock (held only for
/// pure calls, never across an await) and the leader-lease cache.
pub struct Fleet {
    engine: Mutex<FleetEngine>,
    /// When a quorum last confirmed this server leads, in which term.
    confirmed: Mutex<Option<(Instant, u64)>>,
    /// How long a quorum's confirmation is trusted.
    leader_lease: Duration,
    /// One quorum check at a time; concurrent callers reuse its result.
    confirming: tokio::sync::Mutex<()>,
    wake: Notify,
}

impl Fleet {
    pub fn new(options: FleetOptions, election_timeout_min: Duration) -> Fleet {
        Fleet {
            engine: Mutex::new(FleetEngine::new(options)),
            confirmed: Mutex::new(None),
            // No other leader can be elected sooner than an election
            // timeout after a quorum acknowledged us; half leaves margin for
            // clock-rate differences.
            leader_lease: election_timeout_min / 2,
            confirming: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
        }
    }

    fn engine(&self) -> MutexGuard<'_, FleetEngine> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What a task's desktop asks for when its creator said nothing.
    pub fn default_resources(&self) -> crate::types::DesktopResources {
        self.engine().options().default_resources.clone()
    }

    /// Wakes the leader loop (something it acts on changed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Usage last reported for the desktops of `node_id` (leader only).
    pub fn usage(&self, node_id: &str) -> std::collections::HashMap<String, Usage> {
        self.engine().usage(node_id)
    }

    /// Wall-clock time of the last heartbeat this server took from
    /// `node_id` (leader only).
    pub fn last_heartbeat_ms(&self, node_id: &str) -> Option<u64> {
        self.engine().last_heartbeat_ms(node_id)
    }
}
