//! `input` sessions: request lines passed to the desktop compositor's
//! control socket and its answer lines sent back — one request, or a
//! session holding one connection. The compositor is inside the untrusted
//! desktop: its answers are bounded in size and time.

use flotilla_proto::node as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use super::{desktop_dir, send_stdout, TunnelError, TunnelSettings};

/// Holds one connection to the compositor's control socket for the
/// session: each stdin line goes to it, each answer line comes back. The
/// connection closing (the session ends) releases whatever it held.
pub(super) async fn run_input_session(
    settings: &TunnelSettings,
    session: u64,
    request: pb::InputSessionRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
    mut stdin: mpsc::Receiver<Vec<u8>>,
) -> Result<i32, TunnelError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    let stream = connect_compositor(&dir)?;
    let (reader, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(reader);
    while let Some(line) = stdin.recv().await {
        if line.contains(&b'\n') || line.len() > 64 * 1024 {
            return Err(TunnelError::InputTooLong);
        }
        writer
            .write_all(&[line.as_slice(), b"\n"].concat())
            .await
            .map_err(|source| TunnelError::CompositorGone { source })?;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            (&mut reader).take(64 * 1024).read_until(b'\n', &mut answer),
        )
        .await
        .map_err(|_| TunnelError::CompositorSilent(10))?
        .map_err(|source| TunnelError::Compositor { source })?;
        if read == 0 || answer.last() != Some(&b'\n') {
            return Err(TunnelError::CompositorNoAnswer);
        }
        send_stdout(settings, session, &answer, up).await?;
    }
    Ok(0)
}

/// Passes one request line to the desktop compositor's control socket
/// (inside the untrusted desktop: its answer is bounded in size and time)
/// and sends its answer line back.
pub(super) async fn send_input(
    settings: &TunnelSettings,
    session: u64,
    request: pb::InputRequest,
    up: &mpsc::Sender<pb::TunnelUp>,
) -> Result<i32, TunnelError> {
    let dir = desktop_dir(settings, &request.desktop_id, request.generation)?;
    if request.request.contains('\n') || request.request.len() > 64 * 1024 {
        return Err(TunnelError::InputTooLong);
    }
    let answer = compositor_call(&dir, &request.request).await?;
    send_stdout(settings, session, &answer, up).await?;
    Ok(0)
}

/// One request line to the compositor's control socket in desktop
/// directory `dir`, its answer line (bounded in size and time: the
/// compositor is inside the untrusted desktop).
pub(super) async fn compositor_call(
    dir: &std::path::Path,
    request: &str,
) -> Result<Vec<u8>, TunnelError> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        let stream = connect_compositor(dir)?;
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|source| TunnelError::Compositor { source })?;
        let mut line = Vec::new();
        let mut reader = tokio::io::BufReader::new(reader).take(64 * 1024);
        reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|source| TunnelError::Compositor { source })?;
        Ok::<_, TunnelError>(line)
    })
    .await
    .map_err(|_| TunnelError::CompositorSilent(30))??;
    if answer.last() != Some(&b'\n') {
        return Err(TunnelError::CompositorNoAnswer);
    }
    Ok(answer)
}

/// The compositor's control socket in the desktop's `gpu/` directory,
/// which the desktop can write: reached without following a symlink there.
fn connect_compositor(dir: &std::path::Path) -> Result<tokio::net::UnixStream, TunnelError> {
    crate::fsutil::connect_in(&dir.join("gpu"), "control.sock")
        .and_then(tokio::net::UnixStream::from_std)
        .map_err(|source| TunnelError::CompositorUnreachable { source })
}
