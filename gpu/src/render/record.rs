//! Recording and running one job on the render thread: the thread's
//! descriptor pool, command buffer and fence ([`Recorder`]), the loop
//! that takes jobs from the fair queue, and [`execute`], which records a
//! job's steps (dispatches, or buffer copies for plain opaque pieces)
//! with a barrier between them, submits once and waits on the fence.

use std::collections::HashMap;

use ash::vk;

use super::{vk_error, RenderError, Shared, Step, MAX_JOB_BUFFERS};
use crate::device::Device;
use crate::enumerate::GpuError;

/// The render thread's own objects.
struct Recorder {
    pool: vk::DescriptorPool,
    commands: vk::CommandPool,
    command: vk::CommandBuffer,
    fence: vk::Fence,
}

impl Recorder {
    /// # Safety
    /// `vk` is a live device.
    unsafe fn new(device: &Device) -> Result<Recorder, GpuError> {
        // SAFETY: the caller upholds this function's contract.
        unsafe {
            let vk = &device.device;
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(MAX_JOB_BUFFERS)];
            let pool = vk
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(MAX_JOB_BUFFERS)
                        .pool_sizes(&sizes),
                    None,
                )
                .map_err(vk_error("create the descriptor pool"))?;
            let commands = vk
                .create_command_pool(
                    &vk::CommandPoolCreateInfo::default()
                        .queue_family_index(device.capabilities().queue_family)
                        .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER),
                    None,
                )
                .map_err(vk_error("create the command pool"))?;
            let command = vk
                .allocate_command_buffers(
                    &vk::CommandBufferAllocateInfo::default()
                        .command_pool(commands)
                        .level(vk::CommandBufferLevel::PRIMARY)
                        .command_buffer_count(1),
                )
                .map_err(vk_error("allocate the command buffer"))?[0];
            let fence = vk
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .map_err(vk_error("create the fence"))?;
            Ok(Recorder {
                pool,
                commands,
                command,
                fence,
            })
        }
    }

    /// # Safety
    /// Nothing is in flight.
    unsafe fn destroy(&self, vk: &ash::Device) {
        // SAFETY: the caller upholds this function's contract.
        unsafe {
            vk.destroy_fence(self.fence, None);
            vk.destroy_command_pool(self.commands, None);
            vk.destroy_descriptor_pool(self.pool, None);
        }
    }
}

pub(super) fn worker(shared: &Shared) {
    // SAFETY: the device outlives the renderer, which joins this thread.
    let recorder = match unsafe { Recorder::new(&shared.device) } {
        Ok(recorder) => Some(recorder),
        Err(error) => {
            eprintln!("gpud: the render thread cannot start: {error}");
            None
        }
    };
    loop {
        let job = {
            let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if let Some((_, job)) = queue.0.pop() {
                    break job;
                }
                if queue.1 {
                    if let Some(recorder) = &recorder {
                        // SAFETY: every job has been waited for.
                        unsafe { recorder.destroy(&shared.device.device) };
                    }
                    return;
                }
                queue = shared.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = match &recorder {
            // SAFETY: the job's buffers live until its sender hears back.
            Some(recorder) => unsafe { execute(shared, recorder, &job.steps) },
            None => Err(RenderError::NoCommandBuffer),
        };
        let _ = job.done.send(result);
    }
}

/// A composition piece that is a plain copy, as buffer-copy regions (one
/// per row): an opaque source (B8G8R8X8, or a draw flagged opaque) at
/// full opacity, unscaled.
/// Copies its padding byte as it is, as the CPU reference does; nothing
/// reads the target's fourth byte as alpha (the I420 conversion and
/// screenshots take B, G and R). On a GPU it is the copy engine's work;
/// on lavapipe a memcpy per row instead of a shader's per-lane loads
/// (≈ 10 ms for a 1280×800 frame).
fn copy_regions(step: &Step) -> Option<(vk::Buffer, vk::Buffer, Vec<vk::BufferCopy>)> {
    if !is_copy(step) {
        return None;
    }
    let Step::Compose {
        target,
        target_stride,
        source,
        source_stride,
        area,
        source_rect,
        at,
        ..
    } = *step
    else {
        return None;
    };
    let (x0, y0, x1, y1) = area;
    // The piece lies within the draw (`compose::plan`), so these are the
    // source pixels under it.
    let source_x = u64::from(source_rect.0) + (i64::from(x0) - i64::from(at.0)) as u64;
    let source_y = u64::from(source_rect.1) + (i64::from(y0) - i64::from(at.1)) as u64;
    let regions = (0..u64::from(y1 - y0))
        .map(|row| vk::BufferCopy {
            src_offset: ((source_y + row) * u64::from(source_stride) + source_x) * 4,
            dst_offset: ((u64::from(y0) + row) * u64::from(target_stride) + u64::from(x0)) * 4,
            size: u64::from(x1 - x0) * 4,
        })
        .collect();
    Some((source, target, regions))
}

/// Whether `step` is recorded as a copy (see [`copy_regions`]).
fn is_copy(step: &Step) -> bool {
    matches!(*step, Step::Compose { target, source, source_rect, size, opacity: 255, opaque: true, .. }
        if size == (source_rect.2, source_rect.3) && source != target)
}

/// Records, submits and waits for one job.
///
/// # Safety
/// Every buffer the steps name is live until this returns.
unsafe fn execute(shared: &Shared, recorder: &Recorder, steps: &[Step]) -> Result<(), RenderError> {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let vk = &shared.device.device;
        vk.reset_descriptor_pool(recorder.pool, vk::DescriptorPoolResetFlags::empty())
            .map_err(RenderError::ResetDescriptorPool)?;
        // One descriptor set per distinct buffer.
        let mut sets: HashMap<vk::Buffer, vk::DescriptorSet> = HashMap::new();
        for step in steps.iter().filter(|step| !is_copy(step)) {
            let buffers = match *step {
                Step::Compose { target, source, .. } => [target, source],
                Step::I420 { input, output, .. } => [input, output],
            };
            for buffer in buffers {
                if sets.contains_key(&buffer) {
                    continue;
                }
                if sets.len() as u32 >= MAX_JOB_BUFFERS {
                    return Err(RenderError::TooManyBuffers);
                }
                let layouts = [shared.set_layout];
                let set = vk
                    .allocate_descriptor_sets(
                        &vk::DescriptorSetAllocateInfo::default()
                            .descriptor_pool(recorder.pool)
                            .set_layouts(&layouts),
                    )
                    .map_err(RenderError::AllocateDescriptorSet)?[0];
                let info = [vk::DescriptorBufferInfo::default()
                    .buffer(buffer)
                    .range(vk::WHOLE_SIZE)];
                let write = vk::WriteDescriptorSet::default()
                    .dst_set(set)
                    .dst_binding(0)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(&info);
                vk.update_descriptor_sets(&[write], &[]);
                sets.insert(buffer, set);
            }
        }
        let command = recorder.command;
        vk.begin_command_buffer(
            command,
            &vk::CommandBufferBeginInfo::default()
                .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
        )
        .map_err(RenderError::BeginCommandBuffer)?;
        // Host writes (transfers) before the first dispatch; each dispatch's
        // writes before the next one's reads; all of it before the host reads.
        let barrier = |source_stage, source_access, dest_stage, dest_access| {
            vk.cmd_pipeline_barrier(
                command,
                source_stage,
                dest_stage,
                vk::DependencyFlags::empty(),
                &[vk::MemoryBarrier::default()
                    .src_access_mask(source_access)
                    .dst_access_mask(dest_access)],
                &[],
                &[],
            );
        };
        // Steps are dispatches or copies: every barrier covers both.
        let stages = vk::PipelineStageFlags::COMPUTE_SHADER | vk::PipelineStageFlags::TRANSFER;
        let writes = vk::AccessFlags::SHADER_WRITE | vk::AccessFlags::TRANSFER_WRITE;
        let reads_writes = writes | vk::AccessFlags::SHADER_READ | vk::AccessFlags::TRANSFER_READ;
        barrier(
            vk::PipelineStageFlags::HOST,
            vk::AccessFlags::HOST_WRITE,
            stages,
            reads_writes,
        );
        let mut bound: Option<vk::Pipeline> = None;
        for (index, step) in steps.iter().enumerate() {
            if index > 0 {
                barrier(stages, writes, stages, reads_writes);
            }
            if let Some((source, target, regions)) = copy_regions(step) {
                vk.cmd_copy_buffer(command, source, target, &regions);
                continue;
            }
            let (pipeline, first, second, params, groups): (_, _, _, [u32; 16], _) = match *step {
                Step::Compose {
                    target,
                    target_stride,
                    source,
                    source_stride,
                    area,
                    source_rect,
                    at,
                    size,
                    opacity,
                    opaque,
                } => {
                    let (width, height) = (area.2 - area.0, area.3 - area.1);
                    (
                        &shared.compose,
                        target,
                        source,
                        [
                            area.0,
                            area.1,
                            width,
                            height,
                            target_stride,
                            source_stride,
                            source_rect.0,
                            source_rect.1,
                            source_rect.2,
                            source_rect.3,
                            at.0 as u32,
                            at.1 as u32,
                            size.0,
                            size.1,
                            u32::from(opacity),
                            u32::from(opaque),
                        ],
                        (width.div_ceil(256), height),
                    )
                }
                Step::I420 {
                    input,
                    stride,
                    origin_x,
                    origin_y,
                    width,
                    height,
                    area,
                    output,
                } => {
                    let blocks = ((area.2 - area.0) / 8, (area.3 - area.1) / 2);
                    (
                        &shared.i420,
                        input,
                        output,
                        [
                            width,
                            height,
                            stride,
                            origin_x,
                            origin_y,
                            area.0 / 8,
                            area.1 / 2,
                            blocks.0,
                            blocks.1,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                            0,
                        ],
                        (blocks.0.div_ceil(8), blocks.1.div_ceil(8)),
                    )
                }
            };
            if bound != Some(pipeline.pipeline) {
                vk.cmd_bind_pipeline(command, vk::PipelineBindPoint::COMPUTE, pipeline.pipeline);
                bound = Some(pipeline.pipeline);
            }
            vk.cmd_bind_descriptor_sets(
                command,
                vk::PipelineBindPoint::COMPUTE,
                pipeline.layout,
                0,
                &[sets[&first], sets[&second]],
                &[],
            );
            let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_ne_bytes()).collect();
            vk.cmd_push_constants(
                command,
                pipeline.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &bytes,
            );
            vk.cmd_dispatch(command, groups.0, groups.1, 1);
        }
        barrier(
            stages,
            writes,
            vk::PipelineStageFlags::HOST,
            vk::AccessFlags::HOST_READ,
        );
        vk.end_command_buffer(command)
            .map_err(RenderError::EndCommandBuffer)?;
        let buffers = [command];
        vk.queue_submit(
            shared.device.queue,
            &[vk::SubmitInfo::default().command_buffers(&buffers)],
            recorder.fence,
        )
        .map_err(RenderError::Submit)?;
        let waited = vk.wait_for_fences(&[recorder.fence], true, 30_000_000_000);
        vk.reset_fences(&[recorder.fence])
            .map_err(RenderError::ResetFence)?;
        waited.map_err(RenderError::WaitForGpu)
    }
}
