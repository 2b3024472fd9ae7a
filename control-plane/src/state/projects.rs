//! Projects, repositories and their refs. A push is one [`Command::UpdateRefs`]:
//! a compare-and-swap of every ref it names, all or nothing, so two pushes
//! from the same old value cannot both win on any replica.
//!
//! [`Command::UpdateRefs`]: crate::types::Command::UpdateRefs

use super::State;
use crate::types::{
    hosted_repo, refs_nest, Applied, Change, ChangeKind, CommandError, Project, RefChange, Repo,
    Upstream,
};

/// Full ref name → object id.
type Refs = std::collections::BTreeMap<String, String>;

impl State {
    pub fn project(&self, id: &str) -> Option<&Project> {
        self.projects.get(id)
    }

    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.values()
    }

    pub fn repo(&self, project: &str, name: &str) -> Option<&Repo> {
        self.repos.get(&Repo::key(project, name))
    }

    /// A project's repositories, by name.
    pub fn repos_of<'a>(&'a self, project: &'a str) -> impl Iterator<Item = &'a Repo> {
        self.repos
            .values()
            .filter(move |repo| repo.project == project)
    }

    pub fn all_repos(&self) -> impl Iterator<Item = &Repo> {
        self.repos.values()
    }

    /// The hosted repository a task works on, if its `repository` names one.
    pub fn task_repo(&self, task_id: &str) -> Option<&Repo> {
        let repository = self.task(task_id)?.repository.as_deref()?;
        let (project, name) = hosted_repo(repository)?;
        self.repo(project, name)
    }

    pub(super) fn create_project(
        &mut self,
        index: u64,
        now_ms: u64,
        id: &str,
        default_branch: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        if self.projects.contains_key(id) {
            return Err(CommandError::ProjectExists { id: id.to_owned() });
        }
        let project = Project {
            id: id.to_owned(),
            default_branch: default_branch.to_owned(),
            merge_style: Default::default(),
            created_at_ms: now_ms,
            usage: Default::default(),
            budget: Default::default(),
        };
        self.projects.insert(id.to_owned(), project.clone());
        changes.push(Change {
            revision: index,
            kind: ChangeKind::ProjectPut {
                project: project.clone(),
            },
        });
        Ok(Applied::Project { project })
    }

    /// An imported repository's sealed upstream credential.
    pub fn upstream_credential(&self, project: &str, name: &str) -> Option<&str> {
        self.upstream_credentials
            .get(&Repo::key(project, name))
            .map(String::as_str)
    }

    #[cfg(test)]
    pub(super) fn create_repo(
        &mut self,
        index: u64,
        now_ms: u64,
        project: &str,
        name: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        self.create_repo_from(index, now_ms, project, name, None, None, changes)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_repo_from(
        &mut self,
        index: u64,
        now_ms: u64,
        project: &str,
        name: &str,
        upstream: Option<&str>,
        sealed_credential: Option<&str>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let Some(owner) = self.projects.get(project) else {
            return Err(CommandError::ProjectNotFound {
                id: project.to_owned(),
            });
        };
        let key = Repo::key(project, name);
        if self.repos.contains_key(&key) {
            return Err(CommandError::RepoExists {
                project: project.to_owned(),
                name: name.to_owned(),
            });
        }
        let repo = Repo {
            project: project.to_owned(),
            name: name.to_owned(),
            default_branch: owner.default_branch.clone(),
            refs: Default::default(),
            pulls_opened: 0,
            upstream: upstream.map(|url| Upstream {
                url: url.to_owned(),
                pushed: None,
                error: None,
                updated_at_ms: now_ms,
            }),
            created_at_ms: now_ms,
        };
        if let (Some(_), Some(sealed)) = (upstream, sealed_credential) {
            self.upstream_credentials
                .insert(key.clone(), sealed.to_owned());
        }
        self.repos.insert(key, repo.clone());
        changes.push(Change {
            revision: index,
            kind: ChangeKind::RepoPut { repo: repo.clone() },
        });
        Ok(Applied::Repo { repo })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_mirror(
        &mut self,
        index: u64,
        now_ms: u64,
        project: &str,
        name: &str,
        pushed: &Option<String>,
        error: &Option<String>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let Some(repo) = self.repos.get_mut(&Repo::key(project, name)) else {
            return Err(CommandError::RepoNotFound {
                project: project.to_owned(),
                name: name.to_owned(),
            });
        };
        let Some(upstream) = repo.upstream.as_mut() else {
            return Err(CommandError::NotMirrored {
                project: project.to_owned(),
                name: name.to_owned(),
            });
        };
        upstream.pushed = pushed.clone();
        upstream.error = error.clone();
        upstream.updated_at_ms = now_ms;
        let repo = repo.clone();
        changes.push(Change {
            revision: index,
            kind: ChangeKind::RepoPut { repo: repo.clone() },
        });
        Ok(Applied::Repo { repo })
    }

    /// `repo`'s refs after `ref_changes`, if every old value matches and
    /// git could store the result; nothing is changed here.
    pub(super) fn refs_after(repo: &Repo, ref_changes: &[RefChange]) -> Result<Refs, CommandError> {
        let mut refs = repo.refs.clone();
        // Every old value first: a stale push changes nothing.
        for change in ref_changes {
            let current = refs.get(&change.name);
            if current != change.old.as_ref() {
                return Err(CommandError::StaleRef {
                    name: change.name.clone(),
                    current: current.cloned(),
                });
            }
        }
        for change in ref_changes {
            match &change.new {
                Some(new) => {
                    refs.insert(change.name.clone(), new.clone());
                }
                None => {
                    refs.remove(&change.name);
                }
            }
        }
        // What git could not store must not be committed: it would fail
        // to apply on every server.
        for change in ref_changes.iter().filter(|change| change.new.is_some()) {
            if let Some(other) = refs.keys().find(|other| refs_nest(&change.name, other)) {
                return Err(CommandError::RefsNest {
                    name: change.name.clone(),
                    other: other.clone(),
                });
            }
        }
        Ok(refs)
    }

    pub(super) fn update_refs(
        &mut self,
        index: u64,
        project: &str,
        name: &str,
        ref_changes: &[RefChange],
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let Some(repo) = self.repos.get(&Repo::key(project, name)) else {
            return Err(CommandError::RepoNotFound {
                project: project.to_owned(),
                name: name.to_owned(),
            });
        };
        let refs = State::refs_after(repo, ref_changes)?;
        let repo = self
            .repos
            .get_mut(&Repo::key(project, name))
            .expect("looked up above");
        repo.refs = refs;
        let repo = repo.clone();
        changes.push(Change {
            revision: index,
            kind: ChangeKind::RepoPut { repo: repo.clone() },
        });
        Ok(Applied::Repo { repo })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";

    fn change(name: &str, old: Option<&str>, new: Option<&str>) -> RefChange {
        RefChange {
            name: name.to_owned(),
            old: old.map(str::to_owned),
            new: new.map(str::to_owned),
        }
    }

    fn state_with_repo() -> State {
        let mut state = State::default();
        let mut changes = Vec::new();
        state
            .create_project(1, 0, "p", "main", &mut changes)
            .unwrap();
        state.create_repo(2, 0, "p", "r", &mut changes).unwrap();
        state
    }

    #[test]
    fn a_push_is_a_compare_and_swap_of_all_its_refs() {
        let mut state = state_with_repo();
        let mut changes = Vec::new();
        let main = "refs/heads/main";
        let topic = "refs/heads/topic";
        state
            .update_refs(3, "p", "r", &[change(main, None, Some(A))], &mut changes)
            .unwrap();
        // The loser of a race from the same old value changes nothing.
        let stale = state.update_refs(
            4,
            "p",
            "r",
            &[change(topic, None, Some(B)), change(main, None, Some(B))],
            &mut changes,
        );
        assert_eq!(
            stale,
            Err(CommandError::StaleRef {
                name: main.to_owned(),
                current: Some(A.to_owned())
            })
        );
        assert_eq!(state.repo("p", "r").unwrap().refs.get(topic), None);
        state
            .update_refs(5, "p", "r", &[change(main, Some(A), Some(B))], &mut changes)
            .unwrap();
        state
            .update_refs(6, "p", "r", &[change(main, Some(B), None)], &mut changes)
            .unwrap();
        assert!(state.repo("p", "r").unwrap().refs.is_empty());
    }

    #[test]
    fn refs_git_cannot_store_together_are_refused() {
        let mut state = state_with_repo();
        let mut changes = Vec::new();
        state
            .update_refs(
                3,
                "p",
                "r",
                &[change("refs/heads/flotilla/t1", None, Some(A))],
                &mut changes,
            )
            .unwrap();
        let nested = state.update_refs(
            4,
            "p",
            "r",
            &[change("refs/heads/flotilla/t1/x", None, Some(A))],
            &mut changes,
        );
        assert!(matches!(nested, Err(CommandError::RefsNest { .. })));
        assert!(!refs_nest("refs/heads/a", "refs/heads/ab"));
    }

    #[test]
    fn repositories_need_their_project_and_are_unique() {
        let mut state = state_with_repo();
        let mut changes = Vec::new();
        assert!(matches!(
            state.create_repo(3, 0, "nope", "r", &mut changes),
            Err(CommandError::ProjectNotFound { .. })
        ));
        assert!(matches!(
            state.create_repo(3, 0, "p", "r", &mut changes),
            Err(CommandError::RepoExists { .. })
        ));
        assert!(matches!(
            state.create_project(3, 0, "p", "main", &mut changes),
            Err(CommandError::ProjectExists { .. })
        ));
    }
}
