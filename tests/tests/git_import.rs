//! Importing and mirroring, with the real `git` on every end: a repository
//! imported from a `file://` upstream and from a second git HTTP server
//! that wants a token (a plain `git http-backend` with a fixed token stands
//! in for GitHub) holds every branch and tag of its upstream on all three
//! servers; a wrong token is refused with the upstream's reason; merges to
//! main reach the upstream through the mirror, and an upstream that moved
//! on its own makes the mirror say it fails. The upstream token appears in
//! no answer, no log and no file of any server's data directory.

use std::path::Path;
use std::time::Duration;

use flotilla_tests::git::{cli, git};
use flotilla_tests::git_http::PlainGitServer;
use flotilla_tests::{wait_for, ServerFlags, TestCluster};
use serde_json::Value;

const TOKEN: &str = "upstream-secret-4711-do-not-leak";

/// `git ls-remote` as sorted `(ref, commit)` lines, peeled tags left out.
fn refs(dir: &Path, url: &str) -> anyhow::Result<Vec<String>> {
    let mut lines: Vec<String> = git(dir, &["ls-remote", url])?
        .lines()
        .filter(|line| !line.ends_with("^{}") && !line.ends_with("HEAD"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

/// A bare upstream with two branches and an annotated tag.
fn make_upstream(root: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let work = root.join(format!("{name}-work"));
    std::fs::create_dir_all(&work)?;
    git(&work, &["init", "-q", "-b", "main"])?;
    std::fs::write(work.join("README"), format!("{name}\n"))?;
    git(&work, &["add", "README"])?;
    git(&work, &["commit", "-q", "-m", "first"])?;
    git(&work, &["tag", "-a", "v1", "-m", "release 1"])?;
    git(&work, &["checkout", "-q", "-b", "feature"])?;
    std::fs::write(work.join("feature.txt"), "feature\n")?;
    git(&work, &["add", "feature.txt"])?;
    git(&work, &["commit", "-q", "-m", "feature"])?;
    git(&work, &["checkout", "-q", "main"])?;
    let bare = root.join(format!("{name}.git"));
    git(
        root,
        &[
            "clone",
            "-q",
            "--bare",
            &work.display().to_string(),
            &bare.display().to_string(),
        ],
    )?;
    Ok(bare)
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                if bytes.windows(needle.len()).any(|window| window == needle) {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn imports_from_file_and_token_upstreams_and_mirrors_main_back() -> anyhow::Result<()> {
    let cluster = TestCluster::start(3, ServerFlags(vec![])).await?;
    let addr = cluster.servers[0].addr.clone();
    let token = cluster.token.clone();
    let dir = tempfile::tempdir()?;
    let root = dir.path();
    cluster
        .post_json(&addr, "/api/v1/projects", serde_json::json!({"id": "demo"}))
        .await?;
    let hosted = |server: &str, name: &str| format!("http://op:{token}@{server}/git/demo/{name}");

    // From a file:// upstream.
    let file_upstream = make_upstream(root, "file-up")?;
    let file_url = format!("file://{}", file_upstream.display());
    let imported = cli(
        &addr,
        &token,
        &["repo", "import", "demo/fromfile", &file_url],
    )?;
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let expected = refs(root, &file_url)?;
    assert_eq!(expected.len(), 3, "main, feature, v1: {expected:?}");
    for server in &cluster.servers {
        let url = hosted(&server.addr, "fromfile");
        wait_for(
            "every server to serve the import",
            Duration::from_secs(20),
            || {
                let url = url.clone();
                let expected = expected.clone();
                async move { refs(root, &url).is_ok_and(|found| found == expected) }
            },
        )
        .await?;
    }
    let clone = root.join("clone-file");
    git(
        root,
        &[
            "clone",
            "-q",
            &hosted(&addr, "fromfile"),
            &clone.display().to_string(),
        ],
    )?;
    git(&clone, &["fsck", "--full"])?;
    git(&clone, &["cat-file", "-t", "v1"]).map(|kind| assert_eq!(kind.trim(), "tag"))?;

    // From an HTTP upstream that wants a token.
    let served = root.join("served");
    std::fs::create_dir_all(&served)?;
    let http_upstream = make_upstream(&served, "up")?;
    let upstream = PlainGitServer::start(served.clone(), Some(TOKEN.to_owned())).await?;
    let http_url = format!("http://{}/git/up.git", upstream.addr);
    let wrong = root.join("wrong.token");
    std::fs::write(&wrong, "not-the-token\n")?;
    let refused = cli(
        &addr,
        &token,
        &[
            "repo",
            "import",
            "demo/refused",
            &http_url,
            "--token-file",
            &wrong.display().to_string(),
        ],
    )?;
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "a wrong token imports nothing");
    assert!(
        said.contains("Authentication failed")
            || said.contains("401")
            || said.contains("could not read"),
        "{said}"
    );
    assert!(
        !said.contains("not-the-token"),
        "the token is not echoed: {said}"
    );
    let good = root.join("good.token");
    std::fs::write(&good, format!("{TOKEN}\n"))?;
    let imported = cli(
        &addr,
        &token,
        &[
            "repo",
            "import",
            "demo/fromhttp",
            &http_url,
            "--token-file",
            &good.display().to_string(),
        ],
    )?;
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let upstream_url = format!("http://x:{TOKEN}@{}/git/up.git", upstream.addr);
    let expected = refs(root, &upstream_url)?;
    assert_eq!(refs(root, &hosted(&addr, "fromhttp"))?, expected);

    // A merge to main reaches the upstream.
    let work = root.join("work");
    git(
        root,
        &[
            "clone",
            "-q",
            &hosted(&cluster.servers[1].addr, "fromhttp"),
            &work.display().to_string(),
        ],
    )?;
    std::fs::write(work.join("change.txt"), "landed\n")?;
    git(&work, &["add", "change.txt"])?;
    git(&work, &["commit", "-q", "-m", "landed"])?;
    git(&work, &["push", "-q", "origin", "main"])?;
    let landed = git(&work, &["rev-parse", "HEAD"])?.trim().to_owned();
    wait_for(
        "the mirror to push main upstream",
        Duration::from_secs(30),
        || {
            let url = upstream_url.clone();
            let landed = landed.clone();
            async move {
                git(root, &["ls-remote", &url, "refs/heads/main"])
                    .is_ok_and(|found| found.starts_with(&landed))
            }
        },
    )
    .await?;
    let repo_url = format!("http://{addr}/api/v1/projects/demo/repos/fromhttp");
    wait_for(
        "the mirror to record its push",
        Duration::from_secs(20),
        || {
            let http = cluster.http.clone();
            let (url, token, landed) = (repo_url.clone(), token.clone(), landed.clone());
            async move {
                let Ok(answer) = http.get(&url).bearer_auth(&token).send().await else {
                    return false;
                };
                let repo: Value = answer.json().await.unwrap_or_default();
                repo["upstream"]["pushed"] == landed.as_str() && repo["mirror_behind"] == false
            }
        },
    )
    .await?;

    // The upstream moves on its own: the mirror cannot fast-forward it and says so.
    let outside = root.join("outside");
    git(
        root,
        &["clone", "-q", &upstream_url, &outside.display().to_string()],
    )?;
    std::fs::write(outside.join("outside.txt"), "elsewhere\n")?;
    git(&outside, &["add", "outside.txt"])?;
    git(&outside, &["commit", "-q", "-m", "outside"])?;
    git(&outside, &["push", "-q", "origin", "main"])?;
    std::fs::write(work.join("second.txt"), "second\n")?;
    git(&work, &["add", "second.txt"])?;
    git(&work, &["commit", "-q", "-m", "second"])?;
    git(&work, &["push", "-q", "origin", "main"])?;
    wait_for(
        "the mirror to report the failure",
        Duration::from_secs(30),
        || {
            let http = cluster.http.clone();
            let (url, token) = (repo_url.clone(), token.clone());
            async move {
                let Ok(answer) = http.get(&url).bearer_auth(&token).send().await else {
                    return false;
                };
                let repo: Value = answer.json().await.unwrap_or_default();
                repo["upstream"]["error"].is_string() && repo["mirror_behind"] == true
            }
        },
    )
    .await?;
    let show = cli(&addr, &token, &["repo", "show", "demo/fromhttp"])?;
    let shown = String::from_utf8_lossy(&show.stdout);
    assert!(shown.contains("mirror failing"), "{shown}");

    // The token is nowhere: answers, logs, data directories.
    let answer = cluster
        .http
        .get(&repo_url)
        .bearer_auth(&token)
        .send()
        .await?
        .text()
        .await?;
    assert!(!answer.contains(TOKEN), "{answer}");
    assert!(!shown.contains(TOKEN));
    for server in &cluster.servers {
        assert!(
            !server.log().contains(TOKEN),
            "server {} logged the token",
            server.node_id
        );
        let leaked = files_containing(&server.data_dir, TOKEN.as_bytes());
        assert!(leaked.is_empty(), "the token is in {leaked:?}");
    }
    drop(http_upstream);
    upstream.stop().await?;
    Ok(())
}
