//! A second server's copy ("peer") following the first: it applies the updates the
//! ledger committed, fetching the objects it lacks from the first server over smart
//! HTTP, and ends with the same refs and a clean fsck.

mod common;

use std::sync::Arc;

use anyhow::Result;
use base64::Engine;
use common::{store_config, Harness, OPERATOR};
use flotilla_git::{PeerRemote, RefName, RefUpdate, RepoStore, StoreError};

#[tokio::test]
async fn a_peer_applies_committed_updates_after_fetching_missing_objects() -> Result<()> {
    let harness = Harness::start().await?;
    let (work, _) = harness.seed_main().await?;
    harness.commit(&work, "second.txt", "2\n").await?;
    harness
        .git_ok(&work, &["push", "--quiet", "origin", "HEAD:main"])
        .await?;
    harness
        .git_ok(&work, &["push", "--quiet", "origin", "HEAD~1:refs/tags/v1"])
        .await?;

    let peer_dir = tempfile::tempdir()?;
    let peer = Arc::new(RepoStore::new(peer_dir.path(), store_config()));
    let repo = harness.repo();
    peer.ensure(&repo).await?;
    let remote = PeerRemote {
        url: harness.plain_url("p/r"),
        authorization: Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("peer:{OPERATOR}"))
        )),
    };
    let committed = harness.ledger.committed().await;
    assert_eq!(committed.len(), 3);
    for push in &committed {
        let new_ids: Vec<_> = push.updates.iter().filter_map(|u| u.new.clone()).collect();
        match peer.apply(&repo, &push.updates).await {
            Err(StoreError::MissingObjects { missing, .. }) => assert!(!missing.is_empty()),
            // The tag names a commit the peer already fetched for main.
            Ok(()) => {}
            Err(other) => return Err(other.into()),
        }
        peer.fetch_objects_from(&repo, &remote, &new_ids).await?;
        peer.apply(&repo, &push.updates).await?;
        // Replaying an applied entry (a restart) is harmless.
        peer.apply(&repo, &push.updates).await?;
    }
    assert_eq!(
        peer.list_refs(&repo).await?,
        harness.store.list_refs(&repo).await?
    );
    peer.fsck(&repo).await?;

    // An update whose old value the peer does not have is refused, not forced.
    let main = RefName::branch("main")?;
    let current = peer.resolve_ref(&repo, &main).await?.expect("main exists");
    let tag = peer
        .resolve_ref(&repo, &RefName::new("refs/tags/v1")?)
        .await?
        .expect("tag exists");
    let stale = RefUpdate {
        name: main.clone(),
        old: Some(tag.clone()),
        new: Some(tag),
    };
    assert!(matches!(
        peer.apply(&repo, &[stale]).await,
        Err(StoreError::ApplyRejected { .. })
    ));
    assert_eq!(peer.resolve_ref(&repo, &main).await?, Some(current));
    Ok(())
}

#[tokio::test]
async fn fetching_from_a_peer_with_a_wrong_token_fails_cleanly() -> Result<()> {
    let harness = Harness::start().await?;
    let (_, main) = harness.seed_main().await?;
    let peer_dir = tempfile::tempdir()?;
    let peer = RepoStore::new(peer_dir.path(), store_config());
    let repo = harness.repo();
    peer.ensure(&repo).await?;
    let remote = PeerRemote {
        url: harness.plain_url("p/r"),
        authorization: Some("Basic bm9wZTpub3Bl".to_owned()),
    };
    let result = peer
        .fetch_objects_from(&repo, &remote, &[flotilla_git::ObjectId::new(main)?])
        .await;
    assert!(
        matches!(result, Err(StoreError::Fetch { .. })),
        "{result:?}"
    );
    Ok(())
}
