//! `flotilla-bench git`: hosted git on a 3-server Flotilla cluster (a push is
//! acknowledged after its refs are committed through Raft and a majority of
//! servers hold its objects) beside plain `git http-backend` served by one
//! process on the same machine (no replication), driven by the real `git` CLI.
//!
//! Measured, for both in the same run: the initial push of a generated medium
//! repository into an empty one, full clones of it (median of `--clones`), and
//! `--clients` concurrent clients each pushing small commits to its own branch
//! (`--rounds` each, closed loop): latency p50/p99 and pushes per second.
//!
//! The plain peer is a minimal CGI bridge (axum → `git http-backend`, request
//! body streamed to its stdin, its CGI headers parsed, the rest streamed back)
//! over bare repositories with git's default configuration.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use flotilla_tests::{ServerFlags, TestCluster};
use tokio::io::AsyncWriteExt;

use flotilla_tests::git_http::PlainGitServer;

use crate::{millis, percentile};

#[derive(clap::Args)]
pub struct GitArgs {
    /// Files in the generated medium repository.
    #[arg(long, default_value_t = 5000)]
    files: usize,
    /// Total size of those files, MB (10^6 bytes).
    #[arg(long, default_value_t = 50)]
    megabytes: u64,
    /// Full clones per system (the median is reported).
    #[arg(long, default_value_t = 5)]
    clones: usize,
    /// Concurrent clients pushing small commits, each to its own branch.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Small pushes per client.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Give the plain server Flotilla's durability and checks (core.fsync of
    /// objects and refs, fsckObjects) instead of git's defaults.
    #[arg(long)]
    plain_durable: bool,
}

const PROJECT: &str = "bench";
const REPO: &str = "medium";

/// One system under test: where its clients push and clone.
struct System {
    name: &'static str,
    /// Remote URLs, used round robin (Flotilla: one per server).
    urls: Vec<String>,
}

impl System {
    fn url(&self, index: usize) -> &str {
        &self.urls[index % self.urls.len()]
    }
}

/// `git` with a fixed identity and no user or system configuration.
fn git_command(home: &Path, dir: &Path, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("git");
    command
        .args([
            "-c",
            "user.name=Bench",
            "-c",
            "user.email=bench@example.com",
        ])
        .args(args)
        .current_dir(dir)
        .env_remove("GIT_DIR")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .env("GIT_AUTHOR_DATE", "2026-12-03T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-12-03T00:00:00Z")
        .kill_on_drop(true);
    command
}

/// Runs git, optionally feeding `input` to its stdin; its stdout on success.
async fn git(
    home: &Path,
    dir: &Path,
    args: &[&str],
    input: Option<&[u8]>,
) -> anyhow::Result<String> {
    let mut command = git_command(home, dir, args);
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().context("run git")?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().context("git's stdin")?;
        stdin.write_all(input).await?;
    }
    let output = child.wait_with_output().await?;
    if !output.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// splitmix64: the generated repository is the same for a given size.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `files` text files of seeded pseudo-random base64-alphabet lines (zlib
/// packs them to about 3/4 of their size), 100 to a directory, sizes spread
/// uniformly between half and 1.5× the mean.
fn generate(dir: &Path, files: usize, megabytes: u64) -> anyhow::Result<u64> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut rng = Rng(0x005e_ed0f_f107_111a);
    let mean = (megabytes * 1_000_000 / files.max(1) as u64).max(1);
    let mut total = 0u64;
    for index in 0..files {
        let size = mean / 2 + rng.next() % mean.max(1);
        let mut content = Vec::with_capacity(size as usize);
        while (content.len() as u64) < size {
            let word = rng.next();
            for shift in 0..10 {
                content.push(ALPHABET[((word >> (shift * 6)) & 63) as usize]);
            }
            if content.len() % 77 >= 70 {
                content.push(b'\n');
            }
        }
        content.truncate(size as usize);
        let sub = dir.join(format!("d{:03}", index / 100));
        if index % 100 == 0 {
            std::fs::create_dir_all(&sub)?;
        }
        std::fs::write(sub.join(format!("f{index:05}.txt")), &content)?;
        total += size;
    }
    Ok(total)
}

/// Bytes of the pack files under a repository's objects directory.
fn pack_bytes(objects: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(objects.join("pack"))? {
        let entry = entry?;
        if entry.path().extension().is_some_and(|ext| ext == "pack") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

// ---------------------------------------------------------------------------
// The measurements.

struct Workspace {
    /// HOME for every client git.
    home: PathBuf,
    /// The generated repository (packed, on `main`).
    source: PathBuf,
    /// Root tree entries of `main`, as `git ls-tree` prints them.
    root_entries: String,
    main: String,
    scratch: PathBuf,
}

/// Initial push of `main` into the empty repository; wall time.
async fn initial_push(work: &Workspace, system: &System) -> anyhow::Result<Duration> {
    let began = Instant::now();
    git(
        &work.home,
        &work.source,
        &["push", "-q", system.url(0), "main:refs/heads/main"],
        None,
    )
    .await?;
    Ok(began.elapsed())
}

/// One full clone (bare: no checkout, the client's cost alike for both) from
/// `url`; wall time and bytes of pack received.
async fn clone_once(work: &Workspace, url: &str, main: &str) -> anyhow::Result<(Duration, u64)> {
    let dest = work.scratch.join("clone.git");
    let dest_str = dest.to_str().context("UTF-8 path")?;
    let began = Instant::now();
    git(
        &work.home,
        &work.scratch,
        &["clone", "--bare", "-q", url, dest_str],
        None,
    )
    .await?;
    let elapsed = began.elapsed();
    let head = git(&work.home, &dest, &["rev-parse", "refs/heads/main"], None).await?;
    if head.trim() != main {
        bail!("clone of {url} has main at {head:?}, not {main}");
    }
    let bytes = pack_bytes(&dest.join("objects"))?;
    std::fs::remove_dir_all(&dest)?;
    Ok((elapsed, bytes))
}

/// Per client, a bare clone of the source sharing its objects and a chain of
/// `rounds` small commits on top of `main`, each changing the client's own file.
async fn prepare_clients(
    work: &Workspace,
    system: &System,
    clients: usize,
    rounds: usize,
) -> anyhow::Result<Vec<(PathBuf, Vec<String>)>> {
    let mut prepared = Vec::new();
    for client in 0..clients {
        let dir = work
            .scratch
            .join(format!("{}-client{client}.git", system.name));
        let source = work.source.to_str().context("UTF-8 path")?;
        let dir_str = dir.to_str().context("UTF-8 path")?;
        git(
            &work.home,
            &work.scratch,
            &["clone", "-q", "--bare", "--shared", source, dir_str],
            None,
        )
        .await?;
        let mut parent = work.main.clone();
        let mut commits = Vec::new();
        for round in 0..rounds {
            let content = format!("client {client} round {round} on {}\n", system.name);
            let blob = git(
                &work.home,
                &dir,
                &["hash-object", "-w", "--stdin"],
                Some(content.as_bytes()),
            )
            .await?;
            let tree_input = format!(
                "{}100644 blob {}\tclient{client:02}.txt\n",
                work.root_entries,
                blob.trim()
            );
            let tree = git(&work.home, &dir, &["mktree"], Some(tree_input.as_bytes())).await?;
            let commit = git(
                &work.home,
                &dir,
                &[
                    "commit-tree",
                    tree.trim(),
                    "-p",
                    &parent,
                    "-m",
                    &format!("client {client} round {round}"),
                ],
                None,
            )
            .await?;
            parent = commit.trim().to_owned();
            commits.push(parent.clone());
        }
        prepared.push((dir, commits));
    }
    Ok(prepared)
}

#[derive(Default)]
struct SmallPushes {
    /// First attempt → acknowledged (or found landed), retries included;
    /// pushes given up on are not in it.
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Attempts the server refused.
    refused: usize,
    /// Refused attempts whose ref had landed after all.
    landed: usize,
    /// Pushes given up after [`MAX_ATTEMPTS`] refusals, and the last refusal.
    failed: usize,
    last_error: Option<String>,
}

impl SmallPushes {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// Attempts a push may take before it counts as failed.
const MAX_ATTEMPTS: usize = 20;

/// Every client pushes its commits one after another to `refs/heads/c<N>`,
/// all clients at once; client `i` uses the system's URL `i` (round robin).
/// A refused push is handled as Flotilla's refusal says: look whether the
/// ref landed, and push again if not.
async fn small_pushes(
    work: &Workspace,
    system: &System,
    clients: Vec<(PathBuf, Vec<String>)>,
) -> anyhow::Result<SmallPushes> {
    let began = Instant::now();
    let mut tasks = Vec::new();
    for (client, (dir, commits)) in clients.into_iter().enumerate() {
        let url = system.url(client).to_owned();
        let home = work.home.clone();
        tasks.push(tokio::spawn(async move {
            let mut result = SmallPushes::default();
            let branch = format!("refs/heads/c{client:02}");
            for commit in commits {
                let refspec = format!("{commit}:{branch}");
                let pushed = Instant::now();
                let mut attempt = 0;
                let acknowledged = loop {
                    attempt += 1;
                    let Err(error) = git(&home, &dir, &["push", "-q", &url, &refspec], None).await
                    else {
                        break true;
                    };
                    result.refused += 1;
                    let listing = git(&home, &dir, &["ls-remote", &url, &branch], None).await?;
                    if listing.split_whitespace().next() == Some(commit.as_str()) {
                        result.landed += 1;
                        break true;
                    }
                    if attempt >= MAX_ATTEMPTS {
                        // The next commit builds on this one and carries it.
                        result.failed += 1;
                        result.last_error = Some(format!("{error:#}"));
                        break false;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                if acknowledged {
                    result.latencies.push(pushed.elapsed());
                }
            }
            anyhow::Ok(result)
        }));
    }
    let mut total = SmallPushes::default();
    for task in tasks {
        let mut client = task.await??;
        total.latencies.append(&mut client.latencies);
        total.refused += client.refused;
        total.landed += client.landed;
        total.failed += client.failed;
        total.last_error = total.last_error.or(client.last_error);
    }
    total.elapsed = began.elapsed();
    total.latencies.sort_unstable();
    Ok(total)
}

/// Checks that `url` serves every client's last commit on its branch.
async fn check_branches(
    work: &Workspace,
    url: &str,
    expected: &[(usize, String)],
) -> anyhow::Result<()> {
    let listing = git(
        &work.home,
        &work.scratch,
        &["ls-remote", "--heads", url],
        None,
    )
    .await?;
    for (client, commit) in expected {
        let line = format!("{commit}\trefs/heads/c{client:02}");
        if !listing.lines().any(|l| l == line) {
            bail!("{url} does not serve c{client:02} at {commit}:\n{listing}");
        }
    }
    Ok(())
}

async fn remote_main(work: &Workspace, url: &str) -> Option<String> {
    let listing = git(
        &work.home,
        &work.scratch,
        &["ls-remote", url, "refs/heads/main"],
        None,
    )
    .await
    .ok()?;
    listing.split_whitespace().next().map(str::to_owned)
}

fn megabytes(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub async fn run(args: GitArgs) -> anyhow::Result<()> {
    if args.files == 0 || args.clients == 0 || args.rounds == 0 || args.clones == 0 {
        bail!("--files, --clones, --clients and --rounds must be at least 1");
    }
    let root = tempfile::tempdir()?;
    let home = root.path().join("home");
    let scratch = root.path().join("scratch");
    let source = root.path().join("source");
    for dir in [&home, &scratch, &source] {
        std::fs::create_dir_all(dir)?;
    }

    // The medium repository: one commit, packed once so that both pushes
    // reuse the same pack data instead of compressing again.
    let began = Instant::now();
    let content_bytes = {
        let source = source.clone();
        let (files, megabytes) = (args.files, args.megabytes);
        tokio::task::spawn_blocking(move || generate(&source, files, megabytes)).await??
    };
    git(&home, &source, &["init", "-q", "-b", "main", "."], None).await?;
    git(&home, &source, &["add", "-A"], None).await?;
    git(
        &home,
        &source,
        &["commit", "-q", "-m", "medium repository"],
        None,
    )
    .await?;
    git(&home, &source, &["repack", "-a", "-d", "-q"], None).await?;
    let main = git(&home, &source, &["rev-parse", "main"], None)
        .await?
        .trim()
        .to_owned();
    let root_entries = git(&home, &source, &["ls-tree", "main"], None).await?;
    let source_pack = pack_bytes(&source.join(".git/objects"))?;
    eprintln!(
        "generated {} files, {:.1} MB ({:.1} MB packed) in {:.1} s",
        args.files,
        megabytes(content_bytes),
        megabytes(source_pack),
        began.elapsed().as_secs_f64()
    );
    let work = Workspace {
        home,
        source,
        root_entries,
        main: main.clone(),
        scratch,
    };

    // The plain server: one bare repository, pushes allowed.
    let plain_root = root.path().join("plain");
    let plain_repo = plain_root.join(format!("{PROJECT}/{REPO}.git"));
    std::fs::create_dir_all(&plain_repo)?;
    git(
        &work.home,
        &plain_repo,
        &["init", "-q", "--bare", "-b", "main"],
        None,
    )
    .await?;
    git(
        &work.home,
        &plain_repo,
        &["config", "http.receivepack", "true"],
        None,
    )
    .await?;
    if args.plain_durable {
        for (key, value) in [
            ("core.fsync", "committed,pack-metadata"),
            ("core.fsyncMethod", "fsync"),
            ("receive.fsckObjects", "true"),
            ("transfer.fsckObjects", "true"),
        ] {
            git(&work.home, &plain_repo, &["config", key, value], None).await?;
        }
    }
    let plain_server = PlainGitServer::start(plain_root, None).await?;
    let plain = System {
        name: "plain",
        urls: vec![format!(
            "http://{}/git/{PROJECT}/{REPO}.git",
            plain_server.addr
        )],
    };

    // Flotilla: three servers, the repository created through the API.
    let mut cluster = TestCluster::start(3, ServerFlags::default()).await?;
    cluster
        .post_json(
            &cluster.servers[0].addr,
            "/api/v1/projects",
            serde_json::json!({ "id": PROJECT }),
        )
        .await?;
    cluster
        .post_json(
            &cluster.servers[0].addr,
            &format!("/api/v1/projects/{PROJECT}/repos"),
            serde_json::json!({ "name": REPO }),
        )
        .await?;
    let leader = cluster.leader().await?;
    // The medium push goes to a follower (its proposal is forwarded to the
    // leader); clones and small pushes spread over all three servers.
    let mut servers: Vec<&flotilla_tests::ServerProcess> = cluster.servers.iter().collect();
    servers.sort_by_key(|server| server.node_id == leader);
    let flotilla = System {
        name: "flotilla",
        urls: servers
            .iter()
            .map(|server| {
                format!(
                    "http://flotilla:{}@{}/git/{PROJECT}/{REPO}.git",
                    cluster.token, server.addr
                )
            })
            .collect(),
    };
    let systems = [&plain, &flotilla];

    // (1) The initial push.
    let mut push_times = Vec::new();
    for system in systems {
        push_times.push(initial_push(&work, system).await?);
    }
    // Every Flotilla server serves main before anything else is measured:
    // the third copy is made after the acknowledgement.
    let acknowledged = Instant::now();
    for url in &flotilla.urls {
        let (work, main) = (&work, main.as_str());
        flotilla_tests::wait_for(
            "every server to serve the pushed main",
            Duration::from_secs(300),
            move || async move { remote_main(work, url).await.as_deref() == Some(main) },
        )
        .await?;
    }
    let all_copies = acknowledged.elapsed();

    // (2) Clones, alternating between the systems.
    let mut clone_times = [Vec::new(), Vec::new()];
    let mut clone_bytes = [0u64; 2];
    for round in 0..args.clones {
        for (index, system) in systems.iter().enumerate() {
            let (elapsed, bytes) = clone_once(&work, system.url(round), &main).await?;
            clone_times[index].push(elapsed);
            clone_bytes[index] = bytes;
        }
    }
    for times in &mut clone_times {
        times.sort_unstable();
    }

    // (3) Small pushes: each system in turn under the same load.
    let mut small = Vec::new();
    for system in systems {
        let clients = prepare_clients(&work, system, args.clients, args.rounds).await?;
        let expected: Vec<(usize, String)> = clients
            .iter()
            .enumerate()
            .map(|(client, (_, commits))| (client, commits.last().cloned().unwrap_or_default()))
            .collect();
        let result = small_pushes(&work, system, clients).await?;
        if let Some(error) = &result.last_error {
            eprintln!(
                "{}: {} small pushes failed after {MAX_ATTEMPTS} attempts; the last: {error}",
                system.name, result.failed
            );
        }
        let failed = result.failed;
        small.push(result);
        if failed > 0 {
            // A client whose last push failed has its last commit unserved.
            continue;
        }
        // Every server serves every client's last push (Flotilla's third
        // copy may trail the acknowledgements).
        for url in &system.urls {
            let (work, expected) = (&work, &expected);
            let served = flotilla_tests::wait_for(
                "every server to serve the clients' branches",
                Duration::from_secs(60),
                move || async move { check_branches(work, url, expected).await.is_ok() },
            )
            .await;
            if served.is_err() {
                check_branches(work, url, expected).await?;
            }
        }
    }

    println!(
        "# Hosted git: Flotilla (3 servers, acknowledged after Raft commit) vs plain \
         git http-backend (1 process{}), 127.0.0.1",
        if args.plain_durable {
            ", fsync + fsck like Flotilla"
        } else {
            ", git defaults"
        }
    );
    println!(
        "# medium repository: {} files, {:.1} MB, pack {:.1} MB; {} clones each; \
         {} clients x {} small pushes",
        args.files,
        megabytes(content_bytes),
        megabytes(source_pack),
        args.clones,
        args.clients,
        args.rounds
    );
    println!(
        "{:<34} {:>12} {:>12} {:>10}",
        "figure", "plain", "flotilla", "flot/plain"
    );
    let row = |name: &str, plain: f64, flotilla: f64, decimals: usize| {
        println!(
            "{:<34} {:>12.decimals$} {:>12.decimals$} {:>9.2}x",
            name,
            plain,
            flotilla,
            flotilla / plain
        );
    };
    let seconds = |d: Duration| d.as_secs_f64();
    row(
        "initial push, s (lower better)",
        seconds(push_times[0]),
        seconds(push_times[1]),
        2,
    );
    row(
        "initial push, MB/s (higher better)",
        megabytes(source_pack) / seconds(push_times[0]),
        megabytes(source_pack) / seconds(push_times[1]),
        1,
    );
    let clone_median = [
        percentile(&clone_times[0], 0.5),
        percentile(&clone_times[1], 0.5),
    ];
    row(
        "clone p50, s (lower better)",
        seconds(clone_median[0]),
        seconds(clone_median[1]),
        2,
    );
    row(
        "clone, MB/s (higher better)",
        megabytes(clone_bytes[0]) / seconds(clone_median[0]),
        megabytes(clone_bytes[1]) / seconds(clone_median[1]),
        1,
    );
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    row(
        "small push p50, ms (lower better)",
        ms(percentile(&small[0].latencies, 0.5)),
        ms(percentile(&small[1].latencies, 0.5)),
        1,
    );
    row(
        "small push p99, ms (lower better)",
        ms(percentile(&small[0].latencies, 0.99)),
        ms(percentile(&small[1].latencies, 0.99)),
        1,
    );
    row(
        "small pushes/s (higher better)",
        small[0].per_second(),
        small[1].per_second(),
        1,
    );
    println!(
        "# small push attempts refused: plain {} ({} had landed, {} pushes given up), \
         flotilla {} ({} had landed, {} pushes given up after {MAX_ATTEMPTS} attempts)",
        small[0].refused,
        small[0].landed,
        small[0].failed,
        small[1].refused,
        small[1].landed,
        small[1].failed
    );
    println!(
        "# clone pack received: plain {:.1} MB, flotilla {:.1} MB; flotilla: third copy of the \
         medium push served {} ms after the acknowledgement",
        megabytes(clone_bytes[0]),
        megabytes(clone_bytes[1]),
        millis(all_copies)
    );

    drop(servers);
    for server in &mut cluster.servers {
        server.stop()?;
    }
    plain_server.stop().await?;
    Ok(())
}
