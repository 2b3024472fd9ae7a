//! A real `git` inside a real desktop sandbox, as root (CI runs it): the
//! desktop clones its task's repository through the servers' desktop door
//! with the credential its node agent wrote into its `/etc/gitconfig`,
//! commits and pushes its task branch; pushing `main` or another task's
//! branch is refused with the reason git prints. The door takes desktop
//! tokens only, a desktop cannot reach the servers' client port, and a
//! token dies with its desktop.

use flotilla_tests::git::{described, git, git_output};
use std::time::Duration;

use flotilla_tests::desktop::in_desktop;
use flotilla_tests::{netns, AgentProcess, ServerFlags, TestCluster};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread")]
async fn a_desktop_pushes_only_its_task_branch_with_its_own_credential() -> anyhow::Result<()> {
    if !netns::available()? {
        return Ok(());
    }
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
    // The operator seeds main from the host, on the client port.
    let host = tempfile::tempdir()?;
    let seed = host.path().join("seed");
    std::fs::create_dir(&seed)?;
    git(&seed, &["init", "-q", "-b", "main"])?;
    std::fs::write(seed.join("README"), "hello\n")?;
    git(&seed, &["add", "README"])?;
    git(&seed, &["commit", "-q", "-m", "seed"])?;
    let operator_url = format!("http://op:{token}@{server}/git/demo/app");
    git(&seed, &["push", "-q", &operator_url, "main"])?;

    let data = cluster.root.path().join("agent");
    let log = cluster.root.path().join("agent.log");
    let _agent = AgentProcess::start_plain(&cluster, "git-node", &data, &log)?;
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let base = format!("http://{server}/api/v1");
    let http = &cluster.http;
    let task: Value = cluster
        .post_json(
            &server,
            "/api/v1/tasks",
            json!({"title": "git", "column": "planning", "repository": "demo/app"}),
        )
        .await?;
    let task_id = task["id"].as_str().unwrap_or_default().to_owned();
    let desktop = flotilla_tests::wait_for_running_desktop(http, &base, &token, &task_id)
        .await
        .map_err(|error| anyhow::anyhow!("{error}\n{}\n{}", agent_log(), cluster.logs()))?;

    // Clone, commit and push the task branch, all inside the desktop.
    let work = in_desktop(
        &server,
        &token,
        &desktop,
        r#"set -e
cd "$HOME"
git clone -q "$FLOTILLA_GIT_REMOTE" work
cd work
git checkout -q -b "$FLOTILLA_GIT_BRANCH"
echo from the desktop > notes.txt
git add notes.txt
git commit -q -m "desktop work"
git push -q origin "$FLOTILLA_GIT_BRANCH" 2>&1
git rev-parse HEAD"#,
    )
    .await?;
    assert_eq!(
        work.status.code(),
        Some(0),
        "{}\n{}",
        described(&work),
        agent_log()
    );
    let pushed = String::from_utf8_lossy(&work.stdout).trim().to_owned();
    let branch = format!("refs/heads/flotilla/{task_id}");
    let listing = git(host.path(), &["ls-remote", &operator_url, &branch])?;
    assert_eq!(
        listing.split_whitespace().next(),
        Some(pushed.as_str()),
        "the task branch is committed at the desktop's commit"
    );

    // main, another task's branch and a tag: refused, with the reason.
    for (target, reason) in [
        ("HEAD:main", "pushing to main is not allowed from a desktop"),
        ("HEAD:refs/heads/flotilla/other-task", "flotilla/"),
        ("HEAD:refs/tags/v1", "tags are made by operators"),
    ] {
        let script = format!("cd \"$HOME/work\" && git push origin {target} 2>&1");
        let refused = in_desktop(&server, &token, &desktop, &script).await?;
        let said = described(&refused);
        assert_ne!(refused.status.code(), Some(0), "{target}: {said}");
        assert!(said.contains(reason), "{target}: {said}");
    }
    let main = git(
        host.path(),
        &["ls-remote", &operator_url, "refs/heads/main"],
    )?;
    assert!(!main.contains(&pushed), "main did not move: {main}");

    // The desktop reaches its door, not the client port (Raft, the API).
    let client_port = server.rsplit(':').next().unwrap_or_default().to_owned();
    let probe = format!(
        "gw=$(echo \"$FLOTILLA_CONTROL_PLANE\" | cut -d, -f1 | cut -d: -f1); timeout 3 bash -c \"echo > /dev/tcp/$gw/{client_port}\" && echo reached || echo blocked"
    );
    let reach = in_desktop(&server, &token, &desktop, &probe).await?;
    assert_eq!(
        String::from_utf8_lossy(&reach.stdout).trim(),
        "blocked",
        "{}",
        described(&reach)
    );

    // The door takes desktop tokens only; the client port takes no desktop
    // token.
    let credential = in_desktop(
        &server,
        &token,
        &desktop,
        "git config --system --get-regexp 'credential.*helper' | grep -o 'flo_desk_[A-Za-z0-9_.-]*' | head -1",
    )
    .await?;
    let desktop_token = String::from_utf8_lossy(&credential.stdout)
        .trim()
        .to_owned();
    assert!(
        desktop_token.starts_with("flo_desk_"),
        "{}",
        described(&credential)
    );
    let operator_on_door = git_output(
        host.path(),
        &[
            "ls-remote",
            &format!("http://op:{token}@{door}/git/demo/app"),
        ],
    )?;
    assert!(
        !operator_on_door.status.success(),
        "{}",
        described(&operator_on_door)
    );
    let desktop_on_client = git_output(
        host.path(),
        &[
            "ls-remote",
            &format!("http://d:{desktop_token}@{server}/git/demo/app"),
        ],
    )?;
    assert!(
        !desktop_on_client.status.success(),
        "{}",
        described(&desktop_on_client)
    );
    let desktop_url = format!("http://d:{desktop_token}@{door}/git/demo/app");
    git(host.path(), &["ls-remote", &desktop_url])?;

    // The task leaves the board's working columns: its desktop stops and
    // its token is dead.
    cluster
        .post_json(
            &server,
            &format!("/api/v1/tasks/{task_id}/move"),
            json!({"column": "done"}),
        )
        .await?;
    flotilla_tests::wait_for(
        "the desktop token to expire",
        Duration::from_secs(30),
        || {
            let host = host.path().to_owned();
            let url = desktop_url.clone();
            async move {
                git_output(&host, &["ls-remote", &url])
                    .map(|output| !output.status.success())
                    .unwrap_or(false)
            }
        },
    )
    .await?;
    let expired = git_output(host.path(), &["ls-remote", &desktop_url])?;
    assert!(
        String::from_utf8_lossy(&expired.stderr).contains("Authentication failed")
            || String::from_utf8_lossy(&expired.stderr).contains("401"),
        "{}",
        described(&expired)
    );
    Ok(())
}
