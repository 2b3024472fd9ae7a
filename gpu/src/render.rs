//! The Vulkan path: GPU-resident buffers for every desktop's resources and
//! frames, and one render thread per GPU that runs the composition and
//! I420 compute shaders for every desktop on the device's one queue,
//! scheduled fairly.
//!
//! - [`GpuBuffer`]: a storage buffer in memory the host can map (device
//!   local where the device has such memory — always on lavapipe, with
//!   resizable BAR on NVIDIA — else host memory the GPU reads over PCIe),
//!   mapped once for its life. A guest's TRANSFER_TO_HOST_2D writes only
//!   the transferred rectangle into it: uploads are exactly the damage.
//!   Its allocated size (the driver's, not the pixel count) is what the
//!   ledger charges.
//! - [`Renderer::run`]: a job is a list of [`Step`]s (composition pieces
//!   from `compose::plan`, I420 regions), recorded into one command buffer
//!   with a barrier between steps, submitted once, waited on its fence.
//! - Fairness: jobs wait in one [`FairQueue`] per renderer — a queue per
//!   desktop, served round robin, one job at a time — so a desktop that
//!   submits without pause gets one turn in N while N desktops have work;
//!   it can never starve the rest.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use ash::vk;

use crate::device::Device;
use crate::enumerate::GpuError;

static COMPOSE_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/compose.spv"));
static I420_SPIRV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/i420.spv"));

/// Most distinct buffers one job may bind (256 draws, a target, a frame).
const MAX_JOB_BUFFERS: u32 = 1024;

fn vk_error(what: &'static str) -> impl Fn(vk::Result) -> GpuError {
    move |result| GpuError::Vulkan(what, result)
}

/// Queues served round robin by key: each key's items in order, one item
/// per key per turn.
#[derive(Debug)]
pub struct FairQueue<K, T> {
    turns: VecDeque<(K, VecDeque<T>)>,
}

impl<K: PartialEq, T> Default for FairQueue<K, T> {
    fn default() -> Self {
        FairQueue {
            turns: VecDeque::new(),
        }
    }
}

impl<K: PartialEq, T> FairQueue<K, T> {
    pub fn push(&mut self, key: K, item: T) {
        match self.turns.iter_mut().find(|(k, _)| *k == key) {
            Some((_, items)) => items.push_back(item),
            None => self.turns.push_back((key, VecDeque::from([item]))),
        }
    }

    /// The next item: the first of the key whose turn it is; that key
    /// goes to the back of the line if it has more.
    pub fn pop(&mut self) -> Option<(K, T)>
    where
        K: Clone,
    {
        let (key, mut items) = self.turns.pop_front()?;
        let item = items.pop_front().expect("keys in line have items");
        if !items.is_empty() {
            self.turns.push_back((key.clone(), items));
        }
        Some((key, item))
    }

    pub fn is_empty(&self) -> bool {
        self.turns.is_empty()
    }
}

/// A storage buffer mapped for its whole life.
pub struct GpuBuffer {
    device: Arc<Device>,
    pub buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    mapped: *mut u8,
    /// The bytes asked for.
    len: usize,
    /// The bytes the driver allocated (what the ledger charges).
    allocated: u64,
}

// SAFETY: the mapping belongs to this value alone; the Vulkan handles are
// plain handles, and ash::Device may be used from any thread.
unsafe impl Send for GpuBuffer {}
// SAFETY: shared access only reads the mapping (`bytes`); writing needs
// `&mut self`.
unsafe impl Sync for GpuBuffer {}

impl GpuBuffer {
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `mapped` covers `len` bytes for the buffer's life.
        unsafe { std::slice::from_raw_parts(self.mapped, self.len) }
    }

    /// The mapped bytes. The caller must not write while a job that uses
    /// the buffer runs (sessions wait for their jobs).
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.mapped, self.len) }
    }

    pub fn allocated(&self) -> u64 {
        self.allocated
    }
}

impl Drop for GpuBuffer {
    fn drop(&mut self) {
        // SAFETY: no job uses the buffer (jobs are waited for by the
        // session that owns it); unmapping happens with the free.
        unsafe {
            self.device.device.destroy_buffer(self.buffer, None);
            self.device.device.free_memory(self.memory, None);
        }
    }
}

/// One dispatch of a job.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    /// A composition piece: `source` over `(x0, y0, x1, y1)` of `target`.
    Compose {
        target: vk::Buffer,
        target_stride: u32,
        source: vk::Buffer,
        source_stride: u32,
        area: (u32, u32, u32, u32),
        /// The draw's source rectangle (x, y, width, height).
        source_rect: (u32, u32, u32, u32),
        /// The draw's top left on the target and its size there (the
        /// source's size, or another it is scaled to).
        at: (i32, i32),
        size: (u32, u32),
        opacity: u8,
        /// The source's fourth byte is padding: every pixel opaque.
        opaque: bool,
    },
    /// I420 of `area` (frame pixels, x multiple of 8, y even) of the frame
    /// `width` × `height` at (`origin_x`, `origin_y`) in `input` (rows of
    /// `stride` pixels), into `output`'s planes.
    I420 {
        input: vk::Buffer,
        stride: u32,
        origin_x: u32,
        origin_y: u32,
        width: u32,
        height: u32,
        area: (u32, u32, u32, u32),
        output: vk::Buffer,
    },
}

struct Job {
    steps: Vec<Step>,
    done: mpsc::SyncSender<Result<(), String>>,
}

struct Pipeline {
    module: vk::ShaderModule,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
}

struct Shared {
    device: Arc<Device>,
    set_layout: vk::DescriptorSetLayout,
    compose: Pipeline,
    i420: Pipeline,
    /// Host-visible coherent memory types, best first.
    memory_types: Vec<u32>,
    max_buffer: u64,
    queue: Mutex<(FairQueue<String, Job>, bool)>,
    wake: Condvar,
}

/// Runs compute work for every desktop on one GPU.
pub struct Renderer {
    shared: Arc<Shared>,
    worker: Option<std::thread::JoinHandle<()>>,
}

fn words(spirv: &[u8]) -> Vec<u32> {
    spirv
        .chunks_exact(4)
        .map(|chunk| u32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect()
}

/// # Safety
/// `vk` is a live device and `set_layout` one of its layouts.
unsafe fn pipeline(
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
    unsafe fn destroy(&self, vk: &ash::Device) {
        // SAFETY: the caller upholds this function's contract.
        unsafe {
            vk.destroy_pipeline(self.pipeline, None);
            vk.destroy_pipeline_layout(self.layout, None);
            vk.destroy_shader_module(self.module, None);
        }
    }
}

impl Renderer {
    /// Builds the pipelines on `device` and starts its render thread.
    pub fn new(device: Arc<Device>) -> Result<Renderer, GpuError> {
        let vk = &device.device;
        let instance = device.instance();
        // SAFETY: valid create-infos whose pointers outlive each call;
        // objects made before a failure are destroyed on that path.
        let shared = unsafe {
            let binding = [vk::DescriptorSetLayoutBinding::default()
                .binding(0)
                .descriptor_type(vk::DescriptorType::STORAGE_BUFFER)
                .descriptor_count(1)
                .stage_flags(vk::ShaderStageFlags::COMPUTE)];
            let set_layout = vk
                .create_descriptor_set_layout(
                    &vk::DescriptorSetLayoutCreateInfo::default().bindings(&binding),
                    None,
                )
                .map_err(vk_error("create the descriptor set layout"))?;
            let compose = match pipeline(vk, COMPOSE_SPIRV, set_layout, 64) {
                Ok(compose) => compose,
                Err(error) => {
                    vk.destroy_descriptor_set_layout(set_layout, None);
                    return Err(error);
                }
            };
            let i420 = match pipeline(vk, I420_SPIRV, set_layout, 36) {
                Ok(i420) => i420,
                Err(error) => {
                    compose.destroy(vk);
                    vk.destroy_descriptor_set_layout(set_layout, None);
                    return Err(error);
                }
            };
            let properties = instance.get_physical_device_memory_properties(device.physical);
            let host =
                vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT;
            let mut memory_types: Vec<(bool, u32)> = properties
                .memory_types_as_slice()
                .iter()
                .enumerate()
                .filter(|(_, kind)| kind.property_flags.contains(host))
                .map(|(index, kind)| {
                    let local = kind
                        .property_flags
                        .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL);
                    (!local, index as u32)
                })
                .collect();
            memory_types.sort();
            let limits = instance
                .get_physical_device_properties(device.physical)
                .limits;
            Shared {
                device: device.clone(),
                set_layout,
                compose,
                i420,
                memory_types: memory_types.into_iter().map(|(_, index)| index).collect(),
                max_buffer: u64::from(limits.max_storage_buffer_range),
                queue: Mutex::new((FairQueue::default(), false)),
                wake: Condvar::new(),
            }
        };
        let shared = Arc::new(shared);
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("gpud-render".to_owned())
            .spawn(move || worker(&worker_shared))
            .map_err(|error| GpuError::NoSuchGpu(format!("start the render thread: {error}")))?;
        Ok(Renderer {
            shared,
            worker: Some(worker),
        })
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.shared.device
    }

    /// The largest buffer the shaders can address.
    pub fn max_buffer(&self) -> u64 {
        self.shared.max_buffer
    }

    /// What a buffer of `len` bytes would be charged (None: too large).
    pub fn allocation_size(&self, len: u64) -> Option<u64> {
        if len == 0 || len > self.shared.max_buffer {
            return None;
        }
        let vk = &self.shared.device.device;
        // SAFETY: a valid create-info; the probe buffer is destroyed.
        unsafe {
            let buffer = vk.create_buffer(&buffer_info(len), None).ok()?;
            let size = vk.get_buffer_memory_requirements(buffer).size;
            vk.destroy_buffer(buffer, None);
            Some(size)
        }
    }

    /// A zeroed, mapped storage buffer of `len` bytes.
    pub fn buffer(&self, len: u64) -> Result<GpuBuffer, GpuError> {
        if len == 0 || len > self.shared.max_buffer {
            return Err(GpuError::NoSuchGpu(format!(
                "a {len}-byte buffer (this GPU's shaders address at most {})",
                self.shared.max_buffer
            )));
        }
        let device = self.shared.device.clone();
        let vk = &device.device;
        // SAFETY: valid create-infos; each failure frees what was made;
        // the mapping covers the whole allocation.
        unsafe {
            let buffer = vk
                .create_buffer(&buffer_info(len), None)
                .map_err(vk_error("create a buffer"))?;
            let requirements = vk.get_buffer_memory_requirements(buffer);
            let Some(&index) = self
                .shared
                .memory_types
                .iter()
                .find(|index| requirements.memory_type_bits & (1 << **index) != 0)
            else {
                vk.destroy_buffer(buffer, None);
                return Err(GpuError::NoSuchGpu(
                    "no host-visible memory for a storage buffer".to_owned(),
                ));
            };
            let memory = match vk.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(requirements.size)
                    .memory_type_index(index),
                None,
            ) {
                Ok(memory) => memory,
                Err(result) => {
                    vk.destroy_buffer(buffer, None);
                    return Err(GpuError::Vulkan("allocate buffer memory", result));
                }
            };
            let mapped = match vk.bind_buffer_memory(buffer, memory, 0).and_then(|()| {
                vk.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            }) {
                Ok(mapped) => mapped.cast::<u8>(),
                Err(result) => {
                    vk.destroy_buffer(buffer, None);
                    vk.free_memory(memory, None);
                    return Err(GpuError::Vulkan("bind and map buffer memory", result));
                }
            };
            std::ptr::write_bytes(mapped, 0, len as usize);
            Ok(GpuBuffer {
                device: device.clone(),
                buffer,
                memory,
                mapped,
                len: len as usize,
                allocated: requirements.size,
            })
        }
    }

    /// Runs `steps` for `desktop` (its turn in the fair queue) and waits
    /// until the GPU has done them. The buffers the steps name must live
    /// until this returns.
    pub fn run(&self, desktop: &str, steps: Vec<Step>) -> Result<(), String> {
        if steps.is_empty() {
            return Ok(());
        }
        let (done, finished) = mpsc::sync_channel(1);
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.0.push(desktop.to_owned(), Job { steps, done });
        }
        self.shared.wake.notify_one();
        finished
            .recv()
            .unwrap_or_else(|_| Err("the render thread stopped".to_owned()))
    }
}

fn buffer_info(len: u64) -> vk::BufferCreateInfo<'static> {
    vk::BufferCreateInfo::default().size(len).usage(
        vk::BufferUsageFlags::STORAGE_BUFFER
            | vk::BufferUsageFlags::TRANSFER_SRC
            | vk::BufferUsageFlags::TRANSFER_DST,
    )
}

impl Drop for Renderer {
    fn drop(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1 = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
        let vk = &self.shared.device.device;
        // SAFETY: the render thread has ended, so nothing is in flight.
        unsafe {
            self.shared.compose.destroy(vk);
            self.shared.i420.destroy(vk);
            vk.destroy_descriptor_set_layout(self.shared.set_layout, None);
        }
    }
}

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

fn worker(shared: &Shared) {
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
            None => Err("the render thread has no command buffer".to_owned()),
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
unsafe fn execute(shared: &Shared, recorder: &Recorder, steps: &[Step]) -> Result<(), String> {
    // SAFETY: the caller upholds this function's contract.
    unsafe {
        let vk = &shared.device.device;
        let fail = |what: &str, result: vk::Result| format!("{what}: {result}");
        vk.reset_descriptor_pool(recorder.pool, vk::DescriptorPoolResetFlags::empty())
            .map_err(|r| fail("reset the descriptor pool", r))?;
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
                    return Err("a job names too many buffers".to_owned());
                }
                let layouts = [shared.set_layout];
                let set = vk
                    .allocate_descriptor_sets(
                        &vk::DescriptorSetAllocateInfo::default()
                            .descriptor_pool(recorder.pool)
                            .set_layouts(&layouts),
                    )
                    .map_err(|r| fail("allocate a descriptor set", r))?[0];
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
        .map_err(|r| fail("begin the command buffer", r))?;
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
            .map_err(|r| fail("end the command buffer", r))?;
        let buffers = [command];
        vk.queue_submit(
            shared.device.queue,
            &[vk::SubmitInfo::default().command_buffers(&buffers)],
            recorder.fence,
        )
        .map_err(|r| fail("submit", r))?;
        let waited = vk.wait_for_fences(&[recorder.fence], true, 30_000_000_000);
        vk.reset_fences(&[recorder.fence])
            .map_err(|r| fail("reset the fence", r))?;
        waited.map_err(|r| fail("wait for the GPU", r))
    }
}

#[cfg(test)]
mod tests {
    use super::FairQueue;

    #[test]
    fn a_busy_key_gets_one_turn_in_n() {
        let mut queue = FairQueue::default();
        for i in 0..100 {
            queue.push("busy", i);
        }
        queue.push("quiet", 1000);
        queue.push("other", 2000);
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).take(6).collect();
        assert_eq!(
            order,
            [
                ("busy", 0),
                ("quiet", 1000),
                ("other", 2000),
                ("busy", 1),
                ("busy", 2),
                ("busy", 3)
            ]
        );
        // A key that comes back joins the end of the line.
        queue.push("quiet", 1001);
        assert_eq!(queue.pop(), Some(("busy", 4)));
        assert_eq!(queue.pop(), Some(("quiet", 1001)));
        assert!(!queue.is_empty());
    }
}
