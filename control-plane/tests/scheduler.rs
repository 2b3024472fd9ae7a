//! The scheduler against random fleets and request streams (proptest), an
//! independent brute-force check of every decision, and crafted cases.

use std::collections::BTreeMap;

use flotilla_control_plane::scheduler::{
    check_fit, place, Decision, DesktopRequest, GpuView, NodeHealth, NodeView, Resources,
    Strategy as Placement,
};
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn node(id: &str, cpu_millis: u64, memory_gib: u64, gpus: &[u64]) -> NodeView {
    NodeView {
        id: id.to_owned(),
        name: id.to_owned(),
        health: NodeHealth::Ready,
        eligible: true,
        draining: false,
        capacity: Resources {
            cpu_millis,
            memory_bytes: memory_gib * GIB,
        },
        allocated: Resources::default(),
        desktop_slots: 100,
        desktops: 0,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(index, memory_gib)| GpuView {
                name: format!("gpu-{index}"),
                memory_bytes: memory_gib * GIB,
                allocated_bytes: 0,
            })
            .collect(),
        labels: BTreeMap::new(),
    }
}

fn request(id: &str, cpu_millis: u64, memory_gib: u64, gpu_gib: u64) -> DesktopRequest {
    DesktopRequest {
        desktop_id: id.to_owned(),
        resources: Resources {
            cpu_millis,
            memory_bytes: memory_gib * GIB,
        },
        gpu_memory_bytes: gpu_gib * GIB,
        needs_gpu: gpu_gib > 0,
        labels: BTreeMap::new(),
    }
}

fn placed_on(decisions: &[Decision]) -> Vec<String> {
    decisions
        .iter()
        .map(|decision| match decision {
            Decision::Placed { node_id, .. } => node_id.clone(),
            Decision::Pending { reason, .. } => format!("pending: {reason}"),
        })
        .collect()
}

#[test]
fn binpack_fills_one_node_spread_uses_all() {
    let fleet = vec![
        node("a", 4000, 16, &[]),
        node("b", 4000, 16, &[]),
        node("c", 4000, 16, &[]),
    ];
    let requests: Vec<_> = (0..3)
        .map(|i| request(&format!("d{i}"), 1000, 2, 0))
        .collect();
    let binpack = place(&mut fleet.clone(), &requests, Placement::Binpack);
    assert_eq!(placed_on(&binpack), ["a", "a", "a"]);
    let spread = place(&mut fleet.clone(), &requests, Placement::Spread);
    assert_eq!(placed_on(&spread), ["a", "b", "c"]);
}

#[test]
fn gpu_requests_never_overcommit_a_gpu_and_say_why_they_wait() {
    let mut fleet = vec![
        node("gpu-host-1", 64000, 256, &[8, 8]),
        node("gpu-host-2", 64000, 256, &[6]),
    ];
    let requests = [
        request("a", 1000, 4, 8),
        request("b", 1000, 4, 8),
        request("c", 1000, 4, 8),
    ];
    let decisions = place(&mut fleet, &requests, Placement::Binpack);
    assert!(
        matches!(&decisions[0], Decision::Placed { node_id, gpu: Some(_), .. } if node_id == "gpu-host-1")
    );
    assert!(
        matches!(&decisions[1], Decision::Placed { node_id, gpu: Some(_), .. } if node_id == "gpu-host-1")
    );
    let Decision::Pending { reason, .. } = &decisions[2] else {
        panic!("a third 8 GiB desktop cannot fit: {decisions:?}");
    };
    assert_eq!(
        reason,
        "no node has 8 GiB free GPU memory (largest free: 6 GiB on gpu-0 of gpu-host-2)"
    );
    assert!(fleet[0]
        .gpus
        .iter()
        .all(|gpu| gpu.allocated_bytes == 8 * GIB));
}

#[test]
fn unschedulable_nodes_get_nothing_and_the_reason_says_so() {
    let mut fleet = vec![
        node("a", 4000, 16, &[]),
        node("b", 4000, 16, &[]),
        node("c", 4000, 16, &[]),
    ];
    fleet[0].eligible = false;
    fleet[1].draining = true;
    fleet[2].health = NodeHealth::Down;
    let decisions = place(&mut fleet, &[request("d", 100, 1, 0)], Placement::Binpack);
    assert_eq!(
        placed_on(&decisions),
        ["pending: no node is ready and eligible (all are down, cordoned or draining)"]
    );
}

#[test]
fn labels_constrain_placement() {
    let mut fleet = vec![node("a", 4000, 16, &[]), node("b", 4000, 16, &[])];
    fleet[1].labels.insert("zone".into(), "west".into());
    let mut wants_west = request("d", 100, 1, 0);
    wants_west.labels.insert("zone".into(), "west".into());
    let mut wants_east = request("e", 100, 1, 0);
    wants_east.labels.insert("zone".into(), "east".into());
    let decisions = place(&mut fleet, &[wants_west, wants_east], Placement::Binpack);
    assert_eq!(
        placed_on(&decisions),
        ["b", "pending: no eligible node has the labels zone=east"]
    );
}

/// Independent, naive feasibility check of one request on one node.
fn naive_fits(node: &NodeView, request: &DesktopRequest) -> bool {
    let schedulable = node.health == NodeHealth::Ready && node.eligible && !node.draining;
    let gpu_ok = !(request.needs_gpu || request.gpu_memory_bytes > 0)
        || node
            .gpus
            .iter()
            .any(|gpu| gpu.memory_bytes - gpu.allocated_bytes >= request.gpu_memory_bytes);
    schedulable
        && node.desktops < node.desktop_slots
        && node.capacity.cpu_millis - node.allocated.cpu_millis >= request.resources.cpu_millis
        && node.capacity.memory_bytes - node.allocated.memory_bytes
            >= request.resources.memory_bytes
        && request
            .labels
            .iter()
            .all(|(k, v)| node.labels.get(k) == Some(v))
        && gpu_ok
}

fn arb_node(index: usize) -> impl Strategy<Value = NodeView> {
    (
        1u64..=64,
        1u64..=256,
        prop::collection::vec(0u64..=80, 0..4),
        0u8..10,
        1u32..=12,
        prop::bool::ANY,
    )
        .prop_map(move |(cores, memory_gib, gpus, health, slots, west)| {
            let mut view = node(&format!("node-{index:03}"), cores * 1000, memory_gib, &gpus);
            match health {
                0 => view.health = NodeHealth::Down,
                1 => view.eligible = false,
                2 => view.draining = true,
                3 => view.health = NodeHealth::Initializing,
                _ => {}
            }
            view.desktop_slots = slots;
            if west {
                view.labels.insert("zone".into(), "west".into());
            }
            view
        })
}

fn arb_fleet() -> impl Strategy<Value = Vec<NodeView>> {
    (1usize..=25).prop_flat_map(|count| (0..count).map(arb_node).collect::<Vec<_>>())
}

fn arb_requests() -> impl Strategy<Value = Vec<DesktopRequest>> {
    prop::collection::vec(
        (0u64..=16_000, 0u64..=64, 0u64..=40, prop::bool::ANY),
        1..80,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(index, (cpu, memory, gpu, west))| {
                let mut desktop = request(&format!("desktop-{index}"), cpu, memory, gpu);
                if west && index % 3 == 0 {
                    desktop.labels.insert("zone".into(), "west".into());
                }
                desktop
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn no_overcommit_no_wrong_node_no_missed_fit_and_deterministic(
        fleet in arb_fleet(),
        requests in arb_requests(),
        spread in prop::bool::ANY,
    ) {
        let strategy = if spread { Placement::Spread } else { Placement::Binpack };
        let mut nodes = fleet.clone();
        let decisions = place(&mut nodes, &requests, strategy);
        prop_assert_eq!(decisions.len(), requests.len());

        // Replay the decisions on a fresh copy, checking each against the
        // state it was made in.
        let mut replay = fleet.clone();
        for (request, decision) in requests.iter().zip(&decisions) {
            match decision {
                Decision::Placed { node_id, gpu, desktop_id } => {
                    prop_assert_eq!(desktop_id, &request.desktop_id);
                    let node = replay.iter_mut().find(|n| &n.id == node_id).expect("placed on a known node");
                    prop_assert!(naive_fits(node, request), "placed where it does not fit");
                    // The apply-time check agrees with the scheduler.
                    prop_assert_eq!(check_fit(node, request, *gpu), Ok(()));
                    node.allocated.cpu_millis += request.resources.cpu_millis;
                    node.allocated.memory_bytes += request.resources.memory_bytes;
                    node.desktops += 1;
                    let wants_gpu = request.needs_gpu || request.gpu_memory_bytes > 0;
                    prop_assert_eq!(gpu.is_some(), wants_gpu);
                    if let Some(gpu) = gpu {
                        let gpu = &mut node.gpus[*gpu];
                        prop_assert!(gpu.memory_bytes - gpu.allocated_bytes >= request.gpu_memory_bytes);
                        gpu.allocated_bytes += request.gpu_memory_bytes;
                    }
                }
                Decision::Pending { reason, .. } => {
                    prop_assert!(!reason.is_empty());
                    // Apply would refuse every placement of it, too.
                    for node in &replay {
                        let wants_gpu = request.needs_gpu || request.gpu_memory_bytes > 0;
                        let choices: Vec<Option<usize>> = if wants_gpu {
                            (0..node.gpus.len()).map(Some).collect()
                        } else {
                            vec![None]
                        };
                        for gpu in choices {
                            prop_assert!(check_fit(node, request, gpu).is_err(), "apply accepts what the scheduler left pending");
                        }
                    }
                    prop_assert!(
                        replay.iter().all(|node| !naive_fits(node, request)),
                        "left pending although a node fits"
                    );
                }
            }
        }
        // The scheduler's own bookkeeping matches the replay.
        prop_assert_eq!(&nodes, &replay);
        for node in &replay {
            prop_assert!(node.allocated.cpu_millis <= node.capacity.cpu_millis);
            prop_assert!(node.allocated.memory_bytes <= node.capacity.memory_bytes);
            prop_assert!(node.desktops <= node.desktop_slots);
            for gpu in &node.gpus {
                prop_assert!(gpu.allocated_bytes <= gpu.memory_bytes);
            }
        }
        // Same inputs, same answers.
        let again = place(&mut fleet.clone(), &requests, strategy);
        prop_assert_eq!(again, decisions);
    }
}

#[test]
fn memory_and_cpu_shortfalls_name_the_closest_node() {
    let mut fleet = vec![node("a", 4000, 16, &[]), node("b", 8000, 32, &[])];
    let decisions = place(
        &mut fleet,
        &[request("big", 1000, 64, 0), request("busy", 9000, 1, 0)],
        Placement::Binpack,
    );
    assert_eq!(
        placed_on(&decisions),
        [
            "pending: no node has 64 GiB free memory (largest free: 32 GiB on b)",
            "pending: no node has 9000 free CPU millicores (largest free: 8000 on b)",
        ]
    );
}
