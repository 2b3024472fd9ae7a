//! The official Python SDKs (`openai`, `anthropic`) as real clients in tests:
//! `cargo xtask sdks` (and `cargo xtask test`, before the tests) installs them,
//! pinned, into a virtualenv at `<target>/llm-sdks`; `cargo xtask test` tells
//! the tests its interpreter in `FLOTILLA_SDK_PYTHON`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long one `python -c` may run before it is killed.
const PYTHON_TIMEOUT: Duration = Duration::from_secs(120);

/// The virtualenv's interpreter: `FLOTILLA_SDK_PYTHON`, else
/// `<target>/llm-sdks/bin/python` beside the test binary's target directory.
pub fn python() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FLOTILLA_SDK_PYTHON") {
        let path = PathBuf::from(path);
        if !path.exists() {
            bail!(
                "FLOTILLA_SDK_PYTHON is {}, which does not exist; run `cargo xtask sdks`",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("the test knows its own path")?;
    // target/<profile>/deps/<test> -> target/llm-sdks/bin/python
    let target = exe
        .parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .context("test binaries live in target/<profile>/deps")?;
    let python = target.join("llm-sdks").join("bin").join("python");
    if !python.exists() {
        bail!(
            "{} is missing: the Python SDKs are installed by `cargo xtask sdks` \
             (`cargo xtask test` does it too)",
            python.display()
        );
    }
    Ok(python)
}

/// Runs `python -c script` with `env` added; its stdout. Fails with its
/// stderr when it exits non-zero or runs past two minutes.
pub fn run_python(script: &str, env: &[(&str, &str)]) -> anyhow::Result<String> {
    let python = python()?;
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", python.display()))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + PYTHON_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().context("wait for python")? {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => bail!("python {status}\n--- stderr\n{stderr}\n--- stdout\n{stdout}"),
        None => bail!(
            "python ran past {}s and was killed\n--- stderr\n{stderr}\n--- stdout\n{stdout}",
            PYTHON_TIMEOUT.as_secs()
        ),
    }
}

/// [`run_python`] on a blocking thread, for async tests.
pub async fn run_python_async(
    script: String,
    env: Vec<(String, String)>,
) -> anyhow::Result<String> {
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_python(&script, &env)
    })
    .await
    .context("the python thread")?
}

/// Reads a child's pipe to its end on a thread of its own, so neither pipe can
/// fill up and stall the child.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
        text
    })
}
