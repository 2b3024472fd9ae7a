//! Three real `flotilla server` processes: durability under leader loss,
//! catch-up by snapshot, and membership changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_tests::{wait_for, write_with_retries, ServerFlags, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9_of_the_leader() -> anyhow::Result<()> {
    const WRITES: usize = 1_000;
    const CLIENTS: usize = 16;
    let mut cluster = TestCluster::start(3, ServerFlags::default()).await?;
    let addrs: Vec<String> = cluster.servers.iter().map(|s| s.addr.clone()).collect();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(240);

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (http, token, addrs) = (cluster.http.clone(), cluster.token.clone(), addrs.clone());
        let (acknowledged, next) = (acknowledged.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                if index >= WRITES {
                    return outcomes;
                }
                let acked = write_with_retries(&http, &token, &addrs, index, deadline)
                    .await
                    .expect("writes are valid");
                if acked {
                    acknowledged.fetch_add(1, Ordering::SeqCst);
                }
                outcomes.push((index, acked));
            }
        }));
    }

    // Kill the leader mid-stream.
    wait_for("300 acknowledged writes", Duration::from_secs(120), || {
        let acknowledged = acknowledged.clone();
        async move { acknowledged.load(Ordering::SeqCst) >= 300 }
    })
    .await?;
    let old_leader = cluster.leader().await?;
    cluster.server(old_leader).kill();
    let acked_at_kill = acknowledged.load(Ordering::SeqCst);

    let mut outcomes = HashMap::new();
    for client in clients {
        for (index, acked) in client.await? {
            outcomes.insert(index, acked);
        }
    }
    assert_eq!(outcomes.len(), WRITES);
    assert!(
        acknowledged.load(Ordering::SeqCst) > acked_at_kill,
        "no write was acknowledged after the leader was killed\n{}",
        cluster.logs()
    );

    let survivor = cluster
        .servers
        .iter()
        .find(|server| server.node_id != old_leader)
        .expect("two servers survive")
        .addr
        .clone();
    let tasks = cluster.list_tasks(&survivor, false).await?;
    let mut copies: HashMap<String, usize> = HashMap::new();
    for task in &tasks {
        let title = task["title"]
            .as_str()
            .expect("tasks have titles")
            .to_owned();
        *copies.entry(title).or_default() += 1;
    }
    for (index, acked) in &outcomes {
        let count = copies.get(&format!("write-{index}")).copied().unwrap_or(0);
        if *acked {
            assert_eq!(
                count, 1,
                "acknowledged write {index} is present {count} times"
            );
        } else {
            assert!(
                count <= 1,
                "unacknowledged write {index} is present {count} times"
            );
        }
    }
    assert!(tasks.len() <= WRITES);

    // The killed server comes back from its disk and catches up.
    cluster.server(old_leader).restart()?;
    let restarted = cluster.server(old_leader).addr.clone();
    let expected = tasks.len();
    cluster
        .wait_for_task_count(&restarted, expected, true, Duration::from_secs(60))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopped_server_catches_up_by_snapshot_install() -> anyhow::Result<()> {
    let flags = ServerFlags(
        ["--snapshot-every", "100", "--keep-logs", "10"]
            .map(str::to_owned)
            .to_vec(),
    );
    let mut cluster = TestCluster::start(3, flags).await?;
    for index in 0..20 {
        let addr = cluster.servers[0].addr.clone();
        cluster
            .create_task(&addr, &format!("before-{index}"), &format!("b{index}"))
            .await?;
    }
    let stopped_at = {
        let addr = cluster.servers[2].addr.clone();
        cluster.status(&addr).await?["last_log_index"]
            .as_u64()
            .expect("last_log_index is a number")
    };
    let exit = cluster.server(3).stop()?;
    assert!(
        exit.success(),
        "SIGTERM must stop the server cleanly: {exit}"
    );

    let addr = cluster.servers[0].addr.clone();
    for index in 0..400 {
        let acked = cluster
            .create_task(&addr, &format!("after-{index}"), &format!("a{index}"))
            .await?;
        assert!(
            acked.is_some(),
            "write {index} with two of three servers up\n{}",
            cluster.logs()
        );
    }
    // The leader's log no longer reaches back to where server 3 stopped.
    let leader = cluster.leader().await?;
    let leader_addr = cluster.server(leader).addr.clone();
    let cluster_ref = &cluster;
    wait_for(
        "the leader to purge its log",
        Duration::from_secs(30),
        || {
            let leader_addr = leader_addr.clone();
            async move {
                cluster_ref
                    .status(&leader_addr)
                    .await
                    .is_ok_and(|status| status["purged_index"].as_u64().unwrap_or(0) > stopped_at)
            }
        },
    )
    .await?;

    cluster.server(3).restart()?;
    let restarted = cluster.server(3).addr.clone();
    cluster
        .wait_for_task_count(&restarted, 420, true, Duration::from_secs(60))
        .await?;
    let status = cluster.status(&restarted).await?;
    assert!(
        status["snapshot_index"].as_u64().unwrap_or(0) > stopped_at,
        "server 3 must hold a snapshot past where it stopped: {status}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_grows_to_three_and_a_removed_server_cannot_disturb() -> anyhow::Result<()> {
    // Generous timeouts so that a busy CI machine cannot cause elections of
    // its own: any term change below is then the removed server's doing.
    let flags = ServerFlags(
        [
            "--election-timeout-min-ms",
            "500",
            "--election-timeout-max-ms",
            "1000",
        ]
        .map(str::to_owned)
        .to_vec(),
    );
    let mut cluster = TestCluster::start(1, flags).await?;
    let first = cluster.servers[0].addr.clone();
    for index in 0..5 {
        assert!(cluster
            .create_task(&first, &format!("early-{index}"), &format!("e{index}"))
            .await?
            .is_some());
    }
    cluster.join_server(2).await?;
    cluster.join_server(3).await?;
    let third = cluster.server(3).addr.clone();
    assert_eq!(cluster.list_tasks(&third, false).await?.len(), 5);

    // Remove server 3 with the operator CLI.
    let output = std::process::Command::new(flotilla_tests::flotilla_bin())
        .args([
            "cluster",
            "remove",
            "3",
            "--addr",
            &first,
            "--token",
            &cluster.token,
            "--output",
            "json",
        ])
        .output()?;
    assert!(
        output.status.success(),
        "cluster remove failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let ids: Vec<u64> = status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|member| member["id"].as_u64())
        .collect();
    assert_eq!(ids, [1, 2], "{status}");
    cluster
        .wait_for_members(&first, 2, Duration::from_secs(20))
        .await?;

    // Server 3 keeps running with its old view; the cluster carries on
    // without a single disturbance to its term.
    assert!(cluster.server(3).is_running());
    let term = cluster.status(&first).await?["term"]
        .as_u64()
        .expect("term");
    let second = cluster.server(2).addr.clone();
    // Its election timer (lease 1 s + 0.5-1 s) fires several times in 6 s.
    let observe_until = Instant::now() + Duration::from_secs(6);
    let mut index = 0;
    while Instant::now() < observe_until {
        let addr = if index % 2 == 0 { &first } else { &second };
        assert!(
            cluster
                .create_task(addr, &format!("late-{index}"), &format!("l{index}"))
                .await?
                .is_some(),
            "write {index} after removal\n{}",
            cluster.logs()
        );
        index += 1;
    }
    let status = cluster.status(&first).await?;
    assert_eq!(
        status["term"].as_u64(),
        Some(term),
        "the removed server disturbed the cluster: {status}"
    );
    let removed_addr = cluster.server(3).addr.clone();
    let removed_view = cluster.status(&removed_addr).await?;
    // It did try: its own term moved on while the cluster's did not.
    assert!(
        removed_view["term"].as_u64().unwrap_or(0) > term,
        "the removed server never campaigned, so nothing was tested: {removed_view}"
    );
    assert_eq!(cluster.list_tasks(&second, false).await?.len(), 5 + index);
    Ok(())
}
