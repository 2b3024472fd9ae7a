//! `flotilla-bench placement`: placements per second end to end through a
//! real three-server cluster, for 100,000 desktops onto 5,000 simulated
//! nodes, with p50/p99 from request to committed placement.
//!
//! How nodes are simulated: this process registers 5,000 nodes over the
//! real node gRPC API (`Register`, then one `Heartbeat` each so the leader
//! marks them ready) — the leader sees exactly what real agents would send.
//! The simulated nodes do not watch their assignments or run desktops: the
//! figure is the control plane's (admission, scheduling, replication,
//! apply). At 5,000 nodes the heartbeat lease is 400 s (50 heartbeats/s
//! fleet-wide), longer than a run, so no further heartbeats are needed.
//!
//! Load: tasks are created directly in `planning` (each requests a desktop
//! of 1 core, 8 GiB, 8 GiB GPU memory) through `POST /api/v1/tasks/batch`,
//! 1,000 per request, several requests in flight. Latency of a desktop is
//! from the moment its batch was sent to the moment the placement is seen
//! on the leader's change feed (`GET /api/v1/watch`, after commit and
//! apply). Throughput is desktops placed over the span from the first
//! request to the last placement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_proto::node as pb;
use flotilla_proto::node::node_agent_client::NodeAgentClient;
use flotilla_tests::{ServerFlags, TestCluster};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::{flotilla_leader_addr, millis, percentile};

const GIB: u64 = 1 << 30;

#[derive(clap::Args)]
pub struct PlacementArgs {
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    #[arg(long, default_value_t = 100_000)]
    desktops: usize,
    /// Tasks per batch request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Batch requests in flight.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
}

fn request<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII token"),
    );
    request
}

async fn simulate_nodes(leader: &str, token: &str, count: usize) -> anyhow::Result<()> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{leader}"))?
        .connect()
        .await
        .context("connect to the leader")?;
    let started = Instant::now();
    let mut work = futures::stream::iter(0..count)
        .map(|index| {
            let mut client = NodeAgentClient::new(channel.clone());
            let token = token.to_owned();
            async move {
                let node_id = format!("sim-{index:05}");
                let registration = pb::RegisterRequest {
                    node_id: node_id.clone(),
                    name: node_id.clone(),
                    labels: Default::default(),
                    capacity: Some(pb::Capacity {
                        cpu_millis: 32_000,
                        memory_bytes: 256 * GIB,
                        disk_bytes: 2048 * GIB,
                        desktop_slots: 32,
                    }),
                    reserved: Some(pb::Capacity::default()),
                    gpus: (0..8)
                        .map(|gpu| pb::Gpu {
                            index: gpu,
                            name: "simulated H100".to_owned(),
                            vendor_id: 0x10de,
                            device_id: 0x2330,
                            driver: "simulated".to_owned(),
                            uuid: format!("{index:08x}-0000-0000-0000-{gpu:012x}"),
                            memory_bytes: 80 * GIB,
                            cpu_implementation: false,
                            capabilities: None,
                        })
                        .collect(),
                    agent_version: "bench".to_owned(),
                };
                // Retried as a real agent does while the leader settles.
                let mut attempts = 0;
                loop {
                    let registered = client.register(request(registration.clone(), &token)).await;
                    let result = match registered {
                        Ok(_) => client
                            .heartbeat(request(
                                pb::HeartbeatRequest {
                                    node_id: node_id.clone(),
                                    desktops: Vec::new(),
                                },
                                &token,
                            ))
                            .await
                            .map(|_| ()),
                        Err(status) => Err(status),
                    };
                    match result {
                        Ok(()) => return Ok::<(), tonic::Status>(()),
                        Err(status)
                            if status.code() == tonic::Code::Unavailable && attempts < 50 =>
                        {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => return Err(status),
                    }
                }
            }
        })
        .buffer_unordered(256);
    while let Some(result) = work.next().await {
        result.context("register a simulated node")?;
    }
    println!(
        "registered {count} simulated nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Follows the leader's change feed and notes when each task's desktop
/// was placed.
fn watch_placements(
    http: reqwest::Client,
    url: String,
    token: String,
    placed: Arc<Mutex<HashMap<String, Instant>>>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let response = http.get(&url).bearer_auth(&token).send().await?;
        if !response.status().is_success() {
            bail!("watch: HTTP {}", response.status());
        }
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(chunk) = body.next().await {
            buffer.extend_from_slice(&chunk?);
            while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=end).collect();
                let Some(data) = line.strip_prefix(b"data: ") else {
                    continue;
                };
                let change: Value = match serde_json::from_slice(data) {
                    Ok(change) => change,
                    Err(_) => continue,
                };
                if change["kind"] == "desktop_put" && change["desktop"]["node_id"].is_string() {
                    if let Some(task) = change["desktop"]["task_id"].as_str() {
                        placed
                            .lock()
                            .expect("not poisoned")
                            .entry(task.to_owned())
                            .or_insert_with(Instant::now);
                    }
                }
            }
        }
        Ok(())
    })
}

pub async fn run(args: PlacementArgs) -> anyhow::Result<()> {
    let flags = ServerFlags(
        ["--snapshot-every", "200000", "--keep-logs", "50000"]
            .map(str::to_owned)
            .to_vec(),
    );
    let cluster = TestCluster::start(3, flags).await?;
    let leader = flotilla_leader_addr(&cluster).await?;
    let node_token = std::fs::read_to_string(cluster.servers[0].data_dir.join("node-join.token"))?
        .trim()
        .to_owned();
    simulate_nodes(&leader, &node_token, args.nodes).await?;
    let outcome = measure(&args, &cluster, &leader).await;
    if outcome.is_err() {
        eprintln!("{}", cluster.logs());
    }
    outcome
}

async fn measure(args: &PlacementArgs, cluster: &TestCluster, leader: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()?;
    let placed = Arc::new(Mutex::new(HashMap::with_capacity(args.desktops)));
    let watcher = watch_placements(
        http.clone(),
        format!("http://{leader}/api/v1/watch"),
        cluster.token.clone(),
        placed.clone(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    let batches = args.desktops.div_ceil(args.batch);
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> =
        Arc::new(Mutex::new(HashMap::with_capacity(args.desktops)));
    let started = Instant::now();
    let url = format!("http://{leader}/api/v1/tasks/batch");
    let mut requests = futures::stream::iter(0..batches)
        .map(|batch| {
            let (http, url, token, sent_at) = (
                http.clone(),
                url.clone(),
                cluster.token.clone(),
                sent_at.clone(),
            );
            let size = args.batch.min(args.desktops - batch * args.batch);
            async move {
                let tasks: Vec<Value> = (0..size)
                    .map(|i| {
                        json!({
                            "title": format!("bench {batch}.{i}"),
                            "column": "planning",
                            "resources": {
                                "cpu_millis": 1000,
                                "memory_bytes": 8 * GIB,
                                "gpu_memory_bytes": 8 * GIB,
                                "needs_gpu": true
                            }
                        })
                    })
                    .collect();
                let sent = Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({ "tasks": tasks }))
                    .send()
                    .await?;
                if response.status() != reqwest::StatusCode::CREATED {
                    bail!("batch {batch}: HTTP {}", response.status());
                }
                let created: Value = response.json().await?;
                let mut sent_at = sent_at.lock().expect("not poisoned");
                for task in created["tasks"].as_array().into_iter().flatten() {
                    if let Some(id) = task["id"].as_str() {
                        sent_at.insert(id.to_owned(), sent);
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(args.in_flight);
    while let Some(result) = requests.next().await {
        result?;
    }
    let admitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    while placed.lock().expect("not poisoned").len() < args.desktops {
        if Instant::now() > deadline || watcher.is_finished() {
            bail!(
                "only {} of {} desktops placed",
                placed.lock().expect("not poisoned").len(),
                args.desktops
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    watcher.abort();
    let placed = placed.lock().expect("not poisoned").clone();
    let sent_at = sent_at.lock().expect("not poisoned").clone();
    let last = placed.values().max().copied().context("no placements")?;
    let span = last - started;
    let mut latencies: Vec<Duration> = sent_at
        .iter()
        .filter_map(|(task, sent)| {
            placed
                .get(task)
                .map(|at| at.saturating_duration_since(*sent))
        })
        .collect();
    latencies.sort_unstable();

    let capacity: Value = cluster
        .http
        .get(format!("http://{leader}/api/v1/capacity"))
        .bearer_auth(&cluster.token)
        .send()
        .await?
        .json()
        .await?;
    let allocated = capacity["total"]["desktops"]["allocated"]
        .as_u64()
        .unwrap_or(0);
    println!(
        "# End to end: {} desktops onto {} simulated nodes, 3 servers on 127.0.0.1",
        args.desktops, args.nodes
    );
    println!(
        "admitted (all batch requests answered): {:.2} s",
        admitted.as_secs_f64()
    );
    println!(
        "placed: {} desktops in {:.2} s = {:.0} placements/s (capacity reports {allocated} allocated)",
        placed.len(),
        span.as_secs_f64(),
        placed.len() as f64 / span.as_secs_f64()
    );
    println!(
        "request → committed placement: p50 {} ms, p99 {} ms",
        millis(percentile(&latencies, 0.50)),
        millis(percentile(&latencies, 0.99))
    );
    println!(
        "anchors: Nomad C2M ≈ 1,500/s, C1M ≈ 3,750/s; kube-scheduler CI floors 680–1,100 pods/s; goal ≥ 10,000/s → {:.2}× goal",
        placed.len() as f64 / span.as_secs_f64() / 10_000.0
    );
    if allocated != args.desktops as u64 {
        bail!(
            "capacity says {allocated} allocated, expected {}",
            args.desktops
        );
    }
    Ok(())
}
