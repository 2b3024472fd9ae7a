//! The gateway from inside a real desktop sandbox, as root (CI runs it): the
//! node agent puts the door and the desktop's token where agents' SDKs look
//! (`ANTHROPIC_BASE_URL`/`ANTHROPIC_AUTH_TOKEN`, `OPENAI_BASE_URL`/
//! `OPENAI_API_KEY`), a call from the desktop reaches the provider, the
//! provider's key appears nowhere a desktop, a log, an answer or the disk
//! can show it, and the token stops working when the desktop goes.

use std::time::Duration;

use flotilla_tests::desktop::in_desktop;
use flotilla_tests::git::described;
use flotilla_tests::llm_upstream::ScriptedUpstream;
use flotilla_tests::{netns, AgentProcess, ServerFlags, TestCluster};
use serde_json::{json, Value};

/// Both wire formats, called with the standard library's HTTP client from
/// inside the desktop, with nothing but what its environment says.
const CALLS: &str = r#"
import json, os, urllib.request
def call(url, body, headers):
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
        headers={"content-type": "application/json", **headers})
    return json.load(urllib.request.urlopen(request, timeout=30))
hi = [{"role": "user", "content": "hi"}]
a = call(os.environ["ANTHROPIC_BASE_URL"] + "/v1/messages",
    {"model": "script-text", "max_tokens": 16, "messages": hi},
    {"anthropic-version": "2023-06-01", "authorization": "Bearer " + os.environ["ANTHROPIC_AUTH_TOKEN"]})
o = call(os.environ["OPENAI_BASE_URL"] + "/chat/completions",
    {"model": "script-text", "messages": hi},
    {"authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
print(json.dumps({"anthropic": a["content"][0]["text"], "openai": o["choices"][0]["message"]["content"]}))
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_desktop_reaches_models_only_through_the_gateway_with_its_own_token() -> anyhow::Result<()>
{
    if !netns::available()? {
        return Ok(());
    }
    let upstream = ScriptedUpstream::start().await;
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let server = cluster.servers[0].addr.clone();
    let door = cluster.servers[0].desktop_addr.clone();
    let token = cluster.token.clone();
    cluster
        .post_json(&server, "/api/v1/projects", json!({"id": "demo"}))
        .await?;
    cluster
        .post_json(
            &server,
            "/api/v1/projects/demo/repos",
            json!({"name": "app"}),
        )
        .await?;
    let key = format!("sk-provider-{}", uuid::Uuid::new_v4().simple());
    for (name, kind, base) in [
        ("anth", "anthropic", upstream.base_url()),
        ("oai", "openai", format!("{}/v1", upstream.base_url())),
    ] {
        cluster
            .post_json(
                &server,
                "/api/v1/llm/providers",
                json!({"name": name, "kind": kind, "base_url": base, "key": key,
                       "models": [{"name": "script-text"}]}),
            )
            .await?;
    }
    let data = cluster.root.path().join("agent");
    let log = cluster.root.path().join("agent.log");
    let _agent = AgentProcess::start_plain(&cluster, "llm-node", &data, &log)?;
    let agent_log = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
        )
    };
    let base = format!("http://{server}/api/v1");
    let task: Value = cluster
        .post_json(
            &server,
            "/api/v1/tasks",
            json!({"title": "llm", "column": "planning", "repository": "demo/app"}),
        )
        .await?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let desktop = flotilla_tests::wait_for_running_desktop(&cluster.http, &base, &token, &task_id)
        .await
        .map_err(|error| anyhow::anyhow!("{error}\n{}\n{}", agent_log(), cluster.logs()))?;

    // What the desktop's environment says.
    let env = in_desktop(&server, &token, &desktop, "env").await?;
    let env_text = String::from_utf8_lossy(&env.stdout).into_owned();
    let var = |name: &str| {
        env_text
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
    };
    let desktop_token = var("ANTHROPIC_AUTH_TOKEN").unwrap_or_default();
    assert!(
        desktop_token.starts_with("flo_desk_"),
        "{}",
        described(&env)
    );
    assert_eq!(
        var("OPENAI_API_KEY").as_deref(),
        Some(desktop_token.as_str())
    );
    let anthropic_base = var("ANTHROPIC_BASE_URL").unwrap_or_default();
    assert_eq!(
        var("OPENAI_BASE_URL"),
        Some(format!("{anthropic_base}/v1")),
        "{env_text}"
    );

    // A call from inside, in each wire format, reaches the provider.
    let script = format!("python3 - <<'PY'\n{CALLS}\nPY");
    let called = in_desktop(&server, &token, &desktop, &script).await?;
    assert_eq!(called.status.code(), Some(0), "{}", described(&called));
    let answers: Value = serde_json::from_slice(&called.stdout)?;
    let text = "Hello from the scripted upstream.";
    assert_eq!(answers, json!({"anthropic": text, "openai": text}));
    let received = upstream.requests();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].header("x-api-key"), Some(key.as_str()));
    assert_eq!(
        received[1].header("authorization"),
        Some(format!("Bearer {key}").as_str())
    );

    // The provider's key is nowhere the desktop can read, in no log, no
    // answer and not in the clear on disk.
    let search = format!(
        "env; cat /proc/self/environ; grep -rsl '{key}' /etc /tmp /run /home /var 2>/dev/null; true"
    );
    let looked = in_desktop(&server, &token, &desktop, &search).await?;
    assert!(
        !String::from_utf8_lossy(&looked.stdout).contains(&key),
        "the key is visible in the desktop"
    );
    assert!(!cluster.logs().contains(&key), "the key is in a server log");
    assert!(!agent_log().contains(&key), "the key is in the agent's log");
    for path in [
        "/api/v1/llm/providers",
        "/api/v1/tasks",
        "/api/v1/desktops",
        "/api/v1/projects/demo",
        "/api/v1/openapi.json",
    ] {
        let answer = cluster
            .http
            .get(format!("http://{server}{path}"))
            .bearer_auth(&token)
            .send()
            .await?
            .text()
            .await?;
        assert!(!answer.contains(&key), "{path} shows the key");
    }
    let on_disk = std::process::Command::new("grep")
        .args(["-rsl", "-a", &key])
        .arg(cluster.root.path())
        .output()?;
    assert!(
        on_disk.stdout.is_empty(),
        "the key is in the clear in {}",
        String::from_utf8_lossy(&on_disk.stdout)
    );

    // The desktop goes: its token stops working.
    cluster
        .post_json(
            &server,
            &format!("/api/v1/tasks/{task_id}/move"),
            json!({"column": "done"}),
        )
        .await?;
    let call = || {
        cluster
            .http
            .post(format!("http://{door}/v1/messages"))
            .header("x-api-key", &desktop_token)
            .header("anthropic-version", "2023-06-01")
            .json(&json!({"model": "script-text", "max_tokens": 8, "messages": []}))
            .send()
    };
    flotilla_tests::wait_for(
        "the desktop's token to stop working",
        Duration::from_secs(30),
        || async { call().await.is_ok_and(|response| response.status() == 401) },
    )
    .await?;
    let refused: Value = call().await?.json().await?;
    assert_eq!(
        refused["error"]["type"], "authentication_error",
        "{refused}"
    );
    assert_eq!(upstream.requests().len(), 2, "nothing more was forwarded");
    Ok(())
}
