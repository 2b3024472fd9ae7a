//! What every apply must preserve, checked by tests after each step (the
//! state walk checks them after every random command, as niri checks its
//! layout).

use std::collections::BTreeMap;

use crate::types::{Allocation, Column, DesktopIntent};

use super::State;

/// A broken invariant: which one, and the entity that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    #[error("repository {key} is not under its key, or its project is missing, or refs {a} and {b} nest")]
    Repo { key: String, a: String, b: String },
    #[error("pull request {key} is not under its key, names a number its repository never gave, or is merged without a commit")]
    Pull { key: String },
    #[error("column {column} holds {count} tasks but its size says {recorded}")]
    ColumnSize {
        column: Column,
        count: u32,
        recorded: u32,
    },
    #[error("column {column} positions {positions:?} are not 0..n")]
    ColumnPositions { column: Column, positions: Vec<u32> },
    #[error("task {id} is inconsistent (its id or a revision past the state's)")]
    Task { id: String },
    #[error("the request-id index and its order disagree")]
    AppliedRequests,
    #[error("desktop {desktop} is on unknown node {node}")]
    UnknownNode { desktop: String, node: String },
    #[error("desktop {desktop} is not its task's")]
    Orphan { desktop: String },
    #[error("desktop {desktop} is held by nodes {nodes:?}, not by exactly its own")]
    HeldTwice { desktop: String, nodes: Vec<String> },
    #[error("node {node}'s allocation names desktop {desktop}, which is not placed there")]
    StaleAllocation { node: String, desktop: String },
    #[error("node {node} is over its capacity: {dimension} {allocated} of {capacity}")]
    OverCapacity {
        node: String,
        dimension: &'static str,
        allocated: u64,
        capacity: u64,
    },
    #[error("the desktop indexes (allocations, pending) disagree with the desktops")]
    Indexes,
    #[error("provider {name} is not under its name, has a key without a provider, or serves a model another provider of its wire serves")]
    Provider { name: String },
    #[error("usage of the hour {hour_ms} is filed under another hour or counted twice")]
    UsageHour { hour_ms: u64 },
}

impl State {
    /// Checks what every apply must preserve:
    /// - each column's positions are exactly `0..n` and its size is `n`;
    /// - every desktop belongs to its task (or is being released), sits on
    ///   a known node if placed, and is held by at most one node: the one
    ///   it is placed on;
    /// - every allocation belongs to a live desktop placed on that node;
    /// - no node is over its capacity in any dimension (CPU, memory,
    ///   desktop slots, each GPU's memory);
    /// - the indexes equal what the desktops rebuild;
    /// - repositories are in their projects, and none has nesting refs.
    pub fn verify_invariants(&self) -> Result<(), InvariantError> {
        self.verify_columns()?;
        for (id, task) in &self.tasks {
            if &task.id != id || task.revision > self.revision {
                return Err(InvariantError::Task { id: id.clone() });
            }
        }
        if self.applied_requests.order.len() != self.applied_requests.responses.len() {
            return Err(InvariantError::AppliedRequests);
        }
        self.verify_desktops()?;
        self.verify_capacity()?;
        self.verify_repos()?;
        self.verify_pulls()?;
        self.verify_llm()?;
        let mut rebuilt = State::default();
        for desktop in self.desktops.values() {
            rebuilt.index_desktop(desktop);
        }
        // GPU memory vectors may keep trailing zeros after a desktop left
        // its GPU; they mean the same as a shorter vector.
        let normalized = |allocations: &BTreeMap<String, Allocation>| {
            let mut allocations = allocations.clone();
            for allocation in allocations.values_mut() {
                while allocation.gpu_memory_bytes.last() == Some(&0) {
                    allocation.gpu_memory_bytes.pop();
                }
            }
            allocations
        };
        if normalized(&rebuilt.allocations) != normalized(&self.allocations)
            || rebuilt.pending != self.pending
        {
            return Err(InvariantError::Indexes);
        }
        Ok(())
    }

    fn verify_columns(&self) -> Result<(), InvariantError> {
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
                return Err(InvariantError::ColumnSize {
                    column,
                    count,
                    recorded: self.column_len(column),
                });
            }
            if positions.iter().copied().ne(0..count) {
                return Err(InvariantError::ColumnPositions { column, positions });
            }
        }
        Ok(())
    }

    fn verify_desktops(&self) -> Result<(), InvariantError> {
        let mut holders: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (node_id, allocation) in &self.allocations {
            for desktop_id in &allocation.desktops {
                holders
                    .entry(desktop_id.as_str())
                    .or_default()
                    .push(node_id.clone());
                let placed_here = self
                    .desktops
                    .get(desktop_id)
                    .is_some_and(|desktop| desktop.node_id.as_ref() == Some(node_id));
                if !placed_here {
                    return Err(InvariantError::StaleAllocation {
                        node: node_id.clone(),
                        desktop: desktop_id.clone(),
                    });
                }
            }
        }
        for desktop in self.desktops.values() {
            if let Some(node_id) = &desktop.node_id {
                if !self.nodes.contains_key(node_id) {
                    return Err(InvariantError::UnknownNode {
                        desktop: desktop.id.clone(),
                        node: node_id.clone(),
                    });
                }
            }
            let nodes = holders.remove(desktop.id.as_str()).unwrap_or_default();
            let expected: Vec<String> = desktop.node_id.iter().cloned().collect();
            if nodes != expected {
                return Err(InvariantError::HeldTwice {
                    desktop: desktop.id.clone(),
                    nodes,
                });
            }
            let task = self.tasks.get(&desktop.task_id);
            if task.and_then(|task| task.desktop_id.as_deref()) != Some(desktop.id.as_str())
                && desktop.intent != DesktopIntent::Release
            {
                return Err(InvariantError::Orphan {
                    desktop: desktop.id.clone(),
                });
            }
        }
        Ok(())
    }

    fn verify_capacity(&self) -> Result<(), InvariantError> {
        for (node_id, allocation) in &self.allocations {
            let Some(node) = self.nodes.get(node_id) else {
                continue; // reported as UnknownNode by verify_desktops
            };
            let over = |dimension, allocated: u64, capacity: u64| {
                (allocated > capacity).then(|| InvariantError::OverCapacity {
                    node: node_id.clone(),
                    dimension,
                    allocated,
                    capacity,
                })
            };
            let gpu_memory = node.gpus.iter().enumerate().map(|(index, gpu)| {
                let allocated = allocation.gpu_memory_bytes.get(index).copied();
                (allocated.unwrap_or(0), gpu.memory_bytes)
            });
            let unknown_gpus = allocation.gpu_memory_bytes.iter().skip(node.gpus.len());
            let problem = over(
                "cpu_millis",
                allocation.cpu_millis,
                node.capacity.cpu_millis,
            )
            .or_else(|| {
                over(
                    "memory_bytes",
                    allocation.memory_bytes,
                    node.capacity.memory_bytes,
                )
            })
            .or_else(|| {
                over(
                    "desktop_slots",
                    allocation.desktops.len() as u64,
                    u64::from(node.capacity.desktop_slots),
                )
            })
            .or_else(|| {
                gpu_memory
                    .chain(unknown_gpus.map(|&bytes| (bytes, 0)))
                    .find_map(|(allocated, capacity)| over("gpu_memory_bytes", allocated, capacity))
            });
            if let Some(problem) = problem {
                return Err(problem);
            }
        }
        Ok(())
    }
}

impl State {
    /// Every repository sits under its key in an existing project, and no
    /// two of its refs nest (git could not store them).
    fn verify_pulls(&self) -> Result<(), InvariantError> {
        use crate::types::{PullRequest, PullState};
        for (key, pull) in &self.pulls {
            let opened = self
                .repo(&pull.project, &pull.repo)
                .map(|repo| repo.pulls_opened);
            let consistent = *key == PullRequest::key(&pull.project, &pull.repo, pull.number)
                && opened.is_some_and(|opened| pull.number >= 1 && pull.number <= opened)
                && (pull.state == PullState::Merged) == pull.merge_commit.is_some();
            if !consistent {
                return Err(InvariantError::Pull { key: key.clone() });
            }
        }
        Ok(())
    }

    fn verify_repos(&self) -> Result<(), InvariantError> {
        for (key, repo) in &self.repos {
            let broken = |a: &str, b: &str| InvariantError::Repo {
                key: key.clone(),
                a: a.to_owned(),
                b: b.to_owned(),
            };
            if *key != crate::types::Repo::key(&repo.project, &repo.name)
                || !self.projects.contains_key(&repo.project)
            {
                return Err(broken("", ""));
            }
            let names: Vec<&String> = repo.refs.keys().collect();
            for (i, a) in names.iter().enumerate() {
                if let Some(b) = names[i + 1..]
                    .iter()
                    .find(|b| crate::types::refs_nest(a, b))
                {
                    return Err(broken(a, b));
                }
            }
        }
        Ok(())
    }
}

impl State {
    /// Providers sit under their names, keys belong to providers, a model
    /// name picks one provider per wire; usage rows sit in their hour, one
    /// per task and model.
    fn verify_llm(&self) -> Result<(), InvariantError> {
        let mut served = std::collections::BTreeSet::new();
        for (name, provider) in &self.providers {
            let bad = || InvariantError::Provider { name: name.clone() };
            if &provider.name != name {
                return Err(bad());
            }
            for model in provider.models.keys() {
                if !served.insert((provider.kind.wire() == crate::types::Wire::Anthropic, model)) {
                    return Err(bad());
                }
            }
        }
        if let Some(name) = self
            .provider_keys
            .keys()
            .find(|name| !self.providers.contains_key(*name))
        {
            return Err(InvariantError::Provider { name: name.clone() });
        }
        for (hour_ms, rows) in &self.usage_hours {
            let mut seen = std::collections::BTreeSet::new();
            for row in rows {
                if row.hour_ms != *hour_ms
                    || hour_ms % crate::types::HOUR_MS != 0
                    || !seen.insert((&row.task_id, &row.provider, &row.model))
                {
                    return Err(InvariantError::UsageHour { hour_ms: *hour_ms });
                }
            }
        }
        Ok(())
    }
}
