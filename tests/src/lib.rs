//! Harness for cross-process tests: real `flotilla` processes on 127.0.0.1,
//! each with its own data directory, driven over their real APIs.
//!
//! The binary is the one cargo built beside the test executable
//! (`target/<profile>/flotilla`); `cargo test --workspace` builds it because
//! the `cli` package has integration tests of its own.

pub mod cdp;
pub mod desktop;
pub mod git;
pub mod git_http;
pub mod llm_upstream;
pub mod netns;
pub mod sdk;
pub mod sdk_matrix;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

/// Path of the `flotilla` binary under test.
pub fn flotilla_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FLOTILLA_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the test knows its own path");
    // target/<profile>/deps/<test> -> target/<profile>/flotilla
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binaries live in target/<profile>/deps");
    let binary = profile_dir.join("flotilla");
    assert!(
        binary.exists(),
        "{} is missing: build it with `cargo build --bin flotilla` (cargo test --workspace does)",
        binary.display()
    );
    binary
}

/// Sends `signal` to a child process.
pub fn send_signal(child: &Child, signal: libc::c_int) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("pid fits pid_t")?;
    // SAFETY: kill(2) takes plain integers; `pid` is our own child, which has
    // not been reaped yet (we hold its `Child`), so the pid is not reused.
    let result = unsafe { libc::kill(pid, signal) };
    if result != 0 {
        bail!("kill -{signal} {pid}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes task `write-<index>` through any of `addrs` until acknowledged,
/// retrying with the same idempotency key; `false` if the deadline passed
/// first (the write may or may not have happened).
pub async fn write_with_retries(
    http: &reqwest::Client,
    token: &str,
    addrs: &[String],
    index: usize,
    deadline: Instant,
) -> anyhow::Result<bool> {
    let key = format!("key-{index}");
    let title = format!("write-{index}");
    let mut attempt = index;
    while Instant::now() < deadline {
        let addr = &addrs[attempt % addrs.len()];
        attempt += 1;
        let response = http
            .post(format!("http://{addr}/api/v1/tasks"))
            .bearer_auth(token)
            .header("idempotency-key", &key)
            .json(&serde_json::json!({ "title": title }))
            .send()
            .await;
        match response {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => return Ok(true),
            Ok(response) if response.status().is_client_error() => {
                bail!("write {index} rejected: HTTP {}", response.status())
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    Ok(false)
}

/// Checks an HTTP error answer: its status, its stable `code`, a non-empty
/// message; returns the body.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.expect("error bodies are JSON");
    assert_eq!(actual, status, "unexpected status, body {body}");
    assert_eq!(body["error"]["code"], code, "unexpected code in {body}");
    let message = body["error"]["message"].as_str().expect("a message");
    assert!(!message.is_empty(), "empty message in {body}");
    body
}

/// A gRPC request carrying `token` as its bearer token.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ASCII header"),
    );
    request
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}

/// Extra flags for every server of a test cluster.
#[derive(Clone, Debug, Default)]
pub struct ServerFlags(pub Vec<String>);

/// One `flotilla server` process.
pub struct ServerProcess {
    pub node_id: u64,
    pub addr: String,
    /// The desktop door (`--desktop-listen`).
    pub desktop_addr: String,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    log_path: PathBuf,
}

impl ServerProcess {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .context("open server log")?;
        let child = Command::new(flotilla_bin())
            .args(&self.args)
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("clone log handle")?)
            .stderr(log)
            .spawn()
            .context("spawn flotilla server")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("server is not running"))?;
        send_signal(&child, libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().context("wait for server")? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("server {} did not stop within 20s of SIGTERM", self.node_id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGSTOP: the process stays alive but neither sends nor answers, as if
    /// cut off from the network.
    pub fn pause(&self) -> anyhow::Result<()> {
        match &self.child {
            Some(child) => send_signal(child, libc::SIGSTOP),
            None => Ok(()),
        }
    }

    /// SIGCONT after [`ServerProcess::pause`].
    pub fn resume(&self) -> anyhow::Result<()> {
        match &self.child {
            Some(child) => send_signal(child, libc::SIGCONT),
            None => Ok(()),
        }
    }

    /// Starts it again with the same arguments.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of real servers in one temporary directory.
pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub servers: Vec<ServerProcess>,
    pub token: String,
    pub http: reqwest::Client,
    flags: ServerFlags,
    /// Address the servers listen on.
    host: String,
}

impl TestCluster {
    /// Bootstraps server 1, then joins servers 2..=n and waits for n voters.
    pub async fn start(size: u64, flags: ServerFlags) -> anyhow::Result<TestCluster> {
        TestCluster::start_on("127.0.0.1", size, flags).await
    }

    /// [`TestCluster::start`] with the servers listening on `host` (an
    /// address of this machine, e.g. a test bridge's).
    pub async fn start_on(
        host: &str,
        size: u64,
        flags: ServerFlags,
    ) -> anyhow::Result<TestCluster> {
        let root = tempfile::tempdir().context("create the cluster directory")?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .context("build the HTTP client")?;
        let mut cluster = TestCluster {
            root,
            servers: Vec::new(),
            token: String::new(),
            http,
            flags,
            host: host.to_owned(),
        };
        cluster.add_server(1, None)?;
        let first_dir = cluster.servers[0].data_dir.clone();
        wait_for("the operator token file", Duration::from_secs(30), || {
            let path = first_dir.join("operator.token");
            async move { path.exists() }
        })
        .await?;
        cluster.token = std::fs::read_to_string(first_dir.join("operator.token"))
            .context("read the operator token")?
            .trim()
            .to_owned();
        let first_addr = cluster.servers[0].addr.clone();
        cluster
            .wait_for_members(&first_addr, 1, Duration::from_secs(30))
            .await?;
        for node_id in 2..=size {
            cluster.join_server(node_id).await?;
        }
        Ok(cluster)
    }

    /// Starts server `node_id` and waits until it is a voter.
    pub async fn join_server(&mut self, node_id: u64) -> anyhow::Result<()> {
        let seed = self.servers[0].addr.clone();
        self.add_server(node_id, Some(&seed))?;
        let voters = self.servers.len();
        self.wait_for_members(&seed, voters, Duration::from_secs(60))
            .await
    }

    fn add_server(&mut self, node_id: u64, join: Option<&str>) -> anyhow::Result<()> {
        let port = TcpListener::bind((self.host.as_str(), 0))
            .and_then(|listener| listener.local_addr())
            .context("find a free port")?
            .port();
        let addr = format!("{}:{port}", self.host);
        let desktop_port = TcpListener::bind((self.host.as_str(), 0))
            .and_then(|listener| listener.local_addr())
            .context("find a free port")?
            .port();
        let desktop_addr = format!("{}:{desktop_port}", self.host);
        let data_dir = self.root.path().join(format!("server-{node_id}"));
        let mut args = vec![
            "server".to_owned(),
            "--node-id".to_owned(),
            node_id.to_string(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            addr.clone(),
            "--desktop-listen".to_owned(),
            desktop_addr.clone(),
        ];
        match join {
            None => args.push("--bootstrap".to_owned()),
            Some(seed) => {
                let token_file = self.root.path().join("server-1").join("server-join.token");
                args.extend([
                    "--join".to_owned(),
                    seed.to_owned(),
                    "--token-file".to_owned(),
                    token_file.display().to_string(),
                ]);
            }
        }
        args.extend(self.flags.0.iter().cloned());
        let mut server = ServerProcess {
            node_id,
            addr,
            desktop_addr,
            data_dir,
            args,
            child: None,
            log_path: self.root.path().join(format!("server-{node_id}.log")),
        };
        server.spawn()?;
        self.servers.push(server);
        Ok(())
    }

    pub fn server(&mut self, node_id: u64) -> &mut ServerProcess {
        self.servers
            .iter_mut()
            .find(|server| server.node_id == node_id)
            .expect("no such server in this test cluster")
    }

    /// `GET /api/v1/cluster` from one server.
    pub async fn status(&self, addr: &str) -> anyhow::Result<Value> {
        let response = self
            .http
            .get(format!("http://{addr}/api/v1/cluster"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("cluster status from {addr}: HTTP {}", response.status());
        }
        Ok(response.json().await?)
    }

    /// Waits until `addr` reports a leader and `voters` voters.
    pub async fn wait_for_members(
        &self,
        addr: &str,
        voters: usize,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(
            &format!("{voters} voters seen from {addr}"),
            timeout,
            || async {
                match self.status(addr).await {
                    Ok(status) => {
                        let count = status["members"].as_array().map_or(0, |members| {
                            members.iter().filter(|m| m["role"] == "voter").count()
                        });
                        !status["leader"].is_null() && count == voters
                    }
                    Err(_) => false,
                }
            },
        )
        .await
    }

    /// The current leader's id, as a majority of running servers agree.
    pub async fn leader(&self) -> anyhow::Result<u64> {
        for server in &self.servers {
            if let Ok(status) = self.status(&server.addr).await {
                if let Some(leader) = status["leader"].as_u64() {
                    return Ok(leader);
                }
            }
        }
        bail!("no server reports a leader")
    }

    /// Creates a task; `Ok(None)` when the server answered but did not
    /// acknowledge (5xx, timeout): the write may or may not have happened.
    pub async fn create_task(
        &self,
        addr: &str,
        title: &str,
        idempotency_key: &str,
    ) -> anyhow::Result<Option<Value>> {
        let response = self
            .http
            .post(format!("http://{addr}/api/v1/tasks"))
            .bearer_auth(&self.token)
            .header("idempotency-key", idempotency_key)
            .json(&serde_json::json!({ "title": title }))
            .send()
            .await;
        match response {
            Ok(response) if response.status() == reqwest::StatusCode::CREATED => {
                Ok(Some(response.json().await?))
            }
            Ok(response) if response.status().is_client_error() => {
                bail!(
                    "create rejected: HTTP {}: {}",
                    response.status(),
                    response.text().await.unwrap_or_default()
                )
            }
            Ok(_) | Err(_) => Ok(None),
        }
    }

    /// All tasks, read linearizably (or stale) from `addr`.
    pub async fn list_tasks(&self, addr: &str, stale: bool) -> anyhow::Result<Vec<Value>> {
        let response = self
            .http
            .get(format!("http://{addr}/api/v1/tasks?stale={stale}"))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("list tasks from {addr}: HTTP {}", response.status());
        }
        let list: Value = response.json().await?;
        Ok(list["tasks"].as_array().cloned().unwrap_or_default())
    }

    /// `POST` of `body` to `path` on `addr` with the operator token; an
    /// error carries the answer's status and text.
    pub async fn post_json(
        &self,
        addr: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<Value> {
        let response = self
            .http
            .post(format!("http://{addr}{path}"))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = response.status();
        let text = response.text().await?;
        if !status.is_success() {
            bail!("{path}: {status} {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Waits until `addr` lists exactly `count` tasks.
    pub async fn wait_for_task_count(
        &self,
        addr: &str,
        count: usize,
        stale: bool,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(&format!("{count} tasks on {addr}"), timeout, || async {
            self.list_tasks(addr, stale)
                .await
                .is_ok_and(|tasks| tasks.len() == count)
        })
        .await
        .with_context(|| self.logs())
    }

    /// Server logs, for failure messages.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|server| {
                let log = server.log();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- server {} ---\n{}\n", server.node_id, tail.join("\n"))
            })
            .collect()
    }
}

/// Live processes running as a host uid of the sandbox slots `slots`
/// (tests running side by side use distinct slots).
pub fn sandbox_processes(slots: std::ops::Range<u32>) -> Vec<u32> {
    use flotilla_node_agent::sandbox::SandboxSpec;
    let low = SandboxSpec::uid_base_for(slots.start);
    let high = SandboxSpec::uid_base_for(slots.end);
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let uid: Option<u32> = status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .and_then(|line| line.split_whitespace().nth(1)?.parse().ok());
        if uid.is_some_and(|uid| (low..high).contains(&uid)) {
            found.push(pid);
        }
    }
    found
}

/// A desktop to start on a runtime directly: 250 mCPU, 256 MiB, no GPU
/// memory, the default egress and profile.
pub fn desktop_spec(id: &str, generation: u64) -> flotilla_node_agent::runtime::DesktopSpec {
    flotilla_node_agent::runtime::DesktopSpec {
        token: String::new(),
        repository: String::new(),
        profile: Default::default(),
        desktop_id: id.to_owned(),
        task_id: "t".to_owned(),
        generation,
        cpu_millis: 250,
        memory_bytes: 256 << 20,
        gpu_memory_bytes: 0,
        gpu: None,
        egress: Default::default(),
    }
}

/// Polls `runtime` until desktop `id` is in `phase` (30 s at most).
pub fn wait_phase(
    runtime: &mut dyn flotilla_node_agent::runtime::DesktopRuntime,
    id: &str,
    phase: &str,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let observed = runtime.poll();
        if observed
            .iter()
            .any(|o| o.desktop_id == id && o.phase.as_str() == phase)
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never {phase}: {observed:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A node agent process with a desktop bridge of its own: on drop it is
/// stopped (SIGTERM, as an operator would) and the bridge and nftables
/// table it made are removed.
pub struct AgentProcess {
    pub child: Child,
    pub bridge: String,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
        let settings = flotilla_node_agent::sandbox::net::NetworkSettings {
            bridge: self.bridge.clone(),
            ..Default::default()
        };
        let _ = flotilla_node_agent::sandbox::net::Network::remove_host_setup(&settings);
    }
}

/// Waits until task `task_id` (at `base`, the `/api/v1` URL) has a running
/// desktop; returns the desktop's id.
pub async fn wait_for_running_desktop(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    task_id: &str,
) -> anyhow::Result<String> {
    let found = std::sync::Mutex::new(String::new());
    wait_for("a running desktop", Duration::from_secs(60), || async {
        let Ok(response) = http
            .get(format!("{base}/tasks/{task_id}"))
            .bearer_auth(token)
            .send()
            .await
        else {
            return false;
        };
        let task: serde_json::Value = response.json().await.unwrap_or_default();
        if task["desktop"]["state"] == "running" {
            *found.lock().unwrap_or_else(|p| p.into_inner()) = task["desktop"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            return true;
        }
        false
    })
    .await?;
    Ok(found.into_inner().unwrap_or_else(|p| p.into_inner()))
}

impl AgentProcess {
    /// A node agent joined to `cluster`'s first server that runs desktop
    /// sessions (compositor + `apps`, display `display` like "640x480")
    /// in sandboxes on a bridge of its own; its stdout goes to `log`.
    pub fn start_with_sessions(
        cluster: &TestCluster,
        name: &str,
        data: &std::path::Path,
        log: &std::path::Path,
        display: &str,
        apps: &[&str],
    ) -> anyhow::Result<AgentProcess> {
        AgentProcess::start_with_sessions_and(cluster, name, data, log, display, apps, &[])
    }

    /// As [`AgentProcess::start_with_sessions`], with `extra` agent flags.
    pub fn start_with_sessions_and(
        cluster: &TestCluster,
        name: &str,
        data: &std::path::Path,
        log: &std::path::Path,
        display: &str,
        apps: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<AgentProcess> {
        // Tests of one process run at once: each data directory its own
        // bridge and subnet (the same again when an agent restarts on it).
        let id = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            data.hash(&mut hasher);
            std::process::id().hash(&mut hasher);
            (hasher.finish() % 10_000) as u32
        };
        let bridge = format!("fs{id}");
        let join: Vec<&str> = cluster.servers.iter().map(|s| s.addr.as_str()).collect();
        let join = join.join(",");
        let mut command = std::process::Command::new(flotilla_bin());
        command
            .args(["node-agent", "--join", &join, "--token-file"])
            .arg(cluster.servers[0].data_dir.join("node-join.token"))
            .args(["--name", name, "--data-dir"])
            .arg(data)
            .args(["--stop-grace", "2s", "--netns-pool", "1"])
            .args(["--desktop-bridge", &bridge])
            .args(["--desktop-subnet", &format!("10.{}.0.0/16", 100 + id % 50)])
            .args(["--display-size", display, "--desktop-session"]);
        for server in &cluster.servers {
            command.args(["--desktop-endpoint", &server.desktop_addr]);
        }
        for app in apps {
            command.args(["--desktop-app", app]);
        }
        command.args(extra);
        let child = command
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()?;
        Ok(AgentProcess { child, bridge })
    }
}
