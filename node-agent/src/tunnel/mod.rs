//! Operator sessions on this node, asked for down the agent's tunnel to
//! the leader: `exec` runs a command inside a desktop's sandbox
//! (`flotilla sandbox-exec`, which enters its namespaces and drops to the
//! desktop user) and streams its stdout and stderr back; `logs` sends the
//! tail of the desktop's log. Every request is checked again here: the
//! desktop id names a directory.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Stdio;

use flotilla_proto::node as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::fsutil::read_tail;
use crate::sandbox::LOG_FILE;

/// Bytes per output message.
const CHUNK: usize = 32 * 1024;
/// Most log bytes one request may ask for.
const MAX_TAIL: u64 = 16 << 20;
const MAX_ARGS: usize = 256;

/// What sessions need from the agent.
#[derive(Clone)]
pub struct TunnelSettings {
    pub node_id: String,
    /// The `flotilla` binary (it runs `sandbox-exec`).
    pub exe: PathBuf,
    /// Where sandboxed desktops' directories are; `None` without sandboxes.
    pub desktops_dir: Option<PathBuf>,
    /// gpud, which holds every desktop's frame; `None` without gpud.
    pub gpu: Option<std::sync::Arc<flotilla_gpu::service::GpuService>>,
}

/// Runs session `session` and sends its output and end up `up`; `stdin`
/// carries the lines sent to it later (stream and input sessions).
pub async fn run(
    settings: &TunnelSettings,
    session: u64,
    request: pb::tunnel_down::Request,
    up: &mpsc::Sender<pb::TunnelUp>,
    stdin: mpsc::Receiver<Vec<u8>>,
) {
    let send = |event| async move {
        let _ = up
            .send(pb::TunnelUp {
                node_id: settings.node_id.clone(),
                session,
                event: Some(event),
            })
            .await;
    };
    let outcome = match request {
        pb::tunnel_down::Request::Exec(exec) => run_exec(settings, session, exec, up).await,
        pb::tunnel_down::Request::Logs(logs) => send_logs(settings, session, logs, up).await,
        pb::tunnel_down::Request::Screenshot(request) => {
            send_screenshot(settings, session, request, up).await
        }
        pb::tunnel_down::Request::Input(request) => {
            send_input(settings, session, request, up).await
        }
        pb::tunnel_down::Request::Stream(request) => {
            run_stream(settings, session, request, up, stdin).await
        }
        pb::tunnel_down::Request::Thumbnail(request) => {
            send_thumbnail(settings, session, request, up).await
        }
        pb::tunnel_down::Request::InputSession(request) => {
            run_input_session(settings, session, request, up, stdin).await
        }
        pb::tunnel_down::Request::Cancel(_) | pb::tunnel_down::Request::Stdin(_) => return,
    };
    match outcome {
        Ok(code) => send(pb::tunnel_up::Event::ExitCode(code)).await,
        Err(error) => send(pb::tunnel_up::Event::Error(error)).await,
    }
}

/// The directory of desktop `id` at `generation`, if it runs here.
fn desktop_dir(settings: &TunnelSettings, id: &str, generation: u64) -> Result<PathBuf, String> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(format!("{id:?} is not a desktop id"));
    }
    let desktops = settings.desktops_dir.as_ref().ok_or(
        "this node runs desktops without sandboxes: exec and logs need the sandbox runtime",
    )?;
    let dir = desktops.join(format!("{id}-{generation}"));
    if !dir.join("state.json").is_file() {
        return Err(format!(
            "desktop {id} (generation {generation}) is not running on this node"
        ));
    }
    Ok(dir)
}

/// Kills a session's process group when the session ends early.
struct GroupKill(Option<libc::pid_t>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(group) = self.0 {
            // SAFETY: kill(2) of the group our unreaped child leads.
            unsafe { libc::kill(-group, libc::SIGKILL) };
        }
    }
}

async fn run_exec(
    settings: &TunnelSettings,
    session: u64,
    request: pb::ExecRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, String> {
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let command = request.command;
    if command.is_empty() || command.len() > MAX_ARGS || command.iter().any(|a| a.contains('\0')) {
        return Err("the command must be 1-256 arguments without NUL bytes".to_owned());
    }
    let mut child = tokio::process::Command::new(&settings.exe)
        .arg("sandbox-exec")
        .arg(&dir)
        .arg("--")
        .args(&command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| format!("start sandbox-exec: {error}"))?;
    let mut guard = GroupKill(child.id().map(|pid| pid as libc::pid_t));
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    let mut stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let (mut out, mut err) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        let event = tokio::select! {
            read = stdout.read(&mut out), if out_open => match read {
                Ok(0) | Err(_) => { out_open = false; continue }
                Ok(n) => pb::tunnel_up::Event::Stdout(out[..n].to_vec()),
            },
            read = stderr.read(&mut err), if err_open => match read {
                Ok(0) | Err(_) => { err_open = false; continue }
                Ok(n) => pb::tunnel_up::Event::Stderr(err[..n].to_vec()),
            },
        };
        let message = pb::TunnelUp {
            node_id: settings.node_id.clone(),
            session,
            event: Some(event),
        };
        if up.send(message).await.is_err() {
            return Err("the tunnel closed".to_owned());
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|error| format!("wait for sandbox-exec: {error}"))?;
    guard.0 = None;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

async fn send_logs(
    settings: &TunnelSettings,
    session: u64,
    request: pb::LogsRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, String> {
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let tail = request.tail_bytes.clamp(1, MAX_TAIL);
    let path = dir.join(LOG_FILE);
    let bytes = tokio::task::spawn_blocking(move || read_tail(&path, tail))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("read the desktop's log: {error}"))?;
    send_stdout(settings, session, &bytes, up).await?;
    Ok(0)
}

async fn send_stdout(
    settings: &TunnelSettings,
    session: u64,
    bytes: &[u8],
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<(), String> {
    for chunk in bytes.chunks(CHUNK) {
        let message = pb::TunnelUp {
            node_id: settings.node_id.clone(),
            session,
            event: Some(pb::tunnel_up::Event::Stdout(chunk.to_vec())),
        };
        if up.send(message).await.is_err() {
            return Err("the tunnel closed".to_owned());
        }
    }
    Ok(())
}

/// BGRA rows to a PNG (opaque RGB).
pub fn png(width: u32, height: u32, bgra: &[u8]) -> Result<Vec<u8>, String> {
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    for pixel in bgra.chunks_exact(4) {
        rgb.extend_from_slice(&[pixel[2], pixel[1], pixel[0]]);
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

/// The desktop's current frame, from gpud, as a PNG.
async fn send_screenshot(
    settings: &TunnelSettings,
    session: u64,
    request: pb::ScreenshotRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, String> {
    desktop_dir(settings, &request.desktop_id, request.generation)?;
    let gpu = settings
        .gpu
        .clone()
        .ok_or("this node runs without gpud: no frames to show")?;
    let id = request.desktop_id.clone();
    let png = tokio::task::spawn_blocking(move || {
        let (width, height, pixels) = gpu.scanout(&id).ok_or_else(|| {
            format!("desktop {id} shows nothing yet (its compositor has not set up a display)")
        })?;
        png(width, height, &pixels)
    })
    .await
    .map_err(|error| error.to_string())??;
    send_stdout(settings, session, &png, up).await?;
    Ok(0)
}

/// What the control plane asked of a running stream.
#[derive(Default)]
struct StreamSteer {
    keyframe: bool,
    rate: Option<flotilla_stream::encode::Settings>,
    stop: bool,
}

/// Widest thumbnail.
const MAX_THUMBNAIL: u32 = 1280;

/// Encodes the desktop's frames while the session lasts: one H.264
/// encoder, fed the newest frame whenever gpud has a new one (at most
/// `max_fps`), each access unit one stdout message. Frames the tunnel is
/// not ready for are never encoded (so nothing encoded is ever dropped
/// and the stream stays decodable).
async fn run_stream(
    settings: &TunnelSettings,
    session: u64,
    request: pb::StreamRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
    mut stdin: mpsc::Receiver<Vec<u8>>,
) -> Result<i32, String> {
    use flotilla_stream::encode::Settings;
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let gpu = settings
        .gpu
        .clone()
        .ok_or("this node runs without gpud: no frames to stream")?;
    let mut rate = Settings::default();
    if request.bitrate_bps != 0 {
        rate.bitrate_bps = request.bitrate_bps.clamp(100_000, 50_000_000);
    }
    if request.max_fps != 0 {
        rate.max_fps = request.max_fps.clamp(1, 60) as f32;
    }
    let steer = std::sync::Arc::new(std::sync::Mutex::new(StreamSteer::default()));
    // However the session ends (an abort drops this future), the encoder
    // thread stops.
    struct StopOnDrop(std::sync::Arc<std::sync::Mutex<StreamSteer>>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        }
    }
    let _stop = StopOnDrop(steer.clone());
    // The compositor paces frames for a watched desktop at its refresh.
    struct Watching(std::path::PathBuf);
    impl Drop for Watching {
        fn drop(&mut self) {
            watching(&self.0, false);
        }
    }
    watching(&dir, true);
    let _watching = Watching(dir.clone());
    let encoder_steer = steer.clone();
    let desktop = request.desktop_id.clone();
    let node_id = settings.node_id.clone();
    let encoder_up = up.clone();
    // A thread of its own (not the blocking pool's: it changes cgroup).
    let (done, encoder) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("encode-{}", request.desktop_id))
        .spawn(move || {
            match charge_thread_to_desktop(&dir) {
                Ok(0) => tracing::debug!(%desktop, "the encoder's CPU stays the agent's (no cgroup v1 CPU controller for the desktop)"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%desktop, %error, "the encoder's CPU stays the agent's"),
            }
            let alive = || dir.join("state.json").is_file();
            let ended = encode_loop(&gpu, &desktop, rate, &encoder_steer, &alive, |message| {
                encoder_up
                    .blocking_send(pb::TunnelUp {
                        node_id: node_id.clone(),
                        session,
                        event: Some(pb::tunnel_up::Event::Stdout(message)),
                    })
                    .is_ok()
            });
            let _ = done.send(ended);
        })
        .map_err(|error| format!("start the encoder: {error}"))?;
    let encoder = async move {
        encoder
            .await
            .unwrap_or_else(|_| Err("the encoder thread died".to_owned()))
    };
    tokio::pin!(encoder);
    loop {
        tokio::select! {
            line = stdin.recv() => {
                let Some(line) = line else {
                    break;
                };
                let line = String::from_utf8_lossy(&line);
                let words: Vec<&str> = line.split_whitespace().collect();
                let mut steer = steer.lock().unwrap_or_else(|p| p.into_inner());
                match words.as_slice() {
                    ["keyframe"] => steer.keyframe = true,
                    ["rate", bps, fps] => {
                        if let (Ok(bps), Ok(fps)) = (bps.parse::<u32>(), fps.parse::<u32>()) {
                            steer.rate = Some(Settings {
                                bitrate_bps: bps.clamp(100_000, 50_000_000),
                                max_fps: fps.clamp(1, 60) as f32,
                            });
                        }
                    }
                    _ => tracing::debug!(%line, "ignoring a stream request"),
                }
            }
            ended = &mut encoder => {
                return ended.map(|()| 0);
            }
        }
    }
    steer.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
    encoder.await.map(|()| 0)
}

/// Moves the calling thread into the CPU controllers of the desktop's
/// cgroup, so what it burns (the desktop's encoder) is charged to the
/// desktop and held to its CPU weight. cgroup v1 takes a thread id in a
/// controller's `tasks` file. cgroup v2 moves threads only inside
/// threaded subtrees, which desktops' cgroups are not: there (and without
/// cgroups) nothing moves and 0 is returned. The state file is the
/// agent's own, written outside the sandbox.
fn charge_thread_to_desktop(dir: &std::path::Path) -> Result<usize, String> {
    let state: serde_json::Value = std::fs::read(dir.join("state.json"))
        .map_err(|e| e.to_string())
        .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
        .map_err(|error| format!("read the desktop's state: {error}"))?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let mut joined = 0;
    let procs_files = state["cgroup_procs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for procs in procs_files.iter().filter_map(|p| p.as_str()) {
        let procs = std::path::Path::new(procs);
        let cpu = procs.components().any(|part| {
            part.as_os_str()
                .to_str()
                .is_some_and(|name| name.split(',').any(|c| c == "cpu" || c == "cpuacct"))
        });
        let Some(tasks) = procs.parent().map(|cgroup| cgroup.join("tasks")) else {
            continue;
        };
        if !cpu || !tasks.is_file() {
            continue;
        }
        std::fs::write(&tasks, tid.to_string())
            .map_err(|error| format!("join {}: {error}", tasks.display()))?;
        joined += 1;
    }
    Ok(joined)
}

/// The encoder's loop (a blocking thread): returns when told to stop, when
/// `send` fails (the tunnel closed) or with an error.
fn encode_loop(
    gpu: &flotilla_gpu::service::GpuService,
    desktop: &str,
    mut rate: flotilla_stream::encode::Settings,
    steer: &std::sync::Mutex<StreamSteer>,
    alive: &dyn Fn() -> bool,
    mut send: impl FnMut(Vec<u8>) -> bool,
) -> Result<(), String> {
    use flotilla_stream::encode::H264;
    use flotilla_stream::frame::{now_us, Header, Kind};
    use std::time::{Duration, Instant};
    let mut encoder: Option<H264> = None;
    let mut last: Option<u64> = None;
    let mut sent_at: Option<Instant> = None;
    loop {
        let keyframe = {
            let mut steer = steer.lock().unwrap_or_else(|p| p.into_inner());
            if steer.stop {
                return Ok(());
            }
            if let Some(new) = steer.rate.take() {
                if new != rate {
                    rate = new;
                    // In place: the stream goes on without an IDR.
                    if let Some(encoder) = encoder.as_mut() {
                        encoder.set_rate(rate).map_err(|e| e.to_string())?;
                    }
                }
            }
            std::mem::take(&mut steer.keyframe)
        };
        // At most max_fps: wait out the rest of this frame's period.
        let period = Duration::from_secs_f32(1.0 / rate.max_fps.max(1.0));
        if let Some(at) = sent_at {
            let since = at.elapsed();
            if since < period {
                std::thread::sleep(period - since);
            }
        }
        // A keyframe is wanted: the current picture, even if unchanged.
        let frame = if keyframe || encoder.is_none() {
            gpu.frame(desktop)
                .or_else(|| gpu.next_frame(desktop, None, Duration::from_millis(50)))
        } else {
            gpu.next_frame(desktop, last, Duration::from_millis(50))
        };
        let Some(frame) = frame else {
            if !alive() {
                return Err(format!("desktop {desktop} stopped"));
            }
            if keyframe {
                // Nothing to show yet: ask again next time round.
                steer.lock().unwrap_or_else(|p| p.into_inner()).keyframe = true;
            }
            continue;
        };
        let captured_us = now_us();
        if encoder
            .as_ref()
            .is_none_or(|e| e.size() != (frame.width, frame.height))
        {
            encoder = Some(H264::new(frame.width, frame.height, rate).map_err(|e| e.to_string())?);
        }
        let encoder = encoder.as_mut().expect("made above");
        if keyframe {
            encoder.request_keyframe();
        }
        let encoded = encoder.encode(&frame.data).map_err(|e| e.to_string())?;
        last = Some(frame.sequence);
        if encoded.data.is_empty() {
            continue;
        }
        let message = Header {
            kind: Kind::H264,
            keyframe: encoded.keyframe,
            width: frame.width,
            height: frame.height,
            sequence: frame.sequence,
            captured_us,
        }
        .message(&encoded.data);
        if !send(message) {
            return Ok(());
        }
        sent_at = Some(Instant::now());
    }
}

/// A JPEG of the desktop's current frame (one frame message).
async fn send_thumbnail(
    settings: &TunnelSettings,
    session: u64,
    request: pb::ThumbnailRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, String> {
    use flotilla_stream::frame::{now_us, Header, Kind};
    desktop_dir(settings, &request.desktop_id, request.generation)?;
    let gpu = settings
        .gpu
        .clone()
        .ok_or("this node runs without gpud: no frames to show")?;
    let id = request.desktop_id.clone();
    let max_width = match request.max_width {
        0 => 320,
        width => width.clamp(16, MAX_THUMBNAIL),
    };
    let message = tokio::task::spawn_blocking(move || {
        let frame = gpu.frame(&id).ok_or_else(|| {
            format!("desktop {id} shows nothing yet (its compositor has not set up a display)")
        })?;
        let captured_us = now_us();
        let (jpeg, width, height) = flotilla_stream::encode::jpeg_thumbnail(
            &frame.data,
            frame.width,
            frame.height,
            max_width,
            75,
        )
        .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            Header {
                kind: Kind::Jpeg,
                keyframe: true,
                width,
                height,
                sequence: frame.sequence,
                captured_us,
            }
            .message(&jpeg),
        )
    })
    .await
    .map_err(|error| error.to_string())??;
    // One message, whatever its size (the control plane reads it whole).
    if up
        .send(pb::TunnelUp {
            node_id: settings.node_id.clone(),
            session,
            event: Some(pb::tunnel_up::Event::Stdout(message)),
        })
        .await
        .is_err()
    {
        return Err("the tunnel closed".to_owned());
    }
    Ok(0)
}

/// Holds one connection to the compositor's control socket for the
/// session: each stdin line goes to it, each answer line comes back. The
/// connection closing (the session ends) releases whatever it held.
async fn run_input_session(
    settings: &TunnelSettings,
    session: u64,
    request: pb::InputSessionRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
    mut stdin: mpsc::Receiver<Vec<u8>>,
) -> Result<i32, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let socket = dir.join("gpu").join("control.sock");
    let stream = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|error| format!("the desktop's compositor is not reachable: {error}"))?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    while let Some(line) = stdin.recv().await {
        if line.contains(&b'\n') || line.len() > 64 * 1024 {
            return Err("an input request is one line of at most 64 KiB".to_owned());
        }
        writer
            .write_all(&[line.as_slice(), b"\n"].concat())
            .await
            .map_err(|error| format!("the compositor went away: {error}"))?;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            (&mut reader).take(64 * 1024).read_until(b'\n', &mut answer),
        )
        .await
        .map_err(|_| "the desktop's compositor did not answer in 10 s".to_owned())?
        .map_err(|error| error.to_string())?;
        if read == 0 || answer.last() != Some(&b'\n') {
            return Err("the desktop's compositor gave no answer".to_owned());
        }
        send_stdout(settings, session, &answer, up).await?;
    }
    Ok(0)
}

/// Passes one request line to the desktop compositor's control socket
/// (inside the untrusted desktop: its answer is bounded in size and time)
/// and sends its answer line back.
async fn send_input(
    settings: &TunnelSettings,
    session: u64,
    request: pb::InputRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, String> {
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    if request.request.contains('\n') || request.request.len() > 64 * 1024 {
        return Err("an input request is one line of at most 64 KiB".to_owned());
    }
    let answer = compositor_call(&dir, &request.request).await?;
    send_stdout(settings, session, &answer, up).await?;
    Ok(0)
}

/// One request line to the compositor's control socket in desktop
/// directory `dir`, its answer line (bounded in size and time: the
/// compositor is inside the untrusted desktop).
async fn compositor_call(dir: &std::path::Path, request: &str) -> Result<Vec<u8>, String> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let socket = dir.join("gpu").join("control.sock");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|error| format!("the desktop's compositor is not reachable: {error}"))?;
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new(reader).take(64 * 1024);
        reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|error| error.to_string())?;
        Ok::<_, String>(line)
    })
    .await
    .map_err(|_| "the desktop's compositor did not answer in 30 s".to_owned())??;
    if answer.last() != Some(&b'\n') {
        return Err("the desktop's compositor gave no answer".to_owned());
    }
    Ok(answer)
}

/// Streams open per desktop directory: the compositor paces its frames
/// to the output's refresh while there is one, at 10 a second otherwise.
static WATCHERS: std::sync::Mutex<Vec<(std::path::PathBuf, usize)>> =
    std::sync::Mutex::new(Vec::new());

/// Counts a stream of the desktop in `dir` in (`true`) or out; tells its
/// compositor when the count leaves or reaches zero.
fn watching(dir: &std::path::Path, opened: bool) {
    let changed = {
        let mut watchers = WATCHERS.lock().unwrap_or_else(|p| p.into_inner());
        let at = match watchers.iter().position(|(d, _)| d == dir) {
            Some(at) => at,
            None => {
                watchers.push((dir.to_owned(), 0));
                watchers.len() - 1
            }
        };
        let count = &mut watchers[at].1;
        let before = *count;
        *count = if opened {
            before + 1
        } else {
            before.saturating_sub(1)
        };
        let changed = (before == 0) != (*count == 0);
        if *count == 0 {
            watchers.swap_remove(at);
        }
        changed
    };
    if !changed {
        return;
    }
    let dir = dir.to_owned();
    let request = serde_json::json!({"op": "watched", "watched": opened}).to_string();
    // Best effort: a compositor that is gone or busy only misses the pace
    // (and an agent shutting down has no runtime left to tell it).
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if let Err(error) = compositor_call(&dir, &request).await {
            tracing::debug!(dir = %dir.display(), %error, "cannot tell the compositor it is watched");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn screenshots_are_pngs_of_the_frame() {
        // 2×1: blue then red (BGRA), as RGB.
        let png = png(2, 1, &[255, 0, 0, 255, 0, 0, 255, 255]).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let decoder = ::png::Decoder::new(std::io::Cursor::new(png));
        let mut reader = decoder.read_info().unwrap();
        let mut pixels = vec![0; reader.output_buffer_size()];
        reader.next_frame(&mut pixels).unwrap();
        assert_eq!(pixels, [0, 0, 255, 255, 0, 0]);
    }

    #[test]
    fn desktop_ids_cannot_leave_the_desktops_directory() {
        let dir = tempfile::tempdir().unwrap();
        let settings = TunnelSettings {
            node_id: "n".to_owned(),
            exe: PathBuf::from("/nonexistent"),
            desktops_dir: Some(dir.path().to_owned()),
            gpu: None,
        };
        for id in ["../x", "a/b", "", ".", "a b", &"x".repeat(129)] {
            let error = desktop_dir(&settings, id, 1).unwrap_err();
            assert!(error.contains("not a desktop id"), "{id:?}: {error}");
        }
        let missing = desktop_dir(&settings, "dt-1", 1).unwrap_err();
        assert!(missing.contains("not running on this node"), "{missing}");
        std::fs::create_dir(dir.path().join("dt-1-1")).unwrap();
        std::fs::write(dir.path().join("dt-1-1/state.json"), "{}").unwrap();
        assert_eq!(
            desktop_dir(&settings, "dt-1", 1).unwrap(),
            dir.path().join("dt-1-1")
        );
        let unsandboxed = TunnelSettings {
            desktops_dir: None,
            ..settings
        };
        assert!(desktop_dir(&unsandboxed, "dt-1", 1).is_err());
    }
}
