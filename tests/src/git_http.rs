//! A plain git HTTP server: `git http-backend` (a CGI program) behind a tiny
//! axum bridge in one process, no replication: the request body is streamed
//! to its stdin, its CGI headers (`Status:`, `Content-Type:`) parsed, the
//! rest streamed back. `flotilla-bench git` runs it as the plain peer; the
//! import tests run it with a fixed token, standing in for GitHub.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{bail, Context};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
/// A running server for the bare repositories under a root, at
/// `http://<addr>/git/<path under the root>`.
pub struct PlainGitServer {
    pub addr: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

struct Served {
    root: PathBuf,
    /// The HTTP Basic password every request must carry, if any.
    token: Option<String>,
}

impl PlainGitServer {
    /// Serves `root`; with `token`, every request must carry it as the
    /// HTTP Basic password (else 401 with `WWW-Authenticate`, as GitHub).
    pub async fn start(root: PathBuf, token: Option<String>) -> anyhow::Result<PlainGitServer> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let app = axum::Router::new()
            .fallback(cgi)
            .layer(DefaultBodyLimit::disable())
            .with_state(Arc::new(Served { root, token }));
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
        });
        Ok(PlainGitServer {
            addr,
            shutdown: Some(shutdown),
            task,
        })
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.task.await??;
        Ok(())
    }
}

async fn cgi(State(served): State<Arc<Served>>, request: Request) -> Response {
    if let Some(token) = &served.token {
        let password = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Basic "))
            .and_then(|encoded| {
                base64::engine::general_purpose::STANDARD
                    .decode(encoded.trim())
                    .ok()
            })
            .and_then(|decoded| String::from_utf8(decoded).ok())
            .and_then(|pair| {
                pair.split_once(':')
                    .map(|(_, password)| password.to_owned())
            });
        if password.as_deref() != Some(token.as_str()) {
            return Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .header("www-authenticate", "Basic realm=\"git\"")
                .body(Body::from("a token is required\n"))
                .unwrap_or_default();
        }
    }
    match run_cgi(&served.root, request).await {
        Ok(response) => response,
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}\n")).into_response(),
    }
}

/// One request through `git http-backend` (RFC 3875 CGI).
async fn run_cgi(root: &Path, request: Request) -> anyhow::Result<Response> {
    let (parts, body) = request.into_parts();
    let path_info = parts
        .uri
        .path()
        .strip_prefix("/git")
        .context("not under /git")?
        .to_owned();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_remove("GIT_DIR")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", &path_info)
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("REMOTE_USER", "bench")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (header_name, variable) in [
        ("content-type", "CONTENT_TYPE"),
        ("content-length", "CONTENT_LENGTH"),
        ("git-protocol", "HTTP_GIT_PROTOCOL"),
        ("content-encoding", "HTTP_CONTENT_ENCODING"),
    ] {
        if let Some(value) = header(header_name) {
            command.env(variable, value);
        }
    }
    let mut child = command.spawn().context("start git http-backend")?;
    let mut stdin = child.stdin.take().context("http-backend's stdin")?;
    let stdout = child.stdout.take().context("http-backend's stdout")?;
    // Feed the body while the headers are read: neither side waits on the other.
    tokio::spawn(async move {
        let mut body = body.into_data_stream();
        while let Some(Ok(chunk)) = body.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = stdin.shutdown().await;
    });
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let mut stdout = BufReader::with_capacity(64 * 1024, stdout);
    let mut response = Response::builder();
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).await? == 0 {
            bail!("http-backend ended inside its headers");
        }
        let trimmed = line.trim_end_matches(['\r', '\n']);
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed
            .split_once(':')
            .with_context(|| format!("bad CGI header {trimmed:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            response = response.status(StatusCode::from_bytes(code.as_bytes())?);
        } else {
            response = response.header(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
    }
    Ok(response.body(Body::from_stream(tokio_util::io::ReaderStream::new(stdout)))?)
}
