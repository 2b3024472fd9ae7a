//! The process runtime's own tests: plain processes started, stopped,
//! killed after the grace, journaled; as root, cgroup limits (OOM kill,
//! pids limit). Sandboxes are tested end to end in `tests/`.

use std::time::{Duration, Instant};

use super::*;
use crate::sandbox::cgroup::Scope;
use crate::test_support::{require_root, skip_or_fail};

#[test]
fn a_profile_overrides_the_nodes_session_part_by_part() {
    let session = SessionCommand {
        program: vec!["session".to_owned()],
        apps: vec!["foot".to_owned(), "chromium --x".to_owned()],
        keyboard_layout: "de".to_owned(),
        keyboard_variant: "nodeadkeys".to_owned(),
    };
    assert_eq!(
        session.command(&Profile::default()).join(" "),
        "session --app foot --app chromium --x --keyboard-layout de --keyboard-variant nodeadkeys"
    );
    // Its own apps replace the node's; its layout comes with its own
    // variant (none here), not the node's.
    let profile = Profile {
        apps: vec!["zed".to_owned()],
        keyboard_layout: "fr".to_owned(),
        keyboard_variant: String::new(),
    };
    assert_eq!(
        session.command(&profile).join(" "),
        "session --app zed --keyboard-layout fr"
    );
}

fn spec(id: &str, generation: u64) -> DesktopSpec {
    DesktopSpec {
        token: String::new(),
        repository: String::new(),
        profile: Profile::default(),
        desktop_id: id.to_owned(),
        task_id: "t".to_owned(),
        generation,
        cpu_millis: 250,
        memory_bytes: 1 << 30,
        gpu_memory_bytes: 0,
        gpu: None,
        egress: Egress::default(),
    }
}

fn wait_for(runtime: &mut ProcessRuntime, id: &str, phase: &str) -> Observed {
    for _ in 0..200 {
        if let Some(observed) = runtime
            .poll()
            .into_iter()
            .find(|observed| observed.desktop_id == id && observed.phase.as_str() == phase)
        {
            return observed;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{id} never became {phase}");
}

#[test]
fn starts_stops_and_journals_processes() {
    let dir = tempfile::tempdir().unwrap();
    let command = vec!["sleep".to_owned(), "1000".to_owned()];
    let mut runtime =
        ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(5)).unwrap();
    runtime.start(&spec("d1", 7)).unwrap();
    assert!(runtime.start(&spec("d1", 7)).is_err(), "no double start");
    let running = wait_for(&mut runtime, "d1", "running");
    assert_eq!(running.generation, 7);
    runtime.stop("d1");
    wait_for(&mut runtime, "d1", "stopped");
    runtime.forget("d1");
    assert!(runtime.poll().is_empty());
    let journal = std::fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
    let events: Vec<serde_json::Value> = journal
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event"], "started");
    assert_eq!(events[1]["event"], "stopped");
    assert!(events[1]["monotonic_ns"].as_u64() > events[0]["monotonic_ns"].as_u64());
}

#[test]
fn a_desktop_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let trapped = dir.path().join("trapped");
    let command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        format!("trap '' TERM; : > {}; sleep 1000 & wait", trapped.display()),
    ];
    let mut runtime =
        ProcessRuntime::new("n1", dir.path(), command, Duration::from_millis(200)).unwrap();
    runtime.start(&spec("d1", 1)).unwrap();
    // Stopped only once its shell ignores SIGTERM (else the stop would
    // not need the kill after the grace).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !trapped.exists() {
        assert!(Instant::now() < deadline, "the desktop never set its trap");
        std::thread::sleep(Duration::from_millis(10));
    }
    runtime.stop("d1");
    wait_for(&mut runtime, "d1", "stopped");
}

/// The host's cgroups for a test, or `None` (with a message) when this
/// is not root on a host with cgroup controllers.
fn test_scope(test: &str) -> Option<Scope> {
    if !require_root(test) {
        return None;
    }
    match crate::sandbox::cgroup::detect_host() {
        Ok(hierarchy) => Some(
            hierarchy
                .scope(&format!("{test}-{}", std::process::id()))
                .unwrap(),
        ),
        Err(error) => {
            skip_or_fail(test, format_args!("the host's cgroups ({error})"));
            None
        }
    }
}

#[test]
fn a_memory_hog_is_oom_killed_and_reported() {
    let Some(scope) = test_scope("oom") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "x=aaaaaaaa; while true; do x=\"$x$x\"; done".to_owned(),
    ];
    let mut runtime = ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(1))
        .unwrap()
        .with_cgroups(scope.clone(), 64);
    let mut small = spec("hog", 1);
    small.memory_bytes = 32 << 20;
    runtime.start(&small).unwrap();
    let failed = wait_for(&mut runtime, "hog", "failed");
    assert!(
        matches!(&failed.phase, Phase::Failed(reason) if reason.contains("out of memory")),
        "{failed:?}"
    );
    assert!(scope.existing().is_empty(), "its cgroup is gone");
    drop(runtime);
    scope.remove_if_empty();
}

#[test]
fn a_fork_bomb_is_held_by_the_pids_limit() {
    let Some(scope) = test_scope("pids") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // bash retries a failed fork for a while, so the bomb sits at the
    // limit long enough to be seen there.
    let command = vec![
        "bash".to_owned(),
        "-c".to_owned(),
        "i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done 2>/dev/null; wait".to_owned(),
    ];
    let mut runtime = ProcessRuntime::new("n1", dir.path(), command, Duration::from_secs(1))
        .unwrap()
        .with_cgroups(scope.clone(), 32);
    runtime.start(&spec("bomb", 1)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut most = 0;
    loop {
        let observed = runtime.poll();
        let pids = observed.first().map_or(0, |o| o.usage.pids);
        most = most.max(pids);
        assert!(pids <= 32, "{pids} processes despite a limit of 32");
        if most == 32 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(most, 32, "the bomb filled its limit and no more");
    runtime.stop("bomb");
    wait_for(&mut runtime, "bomb", "stopped");
    assert!(
        scope.existing().is_empty(),
        "every process and the cgroup are gone"
    );
    drop(runtime);
    scope.remove_if_empty();
}

#[test]
fn an_exiting_desktop_is_reported_failed_and_a_bad_command_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut runtime = ProcessRuntime::new(
        "n1",
        dir.path(),
        vec!["false".to_owned()],
        Duration::from_secs(1),
    )
    .unwrap();
    runtime.start(&spec("d1", 1)).unwrap();
    let failed = wait_for(&mut runtime, "d1", "failed");
    assert!(matches!(failed.phase, Phase::Failed(reason) if reason.contains("exit")));
    let mut missing = ProcessRuntime::new(
        "n1",
        dir.path(),
        vec!["/nonexistent/desktop".to_owned()],
        Duration::from_secs(1),
    )
    .unwrap();
    assert!(missing.start(&spec("d2", 1)).is_err());
}
