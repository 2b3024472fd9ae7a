//! What every apply must preserve, checked by tests after each step.

use crate::types::{Column, DesktopIntent};

use super::*;

impl State {
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
