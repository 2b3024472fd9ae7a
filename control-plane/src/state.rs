//! The state machine's pure core: applies [`ClientRequest`]s to the entities
//! and says what changed. No IO, no clocks, no randomness: every replica that
//! applies the same log reaches the same state.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::types::{
    Applied, Change, ChangeKind, ClientRequest, ClientResponse, Column, Command, CommandError,
    Desktop, Node, Task, TokenKind, TokenRecord, LOG_FORMAT_VERSION,
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
                };
                self.tasks.insert(id.clone(), task.clone());
                self.resize_column(*column, 1);
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
                let task = task.clone();
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
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::TaskDeleted { id: id.clone() },
                });
                Ok(Applied::Deleted)
            }
            Command::PutNode { node } => {
                let mut node = node.clone();
                node.revision = index;
                self.nodes.insert(node.id.clone(), node.clone());
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::NodePut { node },
                });
                Ok(Applied::Done)
            }
            Command::DeleteNode { id } => {
                self.nodes
                    .remove(id)
                    .ok_or_else(|| CommandError::NodeNotFound { id: id.clone() })?;
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::NodeDeleted { id: id.clone() },
                });
                Ok(Applied::Deleted)
            }
            Command::PutDesktop { desktop } => {
                if !self.tasks.contains_key(&desktop.task_id) {
                    return Err(CommandError::TaskNotFound {
                        id: desktop.task_id.clone(),
                    });
                }
                if let Some(node_id) = &desktop.node_id {
                    if !self.nodes.contains_key(node_id) {
                        return Err(CommandError::NodeNotFound {
                            id: node_id.clone(),
                        });
                    }
                }
                let mut desktop = desktop.clone();
                desktop.revision = index;
                self.desktops.insert(desktop.id.clone(), desktop.clone());
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::DesktopPut { desktop },
                });
                Ok(Applied::Done)
            }
            Command::DeleteDesktop { id } => {
                self.desktops
                    .remove(id)
                    .ok_or_else(|| CommandError::DesktopNotFound { id: id.clone() })?;
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::DesktopDeleted { id: id.clone() },
                });
                Ok(Applied::Deleted)
            }
            Command::PutToken { token } => {
                self.tokens.insert(token.sha256_hex.clone(), token.clone());
                Ok(Applied::Done)
            }
        }
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
        Ok(())
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

    #[test]
    fn desktops_refer_to_existing_tasks_and_nodes() {
        let mut state = State::default();
        let desktop = |node_id: Option<&str>| Command::PutDesktop {
            desktop: Desktop {
                id: "d1".into(),
                task_id: "a".into(),
                node_id: node_id.map(str::to_owned),
                revision: 0,
            },
        };
        let (response, _) = state.apply(1, &request("d-early", desktop(None)));
        assert_eq!(
            response.outcome,
            Err(CommandError::TaskNotFound { id: "a".into() })
        );
        state.apply(2, &request("a", create("a", Column::Planning)));
        let (response, _) = state.apply(3, &request("d-orphan", desktop(Some("gpu-1"))));
        assert_eq!(
            response.outcome,
            Err(CommandError::NodeNotFound { id: "gpu-1".into() })
        );
        let node = Node {
            id: "gpu-1".into(),
            name: "gpu-1".into(),
            labels: BTreeMap::new(),
            revision: 0,
        };
        state.apply(4, &request("n", Command::PutNode { node }));
        let (response, changes) = state.apply(5, &request("d-placed", desktop(Some("gpu-1"))));
        assert_eq!(response.outcome, Ok(Applied::Done));
        assert!(
            matches!(&changes[0].kind, ChangeKind::DesktopPut { desktop } if desktop.revision == 5)
        );
        assert_eq!(state.desktops().count(), 1);
        assert_eq!(state.nodes().count(), 1);
        state.apply(
            6,
            &request("dd", Command::DeleteDesktop { id: "d1".into() }),
        );
        assert_eq!(state.desktops().count(), 0);
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
