//! `flotilla llm provider`, `flotilla usage` and `flotilla budget` against a
//! real server: a key goes in from a file and never comes out, dollars are
//! typed as dollars, bad arguments and refusals say what is wrong.

use flotilla_tests::git::{cli, cli_ok, described};
use flotilla_tests::llm_upstream::ScriptedUpstream;
use flotilla_tests::{ServerFlags, TestCluster};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn providers_usage_and_budgets_from_the_command_line() -> anyhow::Result<()> {
    let upstream = ScriptedUpstream::start().await;
    let cluster = TestCluster::start(1, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let token = cluster.token.clone();
    let key = format!("sk-cli-{}", uuid::Uuid::new_v4().simple());
    let key_file = cluster.root.path().join("anthropic.key");
    std::fs::write(&key_file, format!("{key}\n"))?;
    let base = upstream.base_url();
    let key_path = key_file.to_string_lossy().into_owned();
    let add = [
        "llm",
        "provider",
        "add",
        "anth",
        "--kind",
        "anthropic",
        "--base-url",
        &base,
        "--key-file",
        &key_path,
        "--model",
        "sonnet=script-text",
        "--model",
        "script-cache",
        "--price",
        "sonnet=3,15,0.3,3.75",
    ];
    let added = cli_ok(&addr, &token, &add)?;
    assert!(
        added.contains("added provider anth") && added.contains("key sealed"),
        "{added}"
    );
    let again = cli(&addr, &token, &add)?;
    assert!(
        !again.status.success() && described(&again).contains("already exists"),
        "{}",
        described(&again)
    );
    let listed = cli_ok(&addr, &token, &["llm", "provider", "list"])?;
    assert!(
        listed.contains("sonnet") && listed.contains("script-text"),
        "{listed}"
    );
    assert!(listed.contains("$3") && listed.contains("$15"), "{listed}");
    let json_list = cli_ok(
        &addr,
        &token,
        &["llm", "provider", "list", "--output", "json"],
    )?;
    assert!(
        !listed.contains(&key) && !json_list.contains(&key),
        "the key came back"
    );
    let providers: Value = serde_json::from_str(&json_list)?;
    assert_eq!(providers[0]["has_key"], true, "{providers}");
    assert_eq!(
        providers[0]["models"]["sonnet"]["price"]["cache_write"],
        3_750_000
    );

    for (args, said) in [
        (
            vec![
                "llm",
                "provider",
                "add",
                "x",
                "--kind",
                "openai",
                "--base-url",
                "ftp://h",
                "--model",
                "m",
            ],
            "must be http:// or https://",
        ),
        (
            vec![
                "llm",
                "provider",
                "add",
                "x",
                "--kind",
                "openai",
                "--base-url",
                "http://h/v1",
                "--model",
                "m",
                "--price",
                "m=3",
            ],
            "needs 2 or 4 amounts",
        ),
        (
            vec![
                "llm",
                "provider",
                "add",
                "x",
                "--kind",
                "openai",
                "--base-url",
                "http://h/v1",
                "--model",
                "m",
                "--price",
                "n=1,2",
            ],
            "which no --model adds",
        ),
        (
            vec!["budget", "set", "--task", "no-such-task", "--tokens", "5"],
            "no task",
        ),
        (
            vec!["budget", "set", "--project", "p", "--cost", "1.2345678901"],
            "more than 9 decimals",
        ),
        (
            vec!["llm", "provider", "remove", "nope"],
            "no model provider",
        ),
    ] {
        let output = cli(&addr, &token, &args)?;
        assert!(
            !output.status.success() && described(&output).contains(said),
            "{args:?}: {}",
            described(&output)
        );
    }

    // A task's budget in tokens and dollars; its usage after one call.
    let task: Value = cluster
        .post_json(
            &addr,
            "/api/v1/tasks",
            json!({"title": "t", "column": "planning"}),
        )
        .await?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let set = cli_ok(
        &addr,
        &token,
        &[
            "budget", "set", "--task", &task_id, "--tokens", "5000", "--cost", "2.50",
        ],
    )?;
    assert!(set.contains("at most 5000 tokens, at most $2.50"), "{set}");
    let task: Value = cluster
        .http
        .get(format!("http://{addr}/api/v1/tasks/{task_id}"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        task["budget"],
        json!({"max_tokens": 5000, "max_cost_nanos": 2_500_000_000u64})
    );
    let desktop_token = cluster.desktop_token(&task_id).await?;
    let answer = cluster
        .http
        .post(format!(
            "http://{}/v1/messages",
            cluster.servers[0].desktop_addr
        ))
        .header("x-api-key", &desktop_token)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "sonnet", "max_tokens": 16, "messages": []}))
        .send()
        .await?;
    assert_eq!(answer.status(), 200);
    flotilla_tests::wait_for(
        "the call's usage",
        std::time::Duration::from_secs(10),
        || async {
            cli_ok(
                &addr,
                &token,
                &["usage", "--task", &task_id, "--since", "1h"],
            )
            .is_ok_and(|table| table.contains("sonnet"))
        },
    )
    .await?;
    // script-text: 12 in, 6 out at $3/$15 per million: $0.000126.
    let usage = cli_ok(&addr, &token, &["usage", "--task", &task_id])?;
    let total = usage
        .lines()
        .find(|line| line.starts_with("total"))
        .unwrap_or_default();
    assert!(total.contains("$0.000126"), "{usage}");
    let cleared = cli_ok(&addr, &token, &["budget", "set", "--task", &task_id])?;
    assert!(cleared.contains("has no budget now"), "{cleared}");
    let removed = cli_ok(&addr, &token, &["llm", "provider", "remove", "anth"])?;
    assert!(removed.contains("removed provider anth"), "{removed}");
    Ok(())
}
