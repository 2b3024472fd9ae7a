//! The device layer on a real Vulkan driver (CI installs lavapipe; set
//! FLOTILLA_REQUIRE_VULKAN=1 to fail instead of skipping without one).

use flotilla_gpu::device::{Device, Selector};
use flotilla_gpu::{enumerate, GpuError};

fn gpus() -> Option<Vec<flotilla_gpu::GpuInfo>> {
    match enumerate() {
        Ok(gpus) if !gpus.is_empty() => Some(gpus),
        Ok(_) | Err(GpuError::Loader(_))
            if std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none() =>
        {
            eprintln!("skipping: no Vulkan device here");
            None
        }
        Ok(_) => panic!("FLOTILLA_REQUIRE_VULKAN is set but there is no Vulkan device"),
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn opens_each_gpu_by_index_and_by_uuid_and_reports_what_it_can_do() {
    let Some(gpus) = gpus() else {
        return;
    };
    for gpu in &gpus {
        let by_index = Device::open(&Selector::Index(gpu.index)).expect("open by index");
        let capabilities = by_index.capabilities().clone();
        assert_eq!(&capabilities.gpu, gpu);
        assert!(capabilities.queue_count >= 1);
        assert!(
            capabilities.api_version.starts_with("1."),
            "{capabilities:?}"
        );
        // Only extensions the report claims are enabled.
        for name in &capabilities.enabled_extensions {
            let claimed = match name.as_str() {
                "VK_KHR_external_memory_fd" => capabilities.external_memory_fd,
                "VK_EXT_external_memory_dma_buf" => capabilities.dma_buf,
                "VK_EXT_image_drm_format_modifier" => capabilities.drm_format_modifiers,
                "VK_EXT_memory_budget" => capabilities.memory_budget,
                "VK_KHR_external_semaphore_fd" => capabilities.external_semaphore_fd,
                "VK_KHR_external_fence_fd" => capabilities.external_fence_fd,
                other => panic!("unexpected extension {other}"),
            };
            assert!(claimed, "{name} enabled but not reported");
        }
        if gpu.cpu_implementation {
            // lavapipe, as checked on the CI machine: opaque-fd export, no
            // dma-buf, no budget, no video encode.
            assert!(capabilities.external_memory_fd, "{capabilities:?}");
            assert!(!capabilities.dma_buf, "{capabilities:?}");
            assert!(!capabilities.memory_budget, "{capabilities:?}");
            assert!(!capabilities.video_encode, "{capabilities:?}");
        }
        eprintln!("{capabilities:#?}");
        drop(by_index);
        let by_uuid = Device::open(&Selector::Uuid(gpu.uuid.to_uppercase())).expect("open by uuid");
        assert_eq!(by_uuid.capabilities().gpu, *gpu);
    }
    // Two devices on one GPU at once (gpud holds one; tests may hold more).
    let first = Device::open(&Selector::Index(0)).unwrap();
    let second = Device::open(&Selector::Index(0)).unwrap();
    assert_eq!(first.capabilities(), second.capabilities());
}

#[test]
fn a_gpu_that_is_not_there_is_a_clear_error() {
    if gpus().is_none() {
        return;
    }
    let error = Device::open(&Selector::Index(999))
        .err()
        .expect("no GPU 999");
    assert!(error.to_string().contains("no GPU at index 999"), "{error}");
    let error = Device::open(&Selector::Uuid(
        "00000000-0000-0000-0000-000000000000".to_owned(),
    ))
    .err()
    .expect("no such UUID");
    assert!(error.to_string().contains("no GPU with UUID"), "{error}");
}
