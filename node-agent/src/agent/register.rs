//! Joining the cluster: what this node registers (capacity less what is
//! reserved, GPUs with gpud's capabilities, labels, version) and the
//! Register call, retried while the cluster is unreachable.

use std::time::Duration;

use anyhow::bail;
use flotilla_proto::node as pb;
use tonic::{Code, Status};

use super::{AgentOptions, Shared, RETRY};
use crate::host::{self, DataDir};

pub(super) fn registration(
    options: &AgentOptions,
    node_id: &str,
    data_dir: &DataDir,
    gpus: &[flotilla_gpu::GpuInfo],
    gpu_service: Option<&flotilla_gpu::service::GpuService>,
) -> anyhow::Result<pb::RegisterRequest> {
    let host_cpu = host::cpu_count() * 1000;
    let host_memory = host::memory_bytes()?;
    let cpu_millis = options
        .cpu_millis
        .unwrap_or_else(|| host_cpu.saturating_sub(options.reserve_cpu_millis));
    let memory_bytes = options
        .memory_bytes
        .unwrap_or_else(|| host_memory.saturating_sub(options.reserve_memory_bytes));
    if cpu_millis == 0 || memory_bytes == 0 {
        bail!(
            "nothing is left for desktops: the host has {host_cpu} millicores and {host_memory} bytes, and {} / {} are reserved",
            options.reserve_cpu_millis,
            options.reserve_memory_bytes
        );
    }
    let capabilities = |position: usize| {
        let served = gpu_service?.gpus().get(position)?;
        served.info.as_ref()?;
        let c = served.capabilities.as_ref()?;
        Some(pb::GpuCapabilities {
            api_version: c.api_version.clone(),
            queue_count: c.queue_count,
            external_memory_fd: c.external_memory_fd,
            dma_buf: c.dma_buf,
            drm_format_modifiers: c.drm_format_modifiers,
            memory_budget: c.memory_budget,
            external_semaphore_fd: c.external_semaphore_fd,
            external_fence_fd: c.external_fence_fd,
            video_encode: c.video_encode,
        })
    };
    Ok(pb::RegisterRequest {
        node_id: node_id.to_owned(),
        name: options.name.clone(),
        labels: options.labels.clone().into_iter().collect(),
        capacity: Some(pb::Capacity {
            cpu_millis,
            memory_bytes,
            disk_bytes: host::disk_bytes(&data_dir.path)?,
            desktop_slots: options.desktop_slots,
        }),
        reserved: Some(pb::Capacity {
            cpu_millis: options.reserve_cpu_millis,
            memory_bytes: options.reserve_memory_bytes,
            disk_bytes: 0,
            desktop_slots: 0,
        }),
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(position, gpu)| pb::Gpu {
                index: gpu.index,
                name: gpu.name.clone(),
                vendor_id: gpu.vendor_id,
                device_id: gpu.device_id,
                driver: gpu.driver.clone(),
                uuid: gpu.uuid.clone(),
                memory_bytes: gpu.memory_bytes,
                cpu_implementation: gpu.cpu_implementation,
                capabilities: capabilities(position),
            })
            .collect(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// Registers, retrying while the cluster is unreachable; refusals that a
/// retry cannot fix end the agent with the server's reason.
pub(super) async fn register(
    shared: &Shared,
    registration: &pb::RegisterRequest,
) -> anyhow::Result<()> {
    loop {
        let addr = shared.servers.pick();
        let result = match shared.servers.client(&addr) {
            Ok(mut client) => {
                tokio::time::timeout(
                    Duration::from_secs(15),
                    client.register(shared.servers.request(registration.clone())),
                )
                .await
            }
            Err(error) => return Err(error),
        };
        match result {
            Ok(Ok(_)) => {
                tracing::info!(server = %addr, "registered");
                return Ok(());
            }
            Ok(Err(status))
                if matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::AlreadyExists
                        | Code::Unauthenticated
                        | Code::PermissionDenied
                        | Code::FailedPrecondition
                ) =>
            {
                bail!(
                    "the control plane at {addr} refused this node: {}",
                    status.message()
                )
            }
            Ok(Err(status)) => {
                tracing::debug!(server = %addr, error = %status.message(), "register failed; retrying");
                shared.servers.failed(&addr, &status);
            }
            Err(_) => {
                tracing::debug!(server = %addr, "register timed out; retrying");
                shared
                    .servers
                    .failed(&addr, &Status::unavailable("timed out"));
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
