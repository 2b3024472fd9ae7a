//! Pipeline set-up: the two compute shaders (`shaders/compose.wgsl`,
//! `shaders/i420.wgsl`, built to SPIR-V by `build.rs` with naga) as
//! pipelines sharing one storage-buffer descriptor set layout.

use ash::vk;

use super::vk_error;
use crate::enumerate::GpuError;

pub(super) static COMPOSE_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/compose.spv"));
pub(super) static I420_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/i420.spv"));

pub(super) struct Pipeline {
    module: vk::ShaderModule,
    pub(super) layout: vk::PipelineLayout,
    pub(super) pipeline: vk::Pipeline,
}

fn words(spirv: &[u8]) -> Vec<u32> {
    spirv
        .chunks_exact(4)
        .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect()
}

/// # Safety
/// `vk` is a live device and `set_layout` one of its layouts.
pub(super) unsafe fn pipeline(
    vk: &ash::Device,
    spirv: &[u8],
    set_layout: vk::DescriptorSetLayout,
    push_bytes: u32,
) -> Result<Pipeline, GpuError> {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let code = words(spirv);
        let module = vk
            .create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&code), None)
            .map_err(vk_error("create a shader module"))?;
        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::COMPUTE)
            .size(push_bytes)];
        let set_layouts = [set_layout, set_layout];
        let layout = match vk.create_pipeline_layout(
            &vk::PipelineLayoutCreateInfo::default()
                .set_layouts(&set_layouts)
                .push_constant_ranges(&push),
            None,
        ) {
            Ok(layout) => layout,
            Err(result) => {
                vk.destroy_shader_module(module, None);
                return Err(GpuError::Vulkan("create a pipeline layout", result));
            }
        };
        let stage = vk::PipelineShaderStageCreateInfo::default()
            .stage(vk::ShaderStageFlags::COMPUTE)
            .module(module)
            .name(c"main");
        match vk.create_compute_pipelines(
            vk::PipelineCache::null(),
            &[vk::ComputePipelineCreateInfo::default()
                .stage(stage)
                .layout(layout)],
            None,
        ) {
            Ok(pipelines) => Ok(Pipeline {
                module,
                layout,
                pipeline: pipelines[0],
            }),
            Err((_, result)) => {
                vk.destroy_pipeline_layout(layout, None);
                vk.destroy_shader_module(module, None);
                Err(GpuError::Vulkan("create a compute pipeline", result))
            }
        }
    }
}

impl Pipeline {
    /// # Safety
    /// No work using the pipeline is in flight.
    pub(super) unsafe fn destroy(&self, vk: &ash::Device) {
        // SAFETY: the caller upholds this function's contract.
        unsafe {
            vk.destroy_pipeline(self.pipeline, None);
            vk.destroy_pipeline_layout(self.layout, None);
            vk.destroy_shader_module(self.module, None);
        }
    }
}
