//! Bad input to hosted git on a real server, sent by the real `git` client
//! where it lets us and hand-made smart-HTTP requests where it does not:
//! malformed pkt-lines, truncated and corrupt packs, bodies over the limit
//! (plain and as a gzip bomb), ref names git forbids (`..`, `.lock`, `@{`),
//! unknown repositories and path traversal, wrong, missing and expired
//! credentials. Each is refused with an answer git prints (a 4xx with a
//! `text/plain` reason, or `ng <ref> <reason>` in git's own report), the
//! server keeps serving, and the repository is unharmed: main never moves,
//! no other ref appears, the refused objects are not stored, and a fresh
//! clone and the server's copy are `git fsck --full --strict` clean.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use flotilla_tests::git::{git, git_command, git_output};
use flotilla_tests::{ServerFlags, TestCluster};

const ZERO: &str = "0000000000000000000000000000000000000000";
/// The largest fetch request body the server takes (after gunzip).
const UPLOAD_PACK_LIMIT: usize = 64 * 1024 * 1024;

/// `git`, expected to fail; its stderr.
fn git_fails(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = git_output(dir, args)?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() {
        bail!("git {} succeeded, expected a refusal", args.join(" "));
    }
    Ok(stderr)
}

/// Runs `command` with `input` on its stdin; its stdout, failing on a
/// non-zero exit.
fn pipe(command: &mut Command, input: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {command:?}"))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let output = child.wait_with_output()?;
    writer.join().expect("writer thread")?;
    if !output.status.success() {
        bail!(
            "{command:?}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

fn gzip(data: Vec<u8>) -> anyhow::Result<Vec<u8>> {
    pipe(Command::new("gzip").args(["-c", "-6"]), data)
}

/// One pkt-line: four hex digits of length (themselves included), then `data`.
fn pkt(data: &[u8]) -> Vec<u8> {
    let mut line = format!("{:04x}", data.len() + 4).into_bytes();
    line.extend_from_slice(data);
    line
}

/// A receive-pack request: `commands` (old, new, ref), capabilities on the
/// first, a flush, then `pack`.
fn push_request(commands: &[(&str, &str, &str)], pack: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (index, (old, new, name)) in commands.iter().enumerate() {
        let caps = if index == 0 { "\0report-status" } else { "" };
        body.extend(pkt(format!("{old} {new} {name}{caps}\n").as_bytes()));
    }
    body.extend_from_slice(b"0000");
    body.extend_from_slice(pack);
    body
}

/// The payloads of the pkt-lines in `body` (flushes skipped), up to the
/// first malformed one.
fn pkt_lines(mut body: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    while body.len() >= 4 {
        let length = std::str::from_utf8(&body[..4])
            .ok()
            .and_then(|hex| usize::from_str_radix(hex, 16).ok());
        match length {
            Some(0) => body = &body[4..],
            Some(length) if (4..=body.len()).contains(&length) => {
                let line = String::from_utf8_lossy(&body[4..length]);
                lines.push(line.trim_end_matches('\n').to_owned());
                body = &body[length..];
            }
            _ => break,
        }
    }
    lines
}

/// Status and body of a smart-HTTP RPC to demo/app with `token`.
async fn rpc(
    cluster: &TestCluster,
    service: &str,
    token: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = &cluster.servers[0].addr;
    let mut request = cluster
        .http
        .post(format!("http://{addr}/git/demo/app.git/git-{service}"))
        .basic_auth("flotilla", Some(token))
        .header(
            "content-type",
            format!("application/x-git-{service}-request"),
        )
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    let response = request.send().await.context("send a git RPC")?;
    let status = response.status().as_u16();
    Ok((status, response.bytes().await?.to_vec()))
}

/// A push's report from git: 200, `unpack <unpack>`, and `ng <ref>
/// <reason>` (reason starting with `reason`) for each of `refused`.
fn expect_report(body: &[u8], unpack_ok: bool, refused: &[(&str, &str)]) {
    let lines = pkt_lines(body);
    let unpack = lines.first().map(String::as_str).unwrap_or_default();
    assert!(unpack.starts_with("unpack "), "no unpack status: {lines:?}");
    assert_eq!(unpack == "unpack ok", unpack_ok, "unpack status: {lines:?}");
    for (name, reason) in refused {
        let prefix = format!("ng {name} {reason}");
        assert!(
            lines.iter().any(|line| line.starts_with(&prefix)),
            "no `{prefix}` in {lines:?}"
        );
    }
    assert!(
        !lines.iter().any(|line| line.starts_with("ok ")),
        "a ref was accepted: {lines:?}"
    );
}

/// A plain-text 4xx from the server whose message contains `needle`.
fn expect_text(status: u16, body: &[u8], expected: u16, needle: &str) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, expected, "unexpected answer: {text}");
    assert!(text.contains(needle), "{needle:?} not in {status} {text:?}");
}

/// A raw HTTP/1.1 request (the path exactly as given, no client-side
/// normalisation of `..`); its status and body.
fn raw_http(addr: &str, method: &str, path: &str, auth: &str) -> anyhow::Result<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(15)))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\n\
         Content-Type: application/x-git-receive-pack-request\r\n\
         Content-Length: 4\r\nConnection: close\r\n\r\n0000"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status line in {answer:?}"))?;
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

fn url(addr: &str, token: &str, repo: &str) -> String {
    format!("http://flotilla:{token}@{addr}/git/demo/{repo}")
}

/// Every ref `addr` serves for demo/app, as `<id> <name>` lines.
fn remote_refs(dir: &Path, addr: &str, token: &str) -> anyhow::Result<Vec<String>> {
    let listing = git(dir, &["ls-remote", &url(addr, token, "app.git")])?;
    Ok(listing
        .lines()
        .map(|line| line.replace('\t', " "))
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_git_input_is_refused_readably_and_leaves_the_repository_intact() -> anyhow::Result<()>
{
    let mut cluster = TestCluster::start(1, ServerFlags::default()).await?;
    let addr = cluster.servers[0].addr.clone();
    let door = cluster.servers[0].desktop_addr.clone();
    let token = cluster.token.clone();
    let bare = cluster.servers[0].data_dir.join("git/demo/app.git");
    cluster
        .post_json(&addr, "/api/v1/projects", serde_json::json!({"id": "demo"}))
        .await?;
    cluster
        .post_json(
            &addr,
            "/api/v1/projects/demo/repos",
            serde_json::json!({"name": "app"}),
        )
        .await?;

    let work = tempfile::tempdir()?;
    let dir = work.path();
    git(dir, &["init", "-q", "-b", "main", "."])?;
    std::fs::write(dir.join("file.txt"), "first\n")?;
    git(dir, &["add", "file.txt"])?;
    git(dir, &["commit", "-q", "-m", "first"])?;
    git(
        dir,
        &["push", "-q", &url(&addr, &token, "app.git"), "HEAD:main"],
    )?;
    let first = git(dir, &["rev-parse", "HEAD"])?.trim().to_owned();
    let untouched = vec![format!("{first} HEAD"), format!("{first} refs/heads/main")];
    assert_eq!(remote_refs(dir, &addr, &token)?, untouched);

    // A second commit, never pushed whole: its objects must never land.
    std::fs::write(dir.join("file.txt"), "second\n")?;
    git(dir, &["commit", "-q", "-am", "second"])?;
    let second = git(dir, &["rev-parse", "HEAD"])?.trim().to_owned();
    let pack = pipe(
        git_command(dir).args(["pack-objects", "-q", "--revs", "--stdout"]),
        format!("{second}\n^{first}\n").into_bytes(),
    )?;
    assert!(pack.starts_with(b"PACK") && pack.len() > 40, "a real pack");

    // 1. Malformed pkt-lines: git's own protocol error, as a 400.
    let mut random: Vec<u8> = (0..32)
        .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
        .collect();
    random[0] |= 0x80; // never a hex digit, so never a valid length
    let malformed: Vec<(Vec<u8>, &str)> = vec![
        (
            b"zzzz".to_vec(),
            "protocol error: bad line length character: zzzz",
        ),
        (b"0003".to_vec(), "protocol error: bad line length 3"),
        (b"00ffwant ".to_vec(), "the remote end hung up unexpectedly"),
        (Vec::new(), "the remote end hung up unexpectedly"),
        (random, "protocol error: bad line length character"),
    ];
    for service in ["upload-pack", "receive-pack"] {
        for (body, message) in &malformed {
            let (status, answer) = rpc(&cluster, service, &token, body.clone(), None).await?;
            expect_text(status, &answer, 400, message);
            expect_text(status, &answer, 400, &format!("git {service} refused"));
        }
    }
    // Well-framed nonsense: git names what it expected.
    let (status, answer) = rpc(&cluster, "upload-pack", &token, b"0009done\n".into(), None).await?;
    expect_text(
        status,
        &answer,
        400,
        "expected to get object ID, not 'done'",
    );
    let want = pkt(format!("want {}\n", "1".repeat(40)).as_bytes());
    let (status, answer) = rpc(&cluster, "upload-pack", &token, want, None).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    assert!(
        pkt_lines(&answer)[0].starts_with("ERR upload-pack: not our ref 1111"),
        "{answer:?}"
    );
    let (status, answer) = rpc(
        &cluster,
        "receive-pack",
        &token,
        b"0032want 1111111111111111111111111111111111111111\n0000".into(),
        None,
    )
    .await?;
    expect_text(status, &answer, 400, "expected old/new/ref, got 'want 1111");
    let (status, answer) = rpc(
        &cluster,
        "receive-pack",
        &token,
        pkt(b"nothex nothex refs/heads/main\n"),
        None,
    )
    .await?;
    expect_text(status, &answer, 400, "git receive-pack refused");
    assert_eq!(remote_refs(dir, &addr, &token)?, untouched);

    // 2. Truncated and corrupt packs: git's report says the unpack failed
    // and main is refused.
    let update = [(first.as_str(), second.as_str(), "refs/heads/main")];
    for cut in [&pack[..pack.len() / 2], &pack[..12], &pack[..0]] {
        let (status, answer) = rpc(
            &cluster,
            "receive-pack",
            &token,
            push_request(&update, cut),
            None,
        )
        .await?;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
        expect_report(&answer, false, &[("refs/heads/main", "unpacker error")]);
    }
    // A whole pack whose commit is malformed (no email): receive.fsckObjects.
    let empty_tree = git(dir, &["hash-object", "-w", "-t", "tree", "/dev/null"])?;
    let broken = pipe(
        git_command(dir).args([
            "hash-object",
            "-w",
            "-t",
            "commit",
            "--literally",
            "--stdin",
        ]),
        format!(
            "tree {}\nauthor nobody 1 +0000\ncommitter nobody 1 +0000\n\nbroken\n",
            empty_tree.trim()
        )
        .into_bytes(),
    )?;
    let broken = String::from_utf8(broken)?.trim().to_owned();
    let broken_pack = pipe(
        git_command(dir).args(["pack-objects", "-q", "--stdout"]),
        format!("{broken}\n{}\n", empty_tree.trim()).into_bytes(),
    )?;
    let request = push_request(
        &[(first.as_str(), &broken, "refs/heads/main")],
        &broken_pack,
    );
    let (status, answer) = rpc(&cluster, "receive-pack", &token, request, None).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    expect_report(&answer, false, &[("refs/heads/main", "unpacker error")]);
    assert_eq!(remote_refs(dir, &addr, &token)?, untouched);
    for refused in [&second, &broken] {
        let stored = git_output(&bare, &["cat-file", "-e", refused])?;
        assert!(!stored.status.success(), "refused object {refused} stored");
    }
    git(&bare, &["fsck", "--full", "--strict"])?;

    // 3. Bodies over the fetch limit: 413, whether sent plain or as a
    // ~200 KiB gzip that inflates past 64 MiB. Haves of an unknown commit
    // keep git reading silently, so the limit is what stops it.
    let have = pkt(format!("have {}\n", "2".repeat(40)).as_bytes());
    let mut huge = pkt(format!("want {first}\n").as_bytes());
    huge.extend_from_slice(b"0000");
    while huge.len() <= UPLOAD_PACK_LIMIT + 1024 * 1024 {
        huge.extend_from_slice(&have);
    }
    let bomb = gzip(huge.clone())?;
    assert!(
        bomb.len() < 1024 * 1024,
        "the bomb is small: {}",
        bomb.len()
    );
    let too_large = format!("larger than {UPLOAD_PACK_LIMIT} bytes");
    let (status, answer) = rpc(&cluster, "upload-pack", &token, bomb, Some("gzip")).await?;
    expect_text(status, &answer, 413, &too_large);
    let (status, answer) = rpc(&cluster, "upload-pack", &token, huge, None).await?;
    expect_text(status, &answer, 413, &too_large);
    // A bomb of zeros is not pkt-lines: git stops at the first bytes.
    let zeros = gzip(vec![0; 80 << 20])?;
    let (status, answer) = rpc(&cluster, "upload-pack", &token, zeros, Some("gzip")).await?;
    expect_text(status, &answer, 400, "bad line length character");
    let (status, answer) = rpc(
        &cluster,
        "upload-pack",
        &token,
        b"0000".into(),
        Some("gzip"),
    )
    .await?;
    expect_text(status, &answer, 400, "not valid gzip");
    let (status, answer) =
        rpc(&cluster, "receive-pack", &token, b"0000".into(), Some("br")).await?;
    expect_text(status, &answer, 415, "unsupported Content-Encoding \"br\"");
    let response = cluster
        .http
        .post(format!("http://{addr}/git/demo/app.git/git-upload-pack"))
        .basic_auth("flotilla", Some(&token))
        .header("content-type", "text/plain")
        .body("0000")
        .send()
        .await?;
    let status = response.status().as_u16();
    let answer = response.bytes().await?;
    expect_text(
        status,
        &answer,
        415,
        "application/x-git-upload-pack-request",
    );
    assert_eq!(remote_refs(dir, &addr, &token)?, untouched);

    // 4. Ref names git forbids. The real client refuses them itself...
    let stderr = git_fails(
        dir,
        &[
            "push",
            &url(&addr, &token, "app.git"),
            "HEAD:refs/heads/a..b",
        ],
    )?;
    assert!(stderr.contains("invalid refspec"), "{stderr}");
    // ...and hand-made commands (with a whole, valid pack) get `ng`.
    let bad_names = [
        (
            "refs/heads/a..b",
            "ref name \"refs/heads/a..b\" is not valid: it must not contain `..`",
        ),
        (
            "refs/heads/x.lock",
            "ref name \"refs/heads/x.lock\" is not valid",
        ),
        (
            "refs/heads/.hidden",
            "ref name \"refs/heads/.hidden\" is not valid",
        ),
        (
            "refs/heads/a@{1}",
            "ref name \"refs/heads/a@{1}\" is not valid",
        ),
        (
            "refs/heads/ends/",
            "ref name \"refs/heads/ends/\" is not valid",
        ),
        ("refs/heads/~x", "ref name \"refs/heads/~x\" is not valid"),
        ("refs/heads/a b", ""),
        ("main", "funny refname"),
        ("HEAD", "funny refname"),
    ];
    for (name, reason) in bad_names {
        let request = push_request(&[(ZERO, second.as_str(), name)], &pack);
        let (status, answer) = rpc(&cluster, "receive-pack", &token, request, None).await?;
        assert_eq!(status, 200, "{name}: {}", String::from_utf8_lossy(&answer));
        expect_report(&answer, true, &[(name, reason)]);
    }
    // One bad name refuses the good ref beside it.
    let request = push_request(
        &[
            (ZERO, second.as_str(), "refs/heads/fine"),
            (ZERO, second.as_str(), "refs/heads/a..b"),
        ],
        &pack,
    );
    let (status, answer) = rpc(&cluster, "receive-pack", &token, request, None).await?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    expect_report(
        &answer,
        true,
        &[
            (
                "refs/heads/fine",
                "not applied: refs/heads/a..b was refused",
            ),
            ("refs/heads/a..b", "ref name"),
        ],
    );
    assert_eq!(remote_refs(dir, &addr, &token)?, untouched);

    // 5. Unknown repositories, bad names, path traversal.
    for (repo, needle) in [
        ("nope", "remote: no repository demo/nope"),
        ("nope.git", "remote: no repository demo/nope"),
        ("a..b", "repository name \"a..b\" is not valid"),
    ] {
        let stderr = git_fails(dir, &["ls-remote", &url(&addr, &token, repo)])?;
        assert!(stderr.contains(needle), "{repo}: {stderr}");
    }
    let stderr = git_fails(
        dir,
        &[
            "ls-remote",
            &format!("http://flotilla:{token}@{addr}/git/nope/app"),
        ],
    )?;
    assert!(
        stderr.contains("remote: no repository nope/app"),
        "{stderr}"
    );
    assert!(stderr.contains("not found"), "{stderr}");
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            format!("flotilla:{token}")
        )
    );
    let upload = "info/refs?service=git-upload-pack";
    for path in [
        format!("/git/../demo/{upload}"),
        format!("/git/..%2F../demo/{upload}"),
        format!("/git/%2e%2e/app.git/{upload}"),
        format!("/git/demo/..%2F..%2Fdemo%2Fapp.git/{upload}"),
        format!("/git/demo/%2e%2e/{upload}"),
        format!("/git/../../{upload}"),
    ] {
        let (status, body) = raw_http(&addr, "GET", &path, &basic)?;
        assert_eq!(status, 404, "GET {path}: {body}");
    }
    let (status, body) = raw_http(&addr, "POST", "/git/..%2F../x/git-receive-pack", &basic)?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("project id \"../..\" is not valid"), "{body}");
    let info_refs = format!("http://{addr}/git/demo/app.git/info/refs");
    let response = cluster
        .http
        .get(format!("{info_refs}?service=git-shell"))
        .basic_auth("flotilla", Some(&token))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.text().await?.contains("unknown git service"));
    let response = cluster
        .http
        .get(&info_refs)
        .basic_auth("flotilla", Some(&token))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 403);
    assert!(response
        .text()
        .await?
        .contains("dumb HTTP is not supported"));

    // 6. Credentials: wrong, missing, a desktop's (malformed, and expired:
    // a correctly signed token of a desktop that does not exist).
    let stderr = git_fails(dir, &["ls-remote", &url(&addr, "flo_op_wrong", "app.git")])?;
    assert!(stderr.contains("Authentication failed"), "{stderr}");
    assert!(
        stderr.contains("remote: the token is not valid or has expired"),
        "{stderr}"
    );
    let stderr = git_fails(
        dir,
        &["ls-remote", &format!("http://{addr}/git/demo/app.git")],
    )?;
    assert!(stderr.contains("could not read Username"), "{stderr}");
    let response = cluster
        .http
        .get(format!("{info_refs}?service=git-upload-pack"))
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Basic realm=\"flotilla\""
    );
    assert!(response
        .text()
        .await?
        .contains("use a flotilla token as the password"));
    let response = cluster
        .http
        .get(format!("{info_refs}?service=git-receive-pack"))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(
        response.status().as_u16(),
        401,
        "a bearer token is not git's"
    );
    let secret = std::fs::read_to_string(cluster.servers[0].data_dir.join("cluster.secret"))?;
    let mac = pipe(
        Command::new("openssl").args(["dgst", "-sha256", "-r", "-hmac", secret.trim()]),
        b"flotilla desktop token v1\0gone\x001".to_vec(),
    )?;
    let mac = String::from_utf8(mac)?;
    let expired = format!(
        "flo_desk_gone.1.{}",
        mac.split_whitespace().next().unwrap_or_default()
    );
    for desk in ["flo_desk_x.1.00", expired.as_str()] {
        for server in [&addr, &door] {
            let stderr = git_fails(
                dir,
                &[
                    "ls-remote",
                    &format!("http://d:{desk}@{server}/git/demo/app.git"),
                ],
            )?;
            assert!(
                stderr.contains("Authentication failed"),
                "{desk} at {server}: {stderr}"
            );
        }
    }
    // A push with a wrong token is refused before its body is read.
    let request = push_request(&update, &pack);
    let (status, answer) = rpc(&cluster, "receive-pack", "flo_op_wrong", request, None).await?;
    expect_text(
        status,
        &answer,
        401,
        "the token is not valid or has expired",
    );

    // After all of it: main where the first push left it, nothing else,
    // fsck clean, the server up and never panicked.
    assert_eq!(remote_refs(dir, &addr, &token)?, untouched);
    let clone = tempfile::tempdir()?;
    git(
        clone.path(),
        &["clone", "-q", &url(&addr, &token, "app.git"), "copy"],
    )?;
    let copy = clone.path().join("copy");
    assert_eq!(git(&copy, &["rev-parse", "HEAD"])?.trim(), first);
    git(&copy, &["fsck", "--full", "--strict"])?;
    git(&bare, &["fsck", "--full", "--strict"])?;
    assert!(cluster.server(1).is_running(), "{}", cluster.logs());
    let log = cluster.servers[0].log();
    assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    Ok(())
}
