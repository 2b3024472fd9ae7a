//! BGRA → I420 on the GPU: a compute shader (`shaders/i420.wgsl`, built to
//! SPIR-V by `build.rs`) on a [`Device`]'s one queue. It gives the same
//! bytes as [`crate::compose::i420_cpu`] (integer math in both), which the
//! tests check on lavapipe.
//!
//! Buffers are host-visible storage buffers, kept between frames of the
//! same size (a frame is: copy in, one dispatch, wait, copy out).

use ash::vk;

use crate::device::Device;
use crate::enumerate::GpuError;

static SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/i420.spv"));

/// One host-visible buffer and its memory.
struct Buffer {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    size: u64,
}

pub struct I420Converter<'d> {
    device: &'d Device,
    module: vk::ShaderModule,
    set_layout: vk::DescriptorSetLayout,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    descriptors: vk::DescriptorPool,
    set: vk::DescriptorSet,
    commands: vk::CommandPool,
    command: vk::CommandBuffer,
    fence: vk::Fence,
    /// (input, output) for the current frame size.
    buffers: Option<(Buffer, Buffer, u32, u32)>,
}

fn vk_error(what: &'static str) -> impl Fn(vk::Result) -> GpuError {
    move |result| GpuError::Vulkan(what, result)
}

impl<'d> I420Converter<'d> {
    pub fn new(device: &'d Device) -> Result<I420Converter<'d>, GpuError> {
        let vk = &device.device;
        let words: Vec<u32> = SPIRV
            .chunks_exact(4)
            .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("4 bytes")))
            .collect();
        // SAFETY: every create call gets a valid create-info whose pointers
        // outlive the call; the objects are destroyed in Drop.
        unsafe {
            let module = vk
                .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None)
                .map_err(vk_error("create the shader module"))?;
            let bindings = [0, 1].map(|binding| {
                vk::DescriptorSetLayoutBinding::default()
                    .binding(binding)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .descriptor_count(1)
                    .stage_flags(vk::ShaderStageFlags::COMPUTE)
            });
            let set_layout = vk
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&bindings),
                    None,
                )
                .map_err(vk_error("create the descriptor set layout"))?;
            let push = [vk::PushConstantRange::default()
                .stage_flags(vk::ShaderStageFlags::COMPUTE)
                .size(8)];
            let set_layouts = [set_layout];
            let layout = vk
                .create_pipeline_layout(
                    &vk::PipelineLayoutCreateInfo::default()
                        .set_layouts(&set_layouts)
                        .push_constant_ranges(&push),
                    None,
                )
                .map_err(vk_error("create the pipeline layout"))?;
            let stage = vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::COMPUTE)
                .module(module)
                .name(c"main");
            let pipeline = vk
                .create_compute_pipelines(
                    vk::PipelineCache::null(),
                    &[vk::ComputePipelineCreateInfo::default()
                        .stage(stage)
                        .layout(layout)],
                    None,
                )
                .map_err(|(_, result)| GpuError::Vulkan("create the compute pipeline", result))?[0];
            let sizes = [vk::DescriptorPoolSize::default()
                .ty(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(2)];
            let descriptors = vk
                .create_descriptor_pool(
                    &vk::DescriptorPoolCreateInfo::default()
                        .max_sets(1)
                        .pool_sizes(&sizes),
                    None,
                )
                .map_err(vk_error("create the descriptor pool"))?;
            let set = vk
                .allocate_descriptor_sets(
                    &vk::DescriptorSetAllocateInfo::default()
                        .descriptor_pool(descriptors)
                        .set_layouts(&set_layouts),
                )
                .map_err(vk_error("allocate the descriptor set"))?[0];
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
            Ok(I420Converter {
                device,
                module,
                set_layout,
                layout,
                pipeline,
                descriptors,
                set,
                commands,
                command,
                fence,
                buffers: None,
            })
        }
    }

    fn buffer(&self, size: u64) -> Result<Buffer, GpuError> {
        let vk = &self.device.device;
        let instance = self.device.instance();
        // SAFETY: valid create-infos; the memory type is one the device
        // offers for this buffer; objects are freed by `free`.
        unsafe {
            let buffer = vk
                .create_buffer(
                    &vk::BufferCreateInfo::default()
                        .size(size)
                        .usage(vk::BufferUsageFlags::STORAGE_BUFFER),
                    None,
                )
                .map_err(vk_error("create a buffer"))?;
            let requirements = vk.get_buffer_memory_requirements(buffer);
            let memory_properties =
                instance.get_physical_device_memory_properties(self.device.physical);
            let wanted =
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let Some(index) = memory_properties
                .memory_types_as_slice()
                .iter()
                .enumerate()
                .position(|(index, kind)| {
                    requirements.memory_type_bits & (1 << index) != 0
                        && kind.property_flags.contains(wanted)
                })
            else {
                vk.destroy_buffer(buffer, None);
                return Err(GpuError::NoSuchGpu(
                    "no host-visible, coherent memory for a storage buffer".to_owned(),
                ));
            };
            let memory = match vk.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(requirements.size)
                    .memory_type_index(index as u32),
                None,
            ) {
                Ok(memory) => memory,
                Err(result) => {
                    vk.destroy_buffer(buffer, None);
                    return Err(GpuError::Vulkan("allocate buffer memory", result));
                }
            };
            if let Err(result) = vk.bind_buffer_memory(buffer, memory, 0) {
                vk.destroy_buffer(buffer, None);
                vk.free_memory(memory, None);
                return Err(GpuError::Vulkan("bind buffer memory", result));
            }
            Ok(Buffer {
                buffer,
                memory,
                size,
            })
        }
    }

    fn free(&self, buffer: &Buffer) {
        // SAFETY: no submitted work uses the buffer (every frame waits for
        // its fence).
        unsafe {
            self.device.device.destroy_buffer(buffer.buffer, None);
            self.device.device.free_memory(buffer.memory, None);
        }
    }

    /// Converts `bgra` (`width` × `height`, width a multiple of 8, height
    /// even) to I420 bytes.
    pub fn convert(&mut self, bgra: &[u8], width: u32, height: u32) -> Result<Vec<u8>, GpuError> {
        if width == 0 || height == 0 || !width.is_multiple_of(8) || !height.is_multiple_of(2) {
            return Err(GpuError::NoSuchGpu(format!(
                "I420 needs a width that is a multiple of 8 and an even height, not {width}×{height}"
            )));
        }
        let input_size = u64::from(width) * u64::from(height) * 4;
        if bgra.len() as u64 != input_size {
            return Err(GpuError::NoSuchGpu(format!(
                "{} bytes for a {width}×{height} BGRA image",
                bgra.len()
            )));
        }
        let output_size = input_size * 3 / 8;
        if !matches!(self.buffers, Some((_, _, w, h)) if w == width && h == height) {
            if let Some((input, output, _, _)) = self.buffers.take() {
                self.free(&input);
                self.free(&output);
            }
            let input = self.buffer(input_size)?;
            let output = match self.buffer(output_size) {
                Ok(output) => output,
                Err(error) => {
                    self.free(&input);
                    return Err(error);
                }
            };
            self.buffers = Some((input, output, width, height));
        }
        let (input, output, _, _) = self.buffers.as_ref().expect("made above");
        let vk = &self.device.device;
        // SAFETY: mapped ranges lie within the allocations; the descriptor
        // set, command buffer and fence are ours and idle (each frame waits
        // for its fence before returning).
        unsafe {
            let mapped = vk
                .map_memory(input.memory, 0, input.size, vk::MemoryMapFlags::empty())
                .map_err(vk_error("map the input"))?;
            std::ptr::copy_nonoverlapping(bgra.as_ptr(), mapped.cast::<u8>(), bgra.len());
            vk.unmap_memory(input.memory);
            let infos = [input, output].map(|buffer| {
                [vk::DescriptorBufferInfo::default()
                    .buffer(buffer.buffer)
                    .range(vk::WHOLE_SIZE)]
            });
            let writes = [0, 1].map(|binding| {
                vk::WriteDescriptorSet::default()
                    .dst_set(self.set)
                    .dst_binding(binding)
                    .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                    .buffer_info(&infos[binding as usize])
            });
            vk.update_descriptor_sets(&writes, &[]);
            vk.begin_command_buffer(
                self.command,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(vk_error("begin the command buffer"))?;
            vk.cmd_bind_pipeline(self.command, vk::PipelineBindPoint::COMPUTE, self.pipeline);
            vk.cmd_bind_descriptor_sets(
                self.command,
                vk::PipelineBindPoint::COMPUTE,
                self.layout,
                0,
                &[self.set],
                &[],
            );
            let params: Vec<u8> = [width, height]
                .iter()
                .flat_map(|value| value.to_ne_bytes())
                .collect();
            vk.cmd_push_constants(
                self.command,
                self.layout,
                vk::ShaderStageFlags::COMPUTE,
                0,
                &params,
            );
            vk.cmd_dispatch(
                self.command,
                (width / 8).div_ceil(8),
                (height / 2).div_ceil(8),
                1,
            );
            // The host reads the output after the fence.
            let barrier = vk::MemoryBarrier::default()
                .src_access_mask(vk::AccessFlags::SHADER_WRITE)
                .dst_access_mask(vk::AccessFlags::HOST_READ);
            vk.cmd_pipeline_barrier(
                self.command,
                vk::PipelineStageFlags::COMPUTE_SHADER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &[barrier],
                &[],
                &[],
            );
            vk.end_command_buffer(self.command)
                .map_err(vk_error("end the command buffer"))?;
            let buffers = [self.command];
            vk.queue_submit(
                self.device.queue,
                &[vk::SubmitInfo::default().command_buffers(&buffers)],
                self.fence,
            )
            .map_err(vk_error("submit the conversion"))?;
            let waited = vk.wait_for_fences(&[self.fence], true, 10_000_000_000);
            vk.reset_fences(&[self.fence])
                .map_err(vk_error("reset the fence"))?;
            waited.map_err(vk_error("wait for the conversion"))?;
            let mapped = vk
                .map_memory(output.memory, 0, output.size, vk::MemoryMapFlags::empty())
                .map_err(vk_error("map the output"))?;
            let mut planes = vec![0u8; output_size as usize];
            std::ptr::copy_nonoverlapping(mapped.cast::<u8>(), planes.as_mut_ptr(), planes.len());
            vk.unmap_memory(output.memory);
            Ok(planes)
        }
    }
}

impl Drop for I420Converter<'_> {
    fn drop(&mut self) {
        if let Some((input, output, _, _)) = self.buffers.take() {
            self.free(&input);
            self.free(&output);
        }
        let vk = &self.device.device;
        // SAFETY: no work is in flight (every frame waited for its fence).
        unsafe {
            vk.destroy_fence(self.fence, None);
            vk.destroy_command_pool(self.commands, None);
            vk.destroy_descriptor_pool(self.descriptors, None);
            vk.destroy_pipeline(self.pipeline, None);
            vk.destroy_pipeline_layout(self.layout, None);
            vk.destroy_descriptor_set_layout(self.set_layout, None);
            vk.destroy_shader_module(self.module, None);
        }
    }
}
