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

use crate::runtime::{read_tail, LOG_FILE};

/// Bytes per output message.
const CHUNK: usize = 32 * 1024;
/// Most log bytes one request may ask for.
const MAX_TAIL: u64 = 16 << 20;
const MAX_ARGS: usize = 256;

/// What sessions need from the agent.
#[derive(Clone)]
pub struct OperatorSettings {
    pub node_id: String,
    /// The `flotilla` binary (it runs `sandbox-exec`).
    pub exe: PathBuf,
    /// Where sandboxed desktops' directories are; `None` without sandboxes.
    pub desktops_dir: Option<PathBuf>,
    /// gpud, which holds every desktop's frame; `None` without gpud.
    pub gpu: Option<std::sync::Arc<flotilla_gpu::service::GpuService>>,
}

/// Runs session `session` and sends its output and end up `up`.
pub async fn run(
    settings: &OperatorSettings,
    session: u64,
    request: pb::tunnel_down::Request,
    up: &mpsc::Sender<pb::TunnelUp>,
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
        pb::tunnel_down::Request::Cancel(_) => return,
    };
    match outcome {
        Ok(code) => send(pb::tunnel_up::Event::ExitCode(code)).await,
        Err(error) => send(pb::tunnel_up::Event::Error(error)).await,
    }
}

/// The directory of desktop `id` at `generation`, if it runs here.
fn desktop_dir(settings: &OperatorSettings, id: &str, generation: u64) -> Result<PathBuf, String> {
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
    settings: &OperatorSettings,
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
    settings: &OperatorSettings,
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
    settings: &OperatorSettings,
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
    settings: &OperatorSettings,
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

/// Passes one request line to the desktop compositor's control socket
/// (inside the untrusted desktop: its answer is bounded in size and time)
/// and sends its answer line back.
async fn send_input(
    settings: &OperatorSettings,
    session: u64,
    request: pb::InputRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, String> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    if request.request.contains('\n') || request.request.len() > 64 * 1024 {
        return Err("an input request is one line of at most 64 KiB".to_owned());
    }
    let socket = dir.join("gpu").join("control.sock");
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let stream = tokio::net::UnixStream::connect(&socket)
            .await
            .map_err(|error| format!("the desktop's compositor is not reachable: {error}"))?;
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(format!("{}\n", request.request).as_bytes())
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
    send_stdout(settings, session, &answer, up).await?;
    Ok(0)
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
        let settings = OperatorSettings {
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
        let unsandboxed = OperatorSettings {
            desktops_dir: None,
            ..settings
        };
        assert!(desktop_dir(&unsandboxed, "dt-1", 1).is_err());
    }
}
