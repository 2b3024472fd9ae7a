//! Applying task commands: cards, their columns and positions, and the
//! desktop a card in an active column asks for.

use crate::types::{
    Applied, Change, ChangeKind, Column, CommandError, Desktop, DesktopIntent, DesktopResources,
    DesktopState, Task,
};

use super::*;

impl State {
    /// Adds a card at the end of its column; a card created in an active column asks for a desktop.
    #[allow(clippy::too_many_arguments)] // the command's fields, destructured
    pub(super) fn create_task(
        &mut self,
        index: u64,
        now_ms: u64,
        id: &str,
        title: &str,
        description: &str,
        repository: &Option<String>,
        column: Column,
        resources: &DesktopResources,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        if self.tasks.contains_key(id) {
            return Err(CommandError::TaskExists { id: id.to_owned() });
        }
        let task = Task {
            id: id.to_owned(),
            title: title.to_owned(),
            description: description.to_owned(),
            column,
            position: self.column_len(column),
            repository: repository.clone(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            revision: index,
            resources: resources.clone(),
            desktop_id: None,
            usage: Default::default(),
            budget: Default::default(),
            llm_refused: None,
        };
        self.tasks.insert(id.to_owned(), task);
        self.resize_column(column, 1);
        self.reconcile_task_desktop(index, now_ms, id, changes);
        let task = self.tasks[id].clone();
        changes.push(task_put(index, &task));
        Ok(Applied::Task { task })
    }

    /// Changes a card's title, description or repository.
    #[allow(clippy::too_many_arguments)] // the command's fields, destructured
    pub(super) fn update_task(
        &mut self,
        index: u64,
        now_ms: u64,
        id: &str,
        title: &Option<String>,
        description: &Option<String>,
        repository: &Option<Option<String>>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let task = self
            .tasks
            .get_mut(id)
            .ok_or_else(|| CommandError::TaskNotFound { id: id.to_owned() })?;
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

    /// Moves a card within or across columns, keeping positions contiguous, and gives or takes its desktop.
    pub(super) fn move_task(
        &mut self,
        index: u64,
        now_ms: u64,
        id: &str,
        column: Column,
        position: Option<u32>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let moving = self
            .tasks
            .get(id)
            .cloned()
            .ok_or_else(|| CommandError::TaskNotFound { id: id.to_owned() })?;
        // Take it out of its column, then insert it into the target.
        self.shift_positions(index, moving.column, moving.position, -1, id, changes);
        self.resize_column(moving.column, -1);
        let destination_len = self.column_len(column);
        let new_position = position.map_or(destination_len, |p| p.min(destination_len));
        self.shift_positions(index, column, new_position, 1, id, changes);
        self.resize_column(column, 1);
        let task = self.tasks.get_mut(id).expect("task looked up above");
        task.column = column;
        task.position = new_position;
        task.updated_at_ms = now_ms;
        task.revision = index;
        self.reconcile_task_desktop(index, now_ms, id, changes);
        let task = self.tasks[id].clone();
        changes.push(task_put(index, &task));
        Ok(Applied::Task { task })
    }

    /// Removes a card and releases its desktop.
    pub(super) fn delete_task(
        &mut self,
        index: u64,
        id: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let task = self
            .tasks
            .remove(id)
            .ok_or_else(|| CommandError::TaskNotFound { id: id.to_owned() })?;
        self.shift_positions(index, task.column, task.position, -1, id, changes);
        self.resize_column(task.column, -1);
        if let Some(desktop_id) = &task.desktop_id {
            self.release_desktop(index, desktop_id, changes);
        }
        changes.push(Change {
            revision: index,
            kind: ChangeKind::TaskDeleted { id: id.to_owned() },
        });
        Ok(Applied::Deleted)
    }

    /// Gives a task in planning, implementation or review a desktop, and
    /// releases the desktop of one in backlog or done.
    pub(super) fn reconcile_task_desktop(
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
    /// Moves every task of `column` at or after `from` (other than `skip`) by
    /// `delta` places, recording each as a change.
    pub(super) fn shift_positions(
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

    pub(super) fn column_len(&self, column: Column) -> u32 {
        self.column_sizes.get(&column).copied().unwrap_or(0)
    }

    pub(super) fn resize_column(&mut self, column: Column, delta: i64) {
        let size = self.column_sizes.entry(column).or_insert(0);
        *size = u32::try_from(i64::from(*size) + delta).expect("column sizes stay non-negative");
    }
}
