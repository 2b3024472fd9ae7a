//! Requests a well-behaved git would not send, made by hand: unknown repositories,
//! missing credentials, gzip bodies, malformed pkt-lines, truncated packs, ref names
//! git forbids and bodies over the limit. Each must be refused readably and leave the
//! repository fsck-clean and its refs unchanged.

mod common;

use std::io::Write;

use anyhow::{Context, Result};
use base64::Engine;
use common::{Harness, HarnessOptions, OPERATOR};
use flate2::write::GzEncoder;

fn basic(token: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("x:{token}"))
    )
}

fn pkt(line: &str) -> Vec<u8> {
    let mut out = format!("{:04x}", line.len() + 4).into_bytes();
    out.extend_from_slice(line.as_bytes());
    out
}

fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

async fn post(
    harness: &Harness,
    service: &str,
    body: Vec<u8>,
    gzipped: bool,
) -> Result<(u16, Vec<u8>)> {
    let mut request = reqwest::Client::new()
        .post(harness.plain_url(&format!("p/r/{service}")))
        .header("Authorization", basic(OPERATOR))
        .header("Content-Type", format!("application/x-{service}-request"))
        .body(body);
    if gzipped {
        request = request.header("Content-Encoding", "gzip");
    }
    let response = request.send().await.context("post")?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// A pack of `revs` made by git in the server's repository or a client's.
fn pack(dir: &std::path::Path, revs: &str) -> Result<Vec<u8>> {
    let mut child = std::process::Command::new("git")
        .current_dir(dir)
        .args(["pack-objects", "--stdout", "--revs", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(revs.as_bytes())?;
    let output = child.wait_with_output()?;
    anyhow::ensure!(output.status.success(), "pack-objects failed");
    Ok(output.stdout)
}

async fn assert_untouched(harness: &Harness, main: &str) -> Result<()> {
    let refs = harness.store.list_refs(&harness.repo()).await?;
    assert_eq!(refs.len(), 1, "{refs:?}");
    assert_eq!(
        harness.server_ref("refs/heads/main").await?.as_deref(),
        Some(main)
    );
    harness.store.fsck(&harness.repo()).await?;
    Ok(())
}

#[tokio::test]
async fn unknown_repository_is_a_readable_404() -> Result<()> {
    let harness = Harness::start().await?;
    let response = reqwest::Client::new()
        .get(harness.plain_url("p/nope/info/refs?service=git-upload-pack"))
        .header("Authorization", basic(OPERATOR))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 404);
    assert!(response
        .text()
        .await?
        .contains("repository p/nope does not exist"));
    let clone = harness
        .git(
            &harness.work_dir(""),
            &["clone", &harness.url(OPERATOR, "p/nope.git"), "nope"],
        )
        .await?;
    assert!(!clone.success);
    assert!(
        clone.stderr.contains("repository p/nope does not exist"),
        "{}",
        clone.stderr
    );
    let bad_name = reqwest::Client::new()
        .get(harness.plain_url("p/..%2F..%2Fetc/info/refs?service=git-upload-pack"))
        .header("Authorization", basic(OPERATOR))
        .send()
        .await?;
    assert_eq!(bad_name.status().as_u16(), 404);
    Ok(())
}

#[tokio::test]
async fn missing_credentials_ask_for_basic_auth_and_dumb_http_is_refused() -> Result<()> {
    let harness = Harness::start().await?;
    harness.create_repo().await?;
    let response =
        reqwest::get(harness.plain_url("p/r/info/refs?service=git-receive-pack")).await?;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Basic realm=\"flotilla\"")
    );
    let dumb = reqwest::Client::new()
        .get(harness.plain_url("p/r/info/refs"))
        .header("Authorization", basic(OPERATOR))
        .send()
        .await?;
    assert_eq!(dumb.status().as_u16(), 403);
    assert!(dumb.text().await?.contains("dumb HTTP is not supported"));
    Ok(())
}

#[tokio::test]
async fn hand_made_gzip_fetch_is_served_and_bad_gzip_refused() -> Result<()> {
    let harness = Harness::start().await?;
    let (_, main) = harness.seed_main().await?;
    let mut request = pkt(&format!("want {main} ofs-delta\n"));
    request.extend_from_slice(b"0000");
    request.extend(pkt("done\n"));
    let (status, body) = post(&harness, "git-upload-pack", gzip(&request)?, true).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(
        body.windows(4).any(|w| w == b"PACK"),
        "no pack in the response"
    );

    let (status, body) = post(&harness, "git-upload-pack", request.clone(), true).await?;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("not valid gzip"));
    assert_untouched(&harness, &main).await
}

#[tokio::test]
async fn git_gzips_large_fetch_requests_and_they_work() -> Result<()> {
    let harness = Harness::start().await?;
    let (work, _) = harness.seed_main().await?;
    // 40 branches on 40 commits: a clone wants 40 ids, over git's 1 KiB gzip threshold.
    for index in 0..40 {
        harness
            .commit(&work, "counter", &format!("{index}\n"))
            .await?;
        harness
            .git_ok(&work, &["branch", &format!("b{index}")])
            .await?;
    }
    harness
        .git_ok(
            &work,
            &["push", "--quiet", "origin", "refs/heads/*:refs/heads/*"],
        )
        .await?;
    let clone = harness
        .git(
            &harness.work_dir(""),
            &[
                "-c",
                "protocol.version=0",
                "clone",
                "--quiet",
                "--mirror",
                &harness.url(OPERATOR, "p/r"),
                "mirror",
            ],
        )
        .await?;
    assert!(clone.success, "{}", clone.stderr);
    let encodings = harness
        .requests
        .content_encodings
        .lock()
        .expect("log")
        .clone();
    assert!(
        encodings.iter().any(|e| e == "gzip"),
        "git sent no gzip body: {encodings:?}"
    );
    let branches = harness
        .git_ok(&harness.work_dir("mirror"), &["for-each-ref", "refs/heads"])
        .await?;
    assert_eq!(branches.stdout.lines().count(), 41);
    Ok(())
}

#[tokio::test]
async fn malformed_pkt_lines_and_truncated_packs_are_refused() -> Result<()> {
    let harness = Harness::start().await?;
    let (work, main) = harness.seed_main().await?;

    let (status, body) = post(
        &harness,
        "git-upload-pack",
        b"zzzzthis is not a pkt-line".to_vec(),
        false,
    )
    .await?;
    assert!(
        (400..500).contains(&status),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _) = post(&harness, "git-receive-pack", b"00".to_vec(), false).await?;
    assert!((400..500).contains(&status), "{status}");

    let next = harness.commit(&work, "README", "more\n").await?;
    let full = pack(&work, &format!("{next}\n^{main}\n"))?;
    let mut request = pkt(&format!("{main} {next} refs/heads/main\0report-status\n"));
    request.extend_from_slice(b"0000");
    request.extend_from_slice(&full[..full.len() / 2]);
    let (status, body) = post(&harness, "git-receive-pack", request, false).await?;
    let text = String::from_utf8_lossy(&body);
    assert!(
        (400..500).contains(&status) || (status == 200 && !text.contains("unpack ok")),
        "{status}: {text}"
    );
    assert_untouched(&harness, &main).await
}

#[tokio::test]
async fn ref_names_with_dot_dot_are_refused() -> Result<()> {
    let harness = Harness::start().await?;
    let (_, main) = harness.seed_main().await?;
    let empty_pack = pack(&harness.store.repo_path(&harness.repo()), "")?;
    let zero = "0".repeat(40);
    let mut request = pkt(&format!("{zero} {main} refs/heads/a..b\0report-status\n"));
    request.extend_from_slice(b"0000");
    request.extend_from_slice(&empty_pack);
    let (status, body) = post(&harness, "git-receive-pack", request, false).await?;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("ng refs/heads/a..b"), "{text}");
    assert!(!text.contains("ok refs/heads/a..b"), "{text}");
    assert_untouched(&harness, &main).await
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_with_413() -> Result<()> {
    let harness = Harness::start_with(HarnessOptions {
        receive_pack_body_limit: Some(1024),
        wrap_ledger: None,
    })
    .await?;
    harness.create_repo().await?;
    let zero = "0".repeat(40);
    let mut request = pkt(&format!(
        "{zero} {} refs/heads/main\0report-status\n",
        "a".repeat(40)
    ));
    request.extend_from_slice(b"0000");
    request.extend(std::iter::repeat_n(b'x', 8192));
    let (status, body) = post(&harness, "git-receive-pack", request, false).await?;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("larger than 1024 bytes"));
    assert!(harness.store.list_refs(&harness.repo()).await?.is_empty());
    harness.store.fsck(&harness.repo()).await?;
    Ok(())
}
