//! The state walk: random sequences over the whole command set (nodes
//! joining and leaving, heartbeats' status changes, cordon, drains,
//! desktops placed by the real scheduler and at random, reports true and
//! stale, migrations, tasks created, moved and deleted, tokens, projects,
//! repositories and pushes racing on refs), with the
//! invariants checked after every step and every entry applied a second
//! time to prove that changes nothing.
//!
//! `FLOTILLA_WALK_STEPS` (default 1,000) and `FLOTILLA_WALK_SEED` (default:
//! seeds 0..8) choose the walk; a failure names its seed and step so it
//! can be replayed with exactly those variables.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::testkit::request;
use super::State;
use crate::scheduler::{self, DesktopRequest, Strategy};
use crate::types::{
    Column, Command, DesktopReport, DesktopResources, DesktopState, Gpu, NodeCapacity,
    NodeRegistration, NodeStatus, NodeStatusUpdate, PendingReason, Placement, TokenKind,
    TokenRecord,
};

const NODE_IDS: u32 = 6;
const TASK_IDS: u32 = 24;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")),
    )
}

/// The same node id always registers with the same capacity (a restart of
/// the same host), so allocations never exceed a capacity that shrank
/// under them.
fn registration(node: u32) -> NodeRegistration {
    let gpus = (0..node % 3)
        .map(|index| Gpu {
            index,
            memory_bytes: 8 << 30,
            ..Gpu::default()
        })
        .collect();
    NodeRegistration {
        id: format!("n{node}"),
        name: format!("node-{node}"),
        labels: BTreeMap::from([("zone".to_owned(), format!("z{}", node % 2))]),
        capacity: NodeCapacity {
            cpu_millis: 2000 + u64::from(node) * 1000,
            memory_bytes: (8 + u64::from(node) * 4) << 30,
            disk_bytes: 0,
            desktop_slots: 1 + node % 4,
        },
        reserved: NodeCapacity::default(),
        gpus,
        agent_version: "walk".into(),
        address: String::new(),
    }
}

fn resources(rng: &mut StdRng) -> DesktopResources {
    let mut resources = DesktopResources {
        cpu_millis: [250, 1000, 2000, 5000][rng.random_range(0..4)],
        memory_bytes: [1u64 << 30, 4 << 30, 16 << 30][rng.random_range(0..3)],
        ..DesktopResources::default()
    };
    match rng.random_range(0..6) {
        0 => resources.needs_gpu = true,
        1 => resources.gpu_memory_bytes = [1u64 << 30, 6 << 30][rng.random_range(0..2)],
        2 => {
            resources
                .labels
                .insert("zone".to_owned(), format!("z{}", rng.random_range(0..3)));
        }
        _ => {}
    }
    resources
}

fn node(rng: &mut StdRng) -> String {
    format!("n{}", rng.random_range(0..NODE_IDS))
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> Option<&'a T> {
    (!items.is_empty()).then(|| &items[rng.random_range(0..items.len())])
}

/// One command drawn over the whole command set, mostly about entities
/// that exist so that most steps do something.
fn random_command(rng: &mut StdRng, state: &State, step: u64) -> Command {
    let task = format!("t{}", rng.random_range(0..TASK_IDS));
    let desktops: Vec<_> = state.desktops().cloned().collect();
    let placed: Vec<_> = desktops.iter().filter(|d| d.node_id.is_some()).collect();
    let column = Column::ALL[rng.random_range(0..Column::ALL.len())];
    match rng.random_range(0..23) {
        20 => update_refs(rng, state),
        21 => pull_command(rng, state),
        22 => llm_command(rng, state),
        0 | 1 => Command::CreateTask {
            id: task,
            title: format!("task {step}"),
            description: String::new(),
            repository: None,
            column,
            resources: resources(rng),
        },
        2 => Command::UpdateTask {
            id: task,
            title: Some(format!("renamed at {step}")),
            description: None,
            repository: Some(Some("r".into())),
        },
        3..=5 => Command::MoveTask {
            id: task,
            column,
            position: rng.random_bool(0.5).then(|| rng.random_range(0..10)),
        },
        6 => Command::DeleteTask { id: task },
        7 => Command::RegisterNode {
            registration: registration(rng.random_range(0..NODE_IDS)),
        },
        8 | 9 => Command::SetNodeStatus {
            updates: (0..rng.random_range(1..3))
                .map(|_| NodeStatusUpdate {
                    id: node(rng),
                    status: [NodeStatus::Ready, NodeStatus::Ready, NodeStatus::Down]
                        [rng.random_range(0..3)],
                })
                .collect(),
        },
        10 => Command::SetNodeEligibility {
            id: node(rng),
            eligible: rng.random_bool(0.6),
        },
        11 => Command::StartDrain {
            id: node(rng),
            deadline_ms: rng.random_range(0..2_000),
            max_parallel: rng.random_range(0..3),
        },
        12 => Command::CancelDrain { id: node(rng) },
        13 => Command::RemoveNode { id: node(rng) },
        // What the leader's scheduler would place now.
        14 | 15 => {
            let pending = state.pending_desktops(16);
            let requests: Vec<_> = pending
                .iter()
                .map(|desktop| DesktopRequest::from_desktop(desktop))
                .collect();
            let mut views = state.node_views();
            let strategy = [Strategy::Binpack, Strategy::Spread][rng.random_range(0..2)];
            let placements = scheduler::place(&mut views, &requests, strategy)
                .into_iter()
                .filter_map(|decision| match decision {
                    scheduler::Decision::Placed {
                        desktop_id,
                        node_id,
                        gpu,
                    } => Some(Placement {
                        desktop_id,
                        node_id,
                        gpu: gpu.map(|gpu| gpu as u32),
                    }),
                    scheduler::Decision::Pending { .. } => None,
                })
                .collect();
            Command::PlaceDesktops { placements }
        }
        // A stale or wrong placement: apply must refuse what does not fit.
        16 => Command::PlaceDesktops {
            placements: pick(rng, &desktops)
                .map(|desktop| Placement {
                    desktop_id: desktop.id.clone(),
                    node_id: node(rng),
                    gpu: rng.random_bool(0.3).then(|| rng.random_range(0..3)),
                })
                .into_iter()
                .collect(),
        },
        17 => match rng.random_range(0..10) {
            7 | 8 => pull_command(rng, state),
            6 => {
                let repos: Vec<_> = state.all_repos().collect();
                let (project, repo) = pick(rng, &repos)
                    .map(|repo| (repo.project.clone(), repo.name.clone()))
                    .unwrap_or(("p0".to_owned(), "r0".to_owned()));
                Command::RecordMirror {
                    project,
                    repo,
                    pushed: rng
                        .random_bool(0.7)
                        .then(|| format!("{:040x}", rng.random_range(0..4u32))),
                    error: rng.random_bool(0.3).then(|| "upstream refused".to_owned()),
                }
            }
            9 => Command::SetProjectMergeStyle {
                id: format!("p{}", rng.random_range(0..3)),
                merge_style: [
                    crate::types::MergeStyle::MergeCommit,
                    crate::types::MergeStyle::Squash,
                ][rng.random_range(0..2)],
            },
            3 => Command::CreateProject {
                id: format!("p{}", rng.random_range(0..2)),
                default_branch: "main".to_owned(),
            },
            4 => Command::CreateRepo {
                project: format!("p{}", rng.random_range(0..3)),
                name: format!("r{}", rng.random_range(0..2)),
                upstream: rng
                    .random_bool(0.7)
                    .then(|| "file:///srv/upstream.git".to_owned()),
                sealed_credential: rng.random_bool(0.5).then(|| "00".repeat(40)),
            },
            5 => update_refs(rng, state),
            0 => Command::SetPendingReasons {
                reasons: pick(rng, &desktops)
                    .map(|desktop| PendingReason {
                        desktop_id: desktop.id.clone(),
                        reason: format!("reason {}", rng.random_range(0..3)),
                    })
                    .into_iter()
                    .collect(),
            },
            1 => Command::MigrateDesktops {
                ids: pick(rng, &placed)
                    .map(|desktop| desktop.id.clone())
                    .into_iter()
                    .collect(),
            },
            _ => Command::PutToken {
                token: TokenRecord {
                    name: format!("token {step}"),
                    kind: TokenKind::Operator,
                    sha256_hex: format!("{:064x}", rng.random_range(0..4u32)),
                },
            },
        },
        // Node reports: mostly from the desktop's own node at its
        // generation, sometimes from another node or a stale generation.
        _ => {
            let Some(desktop) = pick(rng, &placed) else {
                return Command::ReportDesktops {
                    node_id: node(rng),
                    reports: Vec::new(),
                };
            };
            let own_node = desktop.node_id.clone().expect("placed");
            let fenced = rng.random_bool(0.2);
            let state = [
                DesktopState::Starting,
                DesktopState::Running,
                DesktopState::Running,
                DesktopState::Stopped,
                DesktopState::Failed,
            ][rng.random_range(0..5)];
            Command::ReportDesktops {
                node_id: if fenced { node(rng) } else { own_node },
                reports: vec![DesktopReport {
                    desktop_id: desktop.id.clone(),
                    generation: desktop
                        .generation
                        .saturating_sub(u64::from(rng.random_bool(0.1))),
                    state,
                    reason: (state == DesktopState::Failed).then(|| "it broke".to_owned()),
                }],
            }
        }
    }
}

/// A push to a repository the state has (or a missing one): refs that
/// sometimes nest, old values mostly right, sometimes stale.
fn update_refs(rng: &mut StdRng, state: &State) -> Command {
    let repos: Vec<_> = state.all_repos().collect();
    let (project, repo, refs) = match pick(rng, &repos) {
        Some(repo) => (repo.project.clone(), repo.name.clone(), repo.refs.clone()),
        None => ("p0".to_owned(), "r0".to_owned(), BTreeMap::new()),
    };
    let name = [
        "refs/heads/main",
        "refs/heads/main",
        "refs/heads/a",
        "refs/heads/a",
        "refs/heads/a/b",
    ][rng.random_range(0..5)];
    let current = refs.get(name).cloned();
    let old = if rng.random_bool(0.8) {
        current
    } else {
        Some(format!("{:040x}", rng.random_range(0..4u32)))
    };
    let new = rng
        .random_bool(0.8)
        .then(|| format!("{:040x}", rng.random_range(0..4u32)));
    Command::UpdateRefs {
        project,
        repo,
        changes: vec![crate::types::RefChange {
            name: name.to_owned(),
            old,
            new,
        }],
    }
}

/// A pull request opened, closed or merged, at the committed refs mostly,
/// sometimes stale.
/// Providers added and removed (model names sometimes taken), budgets set
/// on tasks and projects that may not exist, usage batches for live and
/// deleted tasks, some refused.
fn llm_command(rng: &mut StdRng, state: &State) -> Command {
    use crate::types::{
        Budget, BudgetScope, ModelRoute, Provider, ProviderKind, UsageRecord, UsageTotals,
    };
    let tasks: Vec<_> = state.tasks(None);
    let task_id = pick(rng, &tasks)
        .map(|task| task.id.clone())
        .unwrap_or_else(|| "gone".to_owned());
    match rng.random_range(0..5) {
        0 => {
            let kind = [
                ProviderKind::Anthropic,
                ProviderKind::OpenAi,
                ProviderKind::OpenAiCompatible,
            ][rng.random_range(0..3)];
            let models = (0..rng.random_range(1..3))
                .map(|_| {
                    (
                        format!("m{}", rng.random_range(0..4)),
                        ModelRoute {
                            upstream: "up".to_owned(),
                            price: Default::default(),
                        },
                    )
                })
                .collect();
            Command::AddProvider {
                provider: Provider {
                    name: format!("prov{}", rng.random_range(0..3)),
                    kind,
                    base_url: "http://127.0.0.1:1/v1".to_owned(),
                    models,
                    created_at_ms: 0,
                },
                sealed_key: rng.random_bool(0.5).then(|| "00".repeat(40)),
            }
        }
        1 => Command::RemoveProvider {
            name: format!("prov{}", rng.random_range(0..3)),
        },
        2 => Command::SetBudget {
            scope: if rng.random_bool(0.5) {
                BudgetScope::Task(task_id)
            } else {
                BudgetScope::Project(format!("p{}", rng.random_range(0..3)))
            },
            budget: Budget {
                max_tokens: rng.random_bool(0.5).then(|| rng.random_range(1..1000)),
                max_cost_nanos: rng.random_bool(0.3).then(|| rng.random_range(1..1000)),
            },
        },
        _ => Command::RecordUsage {
            records: (0..rng.random_range(1..4))
                .map(|_| UsageRecord {
                    task_id: task_id.clone(),
                    project: rng
                        .random_bool(0.7)
                        .then(|| format!("p{}", rng.random_range(0..3))),
                    desktop_id: "d".to_owned(),
                    provider: format!("prov{}", rng.random_range(0..3)),
                    model: format!("m{}", rng.random_range(0..4)),
                    at_ms: rng.random_range(0..4 * crate::types::HOUR_MS),
                    usage: UsageTotals {
                        calls: 1,
                        input_tokens: rng.random_range(0..100),
                        output_tokens: rng.random_range(0..100),
                        ..Default::default()
                    },
                    refused: rng.random_bool(0.1).then(|| "over budget".to_owned()),
                })
                .collect(),
        },
    }
}

fn pull_command(rng: &mut StdRng, state: &State) -> Command {
    let repos: Vec<_> = state.all_repos().collect();
    let Some(repo) = pick(rng, &repos) else {
        return Command::ClosePull {
            project: "p0".to_owned(),
            repo: "r0".to_owned(),
            number: 1,
        };
    };
    let (project, name) = (repo.project.clone(), repo.name.clone());
    if repo.upstream.is_some() && rng.random_bool(0.25) {
        return Command::RecordMirror {
            project,
            repo: name,
            pushed: rng
                .random_bool(0.7)
                .then(|| format!("{:040x}", rng.random_range(0..4u32))),
            error: rng.random_bool(0.3).then(|| "upstream refused".to_owned()),
        };
    }
    let at = |branch: &str| repo.refs.get(&format!("refs/heads/{branch}")).cloned();
    let stale = |rng: &mut StdRng, value: Option<String>| {
        if rng.random_bool(0.8) {
            value.unwrap_or_default()
        } else {
            format!("{:040x}", rng.random_range(0..4u32))
        }
    };
    // Both branches first (a push), so that pulls get opened at all.
    for branch in ["main", "a"] {
        if at(branch).is_none() {
            return Command::UpdateRefs {
                project,
                repo: name,
                changes: vec![crate::types::RefChange {
                    name: format!("refs/heads/{branch}"),
                    old: None,
                    new: Some(format!("{:040x}", rng.random_range(0..4u32))),
                }],
            };
        }
    }
    let number = rng.random_range(1..=repo.pulls_opened.max(1) + 1);
    match rng.random_range(0..4) {
        0 | 1 => Command::OpenPull {
            project,
            repo: name,
            title: "pull".to_owned(),
            task_id: None,
            source: "a".to_owned(),
            base: "main".to_owned(),
            head: stale(rng, at("a")),
            base_commit: stale(rng, at("main")),
        },
        2 => Command::ClosePull {
            project,
            repo: name,
            number,
        },
        _ => Command::MergePull {
            project,
            repo: name,
            number,
            head: stale(rng, at("a")),
            change: crate::types::RefChange {
                name: "refs/heads/main".to_owned(),
                old: at("main"),
                new: Some(format!("{:040x}", rng.random_range(0..4u32))),
            },
        },
    }
}

/// Walks `steps` random commands from seed `seed`; returns how many of
/// each kind of command changed the state.
fn walk(seed: u64, steps: u64) -> BTreeMap<&'static str, u64> {
    let mut effective = BTreeMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut state = State::default();
    let mut index = 0;
    let replay = format!("FLOTILLA_WALK_SEED={seed} FLOTILLA_WALK_STEPS={steps}");
    for step in 0..steps {
        let command = random_command(&mut rng, &state, step);
        let entry = request(&format!("{seed}-{step}"), command);
        index += 1;
        let (_, changes) = state.apply(index, &entry);
        if !changes.is_empty() {
            *effective.entry(kind(&entry.command)).or_default() += 1;
        }
        if let Err(problem) = state.verify_invariants() {
            panic!("{replay}: step {step} broke an invariant: {problem}\ncommand: {entry:?}");
        }
        // The same entry applied again (a retry, or a replica replaying
        // its log) changes nothing and answers as the first time did.
        let before = state.clone();
        index += 1;
        let (again, changes) = state.apply(index, &entry);
        assert!(
            again.duplicate && changes.is_empty() && state == before,
            "{replay}: step {step} applied twice changed the state\ncommand: {entry:?}"
        );
    }
    effective
}

fn kind(command: &Command) -> &'static str {
    match command {
        Command::CreateTask { .. } => "create_task",
        Command::UpdateTask { .. } => "update_task",
        Command::MoveTask { .. } => "move_task",
        Command::DeleteTask { .. } => "delete_task",
        Command::RegisterNode { .. } => "register_node",
        Command::SetNodeStatus { .. } => "set_node_status",
        Command::SetNodeEligibility { .. } => "set_node_eligibility",
        Command::StartDrain { .. } => "start_drain",
        Command::CancelDrain { .. } => "cancel_drain",
        Command::RemoveNode { .. } => "remove_node",
        Command::PlaceDesktops { .. } => "place_desktops",
        Command::SetPendingReasons { .. } => "set_pending_reasons",
        Command::MigrateDesktops { .. } => "migrate_desktops",
        Command::ReportDesktops { .. } => "report_desktops",
        Command::PutToken { .. } => "put_token",
        Command::CreateProject { .. } => "create_project",
        Command::CreateRepo { .. } => "create_repo",
        Command::UpdateRefs { .. } => "update_refs",
        Command::SetProjectMergeStyle { .. } => "set_project_merge_style",
        Command::OpenPull { .. } => "open_pull",
        Command::ClosePull { .. } => "close_pull",
        Command::MergePull { .. } => "merge_pull",
        Command::RecordMirror { .. } => "record_mirror",
        Command::AddProvider { .. } => "add_provider",
        Command::RemoveProvider { .. } => "remove_provider",
        Command::SetBudget { .. } => "set_budget",
        Command::RecordUsage { .. } => "record_usage",
    }
}

#[test]
fn random_walks_over_every_command_keep_the_invariants() {
    let steps = env_u64("FLOTILLA_WALK_STEPS").unwrap_or(1_000);
    let seeds: Vec<u64> = match env_u64("FLOTILLA_WALK_SEED") {
        Some(seed) => vec![seed],
        None => (0..8).collect(),
    };
    let mut effective: BTreeMap<&str, u64> = BTreeMap::new();
    for seed in seeds {
        for (kind, count) in walk(seed, steps) {
            *effective.entry(kind).or_default() += count;
        }
    }
    eprintln!("state walk: commands that changed the state: {effective:?}");
    // A walk that never reaches a command proves nothing about it. Tokens
    // change no watched entity, so they are not counted.
    if steps >= 500 {
        for kind in [
            "create_task",
            "update_task",
            "move_task",
            "delete_task",
            "register_node",
            "set_node_status",
            "set_node_eligibility",
            "start_drain",
            "cancel_drain",
            "remove_node",
            "place_desktops",
            "set_pending_reasons",
            "migrate_desktops",
            "report_desktops",
            "create_project",
            "create_repo",
            "update_refs",
            "set_project_merge_style",
            "open_pull",
            "close_pull",
            "merge_pull",
            "add_provider",
            "remove_provider",
            "set_budget",
            "record_usage",
            "record_mirror",
        ] {
            assert!(
                effective.get(kind).copied().unwrap_or(0) > 0,
                "the walk never applied {kind} with an effect: widen it"
            );
        }
    }
}
