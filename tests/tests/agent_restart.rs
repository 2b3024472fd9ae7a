//! A node agent that crashes leaves its sandboxes running; started again
//! it adopts them (same processes, still running in the control plane's
//! view, still reachable with `desktop exec`). One that stays away does not
//! leave them running past its lease: each sandbox stops itself. As root
//! (CI runs it), with a real server and real agent processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::{flotilla_bin, netns, wait_for, ServerFlags, TestCluster};
use serde_json::{json, Value};

struct Agent {
    child: Option<Child>,
    args: Vec<String>,
    log: PathBuf,
}

impl Agent {
    fn start(cluster: &TestCluster, data: &Path, log: PathBuf) -> anyhow::Result<Agent> {
        let id = std::process::id() % 10_000;
        let args = vec![
            "node-agent".to_owned(),
            "--join".to_owned(),
            cluster.servers[0].addr.clone(),
            "--token-file".to_owned(),
            cluster.servers[0]
                .data_dir
                .join("node-join.token")
                .display()
                .to_string(),
            "--name".to_owned(),
            "restart-node".to_owned(),
            "--data-dir".to_owned(),
            data.display().to_string(),
            "--no-gpus".to_owned(),
            "--stop-grace".to_owned(),
            "1s".to_owned(),
            "--netns-pool".to_owned(),
            "1".to_owned(),
            "--desktop-bridge".to_owned(),
            format!("fr{id}"),
            "--desktop-subnet".to_owned(),
            format!("10.{}.0.0/16", 150 + id % 50),
            "--desktop-command".to_owned(),
            "sleep".to_owned(),
            "100000".to_owned(),
        ];
        let mut agent = Agent {
            child: None,
            args,
            log,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        self.child = Some(
            Command::new(flotilla_bin())
                .args(&self.args)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.wait();
        }
        let bridge = self
            .args
            .iter()
            .skip_while(|a| *a != "--desktop-bridge")
            .nth(1)
            .cloned()
            .unwrap_or_default();
        let settings = flotilla_node_agent::sandbox::net::NetworkSettings {
            bridge,
            ..Default::default()
        };
        let _ = flotilla_node_agent::sandbox::net::Network::remove_host_setup(&settings);
    }
}

/// The outer sandbox process of desktop `id` (from its state file).
fn sandbox_pid(data: &Path, id: &str) -> Option<i64> {
    let dir = std::fs::read_dir(data.join("desktops"))
        .ok()?
        .flatten()
        .find(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
        })?;
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).ok()?).ok()?;
    state["pid"].as_i64()
}

/// How often a sandbox reads its lease file (its outer process checks
/// every 250 ms), with room to act on it.
const SANDBOX_LEASE_CHECK: Duration = Duration::from_millis(500);

/// The lease deadline (CLOCK_MONOTONIC ns) the agent last wrote for its
/// sandboxes.
fn lease_deadline(data: &Path) -> Option<u128> {
    std::fs::read_to_string(data.join(flotilla_node_agent::agent::LEASE_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The parent pid of process `pid`, while it lives.
fn parent_of(pid: i64) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

fn alive(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_its_sandboxes_and_a_lost_one_stops_them() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    // The default lease: 10 s, of which the agent counts on half.
    let cluster = TestCluster::start(1, ServerFlags(Vec::new())).await?;
    let addr = cluster.servers[0].addr.clone();
    let data = cluster.root.path().join("agent");
    let mut agent = Agent::start(&cluster, &data, cluster.root.path().join("agent.log"))?;
    let base = format!("http://{addr}/api/v1");
    let http = &cluster.http;
    let token = &cluster.token;
    let task: Value = http
        .post(format!("{base}/tasks"))
        .bearer_auth(token)
        .json(&json!({"title": "restart", "column": "planning"}))
        .send()
        .await?
        .json()
        .await?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let desktop = || async {
        let task: Value = http
            .get(format!("{base}/tasks/{task_id}"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some(task["desktop"].clone())
    };
    wait_for("a running desktop", Duration::from_secs(60), || async {
        desktop().await.is_some_and(|d| d["state"] == "running")
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}", agent.log()))?;
    let id = desktop().await.unwrap()["id"].as_str().unwrap().to_owned();
    let pid = sandbox_pid(&data, &id).expect("the sandbox's state file");
    assert!(alive(pid));

    // The agent crashes and comes back: the same sandbox runs on. Its
    // parent (the agent's zygote, which goes with the agent) is gone once
    // the sandbox has been handed to another: a sandbox that died with its
    // agent would have been told then.
    let parent = parent_of(pid).expect("the sandbox's parent");
    agent.kill();
    // The lease the crashed agent last wrote for its sandboxes.
    let crashed_lease = lease_deadline(&data).expect("the agent's lease file");
    let reparented = Instant::now();
    while parent_of(pid) == Some(parent) {
        assert!(
            reparented.elapsed() < Duration::from_secs(10),
            "the crashed agent's zygote never went away\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(alive(pid), "the sandbox outlives its agent");
    agent.spawn()?;
    wait_for(
        "the agent adopting its sandbox",
        Duration::from_secs(30),
        || async { agent.log().contains("re-adopted a running sandbox") },
    )
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}", agent.log()))?;
    // Past the lease the crashed agent last wrote, and past the sandbox's
    // next look at it: still the same process, still running (the new
    // agent renewed it).
    let past_lease = Instant::now();
    while flotilla_node_agent::clock::monotonic_ns()
        < crashed_lease + SANDBOX_LEASE_CHECK.as_nanos()
    {
        assert!(
            past_lease.elapsed() < Duration::from_secs(20),
            "the crashed agent's lease never ran out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        lease_deadline(&data).is_some_and(|renewed| renewed > crashed_lease),
        "the new agent renewed the lease\n{}",
        agent.log()
    );
    assert!(
        alive(pid),
        "the adopted sandbox keeps running\n{}",
        agent.log()
    );
    assert_eq!(sandbox_pid(&data, &id), Some(pid));
    let view = desktop().await.unwrap();
    assert_eq!(view["state"], "running", "{view}");
    // And it is reachable as before.
    let mut output = None;
    for _ in 0..20 {
        let run = Command::new(flotilla_bin())
            .args(["desktop", "exec", &id, "--", "hostname"])
            .env("FLOTILLA_ADDR", &addr)
            .env("FLOTILLA_TOKEN", token)
            .output()?;
        if run.status.success() {
            output = Some(run);
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let output = output.expect("exec into the adopted sandbox");
    assert_eq!(String::from_utf8_lossy(&output.stdout), format!("{id}\n"));

    // The agent is lost for good: the sandbox stops itself when the lease
    // it last wrote runs out (half the server's 10 s), not whenever the
    // agent might come back.
    agent.kill();
    let lost = Instant::now();
    while alive(pid) {
        assert!(
            lost.elapsed() < Duration::from_secs(20),
            "the sandbox outlived its lease\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = std::fs::read_dir(data.join("desktops"))?
        .flatten()
        .find_map(|entry| std::fs::read_to_string(entry.path().join("log")).ok())
        .unwrap_or_default();
    assert!(log.contains("lease expired"), "{log}");

    // When it does come back, it cleans up what the dead sandbox left (its
    // directory, cgroup and veth) and, the desktop still being assigned to
    // it, starts a fresh sandbox for it.
    agent.spawn()?;
    wait_for("the agent cleaning up", Duration::from_secs(30), || async {
        let log = agent.log();
        log.contains("removing an ended sandbox's directory")
            && log.contains("removed a cgroup left by an earlier run")
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}", agent.log()))?;
    wait_for("a fresh sandbox", Duration::from_secs(60), || async {
        sandbox_pid(&data, &id).is_some_and(|fresh| fresh != pid && alive(fresh))
            && desktop().await.is_some_and(|d| d["state"] == "running")
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}", agent.log()))?;
    assert!(!alive(pid));
    drop(agent);
    Ok(())
}
