//! One git service process per request: the ref advertisement (`--advertise-refs`)
//! and the stateless RPC itself, with the request body streamed into git's stdin
//! (gunzipped on the way, counted against a limit) and git's stdout streamed back as
//! the response body. Nothing holds a whole pack in memory.
//!
//! The status code is decided at git's first byte of output: a request git rejects
//! before saying anything (malformed pkt-lines, an over-limit body) gets a 4xx with
//! git's message; once git has spoken, its own protocol carries any later error.

use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitStatus;

use async_compression::tokio::bufread::GzipDecoder;
use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio_util::io::{ReaderStream, StreamReader};

use super::error::GitHttpError;
use crate::command::Git;
use crate::hook::PushRegistration;

/// How much of git's stderr is kept for the error message and the log.
const STDERR_KEPT: usize = 16 * 1024;

/// The two smart-HTTP services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    pub fn from_query(service: &str) -> Result<Self, GitHttpError> {
        match service {
            "git-upload-pack" => Ok(Self::UploadPack),
            "git-receive-pack" => Ok(Self::ReceivePack),
            other => Err(GitHttpError::UnknownService {
                service: other.to_owned(),
            }),
        }
    }

    /// The git subcommand, e.g. `upload-pack`.
    pub fn subcommand(self) -> &'static str {
        match self {
            Self::UploadPack => "upload-pack",
            Self::ReceivePack => "receive-pack",
        }
    }

    fn advertisement_type(self) -> &'static str {
        match self {
            Self::UploadPack => "application/x-git-upload-pack-advertisement",
            Self::ReceivePack => "application/x-git-receive-pack-advertisement",
        }
    }

    pub fn request_type(self) -> &'static str {
        match self {
            Self::UploadPack => "application/x-git-upload-pack-request",
            Self::ReceivePack => "application/x-git-receive-pack-request",
        }
    }

    fn result_type(self) -> &'static str {
        match self {
            Self::UploadPack => "application/x-git-upload-pack-result",
            Self::ReceivePack => "application/x-git-receive-pack-result",
        }
    }
}

/// One git service to run against one repository.
pub struct RpcCommand<'a> {
    pub git: &'a Git,
    pub service: Service,
    pub repo_path: PathBuf,
    /// Extra environment: `GIT_PROTOCOL`, the hook's socket and push id.
    pub env: Vec<(&'static str, String)>,
}

impl RpcCommand<'_> {
    fn command(&self, advertise: bool) -> tokio::process::Command {
        let mut command = self.git.command(None);
        command
            .arg(self.service.subcommand())
            .arg("--stateless-rpc");
        if advertise {
            command.arg("--advertise-refs");
        }
        if self.service == Service::UploadPack {
            command.arg("--strict");
        }
        command.arg(&self.repo_path);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// `GET info/refs?service=...`: the ref advertisement, small enough to buffer.
    /// `protocol_v2` drops the `# service=` preamble, as git http-backend does.
    pub async fn advertise(&self, protocol_v2: bool) -> Result<Response, GitHttpError> {
        let service = self.service.subcommand();
        let output = self
            .git
            .output_with(self.command(true), &[], None)
            .await
            .map_err(|source| GitHttpError::Spawn { service, source })?;
        if !output.status.success() {
            return Err(GitHttpError::GitRefused {
                service,
                stderr: output.stderr,
            });
        }
        let mut body = Vec::with_capacity(output.stdout.len() + 64);
        if !protocol_v2 {
            let preamble = format!("# service=git-{service}\n");
            body.extend_from_slice(format!("{:04x}", preamble.len() + 4).as_bytes());
            body.extend_from_slice(preamble.as_bytes());
            body.extend_from_slice(b"0000");
        }
        body.extend_from_slice(&output.stdout);
        Ok(git_response(
            self.service.advertisement_type(),
            Body::from(body),
        ))
    }

    /// `POST git-upload-pack` / `git-receive-pack`. `registration` (a push's entry in
    /// the hook's registry) lives until git exits.
    pub async fn run(
        &self,
        body: Body,
        gzip: bool,
        limit: u64,
        registration: Option<PushRegistration>,
    ) -> Result<Response, GitHttpError> {
        let service = self.service.subcommand();
        let mut command = self.command(false);
        command.stdin(std::process::Stdio::piped());
        let mut child = command.spawn().map_err(|source| GitHttpError::Spawn {
            service,
            source: crate::command::GitCommandError::Spawn {
                args: format!("{service} --stateless-rpc"),
                source,
            },
        })?;
        let stdin = child.stdin.take().expect("stdin was piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        let (body_sender, body_outcome) = oneshot::channel();
        tokio::spawn(async move {
            let mut stdin = stdin;
            let outcome = copy_body(body_reader(body, gzip), &mut stdin, limit).await;
            // Sent before stdin is closed, so whoever sees git react to the end of its
            // input can also see why the input ended.
            let _ = body_sender.send(outcome);
            drop(stdin);
        });

        let (exit_sender, exit) = oneshot::channel();
        tokio::spawn(async move {
            let (status, stderr) = tokio::join!(child.wait(), read_bounded(stderr));
            drop(registration);
            match &status {
                Ok(status) if status.success() => {}
                Ok(status) => tracing::warn!(service, %status, stderr, "git exited with an error"),
                Err(error) => tracing::warn!(service, %error, "waiting for git failed"),
            }
            let _ = exit_sender.send((status.ok(), stderr));
        });

        let mut first = vec![0u8; 64 * 1024];
        let read = stdout.read(&mut first).await.unwrap_or(0);
        let mut body_outcome = body_outcome;
        if read == 0 {
            // git said nothing: the request decides the status. Waiting for git's exit,
            // not for the body, so a client that stalls after git gave up holds nothing.
            let (status, stderr) = exit.await.unwrap_or((None, String::new()));
            if let Ok(Err(error)) = body_outcome.try_recv() {
                return Err(error);
            }
            return match status {
                Some(status) if status.success() => {
                    Ok(git_response(self.service.result_type(), Body::empty()))
                }
                _ => Err(GitHttpError::GitRefused {
                    service,
                    stderr: describe_failure(status, stderr),
                }),
            };
        }
        if let Ok(Err(error)) = body_outcome.try_recv() {
            // git reacted to an input we cut short; our reason is the clearer one.
            return Err(error);
        }
        first.truncate(read);
        let rest = ReaderStream::new(stdout);
        let stream = futures::stream::once(async move { Ok(Bytes::from(first)) }).chain(rest);
        Ok(git_response(
            self.service.result_type(),
            Body::from_stream(stream),
        ))
    }
}

fn describe_failure(status: Option<ExitStatus>, stderr: String) -> String {
    match (status, stderr.is_empty()) {
        (_, false) => stderr,
        (Some(status), true) => format!("git exited with {status}"),
        (None, true) => "git could not be waited for".to_owned(),
    }
}

fn git_response(content_type: &'static str, body: Body) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, max-age=0, must-revalidate"),
    );
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::EXPIRES,
        HeaderValue::from_static("Fri, 01 Jan 1980 00:00:00 GMT"),
    );
    response
}

fn body_reader(body: Body, gzip: bool) -> Pin<Box<dyn AsyncRead + Send>> {
    let stream = body
        .into_data_stream()
        .map_err(|error| std::io::Error::new(std::io::ErrorKind::ConnectionAborted, error));
    let reader = StreamReader::new(stream);
    if gzip {
        Box::pin(GzipDecoder::new(reader))
    } else {
        Box::pin(reader)
    }
}

/// Copies the (decoded) body into git's stdin, at most `limit` bytes, then closes it.
async fn copy_body(
    reader: Pin<Box<dyn AsyncRead + Send>>,
    stdin: &mut tokio::process::ChildStdin,
    limit: u64,
) -> Result<(), GitHttpError> {
    let mut limited = reader.take(limit.saturating_add(1));
    match tokio::io::copy(&mut limited, stdin).await {
        Ok(copied) if copied > limit => Err(GitHttpError::BodyTooLarge { limit }),
        Ok(_) => {
            // git may already have exited; its exit status tells.
            let _ = stdin.shutdown().await;
            Ok(())
        }
        // git stopped reading (it rejected the request); its exit status tells.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
            Err(GitHttpError::BadBody {
                reason: format!("not valid gzip ({error})"),
            })
        }
        Err(error) => Err(GitHttpError::BadBody {
            reason: error.to_string(),
        }),
    }
}

async fn read_bounded(mut stderr: tokio::process::ChildStderr) -> String {
    let mut kept = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..read.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_owned()
}
