//! gpud end to end, as root (CI runs it): a real server and a real node
//! agent that opens the host's GPU (lavapipe here) and serves each
//! sandboxed desktop its own virtio-gpu socket at
//! `/run/flotilla/gpu.sock`. The desktop (a perl guest: the sandbox sees
//! only the host's /usr) speaks the protocol through it, allocates a
//! resource, and `flotilla gpu info` shows the GPU's capabilities and the
//! bytes charged to that desktop against its budget; when the desktop
//! stops, its socket and its charge are gone.

use std::process::{Command, Stdio};
use std::time::Duration;

use flotilla_tests::{flotilla_bin, netns, wait_for, AgentProcess, ServerFlags, TestCluster};
use serde_json::{json, Value};

/// The guest: GET_DISPLAY_INFO, then a 256×256 resource (262,144 bytes),
/// answers printed; then it holds the connection.
const GUEST: &str = r#"
use strict;
use IO::Socket::UNIX;
my $path = $ENV{FLOTILLA_GPU_SOCKET} or die "no FLOTILLA_GPU_SOCKET";
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path) or die "connect $path: $!";
sub call {
    my ($command) = @_;
    print $s pack("V", length $command) . $command;
    $s->flush;
    read($s, my $length, 4) == 4 or die "gpud closed";
    my $n = unpack("V", $length);
    read($s, my $body, $n) == $n or die "short answer";
    return $body;
}
sub header { pack("VVQ<Vx4", $_[0], 0, 0, 0) }
my $info = call(header(0x0100));
my ($type) = unpack("V", $info);
my ($w, $h) = unpack("x32VV", $info);
printf "display 0x%x %dx%d\n", $type, $w, $h;
my $create = call(header(0x0101) . pack("VVVV", 1, 1, 256, 256));
printf "create 0x%x\n", unpack("V", $create);
my $huge = call(header(0x0101) . pack("VVVV", 2, 1, 8192, 8192));
printf "huge 0x%x\n", unpack("V", $huge);
$| = 1;
sleep 100000;
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_desktop_reaches_gpud_and_gpu_info_shows_its_charge() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
    if flotilla_gpu::enumerate().map_or(true, |gpus| gpus.is_empty()) {
        assert!(
            std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none(),
            "no Vulkan device (install mesa-vulkan-drivers)"
        );
        eprintln!("skipping: no Vulkan device");
        return Ok(());
    }
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let data = cluster.root.path().join("agent");
    let log = cluster.root.path().join("agent.log");
    let id = std::process::id() % 10_000;
    let bridge = format!("fg{id}");
    let child = Command::new(flotilla_bin())
        .args(["node-agent", "--join", &addr, "--token-file"])
        .arg(cluster.servers[0].data_dir.join("node-join.token"))
        .args(["--name", "gpu-node", "--data-dir"])
        .arg(&data)
        .args(["--stop-grace", "1s", "--netns-pool", "1"])
        .args(["--desktop-bridge", &bridge])
        .args(["--desktop-subnet", &format!("10.{}.0.0/16", 150 + id % 50)])
        .args(["--display-size", "640x480", "--display-gpu-memory", "1MiB"])
        .args(["--desktop-command", "perl", "-e", GUEST])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            cluster.root.path().join("agent.err"),
        )?)
        .spawn()?;
    let agent = AgentProcess { child, bridge };
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = format!("http://{addr}/api/v1");
    let http = &cluster.http;
    let token = &cluster.token;
    let task: Value = http
        .post(format!("{base}/tasks"))
        .bearer_auth(token)
        .json(&json!({"title": "gpu", "column": "planning"}))
        .send()
        .await?
        .json()
        .await?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let desktop_id = flotilla_tests::wait_for_running_desktop(http, &base, token, &task_id)
        .await
        .map_err(|error| anyhow::anyhow!("{error}\n{}\n{}", agent_log(), cluster.logs()))?;

    // The guest spoke to gpud from inside its sandbox: the display it was
    // offered, a resource within its budget, one past it refused.
    let logs_text = std::sync::Mutex::new(String::new());
    wait_for("the guest's answers", Duration::from_secs(30), || async {
        let Ok(response) = http
            .get(format!("{base}/desktops/{desktop_id}/logs"))
            .bearer_auth(token)
            .send()
            .await
        else {
            return false;
        };
        let text = response.text().await.unwrap_or_default();
        let done = text.contains("huge ");
        *logs_text.lock().unwrap() = text;
        done
    })
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}\n{}", logs_text.lock().unwrap(), agent_log()))?;
    let text = logs_text.into_inner().unwrap();
    assert!(text.contains("display 0x1101 640x480\n"), "{text}");
    assert!(text.contains("create 0x1100\n"), "{text}");
    // 8192×8192×4 is past the 1 MiB display budget: ERR_OUT_OF_MEMORY.
    assert!(text.contains("huge 0x1201\n"), "{text}");

    // gpu info: the GPU as gpud opened it, and the desktop's charge (the
    // driver's allocation for 262,144 bytes) against its budget.
    let gpu_info = |args: &[&str]| {
        Command::new(flotilla_bin())
            .args(["gpu", "info"])
            .args(args)
            .env("FLOTILLA_ADDR", &addr)
            .env("FLOTILLA_TOKEN", token)
            .stdin(Stdio::null())
            .output()
            .expect("run flotilla")
    };
    let shown = std::sync::Mutex::new(Value::Null);
    wait_for(
        "the charge in gpu info",
        Duration::from_secs(30),
        || async {
            let output = gpu_info(&["--output", "json"]);
            let info: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
            let charged = info["gpus"][0]["desktops"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| {
                    d["desktop"] == desktop_id.as_str() && d["charged_bytes"].as_u64() > Some(0)
                });
            *shown.lock().unwrap() = info;
            charged
        },
    )
    .await
    .map_err(|error| anyhow::anyhow!("{error}\n{}", shown.lock().unwrap()))?;
    let info = shown.into_inner().unwrap();
    let gpu = &info["gpus"][0];
    assert_eq!(gpu["node"], "gpu-node", "{info}");
    assert!(
        gpu["uuid"].as_str().is_some_and(|u| u.len() == 36),
        "{info}"
    );
    assert!(
        gpu["name"].as_str().is_some_and(|n| !n.is_empty()),
        "{info}"
    );
    assert!(
        gpu["driver"].as_str().is_some_and(|d| !d.is_empty()),
        "{info}"
    );
    assert!(gpu["memory_bytes"].as_u64() > Some(0), "{info}");
    assert!(
        gpu["capabilities"]["api_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1.")),
        "{info}"
    );
    let desktop = &gpu["desktops"][0];
    assert_eq!(desktop["desktop"], desktop_id.as_str(), "{info}");
    let charged = desktop["charged_bytes"].as_u64().unwrap_or(0);
    assert!((262_144..=2 * 262_144).contains(&charged), "{info}");
    assert_eq!(desktop["budget_bytes"], 1 << 20, "{info}");
    assert_eq!(gpu["charged_bytes"], charged, "{info}");
    // The table and the node filter.
    let table = gpu_info(&["--node", "gpu-node"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    assert!(
        text.contains(&desktop_id) && text.contains("vulkan:"),
        "{text}"
    );
    let unknown = gpu_info(&["--node", "no-such-node"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("404"),
        "{unknown:?}"
    );
    for query in ["node=", "node=a%2Fb", "bogus=1"] {
        let response = http
            .get(format!("{base}/gpus?{query}"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 400, "{query}");
    }

    // Done: the desktop stops, its socket goes, nothing stays charged.
    let socket_dir = data.join("desktops");
    let moved = http
        .post(format!("{base}/tasks/{task_id}/move"))
        .bearer_auth(token)
        .json(&json!({"column": "done"}))
        .send()
        .await?;
    assert!(moved.status().is_success(), "{}", moved.text().await?);
    wait_for("the charge to go", Duration::from_secs(30), || async {
        let output = gpu_info(&["--output", "json"]);
        let info: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        info["gpus"][0]["desktops"]
            .as_array()
            .is_some_and(|desktops| desktops.is_empty())
    })
    .await?;
    wait_for(
        "the desktop's directory to go",
        Duration::from_secs(30),
        || async {
            std::fs::read_dir(&socket_dir).is_ok_and(|mut entries| entries.next().is_none())
        },
    )
    .await?;
    drop(agent);
    Ok(())
}
