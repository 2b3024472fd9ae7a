//! Bad input against a real server: every endpoint answers 4xx with a clear
//! `{"error":{"code","message"}}` body and keeps serving; foreign, corrupt or
//! mismatched data directories stop the server at start-up untouched.

use std::process::Command;
use std::time::Duration;

use flotilla_tests::{expect_error, flotilla_bin, free_port, ServerFlags, TestCluster};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_input_is_rejected_clearly_and_harmlessly() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, ServerFlags::default()).await?;
    let base = format!("http://{}", cluster.servers[0].addr);
    let http = &cluster.http;
    let token = &cluster.token;
    let tasks = format!("{base}/api/v1/tasks");

    let created: Value = http
        .post(&tasks)
        .bearer_auth(token)
        .json(&json!({"title": "real"}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().expect("id").to_owned();

    // Authentication.
    expect_error(http.get(&tasks).send().await?, 401, "unauthorized").await;
    expect_error(
        http.get(&tasks).bearer_auth("flo_op_wrong").send().await?,
        401,
        "unauthorized",
    )
    .await;
    let node_token = std::fs::read_to_string(cluster.servers[0].data_dir.join("node-join.token"))?;
    expect_error(
        http.get(&tasks)
            .bearer_auth(node_token.trim())
            .send()
            .await?,
        401,
        "unauthorized",
    )
    .await;

    // Bodies.
    let post = |body: &'static str| {
        http.post(&tasks)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
    };
    expect_error(post("{\"title\":").send().await?, 400, "invalid_json").await;
    expect_error(
        post("{\"title\":\"x\",\"colour\":\"red\"}").send().await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(post("{\"title\":42}").send().await?, 400, "invalid_body").await;
    expect_error(
        post("{\"title\":\"   \"}").send().await?,
        400,
        "invalid_title",
    )
    .await;
    expect_error(
        post("{\"title\":\"x\",\"column\":\"doing\"}")
            .send()
            .await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(post("[]").send().await?, 400, "invalid_body").await;
    let huge = json!({"title": "x", "description": "y".repeat(400 * 1024)});
    expect_error(
        http.post(&tasks)
            .bearer_auth(token)
            .json(&huge)
            .send()
            .await?,
        413,
        "payload_too_large",
    )
    .await;
    let long_description = json!({"title": "x", "description": "y".repeat(100 * 1024)});
    expect_error(
        http.post(&tasks)
            .bearer_auth(token)
            .json(&long_description)
            .send()
            .await?,
        400,
        "invalid_description",
    )
    .await;
    expect_error(
        http.post(&tasks)
            .bearer_auth(token)
            .body("{\"title\":\"x\"}")
            .send()
            .await?,
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        http.post(&tasks)
            .bearer_auth(token)
            .header("idempotency-key", "k".repeat(500))
            .json(&json!({"title": "x"}))
            .send()
            .await?,
        400,
        "invalid_idempotency_key",
    )
    .await;

    // Ids, columns and queries.
    expect_error(
        http.get(format!("{tasks}/no-such-task"))
            .bearer_auth(token)
            .send()
            .await?,
        404,
        "not_found",
    )
    .await;
    expect_error(
        http.get(format!("{tasks}/bad%20id"))
            .bearer_auth(token)
            .send()
            .await?,
        400,
        "invalid_id",
    )
    .await;
    expect_error(
        http.patch(format!("{tasks}/no-such-task"))
            .bearer_auth(token)
            .json(&json!({"title": "t"}))
            .send()
            .await?,
        404,
        "not_found",
    )
    .await;
    expect_error(
        http.delete(format!("{tasks}/no-such-task"))
            .bearer_auth(token)
            .send()
            .await?,
        404,
        "not_found",
    )
    .await;
    expect_error(
        http.post(format!("{tasks}/{id}/move"))
            .bearer_auth(token)
            .json(&json!({"column": "doing"}))
            .send()
            .await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(
        http.post(format!("{tasks}/no-such-task/move"))
            .bearer_auth(token)
            .json(&json!({"column": "done"}))
            .send()
            .await?,
        404,
        "not_found",
    )
    .await;
    expect_error(
        http.get(format!("{tasks}?column=doing"))
            .bearer_auth(token)
            .send()
            .await?,
        400,
        "invalid_query",
    )
    .await;
    expect_error(
        http.get(format!("{tasks}?limit=5"))
            .bearer_auth(token)
            .send()
            .await?,
        400,
        "invalid_query",
    )
    .await;
    expect_error(
        http.get(format!("{base}/api/v1/nope"))
            .bearer_auth(token)
            .send()
            .await?,
        404,
        "not_found",
    )
    .await;
    expect_error(
        http.delete(format!("{base}/api/v1/cluster/members/abc"))
            .bearer_auth(token)
            .send()
            .await?,
        400,
        "invalid_id",
    )
    .await;
    expect_error(
        http.delete(format!("{base}/api/v1/cluster/members/1"))
            .bearer_auth(token)
            .send()
            .await?,
        409,
        "last_voter",
    )
    .await;
    expect_error(
        http.get(format!("{base}/api/v1/watch?from=abc"))
            .bearer_auth(token)
            .send()
            .await?,
        400,
        "invalid_query",
    )
    .await;

    // Unharmed: the one real task is intact and writes still work.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await?
            .text()
            .await?,
        "ok"
    );
    let moved: Value = http
        .post(format!("{tasks}/{id}/move"))
        .bearer_auth(token)
        .json(&json!({"column": "review"}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(moved["column"], "review");
    let all = cluster.list_tasks(&cluster.servers[0].addr, false).await?;
    assert_eq!(all.len(), 1);

    // The OpenAPI document describes the routes it serves.
    let openapi: Value = http
        .get(format!("{base}/api/v1/openapi.json"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    for path in [
        "/api/v1/tasks",
        "/api/v1/tasks/{id}",
        "/api/v1/tasks/{id}/move",
        "/api/v1/cluster",
        "/api/v1/watch",
    ] {
        assert!(openapi["paths"][path].is_object(), "openapi lacks {path}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_changes_and_resumes_from_a_revision() -> anyhow::Result<()> {
    let cluster = TestCluster::start(1, ServerFlags::default()).await?;
    let addr = cluster.servers[0].addr.clone();
    let list: Value = cluster
        .http
        .get(format!("http://{addr}/api/v1/tasks"))
        .bearer_auth(&cluster.token)
        .send()
        .await?
        .json()
        .await?;
    let revision = list["revision"].as_u64().expect("revision");

    let read_events = |from: u64| {
        let http = cluster.http.clone();
        let token = cluster.token.clone();
        let addr = addr.clone();
        async move {
            let mut response = http
                .get(format!("http://{addr}/api/v1/watch?from={from}"))
                .bearer_auth(&token)
                .timeout(Duration::from_secs(20))
                .send()
                .await?;
            assert_eq!(response.status(), 200);
            let mut text = String::new();
            while !text.contains("watched-task") {
                match response.chunk().await? {
                    Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
                    None => anyhow::bail!("stream ended before the change: {text}"),
                }
            }
            anyhow::Ok(text)
        }
    };
    let live = tokio::spawn(read_events(revision));
    // Give the watcher a moment to subscribe is not needed: it starts from
    // `revision`, so a change made before it subscribes is still delivered.
    assert!(cluster
        .create_task(&addr, "watched-task", "w1")
        .await?
        .is_some());
    let text = live.await??;
    assert!(text.contains("event: change"), "{text}");
    assert!(text.contains("\"kind\":\"task_put\""), "{text}");

    // Resuming from the same revision replays the change.
    let replay = read_events(revision).await?;
    assert!(replay.contains("watched-task"));
    Ok(())
}

fn start_server(args: &[&str]) -> std::process::Output {
    Command::new(flotilla_bin())
        .args(args)
        .output()
        .expect("run flotilla server")
}

#[test]
fn foreign_data_directory_is_refused_and_untouched() {
    let directory = tempfile::tempdir().expect("tempdir");
    std::fs::write(directory.path().join("thesis.txt"), "years of work").expect("write");
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let data_dir = directory.path().display().to_string();
    let output = start_server(&[
        "server",
        "--node-id",
        "1",
        "--data-dir",
        &data_dir,
        "--listen",
        &listen,
        "--desktop-listen",
        "127.0.0.1:0",
        "--bootstrap",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a flotilla data directory"), "{stderr}");
    let entries: Vec<_> = std::fs::read_dir(directory.path()).expect("list").collect();
    assert_eq!(
        entries.len(),
        1,
        "nothing may be added to a foreign directory"
    );
    assert_eq!(
        std::fs::read_to_string(directory.path().join("thesis.txt")).expect("read"),
        "years of work"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_mismatched_data_directory_fails_start_up_untouched() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(1, ServerFlags::default()).await?;
    let addr = cluster.servers[0].addr.clone();
    assert!(cluster
        .create_task(&addr, "precious", "p1")
        .await?
        .is_some());
    assert!(cluster.server(1).stop()?.success());
    let data_dir = cluster.servers[0].data_dir.clone();
    let data_dir_text = data_dir.display().to_string();
    let listen = format!("127.0.0.1:{}", free_port());

    // Another node's directory.
    let output = start_server(&[
        "server",
        "--node-id",
        "2",
        "--data-dir",
        &data_dir_text,
        "--listen",
        &listen,
        "--desktop-listen",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("belongs to node 1"), "{stderr}");

    // A corrupt log.
    let log_path = data_dir.join("log.redb");
    let original = std::fs::read(&log_path)?;
    let garbage: Vec<u8> = (0..original.len()).map(|i| (i * 7 + 13) as u8).collect();
    std::fs::write(&log_path, &garbage)?;
    let output = start_server(&[
        "server",
        "--node-id",
        "1",
        "--data-dir",
        &data_dir_text,
        "--listen",
        &listen,
        "--desktop-listen",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("raft log"), "{stderr}");
    assert_eq!(
        std::fs::read(&log_path)?,
        garbage,
        "a corrupt log must be left as found"
    );

    // A garbled marker file.
    std::fs::write(&log_path, &original)?;
    let meta_path = data_dir.join("flotilla-server.json");
    let meta = std::fs::read(&meta_path)?;
    std::fs::write(&meta_path, b"{\"format\":")?;
    let output = start_server(&[
        "server",
        "--node-id",
        "1",
        "--data-dir",
        &data_dir_text,
        "--listen",
        &listen,
        "--desktop-listen",
        "127.0.0.1:0",
    ]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("corrupt"));

    // Restored, it starts again with its data.
    std::fs::write(&meta_path, meta)?;
    cluster.server(1).restart()?;
    let cluster_ref = &cluster;
    flotilla_tests::wait_for(
        "the restored server to serve its task",
        Duration::from_secs(30),
        || {
            let addr = addr.clone();
            async move {
                cluster_ref
                    .list_tasks(&addr, false)
                    .await
                    .is_ok_and(|tasks| tasks.len() == 1 && tasks[0]["title"] == "precious")
            }
        },
    )
    .await?;
    Ok(())
}
