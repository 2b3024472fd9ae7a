//! The hook process's side: speak proc-receive with git on stdin/stdout, relay the
//! updates to the server over its unix socket, and relay the server's verdicts back.
//! Blocking IO throughout: the process lives for one push and has nothing else to do.
//!
//! When the server cannot be reached the hook still answers git, refusing every ref
//! with the reason, so the person pushing reads why instead of "fail to run hook".

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use thiserror::Error;

use super::protocol::{write_report, write_version, ProcReceiveReader, ProtocolError, RefReport};
use super::wire::{HookRequest, HookResponse, PUSH_ID_ENV, SOCKET_ENV};

/// A backstop only: the server bounds its own wait for the ledger well below this.
const SERVER_REPLY_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Error)]
pub enum HookError {
    /// The conversation with git itself failed; nothing could be reported.
    #[error("speak proc-receive with git")]
    Protocol(#[from] ProtocolError),
}

#[derive(Debug, Error)]
enum ExchangeError {
    #[error("connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talk to the server: {0}")]
    Io(#[from] std::io::Error),
    #[error("read the server's answer: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the server answered {got} reports for {expected} refs")]
    Count { expected: usize, got: usize },
}

/// Runs one `proc-receive` conversation: `stdin`/`stdout` are git's pipes, and the
/// server listens on `socket_path` for push `push_id`.
pub fn run_proc_receive_hook<R: Read, W: Write>(
    stdin: R,
    mut stdout: W,
    socket_path: &Path,
    push_id: &str,
) -> Result<(), HookError> {
    let mut reader = ProcReceiveReader::new(stdin);
    reader.read_version()?;
    write_version(&mut stdout)?;
    let updates = reader.read_commands()?;
    if updates.is_empty() {
        write_report(&mut stdout, &[])?;
        return Ok(());
    }
    let request = HookRequest {
        push_id: push_id.to_owned(),
        updates,
    };
    let reports = match exchange(socket_path, &request) {
        Ok(reports) => reports,
        Err(error) => refuse_all(
            &request,
            &format!("the flotilla server did not answer the push hook ({error}); push again"),
        ),
    };
    write_report(&mut stdout, &reports)?;
    Ok(())
}

/// [`run_proc_receive_hook`] with the socket and push id from the environment the
/// server gave receive-pack ([`SOCKET_ENV`], [`PUSH_ID_ENV`]). Without them (a push
/// that did not come through flotilla's smart HTTP, e.g. to the directory) every ref is
/// refused.
pub fn run_proc_receive_hook_from_env<R: Read, W: Write>(
    stdin: R,
    mut stdout: W,
) -> Result<(), HookError> {
    match (std::env::var_os(SOCKET_ENV), std::env::var(PUSH_ID_ENV)) {
        (Some(socket_path), Ok(push_id)) => {
            run_proc_receive_hook(stdin, stdout, Path::new(&socket_path), &push_id)
        }
        _ => {
            let mut reader = ProcReceiveReader::new(stdin);
            reader.read_version()?;
            write_version(&mut stdout)?;
            let request = HookRequest {
                push_id: String::new(),
                updates: reader.read_commands()?,
            };
            let reports = refuse_all(
                &request,
                "this repository accepts pushes only through flotilla's git server",
            );
            write_report(&mut stdout, &reports)?;
            Ok(())
        }
    }
}

fn exchange(socket_path: &Path, request: &HookRequest) -> Result<Vec<RefReport>, ExchangeError> {
    let mut stream = UnixStream::connect(socket_path).map_err(|source| ExchangeError::Connect {
        path: socket_path.display().to_string(),
        source,
    })?;
    stream.set_read_timeout(Some(SERVER_REPLY_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.flush()?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    let response: HookResponse = serde_json::from_str(&answer)?;
    if response.reports.len() != request.updates.len() {
        return Err(ExchangeError::Count {
            expected: request.updates.len(),
            got: response.reports.len(),
        });
    }
    Ok(response.reports)
}

fn refuse_all(request: &HookRequest, reason: &str) -> Vec<RefReport> {
    request
        .updates
        .iter()
        .map(|update| RefReport::Ng {
            name: update.name.clone(),
            reason: reason.to_owned(),
        })
        .collect()
}
