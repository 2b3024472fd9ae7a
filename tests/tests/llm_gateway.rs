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

#[tokio::test(flavor = "multi_thread")]
async fn models_are_renamed_priced_and_upstream_errors_pass_through() -> anyhow::Result<()> {
    let setup = setup().await?;
    let alias = setup.messages(body("claude-alias", false)).send().await?;
    assert_eq!(alias.status(), 200);
    let received = setup.upstream.requests();
    let last = received.last().expect("forwarded");
    assert_eq!(last.json().expect("json")["model"], "script-text");
    // The upstream's own error: its status and its body, unchanged.
    let limited = setup
        .messages(body("script-status-429", false))
        .send()
        .await?;
    assert_eq!(limited.status(), 429);
    let limited: Value = limited.json().await?;
    assert_eq!(limited["error"]["type"], "rate_limit_error", "{limited}");
    let priced = setup.messages(body("priced", true)).send().await?;
    assert_eq!(priced.status(), 200);
    priced.bytes().await?;
    let usage = setup.settled_usage(3).await?;
    let row = usage["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|row| row["model"] == "priced")
        .expect("a row for the priced model");
    // script-cache: 4 in, 3 out, 2048 cache read, 1024 cache write, at
    // $3/$15/$0.30/$3.75 per million: 4,511,400 nano-dollars.
    assert_eq!(row["usage"]["cost_nanos"], 4_511_400, "{row}");
    assert_eq!(row["usage"]["cache_write_tokens"], 1024, "{row}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_calls_get_the_wire_formats_errors() -> anyhow::Result<()> {
    let setup = setup().await?;
    let http = &setup.cluster.http;
    let door = &setup.door;
    let anthropic = format!("http://{door}/v1/messages");
    let openai = format!("http://{door}/v1/chat/completions");
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            http.post(&anthropic).json(&body("script-text", false)),
            401,
            "authentication_error",
            "no credential",
        ),
        (
            http.post(&anthropic)
                .header("x-api-key", &setup.cluster.token)
                .json(&body("script-text", false)),
            401,
            "authentication_error",
            "not a desktop token",
        ),
        (
            http.post(&anthropic)
                .header("x-api-key", &setup.token)
                .body("{\"model\": "),
            400,
            "invalid_request_error",
            "JSON object",
        ),
        (
            http.post(&anthropic)
                .header("x-api-key", &setup.token)
                .body(r#"{"model":"script-text","model":"priced","max_tokens":5}"#),
            400,
            "invalid_request_error",
            "given twice",
        ),
        (
            http.post(&anthropic)
                .header("x-api-key", &setup.token)
                .json(&body("gpt-nothing", false)),
            404,
            "not_found_error",
            "no provider serves model \"gpt-nothing\"",
        ),
        (
            http.post(&anthropic)
                .header("x-api-key", &setup.token)
                .body(vec![b' '; 33 << 20]),
            413,
            "request_too_large",
            "at most 32 MiB",
        ),
        (
            http.post(&openai)
                .bearer_auth(&setup.token)
                .json(&json!({"model": "script-text", "stream": "yes"})),
            400,
            "invalid_request_error",
            "'stream' must be true or false",
        ),
        (
            http.post(&openai)
                .bearer_auth(&setup.token)
                .json(&json!({"model": "dead-model", "messages": []})),
            502,
            "server_error",
            "provider dead (http://127.0.0.1:1/v1/chat/completions) could not be reached",
        ),
    ];
    for (request, status, kind, message) in cases {
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), status, "{message}");
        let answer: Value = response.json().await?;
        // Both formats say it as error.type and error.message.
        let (got_kind, got_message) = (&answer["error"]["type"], &answer["error"]["message"]);
        assert_eq!(got_kind, kind, "{answer}");
        assert!(
            got_message.as_str().unwrap_or_default().contains(message),
            "{answer}"
        );
    }
    // Refused before the provider: nothing forwarded; the unreachable
    // provider's call is counted once (with no tokens).
    assert!(setup.upstream.requests().is_empty());
    let usage = setup.settled_usage(1).await?;
    assert_eq!(usage["totals"]["input_tokens"], 0, "{usage}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_goes_away_cancels_the_upstream_call_and_is_still_counted(
) -> anyhow::Result<()> {
    let setup = setup().await?;
    let response = setup.messages(body("script-slow-300", true)).send().await?;
    let mut stream = response.bytes_stream();
    let first = stream.next().await.expect("a first chunk")?;
    assert!(!first.is_empty());
    drop(stream);
    assert_eq!(
        setup
            .upstream
            .wait_for_outcome(0, Duration::from_secs(10))
            .await?,
        Outcome::ClientGone
    );
    // What was seen (message_start: the input) is what is counted.
    let usage = setup.settled_usage(1).await?;
    let expected = expected_usage("script-slow-300").expect("a script");
    assert_eq!(usage["totals"]["input_tokens"], expected.input, "{usage}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_calls_overspend_a_budget_by_at_most_one_reservation() -> anyhow::Result<()> {
    let setup = setup().await?;
    let server = setup.cluster.servers[0].addr.clone();
    let limit = 2_000u64;
    let answer = setup
        .cluster
        .http
        .put(format!(
            "http://{server}/api/v1/tasks/{}/budget",
            setup.task
        ))
        .bearer_auth(&setup.cluster.token)
        .json(&json!({"max_tokens": limit}))
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    let call = body("script-long-64", false);
    // The reservation: the body's bytes plus max_tokens.
    let reservation = serde_json::to_vec(&call)?.len() as u64 + 64;
    let mut refused = 0;
    let mut rounds = 0;
    while refused == 0 && rounds < 50 {
        rounds += 1;
        let calls = (0..12).map(|_| async {
            let response = setup.messages(call.clone()).send().await?;
            let status = response.status().as_u16();
            let text = response.text().await?;
            anyhow::Ok((status, text))
        });
        for result in futures::future::join_all(calls).await {
            let (status, text) = result?;
            match status {
                200 => {}
                402 => {
                    assert!(text.contains("budget of task"), "{text}");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {text}"),
            }
        }
    }
    assert!(refused > 0, "the budget never ran out in {rounds} rounds");
    let forwarded = setup.upstream.requests().len() as u64;
    let usage = setup.settled_usage(forwarded).await?;
    let spent = [
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
    ]
    .iter()
    .map(|field| usage["totals"][field].as_u64().unwrap_or(0))
    .sum::<u64>();
    assert!(
        spent <= limit + reservation,
        "spent {spent} of {limit} (one reservation: {reservation})"
    );
    // The board can say why the agent stopped; raising the budget clears it.
    let task_url = format!("http://{server}/api/v1/tasks/{}", setup.task);
    let task: Value = setup
        .cluster
        .http
        .get(&task_url)
        .bearer_auth(&setup.cluster.token)
        .send()
        .await?
        .json()
        .await?;
    assert!(
        task["llm_refused"]
            .as_str()
            .is_some_and(|why| why.contains("budget of task")),
        "{task}"
    );
    setup
        .cluster
        .http
        .put(format!("{task_url}/budget"))
        .bearer_auth(&setup.cluster.token)
        .json(&json!({"max_tokens": null}))
        .send()
        .await?
        .error_for_status()?;
    let again = setup.messages(call).send().await?;
    assert_eq!(again.status(), 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_desktop_has_at_most_sixteen_open_calls() -> anyhow::Result<()> {
    let setup = setup().await?;
    let mut open = Vec::new();
    for _ in 0..16 {
        let response = setup.messages(body("script-slow-300", true)).send().await?;
        assert_eq!(response.status(), 200);
        open.push(response);
    }
    let refused = setup.messages(body("script-text", false)).send().await?;
    assert_eq!(refused.status(), 429);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let refused: Value = refused.json().await?;
    assert_eq!(refused["error"]["type"], "rate_limit_error", "{refused}");
    // One ends (the client goes): its place is free again.
    drop(open.pop());
    flotilla_tests::wait_for("a free place", Duration::from_secs(10), || async {
        setup
            .messages(body("script-text", false))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await?;
    Ok(())
}
