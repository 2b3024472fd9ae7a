//! `flotilla desktop exec` and `desktop logs` end to end, as root (CI runs
//! it): three real servers, one real node agent running sandboxed
//! desktops, and the operator CLI talking to a follower (which forwards to
//! the leader, which reaches the agent through its tunnel). Also the bad
//! input these calls must refuse.

use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::{flotilla_bin, netns, AgentProcess, ServerFlags, TestCluster};
use serde_json::{json, Value};

fn cli(addr: &str, token: &str, args: &[&str]) -> std::process::Output {
    Command::new(flotilla_bin())
        .args(args)
        .env("FLOTILLA_ADDR", addr)
        .env("FLOTILLA_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("run flotilla")
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_and_logs_reach_a_desktop_through_any_server() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    let cluster = TestCluster::start(3, ServerFlags(vec![])).await?;
    let leader = cluster.leader().await?;
    let follower = cluster
        .servers
        .iter()
        .find(|server| server.node_id != leader)
        .expect("three servers")
        .addr
        .clone();
    let join: Vec<String> = cluster.servers.iter().map(|s| s.addr.clone()).collect();
    let data = cluster.root.path().join("agent");
    let log = cluster.root.path().join("agent.log");
    let id = std::process::id() % 10_000;
    let bridge = format!("fx{id}");
    let child = Command::new(flotilla_bin())
        .args(["node-agent", "--join", &join.join(","), "--token-file"])
        .arg(cluster.servers[0].data_dir.join("node-join.token"))
        .args(["--name", "exec-node", "--data-dir"])
        .arg(&data)
        .args(["--no-gpus", "--stop-grace", "1s", "--netns-pool", "1"])
        .args(["--desktop-bridge", &bridge])
        .args(["--desktop-subnet", &format!("10.{}.0.0/16", 200 + id % 50)])
        .args([
            "--desktop-command",
            "sh",
            "-c",
            "echo hello from $FLOTILLA_DESKTOP_ID; echo to stderr >&2; exec sleep 100000",
        ])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            cluster.root.path().join("agent.err"),
        )?)
        .spawn()?;
    let agent = AgentProcess { child, bridge };
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = format!("http://{follower}/api/v1");
    let http = &cluster.http;
    let token = &cluster.token;
    // A task in planning gets a desktop; wait until it runs.
    let task: Value = http
        .post(format!("{base}/tasks"))
        .bearer_auth(token)
        .json(&json!({"title": "exec", "column": "planning"}))
        .send()
        .await?
        .json()
        .await?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let desktop_id = flotilla_tests::wait_for_running_desktop(http, &base, token, &task_id)
        .await
        .map_err(|error| anyhow::anyhow!("{error}\n{}\n{}", agent_log(), cluster.logs()))?;

    // The agent's tunnel may still be opening (the CLI retries a 503 only
    // three times): try for up to ten seconds.
    let exec = [
        "desktop",
        "exec",
        &desktop_id,
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; hostname; id -u; cat /proc/1/comm; exit 3",
    ];
    let mut output = cli(&follower, token, &exec);
    for _ in 0..20 {
        if !String::from_utf8_lossy(&output.stderr).contains("not connected") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        output = cli(&follower, token, &exec);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}\n{}",
        agent_log()
    );
    assert_eq!(stdout, format!("out\n{desktop_id}\n1000\nflotilla\n"));
    assert_eq!(stderr, "err\n");

    // Success is exit status 0; a missing program is the sandbox's 127/125.
    let ok = cli(
        &follower,
        token,
        &["desktop", "exec", &desktop_id, "--", "true"],
    );
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let missing = cli(
        &follower,
        token,
        &["desktop", "exec", &desktop_id, "--", "/nonexistent/program"],
    );
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("exec"),
        "{missing:?}"
    );

    // Logs: what the desktop printed, stdout and stderr, through the follower.
    let logs = cli(&follower, token, &["desktop", "logs", &desktop_id]);
    let text = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.status.success(), "{logs:?}");
    assert!(
        text.contains(&format!("hello from {desktop_id}\n")),
        "{text}"
    );
    assert!(text.contains("to stderr\n"), "{text}");
    let tail = cli(
        &follower,
        token,
        &["desktop", "logs", &desktop_id, "--tail", "10"],
    );
    assert_eq!(tail.stdout.len(), 10, "{tail:?}");

    // Bad input: refused with a clear error, nothing run.
    let expect = |response: reqwest::Response, status: u16, code: &'static str| async move {
        let got = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or_default();
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
    };
    for (body, code) in [
        (json!({"command": []}), "invalid_command"),
        (json!({"command": [""]}), "invalid_command"),
        (json!({"command": ["a\u{0}b"]}), "invalid_command"),
        (json!({"command": ["true"], "tty": true}), "invalid_body"),
        (json!({"command": "true"}), "invalid_body"),
    ] {
        let response = http
            .post(format!("{base}/desktops/{desktop_id}/exec"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        expect(response, 400, code).await;
    }
    let response = http
        .post(format!("{base}/desktops/no-such-desktop/exec"))
        .bearer_auth(token)
        .json(&json!({"command": ["true"]}))
        .send()
        .await?;
    expect(response, 404, "not_found").await;
    let response = http
        .post(format!("{base}/desktops/..%2Fetc/exec"))
        .bearer_auth(token)
        .json(&json!({"command": ["true"]}))
        .send()
        .await?;
    expect(response, 400, "invalid_id").await;
    let response = http
        .post(format!("{base}/desktops/{desktop_id}/exec"))
        .bearer_auth("not-the-token")
        .json(&json!({"command": ["true"]}))
        .send()
        .await?;
    expect(response, 401, "unauthorized").await;
    let response = http
        .post(format!("{base}/desktops/{desktop_id}/exec"))
        .bearer_auth(token)
        .body("{\"command\": [\"true\"]}")
        .send()
        .await?;
    expect(response, 415, "unsupported_media_type").await;
    for query in ["tail=0", "tail=99999999999", "tail=x", "lines=3"] {
        let response = http
            .get(format!("{base}/desktops/{desktop_id}/logs?{query}"))
            .bearer_auth(token)
            .send()
            .await?;
        expect(response, 400, "invalid_query").await;
    }
    // A desktop that is not running: its task leaves the board's active
    // columns, the desktop stops, exec is refused.
    let moved = http
        .post(format!("{base}/tasks/{task_id}/move"))
        .bearer_auth(token)
        .json(&json!({"column": "backlog"}))
        .send()
        .await?;
    assert!(moved.status().is_success(), "{}", moved.text().await?);
    let response = http
        .post(format!("{base}/desktops/{desktop_id}/exec"))
        .bearer_auth(token)
        .json(&json!({"command": ["true"]}))
        .send()
        .await?;
    expect(response, 409, "not_running").await;
    let stopped = cli(
        &follower,
        token,
        &["desktop", "exec", &desktop_id, "--", "true"],
    );
    assert_ne!(stopped.status.code(), Some(0));
    // 409 while it stops; 404 once it is released (gone from the board).
    let said = String::from_utf8_lossy(&stopped.stderr);
    assert!(
        said.contains("HTTP 409") || said.contains("HTTP 404"),
        "{stopped:?}"
    );
    drop(agent);
    Ok(())
}
