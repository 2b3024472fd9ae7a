//! `flotilla-bench stream`: a desktop watched live, end to end on this
//! machine (root: real sandboxes, gpud on lavapipe, foot), with Rust
//! WebSocket viewers on the control plane's port.
//!
//! - **typing**: the viewer in control pastes one character at a time;
//!   "key → WebSocket" is from sending it to the first frame that arrives
//!   after it (foot's reaction, composition, I420, encode, tunnel, hub,
//!   WebSocket); "capture → WebSocket" is from gpud's frame being read by
//!   the encoder (the frame header's timestamp, same clock) to arrival.
//! - **full screen**: foot running `--full-screen` (default `base64
//!   /dev/urandom`: the whole terminal scrolls and every glyph changes every
//!   frame, the encoder's worst case; `yes` would scroll identical lines) watched for `--seconds`: frames and bytes per second per
//!   viewer, capture → WebSocket, and the node agent's CPU per second
//!   while streaming minus while idle (the encoder's cost).
//! - **card → first frame**: `--runs` tasks created in Planning; from the
//!   create call to the first decoded frame on a viewer's socket (the
//!   viewer connects as soon as the desktop runs).
//!
//! Anchors (from the issue): Helix ≈ 15 s to a warm session and 25–150 ms
//! key-to-eye; Parsec ≈ 7 ms added on a LAN. Goals: commit → WebSocket
//! p50 ≤ 16.7 ms; card → first frame p50 < 1 s.

use std::time::{Duration, Instant};

use flotilla_stream::encode::H264Decoder;
use flotilla_stream::frame::{now_us, Header};
use flotilla_tests::{AgentProcess, ServerFlags, TestCluster};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::{millis, percentile};

#[derive(clap::Args)]
pub struct StreamArgs {
    /// Characters typed in the typing workload.
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// Seconds the full-screen workload is watched.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Tasks created for card → first frame.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// The full-screen workload: the program foot runs (split on spaces).
    #[arg(long, default_value = "base64 /dev/urandom")]
    full_screen: String,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn viewer(addr: &str, token: &str, desktop: &str) -> anyhow::Result<Socket> {
    let mut request =
        format!("ws://{addr}/api/v1/desktops/{desktop}/stream?name=bench").into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // No Nagle, as browsers do: an ack followed by input would otherwise
    // wait for the server's delayed TCP ack.
    Ok(
        tokio_tungstenite::connect_async_with_config(request, None, true)
            .await?
            .0,
    )
}

/// The next frame message (events skipped), with its arrival time.
async fn frame(socket: &mut Socket, within: Duration) -> Option<(Header, Vec<u8>, u64)> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(text) = &message {
            // The stream's own account of itself: rate changes and skips.
            if text.contains(r#""type":"rate""#) || text.contains(r#""type":"skipped""#) {
                eprintln!("stream event: {text}");
            }
        }
        if let Message::Binary(bytes) = message {
            let arrived = now_us();
            let (header, payload) = Header::parse(&bytes).ok()?;
            // Acknowledged on arrival, as the board does.
            let ack = format!(r#"{{"type":"ack","sequence":{}}}"#, header.sequence);
            socket.send(Message::Text(ack.into())).await.ok()?;
            return Some((header, payload.to_vec(), arrived));
        }
    }
}

/// The processes of desktop `id` that are Flotilla's own (sandbox-init,
/// the session, the compositor): found by their cgroup naming the desktop
/// and their command line; (pid, role).
fn desktop_processes(id: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cgroup.contains(id) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        // The init is forked by the agent's zygote without an exec: it
        // keeps the zygote's command line, inside the desktop's cgroup.
        let role = match args.get(1).map(String::as_str) {
            Some("sandbox-init" | "sandbox-zygote") => "init",
            Some("desktop-session") => "session",
            Some("compositor") => "compositor",
            _ => continue,
        };
        found.push((pid, role.to_owned()));
    }
    found.sort_by(|a, b| a.1.cmp(&b.1));
    found
}

struct Fleet {
    cluster: TestCluster,
    _agent: AgentProcess,
    agent_pid: u32,
    base: String,
}

async fn fleet(app: &str) -> anyhow::Result<Fleet> {
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let base = format!("http://{}/api/v1", cluster.servers[0].addr);
    let log = cluster.root.path().join("agent.log");
    let agent = AgentProcess::start_with_sessions(
        &cluster,
        "bench-node",
        &cluster.root.path().join("agent"),
        &log,
        "1280x800",
        &[app],
    )?;
    let agent_pid = agent.child.id();
    Ok(Fleet {
        cluster,
        _agent: agent,
        agent_pid,
        base,
    })
}

impl Fleet {
    /// A task in Planning; its running desktop's id.
    async fn desktop(&self, title: &str) -> anyhow::Result<String> {
        Ok(self.task_desktop(title).await?.1)
    }

    /// A task in Planning: its id and its running desktop's id.
    async fn task_desktop(&self, title: &str) -> anyhow::Result<(String, String)> {
        let task: Value = self
            .cluster
            .http
            .post(format!("{}/tasks", self.base))
            .bearer_auth(&self.cluster.token)
            .json(&json!({"title": title, "column": "planning"}))
            .send()
            .await?
            .json()
            .await?;
        let id = task["id"].as_str().unwrap_or_default().to_owned();
        let desktop = flotilla_tests::wait_for_running_desktop(
            &self.cluster.http,
            &self.base,
            &self.cluster.token,
            &id,
        )
        .await?;
        Ok((id, desktop))
    }

    /// Moves a task to Done, so its desktop gives back its capacity.
    async fn done(&self, task: &str) -> anyhow::Result<()> {
        let moved = self
            .cluster
            .http
            .post(format!("{}/tasks/{task}/move", self.base))
            .bearer_auth(&self.cluster.token)
            .json(&json!({"column": "done"}))
            .send()
            .await?;
        anyhow::ensure!(
            moved.status().is_success(),
            "move to done: {}",
            moved.status()
        );
        Ok(())
    }
}

fn summary(name: &str, samples: &mut [Duration]) {
    samples.sort();
    if samples.is_empty() {
        println!("{name}: no samples");
        return;
    }
    println!(
        "{name}: p50 {} ms, p99 {} ms ({} samples)",
        millis(percentile(samples, 0.5)),
        millis(percentile(samples, 0.99)),
        samples.len()
    );
}

pub async fn run(args: StreamArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        flotilla_tests::netns::available()?,
        "run as root: the bench builds real sandboxes"
    );
    println!("# flotilla-bench stream: 1280×800, foot in a sandboxed desktop, gpud on this host's Vulkan device");

    // Typing.
    let typing = fleet("foot").await?;
    let addr = typing.cluster.servers[0].addr.clone();
    let token = typing.cluster.token.clone();
    let desktop = typing.desktop("typing").await?;
    let mut socket = viewer(&addr, &token, &desktop).await?;
    frame(&mut socket, Duration::from_secs(30))
        .await
        .ok_or_else(|| anyhow::anyhow!("no first frame"))?;
    socket
        .send(Message::Text(
            json!({"type": "take_control"}).to_string().into(),
        ))
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (mut key_to_ws, mut capture_to_ws) = (Vec::new(), Vec::new());
    for i in 0..args.keys {
        // Drain what is queued, then type.
        while frame(&mut socket, Duration::from_millis(30))
            .await
            .is_some()
        {}
        let c = (b'a' + (i % 26) as u8) as char;
        let sent = Instant::now();
        socket
            .send(Message::Text(
                json!({"type": "paste", "text": c.to_string()})
                    .to_string()
                    .into(),
            ))
            .await?;
        if let Some((header, _, arrived)) = frame(&mut socket, Duration::from_secs(2)).await {
            key_to_ws.push(sent.elapsed());
            capture_to_ws.push(Duration::from_micros(
                arrived.saturating_sub(header.captured_us),
            ));
        }
    }
    println!("## typing ({} keys)", args.keys);
    summary("key → frame on the WebSocket (incl. foot)", &mut key_to_ws);
    summary("capture → frame on the WebSocket", &mut capture_to_ws);
    drop(socket);
    // The desktop's own overhead, idle and unwatched: its init, session
    // and compositor (not foot, not gpud, which the agent hosts).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let parts = desktop_processes(&desktop);
    let pss: u64 = parts
        .iter()
        .map(|(pid, _)| crate::compositor::proc_kib(*pid, "smaps_rollup", "Pss:"))
        .sum();
    let mut roles: Vec<String> = Vec::new();
    for (_, role) in &parts {
        let count = parts.iter().filter(|(_, r)| r == role).count();
        let name = if count > 1 {
            format!("{count} × {role}")
        } else {
            role.clone()
        };
        if !roles.contains(&name) {
            roles.push(name);
        }
    }
    println!(
        "idle desktop's own processes ({}): PSS {:.1} MiB",
        roles.join(" + "),
        pss as f64 / 1024.0
    );

    // Card → first frame.
    let mut card = Vec::new();
    for run in 0..args.runs {
        let started = Instant::now();
        let (task, desktop) = typing.task_desktop(&format!("card {run}")).await?;
        let mut socket = viewer(&addr, &token, &desktop).await?;
        let mut decoder = H264Decoder::new()?;
        loop {
            let Some((_, payload, _)) = frame(&mut socket, Duration::from_secs(30)).await else {
                anyhow::bail!("no frame for run {run}");
            };
            if decoder.decode_rgb(&payload)?.is_some() {
                break;
            }
        }
        card.push(started.elapsed());
        drop(socket);
        typing.done(&task).await?;
        // Let the desktop leave before the next one is timed.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("## card → first decoded frame ({} runs)", args.runs);
    summary("task created in Planning → first frame decoded", &mut card);
    drop(typing);

    // Full screen.
    let full = fleet(&format!("foot {}", args.full_screen)).await?;
    let addr = full.cluster.servers[0].addr.clone();
    let token = full.cluster.token.clone();
    let desktop = full.desktop("full screen").await?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let ticks = |pid: u32| -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rfind(')').map_or("", |at| &stat[at + 2..]);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        field(11) + field(12)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_start = ticks(full.agent_pid);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let idle_ms_per_s = (ticks(full.agent_pid) - idle_start) / hz * 1000.0 / args.seconds as f64;
    let mut socket = viewer(&addr, &token, &desktop).await?;
    let start_ticks = ticks(full.agent_pid);
    let started = Instant::now();
    let (mut frames, mut bytes, mut capture_to_ws) = (0u64, 0u64, Vec::new());
    while started.elapsed() < Duration::from_secs(args.seconds) {
        if let Some((header, payload, arrived)) = frame(&mut socket, Duration::from_secs(2)).await {
            frames += 1;
            bytes += payload.len() as u64 + 32;
            capture_to_ws.push(Duration::from_micros(
                arrived.saturating_sub(header.captured_us),
            ));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let streaming_ms_per_s = (ticks(full.agent_pid) - start_ticks) / hz * 1000.0 / seconds;
    println!(
        "## full screen (foot running {}), {seconds:.1} s",
        args.full_screen
    );
    println!(
        "frames per second {:.1}, bytes per second per viewer {:.0} ({:.2} Mbit/s)",
        frames as f64 / seconds,
        bytes as f64 / seconds,
        bytes as f64 * 8.0 / seconds / 1e6
    );
    summary("capture → frame on the WebSocket", &mut capture_to_ws);
    println!(
        "node agent CPU: {streaming_ms_per_s:.0} ms/s streaming vs {idle_ms_per_s:.0} ms/s not watched (encoder ≈ {:.0} ms/s)",
        streaming_ms_per_s - idle_ms_per_s
    );
    println!("# anchors: Helix ≈ 15 s to a warm session, 25–150 ms key-to-eye; Parsec ≈ 7 ms added on a LAN");
    println!("# goals: commit → WebSocket p50 ≤ 16.7 ms; card → first frame p50 < 1 s");
    Ok(())
}
