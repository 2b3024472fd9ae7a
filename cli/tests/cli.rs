//! The `flotilla` binary as a person uses it: argument errors, and the dev
//! quick start (`flotilla dev`, then client commands with no token typed).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const FLOTILLA: &str = env!("CARGO_BIN_EXE_flotilla");

fn flotilla(home: &std::path::Path) -> Command {
    let mut command = Command::new(FLOTILLA);
    command
        .env("HOME", home)
        // As root the dev directory is not under HOME: keep tests apart.
        .env("FLOTILLA_DEV_DIR", home.join("dev"))
        .env_remove("XDG_DATA_HOME")
        .env_remove("FLOTILLA_TOKEN")
        .env_remove("FLOTILLA_ADDR");
    command
}

#[test]
fn bad_arguments_get_clear_errors() {
    let home = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str); 6] = [
        (
            &["task", "move", "x", "--to", "doing", "--token", "t"],
            "unknown column \"doing\"",
        ),
        (
            &["server", "--data-dir", "/tmp/x", "--listen", "127.0.0.1:1"],
            "--node-id",
        ),
        (
            &[
                "server",
                "--node-id",
                "1",
                "--data-dir",
                "/tmp/x",
                "--listen",
                "nowhere",
            ],
            "invalid socket address",
        ),
        (
            &[
                "server",
                "--node-id",
                "1",
                "--data-dir",
                "/tmp/x",
                "--listen",
                "127.0.0.1:1",
                "--join",
                "h:1",
            ],
            "--token-file",
        ),
        (
            &["task", "list", "--output", "yaml", "--token", "t"],
            "possible values: table, json",
        ),
        (
            &["task", "list"],
            "no token: pass --token or set FLOTILLA_TOKEN",
        ),
    ];
    for (args, expected) in cases {
        let output = flotilla(home.path())
            .args(args)
            .output()
            .expect("run flotilla");
        assert!(!output.status.success(), "{args:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let output = flotilla(home.path())
        .args([
            "task",
            "list",
            "--token",
            "t",
            "--addr",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .expect("run flotilla");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("reach the server"));
}

#[test]
fn dev_quick_start_needs_no_token_typed() {
    // What dev sets up on the host for desktops (as root) it removes again.
    let host_setup = || {
        (
            std::path::Path::new("/sys/class/net/flotilla0").exists(),
            Command::new("nft")
                .args(["list", "table", "inet", "flotilla"])
                .output()
                .is_ok_and(|output| output.status.success()),
        )
    };
    let before = host_setup();
    // A fresh home of mode 0700, as every home on Debian 12 (and `/root`).
    let home = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod the home");
    // As root the README's command keeps its data in /var/lib/flotilla/dev;
    // a machine that already has one gets a directory of the test's own
    // beside it (same ancestors), and what the test made goes at the end.
    let root = is_root();
    let default_dev = std::path::PathBuf::from("/var/lib/flotilla/dev");
    let dev_env = (root && default_dev.exists())
        .then(|| format!("/var/lib/flotilla/test-dev-{}", std::process::id()));
    let made = match &dev_env {
        Some(dir) => Some(std::path::PathBuf::from(dir)),
        None if root => Some(default_dev),
        None => None,
    };
    let flotilla = |home: &std::path::Path| {
        let mut command = flotilla(home);
        // The README's command: the default directory unless it is taken.
        match &dev_env {
            Some(dir) => command.env("FLOTILLA_DEV_DIR", dir),
            None => command.env_remove("FLOTILLA_DEV_DIR"),
        };
        command
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let addr = format!("127.0.0.1:{port}");
    // Its own free port for the desktop door: port + 1 may be another
    // test's.
    let door = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .to_string();
    let mut dev = flotilla(home.path())
        .args(["dev", "--listen", &addr, "--desktop-listen", &door])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start flotilla dev");
    let stdout = dev.stdout.take().expect("piped stdout");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut running = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            running |= line.contains("Flotilla is running");
            // The announcement ends with the board's sign-in link.
            if let Some((_, link)) = line.split_once("board:") {
                if running {
                    let _ = ready_tx.send(link.trim().to_owned());
                }
            }
        }
    });
    let ready = ready_rx.recv_timeout(Duration::from_secs(60));
    let run = |args: &[&str]| {
        let output = flotilla(home.path())
            .args(args)
            .args(["--addr", &addr, "--output", "json"])
            .output()
            .expect("run flotilla");
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).expect("JSON output")
    };
    let outcome = std::panic::catch_unwind(|| {
        let board = ready.expect("flotilla dev announces itself and the board");
        // The printed sign-in link carries a code the server redeems once.
        let code = board
            .split_once("#login=")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no sign-in code in the board line: {board}"));
        assert_eq!(sign_in(&addr, code), 204, "the printed code signs in");
        assert_eq!(sign_in(&addr, code), 401, "a code signs in once");
        let task = run(&["task", "create", "--title", "first card"]);
        let id = task["id"].as_str().expect("id").to_owned();
        assert_eq!(task["column"], "backlog");
        let moved = run(&["task", "move", &id, "--to", "planning"]);
        assert_eq!(moved["column"], "planning");
        let shown = run(&["task", "show", &id]);
        assert_eq!(shown["title"], "first card");
        let list = run(&["task", "list"]);
        assert_eq!(list.as_array().map(Vec::len), Some(1));
        // Planning gives the task a desktop on the dev node agent.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let desktops = run(&["desktop", "list"]);
            let running = desktops.as_array().is_some_and(|list| {
                list.len() == 1 && list[0]["state"] == "running" && list[0]["task"] == id.as_str()
            });
            if running {
                break;
            }
            assert!(Instant::now() < deadline, "no running desktop: {desktops}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let shown = run(&["task", "show", &id]);
        assert_eq!(shown["desktop"]["state"], "running");
        let desktop = run(&["desktop", "list"])[0]["id"]
            .as_str()
            .expect("desktop id")
            .to_owned();
        // `running` means usable at once: its compositor takes requests
        // and its screen can be taken, without a retry.
        let at_once = |args: &[&str]| {
            let output = flotilla(home.path())
                .args(args)
                .args(["--addr", &addr])
                .output()
                .expect("run flotilla");
            assert!(
                output.status.success(),
                "{args:?} right after `running`: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
        at_once(&["desktop", "input", &desktop, "--windows"]);
        let first = home.path().join("first.png");
        at_once(&[
            "desktop",
            "screenshot",
            &desktop,
            "-o",
            &first.to_string_lossy(),
        ]);
        // Usable, not only `running`: the terminal (foot) is on its screen,
        // takes typing as the README shows, and the screen can be taken.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = flotilla(home.path())
                .args(["desktop", "input", &desktop, "--windows"])
                .args(["--addr", &addr, "--output", "json"])
                .output()
                .expect("run flotilla");
            let windows: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or_default();
            let foot = windows["windows"]
                .as_array()
                .is_some_and(|list| list.iter().any(|w| w["app_id"] == "foot"));
            if foot {
                break;
            }
            let desktops = run(&["desktop", "list"]);
            assert!(
                Instant::now() < deadline,
                "no foot window on {desktop}: {windows} {} / {desktops}",
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let typed = flotilla(home.path())
            .args(["desktop", "input", &desktop, "--text", "ls -l\\n"])
            .args(["--addr", &addr])
            .output()
            .expect("run flotilla");
        assert!(
            typed.status.success(),
            "typing: {}",
            String::from_utf8_lossy(&typed.stderr)
        );
        let png = home.path().join("screen.png");
        let shot = flotilla(home.path())
            .args(["desktop", "screenshot", &desktop, "-o"])
            .arg(&png)
            .args(["--addr", &addr])
            .output()
            .expect("run flotilla");
        assert!(
            shot.status.success(),
            "screenshot: {}",
            String::from_utf8_lossy(&shot.stderr)
        );
        let bytes = std::fs::read(&png).expect("the screenshot file");
        assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let nodes = run(&["node", "list"]);
        assert_eq!(nodes[0]["status"], "ready", "{nodes}");
        assert_eq!(nodes[0]["desktops"]["allocated"], 1, "{nodes}");
        let status = run(&["cluster", "status"]);
        assert_eq!(status["leader"], 1);
        assert_eq!(status["members"][0]["role"], "voter");
    });
    // SIGTERM stops it cleanly.
    let pid = libc::pid_t::try_from(dev.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) takes plain integers; `dev` is our unreaped child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = dev.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = dev.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(dir) = &made {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    let exit = exit.expect("flotilla dev stops within 20s of SIGTERM");
    assert!(exit.success(), "flotilla dev exit: {exit}");
    assert_eq!(
        host_setup(),
        before,
        "desktop bridge and nft table left behind"
    );
}

/// `POST /api/v1/session {"code": CODE}` over plain HTTP/1.1; the status.
fn sign_in(addr: &str, code: &str) -> u16 {
    use std::io::{Read, Write};
    let body = serde_json::json!({ "code": code }).to_string();
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the API");
    write!(
        stream,
        "POST /api/v1/session HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer}"))
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn a_data_dir_sandboxes_cannot_enter_is_refused_at_start_making_nothing() {
    if !is_root() {
        println!("skip: root sandboxes (and this check) need root");
        return;
    }
    let private = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700))
        .expect("chmod");
    let data_dir = private.path().join("flotilla");
    let output = flotilla(private.path())
        .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run flotilla dev");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "dev started: {stderr}");
    assert!(
        stderr.contains(&*private.path().to_string_lossy())
            && stderr.contains("chmod o+x")
            && stderr.contains("--data-dir"),
        "the error names the directory and the fixes: {stderr}"
    );
    assert!(!data_dir.exists(), "nothing is created");
}

#[test]
fn a_node_agent_refuses_host_wide_devices_and_bad_egress_ranges() {
    let home = tempfile::tempdir().expect("tempdir");
    let token = home.path().join("node-join.token");
    std::fs::write(&token, "t\n").expect("write the token");
    let token = token.to_string_lossy().into_owned();
    let data = home.path().join("data").to_string_lossy().into_owned();
    let base = [
        "node-agent",
        "--join",
        "127.0.0.1:1",
        "--token-file",
        &token,
        "--name",
        "n",
        "--data-dir",
        &data,
    ];
    let mut cases: Vec<(Vec<&str>, &str)> = vec![(
        vec!["--egress-allow", "10.0.0.0/33"],
        "invalid value '10.0.0.0/33' for '--egress-allow",
    )];
    if std::path::Path::new("/dev/kmsg").exists() {
        cases.push((
            vec!["--desktop-device", "/dev/kmsg"],
            "reaches the whole host (the kernel log)",
        ));
    }
    for (extra, expected) in cases {
        let output = flotilla(home.path())
            .args(base)
            .args(&extra)
            .output()
            .expect("run flotilla");
        assert!(!output.status.success(), "{extra:?} must fail");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{extra:?}: expected {expected:?} in {stderr}"
        );
    }
}
