//! The LLM gateway on the desktop door, against the scripted upstream:
//! answers pass through byte for byte (streamed as they come), usage is
//! recorded exactly once per call, budgets hold under concurrent calls, bad
//! input gets the wire format's errors, a client that goes away cancels the
//! upstream call, an unreachable provider is a 502 naming it. The desktop's
//! token here is minted as the servers mint it, for a desktop still pending
//! (no sandbox needed); `llm_desktop.rs` runs the same door from a real one.

use std::time::Duration;

use flotilla_tests::llm_upstream::{expected_usage, Outcome, ScriptedUpstream};
use flotilla_tests::{ServerFlags, TestCluster};
use futures::StreamExt;
use serde_json::{json, Value};

/// The upstream's ids carry its request number (`msg_scripted0003`): the
/// same answer to another request differs only there.
fn without_ids(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_ref();
    while let Some(at) = rest.find("scripted") {
        out.push_str(&rest[..at + "scripted".len()]);
        rest = &rest[at + "scripted".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

struct Setup {
    cluster: TestCluster,
    upstream: ScriptedUpstream,
    door: String,
    task: String,
    token: String,
    key: String,
}

const MODELS: &[&str] = &[
    "script-text",
    "script-tools",
    "script-cache",
    "script-slow",
    "script-slow-300",
    "script-abrupt",
    "script-status-429",
    "script-long-64",
];

async fn setup() -> anyhow::Result<Setup> {
    let upstream = ScriptedUpstream::start().await;
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let server = cluster.servers[0].addr.clone();
    let door = cluster.servers[0].desktop_addr.clone();
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
    let key = format!("sk-upstream-{}", uuid::Uuid::new_v4().simple());
    let mut models: Vec<Value> = MODELS.iter().map(|m| json!({"name": m})).collect();
    models.push(json!({"name": "claude-alias", "upstream": "script-text"}));
    // $3 in, $15 out, $0.30 cache read, $3.75 cache write per million.
    models.push(json!({"name": "priced", "upstream": "script-cache",
        "price": {"input": 3_000_000, "output": 15_000_000, "cache_read": 300_000, "cache_write": 3_750_000}}));
    cluster
        .post_json(
            &server,
            "/api/v1/llm/providers",
            json!({"name": "anth", "kind": "anthropic", "base_url": upstream.base_url(),
                   "key": key, "models": models}),
        )
        .await?;
    cluster
        .post_json(
            &server,
            "/api/v1/llm/providers",
            json!({"name": "oai", "kind": "openai", "base_url": format!("{}/v1", upstream.base_url()),
                   "key": key, "models": [{"name": "script-text"}, {"name": "script-tools"}]}),
        )
        .await?;
    cluster
        .post_json(
            &server,
            "/api/v1/llm/providers",
            json!({"name": "dead", "kind": "openai-compatible", "base_url": "http://127.0.0.1:1/v1",
                   "models": [{"name": "dead-model"}]}),
        )
        .await?;
    let task: Value = cluster
        .post_json(
            &server,
            "/api/v1/tasks",
            json!({"title": "llm", "column": "planning", "repository": "demo/app"}),
        )
        .await?;
    let task = task["id"].as_str().unwrap_or_default().to_owned();
    let token = cluster.desktop_token(&task).await?;
    Ok(Setup {
        cluster,
        upstream,
        door,
        task,
        token,
        key,
    })
}

impl Setup {
    fn messages(&self, body: Value) -> reqwest::RequestBuilder {
        self.cluster
            .http
            .post(format!("http://{}/v1/messages", self.door))
            .header("x-api-key", &self.token)
            .header("anthropic-version", "2023-06-01")
            .json(&body)
    }

    async fn usage(&self) -> anyhow::Result<Value> {
        let server = &self.cluster.servers[0].addr;
        Ok(self
            .cluster
            .http
            .get(format!("http://{server}/api/v1/usage?task={}", self.task))
            .bearer_auth(&self.cluster.token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Waits until `calls` calls are recorded, then a little longer to see
    /// that no call is recorded twice.
    async fn settled_usage(&self, calls: u64) -> anyhow::Result<Value> {
        flotilla_tests::wait_for("usage to be recorded", Duration::from_secs(20), || async {
            self.usage()
                .await
                .is_ok_and(|usage| usage["totals"]["calls"].as_u64() >= Some(calls))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(600)).await;
        let usage = self.usage().await?;
        assert_eq!(usage["totals"]["calls"], calls, "{usage}");
        Ok(usage)
    }
}

fn body(model: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_pass_through_and_usage_is_recorded_once() -> anyhow::Result<()> {
    let setup = setup().await?;
    let direct = reqwest::Client::new();
    let mut calls = 0;
    for model in ["script-text", "script-tools", "script-cache"] {
        for stream in [false, true] {
            let via = setup.messages(body(model, stream)).send().await?;
            assert_eq!(via.status(), 200, "{model}");
            let via = via.bytes().await?;
            calls += 1;
            let straight = direct
                .post(format!("{}/v1/messages", setup.upstream.base_url()))
                .header("x-api-key", "x")
                .header("anthropic-version", "2023-06-01")
                .json(&body(model, stream))
                .send()
                .await?
                .bytes()
                .await?;
            assert_eq!(
                without_ids(&via),
                without_ids(&straight),
                "{model} stream={stream}"
            );
        }
    }
    // The upstream got the provider's key, never the desktop's token, and
    // the body as the client sent it.
    let received = setup.upstream.requests();
    let forwarded: Vec<_> = received
        .iter()
        .filter(|r| r.header("x-api-key") == Some(setup.key.as_str()))
        .collect();
    assert_eq!(forwarded.len(), calls as usize);
    for request in &received {
        assert!(
            !request
                .headers
                .iter()
                .any(|(_, value)| value.contains(&setup.token)),
            "the desktop token reached the provider: {:?}",
            request.headers
        );
    }
    assert_eq!(
        forwarded[0].body,
        serde_json::to_vec(&body("script-text", false))?
    );
    let usage = setup.settled_usage(calls).await?;
    let mut input = 0;
    let mut output = 0;
    for model in ["script-text", "script-tools", "script-cache"] {
        let expected = expected_usage(model).expect("a script");
        input += 2 * expected.input;
        output += 2 * expected.output;
    }
    assert_eq!(usage["totals"]["input_tokens"], input, "{usage}");
    assert_eq!(usage["totals"]["output_tokens"], output, "{usage}");
    // The task carries its usage too (the board shows it).
    let task: Value = setup
        .cluster
        .http
        .get(format!(
            "http://{}/api/v1/tasks/{}",
            setup.cluster.servers[0].addr, setup.task
        ))
        .bearer_auth(&setup.cluster.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(task["usage"]["calls"], calls, "{task}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_arrives_as_it_is_sent() -> anyhow::Result<()> {
    let setup = setup().await?;
    // script-slow-300: a frame every 300 ms. The first chunk reaches the
    // client while the upstream is still sending (nothing buffers).
    let response = setup.messages(body("script-slow-300", true)).send().await?;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.expect("a first chunk")?;
    assert!(String::from_utf8_lossy(&first).contains("message_start"));
    let index = setup.upstream.requests().len() - 1;
    assert_eq!(setup.upstream.requests()[index].outcome, Outcome::Pending);
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk?);
    }
    assert!(String::from_utf8_lossy(&rest).contains("message_stop"));
    assert_eq!(
        setup
            .upstream
            .wait_for_outcome(index, Duration::from_secs(5))
            .await?,
        Outcome::Completed
    );
    Ok(())
}
