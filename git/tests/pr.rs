//! Pull requests against real git: the diff agrees with `git diff --numstat`, conflicts
//! name their files, and each merge style produces the right commit and tree.

mod common;

use std::path::Path;

use anyhow::Result;
use common::{store_config, Harness};
use flotilla_git::pr::{self, FileStatus, LineKind, MergeStyle, Mergeability, PrError, Signature};
use flotilla_git::{
    MemoryLedger, ObjectId, PeerRemote, RefLedger, RefName, RefOutcome, RepoId, RepoStore,
};
use std::sync::Arc;

struct Scenario {
    harness: Harness,
    store: Arc<RepoStore>,
    repo: RepoId,
    work: std::path::PathBuf,
    base: ObjectId,
}

/// A scratch repository with a base commit, imported into a fresh store.
async fn scenario() -> Result<Scenario> {
    let harness = Harness::start().await?;
    let store = Arc::new(RepoStore::new(
        harness.dir.path().join("pr-repos"),
        store_config(),
    ));
    let repo = RepoId::new("p", "pr")?;
    store.create(&repo).await?;
    let work = harness.work_dir("scratch");
    harness
        .git_ok(&work, &["init", "--quiet", "-b", "main"])
        .await?;
    std::fs::write(
        work.join("keep.txt"),
        "one\ntwo\nthree\nfour\nfive\nsix\nseven\n",
    )?;
    std::fs::write(work.join("gone.txt"), "bye\n")?;
    std::fs::write(
        work.join("moved.txt"),
        "a long enough line to be recognised as a rename\nand another\n",
    )?;
    harness.git_ok(&work, &["add", "."]).await?;
    harness
        .git_ok(&work, &["commit", "--quiet", "-m", "base"])
        .await?;
    let base = import(&harness, &store, &repo, &work, "HEAD").await?;
    Ok(Scenario {
        harness,
        store,
        repo,
        work,
        base,
    })
}

async fn import(
    harness: &Harness,
    store: &RepoStore,
    repo: &RepoId,
    work: &Path,
    rev: &str,
) -> Result<ObjectId> {
    let id = ObjectId::new(
        harness
            .git_ok(work, &["rev-parse", rev])
            .await?
            .stdout
            .trim(),
    )?;
    let remote = PeerRemote {
        url: work.display().to_string(),
        authorization: None,
    };
    store
        .fetch_objects_from(repo, &remote, std::slice::from_ref(&id))
        .await?;
    Ok(id)
}

async fn git_in_store(scenario: &Scenario, args: &[&str]) -> Result<String> {
    let path = scenario.store.repo_path(&scenario.repo);
    let mut full = vec!["--git-dir", path.to_str().expect("utf-8 path")];
    full.extend_from_slice(args);
    Ok(scenario.harness.git_ok(&scenario.work, &full).await?.stdout)
}

fn author() -> Signature {
    Signature {
        name: "Merger".to_owned(),
        email: "merger@example.invalid".to_owned(),
    }
}

#[tokio::test]
async fn diff_matches_git_numstat() -> Result<()> {
    let s = scenario().await?;
    let h = &s.harness;
    h.git_ok(&s.work, &["checkout", "--quiet", "-b", "feature"])
        .await?;
    std::fs::write(
        s.work.join("keep.txt"),
        "one\nTWO\nthree\nfour\nfive\nsix\nseven\neight\n",
    )?;
    std::fs::write(s.work.join("new.txt"), "fresh\nlines\n")?;
    std::fs::write(s.work.join("logo.bin"), [0u8, 159, 146, 150, 0, 1])?;
    std::fs::remove_file(s.work.join("gone.txt"))?;
    h.git_ok(&s.work, &["mv", "moved.txt", "renamed.txt"])
        .await?;
    h.git_ok(&s.work, &["add", "-A"]).await?;
    h.git_ok(&s.work, &["commit", "--quiet", "-m", "feature"])
        .await?;
    let head = import(h, &s.store, &s.repo, &s.work, "HEAD").await?;
    // The base moves on meanwhile; the pull request's diff must not show that.
    h.git_ok(&s.work, &["checkout", "--quiet", "main"]).await?;
    h.commit(&s.work, "unrelated.txt", "base work\n").await?;
    let base = import(h, &s.store, &s.repo, &s.work, "HEAD").await?;

    let files = pr::diff(&s.store, &s.repo, &base, &head).await?;
    let numstat = git_in_store(
        &s,
        &["diff", "--numstat", "-M", &format!("{base}...{head}")],
    )
    .await?;
    let expected: Vec<(String, String, String)> = numstat
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let added = parts.next().unwrap_or_default().to_owned();
            let deleted = parts.next().unwrap_or_default().to_owned();
            (added, deleted, parts.next().unwrap_or_default().to_owned())
        })
        .collect();
    assert_eq!(files.len(), expected.len(), "{files:#?}\n{numstat}");
    assert_eq!(expected.len(), 5, "{numstat}");
    for (file, (added, deleted, path)) in files.iter().zip(&expected) {
        let shown = match &file.old_path {
            Some(old) => format!("{old} => {}", file.path),
            None => file.path.clone(),
        };
        assert_eq!(&shown, path);
        if file.binary {
            assert_eq!((added.as_str(), deleted.as_str()), ("-", "-"));
        } else {
            assert_eq!(
                (file.additions.to_string(), file.deletions.to_string()),
                (added.clone(), deleted.clone())
            );
        }
    }
    let by_path = |path: &str| files.iter().find(|f| f.path == path).expect("file in diff");
    assert_eq!(by_path("new.txt").status, FileStatus::Added);
    assert_eq!(by_path("gone.txt").status, FileStatus::Deleted);
    assert!(matches!(
        by_path("renamed.txt").status,
        FileStatus::Renamed { similarity: 100 }
    ));
    assert!(by_path("logo.bin").binary);
    assert!(files.iter().all(|f| f.path != "unrelated.txt"));
    let keep = by_path("keep.txt");
    assert_eq!(keep.status, FileStatus::Modified);
    assert_eq!(keep.hunks.len(), 1);
    let hunk = &keep.hunks[0];
    assert_eq!(
        (
            hunk.old_start,
            hunk.old_lines,
            hunk.new_start,
            hunk.new_lines
        ),
        (1, 7, 1, 8)
    );
    let added: Vec<_> = hunk
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Added)
        .collect();
    assert_eq!(added.len(), 2);
    assert_eq!(
        (added[0].content.as_str(), added[0].new_line),
        ("TWO", Some(2))
    );
    assert_eq!(
        (added[1].content.as_str(), added[1].new_line),
        ("eight", Some(8))
    );
    let removed: Vec<_> = hunk
        .lines
        .iter()
        .filter(|l| l.kind == LineKind::Removed)
        .collect();
    assert_eq!(
        (removed[0].content.as_str(), removed[0].old_line),
        ("two", Some(2))
    );
    Ok(())
}

#[tokio::test]
async fn conflicts_name_the_file() -> Result<()> {
    let s = scenario().await?;
    let h = &s.harness;
    h.git_ok(&s.work, &["checkout", "--quiet", "-b", "feature"])
        .await?;
    h.commit(&s.work, "keep.txt", "feature version\n").await?;
    let head = import(h, &s.store, &s.repo, &s.work, "HEAD").await?;
    h.git_ok(&s.work, &["checkout", "--quiet", "main"]).await?;
    h.commit(&s.work, "keep.txt", "main version\n").await?;
    let base = import(h, &s.store, &s.repo, &s.work, "HEAD").await?;
    match pr::mergeability(&s.store, &s.repo, &base, &head).await? {
        Mergeability::Conflicts { files, messages } => {
            assert_eq!(files, vec!["keep.txt".to_owned()]);
            assert!(
                messages
                    .iter()
                    .any(|m| m.contains("CONFLICT (content): Merge conflict in keep.txt")),
                "{messages:?}"
            );
        }
        clean => panic!("expected a conflict, got {clean:?}"),
    }
    let target = RefName::branch("main")?;
    let merged = pr::merge(
        &s.store,
        &s.repo,
        &target,
        &base,
        &head,
        MergeStyle::MergeCommit,
        &author(),
        "merge",
    )
    .await;
    assert!(
        matches!(merged, Err(PrError::Conflicts { ref files }) if files == &["keep.txt"]),
        "{merged:?}"
    );
    Ok(())
}

#[tokio::test]
async fn fast_forward_merge_commit_and_squash_produce_the_right_trees() -> Result<()> {
    let s = scenario().await?;
    let h = &s.harness;
    let target = RefName::branch("main")?;
    let ledger = MemoryLedger::new(Arc::clone(&s.store));
    let create_main = flotilla_git::RefUpdate {
        name: target.clone(),
        old: None,
        new: Some(s.base.clone()),
    };
    ledger.compare_and_swap(&s.repo, vec![create_main]).await?;

    h.git_ok(&s.work, &["checkout", "--quiet", "-b", "feature"])
        .await?;
    h.commit(&s.work, "feature.txt", "feature\n").await?;
    let head = import(h, &s.store, &s.repo, &s.work, "HEAD").await?;

    // Fast-forward: main is head's ancestor.
    let ff = pr::merge(
        &s.store,
        &s.repo,
        &target,
        &s.base,
        &head,
        MergeStyle::FastForward,
        &author(),
        "ff",
    )
    .await?;
    assert_eq!(ff.commit, head);
    assert_eq!(ff.update.old.as_ref(), Some(&s.base));

    // main moves on: fast-forward is impossible, merge commit and squash are not.
    h.git_ok(&s.work, &["checkout", "--quiet", "main"]).await?;
    h.commit(&s.work, "main.txt", "main\n").await?;
    let base = import(h, &s.store, &s.repo, &s.work, "HEAD").await?;
    let not_ff = pr::merge(
        &s.store,
        &s.repo,
        &target,
        &base,
        &head,
        MergeStyle::FastForward,
        &author(),
        "ff",
    )
    .await;
    assert!(
        matches!(not_ff, Err(PrError::NotFastForward { .. })),
        "{not_ff:?}"
    );

    let merge = pr::merge(
        &s.store,
        &s.repo,
        &target,
        &base,
        &head,
        MergeStyle::MergeCommit,
        &author(),
        "Merge feature",
    )
    .await?;
    let parents = git_in_store(
        &s,
        &["rev-list", "--parents", "-n", "1", merge.commit.as_str()],
    )
    .await?;
    assert_eq!(parents.trim(), format!("{} {base} {head}", merge.commit));
    let files = git_in_store(&s, &["ls-tree", "--name-only", merge.commit.as_str()]).await?;
    for file in ["feature.txt", "main.txt", "keep.txt"] {
        assert!(
            files.lines().any(|line| line == file),
            "{file} missing from {files}"
        );
    }
    let message = git_in_store(
        &s,
        &["log", "-1", "--format=%an <%ae>%n%s", merge.commit.as_str()],
    )
    .await?;
    assert_eq!(
        message.trim(),
        "Merger <merger@example.invalid>\nMerge feature"
    );

    let squash = pr::merge(
        &s.store,
        &s.repo,
        &target,
        &base,
        &head,
        MergeStyle::Squash,
        &author(),
        "Squash feature",
    )
    .await?;
    let squash_parents = git_in_store(
        &s,
        &["rev-list", "--parents", "-n", "1", squash.commit.as_str()],
    )
    .await?;
    assert_eq!(squash_parents.trim(), format!("{} {base}", squash.commit));
    let tree_of = |commit: &ObjectId| format!("{commit}^{{tree}}");
    let merge_tree = git_in_store(&s, &["rev-parse", &tree_of(&merge.commit)]).await?;
    let squash_tree = git_in_store(&s, &["rev-parse", &tree_of(&squash.commit)]).await?;
    assert_eq!(merge_tree, squash_tree);

    // The merge lands through the ledger: while the ledger still has main at the old
    // base, the update's old value is stale and refused; once main is at `base`, it wins.
    let outcome = ledger
        .compare_and_swap(&s.repo, vec![merge.update.clone()])
        .await?;
    assert_eq!(
        outcome,
        vec![RefOutcome::Stale {
            current: Some(s.base.clone())
        }]
    );
    let advance = flotilla_git::RefUpdate {
        name: target.clone(),
        old: Some(s.base.clone()),
        new: Some(base.clone()),
    };
    ledger.compare_and_swap(&s.repo, vec![advance]).await?;
    assert_eq!(
        ledger
            .compare_and_swap(&s.repo, vec![merge.update.clone()])
            .await?,
        vec![RefOutcome::Applied]
    );
    assert_eq!(
        s.store.resolve_ref(&s.repo, &target).await?,
        Some(merge.commit.clone())
    );

    let nothing = pr::merge(
        &s.store,
        &s.repo,
        &target,
        &merge.commit,
        &head,
        MergeStyle::MergeCommit,
        &author(),
        "again",
    )
    .await;
    assert!(
        matches!(nothing, Err(PrError::NothingToMerge { .. })),
        "{nothing:?}"
    );
    s.store.fsck(&s.repo).await?;
    Ok(())
}
