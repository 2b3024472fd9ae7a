//! Watching and driving a desktop live over the control plane's one port,
//! as root (CI runs it): a real server and node agent with desktop
//! sessions (foot on lavapipe), a Rust WebSocket client as the viewer.
//! The frames are decoded with openh264 and compared with the desktop's
//! screenshot; typing over the WebSocket runs in foot's shell.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_stream::encode::H264Decoder;
use flotilla_stream::frame::{Header, Kind};
use flotilla_tests::{flotilla_bin, netns, AgentProcess, ServerFlags, TestCluster};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, token: &str, desktop: &str, name: &str) -> Socket {
    let mut request = format!("ws://{addr}/api/v1/desktops/{desktop}/stream?name={name}")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async_with_config(request, None, true)
        .await
        .expect("open the stream");
    socket
}

/// Tells the server every frame up to `sequence` arrived.
async fn ack(socket: &mut Socket, sequence: u64) {
    socket
        .send(Message::Text(
            json!({"type": "ack", "sequence": sequence})
                .to_string()
                .into(),
        ))
        .await
        .expect("send an ack");
}

/// The next message within 20 s: a frame (header, payload) or an event.
enum Got {
    Frame(Header, Vec<u8>),
    Event(Value),
}

async fn next(socket: &mut Socket) -> Got {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), socket.next())
            .await
            .expect("a message within 20 s")
            .expect("the stream is open")
            .expect("a WebSocket message");
        match message {
            Message::Binary(bytes) => {
                let (header, payload) = Header::parse(&bytes).expect("a frame message");
                ack(socket, header.sequence).await;
                return Got::Frame(header, payload.to_vec());
            }
            Message::Text(text) => return Got::Event(serde_json::from_str(&text).unwrap()),
            _ => {}
        }
    }
}

async fn next_frame(socket: &mut Socket) -> (Header, Vec<u8>) {
    loop {
        if let Got::Frame(header, payload) = next(socket).await {
            return (header, payload);
        }
    }
}

async fn next_event(socket: &mut Socket, kind: &str) -> Value {
    loop {
        if let Got::Event(event) = next(socket).await {
            if event["type"] == kind {
                return event;
            }
        }
    }
}

/// A task created in Planning and its desktop, once running: (task id,
/// desktop id).
async fn planned_desktop(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    title: &str,
) -> anyhow::Result<(String, String)> {
    let task: Value = http
        .post(format!("{base}/tasks"))
        .bearer_auth(token)
        .json(&json!({"title": title, "column": "planning"}))
        .send()
        .await?
        .json()
        .await?;
    let task_id = task["id"].as_str().unwrap().to_owned();
    let desktop = flotilla_tests::wait_for_running_desktop(http, base, token, &task_id).await?;
    Ok((task_id, desktop))
}

/// Whether this machine can run a desktop with foot on Vulkan (root for
/// the sandboxes, foot, a Vulkan device); `FLOTILLA_REQUIRE_VULKAN` makes
/// a missing part an error rather than a skip.
fn can_run() -> anyhow::Result<bool> {
    if !netns::available()? {
        return Ok(false);
    }
    let have_foot = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("foot").is_file()));
    if !have_foot || flotilla_gpu::enumerate().map_or(true, |gpus| gpus.is_empty()) {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
            "foot and a Vulkan device are needed (apt-get install foot mesa-vulkan-drivers)"
        );
        return Ok(false);
    }
    Ok(true)
}

/// RGB of a PNG's pixels.
fn decode_png(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).unwrap();
    pixels.truncate(info.buffer_size());
    (info.width, info.height, pixels)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_desktop_streams_to_viewers_and_takes_input_from_the_one_in_control() -> anyhow::Result<()>
{
    if !can_run()? {
        return Ok(());
    }
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let base = format!("http://{addr}/api/v1");
    let log = cluster.root.path().join("agent.log");
    let agent = AgentProcess::start_with_sessions(
        &cluster,
        "stream-node",
        &cluster.root.path().join("agent"),
        &log,
        "640x480",
        &["foot"],
    )?;
    let http = &cluster.http;
    let token = cluster.token.clone();
    let (task_id, desktop) = planned_desktop(http, &base, &token, "watch me").await?;

    // Wait for foot's window: the compositor's background gone from the
    // centre of the screenshot.
    let background = flotilla_compositor::gpu_output::BACKGROUND_BGRX;
    let background = [background[2], background[1], background[0]];
    let screenshot = || async {
        let response = http
            .get(format!("{base}/desktops/{desktop}/screenshot"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        Some(decode_png(&response.bytes().await.ok()?))
    };
    let started = Instant::now();
    let screen = loop {
        let seen = screenshot().await;
        if let Some(screen) = &seen {
            let centre = ((240 * screen.0 + 320) * 3) as usize;
            if screen.2[centre..centre + 3] != background {
                break seen.unwrap();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "foot never showed: the top left is {:?}\n{}",
            seen.map(|s| s.2[..3].to_vec()),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // A viewer gets a keyframe first, and it decodes to the screen.
    let mut alice = connect(&addr, &token, &desktop, "alice").await;
    let joined = Instant::now();
    let event = next_event(&mut alice, "control").await;
    assert_eq!(event["holder"], Value::Null, "{event}");
    let (header, payload) = next_frame(&mut alice).await;
    eprintln!("first frame {:?} after joining", joined.elapsed());
    assert_eq!(header.kind, Kind::H264);
    assert!(header.keyframe, "the first frame is a keyframe");
    assert_eq!((header.width, header.height), (640, 480));
    let mut decoder = H264Decoder::new()?;
    let (w, h, mut rgb) = decoder.decode_rgb(&payload)?.expect("a picture");
    assert_eq!((w, h), (screen.0, screen.1));
    // Lossy, so close rather than equal: the mean difference is small once
    // the stream and the screenshot show the same moment (foot may still be
    // drawing: later frames and screenshots are compared until they agree).
    let started = Instant::now();
    loop {
        let now = screenshot().await.expect("a screenshot");
        let difference: u64 = rgb
            .iter()
            .zip(&now.2)
            .map(|(a, b)| u64::from(a.abs_diff(*b)))
            .sum::<u64>()
            / rgb.len() as u64;
        if difference < 8 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "decoded frames differ from the screen by {difference} per channel on average"
        );
        let next = tokio::time::timeout(Duration::from_millis(300), next_frame(&mut alice)).await;
        if let Ok((_, payload)) = next {
            if let Some((_, _, decoded)) = decoder.decode_rgb(&payload)? {
                rgb = decoded;
            }
        }
    }

    // The encoder (a thread of the agent) is charged to the desktop's CPU
    // cgroup, where the host has cgroup v1 (v2 moves whole processes).
    if let Some(charged) = encoder_threads_in_desktop_cgroup(
        &cluster.root.path().join("agent"),
        &desktop,
        agent.child.id(),
    ) {
        assert!(
            !charged.is_empty(),
            "no thread of the agent is in the desktop's CPU cgroup"
        );
    }

    // A second viewer joins: it gets a keyframe at once, and sees who
    // holds control.
    let mut bob = connect(&addr, &token, &desktop, "bob").await;
    let (header, _) = next_frame(&mut bob).await;
    assert!(header.keyframe);

    // Input without control is refused; nothing is typed.
    bob.send(Message::Text(
        json!({"type": "paste", "text": "touch /tmp/bob\n"})
            .to_string()
            .into(),
    ))
    .await?;
    let refused = next_event(&mut bob, "error").await;
    assert!(
        refused["error"].as_str().unwrap().contains("take control"),
        "{refused}"
    );
    // Malformed messages: clear errors, the stream carries on.
    for bad in [
        "not json".to_owned(),
        json!({"type": "key", "code": "NoSuchKey", "down": true}).to_string(),
        json!({"type": "paste", "text": "x".repeat(5000)}).to_string(),
    ] {
        bob.send(Message::Text(bad.clone().into())).await?;
        let error = next_event(&mut bob, "error").await;
        assert!(error["error"].is_string(), "{bad} → {error}");
    }
    bob.send(Message::Binary(vec![1, 2, 3].into())).await?;
    next_event(&mut bob, "error").await;

    // Alice takes control (bob is told), and types through physical keys.
    alice
        .send(Message::Text(
            json!({"type": "take_control"}).to_string().into(),
        ))
        .await?;
    let told = next_event(&mut bob, "control").await;
    assert_eq!(told["holder"], "alice", "{told}");
    let mut keys = Vec::new();
    for c in "touch /tmp/alice".chars() {
        let code = match c {
            ' ' => "Space".to_owned(),
            '/' => "Slash".to_owned(),
            c => format!("Key{}", c.to_ascii_uppercase()),
        };
        keys.push(code);
    }
    keys.push("Enter".to_owned());
    for code in &keys {
        for down in [true, false] {
            alice
                .send(Message::Text(
                    json!({"type": "key", "code": code, "down": down})
                        .to_string()
                        .into(),
                ))
                .await?;
        }
    }
    // And a paste, typed through the keymap.
    alice
        .send(Message::Text(
            json!({"type": "paste", "text": "printf 'pasted:%s' $((6*7)) > /tmp/pasted\n"})
                .to_string()
                .into(),
        ))
        .await?;
    let exec = |command: &'static str| {
        let desktop = desktop.clone();
        let addr = addr.clone();
        let token = token.clone();
        async move {
            let output = tokio::process::Command::new(flotilla_bin())
                .args(["desktop", "exec", &desktop, "--", "sh", "-c", command])
                .env("FLOTILLA_ADDR", &addr)
                .env("FLOTILLA_TOKEN", &token)
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let started = Instant::now();
    loop {
        let seen = exec("ls /tmp/alice; cat /tmp/pasted").await;
        if seen.contains("/tmp/alice") && seen.contains("pasted:42") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "typed commands never ran: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !exec("ls /tmp/bob").await.contains("bob"),
        "bob typed without control"
    );
    // The typing shows in the stream: frames keep coming to both.
    let (header, _) = next_frame(&mut alice).await;
    assert!(header.sequence > 0);
    next_frame(&mut bob).await;

    // The thumbnail: a JPEG with the frame's revision; unchanged → 304.
    let response = http
        .get(format!("{base}/desktops/{desktop}/thumbnail?width=160"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    let etag = response.headers()["etag"].to_str()?.to_owned();
    let jpeg = response.bytes().await?;
    assert_eq!(&jpeg[..2], &[0xff, 0xd8]);
    let again = http
        .get(format!("{base}/desktops/{desktop}/thumbnail?width=160"))
        .bearer_auth(&token)
        .header("if-none-match", &etag)
        .send()
        .await?;
    assert_eq!(again.status().as_u16(), 304);
    for bad in ["width=0", "width=99999", "nope=1"] {
        let response = http
            .get(format!("{base}/desktops/{desktop}/thumbnail?{bad}"))
            .bearer_auth(&token)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 400, "{bad}");
    }
    // Unknown desktops and missing tokens are refused before any upgrade.
    let response = http
        .get(format!("{base}/desktops/dt-nope/stream"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);
    let response = http
        .get(format!("{base}/desktops/{desktop}/thumbnail"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);

    // Done: the stream ends with a reason.
    let moved = http
        .post(format!("{base}/tasks/{task_id}/move"))
        .bearer_auth(&token)
        .json(&json!({"column": "done"}))
        .send()
        .await?;
    assert!(moved.status().is_success(), "{moved:?}");
    let end = next_event(&mut alice, "end").await;
    assert!(end["reason"].is_string(), "{end}");
    Ok(())
}

/// The agent's threads in the desktop's cgroup v1 CPU controller; None
/// where desktops have none (cgroup v2, no cgroups).
fn encoder_threads_in_desktop_cgroup(
    agent_data: &std::path::Path,
    desktop: &str,
    agent_pid: u32,
) -> Option<Vec<String>> {
    let dir = std::fs::read_dir(agent_data.join("desktops"))
        .ok()?
        .flatten()
        .find(|entry| entry.file_name().to_string_lossy().starts_with(desktop))?;
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("state.json")).ok()?).ok()?;
    let procs = state["cgroup_procs"]
        .as_array()?
        .iter()
        .filter_map(|p| p.as_str())
        .find(|p| p.contains("/cpu,") || p.contains("/cpu/"))?
        .to_owned();
    let tasks = std::path::Path::new(&procs).parent()?.join("tasks");
    let tasks = std::fs::read_to_string(tasks).ok()?;
    Some(
        tasks
            .lines()
            .filter(|tid| std::path::Path::new(&format!("/proc/{agent_pid}/task/{tid}")).exists())
            .map(str::to_owned)
            .collect(),
    )
}

/// The centre pixel of a decoded frame is not the compositor's background:
/// the desktop's terminal is in it.
fn shows_terminal(width: u32, height: u32, rgb: &[u8]) -> bool {
    let background = flotilla_compositor::gpu_output::BACKGROUND_BGRX;
    let at = (((height / 2) * width + width / 2) * 3) as usize;
    rgb[at..at + 3]
        .iter()
        .zip([background[2], background[1], background[0]])
        .any(|(a, b)| a.abs_diff(b) > 16)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_stream_comes_back_after_the_node_agent_restarts() -> anyhow::Result<()> {
    if !can_run()? {
        return Ok(());
    }
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let base = format!("http://{addr}/api/v1");
    let data = cluster.root.path().join("agent");
    let log = cluster.root.path().join("agent.log");
    let start = || {
        AgentProcess::start_with_sessions_and(
            &cluster,
            "restart-node",
            &data,
            &log,
            "640x480",
            &["foot"],
            &["--leave-desktops-running"],
        )
    };
    let mut agent = start()?;
    let token = cluster.token.clone();
    let (task_id, desktop) = planned_desktop(&cluster.http, &base, &token, "survive").await?;

    // Watch until the terminal is in the picture.
    let watch = |what: &'static str| {
        let (addr, token, desktop) = (addr.clone(), token.clone(), desktop.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert!(
                    Instant::now() < deadline,
                    "{what}: no terminal in the stream"
                );
                let mut request = format!("ws://{addr}/api/v1/desktops/{desktop}/stream")
                    .into_client_request()
                    .unwrap();
                request
                    .headers_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
                let Ok((mut socket, _)) =
                    tokio_tungstenite::connect_async_with_config(request, None, true).await
                else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let mut decoder = H264Decoder::new().unwrap();
                let seen = tokio::time::timeout(Duration::from_secs(5), async {
                    loop {
                        let (_, payload) = next_frame(&mut socket).await;
                        if let Ok(Some((w, h, rgb))) = decoder.decode_rgb(&payload) {
                            if shows_terminal(w, h, &rgb) {
                                return;
                            }
                        }
                    }
                })
                .await;
                if seen.is_ok() {
                    return socket;
                }
            }
        }
    };
    let mut socket = watch("before the restart").await;

    // The agent stops (leaving the desktop running): the stream ends with
    // a reason.
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(agent.child.id() as libc::pid_t, libc::SIGTERM) };
    agent.child.wait()?;
    let end = next_event(&mut socket, "end").await;
    assert!(end["reason"].is_string(), "{end}");

    // A new agent adopts the desktop; its compositor reconnects to the new
    // gpud, and a viewer sees the terminal again.
    let mut restarted = start()?;
    std::mem::swap(&mut agent.child, &mut restarted.child);
    // `restarted` now holds the old, reaped child: forget it (dropping it
    // would remove the bridge the adopted desktop uses).
    std::mem::forget(restarted);
    let mut socket = watch("after the restart").await;
    // Input works too: the compositor is alive on the new gpud.
    socket
        .send(Message::Text(
            json!({"type": "take_control"}).to_string().into(),
        ))
        .await?;
    socket
        .send(Message::Text(
            json!({"type": "paste", "text": "touch /tmp/survived\n"})
                .to_string()
                .into(),
        ))
        .await?;
    let started = Instant::now();
    loop {
        let output = tokio::process::Command::new(flotilla_bin())
            .args(["desktop", "exec", &desktop, "--", "ls", "/tmp/survived"])
            .env("FLOTILLA_ADDR", &addr)
            .env("FLOTILLA_TOKEN", &token)
            .output()
            .await?;
        if output.status.success() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "typing after the restart failed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Done: the desktop is removed before the agent goes (it would leave
    // it running).
    cluster
        .http
        .post(format!("{base}/tasks/{task_id}/move"))
        .bearer_auth(&token)
        .json(&json!({"column": "done"}))
        .send()
        .await?;
    let started = Instant::now();
    while std::fs::read_dir(data.join("desktops"))?.next().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the desktop stayed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(agent);
    Ok(())
}

/// What the fast viewer's reader saw.
#[derive(Default)]
struct Seen {
    frames: AtomicU64,
    latest: AtomicU64,
    skipped: AtomicU64,
    /// The lowest frame rate announced (u64::MAX: none).
    lowest_fps: AtomicU64,
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_viewer_skips_ahead_while_another_keeps_full_rate_through_a_follower(
) -> anyhow::Result<()> {
    if !can_run()? {
        return Ok(());
    }
    let cluster = TestCluster::start(3, ServerFlags(vec![])).await?;
    let leader_id = cluster.leader().await?;
    let leader = cluster
        .servers
        .iter()
        .find(|s| s.node_id == leader_id)
        .expect("the leader")
        .addr
        .clone();
    let follower = cluster
        .servers
        .iter()
        .find(|s| s.node_id != leader_id)
        .expect("three servers")
        .addr
        .clone();
    let base = format!("http://{follower}/api/v1");
    let log = cluster.root.path().join("agent.log");
    let _agent = AgentProcess::start_with_sessions(
        &cluster,
        "relay-node",
        &cluster.root.path().join("agent"),
        &log,
        "640x480",
        &["foot"],
    )?;
    let token = cluster.token.clone();
    let http = &cluster.http;
    let (_, desktop) = planned_desktop(http, &base, &token, "busy").await?;

    // Through the follower: an unknown desktop is refused before any
    // upgrade.
    let response = http
        .get(format!("{base}/desktops/dt-nope/stream"))
        .bearer_auth(&token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);

    // The fast viewer watches through the follower (relayed to the
    // leader) until foot shows, then keeps it busy: a line every 20 ms.
    let mut fast = connect(&follower, &token, &desktop, "fast").await;
    let mut decoder = H264Decoder::new()?;
    let started = Instant::now();
    loop {
        let (_, payload) = next_frame(&mut fast).await;
        if let Ok(Some((w, h, rgb))) = decoder.decode_rgb(&payload) {
            if shows_terminal(w, h, &rgb) {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "foot never showed\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    // A thumbnail, signed in by the board's cookie, comes with its ETag
    // (304 when asked again), forwarded too.
    let thumbnail = |etag: Option<String>| {
        let mut request = http
            .get(format!("{base}/desktops/{desktop}/thumbnail?width=160"))
            .header("cookie", format!("flotilla_session={token}"));
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let response = thumbnail(None).await?;
    assert_eq!(response.status().as_u16(), 200);
    let etag = response.headers()["etag"].to_str()?.to_owned();
    assert_eq!(&response.bytes().await?[..2], &[0xff, 0xd8]);
    assert_eq!(thumbnail(Some(etag)).await?.status().as_u16(), 304);

    for message in [
        json!({"type": "take_control"}),
        json!({"type": "paste", "text": "while :; do date +%s.%N; sleep 0.02; done\n"}),
    ] {
        fast.send(Message::Text(message.to_string().into())).await?;
    }
    let seen = Arc::new(Seen {
        lowest_fps: AtomicU64::new(u64::MAX),
        ..Seen::default()
    });
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (seen, stop) = (seen.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let Ok(message) =
                    tokio::time::timeout(Duration::from_millis(200), fast.next()).await
                else {
                    continue;
                };
                match message.expect("the stream is open").expect("a message") {
                    Message::Binary(bytes) => {
                        let (header, _) = Header::parse(&bytes).expect("a frame");
                        ack(&mut fast, header.sequence).await;
                        seen.frames.fetch_add(1, Ordering::SeqCst);
                        seen.latest.fetch_max(header.sequence, Ordering::SeqCst);
                    }
                    Message::Text(text) => {
                        let event: Value = serde_json::from_str(&text).unwrap();
                        match event["type"].as_str() {
                            Some("skipped") => {
                                seen.skipped.fetch_add(1, Ordering::SeqCst);
                            }
                            Some("rate") => {
                                seen.lowest_fps
                                    .fetch_min(event["fps"].as_u64().unwrap(), Ordering::SeqCst);
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            fast
        })
    };

    // The stalled viewer, straight to the leader: one frame, then it
    // reads nothing for four seconds while the screen keeps changing.
    let mut stalled = connect(&leader, &token, &desktop, "stalled").await;
    let (header, _) = next_frame(&mut stalled).await;
    assert!(header.keyframe);
    let frames_before = seen.frames.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = seen.frames.load(Ordering::SeqCst) - frames_before;
    let resumed_at = seen.latest.load(Ordering::SeqCst);
    assert!(during > 10, "the fast viewer got {during} frames in 4 s");

    // Back: it gets at most its window of old frames and its queue before
    // it is at least where the fast viewer was when it came back, and it
    // is told what it skipped.
    let limit = flotilla_stream::hub::WINDOW + flotilla_stream::hub::QUEUE + 1;
    let (mut stale, mut skipped) = (0, false);
    loop {
        match next(&mut stalled).await {
            Got::Frame(header, _) if header.sequence >= resumed_at => break,
            Got::Frame(..) => {
                stale += 1;
                assert!(stale <= limit, "{stale} stale frames after the stall");
            }
            Got::Event(event) => skipped |= event["type"] == "skipped",
        }
    }
    assert!(skipped, "the stalled viewer was not told it skipped frames");
    eprintln!("{stale} stale frames after a 4 s stall; the fast viewer got {during} meanwhile");

    // The fast viewer lost nothing and its rate was never lowered.
    stop.store(true, Ordering::SeqCst);
    let _fast = reader.await?;
    assert_eq!(seen.skipped.load(Ordering::SeqCst), 0);
    let lowest = seen.lowest_fps.load(Ordering::SeqCst);
    assert!(
        lowest == u64::MAX || lowest == 30,
        "the rate went down to {lowest} fps"
    );
    Ok(())
}
