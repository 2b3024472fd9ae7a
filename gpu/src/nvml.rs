//! Per-process GPU memory from NVIDIA's NVML (feature `nvml`), to check
//! gpud's ledger against what the driver says gpud holds. Every desktop's
//! memory is allocated by gpud, so NVML's figure for gpud's pid is the
//! sum the ledger's accounts must explain (plus gpud's own pipelines and
//! the driver's overhead).
//!
//! `libnvidia-ml.so.1` is opened at run time (it comes with the driver,
//! not with the build), so a host without it gets an error, not a link
//! failure. Untested here: no NVIDIA GPU on the CI machine.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

/// Why NVML could not be used, by the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NvmlError {
    #[error("cannot load libnvidia-ml.so.1 (NVIDIA's driver)")]
    Load,
    #[error("NVML has no {name}")]
    Symbol { name: String },
    #[error("nvmlInit: {message}")]
    Init { message: String },
    #[error("a UUID with a NUL byte")]
    Uuid,
    #[error("no NVML device {uuid}: {message}")]
    NoDevice { uuid: String, message: String },
    #[error("NVML processes: {message}")]
    Processes { message: String },
}

type Return = c_int;
const SUCCESS: Return = 0;
const INSUFFICIENT_SIZE: Return = 7;

/// `nvmlProcessInfo_t` (NVML 11.x/12.x, the `_v3` process queries).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProcessInfo {
    pid: c_uint,
    used_gpu_memory: u64,
    gpu_instance_id: c_uint,
    compute_instance_id: c_uint,
}

type Device = *mut c_void;
type Processes = unsafe extern "C" fn(Device, *mut c_uint, *mut ProcessInfo) -> Return;

pub struct Nvml {
    library: *mut c_void,
    by_uuid: unsafe extern "C" fn(*const c_char, *mut Device) -> Return,
    compute: Processes,
    graphics: Processes,
    error_string: unsafe extern "C" fn(Return) -> *const c_char,
    shutdown: unsafe extern "C" fn() -> Return,
}

// SAFETY: NVML is thread-safe; the handle is only used through it.
unsafe impl Send for Nvml {}
// SAFETY: as above.
unsafe impl Sync for Nvml {}

/// # Safety
/// `library` is a live dlopen handle; `T` is the symbol's true type.
unsafe fn symbol<T: Copy>(library: *mut c_void, name: &CStr) -> Result<T, NvmlError> {
    // SAFETY: dlsym on a live handle with a NUL-terminated name.
    let pointer = unsafe { libc::dlsym(library, name.as_ptr()) };
    if pointer.is_null() {
        return Err(NvmlError::Symbol {
            name: name.to_string_lossy().into_owned(),
        });
    }
    // SAFETY: the caller names the symbol's type; a function pointer is
    // pointer-sized.
    Ok(unsafe { std::mem::transmute_copy(&pointer) })
}

impl Nvml {
    /// Loads and initialises NVML.
    pub fn open() -> Result<Nvml, NvmlError> {
        // SAFETY: dlopen with a constant name; the result is checked.
        let library = unsafe { libc::dlopen(c"libnvidia-ml.so.1".as_ptr(), libc::RTLD_NOW) };
        if library.is_null() {
            return Err(NvmlError::Load);
        }
        // SAFETY: the types are NVML's documented signatures.
        let loaded = unsafe {
            (|| -> Result<(Nvml, unsafe extern "C" fn() -> Return), NvmlError> {
                let init: unsafe extern "C" fn() -> Return = symbol(library, c"nvmlInit_v2")?;
                Ok((
                    Nvml {
                        library,
                        by_uuid: symbol(library, c"nvmlDeviceGetHandleByUUID")?,
                        compute: symbol(library, c"nvmlDeviceGetComputeRunningProcesses_v3")?,
                        graphics: symbol(library, c"nvmlDeviceGetGraphicsRunningProcesses_v3")?,
                        error_string: symbol(library, c"nvmlErrorString")?,
                        shutdown: symbol(library, c"nvmlShutdown")?,
                    },
                    init,
                ))
            })()
        };
        let (nvml, init) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                // SAFETY: our handle, closed once.
                unsafe { libc::dlclose(library) };
                return Err(error);
            }
        };
        // SAFETY: NVML's init, no arguments.
        let result = unsafe { init() };
        if result != SUCCESS {
            let message = nvml.error(result);
            // Not initialised: close without nvmlShutdown.
            // SAFETY: our handle, closed once; `nvml` is forgotten.
            unsafe { libc::dlclose(library) };
            std::mem::forget(nvml);
            return Err(NvmlError::Init { message });
        }
        Ok(nvml)
    }

    fn error(&self, result: Return) -> String {
        // SAFETY: nvmlErrorString returns a static string.
        let text = unsafe { (self.error_string)(result) };
        if text.is_null() {
            return format!("NVML error {result}");
        }
        // SAFETY: a NUL-terminated static string.
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    /// GPU memory `pid` holds on the GPU with Vulkan UUID `uuid` (as
    /// [`crate::GpuInfo::uuid`] prints it): compute and graphics contexts
    /// together. None when the process holds none.
    pub fn process_memory(&self, uuid: &str, pid: u32) -> Result<Option<u64>, NvmlError> {
        let name = if uuid.starts_with("GPU-") {
            uuid.to_owned()
        } else {
            format!("GPU-{uuid}")
        };
        let name = CString::new(name).map_err(|_| NvmlError::Uuid)?;
        let mut device: Device = std::ptr::null_mut();
        // SAFETY: a NUL-terminated UUID and a place for the handle.
        let result = unsafe { (self.by_uuid)(name.as_ptr(), &mut device) };
        if result != SUCCESS {
            return Err(NvmlError::NoDevice {
                uuid: uuid.to_owned(),
                message: self.error(result),
            });
        }
        let mut total = None;
        for query in [self.compute, self.graphics] {
            let mut infos = vec![ProcessInfo::default(); 64];
            loop {
                let mut count = infos.len() as c_uint;
                // SAFETY: `infos` holds `count` entries.
                let result = unsafe { query(device, &mut count, infos.as_mut_ptr()) };
                match result {
                    SUCCESS => {
                        for info in &infos[..count as usize] {
                            if info.pid == pid {
                                *total.get_or_insert(0) += info.used_gpu_memory;
                            }
                        }
                        break;
                    }
                    INSUFFICIENT_SIZE if (count as usize) > infos.len() => {
                        infos = vec![ProcessInfo::default(); count as usize + 16];
                    }
                    _ => {
                        return Err(NvmlError::Processes {
                            message: self.error(result),
                        })
                    }
                }
            }
        }
        Ok(total)
    }
}

impl Drop for Nvml {
    fn drop(&mut self) {
        // SAFETY: initialised in `open`; the handle is closed once.
        unsafe {
            (self.shutdown)();
            libc::dlclose(self.library);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_process_record_has_nvmls_layout() {
        assert_eq!(std::mem::size_of::<super::ProcessInfo>(), 24);
    }

    #[test]
    fn a_host_without_nvidia_gets_an_error() {
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            eprintln!("skipping: this host has NVIDIA's driver, so NVML opens");
            return;
        }
        assert!(super::Nvml::open().is_err());
    }
}
