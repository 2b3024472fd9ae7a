//! Who may move which ref: a pure decision over facts the IO shell gathered (the
//! principal, the default branch, whether an update is a fast-forward). No git, no
//! async: every rule is a unit test below.
//!
//! The rules, in the order they are checked:
//! 1. Every push: only `refs/heads/` and `refs/tags/`. Ref names were already checked
//!    against git's rules (no `..`) when the update was parsed.
//! 2. An operator may then do anything: create, fast-forward, force, delete.
//! 3. A desktop never touches `refs/heads/main` or the repository's default branch
//!    (work reaches them through a pull request), and never pushes tags.
//! 4. A desktop writes only its own branches: `refs/heads/flotilla/<task>`, branches
//!    under it (`refs/heads/flotilla/<task>/...`) and any extra prefixes the control
//!    plane granted it.
//! 5. The task's branch itself, `refs/heads/flotilla/<task>`, only grows: no deletion
//!    and no force-push, because reviewers' comments are anchored to its commits and a
//!    pull request is built from it. Branches under it are the agent's scratch space:
//!    force and delete are allowed there.
//! 6. Every push: a new ref may not sit beside an existing ref it would nest with
//!    (`refs/heads/a` and `refs/heads/a/b`): git stores refs as paths and cannot hold
//!    both, so the update would commit in the ledger and then fail to apply on every
//!    server. (So a task uses either `flotilla/<task>` or branches under it, not both.)
//!    The ledger's state machine must make the same check against committed refs; this
//!    one, against this server's copy, gives the person pushing a clear message first.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::types::{RefName, RefUpdate, TaskId};

/// Who is pushing, as [`crate::http::GitAuth`] established it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// A person or automation acting for the cluster; `name` is for logs.
    Operator { name: String },
    /// A task's desktop, holding a desktop-scoped token.
    Desktop {
        task: TaskId,
        /// Extra ref prefixes this desktop owns besides its task's branches, each a full
        /// ref name such as `refs/heads/flotilla/group-7`; writes at or under them are
        /// allowed like the task's sub-branches (but never to main or the default branch).
        allowed_prefixes: Vec<String>,
    },
}

impl Principal {
    /// The desktop's own branch, `refs/heads/flotilla/<task>`.
    pub fn task_branch(task: &TaskId) -> RefName {
        RefName::branch(&format!("flotilla/{task}")).expect("a task id is a valid ref component")
    }
}

/// Whether an update that keeps the ref existing moves it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ancestry {
    /// `old` is an ancestor of `new`.
    FastForward,
    /// `new` does not contain `old`: a force-push.
    Rewrite,
    /// A creation or deletion, where ancestry does not apply.
    NotApplicable,
}

/// The verdict on one ref update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused; the message is what git prints after `[remote rejected]`.
    Refuse(String),
}

/// Facts about the repository the rules need.
#[derive(Debug, Clone)]
pub struct RepoFacts {
    pub default_branch: RefName,
    /// The refs that exist now.
    pub existing_refs: BTreeSet<RefName>,
}

/// Decides one update.
pub fn decide(
    principal: &Principal,
    facts: &RepoFacts,
    update: &RefUpdate,
    ancestry: Ancestry,
) -> Decision {
    let name = &update.name;
    let is_branch = name.is_at_or_under("refs/heads");
    let is_tag = name.is_at_or_under("refs/tags");
    if !is_branch && !is_tag {
        return Decision::Refuse(format!(
            "{name} is outside refs/heads/ and refs/tags/: only branches and tags can be pushed"
        ));
    }
    let (task, allowed_prefixes) = match principal {
        Principal::Operator { .. } => return Decision::Allow,
        Principal::Desktop {
            task,
            allowed_prefixes,
        } => (task, allowed_prefixes),
    };
    let main = RefName::branch("main").expect("main is a valid branch");
    if *name == main || *name == facts.default_branch {
        return Decision::Refuse(format!(
            "pushing to {} is not allowed from a desktop: open a pull request",
            name.short()
        ));
    }
    if is_tag {
        return Decision::Refuse(format!(
            "pushing tag {} is not allowed from a desktop: tags are made by operators",
            name.short()
        ));
    }
    let task_branch = Principal::task_branch(task);
    let owned = name.is_at_or_under(task_branch.as_str())
        || allowed_prefixes
            .iter()
            .any(|prefix| name.is_at_or_under(prefix));
    if !owned {
        return Decision::Refuse(format!(
            "{} is not this desktop's branch: push to {} or a branch under it",
            name.short(),
            task_branch.short()
        ));
    }
    if *name == task_branch {
        if update.is_delete() {
            return Decision::Refuse(format!(
                "deleting {} is not allowed from a desktop: it is the task's branch",
                name.short()
            ));
        }
        if ancestry == Ancestry::Rewrite {
            return Decision::Refuse(format!(
                "force-pushing {} is not allowed from a desktop: fetch, merge and push again",
                name.short()
            ));
        }
    }
    Decision::Allow
}

/// Decides a whole push. Pushes are all or nothing (see [`crate::ledger`]): the
/// returned list has one verdict per update, in order, and if any update is refused
/// every other one is refused too, naming the ref that stopped it.
pub fn decide_push(
    principal: &Principal,
    facts: &RepoFacts,
    updates: &[(RefUpdate, Ancestry)],
) -> Vec<Decision> {
    let deleted: BTreeSet<&RefName> = updates
        .iter()
        .filter(|(update, _)| update.is_delete())
        .map(|(update, _)| &update.name)
        .collect();
    let decisions: Vec<Decision> = updates
        .iter()
        .map(
            |(update, ancestry)| match decide(principal, facts, update, *ancestry) {
                Decision::Allow if update.is_create() && !update.is_delete() => {
                    nesting_conflict(facts, &deleted, updates, update)
                }
                decision => decision,
            },
        )
        .collect();
    let first_refused = updates
        .iter()
        .zip(&decisions)
        .find(|(_, decision)| matches!(decision, Decision::Refuse(_)))
        .map(|((update, _), _)| update.name.clone());
    match first_refused {
        None => decisions,
        Some(refused) => decisions
            .into_iter()
            .map(|decision| match decision {
                Decision::Allow => Decision::Refuse(format!(
                    "not applied: {refused} was refused in the same push and pushes are all or nothing"
                )),
                refused => refused,
            })
            .collect(),
    }
}

/// Rule 6: `update` creates a ref that would nest with one that exists (and is not
/// deleted by this push) or with another ref this push creates.
fn nesting_conflict(
    facts: &RepoFacts,
    deleted: &BTreeSet<&RefName>,
    updates: &[(RefUpdate, Ancestry)],
    update: &RefUpdate,
) -> Decision {
    let name = &update.name;
    let nests = |other: &RefName| {
        other != name
            && (name.is_at_or_under(other.as_str()) || other.is_at_or_under(name.as_str()))
    };
    let existing = facts
        .existing_refs
        .iter()
        .filter(|other| !deleted.contains(other));
    let created = updates
        .iter()
        .filter(|(other, _)| !other.is_delete())
        .map(|(other, _)| &other.name);
    match existing.chain(created).find(|other| nests(other)) {
        Some(other) => Decision::Refuse(format!(
            "{} cannot be created while {} exists: git cannot hold a ref and a ref under it; delete one or pick another name",
            name.short(),
            other.short()
        )),
        None => Decision::Allow,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ObjectId;

    fn id(digit: char) -> Option<ObjectId> {
        Some(ObjectId::new(digit.to_string().repeat(40)).expect("valid id"))
    }

    fn update(name: &str, old: Option<ObjectId>, new: Option<ObjectId>) -> RefUpdate {
        RefUpdate {
            name: RefName::new(name).expect("valid name"),
            old,
            new,
        }
    }

    fn desktop(task: &str) -> Principal {
        Principal::Desktop {
            task: TaskId::new(task).expect("valid task"),
            allowed_prefixes: vec!["refs/heads/flotilla/group-7".to_owned()],
        }
    }

    fn facts(default_branch: &str) -> RepoFacts {
        RepoFacts {
            default_branch: RefName::branch(default_branch).expect("valid"),
            existing_refs: BTreeSet::new(),
        }
    }

    fn refused(decision: Decision) -> String {
        match decision {
            Decision::Refuse(message) => message,
            Decision::Allow => panic!("expected a refusal"),
        }
    }

    #[test]
    fn operator_may_do_anything_with_branches_and_tags() {
        let operator = Principal::Operator {
            name: "ops".to_owned(),
        };
        for update in [
            update("refs/heads/main", id('1'), id('2')),
            update("refs/heads/main", id('1'), None),
            update("refs/tags/v1", None, id('2')),
        ] {
            assert_eq!(
                decide(&operator, &facts("main"), &update, Ancestry::Rewrite),
                Decision::Allow
            );
        }
        let notes = update("refs/notes/commits", None, id('1'));
        assert!(refused(decide(
            &operator,
            &facts("main"),
            &notes,
            Ancestry::NotApplicable
        ))
        .contains("outside refs/heads/"));
    }

    #[test]
    fn desktop_never_pushes_main_or_the_default_branch() {
        let main = update("refs/heads/main", id('1'), id('2'));
        assert_eq!(
            refused(decide(
                &desktop("t1"),
                &facts("main"),
                &main,
                Ancestry::FastForward
            )),
            "pushing to main is not allowed from a desktop: open a pull request"
        );
        let trunk = update("refs/heads/trunk", id('1'), id('2'));
        assert!(refused(decide(
            &desktop("t1"),
            &facts("trunk"),
            &trunk,
            Ancestry::FastForward
        ))
        .contains("open a pull request"));
        // main stays protected even when the default branch is another one.
        assert!(matches!(
            decide(
                &desktop("t1"),
                &facts("trunk"),
                &main,
                Ancestry::FastForward
            ),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn desktop_writes_only_its_own_branches() {
        let own = update("refs/heads/flotilla/t1", None, id('1'));
        let sub = update("refs/heads/flotilla/t1/spike", id('1'), id('2'));
        let granted = update("refs/heads/flotilla/group-7/x", None, id('1'));
        for allowed in [&own, &sub, &granted] {
            assert_eq!(
                decide(
                    &desktop("t1"),
                    &facts("main"),
                    allowed,
                    Ancestry::FastForward
                ),
                Decision::Allow,
                "{allowed:?}"
            );
        }
        for (name, expected) in [
            ("refs/heads/flotilla/t2", "is not this desktop's branch"),
            ("refs/heads/flotilla/t10", "is not this desktop's branch"),
            ("refs/heads/feature", "is not this desktop's branch"),
            ("refs/tags/v1", "tags are made by operators"),
        ] {
            let other = update(name, None, id('1'));
            let message = refused(decide(
                &desktop("t1"),
                &facts("main"),
                &other,
                Ancestry::NotApplicable,
            ));
            assert!(message.contains(expected), "{name}: {message}");
        }
    }

    #[test]
    fn the_task_branch_only_grows_but_sub_branches_may_be_rewritten() {
        let force = update("refs/heads/flotilla/t1", id('1'), id('2'));
        assert!(refused(decide(
            &desktop("t1"),
            &facts("main"),
            &force,
            Ancestry::Rewrite
        ))
        .starts_with("force-pushing flotilla/t1 is not allowed"));
        let delete = update("refs/heads/flotilla/t1", id('1'), None);
        assert!(refused(decide(
            &desktop("t1"),
            &facts("main"),
            &delete,
            Ancestry::NotApplicable
        ))
        .starts_with("deleting flotilla/t1"));
        let sub_force = update("refs/heads/flotilla/t1/spike", id('1'), id('2'));
        assert_eq!(
            decide(
                &desktop("t1"),
                &facts("main"),
                &sub_force,
                Ancestry::Rewrite
            ),
            Decision::Allow
        );
        let sub_delete = update("refs/heads/flotilla/t1/spike", id('1'), None);
        assert_eq!(
            decide(
                &desktop("t1"),
                &facts("main"),
                &sub_delete,
                Ancestry::NotApplicable
            ),
            Decision::Allow
        );
    }

    #[test]
    fn one_refusal_refuses_the_whole_push() {
        let decisions = decide_push(
            &desktop("t1"),
            &facts("main"),
            &[
                (
                    update("refs/heads/flotilla/t1", None, id('1')),
                    Ancestry::NotApplicable,
                ),
                (
                    update("refs/heads/main", id('1'), id('2')),
                    Ancestry::FastForward,
                ),
            ],
        );
        assert_eq!(decisions.len(), 2);
        assert!(refused(decisions[0].clone()).contains("refs/heads/main was refused"));
        assert!(refused(decisions[1].clone()).contains("open a pull request"));
        let allowed = decide_push(
            &desktop("t1"),
            &facts("main"),
            &[(
                update("refs/heads/flotilla/t1", None, id('1')),
                Ancestry::NotApplicable,
            )],
        );
        assert_eq!(allowed, vec![Decision::Allow]);
    }

    #[test]
    fn refs_that_would_nest_are_refused() {
        let mut facts = facts("main");
        facts
            .existing_refs
            .insert(RefName::new("refs/heads/flotilla/t1").expect("valid"));
        let nested = (
            update("refs/heads/flotilla/t1/spike", None, id('1')),
            Ancestry::NotApplicable,
        );
        let decisions = decide_push(&desktop("t1"), &facts, std::slice::from_ref(&nested));
        assert!(
            refused(decisions[0].clone()).contains("cannot be created while flotilla/t1 exists")
        );
        // Deleting the outer ref in the same push resolves it (for an operator, who may).
        let operator = Principal::Operator {
            name: "ops".to_owned(),
        };
        let delete_outer = (
            update("refs/heads/flotilla/t1", id('2'), None),
            Ancestry::NotApplicable,
        );
        assert_eq!(
            decide_push(&operator, &facts, &[delete_outer, nested.clone()]),
            vec![Decision::Allow, Decision::Allow]
        );
        // Two new refs of one push that nest conflict too.
        let outer = (
            update("refs/heads/x", None, id('1')),
            Ancestry::NotApplicable,
        );
        let inner = (
            update("refs/heads/x/y", None, id('1')),
            Ancestry::NotApplicable,
        );
        let both = decide_push(&operator, &self::facts("main"), &[outer, inner]);
        assert!(both.iter().all(|d| matches!(d, Decision::Refuse(_))));
        // A sibling with a shared prefix is not nesting.
        let sibling = (
            update("refs/heads/flotilla/t10", None, id('1')),
            Ancestry::NotApplicable,
        );
        assert_eq!(
            decide_push(&operator, &facts, &[sibling]),
            vec![Decision::Allow]
        );
    }
}
