//! Budgets and per-desktop concurrency, this server's side. A call reserves
//! an upper bound of what it may use (its input's bytes as tokens, since a
//! token is at least a byte, plus its output limit) before it is sent; when
//! it ends, the reservation becomes what it really used, held until that
//! usage is committed and visible in the state. A call is admitted while the
//! committed usage plus everything held is below the budget, so concurrent
//! calls overspend by at most the last admitted call's reservation.
//!
//! The ledger is per server: a desktop reaches its node's door on one
//! server at a time, and each server's calls are committed through Raft
//! within the recorder's flush interval.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::types::{Budget, UsageTotals};

/// Tokens and cost held for one task or project.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub tokens: u64,
    pub cost_nanos: u64,
}

impl Held {
    fn add(&mut self, other: Held) {
        self.tokens = self.tokens.saturating_add(other.tokens);
        self.cost_nanos = self.cost_nanos.saturating_add(other.cost_nanos);
    }

    fn sub(&mut self, other: Held) {
        self.tokens = self.tokens.saturating_sub(other.tokens);
        self.cost_nanos = self.cost_nanos.saturating_sub(other.cost_nanos);
    }

    pub fn of(usage: &UsageTotals) -> Held {
        Held {
            tokens: usage.tokens(),
            cost_nanos: usage.cost_nanos,
        }
    }
}

/// What one call's admission looks at.
#[derive(Debug, Clone)]
pub struct Ask<'a> {
    pub task: &'a str,
    pub project: Option<&'a str>,
    /// Committed usage and budget of the task and of its project.
    pub task_used: UsageTotals,
    pub task_budget: Budget,
    pub project_used: UsageTotals,
    pub project_budget: Budget,
    pub estimate: Held,
}

/// Why a call was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the budget of {scope} is spent: {used} of {limit} {unit}")]
    Budget {
        scope: String,
        used: u64,
        limit: u64,
        unit: &'static str,
    },
    #[error("this desktop already has {limit} model calls open; wait for one to end")]
    Concurrency { limit: u32 },
}

#[derive(Debug, Default)]
struct Inner {
    tasks: HashMap<String, Held>,
    projects: HashMap<String, Held>,
    desktops: HashMap<String, u32>,
}

/// This server's reservations and not-yet-committed usage.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
    per_desktop: u32,
}

/// One of a desktop's open calls, taken before its body is read (so a
/// desktop holds at most `per_desktop` bodies in memory); dropping it frees
/// the place.
#[derive(Debug)]
pub struct Slot {
    ledger: Arc<Ledger>,
    desktop: String,
}

/// One admitted call's hold; dropping it gives the reservation back.
#[derive(Debug)]
pub struct Reservation {
    ledger: Arc<Ledger>,
    _slot: Slot,
    task: String,
    project: Option<String>,
    held: Held,
}

impl Ledger {
    pub fn new(per_desktop: u32) -> Arc<Ledger> {
        Arc::new(Ledger {
            inner: Mutex::new(Inner::default()),
            per_desktop,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for one more open call of `desktop`, or why not.
    pub fn enter(self: &Arc<Ledger>, desktop: &str) -> Result<Slot, Refusal> {
        let mut inner = self.lock();
        let open = inner.desktops.entry(desktop.to_owned()).or_default();
        if *open >= self.per_desktop {
            return Err(Refusal::Concurrency {
                limit: self.per_desktop,
            });
        }
        *open += 1;
        Ok(Slot {
            ledger: self.clone(),
            desktop: desktop.to_owned(),
        })
    }

    /// Admits a call in `slot`, or says why not.
    pub fn admit(self: &Arc<Ledger>, slot: Slot, ask: &Ask<'_>) -> Result<Reservation, Refusal> {
        let mut inner = self.lock();
        let task_held = inner.tasks.get(ask.task).copied().unwrap_or_default();
        check(
            &format!("task {}", ask.task),
            &ask.task_used,
            task_held,
            &ask.task_budget,
        )?;
        if let Some(project) = ask.project {
            let held = inner.projects.get(project).copied().unwrap_or_default();
            check(
                &format!("project {project}"),
                &ask.project_used,
                held,
                &ask.project_budget,
            )?;
        }
        inner
            .tasks
            .entry(ask.task.to_owned())
            .or_default()
            .add(ask.estimate);
        if let Some(project) = ask.project {
            inner
                .projects
                .entry(project.to_owned())
                .or_default()
                .add(ask.estimate);
        }
        drop(inner);
        Ok(Reservation {
            ledger: self.clone(),
            _slot: slot,
            task: ask.task.to_owned(),
            project: ask.project.map(str::to_owned),
            held: ask.estimate,
        })
    }

    /// Usage settled here and now committed: no longer held.
    pub fn committed(&self, task: &str, project: Option<&str>, used: Held) {
        let mut inner = self.lock();
        release(&mut inner.tasks, task, used);
        if let Some(project) = project {
            release(&mut inner.projects, project, used);
        }
    }

    /// What is held for a task now (tests, metrics).
    pub fn held(&self, task: &str) -> Held {
        self.lock().tasks.get(task).copied().unwrap_or_default()
    }
}

impl Reservation {
    /// The call ended having used `used`: the reservation becomes that,
    /// held until [`Ledger::committed`].
    pub fn settle(mut self, used: Held) {
        let mut inner = self.ledger.lock();
        let held = std::mem::take(&mut self.held);
        if let Some(task) = inner.tasks.get_mut(&self.task) {
            task.sub(held);
            task.add(used);
        }
        if let Some(project) = self
            .project
            .as_ref()
            .and_then(|p| inner.projects.get_mut(p))
        {
            project.sub(held);
            project.add(used);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut inner = self.ledger.lock();
        release(&mut inner.tasks, &self.task, self.held);
        if let Some(project) = &self.project {
            release(&mut inner.projects, project, self.held);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.ledger.lock();
        if let Some(open) = inner.desktops.get_mut(&self.desktop) {
            *open -= 1;
            if *open == 0 {
                inner.desktops.remove(&self.desktop);
            }
        }
    }
}

fn release(map: &mut HashMap<String, Held>, key: &str, amount: Held) {
    if let Some(held) = map.get_mut(key) {
        held.sub(amount);
        if *held == Held::default() {
            map.remove(key);
        }
    }
}

fn check(scope: &str, used: &UsageTotals, held: Held, budget: &Budget) -> Result<(), Refusal> {
    if let Some(limit) = budget.max_tokens {
        let spent = used.tokens().saturating_add(held.tokens);
        if spent >= limit {
            return Err(Refusal::Budget {
                scope: scope.to_owned(),
                used: used.tokens(),
                limit,
                unit: "tokens",
            });
        }
    }
    if let Some(limit) = budget.max_cost_nanos {
        let spent = used.cost_nanos.saturating_add(held.cost_nanos);
        if spent >= limit {
            return Err(Refusal::Budget {
                scope: scope.to_owned(),
                used: used.cost_nanos,
                limit,
                unit: "nano-dollars",
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask<'a>(used: u64, max: u64, estimate: u64) -> Ask<'a> {
        Ask {
            task: "t",
            project: Some("p"),
            task_used: UsageTotals {
                input_tokens: used,
                ..Default::default()
            },
            task_budget: Budget {
                max_tokens: Some(max),
                max_cost_nanos: None,
            },
            project_used: UsageTotals::default(),
            project_budget: Budget::default(),
            estimate: Held {
                tokens: estimate,
                cost_nanos: 0,
            },
        }
    }

    #[test]
    fn concurrent_calls_overspend_by_at_most_one_reservation() {
        let ledger = Ledger::new(100);
        let mut open = Vec::new();
        while let Ok(reservation) = ledger.admit(ledger.enter("d").unwrap(), &ask(0, 1000, 300)) {
            open.push(reservation);
        }
        // 0, 300, 600, 900 admitted (each saw room left), the fifth refused.
        assert_eq!(open.len(), 4);
        assert_eq!(ledger.held("t").tokens, 1200);
        assert!(ledger.held("t").tokens < 1000 + 300);
        // Settling at real usage frees the rest of the reservation.
        for reservation in open.drain(..) {
            reservation.settle(Held {
                tokens: 10,
                cost_nanos: 0,
            });
        }
        assert_eq!(ledger.held("t").tokens, 40);
        ledger.committed(
            "t",
            Some("p"),
            Held {
                tokens: 40,
                cost_nanos: 0,
            },
        );
        assert_eq!(ledger.held("t"), Held::default());
        assert!(ledger
            .admit(ledger.enter("d").unwrap(), &ask(999, 1000, 300))
            .is_ok());
        let refused = ledger
            .admit(ledger.enter("d").unwrap(), &ask(1000, 1000, 1))
            .unwrap_err();
        assert_eq!(
            refused.to_string(),
            "the budget of task t is spent: 1000 of 1000 tokens"
        );
    }

    #[test]
    fn a_desktop_has_a_bounded_number_of_open_calls() {
        let ledger = Ledger::new(2);
        let first = ledger.enter("d").unwrap();
        let second = ledger.enter("d").unwrap();
        assert_eq!(
            ledger.enter("d").unwrap_err(),
            Refusal::Concurrency { limit: 2 }
        );
        assert!(ledger.enter("other").is_ok());
        drop(first);
        // An admitted call keeps its place until its reservation goes.
        let unlimited = Ask {
            task_budget: Budget::default(),
            ..ask(0, 0, 1)
        };
        let admitted = ledger.admit(second, &unlimited).unwrap();
        let _third = ledger.enter("d").unwrap();
        assert!(ledger.enter("d").is_err());
        drop(admitted);
        assert!(ledger.enter("d").is_ok());
    }
}
