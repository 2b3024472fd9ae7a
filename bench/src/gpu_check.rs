//! `flotilla-bench gpu-check`: what to run on a machine with a real GPU
//! (`bench/gpu-check.sh` wraps it). For every Vulkan device it prints:
//! - the capability report gpud registers (`flotilla gpu info` shows it);
//! - whether dma-buf export and import work;
//! - composition ms per frame (guest transfer + SUBMIT_3D + RESOURCE_FLUSH,
//!   I420 ready) at 1280×800 and 1920×1080, for 1 and 8 desktops sharing
//!   the device (8 threads, one session each, as gpud serves them), for a
//!   terminal line and a full frame;
//! - GPU memory per desktop from the ledger, and with `--features nvml`
//!   what NVML says this process holds on the device.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use flotilla_gpu::device::{Device, Selector};
use flotilla_gpu::protocol::{Format, Rect};
use flotilla_gpu::render::Renderer;
use flotilla_gpu::session::{Ledger, Session};

use crate::gpu::{rect, summarize, window_and_overlay, Desktop};

#[derive(clap::Args)]
pub struct GpuCheckArgs {
    /// Frames per desktop per workload.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// The most desktops sharing one GPU.
    #[arg(long, default_value_t = 8)]
    desktops: usize,
    /// Only this Vulkan device index (default: every device).
    #[arg(long)]
    gpu: Option<u32>,
}

/// Every frame's time, the wall time, and each desktop's charge.
struct Run {
    samples: Vec<Duration>,
    wall: Duration,
    charged: Vec<u64>,
}

/// Runs `desktops` desktops on `renderer` at `width` × `height`, each
/// drawing `iterations` frames with `damage`.
fn run_desktops(
    renderer: &Arc<Renderer>,
    ledger: &Arc<Ledger>,
    desktops: usize,
    (width, height): (u32, u32),
    damage: Rect,
    iterations: usize,
) -> anyhow::Result<Run> {
    let barrier = Arc::new(Barrier::new(desktops));
    let started = Instant::now();
    let threads: Vec<_> = (0..desktops)
        .map(|i| {
            let renderer = renderer.clone();
            let ledger = ledger.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || -> anyhow::Result<(Vec<Duration>, u64)> {
                let name = format!("dt-{i}");
                let session = Session::with_renderer(
                    &name,
                    1 << 30,
                    ledger.clone(),
                    width,
                    height,
                    Some(renderer),
                );
                let mut desktop = Desktop::new(session, Format::B8G8R8A8, width, height)?;
                let list = window_and_overlay(width, height, damage);
                let row = (width * 4) as usize;
                barrier.wait();
                let mut samples = Vec::with_capacity(iterations);
                for n in 0..iterations {
                    let bytes = desktop.window.bytes();
                    let start = damage.y as usize * row;
                    for byte in &mut bytes[start..start + damage.height as usize * row] {
                        *byte = byte.wrapping_add(n as u8 | 1);
                    }
                    let frame = Instant::now();
                    desktop.frame(&list, damage, width)?;
                    samples.push(frame.elapsed());
                }
                Ok((samples, ledger.accounts()[&name].charged_bytes))
            })
        })
        .collect();
    let mut run = Run {
        samples: Vec::new(),
        wall: Duration::ZERO,
        charged: Vec::new(),
    };
    for thread in threads {
        let (samples, charged) = thread
            .join()
            .map_err(|_| anyhow::anyhow!("a desktop's thread panicked"))??;
        run.samples.extend(samples);
        run.charged.push(charged);
    }
    run.wall = started.elapsed();
    Ok(run)
}

pub fn run(args: GpuCheckArgs) -> anyhow::Result<()> {
    let gpus = flotilla_gpu::enumerate().map_err(anyhow::Error::msg)?;
    println!("# {} Vulkan device(s)", gpus.len());
    #[cfg(feature = "nvml")]
    let nvml = flotilla_gpu::nvml::Nvml::open();
    #[cfg(not(feature = "nvml"))]
    let nvml: anyhow::Result<()> = Err(anyhow::anyhow!("built without --features nvml"));
    if let Err(error) = &nvml {
        println!("# NVML: {error}");
    }
    for gpu in gpus {
        if args.gpu.is_some_and(|only| only != gpu.index) {
            continue;
        }
        println!(
            "\n## GPU {}: {} ({}), uuid {}",
            gpu.index, gpu.name, gpu.driver, gpu.uuid
        );
        let device = Device::open(&Selector::Uuid(gpu.uuid.clone())).map_err(anyhow::Error::msg)?;
        println!("{:#?}", device.capabilities());
        match device.dma_buf_round_trip() {
            Ok(what) => println!("dma-buf: works: {what}"),
            Err(why) => println!("dma-buf: does not work: {why}"),
        }
        let renderer = Arc::new(Renderer::new(Arc::new(device)).map_err(anyhow::Error::msg)?);
        let ledger = Arc::new(Ledger::default());
        for size in [(1280u32, 800u32), (1920, 1080)] {
            for desktops in [1, args.desktops.max(1)] {
                for (workload, damage) in [
                    ("terminal line", rect(0, size.1 / 2, size.0, 20)),
                    ("full frame", rect(0, 0, size.0, size.1)),
                ] {
                    let mut run =
                        run_desktops(&renderer, &ledger, desktops, size, damage, args.iterations)?;
                    let frames = run.samples.len();
                    summarize(
                        &format!("{}×{} {desktops} desktop(s), {workload}", size.0, size.1),
                        &mut run.samples,
                    );
                    let most = run.charged.iter().copied().max().unwrap_or(0);
                    println!(
                        "    {:.0} frames/s in all; at most {:.1} MiB charged to a desktop",
                        frames as f64 / run.wall.as_secs_f64(),
                        most as f64 / 1048576.0
                    );
                }
            }
        }
        // Memory, with 8 desktops at 1920×1080 alive at once.
        let sessions: Vec<Desktop> = (0..args.desktops.max(1))
            .map(|i| {
                let session = Session::with_renderer(
                    &format!("held-{i}"),
                    1 << 30,
                    ledger.clone(),
                    1920,
                    1080,
                    Some(renderer.clone()),
                );
                Desktop::new(session, Format::B8G8R8A8, 1920, 1080)
            })
            .collect::<anyhow::Result<_>>()?;
        println!(
            "ledger with {} desktops at 1920×1080 (window, overlay, scanout, I420 frame each):",
            sessions.len()
        );
        for (desktop, account) in ledger.accounts() {
            println!(
                "    {desktop}: {} bytes ({:.1} MiB) of a {} MiB budget",
                account.charged_bytes,
                account.charged_bytes as f64 / 1048576.0,
                account.budget_bytes >> 20
            );
        }
        println!(
            "    total charged: {:.1} MiB",
            ledger.total_charged() as f64 / 1048576.0
        );
        #[cfg(feature = "nvml")]
        if let Ok(nvml) = &nvml {
            match nvml.process_memory(&gpu.uuid, std::process::id()) {
                Ok(Some(bytes)) => println!(
                    "    NVML: this process holds {:.1} MiB on the GPU (ledger + pipelines + driver overhead)",
                    bytes as f64 / 1048576.0
                ),
                Ok(None) => println!("    NVML: no memory of this process on the GPU"),
                Err(error) => println!("    NVML: {error}"),
            }
        }
        drop(sessions);
        println!(
            "    after every desktop left: {} bytes charged",
            ledger.total_charged()
        );
    }
    Ok(())
}
