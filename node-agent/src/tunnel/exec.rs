//! `exec` and `logs` sessions: a command run in the desktop's sandbox
//! through `flotilla sandbox-exec` (its process group killed if the
//! session ends early), its output streamed back; the log's last bytes.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

use flotilla_proto::node as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{desktop_dir, send_stdout, TunnelError, TunnelSettings, CHUNK};
use crate::fsutil::read_tail;
use crate::sandbox::LOG_FILE;

/// Most log bytes one request may ask for.
const MAX_TAIL: u64 = 16 << 20;
const MAX_ARGS: usize = 256;

/// Kills a session's process group when the session ends early.
struct GroupKill(Option<libc::pid_t>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        // The group our unreaped child leads: its id cannot have been
        // reused. One already gone is what we wanted.
        if let Some(group) = self.0.and_then(rustix::process::Pid::from_raw) {
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

pub(super) async fn run_exec(
    settings: &TunnelSettings,
    session: u64,
    request: pb::ExecRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, TunnelError> {
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let command = request.command;
    if command.is_empty() || command.len() > MAX_ARGS || command.iter().any(|a| a.contains('\0')) {
        return Err(TunnelError::BadCommand);
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
        .map_err(|source| TunnelError::StartExec { source })?;
    let mut guard = GroupKill(child.id().map(|pid| pid as libc::pid_t));
    let mut stdout = child.stdout.take().ok_or(TunnelError::NoPipe("stdout"))?;
    let mut stderr = child.stderr.take().ok_or(TunnelError::NoPipe("stderr"))?;
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
            return Err(TunnelError::TunnelClosed);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|source| TunnelError::WaitExec { source })?;
    guard.0 = None;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

pub(super) async fn send_logs(
    settings: &TunnelSettings,
    session: u64,
    request: pb::LogsRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, TunnelError> {
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let tail = request.tail_bytes.clamp(1, MAX_TAIL);
    let path = dir.join(LOG_FILE);
    let bytes = tokio::task::spawn_blocking(move || read_tail(&path, tail))
        .await?
        .map_err(|source| TunnelError::ReadLog { source })?;
    send_stdout(settings, session, &bytes, up).await?;
    Ok(0)
}
