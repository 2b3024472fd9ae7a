//! A desktop as the product runs it, as root (CI runs it): a real server
//! and a real node agent with `--desktop-session`. A task moved to
//! planning gets a sandbox whose session starts the compositor (on the
//! agent's gpud, lavapipe here), foot and chromium, tiled side by side;
//! `flotilla desktop screenshot` shows both windows, `flotilla desktop
//! input --text` types into foot's shell (checked with `desktop exec`),
//! and done tears it all down.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use flotilla_tests::{flotilla_bin, netns, AgentProcess, ServerFlags, TestCluster};
use serde_json::{json, Value};

fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// RGB of pixel (x, y) of a PNG.
fn pixel(png: &[u8], x: u32, y: u32) -> Option<[u8; 3]> {
    let decoder = png::Decoder::new(std::io::Cursor::new(png));
    let mut reader = decoder.read_info().ok()?;
    let mut pixels = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut pixels).ok()?;
    if x >= info.width || y >= info.height || info.color_type != png::ColorType::Rgb {
        return None;
    }
    let at = ((y * info.width + x) * 3) as usize;
    Some([pixels[at], pixels[at + 1], pixels[at + 2]])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_planned_task_shows_a_terminal_that_takes_typing() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    if !have("foot")
        || !have("chromium")
        || flotilla_gpu::enumerate().map_or(true, |gpus| gpus.is_empty())
    {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
            "foot, chromium and a Vulkan device are needed \
             (apt-get install foot chromium mesa-vulkan-drivers)"
        );
        return Ok(());
    }
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let data = cluster.root.path().join("agent");
    let log = cluster.root.path().join("agent.log");
    let agent = AgentProcess::start_with_sessions(
        &cluster,
        "session-node",
        &data,
        &log,
        "640x480",
        &[
            "foot",
            // The browser shows a page of one known colour (#12ab34).
            "chromium --ozone-platform=wayland --no-sandbox --test-type --no-first-run \
             --app=data:text/html,<body%20style=background:%2312ab34>",
        ],
    )?;
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let cli = |args: &[&str]| -> Output {
        Command::new(flotilla_bin())
            .args(args)
            .env("FLOTILLA_ADDR", &addr)
            .env("FLOTILLA_TOKEN", &cluster.token)
            .stdin(Stdio::null())
            .output()
            .expect("run flotilla")
    };
    let created = cli(&[
        "task", "create", "--title", "session", "--column", "planning", "--output", "json",
    ]);
    assert!(created.status.success(), "{created:?}");
    let task: Value = serde_json::from_slice(&created.stdout)?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();

    // The desktop runs and shows foot's window on the left half and the
    // browser's page on the right.
    let shot: PathBuf = cluster.root.path().join("screen.png");
    let started = Instant::now();
    let mut desktop_id = String::new();
    let mut last = String::new();
    loop {
        if desktop_id.is_empty() {
            let shown = cli(&["task", "show", &task_id, "--output", "json"]);
            let task: Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
            if task["desktop"]["state"] == "running" {
                desktop_id = task["desktop"]["id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
        } else {
            let output = cli(&[
                "desktop",
                "screenshot",
                &desktop_id,
                "-o",
                shot.to_str().unwrap(),
            ]);
            if output.status.success() {
                let png = std::fs::read(&shot)?;
                // foot's background fills the left half: its centre and
                // corner are one colour, not the compositor's; the page's
                // colour fills the right half.
                let found = pixel(&png, 160, 240);
                let background = flotilla_compositor::gpu_output::BACKGROUND_BGRX;
                let compositor = [background[2], background[1], background[0]];
                let browser = pixel(&png, 480, 400);
                if found.is_some_and(|centre| centre != compositor)
                    && found == pixel(&png, 1, 470)
                    && found == pixel(&png, 318, 478)
                    && browser == Some([0x12, 0xab, 0x34])
                    && pixel(&png, 638, 478) == browser
                {
                    break;
                }
                last = format!(
                    "foot's half is {found:?}, corners {:?} {:?}; the browser's {browser:?}",
                    pixel(&png, 1, 470),
                    pixel(&png, 318, 478),
                );
            } else {
                last = String::from_utf8_lossy(&output.stderr).into_owned();
            }
        }
        if started.elapsed() > Duration::from_secs(90) {
            let logs = cli(&["desktop", "logs", &desktop_id]);
            panic!(
                "no foot and browser windows in 90 s (desktop {desktop_id:?}): {last}\ndesktop log:\n{}\nagent:\n{}",
                String::from_utf8_lossy(&logs.stdout),
                agent_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "foot's and the browser's windows shown {:?} after the task was created",
        started.elapsed()
    );

    // foot, the first window, keeps the keyboard after the browser opened
    // and drew (no focus stealing); `--window` moves it.
    let list_windows = || -> anyhow::Result<Value> {
        let answer = cli(&[
            "desktop",
            "input",
            &desktop_id,
            "--windows",
            "--output",
            "json",
        ]);
        Ok(serde_json::from_slice(&answer.stdout)?)
    };
    let windows = list_windows()?;
    let list = windows["windows"].as_array().cloned().unwrap_or_default();
    let foot = list
        .iter()
        .find(|w| w["app_id"] == "foot")
        .unwrap_or_else(|| panic!("no foot window: {windows}"));
    assert_eq!(
        (foot["x"].as_i64(), foot["width"].as_i64()),
        (Some(0), Some(320))
    );
    assert!(
        // Chromium's app windows are "chrome-<page>-<profile>".
        list.iter().any(|w| w["app_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chrom"))
            && w["x"] == 320),
        "{windows}"
    );
    assert_eq!(foot["focused"], true, "foot has the keyboard: {windows}");
    let browser = cli(&[
        "desktop",
        "input",
        &desktop_id,
        "--window",
        "chrom",
        "--key",
        "F6",
    ]);
    assert!(browser.status.success(), "{browser:?}");
    let windows = list_windows()?;
    assert!(
        windows["windows"].as_array().is_some_and(|list| list
            .iter()
            .any(|w| w["focused"] == true && w["app_id"] != "foot")),
        "--window chrom gave the browser the keyboard: {windows}"
    );
    let typed = cli(&[
        "desktop",
        "input",
        &desktop_id,
        "--window",
        "foot",
        "--text",
        r"printf 'typed:%s' $((6*7)) > /tmp/typed\n",
    ]);
    assert!(typed.status.success(), "{typed:?}");
    let started = Instant::now();
    loop {
        let read = cli(&["desktop", "exec", &desktop_id, "--", "cat", "/tmp/typed"]);
        if String::from_utf8_lossy(&read.stdout) == "typed:42" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the typed command never ran: {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Input the keymap cannot type, and unknown keys: clear errors.
    let refused = cli(&["desktop", "input", &desktop_id, "--text", "caf\u{e9}"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot type"),
        "{refused:?}"
    );
    let refused = cli(&["desktop", "input", &desktop_id, "--key", "NoSuchKey"]);
    assert!(!refused.status.success(), "{refused:?}");
    let response = cluster
        .http
        .post(format!("http://{addr}/api/v1/desktops/{desktop_id}/input"))
        .bearer_auth(&cluster.token)
        .json(&json!({"no_op": 1}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);

    // Done: the desktop goes, and with it its frames.
    let moved = cli(&["task", "move", &task_id, "--to", "done"]);
    assert!(moved.status.success(), "{moved:?}");
    let started = Instant::now();
    loop {
        let output = cli(&[
            "desktop",
            "screenshot",
            &desktop_id,
            "-o",
            shot.to_str().unwrap(),
        ]);
        if !output.status.success() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "still showing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = Instant::now();
    while std::fs::read_dir(data.join("desktops"))?.next().is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the desktop's directory stayed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A task's own profile: only foot, and a French keyboard, which types
    // what the node's (us) keymap refused above.
    let created = cli(&[
        "task",
        "create",
        "--title",
        "profiled",
        "--column",
        "planning",
        "--app",
        "foot",
        "--keyboard-layout",
        "fr",
        "--output",
        "json",
    ]);
    assert!(created.status.success(), "{created:?}");
    let task: Value = serde_json::from_slice(&created.stdout)?;
    assert_eq!(
        task["resources"]["profile"]["keyboard_layout"], "fr",
        "{task}"
    );
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let started = Instant::now();
    let desktop_id = loop {
        let shown = cli(&["task", "show", &task_id, "--output", "json"]);
        let task: Value = serde_json::from_slice(&shown.stdout).unwrap_or_default();
        if task["desktop"]["state"] == "running" {
            break task["desktop"]["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the profiled desktop never ran\n{}",
            agent_log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let processes = cli(&[
        "desktop",
        "exec",
        &desktop_id,
        "--",
        "sh",
        "-c",
        r"for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline; echo; done",
    ]);
    let processes = String::from_utf8_lossy(&processes.stdout);
    assert!(
        processes.contains("desktop-session --app foot --keyboard-layout fr"),
        "{processes}"
    );
    assert!(!processes.contains("chromium"), "{processes}");
    let started = Instant::now();
    loop {
        let typed = cli(&[
            "desktop",
            "input",
            &desktop_id,
            "--text",
            "printf 'caf\u{e9}' > /tmp/fr\n",
        ]);
        let read = cli(&["desktop", "exec", &desktop_id, "--", "cat", "/tmp/fr"]);
        if typed.status.success() && String::from_utf8_lossy(&read.stdout) == "caf\u{e9}" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "typing on the French keyboard failed: {typed:?} {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A profile the server cannot start is refused up front.
    let refused = cli(&[
        "task",
        "create",
        "--title",
        "bad",
        "--keyboard-layout",
        "fr;rm",
    ]);
    assert!(!refused.status.success(), "{refused:?}");
    let response = cluster
        .http
        .post(format!("http://{addr}/api/v1/tasks"))
        .bearer_auth(&cluster.token)
        .json(&json!({"title": "bad", "profile": {"apps": vec!["x"; 9]}}))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    let moved = cli(&["task", "move", &task_id, "--to", "done"]);
    assert!(moved.status.success(), "{moved:?}");
    drop(agent);
    Ok(())
}
