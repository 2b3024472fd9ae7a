//! `flotilla-bench compositor`: an idle desktop's cost and how fast it
//! shows its terminal, Flotilla's compositor beside weston's headless
//! backend (pixman), both hosting foot at the same size in the same run.
//!
//! For each of `--runs` runs, per compositor: start it, start foot, and
//! (Flotilla only: gpud holds its frames) time compositor start → foot's
//! first composed frame, and in a run of its own → chromium's; then after foot settles, RSS and PSS of the
//! compositor process (and, for Flotilla, of the whole bench process that
//! hosts gpud, as its share) and the CPU both burn over `--idle` seconds
//! with nothing happening. Needs foot and weston (Debian packages) and a
//! Vulkan device (lavapipe here); sway (headless, pixman, as `nobody`)
//! joins the comparison when installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_gpu::service::GpuService;

use crate::{millis, percentile};

#[derive(clap::Args)]
pub struct CompositorArgs {
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Seconds of idleness measured per run.
    #[arg(long, default_value_t = 3)]
    idle: u64,
    #[arg(long, default_value_t = 1280)]
    width: u32,
    #[arg(long, default_value_t = 800)]
    height: u32,
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `field` of /proc/PID/status or smaps_rollup, in KiB.
pub(crate) fn proc_kib(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(after) = stat.rfind(')').map(|at| &stat[at + 2..]) else {
        return 0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields
        .get(11)
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
}

struct Sample {
    first_frame: Option<Duration>,
    /// Start → the compositor's socket is there.
    ready: Option<Duration>,
    rss_kib: u64,
    pss_kib: u64,
    /// CPU milliseconds per idle second.
    idle_cpu_ms: f64,
}

fn wait_for(path: &Path, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// `program` with `args` as a client of the compositor at `socket`.
fn wayland_client(
    program: &str,
    args: &[&str],
    runtime: &Path,
    socket: &str,
) -> anyhow::Result<Killed> {
    Ok(Killed(
        Command::new(program)
            .args(args)
            .env("XDG_RUNTIME_DIR", runtime)
            .env("WAYLAND_DISPLAY", socket)
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

fn foot(runtime: &Path, socket: &str) -> anyhow::Result<Killed> {
    wayland_client(
        "foot",
        &[
            "--override=colors.background=102030",
            "sh",
            "-c",
            "sleep 1000",
        ],
        runtime,
        socket,
    )
}

/// foot's background and chromium's page in the timed runs, B G R X.
const FOOT_BGRX: [u8; 4] = [0x30, 0x20, 0x10, 0xff];
const PAGE_BGRX: [u8; 4] = [0x34, 0xab, 0x12, 0xff];

/// The app whose first frame is timed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Foot,
    /// Debian's chromium on Wayland, showing a page of one colour.
    Chromium,
}

fn chromium(runtime: &Path, socket: &str, profile: &Path) -> anyhow::Result<Killed> {
    let profile = format!("--user-data-dir={}", profile.display());
    wayland_client(
        "chromium",
        &[
            "--ozone-platform=wayland",
            // Root cannot use chromium's own sandbox (the desktop's
            // sandbox is the boundary, as in the desktop session).
            "--no-sandbox",
            "--test-type",
            "--no-first-run",
            "--disable-gpu",
            &profile,
            "--app=data:text/html,<body style=background:%2312ab34>",
        ],
        runtime,
        socket,
    )
}

fn idle(pid: u32, seconds: u64) -> f64 {
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(seconds));
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (cpu_ticks(pid) - before) as f64 * 1000.0 / hz / seconds as f64
}

fn flotilla_run(
    args: &CompositorArgs,
    exe: &Path,
    gpus: &[flotilla_gpu::GpuInfo],
    client: Client,
) -> anyhow::Result<Sample> {
    let root = tempfile::tempdir()?;
    let runtime: PathBuf = root.path().join("run");
    std::fs::create_dir(&runtime)?;
    let service = GpuService::open(gpus, args.width, args.height);
    let gpu = service.attach("bench", None, 256 << 20, &root.path().join("gpu"), None)?;
    let started = Instant::now();
    let compositor = Killed(
        Command::new(exe)
            .args([
                "compositor",
                "--socket-name",
                "wayland-bench",
                "--gpu-socket",
            ])
            .arg(&gpu.socket)
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for(&runtime.join("wayland-bench"), Duration::from_secs(10))?;
    let ready = started.elapsed();
    let _client = match client {
        Client::Foot => foot(&runtime, "wayland-bench")?,
        Client::Chromium => chromium(&runtime, "wayland-bench", &root.path().join("profile"))?,
    };
    // The client's first frame: its known colour at the centre (foot's
    // background, chromium's page). Frames are awaited on gpud's frame
    // signal and each looked at once (reading the scanout in a loop would
    // hold the desktop's gpud session, delaying the very composition
    // measured). Neither the scanout's first conversion (black, before
    // anything is composed) nor the compositor's background counts.
    let colour: [u8; 4] = match client {
        Client::Foot => FOOT_BGRX,
        Client::Chromium => PAGE_BGRX,
    };
    let want_y = flotilla_gpu::compose::i420_cpu(&colour.repeat(4), 2, 2)[0];
    let (cx, cy) = (args.width / 2, args.height / 2);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = None;
    let first_frame = loop {
        if let Some(frame) = service.next_frame("bench", last, Duration::from_millis(100)) {
            last = Some(frame.sequence);
            let y = frame.data[(cy * frame.width + cx) as usize];
            if y.abs_diff(want_y) <= 2 {
                break started.elapsed();
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the client never showed");
    };
    if client == Client::Chromium {
        // Its first frame is what is timed; memory and idle CPU are
        // measured with foot.
        return Ok(Sample {
            first_frame: Some(first_frame),
            ready: Some(ready),
            rss_kib: 0,
            pss_kib: 0,
            idle_cpu_ms: 0.0,
        });
    }
    std::thread::sleep(Duration::from_secs(1));
    let pid = compositor.0.id();
    let idle_cpu_ms = idle(pid, args.idle);
    Ok(Sample {
        first_frame: Some(first_frame),
        ready: Some(ready),
        rss_kib: proc_kib(pid, "status", "VmRSS:"),
        pss_kib: proc_kib(pid, "smaps_rollup", "Pss:"),
        idle_cpu_ms,
    })
}

fn weston_run(args: &CompositorArgs) -> anyhow::Result<Sample> {
    let root = tempfile::tempdir()?;
    let runtime: PathBuf = root.path().join("run");
    std::fs::create_dir(&runtime)?;
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let weston = Killed(
        Command::new("weston")
            .args([
                "--backend=headless-backend.so",
                "--socket=wayland-weston",
                "--idle-time=0",
                &format!("--width={}", args.width),
                &format!("--height={}", args.height),
            ])
            .env("XDG_RUNTIME_DIR", &runtime)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for(&runtime.join("wayland-weston"), Duration::from_secs(10))?;
    let _foot = foot(&runtime, "wayland-weston")?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = weston.0.id();
    let idle_cpu_ms = idle(pid, args.idle);
    Ok(Sample {
        first_frame: None,
        ready: None,
        rss_kib: proc_kib(pid, "status", "VmRSS:"),
        pss_kib: proc_kib(pid, "smaps_rollup", "Pss:"),
        idle_cpu_ms,
    })
}

/// sway's headless backend (wlroots, pixman renderer), run as `nobody`:
/// sway refuses to run as root.
fn sway_run(args: &CompositorArgs) -> anyhow::Result<Sample> {
    let root = tempfile::tempdir()?;
    let runtime: PathBuf = root.path().join("run");
    std::fs::create_dir(&runtime)?;
    std::os::unix::fs::chown(&runtime, Some(65534), Some(65534))?;
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )?;
    let config = root.path().join("sway.conf");
    std::fs::write(
        &config,
        format!(
            "output HEADLESS-1 resolution {}x{}\nxwayland disable\n",
            args.width, args.height
        ),
    )?;
    std::fs::set_permissions(
        root.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    let sway = Killed(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sway",
                "-c",
            ])
            .arg(&config)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("HOME", root.path())
            .env("WLR_BACKENDS", "headless")
            .env("WLR_LIBINPUT_NO_DEVICES", "1")
            .env("WLR_RENDERER", "pixman")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_for(&runtime.join("wayland-1"), Duration::from_secs(10))?;
    let _foot = foot(&runtime, "wayland-1")?;
    std::thread::sleep(Duration::from_secs(1));
    let pid = sway.0.id();
    let idle_cpu_ms = idle(pid, args.idle);
    Ok(Sample {
        first_frame: None,
        ready: None,
        rss_kib: proc_kib(pid, "status", "VmRSS:"),
        pss_kib: proc_kib(pid, "smaps_rollup", "Pss:"),
        idle_cpu_ms,
    })
}

fn report(name: &str, samples: &[Sample]) -> (f64, f64) {
    let mut rss: Vec<u64> = samples.iter().map(|s| s.rss_kib).collect();
    let mut pss: Vec<u64> = samples.iter().map(|s| s.pss_kib).collect();
    let mut cpu: Vec<f64> = samples.iter().map(|s| s.idle_cpu_ms).collect();
    rss.sort_unstable();
    pss.sort_unstable();
    cpu.sort_by(f64::total_cmp);
    let pss_mib = pss[pss.len() / 2] as f64 / 1024.0;
    let cpu_ms = cpu[cpu.len() / 2];
    println!(
        "{name:<28} RSS p50 {:>6.1} MiB  PSS p50 {:>6.1} MiB  idle CPU p50 {:>6.2} ms/s",
        rss[rss.len() / 2] as f64 / 1024.0,
        pss_mib,
        cpu_ms
    );
    let mut frames: Vec<Duration> = samples.iter().filter_map(|s| s.first_frame).collect();
    let mut ready: Vec<Duration> = samples.iter().filter_map(|s| s.ready).collect();
    if !frames.is_empty() {
        frames.sort_unstable();
        ready.sort_unstable();
        println!(
            "{name:<28} start → foot's first composed frame p50 {} ms, p99 {} ms (socket ready p50 {} ms)",
            millis(percentile(&frames, 0.5)),
            millis(percentile(&frames, 0.99)),
            millis(percentile(&ready, 0.5)),
        );
    }
    (pss_mib, cpu_ms)
}

pub fn run(args: CompositorArgs) -> anyhow::Result<()> {
    let exe = std::env::var_os("FLOTILLA_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/flotilla"));
    anyhow::ensure!(
        exe.is_file(),
        "no flotilla binary at {} (set FLOTILLA_BIN)",
        exe.display()
    );
    let gpus = flotilla_gpu::enumerate().map_err(anyhow::Error::msg)?;
    println!(
        "# {} runs, {}×{}, foot as the client, {} s idle each; gpud on {}",
        args.runs,
        args.width,
        args.height,
        args.idle,
        gpus.first().map_or("the CPU", |gpu| gpu.name.as_str())
    );
    let have_sway = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("sway").is_file()));
    let have_chromium = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("chromium").is_file()));
    let (mut ours, mut theirs, mut sways) = (Vec::new(), Vec::new(), Vec::new());
    let mut chromiums: Vec<Duration> = Vec::new();
    for _ in 0..args.runs {
        ours.push(flotilla_run(&args, &exe, &gpus, Client::Foot)?);
        if have_chromium {
            let sample = flotilla_run(&args, &exe, &gpus, Client::Chromium)?;
            chromiums.extend(sample.first_frame);
        }
        theirs.push(weston_run(&args)?);
        if have_sway {
            sways.push(sway_run(&args)?);
        }
    }
    let (our_pss, our_cpu) = report("flotilla compositor", &ours);
    if chromiums.is_empty() {
        println!("(chromium is not installed: apt-get install chromium for its first frame)");
    } else {
        chromiums.sort_unstable();
        println!(
            "{:<28} start → chromium's first composed frame p50 {} ms, p99 {} ms",
            "flotilla compositor",
            millis(percentile(&chromiums, 0.5)),
            millis(percentile(&chromiums, 0.99)),
        );
    }
    let (their_pss, their_cpu) = report("weston headless (pixman)", &theirs);
    println!(
        "flotilla / weston: PSS {:.2}×, idle CPU {:.2} vs {:.2} ms/s",
        our_pss / their_pss.max(0.001),
        our_cpu,
        their_cpu
    );
    if have_sway {
        let (sway_pss, sway_cpu) = report("sway headless (pixman)", &sways);
        println!(
            "flotilla / sway: PSS {:.2}×, idle CPU {:.2} vs {:.2} ms/s",
            our_pss / sway_pss.max(0.001),
            our_cpu,
            sway_cpu
        );
    } else {
        println!("(sway is not installed: apt-get install sway for its column)");
    }
    println!("(gpud runs in the node agent, shared by every desktop; not in these figures)");
    Ok(())
}
