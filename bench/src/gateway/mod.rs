//! `flotilla-bench gateway`: what the LLM gateway on the desktop door adds to
//! a streaming model call, beside the same calls made straight to the
//! provider and through LiteLLM's proxy, in the same run, by the same client.
//!
//! The provider is the scripted upstream (`flotilla_tests::llm_upstream`) on
//! threads of its own. Every call is a streaming `POST /v1/messages`:
//! `script-long-<n>` (n text deltas, sent as fast as the upstream can) and
//! `script-slow-<ms>` (its frames `ms` apart). For each concurrency: time to
//! first byte, the gap between consecutive events, the whole stream, p50 and
//! p99, and the server's CPU time per stream. Then memory: `--hold` calls of
//! `script-slow-<--hold-ms>` held open at once, the server's RSS before and
//! while they are open, per stream.

mod load;
mod peers;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

use load::{Expect, Load, Summary, Target};
use peers::{cpu_time, tree_rss_kib, Flotilla, LiteLlm, Upstream, CALLS_PER_DESKTOP};

#[derive(clap::Args)]
pub struct GatewayArgs {
    /// Concurrent streams, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64,512")]
    concurrency: Vec<usize>,
    /// Text deltas per unpaced stream (`script-long-<n>`).
    #[arg(long, default_value_t = 50)]
    chunks: usize,
    /// Streams per point and path, at least (each worker makes
    /// ceil(streams / concurrency) calls, at least 2).
    #[arg(long, default_value_t = 400)]
    streams: usize,
    /// Pause between the paced streams' frames, ms (`script-slow-<ms>`;
    /// 0 skips them).
    #[arg(long, default_value_t = 20)]
    paced_ms: u64,
    /// Streams held open at once for the memory figure (0 skips it).
    #[arg(long, default_value_t = 512)]
    hold: usize,
    /// Pause between the held streams' frames, ms (12 frames: they stay
    /// open 11 pauses).
    #[arg(long, default_value_t = 1500)]
    hold_ms: u64,
    /// Worker threads of the scripted upstream's runtime.
    #[arg(long, default_value_t = 1)]
    upstream_threads: usize,
    /// LiteLLM's `litellm` executable (in a virtualenv:
    /// `python3 -m venv /tmp/litellm && /tmp/litellm/bin/pip install 'litellm[proxy]'`).
    #[arg(long, default_value = "/tmp/litellm/bin/litellm")]
    litellm: PathBuf,
    /// Skip LiteLLM.
    #[arg(long)]
    no_litellm: bool,
}

/// One path the calls can take.
struct Path {
    name: &'static str,
    target: Target,
    /// The process in between (none for the straight path).
    pid: Option<u32>,
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `a / b` as a ratio, or `-` when either is not above zero (an added
/// time can come out negative) or `b` too small to divide by.
fn ratio(a: f64, b: f64) -> String {
    if b < 1e-3 || a < 0.0 {
        "-".to_owned()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// Raises the soft open-file limit to the hard one (the servers inherit it):
/// 512 streams are 2,048 sockets on this machine.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write or read only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// One concurrency point on every path.
struct Point {
    summaries: Vec<Summary>,
    /// CPU time of the process in between, per stream.
    cpu: Vec<Option<Duration>>,
}

async fn measure(paths: &[Path], load: &Load<'_>, expect: &Expect) -> anyhow::Result<Point> {
    let mut point = Point {
        summaries: Vec::new(),
        cpu: Vec::new(),
    };
    for path in paths {
        let before = path.pid.map(cpu_time);
        let summary = load::closed_loop(&path.target, load, expect).await?;
        let used = path
            .pid
            .zip(before)
            .map(|(pid, before)| cpu_time(pid).saturating_sub(before));
        if let Some(error) = &summary.first_error {
            eprintln!(
                "{} at {}: {} of {} calls failed; the first: {error}",
                path.name,
                load.concurrency,
                summary.errors,
                summary.errors + summary.streams()
            );
        }
        point
            .cpu
            .push(used.map(|used| used / summary.streams().max(1) as u32));
        point.summaries.push(summary);
    }
    Ok(point)
}

/// Prints one point: every figure for every path, each path after the
/// straight one as a ratio to the one before it (flotilla / upstream,
/// litellm / flotilla).
fn print_point(paths: &[Path], point: &Point, title: &str) {
    println!("{title}");
    let mut header = format!("{:<30}", "figure (ms unless named)");
    for (index, path) in paths.iter().enumerate() {
        header.push_str(&format!(" {:>10}", path.name));
        if index > 0 {
            header.push_str(&format!(" {:>10}", format!("/{}", paths[index - 1].name)));
        }
    }
    println!("{header}");
    let row = |name: &str, value: &dyn Fn(&Summary) -> f64| {
        let mut line = format!("{name:<30}");
        for (index, summary) in point.summaries.iter().enumerate() {
            line.push_str(&format!(" {:>10.3}", value(summary)));
            if index > 0 {
                let previous = value(&point.summaries[index - 1]);
                line.push_str(&format!(" {:>10}", ratio(value(summary), previous)));
            }
        }
        println!("{line}");
    };
    row("TTFB p50", &|s| ms(s.ttfb(0.5)));
    row("TTFB p99", &|s| ms(s.ttfb(0.99)));
    row("event gap p50", &|s| ms(s.gap(0.5)));
    row("event gap p99", &|s| ms(s.gap(0.99)));
    row("whole stream p50", &|s| ms(s.total(0.5)));
    row("whole stream p99", &|s| ms(s.total(0.99)));
    row("calls per second", &|s| s.per_second());
    let straight = ms(point.summaries[0].ttfb(0.5));
    let mut added = format!("{:<30} {:>10}", "added TTFB p50 (vs upstream)", "-");
    let mut cpu = format!("{:<30} {:>10}", "server CPU per stream", "-");
    let mut errors = format!("{:<30} {:>10}", "failed calls", point.summaries[0].errors);
    for index in 1..paths.len() {
        let ours = ms(point.summaries[index].ttfb(0.5)) - straight;
        added.push_str(&format!(" {ours:>10.3}"));
        cpu.push_str(&format!(" {:>10.3}", point.cpu[index].map_or(0.0, ms)));
        errors.push_str(&format!(" {:>10}", point.summaries[index].errors));
        if index > 1 {
            let theirs = ms(point.summaries[index - 1].ttfb(0.5)) - straight;
            added.push_str(&format!(" {:>10}", ratio(ours, theirs)));
            cpu.push_str(&format!(
                " {:>10}",
                ratio(
                    point.cpu[index].map_or(0.0, ms),
                    point.cpu[index - 1].map_or(0.0, ms)
                )
            ));
            errors.push_str(&format!(" {:>10}", ""));
        } else {
            for line in [&mut added, &mut cpu, &mut errors] {
                line.push_str(&format!(" {:>10}", ""));
            }
        }
    }
    println!("{added}\n{cpu}\n{errors}");
}

/// The memory figure of one gateway: RSS before, while `n` streams are open,
/// and the difference per stream.
struct Memory {
    before_kib: u64,
    open_kib: u64,
    opened: usize,
    n: usize,
}

impl Memory {
    fn per_stream_kib(&self) -> f64 {
        self.open_kib.saturating_sub(self.before_kib) as f64 / self.opened.max(1) as f64
    }
}

async fn hold(path: &Path, n: usize, model: &str, expect: &Expect) -> anyhow::Result<Memory> {
    let pid = path.pid.context("a process to measure")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_kib = tree_rss_kib(pid);
    // While all are open: the highest of a few readings 100 ms apart.
    let during = async {
        let mut highest = 0;
        for _ in 0..5 {
            highest = highest.max(tree_rss_kib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        highest
    };
    let (opened, open_kib, summary) = load::hold_open(
        &path.target,
        n,
        model,
        expect,
        Duration::from_secs(60),
        during,
    )
    .await?;
    if let Some(error) = &summary.first_error {
        eprintln!(
            "{}: {} of {n} held calls failed; the first: {error}",
            path.name, summary.errors
        );
    }
    Ok(Memory {
        before_kib,
        open_kib,
        opened,
        n,
    })
}

/// The p50 TTFB a point's gateways add to the straight path's.
struct Added {
    label: String,
    ours: f64,
    theirs: Option<f64>,
}

impl Added {
    fn of(label: String, point: &Point) -> Added {
        let straight = ms(point.summaries[0].ttfb(0.5));
        Added {
            label,
            ours: ms(point.summaries[1].ttfb(0.5)) - straight,
            theirs: point
                .summaries
                .get(2)
                .map(|summary| ms(summary.ttfb(0.5)) - straight),
        }
    }
}

fn met(holds: bool) -> &'static str {
    if holds {
        "met"
    } else {
        "NOT met"
    }
}

/// The goals, each said to hold or not, with its figures.
fn print_goals(added: &[Added], memory: &[(&str, Memory)]) {
    println!("\n## goals");
    let single: Vec<&Added> = added.iter().filter(|a| a.label.starts_with("1 ")).collect();
    let every: Vec<&Added> = added.iter().collect();
    for (name, chosen) in [("at concurrency 1", single), ("at every point", every)] {
        if chosen.is_empty() {
            continue;
        }
        let listed: Vec<String> = chosen
            .iter()
            .map(|a| format!("{} {:.3}", a.label, a.ours))
            .collect();
        println!(
            "added TTFB p50 <= 1 ms {name}: {} (ms: {})",
            met(chosen.iter().all(|a| a.ours <= 1.0)),
            listed.join(", ")
        );
    }
    if let Some((_, ours)) = memory.first() {
        println!(
            "<= 64 KiB per open stream: {} ({:.1} KiB)",
            met(ours.per_stream_kib() <= 64.0),
            ours.per_stream_kib()
        );
    }
    if added.iter().any(|a| a.theirs.is_some()) {
        let ttfb = added
            .iter()
            .all(|a| a.theirs.is_some_and(|theirs| a.ours < theirs));
        let kib = match memory {
            [(_, ours), (_, theirs), ..] => {
                format!(
                    ", memory per stream {}",
                    met(ours.per_stream_kib() < theirs.per_stream_kib())
                )
            }
            _ => String::new(),
        };
        println!(
            "ahead of LiteLLM: added TTFB at every point {}{kib}",
            met(ttfb)
        );
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub async fn run(args: GatewayArgs) -> anyhow::Result<()> {
    if args.concurrency.is_empty() || args.chunks == 0 || args.streams == 0 {
        bail!("--concurrency, --chunks and --streams must not be empty or 0");
    }
    raise_file_limit();
    let long = format!("script-long-{}", args.chunks);
    let paced = format!("script-slow-{}", args.paced_ms);
    let held = format!("script-slow-{}", args.hold_ms);
    let models = vec![long.clone(), paced.clone(), held.clone()];
    let long_expect = Expect {
        last_word: format!("w{} ", args.chunks - 1),
    };
    let slow_expect = Expect {
        last_word: "upstream".to_owned(),
    };
    let most = args
        .concurrency
        .iter()
        .copied()
        .chain([args.hold])
        .max()
        .unwrap_or(1);

    let upstream = Upstream::start(args.upstream_threads).await?;
    let flotilla = Flotilla::start(
        &upstream.base_url,
        &models,
        most.div_ceil(CALLS_PER_DESKTOP),
    )
    .await?;
    let litellm = if args.no_litellm {
        println!("# litellm: skipped (--no-litellm)");
        None
    } else if !args.litellm.is_file() {
        println!(
            "# litellm: skipped, no {} (python3 -m venv /tmp/litellm && \
             /tmp/litellm/bin/pip install 'litellm[proxy]')",
            args.litellm.display()
        );
        None
    } else {
        match LiteLlm::start(
            &args.litellm,
            &upstream.base_url,
            &models,
            Duration::from_secs(300),
        )
        .await
        {
            Ok(litellm) => Some(litellm),
            Err(error) => {
                println!("# litellm: skipped, it did not start: {error:#}");
                None
            }
        }
    };

    let mut paths = vec![
        Path {
            name: "upstream",
            target: Target {
                url: format!("{}/v1/messages", upstream.base_url),
                keys: Arc::new(vec!["sk-bench-upstream".to_owned()]),
            },
            pid: None,
        },
        Path {
            name: "flotilla",
            target: Target {
                url: flotilla.url.clone(),
                keys: Arc::new(flotilla.tokens.clone()),
            },
            pid: Some(flotilla.pid),
        },
    ];
    if let Some(litellm) = &litellm {
        paths.push(Path {
            name: "litellm",
            target: Target {
                url: litellm.url.clone(),
                keys: Arc::new(vec![litellm.key.clone()]),
            },
            pid: Some(litellm.pid()),
        });
    }

    println!(
        "# LLM gateway: streaming POST /v1/messages, 127.0.0.1, one reqwest client (HTTP/1.1, a \
         connection per worker); upstream = the scripted provider ({} thread(s) of its own)",
        args.upstream_threads
    );
    println!(
        "# flotilla: release `flotilla server`, one-server cluster, {} pending desktops' tokens{}",
        flotilla.tokens.len(),
        litellm.as_ref().map_or(String::new(), |litellm| format!(
            "; litellm {} proxy, 1 worker, defaults (started in {:.1} s)",
            litellm.version,
            litellm.started_in.as_secs_f64()
        ))
    );
    // Warm-up: connections, the gateway's provider pool, Python's first calls.
    for path in &paths {
        let warm = Load {
            concurrency: 8,
            per_worker: 8,
            model: &long,
            spread: Duration::ZERO,
        };
        let warm = load::closed_loop(&path.target, &warm, &long_expect).await?;
        if warm.errors > 0 {
            bail!(
                "{}: warm-up calls fail: {}",
                path.name,
                warm.first_error.unwrap_or_default()
            );
        }
    }

    // Memory first, before the big points grow the servers' pools.
    let mut memory = Vec::new();
    if args.hold > 0 {
        for path in paths.iter().skip(1) {
            memory.push((path.name, hold(path, args.hold, &held, &slow_expect).await?));
        }
    }

    let mut added = Vec::new();
    for &concurrency in &args.concurrency {
        let per_worker = args.streams.div_ceil(concurrency).max(2);
        let load = Load {
            concurrency,
            per_worker,
            model: &long,
            spread: Duration::ZERO,
        };
        let point = measure(&paths, &load, &long_expect).await?;
        print_point(
            &paths,
            &point,
            &format!(
                "\n## concurrency {concurrency}, unpaced, closed loop: {long} ({} events a stream), \
                 {} calls per path",
                args.chunks + 6,
                concurrency * per_worker
            ),
        );
        added.push(Added::of(format!("{concurrency} unpaced"), &point));
        if args.paced_ms > 0 {
            // A paced stream lasts 11 pauses: an eighth as many calls, the
            // workers' starts spread over one stream's length.
            let per_worker = (args.streams / 8).div_ceil(concurrency).max(2);
            let load = Load {
                concurrency,
                per_worker,
                model: &paced,
                spread: Duration::from_millis(11 * args.paced_ms),
            };
            let point = measure(&paths, &load, &slow_expect).await?;
            print_point(
                &paths,
                &point,
                &format!(
                    "\n## concurrency {concurrency}, paced: {paced} (12 events {} ms apart), starts \
                     spread over a stream's length, {} calls per path",
                    args.paced_ms,
                    concurrency * per_worker
                ),
            );
            added.push(Added::of(format!("{concurrency} paced"), &point));
        }
    }

    if !memory.is_empty() {
        println!(
            "\n## memory: {} streams of {held} held open at once; RSS of the process in between",
            args.hold
        );
        println!(
            "{:<10} {:>14} {:>14} {:>14} {:>10}",
            "system", "RSS before MiB", "RSS open MiB", "KiB per stream", "opened"
        );
        for (name, m) in &memory {
            println!(
                "{name:<10} {:>14.1} {:>14.1} {:>14.1} {:>10}",
                mib(m.before_kib),
                mib(m.open_kib),
                m.per_stream_kib(),
                format!("{}/{}", m.opened, m.n)
            );
        }
    }
    print_goals(&added, &memory);

    drop(litellm);
    flotilla.stop()?;
    drop(upstream);
    Ok(())
}
