//! The GPU's I420 conversion gives exactly the CPU reference's bytes, on
//! lavapipe here (FLOTILLA_REQUIRE_VULKAN=1 in CI: no skipping there).

use flotilla_gpu::compose::i420_cpu;
use flotilla_gpu::convert::I420Converter;
use flotilla_gpu::device::{Device, Selector};
use flotilla_gpu::render::Renderer;
use std::sync::Arc;

fn device() -> Option<Device> {
    match Device::open(&Selector::Index(0)) {
        Ok(device) => Some(device),
        Err(error) if std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none() => {
            eprintln!("skipping: {error}");
            None
        }
        Err(error) => panic!("{error}"),
    }
}

/// A deterministic image with every channel varying.
fn image(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).max(1);
    (0..width * height * 4)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

#[test]
fn gpu_i420_matches_the_cpu_reference_byte_for_byte() {
    let Some(device) = device() else {
        return;
    };
    let renderer = Arc::new(Renderer::new(Arc::new(device)).expect("build the renderer"));
    let mut converter = I420Converter::new(renderer);
    for (width, height, seed) in [(8, 2, 1), (64, 16, 2), (1280, 800, 3), (64, 16, 4)] {
        let bgra = image(width, height, seed);
        let gpu = converter.convert(&bgra, width, height).expect("convert");
        let cpu = i420_cpu(&bgra, width, height);
        assert_eq!(gpu.len(), cpu.len());
        if let Some(at) = gpu.iter().zip(&cpu).position(|(a, b)| a != b) {
            panic!(
                "{width}×{height}: byte {at} differs: gpu {} cpu {}",
                gpu[at], cpu[at]
            );
        }
    }
    // Sizes it cannot do are refused, not mis-converted.
    assert!(converter.convert(&image(12, 2, 5), 12, 2).is_err());
    assert!(converter.convert(&image(8, 3, 5), 8, 3).is_err());
    assert!(converter.convert(&[0; 10], 8, 2).is_err());
}
