//! Model providers, budgets and usage. A provider's key is sealed and kept
//! apart from the provider (never in a change or an answer); usage arrives
//! in batches of settled calls and is summed per task, per project and per
//! hour (for `usage --since`).

use std::collections::BTreeSet;

use super::{task_put, State};
use crate::types::{
    Applied, Budget, BudgetScope, Change, ChangeKind, CommandError, Provider, UsageRecord,
    UsageRow, Wire, HOUR_MS,
};

impl State {
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }

    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.get(name)
    }

    /// A provider's sealed key.
    pub fn provider_key(&self, name: &str) -> Option<&str> {
        self.provider_keys.get(name).map(String::as_str)
    }

    /// The provider speaking `wire` that serves `model`.
    pub fn provider_for(&self, wire: Wire, model: &str) -> Option<&Provider> {
        self.providers
            .values()
            .find(|provider| provider.kind.wire() == wire && provider.models.contains_key(model))
    }

    /// Usage rows from `since_ms` on (by hour), oldest first.
    pub fn usage_rows(&self, since_ms: u64) -> impl Iterator<Item = &UsageRow> {
        let hour = since_ms - since_ms % HOUR_MS;
        self.usage_hours
            .range(hour..)
            .flat_map(|(_, rows)| rows.iter())
    }

    pub(super) fn add_provider(
        &mut self,
        index: u64,
        now_ms: u64,
        provider: &Provider,
        sealed_key: Option<&str>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        if self.providers.contains_key(&provider.name) {
            return Err(CommandError::ProviderExists {
                name: provider.name.clone(),
            });
        }
        let wire = provider.kind.wire();
        for model in provider.models.keys() {
            if let Some(other) = self.provider_for(wire, model) {
                return Err(CommandError::ModelTaken {
                    model: model.clone(),
                    provider: other.name.clone(),
                });
            }
        }
        let provider = Provider {
            created_at_ms: now_ms,
            ..provider.clone()
        };
        self.providers
            .insert(provider.name.clone(), provider.clone());
        if let Some(sealed) = sealed_key {
            self.provider_keys
                .insert(provider.name.clone(), sealed.to_owned());
        }
        changes.push(Change {
            revision: index,
            kind: ChangeKind::ProviderPut {
                provider: provider.clone(),
            },
        });
        Ok(Applied::Provider { provider })
    }

    pub(super) fn remove_provider(
        &mut self,
        index: u64,
        name: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        if self.providers.remove(name).is_none() {
            return Err(CommandError::ProviderNotFound {
                name: name.to_owned(),
            });
        }
        self.provider_keys.remove(name);
        changes.push(Change {
            revision: index,
            kind: ChangeKind::ProviderDeleted {
                name: name.to_owned(),
            },
        });
        Ok(Applied::Deleted)
    }

    pub(super) fn set_budget(
        &mut self,
        index: u64,
        now_ms: u64,
        scope: &BudgetScope,
        budget: Budget,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        match scope {
            BudgetScope::Task(id) => {
                let task = self
                    .tasks
                    .get_mut(id)
                    .ok_or_else(|| CommandError::TaskNotFound { id: id.clone() })?;
                task.budget = budget;
                task.llm_refused = None;
                task.updated_at_ms = now_ms;
                task.revision = index;
                let task = task.clone();
                changes.push(task_put(index, &task));
                Ok(Applied::Task { task })
            }
            BudgetScope::Project(id) => {
                let project = self
                    .projects
                    .get_mut(id)
                    .ok_or_else(|| CommandError::ProjectNotFound { id: id.clone() })?;
                project.budget = budget;
                let project = project.clone();
                // Its tasks' refusals may no longer hold.
                let refused: Vec<String> = self
                    .tasks
                    .values()
                    .filter(|task| task.llm_refused.is_some())
                    .filter(|task| task_project(task.repository.as_deref()) == Some(id.as_str()))
                    .map(|task| task.id.clone())
                    .collect();
                for task_id in refused {
                    if let Some(task) = self.tasks.get_mut(&task_id) {
                        task.llm_refused = None;
                        task.revision = index;
                        changes.push(task_put(index, task));
                    }
                }
                changes.push(Change {
                    revision: index,
                    kind: ChangeKind::ProjectPut {
                        project: project.clone(),
                    },
                });
                Ok(Applied::Project { project })
            }
        }
    }

    /// Sums each settled call into its task, its project and its hour. A
    /// call of a task deleted since still counts for its project.
    pub(super) fn record_usage(
        &mut self,
        index: u64,
        records: &[UsageRecord],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let mut touched_tasks = BTreeSet::new();
        let mut touched_projects = BTreeSet::new();
        for record in records {
            if let Some(task) = self.tasks.get_mut(&record.task_id) {
                task.usage.add(&record.usage);
                if record.refused.is_some() {
                    task.llm_refused.clone_from(&record.refused);
                }
                task.revision = index;
                touched_tasks.insert(record.task_id.clone());
            }
            if let Some(project) = record
                .project
                .as_ref()
                .and_then(|id| self.projects.get_mut(id))
            {
                project.usage.add(&record.usage);
                touched_projects.insert(project.id.clone());
            }
            if record.usage.is_empty() {
                continue;
            }
            let hour_ms = record.at_ms - record.at_ms % HOUR_MS;
            let rows = self.usage_hours.entry(hour_ms).or_default();
            let same = |row: &&mut UsageRow| {
                row.task_id == record.task_id
                    && row.provider == record.provider
                    && row.model == record.model
            };
            match rows.iter_mut().find(same) {
                Some(row) => row.usage.add(&record.usage),
                None => rows.push(UsageRow {
                    hour_ms,
                    task_id: record.task_id.clone(),
                    project: record.project.clone(),
                    provider: record.provider.clone(),
                    model: record.model.clone(),
                    usage: record.usage,
                }),
            }
        }
        for id in touched_tasks {
            changes.push(task_put(index, &self.tasks[&id]));
        }
        for id in touched_projects {
            changes.push(Change {
                revision: index,
                kind: ChangeKind::ProjectPut {
                    project: self.projects[&id].clone(),
                },
            });
        }
        Ok(Applied::Done)
    }
}

/// The project of a task's `repository` (`project/repo`).
pub fn task_project(repository: Option<&str>) -> Option<&str> {
    repository
        .and_then(crate::types::hosted_repo)
        .map(|(project, _)| project)
}

#[cfg(test)]
mod tests {
    use super::super::testkit::{create, Log};
    use crate::types::*;

    fn provider(name: &str, kind: ProviderKind, models: &[&str]) -> Command {
        Command::AddProvider {
            provider: Provider {
                name: name.to_owned(),
                kind,
                base_url: "http://127.0.0.1:9/v1".to_owned(),
                models: models
                    .iter()
                    .map(|model| {
                        (
                            (*model).to_owned(),
                            ModelRoute {
                                upstream: format!("up-{model}"),
                                price: Price {
                                    input: 3_000_000,
                                    ..Default::default()
                                },
                            },
                        )
                    })
                    .collect(),
                created_at_ms: 0,
            },
            sealed_key: Some("5ea1ed".to_owned()),
        }
    }

    #[test]
    fn a_model_name_picks_one_provider_per_wire_and_keys_go_with_providers() {
        let mut log = Log::new();
        assert!(log
            .apply(provider("a", ProviderKind::Anthropic, &["m"]))
            .outcome
            .is_ok());
        // The same name on the other wire is another endpoint: allowed.
        assert!(log
            .apply(provider("o", ProviderKind::OpenAi, &["m"]))
            .outcome
            .is_ok());
        assert_eq!(
            log.apply(provider("c", ProviderKind::OpenAiCompatible, &["x", "m"]))
                .outcome,
            Err(CommandError::ModelTaken {
                model: "m".to_owned(),
                provider: "o".to_owned()
            })
        );
        assert_eq!(
            log.state
                .provider_for(Wire::OpenAi, "m")
                .map(|p| p.name.as_str()),
            Some("o")
        );
        assert_eq!(log.state.provider_key("a"), Some("5ea1ed"));
        assert!(log
            .apply(Command::RemoveProvider {
                name: "a".to_owned()
            })
            .outcome
            .is_ok());
        assert_eq!(log.state.provider_key("a"), None);
        assert!(log.state.provider_for(Wire::Anthropic, "m").is_none());
    }

    #[test]
    fn usage_sums_per_task_project_and_hour_and_a_refusal_shows_until_the_budget_moves() {
        let mut log = Log::new();
        log.apply(Command::CreateProject {
            id: "p".to_owned(),
            default_branch: "main".to_owned(),
        });
        log.apply(create("t", Column::Backlog));
        log.apply(Command::UpdateTask {
            id: "t".to_owned(),
            title: None,
            description: None,
            repository: Some(Some("p/r".to_owned())),
        });
        let call = |at_ms: u64, input: u64, refused: Option<&str>| UsageRecord {
            task_id: "t".to_owned(),
            project: Some("p".to_owned()),
            desktop_id: "d".to_owned(),
            provider: "a".to_owned(),
            model: "m".to_owned(),
            at_ms,
            usage: UsageTotals {
                calls: u64::from(refused.is_none()),
                input_tokens: input,
                cost_nanos: input * 3,
                ..Default::default()
            },
            refused: refused.map(str::to_owned),
        };
        log.apply(Command::RecordUsage {
            records: vec![
                call(10, 5, None),
                call(20, 7, None),
                call(HOUR_MS + 1, 1, None),
            ],
        });
        log.apply(Command::RecordUsage {
            records: vec![call(HOUR_MS + 2, 0, Some("spent"))],
        });
        let task = log.state.task("t").unwrap();
        assert_eq!((task.usage.calls, task.usage.input_tokens), (3, 13));
        assert_eq!(task.llm_refused.as_deref(), Some("spent"));
        assert_eq!(log.state.project("p").unwrap().usage.cost_nanos, 39);
        let rows: Vec<_> = log
            .state
            .usage_rows(0)
            .map(|row| row.usage.input_tokens)
            .collect();
        assert_eq!(rows, [12, 1]);
        let recent: Vec<_> = log.state.usage_rows(HOUR_MS + 5).collect();
        assert_eq!(recent.len(), 1);
        log.apply(Command::SetBudget {
            scope: BudgetScope::Project("p".to_owned()),
            budget: Budget {
                max_tokens: Some(100),
                max_cost_nanos: None,
            },
        });
        assert_eq!(log.state.task("t").unwrap().llm_refused, None);
        assert_eq!(
            log.apply(Command::SetBudget {
                scope: BudgetScope::Task("nope".to_owned()),
                budget: Budget::default(),
            })
            .outcome,
            Err(CommandError::TaskNotFound {
                id: "nope".to_owned()
            })
        );
    }
}
