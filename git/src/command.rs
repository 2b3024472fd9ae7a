//! Running the real `git` binary. One place builds every command line, scrubs the
//! `GIT_*` variables this process inherited (a stray `GIT_DIR` would point every
//! command at the wrong repository) and turns a failure into a typed error that names
//! the arguments and git's own stderr, so a failing step says which step it was.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use thiserror::Error;
use tokio::io::AsyncWriteExt;

/// How much of git's stderr an error keeps: enough for git's message, bounded so a
/// chatty failure cannot grow an error without limit.
const STDERR_KEPT: usize = 16 * 1024;

/// A failure to run one git command.
#[derive(Debug, Error)]
pub enum GitCommandError {
    #[error("start `git {args}`")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write the input of `git {args}`")]
    WriteStdin {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("wait for `git {args}`")]
    Wait {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {args}` failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// What one git command printed and how it ended.
#[derive(Debug)]
pub struct GitOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

/// The git binary every command of this crate runs.
#[derive(Debug, Clone)]
pub struct Git {
    program: PathBuf,
}

impl Default for Git {
    /// `git` from `PATH`.
    fn default() -> Self {
        Self::new("git")
    }
}

impl Git {
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
        }
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A command for this git with the inherited `GIT_*` environment removed, no
    /// terminal prompts and stable (C locale) messages. `git_dir` becomes `--git-dir`.
    pub fn command(&self, git_dir: Option<&Path>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GIT_") {
                command.env_remove(&name);
            }
        }
        command
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(git_dir) = git_dir {
            let mut flag = OsString::from("--git-dir=");
            flag.push(git_dir.as_os_str());
            command.arg(flag);
        }
        command
    }

    /// Runs `git <args>` (in `git_dir`) to completion, feeding `stdin`, and returns
    /// whatever happened, success or not.
    pub async fn output(
        &self,
        git_dir: Option<&Path>,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<GitOutput, GitCommandError> {
        self.output_with(self.command(git_dir), args, stdin).await
    }

    /// Like [`Git::output`] for a command the caller prepared (extra environment).
    pub async fn output_with(
        &self,
        mut command: tokio::process::Command,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<GitOutput, GitCommandError> {
        let shown = args.join(" ");
        command.args(args);
        if stdin.is_some() {
            command.stdin(Stdio::piped());
        }
        let mut child = command.spawn().map_err(|source| GitCommandError::Spawn {
            args: shown.clone(),
            source,
        })?;
        let writer = child.stdin.take().map(|mut child_stdin| {
            let input = stdin.unwrap_or_default().to_vec();
            tokio::spawn(async move {
                child_stdin.write_all(&input).await?;
                child_stdin.shutdown().await
            })
        });
        let output = child
            .wait_with_output()
            .await
            .map_err(|source| GitCommandError::Wait {
                args: shown.clone(),
                source,
            })?;
        if let Some(writer) = writer {
            match writer.await {
                Ok(Ok(())) => {}
                // git may stop reading once it has what it needs; its exit status decides.
                Ok(Err(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => {}
                Ok(Err(source)) => {
                    return Err(GitCommandError::WriteStdin {
                        args: shown,
                        source,
                    })
                }
                Err(join_error) => {
                    return Err(GitCommandError::WriteStdin {
                        args: shown,
                        source: std::io::Error::other(join_error),
                    })
                }
            }
        }
        let mut stderr = output.stderr;
        stderr.truncate(STDERR_KEPT);
        Ok(GitOutput {
            status: output.status,
            stdout: output.stdout,
            stderr: String::from_utf8_lossy(&stderr).trim_end().to_owned(),
        })
    }

    /// Runs `git <args>` and fails unless it exits 0; returns its stdout.
    pub async fn run(
        &self,
        git_dir: Option<&Path>,
        args: &[&str],
        stdin: Option<&[u8]>,
    ) -> Result<Vec<u8>, GitCommandError> {
        let output = self.output(git_dir, args, stdin).await?;
        output.success(args)
    }
}

impl GitOutput {
    /// stdout if the command exited 0, else a [`GitCommandError::Failed`].
    pub fn success(self, args: &[&str]) -> Result<Vec<u8>, GitCommandError> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(GitCommandError::Failed {
                args: args.join(" "),
                status: self.status,
                stderr: self.stderr,
            })
        }
    }
}
