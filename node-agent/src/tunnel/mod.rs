//! The node's end of the operator tunnel: sessions asked for down the
//! agent's tunnel to the leader (see `agent::tunnel_loop`). `exec` runs a
//! command inside a desktop's sandbox (`flotilla sandbox-exec`, which
//! enters its namespaces and drops to the desktop user) and streams its
//! stdout and stderr back; `logs` sends the tail of the desktop's log;
//! `screenshot`, `thumbnail` and `stream` send its frames from gpud;
//! `input` talks to its compositor. Every request is checked again here:
//! the desktop id names a directory.
//!
//! One file per kind of session: [`exec`] (exec, logs), [`frames`]
//! (screenshot, thumbnail), [`stream`] (H.264 stream), [`input`]
//! (compositor control socket). A session's error goes up the tunnel as
//! its [`TunnelError`]'s text.

mod exec;
mod frames;
mod input;
mod stream;

use std::path::PathBuf;

use flotilla_proto::node as pb;
use tokio::sync::mpsc;

use crate::sandbox::STATE_FILE;

pub use frames::png;

/// Bytes per output message.
const CHUNK: usize = 32 * 1024;

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

/// Why a session failed; its text is what the operator reads.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0:?} is not a desktop id")]
    NotADesktopId(String),
    #[error("this node runs desktops without sandboxes: exec and logs need the sandbox runtime")]
    Unsandboxed,
    #[error("desktop {id} (generation {generation}) is not running on this node")]
    NotRunning { id: String, generation: u64 },
    #[error("the command must be 1-256 arguments without NUL bytes")]
    BadCommand,
    #[error("start sandbox-exec: {source}")]
    StartExec {
        #[source]
        source: std::io::Error,
    },
    #[error("no {0} pipe")]
    NoPipe(&'static str),
    #[error("wait for sandbox-exec: {source}")]
    WaitExec {
        #[source]
        source: std::io::Error,
    },
    #[error("the tunnel closed")]
    TunnelClosed,
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("read the desktop's log: {source}")]
    ReadLog {
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Png(#[from] ::png::EncodingError),
    #[error("this node runs without gpud: no frames to {0}")]
    NoGpud(&'static str),
    #[error("desktop {0} shows nothing yet (its compositor has not set up a display)")]
    NoDisplay(String),
    #[error("start the encoder: {source}")]
    StartEncoder {
        #[source]
        source: std::io::Error,
    },
    #[error("the encoder thread died")]
    EncoderDied,
    #[error("{0}")]
    Encode(#[from] flotilla_stream::encode::EncodeError),
    #[error("desktop {0} stopped")]
    DesktopStopped(String),
    #[error("read the desktop's state: {source}")]
    ReadState {
        #[source]
        source: std::io::Error,
    },
    #[error("read the desktop's state: {source}")]
    DecodeState {
        #[source]
        source: serde_json::Error,
    },
    #[error("join {}: {source}", path.display())]
    JoinCgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("an input request is one line of at most 64 KiB")]
    InputTooLong,
    #[error("the desktop's compositor is not reachable: {source}")]
    CompositorUnreachable {
        #[source]
        source: std::io::Error,
    },
    #[error("the compositor went away: {source}")]
    CompositorGone {
        #[source]
        source: std::io::Error,
    },
    #[error("{source}")]
    Compositor {
        #[source]
        source: std::io::Error,
    },
    #[error("the desktop's compositor did not answer in {0} s")]
    CompositorSilent(u64),
    #[error("the desktop's compositor gave no answer")]
    CompositorNoAnswer,
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
        pb::tunnel_down::Request::Exec(exec) => exec::run_exec(settings, session, exec, up).await,
        pb::tunnel_down::Request::Logs(logs) => exec::send_logs(settings, session, logs, up).await,
        pb::tunnel_down::Request::Screenshot(request) => {
            frames::send_screenshot(settings, session, request, up).await
        }
        pb::tunnel_down::Request::Input(request) => {
            input::send_input(settings, session, request, up).await
        }
        pb::tunnel_down::Request::Stream(request) => {
            stream::run_stream(settings, session, request, up, stdin).await
        }
        pb::tunnel_down::Request::Thumbnail(request) => {
            frames::send_thumbnail(settings, session, request, up).await
        }
        pb::tunnel_down::Request::InputSession(request) => {
            input::run_input_session(settings, session, request, up, stdin).await
        }
        pb::tunnel_down::Request::Cancel(_) | pb::tunnel_down::Request::Stdin(_) => return,
    };
    match outcome {
        Ok(code) => send(pb::tunnel_up::Event::ExitCode(code)).await,
        Err(error) => send(pb::tunnel_up::Event::Error(error.to_string())).await,
    }
}

/// The directory of desktop `id` at `generation`, if it runs here.
fn desktop_dir(
    settings: &TunnelSettings,
    id: &str,
    generation: u64,
) -> Result<PathBuf, TunnelError> {
    let valid = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(TunnelError::NotADesktopId(id.to_owned()));
    }
    let desktops = settings
        .desktops_dir
        .as_ref()
        .ok_or(TunnelError::Unsandboxed)?;
    let dir = desktops.join(format!("{id}-{generation}"));
    if !dir.join(STATE_FILE).is_file() {
        return Err(TunnelError::NotRunning {
            id: id.to_owned(),
            generation,
        });
    }
    Ok(dir)
}

/// Sends `bytes` up as stdout messages of at most [`CHUNK`] bytes.
async fn send_stdout(
    settings: &TunnelSettings,
    session: u64,
    bytes: &[u8],
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<(), TunnelError> {
    for chunk in bytes.chunks(CHUNK) {
        let message = pb::TunnelUp {
            node_id: settings.node_id.clone(),
            session,
            event: Some(pb::tunnel_up::Event::Stdout(chunk.to_vec())),
        };
        if up.send(message).await.is_err() {
            return Err(TunnelError::TunnelClosed);
        }
    }
    Ok(())
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
            let error = desktop_dir(&settings, id, 1).unwrap_err().to_string();
            assert!(error.contains("not a desktop id"), "{id:?}: {error}");
        }
        let missing = desktop_dir(&settings, "dt-1", 1).unwrap_err().to_string();
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
