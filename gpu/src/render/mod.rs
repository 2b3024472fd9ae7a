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
//!
//! Set-up is `pipeline`'s, recording `record`'s, the queue
//! `fair_queue`'s.

mod fair_queue;
mod pipeline;
mod record;

use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};

use ash::vk;

pub use fair_queue::FairQueue;
use pipeline::{pipeline, Pipeline, COMPOSE_SPIRV, I420_SPIRV};

use crate::device::Device;
use crate::enumerate::GpuError;

/// Most distinct buffers one job may bind (256 draws, a target, a frame).
const MAX_JOB_BUFFERS: u32 = 1024;

fn vk_error(what: &'static str) -> impl Fn(vk::Result) -> GpuError {
    move |result| GpuError::Vulkan(what, result)
}

/// Why a job did not run, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the render thread stopped")]
    ThreadStopped,
    #[error("the render thread has no command buffer")]
    NoCommandBuffer,
    #[error("a job names too many buffers")]
    TooManyBuffers,
    #[error("reset the descriptor pool: {0}")]
    ResetDescriptorPool(#[source] vk::Result),
    #[error("allocate a descriptor set: {0}")]
    AllocateDescriptorSet(#[source] vk::Result),
    #[error("begin the command buffer: {0}")]
    BeginCommandBuffer(#[source] vk::Result),
    #[error("end the command buffer: {0}")]
    EndCommandBuffer(#[source] vk::Result),
    #[error("submit: {0}")]
    Submit(#[source] vk::Result),
    #[error("reset the fence: {0}")]
    ResetFence(#[source] vk::Result),
    #[error("wait for the GPU: {0}")]
    WaitForGpu(#[source] vk::Result),
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
    done: mpsc::SyncSender<Result<(), RenderError>>,
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
            .spawn(move || record::worker(&worker_shared))
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
    pub fn run(&self, desktop: &str, steps: Vec<Step>) -> Result<(), RenderError> {
        if steps.is_empty() {
            return Ok(());
        }
        let (done, finished) = mpsc::sync_channel(1);
        {
            let mut queue = self.shared.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.0.push(desktop.to_owned(), Job { steps, done });
        }
        self.shared.wake.notify_one();
        finished.recv().unwrap_or(Err(RenderError::ThreadStopped))
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
