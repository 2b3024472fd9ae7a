//! `flotilla node ...`, `flotilla capacity` and `flotilla desktop list`:
//! the operator's view of the fleet, over the HTTP API.

use std::time::Duration;

use anyhow::Context;
use serde_json::{json, Value};

use crate::client::{Client, Output};

/// Newline-separated records from a streamed response.
mod ndjson {
    pub struct Lines {
        response: reqwest::Response,
        buffer: Vec<u8>,
        done: bool,
    }

    pub fn lines(response: reqwest::Response) -> Lines {
        Lines {
            response,
            buffer: Vec::new(),
            done: false,
        }
    }

    /// Longest record accepted (a base64 chunk of 1 MiB and then some).
    const MAX_LINE: usize = 4 << 20;

    impl Lines {
        pub async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
            loop {
                if let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    return Ok(Some(line[..line.len() - 1].to_vec()));
                }
                if self.done {
                    return Ok(None);
                }
                anyhow::ensure!(self.buffer.len() <= MAX_LINE, "an answer line is too long");
                match self.response.chunk().await? {
                    Some(chunk) => self.buffer.extend_from_slice(&chunk),
                    None => self.done = true,
                }
            }
        }
    }
}

/// `1.5 GiB`, `512 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const GIB: f64 = (1u64 << 30) as f64;
    const MIB: f64 = (1u64 << 20) as f64;
    let value = bytes as f64;
    if value >= GIB {
        format!("{:.1} GiB", value / GIB)
    } else {
        format!("{:.0} MiB", value / MIB)
    }
}

fn amount(value: &Value, format: fn(u64) -> String) -> String {
    let allocated = value["allocated"].as_u64().unwrap_or(0);
    let capacity = value["capacity"].as_u64().unwrap_or(0);
    format!("{}/{}", format(allocated), format(capacity))
}

fn millis(value: u64) -> String {
    format!("{value}m")
}

fn count(value: u64) -> String {
    value.to_string()
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}

/// A `desktop exec` whose remote command exited with this (non-zero)
/// status: `flotilla` exits with it too.
#[derive(Debug)]
pub struct RemoteExit(pub i32);

impl std::fmt::Display for RemoteExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command exited with status {}", self.0)
    }
}

impl std::error::Error for RemoteExit {}

impl Client {
    /// `flotilla desktop exec ID -- COMMAND...`.
    pub async fn desktop_exec(&self, id: &str, command: Vec<String>) -> anyhow::Result<()> {
        use base64::Engine;
        use ndjson::lines;
        use std::io::Write;
        let response = self
            .send_raw(
                self.http
                    .post(self.url(&format!("/api/v1/desktops/{id}/exec")))
                    .json(&json!({ "command": command })),
            )
            .await?;
        let engine = base64::engine::general_purpose::STANDARD;
        let mut lines = lines(response);
        while let Some(line) = lines.next().await? {
            let value: Value = serde_json::from_slice(&line).with_context(|| {
                format!(
                    "decode the server's answer: {}",
                    String::from_utf8_lossy(&line)
                )
            })?;
            if let Some(text) = value["stdout"].as_str() {
                let mut out = std::io::stdout().lock();
                out.write_all(&engine.decode(text)?)?;
                out.flush()?;
            } else if let Some(text) = value["stderr"].as_str() {
                let mut err = std::io::stderr().lock();
                err.write_all(&engine.decode(text)?)?;
                err.flush()?;
            } else if let Some(code) = value["exit_code"].as_i64() {
                return match code {
                    0 => Ok(()),
                    code => Err(RemoteExit(code as i32).into()),
                };
            } else if let Some(message) = value["error"].as_str() {
                anyhow::bail!("{message}");
            }
        }
        anyhow::bail!("the server ended the session without an exit status")
    }

    /// `flotilla desktop logs ID`.
    pub async fn desktop_logs(&self, id: &str, tail: u64) -> anyhow::Result<()> {
        use std::io::Write;
        let mut response = self
            .send_raw(
                self.http
                    .get(self.url(&format!("/api/v1/desktops/{id}/logs")))
                    .query(&[("tail", tail)]),
            )
            .await?;
        let mut out = std::io::stdout().lock();
        while let Some(chunk) = response.chunk().await.context("read the log")? {
            out.write_all(&chunk)?;
        }
        out.flush()?;
        Ok(())
    }

    /// Saves desktop `id`'s current frame as a PNG at `path`.
    pub async fn desktop_screenshot(&self, id: &str, path: &std::path::Path) -> anyhow::Result<()> {
        let response = self
            .send_raw(
                self.http
                    .get(self.url(&format!("/api/v1/desktops/{id}/screenshot"))),
            )
            .await?;
        let png = response.bytes().await.context("read the screenshot")?;
        std::fs::write(path, &png).with_context(|| format!("write {}", path.display()))?;
        eprintln!("{} ({} bytes)", path.display(), png.len());
        Ok(())
    }

    /// Sends one control request (a JSON object) to desktop `id`.
    pub async fn desktop_input(&self, id: &str, request: Value) -> anyhow::Result<()> {
        let answer: Value = self
            .send(
                self.http
                    .post(self.url(&format!("/api/v1/desktops/{id}/input")))
                    .json(&request),
            )
            .await?;
        if let Output::Json = self.output {
            return self.print_json(&answer);
        }
        if let Some(windows) = answer["windows"].as_array() {
            for window in windows {
                println!(
                    "{:>3} {} {:<16} {}x{}+{}+{}  {}",
                    window["id"],
                    if window["focused"] == true { "*" } else { " " },
                    text(&window["app_id"]),
                    window["width"],
                    window["height"],
                    window["x"],
                    window["y"],
                    text(&window["title"])
                );
            }
        }
        Ok(())
    }

    fn print_json(&self, value: &Value) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }

    pub async fn node_list(&self, stale: bool) -> anyhow::Result<()> {
        let nodes: Value = self
            .send(
                self.http
                    .get(self.url("/api/v1/nodes"))
                    .query(&[("stale", stale)]),
            )
            .await?;
        if let Output::Json = self.output {
            return self.print_json(&nodes);
        }
        println!(
            "{:<20}  {:<12}  {:<10}  {:<8}  {:>8}  {:>13}  {:>19}  {:>19}",
            "NAME", "STATUS", "ELIGIBLE", "DRAIN", "DESKTOPS", "CPU", "MEMORY", "GPU MEMORY"
        );
        for node in nodes.as_array().into_iter().flatten() {
            println!(
                "{:<20}  {:<12}  {:<10}  {:<8}  {:>8}  {:>13}  {:>19}  {:>19}",
                text(&node["name"]),
                text(&node["status"]),
                text(&node["eligibility"]),
                drain_state(node),
                amount(&node["desktops"], count),
                amount(&node["cpu_millis"], millis),
                amount(&node["memory_bytes"], human_bytes),
                amount(&node["gpu_memory_bytes"], human_bytes),
            );
        }
        Ok(())
    }

    async fn node(&self, name: &str) -> anyhow::Result<Value> {
        self.send(self.http.get(self.url(&format!("/api/v1/nodes/{name}"))))
            .await
    }

    pub async fn node_status(&self, name: &str) -> anyhow::Result<()> {
        let node = self.node(name).await?;
        if let Output::Json = self.output {
            return self.print_json(&node);
        }
        println!("name:        {}", text(&node["name"]));
        println!("id:          {}", text(&node["id"]));
        println!(
            "status:      {}, {}, drain: {}",
            text(&node["status"]),
            text(&node["eligibility"]),
            drain_state(&node)
        );
        if let Some(deadline) = node["drain"]["deadline_ms"].as_u64() {
            let left = deadline.saturating_sub(now_ms()) / 1000;
            println!("drain:       deadline in {left}s");
        }
        println!("address:     {}", text(&node["address"]));
        println!("desktops:    {}", amount(&node["desktops"], count));
        println!("cpu:         {}", amount(&node["cpu_millis"], millis));
        println!(
            "memory:      {}",
            amount(&node["memory_bytes"], human_bytes)
        );
        println!(
            "gpu memory:  {}",
            amount(&node["gpu_memory_bytes"], human_bytes)
        );
        if let Some(labels) = node["labels"].as_object().filter(|l| !l.is_empty()) {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            println!("labels:      {}", labels.join(", "));
        }
        println!("GPUs:");
        for gpu in node["gpus"].as_array().into_iter().flatten() {
            println!(
                "  gpu-{}  {}  {}  {}  uuid {}{}",
                gpu["index"],
                text(&gpu["name"]),
                amount(&gpu["allocation"], human_bytes),
                text(&gpu["driver"]),
                text(&gpu["uuid"]),
                if gpu["cpu_implementation"].as_bool() == Some(true) {
                    "  (CPU implementation)"
                } else {
                    ""
                }
            );
        }
        println!("desktops:");
        print_desktops(
            node["desktops_placed"]
                .as_array()
                .map_or(&[][..], Vec::as_slice),
        );
        Ok(())
    }

    pub async fn node_eligibility(&self, name: &str, eligible: bool) -> anyhow::Result<()> {
        let node: Value = self
            .send(
                self.http
                    .post(self.url(&format!("/api/v1/nodes/{name}/eligibility")))
                    .json(&json!({ "eligible": eligible })),
            )
            .await?;
        if let Output::Json = self.output {
            return self.print_json(&node);
        }
        println!(
            "node {} is {}",
            text(&node["name"]),
            text(&node["eligibility"])
        );
        Ok(())
    }

    pub async fn node_remove(&self, name: &str) -> anyhow::Result<()> {
        let _: Value = self
            .send(self.http.delete(self.url(&format!("/api/v1/nodes/{name}"))))
            .await?;
        match self.output {
            Output::Json => println!("{}", json!({ "removed": name })),
            Output::Table => println!("removed node {name}"),
        }
        Ok(())
    }

    pub async fn node_drain(&self, name: &str, drain: DrainRequest) -> anyhow::Result<()> {
        let node: Value = if drain.disable {
            self.send(
                self.http
                    .delete(self.url(&format!("/api/v1/nodes/{name}/drain"))),
            )
            .await?
        } else {
            let mut body = json!({ "force": drain.force, "max_parallel": drain.max_parallel });
            if let Some(deadline) = drain.deadline {
                body["deadline_secs"] = json!(deadline.as_secs());
            }
            self.send(
                self.http
                    .post(self.url(&format!("/api/v1/nodes/{name}/drain")))
                    .json(&body),
            )
            .await?
        };
        if !drain.monitor || drain.disable {
            if let Output::Json = self.output {
                return self.print_json(&node);
            }
            if drain.disable {
                println!(
                    "drain of {} cancelled; it stays {} (uncordon to take new desktops)",
                    text(&node["name"]),
                    text(&node["eligibility"])
                );
            } else {
                println!(
                    "draining {}: {} desktops to move; follow with `flotilla node drain {} --monitor`",
                    text(&node["name"]),
                    node["desktops"]["allocated"],
                    text(&node["name"])
                );
            }
            return Ok(());
        }
        self.monitor_drain(name).await
    }

    /// Follows a drain until it completes; Ctrl-C leaves it running.
    async fn monitor_drain(&self, name: &str) -> anyhow::Result<()> {
        let mut last = None;
        loop {
            let node = self.node(name).await?;
            let left = node["desktops"]["allocated"].as_u64().unwrap_or(0);
            let draining = node["draining"].as_bool().unwrap_or(false);
            if last != Some((left, draining)) {
                last = Some((left, draining));
                match self.output {
                    Output::Json => println!(
                        "{}",
                        json!({"name": node["name"], "draining": draining, "desktops_left": left})
                    ),
                    Output::Table => println!(
                        "{}  {}: {left} desktop(s) left",
                        time_of_day(),
                        text(&node["name"])
                    ),
                }
            }
            if !draining {
                if node["drained_at_ms"].is_u64() {
                    if let Output::Table = self.output {
                        println!("drain of {} complete", text(&node["name"]));
                    }
                    return Ok(());
                }
                anyhow::bail!("the drain of {name} was cancelled");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    pub async fn gpu_info(&self, node: Option<&str>) -> anyhow::Result<()> {
        let mut request = self.http.get(self.url("/api/v1/gpus"));
        if let Some(node) = node {
            request = request.query(&[("node", node)]);
        }
        let info: Value = self.send(request).await?;
        if let Output::Json = self.output {
            return self.print_json(&info);
        }
        let flag = |value: &Value| {
            if value.as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            }
        };
        let desktops = |list: &Value| {
            for desktop in list.as_array().into_iter().flatten() {
                println!(
                    "    {:<24} {:>10} of {:>10}",
                    text(&desktop["desktop"]),
                    human_bytes(desktop["charged_bytes"].as_u64().unwrap_or(0)),
                    human_bytes(desktop["budget_bytes"].as_u64().unwrap_or(0)),
                );
            }
        };
        let gpus = info["gpus"].as_array().cloned().unwrap_or_default();
        if gpus.is_empty() && info["cpu_rendered"].as_array().is_none_or(|l| l.is_empty()) {
            println!("no GPUs");
        }
        for gpu in &gpus {
            println!(
                "{} gpu-{}  {}  ({})",
                text(&gpu["node"]),
                gpu["index"],
                text(&gpu["name"]),
                text(&gpu["driver"])
            );
            println!("  uuid:     {}", text(&gpu["uuid"]));
            println!(
                "  memory:   {}, {} charged to desktops",
                human_bytes(gpu["memory_bytes"].as_u64().unwrap_or(0)),
                human_bytes(gpu["charged_bytes"].as_u64().unwrap_or(0))
            );
            let c = &gpu["capabilities"];
            if c.is_null() {
                println!("  gpud:     not opened (the CPU renders for its desktops)");
            } else {
                println!(
                    "  vulkan:   {}, {} queue(s); dma-buf {}, DRM modifiers {}, memory budget {}, external memory fd {}, semaphore fd {}, fence fd {}, video encode {}",
                    text(&c["api_version"]),
                    c["queue_count"],
                    flag(&c["dma_buf"]),
                    flag(&c["drm_format_modifiers"]),
                    flag(&c["memory_budget"]),
                    flag(&c["external_memory_fd"]),
                    flag(&c["external_semaphore_fd"]),
                    flag(&c["external_fence_fd"]),
                    flag(&c["video_encode"]),
                );
            }
            println!(
                "  desktops: {} (charged of budget)",
                gpu["desktops"].as_array().map_or(0, Vec::len)
            );
            desktops(&gpu["desktops"]);
        }
        if let Some(list) = info["cpu_rendered"].as_array().filter(|l| !l.is_empty()) {
            println!("rendered on the CPU (nodes without a GPU): {}", list.len());
            desktops(&info["cpu_rendered"]);
        }
        Ok(())
    }

    pub async fn capacity(&self, stale: bool) -> anyhow::Result<()> {
        let capacity: Value = self
            .send(
                self.http
                    .get(self.url("/api/v1/capacity"))
                    .query(&[("stale", stale)]),
            )
            .await?;
        if let Output::Json = self.output {
            return self.print_json(&capacity);
        }
        let header = |first: &str| {
            println!(
                "{:<24}  {:>21}  {:>27}  {:>27}  {:>12}",
                first, "CPU (alloc/cap free)", "MEMORY", "GPU MEMORY", "DESKTOPS"
            )
        };
        let line = |name: &str, value: &Value| {
            let free = |key: &str, format: fn(u64) -> String| {
                format!(
                    "{} {}",
                    amount(&value[key], format),
                    format(value[key]["free"].as_u64().unwrap_or(0))
                )
            };
            println!(
                "{:<24}  {:>21}  {:>27}  {:>27}  {:>12}",
                name,
                free("cpu_millis", millis),
                free("memory_bytes", human_bytes),
                free("gpu_memory_bytes", human_bytes),
                free("desktops", count)
            );
        };
        header("NODE");
        for node in capacity["nodes"].as_array().into_iter().flatten() {
            let label = format!("{} ({})", text(&node["name"]), text(&node["status"]));
            line(&label, node);
            for gpu in node["gpus"].as_array().into_iter().flatten() {
                println!(
                    "  gpu-{:<3} {:<40} {}",
                    gpu["index"],
                    text(&gpu["name"]),
                    amount(&gpu["memory_bytes"], human_bytes)
                );
            }
        }
        let total = &capacity["total"];
        line(&format!("TOTAL ({} ready)", total["nodes"]), total);
        Ok(())
    }

    pub async fn desktop_list(&self, stale: bool) -> anyhow::Result<()> {
        let list: Value = self
            .send(
                self.http
                    .get(self.url("/api/v1/desktops"))
                    .query(&[("stale", stale)]),
            )
            .await?;
        if let Output::Json = self.output {
            return self.print_json(&list["desktops"]);
        }
        print_desktops(list["desktops"].as_array().map_or(&[][..], Vec::as_slice));
        Ok(())
    }
}

fn print_desktops(desktops: &[Value]) {
    println!(
        "{:<12}  {:<36}  {:<20}  {:<9}  {:<8}  REASON",
        "ID", "TASK", "NODE", "STATE", "INTENT"
    );
    for desktop in desktops {
        println!(
            "{:<12}  {:<36}  {:<20}  {:<9}  {:<8}  {}",
            text(&desktop["id"]),
            text(&desktop["task"]),
            desktop["node"].as_str().unwrap_or("(pending)"),
            text(&desktop["state"]),
            text(&desktop["intent"]),
            desktop["reason"].as_str().unwrap_or("")
        );
    }
}

fn drain_state(node: &Value) -> &'static str {
    if node["draining"].as_bool() == Some(true) {
        "draining"
    } else if node["drained_at_ms"].is_u64() {
        "drained"
    } else {
        "-"
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

fn time_of_day() -> String {
    let seconds = now_ms() / 1000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

pub struct DrainRequest {
    pub deadline: Option<Duration>,
    pub force: bool,
    pub monitor: bool,
    pub disable: bool,
    pub max_parallel: u32,
}

/// Parses `k=v` into a pair, checking it as the server would.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not a label; use key=value"))?;
    flotilla_control_plane::types::validate_label(key, value)?;
    Ok((key.to_owned(), value.to_owned()))
}

/// Parses what `--cpu-millis` etc. give into a resources object.
pub fn resources_json(
    cpu_millis: Option<u64>,
    memory: Option<u64>,
    gpu_memory: Option<u64>,
    needs_gpu: bool,
    constraints: Vec<(String, String)>,
    egress: Option<flotilla_control_plane::types::Egress>,
) -> anyhow::Result<Option<Value>> {
    if cpu_millis.is_none()
        && memory.is_none()
        && gpu_memory.is_none()
        && !needs_gpu
        && constraints.is_empty()
        && egress.is_none()
    {
        return Ok(None);
    }
    let default = flotilla_control_plane::types::DesktopResources::default();
    let resources = flotilla_control_plane::types::DesktopResources {
        cpu_millis: cpu_millis.unwrap_or(default.cpu_millis),
        memory_bytes: memory.unwrap_or(default.memory_bytes),
        gpu_memory_bytes: gpu_memory.unwrap_or(0),
        needs_gpu,
        labels: constraints.into_iter().collect(),
        egress: egress.unwrap_or_default(),
        profile: Default::default(),
    };
    resources.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(
        serde_json::to_value(resources).context("encode the resources")?,
    ))
}
