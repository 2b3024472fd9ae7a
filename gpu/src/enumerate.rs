//! Lists the host's Vulkan physical devices without opening any of them.
//!
//! Uses only Vulkan 1.1 core queries (`vkGetPhysicalDeviceProperties2` with
//! ID and driver properties), so it works on NVIDIA's driver and on Mesa's
//! lavapipe alike. The Vulkan loader is opened at run time: a host without
//! `libvulkan.so.1` gets a clear error, not a link failure.

use std::ffi::CStr;

use ash::vk;

/// One GPU as Vulkan describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// Position in Vulkan's enumeration order.
    pub index: u32,
    pub name: String,
    pub vendor_id: u32,
    pub device_id: u32,
    /// Driver name and version, e.g. `NVIDIA 550.54.15` or `llvmpipe
    /// Mesa 22.3.6`.
    pub driver: String,
    /// The device UUID (stable across reboots and processes), hex with
    /// dashes.
    pub uuid: String,
    /// Sum of the device-local memory heaps.
    pub memory_bytes: u64,
    /// A CPU implementation (Vulkan device type CPU), such as lavapipe.
    pub cpu_implementation: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("cannot load the Vulkan loader (libvulkan.so.1): {0}; install libvulkan1 and a driver (mesa-vulkan-drivers for lavapipe, or NVIDIA's)")]
    Loader(String),
    #[error("vkCreateInstance failed: {0}")]
    Instance(vk::Result),
    #[error("vkEnumeratePhysicalDevices failed: {0}")]
    Enumerate(vk::Result),
    #[error("{0}")]
    NoSuchGpu(String),
    #[error("vkCreateDevice failed: {0}")]
    Device(vk::Result),
    #[error("{0}: {1}")]
    Vulkan(&'static str, vk::Result),
}

/// Enumerates every Vulkan physical device on this host.
pub fn enumerate() -> Result<Vec<GpuInfo>, GpuError> {
    // SAFETY: loading the system Vulkan loader runs its initialisers; it is
    // the library this function exists to use, loaded once per call.
    let entry =
        unsafe { ash::Entry::load() }.map_err(|error| GpuError::Loader(error.to_string()))?;
    let application = vk::ApplicationInfo::default()
        .application_name(c"flotilla-node-agent")
        .api_version(vk::API_VERSION_1_1);
    let create_info = vk::InstanceCreateInfo::default().application_info(&application);
    // SAFETY: `create_info` and what it points to live across the call; no
    // allocator callbacks are passed.
    let instance =
        unsafe { entry.create_instance(&create_info, None) }.map_err(GpuError::Instance)?;
    let result = describe_devices(&instance);
    // SAFETY: no object created from `instance` outlives this point
    // (physical devices are not created objects).
    unsafe { instance.destroy_instance(None) };
    result
}

fn describe_devices(instance: &ash::Instance) -> Result<Vec<GpuInfo>, GpuError> {
    // SAFETY: `instance` is a live instance.
    let devices = unsafe { instance.enumerate_physical_devices() }.map_err(GpuError::Enumerate)?;
    Ok(describe(instance, &devices))
}

/// Describes `devices`, physical devices of `instance`, in order.
pub(crate) fn describe(instance: &ash::Instance, devices: &[vk::PhysicalDevice]) -> Vec<GpuInfo> {
    let mut gpus = Vec::with_capacity(devices.len());
    for (index, &device) in devices.iter().enumerate() {
        let mut id_properties = vk::PhysicalDeviceIDProperties::default();
        let mut driver_properties = vk::PhysicalDeviceDriverProperties::default();
        let mut properties = vk::PhysicalDeviceProperties2::default()
            .push_next(&mut id_properties)
            .push_next(&mut driver_properties);
        // SAFETY: `device` comes from this instance; the chained structs
        // live across the call. Driver properties are ignored by 1.1-only
        // drivers, leaving them zeroed.
        unsafe { instance.get_physical_device_properties2(device, &mut properties) };
        let core = properties.properties;
        // SAFETY: `device` comes from this instance.
        let memory = unsafe { instance.get_physical_device_memory_properties(device) };
        let memory_bytes = memory
            .memory_heaps_as_slice()
            .iter()
            .filter(|heap| heap.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL))
            .map(|heap| heap.size)
            .sum();
        let name = c_text(&core.device_name);
        let driver_name = c_text(&driver_properties.driver_name);
        let driver_info = c_text(&driver_properties.driver_info);
        let driver = match (driver_name.is_empty(), driver_info.is_empty()) {
            (true, _) => format!("driver version {:#x}", core.driver_version),
            (false, true) => driver_name,
            (false, false) => format!("{driver_name} {driver_info}"),
        };
        gpus.push(GpuInfo {
            index: index as u32,
            name,
            vendor_id: core.vendor_id,
            device_id: core.device_id,
            driver,
            uuid: format_uuid(&id_properties.device_uuid),
            memory_bytes,
            cpu_implementation: core.device_type == vk::PhysicalDeviceType::CPU,
        });
    }
    gpus
}

/// Text from a fixed-size, NUL-terminated Vulkan string (lossy: a driver
/// that forgets the NUL gets its whole buffer read, nothing past it).
fn c_text(raw: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    CStr::from_bytes_until_nul(&[bytes.as_slice(), &[0]].concat())
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn format_uuid(bytes: &[u8; 16]) -> String {
    let hex: Vec<String> = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_print_like_nvidia_smi() {
        let bytes: [u8; 16] = core::array::from_fn(|i| i as u8);
        assert_eq!(format_uuid(&bytes), "00010203-0405-0607-0809-0a0b0c0d0e0f");
    }

    #[test]
    fn unterminated_vulkan_strings_stay_in_bounds() {
        let raw = [b'a' as std::ffi::c_char; 4];
        assert_eq!(c_text(&raw), "aaaa");
        let raw = [b'g' as std::ffi::c_char, 0, b'x' as std::ffi::c_char];
        assert_eq!(c_text(&raw), "g");
    }

    /// Runs on hosts with a Vulkan driver (CI installs lavapipe): every
    /// device must describe itself sensibly.
    #[test]
    fn enumerates_real_devices_when_a_driver_is_installed() {
        match enumerate() {
            Ok(gpus) => {
                for gpu in &gpus {
                    assert!(!gpu.name.is_empty(), "{gpu:?}");
                    assert!(gpu.memory_bytes > 0, "{gpu:?}");
                    assert_eq!(gpu.uuid.len(), 36, "{gpu:?}");
                }
                eprintln!("found {gpus:#?}");
            }
            Err(GpuError::Loader(error))
                if std::env::var_os("FLOTILLA_REQUIRE_VULKAN").is_none() =>
            {
                eprintln!("skipping: no Vulkan loader here ({error}); set FLOTILLA_REQUIRE_VULKAN=1 to fail instead");
            }
            Err(error) => panic!("{error}"),
        }
    }
}
