//! Applying node commands: registration, health, cordon, drains and
//! removal.

use crate::types::{
    Applied, Change, ChangeKind, CommandError, DesktopIntent, Drain, Node, NodeRegistration,
    NodeStatus, NodeStatusUpdate,
};

use super::desktops::unplace;
use super::*;

impl State {
    /// A node agent announces itself.
    pub(super) fn register_node(
        &mut self,
        index: u64,
        now_ms: u64,
        registration: &NodeRegistration,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let node = self.upsert_node(index, now_ms, registration)?;
        changes.push(node_put(index, &node));
        Ok(Applied::Node { node })
    }

    /// Health transitions decided by the leader from heartbeats.
    pub(super) fn set_node_status(
        &mut self,
        index: u64,
        now_ms: u64,
        updates: &[NodeStatusUpdate],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        for update in updates {
            self.set_one_node_status(index, now_ms, &update.id, update.status, changes)?;
        }
        Ok(Applied::Done)
    }

    /// Cordon or uncordon; a draining node cannot be uncordoned.
    pub(super) fn set_node_eligibility(
        &mut self,
        index: u64,
        id: &str,
        eligible: bool,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let node = self.node_mut(id)?;
        if eligible && node.drain.is_some() {
            return Err(CommandError::NodeDraining {
                name: node.name.clone(),
            });
        }
        node.eligible = eligible;
        node.revision = index;
        let node = node.clone();
        changes.push(node_put(index, &node));
        Ok(Applied::Node { node })
    }

    /// Starts a drain or replaces the running one's deadline.
    pub(super) fn start_drain(
        &mut self,
        index: u64,
        now_ms: u64,
        id: &str,
        deadline_ms: u64,
        max_parallel: u32,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let node = self.node_mut(id)?;
        if node.status == NodeStatus::Down {
            return Err(CommandError::NodeDown {
                name: node.name.clone(),
            });
        }
        let started_at_ms = node.drain.as_ref().map_or(now_ms, |d| d.started_at_ms);
        node.eligible = false;
        node.drain = Some(Drain {
            started_at_ms,
            deadline_ms,
            max_parallel: max_parallel.max(1),
        });
        node.drained_at_ms = None;
        node.revision = index;
        changes.push(node_put(index, node));
        self.settle_drain(index, now_ms, id, changes);
        Ok(Applied::Node {
            node: self.nodes[id].clone(),
        })
    }

    /// Cancels a drain; the node stays ineligible.
    pub(super) fn cancel_drain(
        &mut self,
        index: u64,
        id: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let node = self.node_mut(id)?;
        if node.drain.take().is_some() {
            node.revision = index;
            changes.push(node_put(index, node));
        }
        Ok(Applied::Node {
            node: self.nodes[id].clone(),
        })
    }

    /// Forgets a node that is down and holds nothing.
    pub(super) fn remove_node(
        &mut self,
        index: u64,
        id: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let holds_desktops = self.allocations.contains_key(id);
        let node = self.node_mut(id)?;
        if node.status != NodeStatus::Down || holds_desktops {
            return Err(CommandError::NodeNotDown {
                name: node.name.clone(),
            });
        }
        self.nodes.remove(id);
        changes.push(Change {
            revision: index,
            kind: ChangeKind::NodeDeleted { id: id.to_owned() },
        });
        Ok(Applied::Deleted)
    }

    pub(super) fn node_mut(&mut self, id: &str) -> Result<&mut Node, CommandError> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| CommandError::NodeNotFound { id: id.to_owned() })
    }

    pub(super) fn upsert_node(
        &mut self,
        index: u64,
        now_ms: u64,
        registration: &NodeRegistration,
    ) -> Result<Node, CommandError> {
        if let Some(other) = self
            .nodes
            .values()
            .find(|node| node.name == registration.name && node.id != registration.id)
        {
            return Err(CommandError::NodeNameTaken {
                name: other.name.clone(),
            });
        }
        let node = self
            .nodes
            .entry(registration.id.clone())
            .or_insert_with(|| Node {
                id: registration.id.clone(),
                name: registration.name.clone(),
                labels: BTreeMap::new(),
                capacity: Default::default(),
                reserved: Default::default(),
                gpus: Vec::new(),
                status: NodeStatus::Initializing,
                eligible: true,
                drain: None,
                drained_at_ms: None,
                agent_version: String::new(),
                address: String::new(),
                registered_at_ms: now_ms,
                status_changed_at_ms: now_ms,
                revision: index,
            });
        node.name = registration.name.clone();
        node.labels = registration.labels.clone();
        node.capacity = registration.capacity.clone();
        node.reserved = registration.reserved.clone();
        node.gpus = registration.gpus.clone();
        node.agent_version = registration.agent_version.clone();
        node.address = registration.address.clone();
        node.revision = index;
        Ok(node.clone())
    }

    pub(super) fn set_one_node_status(
        &mut self,
        index: u64,
        now_ms: u64,
        node_id: &str,
        status: NodeStatus,
        changes: &mut Vec<Change>,
    ) -> Result<(), CommandError> {
        let node = self.node_mut(node_id)?;
        if node.status == status {
            return Ok(());
        }
        node.status = status;
        node.status_changed_at_ms = now_ms;
        node.revision = index;
        let name = node.name.clone();
        changes.push(node_put(index, node));
        if status == NodeStatus::Down {
            let on_node: Vec<String> = self
                .allocations
                .get(node_id)
                .map(|allocation| allocation.desktops.iter().cloned().collect())
                .unwrap_or_default();
            for desktop_id in on_node {
                if self.desktops[&desktop_id].intent == DesktopIntent::Release {
                    self.delete_desktop(index, &desktop_id, changes);
                } else {
                    self.update_desktop(index, &desktop_id, changes, |desktop| {
                        unplace(desktop, format!("node {name} went down; placing it again"));
                    });
                }
            }
            self.settle_drain(index, now_ms, node_id, changes);
        }
        Ok(())
    }

    /// Ends the drain of `node_id` once no desktop is left on it.
    pub(super) fn settle_drain(
        &mut self,
        index: u64,
        now_ms: u64,
        node_id: &str,
        changes: &mut Vec<Change>,
    ) {
        if self.allocations.contains_key(node_id) {
            return;
        }
        if let Some(node) = self.nodes.get_mut(node_id) {
            if node.drain.take().is_some() {
                node.drained_at_ms = Some(now_ms);
                node.revision = index;
                changes.push(node_put(index, node));
            }
        }
    }
}
