//! Bad input on the fleet's doors: node-agent gRPC calls, the node,
//! capacity and task-resource HTTP endpoints and the fleet CLI arguments all
//! get clear errors, and nothing changes.

use std::process::Command;
use std::time::Duration;

use flotilla_proto::node as pb;
use flotilla_proto::node::node_agent_client::NodeAgentClient;
use flotilla_tests::{expect_error, flotilla_bin, wait_for, with_token, ServerFlags, TestCluster};
use serde_json::{json, Value};
use tonic::Code;

fn registration(id: &str, name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id: id.to_owned(),
        name: name.to_owned(),
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        capacity: Some(pb::Capacity {
            cpu_millis: 8000,
            memory_bytes: 32 << 30,
            disk_bytes: 1 << 40,
            desktop_slots: 8,
        }),
        reserved: Some(pb::Capacity::default()),
        gpus: vec![pb::Gpu {
            index: 0,
            name: "test gpu".to_owned(),
            vendor_id: 0x10de,
            device_id: 1,
            driver: "test".to_owned(),
            uuid: "00000000-0000-0000-0000-000000000000".to_owned(),
            memory_bytes: 24 << 30,
            cpu_implementation: false,
            capabilities: None,
        }],
        agent_version: "test".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fleet_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let flags = ServerFlags(["--node-heartbeat-ttl", "1s"].map(str::to_owned).to_vec());
    let cluster = TestCluster::start(1, flags).await?;
    let server = &cluster.servers[0];
    let node_token = std::fs::read_to_string(server.data_dir.join("node-join.token"))?
        .trim()
        .to_owned();
    let mut nodes = NodeAgentClient::connect(format!("http://{}", server.addr)).await?;
    let base = format!("http://{}/api/v1", server.addr);
    let http = &cluster.http;
    let token = &cluster.token;

    // gRPC: credentials.
    let refused = nodes
        .register(tonic::Request::new(registration("n1", "node-1")))
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = nodes
        .register(with_token(registration("n1", "node-1"), token))
        .await
        .expect_err("an operator token is not a node-join token");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");

    // gRPC: malformed registrations.
    let mut cases: Vec<(&str, pb::RegisterRequest)> = Vec::new();
    cases.push(("bad name", registration("n1", "Node One")));
    cases.push(("bad id", registration("n1/../x", "node-1")));
    let mut bad_label = registration("n1", "node-1");
    bad_label
        .labels
        .insert("bad key!".to_owned(), "x".to_owned());
    cases.push(("bad label", bad_label));
    let mut no_cpu = registration("n1", "node-1");
    no_cpu.capacity.as_mut().expect("set").cpu_millis = 0;
    cases.push(("zero cpu", no_cpu));
    let mut slots = registration("n1", "node-1");
    slots.capacity.as_mut().expect("set").desktop_slots = 1_000_000;
    cases.push(("absurd slots", slots));
    let mut gpus = registration("n1", "node-1");
    gpus.gpus[0].index = 3;
    cases.push(("gpu index out of order", gpus));
    let mut control = registration("n1", "node-1");
    control.gpus[0].name = "evil\u{1b}[2J".to_owned();
    cases.push(("control characters", control));
    for (what, request) in cases {
        let refused = nodes
            .register(with_token(request, &node_token))
            .await
            .expect_err(what);
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}: {refused:?}");
        assert!(!refused.message().is_empty());
    }
    let listed: Value = http
        .get(format!("{base}/nodes"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed, json!([]), "nothing was registered");

    // A real node, then a second one trying to take its name.
    nodes
        .register(with_token(registration("n1", "node-1"), &node_token))
        .await?;
    let refused = nodes
        .register(with_token(registration("n2", "node-1"), &node_token))
        .await
        .expect_err("name taken");
    assert_eq!(refused.code(), Code::AlreadyExists, "{refused:?}");

    // gRPC: heartbeats and watches for unknown nodes, unknown states.
    let refused = nodes
        .heartbeat(with_token(
            pb::HeartbeatRequest {
                node_id: "ghost".to_owned(),
                desktops: Vec::new(),
            },
            &node_token,
        ))
        .await
        .expect_err("unknown node");
    assert_eq!(refused.code(), Code::NotFound);
    let refused = nodes
        .heartbeat(with_token(
            pb::HeartbeatRequest {
                node_id: "n1".to_owned(),
                desktops: vec![pb::DesktopStatus {
                    desktop_id: "dt-1".to_owned(),
                    generation: 1,
                    state: "exploding".to_owned(),
                    reason: String::new(),
                    usage: None,
                }],
            },
            &node_token,
        ))
        .await
        .expect_err("unknown state");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let refused = nodes
        .watch_assignments(with_token(
            pb::WatchAssignmentsRequest {
                node_id: "ghost".to_owned(),
                after_revision: 0,
            },
            &node_token,
        ))
        .await
        .expect_err("unknown node");
    assert_eq!(refused.code(), Code::NotFound);

    // HTTP: unknown nodes.
    expect_error(
        http.get(format!("{base}/nodes/nope"))
            .bearer_auth(token)
            .send()
            .await?,
        404,
        "not_found",
    )
    .await;
    for path in ["eligibility", "drain"] {
        let body = if path == "drain" {
            json!({})
        } else {
            json!({"eligible": false})
        };
        expect_error(
            http.post(format!("{base}/nodes/nope/{path}"))
                .bearer_auth(token)
                .json(&body)
                .send()
                .await?,
            404,
            "not_found",
        )
        .await;
    }
    // HTTP: malformed drains and eligibility.
    let drain = |body: Value| {
        http.post(format!("{base}/nodes/node-1/drain"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    expect_error(
        drain(json!({"deadline_secs": 99_999_999})).await?,
        400,
        "invalid_deadline",
    )
    .await;
    expect_error(
        drain(json!({"deadline_secs": -5})).await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(
        drain(json!({"max_parallel": 0})).await?,
        400,
        "invalid_max_parallel",
    )
    .await;
    expect_error(
        drain(json!({"deadline": "soon"})).await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(
        http.post(format!("{base}/nodes/node-1/eligibility"))
            .bearer_auth(token)
            .json(&json!({"eligible": "yes"}))
            .send()
            .await?,
        400,
        "invalid_body",
    )
    .await;
    let node: Value = http
        .get(format!("{base}/nodes/node-1"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(node["eligibility"], "eligible");
    assert_eq!(node["draining"], false);

    // HTTP: zero, negative, absurd and malformed resource requests.
    let tasks = format!("{base}/tasks");
    let create = |resources: Value| {
        http.post(&tasks)
            .bearer_auth(token)
            .json(&json!({"title": "t", "column": "planning", "resources": resources}))
            .send()
    };
    let good = json!({"cpu_millis": 500, "memory_bytes": 1u64 << 30});
    let with = |key: &str, value: Value| {
        let mut resources = good.clone();
        resources[key] = value;
        resources
    };
    expect_error(
        create(with("cpu_millis", json!(0))).await?,
        400,
        "invalid_resources",
    )
    .await;
    expect_error(
        create(with("memory_bytes", json!(0))).await?,
        400,
        "invalid_resources",
    )
    .await;
    expect_error(
        create(with("cpu_millis", json!(-1))).await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(
        create(with("memory_bytes", json!(-1))).await?,
        400,
        "invalid_body",
    )
    .await;
    expect_error(
        create(with("cpu_millis", json!(1u64 << 50))).await?,
        400,
        "invalid_resources",
    )
    .await;
    expect_error(
        create(with("gpu_memory_bytes", json!(1u64 << 60))).await?,
        400,
        "invalid_resources",
    )
    .await;
    expect_error(
        create(with("labels", json!({"bad key!": "x"}))).await?,
        400,
        "invalid_resources",
    )
    .await;
    expect_error(
        create(with("labels", json!({"zone": "a b"}))).await?,
        400,
        "invalid_resources",
    )
    .await;
    expect_error(create(with("cores", json!(2))).await?, 400, "invalid_body").await;
    // A batch is all or nothing.
    let batch = |tasks_json: Value| {
        http.post(format!("{tasks}/batch"))
            .bearer_auth(token)
            .json(&json!({"tasks": tasks_json}))
            .send()
    };
    expect_error(batch(json!([])).await?, 400, "invalid_batch").await;
    let too_many: Vec<Value> = (0..1001).map(|_| json!({"title": "t"})).collect();
    expect_error(batch(json!(too_many)).await?, 400, "invalid_batch").await;
    let one_bad =
        json!([{"title": "fine"}, {"title": "bad", "resources": with("cpu_millis", json!(0))}]);
    let body = expect_error(batch(one_bad).await?, 400, "invalid_resources").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("tasks[1]")),
        "{body}"
    );
    let listed: Value = http
        .get(&tasks)
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed["tasks"], json!([]), "no task was created");
    let desktops: Value = http
        .get(format!("{base}/desktops"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(desktops["desktops"], json!([]));

    // A node that is not down cannot be removed.
    expect_error(
        http.delete(format!("{base}/nodes/node-1"))
            .bearer_auth(token)
            .send()
            .await?,
        409,
        "conflict",
    )
    .await;

    // Draining a down node: one heartbeat, then silence past its lease.
    nodes
        .heartbeat(with_token(
            pb::HeartbeatRequest {
                node_id: "n1".to_owned(),
                desktops: Vec::new(),
            },
            &node_token,
        ))
        .await?;
    wait_for("node-1 down", Duration::from_secs(15), || async {
        let response = http
            .get(format!("{base}/nodes/node-1"))
            .bearer_auth(token)
            .send()
            .await;
        match response {
            Ok(response) => response
                .json::<Value>()
                .await
                .is_ok_and(|node| node["status"] == "down"),
            Err(_) => false,
        }
    })
    .await?;
    let body = expect_error(drain(json!({"deadline_secs": 60})).await?, 409, "conflict").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("down")),
        "{body}"
    );
    let node: Value = http
        .get(format!("{base}/nodes/node-1"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (node["draining"].clone(), node["eligibility"].clone()),
        (json!(false), json!("eligible"))
    );
    Ok(())
}

#[test]
fn bad_fleet_arguments_are_refused_before_anything_runs() {
    let run = |args: &[&str]| {
        Command::new(flotilla_bin())
            .args(args)
            .env("FLOTILLA_TOKEN", "unused")
            .env("FLOTILLA_ADDR", "127.0.0.1:1")
            .output()
            .expect("run flotilla")
    };
    let cases: &[(&[&str], &str)] = &[
        (
            &["node", "drain", "n1", "--deadline", "5x"],
            "not a duration",
        ),
        (
            &["node", "drain", "n1", "--force", "--deadline", "5m"],
            "cannot be used",
        ),
        (&["node", "drain", "n1", "--max-parallel", "0"], "0"),
        (
            &["task", "create", "--title", "t", "--memory", "lots"],
            "not a size",
        ),
        (
            &["task", "create", "--title", "t", "--constraint", "novalue"],
            "key=value",
        ),
        (
            &["task", "create", "--title", "t", "--cpu-millis", "-5"],
            "-5",
        ),
        (
            &[
                "node-agent",
                "--join",
                "127.0.0.1:1",
                "--token-file",
                "/nonexistent",
                "--name",
                "Bad Name",
                "--data-dir",
                "/tmp/x",
            ],
            "node name",
        ),
        (
            &[
                "node-agent",
                "--join",
                "127.0.0.1:1",
                "--token-file",
                "/nonexistent",
                "--name",
                "n1",
                "--data-dir",
                "/tmp/x",
                "--label",
                "bad key=x",
            ],
            "label key",
        ),
        (
            &[
                "node-agent",
                "--join",
                "127.0.0.1:1",
                "--token-file",
                "/nonexistent/token",
                "--name",
                "n1",
                "--data-dir",
                "/tmp/x",
            ],
            "node-join token",
        ),
        (
            &[
                "server",
                "--node-id",
                "1",
                "--data-dir",
                "/tmp/x",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap",
                "--desktop-memory",
                "0",
            ],
            "memory_bytes",
        ),
        (
            &[
                "server",
                "--node-id",
                "1",
                "--data-dir",
                "/tmp/x",
                "--listen",
                "127.0.0.1:0",
                "--bootstrap",
                "--node-heartbeat-ttl",
                "10ms",
            ],
            "at least 500ms",
        ),
    ];
    for (args, expected) in cases {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(expected),
            "{args:?}: expected {expected:?} in {stderr}"
        );
    }
}
