//! Pull requests on a real 3-server cluster, with the real `git` on both
//! ends and the real CLI: a pull request's diff is `git diff base...head`;
//! it merges by fast-forward and by merge commit (the base moving by
//! compare-and-swap through Raft, served by every server); a base that
//! moves into a conflict makes it "needs merge" with the files named and
//! refuses the merge; bad numbers, branches and repeats are refused.

use std::path::Path;

use flotilla_tests::git::{cli, cli_ok, git};
use flotilla_tests::{ServerFlags, TestCluster};
use serde_json::{json, Value};

/// The `+`/`-` lines of a unified diff (not the file headers).
fn changed_lines(diff: &str) -> Vec<String> {
    diff.lines()
        .filter(|line| {
            (line.starts_with('+') && !line.starts_with("+++"))
                || (line.starts_with('-') && !line.starts_with("---"))
        })
        .map(str::to_owned)
        .collect()
}

fn commit_file(dir: &Path, file: &str, content: &str, message: &str) -> anyhow::Result<String> {
    std::fs::write(dir.join(file), content)?;
    git(dir, &["add", file])?;
    git(dir, &["commit", "-q", "-m", message])?;
    Ok(git(dir, &["rev-parse", "HEAD"])?.trim().to_owned())
}

fn lines(changed: usize, text: &str) -> String {
    (1..=10)
        .map(|n| {
            if n == changed {
                format!("{text}\n")
            } else {
                format!("line {n}\n")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn pull_requests_diff_merge_and_detect_conflicts() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, ServerFlags(vec![])).await?;
    let addr = cluster.servers[1].addr.clone();
    let token = cluster.token.clone();
    let http = &cluster.http;
    cluster
        .post_json(&addr, "/api/v1/projects", json!({"id": "demo"}))
        .await?;
    cluster
        .post_json(&addr, "/api/v1/projects/demo/repos", json!({"name": "app"}))
        .await?;
    let dir = tempfile::tempdir()?;
    let work = dir.path();
    let remote = format!("http://op:{token}@{addr}/git/demo/app");
    git(work, &["init", "-q", "-b", "main"])?;
    git(work, &["remote", "add", "origin", &remote])?;
    commit_file(work, "lib.txt", &lines(0, ""), "seed")?;
    git(work, &["push", "-q", "origin", "main"])?;

    // 1: a feature branch, fast-forward.
    git(work, &["checkout", "-q", "-b", "feature"])?;
    commit_file(work, "lib.txt", &lines(2, "two"), "change line 2")?;
    let feature = commit_file(work, "new.txt", "new\n", "add new.txt")?;
    git(work, &["push", "-q", "origin", "feature"])?;
    let opened = cli_ok(
        &addr,
        &token,
        &[
            "pr", "create", "demo/app", "--source", "feature", "--title", "Feature",
        ],
    )?;
    assert!(opened.contains("demo/app#1"), "{opened}");
    let base = format!("http://{addr}/api/v1/projects/demo/repos/app/pulls");
    let pull: Value = http
        .get(format!("{base}/1"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(pull["mergeable"], "clean", "{pull}");
    assert_eq!(pull["fast_forward"], true, "{pull}");
    assert_eq!(pull["head"], feature.as_str());
    let files: Vec<(String, u64, u64)> = pull["files"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["path"].as_str().unwrap_or_default().to_owned(),
                f["additions"].as_u64().unwrap_or(99),
                f["deletions"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(
        files,
        vec![("lib.txt".to_owned(), 1, 1), ("new.txt".to_owned(), 1, 0)]
    );
    // The diff is git's own.
    let ours = cli_ok(&addr, &token, &["pr", "diff", "demo/app", "1"])?;
    let theirs = git(work, &["diff", "main...feature"])?;
    assert_eq!(changed_lines(&ours), changed_lines(&theirs), "{ours}");
    let merged = cli_ok(
        &addr,
        &token,
        &["pr", "merge", "demo/app", "1", "--style", "fast-forward"],
    )?;
    assert!(merged.contains(&feature), "{merged}");
    for server in &cluster.servers {
        let url = format!("http://op:{token}@{}/git/demo/app", server.addr);
        flotilla_tests::wait_for(
            "every server to serve the merged main",
            std::time::Duration::from_secs(20),
            || {
                let url = url.clone();
                let feature = feature.clone();
                async move {
                    git(work, &["ls-remote", &url, "refs/heads/main"])
                        .is_ok_and(|listing| listing.starts_with(&feature))
                }
            },
        )
        .await?;
    }

    // 2: the base moves without conflict: a merge commit.
    git(work, &["checkout", "-q", "main"])?;
    git(work, &["pull", "-q", "--ff-only", "origin", "main"])?;
    git(work, &["checkout", "-q", "-b", "second"])?;
    let second = commit_file(work, "other.txt", "other\n", "add other.txt")?;
    git(work, &["push", "-q", "origin", "second"])?;
    cli_ok(
        &addr,
        &token,
        &[
            "pr", "create", "demo/app", "--source", "second", "--title", "Second",
        ],
    )?;
    git(work, &["checkout", "-q", "main"])?;
    let moved = commit_file(work, "lib.txt", &lines(9, "nine"), "main moves")?;
    git(work, &["push", "-q", "origin", "main"])?;
    let show = cli_ok(&addr, &token, &["pr", "show", "demo/app", "2"])?;
    assert!(
        show.contains("merges cleanly") && !show.contains("fast-forward"),
        "{show}"
    );
    cli_ok(&addr, &token, &["pr", "merge", "demo/app", "2"])?;
    git(work, &["fetch", "-q", "origin"])?;
    let parents = git(work, &["rev-list", "--parents", "-n", "1", "origin/main"])?;
    let parents: Vec<&str> = parents.split_whitespace().skip(1).collect();
    assert_eq!(parents, vec![moved.as_str(), second.as_str()]);
    let pull: Value = http
        .get(format!("{base}/2"))
        .bearer_auth(&token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(pull["state"], "merged", "{pull}");

    // 3: the base moves into a conflict: needs merge, files named, merge refused.
    git(work, &["checkout", "-q", "-B", "main", "origin/main"])?;
    git(work, &["checkout", "-q", "-b", "third"])?;
    commit_file(work, "lib.txt", &lines(5, "five from third"), "third")?;
    git(work, &["push", "-q", "origin", "third"])?;
    cli_ok(
        &addr,
        &token,
        &[
            "pr", "create", "demo/app", "--source", "third", "--title", "Third",
        ],
    )?;
    git(work, &["checkout", "-q", "main"])?;
    commit_file(
        work,
        "lib.txt",
        &lines(5, "five from main"),
        "main conflicts",
    )?;
    git(work, &["push", "-q", "origin", "main"])?;
    let show = cli_ok(&addr, &token, &["pr", "show", "demo/app", "3"])?;
    assert!(
        show.contains("needs a merge of main: conflicts in lib.txt"),
        "{show}"
    );
    let refused = cli(&addr, &token, &["pr", "merge", "demo/app", "3"])?;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("lib.txt"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    cli_ok(&addr, &token, &["pr", "close", "demo/app", "3"])?;
    let again = cli(&addr, &token, &["pr", "merge", "demo/app", "3"])?;
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not open"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let listed = cli_ok(&addr, &token, &["pr", "list", "demo/app"])?;
    for expected in ["merged", "closed", "Feature", "Third"] {
        assert!(listed.contains(expected), "{listed}");
    }

    // Bad input.
    for (path, status) in [
        (format!("{base}/0"), 400),
        (format!("{base}/x"), 400),
        (format!("{base}/99"), 404),
        (
            format!("http://{addr}/api/v1/projects/demo/repos/nope/pulls"),
            404,
        ),
    ] {
        let answer = http.get(&path).bearer_auth(&token).send().await?;
        assert_eq!(answer.status().as_u16(), status, "{path}");
    }
    for (body, status) in [
        (json!({"title": "x", "source": "no-such-branch"}), 404),
        (json!({"title": "x", "source": "bad..name"}), 400),
        (json!({"title": "x", "source": "main"}), 400),
        (json!({"title": "", "source": "third"}), 400),
        (json!({"title": "x", "source": "third", "extra": 1}), 400),
    ] {
        let answer = http
            .post(&base)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        assert_eq!(answer.status().as_u16(), status, "{body}");
    }
    cli_ok(
        &addr,
        &token,
        &[
            "pr", "create", "demo/app", "--source", "third", "--title", "Again",
        ],
    )?;
    let twice = cli(
        &addr,
        &token,
        &[
            "pr", "create", "demo/app", "--source", "third", "--title", "Twice",
        ],
    )?;
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("already proposes"),
        "{}",
        String::from_utf8_lossy(&twice.stderr)
    );
    Ok(())
}
