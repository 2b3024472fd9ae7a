//! The real `git` client and the `flotilla` CLI as the git tests drive
//! them: a clean environment (no inherited `GIT_*`, no system config, no
//! prompts, `HOME` the work directory) and a fixed identity.

use std::path::Path;
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};

/// `git` with a clean environment and identity, run in `dir`.
pub fn git_command(dir: &Path) -> Command {
    let mut command = Command::new("git");
    command
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.com"])
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir);
    command
}

/// `git <args>` in `dir`, however it ended.
pub fn git_output(dir: &Path, args: &[&str]) -> anyhow::Result<Output> {
    git_command(dir).args(args).output().context("run git")
}

/// `git <args>` in `dir`, failing on a non-zero exit; its stdout.
pub fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = git_output(dir, args)?;
    if !output.status.success() {
        bail!("git {}: {}", args.join(" "), described(&output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `flotilla <args>` against the server at `addr` with `token`.
pub fn cli(addr: &str, token: &str, args: &[&str]) -> anyhow::Result<Output> {
    Command::new(crate::flotilla_bin())
        .args(args)
        .env("FLOTILLA_ADDR", addr)
        .env("FLOTILLA_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .context("run flotilla")
}

/// `flotilla <args>`, failing on a non-zero exit; its stdout.
pub fn cli_ok(addr: &str, token: &str, args: &[&str]) -> anyhow::Result<String> {
    let output = cli(addr, token, args)?;
    if !output.status.success() {
        bail!("flotilla {}: {}", args.join(" "), described(&output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A process's exit status and output, for failure messages.
pub fn described(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
