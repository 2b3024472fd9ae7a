//! What every client command shares: the flags naming the server and the
//! token, and the connection: HTTP/JSON requests with the token, an
//! idempotency key and retries, and the token on gRPC requests. It prints
//! nothing; the commands decide what an answer looks like.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use flotilla_control_plane::auth::with_bearer;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::render::Output;

/// The flags of every command that talks to a server.
#[derive(Args)]
pub struct ClientArgs {
    /// Server to talk to.
    #[arg(
        long,
        env = "FLOTILLA_ADDR",
        default_value = "127.0.0.1:7100",
        global = true
    )]
    addr: String,
    /// Operator token (default: the token `flotilla dev` saved).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: OutputArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputArg {
    Table,
    Json,
}

/// The dev data directory, shared by `flotilla dev` and the CLI's token
/// lookup: `FLOTILLA_DEV_DIR` when set; as root `/var/lib/flotilla/dev`
/// (root sandboxes run as host uids of their own, which cannot enter a
/// 0700 home such as Debian's `/root`); otherwise the user's data
/// directory (`~/.local/share/flotilla/dev`: rootless sandboxes run as the
/// user, who can).
pub fn dev_data_dir() -> PathBuf {
    dev_data_dir_for(
        std::env::var_os("FLOTILLA_DEV_DIR").filter(|dir| !dir.is_empty()),
        rustix::process::geteuid().is_root(),
        dirs::data_dir(),
    )
}

fn dev_data_dir_for(
    explicit: Option<std::ffi::OsString>,
    root: bool,
    user_data: Option<PathBuf>,
) -> PathBuf {
    match explicit {
        Some(dir) => PathBuf::from(dir),
        None if root => PathBuf::from("/var/lib/flotilla/dev"),
        None => user_data
            .unwrap_or_else(|| PathBuf::from(".local/share"))
            .join("flotilla")
            .join("dev"),
    }
}

/// A client for the server `args` name, with the token given or the one
/// `flotilla dev` saved.
pub fn connect(args: ClientArgs) -> anyhow::Result<Client> {
    let token = match args.token {
        Some(token) => token,
        None => {
            let path = dev_data_dir().join("operator.token");
            std::fs::read_to_string(&path)
                .map(|token| token.trim().to_owned())
                .with_context(|| {
                    format!(
                        "no token: pass --token or set FLOTILLA_TOKEN (no dev token at {})",
                        path.display()
                    )
                })?
        }
    };
    let output = match args.output {
        OutputArg::Table => Output::Table,
        OutputArg::Json => Output::Json,
    };
    Client::new(args.addr, token, output)
}

pub struct Client {
    addr: String,
    token: String,
    pub output: Output,
    pub http: reqwest::Client,
}

impl Client {
    pub fn new(addr: String, token: String, output: Output) -> anyhow::Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("build the HTTP client")?;
        Ok(Client {
            addr,
            token,
            output,
            http,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `message` as a gRPC request carrying the token.
    pub fn authorized<T>(&self, message: T) -> tonic::Request<T> {
        with_bearer(message, &self.token)
    }

    /// Sends `request`, retrying a few times when the server is unreachable
    /// or answers 503 (no leader yet). Every attempt carries the same
    /// idempotency key, so a retried write still applies once.
    pub async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = self.send_raw(request).await?;
        let body = response.text().await.context("read the server's answer")?;
        if body.is_empty() {
            return serde_json::from_str("null").context("decode an empty answer");
        }
        serde_json::from_str(&body).with_context(|| format!("decode the server's answer: {body}"))
    }

    /// Sends `request` with the token and an idempotency key, retrying an
    /// unreachable server or a 503 (nothing was done) up to three times;
    /// an error answer becomes an error with the server's message. The
    /// successful response is returned unread (it may be a stream).
    pub async fn send_raw(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        const ATTEMPTS: usize = 3;
        let request = request
            .bearer_auth(&self.token)
            .header("idempotency-key", uuid::Uuid::new_v4().to_string());
        let mut attempt = 1;
        let response = loop {
            let this_try = request
                .try_clone()
                .expect("requests with JSON or empty bodies can be cloned");
            let result = this_try.send().await;
            let retryable = match &result {
                Ok(response) => response.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE,
                Err(error) => error.is_connect() || error.is_timeout(),
            };
            if !retryable || attempt == ATTEMPTS {
                break result.with_context(|| format!("reach the server at {}", self.addr))?;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.context("read the server's answer")?;
            let message = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|value| value["error"]["message"].as_str().map(str::to_owned))
                .unwrap_or(body);
            bail!("{message} (HTTP {})", status.as_u16());
        }
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_directory_is_outside_any_home_for_root() {
        let home = Some(PathBuf::from("/root/.local/share"));
        assert_eq!(
            dev_data_dir_for(None, true, home.clone()),
            PathBuf::from("/var/lib/flotilla/dev")
        );
        assert_eq!(
            dev_data_dir_for(None, false, Some(PathBuf::from("/home/ada/.local/share"))),
            PathBuf::from("/home/ada/.local/share/flotilla/dev")
        );
        assert_eq!(
            dev_data_dir_for(Some("/srv/dev".into()), true, home),
            PathBuf::from("/srv/dev")
        );
    }
}
