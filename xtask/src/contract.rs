//! `cargo xtask contract` (and the last step of `cargo xtask test`): the API against its
//! own OpenAPI document. It starts `flotilla dev` (debug build, its own data directory
//! under the target directory, port 7190 so a developer's dev on 7100 is left alone),
//! runs schemathesis (from PyPI, in a virtualenv under the target directory) with
//! `--checks all` and `tests/schemathesis.toml`, and stops dev with SIGTERM, whatever
//! happened, so its desktops, bridge and nft table go with it.
//!
//! The seed is fixed (`FLOTILLA_CONTRACT_SEED` overrides it) so that a failure can be
//! replayed and CI is the same run each time; `/api/v1/watch` is left out: it is an
//! event stream that never ends, which schemathesis can only wait out (its parameters
//! are covered by the control plane's own tests).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::project;
use crate::python::{self, PythonError};

/// The schemathesis release the contract is written against.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";
const LISTEN: &str = "127.0.0.1:7190";
const DEFAULT_SEED: &str = "20261203";
/// How long dev may take to write its operator token and answer `/healthz`.
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug)]
pub enum ContractError {
    Spawn { command: String, source: io::Error },
    Failed { command: String },
    DevNotReady { log: PathBuf },
    Io { path: PathBuf, source: io::Error },
    Python(PythonError),
}

impl fmt::Display for ContractError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContractError::Spawn { command, .. } => write!(formatter, "could not run `{command}`"),
            ContractError::Failed { command } => write!(formatter, "`{command}` failed"),
            ContractError::DevNotReady { log } => write!(
                formatter,
                "flotilla dev did not come up within {}s; its log: {}",
                START_TIMEOUT.as_secs(),
                log.display()
            ),
            ContractError::Io { path, .. } => write!(formatter, "{}", path.display()),
            ContractError::Python(python_error) => write!(formatter, "{python_error}"),
        }
    }
}

impl std::error::Error for ContractError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ContractError::Spawn { source, .. } | ContractError::Io { source, .. } => Some(source),
            ContractError::Python(python_error) => python_error.source(),
            _ => None,
        }
    }
}

/// Builds flotilla, runs the contract; `Ok(false)` when schemathesis found failures.
pub fn run() -> Result<bool, ContractError> {
    let root = project::workspace_root();
    let target = project::target_dir(&root);
    let st = install_schemathesis(&target)?;
    run_checked(project::cargo(&root, &["build", "--bin", "flotilla"]))?;

    let dir = target.join("contract");
    let data_dir = dir.join("dev");
    if data_dir.exists() {
        std::fs::remove_dir_all(&data_dir).map_err(|source| ContractError::Io {
            path: data_dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&dir).map_err(|source| ContractError::Io {
        path: dir.clone(),
        source,
    })?;
    let log_path = dir.join("dev.log");
    let log = std::fs::File::create(&log_path).map_err(|source| ContractError::Io {
        path: log_path.clone(),
        source,
    })?;
    let log_err = log.try_clone().map_err(|source| ContractError::Io {
        path: log_path.clone(),
        source,
    })?;
    let mut dev = Command::new(target.join("debug").join("flotilla"));
    dev.args(["dev", "--listen", LISTEN])
        .env("FLOTILLA_DEV_DIR", &data_dir)
        // Generated imports must not reach out: no upstream host is allowed.
        .env("FLOTILLA_UPSTREAM_HOSTS", "-")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    project::echo(&dev);
    let child = dev.spawn().map_err(|source| ContractError::Spawn {
        command: project::display(&dev),
        source,
    })?;
    let dev = Dev(child);
    let outcome = schemathesis(&root, &st, &data_dir, &log_path);
    dev.stop();
    outcome
}

fn schemathesis(
    root: &Path,
    st: &Path,
    data_dir: &Path,
    log: &Path,
) -> Result<bool, ContractError> {
    let token = wait_until_ready(&data_dir.join("operator.token"), log)?;
    let seed = std::env::var("FLOTILLA_CONTRACT_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
    let mut command = Command::new(st);
    command
        .arg("--config-file")
        .arg(root.join("tests").join("schemathesis.toml"))
        .args([
            "run",
            &format!("http://{LISTEN}/api/v1/openapi.json"),
            "--checks",
            "all",
            "--exclude-path",
            "/api/v1/watch",
            "--seed",
            &seed,
            "--header",
        ])
        // Not echoed with its value: the token is a credential.
        .arg(format!("Authorization: Bearer {token}"));
    eprintln!("$ st run http://{LISTEN}/api/v1/openapi.json --checks all --seed {seed} ...");
    let status = command.status().map_err(|source| ContractError::Spawn {
        command: "st run".into(),
        source,
    })?;
    Ok(status.success())
}

/// The operator token, once dev has written it and answers.
fn wait_until_ready(token_path: &Path, log: &Path) -> Result<String, ContractError> {
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if let Ok(token) = std::fs::read_to_string(token_path) {
            let healthy = healthz();
            if healthy && !token.trim().is_empty() {
                return Ok(token.trim().to_owned());
            }
        }
        thread::sleep(Duration::from_millis(500));
    }
    Err(ContractError::DevNotReady {
        log: log.to_path_buf(),
    })
}

/// Whether dev answers `GET /healthz` with 200 (HTTP/1.0 by hand: xtask is std-only).
fn healthz() -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(LISTEN) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let mut answer = String::new();
    stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut answer))
        .is_ok_and(|_| answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
}

/// `st` in `<target>/schemathesis`, installed with pip when missing.
fn install_schemathesis(target: &Path) -> Result<PathBuf, ContractError> {
    let venv =
        python::venv(target, "schemathesis", &[SCHEMATHESIS]).map_err(ContractError::Python)?;
    Ok(venv.join("bin").join("st"))
}

fn run_checked(mut command: Command) -> Result<(), ContractError> {
    project::echo(&command);
    let status = command.status().map_err(|source| ContractError::Spawn {
        command: project::display(&command),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(ContractError::Failed {
            command: project::display(&command),
        })
    }
}

/// The running dev; stopped with SIGTERM (and waited for) however the run ends.
struct Dev(Child);

impl Dev {
    fn stop(mut self) {
        let pid = self.0.id().to_string();
        // std has no signal but SIGKILL; SIGTERM lets dev stop its desktops.
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(200));
        }
        eprintln!("xtask: flotilla dev did not stop within 60s of SIGTERM");
        let _ = self.0.wait();
    }
}
