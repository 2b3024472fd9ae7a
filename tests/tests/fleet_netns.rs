//! The fleet end to end: three real node agents, each in its own network
//! namespace behind a veth pair, against a real three-server cluster.
//! Placement, cordon, drain with a deadline, a node cut off and coming
//! back, capacity totals, and the check that no desktop ever ran on two
//! nodes at once (from the agents' runtime journals).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_tests::netns::{self, TestNetwork};
use flotilla_tests::{flotilla_bin, wait_for, ServerFlags, TestCluster};
use serde_json::{json, Value};

const NODES: usize = 3;

struct Agent {
    name: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Agent {
    fn start(
        namespace: &str,
        name: &str,
        root: &Path,
        servers: &str,
        token_file: &Path,
    ) -> anyhow::Result<Agent> {
        let data_dir = root.join(name);
        let log = root.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", namespace])
            .arg(flotilla_bin())
            .args(["node-agent", "--join", servers, "--token-file"])
            .arg(token_file)
            .args(["--name", name, "--data-dir"])
            .arg(&data_dir)
            .args([
                "--cpu-millis",
                "16000",
                "--memory",
                "64GiB",
                "--desktop-slots",
                "20",
                "--no-gpus",
                "--stop-grace",
                "1s",
                "--label",
                &format!("host={name}"),
                "--desktop-command",
                "sleep",
                "100000",
            ])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("start a node agent")?;
        Ok(Agent {
            name: name.to_owned(),
            data_dir,
            log,
            child,
        })
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(30).collect();
        format!(
            "--- {} ---\n{}",
            self.name,
            lines.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fleet {
    cluster: TestCluster,
    agents: Vec<Agent>,
    network: TestNetwork,
}

impl Fleet {
    fn addr(&self) -> String {
        self.cluster.servers[0].addr.clone()
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let response = self
            .cluster
            .http
            .get(format!("http://{}{path}", self.addr()))
            .bearer_auth(&self.cluster.token)
            .send()
            .await?;
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("GET {path}: {status}: {body}");
        }
        Ok(body)
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let response = self
            .cluster
            .http
            .post(format!("http://{}{path}", self.addr()))
            .bearer_auth(&self.cluster.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    async fn desktops(&self) -> anyhow::Result<Vec<Value>> {
        Ok(self.get("/api/v1/desktops").await?["desktops"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until `count` desktops exist and every one runs, then returns
    /// how many run on each node.
    async fn wait_all_running(
        &self,
        count: usize,
        what: &str,
    ) -> anyhow::Result<BTreeMap<String, usize>> {
        let outcome = wait_for(what, Duration::from_secs(60), || async {
            self.desktops().await.is_ok_and(|desktops| {
                desktops.len() == count
                    && desktops
                        .iter()
                        .all(|d| d["state"] == "running" && d["intent"] == "run")
            })
        })
        .await;
        if let Err(error) = outcome {
            let desktops = self.desktops().await.unwrap_or_default();
            bail!("{error}\ndesktops: {desktops:#?}\n{}", self.logs());
        }
        let mut per_node = BTreeMap::new();
        for desktop in self.desktops().await? {
            *per_node
                .entry(desktop["node"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
        Ok(per_node)
    }

    async fn node(&self, name: &str) -> anyhow::Result<Value> {
        self.get(&format!("/api/v1/nodes/{name}")).await
    }

    fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        Command::new(flotilla_bin())
            .args(args)
            .env("FLOTILLA_ADDR", self.addr())
            .env("FLOTILLA_TOKEN", &self.cluster.token)
            .output()
            .context("run the flotilla CLI")
    }

    fn logs(&self) -> String {
        let agents: Vec<String> = self.agents.iter().map(Agent::log_tail).collect();
        format!("{}\n{}", self.cluster.logs(), agents.join("\n"))
    }

    async fn create_tasks(&self, count: usize, prefix: &str) -> anyhow::Result<()> {
        let tasks: Vec<Value> = (0..count)
            .map(|i| json!({"title": format!("{prefix} {i}"), "column": "planning"}))
            .collect();
        let (status, body) = self
            .post("/api/v1/tasks/batch", json!({ "tasks": tasks }))
            .await?;
        if status != 201 {
            bail!("batch create: HTTP {status}: {body}");
        }
        Ok(())
    }
}

/// A desktop's run on one node: from just before its process started to
/// just after it was reaped (`None`: still running).
#[derive(Debug)]
struct Run {
    node: String,
    generation: u64,
    start: u128,
    stop: Option<u128>,
}

fn journal_runs(fleet: &Fleet) -> anyhow::Result<BTreeMap<String, Vec<Run>>> {
    let mut runs: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for agent in &fleet.agents {
        let path = agent.data_dir.join("desktop-events.jsonl");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for line in text.lines() {
            let event: Value = serde_json::from_str(line)
                .with_context(|| format!("journal line {line:?} in {}", path.display()))?;
            let desktop = event["desktop"].as_str().unwrap_or_default().to_owned();
            let generation = event["generation"].as_u64().unwrap_or_default();
            let at = event["monotonic_ns"].as_u64().unwrap_or_default() as u128;
            let entry = runs.entry(desktop.clone()).or_default();
            match event["event"].as_str() {
                Some("started") => entry.push(Run {
                    node: agent.name.clone(),
                    generation,
                    start: at,
                    stop: None,
                }),
                Some("stopped") => {
                    let run = entry
                        .iter_mut()
                        .rev()
                        .find(|run| {
                            run.node == agent.name
                                && run.generation == generation
                                && run.stop.is_none()
                        })
                        .with_context(|| {
                            format!("{desktop} stopped on {} without a start", agent.name)
                        })?;
                    run.stop = Some(at);
                }
                other => bail!("unknown journal event {other:?}"),
            }
        }
    }
    Ok(runs)
}

/// No two runs of one desktop overlap in time, on any pair of nodes.
fn assert_never_on_two_nodes(fleet: &Fleet) -> anyhow::Result<usize> {
    let runs = journal_runs(fleet)?;
    let mut total = 0;
    for (desktop, runs) in &runs {
        total += runs.len();
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let a_end = a.stop.unwrap_or(u128::MAX);
                let b_end = b.stop.unwrap_or(u128::MAX);
                if a.start < b_end && b.start < a_end {
                    bail!(
                        "{desktop} ran twice at once: {a:?} and {b:?}\n{}",
                        fleet.logs()
                    );
                }
            }
        }
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn placement_cordon_drain_and_a_lost_node() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    let network = TestNetwork::create(NODES)?;
    let flags = ServerFlags(
        ["--node-heartbeat-ttl", "2s", "--scheduler", "spread"]
            .map(str::to_owned)
            .to_vec(),
    );
    let cluster = TestCluster::start_on(&network.gateway(), 3, flags).await?;
    let servers: Vec<String> = cluster.servers.iter().map(|s| s.addr.clone()).collect();
    let token_file = cluster.servers[0].data_dir.join("node-join.token");
    let mut agents = Vec::new();
    for (index, host) in network.hosts.iter().enumerate() {
        agents.push(Agent::start(
            &host.namespace,
            &format!("node-{}", index + 1),
            cluster.root.path(),
            &servers.join(","),
            &token_file,
        )?);
    }
    let fleet = Fleet {
        cluster,
        agents,
        network,
    };
    wait_for("three ready nodes", Duration::from_secs(30), || async {
        fleet.get("/api/v1/nodes").await.is_ok_and(|nodes| {
            nodes.as_array().is_some_and(|nodes| {
                nodes.len() == NODES && nodes.iter().all(|n| n["status"] == "ready")
            })
        })
    })
    .await
    .with_context(|| fleet.logs())?;

    // Each node is known with the address it connected from.
    for (index, host) in fleet.network.hosts.iter().enumerate() {
        let node = fleet.node(&format!("node-{}", index + 1)).await?;
        assert_eq!(node["address"], host.address.as_str(), "{node:#}");
        assert_eq!(node["labels"]["host"], format!("node-{}", index + 1));
        assert_eq!(node["cpu_millis"]["capacity"], 16000);
    }

    // 30 desktops over 3 nodes (spread: 10 each).
    fleet.create_tasks(30, "first").await?;
    let per_node = fleet.wait_all_running(30, "30 running desktops").await?;
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "{per_node:?}"
    );

    // Capacity totals equal what was placed.
    let capacity = fleet.get("/api/v1/capacity").await?;
    let total = &capacity["total"];
    assert_eq!(total["desktops"]["allocated"], 30);
    assert_eq!(total["cpu_millis"]["allocated"], 30 * 250);
    assert_eq!(total["memory_bytes"]["allocated"], 30u64 * (2 << 30));
    assert_eq!(total["cpu_millis"]["capacity"], 3 * 16000);
    assert_eq!(
        total["cpu_millis"]["free"],
        3 * 16000 - 30 * 250,
        "{capacity:#}"
    );

    // Cordon blocks new placements.
    let output = fleet.cli(&["node", "cordon", "node-3"])?;
    assert!(output.status.success(), "{output:?}");
    fleet.create_tasks(2, "while cordoned").await?;
    let per_node = fleet.wait_all_running(32, "32 running desktops").await?;
    assert_eq!(per_node["node-3"], 10, "{per_node:?}");
    let output = fleet.cli(&["node", "uncordon", "node-3"])?;
    assert!(output.status.success(), "{output:?}");

    // Drain node-1 with a deadline, following it with --monitor.
    let output = fleet.cli(&[
        "node",
        "drain",
        "node-1",
        "--deadline",
        "5s",
        "--max-parallel",
        "3",
        "--monitor",
    ])?;
    assert!(
        output.status.success(),
        "drain failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        fleet.logs()
    );
    let per_node = fleet.wait_all_running(32, "32 desktops off node-1").await?;
    assert!(!per_node.contains_key("node-1"), "{per_node:?}");
    let node = fleet.node("node-1").await?;
    assert_eq!(node["draining"], false);
    assert!(node["drained_at_ms"].is_u64(), "{node:#}");
    assert_eq!(node["eligibility"], "ineligible");
    let listed = fleet.cli(&["node", "list", "--output", "json"])?;
    let listed: Value = serde_json::from_slice(&listed.stdout)?;
    let node_1 = listed
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == "node-1"))
        .context("node-1 listed")?;
    assert_eq!(node_1["desktops"]["allocated"], 0);
    assert!(fleet.cli(&["node", "uncordon", "node-1"])?.status.success());

    // Cut node-2 off: marked down after its lease, its desktops run elsewhere.
    let on_node_2 = fleet.node("node-2").await?["desktops"]["allocated"]
        .as_u64()
        .unwrap_or(0);
    assert!(on_node_2 > 0);
    fleet.network.set_link(1, false)?;
    wait_for("node-2 marked down", Duration::from_secs(20), || async {
        fleet
            .node("node-2")
            .await
            .is_ok_and(|node| node["status"] == "down")
    })
    .await
    .with_context(|| fleet.logs())?;
    // Draining a down node is refused and changes nothing.
    let (status, body) = fleet
        .post("/api/v1/nodes/node-2/drain", json!({"deadline_secs": 60}))
        .await?;
    assert_eq!(status, 409, "{body}");
    assert_eq!(fleet.node("node-2").await?["draining"], false);
    let per_node = fleet
        .wait_all_running(32, "node-2's desktops elsewhere")
        .await?;
    assert!(!per_node.contains_key("node-2"), "{per_node:?}");

    // Bring it back: it becomes ready and runs none of its old desktops.
    fleet.network.set_link(1, true)?;
    wait_for("node-2 ready again", Duration::from_secs(30), || async {
        fleet
            .node("node-2")
            .await
            .is_ok_and(|node| node["status"] == "ready")
    })
    .await
    .with_context(|| fleet.logs())?;
    wait_for(
        "node-2 stopped its stale desktops",
        Duration::from_secs(20),
        || async {
            journal_runs(&fleet).is_ok_and(|runs| {
                runs.values()
                    .flatten()
                    .all(|run| run.node != "node-2" || run.stop.is_some())
            })
        },
    )
    .await
    .with_context(|| fleet.logs())?;
    fleet
        .wait_all_running(32, "32 running desktops at the end")
        .await?;

    let runs = assert_never_on_two_nodes(&fleet)?;
    assert!(
        runs >= 32 + 10 + on_node_2 as usize,
        "journal holds {runs} runs"
    );

    // Tasks moved to done release their desktops everywhere.
    let tasks = fleet.get("/api/v1/tasks?column=planning").await?;
    for task in tasks["tasks"].as_array().into_iter().flatten() {
        let id = task["id"].as_str().context("task id")?;
        let (status, body) = fleet
            .post(
                &format!("/api/v1/tasks/{id}/move"),
                json!({"column": "done"}),
            )
            .await?;
        assert_eq!(status, 200, "{body}");
    }
    wait_for(
        "every desktop released",
        Duration::from_secs(30),
        || async {
            fleet.desktops().await.is_ok_and(|d| d.is_empty())
                && journal_runs(&fleet)
                    .is_ok_and(|runs| runs.values().flatten().all(|run| run.stop.is_some()))
        },
    )
    .await
    .with_context(|| fleet.logs())?;
    assert_never_on_two_nodes(&fleet)?;
    let capacity = fleet.get("/api/v1/capacity").await?;
    assert_eq!(capacity["total"]["desktops"]["allocated"], 0);
    Ok(())
}
