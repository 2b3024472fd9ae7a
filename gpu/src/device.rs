//! The device layer: opens one Vulkan logical device on a chosen GPU with
//! only the extensions that GPU supports, and reports what it can do.
//!
//! gpud opens one [`Device`] per physical GPU and shares it among every
//! desktop on the host. Nothing here assumes more than one queue: lavapipe
//! has one queue family with one queue, and that is enough.

use std::ffi::{c_char, CStr};

use ash::vk;

use crate::enumerate::{describe, GpuError, GpuInfo};

/// Which GPU to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Position in Vulkan's enumeration order.
    Index(u32),
    /// The device UUID as [`GpuInfo::uuid`] prints it.
    Uuid(String),
}

/// Extensions gpud enables when a GPU has them, and what each gives.
const WANTED: &[&CStr] = &[
    ash::khr::external_memory_fd::NAME,
    ash::ext::external_memory_dma_buf::NAME,
    ash::ext::image_drm_format_modifier::NAME,
    ash::ext::memory_budget::NAME,
    ash::khr::external_semaphore_fd::NAME,
    ash::khr::external_fence_fd::NAME,
];

/// What a GPU can do, as gpud opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    pub gpu: GpuInfo,
    /// `major.minor.patch` of the device's Vulkan API.
    pub api_version: String,
    /// The queue family gpud uses (graphics and compute) and its queues.
    pub queue_family: u32,
    pub queue_count: u32,
    /// Opaque-fd export and import of device memory.
    pub external_memory_fd: bool,
    /// dma-buf export and import (zero-copy with other drivers).
    pub dma_buf: bool,
    pub drm_format_modifiers: bool,
    /// Live per-heap usage and budget.
    pub memory_budget: bool,
    pub external_semaphore_fd: bool,
    pub external_fence_fd: bool,
    /// A video-encode queue family (`VK_KHR_video_encode_queue`).
    pub video_encode: bool,
    /// The extensions enabled on the logical device.
    pub enabled_extensions: Vec<String>,
}

/// One opened GPU: instance, logical device and its one queue.
pub struct Device {
    _entry: ash::Entry,
    instance: ash::Instance,
    pub physical: vk::PhysicalDevice,
    pub device: ash::Device,
    pub queue: vk::Queue,
    capabilities: Capabilities,
}

impl Device {
    /// Opens the GPU `selector` names.
    pub fn open(selector: &Selector) -> Result<Device, GpuError> {
        // SAFETY: loading the system Vulkan loader runs its initialisers.
        let entry =
            unsafe { ash::Entry::load() }.map_err(|error| GpuError::Loader(error.to_string()))?;
        let application = vk::ApplicationInfo::default()
            .application_name(c"flotilla-gpud")
            .api_version(vk::API_VERSION_1_2);
        let create_info = vk::InstanceCreateInfo::default().application_info(&application);
        // SAFETY: `create_info` and what it points to outlive the call.
        let instance =
            unsafe { entry.create_instance(&create_info, None) }.map_err(GpuError::Instance)?;
        match open_on(&instance, selector) {
            Ok((physical, device, queue, capabilities)) => Ok(Device {
                _entry: entry,
                instance,
                physical,
                device,
                queue,
                capabilities,
            }),
            Err(error) => {
                // SAFETY: nothing created from the instance survives.
                unsafe { instance.destroy_instance(None) };
                Err(error)
            }
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn instance(&self) -> &ash::Instance {
        &self.instance
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // SAFETY: the device and instance are ours; whoever created objects
        // from them destroyed those first (they borrow the Device).
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

type Opened = (vk::PhysicalDevice, ash::Device, vk::Queue, Capabilities);

fn open_on(instance: &ash::Instance, selector: &Selector) -> Result<Opened, GpuError> {
    // SAFETY: a live instance.
    let physicals =
        unsafe { instance.enumerate_physical_devices() }.map_err(GpuError::Enumerate)?;
    let gpus = describe(instance, &physicals);
    let index = match selector {
        Selector::Index(index) => *index as usize,
        Selector::Uuid(uuid) => gpus
            .iter()
            .position(|gpu| gpu.uuid.eq_ignore_ascii_case(uuid))
            .ok_or_else(|| GpuError::NoSuchGpu(format!("no GPU with UUID {uuid}")))?,
    };
    let (physical, gpu) = physicals.get(index).zip(gpus.get(index)).ok_or_else(|| {
        GpuError::NoSuchGpu(format!(
            "no GPU at index {index} (this host has {})",
            gpus.len()
        ))
    })?;
    let physical = *physical;
    // SAFETY: `physical` comes from this instance.
    let families = unsafe { instance.get_physical_device_queue_family_properties(physical) };
    let wanted_flags = vk::QueueFlags::GRAPHICS | vk::QueueFlags::COMPUTE;
    let queue_family = families
        .iter()
        .position(|family| family.queue_flags.contains(wanted_flags) && family.queue_count > 0)
        .ok_or_else(|| {
            GpuError::NoSuchGpu(format!("{} has no graphics and compute queue", gpu.name))
        })? as u32;
    let video_encode = families.iter().any(|family| {
        family
            .queue_flags
            .contains(vk::QueueFlags::VIDEO_ENCODE_KHR)
    });
    // SAFETY: `physical` comes from this instance.
    let available = unsafe { instance.enumerate_device_extension_properties(physical) }
        .map_err(GpuError::Enumerate)?;
    let has = |name: &CStr| {
        available.iter().any(|extension| {
            extension
                .extension_name_as_c_str()
                .is_ok_and(|available| available == name)
        })
    };
    let enabled: Vec<&CStr> = WANTED.iter().copied().filter(|name| has(name)).collect();
    let enabled_pointers: Vec<*const c_char> = enabled.iter().map(|name| name.as_ptr()).collect();
    let priorities = [1.0f32];
    let queue_info = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(queue_family)
        .queue_priorities(&priorities)];
    let device_info = vk::DeviceCreateInfo::default()
        .queue_create_infos(&queue_info)
        .enabled_extension_names(&enabled_pointers);
    // SAFETY: every pointer in `device_info` outlives the call; the
    // extensions were checked to be supported.
    let device = unsafe { instance.create_device(physical, &device_info, None) }
        .map_err(GpuError::Device)?;
    // SAFETY: family and index 0 were requested above.
    let queue = unsafe { device.get_device_queue(queue_family, 0) };
    // SAFETY: `physical` comes from this instance.
    let properties = unsafe { instance.get_physical_device_properties(physical) };
    let version = properties.api_version;
    let capabilities = Capabilities {
        gpu: gpu.clone(),
        api_version: format!(
            "{}.{}.{}",
            vk::api_version_major(version),
            vk::api_version_minor(version),
            vk::api_version_patch(version)
        ),
        queue_family,
        queue_count: families[queue_family as usize].queue_count,
        external_memory_fd: has(ash::khr::external_memory_fd::NAME),
        dma_buf: has(ash::khr::external_memory_fd::NAME)
            && has(ash::ext::external_memory_dma_buf::NAME),
        drm_format_modifiers: has(ash::ext::image_drm_format_modifier::NAME),
        memory_budget: has(ash::ext::memory_budget::NAME),
        external_semaphore_fd: has(ash::khr::external_semaphore_fd::NAME),
        external_fence_fd: has(ash::khr::external_fence_fd::NAME),
        video_encode: video_encode && has(ash::khr::video_encode_queue::NAME),
        enabled_extensions: enabled
            .iter()
            .map(|name| name.to_string_lossy().into_owned())
            .collect(),
    };
    Ok((physical, device, queue, capabilities))
}

/// Why the dma-buf round trip did not work, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum DmaBufError {
    #[error("the device has no VK_EXT_external_memory_dma_buf")]
    NoExtension,
    #[error("no memory type")]
    NoMemoryType,
    #[error("allocate exportable memory: {0}")]
    Allocate(#[source] vk::Result),
    #[error("export as a dma-buf: {0}")]
    Export(#[source] vk::Result),
    #[error("dma-buf properties: {0}")]
    Properties(#[source] vk::Result),
    #[error("no memory type can import it")]
    NoImportType,
    #[error("import the dma-buf: {0}")]
    Import(#[source] vk::Result),
}

impl Device {
    /// Exports 1 MiB of device memory as a dma-buf and imports it back:
    /// what zero-copy sharing with other drivers (a compositor's client
    /// buffers, an encoder) needs. Says what it did, or why it could not.
    pub fn dma_buf_round_trip(&self) -> Result<String, DmaBufError> {
        if !self.capabilities.dma_buf {
            return Err(DmaBufError::NoExtension);
        }
        let size = 1u64 << 20;
        let vk = &self.device;
        let fd_api = ash::khr::external_memory_fd::Device::new(&self.instance, vk);
        // SAFETY: memory properties of our physical device.
        let memory = unsafe {
            self.instance
                .get_physical_device_memory_properties(self.physical)
        };
        let device_local = |bits: u32| {
            memory
                .memory_types_as_slice()
                .iter()
                .enumerate()
                .position(|(index, kind)| {
                    bits & (1 << index) != 0
                        && kind
                            .property_flags
                            .contains(vk::MemoryPropertyFlags::DEVICE_LOCAL)
                })
                .or_else(|| (0..32).find(|index| bits & (1 << index) != 0))
                .map(|index| index as u32)
        };
        let handle = vk::ExternalMemoryHandleTypeFlags::DMA_BUF_EXT;
        // SAFETY: valid create-infos; everything made is freed below.
        unsafe {
            let mut export = vk::ExportMemoryAllocateInfo::default().handle_types(handle);
            let index = device_local(u32::MAX).ok_or(DmaBufError::NoMemoryType)?;
            let exported = vk
                .allocate_memory(
                    &vk::MemoryAllocateInfo::default()
                        .allocation_size(size)
                        .memory_type_index(index)
                        .push_next(&mut export),
                    None,
                )
                .map_err(DmaBufError::Allocate)?;
            let fd = match fd_api.get_memory_fd(
                &vk::MemoryGetFdInfoKHR::default()
                    .memory(exported)
                    .handle_type(handle),
            ) {
                Ok(fd) => fd,
                Err(error) => {
                    vk.free_memory(exported, None);
                    return Err(DmaBufError::Export(error));
                }
            };
            let kind = std::fs::read_link(format!("/proc/self/fd/{fd}"))
                .map(|link| link.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut properties = vk::MemoryFdPropertiesKHR::default();
            let result = fd_api
                .get_memory_fd_properties(handle, fd, &mut properties)
                .map_err(DmaBufError::Properties)
                .and_then(|()| {
                    let index = device_local(properties.memory_type_bits)
                        .ok_or(DmaBufError::NoImportType)?;
                    let mut import = vk::ImportMemoryFdInfoKHR::default()
                        .handle_type(handle)
                        .fd(fd);
                    vk.allocate_memory(
                        &vk::MemoryAllocateInfo::default()
                            .allocation_size(size)
                            .memory_type_index(index)
                            .push_next(&mut import),
                        None,
                    )
                    .map_err(DmaBufError::Import)
                });
            let answer = match result {
                Ok(imported) => {
                    // The import owns the descriptor now.
                    vk.free_memory(imported, None);
                    Ok(format!(
                        "exported 1 MiB as a dma-buf ({kind}) and imported it back"
                    ))
                }
                Err(error) => {
                    libc::close(fd);
                    Err(error)
                }
            };
            vk.free_memory(exported, None);
            answer
        }
    }
}
