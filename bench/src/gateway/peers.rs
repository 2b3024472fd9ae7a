//! The processes `flotilla-bench gateway` measures: the scripted upstream on
//! a runtime of its own (its own threads, not the client's scheduler), a
//! one-server Flotilla cluster with a provider pointing at it and pending
//! desktops whose tokens the calls carry, and LiteLLM's proxy pointing at the
//! same upstream; plus what `/proc` says of a process (RSS, CPU time).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_tests::llm_upstream::ScriptedUpstream;
use flotilla_tests::{ServerFlags, TestCluster};
use serde_json::json;

/// The scripted upstream, served by `threads` worker threads of its own.
pub struct Upstream {
    upstream: Option<ScriptedUpstream>,
    runtime: Option<tokio::runtime::Runtime>,
    pub base_url: String,
}

impl Upstream {
    pub async fn start(threads: usize) -> anyhow::Result<Upstream> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("upstream")
            .enable_all()
            .build()
            .context("build the upstream's runtime")?;
        // Started from a task of that runtime, so it serves there.
        let upstream = runtime
            .spawn(ScriptedUpstream::start())
            .await
            .context("start the scripted upstream")?;
        Ok(Upstream {
            base_url: upstream.base_url(),
            upstream: Some(upstream),
            runtime: Some(runtime),
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        drop(self.upstream.take());
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How many open calls the gateway admits per desktop
/// (`flotilla_control_plane::gateway::DEFAULT_CALLS_PER_DESKTOP`).
pub const CALLS_PER_DESKTOP: usize = 16;

/// A one-server cluster serving the gateway on its desktop door.
pub struct Flotilla {
    pub cluster: TestCluster,
    /// `http://DOOR/v1/messages`.
    pub url: String,
    /// One token per pending desktop.
    pub tokens: Vec<String>,
    pub pid: u32,
}

impl Flotilla {
    /// Bootstraps the server, adds provider `anth` (kind anthropic) serving
    /// `models` from `upstream`, and makes `desktops` tasks in planning (no
    /// node: each gets a pending desktop, whose token is valid).
    pub async fn start(upstream: &str, models: &[String], desktops: usize) -> anyhow::Result<Self> {
        let cluster = TestCluster::start(1, ServerFlags::default()).await?;
        let server = cluster.servers[0].addr.clone();
        cluster
            .post_json(&server, "/api/v1/projects", json!({"id": "bench"}))
            .await?;
        cluster
            .post_json(
                &server,
                "/api/v1/projects/bench/repos",
                json!({"name": "gateway"}),
            )
            .await?;
        let models: Vec<_> = models.iter().map(|name| json!({"name": name})).collect();
        cluster
            .post_json(
                &server,
                "/api/v1/llm/providers",
                json!({"name": "anth", "kind": "anthropic", "base_url": upstream,
                       "key": "sk-bench-upstream", "models": models}),
            )
            .await?;
        let mut tokens = Vec::new();
        for index in 0..desktops.max(1) {
            let task = cluster
                .post_json(
                    &server,
                    "/api/v1/tasks",
                    json!({"title": format!("gateway bench {index}"), "column": "planning",
                           "repository": "bench/gateway"}),
                )
                .await?;
            let task = task["id"].as_str().context("the new task's id")?;
            tokens.push(cluster.desktop_token(task).await?);
        }
        let pid = pid_with_arg(&cluster.servers[0].data_dir.display().to_string())
            .context("find the server's process")?;
        Ok(Flotilla {
            url: format!("http://{}/v1/messages", cluster.servers[0].desktop_addr),
            cluster,
            tokens,
            pid,
        })
    }

    pub fn stop(mut self) -> anyhow::Result<()> {
        for server in &mut self.cluster.servers {
            server.stop()?;
        }
        Ok(())
    }
}

/// The process whose command line has `arg` as one argument (the server's
/// data directory is unique to it).
fn pid_with_arg(arg: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|&byte| byte == 0)
                .any(|part| part == arg.as_bytes())
                .then_some(pid)
        })
}

/// LiteLLM's proxy (`litellm --config`), one uvicorn worker, its defaults
/// but for the model cost map read from the package (this machine has no
/// internet) and a master key.
pub struct LiteLlm {
    child: Child,
    /// `http://127.0.0.1:PORT/v1/messages`.
    pub url: String,
    pub key: String,
    pub version: String,
    pub started_in: Duration,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl LiteLlm {
    /// Starts it with every model in `models` as `anthropic/<model>` at
    /// `upstream`; waits (at most `timeout`) for `/health/liveliness`.
    pub async fn start(
        exe: &Path,
        upstream: &str,
        models: &[String],
        timeout: Duration,
    ) -> anyhow::Result<LiteLlm> {
        let dir = tempfile::tempdir()?;
        let key = "sk-bench-litellm".to_owned();
        let mut config = String::from("model_list:\n");
        for model in models {
            config.push_str(&format!(
                "  - model_name: {model}\n    litellm_params:\n      model: anthropic/{model}\n      \
                 api_base: {upstream}\n      api_key: sk-bench-upstream\n"
            ));
        }
        config.push_str(&format!("general_settings:\n  master_key: {key}\n"));
        let config_path = dir.path().join("config.yaml");
        std::fs::write(&config_path, config)?;
        let version = Command::new(exe.with_file_name("python"))
            .args([
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ])
            .output()
            .ok()
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
            .unwrap_or_default();
        let port = flotilla_tests::free_port();
        let log = dir.path().join("litellm.log");
        let began = Instant::now();
        let child = Command::new(exe)
            .arg("--config")
            .arg(&config_path)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num_workers", "1"])
            .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(log.with_extension("err"))?)
            .spawn()
            .with_context(|| format!("run {}", exe.display()))?;
        let mut litellm = LiteLlm {
            child,
            url: format!("http://127.0.0.1:{port}/v1/messages"),
            key,
            version,
            started_in: Duration::ZERO,
            log,
            _dir: dir,
        };
        let health = format!("http://127.0.0.1:{port}/health/liveliness");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        loop {
            if let Some(status) = litellm.child.try_wait()? {
                bail!(
                    "litellm exited ({status}) while starting:\n{}",
                    litellm.log_tail()
                );
            }
            if http
                .get(&health)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
            {
                break;
            }
            if began.elapsed() > timeout {
                bail!(
                    "litellm did not answer {health} within {timeout:?}:\n{}",
                    litellm.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        litellm.started_in = began.elapsed();
        Ok(litellm)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its stdout and stderr.
    pub fn log_tail(&self) -> String {
        let mut tail = String::new();
        for path in [self.log.clone(), self.log.with_extension("err")] {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(20);
            tail.push_str(&lines[start..].join("\n"));
            tail.push('\n');
        }
        tail
    }
}

impl Drop for LiteLlm {
    fn drop(&mut self) {
        let _ = flotilla_tests::send_signal(&self.child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of `pid` and its descendants, KiB.
pub fn tree_rss_kib(pid: u32) -> u64 {
    let mut total = rss_kib(pid);
    for child in children(pid) {
        total += tree_rss_kib(child);
    }
    total
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        found.extend(
            text.split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok()),
        );
    }
    found
}

/// User + system CPU time `pid` has used.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(after) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
        return Duration::ZERO;
    };
    // After the command: state is field 3; utime and stime are 14 and 15.
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields
        .get(11..13)
        .into_iter()
        .flatten()
        .filter_map(|field| field.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf takes an integer and reads no memory of ours.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_secs_f64(ticks as f64 / per_second as f64)
}
