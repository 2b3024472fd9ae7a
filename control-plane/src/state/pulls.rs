//! Pull requests: opened against the committed refs, closed, and merged as
//! one entry that both moves the base (a compare-and-swap, as a push) and
//! marks the record merged, so no replica can see one without the other.

use super::State;
use crate::types::{
    Applied, Change, ChangeKind, CommandError, MergeStyle, PullRequest, PullState, RefChange, Repo,
};

/// What [`State::open_pull`] is asked to record.
pub(super) struct OpenPull<'a> {
    pub project: &'a str,
    pub repo: &'a str,
    pub title: &'a str,
    pub task_id: Option<&'a str>,
    pub source: &'a str,
    pub base: &'a str,
    pub head: &'a str,
    pub base_commit: &'a str,
}

impl State {
    pub fn pull(&self, project: &str, repo: &str, number: u64) -> Option<&PullRequest> {
        self.pulls.get(&PullRequest::key(project, repo, number))
    }

    /// A repository's pull requests, by number.
    pub fn pulls_of<'a>(
        &'a self,
        project: &'a str,
        repo: &'a str,
    ) -> impl Iterator<Item = &'a PullRequest> {
        let start = PullRequest::key(project, repo, 0);
        self.pulls
            .range(start..)
            .map(|(_, pull)| pull)
            .take_while(move |pull| pull.project == project && pull.repo == repo)
    }

    fn repo_or_error(&self, project: &str, repo: &str) -> Result<&Repo, CommandError> {
        self.repo(project, repo)
            .ok_or_else(|| CommandError::RepoNotFound {
                project: project.to_owned(),
                name: repo.to_owned(),
            })
    }

    fn open_pull_or_error(
        &self,
        project: &str,
        repo: &str,
        number: u64,
    ) -> Result<&PullRequest, CommandError> {
        let pull = self
            .pull(project, repo, number)
            .ok_or_else(|| CommandError::PullNotFound {
                project: project.to_owned(),
                repo: repo.to_owned(),
                number,
            })?;
        if pull.state != PullState::Open {
            return Err(CommandError::PullNotOpen {
                project: project.to_owned(),
                repo: repo.to_owned(),
                number,
                state: pull.state,
            });
        }
        Ok(pull)
    }

    pub(super) fn set_project_merge_style(
        &mut self,
        index: u64,
        id: &str,
        merge_style: MergeStyle,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let project = self
            .projects
            .get_mut(id)
            .ok_or_else(|| CommandError::ProjectNotFound { id: id.to_owned() })?;
        project.merge_style = merge_style;
        let project = project.clone();
        changes.push(Change {
            revision: index,
            kind: ChangeKind::ProjectPut {
                project: project.clone(),
            },
        });
        Ok(Applied::Project { project })
    }

    pub(super) fn open_pull(
        &mut self,
        index: u64,
        now_ms: u64,
        open: OpenPull<'_>,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let repo = self.repo_or_error(open.project, open.repo)?;
        if open.source == open.base {
            return Err(CommandError::SameBranch {
                name: open.source.to_owned(),
            });
        }
        for (branch, commit) in [(open.source, open.head), (open.base, open.base_commit)] {
            let name = format!("refs/heads/{branch}");
            match repo.refs.get(&name) {
                None => return Err(CommandError::BranchNotFound { name }),
                Some(current) if current != commit => {
                    return Err(CommandError::StaleRef {
                        name,
                        current: Some(current.clone()),
                    })
                }
                Some(_) => {}
            }
        }
        if let Some(open_one) = self.pulls_of(open.project, open.repo).find(|pull| {
            pull.state == PullState::Open && pull.source == open.source && pull.base == open.base
        }) {
            return Err(CommandError::PullExists {
                number: open_one.number,
                branch: open.source.to_owned(),
                base: open.base.to_owned(),
            });
        }
        let number = repo.pulls_opened + 1;
        let pull = PullRequest {
            project: open.project.to_owned(),
            repo: open.repo.to_owned(),
            number,
            title: open.title.to_owned(),
            task_id: open.task_id.map(str::to_owned),
            source: open.source.to_owned(),
            base: open.base.to_owned(),
            opened_head: open.head.to_owned(),
            opened_base: open.base_commit.to_owned(),
            state: PullState::Open,
            merged_head: None,
            merge_commit: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            revision: index,
        };
        let repo = self
            .repos
            .get_mut(&Repo::key(open.project, open.repo))
            .expect("looked up above");
        repo.pulls_opened = number;
        let repo = repo.clone();
        self.pulls.insert(
            PullRequest::key(open.project, open.repo, number),
            pull.clone(),
        );
        changes.push(Change {
            revision: index,
            kind: ChangeKind::RepoPut { repo },
        });
        changes.push(Change {
            revision: index,
            kind: ChangeKind::PullPut { pull: pull.clone() },
        });
        Ok(Applied::Pull { pull })
    }

    pub(super) fn close_pull(
        &mut self,
        index: u64,
        now_ms: u64,
        project: &str,
        repo: &str,
        number: u64,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        self.open_pull_or_error(project, repo, number)?;
        let pull = self
            .pulls
            .get_mut(&PullRequest::key(project, repo, number))
            .expect("looked up above");
        pull.state = PullState::Closed;
        pull.updated_at_ms = now_ms;
        pull.revision = index;
        let pull = pull.clone();
        changes.push(Change {
            revision: index,
            kind: ChangeKind::PullPut { pull: pull.clone() },
        });
        Ok(Applied::Pull { pull })
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn merge_pull(
        &mut self,
        index: u64,
        now_ms: u64,
        project: &str,
        repo_name: &str,
        number: u64,
        head: &str,
        change: &RefChange,
        changes: &mut Vec<Change>,
    ) -> Result<Applied, CommandError> {
        let pull = self.open_pull_or_error(project, repo_name, number)?;
        let repo = self.repo_or_error(project, repo_name)?;
        let (source, base) = (pull.source_ref(), pull.base_ref());
        // The merge is of the head the server merged: a push to the source
        // since then makes it stale, as a moved base does.
        let current = repo.refs.get(&source);
        if current.map(String::as_str) != Some(head) {
            return Err(CommandError::StaleRef {
                name: source,
                current: current.cloned(),
            });
        }
        if change.name != base || change.new.is_none() {
            return Err(CommandError::BranchNotFound {
                name: change.name.clone(),
            });
        }
        let refs = State::refs_after(repo, std::slice::from_ref(change))?;
        let repo = self
            .repos
            .get_mut(&Repo::key(project, repo_name))
            .expect("looked up above");
        repo.refs = refs;
        let repo = repo.clone();
        let pull = self
            .pulls
            .get_mut(&PullRequest::key(project, repo_name, number))
            .expect("looked up above");
        pull.state = PullState::Merged;
        pull.merged_head = Some(head.to_owned());
        pull.merge_commit = change.new.clone();
        pull.updated_at_ms = now_ms;
        pull.revision = index;
        let pull = pull.clone();
        changes.push(Change {
            revision: index,
            kind: ChangeKind::RepoPut { repo },
        });
        changes.push(Change {
            revision: index,
            kind: ChangeKind::PullPut { pull: pull.clone() },
        });
        Ok(Applied::Pull { pull })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const B: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    fn state() -> State {
        let mut state = State::default();
        let mut changes = Vec::new();
        state
            .create_project(1, 0, "p", "main", &mut changes)
            .unwrap();
        state.create_repo(2, 0, "p", "r", &mut changes).unwrap();
        let set = |name: &str, new: &str| RefChange {
            name: name.to_owned(),
            old: None,
            new: Some(new.to_owned()),
        };
        state
            .update_refs(
                3,
                "p",
                "r",
                &[set("refs/heads/main", A), set("refs/heads/topic", B)],
                &mut changes,
            )
            .unwrap();
        state
    }

    fn open(state: &mut State, head: &str, base: &str) -> Result<Applied, CommandError> {
        state.open_pull(
            10,
            5,
            OpenPull {
                project: "p",
                repo: "r",
                title: "t",
                task_id: None,
                source: "topic",
                base: "main",
                head,
                base_commit: base,
            },
            &mut Vec::new(),
        )
    }

    #[test]
    fn a_pull_opens_at_the_committed_refs_once() {
        let mut state = state();
        assert!(matches!(
            open(&mut state, C, A),
            Err(CommandError::StaleRef { .. })
        ));
        let Applied::Pull { pull } = open(&mut state, B, A).unwrap() else {
            panic!("a pull")
        };
        assert_eq!(pull.number, 1);
        assert!(matches!(
            open(&mut state, B, A),
            Err(CommandError::PullExists { number: 1, .. })
        ));
        state
            .close_pull(11, 6, "p", "r", 1, &mut Vec::new())
            .unwrap();
        let Applied::Pull { pull } = open(&mut state, B, A).unwrap() else {
            panic!("a pull")
        };
        assert_eq!(pull.number, 2, "numbers are never reused");
        assert_eq!(state.pulls_of("p", "r").count(), 2);
    }

    #[test]
    fn a_merge_moves_the_base_and_marks_the_pull_in_one_step() {
        let mut state = state();
        open(&mut state, B, A).unwrap();
        let change = |old: &str| RefChange {
            name: "refs/heads/main".to_owned(),
            old: Some(old.to_owned()),
            new: Some(C.to_owned()),
        };
        // A stale base or head changes nothing.
        let stale = state.merge_pull(12, 7, "p", "r", 1, B, &change(B), &mut Vec::new());
        assert!(matches!(stale, Err(CommandError::StaleRef { .. })));
        let stale = state.merge_pull(12, 7, "p", "r", 1, A, &change(A), &mut Vec::new());
        assert!(matches!(stale, Err(CommandError::StaleRef { .. })));
        assert_eq!(state.pull("p", "r", 1).unwrap().state, PullState::Open);
        state
            .merge_pull(12, 7, "p", "r", 1, B, &change(A), &mut Vec::new())
            .unwrap();
        assert_eq!(state.repo("p", "r").unwrap().refs["refs/heads/main"], C);
        let pull = state.pull("p", "r", 1).unwrap();
        assert_eq!(pull.state, PullState::Merged);
        assert_eq!(pull.merge_commit.as_deref(), Some(C));
        assert!(matches!(
            state.close_pull(13, 8, "p", "r", 1, &mut Vec::new()),
            Err(CommandError::PullNotOpen { .. })
        ));
    }
}
