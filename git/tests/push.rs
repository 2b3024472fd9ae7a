//! Real `git` clients pushing through the router, the proc-receive hook binary and the
//! memory ledger: who may push what, and what git prints when refused.

mod common;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use common::{Harness, HarnessOptions, DESKTOP_T1, DESKTOP_T2, OPERATOR};
use flotilla_git::{LedgerError, MemoryLedger, RefLedger, RefOutcome, RefUpdate, RepoId};

#[tokio::test]
async fn operator_clones_commits_and_pushes() -> Result<()> {
    let harness = Harness::start().await?;
    let (work, commit) = harness.seed_main().await?;
    assert_eq!(
        harness.server_ref("refs/heads/main").await?,
        Some(commit.clone())
    );
    let committed = harness.ledger.committed().await;
    assert_eq!(committed.len(), 1, "one push went through the ledger");
    assert_eq!(committed[0].updates[0].name.as_str(), "refs/heads/main");

    // A second push fast-forwards; a fresh clone sees it.
    let second = harness.commit(&work, "README", "hello again\n").await?;
    harness
        .git_ok(&work, &["push", "--quiet", "origin", "HEAD:main"])
        .await?;
    assert_eq!(
        harness.server_ref("refs/heads/main").await?,
        Some(second.clone())
    );
    let fresh = harness.clone(OPERATOR, "fresh").await?;
    let head = harness.git_ok(&fresh, &["rev-parse", "HEAD"]).await?;
    assert_eq!(head.stdout.trim(), second);
    // Operators may also force-push and tag.
    harness
        .git_ok(&work, &["reset", "--hard", "--quiet", &commit])
        .await?;
    harness
        .git_ok(
            &work,
            &["push", "--quiet", "--force", "origin", "HEAD:main"],
        )
        .await?;
    harness.git_ok(&work, &["tag", "v1"]).await?;
    harness
        .git_ok(&work, &["push", "--quiet", "origin", "v1"])
        .await?;
    assert_eq!(
        harness.server_ref("refs/heads/main").await?,
        Some(commit.clone())
    );
    assert_eq!(harness.server_ref("refs/tags/v1").await?, Some(commit));
    harness.store.fsck(&harness.repo()).await?;
    Ok(())
}

#[tokio::test]
async fn desktop_pushes_its_task_branch_and_sub_branches() -> Result<()> {
    let harness = Harness::start().await?;
    harness.seed_main().await?;
    let work = harness.clone(DESKTOP_T1, "desktop").await?;
    let commit = harness.commit(&work, "spec.md", "# spec\n").await?;
    harness
        .git_ok(&work, &["push", "--quiet", "origin", "HEAD:flotilla/t1"])
        .await?;
    assert_eq!(
        harness.server_ref("refs/heads/flotilla/t1").await?,
        Some(commit.clone())
    );
    // git cannot hold flotilla/t1 and flotilla/t1/spike at once: refused up front.
    let nested = harness
        .git(&work, &["push", "origin", "HEAD:flotilla/t1/spike"])
        .await?;
    assert!(!nested.success);
    assert!(
        nested
            .stderr
            .contains("flotilla/t1/spike cannot be created while flotilla/t1 exists"),
        "{}",
        nested.stderr
    );

    // Task t2 works in branches under its name: scratch, so force and delete are fine.
    let other = harness.clone(DESKTOP_T2, "other").await?;
    harness.commit(&other, "one.txt", "1\n").await?;
    harness.commit(&other, "two.txt", "2\n").await?;
    harness
        .git_ok(
            &other,
            &["push", "--quiet", "origin", "HEAD:flotilla/t2/spike"],
        )
        .await?;
    harness
        .git_ok(
            &other,
            &[
                "push",
                "--quiet",
                "--force",
                "origin",
                "HEAD~1:flotilla/t2/spike",
            ],
        )
        .await?;
    let rewound = harness.git_ok(&other, &["rev-parse", "HEAD~1"]).await?;
    assert_eq!(
        harness.server_ref("refs/heads/flotilla/t2/spike").await?,
        Some(rewound.stdout.trim().to_owned())
    );
    harness
        .git_ok(&other, &["push", "--quiet", "origin", ":flotilla/t2/spike"])
        .await?;
    assert_eq!(
        harness.server_ref("refs/heads/flotilla/t2/spike").await?,
        None
    );
    harness.store.fsck(&harness.repo()).await?;
    Ok(())
}

#[tokio::test]
async fn desktop_is_refused_main_other_tasks_and_force_pushes() -> Result<()> {
    let harness = Harness::start().await?;
    let (_, main_commit) = harness.seed_main().await?;
    let other = harness.clone(DESKTOP_T2, "other").await?;
    harness.commit(&other, "t2.txt", "t2\n").await?;
    harness
        .git_ok(&other, &["push", "--quiet", "origin", "HEAD:flotilla/t2"])
        .await?;
    let t2_commit = harness.server_ref("refs/heads/flotilla/t2").await?;

    let work = harness.clone(DESKTOP_T1, "desktop").await?;
    let first = harness.commit(&work, "a.txt", "a\n").await?;
    harness
        .git_ok(&work, &["push", "--quiet", "origin", "HEAD:flotilla/t1"])
        .await?;

    let to_main = harness.git(&work, &["push", "origin", "HEAD:main"]).await?;
    assert!(!to_main.success);
    assert!(
        to_main
            .stderr
            .contains("pushing to main is not allowed from a desktop: open a pull request"),
        "{}",
        to_main.stderr
    );
    assert_eq!(
        harness.server_ref("refs/heads/main").await?,
        Some(main_commit)
    );

    let to_other = harness
        .git(&work, &["push", "--force", "origin", "HEAD:flotilla/t2"])
        .await?;
    assert!(!to_other.success);
    assert!(
        to_other
            .stderr
            .contains("flotilla/t2 is not this desktop's branch"),
        "{}",
        to_other.stderr
    );
    assert_eq!(
        harness.server_ref("refs/heads/flotilla/t2").await?,
        t2_commit
    );

    // Rewrite the task branch: amend, then force-push.
    harness
        .git_ok(&work, &["commit", "--quiet", "--amend", "-m", "rewritten"])
        .await?;
    let forced = harness
        .git(&work, &["push", "--force", "origin", "HEAD:flotilla/t1"])
        .await?;
    assert!(!forced.success);
    assert!(
        forced
            .stderr
            .contains("force-pushing flotilla/t1 is not allowed from a desktop"),
        "{}",
        forced.stderr
    );
    let deleted = harness
        .git(&work, &["push", "origin", ":flotilla/t1"])
        .await?;
    assert!(!deleted.success);
    assert!(
        deleted
            .stderr
            .contains("deleting flotilla/t1 is not allowed"),
        "{}",
        deleted.stderr
    );
    assert_eq!(
        harness.server_ref("refs/heads/flotilla/t1").await?,
        Some(first)
    );

    let tag = harness
        .git(&work, &["push", "origin", "HEAD:refs/tags/v9"])
        .await?;
    assert!(!tag.success);
    assert!(
        tag.stderr.contains("tags are made by operators"),
        "{}",
        tag.stderr
    );
    harness.store.fsck(&harness.repo()).await?;
    Ok(())
}

#[tokio::test]
async fn wrong_or_missing_token_fails_authentication() -> Result<()> {
    let harness = Harness::start().await?;
    harness.seed_main().await?;
    let parent = harness.work_dir("");
    let wrong = harness
        .git(
            &parent,
            &["clone", &harness.url("not-a-token", "p/r"), "wrong"],
        )
        .await?;
    assert!(!wrong.success);
    assert!(
        wrong.stderr.contains("Authentication failed"),
        "{}",
        wrong.stderr
    );
    let missing = harness
        .git(&parent, &["clone", &harness.plain_url("p/r"), "missing"])
        .await?;
    assert!(!missing.success);
    // git asked for credentials (the 401 carried WWW-Authenticate) and had no way to.
    assert!(
        missing.stderr.contains("could not read Username")
            || missing.stderr.contains("Authentication failed"),
        "{}",
        missing.stderr
    );
    Ok(())
}

#[tokio::test]
async fn protocol_v2_and_v0_clones_work() -> Result<()> {
    let harness = Harness::start().await?;
    let (_, commit) = harness.seed_main().await?;
    let parent = harness.work_dir("");
    for (version, name) in [("2", "v2"), ("0", "v0")] {
        let run = harness
            .git_env(
                &parent,
                &[
                    "-c",
                    &format!("protocol.version={version}"),
                    "clone",
                    &harness.url(OPERATOR, "p/r.git"),
                    name,
                ],
                &[("GIT_TRACE_PACKET", "1")],
            )
            .await?;
        assert!(run.success, "{}", run.stderr);
        let spoke_v2 = run.stderr.contains("< version 2");
        assert_eq!(
            spoke_v2,
            version == "2",
            "protocol {version}: {}",
            run.stderr
        );
        let head = harness
            .git_ok(&parent.join(name), &["rev-parse", "HEAD"])
            .await?;
        assert_eq!(head.stdout.trim(), commit);
    }
    Ok(())
}

/// Holds every compare-and-swap until two are waiting, so two pushes race at the
/// ledger rather than at the client's own fast-forward check.
struct BarrierLedger {
    inner: Arc<MemoryLedger>,
    barrier: tokio::sync::Barrier,
}

#[async_trait]
impl RefLedger for BarrierLedger {
    async fn compare_and_swap(
        &self,
        repo: &RepoId,
        updates: Vec<RefUpdate>,
    ) -> Result<Vec<RefOutcome>, LedgerError> {
        tokio::time::timeout(Duration::from_secs(60), self.barrier.wait())
            .await
            .map_err(|elapsed| LedgerError::Unavailable(Box::new(elapsed)))?;
        self.inner.compare_and_swap(repo, updates).await
    }
}

#[tokio::test]
async fn concurrent_pushes_from_the_same_old_value_exactly_one_wins() -> Result<()> {
    let harness = Harness::start_with(HarnessOptions {
        receive_pack_body_limit: None,
        wrap_ledger: Some(Box::new(|inner| {
            Arc::new(BarrierLedger {
                inner,
                barrier: tokio::sync::Barrier::new(2),
            })
        })),
    })
    .await?;
    harness.create_repo().await?;
    // Seed without the barrier's partner: push main via the store's own path.
    let seed = harness.work_dir("seed");
    harness.git_ok(&seed, &["init", "--quiet"]).await?;
    let base = harness.commit(&seed, "README", "base\n").await?;
    harness
        .store
        .fetch_objects_from(
            &harness.repo(),
            &flotilla_git::PeerRemote {
                url: seed.display().to_string(),
                authorization: None,
            },
            &[flotilla_git::ObjectId::new(base.clone())?],
        )
        .await?;
    harness
        .ledger
        .compare_and_swap(
            &harness.repo(),
            vec![RefUpdate {
                name: flotilla_git::RefName::branch("main")?,
                old: None,
                new: Some(flotilla_git::ObjectId::new(base.clone())?),
            }],
        )
        .await?;

    let alice = harness.clone(OPERATOR, "alice").await?;
    let bob = harness.clone(OPERATOR, "bob").await?;
    let alice_commit = harness.commit(&alice, "alice.txt", "a\n").await?;
    let bob_commit = harness.commit(&bob, "bob.txt", "b\n").await?;
    let (alice_push, bob_push) = tokio::join!(
        harness.git(&alice, &["push", "origin", "HEAD:main"]),
        harness.git(&bob, &["push", "origin", "HEAD:main"]),
    );
    let (alice_push, bob_push) = (alice_push?, bob_push?);
    assert!(
        alice_push.success != bob_push.success,
        "exactly one wins:\n{}\n{}",
        alice_push.stderr,
        bob_push.stderr
    );
    let (winner, loser) = if alice_push.success {
        (alice_commit, &bob_push)
    } else {
        (bob_commit, &alice_push)
    };
    assert!(
        loser.stderr.contains("fetch first: main is at"),
        "{}",
        loser.stderr
    );
    assert_eq!(harness.server_ref("refs/heads/main").await?, Some(winner));
    harness.store.fsck(&harness.repo()).await?;
    Ok(())
}
