//! `flotilla-bench gpu`: composition cost, guest submit → I420 frame
//! ready, on the Vulkan path and on the CPU reference in the same run.
//!
//! Two gpud sessions (one on Vulkan device 0 — lavapipe on the CI machine
//! — one on the CPU) get the same commands through `Session::handle`, the
//! code path a guest's socket reaches: the guest's new pixels are
//! transferred (TRANSFER_TO_HOST_2D of the damage), one composition list
//! is submitted (SUBMIT_3D) and the scanout flushed (RESOURCE_FLUSH), after
//! which the frame's I420 planes are ready for the encoder. Workloads at
//! 1280×800 (or `--width/--height`):
//! - `small`: a terminal line changes (1280×20 of damage) under a
//!   full-screen terminal window and a translucent overlay;
//! - `full`: the whole window changes (a browser scrolling);
//!
//! each with an ARGB8888 window (blended per pixel) and an XRGB8888 one
//! (opaque: copied).
//!
//! After every frame both sessions' frames are compared byte for byte.
//! Also measured alone: BGRA → I420 of a full frame (copy in, convert,
//! copy out) on Vulkan vs the CPU.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_gpu::compose::{i420_cpu, CompositionList, Draw};
use flotilla_gpu::convert::I420Converter;
use flotilla_gpu::device::{Device, Selector};
use flotilla_gpu::protocol::{build, resp, Format, MemEntry, Rect};
use flotilla_gpu::render::Renderer;
use flotilla_gpu::session::{Ledger, Session, CAPSET_COMPOSE};

use crate::{millis, percentile};

#[derive(clap::Args)]
pub struct GpuArgs {
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    #[arg(long, default_value_t = 1280)]
    width: u32,
    #[arg(long, default_value_t = 800)]
    height: u32,
    /// Vulkan device index.
    #[arg(long, default_value_t = 0)]
    gpu: u32,
}

pub(crate) fn summarize(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    let p50 = percentile(samples, 0.5);
    println!(
        "{name:<48} p50 {:>7} ms  p99 {:>7} ms",
        millis(p50),
        millis(percentile(samples, 0.99))
    );
    p50
}

pub(crate) fn rect(x: u32, y: u32, width: u32, height: u32) -> Rect {
    Rect {
        x,
        y,
        width,
        height,
    }
}

/// A memfd of `len` bytes, mapped writable (the guest's shm pool).
pub(crate) struct Shm {
    fd: OwnedFd,
    map: *mut u8,
    len: usize,
}

impl Shm {
    fn new(len: usize) -> anyhow::Result<Shm> {
        // SAFETY: memfd_create/ftruncate/mmap with checked results; the
        // mapping is owned by the value and unmapped on drop.
        unsafe {
            let fd = libc::memfd_create(
                c"bench".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            );
            anyhow::ensure!(fd >= 0, "memfd_create failed");
            let fd = OwnedFd::from_raw_fd(fd);
            anyhow::ensure!(
                libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), len as i64) == 0,
                "ftruncate failed"
            );
            // gpud maps only memfds sealed against shrinking.
            anyhow::ensure!(
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK
                ) == 0,
                "sealing failed"
            );
            let map = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                0,
            );
            anyhow::ensure!(map != libc::MAP_FAILED, "mmap failed");
            Ok(Shm {
                fd,
                map: map.cast(),
                len,
            })
        }
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the mapping covers `len` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.map, self.len) }
    }
}

impl Drop for Shm {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.map.cast(), self.len) };
    }
}

fn ok(session: &mut Session, command: &[u8], fds: Vec<OwnedFd>) -> anyhow::Result<()> {
    let answer = session.handle(command, fds);
    let kind = u32::from_le_bytes(answer[0..4].try_into()?);
    anyhow::ensure!(kind < resp::ERR_UNSPEC, "gpud answered {kind:#x}");
    Ok(())
}

/// A desktop as a compositor drives it: a window (resource 2, backed by
/// shared memory), an overlay (resource 3) and the scanout (resource 1).
pub(crate) struct Desktop {
    pub(crate) session: Session,
    pub(crate) window: Shm,
}

impl Desktop {
    pub(crate) fn new(
        session: Session,
        format: Format,
        width: u32,
        height: u32,
    ) -> anyhow::Result<Desktop> {
        let bytes = (width * height * 4) as usize;
        let mut window = Shm::new(bytes)?;
        for (i, pixel) in window.bytes().chunks_exact_mut(4).enumerate() {
            pixel.copy_from_slice(&[(i % 251) as u8, (i % 241) as u8, (i % 239) as u8, 255]);
        }
        let mut overlay = Shm::new(64 * 64 * 4)?;
        for pixel in overlay.bytes().chunks_exact_mut(4) {
            pixel.copy_from_slice(&[200, 100, 50, 128]);
        }
        let mut desktop = Desktop { session, window };
        let s = &mut desktop.session;
        let entry = |length: usize| MemEntry {
            offset: 0,
            length: length as u32,
        };
        ok(
            s,
            &build::resource_create_2d(1, Format::B8G8R8A8, width, height),
            vec![],
        )?;
        ok(
            s,
            &build::resource_create_2d(2, format, width, height),
            vec![],
        )?;
        ok(
            s,
            &build::attach_backing(2, &[entry(bytes)]),
            vec![desktop.window.fd.try_clone()?],
        )?;
        ok(
            s,
            &build::transfer_to_host_2d(rect(0, 0, width, height), 0, 2),
            vec![],
        )?;
        ok(
            s,
            &build::resource_create_2d(3, Format::B8G8R8A8, 64, 64),
            vec![],
        )?;
        ok(
            s,
            &build::attach_backing(3, &[entry(64 * 64 * 4)]),
            vec![overlay.fd.try_clone()?],
        )?;
        ok(
            s,
            &build::transfer_to_host_2d(rect(0, 0, 64, 64), 0, 3),
            vec![],
        )?;
        ok(s, &build::ctx_create(1, CAPSET_COMPOSE, "bench"), vec![])?;
        ok(
            s,
            &build::set_scanout(rect(0, 0, width, height), 0, 1),
            vec![],
        )?;
        Ok(desktop)
    }

    /// One frame: the window's `damage` changed.
    pub(crate) fn frame(&mut self, list: &[u8], damage: Rect, width: u32) -> anyhow::Result<()> {
        let offset = u64::from(damage.y * width * 4 + damage.x * 4);
        let s = &mut self.session;
        ok(s, &build::transfer_to_host_2d(damage, offset, 2), vec![])?;
        ok(s, &build::submit_3d(1, None, list), vec![])?;
        ok(s, &build::resource_flush(damage, 1), vec![])?;
        // The encoder reads the frame: its flushed part is converted now.
        anyhow::ensure!(s.frame().is_some(), "no frame");
        Ok(())
    }
}

/// The composition list of every workload: a full-screen window
/// (resource 2) and a 64×64 overlay (resource 3) in the middle, with
/// `damage`.
pub(crate) fn window_and_overlay(width: u32, height: u32, damage: Rect) -> Vec<u8> {
    let screen = rect(0, 0, width, height);
    CompositionList {
        target: 1,
        damage: vec![damage],
        draws: vec![
            Draw {
                size: None,
                resource_id: 2,
                source: screen,
                x: 0,
                y: 0,
                opacity: 255,
                clip: screen,
                opaque: false,
            },
            Draw {
                size: None,
                resource_id: 3,
                source: rect(0, 0, 64, 64),
                x: (width / 2) as i32,
                y: (height / 2) as i32,
                opacity: 255,
                clip: screen,
                opaque: false,
            },
        ],
    }
    .encode()
}

pub fn run(args: GpuArgs) -> anyhow::Result<()> {
    let (width, height) = (args.width, args.height);
    anyhow::ensure!(
        width >= 64 && height >= 64 && width.is_multiple_of(8) && height.is_multiple_of(2),
        "--width must be a multiple of 8 and --height even, both at least 64"
    );
    let device = Device::open(&Selector::Index(args.gpu)).map_err(anyhow::Error::msg)?;
    println!(
        "# device: {} ({}), {} iterations, {width}×{height}",
        device.capabilities().gpu.name,
        device.capabilities().gpu.driver,
        args.iterations
    );
    let renderer = Arc::new(Renderer::new(Arc::new(device)).map_err(anyhow::Error::msg)?);
    let ledger = Arc::new(Ledger::default());
    let budget = 1 << 30;
    let screen = rect(0, 0, width, height);
    let mut ratios = Vec::new();
    let mut charged = 0;
    let mut last_frame = Vec::new();
    for (window, format) in [
        ("ARGB window", Format::B8G8R8A8),
        ("XRGB window", Format::B8G8R8X8),
    ] {
        let mut gpu = Desktop::new(
            Session::with_renderer(
                "gpu",
                budget,
                ledger.clone(),
                width,
                height,
                Some(renderer.clone()),
            ),
            format,
            width,
            height,
        )?;
        let mut cpu = Desktop::new(
            Session::new("cpu", budget, ledger.clone(), width, height),
            format,
            width,
            height,
        )?;
        for (workload, damage) in [
            ("small (one 20-px line)", rect(0, height / 2, width, 20)),
            ("full frame", screen),
        ] {
            let name = format!("{workload}, {window}");
            let list = window_and_overlay(width, height, damage);
            let (mut on_gpu, mut on_cpu) = (Vec::new(), Vec::new());
            for i in 0..args.iterations {
                // The app draws: the damaged rows of its window change.
                for desktop in [&mut gpu, &mut cpu] {
                    let row = (width * 4) as usize;
                    let bytes = desktop.window.bytes();
                    let start = damage.y as usize * row;
                    for byte in &mut bytes[start..start + damage.height as usize * row] {
                        *byte = byte.wrapping_add(i as u8 | 1);
                    }
                }
                let started = Instant::now();
                gpu.frame(&list, damage, width)?;
                on_gpu.push(started.elapsed());
                let started = Instant::now();
                cpu.frame(&list, damage, width)?;
                on_cpu.push(started.elapsed());
                anyhow::ensure!(
                    gpu.session.frame().map(|f| f.0) == cpu.session.frame().map(|f| f.0),
                    "{name}: the Vulkan frame differs from the CPU reference's"
                );
            }
            let g = summarize(&format!("{name}: vulkan"), &mut on_gpu);
            let c = summarize(&format!("{name}: cpu reference"), &mut on_cpu);
            ratios.push((name, g.as_secs_f64() / c.as_secs_f64()));
        }
        charged = gpu.session.charged();
        last_frame = gpu.session.pixels(1).expect("scanout").to_vec();
    }
    for (name, ratio) in ratios {
        println!("{name}: vulkan / cpu p50 {ratio:.2}×");
    }
    println!(
        "GPU memory charged for the desktop: {charged} bytes (window, overlay, scanout, I420 frame)"
    );

    // The converter alone: a full frame in and out of host memory.
    let frame = last_frame;
    let mut converter = I420Converter::new(renderer);
    let (mut on_gpu, mut on_cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.iterations {
        let started = Instant::now();
        let planes = converter
            .convert(&frame, width, height)
            .map_err(anyhow::Error::msg)?;
        on_gpu.push(started.elapsed());
        let started = Instant::now();
        let reference = i420_cpu(&frame, width, height);
        on_cpu.push(started.elapsed());
        anyhow::ensure!(
            planes == reference,
            "the GPU's I420 differs from the reference"
        );
    }
    let g = summarize("i420 alone (copy in/out): vulkan", &mut on_gpu);
    let c = summarize("i420 alone: cpu reference", &mut on_cpu);
    println!(
        "i420 alone: vulkan / cpu p50 {:.2}×",
        g.as_secs_f64() / c.as_secs_f64()
    );
    Ok(())
}
