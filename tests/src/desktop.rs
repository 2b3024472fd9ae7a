//! Desktops for tests that need a real one but not its display: a node
//! agent whose desktops run `sleep` in a full sandbox (namespaces, cgroups,
//! its own network, the door's credentials), and `in_desktop` to run a
//! shell script inside one through `flotilla desktop exec`; and a desktop's
//! token minted as the servers mint it, for tests of the desktop door that
//! need no sandbox (a pending desktop's token is valid until it is placed),
//! [`TestCluster::planning_task`] to make such a desktop, and the usage its
//! task's model calls were metered.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use serde_json::{json, Value};

use crate::{flotilla_bin, AgentProcess, TestCluster};

impl AgentProcess {
    /// A node agent joined to `cluster` whose desktops run `sleep`, on a
    /// bridge and subnet of its own; its stdout goes to `log` (stderr beside
    /// it, `.err`). Its desktops reach every server's desktop door.
    pub fn start_plain(
        cluster: &TestCluster,
        name: &str,
        data: &Path,
        log: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let id = std::process::id() % 10_000;
        let bridge = format!("fp{id}");
        let join: Vec<&str> = cluster.servers.iter().map(|s| s.addr.as_str()).collect();
        let mut command = Command::new(flotilla_bin());
        command
            .args(["node-agent", "--join", &join.join(","), "--token-file"])
            .arg(cluster.servers[0].data_dir.join("node-join.token"))
            .args(["--name", name, "--data-dir"])
            .arg(data)
            .args(["--no-gpus", "--stop-grace", "1s", "--netns-pool", "1"])
            .args(["--desktop-bridge", &bridge])
            .args(["--desktop-subnet", &format!("10.{}.0.0/16", 150 + id % 50)]);
        for server in &cluster.servers {
            command.args(["--desktop-endpoint", &server.desktop_addr]);
        }
        let child = command
            .args(["--desktop-command", "sleep", "100000"])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()?;
        Ok(AgentProcess { child, bridge })
    }
}

/// `flotilla desktop exec DESKTOP -- sh -c SCRIPT` through server `addr`
/// with the operator `token`, retried while the agent's tunnel is still
/// opening.
pub async fn in_desktop(
    addr: &str,
    token: &str,
    desktop: &str,
    script: &str,
) -> anyhow::Result<std::process::Output> {
    let run = || {
        Command::new(flotilla_bin())
            .args(["desktop", "exec", desktop, "--", "sh", "-c", script])
            .env("FLOTILLA_ADDR", addr)
            .env("FLOTILLA_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .context("run flotilla desktop exec")
    };
    let mut output = run()?;
    for _ in 0..20 {
        if !String::from_utf8_lossy(&output.stderr).contains("not connected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        output = run()?;
    }
    Ok(output)
}

impl TestCluster {
    /// The token of task `task_id`'s desktop as it stands now (its id and
    /// generation from `GET /api/v1/desktops`, the HMAC under the cluster
    /// secret): what the node agent would hand the desktop.
    pub async fn desktop_token(&self, task_id: &str) -> anyhow::Result<String> {
        let server = &self.servers[0];
        let list: Value = self
            .http
            .get(format!("http://{}/api/v1/desktops", server.addr))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let desktop = list["desktops"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|desktop| desktop["task"] == task_id)
            .with_context(|| format!("task {task_id} has no desktop: {list}"))?;
        let secret = std::fs::read_to_string(
            server
                .data_dir
                .join(flotilla_control_plane::datadir::SECRET_FILE),
        )?;
        Ok(flotilla_control_plane::auth::desktop_token(
            secret.trim(),
            desktop["id"].as_str().unwrap_or_default(),
            desktop["generation"].as_u64().unwrap_or_default(),
        ))
    }

    /// Project `demo` with repository `app`, a task in `planning` on
    /// `demo/app` (its desktop pending) and that desktop's token: the task's
    /// id and the token.
    pub async fn planning_task(&self, title: &str) -> anyhow::Result<(String, String)> {
        let server = &self.servers[0].addr;
        self.post_json(server, "/api/v1/projects", json!({"id": "demo"}))
            .await?;
        self.post_json(
            server,
            "/api/v1/projects/demo/repos",
            json!({"name": "app"}),
        )
        .await?;
        let task = self
            .post_json(
                server,
                "/api/v1/tasks",
                json!({"title": title, "column": "planning", "repository": "demo/app"}),
            )
            .await?;
        let task = task["id"]
            .as_str()
            .with_context(|| format!("a task without an id: {task}"))?
            .to_owned();
        let token = self.desktop_token(&task).await?;
        Ok((task, token))
    }

    /// `GET /api/v1/usage?task=TASK` from the first server.
    pub async fn task_usage(&self, task: &str) -> anyhow::Result<Value> {
        let server = &self.servers[0].addr;
        Ok(self
            .http
            .get(format!("http://{server}/api/v1/usage?task={task}"))
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// [`TestCluster::task_usage`] once it counts `calls` calls, and 600 ms
    /// later (a call recorded twice would show by then).
    pub async fn settled_usage(&self, task: &str, calls: u64) -> anyhow::Result<Value> {
        crate::wait_for("usage to be recorded", Duration::from_secs(20), || async {
            self.task_usage(task)
                .await
                .is_ok_and(|usage| usage["totals"]["calls"].as_u64() >= Some(calls))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(600)).await;
        self.task_usage(task).await
    }
}
