//! `flotilla-bench gpu`: the parts of the composition pipeline that exist
//! so far, GPU path beside the CPU reference in the same run.
//! - `i420`: BGRA → I420 of a full 1280×800 frame, Vulkan compute
//!   (`flotilla_gpu::convert`) vs the scalar CPU reference;
//! - `compose-small`: a terminal line of damage (1280×20) composed on the
//!   CPU reference (the Vulkan composition path is not built yet);
//! - `compose-full`: a full-frame draw on the CPU reference.
//!
//! Runs on whatever Vulkan device index 0 is (lavapipe on the CI machine).

use std::time::{Duration, Instant};

use flotilla_gpu::compose::{compose_cpu, i420_cpu, CompositionList, Draw, Image};
use flotilla_gpu::convert::I420Converter;
use flotilla_gpu::device::{Device, Selector};
use flotilla_gpu::protocol::Rect;

use crate::{millis, percentile};

#[derive(clap::Args)]
pub struct GpuArgs {
    #[arg(long, default_value_t = 200)]
    iterations: usize,
}

fn summarize(name: &str, samples: &mut [Duration]) -> Duration {
    samples.sort_unstable();
    let p50 = percentile(samples, 0.5);
    println!(
        "{name:<28} p50 {:>9}  p99 {:>9}",
        millis(p50),
        millis(percentile(samples, 0.99))
    );
    p50
}

pub fn run(args: GpuArgs) -> anyhow::Result<()> {
    let (width, height) = (1280u32, 800u32);
    let frame: Vec<u8> = (0..width * height)
        .flat_map(|i| [(i % 251) as u8, (i % 241) as u8, (i % 239) as u8, 255])
        .collect();
    let device = Device::open(&Selector::Index(0)).map_err(anyhow::Error::msg)?;
    println!(
        "# device: {} ({}), {} iterations, {width}×{height}",
        device.capabilities().gpu.name,
        device.capabilities().gpu.driver,
        args.iterations
    );
    let mut converter = I420Converter::new(&device).map_err(anyhow::Error::msg)?;
    let (mut gpu, mut cpu) = (Vec::new(), Vec::new());
    for _ in 0..args.iterations {
        let started = Instant::now();
        let planes = converter
            .convert(&frame, width, height)
            .map_err(anyhow::Error::msg)?;
        gpu.push(started.elapsed());
        let started = Instant::now();
        let reference = i420_cpu(&frame, width, height);
        cpu.push(started.elapsed());
        anyhow::ensure!(
            planes == reference,
            "the GPU's I420 differs from the reference"
        );
    }
    let gpu = summarize("i420 vulkan", &mut gpu);
    let cpu = summarize("i420 cpu reference", &mut cpu);
    println!(
        "i420 vulkan / cpu: p50 {:.2}×",
        gpu.as_secs_f64() / cpu.as_secs_f64()
    );
    let source = frame.clone();
    for (name, damage) in [
        (
            "compose-small cpu (1280×20)",
            Rect {
                x: 0,
                y: 400,
                width,
                height: 20,
            },
        ),
        (
            "compose-full cpu",
            Rect {
                x: 0,
                y: 0,
                width,
                height,
            },
        ),
    ] {
        let list = CompositionList {
            target: 1,
            damage: vec![damage],
            draws: vec![Draw {
                resource_id: 2,
                source: Rect {
                    x: 0,
                    y: 0,
                    width,
                    height,
                },
                x: 0,
                y: 0,
                opacity: 200,
                clip: Rect {
                    x: 0,
                    y: 0,
                    width,
                    height,
                },
            }],
        };
        let mut target = vec![0u8; frame.len()];
        let mut samples = Vec::new();
        for _ in 0..args.iterations {
            let started = Instant::now();
            compose_cpu(&list, &mut target, width, height, |_| {
                Some(Image {
                    pixels: &source,
                    width,
                    height,
                })
            })
            .map_err(anyhow::Error::msg)?;
            samples.push(started.elapsed());
        }
        summarize(name, &mut samples);
    }
    Ok(())
}
