//! The state machine's pure core: applies [`ClientRequest`]s to the entities
//! and says what changed. No IO, no clocks, no randomness: every replica that
//! applies the same log reaches the same state.

mod desktops;
mod invariants;
mod llm;
mod nodes;
mod projects;
mod pulls;
mod tasks;

pub use invariants::InvariantError;
pub use llm::task_project;
#[cfg(test)]
pub(crate) mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod walk;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::scheduler::{self, NodeView};
use crate::types::{
    Allocation, Applied, Change, ChangeKind, ClientRequest, ClientResponse, Column, Command,
    CommandError, Desktop, Node, Project, Provider, PullRequest, Repo, Task, TokenKind,
    TokenRecord, UsageRow, LOG_FORMAT_VERSION,
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
    #[serde(default)]
    projects: BTreeMap<String, Project>,
    /// Keyed by `project/name` ([`Repo::key`]).
    #[serde(default)]
    repos: BTreeMap<String, Repo>,
    /// Keyed by [`PullRequest::key`].
    #[serde(default)]
    pulls: BTreeMap<String, PullRequest>,
    /// Imported repositories' upstream credentials, sealed, by [`Repo::key`];
    /// never in a change or an answer.
    #[serde(default)]
    upstream_credentials: BTreeMap<String, String>,
    #[serde(default)]
    providers: BTreeMap<String, Provider>,
    /// Providers' keys, sealed, by name; never in a change or an answer.
    #[serde(default)]
    provider_keys: BTreeMap<String, String>,
    /// Usage by hour (start, wall-clock ms), a row per task and model.
    #[serde(default)]
    usage_hours: BTreeMap<u64, Vec<UsageRow>>,
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
            } => self.create_task(
                index,
                now_ms,
                id,
                title,
                description,
                repository,
                *column,
                resources,
                changes,
            ),
            Command::UpdateTask {
                id,
                title,
                description,
                repository,
            } => self.update_task(index, now_ms, id, title, description, repository, changes),
            Command::MoveTask {
                id,
                column,
                position,
            } => self.move_task(index, now_ms, id, *column, *position, changes),
            Command::DeleteTask { id } => self.delete_task(index, id, changes),
            Command::RegisterNode { registration } => {
                self.register_node(index, now_ms, registration, changes)
            }
            Command::SetNodeStatus { updates } => {
                self.set_node_status(index, now_ms, updates, changes)
            }
            Command::SetNodeEligibility { id, eligible } => {
                self.set_node_eligibility(index, id, *eligible, changes)
            }
            Command::StartDrain {
                id,
                deadline_ms,
                max_parallel,
            } => self.start_drain(index, now_ms, id, *deadline_ms, *max_parallel, changes),
            Command::CancelDrain { id } => self.cancel_drain(index, id, changes),
            Command::RemoveNode { id } => self.remove_node(index, id, changes),
            Command::PlaceDesktops { placements } => {
                self.place_desktops(index, placements, changes)
            }
            Command::SetPendingReasons { reasons } => {
                self.set_pending_reasons(index, reasons, changes)
            }
            Command::MigrateDesktops { ids } => self.migrate_desktops(index, ids, changes),
            Command::ReportDesktops { node_id, reports } => {
                self.report_desktops(index, now_ms, node_id, reports, changes)
            }
            Command::PutToken { token } => {
                self.tokens.insert(token.sha256_hex.clone(), token.clone());
                Ok(Applied::Done)
            }
            Command::CreateProject { id, default_branch } => {
                self.create_project(index, now_ms, id, default_branch, changes)
            }
            Command::CreateRepo {
                project,
                name,
                upstream,
                sealed_credential,
            } => self.create_repo_from(
                index,
                now_ms,
                project,
                name,
                upstream.as_deref(),
                sealed_credential.as_deref(),
                changes,
            ),
            Command::RecordMirror {
                project,
                repo,
                pushed,
                error,
            } => self.record_mirror(index, now_ms, project, repo, pushed, error, changes),
            Command::UpdateRefs {
                project,
                repo,
                changes: ref_changes,
            } => self.update_refs(index, project, repo, ref_changes, changes),
            Command::SetProjectMergeStyle { id, merge_style } => {
                self.set_project_merge_style(index, id, *merge_style, changes)
            }
            Command::OpenPull {
                project,
                repo,
                title,
                task_id,
                source,
                base,
                head,
                base_commit,
            } => self.open_pull(
                index,
                now_ms,
                pulls::OpenPull {
                    project,
                    repo,
                    title,
                    task_id: task_id.as_deref(),
                    source,
                    base,
                    head,
                    base_commit,
                },
                changes,
            ),
            Command::ClosePull {
                project,
                repo,
                number,
            } => self.close_pull(index, now_ms, project, repo, *number, changes),
            Command::MergePull {
                project,
                repo,
                number,
                head,
                change,
            } => self.merge_pull(index, now_ms, project, repo, *number, head, change, changes),
            Command::AddProvider {
                provider,
                sealed_key,
            } => self.add_provider(index, now_ms, provider, sealed_key.as_deref(), changes),
            Command::RemoveProvider { name } => self.remove_provider(index, name, changes),
            Command::SetBudget { scope, budget } => {
                self.set_budget(index, now_ms, scope, *budget, changes)
            }
            Command::RecordUsage { records } => self.record_usage(index, records, changes),
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
