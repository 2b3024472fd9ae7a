//! The fleet engine on a fake clock: a base `Instant` advanced by hand, a
//! state built by applying commands, and the exact commands the engine
//! answers. No sleeps, no cluster.

use std::time::{Duration, Instant};

use super::*;
use crate::state::testkit::{create, register, report, status, Log};
use crate::types::{Column, DesktopResources};

fn engine() -> FleetEngine {
    FleetEngine::new(FleetOptions::default())
}

const TTL: Duration = Duration::from_secs(10);

fn line(report: DesktopReport) -> ReportedDesktop {
    ReportedDesktop {
        report,
        usage: Usage {
            cpu_usec: 7,
            ..Usage::default()
        },
    }
}

/// Two ready nodes of 4 CPUs and 8 slots each.
fn two_ready_nodes() -> Log {
    let mut log = Log::new();
    for id in ["n1", "n2"] {
        log.apply(register(id, 4000, 8));
        log.apply(status(id, NodeStatus::Ready));
    }
    log
}

#[test]
fn the_lease_grows_with_the_fleet_as_nomads_does() {
    let options = FleetOptions::default();
    assert_eq!(options.heartbeat_ttl(3), Duration::from_secs(10));
    assert_eq!(options.heartbeat_ttl(125), Duration::from_secs(10));
    // 5,000 nodes heartbeating every ttl/4 at 50/s fleet-wide.
    assert_eq!(options.heartbeat_ttl(5_000), Duration::from_secs(400));
    let fast = FleetOptions {
        min_heartbeat_ttl: Duration::from_secs(2),
        max_heartbeats_per_second: 1_000,
        ..FleetOptions::default()
    };
    assert_eq!(fast.heartbeat_ttl(1_000), Duration::from_secs(4));
}

#[test]
fn a_heartbeat_from_an_unknown_node_is_refused() {
    let log = Log::new();
    let error = engine()
        .heartbeat(&log.state, "ghost", &[], Instant::now(), 1)
        .unwrap_err();
    assert_eq!(error, FleetError::UnknownNode("ghost".into()));
    assert_eq!(
        error.to_string(),
        "no node with id \"ghost\"; register first"
    );
}

#[test]
fn the_first_heartbeat_makes_a_node_ready_and_later_ones_write_nothing() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 8));
    let mut engine = engine();
    let now = Instant::now();
    let outcome = engine.heartbeat(&log.state, "n1", &[], now, 5).unwrap();
    assert_eq!(outcome.ttl, TTL);
    assert_eq!(outcome.commands, vec![status("n1", NodeStatus::Ready)]);
    for command in outcome.commands {
        log.apply(command);
    }
    let outcome = engine
        .heartbeat(&log.state, "n1", &[], now + TTL / 4, 6)
        .unwrap();
    assert!(outcome.commands.is_empty(), "{:?}", outcome.commands);
    assert_eq!(engine.last_heartbeat_ms("n1"), Some(6));
}

#[test]
fn a_silent_node_is_marked_down_exactly_when_its_lease_ends() {
    let mut log = two_ready_nodes();
    let mut engine = engine();
    let start = Instant::now();
    assert!(engine.observe_leadership(Some(1)));
    // First sight: every node gets a full lease from now.
    assert_eq!(engine.mark_silent_nodes_down(&log.state, start), None);
    engine
        .heartbeat(&log.state, "n1", &[], start + TTL / 2, 1)
        .unwrap();
    let just_before = start + TTL - Duration::from_millis(1);
    assert_eq!(engine.mark_silent_nodes_down(&log.state, just_before), None);
    // n2 never spoke: down at start + ttl; n1's lease runs to 1.5 ttl.
    let down = engine.mark_silent_nodes_down(&log.state, start + TTL);
    assert_eq!(down, Some(status("n2", NodeStatus::Down)));
    log.apply(down.unwrap());
    assert_eq!(
        engine.mark_silent_nodes_down(&log.state, start + TTL + TTL / 2),
        Some(status("n1", NodeStatus::Down)),
        "a down node is not judged again"
    );
}

#[test]
fn a_new_term_gives_every_node_a_fresh_lease() {
    let log = two_ready_nodes();
    let mut engine = engine();
    let start = Instant::now();
    engine.observe_leadership(Some(1));
    engine.mark_silent_nodes_down(&log.state, start);
    // Leadership lost, then won again later: the old leases are void.
    assert!(!engine.observe_leadership(None));
    assert!(engine.observe_leadership(Some(3)));
    let later = start + TTL;
    assert_eq!(engine.mark_silent_nodes_down(&log.state, later), None);
    assert_eq!(
        engine.mark_silent_nodes_down(&log.state, later + TTL - Duration::from_millis(1)),
        None
    );
    assert!(engine
        .mark_silent_nodes_down(&log.state, later + TTL)
        .is_some());
}

#[test]
fn only_reports_that_change_something_from_the_desktops_node_are_written() {
    let mut log = two_ready_nodes();
    log.apply(create("a", Column::Planning));
    let desktop = log.desktop_of("a");
    log.apply(crate::state::testkit::place(&desktop.id, "n1"));
    let placed = log.desktop_of("a");
    let mut engine = engine();
    let now = Instant::now();
    let running = DesktopReport {
        desktop_id: placed.id.clone(),
        generation: placed.generation,
        state: DesktopState::Running,
        reason: None,
    };
    let stale = DesktopReport {
        generation: placed.generation + 1,
        ..running.clone()
    };
    // The wrong node and a stale generation are ignored.
    let outcome = engine
        .heartbeat(&log.state, "n2", &[line(running.clone())], now, 1)
        .unwrap();
    assert!(outcome.commands.is_empty());
    let outcome = engine
        .heartbeat(&log.state, "n1", &[line(stale)], now, 1)
        .unwrap();
    assert!(outcome.commands.is_empty());
    // A change is written once; the same report again writes nothing.
    let outcome = engine
        .heartbeat(&log.state, "n1", &[line(running.clone())], now, 1)
        .unwrap();
    assert_eq!(
        outcome.commands,
        vec![report("n1", &placed, DesktopState::Running)]
    );
    for command in outcome.commands {
        log.apply(command);
    }
    let outcome = engine
        .heartbeat(&log.state, "n1", &[line(running)], now, 1)
        .unwrap();
    assert!(outcome.commands.is_empty());
    assert_eq!(engine.usage("n1")[&placed.id].cpu_usec, 7);
}

#[test]
fn a_drain_moves_max_parallel_desktops_at_a_time_then_all_at_the_deadline() {
    let mut log = two_ready_nodes();
    let mut ids = Vec::new();
    for task in ["a", "b", "c"] {
        log.apply(create(task, Column::Planning));
        let desktop = log.desktop_of(task);
        log.apply(crate::state::testkit::place(&desktop.id, "n1"));
        ids.push(desktop.id);
    }
    log.apply(Command::StartDrain {
        id: "n1".into(),
        deadline_ms: 10_000,
        max_parallel: 1,
    });
    let engine = engine();
    let first = engine.drive_drains(&log.state, 5_000);
    assert_eq!(
        first,
        Some(Command::MigrateDesktops {
            ids: vec![ids[0].clone()]
        })
    );
    log.apply(first.unwrap());
    // One in flight: no room until it has stopped.
    assert_eq!(engine.drive_drains(&log.state, 5_001), None);
    // At the deadline every desktop still running goes at once.
    assert_eq!(
        engine.drive_drains(&log.state, 10_000),
        Some(Command::MigrateDesktops {
            ids: vec![ids[1].clone(), ids[2].clone()]
        })
    );
}

#[test]
fn a_pass_places_what_fits_and_then_waits_for_the_state_to_change() {
    let mut log = Log::new();
    log.apply(register("n1", 4000, 1));
    log.apply(status("n1", NodeStatus::Ready));
    log.apply(create("a", Column::Planning));
    log.apply(create("b", Column::Planning));
    let mut engine = engine();
    let pass = engine.schedule(&log.state).expect("two pending");
    assert_eq!(pass.placements.len(), 1);
    let Command::PlaceDesktops { placements } = &pass.placements[0] else {
        panic!("{pass:?}");
    };
    assert_eq!(placements.len(), 1, "one slot");
    assert_eq!(pass.reasons.len(), 1, "the other says why it waits");
    for command in pass.placements.into_iter().chain(pass.reasons) {
        log.apply(command);
    }
    // Nothing fits now: the pass records why once, then idles at this
    // revision.
    let pass = engine.schedule(&log.state).expect("one still pending");
    assert!(pass.placements.is_empty());
    assert!(pass.reasons.is_empty(), "the reason did not change");
    assert_eq!(engine.schedule(&log.state), None, "idle at this revision");
    // A failed write makes the next pass run again.
    engine.schedule_failed();
    assert!(engine.schedule(&log.state).is_some());
    assert_eq!(engine.schedule(&log.state), None);
    // A new node changes the revision: the pass places the waiting desktop.
    log.apply(register("n2", 4000, 1));
    log.apply(status("n2", NodeStatus::Ready));
    let pass = engine.schedule(&log.state).expect("state changed");
    assert_eq!(pass.placements.len(), 1);
}

#[test]
fn placements_are_cut_into_one_command_per_log_entry() {
    let mut log = Log::new();
    log.apply(register("n1", 1_000_000, 5_000));
    log.apply(status("n1", NodeStatus::Ready));
    let small = DesktopResources {
        cpu_millis: 1,
        memory_bytes: 1 << 20,
        ..DesktopResources::default()
    };
    for index in 0..(PLACEMENTS_PER_ENTRY * 2 + 1) {
        let mut command = create(&format!("t{index}"), Column::Planning);
        if let Command::CreateTask { resources, .. } = &mut command {
            *resources = small.clone();
        }
        log.apply(command);
    }
    let pass = engine().schedule(&log.state).unwrap();
    let sizes: Vec<usize> = pass
        .placements
        .iter()
        .map(|command| match command {
            Command::PlaceDesktops { placements } => placements.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [PLACEMENTS_PER_ENTRY, PLACEMENTS_PER_ENTRY, 1]);
}
