//! The state machine's pure core: applies [`ClientRequest`]s to the entities
//! and says what changed. No IO, no clocks, no randomness: every replica that
//! applies the same log reaches the same state.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::scheduler::{self, NodeView};
use crate::types::{
    Applied, Change, ChangeKind, ClientRequest, ClientResponse, Column, Command, CommandError,
    Desktop, DesktopIntent, DesktopReport, DesktopState, Drain, Node, NodeRegistration, NodeStatus,
    PendingReason, Placement, Task, TokenKind, TokenRecord, LOG_FORMAT_VERSION,
};

/// How many request ids are remembered for exactly-once retries. A client
/// retrying a write after this many newer writes may apply it twice; with
/// clients that retry for seconds, not hours, 100k is far beyond reach.
pub const REMEMBERED_REQUESTS: usize = 100_000;

/// The replicated state. Serialized whole into snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    tasks: BTreeMap<String, Task>,
    nodes: BTreeMap<String, Node>,
    desktops: BTreeMap<String, Desktop>,
    /// Keyed by the token's SHA-256 hex.
    tokens: BTreeMap<String, TokenRecord>,
    applied_requests: AppliedRequests,
    /// Tasks per column, so appending a card does not scan the board.
    column_sizes: BTreeMap<Column, u32>,
    /// Revision of the newest change (0: none yet).
    revision: u64,
    /// Indexes over `desktops`, kept in step by [`State::index_desktop`]
    /// and [`State::unindex_desktop`]; checked by `verify_invariants`.
    #[serde(default)]
    allocations: BTreeMap<String, Allocation>,
    /// Desktops waiting for a node, oldest first: `(sequence, id)`.
    #[serde(default)]
    pending: BTreeSet<(u64, String)>,
    #[serde(default)]
    next_desktop_sequence: u64,
}

/// What the desktops placed on a node hold of it. A desktop holds its share
/// from placement until its node reports it stopped (or the node is down).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// GPU memory per GPU index.
    pub gpu_memory_bytes: Vec<u64>,
    pub desktops: BTreeSet<String>,
}

/// Request ids already applied, with their answers, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct AppliedRequests {
    order: VecDeque<String>,
    responses: HashMap<String, ClientResponse>,
}

impl AppliedRequests {
    fn get(&self, request_id: &str) -> Option<&ClientResponse> {
        self.responses.get(request_id)
    }

    fn remember(&mut self, request_id: String, response: ClientResponse) {
        if self
            .responses
            .insert(request_id.clone(), response)
            .is_none()
        {
            self.order.push_back(request_id);
        }
        while self.order.len() > REMEMBERED_REQUESTS {
            if let Some(oldest) = self.order.pop_front() {
                self.responses.remove(&oldest);
            }
        }
    }
}

impl State {
    /// Applies the request stored at log `index`. Returns the answer for the
    /// client and the changes for watchers (empty for duplicates and errors).
    pub fn apply(&mut self, index: u64, request: &ClientRequest) -> (ClientResponse, Vec<Change>) {
        if let Some(previous) = self.applied_requests.get(&request.request_id) {
            let mut response = previous.clone();
            response.duplicate = true;
            return (response, Vec::new());
        }
        let mut changes = Vec::new();
        let outcome = if request.format > LOG_FORMAT_VERSION {
            Err(CommandError::UnsupportedFormat {
                found: request.format,
                supported: LOG_FORMAT_VERSION,
            })
        } else {
            self.apply_command(index, request.issued_at_ms, &request.command, &mut changes)
        };
        if !changes.is_empty() {
            self.revision = index;
        }
        let response = ClientResponse {
            revision: index,
            duplicate: false,
            outcome,
        };
        self.applied_requests
            .remember(request.request_id.clone(), response.clone());
        (response, changes)
    }

    fn apply_command(
        &mut self,
        index: u64,
        now_ms: u64,
        command: &Command,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        match command {
            Command::CreateTask {
                id,
                title,
                description,
                repository,
                column,
                resources,
            } => {
                if self.tasks.contains_key(id) {
                    return Err(CommandError::TaskExists { id: id.clone() });
                }
                let task = Task {
                    id: id.clone(),
                    title: title.clone(),
                    description: description.clone(),
                    column: *column,
                    position: self.column_len(*column),
                    repository: repository.clone(),
                    created_at_ms: now_ms,
                    updated_at_ms: now_ms,
                    revision: index,
                    resources: resources.clone(),
                    desktop_id: None,
                };
                self.tasks.insert(id.clone(), task);
                self.resize_column(*column, 1);
                self.reconcile_task_desktop(index, now_ms, id, changes);
                let task = self.tasks[id].clone();
                changes.push(task_put(index, &task));
                Ok(Applied::Task { task })
            }
            Command::UpdateTask {
                id,
                title,
                description,
                repository,
            } => {
                let task = self
                    .tasks
                    .get_mut(id)
                    .ok_or_else(|| CommandError::TaskNotFound { id: id.clone() })?;
                if let Some(title) = title {
                    task.title = title.clone();
                }
                if let Some(description) = description {
                    task.description = description.clone();
                }
                if let Some(repository) = repository {
                    task.repository = repository.clone();
                }
                task.updated_at_ms = now_ms;
                task.revision = index;
                let task = task.clone();
                changes.push(task_put(index, &task));
                Ok(Applied::Task { task })
            }
            Command::MoveTask {
                id,
                column,
                position,
            } => {
                let moving = self
                    .tasks
                    .get(id)
                    .cloned()
                    .ok_or_else(|| CommandError::TaskNotFound { id: id.clone() })?;
                // Take it out of its column, then insert it into the target.
                self.shift_positions(index, moving.column, moving.position, -1, id, changes);
                self.resize_column(moving.column, -1);
                let destination_len = self.column_len(*column);
                let new_position = position.map_or(destination_len, |p| p.min(destination_len));
                self.shift_positions(index, *column, new_position, 1, id, changes);
                self.resize_column(*column, 1);
                let task = self.tasks.get_mut(id).expect("task looked up above");
                task.column = *column;
                task.position = new_position;
                task.updated_at_ms = now_ms;
                task.revision = index;
                self.reconcile_task_desktop(index, now_ms, id, changes);
                let task = self.tasks[id].clone();
                changes.push(task_put(index, &task));
                Ok(Applied::Task { task })
            }
            Command::DeleteTask { id } => {
                let task = self
                    .tasks
                    .remove(id)
                    .ok_or_else(|| CommandError::TaskNotFound { id: id.clone() })?;
                self.shift_positions(index, task.column, task.position, -1, id, changes);
                self.resize_column(task.column, -1);
                if let Some(desktop_id) = &task.desktop_id {
                    self.release_desktop(index, desktop_id, changes);
                }
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::TaskDeleted { id: id.clone() },
                });
                Ok(Applied::Deleted)
            }
            Command::RegisterNode { registration } => {
                let node = self.register_node(index, now_ms, registration)?;
                changes.push(node_put(index, &node));
                Ok(Applied::Node { node })
            }
            Command::SetNodeStatus { updates } => {
                for update in updates {
                    self.set_node_status(index, now_ms, &update.id, update.status, changes)?;
                }
                Ok(Applied::Done)
            }
            Command::SetNodeEligibility { id, eligible } => {
                let node = self.node_mut(id)?;
                if *eligible && node.drain.is_some() {
                    return Err(CommandError::NodeDraining {
                        name: node.name.clone(),
                    });
                }
                node.eligible = *eligible;
                node.revision = index;
                let node = node.clone();
                changes.push(node_put(index, &node));
                Ok(Applied::Node { node })
            }
            Command::StartDrain {
                id,
                deadline_ms,
                max_parallel,
            } => {
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
                    deadline_ms: *deadline_ms,
                    max_parallel: (*max_parallel).max(1),
                });
                node.drained_at_ms = None;
                node.revision = index;
                changes.push(node_put(index, node));
                self.settle_drain(index, now_ms, id, changes);
                Ok(Applied::Node {
                    node: self.nodes[id].clone(),
                })
            }
            Command::CancelDrain { id } => {
                let node = self.node_mut(id)?;
                if node.drain.take().is_some() {
                    node.revision = index;
                    changes.push(node_put(index, node));
                }
                Ok(Applied::Node {
                    node: self.nodes[id].clone(),
                })
            }
            Command::RemoveNode { id } => {
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
                    kind: ChangeKind::NodeDeleted { id: id.clone() },
                });
                Ok(Applied::Deleted)
            }
            Command::PlaceDesktops { placements } => {
                let mut placed = 0;
                let mut refused = Vec::new();
                for placement in placements {
                    match self.place_desktop(index, placement, changes) {
                        Ok(()) => placed += 1,
                        Err(reason) => refused.push(PendingReason {
                            desktop_id: placement.desktop_id.clone(),
                            reason,
                        }),
                    }
                }
                Ok(Applied::Placed { placed, refused })
            }
            Command::SetPendingReasons { reasons } => {
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
            Command::MigrateDesktops { ids } => {
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
            Command::ReportDesktops { node_id, reports } => {
                if !self.nodes.contains_key(node_id) {
                    return Err(CommandError::NodeNotFound {
                        id: node_id.clone(),
                    });
                }
                for report in reports {
                    self.apply_report(index, node_id, report, changes);
                }
                self.settle_drain(index, now_ms, node_id, changes);
                Ok(Applied::Done)
            }
            Command::PutToken { token } => {
                self.tokens.insert(token.sha256_hex.clone(), token.clone());
                Ok(Applied::Done)
            }
        }
    }

    /// Gives a task in planning, implementation or review a desktop, and
    /// releases the desktop of one in backlog or done.
    fn reconcile_task_desktop(
        &mut self,
        index: u64,
        now_ms: u64,
        task_id: &str,
        changes: &mut Vec<Change>,
    ) {
        let task = &self.tasks[task_id];
        let wants_desktop = matches!(
            task.column,
            Column::Planning | Column::Implementation | Column::Review
        );
        match (&task.desktop_id, wants_desktop) {
            (None, true) => {
                self.next_desktop_sequence += 1;
                let sequence = self.next_desktop_sequence;
                let desktop = Desktop {
                    id: format!("dt-{sequence}"),
                    task_id: task_id.to_owned(),
                    node_id: None,
                    gpu: None,
                    resources: task.resources.clone(),
                    generation: 0,
                    intent: DesktopIntent::Run,
                    state: DesktopState::Pending,
                    reason: Some("waiting for the scheduler".to_owned()),
                    sequence,
                    created_at_ms: now_ms,
                    revision: index,
                };
                self.index_desktop(&desktop);
                changes.push(desktop_put(index, &desktop));
                let task = self.tasks.get_mut(task_id).expect("looked up above");
                task.desktop_id = Some(desktop.id.clone());
                self.desktops.insert(desktop.id.clone(), desktop);
            }
            (Some(desktop_id), false) => {
                let desktop_id = desktop_id.clone();
                self.tasks
                    .get_mut(task_id)
                    .expect("looked up above")
                    .desktop_id = None;
                self.release_desktop(index, &desktop_id, changes);
            }
            _ => {}
        }
    }

    /// A desktop no task needs: forgotten at once if it runs nowhere, else
    /// stopped by its node first.
    fn release_desktop(&mut self, index: u64, desktop_id: &str, changes: &mut Vec<Change>) {
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

    fn delete_desktop(&mut self, index: u64, desktop_id: &str, changes: &mut Vec<Change>) {
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
    fn update_desktop(
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

    fn index_desktop(&mut self, desktop: &Desktop) {
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

    fn unindex_desktop(&mut self, desktop: &Desktop) {
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

    fn node_mut(&mut self, id: &str) -> Result<&mut Node, CommandError> {
        self.nodes
            .get_mut(id)
            .ok_or_else(|| CommandError::NodeNotFound { id: id.to_owned() })
    }

    fn register_node(
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

    fn set_node_status(
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
    fn settle_drain(&mut self, index: u64, now_ms: u64, node_id: &str, changes: &mut Vec<Change>) {
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

    fn place_desktop(
        &mut self,
        index: u64,
        placement: &Placement,
        changes: &mut Vec<Change>,
    ) -> Result<(), String> {
        let desktop = self
            .desktops
            .get(&placement.desktop_id)
            .ok_or("the desktop no longer exists")?;
        if desktop.node_id.is_some() || desktop.intent != DesktopIntent::Run {
            return Err("the desktop is not pending".to_owned());
        }
        let view = self
            .node_view(&placement.node_id)
            .ok_or("the node does not exist")?;
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

    fn apply_report(
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

    /// The scheduler's view of one node.
    pub fn node_view(&self, node_id: &str) -> Option<NodeView> {
        let node = self.nodes.get(node_id)?;
        Some(scheduler::NodeView::from_node(
            node,
            self.allocations.get(node_id),
        ))
    }

    /// The scheduler's view of every node, by id.
    pub fn node_views(&self) -> Vec<NodeView> {
        self.nodes
            .values()
            .map(|node| scheduler::NodeView::from_node(node, self.allocations.get(&node.id)))
            .collect()
    }

    /// Up to `limit` pending desktops, oldest first.
    pub fn pending_desktops(&self, limit: usize) -> Vec<&Desktop> {
        self.pending
            .iter()
            .take(limit)
            .map(|(_, id)| &self.desktops[id])
            .collect()
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    pub fn allocation(&self, node_id: &str) -> Option<&Allocation> {
        self.allocations.get(node_id)
    }

    /// Desktops placed on `node_id`, in id order.
    pub fn node_desktops(&self, node_id: &str) -> Vec<&Desktop> {
        self.allocations
            .get(node_id)
            .map(|allocation| {
                allocation
                    .desktops
                    .iter()
                    .map(|id| &self.desktops[id])
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.get(id)
    }

    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.values().find(|node| node.name == name)
    }

    pub fn desktop(&self, id: &str) -> Option<&Desktop> {
        self.desktops.get(id)
    }

    /// Moves every task of `column` at or after `from` (other than `skip`) by
    /// `delta` places, recording each as a change.
    fn shift_positions(
        &mut self,
        index: u64,
        column: Column,
        from: u32,
        delta: i64,
        skip: &str,
        changes: &mut Vec<Change>,
    ) {
        for task in self.tasks.values_mut() {
            if task.column != column || task.id == skip {
                continue;
            }
            let past_gap = if delta < 0 {
                task.position > from
            } else {
                task.position >= from
            };
            if past_gap {
                task.position = u32::try_from(i64::from(task.position) + delta)
                    .expect("positions stay contiguous from 0");
                task.revision = index;
                changes.push(task_put(index, task));
            }
        }
    }

    fn column_len(&self, column: Column) -> u32 {
        self.column_sizes.get(&column).copied().unwrap_or(0)
    }

    fn resize_column(&mut self, column: Column, delta: i64) {
        let size = self.column_sizes.entry(column).or_insert(0);
        *size = u32::try_from(i64::from(*size) + delta).expect("column sizes stay non-negative");
    }

    pub fn task(&self, id: &str) -> Option<&Task> {
        self.tasks.get(id)
    }

    /// Tasks ordered by column, then position.
    pub fn tasks(&self, column: Option<Column>) -> Vec<Task> {
        let mut tasks: Vec<Task> = self
            .tasks
            .values()
            .filter(|task| column.is_none_or(|column| task.column == column))
            .cloned()
            .collect();
        tasks.sort_by_key(|task| (task.column, task.position));
        tasks
    }

    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn desktops(&self) -> impl Iterator<Item = &Desktop> {
        self.desktops.values()
    }

    /// The kind of the token whose SHA-256 is `sha256_hex`, if one exists.
    pub fn token_kind(&self, sha256_hex: &str) -> Option<TokenKind> {
        self.tokens.get(sha256_hex).map(|record| record.kind)
    }

    pub fn has_tokens(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Checks what every apply must preserve. Used by tests after each step.
    pub fn verify_invariants(&self) -> Result<(), String> {
        for column in Column::ALL {
            let mut positions: Vec<u32> = self
                .tasks
                .values()
                .filter(|task| task.column == column)
                .map(|task| task.position)
                .collect();
            positions.sort_unstable();
            let count = u32::try_from(positions.len()).expect("fewer than 4 billion tasks");
            if count != self.column_len(column) {
                return Err(format!(
                    "column {column} holds {count} tasks but its size says {}",
                    self.column_len(column)
                ));
            }
            let expected: Vec<u32> = (0..count).collect();
            if positions != expected {
                return Err(format!(
                    "column {column} positions {positions:?} are not 0..n"
                ));
            }
        }
        for (id, task) in &self.tasks {
            if &task.id != id || task.revision > self.revision {
                return Err(format!("task {id} is inconsistent: {task:?}"));
            }
        }
        if self.applied_requests.order.len() != self.applied_requests.responses.len() {
            return Err("request-id index and order disagree".to_owned());
        }
        let mut rebuilt = State::default();
        for desktop in self.desktops.values() {
            rebuilt.index_desktop(desktop);
            if let Some(node_id) = &desktop.node_id {
                if !self.nodes.contains_key(node_id) {
                    return Err(format!(
                        "desktop {} is on unknown node {node_id}",
                        desktop.id
                    ));
                }
            }
            let task = self.tasks.get(&desktop.task_id);
            if task.and_then(|task| task.desktop_id.as_deref()) != Some(desktop.id.as_str())
                && desktop.intent != DesktopIntent::Release
            {
                return Err(format!("desktop {} is not its task's", desktop.id));
            }
        }
        if rebuilt.allocations != self.allocations || rebuilt.pending != self.pending {
            return Err("desktop indexes disagree with the desktops".to_owned());
        }
        Ok(())
    }
}

/// Takes a desktop off its node and back to the scheduler.
fn unplace(desktop: &mut Desktop, reason: String) {
    desktop.node_id = None;
    desktop.gpu = None;
    desktop.generation = 0;
    desktop.intent = DesktopIntent::Run;
    desktop.state = DesktopState::Pending;
    desktop.reason = Some(reason);
}

fn node_put(index: u64, node: &Node) -> Change {
    Change {
        revision: index,
        kind: ChangeKind::NodePut { node: node.clone() },
    }
}

fn desktop_put(index: u64, desktop: &Desktop) -> Change {
    Change {
        revision: index,
        kind: ChangeKind::DesktopPut {
            desktop: desktop.clone(),
        },
    }
}

fn task_put(index: u64, task: &Task) -> Change {
    Change {
        revision: index,
        kind: ChangeKind::TaskPut { task: task.clone() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::DesktopResources;

    fn request(id: &str, command: Command) -> ClientRequest {
        ClientRequest {
            format: LOG_FORMAT_VERSION,
            request_id: id.to_owned(),
            issued_at_ms: 1_000,
            command,
        }
    }

    fn create(id: &str, column: Column) -> Command {
        Command::CreateTask {
            id: id.to_owned(),
            title: format!("task {id}"),
            description: String::new(),
            repository: None,
            column,
            resources: DesktopResources::default(),
        }
    }

    #[test]
    fn retried_request_applies_once_and_returns_the_first_answer() {
        let mut state = State::default();
        let (first, changes) = state.apply(5, &request("r1", create("a", Column::Backlog)));
        assert_eq!(changes.len(), 1);
        let (second, changes) = state.apply(9, &request("r1", create("a", Column::Backlog)));
        assert!(changes.is_empty());
        assert!(second.duplicate);
        assert_eq!(second.revision, 5);
        assert_eq!(first.outcome, second.outcome);
        assert_eq!(state.task_count(), 1);
    }

    #[test]
    fn move_keeps_positions_contiguous() {
        let mut state = State::default();
        for (index, id) in ["a", "b", "c"].iter().enumerate() {
            state.apply(index as u64 + 1, &request(id, create(id, Column::Backlog)));
        }
        let moved = Command::MoveTask {
            id: "a".into(),
            column: Column::Backlog,
            position: Some(2),
        };
        state.apply(10, &request("m1", moved));
        state.verify_invariants().expect("invariants hold");
        let order: Vec<String> = state
            .tasks(Some(Column::Backlog))
            .into_iter()
            .map(|t| t.id)
            .collect();
        assert_eq!(order, ["b", "c", "a"]);

        let moved = Command::MoveTask {
            id: "c".into(),
            column: Column::Review,
            position: Some(99),
        };
        let (response, _) = state.apply(11, &request("m2", moved));
        let Ok(Applied::Task { task }) = response.outcome else {
            panic!("move failed: {response:?}");
        };
        assert_eq!((task.column, task.position), (Column::Review, 0));
        state.verify_invariants().expect("invariants hold");
    }

    #[test]
    fn unknown_ids_are_deterministic_errors() {
        let mut state = State::default();
        let (response, changes) = state.apply(
            1,
            &request(
                "x",
                Command::DeleteTask {
                    id: "missing".into(),
                },
            ),
        );
        assert!(changes.is_empty());
        assert_eq!(
            response.outcome,
            Err(CommandError::TaskNotFound {
                id: "missing".into()
            })
        );
        assert_eq!(state.revision(), 0);
    }

    fn register(id: &str, cpu_millis: u64, slots: u32) -> Command {
        Command::RegisterNode {
            registration: NodeRegistration {
                id: id.to_owned(),
                name: format!("node-{id}"),
                labels: BTreeMap::new(),
                capacity: crate::types::NodeCapacity {
                    cpu_millis,
                    memory_bytes: 64 << 30,
                    disk_bytes: 0,
                    desktop_slots: slots,
                },
                reserved: Default::default(),
                gpus: Vec::new(),
                agent_version: "test".into(),
                address: String::new(),
            },
        }
    }

    fn status(id: &str, status: NodeStatus) -> Command {
        Command::SetNodeStatus {
            updates: vec![crate::types::NodeStatusUpdate {
                id: id.to_owned(),
                status,
            }],
        }
    }

    fn place(desktop_id: &str, node_id: &str) -> Command {
        Command::PlaceDesktops {
            placements: vec![Placement {
                desktop_id: desktop_id.to_owned(),
                node_id: node_id.to_owned(),
                gpu: None,
            }],
        }
    }

    fn report(node_id: &str, desktop: &Desktop, state: DesktopState) -> Command {
        Command::ReportDesktops {
            node_id: node_id.to_owned(),
            reports: vec![DesktopReport {
                desktop_id: desktop.id.clone(),
                generation: desktop.generation,
                state,
                reason: None,
            }],
        }
    }

    /// Applies commands with consecutive indexes, checking invariants.
    struct Log {
        state: State,
        index: u64,
    }

    impl Log {
        fn new() -> Log {
            Log {
                state: State::default(),
                index: 0,
            }
        }

        fn apply(&mut self, command: Command) -> ClientResponse {
            self.index += 1;
            let (response, _) = self
                .state
                .apply(self.index, &request(&format!("r{}", self.index), command));
            self.state.verify_invariants().expect("invariants hold");
            response
        }

        fn desktop_of(&self, task: &str) -> Desktop {
            let id = self.state.task(task).unwrap().desktop_id.clone().unwrap();
            self.state.desktop(&id).unwrap().clone()
        }
    }

    #[test]
    fn planning_requests_a_desktop_and_done_releases_it() {
        let mut log = Log::new();
        log.apply(create("a", Column::Backlog));
        assert_eq!(log.state.pending_count(), 0);
        log.apply(Command::MoveTask {
            id: "a".into(),
            column: Column::Planning,
            position: None,
        });
        assert_eq!(log.state.pending_count(), 1);
        let desktop = log.desktop_of("a");
        assert_eq!(desktop.resources, DesktopResources::default());
        log.apply(Command::MoveTask {
            id: "a".into(),
            column: Column::Implementation,
            position: None,
        });
        assert_eq!(
            log.desktop_of("a").id,
            desktop.id,
            "same desktop across columns"
        );
        log.apply(Command::MoveTask {
            id: "a".into(),
            column: Column::Done,
            position: None,
        });
        assert_eq!(
            log.state.desktops().count(),
            0,
            "a pending desktop is dropped at once"
        );
        assert!(log.state.task("a").unwrap().desktop_id.is_none());
    }

    #[test]
    fn placement_is_checked_on_apply_and_never_overcommits() {
        let mut log = Log::new();
        log.apply(register("n1", 300, 8));
        log.apply(create("a", Column::Planning));
        log.apply(create("b", Column::Planning));
        let a = log.desktop_of("a");
        let b = log.desktop_of("b");
        // Initializing nodes take nothing.
        let response = log.apply(place(&a.id, "n1"));
        assert!(matches!(
            response.outcome,
            Ok(Applied::Placed { placed: 0, .. })
        ));
        log.apply(status("n1", NodeStatus::Ready));
        let response = log.apply(place(&a.id, "n1"));
        assert!(matches!(
            response.outcome,
            Ok(Applied::Placed { placed: 1, .. })
        ));
        // 250 + 250 > 300 millicores: refused.
        let response = log.apply(place(&b.id, "n1"));
        let Ok(Applied::Placed { placed: 0, refused }) = response.outcome else {
            panic!("expected a refusal: {response:?}");
        };
        assert!(refused[0].reason.contains("no room"), "{refused:?}");
        // Placing the same desktop twice is refused too.
        let response = log.apply(place(&a.id, "n1"));
        assert!(matches!(
            response.outcome,
            Ok(Applied::Placed { placed: 0, .. })
        ));
        let placed = log.desktop_of("a");
        assert_eq!(placed.node_id.as_deref(), Some("n1"));
        assert_eq!(
            placed.generation, 6,
            "the fencing token is the placement's index"
        );
        assert_eq!(log.state.allocation("n1").unwrap().cpu_millis, 250);
    }

    #[test]
    fn a_down_node_loses_its_desktops_and_stale_reports_are_fenced() {
        let mut log = Log::new();
        log.apply(register("n1", 4000, 8));
        log.apply(register("n2", 4000, 8));
        log.apply(status("n1", NodeStatus::Ready));
        log.apply(status("n2", NodeStatus::Ready));
        log.apply(create("a", Column::Planning));
        let a = log.desktop_of("a");
        log.apply(place(&a.id, "n1"));
        let on_n1 = log.desktop_of("a");
        log.apply(report("n1", &on_n1, DesktopState::Running));
        assert_eq!(log.desktop_of("a").state, DesktopState::Running);

        log.apply(status("n1", NodeStatus::Down));
        let pending = log.desktop_of("a");
        assert_eq!(pending.node_id, None);
        assert!(pending.reason.unwrap().contains("went down"));
        assert!(log.state.allocation("n1").is_none());
        log.apply(place(&a.id, "n2"));
        let on_n2 = log.desktop_of("a");
        assert_ne!(on_n2.generation, on_n1.generation);

        // n1 comes back and reports the old generation: ignored.
        log.apply(status("n1", NodeStatus::Ready));
        log.apply(report("n1", &on_n1, DesktopState::Stopped));
        assert_eq!(log.desktop_of("a"), on_n2);
        // Even with the current generation, only n2 speaks for it.
        log.apply(report("n1", &on_n2, DesktopState::Failed));
        assert_eq!(log.desktop_of("a"), on_n2);
    }

    #[test]
    fn drain_migrates_then_completes_and_leaves_the_node_ineligible() {
        let mut log = Log::new();
        log.apply(register("n1", 4000, 8));
        log.apply(register("n2", 4000, 8));
        log.apply(status("n1", NodeStatus::Ready));
        log.apply(status("n2", NodeStatus::Ready));
        log.apply(create("a", Column::Planning));
        let a = log.desktop_of("a");
        log.apply(place(&a.id, "n1"));
        log.apply(Command::StartDrain {
            id: "n1".into(),
            deadline_ms: 10_000,
            max_parallel: 1,
        });
        let node = log.state.node("n1").unwrap();
        assert!(!node.eligible && node.drain.is_some());
        // Nothing new lands on a draining node.
        log.apply(create("b", Column::Planning));
        let b = log.desktop_of("b");
        let response = log.apply(place(&b.id, "n1"));
        assert!(matches!(
            response.outcome,
            Ok(Applied::Placed { placed: 0, .. })
        ));
        // Uncordoning while draining is refused.
        let response = log.apply(Command::SetNodeEligibility {
            id: "n1".into(),
            eligible: true,
        });
        assert!(matches!(
            response.outcome,
            Err(CommandError::NodeDraining { .. })
        ));

        log.apply(Command::MigrateDesktops {
            ids: vec![a.id.clone()],
        });
        let migrating = log.desktop_of("a");
        assert_eq!(migrating.intent, DesktopIntent::Migrate);
        assert_eq!(
            migrating.node_id.as_deref(),
            Some("n1"),
            "held until stopped"
        );
        log.apply(report("n1", &migrating, DesktopState::Stopped));
        let pending = log.desktop_of("a");
        assert_eq!(
            (pending.node_id.clone(), pending.intent),
            (None, DesktopIntent::Run)
        );
        let node = log.state.node("n1").unwrap();
        assert!(node.drain.is_none() && node.drained_at_ms.is_some() && !node.eligible);
        log.apply(place(&a.id, "n2"));
        assert_eq!(log.desktop_of("a").node_id.as_deref(), Some("n2"));
    }

    #[test]
    fn draining_a_down_node_is_refused() {
        let mut log = Log::new();
        log.apply(register("n1", 4000, 8));
        log.apply(status("n1", NodeStatus::Down));
        let before = log.state.clone();
        let response = log.apply(Command::StartDrain {
            id: "n1".into(),
            deadline_ms: 0,
            max_parallel: 1,
        });
        assert!(matches!(
            response.outcome,
            Err(CommandError::NodeDown { .. })
        ));
        assert_eq!(log.state.node("n1"), before.node("n1"));
    }

    #[test]
    fn releasing_a_running_desktop_waits_for_its_node_to_stop_it() {
        let mut log = Log::new();
        log.apply(register("n1", 4000, 8));
        log.apply(status("n1", NodeStatus::Ready));
        log.apply(create("a", Column::Planning));
        let a = log.desktop_of("a");
        log.apply(place(&a.id, "n1"));
        let placed = log.state.desktop(&a.id).unwrap().clone();
        log.apply(Command::DeleteTask { id: "a".into() });
        assert_eq!(
            log.state.desktop(&a.id).unwrap().intent,
            DesktopIntent::Release
        );
        log.apply(report("n1", &placed, DesktopState::Stopped));
        assert!(log.state.desktop(&a.id).is_none());
        assert!(log.state.allocation("n1").is_none());
    }

    #[test]
    fn only_down_nodes_can_be_removed() {
        let mut log = Log::new();
        log.apply(register("n1", 4000, 8));
        log.apply(status("n1", NodeStatus::Ready));
        let response = log.apply(Command::RemoveNode { id: "n1".into() });
        assert!(matches!(
            response.outcome,
            Err(CommandError::NodeNotDown { .. })
        ));
        log.apply(status("n1", NodeStatus::Down));
        let response = log.apply(Command::RemoveNode { id: "n1".into() });
        assert_eq!(response.outcome, Ok(Applied::Deleted));
        assert!(log.state.node("n1").is_none());
        // Its agent coming back registers it again.
        log.apply(register("n1", 4000, 8));
        assert_eq!(
            log.state.node("n1").unwrap().status,
            NodeStatus::Initializing
        );
    }

    #[test]
    fn node_names_are_unique() {
        let mut log = Log::new();
        log.apply(register("n1", 4000, 8));
        let mut taken = register("n2", 4000, 8);
        if let Command::RegisterNode { registration } = &mut taken {
            registration.name = "node-n1".into();
        }
        let response = log.apply(taken);
        assert!(matches!(
            response.outcome,
            Err(CommandError::NodeNameTaken { .. })
        ));
        // Re-registering the same id keeps eligibility.
        log.apply(Command::SetNodeEligibility {
            id: "n1".into(),
            eligible: false,
        });
        log.apply(register("n1", 8000, 8));
        let node = log.state.node("n1").unwrap();
        assert!(!node.eligible);
        assert_eq!(node.capacity.cpu_millis, 8000);
    }

    #[test]
    fn newer_log_format_is_refused_not_misapplied() {
        let mut state = State::default();
        let mut future = request("f", create("a", Column::Backlog));
        future.format = LOG_FORMAT_VERSION + 1;
        let (response, _) = state.apply(1, &future);
        assert!(matches!(
            response.outcome,
            Err(CommandError::UnsupportedFormat { .. })
        ));
        assert_eq!(state.task_count(), 0);
    }

    /// A deterministic pseudo-random walk over creates, moves and deletes,
    /// checking the invariants after every step (seed printed on failure).
    #[test]
    fn random_operations_keep_invariants() {
        for seed in 0..20u64 {
            let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
            let mut next = move |bound: u64| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) % bound
            };
            let mut state = State::default();
            for step in 0..300u64 {
                let id = format!("t{}", next(12));
                let column = Column::ALL[next(5) as usize];
                let command = match next(4) {
                    0 | 1 => create(&id, column),
                    2 => Command::MoveTask {
                        id,
                        column,
                        position: Some(next(8) as u32),
                    },
                    _ => Command::DeleteTask { id },
                };
                state.apply(step + 1, &request(&format!("{seed}-{step}"), command));
                if let Err(problem) = state.verify_invariants() {
                    panic!("seed {seed} step {step}: {problem}");
                }
            }
        }
    }
}
