//! Seeded fault schedules against a real 3-server cluster: servers are
//! killed (-9) and restarted, or frozen (SIGSTOP, as if cut off from the
//! network) and thawed, one or two at a time, while clients write. After the
//! faults heal: every acknowledged write is present exactly once, no write is
//! present twice, and all servers hold the same state.
//!
//! Seeds are fixed so CI is repeatable; `FLOTILLA_FAULT_SEEDS=1,2,3` runs
//! others. A failure names its seed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use flotilla_tests::{wait_for, write_with_retries, ServerFlags, TestCluster};

/// splitmix64: small, seedable, good enough to pick faults.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low))
    }
}

#[derive(Debug)]
enum Fault {
    Crash(u64),
    Freeze(u64),
    FreezeTwo(u64, u64),
}

const WRITERS: usize = 6;
const STEPS: usize = 8;

async fn run_schedule(seed: u64) -> anyhow::Result<()> {
    let mut rng = Rng(seed);
    // Small snapshots so catching up after a fault often means an install.
    let flags = ServerFlags(
        ["--snapshot-every", "40", "--keep-logs", "5"]
            .map(str::to_owned)
            .to_vec(),
    );
    let mut cluster = TestCluster::start(3, flags).await?;
    let addrs: Vec<String> = cluster.servers.iter().map(|s| s.addr.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(150);
    // Writers keep going for the whole schedule, so writes meet every fault.
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (http, token, addrs) = (cluster.http.clone(), cluster.token.clone(), addrs.clone());
        let (stop, next) = (stop.clone(), next.clone());
        writers.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let acked = write_with_retries(&http, &token, &addrs, index, deadline).await?;
                outcomes.push((index, acked));
            }
            anyhow::Ok(outcomes)
        }));
    }

    for step in 0..STEPS {
        let victim = 1 + rng.below(3);
        let fault = match rng.below(3) {
            0 => Fault::Crash(victim),
            1 => Fault::Freeze(victim),
            _ => Fault::FreezeTwo(victim, 1 + victim % 3),
        };
        let outage = rng.millis(100, 800);
        match fault {
            Fault::Crash(id) => {
                cluster.server(id).kill();
                tokio::time::sleep(outage).await;
                cluster.server(id).restart()?;
            }
            Fault::Freeze(id) => {
                cluster.server(id).pause()?;
                tokio::time::sleep(outage).await;
                cluster.server(id).resume()?;
            }
            Fault::FreezeTwo(first, second) => {
                cluster.server(first).pause()?;
                cluster.server(second).pause()?;
                tokio::time::sleep(outage).await;
                cluster.server(first).resume()?;
                cluster.server(second).resume()?;
            }
        }
        eprintln!("seed {seed} step {step}: {fault:?} for {outage:?}");
        tokio::time::sleep(rng.millis(100, 600)).await;
    }

    stop.store(true, Ordering::SeqCst);
    let mut outcomes = HashMap::new();
    for writer in writers {
        for (index, acked) in writer.await.context("writer task")?? {
            outcomes.insert(index, acked);
        }
    }
    let writes = next.load(Ordering::SeqCst);
    ensure!(outcomes.len() == writes, "lost track of writes");

    // Healed: every server converges on the same tasks.
    let cluster_ref = &cluster;
    let addrs_ref = &addrs;
    wait_for(
        "all servers to converge",
        Duration::from_secs(60),
        || async move {
            let mut lists = Vec::new();
            for addr in addrs_ref {
                match cluster_ref.list_tasks(addr, true).await {
                    Ok(tasks) => {
                        let mut ids: Vec<String> = tasks
                            .iter()
                            .filter_map(|task| task["id"].as_str().map(str::to_owned))
                            .collect();
                        ids.sort();
                        lists.push(ids);
                    }
                    Err(_) => return false,
                }
            }
            lists.windows(2).all(|pair| pair[0] == pair[1])
        },
    )
    .await
    .with_context(|| cluster.logs())?;

    let tasks = cluster.list_tasks(&addrs[0], false).await?;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for task in &tasks {
        let title = task["title"].as_str().context("title")?.to_owned();
        *copies.entry(title).or_default() += 1;
    }
    for (index, acked) in &outcomes {
        let count = copies.get(&format!("write-{index}")).copied().unwrap_or(0);
        if *acked {
            ensure!(
                count == 1,
                "acknowledged write {index} is present {count} times"
            );
        } else {
            ensure!(
                count <= 1,
                "unacknowledged write {index} is present {count} times"
            );
        }
    }
    let acknowledged = outcomes.values().filter(|acked| **acked).count();
    ensure!(acknowledged > 0, "no write was acknowledged at all");
    eprintln!(
        "seed {seed}: {acknowledged}/{writes} acknowledged, {} present",
        tasks.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_crashes_and_freezes_lose_no_acknowledged_write() {
    let seeds: Vec<u64> = match std::env::var("FLOTILLA_FAULT_SEEDS") {
        Ok(text) => text
            .split(',')
            .map(|seed| {
                seed.trim()
                    .parse()
                    .expect("FLOTILLA_FAULT_SEEDS is comma-separated numbers")
            })
            .collect(),
        Err(_) => vec![1, 2],
    };
    for seed in seeds {
        if let Err(error) = run_schedule(seed).await {
            panic!("fault schedule failed with seed {seed} (rerun: FLOTILLA_FAULT_SEEDS={seed}): {error:#}");
        }
    }
}
