//! Hosted git across a real 3-server cluster, driven by the real `git`
//! client: a push to a follower is acknowledged only once its refs are
//! committed, and every server then serves the same refs with the objects
//! (fsck clean); no acknowledged push is lost when the leader is killed
//! (SIGKILL) right after the acknowledgements; a stale push is refused with
//! git's "fetch first"; a wrong token is refused.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use flotilla_tests::git::{git, git_output};
use flotilla_tests::{wait_for, ServerFlags, TestCluster};

fn url(addr: &str, token: &str) -> String {
    format!("http://flotilla:{token}@{addr}/git/demo/app.git")
}

/// `refs/heads/main` as `addr` serves it.
fn remote_main(dir: &Path, addr: &str, token: &str) -> anyhow::Result<Option<String>> {
    let listing = git(dir, &["ls-remote", &url(addr, token), "refs/heads/main"])?;
    Ok(listing.split_whitespace().next().map(str::to_owned))
}

/// Waits until `addr` serves `refs/heads/main` at `expected`.
async fn serves_main(
    dir: &Path,
    addr: &str,
    token: &str,
    expected: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for(
        &format!("{addr} to serve main at {expected}"),
        timeout,
        || async { remote_main(dir, addr, token).ok().flatten().as_deref() == Some(expected) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn pushes_are_replicated_and_none_acknowledged_is_lost() -> anyhow::Result<()> {
    let mut cluster = TestCluster::start(3, ServerFlags::default()).await?;
    let leader = cluster.leader().await?;
    let follower = cluster
        .servers
        .iter()
        .find(|server| server.node_id != leader)
        .map(|server| server.addr.clone())
        .context("a follower")?;
    cluster
        .post_json(
            &follower,
            "/api/v1/projects",
            serde_json::json!({"id": "demo"}),
        )
        .await?;
    cluster
        .post_json(
            &follower,
            "/api/v1/projects/demo/repos",
            serde_json::json!({"name": "app"}),
        )
        .await?;

    let work = tempfile::tempdir()?;
    let dir = work.path();
    git(dir, &["init", "-q", "-b", "main", "."])?;
    let token = cluster.token.clone();

    // A wrong token is refused by git's own authentication.
    let refused = git_output(dir, &["ls-remote", &url(&follower, "flo_op_wrong")])?;
    assert!(!refused.status.success());

    // Pushes through a follower; each acknowledged commit is remembered.
    let mut acknowledged = Vec::new();
    for round in 0..5 {
        std::fs::write(dir.join("file.txt"), format!("round {round}\n"))?;
        git(dir, &["add", "file.txt"])?;
        git(dir, &["commit", "-q", "-m", &format!("round {round}")])?;
        git(
            dir,
            &[
                "push",
                "-q",
                &url(&follower, &token),
                "HEAD:refs/heads/main",
            ],
        )?;
        let head = git(dir, &["rev-parse", "HEAD"])?.trim().to_owned();
        // Acknowledged means served: the server that took the push has it.
        assert_eq!(
            remote_main(dir, &follower, &token)?.as_deref(),
            Some(head.as_str()),
            "round {round}: the pushed main is not served right after the push\n{}",
            cluster.logs()
        );
        acknowledged.push(head);
    }
    let last = acknowledged.last().cloned().context("pushed")?;

    // Every server serves the acknowledged ref, with its objects.
    for server in &cluster.servers {
        serves_main(dir, &server.addr, &token, &last, Duration::from_secs(30)).await?;
        let clone = tempfile::tempdir()?;
        git(
            clone.path(),
            &["clone", "-q", &url(&server.addr, &token), "copy"],
        )?;
        let copy = clone.path().join("copy");
        assert_eq!(git(&copy, &["rev-parse", "HEAD"])?.trim(), last);
        git(&copy, &["fsck", "--full", "--strict"])?;
        let bare = server.data_dir.join("git/demo/app.git");
        git(&bare, &["fsck", "--full"])?;
    }

    // A push from a stale base loses the compare-and-swap.
    let other = tempfile::tempdir()?;
    git(other.path(), &["init", "-q", "-b", "main", "."])?;
    git(
        other.path(),
        &["commit", "-q", "--allow-empty", "-m", "unrelated"],
    )?;
    let stale = git_output(
        other.path(),
        &["push", &url(&follower, &token), "HEAD:refs/heads/main"],
    )?;
    assert!(
        !stale.status.success(),
        "a non-fast-forward push was accepted"
    );

    // Kill the leader right after the acknowledgements: the survivors keep
    // every acknowledged push.
    cluster.server(leader).kill();
    let survivors: Vec<String> = cluster
        .servers
        .iter()
        .filter(|server| server.node_id != leader)
        .map(|server| server.addr.clone())
        .collect();
    for addr in &survivors {
        serves_main(dir, addr, &token, &last, Duration::from_secs(30)).await?;
    }
    // And the cluster still takes pushes.
    git(
        dir,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "after the leader died",
        ],
    )?;
    let survivor = &survivors[0];
    wait_for(
        "a push after the leader died",
        Duration::from_secs(30),
        || async {
            let branch = "HEAD:refs/heads/main";
            git(dir, &["push", "-q", &url(survivor, &token), branch]).is_ok()
        },
    )
    .await?;
    // The killed server catches up when it comes back.
    let token = cluster.token.clone();
    cluster.server(leader).restart()?;
    let head = git(dir, &["rev-parse", "HEAD"])?.trim().to_owned();
    let restarted = cluster.server(leader).addr.clone();
    serves_main(dir, &restarted, &token, &head, Duration::from_secs(60)).await?;
    Ok(())
}

/// Clients pushing their own branches at once, to every server: each push
/// lands the first time (none refused for a race inside the servers), and
/// every server then serves every branch.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_pushes_to_one_repository_all_land() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, ServerFlags::default()).await?;
    let first = cluster.servers[0].addr.clone();
    cluster
        .post_json(
            &first,
            "/api/v1/projects",
            serde_json::json!({"id": "demo"}),
        )
        .await?;
    cluster
        .post_json(
            &first,
            "/api/v1/projects/demo/repos",
            serde_json::json!({"name": "app"}),
        )
        .await?;
    let token = cluster.token.clone();
    let addrs: Vec<String> = cluster.servers.iter().map(|s| s.addr.clone()).collect();
    let work = tempfile::tempdir()?;
    let clients: Vec<_> = (0..8)
        .map(|client| {
            let dir = work.path().join(format!("c{client}"));
            let addr = addrs[client % addrs.len()].clone();
            let token = token.clone();
            std::thread::spawn(move || -> anyhow::Result<String> {
                std::fs::create_dir_all(&dir)?;
                git(&dir, &["init", "-q", "-b", "main", "."])?;
                for round in 0..3 {
                    std::fs::write(dir.join("f"), format!("{client} {round}\n"))?;
                    git(&dir, &["add", "f"])?;
                    git(&dir, &["commit", "-q", "-m", &format!("{client} {round}")])?;
                    let branch = format!("HEAD:refs/heads/c{client}");
                    git(&dir, &["push", "-q", &url(&addr, &token), &branch])?;
                }
                Ok(git(&dir, &["rev-parse", "HEAD"])?.trim().to_owned())
            })
        })
        .collect();
    let mut heads = Vec::new();
    for client in clients {
        heads.push(client.join().expect("client thread")?);
    }
    for addr in &addrs {
        let probe = work.path().to_path_buf();
        let listing = git(&probe, &["ls-remote", &url(addr, &token)])?;
        for (client, head) in heads.iter().enumerate() {
            assert!(
                listing.contains(&format!("{head}\trefs/heads/c{client}")),
                "{addr} lacks c{client} at {head}:\n{listing}"
            );
        }
    }
    Ok(())
}
