//! `flotilla-bench raft`: durable write throughput and latency of a 3-server
//! Flotilla cluster beside a 3-member etcd 3.4 cluster, under the same load
//! from the same client, plus leader-failover time. Prints both and the ratio.
//!
//! Both systems run on 127.0.0.1 with their default durability (fsync before
//! acknowledging). Both are driven over HTTP/1.1 JSON with one shared
//! keep-alive client: Flotilla's `POST /api/v1/tasks`, etcd's gRPC-gateway
//! `POST /v3/kv/put`. Writes go to each system's leader.

mod compositor;
mod etcd;
mod gateway;
mod git;
mod gpu;
mod gpu_check;
mod placement;
mod sandbox;
mod scheduler;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use flotilla_tests::{ServerFlags, TestCluster};

#[derive(Parser)]
#[command(about = "Flotilla benchmarks against peers run in the same process")]
enum Bench {
    /// Raft write throughput/latency vs etcd, and failover time.
    Raft(RaftArgs),
    /// Scheduler alone: placements per second vs a full-scan scheduler.
    Scheduler(scheduler::SchedulerArgs),
    /// Placements per second end to end through a 3-server cluster.
    Placement(placement::PlacementArgs),
    /// Sandbox create → exec and destroy vs bubblewrap and crun (root).
    Sandbox(sandbox::SandboxArgs),
    /// GPU I420 conversion vs the CPU reference; CPU composition costs.
    Gpu(gpu::GpuArgs),
    /// On a machine with a real GPU: capabilities, dma-buf, composition at
    /// two sizes for 1 and 8 desktops, memory per desktop (bench/gpu-check.sh).
    GpuCheck(gpu_check::GpuCheckArgs),
    /// An idle desktop's compositor (RSS, PSS, idle CPU) and time to foot's
    /// first frame, beside weston's headless backend.
    Compositor(compositor::CompositorArgs),
    /// A desktop watched live end to end (root): key → WebSocket, full
    /// screen frames and bytes per second, encoder CPU, card → first frame.
    Stream(stream::StreamArgs),
    /// Hosted git: push, clone and 16 concurrent small pushes on a 3-server
    /// cluster vs plain `git http-backend` (one process, no replication).
    Git(git::GitArgs),
    /// The LLM gateway's added latency (TTFB, event gaps) and memory per
    /// open stream, vs the provider straight and LiteLLM's proxy.
    Gateway(gateway::GatewayArgs),
}

#[derive(clap::Args)]
struct RaftArgs {
    /// Concurrent clients, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    clients: Vec<usize>,
    /// Seconds of load per client count and system.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Leader kills for the failover measurement (0 skips it).
    #[arg(long, default_value_t = 20)]
    failover_runs: usize,
    /// Skip etcd (Flotilla figures only).
    #[arg(long)]
    no_etcd: bool,
    /// Extra `flotilla server` flags, space separated (e.g. timing).
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    server_args: String,
}

/// Something that accepts one durable write per call.
trait Target: Send + Sync {
    fn write(
        &self,
        client: &reqwest::Client,
        key: String,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

struct FlotillaTarget {
    url: String,
    token: String,
}

impl Target for FlotillaTarget {
    async fn write(&self, client: &reqwest::Client, key: String) -> anyhow::Result<()> {
        let response = client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "title": key }))
            .send()
            .await?;
        if response.status() != reqwest::StatusCode::CREATED {
            bail!("HTTP {}", response.status());
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct LoadResult {
    writes: usize,
    errors: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
}

impl LoadResult {
    fn per_second(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64()
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `clients` closed-loop writers for `seconds`.
async fn run_load<T: Target + 'static>(
    target: Arc<T>,
    clients: usize,
    seconds: u64,
    prefix: String,
) -> LoadResult {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build the HTTP client");
    let start = Instant::now();
    let stop_at = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client_index in 0..clients {
        let (target, http, prefix) = (target.clone(), http.clone(), prefix.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut sequence = 0usize;
            while Instant::now() < stop_at {
                let key = format!("{prefix}-{client_index}-{sequence}");
                sequence += 1;
                let began = Instant::now();
                match target.write(&http, key).await {
                    Ok(()) => latencies.push(began.elapsed()),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut client_latencies, client_errors) = task.await.expect("load task");
        latencies.append(&mut client_latencies);
        errors += client_errors;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    LoadResult {
        writes: latencies.len(),
        errors,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

fn millis(duration: Duration) -> String {
    format!("{:.2}", duration.as_secs_f64() * 1000.0)
}

async fn flotilla_leader_addr(cluster: &TestCluster) -> anyhow::Result<String> {
    let leader = cluster.leader().await?;
    Ok(cluster
        .servers
        .iter()
        .find(|server| server.node_id == leader)
        .context("leader is one of ours")?
        .addr
        .clone())
}

async fn raft(args: RaftArgs) -> anyhow::Result<()> {
    let flags = ServerFlags(
        args.server_args
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    );
    let mut flotilla = TestCluster::start(3, flags).await?;
    let mut etcd = if args.no_etcd {
        None
    } else {
        Some(etcd::EtcdCluster::start(3).await?)
    };
    println!(
        "# Durable writes, 3 servers on 127.0.0.1, {} s per point",
        args.seconds
    );
    println!(
        "{:>7}  {:>12} {:>9} {:>9}  {:>12} {:>9} {:>9}  {:>13}",
        "clients",
        "flotilla w/s",
        "p50 ms",
        "p99 ms",
        "etcd w/s",
        "p50 ms",
        "p99 ms",
        "ratio (w/s)"
    );
    for &clients in &args.clients {
        let leader = flotilla_leader_addr(&flotilla).await?;
        let target = Arc::new(FlotillaTarget {
            url: format!("http://{leader}/api/v1/tasks"),
            token: flotilla.token.clone(),
        });
        let ours = run_load(target, clients, args.seconds, format!("c{clients}")).await;
        let theirs = match &etcd {
            Some(etcd) => Some(
                run_load(
                    Arc::new(etcd.target().await?),
                    clients,
                    args.seconds,
                    format!("c{clients}"),
                )
                .await,
            ),
            None => None,
        };
        let (etcd_rate, etcd_p50, etcd_p99, ratio) = match &theirs {
            Some(theirs) => (
                format!("{:.0}", theirs.per_second()),
                millis(theirs.p50),
                millis(theirs.p99),
                format!("{:.2}x", ours.per_second() / theirs.per_second()),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>7}  {:>12.0} {:>9} {:>9}  {:>12} {:>9} {:>9}  {:>13}",
            clients,
            ours.per_second(),
            millis(ours.p50),
            millis(ours.p99),
            etcd_rate,
            etcd_p50,
            etcd_p99,
            ratio
        );
        if ours.errors > 0 || theirs.as_ref().is_some_and(|t| t.errors > 0) {
            println!(
                "         (errors: flotilla {}, etcd {})",
                ours.errors,
                theirs.map_or(0, |t| t.errors)
            );
        }
    }
    if let Some(etcd) = etcd.take() {
        etcd.stop();
    }
    if args.failover_runs > 0 {
        failover(&mut flotilla, args.failover_runs).await?;
    }
    Ok(())
}

/// Kills the leader under load and times until a write is accepted again.
async fn failover(cluster: &mut TestCluster, runs: usize) -> anyhow::Result<()> {
    println!();
    println!("# Failover: kill -9 the leader under 16 writers; time until a write is accepted");
    let mut samples = Vec::new();
    for run in 0..runs {
        // Everyone up and caught up before each kill.
        let first = cluster.servers[0].addr.clone();
        cluster
            .wait_for_members(&first, 3, Duration::from_secs(60))
            .await?;
        let addrs: Vec<String> = cluster
            .servers
            .iter()
            .map(|server| server.addr.clone())
            .collect();
        let cluster_ref = &*cluster;
        flotilla_tests::wait_for("every server to catch up", Duration::from_secs(120), || {
            let addrs = addrs.clone();
            async move {
                let mut applied = Vec::new();
                for addr in &addrs {
                    match cluster_ref.status(addr).await {
                        Ok(status) => applied.push(status["last_applied"].as_u64().unwrap_or(0)),
                        Err(_) => return false,
                    }
                }
                applied.iter().max().copied().unwrap_or(0)
                    - applied.iter().min().copied().unwrap_or(0)
                    <= 2
            }
        })
        .await?;
        let leader_addr = flotilla_leader_addr(cluster).await?;
        let survivors: Vec<String> = cluster
            .servers
            .iter()
            .map(|server| server.addr.clone())
            .filter(|addr| *addr != leader_addr)
            .collect();
        let load_target = Arc::new(FlotillaTarget {
            url: format!("http://{}/api/v1/tasks", survivors[0]),
            token: cluster.token.clone(),
        });
        let background = tokio::spawn(run_load(load_target, 16, 3, format!("f{run}")));
        tokio::time::sleep(Duration::from_millis(500)).await;

        let leader = cluster.leader().await?;
        let killed_at = Instant::now();
        cluster.server(leader).kill();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let elected = {
            let (http, token, survivors) = (http.clone(), cluster.token.clone(), survivors.clone());
            tokio::spawn(async move {
                loop {
                    for addr in &survivors {
                        let status: Option<serde_json::Value> = async {
                            http.get(format!("http://{addr}/api/v1/cluster"))
                                .bearer_auth(&token)
                                .send()
                                .await
                                .ok()?
                                .json()
                                .await
                                .ok()
                        }
                        .await;
                        if let Some(status) = status {
                            if status["leader"].as_u64().is_some_and(|l| l != leader) {
                                return killed_at.elapsed();
                            }
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let mut attempt = 0usize;
        let recovered = loop {
            let addr = &survivors[attempt % survivors.len()];
            attempt += 1;
            let target = FlotillaTarget {
                url: format!("http://{addr}/api/v1/tasks"),
                token: cluster.token.clone(),
            };
            if target
                .write(&http, format!("probe-{run}-{attempt}"))
                .await
                .is_ok()
            {
                break killed_at.elapsed();
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                bail!(
                    "no write accepted 30 s after killing the leader\n{}",
                    cluster.logs()
                );
            }
        };
        samples.push(recovered);
        eprintln!("run {run}: elected after {:?}, write accepted after {recovered:?} ({attempt} attempts)", elected.await?);
        let _ = background.await;
        cluster.server(leader).restart()?;
    }
    samples.sort_unstable();
    println!(
        "runs {}  p50 {} ms  p99 {} ms  max {} ms",
        samples.len(),
        millis(percentile(&samples, 0.50)),
        millis(percentile(&samples, 0.99)),
        millis(*samples.last().expect("at least one run"))
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Bench::parse() {
        Bench::Raft(args) => raft(args).await,
        Bench::Scheduler(args) => {
            scheduler::run(args);
            Ok(())
        }
        Bench::Placement(args) => placement::run(args).await,
        Bench::Sandbox(args) => sandbox::run(args),
        Bench::Gpu(args) => gpu::run(args),
        Bench::GpuCheck(args) => gpu_check::run(args),
        Bench::Compositor(args) => compositor::run(args),
        Bench::Stream(args) => stream::run(args).await,
        Bench::Git(args) => git::run(args).await,
        Bench::Gateway(args) => gateway::run(args).await,
    }
}
