//! Placement of desktops on nodes: pure code, no IO, no async, no clocks.
//! Given the same fleet and requests it makes the same decisions.
//!
//! Nodes are ranked by how full they are (CPU, memory and, for GPU
//! requests, GPU memory, as fractions of capacity). `binpack` takes the
//! fullest node that fits, `spread` the emptiest; equal ranks go to the
//! smaller node id. Ranks live in an ordered set that is updated after every
//! placement, so a batch costs O(log n) per desktop when most nodes fit,
//! instead of scanning the fleet for each one.
//!
//! Nothing is ever overcommitted: CPU, memory, desktop slots and each GPU's
//! memory are checked per node and per GPU. Cordoned, draining and down nodes
//! get nothing. A desktop that fits nowhere stays pending with a reason a
//! person can act on.
//!
//! The leader's fleet loop (`fleet.rs`) feeds it the replicated state and
//! commits its decisions as `PlaceDesktops` entries; applying them checks
//! each placement again with [`check_fit`].

use std::collections::{BTreeMap, BTreeSet};

use crate::types::Allocation;
use crate::types::{Desktop, Node};

pub use crate::types::NodeStatus as NodeHealth;

/// Resource amounts. CPU in millicores, memory in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

/// One GPU of a node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuView {
    pub name: String,
    pub memory_bytes: u64,
    pub allocated_bytes: u64,
}

/// A node with what is already allocated on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub id: String,
    /// For messages people read.
    pub name: String,
    pub health: NodeHealth,
    /// False when cordoned (or drained with `--disable` not yet given).
    pub eligible: bool,
    pub draining: bool,
    pub capacity: Resources,
    pub allocated: Resources,
    pub desktop_slots: u32,
    pub desktops: u32,
    pub gpus: Vec<GpuView>,
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    /// A replicated node and what is allocated on it.
    pub fn from_node(node: &Node, allocation: Option<&Allocation>) -> NodeView {
        let gpu_allocated = |index: usize| {
            allocation
                .and_then(|allocation| allocation.gpu_memory_bytes.get(index).copied())
                .unwrap_or(0)
        };
        NodeView {
            id: node.id.clone(),
            name: node.name.clone(),
            health: node.status,
            eligible: node.eligible,
            draining: node.drain.is_some(),
            capacity: Resources {
                cpu_millis: node.capacity.cpu_millis,
                memory_bytes: node.capacity.memory_bytes,
            },
            allocated: Resources {
                cpu_millis: allocation.map_or(0, |a| a.cpu_millis),
                memory_bytes: allocation.map_or(0, |a| a.memory_bytes),
            },
            desktop_slots: node.capacity.desktop_slots,
            desktops: allocation.map_or(0, |a| a.desktops.len() as u32),
            gpus: node
                .gpus
                .iter()
                .enumerate()
                .map(|(index, gpu)| GpuView {
                    name: format!("gpu-{index}"),
                    memory_bytes: gpu.memory_bytes,
                    allocated_bytes: gpu_allocated(index),
                })
                .collect(),
            labels: node.labels.clone(),
        }
    }
}

/// What one desktop needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesktopRequest {
    pub desktop_id: String,
    pub resources: Resources,
    /// Needs a GPU with this much free memory (0 with `needs_gpu` means any
    /// GPU will do).
    pub gpu_memory_bytes: u64,
    pub needs_gpu: bool,
    /// Labels the node must carry, with these values.
    pub labels: BTreeMap<String, String>,
}

impl DesktopRequest {
    pub fn from_desktop(desktop: &Desktop) -> DesktopRequest {
        DesktopRequest {
            desktop_id: desktop.id.clone(),
            resources: Resources {
                cpu_millis: desktop.resources.cpu_millis,
                memory_bytes: desktop.resources.memory_bytes,
            },
            gpu_memory_bytes: desktop.resources.gpu_memory_bytes,
            needs_gpu: desktop.resources.needs_gpu,
            labels: desktop.resources.labels.clone(),
        }
    }

    fn wants_gpu(&self) -> bool {
        self.needs_gpu || self.gpu_memory_bytes > 0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    #[default]
    Binpack,
    Spread,
}

/// The scheduler's answer for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Placed {
        desktop_id: String,
        node_id: String,
        /// Index into the node's GPUs, for GPU requests.
        gpu: Option<usize>,
    },
    Pending {
        desktop_id: String,
        reason: String,
    },
}

/// Scale of a fullness fraction: integer ranks keep ordering exact.
const RANK_SCALE: u128 = 1_000_000;

fn fraction(used: u64, capacity: u64) -> u64 {
    if capacity == 0 {
        return RANK_SCALE as u64;
    }
    u64::try_from(u128::from(used) * RANK_SCALE / u128::from(capacity)).unwrap_or(RANK_SCALE as u64)
}

/// How full a node is: the mean of its CPU, memory and GPU-memory fractions.
fn fullness(node: &NodeView) -> u64 {
    let gpu_capacity: u64 = node.gpus.iter().map(|gpu| gpu.memory_bytes).sum();
    let gpu_allocated: u64 = node.gpus.iter().map(|gpu| gpu.allocated_bytes).sum();
    let mut total = fraction(node.allocated.cpu_millis, node.capacity.cpu_millis)
        + fraction(node.allocated.memory_bytes, node.capacity.memory_bytes);
    let mut parts = 2;
    if gpu_capacity > 0 {
        total += fraction(gpu_allocated, gpu_capacity);
        parts += 1;
    }
    total / parts
}

fn schedulable(node: &NodeView) -> bool {
    node.health == NodeHealth::Ready && node.eligible && !node.draining
}

/// The GPU of `node` that `request` should use, if any fits.
fn pick_gpu(node: &NodeView, request: &DesktopRequest, strategy: Strategy) -> Option<usize> {
    let fitting = node.gpus.iter().enumerate().filter(|(_, gpu)| {
        gpu.memory_bytes.saturating_sub(gpu.allocated_bytes) >= request.gpu_memory_bytes
    });
    let free = |gpu: &GpuView| gpu.memory_bytes.saturating_sub(gpu.allocated_bytes);
    match strategy {
        // Fullest GPU that fits (least free), then lowest index.
        Strategy::Binpack => fitting.min_by_key(|(index, gpu)| (free(gpu), *index)),
        // Emptiest GPU, then lowest index.
        Strategy::Spread => fitting.min_by_key(|(index, gpu)| (u64::MAX - free(gpu), *index)),
    }
    .map(|(index, _)| index)
}

/// Whether `request` fits on `node`; the GPU to use when it asks for one.
fn fits(node: &NodeView, request: &DesktopRequest, strategy: Strategy) -> Option<Option<usize>> {
    let cpu_free = node
        .capacity
        .cpu_millis
        .saturating_sub(node.allocated.cpu_millis);
    let memory_free = node
        .capacity
        .memory_bytes
        .saturating_sub(node.allocated.memory_bytes);
    if node.desktops >= node.desktop_slots
        || request.resources.cpu_millis > cpu_free
        || request.resources.memory_bytes > memory_free
        || request
            .labels
            .iter()
            .any(|(key, value)| node.labels.get(key) != Some(value))
    {
        return None;
    }
    if request.wants_gpu() {
        return pick_gpu(node, request, strategy).map(Some);
    }
    Some(None)
}

/// Why a placement does not fit; the text becomes the desktop's pending
/// reason, which people read on the board.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    #[error("node {node} is not ready and eligible")]
    NotSchedulable { node: String },
    #[error("node {node} has no room left for it")]
    NoRoom { node: String },
    #[error("a GPU was chosen for a desktop that asks for none")]
    UnwantedGpu,
    #[error("the desktop needs a GPU and none was chosen")]
    NoGpuChosen,
    #[error("gpu-{index} of node {node} has not enough free memory")]
    GpuMemory { node: String, index: usize },
    #[error("node {node} has no gpu-{index}")]
    NoSuchGpu { node: String, index: usize },
}

/// Checks that placing `request` on `node` (charged to `gpu`) overcommits
/// nothing and respects the node's state; says what is wrong otherwise.
/// Applying a placement calls this, so a decision made on stale state can
/// never overcommit.
pub fn check_fit(
    node: &NodeView,
    request: &DesktopRequest,
    gpu: Option<usize>,
) -> Result<(), FitError> {
    let node_name = || node.name.clone();
    if !schedulable(node) {
        return Err(FitError::NotSchedulable { node: node_name() });
    }
    let mut resources_only = request.clone();
    resources_only.needs_gpu = false;
    resources_only.gpu_memory_bytes = 0;
    if fits(node, &resources_only, Strategy::Binpack).is_none() {
        return Err(FitError::NoRoom { node: node_name() });
    }
    match (request.wants_gpu(), gpu) {
        (false, None) => Ok(()),
        (false, Some(_)) => Err(FitError::UnwantedGpu),
        (true, None) => Err(FitError::NoGpuChosen),
        (true, Some(index)) => match node.gpus.get(index) {
            Some(gpu)
                if gpu.memory_bytes.saturating_sub(gpu.allocated_bytes)
                    >= request.gpu_memory_bytes =>
            {
                Ok(())
            }
            Some(_) => Err(FitError::GpuMemory {
                node: node_name(),
                index,
            }),
            None => Err(FitError::NoSuchGpu {
                node: node_name(),
                index,
            }),
        },
    }
}

/// Places `requests` in order onto `nodes`, updating `nodes` with what it
/// allocated. Deterministic for equal inputs.
pub fn place(
    nodes: &mut [NodeView],
    requests: &[DesktopRequest],
    strategy: Strategy,
) -> Vec<Decision> {
    // Order nodes by (rank, id): binpack wants the fullest first, so its rank
    // is inverted fullness.
    let rank = |node: &NodeView| match strategy {
        Strategy::Binpack => RANK_SCALE as u64 - fullness(node).min(RANK_SCALE as u64),
        Strategy::Spread => fullness(node),
    };
    let mut order: BTreeSet<(u64, &str, usize)> = BTreeSet::new();
    let mut ranks = vec![0u64; nodes.len()];
    for (index, node) in nodes.iter().enumerate() {
        if schedulable(node) {
            ranks[index] = rank(node);
        }
    }
    // Ids are borrowed from a snapshot so `nodes` can be mutated below.
    let ids: Vec<String> = nodes.iter().map(|node| node.id.clone()).collect();
    // A node without a free slot can take nothing: leaving it out keeps
    // binpack from walking past every full node for every desktop.
    for (index, node) in nodes.iter().enumerate() {
        if schedulable(node) && node.desktops < node.desktop_slots {
            order.insert((ranks[index], ids[index].as_str(), index));
        }
    }

    let mut decisions = Vec::with_capacity(requests.len());
    for request in requests {
        let chosen = order.iter().find_map(|&(_, _, index)| {
            fits(&nodes[index], request, strategy).map(|gpu| (index, gpu))
        });
        match chosen {
            Some((index, gpu)) => {
                order.remove(&(ranks[index], ids[index].as_str(), index));
                let node = &mut nodes[index];
                node.allocated.cpu_millis += request.resources.cpu_millis;
                node.allocated.memory_bytes += request.resources.memory_bytes;
                node.desktops += 1;
                if let Some(gpu) = gpu {
                    node.gpus[gpu].allocated_bytes += request.gpu_memory_bytes;
                }
                ranks[index] = rank(node);
                if node.desktops < node.desktop_slots {
                    order.insert((ranks[index], ids[index].as_str(), index));
                }
                decisions.push(Decision::Placed {
                    desktop_id: request.desktop_id.clone(),
                    node_id: node.id.clone(),
                    gpu,
                });
            }
            None => decisions.push(Decision::Pending {
                desktop_id: request.desktop_id.clone(),
                reason: unplaceable_reason(nodes, request),
            }),
        }
    }
    decisions
}

fn gib(bytes: u64) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    if gib.fract() == 0.0 {
        format!("{gib:.0} GiB")
    } else {
        format!("{gib:.1} GiB")
    }
}

/// Says why `request` fits nowhere, naming the closest miss.
pub fn unplaceable_reason(nodes: &[NodeView], request: &DesktopRequest) -> String {
    let candidates: Vec<&NodeView> = nodes.iter().filter(|node| schedulable(node)).collect();
    if candidates.is_empty() {
        return "no node is ready and eligible (all are down, cordoned or draining)".to_owned();
    }
    let labelled: Vec<&NodeView> = candidates
        .iter()
        .copied()
        .filter(|node| {
            request
                .labels
                .iter()
                .all(|(key, value)| node.labels.get(key) == Some(value))
        })
        .collect();
    if labelled.is_empty() {
        let wanted: Vec<String> = request
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        return format!("no eligible node has the labels {}", wanted.join(", "));
    }
    if labelled
        .iter()
        .all(|node| node.desktops >= node.desktop_slots)
    {
        return "every eligible node has all its desktop slots in use".to_owned();
    }
    if request.wants_gpu() {
        let largest = labelled
            .iter()
            .flat_map(|node| {
                node.gpus.iter().map(move |gpu| {
                    (
                        gpu.memory_bytes.saturating_sub(gpu.allocated_bytes),
                        node,
                        gpu,
                    )
                })
            })
            .max_by_key(|(free, node, _)| (*free, std::cmp::Reverse(node.id.clone())));
        match largest {
            None => return "no eligible node has a GPU".to_owned(),
            Some((free, node, gpu)) if free < request.gpu_memory_bytes => {
                return format!(
                    "no node has {} free GPU memory (largest free: {} on {} of {})",
                    gib(request.gpu_memory_bytes),
                    gib(free),
                    gpu.name,
                    node.name
                )
            }
            Some(_) => {}
        }
    }
    let (free_memory, memory_node) = largest_free(&labelled, |node| {
        node.capacity
            .memory_bytes
            .saturating_sub(node.allocated.memory_bytes)
    });
    if free_memory < request.resources.memory_bytes {
        return format!(
            "no node has {} free memory (largest free: {} on {memory_node})",
            gib(request.resources.memory_bytes),
            gib(free_memory)
        );
    }
    let (free_cpu, cpu_node) = largest_free(&labelled, |node| {
        node.capacity
            .cpu_millis
            .saturating_sub(node.allocated.cpu_millis)
    });
    if free_cpu < request.resources.cpu_millis {
        return format!(
            "no node has {} free CPU millicores (largest free: {free_cpu} on {cpu_node})",
            request.resources.cpu_millis
        );
    }
    "no single node has enough CPU, memory, slots and GPU memory free at once".to_owned()
}

/// The largest `free` amount among `nodes` (not empty), and whose it is;
/// equal amounts go to the smaller node id.
fn largest_free<'a>(nodes: &[&'a NodeView], free: impl Fn(&NodeView) -> u64) -> (u64, &'a str) {
    nodes
        .iter()
        .map(|node| (free(node), node.id.as_str(), node.name.as_str()))
        .max_by_key(|(amount, id, _)| (*amount, std::cmp::Reverse(*id)))
        .map(|(amount, _, name)| (amount, name))
        .expect("callers pass at least one node")
}
