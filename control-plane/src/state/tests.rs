//! The state machine's behaviour, command by command.

use super::testkit::*;
use super::*;
use crate::types::*;
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
fn planning_requests_a_desktop_and_done_releases_it() {
    let mut log = Log::new();
    log.apply(create("a", Column::Backlog));
    assert_eq!(log.state.pending_count(), 0);
    log.apply(Command::MoveTask {
        id: "a".into(),
        column: Column::Planning,
        position: None,
    });
    assert_eq!(log.state.pending_count(), 1);
    let desktop = log.desktop_of("a");
    assert_eq!(desktop.resources, DesktopResources::default());
    log.apply(Command::MoveTask {
        id: "a".into(),
        column: Column::Implementation,
        position: None,
    });
    assert_eq!(
        log.desktop_of("a").id,
        desktop.id,
        "same desktop across columns"
    );
    log.apply(Command::MoveTask {
        id: "a".into(),
        column: Column::Done,
        position: None,
    });
    assert_eq!(
        log.state.desktops().count(),
        0,
        "a pending desktop is dropped at once"
    );
    assert!(log.state.task("a").unwrap().desktop_id.is_none());
}

#[test]
fn placement_is_checked_on_apply_and_never_overcommits() {
    let mut log = Log::new();
    log.apply(register("n1", 300, 8));
    log.apply(create("a", Column::Planning));
    log.apply(create("b", Column::Planning));
    let a = log.desktop_of("a");
    let b = log.desktop_of("b");
    // Initializing nodes take nothing.
    let response = log.apply(place(&a.id, "n1"));
    assert!(matches!(
        response.outcome,
        Ok(Applied::Placed { placed: 0, .. })
    ));
    log.apply(status("n1", NodeStatus::Ready));
    let response = log.apply(place(&a.id, "n1"));
    assert!(matches!(
        response.outcome,
        Ok(Applied::Placed { placed: 1, .. })
    ));
    // 250 + 250 > 300 millicores: refused.
    let response = log.apply(place(&b.id, "n1"));
    let Ok(Applied::Placed { placed: 0, refused }) = response.outcome else {
        panic!("expected a refusal: {response:?}");
    };
    assert!(refused[0].reason.contains("no room"), "{refused:?}");
    // Placing the same desktop twice is refused too.
    let response = log.apply(place(&a.id, "n1"));
    assert!(matches!(
        response.outcome,
        Ok(Applied::Placed { placed: 0, .. })
    ));
    let placed = log.desktop_of("a");
    assert_eq!(placed.node_id.as_deref(), Some("n1"));
    assert_eq!(
        placed.generation, 6,
        "the fencing token is the placement's index"
    );
    assert_eq!(log.state.allocation("n1").unwrap().cpu_millis, 250);
}

#[test]
fn a_down_node_loses_its_desktops_and_stale_reports_are_fenced() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    log.apply(register("n2", 4000, 8));
    log.apply(status("n1", NodeStatus::Ready));
    log.apply(status("n2", NodeStatus::Ready));
    log.apply(create("a", Column::Planning));
    let a = log.desktop_of("a");
    log.apply(place(&a.id, "n1"));
    let on_n1 = log.desktop_of("a");
    log.apply(report("n1", &on_n1, DesktopState::Running));
    assert_eq!(log.desktop_of("a").state, DesktopState::Running);

    log.apply(status("n1", NodeStatus::Down));
    let pending = log.desktop_of("a");
    assert_eq!(pending.node_id, None);
    assert!(pending.reason.unwrap().contains("went down"));
    assert!(log.state.allocation("n1").is_none());
    log.apply(place(&a.id, "n2"));
    let on_n2 = log.desktop_of("a");
    assert_ne!(on_n2.generation, on_n1.generation);

    // n1 comes back and reports the old generation: ignored.
    log.apply(status("n1", NodeStatus::Ready));
    log.apply(report("n1", &on_n1, DesktopState::Stopped));
    assert_eq!(log.desktop_of("a"), on_n2);
    // Even with the current generation, only n2 speaks for it.
    log.apply(report("n1", &on_n2, DesktopState::Failed));
    assert_eq!(log.desktop_of("a"), on_n2);
}

#[test]
fn drain_migrates_then_completes_and_leaves_the_node_ineligible() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    log.apply(register("n2", 4000, 8));
    log.apply(status("n1", NodeStatus::Ready));
    log.apply(status("n2", NodeStatus::Ready));
    log.apply(create("a", Column::Planning));
    let a = log.desktop_of("a");
    log.apply(place(&a.id, "n1"));
    log.apply(Command::StartDrain {
        id: "n1".into(),
        deadline_ms: 10_000,
        max_parallel: 1,
    });
    let node = log.state.node("n1").unwrap();
    assert!(!node.eligible && node.drain.is_some());
    // Nothing new lands on a draining node.
    log.apply(create("b", Column::Planning));
    let b = log.desktop_of("b");
    let response = log.apply(place(&b.id, "n1"));
    assert!(matches!(
        response.outcome,
        Ok(Applied::Placed { placed: 0, .. })
    ));
    // Uncordoning while draining is refused.
    let response = log.apply(Command::SetNodeEligibility {
        id: "n1".into(),
        eligible: true,
    });
    assert!(matches!(
        response.outcome,
        Err(CommandError::NodeDraining { .. })
    ));

    log.apply(Command::MigrateDesktops {
        ids: vec![a.id.clone()],
    });
    let migrating = log.desktop_of("a");
    assert_eq!(migrating.intent, DesktopIntent::Migrate);
    assert_eq!(
        migrating.node_id.as_deref(),
        Some("n1"),
        "held until stopped"
    );
    log.apply(report("n1", &migrating, DesktopState::Stopped));
    let pending = log.desktop_of("a");
    assert_eq!(
        (pending.node_id.clone(), pending.intent),
        (None, DesktopIntent::Run)
    );
    let node = log.state.node("n1").unwrap();
    assert!(node.drain.is_none() && node.drained_at_ms.is_some() && !node.eligible);
    log.apply(place(&a.id, "n2"));
    assert_eq!(log.desktop_of("a").node_id.as_deref(), Some("n2"));
}

#[test]
fn draining_a_down_node_is_refused() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    log.apply(status("n1", NodeStatus::Down));
    let before = log.state.clone();
    let response = log.apply(Command::StartDrain {
        id: "n1".into(),
        deadline_ms: 0,
        max_parallel: 1,
    });
    assert!(matches!(
        response.outcome,
        Err(CommandError::NodeDown { .. })
    ));
    assert_eq!(log.state.node("n1"), before.node("n1"));
}

#[test]
fn releasing_a_running_desktop_waits_for_its_node_to_stop_it() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    log.apply(status("n1", NodeStatus::Ready));
    log.apply(create("a", Column::Planning));
    let a = log.desktop_of("a");
    log.apply(place(&a.id, "n1"));
    let placed = log.state.desktop(&a.id).unwrap().clone();
    log.apply(Command::DeleteTask { id: "a".into() });
    assert_eq!(
        log.state.desktop(&a.id).unwrap().intent,
        DesktopIntent::Release
    );
    log.apply(report("n1", &placed, DesktopState::Stopped));
    assert!(log.state.desktop(&a.id).is_none());
    assert!(log.state.allocation("n1").is_none());
}

#[test]
fn only_down_nodes_can_be_removed() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    log.apply(status("n1", NodeStatus::Ready));
    let response = log.apply(Command::RemoveNode { id: "n1".into() });
    assert!(matches!(
        response.outcome,
        Err(CommandError::NodeNotDown { .. })
    ));
    log.apply(status("n1", NodeStatus::Down));
    let response = log.apply(Command::RemoveNode { id: "n1".into() });
    assert_eq!(response.outcome, Ok(Applied::Deleted));
    assert!(log.state.node("n1").is_none());
    // Its agent coming back registers it again.
    log.apply(register("n1", 4000, 8));
    assert_eq!(
        log.state.node("n1").unwrap().status,
        NodeStatus::Initializing
    );
}

#[test]
fn node_names_are_unique() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    let mut taken = register("n2", 4000, 8);
    if let Command::RegisterNode { registration } = &mut taken {
        registration.name = "node-n1".into();
    }
    let response = log.apply(taken);
    assert!(matches!(
        response.outcome,
        Err(CommandError::NodeNameTaken { .. })
    ));
    // Re-registering the same id keeps eligibility.
    log.apply(Command::SetNodeEligibility {
        id: "n1".into(),
        eligible: false,
    });
    log.apply(register("n1", 8000, 8));
    let node = log.state.node("n1").unwrap();
    assert!(!node.eligible);
    assert_eq!(node.capacity.cpu_millis, 8000);
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
