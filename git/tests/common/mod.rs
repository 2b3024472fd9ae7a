//! The test harness: a real axum server on 127.0.0.1:0 serving a real store with the
//! crate's own `flotilla-git-hook` binary as the proc-receive hook, a token-table
//! [`GitAuth`], and a real `git` client with an isolated HOME.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use axum::http::HeaderMap;
use flotilla_git::http::basic_password;
use flotilla_git::{
    Access, Git, GitAuth, GitAuthError, GitHost, GitHostConfig, GitHttpConfig, HookProgram,
    MemoryLedger, Principal, RefLedger, RepoId, RepoStore, StoreConfig, TaskId,
};
use tempfile::TempDir;

pub const OPERATOR: &str = "operator-token";
pub const DESKTOP_T1: &str = "desktop-t1-token";
pub const DESKTOP_T2: &str = "desktop-t2-token";

/// Tokens: the operator, and the desktops of tasks t1 and t2.
pub struct TokenAuth;

#[async_trait]
impl GitAuth for TokenAuth {
    async fn authorize(
        &self,
        headers: &HeaderMap,
        _repo: &RepoId,
        _access: Access,
    ) -> Result<Principal, GitAuthError> {
        let desktop = |task: &str| Principal::Desktop {
            task: TaskId::new(task).expect("valid task id"),
            allowed_prefixes: Vec::new(),
        };
        match basic_password(headers).as_deref() {
            None => Err(GitAuthError::MissingCredentials),
            Some(OPERATOR) => Ok(Principal::Operator {
                name: "test-operator".to_owned(),
            }),
            Some(DESKTOP_T1) => Ok(desktop("t1")),
            Some(DESKTOP_T2) => Ok(desktop("t2")),
            Some(_) => Err(GitAuthError::InvalidCredentials),
        }
    }
}

pub fn store_config() -> StoreConfig {
    StoreConfig {
        git: Git::default(),
        default_branch: "main".to_owned(),
        hook: HookProgram {
            program: PathBuf::from(env!("CARGO_BIN_EXE_flotilla-git-hook")),
            args: vec!["proc-receive".to_owned()],
        },
    }
}

/// What requests reached the server, for tests that check the client's behaviour.
#[derive(Default)]
pub struct RequestLog {
    pub content_encodings: Mutex<Vec<String>>,
}

pub struct Harness {
    pub dir: TempDir,
    pub store: Arc<RepoStore>,
    pub ledger: Arc<MemoryLedger>,
    pub addr: SocketAddr,
    pub requests: Arc<RequestLog>,
    host: GitHost,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Turns the harness's memory ledger into the ledger the host uses.
pub type LedgerWrapper = Box<dyn FnOnce(Arc<MemoryLedger>) -> Arc<dyn RefLedger>>;

pub struct HarnessOptions {
    pub receive_pack_body_limit: Option<u64>,
    /// Wraps the memory ledger (e.g. to hold pushes at a barrier).
    pub wrap_ledger: Option<LedgerWrapper>,
}

impl Harness {
    pub async fn start() -> Result<Self> {
        Self::start_with(HarnessOptions {
            receive_pack_body_limit: None,
            wrap_ledger: None,
        })
        .await
    }

    pub async fn start_with(options: HarnessOptions) -> Result<Self> {
        let dir = tempfile::tempdir().context("create the test directory")?;
        let store = Arc::new(RepoStore::new(dir.path().join("repos"), store_config()));
        let ledger = Arc::new(MemoryLedger::new(Arc::clone(&store)));
        let ledger_for_host: Arc<dyn RefLedger> = match options.wrap_ledger {
            Some(wrap) => wrap(Arc::clone(&ledger)),
            None => Arc::clone(&ledger) as Arc<dyn RefLedger>,
        };
        let mut http = GitHttpConfig::new(dir.path().join("hook.sock"));
        if let Some(limit) = options.receive_pack_body_limit {
            http.receive_pack_body_limit = limit;
        }
        let host = GitHost::start(
            Arc::clone(&store),
            Arc::new(TokenAuth),
            ledger_for_host,
            GitHostConfig::new(http),
        )
        .await
        .context("start the git host")?;
        let requests = Arc::new(RequestLog::default());
        let log = Arc::clone(&requests);
        let router = host.router().layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let log = Arc::clone(&log);
                async move {
                    if let Some(encoding) = request.headers().get("content-encoding") {
                        log.content_encodings
                            .lock()
                            .expect("log lock")
                            .push(encoding.to_str().unwrap_or("?").to_owned());
                    }
                    next.run(request).await
                }
            },
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("serve");
        });
        std::fs::create_dir_all(dir.path().join("home"))?;
        Ok(Self {
            dir,
            store,
            ledger,
            addr,
            requests,
            host,
            server,
        })
    }

    pub fn repo(&self) -> RepoId {
        RepoId::new("p", "r").expect("valid")
    }

    pub async fn create_repo(&self) -> Result<RepoId> {
        let repo = self.repo();
        self.store.create(&repo).await.context("create p/r")?;
        Ok(repo)
    }

    pub fn url(&self, token: &str, path: &str) -> String {
        format!("http://x:{token}@{}/git/{path}", self.addr)
    }

    pub fn plain_url(&self, path: &str) -> String {
        format!("http://{}/git/{path}", self.addr)
    }

    pub fn work_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join("work").join(name)
    }

    /// Runs the git client in `cwd` with an isolated configuration.
    pub async fn git(&self, cwd: &Path, args: &[&str]) -> Result<GitRun> {
        self.git_env(cwd, args, &[]).await
    }

    pub async fn git_env(&self, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<GitRun> {
        std::fs::create_dir_all(cwd)?;
        let mut command = Git::default().command(None);
        command
            .current_dir(cwd)
            .env("HOME", self.dir.path().join("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Tester")
            .env("GIT_AUTHOR_EMAIL", "tester@example.invalid")
            .env("GIT_COMMITTER_NAME", "Tester")
            .env("GIT_COMMITTER_EMAIL", "tester@example.invalid")
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgSign=false",
            ])
            .args(args);
        for (name, value) in env {
            command.env(name, value);
        }
        let output = tokio::time::timeout(Duration::from_secs(120), command.output())
            .await
            .with_context(|| format!("git {args:?} timed out"))?
            .with_context(|| format!("run git {args:?}"))?;
        Ok(GitRun {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs git and fails the test unless it succeeds.
    pub async fn git_ok(&self, cwd: &Path, args: &[&str]) -> Result<GitRun> {
        let run = self.git(cwd, args).await?;
        if !run.success {
            bail!("git {args:?} failed: {}", run.stderr);
        }
        Ok(run)
    }

    /// Clones p/r with `token` into work/`name`.
    pub async fn clone(&self, token: &str, name: &str) -> Result<PathBuf> {
        let target = self.work_dir(name);
        let parent = target.parent().expect("work dir has a parent").to_owned();
        let url = self.url(token, "p/r");
        self.git_ok(&parent, &["clone", "--quiet", &url, name])
            .await?;
        Ok(target)
    }

    /// Writes `file` and commits it in `work`.
    pub async fn commit(&self, work: &Path, file: &str, content: &str) -> Result<String> {
        std::fs::write(work.join(file), content)?;
        self.git_ok(work, &["add", file]).await?;
        self.git_ok(work, &["commit", "--quiet", "-m", &format!("write {file}")])
            .await?;
        Ok(self
            .git_ok(work, &["rev-parse", "HEAD"])
            .await?
            .stdout
            .trim()
            .to_owned())
    }

    /// An operator's clone with one commit pushed to main.
    pub async fn seed_main(&self) -> Result<(PathBuf, String)> {
        self.create_repo().await?;
        let work = self.clone(OPERATOR, "seed").await?;
        let commit = self.commit(&work, "README", "hello\n").await?;
        self.git_ok(&work, &["push", "--quiet", "origin", "HEAD:main"])
            .await?;
        Ok((work, commit))
    }

    pub async fn server_ref(&self, name: &str) -> Result<Option<String>> {
        let refs = self.store.list_refs(&self.repo()).await?;
        Ok(refs
            .iter()
            .find(|(ref_name, _)| ref_name.as_str() == name)
            .map(|(_, id)| id.to_string()))
    }
}

pub struct GitRun {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}
