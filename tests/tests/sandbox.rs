//! The desktop sandbox, from inside (as youki's runtimetest does) and from
//! outside: namespaces, root filesystem, privileges, isolation between two
//! sandboxes, and nothing left behind after many create/destroy cycles,
//! including ones that fail during setup. Needs root; skips with a message
//! otherwise unless FLOTILLA_REQUIRE_NETNS is set (CI sets it).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_node_agent::runtime::{DesktopRuntime, DesktopSpec, ProcessRuntime, SandboxSettings};
use flotilla_node_agent::sandbox::net::NetworkSettings;
use flotilla_node_agent::sandbox::{SandboxSpec, UIDS_PER_DESKTOP};
use flotilla_tests::{flotilla_bin, netns, wait_phase};

fn root_available() -> anyhow::Result<bool> {
    netns::available()
}

fn spec_in(dir: &Path, slot: u32, command: &str) -> SandboxSpec {
    let uid_base = SandboxSpec::uid_base_for(slot);
    flotilla_node_agent::sandbox::make_desktop_dirs(dir, uid_base).unwrap();
    SandboxSpec {
        hostname: "dt-test".to_owned(),
        uid_base,
        uid_count: UIDS_PER_DESKTOP,
        desktop_uid: 1000,
        user: "desktop".to_owned(),
        staging_dir: dir.join("root"),
        home_dir: dir.join("home"),
        workspace_dir: dir.join("workspace"),
        resolv_conf: "nameserver 127.0.0.53\n".to_owned(),
        command: vec!["sh".to_owned(), "-c".to_owned(), command.to_owned()],
        env: BTreeMap::new(),
        netns_fd: None,
        lease_file: None,
        stop_grace_ms: 0,
        usr_links: Vec::new(),
        base_image: None,
        devices: Vec::new(),
        gpu_dir: None,
        session_exe: None,
        etc_binds: Vec::new(),
        gitconfig: None,
        fail_at_step: None,
    }
}

fn run_sandbox(dir: &Path, spec: &SandboxSpec) -> (i32, String, String) {
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_vec(spec).unwrap()).unwrap();
    let output = Command::new(flotilla_bin())
        .arg("sandbox-init")
        .arg(&path)
        .output()
        .expect("run sandbox-init");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A world-traversable temporary directory (sandboxes run as unprivileged
/// host uids and must reach their own directories).
fn traversable_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

#[test]
fn from_inside_the_sandbox_is_what_was_designed() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    let dir = traversable_tempdir();
    let checks = r#"
echo "pid1=$(cat /proc/1/comm)"
echo "self=$$"
echo "pids=$(ls /proc | grep -c '^[0-9]')"
echo "hostname=$(hostname)"
echo "uid=$(id -u) gid=$(id -g)"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ')"
touch /usr/flotilla-test 2>/dev/null && echo "usr=writable" || echo "usr=read-only"
touch /etc/flotilla-test 2>/dev/null && echo "etc=writable" || echo "etc=read-only"
echo "dev=$(ls /dev | tr '\n' ' ')"
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "seccomp=$(grep '^Seccomp:' /proc/self/status | cut -f2)"
perl -e '$r = syscall(250, 0, -3, 0); print "keyctl=", ($r < 0 ? "$!" : "allowed"), "\n"'
echo "net=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
echo "home=$HOME"
echo hello > "$HOME/file" && echo "home=writable"
echo hello > /workspace/file && echo "workspace=writable"
echo "workspace_mount=$(grep ' /workspace ' /proc/self/mountinfo | cut -d' ' -f6)"
echo "home_mount=$(grep " $HOME " /proc/self/mountinfo | cut -d' ' -f6)"
echo "timer_list=$(wc -c < /proc/timer_list)"
echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo "proc_sys=writable" || echo "proc_sys=read-only"
echo "proc_sys_mount=$(grep ' /proc/sys ' /proc/self/mountinfo | cut -d' ' -f6)"
echo "tmp=$(stat -f -c %T /tmp)"
echo "host_root=$(ls /root 2>/dev/null | wc -l)"
unshare -U true 2>/dev/null && echo "userns=made" || echo "userns=refused"
unshare -rm true 2>/dev/null && echo "userns_mount=made" || echo "userns_mount=refused"
perl -e '$r = syscall(425, 0, 0, 0); print "io_uring=", ($r < 0 ? "$!" : "allowed"), "\n"'
perl -e '$r = syscall(435, 0, 0); print "clone3=", ($r < 0 ? "$!" : "allowed"), "\n"'
perl -e '$r = syscall(308, -1, 0); print "setns=", ($r < 0 ? "$!" : "allowed"), "\n"'
python3 -c 'import threading; t = threading.Thread(target=print, args=("threads=work",)); t.start(); t.join()'
sh -c 'echo forked=work'
"#;
    let spec = spec_in(dir.path(), 4000, checks);
    let (status, stdout, stderr) = run_sandbox(dir.path(), &spec);
    assert_eq!(status, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let facts: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let fact = |key: &str| facts.get(key).copied().unwrap_or("<missing>").trim();
    assert_eq!(fact("pid1"), "flotilla", "PID 1 is our init\n{stdout}");
    assert_eq!(fact("self"), "2", "the command is PID 1's child\n{stdout}");
    let pids: u32 = fact("pids").parse()?;
    assert!(
        pids <= 6,
        "host processes are invisible, saw {pids}\n{stdout}"
    );
    assert_eq!(fact("hostname"), "dt-test");
    assert_eq!(fact("uid"), "1000 gid=1000");
    assert_eq!(
        fact("uid_map"),
        format!("0 {} {}", spec.uid_base, UIDS_PER_DESKTOP)
    );
    assert_eq!(fact("usr"), "read-only");
    assert_eq!(fact("etc"), "read-only");
    // The host kernel's own /proc files are masked, its tunables read-only.
    if std::path::Path::new("/proc/timer_list").exists() {
        assert_eq!(fact("timer_list"), "0", "{stdout}");
    }
    assert_eq!(fact("proc_sys"), "read-only", "{stdout}");
    assert!(fact("proc_sys_mount").starts_with("ro,"), "{stdout}");
    // Writable data honours no set-uid bit and no device node.
    for mount in ["workspace_mount", "home_mount"] {
        let options: Vec<&str> = fact(mount).split(',').collect();
        assert!(
            options.contains(&"nosuid") && options.contains(&"nodev") && options.contains(&"rw"),
            "{mount}: {options:?}\n{stdout}"
        );
    }
    assert_eq!(
        fact("dev"),
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero"
    );
    assert_eq!(fact("caps"), "0000000000000000");
    assert_eq!(fact("nnp"), "1");
    assert_eq!(fact("seccomp"), "2");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(
            fact("keyctl"),
            "Operation not permitted",
            "seccomp denies keyctl"
        );
    }
    assert_eq!(fact("net"), "lo", "only loopback in its network namespace");
    assert_eq!(fact("home"), "writable");
    assert_eq!(fact("workspace"), "writable");
    assert_eq!(fact("tmp"), "tmpfs");
    assert_eq!(fact("host_root"), "0", "the host's /root is not visible");
    // No nested namespaces (CAP_SYS_ADMIN over them is the usual road to a
    // kernel exploit), no io_uring or setns; threads and fork still work
    // (glibc falls back from clone3's ENOSYS to clone).
    assert_eq!(fact("userns"), "refused", "{stdout}");
    assert_eq!(fact("userns_mount"), "refused", "{stdout}");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(fact("io_uring"), "Operation not permitted", "{stdout}");
        assert_eq!(fact("clone3"), "Function not implemented", "{stdout}");
        assert_eq!(fact("setns"), "Operation not permitted", "{stdout}");
    }
    assert_eq!(fact("threads"), "work", "{stdout}\n{stderr}");
    assert_eq!(fact("forked"), "work", "{stdout}");
    // What it wrote is on the host's disk, owned by its unprivileged uid.
    let meta = std::fs::metadata(dir.path().join("workspace/file"))?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.uid(), spec.uid_base + 1000);
    Ok(())
}

#[test]
fn a_setup_failure_names_its_step_and_leaves_nothing() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    let dir = traversable_tempdir();
    let mut spec = spec_in(dir.path(), 4001, "true");
    spec.workspace_dir = dir.path().join("missing");
    let (status, _, stderr) = run_sandbox(dir.path(), &spec);
    assert_eq!(status, 125, "{stderr}");
    assert!(stderr.contains("sandbox: mount"), "{stderr}");
    let mut spec = spec_in(dir.path(), 4001, "true");
    spec.command = vec!["/nonexistent/init".to_owned()];
    let (status, _, stderr) = run_sandbox(dir.path(), &spec);
    assert_eq!(status, 125, "{stderr}");
    assert!(stderr.contains("exec"), "{stderr}");
    assert!(flotilla_tests::sandbox_processes(4001..4002).is_empty());
    Ok(())
}

/// Removes a test's bridge and nft table when dropped.
struct RemoveHostSetup(NetworkSettings);

impl Drop for RemoveHostSetup {
    fn drop(&mut self) {
        let _ = flotilla_node_agent::sandbox::net::Network::remove_host_setup(&self.0);
    }
}

fn desktop(id: &str, generation: u64) -> DesktopSpec {
    flotilla_tests::desktop_spec(id, generation)
}

#[test]
fn sandboxes_are_isolated_and_two_hundred_cycles_leave_nothing() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    let data = traversable_tempdir();
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .count();
    // Each sandbox records what it can see, then waits to be stopped.
    let script = "echo \"$(hostname)|$(ls /proc | grep -c '^[0-9]')|$(ls /workspace | tr '\\n' ,)|$(ls / | tr '\\n' ,)\" > /workspace/seen; echo mine > /workspace/$(hostname); exec sleep 1000";
    let command = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    // Setup steps in a sandbox with a prepared network (no loopback step),
    // /proc masked as far as this kernel has what is masked.
    static STEPS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let steps = *STEPS.get_or_init(|| 58 + flotilla_node_agent::sandbox::init::proc_mask_calls());
    /// Cycles 0, 2, 4, ... fail at setup step 0, 1, 2, ... until every
    /// step has failed once.
    fn fail_at(spec: &DesktopSpec) -> Option<usize> {
        let steps = *STEPS.get()?;
        let cycle = spec.generation.checked_sub(1_000)? as usize;
        (cycle.is_multiple_of(2) && cycle / 2 < steps).then_some(cycle / 2)
    }
    let network = NetworkSettings {
        bridge: format!("fk{}", std::process::id() % 10_000),
        veth_prefix: format!("k{}", std::process::id() % 10_000),
        nft_table: format!("flotilla_leak_{}", std::process::id()),
        subnet: std::net::Ipv4Addr::new(10, 160 + (std::process::id() % 40) as u8, 0, 0),
        control_plane: Vec::new(),
        pool_size: 2,
        ..Default::default()
    };
    let _cleanup = RemoveHostSetup(network.clone());
    let scope = flotilla_node_agent::sandbox::cgroup::detect_host()
        .ok()
        .map(|hierarchy| {
            hierarchy
                .scope(&format!("sandbox-leak-{}", std::process::id()))
                .unwrap()
        });
    let runtime = ProcessRuntime::new("sbx", data.path(), command, Duration::from_secs(2))?
        .with_sandbox(SandboxSettings {
            exe: flotilla_bin(),
            desktops_dir: data.path().join("desktops"),
            first_slot: 0,
            lease_file: None,
            base_image: None,
            devices: Vec::new(),
            kept_dir: None,
            zygote: true,
            fail_at_step: Some(fail_at),
            session_exe: None,
            etc_binds: Vec::new(),
        })?;
    let mut runtime = match &scope {
        Some(scope) => runtime.with_cgroups(scope.clone(), 64),
        None => runtime,
    };
    runtime
        .add_network(network.clone())
        .map_err(anyhow::Error::msg)?;
    runtime
        .start(&desktop("dt-a", 1))
        .map_err(anyhow::Error::msg)?;
    runtime
        .start(&desktop("dt-b", 1))
        .map_err(anyhow::Error::msg)?;
    wait_phase(&mut runtime, "dt-a", "running");
    wait_phase(&mut runtime, "dt-b", "running");
    let seen = |id: &str| {
        let path = data.path().join(format!("desktops/{id}-1/workspace/seen"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if !text.is_empty() {
                    return text;
                }
            }
            assert!(Instant::now() < deadline, "{id} never wrote what it sees");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    for (id, other) in [("dt-a", "dt-b"), ("dt-b", "dt-a")] {
        let text = seen(id);
        let fields: Vec<&str> = text.trim().split('|').collect();
        assert_eq!(fields[0], id, "{text}");
        assert!(
            fields[1].parse::<u32>()? <= 5,
            "sees other processes: {text}"
        );
        assert!(!text.contains(other), "{id} sees {other}: {text}");
        assert!(!fields[3].contains("desktops"), "{text}");
    }
    runtime.stop("dt-a");
    runtime.stop("dt-b");
    wait_phase(&mut runtime, "dt-a", "stopped");
    wait_phase(&mut runtime, "dt-b", "stopped");
    runtime.forget("dt-a");
    runtime.forget("dt-b");

    // 200 create/destroy cycles: one made to fail at each setup step, and
    // every tenth of the others losing its workspace before setup.
    let mut failures = Vec::new();
    for cycle in 0..200u64 {
        let id = format!("dt-{cycle}");
        let generation = 1_000 + cycle;
        runtime
            .start(&desktop(&id, generation))
            .map_err(anyhow::Error::msg)?;
        if cycle % 10 == 5 {
            // Pull its workspace away before sandbox-init binds it.
            let dir = data
                .path()
                .join(format!("desktops/{id}-{generation}/workspace"));
            let _ = std::fs::remove_dir(&dir);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let observed = runtime.poll();
            let phase = observed
                .iter()
                .find(|o| o.desktop_id == id)
                .map(|o| o.phase.clone());
            // One made to fail is waited for until it has failed.
            // (Pulling the workspace away races with the bind: it may fail
            // or run.)
            let fails = fail_at(&desktop(&id, generation)).is_some();
            match phase {
                Some(phase) if phase.ended() => {
                    failures.push((cycle, format!("{phase:?}")));
                    break;
                }
                Some(phase) if phase.as_str() == "running" && !fails => break,
                _ => {}
            }
            assert!(Instant::now() < deadline, "{id} never settled");
            std::thread::sleep(Duration::from_millis(5));
        }
        runtime.stop(&id);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !runtime
            .poll()
            .iter()
            .any(|o| o.desktop_id == id && o.phase.ended())
        {
            assert!(Instant::now() < deadline, "{id} never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        runtime.forget(&id);
    }
    // Every injected failure was seen and named its step.
    for cycle in (5..200).step_by(10) {
        if let Some((_, reason)) = failures.iter().find(|(c, _)| *c == cycle) {
            assert!(
                reason.contains("sandbox: mount"),
                "cycle {cycle} (no workspace): {reason}"
            );
        }
    }
    for step in 0..steps {
        let cycle = (step * 2) as u64;
        let failure = failures.iter().find(|(c, _)| *c == cycle);
        assert!(
            failure.is_some_and(
                |(_, reason)| reason.contains(&format!("step {step}, failed on purpose"))
            ),
            "cycle {cycle} (step {step}): {failure:?}"
        );
    }
    drop(runtime);
    // This runtime hands out slots from 0.
    let left = flotilla_tests::sandbox_processes(0..100);
    let described: Vec<String> = left
        .iter()
        .map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let state = status
                .lines()
                .find(|l| l.starts_with("State:"))
                .unwrap_or("")
                .to_owned();
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ppid = status
                .lines()
                .find(|l| l.starts_with("PPid:"))
                .unwrap_or("")
                .to_owned();
            let uid = status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .unwrap_or("")
                .to_owned();
            format!("{pid} {state} {ppid} {uid} {}", cmdline.replace('\0', " "))
        })
        .collect();
    assert!(left.is_empty(), "sandbox processes left: {described:?}");
    let left: Vec<_> = std::fs::read_dir(data.path().join("desktops"))?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    assert!(left.is_empty(), "desktop directories left: {left:?}");
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .count();
    assert_eq!(
        mounts_before, mounts_after,
        "the host's mount table changed"
    );
    let veths: Vec<String> = std::fs::read_dir("/sys/class/net")?
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&network.veth_prefix))
        .collect();
    assert!(veths.is_empty(), "veths left: {veths:?}");
    if let Some(scope) = &scope {
        assert!(
            scope.existing().is_empty(),
            "cgroups left: {:?}",
            scope.existing()
        );
        scope.remove_if_empty();
    }
    drop(_cleanup);
    let table = Command::new("nft")
        .args(["list", "table", "inet", &network.nft_table])
        .output()?;
    assert!(!table.status.success(), "the nft table is left");
    Ok(())
}

#[test]
fn a_memory_hog_in_a_sandbox_is_oom_killed_and_reported() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    let hierarchy = match flotilla_node_agent::sandbox::cgroup::detect_host() {
        Ok(hierarchy) => hierarchy,
        Err(error) => anyhow::bail!("root but no cgroup controllers: {error}"),
    };
    let scope = hierarchy.scope(&format!("sandbox-oom-{}", std::process::id()))?;
    let data = traversable_tempdir();
    let command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        "x=aaaaaaaa; while true; do x=\"$x$x\"; done".to_owned(),
    ];
    let mut runtime = ProcessRuntime::new("oom", data.path(), command, Duration::from_secs(1))?
        .with_cgroups(scope.clone(), 64)
        .with_sandbox(SandboxSettings {
            exe: flotilla_bin(),
            desktops_dir: data.path().join("desktops"),
            first_slot: 200,
            lease_file: None,
            base_image: None,
            devices: Vec::new(),
            kept_dir: None,
            zygote: false,
            fail_at_step: None,
            session_exe: None,
            etc_binds: Vec::new(),
        })?;
    let mut spec = desktop("dt-hog", 1);
    spec.memory_bytes = 48 << 20;
    runtime.start(&spec).map_err(anyhow::Error::msg)?;
    wait_phase(&mut runtime, "dt-hog", "failed");
    let observed = runtime.poll();
    let reason = format!("{:?}", observed[0].phase);
    assert!(reason.contains("out of memory"), "{reason}");
    runtime.forget("dt-hog");
    drop(runtime);
    assert!(scope.existing().is_empty(), "its cgroup is gone");
    scope.remove_if_empty();
    Ok(())
}

/// A desktop that writes without end cannot fill the node's disk through
/// its log: past the cap the agent keeps the last quarter as `log.1` and
/// empties the log, which the desktop goes on appending to.
#[test]
fn a_desktop_log_is_capped() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    use flotilla_node_agent::runtime::MAX_LOG_BYTES;
    let data = traversable_tempdir();
    let script = format!(
        "head -c {} /dev/zero | tr '\\0' x; echo; until [ -e /workspace/go ]; do sleep 0.05; done; echo after; exec sleep 1000",
        MAX_LOG_BYTES + (4 << 20)
    );
    let command = vec!["sh".to_owned(), "-c".to_owned(), script];
    let mut runtime = ProcessRuntime::new("log", data.path(), command, Duration::from_secs(1))?
        .with_sandbox(SandboxSettings {
            exe: flotilla_bin(),
            desktops_dir: data.path().join("desktops"),
            first_slot: 220,
            lease_file: None,
            base_image: None,
            devices: Vec::new(),
            kept_dir: None,
            zygote: false,
            fail_at_step: None,
            session_exe: None,
            etc_binds: Vec::new(),
        })?;
    runtime
        .start(&desktop("dt-log", 1))
        .map_err(anyhow::Error::msg)?;
    let dir = data.path().join("desktops/dt-log-1");
    let log = dir.join("log");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        runtime.poll();
        let rotated = std::fs::metadata(dir.join("log.1")).map_or(0, |m| m.len());
        if rotated > 0 {
            assert_eq!(rotated, MAX_LOG_BYTES / 4);
            std::fs::write(dir.join("workspace/go"), "")?;
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("after") {
            // Written after the cap, at the log's start: no hole before it.
            assert!(
                (text.len() as u64) < MAX_LOG_BYTES && !text.contains('\0'),
                "{} bytes",
                text.len()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the log was never capped: {:?}, {:?}, log {} bytes",
            std::fs::read_dir(dir.join("workspace"))
                .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>()),
            runtime.poll(),
            std::fs::metadata(&log).map_or(0, |m| m.len())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime.stop("dt-log");
    wait_phase(&mut runtime, "dt-log", "stopped");
    Ok(())
}

/// Without root (a developer's laptop): the sandbox still builds its
/// namespaces and root, mapping only the caller's uid as the desktop user.
#[test]
fn without_root_the_sandbox_maps_only_the_callers_uid() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    const NOBODY: u32 = 65534;
    let dir = traversable_tempdir();
    // The binary where an unprivileged user can run it.
    let exe = dir.path().join("flotilla");
    std::fs::copy(flotilla_bin(), &exe)?;
    let desktop = dir.path().join("d");
    let mut spec = spec_in(&desktop, 0, "");
    for path in [
        &desktop,
        &spec.home_dir,
        &spec.workspace_dir,
        &spec.staging_dir,
    ] {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))?;
    }
    spec.hostname = "dt-rootless".to_owned();
    spec.command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        r#"
echo "uid=$(id -u)"
echo "uid_map=$(cat /proc/self/uid_map | tr -s ' ' | sed 's/^ //')"
echo "hostname=$(hostname)"
echo "pid1=$(cat /proc/1/comm)"
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "net=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\n' ' ')"
touch /usr/flotilla-test 2>/dev/null && echo "usr=writable" || echo "usr=read-only"
echo hello > /workspace/file && echo "workspace=writable"
"#
        .to_owned(),
    ];
    let spec_path = desktop.join("spec.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    // A thread of this test binary forking while the copy was open for
    // writing makes exec fail with ETXTBSY for a moment: retry that.
    let mut attempts = 0;
    let output = loop {
        let output = Command::new("setpriv")
            .args([
                &format!("--reuid={NOBODY}"),
                &format!("--regid={NOBODY}"),
                "--clear-groups",
            ])
            .arg(&exe)
            .arg("sandbox-init")
            .arg(&spec_path)
            .output()?;
        attempts += 1;
        if attempts < 20 && String::from_utf8_lossy(&output.stderr).contains("Text file busy") {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        break output;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let facts: BTreeMap<&str, &str> = stdout
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    assert_eq!(facts["uid"], "1000", "{stdout}");
    assert_eq!(facts["uid_map"], format!("1000 {NOBODY} 1"), "{stdout}");
    assert_eq!(facts["hostname"], "dt-rootless");
    assert_eq!(facts["pid1"], "flotilla");
    assert_eq!(facts["caps"], "0000000000000000");
    assert_eq!(facts["nnp"], "1");
    assert_eq!(facts["net"].trim(), "lo");
    assert_eq!(facts["usr"], "read-only");
    assert_eq!(facts["workspace"], "writable");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(spec.workspace_dir.join("file"))?.uid(),
        NOBODY,
        "files belong to the caller on the host"
    );
    Ok(())
}

/// A base image layered over /usr, a granted device, and a destroyed
/// desktop's files kept when the node asks for it.
#[test]
fn a_base_image_a_granted_device_and_kept_files() -> anyhow::Result<()> {
    if !root_available()? {
        return Ok(());
    }
    let data = traversable_tempdir();
    let image = data.path().join("image");
    std::fs::create_dir_all(image.join("usr/share/flotilla-test-image"))?;
    std::fs::write(
        image.join("usr/share/flotilla-test-image/marker"),
        "from the image\n",
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        for dir in [
            "image",
            "image/usr",
            "image/usr/share",
            "image/usr/share/flotilla-test-image",
        ] {
            std::fs::set_permissions(
                data.path().join(dir),
                std::fs::Permissions::from_mode(0o755),
            )?;
        }
    }
    let device = ["/dev/net/tun", "/dev/fuse", "/dev/loop-control"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|path| flotilla_node_agent::sandbox::validate_device(path).is_ok())
        .expect("this host has none of /dev/net/tun, /dev/fuse, /dev/loop-control");
    let script = "{ cat /usr/share/flotilla-test-image/marker; test -x /usr/bin/sh && echo host-usr; touch /usr/x 2>/dev/null || echo usr-read-only; find /dev -not -type l | sort | tr '\\n' ' '; echo; } > /workspace/seen.tmp; mv /workspace/seen.tmp /workspace/seen; echo mine > $HOME/file; exec sleep 1000";
    let command = vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()];
    let mut runtime = ProcessRuntime::new("img", data.path(), command, Duration::from_secs(2))?
        .with_sandbox(SandboxSettings {
            exe: flotilla_bin(),
            desktops_dir: data.path().join("desktops"),
            first_slot: 360,
            lease_file: None,
            base_image: Some(image.clone()),
            devices: vec![device.clone()],
            kept_dir: Some(data.path().join("kept")),
            zygote: false,
            fail_at_step: None,
            session_exe: None,
            etc_binds: Vec::new(),
        })?;
    runtime
        .start(&desktop("dt-img", 1))
        .map_err(anyhow::Error::msg)?;
    wait_phase(&mut runtime, "dt-img", "running");
    let seen_path = data.path().join("desktops/dt-img-1/workspace/seen");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !seen_path.exists() {
        let observed = runtime.poll();
        assert!(Instant::now() < deadline, "nothing seen: {observed:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = std::fs::read_to_string(&seen_path)?;
    let lines: Vec<&str> = seen.lines().collect();
    assert_eq!(lines[0], "from the image", "{seen}");
    assert_eq!(lines[1], "host-usr", "{seen}");
    assert_eq!(lines[2], "usr-read-only", "{seen}");
    let mut expected: Vec<String> = [
        "/dev",
        "/dev/full",
        "/dev/null",
        "/dev/pts",
        "/dev/pts/ptmx",
        "/dev/random",
        "/dev/shm",
        "/dev/tty",
        "/dev/urandom",
        "/dev/zero",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let granted = device.display().to_string();
    if let Some(parent) = device
        .parent()
        .filter(|p| *p != std::path::Path::new("/dev"))
    {
        expected.push(parent.display().to_string());
    }
    expected.push(granted);
    expected.sort();
    assert_eq!(lines[3].trim(), expected.join(" "), "{seen}");
    // The script writes its home file after `seen`: wait for it before
    // stopping the desktop (a loaded machine may not be there yet).
    let home_file = data.path().join("desktops/dt-img-1/home/file");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_to_string(&home_file).ok().as_deref() != Some("mine\n") {
        assert!(Instant::now() < deadline, "the home file never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    runtime.stop("dt-img");
    wait_phase(&mut runtime, "dt-img", "stopped");
    runtime.forget("dt-img");
    assert!(!data.path().join("desktops/dt-img-1").exists());
    let kept = data.path().join("kept/dt-img-1");
    assert_eq!(std::fs::read_to_string(kept.join("home/file"))?, "mine\n");
    assert!(kept.join("workspace/seen").exists());
    Ok(())
}
