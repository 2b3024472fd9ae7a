//! `running` means usable: a desktop session is `starting` until gpud holds
//! a frame it composed and its compositor answers on its control socket,
//! so whoever acts on `running` (a person, an agent, a stream) acts at
//! once. A session that never gets there stays `starting`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use flotilla_gpu::service::GpuService;
use flotilla_node_agent::runtime::{
    DesktopRuntime, DesktopSpec, ProcessRuntime, SandboxSettings, SessionCommand,
};
use flotilla_tests::{flotilla_bin, netns, wait_phase};

fn desktop(id: &str) -> DesktopSpec {
    DesktopSpec {
        token: String::new(),
        repository: String::new(),
        memory_bytes: 512 << 20,
        ..flotilla_tests::desktop_spec(id, 1)
    }
}

/// A runtime of desktop sessions running `program` in sandboxes under
/// `data`, with gpud on `service`.
fn session_runtime(
    name: &str,
    data: &Path,
    session_exe: &Path,
    program: &[&str],
    service: &Arc<GpuService>,
) -> anyhow::Result<ProcessRuntime> {
    let plain = vec!["sleep".to_owned(), "60".to_owned()];
    let runtime = ProcessRuntime::new(name, data, plain, Duration::from_secs(2))?
        .with_session(SessionCommand {
            program: program.iter().map(|s| (*s).to_owned()).collect(),
            apps: vec!["foot".to_owned()],
            keyboard_layout: String::new(),
            keyboard_variant: String::new(),
        })
        .with_sandbox(SandboxSettings {
            exe: flotilla_bin(),
            desktops_dir: data.join("desktops"),
            first_slot: 300,
            lease_file: None,
            base_image: None,
            devices: Vec::new(),
            kept_dir: None,
            zygote: false,
            fail_at_step: None,
            session_exe: Some(session_exe.to_owned()),
            etc_binds: vec![PathBuf::from("/etc/fonts")],
        })?;
    Ok(runtime.with_gpu(service.clone(), 64 << 20))
}

/// The compositor's answer to `{"op":"windows"}` in desktop dir `dir`.
fn windows(dir: &Path) -> anyhow::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(dir.join("gpu/control.sock"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"{\"op\":\"windows\"}\n")?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    Ok(line)
}

#[test]
fn a_session_is_running_only_once_it_can_be_used() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    let data = tempfile::tempdir()?;
    std::fs::set_permissions(data.path(), std::fs::Permissions::from_mode(0o711))?;
    // The session binary where the sandboxes' uids can read it.
    let bin = data.path().join("bin");
    std::fs::create_dir(&bin)?;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o711))?;
    let session_exe = bin.join("flotilla");
    std::fs::copy(flotilla_bin(), &session_exe)?;
    std::fs::set_permissions(&session_exe, std::fs::Permissions::from_mode(0o755))?;
    let gpus = flotilla_gpu::enumerate().unwrap_or_default();
    let service = Arc::new(GpuService::open(&gpus, 640, 480));

    // A session that never serves: it stays `starting`.
    let mut silent = session_runtime(
        "ready-silent",
        data.path(),
        &session_exe,
        &["sh", "-c", "exec sleep 60", "sh"],
        &service,
    )?;
    silent
        .start(&desktop("dt-silent"))
        .map_err(anyhow::Error::msg)?;
    for _ in 0..100 {
        let observed = silent.poll();
        let phase = observed
            .iter()
            .find(|o| o.desktop_id == "dt-silent")
            .map(|o| o.phase.as_str());
        assert_eq!(phase, Some("starting"), "{observed:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    silent.stop("dt-silent");
    wait_phase(&mut silent, "dt-silent", "stopped");

    // A real session: the moment it is `running`, gpud has its frame and
    // its compositor answers.
    let mut real = session_runtime(
        "ready-real",
        data.path(),
        &session_exe,
        &[flotilla_node_agent::sandbox::SESSION_EXE, "desktop-session"],
        &service,
    )?;
    real.start(&desktop("dt-real"))
        .map_err(anyhow::Error::msg)?;
    let first = real.poll();
    assert!(
        first
            .iter()
            .any(|o| o.desktop_id == "dt-real" && o.phase.as_str() == "starting"),
        "a session starts as `starting`: {first:?}"
    );
    wait_phase(&mut real, "dt-real", "running");
    assert!(
        service
            .wait_for_frame("dt-real", None, Duration::ZERO)
            .is_some(),
        "running without a frame"
    );
    let answer = windows(&data.path().join("desktops/dt-real-1"))?;
    assert!(answer.starts_with("{\"ok\":true"), "{answer}");
    real.stop("dt-real");
    wait_phase(&mut real, "dt-real", "stopped");
    Ok(())
}
