//! `stream` sessions: the desktop's frames encoded to H.264 on a thread of
//! its own (charged to the desktop's cgroup where v1 allows), steered by
//! the lines sent down (`keyframe`, `rate BPS FPS`); and the count of
//! streams per desktop, which tells its compositor to pace its frames.

use flotilla_proto::node as pb;
use tokio::sync::mpsc;

use super::input::compositor_call;
use super::{desktop_dir, TunnelError, TunnelSettings};
use crate::sandbox::STATE_FILE;

/// What the control plane asked of a running stream.
#[derive(Default)]
struct StreamSteer {
    keyframe: bool,
    rate: Option<flotilla_stream::encode::Settings>,
    stop: bool,
}

/// Encodes the desktop's frames while the session lasts: one H.264
/// encoder, fed the newest frame whenever gpud has a new one (at most
/// `max_fps`), each access unit one stdout message. Frames the tunnel is
/// not ready for are never encoded (so nothing encoded is ever dropped
/// and the stream stays decodable).
pub(super) async fn run_stream(
    settings: &TunnelSettings,
    session: u64,
    request: pb::StreamRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
    mut stdin: mpsc::Receiver<Vec<u8>>,
) -> Result<i32, TunnelError> {
    use flotilla_stream::encode::Settings;
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let gpu = settings.gpu.clone().ok_or(TunnelError::NoGpud("stream"))?;
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
            let alive = || dir.join(STATE_FILE).is_file();
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
        .map_err(|source| TunnelError::StartEncoder { source })?;
    let encoder = async move { encoder.await.unwrap_or(Err(TunnelError::EncoderDied)) };
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
fn charge_thread_to_desktop(dir: &std::path::Path) -> Result<usize, TunnelError> {
    let bytes =
        std::fs::read(dir.join(STATE_FILE)).map_err(|source| TunnelError::ReadState { source })?;
    let state: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|source| TunnelError::DecodeState { source })?;
    let tid = rustix::thread::gettid().as_raw_nonzero();
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
        std::fs::write(&tasks, tid.to_string()).map_err(|source| TunnelError::JoinCgroup {
            path: tasks,
            source,
        })?;
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
) -> Result<(), TunnelError> {
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
                        encoder.set_rate(rate)?;
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
                return Err(TunnelError::DesktopStopped(desktop.to_owned()));
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
            encoder = Some(H264::new(frame.width, frame.height, rate)?);
        }
        let encoder = encoder.as_mut().expect("made above");
        if keyframe {
            encoder.request_keyframe();
        }
        let encoded = encoder.encode(&frame.data)?;
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
